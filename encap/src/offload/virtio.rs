//! The `virtio_net_hdr` in front of each frame of a TAP opened with `IFF_VNET_HDR`.

use super::OffloadError;

/// Field offsets of the virtio net header (10-byte form, little-endian).
pub mod field {
    use core::ops::Range;
    /// Flags ([`super::VirtioNetHdr::F_NEEDS_CSUM`], [`super::VirtioNetHdr::F_DATA_VALID`]).
    pub const FLAGS: usize = 0;
    /// GSO type.
    pub const GSO_TYPE: usize = 1;
    /// Length of the headers (Ethernet + IP + TCP) to copy into each segment; a hint.
    pub const HDR_LEN: Range<usize> = 2..4;
    /// Maximum payload per segment.
    pub const GSO_SIZE: Range<usize> = 4..6;
    /// Offset from the start of the frame where checksumming starts.
    pub const CSUM_START: Range<usize> = 6..8;
    /// Offset from `csum_start` where the checksum is stored.
    pub const CSUM_OFFSET: Range<usize> = 8..10;
    /// Number of merged receive buffers (12-byte form with `VIRTIO_NET_F_MRG_RXBUF`).
    pub const NUM_BUFFERS: Range<usize> = 10..12;
}

/// Length of the virtio net header without `num_buffers`.
pub const VIRTIO_NET_HDR_LEN: usize = 10;
/// Length of the virtio net header with `num_buffers` (`VIRTIO_NET_F_MRG_RXBUF`).
pub const VIRTIO_NET_HDR_MRG_LEN: usize = 12;

/// A read/write view of a virtio net header in a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Header<T> {
    /// Wraps a buffer without checks (getters still never panic; they read 0 when short).
    pub const fn new_unchecked(buffer: T) -> Header<T> {
        Header { buffer }
    }

    /// Wraps a buffer that holds at least the 10-byte header.
    pub fn new_checked(buffer: T) -> Result<Header<T>, OffloadError> {
        if buffer.as_ref().len() < VIRTIO_NET_HDR_LEN {
            return Err(OffloadError::Truncated);
        }
        Ok(Header { buffer })
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
            Some(&[a, b]) => u16::from_le_bytes([a, b]),
            _ => 0,
        }
    }
    /// Flags.
    pub fn flags(&self) -> u8 {
        self.byte(field::FLAGS)
    }
    /// GSO type (with the ECN bit).
    pub fn gso_type(&self) -> u8 {
        self.byte(field::GSO_TYPE)
    }
    /// Header length hint.
    pub fn hdr_len(&self) -> u16 {
        self.word(field::HDR_LEN)
    }
    /// Maximum payload per segment.
    pub fn gso_size(&self) -> u16 {
        self.word(field::GSO_SIZE)
    }
    /// Where checksumming starts.
    pub fn csum_start(&self) -> u16 {
        self.word(field::CSUM_START)
    }
    /// Where the checksum goes, from `csum_start`.
    pub fn csum_offset(&self) -> u16 {
        self.word(field::CSUM_OFFSET)
    }
    /// Number of merged buffers (0 when the buffer holds only the 10-byte form).
    pub fn num_buffers(&self) -> u16 {
        self.word(field::NUM_BUFFERS)
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Header<T> {
    fn set_word(&mut self, r: core::ops::Range<usize>, v: u16) {
        if let Some(b) = self.buffer.as_mut().get_mut(r) {
            b.copy_from_slice(&v.to_le_bytes());
        }
    }
    /// Sets the flags.
    pub fn set_flags(&mut self, v: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::FLAGS) {
            *b = v;
        }
    }
    /// Sets the GSO type.
    pub fn set_gso_type(&mut self, v: u8) {
        if let Some(b) = self.buffer.as_mut().get_mut(field::GSO_TYPE) {
            *b = v;
        }
    }
    /// Sets the header length hint.
    pub fn set_hdr_len(&mut self, v: u16) {
        self.set_word(field::HDR_LEN, v);
    }
    /// Sets the segment payload size.
    pub fn set_gso_size(&mut self, v: u16) {
        self.set_word(field::GSO_SIZE, v);
    }
    /// Sets where checksumming starts.
    pub fn set_csum_start(&mut self, v: u16) {
        self.set_word(field::CSUM_START, v);
    }
    /// Sets where the checksum goes.
    pub fn set_csum_offset(&mut self, v: u16) {
        self.set_word(field::CSUM_OFFSET, v);
    }
    /// Sets the number of merged buffers (ignored when the buffer is the 10-byte form).
    pub fn set_num_buffers(&mut self, v: u16) {
        self.set_word(field::NUM_BUFFERS, v);
    }
}

