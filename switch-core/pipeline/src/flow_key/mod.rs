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

mod hash;
mod parse;

use hash::hash_full;
pub use hash::{hash_word_iter, hash_words};
pub use parse::{HeaderOffsets, ParseDrop};

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
mod tests;
