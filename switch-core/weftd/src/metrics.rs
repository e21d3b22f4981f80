//! Prometheus metrics at `http://ADDR/metrics`.
//!
//! The switch fills a plain-data [`StatsSnapshot`] when asked (a callback); the server
//! renders it in the Prometheus text exposition format (version 0.0.4) per scrape.
//! Scraping is not the packet path: rendering allocates freely, and the callback is
//! called once per request from the server's own thread.
//!
//! The server is a std `TcpListener` on one thread that handles one connection at a
//! time. Each connection has a deadline ([`CLIENT_DEADLINE`]) for the whole exchange
//! and the request head is bounded ([`MAX_REQUEST`]), so a client that connects and
//! sends nothing, or trickles bytes, holds the server up for at most about two seconds.
//!
//! | metric | labels |
//! | --- | --- |
//! | `weft_port_up` (gauge: 1 up, 0 down, see `weftctl show`) | `port`, `ofport`, `type` |
//! | `weft_port_{rx,tx}_{packets,bytes}_total` | `port`, `ofport`, `type` |
//! | `weft_port_drops_total` | `port`, `reason` |
//! | `weft_table_flows` (gauge), `weft_table_{lookups,matches,misses}_total` | `table` |
//! | `weft_cache_hits_total`, `weft_cache_misses_total` | |
//! | `weft_drops_total` | `reason` |
//! | `weft_flow_drops_total` | `table`, `priority`, `cookie` |
//! | `weft_pipeline_version` (gauge) | |
//! | `weft_mac_entries` (gauge), `weft_mac_capacity` (gauge), `weft_mac_evictions_total`, `weft_mac_moves_total` | |

use std::fmt::Write as _;
use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The longest request head (request line and headers) the server reads.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long one client may take, from accept to the last byte of the response.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// The content type of the text exposition format.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

pub use weft_datapath::stats::{PortStats, StatsSnapshot, TableStats};

