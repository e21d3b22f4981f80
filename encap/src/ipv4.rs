//! A minimal IPv4 header view and repr: enough for the outer header of a tunnel.
//!
//! Options are tolerated on parse (the header length comes from IHL) but never emitted.
use crate::{DropReason, checksum};
use core::net::Ipv4Addr;

/// Field offsets.
pub mod field {
    use core::ops::Range;
    /// Version (high nibble) and IHL (low nibble).
    pub const VER_IHL: usize = 0;
    /// DSCP and ECN (the former TOS byte).
    pub const TOS: usize = 1;
    /// Total length.
    pub const LENGTH: Range<usize> = 2..4;
    /// Identification.
    pub const IDENT: Range<usize> = 4..6;
    /// Flags and fragment offset.
    pub const FLG_OFF: Range<usize> = 6..8;
    /// Time to live.
    pub const TTL: usize = 8;
    /// Protocol.
    pub const PROTOCOL: usize = 9;
    /// Header checksum.
    pub const CHECKSUM: Range<usize> = 10..12;
    /// Source address.
    pub const SRC_ADDR: Range<usize> = 12..16;
    /// Destination address.
    pub const DST_ADDR: Range<usize> = 16..20;
}

/// Length of an IPv4 header without options.
pub const HEADER_LEN: usize = 20;
/// The Don't Fragment flag within the flags/offset word.
pub const FLAG_DF: u16 = 0x4000;
/// The More Fragments flag within the flags/offset word.
pub const FLAG_MF: u16 = 0x2000;

/// A read/write view of an IPv4 header (and what follows it) in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (getters still never panic: they read 0 past the end).
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer after [`Packet::check_len`].
    pub fn new_checked(buffer: T) -> Result<Packet<T>, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header (including options) and the total length fit in the buffer.
    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        let hl = self.header_len();
        if hl < HEADER_LEN || hl > len {
            return Err(DropReason::BadIpHeaderLength);
        }
        let tl = usize::from(self.total_len());
        if tl < hl || tl > len {
            return Err(DropReason::BadIpLength);
        }
        Ok(())
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    fn byte(&self, i: usize) -> u8 {
        self.buffer.as_ref().get(i).copied().unwrap_or(0)
    }

    fn word(&self, r: core::ops::Range<usize>) -> u16 {
        match self.buffer.as_ref().get(r) {
            Some(&[a, b]) => u16::from_be_bytes([a, b]),
            _ => 0,
        }
    }

    fn addr(&self, r: core::ops::Range<usize>) -> Ipv4Addr {
        match self.buffer.as_ref().get(r) {
            Some(&[a, b, c, d]) => Ipv4Addr::new(a, b, c, d),
            _ => Ipv4Addr::UNSPECIFIED,
        }
    }

    /// IP version (4 for a valid header).
    pub fn version(&self) -> u8 {
        self.byte(field::VER_IHL) >> 4
    }
    /// Header length in bytes (IHL × 4).
    pub fn header_len(&self) -> usize {
        usize::from(self.byte(field::VER_IHL) & 0x0f) * 4
    }
    /// The DSCP/ECN byte (the TOS byte of RFC 791).
    pub fn tos(&self) -> u8 {
        self.byte(field::TOS)
    }
    /// Total length of the datagram.
    pub fn total_len(&self) -> u16 {
        self.word(field::LENGTH)
    }
    /// Identification.
    pub fn ident(&self) -> u16 {
        self.word(field::IDENT)
    }
    /// Don't Fragment flag.
    pub fn dont_frag(&self) -> bool {
        self.word(field::FLG_OFF) & FLAG_DF != 0
    }
    /// More Fragments flag.
    pub fn more_frags(&self) -> bool {
        self.word(field::FLG_OFF) & FLAG_MF != 0
    }
    /// Fragment offset in bytes.
    pub fn frag_offset(&self) -> u16 {
        (self.word(field::FLG_OFF) & 0x1fff) << 3
    }
    /// Whether this is a fragment (MF set or non-zero offset).
    pub fn is_fragment(&self) -> bool {
        self.word(field::FLG_OFF) & 0x3fff != 0
    }
    /// Time to live.
    pub fn ttl(&self) -> u8 {
        self.byte(field::TTL)
    }
    /// Protocol of the payload.
    pub fn protocol(&self) -> u8 {
        self.byte(field::PROTOCOL)
    }
    /// Header checksum as stored.
    pub fn checksum(&self) -> u16 {
        self.word(field::CHECKSUM)
    }
    /// Source address.
    pub fn src_addr(&self) -> Ipv4Addr {
        self.addr(field::SRC_ADDR)
    }
    /// Destination address.
    pub fn dst_addr(&self) -> Ipv4Addr {
        self.addr(field::DST_ADDR)
    }
    /// Whether the header checksum verifies (false if the header does not fit).
    pub fn verify_checksum(&self) -> bool {
        match self.buffer.as_ref().get(..self.header_len()) {
            Some(h) if h.len() >= HEADER_LEN => checksum::fold(checksum::sum(h)) == 0xffff,
            _ => false,
        }
    }
    /// The payload: from the end of the header to the total length (clamped to the buffer).
    pub fn payload(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = usize::from(self.total_len()).min(b.len());
        b.get(self.header_len()..end).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    fn set_word(&mut self, r: core::ops::Range<usize>, v: u16) {
        self.buffer.as_mut()[r].copy_from_slice(&v.to_be_bytes());
    }
    /// Sets version 4 and the header length (bytes, multiple of 4).
    pub fn set_version_and_header_len(&mut self, header_len: usize) {
        self.buffer.as_mut()[field::VER_IHL] = 0x40 | ((header_len / 4) as u8 & 0x0f);
    }
    /// Sets the DSCP/ECN byte.
    pub fn set_tos(&mut self, tos: u8) {
        self.buffer.as_mut()[field::TOS] = tos;
    }
    /// Sets the total length.
    pub fn set_total_len(&mut self, len: u16) {
        self.set_word(field::LENGTH, len);
    }
    /// Sets the identification.
    pub fn set_ident(&mut self, ident: u16) {
        self.set_word(field::IDENT, ident);
    }
    /// Sets flags and offset to "not a fragment", with DF as given.
    pub fn set_unfragmented(&mut self, df: bool) {
        self.set_word(field::FLG_OFF, if df { FLAG_DF } else { 0 });
    }
    /// Sets the time to live.
    pub fn set_ttl(&mut self, ttl: u8) {
        self.buffer.as_mut()[field::TTL] = ttl;
    }
    /// Sets the payload protocol.
    pub fn set_protocol(&mut self, p: u8) {
        self.buffer.as_mut()[field::PROTOCOL] = p;
    }
    /// Sets the checksum field as given.
    pub fn set_checksum(&mut self, c: u16) {
        self.set_word(field::CHECKSUM, c);
    }
    /// Sets the source address.
    pub fn set_src_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::SRC_ADDR].copy_from_slice(&a.octets());
    }
    /// Sets the destination address.
    pub fn set_dst_addr(&mut self, a: Ipv4Addr) {
        self.buffer.as_mut()[field::DST_ADDR].copy_from_slice(&a.octets());
    }
    /// Computes and stores the header checksum.
    pub fn fill_checksum(&mut self) {
        self.set_checksum(0);
        let hl = self.header_len();
        let c = checksum::checksum(&self.buffer.as_ref()[..hl]);
        self.set_checksum(c);
    }
}

