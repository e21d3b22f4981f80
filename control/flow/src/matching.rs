//! [`Match`]: what a flow matches, one optional masked value per registry field.

use std::net::{Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use encap::{ETHERTYPE_IPV4, ETHERTYPE_IPV6};

use super::error::FlowError;
use super::field::{Field, ValueKind};
use super::value::{FieldType, FieldValue, MacAddr, Masked, PortRef};

macro_rules! match_struct {
    ($( $(#[$doc:meta])* $name:ident : $t:ty => $variant:ident ),* $(,)?) => {
        /// What a flow matches. Every field is optional (absent = wildcard); present
        /// fields carry a [`Masked`] value whose mask is all-ones for an exact match.
        /// Field names and meanings are those of the [field registry](super::field).
        ///
        /// A `Match` built by the parser is *canonical*: values are ANDed with their
        /// masks, a mask of zero is dropped (it matches everything), non-maskable fields
        /// have all-ones masks and every prerequisite is met. [`Match::validate`] checks
        /// the same for a `Match` that arrived as JSON.
        #[derive(Clone, PartialEq, Eq, Hash, Debug, Default, Serialize, Deserialize)]
        #[serde(deny_unknown_fields)]
        pub struct Match {
            /// Ingress port, by number or name (names are resolved by the switch).
            #[serde(default, skip_serializing_if = "Option::is_none")]
            pub in_port: Option<PortRef>,
            $(
                $(#[$doc])*
                #[serde(default, skip_serializing_if = "Option::is_none")]
                pub $name: Option<Masked<$t>>,
            )*
        }

        impl Match {
            /// The value of `field`, untyped; `None` when the field is not matched.
            /// `in_port` is not a [`FieldValue`]: read [`Match::in_port`] instead (this
            /// returns `None` for it).
            pub fn get(&self, field: Field) -> Option<Masked<FieldValue>> {
                match field {
                    Field::InPort => None,
                    $( Field::$variant => self.$name.map(Masked::to_value), )*
                }
            }

            /// Sets (or with `None` clears) `field` from an untyped value. The value is
            /// ANDed with its mask. Fails when the value's kind or width does not fit the
            /// field, and for `in_port` (set [`Match::in_port`] directly).
            pub fn set(
                &mut self,
                field: Field,
                value: Option<Masked<FieldValue>>,
            ) -> Result<(), FlowError> {
                match field {
                    Field::InPort => Err(FlowError::WrongKind(field)),
                    $( Field::$variant => {
                        self.$name = match value {
                            None => None,
                            Some(v) => {
                                let t = Masked::<$t>::from_value(v)
                                    .ok_or(FlowError::WrongKind(field))?;
                                Some(Masked::new(t.value, t.mask))
                            }
                        };
                        Ok(())
                    } )*
                }
            }

            /// True when `field` is matched.
            pub fn is_set(&self, field: Field) -> bool {
                match field {
                    Field::InPort => self.in_port.is_some(),
                    $( Field::$variant => self.$name.is_some(), )*
                }
            }
        }
    };
}

match_struct! {
    /// Tunnel ID (VNI), 64 bits, maskable.
    tun_id: u64 => TunId,
    /// Outer IPv4 source of a tunnel packet, maskable.
    tun_src: Ipv4Addr => TunSrc,
    /// Outer IPv4 destination of a tunnel packet, maskable.
    tun_dst: Ipv4Addr => TunDst,
    /// Outer IPv6 source of a tunnel packet, maskable.
    tun_ipv6_src: Ipv6Addr => TunIpv6Src,
    /// Outer IPv6 destination of a tunnel packet, maskable.
    tun_ipv6_dst: Ipv6Addr => TunIpv6Dst,
    /// Metadata, 64 bits, maskable.
    metadata: u64 => Metadata,
    /// Register 0, maskable.
    reg0: u32 => Reg0,
    /// Register 1, maskable.
    reg1: u32 => Reg1,
    /// Register 2, maskable.
    reg2: u32 => Reg2,
    /// Register 3, maskable.
    reg3: u32 => Reg3,
    /// Register 4, maskable.
    reg4: u32 => Reg4,
    /// Register 5, maskable.
    reg5: u32 => Reg5,
    /// Register 6, maskable.
    reg6: u32 => Reg6,
    /// Register 7, maskable.
    reg7: u32 => Reg7,
    /// Ethernet source, maskable.
    dl_src: MacAddr => DlSrc,
    /// Ethernet destination, maskable.
    dl_dst: MacAddr => DlDst,
    /// Ethertype, exact.
    dl_type: u16 => DlType,
    /// ARP opcode, exact; needs `arp`.
    arp_op: u16 => ArpOp,
    /// ARP sender IPv4 address, maskable; needs `arp`.
    arp_spa: Ipv4Addr => ArpSpa,
    /// ARP target IPv4 address, maskable; needs `arp`.
    arp_tpa: Ipv4Addr => ArpTpa,
    /// ARP sender MAC, maskable; needs `arp`.
    arp_sha: MacAddr => ArpSha,
    /// ARP target MAC, maskable; needs `arp`.
    arp_tha: MacAddr => ArpTha,
    /// IPv4 source, maskable; needs `ip`.
    nw_src: Ipv4Addr => NwSrc,
    /// IPv4 destination, maskable; needs `ip`.
    nw_dst: Ipv4Addr => NwDst,
    /// IPv6 source, maskable; needs `ipv6`.
    ipv6_src: Ipv6Addr => Ipv6Src,
    /// IPv6 destination, maskable; needs `ipv6`.
    ipv6_dst: Ipv6Addr => Ipv6Dst,
    /// IP protocol, exact; needs `ip` or `ipv6`.
    nw_proto: u8 => NwProto,
    /// DSCP in TOS-byte position (low two bits zero), exact; needs `ip` or `ipv6`.
    nw_tos: u8 => NwTos,
    /// TTL / hop limit, exact; needs `ip` or `ipv6`.
    nw_ttl: u8 => NwTtl,
    /// TCP/UDP source port, maskable; needs `tcp` or `udp`.
    tp_src: u16 => TpSrc,
    /// TCP/UDP destination port, maskable; needs `tcp` or `udp`.
    tp_dst: u16 => TpDst,
    /// ICMP/ICMPv6 type, exact; needs `icmp` or `icmp6`.
    icmp_type: u8 => IcmpType,
    /// ICMP/ICMPv6 code, exact; needs `icmp` or `icmp6`.
    icmp_code: u8 => IcmpCode,
}

impl Match {
    /// A match on nothing (every packet).
    pub fn any() -> Match {
        Match::default()
    }

    /// True when no field is matched.
    pub fn is_catchall(&self) -> bool {
        *self == Match::default()
    }

    /// The matched fields, in registry order.
    pub fn fields(&self) -> impl Iterator<Item = Field> + '_ {
        Field::ALL.into_iter().filter(|f| self.is_set(*f))
    }

    /// True when this match is IPv4 (`dl_type=0x0800`).
    pub fn is_ipv4(&self) -> bool {
        self.dl_type.map(|x| x.value) == Some(ETHERTYPE_IPV4)
    }

    /// True when this match is IPv6 (`dl_type=0x86dd`).
    pub fn is_ipv6(&self) -> bool {
        self.dl_type.map(|x| x.value) == Some(ETHERTYPE_IPV6)
    }

    /// Checks that the match is canonical and consistent: prerequisites met, masks only
    /// on maskable fields, values within their masks, no zero masks, `nw_tos` with its
    /// two ECN bits clear and port names valid. The parser only produces matches that
    /// pass; the control server calls this on matches that arrived as JSON.
    pub fn validate(&self) -> Result<(), FlowError> {
        if let Some(PortRef::Name(n)) = &self.in_port
            && !PortRef::is_valid_name(n)
        {
            return Err(FlowError::BadPortName(n.clone()));
        }
        for f in self.fields() {
            if !f.prereq().is_met(self) {
                return Err(FlowError::MissingPrereq(f));
            }
            let Some(v) = self.get(f) else { continue };
            let ones = all_ones(f);
            if !f.maskable() && v.mask != ones {
                return Err(FlowError::NotMaskable(f));
            }
            if v.mask.is_zero() {
                return Err(FlowError::ZeroMask(f));
            }
            if v.value.and(v.mask) != Some(v.value) {
                return Err(FlowError::ValueOutsideMask(f));
            }
        }
        if let Some(t) = self.nw_tos
            && t.value & 3 != 0
        {
            return Err(FlowError::NwTosEcn(t.value));
        }
        Ok(())
    }

    /// True when `self`, used as the match of a non-strict `modify` or `delete`, selects
    /// a flow whose match is `other`: every field of `self` is matched by `other` at
    /// least as specifically (other's mask covers self's mask) and with agreeing bits.
    /// The catch-all match selects every flow.
    pub fn covers(&self, other: &Match) -> bool {
        if let Some(p) = &self.in_port
            && other.in_port.as_ref() != Some(p)
        {
            return false;
        }
        self.fields().filter(|f| *f != Field::InPort).all(|f| {
            let (Some(a), Some(b)) = (self.get(f), other.get(f)) else {
                return false;
            };
            b.mask.and(a.mask) == Some(a.mask) && b.value.and(a.mask) == Some(a.value)
        })
    }
}

/// The all-ones value of a field's kind and width.
pub(crate) fn all_ones(f: Field) -> FieldValue {
    match f.kind() {
        ValueKind::Mac => FieldValue::Mac(MacAddr::BROADCAST),
        ValueKind::Ipv4 => FieldValue::Ipv4(Ipv4Addr::BROADCAST),
        ValueKind::Ipv6 => FieldValue::Ipv6(Ipv6Addr::all_ones()),
        ValueKind::Uint | ValueKind::Port => FieldValue::Uint(if f.bits() >= 64 {
            u64::MAX
        } else {
            (1u64 << f.bits()) - 1
        }),
    }
}