/// The fields of a virtio net header (`struct virtio_net_hdr`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct VirtioNetHdr {
    /// Flags: [`Self::F_NEEDS_CSUM`], [`Self::F_DATA_VALID`].
    pub flags: u8,
    /// GSO type: one of the `GSO_*` constants, possibly with [`Self::GSO_ECN`].
    pub gso_type: u8,
    /// Length of the headers to replicate into each segment (a hint; not trusted here).
    pub hdr_len: u16,
    /// Maximum payload per segment (the MSS).
    pub gso_size: u16,
    /// Offset from the start of the frame where checksumming starts.
    pub csum_start: u16,
    /// Offset from `csum_start` where the checksum is stored (16 for TCP).
    pub csum_offset: u16,
}

impl VirtioNetHdr {
    /// The checksum from `csum_start` on is still to be computed; the checksum field
    /// holds the pseudo-header sum.
    pub const F_NEEDS_CSUM: u8 = 1;
    /// The checksum has been validated.
    pub const F_DATA_VALID: u8 = 2;
    /// Not a GSO frame.
    pub const GSO_NONE: u8 = 0;
    /// TCP over IPv4 (TSO).
    pub const GSO_TCPV4: u8 = 1;
    /// UDP fragmentation offload over IPv4 (obsolete).
    pub const GSO_UDP: u8 = 3;
    /// TCP over IPv6 (TSO).
    pub const GSO_TCPV6: u8 = 4;
    /// UDP segmentation (USO).
    pub const GSO_UDP_L4: u8 = 5;
    /// The frame has CWR set (may only be on the first segment).
    pub const GSO_ECN: u8 = 0x80;

    /// Reads the 10-byte header at the start of `buf` (the rest, e.g. `num_buffers`, is
    /// ignored). Checks that `gso_type` is defined and that GSO frames have a
    /// `gso_size`.
    pub fn parse(buf: &[u8]) -> Result<VirtioNetHdr, OffloadError> {
        let h = Header::new_checked(buf)?;
        let r = VirtioNetHdr {
            flags: h.flags(),
            gso_type: h.gso_type(),
            hdr_len: h.hdr_len(),
            gso_size: h.gso_size(),
            csum_start: h.csum_start(),
            csum_offset: h.csum_offset(),
        };
        match r.gso_kind() {
            Self::GSO_NONE => {}
            Self::GSO_TCPV4 | Self::GSO_TCPV6 | Self::GSO_UDP | Self::GSO_UDP_L4 => {
                if r.gso_size == 0 {
                    return Err(OffloadError::ZeroGsoSize);
                }
            }
            _ => return Err(OffloadError::BadGsoType),
        }
        Ok(r)
    }

    /// Length of the emitted header (10 bytes).
    pub const fn buffer_len(&self) -> usize {
        VIRTIO_NET_HDR_LEN
    }

    /// Writes the 10-byte header at the start of `buf`.
    pub fn emit(&self, buf: &mut [u8]) -> Result<(), OffloadError> {
        let mut h = Header::new_checked(buf)?;
        h.set_flags(self.flags);
        h.set_gso_type(self.gso_type);
        h.set_hdr_len(self.hdr_len);
        h.set_gso_size(self.gso_size);
        h.set_csum_start(self.csum_start);
        h.set_csum_offset(self.csum_offset);
        Ok(())
    }

    /// The GSO type without the ECN bit.
    pub const fn gso_kind(&self) -> u8 {
        self.gso_type & !Self::GSO_ECN
    }
}
