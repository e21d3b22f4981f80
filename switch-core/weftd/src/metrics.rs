//! Prometheus metrics at `http://ADDR/metrics`.
//!
//! The switch fills a plain-data [`StatsSnapshot`] when asked (a callback); a
//! `prometheus-client` [`Collector`] renders it per scrape in the OpenMetrics text
//! format (`prometheus_client::encoding::text`), which Prometheus reads natively.
//! Counters are not kept twice: nothing is registered but the collector, and every
//! value comes from the snapshot of that scrape. Scraping is not the packet path:
//! rendering allocates freely, and the callback is called once per request from the
//! server's own thread.
//!
//! The HTTP server is `hyper` (HTTP/1.1 only) on a current-thread `tokio` runtime that
//! lives in the metrics thread alone; nothing of tokio reaches the datapath. Resources
//! are bounded: at most [`MAX_CLIENTS`] connections are served at once (more are
//! closed at once), each has a deadline ([`CLIENT_DEADLINE`]) for the whole exchange,
//! a request head is at most [`MAX_REQUEST`] bytes (431 past that), and every
//! response closes its connection. A client that connects and sends nothing, or
//! trickles bytes, holds one slot for at most that deadline and never delays another.
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
//! | `weft_underlay_tunnel_gso` (gauge: 1 over the tunnel-GSO underlay TAP, 0 sockets only) | |
//!
//! (A counter's family is named without `_total` in its `# HELP`/`# TYPE` lines and
//! its samples with it, as OpenMetrics has it.)

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::header::{ALLOW, CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::registry::Registry;
use tokio::sync::{Semaphore, oneshot};

/// The longest request head (request line and headers) the server reads.
pub const MAX_REQUEST: usize = 8 * 1024;
/// How long one client may take, from accept to the last byte of the response.
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(2);
/// Connections served at once; more are closed as they come.
pub const MAX_CLIENTS: usize = 16;
/// The content type of the OpenMetrics text format.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub use weft_datapath::stats::{PortStats, StatsSnapshot, TableStats};

type Fmt = Result<(), std::fmt::Error>;

/// One family: its descriptor, then one sample per label set.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, M)>,
    kind: MetricType,
) -> Fmt {
    let mut m = enc.encode_descriptor(name, help, None, kind)?;
    for (labels, metric) in samples {
        metric.encode(m.encode_family(&labels)?)?;
    }
    Ok(())
}

fn counters<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Fmt {
    family(
        enc,
        name,
        help,
        samples.into_iter().map(|(l, v)| (l, ConstCounter::new(v))),
        MetricType::Counter,
    )
}

fn gauges<L: EncodeLabelSet>(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    samples: impl IntoIterator<Item = (L, u64)>,
) -> Fmt {
    family(
        enc,
        name,
        help,
        samples.into_iter().map(|(l, v)| (l, ConstGauge::new(v))),
        MetricType::Gauge,
    )
}

