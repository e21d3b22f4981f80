//! `weft-loadgen`: a UDP load generator and verifying receiver for the namespace
//! benchmarks (run inside pod namespaces with `ip netns exec`).
//!
//! ```text
//! weft-loadgen recv --listen 198.19.2.11:9000 --size 64 --count 1000000 --run-id 7
//! weft-loadgen send --to 198.19.2.11:9000 --size 64 --count 1000000 --run-id 7
//! ```
//!
//! `--size` is the Ethernet frame size: the UDP payload is `size - 42` bytes (14
//! Ethernet + 20 IPv4 + 8 UDP). Each datagram carries the run id (u64), its sequence
//! number (u64) and a filler derived from both, so the receiver can tell a datagram of
//! this run from a stray one and a corrupted one from a good one. The sender sends
//! `count` datagrams with `sendmmsg` in batches of `--batch` (64); the receiver reads
//! with `recvmmsg`, counts each sequence number once (duplicates are counted apart),
//! and stops when it has them all, when nothing arrived for `--idle-ms`, or at
//! `--timeout`. Both print one JSON line on stdout; the receiver prints `listening`
//! on stderr once its socket is bound. The receiver's duration runs from the first to
//! the last datagram that arrived.
//!
//! ```text
//! weft-loadgen gaps --listen 198.19.2.11:9000 --run-id 7 [--timeout S]
//! weft-loadgen stream --to 198.19.2.11:9000 --run-id 7 [--interval-us 1000] [--timeout S]
//! ```
//!
//! `stream` sends one small datagram (the same format, `--size` 64 by default) every
//! `--interval-us` on a fixed schedule (never catching up in a burst after a stall) until
//! SIGTERM, SIGINT or `--timeout`; `gaps` receives until SIGTERM, SIGINT or `--timeout`
//! and records the largest time between two arrivals: what a steady stream sees while
//! the switch does something else (a bundle commit, a dump). Each datagram carries its
//! send time (CLOCK_REALTIME; `--size` at least 66), and arrivals are the kernel's
//! receive timestamps (SO_TIMESTAMPNS), so the largest one-way delay is what the switch
//! held a datagram, whatever the two processes' own scheduling. Both print one JSON
//! line: the sender `sent` and its own largest gap between two sends
//! (`max_send_gap_us`: a stalled sender makes an arrival gap that is not the switch's),
//! the receiver `received`, `max_gap_us`, `gaps_over_10ms`, `max_delay_us`,
//! `delays_over_10ms`, the sequence numbers where the largest were, `duplicates` and
//! `out_of_order`. The receiver also reads the machine's steal time (`/proc/stat`, the
//! time the hypervisor ran something else while a CPU of this guest had work: every
//! task of the guest stalls, the switch's too) at each arrival: `steal_in_max_gap_ms`
//! is the steal between the two arrivals of the largest gap, and `max_gap_no_steal_us`
//! and `gaps_over_10ms_no_steal` count only gaps in which no steal was recorded (the
//! kernel counts it in ticks of 10 ms, summed here over the CPUs).

use std::io::Write;
use std::mem::{size_of, zeroed};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::{Duration, Instant};

const HEADER: usize = 16;
const MIN_SIZE: usize = 42 + HEADER;
const MAX_SIZE: usize = 42 + 65_000;

fn usage() -> ! {
    eprintln!(
        "usage: weft-loadgen send --to IP:PORT --size N --count N --run-id N [--batch 64] [--timeout S]\n\
         \x20      weft-loadgen recv --listen IP:PORT --size N --count N --run-id N [--idle-ms 500] [--timeout S]\n\
         \x20      weft-loadgen stream --to IP:PORT --run-id N [--interval-us 1000] [--timeout S]\n\
         \x20      weft-loadgen gaps --listen IP:PORT --run-id N [--timeout S]"
    );
    std::process::exit(2)
}

struct Opts {
    addr: SocketAddrV4,
    size: usize,
    count: u64,
    run_id: u64,
    batch: usize,
    timeout: Duration,
    idle: Duration,
    interval: Duration,
}

