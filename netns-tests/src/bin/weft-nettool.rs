//! `weft-nettool`: small, verified network transfers for the namespace tests.
//!
//! Run inside a namespace with `ip netns exec NS weft-nettool COMMAND ...`:
//!
//! ```text
//! tcp-recv --listen ADDR:PORT --bytes N [--seed S] [--timeout SECS]
//! tcp-send --to ADDR:PORT --bytes N [--seed S] [--timeout SECS]
//! udp-send --to ADDR:PORT --hex HEX [--bind ADDR:PORT] [--count N]
//! udp-echo --listen ADDR:PORT --count N [--timeout SECS]
//! udp-ping --to ADDR:PORT --count N [--size BYTES] [--seed S] [--timeout SECS]
//! http-get --to ADDR:PORT [--path PATH] [--timeout SECS]
//! ```
//!
//! The TCP payload is a deterministic stream (xorshift64* from the seed), so the
//! receiver checks every byte without the sender telling it anything. Both sides print
//! the byte count and an FNV-1a checksum; the receiver exits non-zero on a mismatch, a
//! short read or trailing bytes. Every wait has a deadline (`--timeout`, default 20 s).
//!
//! `udp-echo` sends every datagram back to where it came from, until it has echoed
//! `--count` of them or the deadline passes (it then exits non-zero if it echoed fewer).
//! `udp-ping` sends `--count` datagrams one at a time (sizes cycling up to `--size`,
//! each carrying its sequence number and pattern bytes), waits for each echo, checks
//! it byte for byte and retries a lost one up to 3 times; it fails unless every
//! datagram came back intact.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str =
    "usage: weft-nettool tcp-recv --listen ADDR:PORT --bytes N [--seed S] [--timeout SECS]
       weft-nettool tcp-send --to ADDR:PORT --bytes N [--seed S] [--timeout SECS]
       weft-nettool udp-send --to ADDR:PORT --hex HEX [--bind ADDR:PORT] [--count N]
       weft-nettool udp-echo --listen ADDR:PORT --count N [--timeout SECS]
       weft-nettool udp-ping --to ADDR:PORT --count N [--size BYTES] [--seed S] [--timeout SECS]
       weft-nettool http-get --to ADDR:PORT [--path PATH] [--timeout SECS]";

/// The deterministic byte stream: xorshift64* emitting 8 bytes per step.
struct Pattern {
    state: u64,
    word: [u8; 8],
    used: usize,
}

impl Pattern {
    fn new(seed: u64) -> Pattern {
        Pattern {
            // xorshift must not start at 0.
            state: seed ^ 0x9e37_79b9_7f4a_7c15,
            word: [0; 8],
            used: 8,
        }
    }

    fn fill(&mut self, out: &mut [u8]) {
        for b in out {
            if self.used == 8 {
                let mut x = self.state;
                x ^= x >> 12;
                x ^= x << 25;
                x ^= x >> 27;
                self.state = x;
                self.word = x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes();
                self.used = 0;
            }
            *b = self.word[self.used];
            self.used += 1;
        }
    }
}

/// FNV-1a, 64 bits.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn update(&mut self, data: &[u8]) {
        for &b in data {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

struct Opts {
    args: Vec<(String, String)>,
}

impl Opts {
    fn parse(rest: &[String]) -> Result<Opts, String> {
        let mut args = Vec::new();
        let mut it = rest.iter();
        while let Some(k) = it.next() {
            let Some(name) = k.strip_prefix("--") else {
                return Err(format!("unexpected argument '{k}'"));
            };
            let v = it.next().ok_or_else(|| format!("--{name} needs a value"))?;
            args.push((name.to_string(), v.clone()));
        }
        Ok(Opts { args })
    }

    fn get(&self, name: &str) -> Option<&str> {
        self.args
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }

    fn need(&self, name: &str) -> Result<&str, String> {
        self.get(name)
            .ok_or_else(|| format!("--{name} is required"))
    }

    fn num(&self, name: &str, default: Option<u64>) -> Result<u64, String> {
        match self.get(name) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{name}: '{v}' is not a number")),
            None => default.ok_or_else(|| format!("--{name} is required")),
        }
    }

    fn addr(&self, name: &str) -> Result<SocketAddr, String> {
        let v = self.need(name)?;
        v.parse()
            .map_err(|_| format!("--{name}: '{v}' is not ADDR:PORT"))
    }

    fn timeout(&self) -> Result<Duration, String> {
        let v = self.get("timeout").unwrap_or("20");
        v.parse::<f64>()
            .ok()
            .filter(|s| *s > 0.0 && *s < 3600.0)
            .map(Duration::from_secs_f64)
            .ok_or_else(|| format!("--timeout: '{v}' is not a number of seconds"))
    }
}

