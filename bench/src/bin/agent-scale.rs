//! `agent-scale`: one `weft-agent` against a cluster of 1,000 simulated nodes (as root).
//!
//! ```text
//! cargo build --release --bins && sudo target/release/agent-scale [--nodes 1000]
//!     [--churn 0.1] [--churn-rate 50] [--members 1] [--poll-ms 100] [--wait-s 180]
//!     [--out target/agent-scale]
//! ```
//!
//! A lab underlay with an etcd cluster (`--members` of them, one per node namespace),
//! one real node (`weftd` + `weft-agent` in its namespace) and a load generator that
//! writes `--nodes` simulated nodes into etcd (`nodes/sim-N` and `subnets/<cidr>` on
//! one lease, as an agent registers a node) as fast as etcd takes them, then churns
//! `--churn` of them (deletes that many and registers as many new ones in their
//! subnets, `--churn-rate` changes a second). The generator speaks etcd's v3 JSON
//! gateway (`/v3/kv/put`, `/v3/lease/grant`, `/v3/kv/deleterange`) over HTTP from a
//! thread inside a node namespace, and stamps each key when etcd acknowledges it. A
//! poller dumps weftd's flows every `--poll-ms` and stamps when each simulated node's
//! subnet first appears in (or leaves) them.
//!
//! Reported: how long the agent takes to program all peers (first key written to the
//! last subnet in weftd), the time from a node key written to its flows in weftd (p50,
//! p90, p99, max; the poll interval plus a dump is the resolution, printed too), the same
//! for a node's removal, the agent's and weftd's resident memory, and the flows per node.
//! The target is p99 under 1 s at 1,000 nodes. Results also go to `results.json` in
//! `--out`.
//!
//! The simulated nodes' public addresses are 198.18.1.0 upwards (198.18.8.7 at most; the
//! benchmarking range, next to the lab's 198.18.0.0/24 underlay): they only appear as
//! `tun_dst` in flows; no packet is sent anywhere, and nothing routes there.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use netns_tests::agent::{AgentNode, AgentSpec, EtcdAccess};
use netns_tests::etcd::{CLIENT_PORT, EtcdCluster};
use netns_tests::lab::{Lab, Ns};
use netns_tests::node::{Underlay, underlay_ip};
use weft_flow::FlowFilter;
use weft_proto::client::Client;

const PREFIX: &str = "/weft/v1/";
/// 2,048 subnets of /27: room for 1,000 nodes, the real one and the churn.
const CONFIG: &str =
    r#"{"pod_cidr":"198.19.0.0/16","subnet_len":27,"encap":"vxlan","vni":1,"port":4789}"#;
const SUBNET_LEN: u8 = 27;

struct Opts {
    nodes: usize,
    churn: f64,
    churn_rate: f64,
    members: u8,
    poll: Duration,
    wait: Duration,
    out: PathBuf,
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "{msg}\nusage: agent-scale [--nodes N] [--churn FRACTION] [--churn-rate PER_SEC] \
         [--members 1|3] [--poll-ms MS] [--wait-s SECS] [--out DIR]"
    );
    std::process::exit(2)
}

