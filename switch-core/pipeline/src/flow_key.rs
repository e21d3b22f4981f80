//! The flow key: every header field a flow can match, parsed once per frame.
//!
//! A [`FlowKey`] is a fixed array of [`KEY_WORDS`] 64-bit words (160 bytes, `Copy`,
//! 8-byte aligned). Every field lives at a fixed (word, shift, width) position, so the
//! operations the datapath does on whole keys — masking, hashing, comparing — are plain
//! loops over words that the compiler unrolls and vectorises, and the classifier can
//! store only the words a subtable's mask touches (see `classifier`).
//! A [`FlowMask`] has the same layout; a 1 bit means "this bit is significant".
//!
//! # Layout
//!
//! | word | bits 0..      | then                         | then               |
//! |------|---------------|------------------------------|--------------------|
//! | 0    | `tun_id` (64) |                              |                    |
//! | 1    | `metadata` (64) |                            |                    |
//! | 2–3  | `tun_src` (128, word 2 = high half)          |                    |
//! | 4–5  | `tun_dst` (128)                              |                    |
//! | 6    | `in_port` (32) | `dl_type` (16, bit 32)      | `vlan_tci` (16, bit 48) |
//! | 7–10 | `reg0`/`reg1` … `reg6`/`reg7` (32 each; even register in the low half) | |
//! | 11   | `dl_src` (48) | `nw_proto` (8, bit 48)       | `nw_tos` (8, bit 56) |
//! | 12   | `dl_dst` (48) | `nw_ttl` (8, bit 48)         | `nw_frag` (8, bit 56) |
//! | 13   | `nw_src` (32) | `nw_dst` (32, bit 32)        |                    |
//! | 14–15 | `ipv6_src` (128)                            |                    |
//! | 16–17 | `ipv6_dst` (128)                            |                    |
//! | 18   | `arp_sha` (48) | `tp_src` (16, bit 48)       |                    |
//! | 19   | `arp_tha` (48) | `tp_dst` (16, bit 48)       |                    |
//!
//! Values are host integers in network (big-endian) reading order: MAC
//! `00:11:22:33:44:55` is `0x0011_2233_4455`, IPv4 `10.0.0.1` is `0x0a00_0001`,
//! a 128-bit address is `u128::from_be_bytes(octets)` with the high 64 bits in the lower
//! word index.
//!
//! # Shared fields (as in Open vSwitch)
//!
//! - ARP: `arp_op` is `nw_proto` (only opcodes 0–255 are kept), `arp_spa` is `nw_src`,
//!   `arp_tpa` is `nw_dst`. `arp_sha`/`arp_tha` have their own words.
//! - ICMP and ICMPv6: `icmp_type` is `tp_src`, `icmp_code` is `tp_dst`.
//! - `tun_src`/`tun_dst` are 128 bits; an IPv4 tunnel endpoint is stored IPv4-mapped
//!   (`::ffff:a.b.c.d`), so one field matches both families and a flow that matches an IPv4
//!   `tun_src` writes the mapped form. 0 means "no tunnel".
//! - `nw_tos` holds the DSCP bits only (TOS byte & 0xfc), like OVS's `nw_tos`.
//! - `vlan_tci` is 0 without a tag; with a tag it is the TCI with bit 0x1000 forced on as a
//!   "tag present" flag (OVS's convention; the DEI bit is not kept).
//! - `nw_frag`: [`FRAG_ANY`] for any IPv4/IPv6 fragment, plus [`FRAG_LATER`] for a non-first
//!   fragment (which carries no L4 header, so `tp_*` stay 0).
//!
//! # Parsing policy
//!
//! [`FlowKey::extract`] never panics. Only a frame too short for its Ethernet header (and
//! its one VLAN tag, if it announces one) is refused with a [`ParseDrop`]. Everything else
//! truncated or malformed gives a key that stops at the last layer that parsed, as OVS
//! does: a bad IPv4 header leaves only L2 + `dl_type`; a truncated TCP header leaves the L3
//! fields with `tp_src = tp_dst = 0`. An 802.3 length field (< 0x600) gives
//! `dl_type = 0x05ff` ([`DL_TYPE_NONE`]). A second VLAN tag is not parsed: its TPID is the
//! `dl_type`.

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// Number of 64-bit words in a [`FlowKey`] / [`FlowMask`].
pub const KEY_WORDS: usize = 20;

/// `nw_frag` bit: the packet is an IP fragment (first or later).
pub const FRAG_ANY: u8 = 1;
/// `nw_frag` bit: the packet is a non-first IP fragment (no L4 header).
pub const FRAG_LATER: u8 = 2;

/// `dl_type` given to 802.3 frames (length field instead of an EtherType), as in OVS.
pub const DL_TYPE_NONE: u16 = 0x05ff;

// Defined once in `encap` (with `encap`'s spelling) and named here as the key's code names them.
pub use encap::{
    ETHERTYPE_ARP as ETH_TYPE_ARP, ETHERTYPE_IPV4 as ETH_TYPE_IPV4,
    ETHERTYPE_IPV6 as ETH_TYPE_IPV6, ETHERTYPE_QINQ as ETH_TYPE_QINQ,
    ETHERTYPE_VLAN as ETH_TYPE_VLAN, IPPROTO_ICMP, IPPROTO_ICMPV6, IPPROTO_TCP, IPPROTO_UDP,
};

/// Where a field sits in the key: `width` bits starting at bit `shift` of word `word`.
/// A 128-bit field spans words `word` (high half) and `word + 1` (low half), `shift` 0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FieldLayout {
    /// Index of the (first) word.
    pub word: u8,
    /// Bit offset inside the word (0 = least significant).
    pub shift: u8,
    /// Width in bits: 8, 16, 32, 48, 64 or 128.
    pub width: u8,
}