/// The fields of an outer IPv4 header (without options).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// Source address.
    pub src_addr: Ipv4Addr,
    /// Destination address.
    pub dst_addr: Ipv4Addr,
    /// Payload protocol.
    pub protocol: u8,
    /// Time to live.
    pub ttl: u8,
    /// DSCP/ECN byte.
    pub tos: u8,
    /// Identification.
    pub ident: u16,
    /// Don't Fragment.
    pub dont_frag: bool,
    /// Payload length in bytes (total length minus the header).
    pub payload_len: u16,
}

impl Repr {
    /// Parses and validates a header: version 4, lengths, checksum, not a fragment.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, DropReason> {
        // Read the fixed 20 bytes once, as an array: no per-field bounds checks.
        let b = packet.buffer.as_ref();
        let Some(h) = b.first_chunk::<HEADER_LEN>() else {
            return Err(DropReason::Truncated);
        };
        if h[0] >> 4 != 4 {
            return Err(DropReason::BadIpVersion);
        }
        let hl = usize::from(h[0] & 0x0f) * 4;
        if hl < HEADER_LEN || hl > b.len() {
            return Err(DropReason::BadIpHeaderLength);
        }
        let total = u16::from_be_bytes([h[2], h[3]]);
        if usize::from(total) < hl || usize::from(total) > b.len() {
            return Err(DropReason::BadIpLength);
        }
        let sum = if hl == HEADER_LEN {
            checksum::sum(h)
        } else {
            checksum::sum(&b[..hl])
        };
        if checksum::fold(sum) != 0xffff {
            return Err(DropReason::BadIpChecksum);
        }
        let flags = u16::from_be_bytes([h[6], h[7]]);
        if flags & 0x3fff != 0 {
            return Err(DropReason::Fragment);
        }
        Ok(Repr {
            src_addr: Ipv4Addr::new(h[12], h[13], h[14], h[15]),
            dst_addr: Ipv4Addr::new(h[16], h[17], h[18], h[19]),
            protocol: h[9],
            ttl: h[8],
            tos: h[1],
            ident: u16::from_be_bytes([h[4], h[5]]),
            dont_frag: flags & FLAG_DF != 0,
            payload_len: total - hl as u16,
        })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header, checksum included.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`] (a caller bug, not untrusted input),
    /// or if `payload_len + 20` exceeds 65535.
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version_and_header_len(HEADER_LEN);
        packet.set_tos(self.tos);
        packet.set_total_len(
            u16::try_from(usize::from(self.payload_len) + HEADER_LEN)
                .expect("ipv4 total length over 65535"),
        );
        packet.set_ident(self.ident);
        packet.set_unfragmented(self.dont_frag);
        packet.set_ttl(self.ttl);
        packet.set_protocol(self.protocol);
        packet.set_src_addr(self.src_addr);
        packet.set_dst_addr(self.dst_addr);
        packet.fill_checksum();
    }
}