/// A family of one sample without labels.
fn single(
    enc: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> Fmt {
    metric.encode(enc.encode_descriptor(name, help, None, metric.metric_type())?)
}

fn counter(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Fmt {
    single(enc, name, help, ConstCounter::new(v))
}

fn gauge(enc: &mut DescriptorEncoder<'_>, name: &str, help: &str, v: u64) -> Fmt {
    single(enc, name, help, ConstGauge::new(v))
}

/// Encodes every family of a snapshot. Names, labels and help texts are those of the
/// table in the module docs (counters without `_total`: the encoder adds it).
fn encode_snapshot(s: &StatsSnapshot, enc: &mut DescriptorEncoder<'_>) -> Fmt {
    let port_labels: Vec<[(&str, String); 3]> = s
        .ports
        .iter()
        .map(|p| {
            [
                ("port", p.name.clone()),
                ("ofport", p.ofport.to_string()),
                ("type", p.port_type.to_string()),
            ]
        })
        .collect();
    let per_port = |get: fn(&PortStats) -> u64| {
        port_labels
            .iter()
            .zip(&s.ports)
            .map(move |(l, p)| (l.clone(), get(p)))
    };
    gauges(
        enc,
        "weft_port_up",
        "1 if the port is up, 0 if its device or sockets could not be opened (retried).",
        per_port(|p| u64::from(p.up)),
    )?;
    type PortField = fn(&PortStats) -> u64;
    let port_counters: [(&str, &str, PortField); 4] = [
        (
            "weft_port_rx_packets",
            "Frames received from the port.",
            |p| p.rx_packets,
        ),
        ("weft_port_tx_packets", "Frames sent to the port.", |p| {
            p.tx_packets
        }),
        ("weft_port_rx_bytes", "Bytes received from the port.", |p| {
            p.rx_bytes
        }),
        ("weft_port_tx_bytes", "Bytes sent to the port.", |p| {
            p.tx_bytes
        }),
    ];
    for (name, help, get) in port_counters {
        counters(enc, name, help, per_port(get))?;
    }
    counters(
        enc,
        "weft_port_drops",
        "Frames dropped at the port, by reason.",
        s.ports.iter().flat_map(|p| {
            p.drops
                .iter()
                .map(move |(r, n)| ([("port", p.name.as_str()), ("reason", r.as_str())], *n))
        }),
    )?;
    let table = |t: &TableStats| [("table", t.id.to_string())];
    gauges(
        enc,
        "weft_table_flows",
        "Flows installed in the table.",
        s.tables.iter().map(|t| (table(t), t.flows)),
    )?;
    type TableField = fn(&TableStats) -> u64;
    let table_counters: [(&str, &str, TableField); 3] = [
        ("weft_table_lookups", "Lookups in the table.", |t| t.lookups),
        (
            "weft_table_matches",
            "Lookups in the table that matched a flow.",
            |t| t.matches,
        ),
        (
            "weft_table_misses",
            "Lookups in the table that matched no flow (dropped).",
            |t| t.misses,
        ),
    ];
    for (name, help, get) in table_counters {
        counters(enc, name, help, s.tables.iter().map(|t| (table(t), get(t))))?;
    }
    counter(
        enc,
        "weft_cache_hits",
        "Exact-match cache hits.",
        s.cache_hits,
    )?;
    counter(
        enc,
        "weft_cache_misses",
        "Exact-match cache misses.",
        s.cache_misses,
    )?;
    counters(
        enc,
        "weft_drops",
        "Frames dropped by the datapath, by reason.",
        s.drops.iter().map(|(r, n)| ([("reason", r.as_str())], *n)),
    )?;
    counters(
        enc,
        "weft_flow_drops",
        "Frames dropped by drop flows (explicit_drop), by the flows' table, priority and cookie.",
        s.flow_drops.iter().map(|d| {
            (
                [
                    ("table", d.table.to_string()),
                    ("priority", d.priority.to_string()),
                    ("cookie", format!("{:#x}", d.cookie)),
                ],
                d.packets,
            )
        }),
    )?;
    gauge(
        enc,
        "weft_pipeline_version",
        "The published pipeline version (grows by one per bundle).",
        s.pipeline_version,
    )?;
    gauge(
        enc,
        "weft_mac_entries",
        "Live entries of the MAC table of normal.",
        s.mac_entries,
    )?;
    gauge(
        enc,
        "weft_mac_capacity",
        "Entries the MAC table can hold.",
        s.mac_capacity,
    )?;
    gauge(
        enc,
        "weft_underlay_tunnel_gso",
        "1 when VXLAN/Geneve go over the tunnel-GSO underlay TAP, 0 with the tunnels' sockets only.",
        u64::from(s.tunnel_gso),
    )?;
    counter(
        enc,
        "weft_mac_evictions",
        "MAC table entries evicted because their set was full (least recently seen first).",
        s.mac_evictions,
    )?;
    counter(
        enc,
        "weft_mac_moves",
        "Hosts the MAC table saw move to another port.",
        s.mac_moves,
    )
}

/// The collector of the switch's counters: takes a [`StatsSnapshot`] from its source at
/// every scrape and encodes it.
pub struct SwitchCollector {
    stats: Box<dyn Fn() -> StatsSnapshot + Send + Sync>,
}

impl std::fmt::Debug for SwitchCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SwitchCollector").finish_non_exhaustive()
    }
}

impl SwitchCollector {
    /// A collector reading `stats` at every scrape.
    pub fn new(stats: impl Fn() -> StatsSnapshot + Send + Sync + 'static) -> SwitchCollector {
        SwitchCollector {
            stats: Box::new(stats),
        }
    }
}

impl Collector for SwitchCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Fmt {
        encode_snapshot(&(self.stats)(), &mut encoder)
    }
}

/// A registry holding only the switch's collector.
pub fn registry(stats: impl Fn() -> StatsSnapshot + Send + Sync + 'static) -> Registry {
    let mut r = Registry::default();
    r.register_collector(Box::new(SwitchCollector::new(stats)));
    r
}

