//! Geneve (RFC 8926): a variable-length header with TLV options, carried in UDP.
//!
//! ```text
//!  0                   1                   2                   3
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |Ver|  Opt Len  |O|C|    Rsvd.  |          Protocol Type        |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |        Virtual Network Identifier (VNI)       |    Reserved   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                    Variable-Length Options                    |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//!
//! Option:
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |          Option Class         |C|    Type     |R|R|R| Length  |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! |                 Variable-Length Option Data                   |
//! +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
//! ```
//!
//! Options are read through [`OptionIter`], an iterator over the borrowed header bytes,
//! and written with [`OptionWriter`] into a caller's buffer: neither allocates. A receiver
//! must drop a packet carrying a critical option it does not understand (RFC 8926 §3.5),
//! whatever the C bit says; the C bit is only a hint that such options may be present.
use crate::{BuildError, DropReason};

/// Field offsets.
pub mod field {
    use core::ops::Range;
    /// Version (2 bits) and option length in 4-byte words (6 bits).
    pub const VER_OPT_LEN: usize = 0;
    /// O and C flags, then reserved bits.
    pub const FLAGS: usize = 1;
    /// Protocol type of the payload (an EtherType).
    pub const PROTOCOL: Range<usize> = 2..4;
    /// The 24-bit VNI.
    pub const VNI: Range<usize> = 4..7;
    /// Reserved after the VNI.
    pub const RESERVED: usize = 7;
    /// Start of the options.
    pub const OPTIONS: usize = 8;
}

/// Length of the fixed Geneve header (without options).
pub const HEADER_LEN: usize = 8;
/// IANA-assigned UDP destination port.
pub const PORT: u16 = 6081;
/// The O flag: an OAM (control) packet.
pub const FLAG_O: u8 = 0x80;
/// The C flag: critical options are present.
pub const FLAG_C: u8 = 0x40;
/// The critical bit within an option's type.
pub const OPTION_CRITICAL: u8 = 0x80;
/// Length of one option's own header (class, type, length).
pub const OPTION_HEADER_LEN: usize = 4;
/// Largest option data length in bytes (5 bits of 4-byte words).
pub const OPTION_DATA_MAX: usize = 31 * 4;
/// Largest total options length in bytes (6 bits of 4-byte words).
pub const OPTIONS_MAX: usize = 63 * 4;
/// Largest Geneve header in bytes.
pub const HEADER_MAX: usize = HEADER_LEN + OPTIONS_MAX;