macro_rules! fields {
    ($( $(#[$doc:meta])* $variant:ident = ($word:expr, $shift:expr, $width:expr, $name:literal) ),* $(,)?) => {
        /// A field of the [`FlowKey`], by id: what `set_field`, `move` and matches name.
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        #[repr(u8)]
        pub enum Field {
            $( $(#[$doc])* $variant, )*
        }

        impl Field {
            /// Every field, in declaration order.
            pub const ALL: &'static [Field] = &[ $( Field::$variant, )* ];

            /// The field's position in the key.
            #[inline]
            pub const fn layout(self) -> FieldLayout {
                match self {
                    $( Field::$variant => FieldLayout { word: $word, shift: $shift, width: $width }, )*
                }
            }

            /// The field's name in the flow language (ovs-ofctl spelling).
            pub const fn name(self) -> &'static str {
                match self {
                    $( Field::$variant => $name, )*
                }
            }
        }
    };
}

fields! {
    /// Tunnel id (VNI) of a frame received on a tunnel port.
    TunId = (0, 0, 64, "tun_id"),
    /// Pipeline metadata (64 bits, set by flows).
    Metadata = (1, 0, 64, "metadata"),
    /// Outer source address of a tunnelled frame (IPv4 mapped into IPv6).
    TunSrc = (2, 0, 128, "tun_src"),
    /// Outer destination address of a tunnelled frame (IPv4 mapped into IPv6).
    TunDst = (4, 0, 128, "tun_dst"),
    /// Ingress port number.
    InPort = (6, 0, 32, "in_port"),
    /// EtherType (after one VLAN tag).
    DlType = (6, 32, 16, "dl_type"),
    /// VLAN TCI with 0x1000 set when a tag is present; 0 without a tag.
    VlanTci = (6, 48, 16, "vlan_tci"),
    /// Register 0.
    Reg0 = (7, 0, 32, "reg0"),
    /// Register 1.
    Reg1 = (7, 32, 32, "reg1"),
    /// Register 2.
    Reg2 = (8, 0, 32, "reg2"),
    /// Register 3.
    Reg3 = (8, 32, 32, "reg3"),
    /// Register 4.
    Reg4 = (9, 0, 32, "reg4"),
    /// Register 5.
    Reg5 = (9, 32, 32, "reg5"),
    /// Register 6.
    Reg6 = (10, 0, 32, "reg6"),
    /// Register 7.
    Reg7 = (10, 32, 32, "reg7"),
    /// Ethernet source address.
    DlSrc = (11, 0, 48, "dl_src"),
    /// IP protocol, or ARP opcode (`arp_op`).
    NwProto = (11, 48, 8, "nw_proto"),
    /// IP DSCP bits (TOS & 0xfc).
    NwTos = (11, 56, 8, "nw_tos"),
    /// Ethernet destination address.
    DlDst = (12, 0, 48, "dl_dst"),
    /// IPv4 TTL or IPv6 hop limit.
    NwTtl = (12, 48, 8, "nw_ttl"),
    /// Fragment flags: [`FRAG_ANY`], [`FRAG_LATER`].
    NwFrag = (12, 56, 8, "nw_frag"),
    /// IPv4 source, or ARP sender protocol address (`arp_spa`).
    NwSrc = (13, 0, 32, "nw_src"),
    /// IPv4 destination, or ARP target protocol address (`arp_tpa`).
    NwDst = (13, 32, 32, "nw_dst"),
    /// IPv6 source address.
    Ipv6Src = (14, 0, 128, "ipv6_src"),
    /// IPv6 destination address.
    Ipv6Dst = (16, 0, 128, "ipv6_dst"),
    /// ARP sender hardware address.
    ArpSha = (18, 0, 48, "arp_sha"),
    /// TCP/UDP source port, or ICMP/ICMPv6 type (`icmp_type`).
    TpSrc = (18, 48, 16, "tp_src"),
    /// ARP target hardware address.
    ArpTha = (19, 0, 48, "arp_tha"),
    /// TCP/UDP destination port, or ICMP/ICMPv6 code (`icmp_code`).
    TpDst = (19, 48, 16, "tp_dst"),
}

impl Field {
    /// `arp_op` shares `nw_proto`.
    pub const ARP_OP: Field = Field::NwProto;
    /// `arp_spa` shares `nw_src`.
    pub const ARP_SPA: Field = Field::NwSrc;
    /// `arp_tpa` shares `nw_dst`.
    pub const ARP_TPA: Field = Field::NwDst;
    /// `icmp_type` (and ICMPv6 type) shares `tp_src`.
    pub const ICMP_TYPE: Field = Field::TpSrc;
    /// `icmp_code` (and ICMPv6 code) shares `tp_dst`.
    pub const ICMP_CODE: Field = Field::TpDst;

    /// Width of the field in bits.
    #[inline]
    pub const fn width(self) -> u32 {
        self.layout().width as u32
    }

    /// All-ones value of the field's width.
    #[inline]
    pub const fn max_value(self) -> u128 {
        ones(self.width())
    }

    /// The register field `reg<n>`, for n in 0..8.
    pub const fn reg(n: usize) -> Option<Field> {
        match n {
            0 => Some(Field::Reg0),
            1 => Some(Field::Reg1),
            2 => Some(Field::Reg2),
            3 => Some(Field::Reg3),
            4 => Some(Field::Reg4),
            5 => Some(Field::Reg5),
            6 => Some(Field::Reg6),
            7 => Some(Field::Reg7),
            _ => None,
        }
    }

    /// Looks a field up by its flow-language name (including the shared aliases
    /// `arp_op`, `arp_spa`, `arp_tpa`, `icmp_type`, `icmp_code`).
    pub fn from_name(name: &str) -> Option<Field> {
        match name {
            "arp_op" => return Some(Field::ARP_OP),
            "arp_spa" => return Some(Field::ARP_SPA),
            "arp_tpa" => return Some(Field::ARP_TPA),
            "icmp_type" | "icmpv6_type" => return Some(Field::ICMP_TYPE),
            "icmp_code" | "icmpv6_code" => return Some(Field::ICMP_CODE),
            _ => {}
        }
        Field::ALL.iter().copied().find(|f| f.name() == name)
    }
}

impl fmt::Display for Field {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A u128 with the low `n` bits set (n <= 128).
#[inline]
const fn ones(n: u32) -> u128 {
    if n >= 128 {
        u128::MAX
    } else {
        (1u128 << n) - 1
    }
}

/// Reads a field out of a word array.
#[inline(always)]
fn words_get(w: &[u64; KEY_WORDS], f: Field) -> u128 {
    let l = f.layout();
    let i = l.word as usize;
    if l.width == 128 {
        ((w[i] as u128) << 64) | w[i + 1] as u128
    } else if l.width == 64 {
        w[i] as u128
    } else {
        ((w[i] >> l.shift) & ((1u64 << l.width) - 1)) as u128
    }
}

/// Replaces the bits of a field selected by `mask` (already truncated to the width).
#[inline(always)]
fn words_set_masked(w: &mut [u64; KEY_WORDS], f: Field, value: u128, mask: u128) {
    let l = f.layout();
    let i = l.word as usize;
    let mask = mask & ones(l.width as u32);
    let value = value & mask;
    if l.width == 128 {
        let (mh, ml) = ((mask >> 64) as u64, mask as u64);
        let (vh, vl) = ((value >> 64) as u64, value as u64);
        w[i] = (w[i] & !mh) | vh;
        w[i + 1] = (w[i + 1] & !ml) | vl;
    } else {
        let m = (mask as u64) << l.shift;
        let v = (value as u64) << l.shift;
        w[i] = (w[i] & !m) | v;
    }
}

const K: u64 = 0xf135_7aea_2e62_a9c5;

/// Final avalanche of a word hash, so both the low bits (bucket index) and the high bits
/// (hashbrown's tag) depend on every input bit.
#[inline(always)]
pub(crate) fn finish_hash(h: u64) -> u64 {
    let h = (h ^ (h >> 32)).wrapping_mul(K);
    h ^ (h >> 29)
}

const HASH_SEED: u64 = 0x243f_6a88_85a3_08d3;

/// Multiply-xor hash (Fx-style, one lane) of a sequence of words. Used for the
/// classifier's compacted masked keys, which are usually 1–6 words.
#[inline(always)]
pub fn hash_word_iter(words: impl Iterator<Item = u64>) -> u64 {
    let mut h = HASH_SEED;
    for w in words {
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    finish_hash(h)
}

/// [`hash_word_iter`] over a slice.
#[inline(always)]
pub fn hash_words(words: &[u64]) -> u64 {
    hash_word_iter(words.iter().copied())
}

/// Per-pair constants of [`hash_full`] (digits of pi), so that moving a value from one
/// word pair to another changes the hash.
const PAIR_SEEDS: [u64; KEY_WORDS] = [
    0x1319_8a2e_0370_7344,
    0xa409_3822_299f_31d0,
    0x082e_fa98_ec4e_6c89,
    0x4528_21e6_38d0_1377,
    0xbe54_66cf_34e9_0c6c,
    0xc0ac_29b7_c97c_50dd,
    0x3f84_d5b5_b547_0917,
    0x9216_d5d9_8979_fb1b,
    0xd131_0ba6_98df_b5ac,
    0x2ffd_72db_d01a_dfb7,
    0xb8e1_afed_6a26_7e96,
    0xba7c_9045_f12c_7f99,
    0x24a1_9947_b391_6cf7,
    0x0801_f2e2_858e_fc16,
    0x6369_20d8_7157_4e69,
    0xa458_fea3_f493_3d7e,
    0x0d95_748f_728e_b658,
    0x718b_cd58_8215_4aee,
    0x7b54_a41d_c25a_59b5,
    0x9c30_d539_2af2_6013,
];

/// 64×64→128-bit multiply folded to 64 bits (the core of foldhash/wyhash).
#[inline(always)]
fn folded_mul(a: u64, b: u64) -> u64 {
    let p = (a as u128) * (b as u128);
    (p as u64) ^ ((p >> 64) as u64)
}

/// Hash of a full key's words, optionally masked: one folded multiply per pair of words,
/// all independent of each other, so the 20 words cost ten multiplies in parallel.
#[inline(always)]
fn hash_full(w: &[u64; KEY_WORDS], m: Option<&[u64; KEY_WORDS]>) -> u64 {
    let mut acc = HASH_SEED;
    for p in 0..KEY_WORDS / 2 {
        let (a, b) = match m {
            Some(m) => (w[2 * p] & m[2 * p], w[2 * p + 1] & m[2 * p + 1]),
            None => (w[2 * p], w[2 * p + 1]),
        };
        acc = acc.wrapping_add(folded_mul(a ^ PAIR_SEEDS[2 * p], b ^ PAIR_SEEDS[2 * p + 1]));
    }
    finish_hash(acc)
}

/// Why a frame was refused before it got a key. `Copy`, small, indexes drop counters.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum ParseDrop {
    /// The frame is shorter than an Ethernet header (14 bytes).
    TooShort = 0,
    /// The frame announces a VLAN tag but ends inside it.
    TruncatedVlan = 1,
}

impl ParseDrop {
    /// Number of variants (size of a counter array indexed by [`ParseDrop::index`]).
    pub const COUNT: usize = 2;

    /// Counter index of this reason.
    #[inline]
    pub const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for ParseDrop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ParseDrop::TooShort => "frame shorter than an ethernet header",
            ParseDrop::TruncatedVlan => "frame ends inside its vlan tag",
        })
    }
}

/// Tunnel metadata of a frame that arrived on a tunnel port (all zero otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TunnelMeta {
    /// VNI / key of the tunnel header.
    pub tun_id: u64,
    /// Outer source address as 128 bits (IPv4 mapped: see [`ip_to_u128`]); 0 = none.
    pub tun_src: u128,
    /// Outer destination address as 128 bits (IPv4 mapped); 0 = none.
    pub tun_dst: u128,
}

