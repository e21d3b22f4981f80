//! Why a packet was dropped (hot path) and why a template could not be built (setup).
use core::fmt;

/// Why the encapsulation or decapsulation of one packet failed.
///
/// `Copy` and `#[repr(u8)]`: the discriminant indexes a per-reason counter array, and
/// [`DropReason::as_str`] is the stable Prometheus label value. Never reorder or rename a
/// variant's string; append new variants at the end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum DropReason {
    /// The packet ends before a header it must contain.
    Truncated = 0,
    /// VXLAN header without the I flag (RFC 7348 requires it set).
    BadVxlanFlags,
    /// Geneve version other than 0.
    BadGeneveVersion,
    /// Geneve options (the header's option length, or one option's length) run past the
    /// end of the header or packet.
    GeneveOptionsOverrun,
    /// A Geneve option with the critical bit that the receiver does not understand.
    UnknownCriticalOption,
    /// The inner payload is of a protocol this tunnel cannot carry or deliver.
    UnsupportedInnerProtocol,
    /// Outer IP version is neither the expected 4 nor 6.
    BadIpVersion,
    /// Outer IPv4 header length (IHL) below 5 words or past the packet.
    BadIpHeaderLength,
    /// Outer IP total/payload length smaller than the header or larger than the buffer.
    BadIpLength,
    /// Outer IPv4 header checksum does not verify.
    BadIpChecksum,
    /// Outer IPv4 packet is a fragment; Weft does not reassemble.
    Fragment,
    /// Outer IP protocol is not the one of this tunnel (UDP, or 4/41 for IP-in-IP).
    WrongIpProtocol,
    /// Outer UDP length field inconsistent with the IP payload.
    BadUdpLength,
    /// Outer UDP checksum (non-zero) does not verify.
    BadUdpChecksum,
    /// Outer UDP destination port is not the tunnel's port.
    WrongUdpPort,
    /// IP-in-IP: the inner IP version does not match the outer protocol (4 vs 41).
    InnerVersionMismatch,
    /// Encapsulation would send an inner packet whose TTL or hop limit reaches 0.
    TtlExpired,
    /// Not enough headroom in front of the inner frame for the outer headers.
    NoHeadroom,
    /// The inner frame's range lies outside the buffer.
    FrameOutOfBounds,
    /// The encapsulated packet would exceed the 65535-byte IP/UDP length fields.
    FrameTooLarge,
    /// The VNI does not fit in 24 bits.
    VniOutOfRange,
}

impl DropReason {
    /// Every reason, in discriminant order (`ALL[r as usize] == r`).
    pub const ALL: [DropReason; 21] = [
        DropReason::Truncated,
        DropReason::BadVxlanFlags,
        DropReason::BadGeneveVersion,
        DropReason::GeneveOptionsOverrun,
        DropReason::UnknownCriticalOption,
        DropReason::UnsupportedInnerProtocol,
        DropReason::BadIpVersion,
        DropReason::BadIpHeaderLength,
        DropReason::BadIpLength,
        DropReason::BadIpChecksum,
        DropReason::Fragment,
        DropReason::WrongIpProtocol,
        DropReason::BadUdpLength,
        DropReason::BadUdpChecksum,
        DropReason::WrongUdpPort,
        DropReason::InnerVersionMismatch,
        DropReason::TtlExpired,
        DropReason::NoHeadroom,
        DropReason::FrameOutOfBounds,
        DropReason::FrameTooLarge,
        DropReason::VniOutOfRange,
    ];

    /// Number of reasons (the length of a counter array indexed by `reason as usize`).
    pub const COUNT: usize = Self::ALL.len();