/// A read/write view of a Geneve header, its options and its payload.
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

    /// Checks that the fixed header fits and that the options it announces fit.
    pub fn check_len(&self) -> Result<(), DropReason> {
        let len = self.buffer.as_ref().len();
        if len < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if self.header_len() > len {
            return Err(DropReason::GeneveOptionsOverrun);
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

    /// Version (0 is the only one defined).
    pub fn version(&self) -> u8 {
        self.byte(field::VER_OPT_LEN) >> 6
    }
    /// Length of the options in bytes (the field counts 4-byte words).
    pub fn options_len(&self) -> usize {
        usize::from(self.byte(field::VER_OPT_LEN) & 0x3f) * 4
    }
    /// Length of the whole header, options included.
    pub fn header_len(&self) -> usize {
        HEADER_LEN + self.options_len()
    }
    /// The O (OAM) flag.
    pub fn oam(&self) -> bool {
        self.byte(field::FLAGS) & FLAG_O != 0
    }
    /// The C (critical options present) flag.
    pub fn critical(&self) -> bool {
        self.byte(field::FLAGS) & FLAG_C != 0
    }
    /// Protocol type of the payload.
    pub fn protocol_type(&self) -> u16 {
        match self.buffer.as_ref().get(field::PROTOCOL) {
            Some(&[a, b]) => u16::from_be_bytes([a, b]),
            _ => 0,
        }
    }
    /// The 24-bit VNI.
    pub fn vni(&self) -> u32 {
        match self.buffer.as_ref().get(field::VNI) {
            Some(&[a, b, c]) => u32::from_be_bytes([0, a, b, c]),
            _ => 0,
        }
    }
    /// The raw option bytes (clamped to the buffer).
    pub fn options(&self) -> &[u8] {
        let b = self.buffer.as_ref();
        let end = self.header_len().min(b.len());
        b.get(field::OPTIONS..end).unwrap_or(&[])
    }
    /// The payload after the options (empty if the header does not fit).
    pub fn payload(&self) -> &[u8] {
        self.buffer.as_ref().get(self.header_len()..).unwrap_or(&[])
    }
}

impl<T: AsRef<[u8]> + AsMut<[u8]>> Packet<T> {
    /// Sets version 0 and the options length in bytes (a multiple of 4, at most 252).
    pub fn set_version0_options_len(&mut self, options_len: usize) {
        self.buffer.as_mut()[field::VER_OPT_LEN] = ((options_len / 4) as u8) & 0x3f;
    }
    /// Sets the O and C flags and clears the reserved bits.
    pub fn set_flags(&mut self, oam: bool, critical: bool) {
        let mut f = 0;
        if oam {
            f |= FLAG_O;
        }
        if critical {
            f |= FLAG_C;
        }
        self.buffer.as_mut()[field::FLAGS] = f;
    }
    /// Sets the protocol type.
    pub fn set_protocol_type(&mut self, p: u16) {
        self.buffer.as_mut()[field::PROTOCOL].copy_from_slice(&p.to_be_bytes());
    }
    /// Sets the VNI (the top 8 bits of `vni` are ignored) and zeroes the reserved byte.
    pub fn set_vni(&mut self, vni: u32) {
        let [_, a, b, c] = vni.to_be_bytes();
        self.buffer.as_mut()[field::VNI.start..=field::RESERVED].copy_from_slice(&[a, b, c, 0]);
    }
    /// The option bytes, mutable (as long as the options length field says).
    pub fn options_mut(&mut self) -> &mut [u8] {
        let end = self.header_len();
        &mut self.buffer.as_mut()[field::OPTIONS..end]
    }
}

/// One Geneve option, borrowing its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct GeneveOption<'a> {
    /// Option class (who defines the type).
    pub class: u16,
    /// Type, including the critical bit [`OPTION_CRITICAL`].
    pub type_: u8,
    /// Option data: a multiple of 4 bytes, at most [`OPTION_DATA_MAX`].
    pub data: &'a [u8],
}

impl GeneveOption<'_> {
    /// Whether the critical bit is set in the type.
    pub const fn is_critical(&self) -> bool {
        self.type_ & OPTION_CRITICAL != 0
    }

    /// Bytes this option occupies on the wire (header plus data).
    pub const fn buffer_len(&self) -> usize {
        OPTION_HEADER_LEN + self.data.len()
    }

    /// Writes the option at the start of `buf`; returns the bytes written.
    pub fn emit(&self, buf: &mut [u8]) -> Result<usize, BuildError> {
        let n = self.data.len();
        if !n.is_multiple_of(4) || n > OPTION_DATA_MAX {
            return Err(BuildError::BadOptionLength { len: n });
        }
        let out = buf
            .get_mut(..self.buffer_len())
            .ok_or(BuildError::BufferTooSmall)?;
        let [c0, c1] = self.class.to_be_bytes();
        out[..4].copy_from_slice(&[c0, c1, self.type_, (n / 4) as u8]);
        out[4..].copy_from_slice(self.data);
        Ok(out.len())
    }
}

/// Iterator over the options in a borrowed byte slice.
///
/// Yields `Err(GeneveOptionsOverrun)` once (then stops) if an option runs past the end.
#[derive(Debug, Clone)]
pub struct OptionIter<'a> {
    rest: &'a [u8],
}

impl<'a> OptionIter<'a> {
    /// Iterates over raw (untrusted) option bytes.
    pub const fn new(options: &'a [u8]) -> OptionIter<'a> {
        OptionIter { rest: options }
    }
}

impl<'a> Iterator for OptionIter<'a> {
    type Item = Result<GeneveOption<'a>, DropReason>;