fn parse_args() -> Opts {
    let mut o = Opts {
        nodes: 1000,
        churn: 0.1,
        churn_rate: 50.0,
        members: 1,
        poll: Duration::from_millis(100),
        wait: Duration::from_secs(180),
        out: PathBuf::from("target/agent-scale"),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| {
            args.next()
                .unwrap_or_else(|| usage(&format!("{name} needs a value")))
        };
        match a.as_str() {
            "--nodes" => {
                o.nodes = val("--nodes")
                    .parse()
                    .ok()
                    .filter(|n| (1..=1800).contains(n))
                    .unwrap_or_else(|| usage("--nodes: a number from 1 to 1800"))
            }
            "--churn" => {
                o.churn = val("--churn")
                    .parse()
                    .ok()
                    .filter(|c: &f64| (0.0..=0.5).contains(c))
                    .unwrap_or_else(|| usage("--churn: a fraction from 0 to 0.5"))
            }
            "--churn-rate" => {
                o.churn_rate = val("--churn-rate")
                    .parse()
                    .ok()
                    .filter(|c: &f64| *c > 0.0 && *c <= 10_000.0)
                    .unwrap_or_else(|| usage("--churn-rate: changes a second, up to 10000"))
            }
            "--members" => {
                o.members = val("--members")
                    .parse()
                    .ok()
                    .filter(|m| *m == 1 || *m == 3)
                    .unwrap_or_else(|| usage("--members: 1 or 3"))
            }
            "--poll-ms" => {
                let ms: u64 = val("--poll-ms")
                    .parse()
                    .ok()
                    .filter(|m| (1..=1000).contains(m))
                    .unwrap_or_else(|| usage("--poll-ms: 1 to 1000"));
                o.poll = Duration::from_millis(ms);
            }
            "--wait-s" => {
                let w: u64 = val("--wait-s")
                    .parse()
                    .ok()
                    .filter(|w| (1..=3600).contains(w))
                    .unwrap_or_else(|| usage("--wait-s: 1 to 3600"));
                o.wait = Duration::from_secs(w);
            }
            "--out" => o.out = PathBuf::from(val("--out")),
            "-h" | "--help" => usage("agent-scale: one weft-agent against many simulated nodes"),
            other => usage(&format!("unknown argument {other}")),
        }
    }
    o
}

/// Base64 (standard alphabet, padded), as the JSON gateway wants bytes.
fn b64(data: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for c in data.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        s.push(T[(n >> 18) as usize & 63] as char);
        s.push(T[(n >> 12) as usize & 63] as char);
        s.push(if c.len() > 1 {
            T[(n >> 6) as usize & 63] as char
        } else {
            '='
        });
        s.push(if c.len() > 2 {
            T[n as usize & 63] as char
        } else {
            '='
        });
    }
    s
}

/// A keep-alive HTTP/1.1 connection to etcd's JSON gateway.
struct Gateway {
    addr: String,
    r: BufReader<TcpStream>,
    w: TcpStream,
}

impl Gateway {
    fn connect(addr: &str) -> std::io::Result<Gateway> {
        let s = TcpStream::connect(addr)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        s.set_nodelay(true)?;
        Ok(Gateway {
            addr: addr.to_string(),
            r: BufReader::new(s.try_clone()?),
            w: s,
        })
    }

    /// POSTs `body` to `path`; the response's JSON (an error unless 200).
    fn post(&mut self, path: &str, body: &str) -> Result<serde_json::Value, String> {
        let req = format!(
            "POST {path} HTTP/1.1\r\nHost: {}\r\nContent-Type: application/json\r\n\
             Content-Length: {}\r\n\r\n{body}",
            self.addr,
            body.len()
        );
        self.w
            .write_all(req.as_bytes())
            .map_err(|e| format!("{path}: {e}"))?;
        let mut status = String::new();
        self.r
            .read_line(&mut status)
            .map_err(|e| format!("{path}: {e}"))?;
        let mut len = None;
        let mut chunked = false;
        loop {
            let mut h = String::new();
            self.r
                .read_line(&mut h)
                .map_err(|e| format!("{path}: {e}"))?;
            let h = h.trim_end();
            if h.is_empty() {
                break;
            }
            let lower = h.to_ascii_lowercase();
            if let Some(v) = lower.strip_prefix("content-length:") {
                len = v.trim().parse::<usize>().ok();
            }
            if lower.starts_with("transfer-encoding:") && lower.contains("chunked") {
                chunked = true;
            }
        }
        let mut body = Vec::new();
        if chunked {
            loop {
                let mut size = String::new();
                self.r
                    .read_line(&mut size)
                    .map_err(|e| format!("{path}: {e}"))?;
                let n = usize::from_str_radix(size.trim(), 16)
                    .map_err(|_| format!("{path}: bad chunk size {size:?}"))?;
                let mut chunk = vec![0; n + 2];
                self.r
                    .read_exact(&mut chunk)
                    .map_err(|e| format!("{path}: {e}"))?;
                if n == 0 {
                    break;
                }
                body.extend_from_slice(&chunk[..n]);
            }
        } else {
            let n = len.ok_or_else(|| format!("{path}: a response without a length"))?;
            body.resize(n, 0);
            self.r
                .read_exact(&mut body)
                .map_err(|e| format!("{path}: {e}"))?;
        }
        let text = String::from_utf8_lossy(&body);
        if !status.contains(" 200 ") {
            return Err(format!("{path}: {} {text}", status.trim()));
        }
        serde_json::from_str(&text).map_err(|e| format!("{path}: {e}: {text}"))
    }