/// Renders a snapshot in the OpenMetrics text format (what `/metrics` serves).
pub fn render(s: &StatsSnapshot) -> String {
    let s = s.clone();
    encode(&registry(move || s.clone())).unwrap_or_default()
}

fn encode(r: &Registry) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(16 * 1024);
    prometheus_client::encoding::text::encode(&mut out, r)?;
    Ok(out)
}

/// The metrics HTTP server. Stops when [`MetricsServer::stop`] is called or it is
/// dropped.
pub struct MetricsServer {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
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
        let listener = std::net::TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        listener.set_nonblocking(true)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .enable_time()
            .build()?;
        let (stop, stopped) = oneshot::channel();
        let registry = Arc::new(registry(stats));
        let thread = std::thread::Builder::new()
            .name("weft-metrics".into())
            .spawn(move || {
                runtime.block_on(async move {
                    match tokio::net::TcpListener::from_std(listener) {
                        Ok(l) => accept_loop(l, registry, stopped).await,
                        Err(e) => tracing::error!("metrics listener: {e}"),
                    }
                });
                // Dropping the runtime ends the connections still open.
            })?;
        Ok(MetricsServer {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    /// The address the server listens on (with the port it picked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the server and waits for its thread.
    pub fn stop(mut self) {
        self.stop_inner();
    }

    fn stop_inner(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    registry: Arc<Registry>,
    mut stopped: oneshot::Receiver<()>,
) {
    let slots = Arc::new(Semaphore::new(MAX_CLIENTS));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.keep_alive(false).max_buf_size(MAX_REQUEST);
    loop {
        let conn = tokio::select! {
            _ = &mut stopped => return,
            conn = listener.accept() => conn,
        };
        let stream = match conn {
            Ok((stream, _)) => stream,
            Err(e) => {
                tracing::warn!("metrics accept: {e}");
                // E.g. out of file descriptors: do not spin.
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!("metrics: {MAX_CLIENTS} clients already, one turned away");
            continue;
        };
        let registry = registry.clone();
        let conn = http.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |req| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(route(&req, &registry)) }
            }),
        );
        tokio::spawn(async move {
            match tokio::time::timeout(CLIENT_DEADLINE, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::debug!("metrics client: {e}"),
                Err(_) => tracing::debug!("metrics client: too slow, cut off"),
            }
            drop(slot);
        });
    }
}

