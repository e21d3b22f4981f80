//! Steering a TAP's frames to the queue of the CPU that sent them (`steer = cpu`).
//!
//! A multi-queue TAP picks the queue of each frame the kernel hands it by the flow's hash
//! (or the queue its reader last answered that flow on): the worker that reads it may
//! sleep on the other CPU. On a virtual machine whose idle CPUs halt, waking a halted
//! CPU is the slowest step of a ping through Weft: 150 µs of a 297 µs round trip in a
//! `perf sched` trace of `compare`'s pings (the worker was placed on the idle CPU, and
//! the host had to run that virtual CPU again). The kernel's own VXLAN carries a ping
//! on the CPU that sent it, with no wake-up at all.
//!
//! With `pin_cpus` every multi-queue TAP of the switch gets a steering program
//! (`TUNSETSTEERINGEBPF`: a six-instruction socket filter, [`PROGRAM`]) and worker `i` is
//! pinned to CPU `i`. A short frame (a ping, a TCP acknowledgement, a request: at most
//! [`SMALL_FRAME`] bytes) sent on CPU `k` is queued for the worker on CPU `k`
//! (`bpf_get_smp_processor_id()`, which tun takes modulo the number of queues), which
//! runs when the sender yields the CPU (its time slice is short, see `crate::sched`),
//! without a cross-CPU wake-up: a round trip stays on one CPU. A long frame (a stream's
//! data) is queued for the worker on the next CPU, so a stream's sender and the worker
//! that carries its bytes run side by side instead of taking turns on one core (the first
//! program, every frame to its sender's CPU, cost a third of a stream on 2 cores). A
//! flow's data stays on one queue as long as its sender stays on one CPU; a sender the
//! scheduler moves may see its frames read by two workers, a reordering across the move
//! (as with RPS off).

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};

/// Whether TAPs opened from now on get the steering program: process-wide, set by the
/// switch as it starts (`SwitchOptions::pin_cpus`; `weftd` runs one switch).
static ENABLED: AtomicBool = AtomicBool::new(false);

/// Turns CPU steering on or off for the TAPs opened from now on.
pub fn set_enabled(on: bool) {
    ENABLED.store(on, Ordering::Relaxed);
}

/// Gives a multi-queue TAP (`queues` queues, `queue` one of them) the steering program
/// when steering is on; nothing otherwise.
pub fn attach_if_enabled(queue: RawFd, queues: usize) -> io::Result<()> {
    if queues > 1 && ENABLED.load(Ordering::Relaxed) {
        attach(queue)?;
        tracing::info!(
            queues,
            "TAP frames steered by CPU: short ones to the queue of the CPU that sent them, \
             long ones to the next CPU's"
        );
        Ok(())
    } else {
        Ok(())
    }
}

const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_PROG_TYPE_SOCKET_FILTER: u32 = 1;
const BPF_FUNC_GET_SMP_PROCESSOR_ID: i32 = 8;

/// One eBPF instruction (`struct bpf_insn`).
#[repr(C)]
#[derive(Clone, Copy)]
struct Insn {
    code: u8,
    regs: u8,
    off: i16,
    imm: i32,
}

/// Frames up to this many bytes (pings, TCP acknowledgements, requests) are queued for
/// the worker of the CPU that sent them; longer ones for the worker of the next CPU.
pub const SMALL_FRAME: i32 = 256;

/// The program: `cpu = bpf_get_smp_processor_id(); return skb->len <= SMALL_FRAME ? cpu :
/// cpu + 1` (tun takes it modulo the number of queues).
const PROGRAM: [Insn; 6] = [
    // r6 = r1 (the __sk_buff; r1 is clobbered by the call)
    Insn {
        code: 0xbf,
        regs: 0x16,
        off: 0,
        imm: 0,
    },
    // BPF_JMP | BPF_CALL
    Insn {
        code: 0x85,
        regs: 0,
        off: 0,
        imm: BPF_FUNC_GET_SMP_PROCESSOR_ID,
    },
    // r2 = *(u32 *)(r6 + 0): __sk_buff.len
    Insn {
        code: 0x61,
        regs: 0x62,
        off: 0,
        imm: 0,
    },
    // if r2 <= SMALL_FRAME goto exit
    Insn {
        code: 0xb5,
        regs: 0x02,
        off: 1,
        imm: SMALL_FRAME,
    },
    // r0 += 1
    Insn {
        code: 0x07,
        regs: 0,
        off: 0,
        imm: 1,
    },
    // BPF_JMP | BPF_EXIT
    Insn {
        code: 0x95,
        regs: 0,
        off: 0,
        imm: 0,
    },
];