/// Renders a snapshot in the Prometheus text exposition format (0.0.4).
pub fn render(s: &StatsSnapshot) -> String {
    let mut out = String::with_capacity(1024 + 512 * s.ports.len() + 256 * s.tables.len());
    let mut family =
        |name: &str, kind: &str, help: &str, samples: &mut dyn Iterator<Item = (String, u64)>| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            for (labels, v) in samples {
                let _ = writeln!(out, "{name}{labels} {v}");
            }
        };
    let port_labels = |p: &PortStats| {
        labels(&[
            ("port", &p.name),
            ("ofport", &p.ofport.to_string()),
            ("type", p.port_type),
        ])
    };
    family(
        "weft_port_up",
        "gauge",
        "1 if the port is up, 0 if its device or sockets could not be opened (retried).",
        &mut s.ports.iter().map(|p| (port_labels(p), u64::from(p.up))),
    );
    type PortField = fn(&PortStats) -> u64;
    let port_counters: [(&str, &str, PortField); 4] = [
        (
            "weft_port_rx_packets_total",
            "Frames received from the port.",
            |p| p.rx_packets,
        ),
        (
            "weft_port_tx_packets_total",
            "Frames sent to the port.",
            |p| p.tx_packets,
        ),
        (
            "weft_port_rx_bytes_total",
            "Bytes received from the port.",
            |p| p.rx_bytes,
        ),
        ("weft_port_tx_bytes_total", "Bytes sent to the port.", |p| {
            p.tx_bytes
        }),
    ];
    for (name, help, get) in port_counters {
        family(
            name,
            "counter",
            help,
            &mut s.ports.iter().map(|p| (port_labels(p), get(p))),
        );
    }
    family(
        "weft_port_drops_total",
        "counter",
        "Frames dropped at the port, by reason.",
        &mut s.ports.iter().flat_map(|p| {
            p.drops
                .iter()
                .map(move |(r, n)| (labels(&[("port", &p.name), ("reason", r)]), *n))
        }),
    );
    type TableField = fn(&TableStats) -> u64;
    let table_metrics: [(&str, &str, &str, TableField); 4] = [
        (
            "weft_table_flows",
            "gauge",
            "Flows installed in the table.",
            |t| t.flows,
        ),
        (
            "weft_table_lookups_total",
            "counter",
            "Lookups in the table.",
            |t| t.lookups,
        ),
        (
            "weft_table_matches_total",
            "counter",
            "Lookups in the table that matched a flow.",
            |t| t.matches,
        ),
        (
            "weft_table_misses_total",
            "counter",
            "Lookups in the table that matched no flow (dropped).",
            |t| t.misses,
        ),
    ];
    for (name, kind, help, get) in table_metrics {
        family(
            name,
            kind,
            help,
            &mut s
                .tables
                .iter()
                .map(|t| (labels(&[("table", &t.id.to_string())]), get(t))),
        );
    }
    family(
        "weft_cache_hits_total",
        "counter",
        "Exact-match cache hits.",
        &mut std::iter::once((String::new(), s.cache_hits)),
    );
    family(
        "weft_cache_misses_total",
        "counter",
        "Exact-match cache misses.",
        &mut std::iter::once((String::new(), s.cache_misses)),
    );
    family(
        "weft_drops_total",
        "counter",
        "Frames dropped by the datapath, by reason.",
        &mut s.drops.iter().map(|(r, n)| (labels(&[("reason", r)]), *n)),
    );
    family(
        "weft_flow_drops_total",
        "counter",
        "Frames dropped by drop flows (explicit_drop), by the flows' table, priority and cookie.",
        &mut s.flow_drops.iter().map(|d| {
            (
                labels(&[
                    ("table", &d.table.to_string()),
                    ("priority", &d.priority.to_string()),
                    ("cookie", &format!("{:#x}", d.cookie)),
                ]),
                d.packets,
            )
        }),
    );
    family(
        "weft_pipeline_version",
        "gauge",
        "The published pipeline version (grows by one per bundle).",
        &mut std::iter::once((String::new(), s.pipeline_version)),
    );
    family(
        "weft_mac_entries",
        "gauge",
        "Live entries of the MAC table of normal.",
        &mut std::iter::once((String::new(), s.mac_entries)),
    );
    family(
        "weft_mac_capacity",
        "gauge",
        "Entries the MAC table can hold.",
        &mut std::iter::once((String::new(), s.mac_capacity)),
    );
    family(
        "weft_mac_evictions_total",
        "counter",
        "MAC table entries evicted because their set was full (least recently seen first).",
        &mut std::iter::once((String::new(), s.mac_evictions)),
    );
    family(
        "weft_mac_moves_total",
        "counter",
        "Hosts the MAC table saw move to another port.",
        &mut std::iter::once((String::new(), s.mac_moves)),
    );
    out
}

/// `{a="x",b="y"}` with label values escaped as the text format requires.
fn labels(pairs: &[(&str, &str)]) -> String {
    let mut s = String::from("{");
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            s.push(',');
        }
        s.push_str(k);
        s.push_str("=\"");
        for c in v.chars() {
            match c {
                '\\' => s.push_str("\\\\"),
                '"' => s.push_str("\\\""),
                '\n' => s.push_str("\\n"),
                c => s.push(c),
            }
        }
        s.push('"');
    }
    s.push('}');
    s
}

/// The metrics HTTP server. Stops when [`MetricsServer::stop`] is called or it is
/// dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for MetricsServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetricsServer")
            .field("addr", &self.addr)
            .finish()
    }
}

