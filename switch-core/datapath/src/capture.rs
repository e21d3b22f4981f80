//! Packet capture on a port, for `weftctl capture`: a bounded copy, never a slowdown.
//!
//! A [`Capture`] owns a fixed pool of preallocated frame buffers and two bounded
//! queues: free buffers and filled ones. A worker that sends or receives a frame on a
//! port under capture takes a free buffer, copies at most `snaplen` bytes into it and
//! queues it; if no buffer is free (the reader is slower than the traffic) the copy is
//! skipped and counted, and the packet itself goes on untouched. The control thread
//! drains the filled queue and returns the buffers. So the packet path pays one atomic
//! load when nobody captures, and one bounded copy plus two queue operations (no
//! allocation, no lock, no waiting) when somebody does. The client (`weftctl capture`)
//! writes the frames it is sent as a pcap file (`weft_proto::pcap`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};

/// Default bytes kept of each frame.
pub const DEFAULT_SNAPLEN: usize = 65535;
/// Buffers in a capture's pool.
pub const POOL: usize = 256;

/// Which way a captured frame went through the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Received on the port.
    Rx,
    /// Sent out of the port.
    Tx,
}

/// One captured frame.
#[derive(Debug)]
pub struct Captured {
    /// Wall-clock time of the copy, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// The frame's length on the wire.
    pub orig_len: usize,
    /// Received or sent.
    pub direction: Direction,
    len: usize,
    data: Box<[u8]>,
}

impl Captured {
    /// The bytes kept (at most the snap length).
    pub fn data(&self) -> &[u8] {
        &self.data[..self.len]
    }
}

/// A running capture on one port. See the module docs.
#[derive(Debug)]
pub struct Capture {
    snaplen: usize,
    free_tx: Sender<Captured>,
    free_rx: Receiver<Captured>,
    filled_tx: Sender<Captured>,
    filled_rx: Receiver<Captured>,
    skipped: AtomicU64,
}

impl Capture {
    /// A capture keeping `snaplen` bytes of each frame, with [`POOL`] buffers.
    pub fn new(snaplen: usize) -> Capture {
        let snaplen = snaplen.clamp(64, DEFAULT_SNAPLEN);
        let (free_tx, free_rx) = bounded(POOL);
        let (filled_tx, filled_rx) = bounded(POOL);
        for _ in 0..POOL {
            let _ = free_tx.send(Captured {
                ts_ns: 0,
                orig_len: 0,
                direction: Direction::Rx,
                len: 0,
                data: vec![0u8; snaplen].into_boxed_slice(),
            });
        }
        Capture {
            snaplen,
            free_tx,
            free_rx,
            filled_tx,
            filled_rx,
            skipped: AtomicU64::new(0),
        }
    }

    /// The snap length in force.
    pub fn snaplen(&self) -> usize {
        self.snaplen
    }

    /// Copies `frame` (packet path: bounded copy, never blocks).
    #[inline]
    pub fn record(&self, frame: &[u8], direction: Direction) {
        let Ok(mut buf) = self.free_rx.try_recv() else {
            self.skipped.fetch_add(1, Ordering::Relaxed);
            return;
        };
        let n = frame.len().min(buf.data.len());
        buf.data[..n].copy_from_slice(&frame[..n]);
        buf.len = n;
        buf.orig_len = frame.len();
        buf.direction = direction;
        buf.ts_ns = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        if let Err(TrySendError::Full(b) | TrySendError::Disconnected(b)) =
            self.filled_tx.try_send(buf)
        {
            let _ = self.free_tx.try_send(b);
            self.skipped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The next captured frame, waiting up to `timeout`.
    pub fn next(&self, timeout: std::time::Duration) -> Option<Captured> {
        self.filled_rx.recv_timeout(timeout).ok()
    }

    /// Gives a buffer back to the pool once its frame is written out.
    pub fn recycle(&self, c: Captured) {
        let _ = self.free_tx.try_send(c);
    }

    /// Copies skipped because the reader fell behind.
    pub fn skipped(&self) -> u64 {
        self.skipped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn copies_are_bounded_and_a_slow_reader_costs_copies_not_packets() {
        let c = Capture::new(100);
        let frame = [7u8; 1500];
        c.record(&frame, Direction::Rx);
        let got = c.next(Duration::from_millis(10)).unwrap();
        assert_eq!(got.data().len(), 100, "snap length");
        assert_eq!(got.orig_len, 1500);
        assert_eq!(got.direction, Direction::Rx);
        c.recycle(got);
        for _ in 0..POOL + 50 {
            c.record(&frame, Direction::Tx);
        }
        assert_eq!(
            c.skipped(),
            50,
            "the pool bounds memory; extra copies are skipped"
        );
        let mut n = 0;
        while let Some(f) = c.next(Duration::from_millis(1)) {
            c.recycle(f);
            n += 1;
        }
        assert_eq!(n, POOL);
        c.record(&frame, Direction::Tx);
        assert!(
            c.next(Duration::from_millis(10)).is_some(),
            "buffers came back"
        );
    }
}