fn plain(status: StatusCode, body: &'static str) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE_HEADER,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn route(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    if req.uri().path() != "/metrics" {
        return plain(
            StatusCode::NOT_FOUND,
            "not found; metrics are at /metrics\n",
        );
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and HEAD\n");
        r.headers_mut()
            .insert(ALLOW, HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    match catch_unwind(AssertUnwindSafe(|| encode(registry))) {
        Ok(Ok(text)) => {
            let mut r = Response::new(Full::new(Bytes::from(text)));
            r.headers_mut()
                .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
            r
        }
        Ok(Err(_)) => plain(
            StatusCode::INTERNAL_SERVER_ERROR,
            "metrics could not be encoded\n",
        ),
        Err(_) => {
            tracing::error!("metrics: the stats callback panicked");
            plain(StatusCode::INTERNAL_SERVER_ERROR, "stats unavailable\n")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::Instant;

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
            tunnel_gso: true,
        }
    }

    /// Parses the OpenMetrics text strictly enough to catch malformed output: sample
    /// name + labels → value; every sample's family has one HELP and one TYPE line
    /// before it (a counter family `x` has samples `x_total`), and `# EOF` ends it.
    fn parse_text(text: &str) -> HashMap<String, u64> {
        let mut typed: HashMap<String, String> = HashMap::new();
        let mut helped = std::collections::HashSet::new();
        let mut out = HashMap::new();
        let body = text
            .strip_suffix("# EOF\n")
            .unwrap_or_else(|| panic!("no # EOF at the end: {text}"));
        for line in body.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(kind == "counter" || kind == "gauge", "{line}");
                assert!(!name.ends_with("_total"), "{line}");
                assert!(helped.contains(name), "TYPE before HELP: {line}");
                assert!(
                    typed.insert(name.to_string(), kind.to_string()).is_none(),
                    "{line}"
                );
                continue;
            }
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').unwrap();
                assert!(help.ends_with('.') && !help.ends_with(".."), "{line}");
                assert!(helped.insert(name.to_string()), "{line}");
                continue;
            }
            assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
            let (series, value) = line.rsplit_once(' ').unwrap();
            let name = series.split('{').next().unwrap();
            assert!(
                name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_'),
                "{name}"
            );
            let family = match name.strip_suffix("_total") {
                Some(f) if typed.get(f).is_some_and(|k| k == "counter") => f,
                _ => name,
            };
            let kind = typed
                .get(family)
                .unwrap_or_else(|| panic!("no TYPE for {name}"));
            assert_eq!(kind == "counter", name.ends_with("_total"), "{line}");
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
        assert_eq!(get("weft_underlay_tunnel_gso"), 1);
        assert_eq!(get("weft_mac_evictions_total"), 3);
        assert_eq!(get("weft_mac_moves_total"), 1);
        // Up and the four counters of two ports, three drops, four table metrics of two
        // tables, two flow drops, and the unlabelled families.
        assert_eq!(m.len(), 5 * 2 + 3 + 4 * 2 + 2 + 2 + 2 + 1 + 5);
        // An empty snapshot is still valid output.
        let empty = parse_text(&render(&StatsSnapshot::default()));
        assert_eq!(empty.len(), 8, "the unlabelled families always appear");
    }

    #[test]
    fn label_values_are_escaped() {
        let mut s = snapshot();
        s.ports[0].name = "x\"y\\z\nw".into();
        let text = render(&s);
        assert!(
            text.contains(r#"weft_port_up{port="x\"y\\z\nw",ofport="1",type="tap"} 1"#),
            "{text}"
        );
    }

    /// The value of header `name` (any case) in a response head.
    fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
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
        assert_eq!(header(&head, "content-type"), Some(CONTENT_TYPE), "{head}");
        let len = body.len().to_string();
        assert_eq!(
            header(&head, "content-length"),
            Some(len.as_str()),
            "{head}"
        );
        assert_eq!(header(&head, "connection"), Some("close"), "{head}");
        let m = parse_text(&body);
        assert_eq!(m["weft_pipeline_version"], 7);
        assert_eq!(
            m[r#"weft_port_rx_packets_total{port="pod1",ofport="1",type="tap"}"#],
            10
        );

        // HEAD: the head of a GET (its length too), no body; a 1.0 request gets a 1.0
        // answer.
        let (head, body) = fetch(addr, "HEAD /metrics?x=1 HTTP/1.0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.0 200 OK\r\n"), "{head}");
        assert_eq!(header(&head, "content-type"), Some(CONTENT_TYPE), "{head}");
        assert_eq!(
            header(&head, "content-length"),
            Some(len.as_str()),
            "{head}"
        );
        assert!(body.is_empty(), "{body}");

        let (head, _) = fetch(addr, "GET / HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 404 "), "{head}");
        let (head, _) = fetch(addr, "POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 405 "), "{head}");
        assert_eq!(header(&head, "allow"), Some("GET, HEAD"), "{head}");
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
        // A client that connects and sends nothing does not delay the next one.
        let _silent = TcpStream::connect(addr).unwrap();
        std::thread::sleep(Duration::from_millis(50));
        let start = Instant::now();
        let (head, _) = fetch(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        let waited = start.elapsed();
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert!(waited < CLIENT_DEADLINE / 2, "{waited:?}");
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
    fn clients_past_the_limit_are_turned_away_until_slots_free_up() {
        let server = MetricsServer::start("127.0.0.1:0".parse().unwrap(), snapshot).unwrap();
        let addr = server.local_addr();
        let start = Instant::now();
        let _silent: Vec<TcpStream> = (0..MAX_CLIENTS)
            .map(|_| TcpStream::connect(addr).unwrap())
            .collect();
        std::thread::sleep(Duration::from_millis(100));
        // One more is closed at once, without an answer.
        let mut extra = TcpStream::connect(addr).unwrap();
        extra
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        let _ = extra.write_all(b"GET /metrics HTTP/1.1\r\n\r\n");
        let mut out = Vec::new();
        let _ = extra.read_to_end(&mut out);
        assert!(out.is_empty(), "{}", String::from_utf8_lossy(&out));
        assert!(start.elapsed() < CLIENT_DEADLINE, "{:?}", start.elapsed());
        // The silent ones are cut off at their deadline; then scrapes work again.
        std::thread::sleep(CLIENT_DEADLINE + Duration::from_millis(300));
        let (head, body) = fetch(addr, "GET /metrics HTTP/1.1\r\n\r\n");
        assert!(head.starts_with("HTTP/1.1 200"), "{head}");
        assert_eq!(parse_text(&body)["weft_pipeline_version"], 7);
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