/// The leading fields of `union bpf_attr` for BPF_PROG_LOAD (the kernel takes a
/// shorter attribute than its own, zero-extended).
#[repr(C)]
struct ProgLoad {
    prog_type: u32,
    insn_cnt: u32,
    insns: u64,
    license: u64,
    log_level: u32,
    log_size: u32,
    log_buf: u64,
    kern_version: u32,
    prog_flags: u32,
    prog_name: [u8; 16],
}

fn load() -> io::Result<OwnedFd> {
    let license = c"Apache-2.0";
    let mut name = [0u8; 16];
    name[..9].copy_from_slice(b"weft_cpuq");
    let attr = ProgLoad {
        prog_type: BPF_PROG_TYPE_SOCKET_FILTER,
        insn_cnt: PROGRAM.len() as u32,
        insns: PROGRAM.as_ptr() as u64,
        license: license.as_ptr() as u64,
        log_level: 0,
        log_size: 0,
        log_buf: 0,
        kern_version: 0,
        prog_flags: 0,
        prog_name: name,
    };
    // SAFETY: `attr` is a valid BPF_PROG_LOAD attribute whose pointers (the program
    // and the license, both 'static) outlive the call; its size is passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_PROG_LOAD,
            &attr as *const ProgLoad,
            std::mem::size_of::<ProgLoad>() as u32,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel returned a new descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// The steering program, loaded once for the process (`Err`: the kernel refused it,
/// with why, e.g. no `bpf(2)` or no CAP_BPF).
pub fn program() -> Result<RawFd, String> {
    static PROG: OnceLock<Result<OwnedFd, String>> = OnceLock::new();
    PROG.get_or_init(|| load().map_err(|e| format!("loading the CPU steering program: {e}")))
        .as_ref()
        .map(|fd| fd.as_raw_fd())
        .map_err(Clone::clone)
}

nix::ioctl_write_ptr_bad!(
    tunsetsteeringebpf,
    nix::request_code_read!(b'T', 224, std::mem::size_of::<libc::c_int>()),
    libc::c_int
);

/// Gives the TAP that `queue` is a queue of the CPU steering program.
pub fn attach(queue: RawFd) -> io::Result<()> {
    let prog = program().map_err(io::Error::other)?;
    // SAFETY: `queue` is an attached tun descriptor and `prog` a live program
    // descriptor held for the process; the c_int outlives the call.
    unsafe { tunsetsteeringebpf(queue, &prog) }
        .map(|_| ())
        .map_err(|e| io::Error::other(format!("TUNSETSTEERINGEBPF: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tap_queue(name: &str) -> OwnedFd {
        // SAFETY: a valid NUL-terminated path; the descriptor is owned below.
        let fd = unsafe { libc::open(c"/dev/net/tun".as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        assert!(fd >= 0, "/dev/net/tun: {}", io::Error::last_os_error());
        // SAFETY: just opened, owned by nothing else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: ifreq is plain old data; zeroed is valid.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.as_bytes()) {
            *d = *s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags =
            (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_MULTI_QUEUE) as libc::c_short;
        // SAFETY: an open tun descriptor and an ifreq that outlives the call.
        let r = unsafe { libc::ioctl(fd.as_raw_fd(), 0x4004_54ca, &req) };
        assert_eq!(r, 0, "TUNSETIFF: {}", io::Error::last_os_error());
        // SAFETY: fcntl on an open descriptor.
        unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        fd
    }

    fn pin(cpu: usize) {
        // SAFETY: cpu_set_t is plain old data; valid pointer and size.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            libc::CPU_SET(cpu, &mut set);
            let r = libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
            assert_eq!(
                r,
                0,
                "sched_setaffinity {cpu}: {}",
                io::Error::last_os_error()
            );
        }
    }

    /// Which queues hold a frame of ours carrying `mark` (others, e.g. the kernel's own
    /// IPv6 frames, are read and ignored).
    fn queues_with(queues: &[OwnedFd], mark: u8) -> Vec<usize> {
        let mut found = Vec::new();
        let mut buf = [0u8; 2048];
        for (i, q) in queues.iter().enumerate() {
            loop {
                // SAFETY: reading into a buffer of the length passed.
                let n = unsafe { libc::read(q.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
                if n < 0 {
                    break;
                }
                let f = &buf[..n as usize];
                if f.len() >= 16 && f[12..14] == [0x88, 0xb5] && f[14] == 0x57 && f[15] == mark {
                    found.push(i);
                }
            }
        }
        found
    }

    /// With the program attached, a short frame the kernel sends on CPU `k` is queued on
    /// queue `k` of a two-queue TAP (what a worker pinned to CPU `k` reads), and a long
    /// one on queue `k + 1`, for each CPU, whatever the frame's flow. Run in a network
    /// namespace of its own (root).
    #[test]
    fn a_short_frame_sent_on_cpu_k_is_queued_on_queue_k_and_a_long_one_on_the_next() {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        let required = std::env::var_os("WEFT_REQUIRE_PRIVILEGED").is_some();
        if cpus < 2 {
            eprintln!("skipped: one CPU, nothing to steer between");
            return;
        }
        std::thread::spawn(move || {
            if let Err(e) = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET) {
                assert!(!required, "unshare(CLONE_NEWNET): {e}");
                eprintln!("skipped: needs root for a network namespace ({e})");
                return;
            }
            let queues = [tap_queue("wsteer0"), tap_queue("wsteer0")];
            attach(queues[0].as_raw_fd()).expect("TUNSETSTEERINGEBPF");
            let ifindex = nix::net::if_::if_nametoindex("wsteer0").unwrap();
            // SAFETY: plain socket calls with valid, live arguments.
            unsafe {
                let s = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                assert!(s >= 0);
                let mut req: libc::ifreq = std::mem::zeroed();
                for (d, c) in req.ifr_name.iter_mut().zip(b"wsteer0") {
                    *d = *c as libc::c_char;
                }
                req.ifr_ifru.ifru_flags = libc::IFF_UP as libc::c_short;
                assert_eq!(
                    libc::ioctl(s, libc::SIOCSIFFLAGS, &req),
                    0,
                    "{}",
                    io::Error::last_os_error()
                );
                libc::close(s);
            }
            // SAFETY: an AF_PACKET socket, owned below.
            let raw =
                unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, 0) };
            assert!(raw >= 0, "AF_PACKET: {}", io::Error::last_os_error());
            // SAFETY: just opened.
            let raw = unsafe { OwnedFd::from_raw_fd(raw) };
            // SAFETY: sockaddr_ll is plain old data.
            let mut to: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_ifindex = ifindex as i32;
            to.sll_halen = 6;
            // Short, long, and both sides of the edge (the length counts the Ethernet
            // header: the program sees the frame as the TAP will hand it over).
            let sizes = [60, 1000, SMALL_FRAME as usize, SMALL_FRAME as usize + 1];
            for (round, &size) in sizes.iter().enumerate() {
                let round = round as u8;
                let long = size > SMALL_FRAME as usize;
                for cpu in 0..cpus.min(4) {
                    pin(cpu);
                    let mark = round * 16 + cpu as u8;
                    let mut frame = [0u8; 1000];
                    let frame = &mut frame[..size];
                    frame[..6].copy_from_slice(&[0xff; 6]);
                    frame[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, mark]);
                    frame[12..14].copy_from_slice(&[0x88, 0xb5]);
                    frame[14] = 0x57;
                    frame[15] = mark;
                    // SAFETY: the frame and the address outlive the call; sizes passed.
                    let n = unsafe {
                        libc::sendto(
                            raw.as_raw_fd(),
                            frame.as_ptr().cast(),
                            frame.len(),
                            0,
                            (&to as *const libc::sockaddr_ll).cast(),
                            std::mem::size_of::<libc::sockaddr_ll>() as u32,
                        )
                    };
                    assert_eq!(
                        n,
                        frame.len() as isize,
                        "sendto: {}",
                        io::Error::last_os_error()
                    );
                    let want = if long { (cpu + 1) % 2 } else { cpu % 2 };
                    assert_eq!(
                        queues_with(&queues, mark),
                        vec![want],
                        "the {}-byte frame sent on CPU {cpu} (round {round})",
                        frame.len()
                    );
                }
            }
        })
        .join()
        .unwrap();
    }

    /// The program loads where the process may load one (root); elsewhere the error
    /// says why.
    #[test]
    fn the_steering_program_loads_or_says_why() {
        match program() {
            Ok(fd) => assert!(fd >= 0),
            Err(e) => {
                assert!(e.starts_with("loading the CPU steering program: "), "{e}");
                if std::env::var_os("WEFT_REQUIRE_PRIVILEGED").is_some() {
                    panic!("{e}");
                }
            }
        }
    }
}
