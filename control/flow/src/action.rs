//! [`Action`]: what a flow does to a packet, in OVS spelling.

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use super::field::Field;
use super::value::{FieldValue, MacAddr, Masked, PortRef};

/// A contiguous range of bits of a field, as `move` and `load` name it:
/// `NXM_OF_ETH_SRC[]` (whole field), `NXM_NX_REG0[3]` (one bit),
/// `NXM_NX_REG0[0..15]` (bits 0 to 15 inclusive). Bit 0 is the least significant.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct FieldRange {
    /// The field.
    pub field: Field,
    /// First (least significant) bit.
    pub start: u16,
    /// Last bit, inclusive.
    pub end: u16,
}

impl FieldRange {
    /// The whole field.
    pub fn whole(field: Field) -> FieldRange {
        FieldRange {
            field,
            start: 0,
            end: field.bits() - 1,
        }
    }

    /// Number of bits in the range.
    pub fn bits(&self) -> u16 {
        self.end - self.start + 1
    }

    /// True when the range covers the whole field.
    pub fn is_whole(&self) -> bool {
        self.start == 0 && self.end + 1 == self.field.bits()
    }

    /// True when `start <= end < field width`.
    pub fn is_valid(&self) -> bool {
        self.start <= self.end && self.end < self.field.bits()
    }

    /// The range as a mask over the field, as a 128-bit integer.
    pub fn mask_u128(&self) -> u128 {
        let width = u32::from(self.bits());
        let ones = if width >= 128 {
            u128::MAX
        } else {
            (1u128 << width) - 1
        };
        ones << self.start
    }
}

/// One action of a flow. The empty action list means drop (printed `actions=drop`).
///
/// Actions run in order. `goto_table` must be the last action and go to a later table;
/// `resubmit` runs the given table and comes back.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// `output:PORT`: send a copy to the port.
    Output(PortRef),
    /// `in_port`: send back out of the ingress port.
    InPort,
    /// `normal`: MAC-learning L2 switch (per `tun_id`, split horizon for tunnels).
    Normal,
    /// `flood`: every port but the ingress one (and no tunnel-to-tunnel).
    Flood,
    /// `goto_table:N`: continue in table N (a later table); must be last.
    GotoTable(u8),
    /// `resubmit(PORT,TABLE)`, `resubmit(,TABLE)` or `resubmit:PORT`: look the packet up
    /// again in TABLE (default: the current table) as if it came from PORT (default: its
    /// real ingress port), run that flow's actions, then continue here.
    Resubmit {
        /// Ingress port to pretend; `None` keeps the real one.
        port: Option<PortRef>,
        /// Table to look in; `None` means the current table.
        table: Option<u8>,
    },
    /// `set_field:VALUE[/MASK]->FIELD` (also `load:VALUE->FIELD[range]`): write the masked
    /// bits of the field; the mask is all-ones for a plain write.
    SetField {
        /// The field to write.
        field: Field,
        /// Value and which bits to write (value already ANDed with mask).
        value: Masked<FieldValue>,
    },
    /// `move:SRC[range]->DST[range]`: copy bits; both ranges have the same width.
    Move {
        /// Where the bits come from.
        src: FieldRange,
        /// Where they go.
        dst: FieldRange,
    },
    /// `mod_dl_src:MAC`.
    ModDlSrc(MacAddr),
    /// `mod_dl_dst:MAC`.
    ModDlDst(MacAddr),
    /// `mod_nw_src:IP` (needs `ip`).
    ModNwSrc(Ipv4Addr),
    /// `mod_nw_dst:IP` (needs `ip`).
    ModNwDst(Ipv4Addr),
    /// `mod_nw_ttl:TTL` (needs `ip` or `ipv6`).
    ModNwTtl(u8),
    /// `set_tunnel:VNI` / `set_tunnel64:ID`: set `tun_id`.
    SetTunnel(u64),
    /// `dec_ttl`: decrement the IP TTL / hop limit; a packet whose TTL expires is
    /// dropped (and counted). Non-IP packets pass unchanged.
    DecTtl,
}

impl Action {
    /// The field write this action amounts to, for actions that are a `set_field` in
    /// another spelling (`mod_dl_src`, `set_tunnel`, ...), so the datapath can treat them
    /// alike. `None` for other actions.
    pub fn as_set_field(&self) -> Option<(Field, Masked<FieldValue>)> {
        Some(match self {
            Action::SetField { field, value } => (*field, *value),
            Action::ModDlSrc(m) => (Field::DlSrc, Masked::exact(*m).to_value()),
            Action::ModDlDst(m) => (Field::DlDst, Masked::exact(*m).to_value()),
            Action::ModNwSrc(a) => (Field::NwSrc, Masked::exact(*a).to_value()),
            Action::ModNwDst(a) => (Field::NwDst, Masked::exact(*a).to_value()),
            Action::ModNwTtl(t) => (Field::NwTtl, Masked::exact(*t).to_value()),
            Action::SetTunnel(id) => (Field::TunId, Masked::exact(*id).to_value()),
            _ => return None,
        })
    }

    /// The fields this action reads or writes, whose prerequisites the flow's match must
    /// meet.
    pub fn fields(&self) -> Vec<Field> {
        match self {
            Action::Move { src, dst } => vec![src.field, dst.field],
            _ => self
                .as_set_field()
                .map(|(f, _)| vec![f])
                .unwrap_or_default(),
        }
    }
}