impl TunnelMeta {
    /// No tunnel: the frame came from a local port.
    pub const NONE: TunnelMeta = TunnelMeta {
        tun_id: 0,
        tun_src: 0,
        tun_dst: 0,
    };

    /// Metadata from a VNI and the outer addresses.
    pub fn new(tun_id: u64, tun_src: IpAddr, tun_dst: IpAddr) -> TunnelMeta {
        TunnelMeta {
            tun_id,
            tun_src: ip_to_u128(tun_src),
            tun_dst: ip_to_u128(tun_dst),
        }
    }
}

/// An address as the 128-bit value stored in `tun_src`/`tun_dst` (IPv4 mapped into
/// `::ffff:0:0/96`).
#[inline]
pub fn ip_to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(v4) => u128::from_be_bytes(v4.to_ipv6_mapped().octets()),
        IpAddr::V6(v6) => u128::from_be_bytes(v6.octets()),
    }
}

/// The inverse of [`ip_to_u128`]: an IPv4-mapped value comes back as IPv4.
#[inline]
pub fn u128_to_ip(v: u128) -> IpAddr {
    let v6 = Ipv6Addr::from(v);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

/// A MAC address as the 48-bit value stored in the key.
#[inline]
pub const fn mac_to_u64(mac: [u8; 6]) -> u64 {
    u64::from_be_bytes([0, 0, mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]])
}

/// The inverse of [`mac_to_u64`].
#[inline]
pub const fn u64_to_mac(v: u64) -> [u8; 6] {
    let b = v.to_be_bytes();
    [b[2], b[3], b[4], b[5], b[6], b[7]]
}

macro_rules! int_accessors {
    ($( $get:ident, $set:ident, $ty:ty, $field:expr; )*) => {
        $(
            #[doc = concat!("The `", stringify!($get), "` field.")]
            #[inline]
            pub fn $get(&self) -> $ty {
                words_get(&self.words, $field) as $ty
            }

            #[doc = concat!("Sets the `", stringify!($get), "` field.")]
            #[inline]
            pub fn $set(&mut self, v: $ty) {
                words_set_masked(&mut self.words, $field, v as u128, u128::MAX)
            }
        )*
    };
}

macro_rules! mac_accessors {
    ($( $get:ident, $set:ident, $field:expr; )*) => {
        $(
            #[doc = concat!("The `", stringify!($get), "` field as 6 bytes.")]
            #[inline]
            pub fn $get(&self) -> [u8; 6] {
                u64_to_mac(words_get(&self.words, $field) as u64)
            }

            #[doc = concat!("Sets the `", stringify!($get), "` field.")]
            #[inline]
            pub fn $set(&mut self, mac: [u8; 6]) {
                words_set_masked(&mut self.words, $field, mac_to_u64(mac) as u128, u128::MAX)
            }
        )*
    };
}

/// Header fields of one frame plus its pipeline context. See the module docs for the
/// layout and the fields shared between protocols.
#[derive(Clone, Copy, Eq)]
#[repr(C, align(8))]
pub struct FlowKey {
    /// The key as words; fields sit at the positions [`Field::layout`] gives.
    pub words: [u64; KEY_WORDS],
}

/// Which bits of a [`FlowKey`] a rule cares about (1 = significant). Same layout.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(C, align(8))]
pub struct FlowMask {
    /// The mask as words, aligned with [`FlowKey::words`].
    pub words: [u64; KEY_WORDS],
}

impl Default for FlowKey {
    fn default() -> Self {
        FlowKey::ZERO
    }
}

impl Default for FlowMask {
    fn default() -> Self {
        FlowMask::CATCH_ALL
    }
}

impl PartialEq for FlowKey {
    /// A branch-free word loop (xor, or) that compiles to a few SIMD instructions.
    #[inline]
    fn eq(&self, other: &Self) -> bool {
        let mut diff = 0u64;
        for (a, b) in self.words.iter().zip(&other.words) {
            diff |= a ^ b;
        }
        diff == 0
    }
}

