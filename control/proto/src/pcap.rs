//! The classic pcap file format (what `tcpdump -w` writes and `tcpdump -r`, `tshark -r`
//! and Wireshark read): a 24-byte file header, then a 16-byte header per record.
//! Microsecond timestamps, Ethernet link type, little-endian.

use std::io::{self, Write};

/// Link type of Ethernet frames.
pub const LINKTYPE_ETHERNET: u32 = 1;

/// Writes the file header.
pub fn write_header(out: &mut impl Write, snaplen: u32) -> io::Result<()> {
    let mut h = [0u8; 24];
    h[0..4].copy_from_slice(&0xa1b2_c3d4u32.to_le_bytes());
    h[4..6].copy_from_slice(&2u16.to_le_bytes());
    h[6..8].copy_from_slice(&4u16.to_le_bytes());
    h[16..20].copy_from_slice(&snaplen.to_le_bytes());
    h[20..24].copy_from_slice(&LINKTYPE_ETHERNET.to_le_bytes());
    out.write_all(&h)
}

/// Writes one record: `data` as kept, `orig_len` as it was on the wire.
pub fn write_record(
    out: &mut impl Write,
    ts_ns: u64,
    orig_len: u64,
    data: &[u8],
) -> io::Result<()> {
    let mut h = [0u8; 16];
    h[0..4].copy_from_slice(&((ts_ns / 1_000_000_000) as u32).to_le_bytes());
    h[4..8].copy_from_slice(&(((ts_ns / 1000) % 1_000_000) as u32).to_le_bytes());
    h[8..12].copy_from_slice(&(data.len() as u32).to_le_bytes());
    h[12..16].copy_from_slice(&(orig_len as u32).to_le_bytes());
    out.write_all(&h)?;
    out.write_all(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout() {
        let mut out = Vec::new();
        write_header(&mut out, 65535).unwrap();
        assert_eq!(out.len(), 24);
        assert_eq!(&out[..4], &[0xd4, 0xc3, 0xb2, 0xa1]);
        assert_eq!(u32::from_le_bytes(out[20..24].try_into().unwrap()), 1);
        write_record(&mut out, 1_500_000_123_456, 60, &[1, 2, 3]).unwrap();
        assert_eq!(out.len(), 24 + 16 + 3);
        assert_eq!(u32::from_le_bytes(out[24..28].try_into().unwrap()), 1500);
        assert_eq!(u32::from_le_bytes(out[28..32].try_into().unwrap()), 123);
        assert_eq!(u32::from_le_bytes(out[32..36].try_into().unwrap()), 3);
        assert_eq!(u32::from_le_bytes(out[36..40].try_into().unwrap()), 60);
        assert_eq!(&out[40..], &[1, 2, 3]);
    }
}