    #[inline]
    fn next(&mut self) -> Option<Self::Item> {
        if self.rest.is_empty() {
            return None;
        }
        let Some(&[c0, c1, type_, len]) = self.rest.get(..OPTION_HEADER_LEN) else {
            self.rest = &[];
            return Some(Err(DropReason::GeneveOptionsOverrun));
        };
        let end = OPTION_HEADER_LEN + usize::from(len & 0x1f) * 4;
        let Some(data) = self.rest.get(OPTION_HEADER_LEN..end) else {
            self.rest = &[];
            return Some(Err(DropReason::GeneveOptionsOverrun));
        };
        self.rest = &self.rest[end..];
        Some(Ok(GeneveOption {
            class: u16::from_be_bytes([c0, c1]),
            type_,
            data,
        }))
    }
}

/// Decides which options a receiver understands (for the critical-option rule).
///
/// Implemented for closures `Fn(class, type) -> bool` and for slices of `(class, type)`
/// pairs. The type includes the critical bit: `(0x0102, 0x80)` and `(0x0102, 0x00)` are
/// different options.
pub trait KnownOptions {
    /// Whether the option `(class, type_)` is understood.
    fn understands(&self, class: u16, type_: u8) -> bool;
}

impl<F: Fn(u16, u8) -> bool> KnownOptions for F {
    #[inline]
    fn understands(&self, class: u16, type_: u8) -> bool {
        self(class, type_)
    }
}

impl KnownOptions for [(u16, u8)] {
    #[inline]
    fn understands(&self, class: u16, type_: u8) -> bool {
        self.contains(&(class, type_))
    }
}

/// A well-formed option list (every option lies within the bytes), borrowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Options<'a> {
    bytes: &'a [u8],
}

impl<'a> Options<'a> {
    /// No options.
    pub const EMPTY: Options<'static> = Options { bytes: &[] };

    /// Checks that `bytes` is a whole number of well-formed options, at most 252 bytes.
    pub fn new_checked(bytes: &'a [u8]) -> Result<Options<'a>, DropReason> {
        if bytes.len() > OPTIONS_MAX || !bytes.len().is_multiple_of(4) {
            return Err(DropReason::GeneveOptionsOverrun);
        }
        for o in OptionIter::new(bytes) {
            o?;
        }
        Ok(Options { bytes })
    }

    /// The raw bytes.
    pub const fn as_bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// Length in bytes.
    pub const fn len(&self) -> usize {
        self.bytes.len()
    }

    /// Whether there are no options.
    pub const fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }

    /// The options, in order.
    pub fn iter(&self) -> impl Iterator<Item = GeneveOption<'a>> + 'a {
        OptionIter::new(self.bytes).map_while(Result::ok)
    }

    /// Whether any option has the critical bit set.
    pub fn has_critical(&self) -> bool {
        self.iter().any(|o| o.is_critical())
    }

    /// Fails with `UnknownCriticalOption` if a critical option is not in `known`.
    #[inline]
    pub fn check_critical<K: KnownOptions + ?Sized>(&self, known: &K) -> Result<(), DropReason> {
        for o in self.iter() {
            if o.is_critical() && !known.understands(o.class, o.type_) {
                return Err(DropReason::UnknownCriticalOption);
            }
        }
        Ok(())
    }
}

/// Writes options one after another into a caller's buffer, without allocating.
#[derive(Debug)]
pub struct OptionWriter<'b> {
    buf: &'b mut [u8],
    len: usize,
}

impl<'b> OptionWriter<'b> {
    /// Starts writing at the beginning of `buf`.
    pub fn new(buf: &'b mut [u8]) -> OptionWriter<'b> {
        OptionWriter { buf, len: 0 }
    }

    /// Appends one option.
    pub fn push(&mut self, option: &GeneveOption<'_>) -> Result<(), BuildError> {
        if self.len + option.buffer_len() > OPTIONS_MAX {
            return Err(BuildError::OptionsTooLong);
        }
        let n = option.emit(&mut self.buf[self.len..])?;
        self.len += n;
        Ok(())
    }

    /// Bytes written so far.
    pub const fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing was written.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Ends writing; returns the written options.
    pub fn finish(self) -> &'b [u8] {
        &self.buf[..self.len]
    }
}

/// Writes `options` in order at the start of `buf`; returns the bytes written.
pub fn emit_options(options: &[GeneveOption<'_>], buf: &mut [u8]) -> Result<usize, BuildError> {
    let mut w = OptionWriter::new(buf);
    for o in options {
        w.push(o)?;
    }
    Ok(w.len())
}

/// A validated Geneve header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Repr<'a> {
    /// O flag: an OAM packet.
    pub oam: bool,
    /// C flag: critical options present.
    pub critical: bool,
    /// Protocol type of the payload (0x6558 Ethernet, 0x0800 IPv4, 0x86DD IPv6, ...).
    pub protocol_type: u16,
    /// The VNI (24 bits).
    pub vni: u32,
    /// The options.
    pub options: Options<'a>,
}