impl std::hash::Hash for FlowKey {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(self.hash())
    }
}

impl std::hash::Hash for FlowMask {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        state.write_u64(hash_full(&self.words, None))
    }
}

impl FlowKey {
    /// The all-zero key.
    pub const ZERO: FlowKey = FlowKey {
        words: [0; KEY_WORDS],
    };

    /// Reads a field by id (the value is in the low `field.width()` bits).
    #[inline]
    pub fn get(&self, field: Field) -> u128 {
        words_get(&self.words, field)
    }

    /// Writes a field by id; bits above the field's width are ignored.
    #[inline]
    pub fn set(&mut self, field: Field, value: u128) {
        words_set_masked(&mut self.words, field, value, u128::MAX)
    }

    /// Writes only the bits of `field` that are 1 in `mask` (`set_field:V/M->F`).
    #[inline]
    pub fn set_masked(&mut self, field: Field, value: u128, mask: u128) {
        words_set_masked(&mut self.words, field, value, mask)
    }

    /// Reads `n_bits` bits starting at bit `ofs` of `field` (`reg0[8..15]` style
    /// sub-fields). Returns 0 for an empty or out-of-range slice.
    #[inline]
    pub fn get_bits(&self, field: Field, ofs: u32, n_bits: u32) -> u128 {
        if n_bits == 0 || ofs.saturating_add(n_bits) > field.width() {
            return 0;
        }
        (self.get(field) >> ofs) & ones(n_bits)
    }

    /// Writes `n_bits` bits starting at bit `ofs` of `field` from the low bits of `value`
    /// (the destination half of `move`). Does nothing for an out-of-range slice.
    #[inline]
    pub fn set_bits(&mut self, field: Field, ofs: u32, n_bits: u32, value: u128) {
        if n_bits == 0 || ofs.saturating_add(n_bits) > field.width() {
            return;
        }
        self.set_masked(field, value << ofs, ones(n_bits) << ofs)
    }

    /// This key with every bit outside `mask` cleared.
    #[inline]
    pub fn masked(&self, mask: &FlowMask) -> FlowKey {
        let mut out = FlowKey::ZERO;
        for i in 0..KEY_WORDS {
            out.words[i] = self.words[i] & mask.words[i];
        }
        out
    }

    /// Whether this key equals `value` on every bit of `mask` (a rule's match test).
    #[inline]
    pub fn matches(&self, value: &FlowKey, mask: &FlowMask) -> bool {
        let mut diff = 0u64;
        for i in 0..KEY_WORDS {
            diff |= (self.words[i] ^ value.words[i]) & mask.words[i];
        }
        diff == 0
    }

    /// Fast non-cryptographic hash of the whole key (the exact-match cache's hash).
    #[inline]
    pub fn hash(&self) -> u64 {
        hash_full(&self.words, None)
    }

    /// Hash of the key masked by `mask`, equal to `self.masked(mask).hash()`.
    #[inline]
    pub fn hash_masked(&self, mask: &FlowMask) -> u64 {
        hash_full(&self.words, Some(&mask.words))
    }

    int_accessors! {
        in_port, set_in_port, u32, Field::InPort;
        tun_id, set_tun_id, u64, Field::TunId;
        metadata, set_metadata, u64, Field::Metadata;
        dl_type, set_dl_type, u16, Field::DlType;
        vlan_tci, set_vlan_tci, u16, Field::VlanTci;
        nw_proto, set_nw_proto, u8, Field::NwProto;
        nw_tos, set_nw_tos, u8, Field::NwTos;
        nw_ttl, set_nw_ttl, u8, Field::NwTtl;
        nw_frag, set_nw_frag, u8, Field::NwFrag;
        tp_src, set_tp_src, u16, Field::TpSrc;
        tp_dst, set_tp_dst, u16, Field::TpDst;
    }

    mac_accessors! {
        dl_src, set_dl_src, Field::DlSrc;
        dl_dst, set_dl_dst, Field::DlDst;
        arp_sha, set_arp_sha, Field::ArpSha;
        arp_tha, set_arp_tha, Field::ArpTha;
    }

    /// Register `reg<n>` (n in 0..8; other n read as 0).
    #[inline]
    pub fn reg(&self, n: usize) -> u32 {
        Field::reg(n).map_or(0, |f| self.get(f) as u32)
    }

    /// Sets register `reg<n>` (n in 0..8; other n are ignored).
    #[inline]
    pub fn set_reg(&mut self, n: usize, v: u32) {
        if let Some(f) = Field::reg(n) {
            self.set(f, v as u128)
        }
    }

    /// Outer source of the tunnel (IPv4-mapped values come back as IPv4).
    pub fn tun_src(&self) -> IpAddr {
        u128_to_ip(self.get(Field::TunSrc))
    }

    /// Sets the tunnel's outer source.
    pub fn set_tun_src(&mut self, ip: IpAddr) {
        self.set(Field::TunSrc, ip_to_u128(ip))
    }

    /// Outer destination of the tunnel (IPv4-mapped values come back as IPv4).
    pub fn tun_dst(&self) -> IpAddr {
        u128_to_ip(self.get(Field::TunDst))
    }

    /// Sets the tunnel's outer destination.
    pub fn set_tun_dst(&mut self, ip: IpAddr) {
        self.set(Field::TunDst, ip_to_u128(ip))
    }

