//! The workers' time slice: how soon the scheduler runs a worker that a packet woke.
//!
//! A worker sleeps in `epoll_wait` between packets and runs for a few microseconds per
//! wake-up. On a busy machine the CPU it is woken on is running something else (a
//! compiler, `iperf3`, a pod), and Linux's EEVDF scheduler (6.6+) lets the woken worker
//! run only when its virtual deadline is the earliest: with the default slice (0.75 ms
//! times 1 + log2 of the CPUs) it waits behind the running task's slice often enough
//! that one ping in a hundred took 2 ms or more in a worker's run queue (`perf sched
//! timehist` on 2 shared cores). Since Linux 6.12 a task may ask for a shorter slice
//! (`sched_setattr` with `sched_runtime` under `SCHED_OTHER`, 0.1 ms at least); its
//! deadline then comes first and it preempts at wake-up. Its share of the CPU is
//! unchanged (that is its weight, the nice value), so a busy worker is not favoured,
//! only a woken one served sooner. On older kernels the call succeeds and changes
//! nothing. See DESIGN.md "Latency".

use std::io;

/// The slice a worker asks for: the kernel's smallest, 0.1 ms.
pub const WORKER_SLICE_NS: u64 = 100_000;

/// `struct sched_attr` up to `sched_period` (`SCHED_ATTR_SIZE_VER0`, 48 bytes).
#[repr(C)]
#[derive(Default, Debug, Clone, Copy)]
struct SchedAttr {
    size: u32,
    policy: u32,
    flags: u64,
    nice: i32,
    priority: u32,
    runtime: u64,
    deadline: u64,
    period: u64,
}

const SCHED_OTHER: u32 = 0;
const SCHED_BATCH: u32 = 3;

fn getattr(tid: libc::pid_t) -> io::Result<SchedAttr> {
    let mut a = SchedAttr::default();
    // SAFETY: `a` is a writable sched_attr of the size passed; the kernel writes at most
    // that many bytes.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_getattr,
            tid,
            &mut a as *mut SchedAttr,
            std::mem::size_of::<SchedAttr>() as libc::c_uint,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(a)
}

/// Asks for a slice of `ns` nanoseconds for thread `tid` (0: the calling thread),
/// keeping its policy and nice value. Threads under a real-time or deadline policy
/// (someone ran `weftd` under `chrt`) are left as they are.
pub fn set_slice(tid: libc::pid_t, ns: u64) -> io::Result<()> {
    let mut a = getattr(tid)?;
    if a.policy != SCHED_OTHER && a.policy != SCHED_BATCH {
        return Ok(());
    }
    a.size = std::mem::size_of::<SchedAttr>() as u32;
    a.flags = 0;
    a.priority = 0;
    a.runtime = ns;
    a.deadline = 0;
    a.period = 0;
    // SAFETY: `a` is an initialised sched_attr whose `size` says how much to read.
    let r = unsafe {
        libc::syscall(
            libc::SYS_sched_setattr,
            tid,
            &a as *const SchedAttr,
            0 as libc::c_uint,
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The slice thread `tid` (0: the calling thread) runs with, in nanoseconds, as
/// `sched_getattr` reports it (Linux 6.12+; older kernels report 0).
pub fn slice(tid: libc::pid_t) -> io::Result<u64> {
    Ok(getattr(tid)?.runtime)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_thread_keeps_its_nice_value_when_it_asks_for_a_slice() {
        std::thread::spawn(|| {
            // SAFETY: plain syscalls on the calling thread.
            let before = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            set_slice(0, WORKER_SLICE_NS).expect("sched_setattr");
            let after = unsafe { libc::getpriority(libc::PRIO_PROCESS, 0) };
            assert_eq!(before, after);
            let got = slice(0).expect("sched_getattr");
            // 0: a kernel before 6.12, which has no slices to ask for.
            assert!(got == WORKER_SLICE_NS || got == 0, "slice {got}");
        })
        .join()
        .unwrap();
    }
}