impl<'a> Repr<'a> {
    /// Parses a header: version 0, options within the packet and well formed.
    ///
    /// This does not apply the critical-option rule; see [`Options::check_critical`].
    #[inline]
    pub fn parse(packet: &Packet<&'a [u8]>) -> Result<Repr<'a>, DropReason> {
        let b: &'a [u8] = packet.buffer;
        if b.len() < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if packet.version() != 0 {
            return Err(DropReason::BadGeneveVersion);
        }
        let opts = b
            .get(field::OPTIONS..packet.header_len())
            .ok_or(DropReason::GeneveOptionsOverrun)?;
        Ok(Repr {
            oam: packet.oam(),
            critical: packet.critical(),
            protocol_type: packet.protocol_type(),
            vni: packet.vni(),
            options: Options::new_checked(opts)?,
        })
    }

    /// [`Repr::parse`] and the critical-option rule in one pass over the options: fails
    /// with `UnknownCriticalOption` if a critical option is not in `known`.
    #[inline]
    pub fn parse_checking<K: KnownOptions + ?Sized>(
        packet: &Packet<&'a [u8]>,
        known: &K,
    ) -> Result<Repr<'a>, DropReason> {
        let b: &'a [u8] = packet.buffer;
        if b.len() < HEADER_LEN {
            return Err(DropReason::Truncated);
        }
        if packet.version() != 0 {
            return Err(DropReason::BadGeneveVersion);
        }
        let opts = b
            .get(field::OPTIONS..packet.header_len())
            .ok_or(DropReason::GeneveOptionsOverrun)?;
        for o in OptionIter::new(opts) {
            let o = o?;
            if o.is_critical() && !known.understands(o.class, o.type_) {
                return Err(DropReason::UnknownCriticalOption);
            }
        }
        Ok(Repr {
            oam: packet.oam(),
            critical: packet.critical(),
            protocol_type: packet.protocol_type(),
            vni: packet.vni(),
            // Checked just above (the options length is a multiple of 4, at most 252).
            options: Options { bytes: opts },
        })
    }

    /// Length of the emitted header, options included.
    pub const fn buffer_len(&self) -> usize {
        HEADER_LEN + self.options.len()
    }