    /// IPv4 source (or ARP `spa`).
    pub fn nw_src(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.get(Field::NwSrc) as u32)
    }

    /// Sets the IPv4 source (or ARP `spa`).
    pub fn set_nw_src(&mut self, ip: Ipv4Addr) {
        self.set(Field::NwSrc, u32::from(ip) as u128)
    }

    /// IPv4 destination (or ARP `tpa`).
    pub fn nw_dst(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.get(Field::NwDst) as u32)
    }

    /// Sets the IPv4 destination (or ARP `tpa`).
    pub fn set_nw_dst(&mut self, ip: Ipv4Addr) {
        self.set(Field::NwDst, u32::from(ip) as u128)
    }

    /// IPv6 source.
    pub fn ipv6_src(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.get(Field::Ipv6Src))
    }

    /// Sets the IPv6 source.
    pub fn set_ipv6_src(&mut self, ip: Ipv6Addr) {
        self.set(Field::Ipv6Src, u128::from(ip))
    }

    /// IPv6 destination.
    pub fn ipv6_dst(&self) -> Ipv6Addr {
        Ipv6Addr::from(self.get(Field::Ipv6Dst))
    }

    /// Sets the IPv6 destination.
    pub fn set_ipv6_dst(&mut self, ip: Ipv6Addr) {
        self.set(Field::Ipv6Dst, u128::from(ip))
    }

    /// ARP opcode (shares `nw_proto`; opcodes above 255 are not kept).
    pub fn arp_op(&self) -> u8 {
        self.nw_proto()
    }

    /// ICMP/ICMPv6 type (shares `tp_src`).
    pub fn icmp_type(&self) -> u8 {
        self.tp_src() as u8
    }

    /// ICMP/ICMPv6 code (shares `tp_dst`).
    pub fn icmp_code(&self) -> u8 {
        self.tp_dst() as u8
    }

    /// Parses a frame into a new key. See the module docs for the parsing policy.
    #[inline]
    pub fn extract(frame: &[u8], in_port: u32, tun: &TunnelMeta) -> Result<FlowKey, ParseDrop> {
        let mut key = FlowKey::ZERO;
        key.extract_into(frame, in_port, tun)?;
        Ok(key)
    }

    /// Parses a frame into `self`, overwriting every field (registers and metadata are
    /// reset to 0, as for a frame entering table 0).
    pub fn extract_into(
        &mut self,
        frame: &[u8],
        in_port: u32,
        tun: &TunnelMeta,
    ) -> Result<(), ParseDrop> {
        *self = FlowKey::ZERO;
        let w = &mut self.words;
        w[0] = tun.tun_id;
        w[2] = (tun.tun_src >> 64) as u64;
        w[3] = tun.tun_src as u64;
        w[4] = (tun.tun_dst >> 64) as u64;
        w[5] = tun.tun_dst as u64;

        let Some(eth) = frame.first_chunk::<14>() else {
            return Err(ParseDrop::TooShort);
        };
        let dst = mac48(&eth[0..6]);
        let src = mac48(&eth[6..12]);
        let mut dl_type = be16(eth[12], eth[13]);
        let mut tci = 0u16;
        let mut l3 = &frame[14..];
        if dl_type == ETH_TYPE_VLAN || dl_type == ETH_TYPE_QINQ {
            let Some(tag) = l3.first_chunk::<4>() else {
                return Err(ParseDrop::TruncatedVlan);
            };
            tci = be16(tag[0], tag[1]) | 0x1000;
            dl_type = be16(tag[2], tag[3]);
            l3 = &l3[4..];
        }
        if dl_type < 0x0600 {
            dl_type = DL_TYPE_NONE;
        }
        w[6] = in_port as u64 | (dl_type as u64) << 32 | (tci as u64) << 48;
        w[11] = src;
        w[12] = dst;

        match dl_type {
            ETH_TYPE_IPV4 => parse_ipv4(w, l3),
            ETH_TYPE_IPV6 => parse_ipv6(w, l3),
            ETH_TYPE_ARP => parse_arp(w, l3),
            _ => {}
        }
        Ok(())
    }
}

#[inline(always)]
fn be16(a: u8, b: u8) -> u16 {
    u16::from_be_bytes([a, b])
}

#[inline(always)]
fn mac48(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x[2..].copy_from_slice(&b[..6]);
    u64::from_be_bytes(x)
}

#[inline(always)]
fn be32(b: &[u8]) -> u32 {
    let mut x = [0u8; 4];
    x.copy_from_slice(&b[..4]);
    u32::from_be_bytes(x)
}

#[inline(always)]
fn be64(b: &[u8]) -> u64 {
    let mut x = [0u8; 8];
    x.copy_from_slice(&b[..8]);
    u64::from_be_bytes(x)
}

/// ARP for Ethernet/IPv4 only (htype 1, ptype 0x0800, hlen 6, plen 4), as OVS.
#[inline]
fn parse_arp(w: &mut [u64; KEY_WORDS], p: &[u8]) {
    let Some(a) = p.first_chunk::<28>() else {
        return;
    };
    if be16(a[0], a[1]) != 1 || be16(a[2], a[3]) != ETH_TYPE_IPV4 || a[4] != 6 || a[5] != 4 {
        return;
    }
    let op = be16(a[6], a[7]);
    if op <= 0xff {
        w[11] |= (op as u64) << 48;
    }
    w[18] = mac48(&a[8..14]);
    w[19] = mac48(&a[18..24]);
    w[13] = be32(&a[14..18]) as u64 | (be32(&a[24..28]) as u64) << 32;
}

#[inline]
fn parse_ipv4(w: &mut [u64; KEY_WORDS], p: &[u8]) {
    let Some(h) = p.first_chunk::<20>() else {
        return;
    };
    let ihl = ((h[0] & 0x0f) as usize) * 4;
    let tot_len = be16(h[2], h[3]) as usize;
    if h[0] >> 4 != 4 || ihl < 20 || tot_len < ihl || tot_len > p.len() {
        return;
    }
    let frag = be16(h[6], h[7]);
    let off = frag & 0x1fff;
    let mut nw_frag = 0u8;
    if frag & 0x2000 != 0 || off != 0 {
        nw_frag = FRAG_ANY;
        if off != 0 {
            nw_frag |= FRAG_LATER;
        }
    }
    let proto = h[9];
    w[11] |= (proto as u64) << 48 | ((h[1] & 0xfc) as u64) << 56;
    w[12] |= (h[8] as u64) << 48 | (nw_frag as u64) << 56;
    w[13] = be32(&h[12..16]) as u64 | (be32(&h[16..20]) as u64) << 32;
    if nw_frag & FRAG_LATER == 0 {
        // Ethernet padding after tot_len is not L4 payload.
        parse_l4(w, proto, &p[ihl..tot_len], IPPROTO_ICMP);
    }
}

#[inline]
fn parse_ipv6(w: &mut [u64; KEY_WORDS], p: &[u8]) {
    let Some(h) = p.first_chunk::<40>() else {
        return;
    };
    let payload_len = be16(h[4], h[5]) as usize;
    if h[0] >> 4 != 6 || 40 + payload_len > p.len() {
        return;
    }
    let tclass = (h[0] << 4) | (h[1] >> 4);
    w[14] = be64(&h[8..16]);
    w[15] = be64(&h[16..24]);
    w[16] = be64(&h[24..32]);
    w[17] = be64(&h[32..40]);
    let mut nxt = h[6];
    let mut rest = &p[40..40 + payload_len];
    let mut nw_frag = 0u8;
    let mut l4_ok = true;
    // Skip the common extension headers; a bounded number so forged chains cost little.
    for _ in 0..8 {
        let hdr_len = match nxt {
            0 | 43 | 60 => match rest.first_chunk::<2>() {
                Some(e) => (e[1] as usize + 1) * 8,
                None => {
                    l4_ok = false;
                    break;
                }
            },
            51 => match rest.first_chunk::<2>() {
                Some(e) => (e[1] as usize + 2) * 4,
                None => {
                    l4_ok = false;
                    break;
                }
            },
            44 => match rest.first_chunk::<8>() {
                Some(e) => {
                    let off = be16(e[2], e[3]) >> 3;
                    let more = e[3] & 1 != 0;
                    if off != 0 || more {
                        nw_frag |= FRAG_ANY;
                    }
                    if off != 0 {
                        nw_frag |= FRAG_LATER;
                    }
                    8
                }
                None => {
                    l4_ok = false;
                    break;
                }
            },
            _ => break,
        };
        if hdr_len > rest.len() {
            l4_ok = false;
            break;
        }
        nxt = rest[0];
        rest = &rest[hdr_len..];
    }
    w[11] |= (nxt as u64) << 48 | ((tclass & 0xfc) as u64) << 56;
    w[12] |= (h[7] as u64) << 48 | (nw_frag as u64) << 56;
    if l4_ok && nw_frag & FRAG_LATER == 0 {
        parse_l4(w, nxt, rest, IPPROTO_ICMPV6);
    }
}