    fn lease(&mut self, ttl: u64) -> Result<String, String> {
        let v = self.post("/v3/lease/grant", &format!("{{\"TTL\":{ttl}}}"))?;
        v["ID"]
            .as_str()
            .map(str::to_string)
            .ok_or_else(|| format!("lease grant: {v}"))
    }

    fn put(&mut self, key: &str, value: &str, lease: &str) -> Result<(), String> {
        let body = format!(
            "{{\"key\":\"{}\",\"value\":\"{}\",\"lease\":\"{lease}\"}}",
            b64(key.as_bytes()),
            b64(value.as_bytes())
        );
        self.post("/v3/kv/put", &body).map(drop)
    }

    fn delete(&mut self, key: &str) -> Result<(), String> {
        let body = format!("{{\"key\":\"{}\"}}", b64(key.as_bytes()));
        self.post("/v3/kv/deleterange", &body).map(drop)
    }
}

/// Simulated node `n`: its name, public address and subnet (`slot` of the pod CIDR).
fn sim(n: usize, slot: usize) -> (String, Ipv4Addr, String) {
    let ip = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 18, 1, 0)) + n as u32);
    let net = Ipv4Addr::from(u32::from(Ipv4Addr::new(198, 19, 0, 0)) + ((slot as u32) << 5));
    (format!("sim-{n}"), ip, format!("{net}/{SUBNET_LEN}"))
}

/// Registers simulated node `n` in `slot` as an agent would.
fn register(g: &mut Gateway, n: usize, slot: usize, lease: &str) -> Result<(), String> {
    let (name, ip, subnet) = sim(n, slot);
    let key = format!("{PREFIX}subnets/{}", subnet.replace('/', "-"));
    g.put(
        &key,
        &format!("{{\"node\":\"{name}\",\"public_ip\":\"{ip}\"}}"),
        lease,
    )?;
    g.put(
        &format!("{PREFIX}nodes/{name}"),
        &format!(
            "{{\"public_ip\":\"{ip}\",\"subnet\":\"{subnet}\",\"gateway_mac\":\"0a:58:c6:13:{:02x}:{:02x}\",\"encap\":\"vxlan\"}}",
            (slot >> 8) & 0xff,
            slot & 0xff
        ),
        lease,
    )
}

fn unregister(g: &mut Gateway, n: usize, slot: usize) -> Result<(), String> {
    let (name, _, subnet) = sim(n, slot);
    g.delete(&format!("{PREFIX}nodes/{name}"))?;
    g.delete(&format!("{PREFIX}subnets/{}", subnet.replace('/', "-")))
}

/// The subnets weftd's flows match as `nw_dst` (those of the simulated nodes' form).
fn subnets_in(c: &mut Client) -> Result<(HashSet<String>, usize), String> {
    let r = c
        .dump_flows(FlowFilter::all())
        .map_err(|e| format!("dump-flows: {e}"))?;
    let mut set = HashSet::new();
    let suffix = format!("/{SUBNET_LEN}");
    for f in &r.flows {
        let text = f.flow.to_string();
        for w in text.split([',', ' ']) {
            if let Some(v) = w.strip_prefix("nw_dst=")
                && v.ends_with(&suffix)
            {
                set.insert(v.to_string());
            }
        }
    }
    Ok((set, r.flows.len()))
}

/// What the poller saw: when each subnet appeared in weftd's flows, and when it went
/// (every time, in order: a churned subnet goes and comes back).
#[derive(Default)]
struct Seen {
    appeared: HashMap<String, Vec<Instant>>,
    gone: HashMap<String, Vec<Instant>>,
    flows: usize,
    dumps: u64,
    dump_time: Duration,
}

/// The first event of `subnet` in `events` after `t`.
fn after(events: &HashMap<String, Vec<Instant>>, subnet: &str, t: Instant) -> Option<Instant> {
    events.get(subnet)?.iter().copied().find(|e| *e >= t)
}

fn percentile(v: &[f64], p: f64) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let i = ((p / 100.0) * (s.len() - 1) as f64).round() as usize;
    s[i.min(s.len() - 1)]
}