fn parse(args: &[String], addr_flag: &str) -> Opts {
    let mut addr = None;
    let mut o = Opts {
        addr: SocketAddrV4::new(Ipv4Addr::UNSPECIFIED, 0),
        size: 64,
        count: 0,
        run_id: 0,
        batch: 64,
        timeout: Duration::from_secs(60),
        idle: Duration::from_millis(500),
        interval: Duration::from_millis(1),
    };
    let mut it = args.iter();
    while let Some(flag) = it.next() {
        let Some(v) = it.next() else { usage() };
        let num = || v.parse::<u64>().unwrap_or_else(|_| usage());
        match flag.as_str() {
            f if f == addr_flag => addr = Some(v.parse::<SocketAddr>().unwrap_or_else(|_| usage())),
            "--size" => o.size = num() as usize,
            "--count" => o.count = num(),
            "--run-id" => o.run_id = num(),
            "--batch" => o.batch = (num() as usize).clamp(1, 1024),
            "--timeout" => o.timeout = Duration::from_secs(num()),
            "--idle-ms" => o.idle = Duration::from_millis(num()),
            "--interval-us" => o.interval = Duration::from_micros(num().max(10)),
            _ => usage(),
        }
    }
    match addr {
        Some(SocketAddr::V4(a)) => o.addr = a,
        _ => usage(),
    }
    if !(MIN_SIZE..=MAX_SIZE).contains(&o.size) {
        eprintln!("--size must be in {MIN_SIZE}..={MAX_SIZE}");
        std::process::exit(2);
    }
    o
}

/// The filler byte at offset `i` of the payload of datagram `seq` of run `run`.
fn filler(run: u64, seq: u64, i: usize) -> u8 {
    (seq.wrapping_mul(31) ^ run ^ (i as u64).wrapping_mul(7)) as u8
}

fn fill(buf: &mut [u8], run: u64, seq: u64) {
    buf[..8].copy_from_slice(&run.to_be_bytes());
    buf[8..16].copy_from_slice(&seq.to_be_bytes());
    for (i, b) in buf.iter_mut().enumerate().skip(HEADER) {
        *b = filler(run, seq, i);
    }
}

fn err(what: &str) -> ! {
    eprintln!("weft-loadgen: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(1)
}

fn sockaddr(a: SocketAddrV4) -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    let mut s: libc::sockaddr_in = unsafe { zeroed() };
    s.sin_family = libc::AF_INET as libc::sa_family_t;
    s.sin_port = a.port().to_be();
    s.sin_addr.s_addr = u32::from(*a.ip()).to_be();
    s
}

fn udp_socket() -> OwnedFd {
    // SAFETY: plain socket(2) call; the fd is owned from here on.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        err("socket");
    }
    // SAFETY: fd is a fresh, valid descriptor that nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

fn set_int(fd: RawFd, level: i32, opt: i32, v: i32) -> bool {
    // SAFETY: v lives across the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            level,
            opt,
            (&v as *const i32).cast(),
            size_of::<i32>() as libc::socklen_t,
        ) == 0
    }
}

fn set_buffers(fd: RawFd, opt_force: i32, opt: i32) {
    // As root the FORCE variant passes the rmem_max/wmem_max limits.
    if !set_int(fd, libc::SOL_SOCKET, opt_force, 32 << 20) {
        set_int(fd, libc::SOL_SOCKET, opt, 32 << 20);
    }
}

fn send(o: &Opts) {
    let sock = udp_socket();
    let fd = sock.as_raw_fd();
    set_buffers(fd, libc::SO_SNDBUFFORCE, libc::SO_SNDBUF);
    let sa = sockaddr(o.addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    if unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } < 0
    {
        err("connect");
    }
    let len = o.size - 42;
    let mut bufs = vec![vec![0u8; len]; o.batch];
    // SAFETY (zeroed): iovec and mmsghdr are plain old data.
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    let mut hdrs: Vec<libc::mmsghdr> = (0..o.batch).map(|_| unsafe { zeroed() }).collect();
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let start = Instant::now();
    let mut seq = 0u64;
    let mut errors = 0u64;
    while seq < o.count && start.elapsed() < o.timeout {
        let n = ((o.count - seq) as usize).min(o.batch);
        for (k, b) in bufs.iter_mut().take(n).enumerate() {
            fill(b, o.run_id, seq + k as u64);
        }
        let mut done = 0usize;
        while done < n && start.elapsed() < o.timeout {
            // SAFETY: hdrs[done..n] point at iovecs and buffers that outlive the call.
            let r = unsafe { libc::sendmmsg(fd, hdrs[done..].as_mut_ptr(), (n - done) as u32, 0) };
            if r < 0 {
                let e = std::io::Error::last_os_error();
                match e.raw_os_error() {
                    Some(libc::EINTR) => continue,
                    Some(libc::ENOBUFS) | Some(libc::EAGAIN) | Some(libc::ECONNREFUSED) => {
                        // A full queue or an ICMP error from an earlier datagram: the
                        // datagram counts as sent (and lost).
                        errors += 1;
                        done += 1;
                        continue;
                    }
                    _ => err("sendmmsg"),
                }
            }
            done += r as usize;
        }
        seq += n as u64;
    }
    let d = start.elapsed();
    println!(
        "{{\"sent\":{seq},\"errors\":{errors},\"duration_ns\":{}}}",
        d.as_nanos()
    );
}

