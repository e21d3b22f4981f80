//! The control socket against a real `Switch`, without privileges: tunnel ports on
//! 127.0.0.1 (no TAP devices), a socket in a temporary directory, driven with the
//! client library and with raw JSON lines.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::UdpSocket;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use weft_datapath::{Switch, SwitchOptions};
use weft_flow::port::PortSpec;
use weft_flow::{FlowFilter, parse_bundle_file, parse_flows_file};
use weft_proto::FlowStats;
use weft_proto::client::{Client, ClientError};
use weftd::control_server::{ControlError, ControlOptions, ControlServer};

struct Fixture {
    _dir: tempfile::TempDir,
    path: PathBuf,
    switch: Arc<Switch>,
    server: Option<ControlServer>,
    /// The UDP port of the VXLAN port `vx0` (on 127.0.0.1).
    vx_port: u16,
}

fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

impl Fixture {
    fn new() -> Fixture {
        Fixture::with(|o| o)
    }

    fn with(f: impl FnOnce(ControlOptions) -> ControlOptions) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        // A directory that does not exist yet: the server creates it.
        let path = dir.path().join("run/weft/weftd.sock");
        let switch = Arc::new(
            Switch::start(
                SwitchOptions {
                    state_store: Some(Arc::new(weftd::StateDir::new(dir.path().join("state")))),
                    ..SwitchOptions::default()
                },
                None,
            )
            .unwrap(),
        );
        let vx_port = free_udp_port();
        switch
            .add_port(
                PortSpec::parse(
                    "vx0",
                    &[
                        "type=vxlan",
                        "local=127.0.0.1",
                        &format!("dst_port={vx_port}"),
                    ],
                )
                .unwrap(),
            )
            .unwrap();
        let server =
            ControlServer::start(f(ControlOptions::new(&path)), Arc::clone(&switch)).unwrap();
        Fixture {
            _dir: dir,
            path,
            switch,
            server: Some(server),
            vx_port,
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.path).unwrap()
    }

    fn raw(&self) -> Raw {
        Raw::connect(&self.path)
    }

    fn flows(&self) -> Vec<FlowStats> {
        self.client().dump_flows(FlowFilter::all()).unwrap().flows
    }

    /// Sends `n` VXLAN packets (VNI 5) carrying an IPv4/UDP frame to `vx0`.
    fn send_vxlan(&self, n: usize) {
        let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut pkt = vec![0x08, 0, 0, 0, 0, 0, 5, 0];
        // Ethernet.
        pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x08, 0x00]);
        // IPv4 198.19.1.2 -> 198.19.2.2, UDP 1000 -> 2000, 4 bytes of payload.
        let mut ip = vec![
            0x45, 0, 0, 32, 0, 1, 0, 0, 64, 17, 0, 0, 198, 19, 1, 2, 198, 19, 2, 2,
        ];
        let sum = ip
            .chunks(2)
            .map(|c| u32::from(u16::from_be_bytes([c[0], c[1]])))
            .sum::<u32>();
        let sum = (sum & 0xffff) + (sum >> 16);
        let sum = !((sum & 0xffff) + (sum >> 16)) as u16;
        ip[10..12].copy_from_slice(&sum.to_be_bytes());
        pkt.extend_from_slice(&ip);
        pkt.extend_from_slice(&[0x03, 0xe8, 0x07, 0xd0, 0, 12, 0, 0, 1, 2, 3, 4]);
        for _ in 0..n {
            sock.send_to(&pkt, ("127.0.0.1", self.vx_port)).unwrap();
        }
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        if let Some(s) = self.server.take() {
            s.stop();
        }
        self.switch.stop();
    }
}

/// A raw connection: JSON lines in, JSON values out.
struct Raw {
    w: UnixStream,
    r: BufReader<UnixStream>,
}

impl Raw {
    fn connect(path: &Path) -> Raw {
        let w = UnixStream::connect(path).unwrap();
        w.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let r = BufReader::new(w.try_clone().unwrap());
        Raw { w, r }
    }

    fn send(&mut self, line: &str) -> serde_json::Value {
        self.w.write_all(line.as_bytes()).unwrap();
        self.w.write_all(b"\n").unwrap();
        self.recv()
    }

    fn recv(&mut self) -> serde_json::Value {
        let mut s = String::new();
        self.r.read_line(&mut s).unwrap();
        serde_json::from_str(&s).unwrap_or_else(|e| panic!("{e}: {s:?}"))
    }

