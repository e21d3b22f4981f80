//! Measuring aids shared by the tests and the benchmarks: a counting global allocator
//! (bytes live, allocations made) and a deterministic synthetic workload of flows and
//! packets shaped like an Antrea/OVS pipeline's. Not used by the datapath itself.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use weft_pipeline::flow_key::{Field, FlowKey, FlowMask};

/// A global allocator that counts live bytes and allocation calls, then defers to the
/// system allocator. Install it in a test or benchmark binary with
/// `#[global_allocator] static GLOBAL: CountingAlloc = CountingAlloc::new();`.
#[derive(Debug, Default)]
pub struct CountingAlloc {
    live: AtomicUsize,
    allocs: AtomicUsize,
}

impl CountingAlloc {
    /// A fresh counter.
    pub const fn new() -> CountingAlloc {
        CountingAlloc {
            live: AtomicUsize::new(0),
            allocs: AtomicUsize::new(0),
        }
    }

    /// Bytes allocated and not yet freed.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Relaxed)
    }

    /// Allocation (and reallocation) calls so far.
    pub fn allocs(&self) -> usize {
        self.allocs.load(Ordering::Relaxed)
    }
}

// SAFETY: every call is forwarded unchanged to `System`; the counters are only atomics.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        self.live.fetch_add(l.size(), Ordering::Relaxed);
        self.allocs.fetch_add(1, Ordering::Relaxed);
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        self.live.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: `p` came from `System.alloc` with this layout.
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        self.allocs.fetch_add(1, Ordering::Relaxed);
        self.live.fetch_add(new, Ordering::Relaxed);
        self.live.fetch_sub(l.size(), Ordering::Relaxed);
        // SAFETY: forwarded with the caller's pointer and layout.
        unsafe { System.realloc(p, l, new) }
    }
}

/// splitmix64: deterministic pseudo-random values without a dependency.
pub fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Eight match shapes seen in Antrea/OVS pipelines (L2 forwarding, /24 and /32 routing,
/// service VIP:port, tunnel L2, spoof guard, register-tagged pod IP, /16 policy).
pub fn antrea_masks() -> [FlowMask; 8] {
    let c = FlowMask::CATCH_ALL;
    [
        c.with_exact(Field::InPort).with_exact(Field::DlDst),
        c.with_exact(Field::DlType).with_prefix(Field::NwDst, 24),
        c.with_exact(Field::DlType).with_prefix(Field::NwDst, 32),
        c.with_exact(Field::DlType)
            .with_exact(Field::NwProto)
            .with_exact(Field::NwDst)
            .with_exact(Field::TpDst),
        c.with_exact(Field::TunId).with_exact(Field::DlDst),
        c.with_exact(Field::InPort)
            .with_exact(Field::DlType)
            .with_exact(Field::NwSrc),
        c.with_exact(Field::Reg0)
            .with_exact(Field::DlType)
            .with_exact(Field::NwDst),
        c.with_exact(Field::DlType)
            .with_prefix(Field::NwSrc, 16)
            .with_prefix(Field::NwDst, 16)
            .with_exact(Field::NwProto),
    ]
}

/// The full key of synthetic packet `i`: TCP/IPv4 with pseudo-random ports, addresses,
/// VNI, destination MAC and register 0.
pub fn synthetic_packet(i: u64) -> FlowKey {
    let r = mix(i);
    let r2 = mix(r);
    let mut k = FlowKey::ZERO;
    k.set_in_port((r % 64) as u32 + 1);
    k.set_tun_id(r2 >> 40);
    k.set(Field::DlDst, (r2 & 0xffff_ffff_ffff) as u128);
    k.set(Field::DlSrc, (r >> 16) as u128);
    k.set_dl_type(0x0800);
    k.set(Field::NwSrc, (r >> 32) as u128);
    k.set(Field::NwDst, r as u32 as u128);
    k.set_nw_proto(6);
    k.set_nw_ttl(64);
    k.set_tp_src((r2 >> 16) as u16);
    k.set_tp_dst((r2 >> 48) as u16);
    k.set_reg(0, (r2 >> 8) as u32);
    k
}