fn main() -> ExitCode {
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let Some((cmd, rest)) = argv.split_first() else {
        eprintln!("{USAGE}");
        return ExitCode::from(2);
    };
    let opts = match Opts::parse(rest) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("weft-nettool: {e}\n{USAGE}");
            return ExitCode::from(2);
        }
    };
    let r = match cmd.as_str() {
        "tcp-recv" => tcp_recv(&opts),
        "tcp-send" => tcp_send(&opts),
        "udp-send" => udp_send(&opts),
        "udp-echo" => udp_echo(&opts),
        "udp-ping" => udp_ping(&opts),
        "http-get" => http_get(&opts),
        _ => Err(format!("unknown command '{cmd}'")),
    };
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weft-nettool {cmd}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn remaining(deadline: Instant) -> Result<Duration, String> {
    deadline
        .checked_duration_since(Instant::now())
        .filter(|d| !d.is_zero())
        .ok_or_else(|| "timed out".to_string())
}

fn tcp_recv(o: &Opts) -> Result<(), String> {
    let listen = o.addr("listen")?;
    let total = o.num("bytes", None)?;
    let seed = o.num("seed", Some(1))?;
    let deadline = Instant::now() + o.timeout()?;
    let listener = TcpListener::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("nonblocking: {e}"))?;
    println!("listening on {listen}");
    let _ = io::stdout().flush();
    let (mut s, peer) = loop {
        match listener.accept() {
            Ok(c) => break c,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                remaining(deadline).map_err(|_| "no connection before the deadline")?;
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(format!("accept: {e}")),
        }
    };
    s.set_nonblocking(false).map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut pattern = Pattern::new(seed);
    let mut sum = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut want = vec![0u8; 64 * 1024];
    let mut got: u64 = 0;
    while got < total {
        let left = remaining(deadline)
            .map_err(|_| format!("short read: {got} of {total} bytes before the deadline"))?;
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let room = buf.len().min((total - got) as usize);
        let n = match s.read(&mut buf[..room]) {
            Ok(0) => return Err(format!("short read: {got} of {total} bytes, then EOF")),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(format!("read after {got} of {total} bytes: {e}")),
        };
        pattern.fill(&mut want[..n]);
        if let Some(i) = (0..n).find(|&i| buf[i] != want[i]) {
            return Err(format!(
                "content mismatch at byte {}: got {:#04x}, expected {:#04x}",
                got + i as u64,
                buf[i],
                want[i]
            ));
        }
        sum.update(&buf[..n]);
        got += n as u64;
    }
    // Nothing may follow the expected bytes.
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut extra = [0u8; 1];
    if let Ok(n @ 1..) = s.read(&mut extra) {
        return Err(format!("{n} byte(s) past the expected {total}"));
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "received {got} bytes fnv1a={:016x} from {peer} in {secs:.3}s ({:.3} Gbit/s)",
        sum.0,
        got as f64 * 8.0 / secs.max(1e-9) / 1e9
    );
    let _ = s.shutdown(Shutdown::Both);
    Ok(())
}