fn recv(o: &Opts) {
    let sock = udp_socket();
    let fd = sock.as_raw_fd();
    set_buffers(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    let sa = sockaddr(o.addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    if unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } < 0
    {
        err("bind");
    }
    // Wake up every 20 ms to check the idle and overall timeouts.
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: tv lives across the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    eprintln!("listening on {}", o.addr);
    let _ = std::io::stderr().flush();
    let len = o.size - 42;
    let batch = o.batch;
    // One byte more than expected, so a longer datagram shows as corrupt.
    let mut bufs = vec![vec![0u8; len + 1]; batch];
    let mut iovs: Vec<libc::iovec> = bufs
        .iter_mut()
        .map(|b| libc::iovec {
            iov_base: b.as_mut_ptr().cast(),
            iov_len: b.len(),
        })
        .collect();
    // SAFETY: mmsghdr is plain old data; all-zero is a valid value.
    let mut hdrs: Vec<libc::mmsghdr> = (0..batch).map(|_| unsafe { zeroed() }).collect();
    for (h, iov) in hdrs.iter_mut().zip(iovs.iter_mut()) {
        h.msg_hdr.msg_iov = iov;
        h.msg_hdr.msg_iovlen = 1;
    }
    let mut seen = vec![0u64; (o.count as usize).div_ceil(64)];
    let (mut unique, mut dups, mut corrupt, mut wrong_run, mut datagrams) =
        (0u64, 0u64, 0u64, 0u64, 0u64);
    let started = Instant::now();
    let mut first: Option<Instant> = None;
    let mut last = started;
    while unique < o.count && started.elapsed() < o.timeout {
        if first.is_some() && last.elapsed() > o.idle {
            break;
        }
        // SAFETY: hdrs point at iovecs and buffers that outlive the call.
        let r = unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                batch as u32,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => err("recvmmsg"),
            }
        }
        let now = Instant::now();
        first.get_or_insert(now);
        last = now;
        for (h, b) in hdrs.iter().zip(bufs.iter()).take(r as usize) {
            datagrams += 1;
            let n = h.msg_len as usize;
            if n < HEADER {
                corrupt += 1;
                continue;
            }
            let run = u64::from_be_bytes(b[..8].try_into().unwrap());
            let seq = u64::from_be_bytes(b[8..16].try_into().unwrap());
            if run != o.run_id {
                wrong_run += 1;
                continue;
            }
            if n != len || seq >= o.count || (HEADER..len).any(|i| b[i] != filler(run, seq, i)) {
                corrupt += 1;
                continue;
            }
            let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
            if seen[w] & bit != 0 {
                dups += 1;
            } else {
                seen[w] |= bit;
                unique += 1;
            }
        }
    }
    let d = first.map(|f| last - f).unwrap_or_default();
    println!(
        "{{\"expected\":{},\"received\":{unique},\"lost\":{},\"duplicates\":{dups},\
         \"corrupt\":{corrupt},\"wrong_run\":{wrong_run},\"datagrams\":{datagrams},\
         \"duration_ns\":{}}}",
        o.count,
        o.count - unique,
        d.as_nanos()
    );
}

/// SIGTERM and SIGINT set the flag that `stream` and `gaps` stop on.
fn stop_flag() -> std::sync::Arc<std::sync::atomic::AtomicBool> {
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    for s in [signal_hook::consts::SIGTERM, signal_hook::consts::SIGINT] {
        if signal_hook::flag::register(s, stop.clone()).is_err() {
            err("signal handler");
        }
    }
    stop
}

