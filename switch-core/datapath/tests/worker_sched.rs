//! Workers ask the scheduler for a short time slice, so that one woken by a packet on a
//! busy CPU runs at once instead of after the running task's slice (DESIGN.md
//! "Latency"). No privileges needed: a thread may shorten its own slice.

use std::time::{Duration, Instant};

use weft_datapath::sched::{WORKER_SLICE_NS, set_slice, slice};
use weft_datapath::{Switch, SwitchOptions};

/// The thread ids of this process's threads named `weft-worker-*`.
fn worker_tids() -> Vec<libc::pid_t> {
    let mut tids = Vec::new();
    for e in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if comm.trim().starts_with("weft-worker-")
            && let Ok(tid) = e.file_name().to_string_lossy().parse()
        {
            tids.push(tid);
        }
    }
    tids
}

#[test]
fn every_worker_runs_with_the_short_slice() {
    // A kernel before 6.12 has no slice to ask for (and reports 0): nothing to check.
    let supported = std::thread::spawn(|| {
        set_slice(0, WORKER_SLICE_NS).is_ok() && slice(0).unwrap_or(0) == WORKER_SLICE_NS
    })
    .join()
    .unwrap();
    if !supported {
        eprintln!("skipped: this kernel has no per-task time slices (Linux 6.12+)");
        return;
    }
    let sw = Switch::start(
        SwitchOptions {
            workers: 2,
            ..SwitchOptions::default()
        },
        None,
    )
    .unwrap();
    // A worker asks as it starts: wait for both to be there and to have asked.
    let deadline = Instant::now() + Duration::from_secs(5);
    let slices = loop {
        let tids = worker_tids();
        let slices: Vec<u64> = tids.iter().map(|&t| slice(t).unwrap_or(0)).collect();
        if (tids.len() == 2 && slices.iter().all(|&s| s == WORKER_SLICE_NS))
            || Instant::now() > deadline
        {
            break slices;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(slices, vec![WORKER_SLICE_NS; 2], "the workers' slices (ns)");
    drop(sw);
}