fn tcp_send(o: &Opts) -> Result<(), String> {
    let to = o.addr("to")?;
    let total = o.num("bytes", None)?;
    let seed = o.num("seed", Some(1))?;
    let deadline = Instant::now() + o.timeout()?;
    let mut attempts = 0u32;
    let mut s = loop {
        attempts += 1;
        let left = remaining(deadline).map_err(|_| format!("cannot connect to {to}"))?;
        match TcpStream::connect_timeout(&to, left.min(Duration::from_secs(1))) {
            Ok(s) => break s,
            Err(e) => {
                if remaining(deadline).is_err() {
                    return Err(format!("connect to {to} ({attempts} attempts): {e}"));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    };
    let start = Instant::now();
    let mut pattern = Pattern::new(seed);
    let mut sum = Fnv::new();
    let mut buf = vec![0u8; 64 * 1024];
    let mut sent: u64 = 0;
    while sent < total {
        let left = remaining(deadline)
            .map_err(|_| format!("sent only {sent} of {total} bytes before the deadline"))?;
        s.set_write_timeout(Some(left)).map_err(|e| e.to_string())?;
        let n = buf.len().min((total - sent) as usize);
        pattern.fill(&mut buf[..n]);
        s.write_all(&buf[..n])
            .map_err(|e| format!("write after {sent} of {total} bytes: {e}"))?;
        sum.update(&buf[..n]);
        sent += n as u64;
    }
    s.shutdown(Shutdown::Write).map_err(|e| e.to_string())?;
    // Wait for the receiver to close: it does so once it has checked every byte.
    let left = remaining(deadline).map_err(|_| "no close from the receiver".to_string())?;
    s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
    let mut b = [0u8; 16];
    loop {
        match s.read(&mut b) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            // A reset after the receiver's check is also a close.
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break,
            Err(e) => return Err(format!("waiting for the receiver to close: {e}")),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    println!(
        "sent {sent} bytes fnv1a={:016x} to {to} in {secs:.3}s ({:.3} Gbit/s)",
        sum.0,
        sent as f64 * 8.0 / secs.max(1e-9) / 1e9
    );
    Ok(())
}

fn parse_hex(s: &str) -> Result<Vec<u8>, String> {
    let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
    if !s.len().is_multiple_of(2) {
        return Err("--hex: odd number of digits".into());
    }
    (0..s.len())
        .step_by(2)
        .map(|i| {
            u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| format!("--hex: bad digits at {i}"))
        })
        .collect()
}

fn udp_send(o: &Opts) -> Result<(), String> {
    let to = o.addr("to")?;
    let data = parse_hex(o.need("hex")?)?;
    let count = o.num("count", Some(1))?.min(100_000);
    let bind: SocketAddr = match o.get("bind") {
        Some(_) => o.addr("bind")?,
        None if to.is_ipv4() => "0.0.0.0:0".parse().expect("address"),
        None => "[::]:0".parse().expect("address"),
    };
    let s = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    for _ in 0..count {
        s.send_to(&data, to)
            .map_err(|e| format!("send to {to}: {e}"))?;
    }
    println!("sent {count} datagram(s) of {} bytes to {to}", data.len());
    Ok(())
}

fn udp_echo(o: &Opts) -> Result<(), String> {
    let listen = o.addr("listen")?;
    let count = o.num("count", None)?.min(1_000_000);
    let deadline = Instant::now() + o.timeout()?;
    let s = UdpSocket::bind(listen).map_err(|e| format!("bind {listen}: {e}"))?;
    println!("listening on {listen}");
    let _ = io::stdout().flush();
    let mut buf = vec![0u8; 65536];
    let mut echoed = 0u64;
    let mut bytes = 0u64;
    while echoed < count {
        let left = remaining(deadline).map_err(|_| {
            format!("echoed only {echoed} of {count} datagrams before the deadline")
        })?;
        s.set_read_timeout(Some(left)).map_err(|e| e.to_string())?;
        let (n, from) = match s.recv_from(&mut buf) {
            Ok(r) => r,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock
                        | io::ErrorKind::TimedOut
                        | io::ErrorKind::Interrupted
                ) =>
            {
                continue;
            }
            Err(e) => return Err(format!("receive: {e}")),
        };
        s.send_to(&buf[..n], from)
            .map_err(|e| format!("echo to {from}: {e}"))?;
        echoed += 1;
        bytes += n as u64;
    }
    println!("echoed {echoed} datagrams ({bytes} bytes)");
    Ok(())
}

/// The datagram `seq` of `udp-ping`: 8 bytes of sequence number, then pattern bytes.
fn udp_datagram(seed: u64, seq: u64, size: usize, out: &mut Vec<u8>) {
    // Sizes cycle from 8 bytes up to `size`, so small and full-size datagrams both go.
    let len = 8 + (seq as usize * 97) % (size.max(9) - 7);
    out.clear();
    out.extend_from_slice(&seq.to_be_bytes());
    out.resize(len, 0);
    Pattern::new(seed ^ seq.wrapping_mul(0x1000_0000_01b3)).fill(&mut out[8..]);
}

fn udp_ping(o: &Opts) -> Result<(), String> {
    let to = o.addr("to")?;
    let count = o.num("count", None)?.min(1_000_000);
    let size = o.num("size", Some(1400))?.clamp(9, 65_000) as usize;
    let seed = o.num("seed", Some(1))?;
    let deadline = Instant::now() + o.timeout()?;
    let bind: SocketAddr = if to.is_ipv4() {
        "0.0.0.0:0".parse().expect("address")
    } else {
        "[::]:0".parse().expect("address")
    };
    let s = UdpSocket::bind(bind).map_err(|e| format!("bind {bind}: {e}"))?;
    s.connect(to).map_err(|e| format!("connect {to}: {e}"))?;
    let start = Instant::now();
    let mut want = Vec::with_capacity(size);
    let mut buf = vec![0u8; 65536];
    let (mut retries, mut bytes) = (0u64, 0u64);
    for seq in 0..count {
        udp_datagram(seed, seq, size, &mut want);
        let mut tries = 0;
        'resend: loop {
            tries += 1;
            if tries > 4 {
                return Err(format!(
                    "datagram {seq} ({} bytes) not echoed after {} tries ({seq} of {count} came back first)",
                    want.len(),
                    tries - 1
                ));
            }
            if tries > 1 {
                retries += 1;
            }
            match s.send(&want) {
                Ok(_) => {}
                // An ICMP error of an earlier datagram (echo not up yet): try again.
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                    std::thread::sleep(Duration::from_millis(50));
                    continue 'resend;
                }
                Err(e) => return Err(format!("send datagram {seq}: {e}")),
            }
            let wait_until = Instant::now() + Duration::from_millis(500);
            loop {
                remaining(deadline).map_err(|_| {
                    format!("only {seq} of {count} datagrams echoed before the deadline")
                })?;
                let Some(left) = wait_until.checked_duration_since(Instant::now()) else {
                    continue 'resend;
                };
                s.set_read_timeout(Some(left.max(Duration::from_millis(1))))
                    .map_err(|e| e.to_string())?;
                let n = match s.recv(&mut buf) {
                    Ok(n) => n,
                    Err(e)
                        if matches!(
                            e.kind(),
                            io::ErrorKind::WouldBlock
                                | io::ErrorKind::TimedOut
                                | io::ErrorKind::Interrupted
                        ) =>
                    {
                        continue;
                    }
                    Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                        std::thread::sleep(Duration::from_millis(50));
                        continue 'resend;
                    }
                    Err(e) => return Err(format!("receive echo of {seq}: {e}")),
                };
                let got = &buf[..n];
                if got.len() >= 8 && got[..8] != want[..8] {
                    // A late echo of an earlier try: ignore it.
                    let their = u64::from_be_bytes(got[..8].try_into().expect("8 bytes"));
                    if their < seq {
                        continue;
                    }
                }
                if got != want.as_slice() {
                    return Err(format!(
                        "echo of datagram {seq} differs: {} bytes back, {} sent",
                        got.len(),
                        want.len()
                    ));
                }
                bytes += n as u64;
                break 'resend;
            }
        }
    }
    println!(
        "udp-ping: {count} datagrams ({bytes} bytes) echoed intact from {to} in {:.3}s, \
         {retries} resent",
        start.elapsed().as_secs_f64()
    );
    Ok(())
}

