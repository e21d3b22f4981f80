//! Values that flows match on and write: MAC addresses, masked values, port references.
//!
//! Every match field is stored as a [`Masked`] value whose `value` is already ANDed with
//! its `mask` (the datapath can copy both straight into a classifier key/mask pair) and
//! whose mask is all-ones for an exact match. [`FieldValue`] is the same thing without a
//! static type, for code that walks the [field registry](super::field) generically
//! (`set_field`, `move`, the printer).

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A 48-bit Ethernet MAC address, printed and parsed as `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// The broadcast address `ff:ff:ff:ff:ff:ff`.
    pub const BROADCAST: MacAddr = MacAddr([0xff; 6]);
    /// The all-zero address.
    pub const ZERO: MacAddr = MacAddr([0; 6]);

    /// The address as a big-endian 48-bit integer in the low bits of a `u64`.
    pub fn to_u64(self) -> u64 {
        self.0
            .iter()
            .fold(0u64, |acc, b| (acc << 8) | u64::from(*b))
    }

    /// The address whose big-endian value is the low 48 bits of `v`.
    pub fn from_u64(v: u64) -> MacAddr {
        let b = v.to_be_bytes();
        MacAddr([b[2], b[3], b[4], b[5], b[6], b[7]])
    }
}

impl MacAddr {
    /// The address as `aa:bb:cc:dd:ee:ff` (ASCII), without the formatting machinery.
    pub(crate) fn text(&self) -> [u8; 17] {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut s = [b':'; 17];
        for (i, x) in self.0.iter().enumerate() {
            s[i * 3] = HEX[usize::from(x >> 4)];
            s[i * 3 + 1] = HEX[usize::from(x & 0xf)];
        }
        s
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Only ASCII was written.
        f.pad(std::str::from_utf8(&self.text()).unwrap_or_default())
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// The error of parsing a [`MacAddr`] from text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid mac address '{0}' (expected six hex bytes like aa:bb:cc:dd:ee:ff)")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut n = 0;
        for part in s.split(':') {
            if n == 6 || part.is_empty() || part.len() > 2 {
                return Err(MacParseError(s.to_string()));
            }
            out[n] = u8::from_str_radix(part, 16).map_err(|_| MacParseError(s.to_string()))?;
            n += 1;
        }
        if n != 6 {
            return Err(MacParseError(s.to_string()));
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A type that a match field or `set_field` value can have: an unsigned integer, a MAC
/// address or an IP address. Gives the bit operations that masks need.
pub trait FieldType: Copy + Eq + fmt::Debug {
    /// The value with every bit set (an exact-match mask).
    fn all_ones() -> Self;
    /// Bitwise AND.
    fn and(self, other: Self) -> Self;
    /// True when every bit is zero.
    fn is_zero(self) -> bool;
    /// The untyped form.
    fn to_value(self) -> FieldValue;
    /// The typed form of an untyped value, if it has this type and fits.
    fn from_value(v: FieldValue) -> Option<Self>;
}

macro_rules! uint_field_type {
    ($($t:ty),*) => {$(
        impl FieldType for $t {
            fn all_ones() -> Self { <$t>::MAX }
            fn and(self, other: Self) -> Self { self & other }
            fn is_zero(self) -> bool { self == 0 }
            fn to_value(self) -> FieldValue { FieldValue::Uint(u64::from(self)) }
            fn from_value(v: FieldValue) -> Option<Self> {
                match v { FieldValue::Uint(n) => <$t>::try_from(n).ok(), _ => None }
            }
        }
    )*};
}
uint_field_type!(u8, u16, u32, u64);

impl FieldType for MacAddr {
    fn all_ones() -> Self {
        MacAddr::BROADCAST
    }
    fn and(self, other: Self) -> Self {
        MacAddr::from_u64(self.to_u64() & other.to_u64())
    }
    fn is_zero(self) -> bool {
        self == MacAddr::ZERO
    }
    fn to_value(self) -> FieldValue {
        FieldValue::Mac(self)
    }
    fn from_value(v: FieldValue) -> Option<Self> {
        match v {
            FieldValue::Mac(m) => Some(m),
            _ => None,
        }
    }
}

impl FieldType for Ipv4Addr {
    fn all_ones() -> Self {
        Ipv4Addr::BROADCAST
    }
    fn and(self, other: Self) -> Self {
        Ipv4Addr::from(u32::from(self) & u32::from(other))
    }
    fn is_zero(self) -> bool {
        self.is_unspecified()
    }
    fn to_value(self) -> FieldValue {
        FieldValue::Ipv4(self)
    }
    fn from_value(v: FieldValue) -> Option<Self> {
        match v {
            FieldValue::Ipv4(a) => Some(a),
            _ => None,
        }
    }
}

impl FieldType for Ipv6Addr {
    fn all_ones() -> Self {
        Ipv6Addr::from(u128::MAX)
    }
    fn and(self, other: Self) -> Self {
        Ipv6Addr::from(u128::from(self) & u128::from(other))
    }
    fn is_zero(self) -> bool {
        self.is_unspecified()
    }
    fn to_value(self) -> FieldValue {
        FieldValue::Ipv6(self)
    }
    fn from_value(v: FieldValue) -> Option<Self> {
        match v {
            FieldValue::Ipv6(a) => Some(a),
            _ => None,
        }
    }
}

/// A value with a mask: the match (or write) covers exactly the bits set in `mask`.
///
/// Constructed through [`Masked::new`] / [`Masked::exact`], `value` has no bits outside
/// `mask` (`value & mask == value`), so two equal matches compare equal and the datapath
/// can use (`value`, `mask`) directly as a classifier key and mask.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
pub struct Masked<T> {
    /// The bits to match (already ANDed with `mask`).
    pub value: T,
    /// Which bits of the field take part; all-ones for an exact match.
    pub mask: T,
}

impl<T: FieldType> Masked<T> {
    /// An exact match on `value` (mask all-ones).
    pub fn exact(value: T) -> Self {
        Masked {
            value,
            mask: T::all_ones(),
        }
    }

    /// A masked match; `value` is ANDed with `mask`.
    pub fn new(value: T, mask: T) -> Self {
        Masked {
            value: value.and(mask),
            mask,
        }
    }

    /// True when the mask is all-ones.
    pub fn is_exact(&self) -> bool {
        self.mask == T::all_ones()
    }

    /// True when `v` matches: `v & mask == value`.
    pub fn matches(&self, v: T) -> bool {
        v.and(self.mask) == self.value
    }

    /// True when `value` has no bits outside `mask` (always so for values built by
    /// [`Masked::new`]; checked for values that came in as JSON).
    pub fn is_normalized(&self) -> bool {
        self.value.and(self.mask) == self.value
    }

    /// The untyped form.
    pub fn to_value(self) -> Masked<FieldValue> {
        Masked {
            value: self.value.to_value(),
            mask: self.mask.to_value(),
        }
    }

    /// The typed form of an untyped masked value, if both parts have this type.
    pub fn from_value(v: Masked<FieldValue>) -> Option<Self> {
        Some(Masked {
            value: T::from_value(v.value)?,
            mask: T::from_value(v.mask)?,
        })
    }
}

/// An untyped field value: what `set_field` writes and what generic code passes around.
/// Which variant a field takes is given by its [`ValueKind`](super::field::ValueKind).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FieldValue {
    /// An unsigned integer of up to 64 bits (the field's width bounds it).
    Uint(u64),
    /// A MAC address.
    Mac(MacAddr),
    /// An IPv4 address.
    Ipv4(Ipv4Addr),
    /// An IPv6 address.
    Ipv6(Ipv6Addr),
}

impl FieldValue {
    /// Bitwise AND of two values of the same kind; `None` when the kinds differ.
    pub fn and(self, other: FieldValue) -> Option<FieldValue> {
        Some(match (self, other) {
            (FieldValue::Uint(a), FieldValue::Uint(b)) => FieldValue::Uint(a & b),
            (FieldValue::Mac(a), FieldValue::Mac(b)) => FieldValue::Mac(a.and(b)),
            (FieldValue::Ipv4(a), FieldValue::Ipv4(b)) => FieldValue::Ipv4(a.and(b)),
            (FieldValue::Ipv6(a), FieldValue::Ipv6(b)) => FieldValue::Ipv6(a.and(b)),
            _ => return None,
        })
    }

    /// The value as a 128-bit integer (MACs and addresses big-endian), for bit-range
    /// arithmetic in `move` and `load`.
    pub fn to_u128(self) -> u128 {
        match self {
            FieldValue::Uint(n) => u128::from(n),
            FieldValue::Mac(m) => u128::from(m.to_u64()),
            FieldValue::Ipv4(a) => u128::from(u32::from(a)),
            FieldValue::Ipv6(a) => u128::from(a),
        }
    }

    /// True when every bit is zero.
    pub fn is_zero(self) -> bool {
        self.to_u128() == 0
    }
}

/// A port as a flow names it: by OpenFlow port number or by port name. Names are
/// resolved to numbers by the switch when the flow is installed.
///
/// In JSON a number is a JSON number and a name a JSON string. A name never looks like a
/// number (the parser reads `5` and `0x5` as numbers), so the text form round-trips.
#[derive(Clone, PartialEq, Eq, Hash, Debug, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(untagged)]
pub enum PortRef {
    /// An OpenFlow port number.
    Number(u32),
    /// A port name, as given to `add-port`.
    Name(String),
}

impl PortRef {
    /// True when `name` may be used as a port name in flow text: non-empty, at most 64
    /// bytes of ASCII letters, digits, `-`, `_` and `.`, and not readable as a number.
    pub fn is_valid_name(name: &str) -> bool {
        !name.is_empty()
            && name.len() <= 64
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            && super::parse::parse_u64(name).is_none()
    }
}

impl fmt::Display for PortRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortRef::Number(n) => write!(f, "{n}"),
            PortRef::Name(s) => f.write_str(s),
        }
    }
}

impl From<u32> for PortRef {
    fn from(n: u32) -> Self {
        PortRef::Number(n)
    }
}

impl From<&str> for PortRef {
    fn from(s: &str) -> Self {
        PortRef::Name(s.to_string())
    }
}