impl MetricsServer {
    /// Binds `addr` (port 0 picks a free port) and serves `/metrics` from `stats` on a
    /// thread of its own.
    pub fn start<F>(addr: SocketAddr, stats: F) -> io::Result<MetricsServer>
    where
        F: Fn() -> StatsSnapshot + Send + Sync + 'static,
    {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::Builder::new()
            .name("weft-metrics".into())
            .spawn(move || {
                for conn in listener.incoming() {
                    if flag.load(Ordering::Acquire) {
                        break;
                    }
                    match conn {
                        Ok(stream) => {
                            if let Err(e) = serve(stream, &stats) {
                                tracing::debug!("metrics client: {e}");
                            }
                        }
                        Err(e) => {
                            tracing::warn!("metrics accept: {e}");
                            // E.g. out of file descriptors: do not spin.
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            })?;
        Ok(MetricsServer {
            addr,
            stop,
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits for its thread (at most one client deadline).
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        // Wake the blocking accept with a connection of our own.
        let mut wake = self.addr;
        if wake.ip().is_unspecified() {
            wake.set_ip(match wake {
                SocketAddr::V4(_) => std::net::Ipv4Addr::LOCALHOST.into(),
                SocketAddr::V6(_) => std::net::Ipv6Addr::LOCALHOST.into(),
            });
        }
        if TcpStream::connect_timeout(&wake, Duration::from_secs(1)).is_ok() {
            let _ = thread.join();
        }
        // If the wake-up connection failed the thread is left to die with the process.
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// Answers one request on `stream`, within [`CLIENT_DEADLINE`].
fn serve<F: Fn() -> StatsSnapshot>(mut stream: TcpStream, stats: &F) -> io::Result<()> {
    let deadline = Instant::now() + CLIENT_DEADLINE;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| io::Error::new(io::ErrorKind::TimedOut, "client too slow"))
    };
    let mut buf = vec![0u8; MAX_REQUEST];
    let mut len = 0;
    let head_end = loop {
        if let Some(i) = find_head_end(&buf[..len]) {
            break Some(i);
        }
        if len == buf.len() {
            break None;
        }
        stream.set_read_timeout(Some(remaining()?))?;
        let n = match stream.read(&mut buf[len..]) {
            Ok(0) => return Ok(()), // closed before a full request
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        len += n;
    };
    let response = match head_end {
        None => Response::plain(
            431,
            "Request Header Fields Too Large",
            "request too large\n",
        ),
        Some(end) => route(&buf[..end], stats),
    };
    stream.set_write_timeout(Some(remaining()?))?;
    let mut head = format!(
        "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\nConnection: close\r\n",
        response.status,
        response.reason,
        response.content_type,
        response.body.len()
    );
    if response.status == 405 {
        head.push_str("Allow: GET, HEAD\r\n");
    }
    head.push_str("\r\n");
    let mut out = head.into_bytes();
    if !response.head_only {
        out.extend_from_slice(response.body.as_bytes());
    }
    // The write timeout bounds each write call; loop under the deadline.
    let mut sent = 0;
    while sent < out.len() {
        stream.set_write_timeout(Some(remaining()?))?;
        match stream.write(&out[sent..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => sent += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    // Lingering close: read what the client still sends (briefly), so that closing
    // with unread input does not reset the connection before it has read the answer.
    let _ = stream.shutdown(Shutdown::Write);
    let mut drained = 0;
    while drained < 64 * 1024 {
        let Ok(left) = remaining() else { break };
        stream.set_read_timeout(Some(left.min(Duration::from_millis(200))))?;
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => drained += n,
        }
    }
    Ok(())
}

/// Where the request head ends (`\r\n\r\n`, or `\n\n` from a sloppy client).
fn find_head_end(b: &[u8]) -> Option<usize> {
    b.windows(4)
        .position(|w| w == b"\r\n\r\n")
        .or_else(|| b.windows(2).position(|w| w == b"\n\n"))
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    body: String,
    head_only: bool,
}

impl Response {
    fn plain(status: u16, reason: &'static str, body: &str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            body: body.to_string(),
            head_only: false,
        }
    }
}

fn route<F: Fn() -> StatsSnapshot>(head: &[u8], stats: &F) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::plain(400, "Bad Request", "bad request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Response::plain(400, "Bad Request", "expected HTTP/1.x\n");
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" {
        return Response::plain(404, "Not Found", "not found; metrics are at /metrics\n");
    }
    let head_only = match method {
        "GET" => false,
        "HEAD" => true,
        _ => return Response::plain(405, "Method Not Allowed", "only GET and HEAD\n"),
    };
    match catch_unwind(AssertUnwindSafe(stats)) {
        Ok(snapshot) => Response {
            status: 200,
            reason: "OK",
            content_type: CONTENT_TYPE,
            body: render(&snapshot),
            head_only,
        },
        Err(_) => {
            tracing::error!("metrics: the stats callback panicked");
            Response::plain(500, "Internal Server Error", "stats unavailable\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn snapshot() -> StatsSnapshot {
        StatsSnapshot {
            ports: vec![
                PortStats {
                    name: "pod1".into(),
                    ofport: 1,
                    port_type: "tap",
                    up: true,
                    rx_packets: 10,
                    rx_bytes: 1000,
                    tx_packets: 20,
                    tx_bytes: 2000,
                    drops: vec![("tx_queue_full".into(), 3)],
                },
                PortStats {
                    name: "vx0".into(),
                    ofport: 2,
                    port_type: "vxlan",
                    up: false,
                    rx_packets: 5,
                    rx_bytes: 500,
                    tx_packets: 6,
                    tx_bytes: 600,
                    drops: vec![("bad_vni".into(), 1), ("not_allowed_remote".into(), 2)],
                },
            ],
            tables: vec![
                TableStats {
                    id: 0,
                    flows: 4,
                    lookups: 100,
                    matches: 90,
                    misses: 10,
                },
                TableStats {
                    id: 20,
                    flows: 1,
                    lookups: 90,
                    matches: 90,
                    misses: 0,
                },
            ],
            cache_hits: 70,
            cache_misses: 30,
            drops: vec![("table_miss".into(), 10), ("ttl_expired".into(), 4)],
            flow_drops: vec![
                weft_pipeline::FlowDropCount {
                    table: 0,
                    priority: 100,
                    cookie: 0x64,
                    packets: 12,
                },
                weft_pipeline::FlowDropCount {
                    table: 20,
                    priority: 0,
                    cookie: 0x64,
                    packets: 3,
                },
            ],
            pipeline_version: 7,
            mac_entries: 5,
            mac_capacity: 8192,
            mac_evictions: 3,
            mac_moves: 1,
        }
    }

    /// Parses the text format strictly enough to catch malformed output:
    /// sample name + labels → value, and every sample's family has a TYPE line.
    fn parse_text(text: &str) -> HashMap<String, u64> {
        let mut typed = HashMap::new();
        let mut out = HashMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert!(
                    typed.insert(name.to_string(), kind.to_string()).is_none(),
                    "{line}"
                );
                continue;
            }
            if line.starts_with("# HELP ") {
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{name}"
            );
            assert!(typed.contains_key(name), "no TYPE for {name}");
            if typed[name] == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
            assert!(
                out.insert(series.to_string(), value.parse().unwrap())
                    .is_none(),
                "{line}"
            );
        }
        out
    }

    #[test]
    fn renders_every_metric() {
        let m = parse_text(&render(&snapshot()));
        let get = |k: &str| {
            *m.get(k)
                .unwrap_or_else(|| panic!("{k} missing from {m:#?}"))
        };
        assert_eq!(
            get(r#"weft_port_rx_packets_total{port="pod1",ofport="1",type="tap"}"#),
            10
        );
        assert_eq!(
            get(r#"weft_port_tx_packets_total{port="pod1",ofport="1",type="tap"}"#),
            20
        );
        assert_eq!(
            get(r#"weft_port_rx_bytes_total{port="vx0",ofport="2",type="vxlan"}"#),
            500
        );
        assert_eq!(
            get(r#"weft_port_tx_bytes_total{port="vx0",ofport="2",type="vxlan"}"#),
            600
        );
        assert_eq!(
            get(r#"weft_port_drops_total{port="pod1",reason="tx_queue_full"}"#),
            3
        );
        assert_eq!(
            get(r#"weft_port_drops_total{port="vx0",reason="not_allowed_remote"}"#),
            2
        );
        assert_eq!(get(r#"weft_port_up{port="pod1",ofport="1",type="tap"}"#), 1);
        assert_eq!(
            get(r#"weft_port_up{port="vx0",ofport="2",type="vxlan"}"#),
            0
        );
        assert_eq!(get(r#"weft_table_flows{table="0"}"#), 4);
        assert_eq!(get(r#"weft_table_lookups_total{table="20"}"#), 90);
        assert_eq!(get(r#"weft_table_matches_total{table="0"}"#), 90);
        assert_eq!(get(r#"weft_table_misses_total{table="0"}"#), 10);
        assert_eq!(get("weft_cache_hits_total"), 70);
        assert_eq!(get("weft_cache_misses_total"), 30);
        assert_eq!(get(r#"weft_drops_total{reason="ttl_expired"}"#), 4);
        assert_eq!(
            get(r#"weft_flow_drops_total{table="0",priority="100",cookie="0x64"}"#),
            12
        );
        assert_eq!(
            get(r#"weft_flow_drops_total{table="20",priority="0",cookie="0x64"}"#),
            3
        );
        assert_eq!(get("weft_pipeline_version"), 7);
        assert_eq!(get("weft_mac_entries"), 5);
        assert_eq!(get("weft_mac_capacity"), 8192);
        assert_eq!(get("weft_mac_evictions_total"), 3);
        assert_eq!(get("weft_mac_moves_total"), 1);
        // Up and the four counters of two ports, three drops, four table metrics of two
        // tables, two flow drops, and the unlabelled families.
        assert_eq!(m.len(), 5 * 2 + 3 + 4 * 2 + 2 + 2 + 2 + 1 + 4);
        // An empty snapshot is still valid output.
        let empty = parse_text(&render(&StatsSnapshot::default()));
        assert_eq!(empty.len(), 7, "the unlabelled families always appear");
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(labels(&[("a", "x\"y\\z\nw")]), r#"{a="x\"y\\z\nw"}"#);
    }

    fn fetch(addr: SocketAddr, request: &str) -> (String, String) {
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        s.write_all(request.as_bytes()).unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).unwrap();
        let (head, body) = out.split_once("\r\n\r\n").unwrap();
        (head.to_string(), body.to_string())
    }

    #[test]
    fn serves_metrics_404_405() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), snapshot).unwrap();
        let addr = server.local_addr();
        assert_ne!(addr.port(), 0);

        let (head, body) = fetch(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(
            head.contains("Content-Type: text/plain; version=0.0.4"),
            "{head}"
        );
        assert!(
            head.contains(&format!("Content-Length: {}", body.len())),
            "{head}"
        );
        let m = parse_text(&body);
        assert_eq!(m["weft_pipeline_version"], 7);
        assert_eq!(
            m[r#"weft_port_rx_packets_total{port="pod1",ofport="1",type="tap"}"#],
            10
        );

        let (head, body) = fetch(addr, "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(body.is_empty());

        let (head, _) = fetch(addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        let (head, _) = fetch(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        assert!(head.contains("Allow: GET, HEAD"), "{head}");
        let (head, _) = fetch(addr, "garbage\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 400 "), "{head}");
        let huge = format!(
            "GET /metrics HTTP/1.1\r\nX: {}\r\n\r\n",
            "a".repeat(MAX_REQUEST)
        );
        let mut s = TcpStream::connect(addr).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(huge.as_bytes());
        let mut out = Vec::new();
        let _ = s.read_to_end(&mut out);
        assert!(
            out.starts_with(b"HTTP/1.1 431 "),
            "{}",
            String::from_utf8_lossy(&out)
        );
        server.stop();
    }

    #[test]
    fn a_silent_client_does_not_block_the_next() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), snapshot).unwrap();
        let addr = server.local_addr();
        // A client that connects and sends nothing holds the server for one deadline.
        let _silent = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let (head, _) = fetch(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        let waited = start.elapsed();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(
            waited < CLIENT_DEADLINE + Duration::from_millis(1000),
            "{waited:?}"
        );
        // A trickling client is cut off at the deadline too.
        let mut trickle = TcpStream::connect(addr).unwrap();
        let start = Instant::now();
        let mut closed = false;
        while start.elapsed() < Duration::from_secs(6) {
            if trickle.write_all(b"G").is_err() {
                closed = true;
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(closed, "a trickling client was never cut off");
        assert!(start.elapsed() < CLIENT_DEADLINE + Duration::from_secs(2));
        server.stop();
    }

    #[test]
    fn a_panicking_callback_is_a_500() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), || -> StatsSnapshot {
            panic!("boom")
        })
        .unwrap();
        let (head, _) = fetch(server.local_addr(), "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
        let (head, _) = fetch(server.local_addr(), "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 500 "), "{head}");
        drop(server);
    }
}