/// CLOCK_REALTIME in nanoseconds (what SO_TIMESTAMPNS reports).
fn realtime_ns() -> u64 {
    // SAFETY: ts is plain old data written by the call.
    let mut ts: libc::timespec = unsafe { zeroed() };
    // SAFETY: a valid clock id and a valid pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

fn stream(o: &Opts) {
    if o.size < 42 + HEADER + 8 {
        eprintln!(
            "stream: --size must be at least {} (the send time is carried)",
            42 + HEADER + 8
        );
        std::process::exit(2);
    }
    let stop = stop_flag();
    let sock = udp_socket();
    let fd = sock.as_raw_fd();
    let sa = sockaddr(o.addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    if unsafe {
        libc::connect(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } < 0
    {
        err("connect");
    }
    let mut buf = vec![0u8; o.size - 42];
    let start = Instant::now();
    let mut next = start;
    let mut last: Option<Instant> = None;
    let (mut seq, mut errors, mut max_gap) = (0u64, 0u64, Duration::ZERO);
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && start.elapsed() < o.timeout {
        let now = Instant::now();
        if now < next {
            std::thread::sleep(next - now);
            continue;
        }
        fill(&mut buf, o.run_id, seq);
        // The send time (CLOCK_REALTIME, as the receiver's kernel timestamps).
        buf[HEADER..HEADER + 8].copy_from_slice(&realtime_ns().to_be_bytes());
        // SAFETY: buf outlives the call and its length is passed.
        let r = unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), 0) };
        if r < 0 && std::io::Error::last_os_error().raw_os_error() != Some(libc::EINTR) {
            // A full queue or an ICMP error: counted as sent (and lost).
            errors += 1;
        }
        let sent_at = Instant::now();
        if let Some(l) = last {
            max_gap = max_gap.max(sent_at - l);
        }
        last = Some(sent_at);
        seq += 1;
        // The next slot on the schedule, or one interval from now after a stall.
        next = (next + o.interval).max(sent_at);
    }
    println!(
        "{{\"sent\":{seq},\"errors\":{errors},\"max_send_gap_us\":{},\"duration_ns\":{}}}",
        max_gap.as_micros(),
        start.elapsed().as_nanos()
    );
}