fn rss_kib(pid: Option<u32>) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pid?)).ok()?;
    status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn summary(name: &str, lat: &[f64]) -> serde_json::Value {
    if lat.is_empty() {
        println!("{name:<28} n=0");
        return serde_json::json!({ "count": 0 });
    }
    let ms = |p| percentile(lat, p) * 1000.0;
    println!(
        "{name:<28} n={:<5} p50 {:>7.1} ms  p90 {:>7.1} ms  p99 {:>7.1} ms  max {:>7.1} ms",
        lat.len(),
        ms(50.0),
        ms(90.0),
        ms(99.0),
        ms(100.0)
    );
    serde_json::json!({
        "count": lat.len(),
        "p50_ms": ms(50.0), "p90_ms": ms(90.0), "p99_ms": ms(99.0), "max_ms": ms(100.0),
    })
}

fn main() {
    let o = parse_args();
    if let Err(e) = run(&o) {
        eprintln!("agent-scale: {e}");
        std::process::exit(1);
    }
}

fn run(o: &Opts) -> Result<(), String> {
    let err = |e: netns_tests::lab::LabError| e.0;
    let mut lab = Lab::new().map_err(err)?;
    let hosts = o.members.max(1);
    let ul = Underlay::new(&mut lab, hosts).map_err(err)?;
    let members: Vec<(Ns, Ipv4Addr)> = (1..=o.members)
        .map(|i| (ul.node(i).clone(), underlay_ip(i)))
        .collect();
    let etcd = EtcdCluster::start(&mut lab, &members, None).map_err(err)?;
    etcd.wait_healthy(&mut lab, Duration::from_secs(30))
        .map_err(err)?;
    etcd.put(&mut lab, &format!("{PREFIX}config"), CONFIG)
        .map_err(err)?;
    let node_ns = ul.node(1).clone();
    let mut spec = AgentSpec::new("node1", underlay_ip(1), EtcdAccess::of(&etcd));
    spec.lease_ttl = 60;
    let node = AgentNode::start(&mut lab, &node_ns, &spec).map_err(err)?;
    let ready = node
        .agent
        .wait_ready(&mut lab, Duration::from_secs(30))
        .map_err(err)?;
    println!(
        "agent ready: subnet {:?}; {} simulated nodes, churn {}%, {} etcd member(s)",
        ready.subnet,
        o.nodes,
        o.churn * 100.0,
        o.members
    );
    let sock = node.weftd_socket();
    let base_flows = Client::connect(&sock)
        .and_then(|mut c| c.dump_flows(FlowFilter::all()))
        .map_err(|e| format!("dump-flows: {e}"))?
        .flows
        .len();
    let (agent_rss0, weftd_rss0) = (rss_kib(node.agent.pid(&lab)), rss_kib(node.weftd.pid(&lab)));

    // The poller.
    let seen = Arc::new(Mutex::new(Seen::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let poller = {
        let (seen, stop, sock, poll) = (Arc::clone(&seen), Arc::clone(&stop), sock.clone(), o.poll);
        std::thread::spawn(move || -> Result<(), String> {
            let mut c = Client::connect(&sock).map_err(|e| e.to_string())?;
            let mut before: HashSet<String> = HashSet::new();
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                let (now, flows) = subnets_in(&mut c)?;
                let t = Instant::now();
                let mut s = seen.lock().unwrap();
                for x in now.difference(&before) {
                    s.appeared.entry(x.clone()).or_default().push(t);
                }
                for x in before.difference(&now) {
                    s.gone.entry(x.clone()).or_default().push(t);
                }
                s.flows = flows;
                s.dumps += 1;
                s.dump_time += t - t0;
                drop(s);
                before = now;
                std::thread::sleep(poll);
            }
            Ok(())
        })
    };

    // The load generator, inside the node namespace (where etcd's addresses are).
    let gw_addr = format!("{}:{CLIENT_PORT}", underlay_ip(1));
    let nodes = o.nodes;
    let churn = (o.nodes as f64 * o.churn).round() as usize;
    let pace = Duration::from_secs_f64(1.0 / o.churn_rate);
    // Every simulated node has a subnet of its own (the churn's new nodes too, so
    // that a removal and an addition are two changes the poller can tell apart); the
    // real node's subnet is skipped.
    let real_slot = match ready.subnet {
        Some(ipnet::IpNet::V4(n)) if n.prefix_len() == SUBNET_LEN => {
            Some(((u32::from(n.network()) - u32::from(Ipv4Addr::new(198, 19, 0, 0))) >> 5) as usize)
        }
        _ => None,
    };
    let slots: Vec<usize> = (0..2048).filter(|s| Some(*s) != real_slot).collect();
    if nodes + churn > slots.len() {
        return Err(format!(
            "{} nodes need more than the {} subnets",
            nodes + churn,
            slots.len()
        ));
    }
    let slot = move |n: usize| slots[n];
    let ns_name = node_ns.name().to_string();
    type Stamps = (
        Vec<(String, Instant)>,
        Vec<(String, Instant)>,
        Instant,
        Instant,
    );
    let r: std::io::Result<Result<Stamps, String>> =
        weft_datapath::port::netns::in_netns(Some(&ns_name), || {
            let mut g = Gateway::connect(&gw_addr)?;
            let mut run = || -> Result<Stamps, String> {
                let lease = g.lease(3600)?;
                let mut added = Vec::with_capacity(nodes + churn);
                let mut removed = Vec::with_capacity(churn);
                let first = Instant::now();
                for n in 0..nodes {
                    register(&mut g, n, slot(n), &lease)?;
                    added.push((sim(n, slot(n)).2, Instant::now()));
                }
                let bulk_done = Instant::now();
                // Let the bulk settle before the churn, so that it is measured alone.
                std::thread::sleep(Duration::from_secs(3));
                for k in 0..churn {
                    let t = Instant::now();
                    unregister(&mut g, k, slot(k))?;
                    removed.push((sim(k, slot(k)).2, Instant::now()));
                    let n = nodes + k;
                    register(&mut g, n, slot(n), &lease)?;
                    added.push((sim(n, slot(n)).2, Instant::now()));
                    std::thread::sleep(pace.saturating_sub(t.elapsed()));
                }
                Ok((added, removed, first, bulk_done))
            };
            Ok(run())
        });
    let (added, removed, first, bulk_done) = r.map_err(|e| e.to_string())??;
    println!(
        "load generator: {} nodes written in {:.2} s, then {} churned",
        nodes,
        (bulk_done - first).as_secs_f64(),
        churn
    );

    // Wait (at most --wait-s after the last write) for the agent to catch up: every
    // write seen after it was made, every removal gone after it was made.
    let deadline = Instant::now() + o.wait;
    loop {
        let done = {
            let s = seen.lock().unwrap();
            added
                .iter()
                .all(|(sub, t)| after(&s.appeared, sub, *t).is_some())
                && removed
                    .iter()
                    .all(|(sub, t)| after(&s.gone, sub, *t).is_some())
        };
        if done || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(o.poll * 3);
    stop.store(true, Ordering::Relaxed);
    poller
        .join()
        .map_err(|_| "the poller panicked".to_string())??;
    let s = seen.lock().unwrap();

    // Latency of each write: its subnet's first appearance after it; of each removal:
    // its first disappearance after it.
    let lat = |list: &[(String, Instant)], ev: &HashMap<String, Vec<Instant>>| {
        let mut v = Vec::new();
        let mut missing = 0;
        let mut last = first;
        for (sub, t) in list {
            match after(ev, sub, *t) {
                Some(a) => {
                    v.push(a.duration_since(*t).as_secs_f64());
                    last = last.max(a);
                }
                None => missing += 1,
            }
        }
        (v, missing, last)
    };
    // A bulk node the churn removed may never have shown up (the agent may take its
    // add and its removal together): only the others must appear.
    let churned: HashSet<&str> = removed.iter().map(|(sub, _)| sub.as_str()).collect();
    let kept: Vec<(String, Instant)> = added[..nodes]
        .iter()
        .filter(|(sub, t)| !churned.contains(sub.as_str()) || after(&s.appeared, sub, *t).is_some())
        .cloned()
        .collect();
    let (bulk_lat, missing, last_seen) = lat(&kept, &s.appeared);
    let (churn_lat, churn_missing, _) = lat(&added[nodes..], &s.appeared);
    let (del_lat, del_missing, _) = lat(&removed, &s.gone);
    let total = last_seen.duration_since(first);
    let flows = s.flows;
    let per_node = (flows.saturating_sub(base_flows)) as f64 / nodes as f64;
    let (agent_rss, weftd_rss) = (rss_kib(node.agent.pid(&lab)), rss_kib(node.weftd.pid(&lab)));
    let resolution = if s.dumps > 0 {
        o.poll + s.dump_time / s.dumps as u32
    } else {
        o.poll
    };
    println!(
        "program all {} peers: {:.2} s from the first key written ({} never appeared)",
        nodes,
        total.as_secs_f64(),
        missing
    );
    let bulk_json = summary("node written -> flows (bulk)", &bulk_lat);
    let churn_json = summary("node written -> flows (churn)", &churn_lat);
    let del_json = summary("node deleted -> flows gone", &del_lat);
    if churn_missing + del_missing > 0 {
        println!(
            "churn: {churn_missing} new nodes never appeared, {del_missing} removed ones never went"
        );
    }
    println!(
        "resolution: poll {:?} + dump {:?} (mean of {} dumps)",
        o.poll,
        resolution - o.poll,
        s.dumps
    );
    println!("flows: {flows} ({base_flows} before the load; {per_node:.2} per simulated node)");
    println!(
        "RSS: agent {:?} KiB (idle {:?}), weftd {:?} KiB (idle {:?})",
        agent_rss, agent_rss0, weftd_rss, weftd_rss0
    );
    let p99 = percentile(&bulk_lat, 99.0);
    let all_seen = missing + churn_missing + del_missing == 0;
    let churn_ok = churn_lat.is_empty() || percentile(&churn_lat, 99.0) < 1.0;
    let verdict = if all_seen && p99 < 1.0 && churn_ok {
        "met"
    } else {
        "NOT met"
    };
    println!("target p99 < 1 s at {nodes} nodes: {verdict}");
    std::fs::create_dir_all(&o.out).map_err(|e| format!("{}: {e}", o.out.display()))?;
    let json = serde_json::json!({
        "nodes": nodes,
        "churn": churn,
        "etcd_members": o.members,
        "program_all_s": total.as_secs_f64(),
        "never_appeared": missing,
        "write_to_flows": bulk_json,
        "churn_write_to_flows": churn_json,
        "delete_to_gone": del_json,
        "churn_never_appeared": churn_missing,
        "churn_never_went": del_missing,
        "resolution_ms": resolution.as_secs_f64() * 1000.0,
        "flows": flows,
        "flows_before": base_flows,
        "flows_per_node": per_node,
        "agent_rss_kib": agent_rss,
        "agent_rss_idle_kib": agent_rss0,
        "weftd_rss_kib": weftd_rss,
        "weftd_rss_idle_kib": weftd_rss0,
        "target_met": verdict == "met",
    });
    let path = o.out.join("results.json");
    std::fs::write(&path, serde_json::to_string_pretty(&json).unwrap())
        .map_err(|e| format!("{}: {e}", path.display()))?;
    println!("results: {}", path.display());
    if std::env::var_os("AGENT_SCALE_KEEP_LOGS").is_some() {
        println!("{}", node.logs(&lab));
    }
    drop(etcd);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_as_etcd_reads_it() {
        assert_eq!(b64(b""), "");
        assert_eq!(b64(b"f"), "Zg==");
        assert_eq!(b64(b"fo"), "Zm8=");
        assert_eq!(b64(b"foo"), "Zm9v");
        assert_eq!(b64(b"/weft/v1/nodes/sim-1"), "L3dlZnQvdjEvbm9kZXMvc2ltLTE=");
    }

    #[test]
    fn simulated_nodes_are_in_the_benchmarking_ranges() {
        let (name, ip, subnet) = sim(0, 0);
        assert_eq!(
            (name.as_str(), ip, subnet.as_str()),
            ("sim-0", Ipv4Addr::new(198, 18, 1, 0), "198.19.0.0/27")
        );
        let (_, ip, subnet) = sim(1799, 2047);
        assert_eq!(ip, Ipv4Addr::new(198, 18, 8, 7));
        assert_eq!(subnet, "198.19.255.224/27");
    }

    #[test]
    fn percentiles() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 51.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert!(percentile(&[], 50.0).is_nan());
    }
}