    fn hello(&mut self) {
        let v = self.send(r#"{"id":1,"hello":{"version":1}}"#);
        assert_eq!(v["ok"]["version"], 1, "{v}");
    }
}

fn message(v: &serde_json::Value) -> String {
    v["error"]["message"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn socket_is_created_private_and_replaces_a_stale_file() {
    let fx = Fixture::new();
    let mode = std::fs::metadata(&fx.path).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    // A second server on the same path refuses to steal it.
    let err =
        ControlServer::start(ControlOptions::new(&fx.path), Arc::clone(&fx.switch)).unwrap_err();
    assert!(matches!(err, ControlError::InUse(_)), "{err}");
    // A stale socket file (nobody listening) is replaced.
    let stale = fx.path.with_file_name("stale.sock");
    drop(std::os::unix::net::UnixListener::bind(&stale).unwrap());
    assert!(stale.exists());
    let s = ControlServer::start(ControlOptions::new(&stale), Arc::clone(&fx.switch)).unwrap();
    let c = Client::connect(&stale).unwrap();
    assert_eq!(c.server().name, "weftd");
    s.stop();
    assert!(!stale.exists(), "the socket file is removed at stop");
    // A regular file is never removed.
    let file = fx.path.with_file_name("file");
    std::fs::write(&file, "x").unwrap();
    let err = ControlServer::start(ControlOptions::new(&file), Arc::clone(&fx.switch)).unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
}

#[test]
fn handshake_comes_first_and_versions_must_match() {
    let fx = Fixture::new();
    let mut c = fx.raw();
    let v = c.send(r#"{"id":7,"show":{}}"#);
    assert_eq!(v["id"], 7);
    assert!(message(&v).contains("first request must be hello"), "{v}");
    let v = c.send(r#"{"id":8,"hello":{"version":99}}"#);
    assert!(message(&v).contains("version 99 is not supported"), "{v}");
    let v = c.send(r#"{"id":9,"hello":{"version":1,"client":"test"}}"#);
    assert_eq!(v["id"], 9);
    assert_eq!(v["ok"]["name"], "weftd");
    assert_eq!(v["ok"]["version"], 1);
    let v = c.send(r#"{"id":10,"show":{}}"#);
    assert_eq!(v["ok"]["ports"][0]["name"], "vx0", "{v}");
    assert_eq!(v["ok"]["ports"][0]["ofport"], 1, "{v}");
}

#[test]
fn malformed_requests_get_errors_and_the_connection_stays() {
    let fx = Fixture::new();
    let mut c = fx.raw();
    c.hello();
    for (line, want) in [
        ("not json", "request is not json"),
        ("[]", "not a json object"),
        (r#"{"show":{}}"#, "request has no 'id'"),
        (r#"{"id":3,"explode":{}}"#, "unknown variant `explode`"),
        (
            r#"{"id":3,"show":{"verbose":true}}"#,
            "unknown field `verbose`",
        ),
        (
            r#"{"id":3,"bundle":{"text":"priority=1,tcp,tp_dts=80 actions=drop"}}"#,
            "flow line 1: unknown field 'tp_dts' (did you mean tp_dst?)",
        ),
        (
            r#"{"id":3,"add_port":{"text":"p1 type=vxlan mtu=9"}}"#,
            "bad value '9' for mtu",
        ),
        (
            r#"{"id":3,"capture":{"port":"nope","count":1}}"#,
            "no port named 'nope'",
        ),
        (
            r#"{"id":3,"capture":{"port":"vx0","snaplen":"big"}}"#,
            "invalid type",
        ),
    ] {
        let v = c.send(line);
        assert!(message(&v).contains(want), "{line}: {v}");
    }
    // Still usable.
    let v = c.send(r#"{"id":4,"ports":{}}"#);
    assert_eq!(v["id"], 4);
    assert!(v["ok"]["ports"].is_array(), "{v}");
}

#[test]
fn a_bad_flow_in_a_bundle_changes_nothing_and_names_its_line() {
    let fx = Fixture::new();
    let mut c = fx.client();
    c.bundle(
        parse_bundle_file("priority=10,ip actions=output:vx0\npriority=0 actions=normal\n")
            .unwrap(),
    )
    .unwrap();
    let before = fx.flows();
    let version = fx.switch.pipeline().version();
    // Fails in the switch (unknown port), line 4 of the file.
    let file =
        "priority=20,arp actions=flood\n# a comment\n\npriority=30,ip actions=output:nosuch\n";
    let err = c.bundle(parse_bundle_file(file).unwrap()).unwrap_err();
    let ClientError::Server(e) = err else {
        panic!("{err}")
    };
    assert_eq!(e.message, "flow line 4: unknown port 'nosuch'");
    assert_eq!((e.line, e.index), (Some(4), Some(1)));
    // Fails in the request check (prerequisite), as text: line 2.
    let mut raw = fx.raw();
    raw.hello();
    let v = raw.send(
        r#"{"id":5,"bundle":{"text":"priority=20,arp actions=flood\npriority=30,tp_dst=80 actions=drop\n"}}"#,
    );
    assert_eq!(v["error"]["line"], 2, "{v}");
    assert!(
        message(&v).starts_with("flow line 2: tp_dst requires"),
        "{v}"
    );
    // Nothing changed: same flows, same counters, same version.
    assert_eq!(fx.switch.pipeline().version(), version);
    let after = fx.flows();
    assert_eq!(after.len(), before.len());
    for (a, b) in after.iter().zip(&before) {
        assert_eq!(a.flow, b.flow);
        assert_eq!(a.packets, b.packets);
    }
}

#[test]
fn replace_flows_keeps_unchanged_flows_and_their_counters() {
    let fx = Fixture::new();
    let mut c = fx.client();
    let initial = "priority=100,in_port=vx0,ip actions=drop\n\
                   priority=50,arp actions=flood\n\
                   table=1,priority=5 actions=drop\n";
    c.bundle(parse_bundle_file(initial).unwrap()).unwrap();
    // Traffic on the first flow.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        fx.send_vxlan(5);
        std::thread::sleep(Duration::from_millis(100));
        let f = fx.flows();
        if f.iter().any(|s| s.flow.priority == 100 && s.packets >= 5) {
            break;
        }
        assert!(Instant::now() < deadline, "no packet counted: {f:?}");
    }
    std::thread::sleep(Duration::from_millis(300));
    let before = fx.flows();
    let hot = before
        .iter()
        .find(|s| s.flow.priority == 100)
        .unwrap()
        .clone();

    // Same first flow (written differently: port by name, other order), arp changed,
    // table 1 gone, a new one.
    let wanted = "# the file\n\
                  ip,priority=100,in_port=vx0 actions=drop\n\
                  priority=50,arp actions=normal\n\
                  table=2 actions=drop\n";
    let r = c.replace_flows(parse_flows_file(wanted).unwrap()).unwrap();
    assert_eq!(r.unchanged, 1, "{r:?}");
    assert_eq!(r.deleted, 1, "{r:?}");
    assert_eq!(r.added + r.replaced, 2, "{r:?}");
    let after = fx.flows();
    assert_eq!(after.len(), 3);
    let kept = after.iter().find(|s| s.flow.priority == 100).unwrap();
    assert_eq!(kept.flow, hot.flow);
    assert!(kept.packets >= hot.packets, "{kept:?} vs {hot:?}");
    assert!(kept.duration_ms >= hot.duration_ms, "{kept:?} vs {hot:?}");
    assert!(kept.duration_ms >= 300);
    let arp = after.iter().find(|s| s.flow.priority == 50).unwrap();
    assert_eq!(arp.flow.to_string(), "priority=50,arp actions=normal");
    assert!(arp.duration_ms < hot.duration_ms, "the changed flow is new");
    assert!(after.iter().any(|s| s.flow.table == 2));
    assert!(!after.iter().any(|s| s.flow.table == 1));

    // Replacing with the same file again changes nothing at all.
    let version = fx.switch.pipeline().version();
    let r = c.replace_flows(parse_flows_file(wanted).unwrap()).unwrap();
    assert_eq!((r.unchanged, r.added, r.deleted, r.replaced), (3, 0, 0, 0));
    assert_eq!(fx.switch.pipeline().version(), version);

    // A bad flow: nothing changes, the error names the line.
    let bad = "priority=50,arp actions=normal\n\npriority=7,ip actions=output:nosuch\n";
    let err = c.replace_flows(parse_flows_file(bad).unwrap()).unwrap_err();
    assert_eq!(err.to_string(), "flow line 3: unknown port 'nosuch'");
    assert_eq!(fx.switch.pipeline().version(), version);
    assert_eq!(fx.flows().len(), 3);
}

#[test]
fn a_stalled_client_does_not_block_others_and_is_cut_off() {
    let fx = Fixture::with(|o| ControlOptions {
        line_timeout: Duration::from_secs(2),
        ..o
    });
    let mut slow = fx.raw();
    slow.hello();
    slow.w
        .write_all(br#"{"id":2,"bundle":{"text":"prio"#)
        .unwrap();
    // Meanwhile another client works normally, changes included.
    let t = Instant::now();
    let mut c = fx.client();
    c.bundle(parse_bundle_file("priority=1 actions=drop\n").unwrap())
        .unwrap();
    assert_eq!(c.dump_flows(FlowFilter::all()).unwrap().flows.len(), 1);
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());
    // The stalled one gets an error line and is closed.
    let v = slow.recv();
    assert!(message(&v).contains("not finished within 2 s"), "{v}");
    let mut rest = String::new();
    assert_eq!(slow.r.read_line(&mut rest).unwrap_or(0), 0, "{rest}");
}

#[test]
fn an_endless_line_is_cut_off() {
    let fx = Fixture::new();
    let mut big = fx.raw();
    big.hello();
    let chunk = vec![b'x'; 1 << 20];
    let mut sent = 0usize;
    big.w
        .set_write_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    for _ in 0..20 {
        match big.w.write_all(&chunk) {
            Ok(()) => sent += chunk.len(),
            Err(_) => break,
        }
    }
    // The server read up to the limit, then hung up.
    assert!(sent >= weft_proto::MAX_LINE - (1 << 20), "{sent}");
    assert!(sent < 20 << 20, "the server never hung up");
    let mut all = Vec::new();
    let _ = big.r.read_to_end(&mut all);
    let text = String::from_utf8_lossy(&all);
    assert!(
        text.contains("request longer than 16777216 bytes"),
        "{text}"
    );
    // The server still serves others.
    assert_eq!(fx.client().ports().unwrap().ports.len(), 1);
}

#[test]
fn clients_beyond_the_limit_are_refused() {
    let fx = Fixture::with(|o| ControlOptions {
        max_clients: 2,
        ..o
    });
    let _a = fx.client();
    let _b = fx.client();
    let mut c = Raw::connect(&fx.path);
    let v = c.recv();
    assert!(message(&v).contains("too many clients"), "{v}");
    drop(_a);
    // A slot frees up once the first client's thread notices.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut d) = Client::connect(&fx.path) {
            assert!(d.show().is_ok());
            break;
        }
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn ports_flows_stats_fdb_and_trace_through_the_client() {
    let fx = Fixture::new();
    let mut c = fx.client();
    let udp = free_udp_port();
    let n = c
        .add_port(
            PortSpec::parse(
                "gn0",
                &["type=geneve", "local=127.0.0.1", &format!("dst_port={udp}")],
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(n, 2);
    let err = c
        .add_port(PortSpec::parse("gn0", &["type=geneve", "local=127.0.0.1"]).unwrap())
        .unwrap_err();
    assert_eq!(err.to_string(), "port 'gn0' already exists");
    let ports = c.ports().unwrap().ports;
    assert_eq!(
        ports
            .iter()
            .map(|p| (p.ofport, p.name.as_str()))
            .collect::<Vec<_>>(),
        [(1, "vx0"), (2, "gn0")]
    );
    c.bundle(
        parse_bundle_file(
            "priority=100,in_port=vx0,ip,nw_dst=198.19.2.0/24 actions=goto_table:1\n\
             table=1,priority=10,ip actions=set_field:198.18.0.2->tun_dst,output:gn0\n\
             priority=0 actions=normal\n",
        )
        .unwrap(),
    )
    .unwrap();
    // mod and del through bundles.
    let del =
        weft_flow::parse_flow_mod(weft_flow::FlowModCommand::DeleteStrict, "priority=0").unwrap();
    let r = c.bundle(weft_flow::Bundle::new(vec![del])).unwrap();
    assert_eq!(r.deleted, 1);

    let t = c
        .trace("in_port=vx0,udp,nw_src=198.19.1.2,nw_dst=198.19.2.2,tp_dst=53")
        .unwrap();
    assert_eq!(t.actions, ["output:2"], "{}", t.text);
    assert!(t.text.starts_with("Flow: udp,in_port=vx0,"), "{}", t.text);
    assert!(
        t.text.contains("\n1. table=1,priority=10,ip actions="),
        "{}",
        t.text
    );
    let tables: Vec<u8> = t
        .steps
        .iter()
        .filter_map(|s| match s {
            weft_proto::TraceStep::Table { table, .. } => Some(*table),
            _ => None,
        })
        .collect();
    assert_eq!(tables, [0, 1]);
    let t = c.trace("in_port=gn0,arp").unwrap();
    assert_eq!(t.drop.as_deref(), Some("table_miss"), "{}", t.text);

    fx.send_vxlan(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let s = c.stats().unwrap();
        let vx = s.ports.iter().find(|p| p.name == "vx0").unwrap();
        if vx.rx_packets >= 3 {
            assert!(
                s.tables.iter().any(|t| t.table == 0 && t.lookups >= 3),
                "{s:?}"
            );
            break;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    let fdb = c.fdb().unwrap();
    assert!(fdb.entries.is_empty(), "no normal action ran: {fdb:?}");
    c.del_port("gn0").unwrap();
    assert_eq!(c.ports().unwrap().ports.len(), 1);
    assert_eq!(
        c.del_port("gn0").unwrap_err().to_string(),
        "no port named 'gn0'"
    );
}

/// OVS accepts flows that name a port number no port has, and so does Weft (a port may
/// get it later), but the reply warns about each such use (`weftctl` prints them): a
/// typo in `output:99` or `in_port=99` used to fail silently.
#[test]
fn flows_with_unknown_port_numbers_are_applied_with_warnings() {
    let fx = Fixture::new();
    let mut c = fx.client();
    let r = c
        .bundle(
            parse_bundle_file(
                "priority=5,in_port=1 actions=output:99\n\
                 \n\
                 priority=6,in_port=98 actions=output:vx0\n\
                 priority=7,ip actions=resubmit(97,1),output:99\n\
                 priority=8,in_port=vx0 actions=output:1,resubmit(1,2)\n",
            )
            .unwrap(),
        )
        .unwrap();
    assert_eq!(r.added, 4, "applied all the same");
    assert_eq!(
        r.warnings,
        [
            "flow line 1: output:99: no port has number 99; packets sent to it are dropped (no_such_port) until one does",
            "flow line 3: in_port=98: no port has number 98; the flow matches no packet until one does",
            "flow line 4: resubmit(97,...): no port has number 97; the flow matches no packet until one does",
        ]
    );
    // Modify changes are checked too; known ports give no warning.
    let m = weft_flow::parse_flow_mod(
        weft_flow::FlowModCommand::ModifyStrict,
        "priority=6,in_port=98 actions=output:42",
    )
    .unwrap();
    let r = c.bundle(weft_flow::Bundle::new(vec![m])).unwrap();
    assert_eq!(r.modified, 1);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    assert!(r.warnings[0].starts_with("change 1: output:42: no port has number 42"));
    let ok = c
        .bundle(parse_bundle_file("priority=9,in_port=vx0 actions=output:1\n").unwrap())
        .unwrap();
    assert!(ok.warnings.is_empty(), "{:?}", ok.warnings);
    // replace_flows warns as well, even when nothing changes.
    let flows = parse_flows_file("priority=5,in_port=1 actions=output:99\n").unwrap();
    let r = c.replace_flows(flows.clone()).unwrap();
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    let r = c.replace_flows(flows).unwrap();
    assert_eq!(r.unchanged, 1);
    assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
    // At most MAX_WARNINGS, the last one counting the rest.
    let many: String = (0..40)
        .map(|i| format!("priority={},ip actions=output:{}\n", 100 + i, 1000 + i))
        .collect();
    let r = c.bundle(parse_bundle_file(&many).unwrap()).unwrap();
    assert_eq!(r.warnings.len(), weft_proto::MAX_WARNINGS);
    assert_eq!(
        r.warnings.last().unwrap(),
        "25 more unknown port numbers not listed (at most 16 warnings)"
    );
}

/// A `drop` flow's drops are attributable in the metrics: `weft_flow_drops_total` by
/// the flow's table, priority and cookie (the datapath's `explicit_drop` alone does not
/// say whether the spoof guard or a table's catch-all dropped a packet).
#[test]
fn drop_flows_are_counted_by_table_priority_and_cookie() {
    let fx = Fixture::new();
    let mut c = fx.client();
    c.bundle(
        parse_bundle_file(
            "cookie=0x7,priority=50,udp actions=drop\n\
             cookie=0x8,priority=1 actions=drop\n\
             cookie=0x9,priority=40,udp,tp_dst=2000 actions=output:99\n",
        )
        .unwrap(),
    )
    .unwrap();
    fx.send_vxlan(3);
    let deadline = Instant::now() + Duration::from_secs(10);
    let drops = loop {
        let s = fx.switch.stats();
        // A drop is counted on its flow when the flow matches and on its reason when the
        // worker executes it, a moment later: wait for both.
        let explicit = s
            .drops
            .iter()
            .find(|(r, _)| r == "explicit_drop")
            .map_or(0, |(_, n)| *n);
        if s.flow_drops.iter().map(|d| d.packets).sum::<u64>() >= 3 && explicit >= 3 {
            break s;
        }
        assert!(Instant::now() < deadline, "{s:?}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(
        drops.flow_drops,
        [
            weft_pipeline::FlowDropCount {
                table: 0,
                priority: 1,
                cookie: 8,
                packets: 0
            },
            weft_pipeline::FlowDropCount {
                table: 0,
                priority: 50,
                cookie: 7,
                packets: 3
            },
        ],
        "only drop flows, each with its own count"
    );
    let text = weftd::metrics::render(&drops);
    assert!(
        text.contains("\nweft_flow_drops_total{table=\"0\",priority=\"50\",cookie=\"0x7\"} 3\n"),
        "{text}"
    );
    assert!(
        text.contains("\nweft_drops_total{reason=\"explicit_drop\"} 3\n"),
        "{text}"
    );
}

/// A traced IP packet without `nw_ttl` has a real TTL (64), as the packet it stands for
/// does: routed flows (`dec_ttl`, as l3 clusters have) used to end every such trace in
/// `final: drop (ttl_expired)`, the trace `weft-demo --keep` suggests among them.
#[test]
fn a_traced_ip_packet_has_a_real_ttl_unless_one_is_named() {
    let fx = Fixture::new();
    let mut c = fx.client();
    let udp = free_udp_port();
    let gn = PortSpec::parse(
        "gn0",
        &["type=geneve", "local=127.0.0.1", &format!("dst_port={udp}")],
    )
    .unwrap();
    assert_eq!(c.add_port(gn).unwrap(), 2);
    c.bundle(
        parse_bundle_file(
            "priority=10,ip actions=dec_ttl,output:gn0\n\
             priority=10,ipv6 actions=dec_ttl,output:gn0\n",
        )
        .unwrap(),
    )
    .unwrap();
    for packet in [
        "in_port=vx0,tcp,nw_src=198.19.1.2,nw_dst=198.19.2.2,tp_dst=80",
        "in_port=vx0,tcp6,ipv6_src=2001:2:0:1::2,ipv6_dst=2001:2:0:2::2,tp_dst=80",
    ] {
        let t = c.trace(packet).unwrap();
        assert_eq!(t.drop, None, "{packet}:\n{}", t.text);
        assert_eq!(t.actions, ["output:2"], "{packet}:\n{}", t.text);
        assert!(
            t.text.contains("nw_ttl=64"),
            "the TTL used is shown: {}",
            t.text
        );
    }
    // A TTL that is named is used as it is.
    let t = c.trace("in_port=vx0,ip,nw_ttl=1").unwrap();
    assert_eq!(t.drop.as_deref(), Some("ttl_expired"), "{}", t.text);
    let t = c.trace("in_port=vx0,ip,nw_ttl=2").unwrap();
    assert_eq!(t.actions, ["output:2"], "{}", t.text);
    // Not IP: no TTL is made up.
    let t = c.trace("in_port=vx0,arp").unwrap();
    assert!(!t.text.contains("nw_ttl"), "{}", t.text);
}

#[test]
fn fdb_shows_what_normal_learned() {
    let fx = Fixture::new();
    let mut c = fx.client();
    c.bundle(parse_bundle_file("priority=0 actions=normal\n").unwrap())
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        fx.send_vxlan(1);
        std::thread::sleep(Duration::from_millis(100));
        let fdb = c.fdb().unwrap();
        if let Some(e) = fdb.entries.first() {
            assert_eq!(e.mac.to_string(), "02:00:00:00:00:01");
            assert_eq!((e.port, e.vni), (1, 5));
            assert_eq!(e.port_name.as_deref(), Some("vx0"));
            assert_eq!(e.remote, Some("127.0.0.1".parse().unwrap()));
            let text = weftctl::proto_text::fdb_show(&fdb);
            assert!(
                text.contains("    1         5  02:00:00:00:00:01"),
                "{text}"
            );
            break;
        }
        assert!(Instant::now() < deadline);
    }
}

#[test]
fn capture_streams_the_frames_of_a_port_and_stops_cleanly() {
    let fx = Fixture::new();
    let mut c = fx.client();
    c.bundle(parse_bundle_file("priority=0 actions=drop\n").unwrap())
        .unwrap();
    // A second capture on the same port is refused while the first runs.
    let path = fx.path.clone();
    let sender = std::thread::spawn({
        let vx = fx.vx_port;
        move || {
            let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
            // Keep traffic coming until the capture has what it wants.
            for _ in 0..100 {
                let mut pkt = vec![0x08, 0, 0, 0, 0, 0, 5, 0];
                pkt.extend_from_slice(&[0x02, 0, 0, 0, 0, 2, 0x02, 0, 0, 0, 0, 1, 0x88, 0xb5]);
                pkt.extend_from_slice(&[0xab; 100]);
                let _ = sock.send_to(&pkt, ("127.0.0.1", vx));
                std::thread::sleep(Duration::from_millis(30));
            }
        }
    });
    let capture = std::thread::spawn(move || {
        let client = Client::connect(&path).unwrap();
        let mut frames = Vec::new();
        let done = client
            .capture(
                weft_proto::CaptureArgs {
                    port: "vx0".into(),
                    count: Some(5),
                    snaplen: Some(64),
                    seconds: Some(20),
                },
                |f| {
                    frames.push(f.clone());
                    true
                },
            )
            .unwrap();
        (frames, done)
    });
    std::thread::sleep(Duration::from_millis(60));
    let busy = c.call(weft_proto::Op::Capture(weft_proto::CaptureArgs {
        port: "vx0".into(),
        count: Some(1),
        snaplen: None,
        seconds: Some(1),
    }));
    let (frames, done) = capture.join().unwrap();
    let done = done.expect("a final answer");
    assert_eq!(done.captured, 5);
    assert_eq!(done.snaplen, 64);
    assert_eq!(frames.len(), 5);
    for f in &frames {
        assert_eq!(f.dir, "rx", "received on the tunnel, without its header");
        assert_eq!(f.len, 114, "the inner frame's length");
        let data = weft_proto::from_hex(&f.data).unwrap();
        assert_eq!(data.len(), 64, "cut at the snap length");
        assert_eq!(
            &data[..14],
            &[2, 0, 0, 0, 0, 2, 2, 0, 0, 0, 0, 1, 0x88, 0xb5]
        );
    }
    // The second capture, asked while the first ran (5 frames 30 ms apart), was refused.
    let e = busy.unwrap_err();
    assert!(e.to_string().contains("already running"), "{e}");
    // The capture is over: a new one may start, and an unknown port is an error.
    let e = c
        .call(weft_proto::Op::Capture(weft_proto::CaptureArgs {
            port: "nope".into(),
            count: Some(1),
            snaplen: None,
            seconds: Some(1),
        }))
        .unwrap_err();
    assert!(e.to_string().contains("no port named 'nope'"), "{e}");
    let client = fx.client();
    let done = client
        .capture(
            weft_proto::CaptureArgs {
                port: "vx0".into(),
                count: Some(1),
                snaplen: None,
                seconds: Some(10),
            },
            |_| true,
        )
        .unwrap()
        .unwrap();
    assert_eq!(done.captured, 1);
    sender.join().unwrap();
}

/// Runs `socat` as `uid`/`gid` against the socket, sending a hello; its output.
fn socat_as(path: &Path, uid: u32, gid: u32) -> String {
    use std::os::unix::process::CommandExt;
    let mut child = std::process::Command::new("socat")
        .arg("-t2")
        .arg("-")
        .arg(format!("UNIX-CONNECT:{}", path.display()))
        .uid(uid)
        .gid(gid)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(b"{\"id\":1,\"hello\":{\"version\":1}}\n")
        .unwrap();
    let out = child.wait_with_output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// With a control group the socket is 0660 and group-owned; SO_PEERCRED lets a member
/// in and turns anyone else away even when the file mode would let them connect.
/// Needs root (to chown and to run clients as other users) and socat.
#[test]
fn peer_credentials_are_checked() {
    if !nix::unistd::geteuid().is_root()
        || std::process::Command::new("socat")
            .arg("-V")
            .output()
            .is_err()
    {
        eprintln!("skipped: needs root and socat");
        return;
    }
    let group = nix::unistd::Group::from_name("nogroup")
        .ok()
        .flatten()
        .or_else(|| nix::unistd::Group::from_name("nobody").ok().flatten());
    let Some(group) = group else {
        eprintln!("skipped: no nogroup/nobody group");
        return;
    };
    let gid = group.gid.as_raw();
    let fx = Fixture::with(|o| ControlOptions {
        group: Some(group.name.clone()),
        ..o
    });
    let bad = ControlServer::start(
        ControlOptions {
            group: Some("no-such-group-weft".into()),
            ..ControlOptions::new(fx.path.with_file_name("other.sock"))
        },
        Arc::clone(&fx.switch),
    )
    .unwrap_err();
    assert_eq!(
        bad.to_string(),
        "control group 'no-such-group-weft' does not exist"
    );
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(&fx.path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    assert_eq!(meta.gid(), gid);
    // Let everyone reach the socket file, so only SO_PEERCRED decides.
    let mut dir = fx.path.parent().unwrap();
    loop {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o755)).unwrap();
        if dir == fx._dir.path() {
            break;
        }
        dir = dir.parent().unwrap();
    }
    std::fs::set_permissions(&fx.path, std::fs::Permissions::from_mode(0o666)).unwrap();
    // A member of the group (primary group) is let in.
    let out = socat_as(&fx.path, 65534, gid);
    assert!(out.contains("\"ok\""), "{out}");
    // Someone outside it is refused with one line.
    let out = socat_as(&fx.path, 65533, 65533);
    assert!(out.contains("permission denied"), "{out}");
    assert_eq!(out.lines().count(), 1, "{out}");
}

/// Writes `byte` to `w` every 100 ms, for at most `limit` or until the server hangs up.
fn trickle(mut w: UnixStream, byte: u8, limit: Duration) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let t = Instant::now();
        while t.elapsed() < limit && w.write_all(&[byte]).is_ok() {
            std::thread::sleep(Duration::from_millis(100));
        }
    })
}

/// Reads until the server closes the connection (or `limit`); returns what came.
fn read_to_close(r: &mut BufReader<UnixStream>, limit: Duration) -> (String, Duration) {
    let t = Instant::now();
    r.get_ref().set_read_timeout(Some(limit)).unwrap();
    let mut all = Vec::new();
    let _ = r.read_to_end(&mut all);
    (String::from_utf8_lossy(&all).into_owned(), t.elapsed())
}

#[test]
fn a_line_trickled_byte_by_byte_meets_its_deadline() {
    let fx = Fixture::with(|o| ControlOptions {
        line_timeout: Duration::from_secs(1),
        ..o
    });
    let mut slow = fx.raw();
    slow.hello();
    // One byte every 100 ms: every read returns data, none ever times out.
    let t = trickle(slow.w.try_clone().unwrap(), b'x', Duration::from_secs(8));
    let (text, took) = read_to_close(&mut slow.r, Duration::from_secs(8));
    assert!(
        text.contains("request line not finished within 1 s; closing"),
        "{text}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    t.join().unwrap();
    // Others were served meanwhile and still are.
    assert_eq!(fx.client().ports().unwrap().ports.len(), 1);
}

#[test]
fn a_silent_connection_frees_its_slot_at_the_hello_deadline() {
    // The idle timeout is the default 10 minutes: the hello deadline is what frees the slot.
    let fx = Fixture::with(|o| ControlOptions {
        line_timeout: Duration::from_secs(1),
        max_clients: 1,
        ..o
    });
    let mut silent = fx.raw();
    let (text, took) = read_to_close(&mut silent.r, Duration::from_secs(8));
    assert!(
        text.contains("no hello within 1 s of connecting; closing"),
        "{text}"
    );
    assert!(took < Duration::from_millis(2500), "{took:?}");
    // Requests other than hello do not stretch it either.
    let t = Instant::now();
    let mut chatty = loop {
        let mut c = fx.raw();
        let v = c.send(r#"{"id":1,"show":{}}"#);
        if !message(&v).contains("too many clients") {
            assert!(message(&v).contains("first request must be hello"), "{v}");
            break c;
        }
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "the slot was not freed"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    let t = Instant::now();
    let mut text = String::new();
    while t.elapsed() < Duration::from_secs(8) {
        if chatty.w.write_all(b"{\"id\":2,\"show\":{}}\n").is_err() {
            break;
        }
        let mut line = String::new();
        if chatty.r.read_line(&mut line).unwrap_or(0) == 0 {
            break;
        }
        text.push_str(&line);
        std::thread::sleep(Duration::from_millis(100));
    }
    text.push_str(&read_to_close(&mut chatty.r, Duration::from_secs(1)).0);
    assert!(text.contains("no hello within 1 s"), "{text}");
    assert!(
        t.elapsed() < Duration::from_millis(2500),
        "{:?}",
        t.elapsed()
    );
    // The slot is free again.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if let Ok(mut c) = Client::connect(&fx.path) {
            assert!(c.show().is_ok());
            break;
        }
        assert!(Instant::now() < deadline, "the slot was not freed");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn blank_lines_do_not_keep_an_idle_client() {
    let fx = Fixture::with(|o| ControlOptions {
        idle_timeout: Duration::from_secs(1),
        ..o
    });
    let mut c = fx.raw();
    c.hello();
    let t = trickle(c.w.try_clone().unwrap(), b'\n', Duration::from_secs(8));
    let (text, took) = read_to_close(&mut c.r, Duration::from_secs(8));
    assert_eq!(text, "");
    assert!(took < Duration::from_millis(2500), "{took:?}");
    t.join().unwrap();
}

#[test]
fn a_request_as_long_as_the_limit_with_an_unknown_token_is_cheap() {
    let fx = Fixture::new();
    let mut c = fx.raw();
    c.hello();
    let token = "x".repeat(weft_proto::MAX_LINE - 100);
    let t = Instant::now();
    let v = c.send(&format!(
        r#"{{"id":2,"bundle":{{"text":"{token}=1 actions=drop"}}}}"#
    ));
    let took = t.elapsed();
    let m = message(&v);
    assert!(m.starts_with("flow line 1: unknown field 'xxx"), "{m:.200}");
    assert!(m.ends_with("xxx…'"), "{m:.200}");
    assert!(m.len() < 200, "{} bytes: {m:.200}", m.len());
    // Sending and parsing 16 MiB, no suggestion search over it.
    assert!(took < Duration::from_secs(8), "{took:?}");
    // The same with an unknown action.
    let v = c.send(&format!(
        r#"{{"id":3,"bundle":{{"text":"actions={token}"}}}}"#
    ));
    let m = message(&v);
    assert!(
        m.starts_with("flow line 1: unknown action 'xxx"),
        "{m:.200}"
    );
    assert!(m.len() < 200, "{} bytes: {m:.200}", m.len());
    assert!(t.elapsed() < Duration::from_secs(16), "{:?}", t.elapsed());
    // The connection goes on.
    let v = c.send(r#"{"id":4,"show":{}}"#);
    assert_eq!(v["ok"]["flows"], 0, "{v}");
}

/// `n` distinct flows as a flows file.
fn many_flows(n: usize) -> String {
    (0..n)
        .map(|i| {
            format!(
                "priority={},ip,nw_dst=198.19.{}.{},nw_src=198.18.0.{} actions=drop\n",
                1 + i % 1000,
                (i >> 8) & 255,
                i & 255,
                i >> 16
            )
        })
        .collect()
}

#[test]
fn a_dump_is_streamed_as_the_same_line_and_a_slow_reader_is_dropped() {
    let fx = Fixture::with(|o| ControlOptions {
        write_timeout: Duration::from_secs(1),
        ..o
    });
    let n = 20_000;
    fx.client()
        .bundle(parse_bundle_file(&many_flows(n)).unwrap())
        .unwrap();
    // A reader that keeps up gets every flow, on one line that is exactly what the
    // reply's value prints as (the form of every other reply).
    let mut c = fx.raw();
    c.hello();
    c.w.write_all(b"{\"id\":7,\"dump_flows\":{}}\n").unwrap();
    let mut line = String::new();
    c.r.read_line(&mut line).unwrap();
    let line = line.strip_suffix('\n').unwrap();
    let resp: weft_proto::Response = serde_json::from_str(line).unwrap();
    assert_eq!(resp.id, Some(7));
    assert_eq!(resp.to_line(), line);
    let flows = resp
        .into_result::<weft_proto::DumpFlowsReply>()
        .unwrap()
        .flows;
    assert_eq!(flows.len(), n);
    assert!(
        flows
            .windows(2)
            .all(|w| w[0].flow.priority >= w[1].flow.priority)
    );
    // Filters and errors as before.
    let v = c.send(r#"{"id":8,"dump_flows":{"text":"ip,nw_dst=198.19.3.0/24"}}"#);
    assert_eq!(v["ok"]["flows"].as_array().unwrap().len(), 256, "{v:.200}");
    let v = c.send(r#"{"id":9,"dump_flows":{"text":"table=9"}}"#);
    assert_eq!(v.to_string(), r#"{"id":9,"ok":{"flows":[]}}"#);
    let v = c.send(r#"{"id":10,"dump_flows":{"text":"in_port=nosuch"}}"#);
    assert!(message(&v).contains("nosuch"), "{v}");

    // A reader that takes 64 KiB every half second never leaves one write waiting for
    // a second, but keeps the response waiting longer than that in all: dropped.
    let mut slow = fx.raw();
    slow.hello();
    slow.w.write_all(b"{\"id\":2,\"dump_flows\":{}}\n").unwrap();
    let t = Instant::now();
    let mut got = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    slow.r
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let complete = loop {
        assert!(t.elapsed() < Duration::from_secs(15), "never dropped");
        std::thread::sleep(Duration::from_millis(500));
        match slow.r.read(&mut buf) {
            Ok(0) | Err(_) => break false,
            Ok(k) => {
                got += k;
                if buf[..k].ends_with(b"\n") {
                    break true;
                }
            }
        }
    };
    assert!(!complete, "the slow reader got all {got} bytes");
    assert!(got < line.len(), "{got}");
    assert!(t.elapsed() < Duration::from_secs(6), "{:?}", t.elapsed());
    // Meanwhile, and after, others are served.
    assert_eq!(fx.client().show().unwrap().flows, n);
}

/// The resident memory of a process, in MiB.
fn rss_mib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    kb / 1024
}

#[test]
fn clients_that_do_not_read_their_dumps_cost_little_memory() {
    // weftd as its own process, so that its memory is measured alone.
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("weftd.sock");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_weftd"))
        .arg("--state-dir")
        .arg(dir.path().join("state"))
        .arg("--control")
        .arg(&sock)
        .args(["--workers", "1"])
        .env("RUST_LOG", "warn")
        .env_remove("NOTIFY_SOCKET")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let child = Kill(child);
    let pid = child.0.id();
    let t = Instant::now();
    let mut c = loop {
        if let Ok(c) = Client::connect(&sock) {
            break c;
        }
        assert!(t.elapsed() < Duration::from_secs(10), "weftd did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let n = 30_000;
    c.bundle(parse_bundle_file(&many_flows(n)).unwrap())
        .unwrap();
    // Warm up: one full dump read to the end.
    assert_eq!(c.dump_flows(FlowFilter::all()).unwrap().flows.len(), n);
    let before = rss_mib(pid);
    // Ten clients ask for every flow (about 10 MB of json each) and read one byte.
    let mut idle = Vec::new();
    for _ in 0..10 {
        let mut r = Raw::connect(&sock);
        r.hello();
        r.w.write_all(b"{\"id\":2,\"dump_flows\":{}}\n").unwrap();
        idle.push(r);
    }
    for r in &mut idle {
        let mut one = [0u8; 1];
        r.r.read_exact(&mut one).unwrap();
    }
    std::thread::sleep(Duration::from_millis(300));
    let after = rss_mib(pid);
    assert!(
        after < before + 64,
        "rss {before} MiB before, {after} MiB with 10 dumps waiting"
    );
    // And weftd still answers.
    drop(idle);
    assert_eq!(c.show().unwrap().flows, n);
    drop(child);
}

#[test]
fn a_stalled_bundle_is_discarded_at_its_deadline_while_the_connection_stays() {
    let fx = Fixture::with(|o| ControlOptions {
        bundle_timeout: Duration::from_secs(1),
        ..o
    });
    let mut c = fx.raw();
    c.hello();
    let v = c.send(r#"{"id":2,"bundle_open":{}}"#);
    let b = v["ok"]["bundle"].as_u64().unwrap_or_else(|| panic!("{v}"));
    let v = c.send(&format!(
        r#"{{"id":3,"bundle_add":{{"bundle":{b},"text":"priority=7,ip actions=drop\n"}}}}"#
    ));
    assert_eq!(v["ok"]["changes"], 1, "{v}");
    // A second bundle, opened later, is under its own deadline.
    std::thread::sleep(Duration::from_millis(600));
    let v = c.send(r#"{"id":4,"bundle_open":{}}"#);
    let b2 = v["ok"]["bundle"].as_u64().unwrap_or_else(|| panic!("{v}"));
    // The client stalls past the first bundle's deadline, well within the connection's
    // idle timeout (10 minutes).
    std::thread::sleep(Duration::from_millis(700));
    let v = c.send(&format!(r#"{{"id":5,"bundle_commit":{{"bundle":{b}}}}}"#));
    assert_eq!(
        message(&v),
        format!(
            "bundle {b} was discarded: not committed within 1 s of its bundle_open (bundle_timeout in weftd.toml)"
        ),
        "{v}"
    );
    assert!(fx.flows().is_empty(), "nothing of it was applied");
    // The connection is still served, and the younger bundle is still open.
    let v = c.send(&format!(
        r#"{{"id":6,"bundle_add":{{"bundle":{b2},"text":"priority=8,ip actions=drop\n"}}}}"#
    ));
    assert_eq!(v["ok"]["changes"], 1, "{v}");
    let v = c.send(&format!(r#"{{"id":7,"bundle_commit":{{"bundle":{b2}}}}}"#));
    assert_eq!(v["ok"]["added"], 1, "{v}");
    let flows = fx.flows();
    assert_eq!(flows.len(), 1);
    assert_eq!(flows[0].flow.priority, 8);
    // A bundle that was never opened still gets the plain error.
    let v = c.send(r#"{"id":8,"bundle_commit":{"bundle":99}}"#);
    assert!(message(&v).starts_with("no open bundle 99 "), "{v}");
}

#[test]
fn a_streamed_dump_gives_each_part_the_write_budget() {
    let fx = Fixture::with(|o| ControlOptions {
        write_timeout: Duration::from_secs(1),
        ..o
    });
    let n = 30_000;
    fx.client()
        .bundle(parse_bundle_file(&many_flows(n)).unwrap())
        .unwrap();
    // A reader that takes one part every 150 ms keeps weftd waiting far longer than
    // the budget of one second in all (30 parts of about 200 KiB, more than the
    // socket holds), but never one part that long: it gets the whole dump.
    let mut c = fx.raw();
    c.hello();
    c.w.write_all(b"{\"id\":3,\"dump_flows\":{\"stream\":true}}\n")
        .unwrap();
    let t = Instant::now();
    let mut flows = 0usize;
    loop {
        std::thread::sleep(Duration::from_millis(150));
        let v = c.recv();
        if let Some(part) = v["flows"].as_array() {
            assert!(part.len() <= 1000, "{}", part.len());
            flows += part.len();
            continue;
        }
        assert_eq!(v["ok"]["flows"], n, "after {flows} flows: {v:.300}");
        break;
    }
    assert_eq!(flows, n);
    assert!(t.elapsed() > Duration::from_secs(3), "{:?}", t.elapsed());
    // One that stops reading in the middle is still dropped within the budget.
    let mut stalled = fx.raw();
    stalled.hello();
    stalled
        .w
        .write_all(b"{\"id\":4,\"dump_flows\":{\"stream\":true}}\n")
        .unwrap();
    let _ = stalled.recv();
    std::thread::sleep(Duration::from_secs(3));
    let mut rest = Vec::new();
    stalled
        .r
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let _ = stalled.r.read_to_end(&mut rest);
    let text = String::from_utf8_lossy(&rest);
    assert!(
        !text.contains("\"ok\":{\"flows\":"),
        "the stalled reader got the end of the dump"
    );
    assert_eq!(fx.client().show().unwrap().flows, n);
}

/// Flows of every kind the printer knows (settings, shorthands, masks, IPv6, each
/// action), with port names, for the text dump tests.
const VARIED_FLOWS: &str = "\
cookie=0x2a,table=1,idle_timeout=100,hard_timeout=200,arp actions=normal
cookie=0xffffffffffffffff,table=253,priority=0 actions=drop
table=7,hard_timeout=65535,ipv6,ipv6_dst=2001:2::/48 actions=dec_ttl,flood
priority=65535,tcp,in_port=vx0,tp_dst=80,reg0=0x5/0xff actions=set_field:0x1->reg1,move:NXM_NX_REG0[0..15]->NXM_NX_REG2[0..15],resubmit(,4)
cookie=0x10,idle_timeout=300,dl_src=02:00:00:00:aa:01/ff:ff:ff:ff:ff:00 actions=mod_dl_dst:02:00:00:00:00:fe,in_port
cookie=0x11,table=2,udp,nw_src=198.19.0.0/255.255.0.255,tp_src=53 actions=output:vx0,goto_table:3
cookie=0x12,priority=5,in_port=vx0,ip actions=set_field:0x5/0xf->reg3
";

/// A dump's lines without their clocks (`duration=`, `idle_age=`), which move on
/// between two dumps.
fn no_clocks(text: &str) -> Vec<String> {
    text.lines()
        .map(|l| {
            l.split(", ")
                .filter(|t| !t.starts_with("duration=") && !t.starts_with("idle_age="))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect()
}

/// Asserts that two dumps have the same lines but for their clocks; names the first
/// line that differs.
fn assert_same_dump(got: &str, want: &str, what: &str) {
    let (g, w) = (no_clocks(got), no_clocks(want));
    if let Some(i) = (0..g.len().min(w.len())).find(|&i| g[i] != w[i]) {
        panic!("{what}: line {} differs:\n{}\n{}", i + 1, g[i], w[i]);
    }
    assert_eq!(g.len(), w.len(), "{what}: lines");
}

/// A streamed dump read raw: the parts' texts (each checked to be at most
/// `DUMP_PART_FLOWS` lines) and the final line.
fn raw_text_dump(c: &mut Raw, id: u64, args: &str) -> (Vec<String>, serde_json::Value) {
    c.w.write_all(
        format!("{{\"id\":{id},\"dump_flows\":{{\"stream\":true,\"format\":\"text\"{args}}}}}\n")
            .as_bytes(),
    )
    .unwrap();
    let mut parts = Vec::new();
    loop {
        let v = c.recv();
        assert_eq!(v["id"], id, "{v:.300}");
        if let Some(t) = v["text"].as_str() {
            assert!(
                v.get("ok").is_none() && v.get("flows").is_none(),
                "{v:.300}"
            );
            let lines = t.lines().count();
            assert!(
                (1..=weft_proto::DUMP_PART_FLOWS).contains(&lines),
                "{lines}"
            );
            assert!(t.ends_with('\n'), "{t:.300}");
            parts.push(t.to_string());
            continue;
        }
        return (parts, v);
    }
}

#[test]
fn a_text_dump_is_the_json_dump_as_dump_flows_lines_with_every_filter() {
    let fx = Fixture::new();
    let n = 2_500;
    let mut c = fx.client();
    c.bundle(parse_bundle_file(&format!("{VARIED_FLOWS}{}", many_flows(n))).unwrap())
        .unwrap();
    let total = n + VARIED_FLOWS.lines().count();
    // Counters that are not zero (in_port=vx0 flows), settled before the dumps.
    fx.send_vxlan(5);
    let t = Instant::now();
    while !fx
        .flows()
        .iter()
        .any(|f| f.flow.cookie == 0x12 && f.packets == 5)
    {
        assert!(t.elapsed() < Duration::from_secs(10), "no packet counted");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(200));

    // The text parts, raw: at most DUMP_PART_FLOWS lines each, then the count.
    let mut raw = fx.raw();
    raw.hello();
    let (parts, last) = raw_text_dump(&mut raw, 5, "");
    assert_eq!(
        last.to_string(),
        format!(r#"{{"id":5,"ok":{{"flows":{total}}}}}"#)
    );
    assert_eq!(parts.len(), total.div_ceil(weft_proto::DUMP_PART_FLOWS));
    let text: String = parts.concat();
    assert_eq!(text.lines().count(), total);
    // Every flow's line is the JSON dump's flow printed as weftctl prints it, in the
    // same order.
    let json = fx.flows();
    let printed: String = json.iter().map(|f| weftctl_line(f) + "\n").collect();
    assert_same_dump(&text, &printed, "whole dump");
    assert!(
        text.lines()
            .any(|l| l.starts_with(" cookie=0x12, ") && l.contains(" n_packets=5, n_bytes=")),
        "{:?}",
        text.lines().find(|l| l.starts_with(" cookie=0x12, "))
    );
    // The clocks are there, in their place.
    let arp = text.lines().find(|l| l.contains(" arp ")).unwrap();
    let (head, rest) = arp.split_once("s, table=1, ").unwrap();
    let secs = head.strip_prefix(" cookie=0x2a, duration=").unwrap();
    let (whole, ms) = secs.split_once('.').unwrap();
    assert!(whole.parse::<u64>().unwrap() < 60 && ms.len() == 3, "{arp}");
    assert!(ms.parse::<u64>().is_ok(), "{arp}");
    let rest = rest
        .strip_prefix("n_packets=0, n_bytes=0, idle_timeout=100, hard_timeout=200, idle_age=")
        .unwrap_or_else(|| panic!("{arp}"));
    assert!(rest.ends_with(", arp actions=normal"), "{arp}");

    // Through the client, with each filter the text form of dump-flows has: the
    // same flows as the JSON dump with that filter.
    let filters = [
        "",
        "table=1",
        "table=253",
        "cookie=0x10/0xf0",
        "cookie=0x2a/0xffffffffffffffff",
        "ip,nw_dst=198.19.3.0/24",
        "in_port=vx0",
        "tcp,tp_dst=80",
        "ipv6",
        "arp",
        "udp,tp_src=53",
        "table=9",
    ];
    for f in filters {
        let filter = weft_flow::parse_filter(f).unwrap();
        let mut text = String::new();
        let count = c
            .dump_flows_text_each(filter.clone(), |t| {
                text.push_str(t);
                true
            })
            .unwrap();
        let json = c.dump_flows(filter.clone()).unwrap().flows;
        assert_eq!(count, json.len(), "{f}");
        let printed: String = json.iter().map(|s| weftctl_line(s) + "\n").collect();
        assert_same_dump(&text, &printed, f);
        if f.is_empty() {
            assert_eq!(count, total);
        } else if f == "table=9" {
            assert_eq!(count, 0);
        } else {
            assert!(count > 0 && count < total, "{f}: {count}");
        }
        // The flows of a JSON stream, passed through unparsed, are the same objects
        // as the structured dump's (what `-o json` printed from them before).
        let mut objects = Vec::new();
        let count = c
            .dump_flows_json_each(filter, |o| {
                objects.push(o.to_string());
                true
            })
            .unwrap();
        assert_eq!(count, json.len(), "{f}");
        for (o, s) in objects.iter().zip(&json) {
            let back: FlowStats = serde_json::from_str(o).unwrap();
            assert_eq!(back.flow, s.flow, "{f}");
            let mut old = serde_json::to_value(&back).unwrap();
            let mut got: serde_json::Value = serde_json::from_str(o).unwrap();
            assert_eq!(o, &got.to_string(), "{f}: not compact and sorted");
            for v in [&mut old, &mut got] {
                v["duration_ms"] = 0.into();
                v["idle_age_ms"] = 0.into();
            }
            assert_eq!(got, old, "{f}");
        }
    }

    // Errors come as one error line, in either form; a text dump that is not
    // streamed is refused.
    let (parts, last) = raw_text_dump(&mut raw, 6, r#","text":"in_port=nosuch""#);
    assert!(parts.is_empty());
    assert!(message(&last).contains("nosuch"), "{last}");
    let v = raw.send(r#"{"id":7,"dump_flows":{"format":"text"}}"#);
    assert!(message(&v).contains("needs 'stream':true"), "{v}");
    // The connection goes on.
    let v = raw.send(r#"{"id":8,"show":{}}"#);
    assert_eq!(v["ok"]["flows"], total, "{v}");
}

/// The `dump-flows` line of a flow as weftctl prints JSON dumps.
fn weftctl_line(s: &FlowStats) -> String {
    let mut out = String::new();
    s.write_line(&mut out);
    out
}
