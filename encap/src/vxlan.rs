//! VXLAN (RFC 7348): an 8-byte header in front of an Ethernet frame, carried in UDP.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |R|R|R|R|I|R|R|R|            Reserved                           |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                VXLAN Network Identifier (VNI) |   Reserved    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Reserved bits are written as zero and ignored on receive, as Linux does; only the I
//! flag is required.
use crate::DropReason;

/// Field offsets.
pub mod field {
    use core::ops::Range;
    /// Flags byte (I flag at 0x08).
    pub const FLAGS: usize = 0;
    /// Reserved after the flags.
    pub const RESERVED1: Range<usize> = 1..4;
    /// The 24-bit VNI.
    pub const VNI: Range<usize> = 4..7;
    /// Reserved after the VNI.
    pub const RESERVED2: usize = 7;
    /// The inner Ethernet frame.
    pub const PAYLOAD: usize = 8;
}

/// Length of the VXLAN header.
pub const HEADER_LEN: usize = 8;
/// The I flag: the VNI is valid.
pub const FLAG_I: u8 = 0x08;
/// IANA-assigned UDP destination port.
pub const PORT: u16 = 4789;
/// Largest VNI (24 bits).
pub const VNI_MAX: u32 = 0x00ff_ffff;

/// A read/write view of a VXLAN header and its payload.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<T: AsRef<[u8]>> {
    buffer: T,
}

impl<T: AsRef<[u8]>> Packet<T> {
    /// Wraps a buffer without checks (getters still never panic: they read 0 past the end).
    pub const fn new_unchecked(buffer: T) -> Packet<T> {
        Packet { buffer }
    }

    /// Wraps a buffer that holds at least the 8-byte header.
    pub fn new_checked(buffer: T) -> Result<Packet<T>, DropReason> {
        let p = Self::new_unchecked(buffer);
        p.check_len()?;
        Ok(p)
    }

    /// Checks that the header fits.
    pub fn check_len(&self) -> Result<(), DropReason> {
        if self.buffer.as_ref().len() < HEADER_LEN {
            Err(DropReason::Truncated)
        } else {
            Ok(())
        }
    }

    /// Consumes the view and returns the buffer.
    pub fn into_inner(self) -> T {
        self.buffer
    }

    /// The flags byte.
    pub fn flags(&self) -> u8 {
        self.buffer.as_ref().first().copied().unwrap_or(0)
    }
    /// Whether the I flag is set.
    pub fn vni_valid(&self) -> bool {
        self.flags() & FLAG_I != 0
    }
    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        match self.buffer.as_ref().get(field::VNI) {
            Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]),
            _ => 0,
        }
    }
    /// The inner Ethernet frame (empty if the header does not fit).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(field::PAYLOAD..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets the flags byte.
    pub fn set_flags(&mut self, flags: u8) {
        self.buffer.as_mut()[field::FLAGS] = flags;
    }
    /// Zeroes both reserved fields.
    pub fn clear_reserved(&mut self) {
        let b = self.buffer.as_mut();
        b[field::RESERVED1].fill(0);
        b[field::RESERVED2] = 0;
    }
    /// Sets the VNI (the top 8 bits of `vni` are ignored).
    pub fn set_vni(&mut self, vni: u32) {
        let [_, a, b, c] = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI].copy_from_slice(&[a, b, c]);
    }
    /// The inner frame, mutable.
    pub fn payload_mut(&mut self) -> &mut [u8] {
        &mut self.buffer.as_mut()[field::PAYLOAD..]
    }
}

/// A validated VXLAN header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr {
    /// The VNI (24 bits).
    pub vni: u32,
}

impl Repr {
    /// Parses a header: it must fit and carry the I flag; reserved bits are ignored.
    #[inline]
    pub fn parse<T: AsRef<[u8]>>(packet: &Packet<T>) -> Result<Repr, DropReason> {
        packet.check_len()?;
        if !packet.vni_valid() {
            return Err(DropReason::BadVxlanFlags);
        }
        Ok(Repr { vni: packet.vni() })
    }

    /// Length of the emitted header.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN
    }

    /// Writes the header: I flag, VNI, reserved bits zero.
    ///
    /// # Panics
    /// If the buffer is shorter than [`HEADER_LEN`] (a caller bug).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_flags(FLAG_I);
        packet.clear_reserved();
        packet.set_vni(self.vni);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // RFC 7348 §5 layout, VNI 0x123456, built by hand.
    const VECTOR: [u8; 8] = [0x08, 0, 0, 0, 0x12, 0x34, 0x56, 0];

    #[test]
    fn parse_vector() {
        let p = Packet::new_checked(&VECTOR[..]).unwrap();
        assert_eq!(p.flags(), 0x08);
        assert!(p.vni_valid());
        assert_eq!(p.vni(), 0x123456);
        assert!(p.payload().is_empty());
        assert_eq!(Repr::parse(&p), Ok(Repr { vni: 0x123456 }));
    }

    #[test]
    fn emit_vector() {
        let mut b = [0xffu8; 8];
        Repr { vni: 0x123456 }.emit(&mut Packet::new_unchecked(&mut b[..]));
        assert_eq!(b, VECTOR);
    }

    #[test]
    fn reserved_bits_ignored_i_flag_required() {
        let b = [0xff, 0xff, 0xff, 0xff, 0, 0, 7, 0xff];
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Ok(Repr { vni: 7 })
        );
        let b = [0xf7, 0, 0, 0, 0, 0, 7, 0];
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..])),
            Err(DropReason::BadVxlanFlags)
        );
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&b[..7])),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn getters_never_panic_on_short_buffers() {
        for n in 0..8 {
            let p = Packet::new_unchecked(&VECTOR[..n]);
            let _ = (p.flags(), p.vni(), p.payload());
        }
    }
}