fn gaps(o: &Opts) {
    let stop = stop_flag();
    let sock = udp_socket();
    let fd = sock.as_raw_fd();
    set_buffers(fd, libc::SO_RCVBUFFORCE, libc::SO_RCVBUF);
    let sa = sockaddr(o.addr);
    // SAFETY: sa is a valid sockaddr_in for the duration of the call.
    if unsafe {
        libc::bind(
            fd,
            (&sa as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    } < 0
    {
        err("bind");
    }
    let tv = libc::timeval {
        tv_sec: 0,
        tv_usec: 20_000,
    };
    // SAFETY: tv lives across the call and its size is passed.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            size_of::<libc::timeval>() as libc::socklen_t,
        );
    }
    eprintln!("listening on {}", o.addr);
    let _ = std::io::stderr().flush();
    if !set_int(fd, libc::SOL_SOCKET, libc::SO_TIMESTAMPNS, 1) {
        err("SO_TIMESTAMPNS");
    }
    let mut buf = vec![0u8; 2048];
    let mut steal = Steal::open();
    let (mut last_steal, mut steal_in_max, mut max_clean, mut over10_clean) =
        (0u64, 0u64, 0u64, 0u64);
    // Room for one SCM_TIMESTAMPNS control message (a timespec), 8-byte aligned.
    let mut control = [0u64; 16];
    let started = Instant::now();
    let mut last: Option<u64> = None;
    let (mut received, mut dups, mut ooo, mut wrong, mut over10) = (0u64, 0u64, 0u64, 0u64, 0u64);
    let (mut max_gap, mut gap_seq, mut high) = (0u64, 0u64, None::<u64>);
    let (mut max_delay, mut delay_seq, mut delay_over10) = (0u64, 0u64, 0u64);
    // Sequence numbers seen, one bit each (a stream of at most --timeout seconds).
    let mut seen: Vec<u64> = Vec::new();
    while !stop.load(std::sync::atomic::Ordering::Relaxed) && started.elapsed() < o.timeout {
        let mut iov = libc::iovec {
            iov_base: buf.as_mut_ptr().cast(),
            iov_len: buf.len(),
        };
        // SAFETY: msghdr is plain old data; all-zero is a valid value.
        let mut msg: libc::msghdr = unsafe { zeroed() };
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = control.as_mut_ptr().cast();
        msg.msg_controllen = size_of::<[u64; 16]>() as _;
        // SAFETY: msg points at iov, buf and control, which outlive the call.
        let r = unsafe { libc::recvmsg(fd, &mut msg, 0) };
        if r < 0 {
            match std::io::Error::last_os_error().raw_os_error() {
                Some(libc::EAGAIN) | Some(libc::EINTR) => continue,
                _ => err("recvmsg"),
            }
        }
        // The kernel's receive time: when the switch handed the datagram over, not
        // when this process got to run.
        let mut now = None;
        // SAFETY: the CMSG macros walk the control buffer the kernel filled in.
        unsafe {
            let mut c = libc::CMSG_FIRSTHDR(&msg);
            while !c.is_null() {
                if (*c).cmsg_level == libc::SOL_SOCKET && (*c).cmsg_type == libc::SCM_TIMESTAMPNS {
                    let ts: libc::timespec = std::ptr::read_unaligned(libc::CMSG_DATA(c).cast());
                    now = Some(ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64);
                }
                c = libc::CMSG_NXTHDR(&msg, c);
            }
        }
        let now = now.unwrap_or_else(realtime_ns);
        let r = r as usize;
        if r < HEADER + 8 || u64::from_be_bytes(buf[..8].try_into().unwrap()) != o.run_id {
            wrong += 1;
            continue;
        }
        let seq = u64::from_be_bytes(buf[8..16].try_into().unwrap());
        if seq >= 1 << 28 {
            wrong += 1;
            continue;
        }
        let (w, bit) = ((seq / 64) as usize, 1u64 << (seq % 64));
        if seen.len() <= w {
            seen.resize(w + 1024, 0);
        }
        if seen[w] & bit != 0 {
            dups += 1;
            continue;
        }
        seen[w] |= bit;
        received += 1;
        if high.is_some_and(|h| seq < h) {
            ooo += 1;
        }
        high = Some(high.map_or(seq, |h| h.max(seq)));
        let sent_at = u64::from_be_bytes(buf[HEADER..HEADER + 8].try_into().unwrap());
        let delay = now.saturating_sub(sent_at);
        if delay > 10_000_000 {
            delay_over10 += 1;
        }
        if delay > max_delay {
            max_delay = delay;
            delay_seq = seq;
        }
        let stolen_now = steal.ticks();
        if let Some(l) = last {
            let g = now.saturating_sub(l);
            let stolen = stolen_now.saturating_sub(last_steal);
            if g > 10_000_000 {
                over10 += 1;
                if stolen == 0 {
                    over10_clean += 1;
                }
            }
            if g > max_gap {
                max_gap = g;
                gap_seq = seq;
                steal_in_max = stolen;
            }
            if stolen == 0 && g > max_clean {
                max_clean = g;
            }
        }
        last_steal = stolen_now;
        last = Some(last.map_or(now, |l| l.max(now)));
    }
    println!(
        "{{\"received\":{received},\"highest\":{},\"max_gap_us\":{},\"gap_at_seq\":{gap_seq},\
         \"gaps_over_10ms\":{over10},\"max_delay_us\":{},\"delay_at_seq\":{delay_seq},\
         \"delays_over_10ms\":{delay_over10},\"duplicates\":{dups},\"out_of_order\":{ooo},\
         \"wrong_run\":{wrong},\"steal_in_max_gap_ms\":{},\"max_gap_no_steal_us\":{},\
         \"gaps_over_10ms_no_steal\":{over10_clean}}}",
        high.map_or(-1, |h| h as i64),
        max_gap / 1000,
        max_delay / 1000,
        steal_in_max * Steal::TICK_MS,
        max_clean / 1000
    );
}

/// The machine's steal time, from the `cpu` line of `/proc/stat` (its 8th field, in
/// ticks of 1/100 s, summed over the CPUs). Reads nothing (always 0) where the file
/// cannot be read.
struct Steal {
    file: Option<std::fs::File>,
    buf: [u8; 256],
}

impl Steal {
    /// Milliseconds per tick (`USER_HZ` is 100 on Linux).
    const TICK_MS: u64 = 10;

    fn open() -> Steal {
        Steal {
            file: std::fs::File::open("/proc/stat").ok(),
            buf: [0; 256],
        }
    }

    fn ticks(&mut self) -> u64 {
        use std::os::unix::fs::FileExt;
        let Some(f) = &self.file else { return 0 };
        let n = f.read_at(&mut self.buf, 0).unwrap_or(0);
        let line = self.buf[..n].split(|&b| b == b'\n').next().unwrap_or(&[]);
        std::str::from_utf8(line)
            .ok()
            .and_then(|l| l.split_ascii_whitespace().nth(8))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("send") => send(&parse(&args[1..], "--to")),
        Some("recv") => recv(&parse(&args[1..], "--listen")),
        Some("stream") => stream(&parse(&args[1..], "--to")),
        Some("gaps") => gaps(&parse(&args[1..], "--listen")),
        _ => usage(),
    }
}