/// TCP (20-byte header), UDP (8), ICMP (8: type, code, checksum, rest) and ICMPv6 (4).
/// A truncated L4 header leaves `tp_src`/`tp_dst` at 0.
#[inline]
fn parse_l4(w: &mut [u64; KEY_WORDS], proto: u8, p: &[u8], icmp: u8) {
    let (src, dst) = match proto {
        IPPROTO_TCP => match p.first_chunk::<20>() {
            Some(t) => (be16(t[0], t[1]), be16(t[2], t[3])),
            None => return,
        },
        IPPROTO_UDP => match p.first_chunk::<8>() {
            Some(u) => (be16(u[0], u[1]), be16(u[2], u[3])),
            None => return,
        },
        _ if proto == icmp => {
            let need = if icmp == IPPROTO_ICMP { 8 } else { 4 };
            if p.len() < need {
                return;
            }
            (p[0] as u16, p[1] as u16)
        }
        _ => return,
    };
    w[18] |= (src as u64) << 48;
    w[19] |= (dst as u64) << 48;
}

impl FlowMask {
    /// No bit significant: matches every key.
    pub const CATCH_ALL: FlowMask = FlowMask {
        words: [0; KEY_WORDS],
    };

    /// Every bit significant.
    pub const EXACT: FlowMask = FlowMask {
        words: [u64::MAX; KEY_WORDS],
    };

    /// The mask bits of a field.
    #[inline]
    pub fn get(&self, field: Field) -> u128 {
        words_get(&self.words, field)
    }

    /// Sets the mask bits of a field (bits above its width are ignored).
    #[inline]
    pub fn set(&mut self, field: Field, mask: u128) {
        words_set_masked(&mut self.words, field, mask, u128::MAX)
    }

    /// Makes a field fully significant (an exact match on it).
    #[inline]
    pub fn set_exact(&mut self, field: Field) {
        self.set(field, u128::MAX)
    }

    /// Builder form of [`FlowMask::set`].
    #[inline]
    pub fn with(mut self, field: Field, mask: u128) -> FlowMask {
        self.set(field, mask);
        self
    }

    /// Builder form of [`FlowMask::set_exact`].
    #[inline]
    pub fn with_exact(mut self, field: Field) -> FlowMask {
        self.set_exact(field);
        self
    }

    /// A mask of the top `len` bits of a field (an IPv4/IPv6 CIDR prefix).
    #[inline]
    pub fn with_prefix(self, field: Field, len: u32) -> FlowMask {
        let w = field.width();
        let len = len.min(w);
        let m = if len == 0 { 0 } else { ones(len) << (w - len) };
        self.with(field, m)
    }

    /// Whether no bit is significant.
    #[inline]
    pub fn is_catch_all(&self) -> bool {
        self.words.iter().all(|&w| w == 0)
    }

    /// Whether every significant bit of `self` is also significant in `other`.
    #[inline]
    pub fn is_subset_of(&self, other: &FlowMask) -> bool {
        (0..KEY_WORDS).all(|i| self.words[i] & !other.words[i] == 0)
    }

    /// The fields this mask touches, with their mask values.
    pub fn fields(&self) -> impl Iterator<Item = (Field, u128)> + '_ {
        Field::ALL
            .iter()
            .map(|&f| (f, self.get(f)))
            .filter(|&(_, m)| m != 0)
    }
}

impl fmt::Debug for FlowKey {
    /// Lists the non-zero fields, in ovs-ofctl spelling (values in hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowKey{")?;
        let mut first = true;
        for &field in Field::ALL {
            let v = self.get(field);
            if v != 0 {
                if !first {
                    f.write_str(",")?;
                }
                first = false;
                write!(f, "{}={:#x}", field.name(), v)?;
            }
        }
        f.write_str("}")
    }
}

impl fmt::Debug for FlowMask {
    /// Lists the fields with a non-zero mask (masks in hex).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FlowMask{")?;
        for (i, (field, m)) in self.fields().enumerate() {
            if i > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}/{:#x}", field.name(), m)?;
        }
        f.write_str("}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC_A: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0a];
    const MAC_B: [u8; 6] = [0x02, 0x00, 0x00, 0x00, 0x00, 0x0b];

    fn eth(dst: [u8; 6], src: [u8; 6], ty: u16) -> Vec<u8> {
        let mut f = Vec::new();
        f.extend_from_slice(&dst);
        f.extend_from_slice(&src);
        f.extend_from_slice(&ty.to_be_bytes());
        f
    }

    fn ipv4(proto: u8, src: [u8; 4], dst: [u8; 4], frag: u16, l4: &[u8]) -> Vec<u8> {
        let tot = 20 + l4.len();
        let mut h = vec![
            0x45,
            0xb9, // DSCP 46 (0xb8) + ECN 1
            (tot >> 8) as u8,
            tot as u8,
            0x12,
            0x34,
            (frag >> 8) as u8,
            frag as u8,
            64,
            proto,
            0,
            0,
        ];
        h.extend_from_slice(&src);
        h.extend_from_slice(&dst);
        h.extend_from_slice(l4);
        h
    }

    fn ipv6(nxt: u8, src: Ipv6Addr, dst: Ipv6Addr, payload: &[u8]) -> Vec<u8> {
        let mut h = vec![0x6b, 0x80, 0, 0];
        h.extend_from_slice(&(payload.len() as u16).to_be_bytes());
        h.push(nxt);
        h.push(255);
        h.extend_from_slice(&src.octets());
        h.extend_from_slice(&dst.octets());
        h.extend_from_slice(payload);
        h
    }

    fn tcp(src: u16, dst: u16) -> Vec<u8> {
        let mut t = vec![0u8; 20];
        t[0..2].copy_from_slice(&src.to_be_bytes());
        t[2..4].copy_from_slice(&dst.to_be_bytes());
        t[12] = 0x50;
        t
    }

    fn udp(src: u16, dst: u16) -> Vec<u8> {
        let mut u = vec![0u8; 8];
        u[0..2].copy_from_slice(&src.to_be_bytes());
        u[2..4].copy_from_slice(&dst.to_be_bytes());
        u[4..6].copy_from_slice(&8u16.to_be_bytes());
        u
    }

    fn arp_request() -> Vec<u8> {
        let mut f = eth([0xff; 6], MAC_A, ETH_TYPE_ARP);
        f.extend_from_slice(&[0, 1, 8, 0, 6, 4, 0, 1]);
        f.extend_from_slice(&MAC_A);
        f.extend_from_slice(&[198, 19, 1, 2]);
        f.extend_from_slice(&[0; 6]);
        f.extend_from_slice(&[198, 19, 1, 3]);
        f.extend_from_slice(&[0; 18]); // padding to 60 bytes
        f
    }

    fn tcp4_frame() -> Vec<u8> {
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ipv4(
            IPPROTO_TCP,
            [198, 19, 1, 2],
            [198, 19, 2, 3],
            0x4000,
            &tcp(40000, 80),
        ));
        f
    }