    /// Writes the header and options.
    ///
    /// # Panics
    /// If the buffer is shorter than [`Repr::buffer_len`] (a caller bug).
    pub fn emit<T: AsRef<[u8]> + AsMut<[u8]>>(&self, packet: &mut Packet<T>) {
        packet.set_version0_options_len(self.options.len());
        packet.set_flags(self.oam, self.critical);
        packet.set_protocol_type(self.protocol_type);
        packet.set_vni(self.vni);
        packet
            .options_mut()
            .copy_from_slice(self.options.as_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // Geneve header with three options of different lengths, built by hand from the
    // RFC 8926 §3.4/3.5 layouts: opt len = (8 + 4 + 12) / 4 = 6 words, O=0, C=1,
    // protocol 0x6558, VNI 0xabcdef.
    const VECTOR: [u8; 32] = [
        0x06, 0x40, 0x65, 0x58, // ver 0, opt len 6; C; Ethernet
        0xab, 0xcd, 0xef, 0x00, // VNI, reserved
        0x01, 0x02, 0x01, 0x01, // class 0x0102, type 0x01, len 1 word
        0xde, 0xad, 0xbe, 0xef, // data
        0xff, 0xff, 0x80, 0x00, // class 0xffff, type 0x80 (critical), len 0
        0x00, 0x03, 0x7f, 0x02, // class 0x0003, type 0x7f, len 2 words
        1, 2, 3, 4, 5, 6, 7, 8, // data
    ];

    #[test]
    fn parse_vector() {
        let p = Packet::new_checked(&VECTOR[..]).unwrap();
        assert_eq!(p.version(), 0);
        assert_eq!(p.options_len(), 24);
        assert_eq!(p.header_len(), 32);
        assert!(!p.oam());
        assert!(p.critical());
        assert_eq!(p.protocol_type(), 0x6558);
        assert_eq!(p.vni(), 0xabcdef);
        assert!(p.payload().is_empty());
        let r = Repr::parse(&p).unwrap();
        assert_eq!(
            (r.oam, r.critical, r.protocol_type, r.vni),
            (false, true, 0x6558, 0xabcdef)
        );
        let mut it = r.options.iter();
        assert_eq!(
            it.next(),
            Some(GeneveOption {
                class: 0x0102,
                type_: 0x01,
                data: &[0xde, 0xad, 0xbe, 0xef]
            })
        );
        let crit = it.next().unwrap();
        assert_eq!(
            crit,
            GeneveOption {
                class: 0xffff,
                type_: 0x80,
                data: &[]
            }
        );
        assert!(crit.is_critical());
        assert_eq!(
            it.next(),
            Some(GeneveOption {
                class: 0x0003,
                type_: 0x7f,
                data: &[1, 2, 3, 4, 5, 6, 7, 8]
            })
        );
        assert_eq!(it.next(), None);
        assert!(r.options.has_critical());
        assert_eq!(r.options.check_critical(&[(0xffff, 0x80)][..]), Ok(()));
        assert_eq!(
            r.options.check_critical(&[][..]),
            Err(DropReason::UnknownCriticalOption)
        );
        assert_eq!(
            r.options.check_critical(&|c: u16, _t: u8| c == 0xffff),
            Ok(())
        );
    }

    #[test]
    fn emit_vector_from_option_list() {
        let list = [
            GeneveOption {
                class: 0x0102,
                type_: 0x01,
                data: &[0xde, 0xad, 0xbe, 0xef],
            },
            GeneveOption {
                class: 0xffff,
                type_: 0x80,
                data: &[],
            },
            GeneveOption {
                class: 0x0003,
                type_: 0x7f,
                data: &[1, 2, 3, 4, 5, 6, 7, 8],
            },
        ];
        let mut obuf = [0u8; OPTIONS_MAX];
        let n = emit_options(&list, &mut obuf).unwrap();
        assert_eq!(n, 24);
        let options = Options::new_checked(&obuf[..n]).unwrap();
        let r = Repr {
            oam: false,
            critical: options.has_critical(),
            protocol_type: 0x6558,
            vni: 0xabcdef,
            options,
        };
        assert_eq!(r.buffer_len(), 32);
        let mut out = [0xaau8; 32];
        r.emit(&mut Packet::new_unchecked(&mut out[..]));
        assert_eq!(out, VECTOR);
    }

    #[test]
    fn rejects_bad_version_and_overruns() {
        let mut v = VECTOR;
        v[0] |= 0x40; // version 1
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&v[..])),
            Err(DropReason::BadGeneveVersion)
        );
        // Options announced past the end of the packet.
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&VECTOR[..31])),
            Err(DropReason::GeneveOptionsOverrun)
        );
        // Last option's length runs past the options area (header says 6 words).
        let mut v = VECTOR;
        v[23] = 0x03;
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&v[..])),
            Err(DropReason::GeneveOptionsOverrun)
        );
        assert_eq!(
            Repr::parse(&Packet::new_unchecked(&VECTOR[..7])),
            Err(DropReason::Truncated)
        );
    }

    #[test]
    fn writer_rejects_bad_lengths() {
        let mut buf = [0u8; 512];
        let mut w = OptionWriter::new(&mut buf);
        assert_eq!(
            w.push(&GeneveOption {
                class: 1,
                type_: 1,
                data: &[1, 2, 3]
            }),
            Err(BuildError::BadOptionLength { len: 3 })
        );
        let big = [0u8; OPTION_DATA_MAX];
        w.push(&GeneveOption {
            class: 1,
            type_: 1,
            data: &big,
        })
        .unwrap();
        w.push(&GeneveOption {
            class: 1,
            type_: 1,
            data: &big[..120],
        })
        .unwrap();
        assert_eq!(w.len(), 252);
        assert_eq!(
            w.push(&GeneveOption {
                class: 1,
                type_: 1,
                data: &[]
            }),
            Err(BuildError::OptionsTooLong)
        );
        let mut small = [0u8; 6];
        assert_eq!(
            GeneveOption {
                class: 1,
                type_: 1,
                data: &[0; 4]
            }
            .emit(&mut small),
            Err(BuildError::BufferTooSmall)
        );
    }
}