    /// Stable snake_case name, used as a metrics label value.
    pub const fn as_str(self) -> &'static str {
        match self {
            DropReason::Truncated => "truncated",
            DropReason::BadVxlanFlags => "bad_vxlan_flags",
            DropReason::BadGeneveVersion => "bad_geneve_version",
            DropReason::GeneveOptionsOverrun => "geneve_options_overrun",
            DropReason::UnknownCriticalOption => "unknown_critical_option",
            DropReason::UnsupportedInnerProtocol => "unsupported_inner_protocol",
            DropReason::BadIpVersion => "bad_ip_version",
            DropReason::BadIpHeaderLength => "bad_ip_header_length",
            DropReason::BadIpLength => "bad_ip_length",
            DropReason::BadIpChecksum => "bad_ip_checksum",
            DropReason::Fragment => "fragment",
            DropReason::WrongIpProtocol => "wrong_ip_protocol",
            DropReason::BadUdpLength => "bad_udp_length",
            DropReason::BadUdpChecksum => "bad_udp_checksum",
            DropReason::WrongUdpPort => "wrong_udp_port",
            DropReason::InnerVersionMismatch => "inner_version_mismatch",
            DropReason::TtlExpired => "ttl_expired",
            DropReason::NoHeadroom => "no_headroom",
            DropReason::FrameOutOfBounds => "frame_out_of_bounds",
            DropReason::FrameTooLarge => "frame_too_large",
            DropReason::VniOutOfRange => "vni_out_of_range",
        }
    }

    /// One-line, lower-case description for humans.
    pub const fn description(self) -> &'static str {
        match self {
            DropReason::Truncated => "packet truncated",
            DropReason::BadVxlanFlags => "vxlan header without the i flag",
            DropReason::BadGeneveVersion => "geneve version is not 0",
            DropReason::GeneveOptionsOverrun => "geneve options run past the header",
            DropReason::UnknownCriticalOption => "unknown critical geneve option",
            DropReason::UnsupportedInnerProtocol => "unsupported inner protocol",
            DropReason::BadIpVersion => "bad outer ip version",
            DropReason::BadIpHeaderLength => "bad outer ipv4 header length",
            DropReason::BadIpLength => "bad outer ip length",
            DropReason::BadIpChecksum => "bad outer ipv4 header checksum",
            DropReason::Fragment => "outer ip fragment",
            DropReason::WrongIpProtocol => "unexpected outer ip protocol",
            DropReason::BadUdpLength => "bad outer udp length",
            DropReason::BadUdpChecksum => "bad outer udp checksum",
            DropReason::WrongUdpPort => "unexpected outer udp destination port",
            DropReason::InnerVersionMismatch => "inner ip version does not match outer protocol",
            DropReason::TtlExpired => "inner ttl or hop limit would reach 0",
            DropReason::NoHeadroom => "not enough headroom for the outer headers",
            DropReason::FrameOutOfBounds => "inner frame lies outside the buffer",
            DropReason::FrameTooLarge => "encapsulated packet too large",
            DropReason::VniOutOfRange => "vni does not fit in 24 bits",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.description())
    }
}

/// Why a tunnel template or an option list could not be built (setup path, not per packet).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BuildError {
    /// A Geneve option's data is not a multiple of 4 bytes or longer than 124 bytes.
    BadOptionLength {
        /// The offending data length in bytes.
        len: usize,
    },
    /// The Geneve options together exceed 252 bytes (63 four-byte words).
    OptionsTooLong,
    /// The output buffer is too small for what is being written.
    BufferTooSmall,
    /// Source port range with `min > max` or `min == 0`.
    BadPortRange {
        /// Lower bound given.
        min: u16,
        /// Upper bound given.
        max: u16,
    },
    /// Outer source and destination are of different IP versions.
    MixedAddressFamilies,
    /// Geneve protocol type that Weft cannot carry (only 0x6558, 0x0800, 0x86DD).
    UnsupportedProtocolType(u16),
}

impl fmt::Display for BuildError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BuildError::BadOptionLength { len } => write!(
                f,
                "geneve option data length {len} is not a multiple of 4 up to 124 bytes"
            ),
            BuildError::OptionsTooLong => f.write_str("geneve options exceed 252 bytes"),
            BuildError::BufferTooSmall => f.write_str("buffer too small"),
            BuildError::BadPortRange { min, max } => {
                write!(f, "bad udp source port range {min}..={max}")
            }
            BuildError::MixedAddressFamilies => {
                f.write_str("outer source and destination are of different ip versions")
            }
            BuildError::UnsupportedProtocolType(t) => {
                write!(f, "unsupported geneve protocol type {t:#06x}")
            }
        }
    }
}

impl core::error::Error for BuildError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn all_is_in_discriminant_order_and_names_are_unique_snake_case() {
        for (i, r) in DropReason::ALL.iter().enumerate() {
            assert_eq!(*r as usize, i);
            let s = r.as_str();
            assert!(
                s.bytes().all(|b| b.is_ascii_lowercase() || b == b'_'),
                "{s}"
            );
            for other in &DropReason::ALL[..i] {
                assert_ne!(other.as_str(), s);
            }
            let shown = std::format!("{r}");
            assert_eq!(shown, shown.to_lowercase());
        }
        assert_eq!(DropReason::COUNT, 21);
    }
}
