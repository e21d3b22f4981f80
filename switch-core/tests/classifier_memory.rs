//! Resource properties of the classifier and the exact-match cache, measured with a
//! counting global allocator: lookups never allocate, and a large table stays under the
//! memory budget per flow (300 bytes).

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicUsize, Ordering};

use switch_core::classifier::Classifier;
use switch_core::emc::Emc;
use switch_core::flow_key::{Field, FlowKey, FlowMask};

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static ALLOCS: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size(), Ordering::Relaxed);
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        unsafe { System.alloc(l) }
    }

    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.dealloc(p, l) }
    }

    unsafe fn realloc(&self, p: *mut u8, l: Layout, new: usize) -> *mut u8 {
        ALLOCS.fetch_add(1, Ordering::Relaxed);
        LIVE.fetch_add(new, Ordering::Relaxed);
        LIVE.fetch_sub(l.size(), Ordering::Relaxed);
        unsafe { System.realloc(p, l, new) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

fn packet(i: u64) -> FlowKey {
    let r = mix(i);
    let r2 = mix(r);
    let mut k = FlowKey::ZERO;
    k.set_in_port((r % 64) as u32 + 1);
    k.set_tun_id(r2 >> 40);
    k.set(Field::DlDst, (r2 & 0xffff_ffff_ffff) as u128);
    k.set_dl_type(0x0800);
    k.set(Field::NwSrc, (r >> 32) as u128);
    k.set(Field::NwDst, r as u32 as u128);
    k.set_nw_proto(6);
    k.set_tp_dst((r2 >> 48) as u16);
    k.set_reg(0, (r2 >> 8) as u32);
    k
}

fn shapes() -> Vec<FlowMask> {
    let c = FlowMask::CATCH_ALL;
    vec![
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

fn build(n: u64) -> Classifier<u32> {
    let shapes = shapes();
    (0..n)
        .map(|i| {
            let m = shapes[i as usize % shapes.len()];
            (packet(i), m, (mix(i ^ 0xabc) % 1000) as u16 + 1, i as u32)
        })
        .collect()
}

#[test]
fn memory_per_flow_and_no_allocation_on_lookup() {
    let n = 1_000_000;
    let before = LIVE.load(Ordering::Relaxed);
    let cls = build(n);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    let per_flow = bytes as f64 / cls.len() as f64;
    println!(
        "{} flows, {} subtables: {per_flow:.1} bytes/flow",
        cls.len(),
        cls.n_subtables()
    );
    assert!(cls.len() as u64 > n * 99 / 100);
    assert!(per_flow < 300.0, "{per_flow} bytes/flow");

    let mut emc: Emc<u32> = Emc::default();
    let pkts: Vec<FlowKey> = (0..1000).map(|i| packet(i * 997)).collect();
    let allocs = ALLOCS.load(Ordering::Relaxed);
    for p in &pkts {
        let h = p.hash();
        let v = *cls
            .lookup(p)
            .expect("every packet matches its own rule")
            .payload();
        emc.insert(p, h, 1, v);
        assert_eq!(emc.lookup(p, h, 1), Some(v));
    }
    assert_eq!(
        ALLOCS.load(Ordering::Relaxed),
        allocs,
        "lookups and EMC use allocated"
    );
}