    #[test]
    fn layout_is_consistent() {
        assert_eq!(std::mem::size_of::<FlowKey>(), KEY_WORDS * 8);
        assert_eq!(std::mem::align_of::<FlowKey>(), 8);
        // No two fields overlap and each fits its word(s).
        let mut used = [0u64; KEY_WORDS];
        for &f in Field::ALL {
            let mut m = FlowMask::CATCH_ALL;
            m.set_exact(f);
            assert_eq!(m.get(f), f.max_value(), "{f}");
            for (u, &mw) in used.iter_mut().zip(&m.words) {
                assert_eq!(*u & mw, 0, "{f} overlaps");
                *u |= mw;
            }
            assert_eq!(Field::from_name(f.name()), Some(f));
        }
        assert_eq!(Field::from_name("arp_op"), Some(Field::NwProto));
        assert_eq!(Field::from_name("icmp_code"), Some(Field::TpDst));
        assert_eq!(Field::from_name("nope"), None);
    }

    #[test]
    fn field_get_set_round_trip() {
        let mut k = FlowKey::ZERO;
        for (n, &f) in Field::ALL.iter().enumerate() {
            let v = 0x0123_4567_89ab_cdef_fedc_ba98_7654_3210u128.rotate_left(n as u32 * 7)
                & f.max_value();
            k.set(f, v);
            assert_eq!(k.get(f), v, "{f}");
        }
        // Setting one field leaves the others alone.
        let before = k;
        k.set(Field::NwTtl, 7);
        for &f in Field::ALL {
            if f != Field::NwTtl {
                assert_eq!(k.get(f), before.get(f), "{f}");
            }
        }
        // Values wider than the field are truncated.
        k.set(Field::DlType, 0x1_0806);
        assert_eq!(k.dl_type(), 0x0806);
        // Masked set and bit slices.
        k.set(Field::Reg3, 0xaaaa_aaaa);
        k.set_masked(Field::Reg3, 0x0000_5555, 0x0000_ffff);
        assert_eq!(k.reg(3), 0xaaaa_5555);
        assert_eq!(k.get_bits(Field::Reg3, 16, 8), 0xaa);
        k.set_bits(Field::Reg3, 8, 4, 0xf);
        assert_eq!(k.reg(3), 0xaaaa_5f55);
        k.set_bits(Field::Reg3, 30, 4, 0xf); // out of range: ignored
        assert_eq!(k.reg(3), 0xaaaa_5f55);
        k.set_ipv6_src("2001:db8::1".parse().unwrap());
        assert_eq!(k.ipv6_src(), "2001:db8::1".parse::<Ipv6Addr>().unwrap());
        k.set_tun_src("198.18.0.1".parse().unwrap());
        assert_eq!(k.tun_src(), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(k.get(Field::TunSrc) >> 32, 0xffff);
    }

    #[test]
    fn prefix_masks() {
        let m = FlowMask::CATCH_ALL.with_prefix(Field::NwDst, 24);
        assert_eq!(m.get(Field::NwDst), 0xffff_ff00);
        let m = FlowMask::CATCH_ALL.with_prefix(Field::Ipv6Dst, 64);
        assert_eq!(m.get(Field::Ipv6Dst), (u64::MAX as u128) << 64);
        assert!(
            FlowMask::CATCH_ALL
                .with_prefix(Field::NwDst, 0)
                .is_catch_all()
        );
    }

    #[test]
    fn hashes_agree() {
        let k = FlowKey::extract(&tcp4_frame(), 3, &TunnelMeta::NONE).unwrap();
        let m = FlowMask::CATCH_ALL
            .with_exact(Field::InPort)
            .with_prefix(Field::NwDst, 24);
        assert_eq!(k.hash_masked(&m), k.masked(&m).hash());
        let mut k2 = k;
        k2.set_tp_src(1);
        assert_ne!(k.hash(), k2.hash());
        assert_eq!(k.hash_masked(&m), k2.hash_masked(&m));
        assert!(k2.matches(&k, &m));
        assert!(!k2.matches(&k, &FlowMask::EXACT));
    }

    #[test]
    fn extract_arp_request() {
        let k = FlowKey::extract(&arp_request(), 5, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.in_port(), 5);
        assert_eq!(k.dl_type(), ETH_TYPE_ARP);
        assert_eq!(k.dl_dst(), [0xff; 6]);
        assert_eq!(k.dl_src(), MAC_A);
        assert_eq!(k.arp_op(), 1);
        assert_eq!(k.get(Field::ARP_SPA), 0xc613_0102);
        assert_eq!(k.nw_dst(), Ipv4Addr::new(198, 19, 1, 3));
        assert_eq!(k.arp_sha(), MAC_A);
        assert_eq!(k.arp_tha(), [0; 6]);
        assert_eq!(k.tp_src(), 0);
    }

    #[test]
    fn extract_ipv4_tcp() {
        let tun = TunnelMeta::new(
            5001,
            "198.18.0.2".parse().unwrap(),
            "198.18.0.1".parse().unwrap(),
        );
        let k = FlowKey::extract(&tcp4_frame(), 7, &tun).unwrap();
        assert_eq!(k.in_port(), 7);
        assert_eq!(k.tun_id(), 5001);
        assert_eq!(k.tun_src(), "198.18.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(k.tun_dst(), "198.18.0.1".parse::<IpAddr>().unwrap());
        assert_eq!(k.dl_src(), MAC_A);
        assert_eq!(k.dl_dst(), MAC_B);
        assert_eq!(k.dl_type(), ETH_TYPE_IPV4);
        assert_eq!(k.vlan_tci(), 0);
        assert_eq!(k.nw_src(), Ipv4Addr::new(198, 19, 1, 2));
        assert_eq!(k.nw_dst(), Ipv4Addr::new(198, 19, 2, 3));
        assert_eq!(k.nw_proto(), IPPROTO_TCP);
        assert_eq!(k.nw_tos(), 0xb8);
        assert_eq!(k.nw_ttl(), 64);
        assert_eq!(k.nw_frag(), 0); // DF only
        assert_eq!((k.tp_src(), k.tp_dst()), (40000, 80));
        assert_eq!(k.metadata(), 0);
    }

    #[test]
    fn extract_ipv4_udp_icmp_and_options() {
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ipv4(
            IPPROTO_UDP,
            [1, 2, 3, 4],
            [5, 6, 7, 8],
            0,
            &udp(53, 5353),
        ));
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(
            (k.nw_proto(), k.tp_src(), k.tp_dst()),
            (IPPROTO_UDP, 53, 5353)
        );

        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ipv4(
            IPPROTO_ICMP,
            [1, 2, 3, 4],
            [5, 6, 7, 8],
            0,
            &[8, 0, 0, 0, 0, 1, 0, 1],
        ));
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!((k.icmp_type(), k.icmp_code()), (8, 0));
        assert_eq!(k.nw_proto(), IPPROTO_ICMP);

        // IHL 6 (4 bytes of options) before UDP.
        let mut ip = ipv4(IPPROTO_UDP, [1, 2, 3, 4], [5, 6, 7, 8], 0, &[]);
        ip[0] = 0x46;
        ip.extend_from_slice(&[1, 1, 1, 0]);
        ip.extend(udp(1000, 2000));
        let tot = ip.len() as u16;
        ip[2..4].copy_from_slice(&tot.to_be_bytes());
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ip);
        f.extend_from_slice(&[0xee; 10]); // Ethernet padding
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!((k.tp_src(), k.tp_dst()), (1000, 2000));
    }

    #[test]
    fn extract_ipv4_fragments() {
        // First fragment (MF set, offset 0): L4 present.
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ipv4(
            IPPROTO_UDP,
            [1, 2, 3, 4],
            [5, 6, 7, 8],
            0x2000,
            &udp(1, 2),
        ));
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.nw_frag(), FRAG_ANY);
        assert_eq!((k.tp_src(), k.tp_dst()), (1, 2));
        // Later fragment: no L4 even though the bytes look like UDP.
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ipv4(
            IPPROTO_UDP,
            [1, 2, 3, 4],
            [5, 6, 7, 8],
            185,
            &udp(1, 2),
        ));
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.nw_frag(), FRAG_ANY | FRAG_LATER);
        assert_eq!((k.tp_src(), k.tp_dst()), (0, 0));
        assert_eq!(k.nw_proto(), IPPROTO_UDP);
    }

    #[test]
    fn extract_ipv6_tcp_icmpv6_and_ext_headers() {
        let s: Ipv6Addr = "fd00::1".parse().unwrap();
        let d: Ipv6Addr = "fd00::2".parse().unwrap();
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
        f.extend(ipv6(IPPROTO_TCP, s, d, &tcp(1234, 443)));
        let k = FlowKey::extract(&f, 2, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.dl_type(), ETH_TYPE_IPV6);
        assert_eq!((k.ipv6_src(), k.ipv6_dst()), (s, d));
        assert_eq!(k.nw_proto(), IPPROTO_TCP);
        assert_eq!(k.nw_ttl(), 255);
        assert_eq!(k.nw_tos(), 0xb8);
        assert_eq!((k.tp_src(), k.tp_dst()), (1234, 443));
        assert_eq!(k.nw_src(), Ipv4Addr::UNSPECIFIED);

        // Neighbour solicitation (ICMPv6 135) behind a hop-by-hop header.
        let mut payload = vec![IPPROTO_ICMPV6, 0, 1, 4, 0, 0, 0, 0];
        payload.extend_from_slice(&[135, 0, 0, 0, 0, 0, 0, 0]);
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
        f.extend(ipv6(0, s, d, &payload));
        let k = FlowKey::extract(&f, 2, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.nw_proto(), IPPROTO_ICMPV6);
        assert_eq!((k.icmp_type(), k.icmp_code()), (135, 0));

        // Later fragment via fragment header: no L4.
        let mut payload = vec![IPPROTO_UDP, 0, 0x00, 0x08, 0, 0, 0, 1];
        payload.extend(udp(9, 9));
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV6);
        f.extend(ipv6(44, s, d, &payload));
        let k = FlowKey::extract(&f, 2, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.nw_frag(), FRAG_ANY | FRAG_LATER);
        assert_eq!(k.nw_proto(), IPPROTO_UDP);
        assert_eq!(k.tp_src(), 0);
    }

    #[test]
    fn extract_vlan_and_8023() {
        let plain = tcp4_frame();
        let mut f = plain[..12].to_vec();
        f.extend_from_slice(&[0x81, 0x00, 0x20, 0x64]); // PCP 1, VID 100
        f.extend_from_slice(&plain[12..]);
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.vlan_tci(), 0x3064);
        assert_eq!(k.dl_type(), ETH_TYPE_IPV4);
        assert_eq!((k.tp_src(), k.tp_dst()), (40000, 80));

        assert_eq!(
            FlowKey::extract(&f[..16], 1, &TunnelMeta::NONE),
            Err(ParseDrop::TruncatedVlan)
        );
        assert_eq!(
            FlowKey::extract(&f[..13], 1, &TunnelMeta::NONE),
            Err(ParseDrop::TooShort)
        );
        let mut llc = eth(MAC_B, MAC_A, 46);
        llc.extend_from_slice(&[0x42; 46]);
        let k = FlowKey::extract(&llc, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.dl_type(), DL_TYPE_NONE);
    }

    #[test]
    fn extract_truncated_layers() {
        let full = tcp4_frame();
        let eth_only = FlowKey::extract(&full[..14], 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(eth_only.dl_type(), ETH_TYPE_IPV4);
        assert_eq!(eth_only.nw_proto(), 0);
        // Cut inside the TCP header: IPv4 tot_len now exceeds the frame, so L3 is invalid.
        let k = FlowKey::extract(&full[..14 + 20 + 10], 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.nw_src(), Ipv4Addr::UNSPECIFIED);
        // A consistent IPv4 header whose payload is a short TCP header: L3 but no L4.
        let mut f = eth(MAC_B, MAC_A, ETH_TYPE_IPV4);
        f.extend(ipv4(
            IPPROTO_TCP,
            [1, 2, 3, 4],
            [5, 6, 7, 8],
            0,
            &[0, 80, 0, 81],
        ));
        let k = FlowKey::extract(&f, 1, &TunnelMeta::NONE).unwrap();
        assert_eq!(k.nw_proto(), IPPROTO_TCP);
        assert_eq!(k.nw_src(), Ipv4Addr::new(1, 2, 3, 4));
        assert_eq!((k.tp_src(), k.tp_dst()), (0, 0));
        // Every prefix of every sample frame parses or drops without panicking.
        for frame in [full, arp_request()] {
            for n in 0..=frame.len() {
                let _ = FlowKey::extract(&frame[..n], 1, &TunnelMeta::NONE);
            }
        }
    }

    #[test]
    fn extract_into_resets_previous_fields() {
        let mut k = FlowKey::extract(&tcp4_frame(), 1, &TunnelMeta::NONE).unwrap();
        k.set_reg(0, 9);
        k.extract_into(&arp_request(), 2, &TunnelMeta::NONE)
            .unwrap();
        assert_eq!(
            k,
            FlowKey::extract(&arp_request(), 2, &TunnelMeta::NONE).unwrap()
        );
        assert_eq!(k.reg(0), 0);
    }

    proptest! {
        #[test]
        fn extract_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = FlowKey::extract(&bytes, 1, &TunnelMeta::NONE);
        }

        #[test]
        fn extract_never_panics_on_plausible_headers(
            ty in prop::sample::select(vec![ETH_TYPE_IPV4, ETH_TYPE_IPV6, ETH_TYPE_ARP, ETH_TYPE_VLAN, 0x0042]),
            first in prop::sample::select(vec![0x45u8, 0x4f, 0x60, 0x08, 0x00]),
            proto in prop::sample::select(vec![0u8, 1, 6, 17, 43, 44, 51, 58, 60]),
            tail in proptest::collection::vec(any::<u8>(), 0..120),
        ) {
            let mut f = eth(MAC_B, MAC_A, ty);
            f.push(first);
            f.extend_from_slice(&tail);
            if f.len() > 23 { f[23] = proto; } // IPv4 protocol
            if f.len() > 20 { f[20] = proto; } // IPv6 next header
            let r = FlowKey::extract(&f, 1, &TunnelMeta::NONE);
            if let Ok(k) = r {
                prop_assert_eq!(k.dl_src(), MAC_A);
            }
        }
    }
}