fn http_get(o: &Opts) -> Result<(), String> {
    let to = o.addr("to")?;
    let path = o.get("path").unwrap_or("/metrics");
    let deadline = Instant::now() + o.timeout()?;
    let mut s = TcpStream::connect_timeout(&to, remaining(deadline)?)
        .map_err(|e| format!("connect to {to}: {e}"))?;
    s.set_write_timeout(Some(remaining(deadline)?))
        .map_err(|e| e.to_string())?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {to}\r\nConnection: close\r\n\r\n"
    )
    .map_err(|e| format!("request: {e}"))?;
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    loop {
        s.set_read_timeout(Some(remaining(deadline)?))
            .map_err(|e| e.to_string())?;
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(format!("response: {e}")),
        }
        if out.len() > 64 * 1024 * 1024 {
            return Err("response larger than 64 MiB".into());
        }
    }
    io::stdout()
        .write_all(&out)
        .map_err(|e| format!("stdout: {e}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pattern_is_deterministic_and_chunking_does_not_matter() {
        let mut a = Pattern::new(7);
        let mut whole = [0u8; 100];
        a.fill(&mut whole);
        let mut b = Pattern::new(7);
        let mut parts = [0u8; 100];
        b.fill(&mut parts[..3]);
        b.fill(&mut parts[3..50]);
        b.fill(&mut parts[50..]);
        assert_eq!(whole, parts);
        let mut c = Pattern::new(8);
        let mut other = [0u8; 100];
        c.fill(&mut other);
        assert_ne!(whole, other, "the seed matters");
        assert!(whole.iter().any(|&b| b != whole[0]), "not constant");
    }

    #[test]
    fn udp_datagrams_carry_their_sequence_and_vary_in_size() {
        let mut a = Vec::new();
        let mut sizes = std::collections::HashSet::new();
        for seq in 0..50 {
            udp_datagram(3, seq, 1400, &mut a);
            assert!(a.len() >= 8 && a.len() <= 1400, "{}", a.len());
            assert_eq!(u64::from_be_bytes(a[..8].try_into().unwrap()), seq);
            sizes.insert(a.len());
        }
        assert!(sizes.len() > 40);
        let mut b = Vec::new();
        udp_datagram(3, 7, 1400, &mut a);
        udp_datagram(3, 7, 1400, &mut b);
        assert_eq!(a, b);
    }

    #[test]
    fn hex_parses() {
        assert_eq!(parse_hex("08 00 00 ff").unwrap(), vec![8, 0, 0, 0xff]);
        assert!(parse_hex("0").is_err());
        assert!(parse_hex("zz").is_err());
    }
}
