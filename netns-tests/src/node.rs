//! Weft nodes on a lab underlay: `weftd` running in node namespaces, pods beside them.
//!
//! [`Underlay`] builds the physical network: a namespace holding a bridge, and node
//! namespaces each joined to it by a veth `ul0` with address `198.18.0.<i>/24`.
//! [`Weftd`] starts the real daemon in a node namespace (through the [`Lab`], so that
//! it is stopped even when the test fails) with a generated TOML configuration, flows
//! file, state directory and control socket inside the lab directory, and metrics on
//! the node's loopback (`127.0.0.1:9464`: every namespace has its own loopback, so
//! nodes never collide). Metrics are fetched from inside the node namespace with
//! `weft-nettool http-get`, which also does the verified TCP transfers
//! ([`tcp_transfer`]).
//!
//! The binaries are looked up next to the test executable (`target/<profile>/`),
//! or where `WEFTD` / `WEFT_NETTOOL` say.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, Ns, ProcId, Result};

/// Overrides where `weftd` is found.
pub const WEFTD_ENV: &str = "WEFTD";
/// Overrides where `weft-nettool` is found.
pub const NETTOOL_ENV: &str = "WEFT_NETTOOL";
/// Where each `weftd` serves metrics, on its node's loopback.
pub const METRICS_ADDR: &str = "127.0.0.1:9464";

static NEXT_TRANSFER: AtomicU32 = AtomicU32::new(0);

/// Finds a workspace binary: `$env`, else next to the test executable
/// (`target/<profile>/deps/test-HASH` → `target/<profile>/<name>`).
pub fn binary(name: &str, env: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        let p = PathBuf::from(p);
        assert!(p.is_file(), "{env}={} does not exist", p.display());
        return p;
    }
    let exe = std::env::current_exe().expect("the test executable's path");
    let mut candidates = Vec::new();
    if let Some(dir) = exe.parent() {
        if dir.file_name().is_some_and(|n| n == "deps")
            && let Some(profile) = dir.parent()
        {
            candidates.push(profile.join(name));
        }
        candidates.push(dir.join(name));
    }
    for c in &candidates {
        if c.is_file() {
            return c.clone();
        }
    }
    panic!(
        "{name} not found (looked at {}; or set {env}): run `cargo build --workspace --bins` \
         first (scripts/test does)",
        candidates
            .iter()
            .map(|c| c.display().to_string())
            .collect::<Vec<_>>()
            .join(", ")
    )
}

/// The `RUST_LOG` the daemons a test starts get: the test's own, or `info`.
pub fn rust_log() -> String {
    std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into())
}

/// The `weftd` binary.
pub fn weftd_binary() -> PathBuf {
    binary("weftd", WEFTD_ENV)
}

/// The `weft-nettool` binary.
pub fn nettool_binary() -> PathBuf {
    binary("weft-nettool", NETTOOL_ENV)
}

/// The underlay address of node `i`: `198.18.0.<i>`.
pub fn underlay_ip(i: u8) -> Ipv4Addr {
    Ipv4Addr::new(198, 18, 0, i)
}

/// The underlay: a bridge in its own namespace, and the hosts (nodes) plugged into it.
pub struct Underlay {
    /// The namespace that holds the bridge `br0`.
    pub switch: Ns,
    /// Node namespaces; `nodes[k]` is node `k + 1`, address `198.18.0.<k + 1>`.
    pub nodes: Vec<Ns>,
}

impl Underlay {
    /// A bridge and `n` node namespaces `n1..nN`, node *i* at `198.18.0.<i>/24` on `ul0`.
    pub fn new(lab: &mut Lab, n: u8) -> Result<Underlay> {
        let switch = lab.netns("ul")?;
        switch.ip("link add br0 type bridge")?;
        switch.ip("link set br0 up")?;
        let mut u = Underlay {
            switch,
            nodes: Vec::new(),
        };
        for i in 1..=n {
            let ns = u.host(lab, &format!("n{i}"), i)?;
            u.nodes.push(ns);
        }
        Ok(u)
    }

    /// Plugs one more host into the bridge: namespace `short`, `198.18.0.<i>/24` on
    /// `ul0`. (Nodes are hosts; so is a test's third party on the underlay.)
    pub fn host(&self, lab: &mut Lab, short: &str, i: u8) -> Result<Ns> {
        let ns = lab.netns(short)?;
        let port = format!("p{i}");
        lab.veth(&ns, "ul0", &self.switch, &port)?;
        self.switch.ip(&format!("link set {port} master br0"))?;
        ns.ip(&format!("addr add {}/24 dev ul0", underlay_ip(i)))?;
        Ok(ns)
    }

    /// Node `i` (1-based).
    pub fn node(&self, i: u8) -> &Ns {
        &self.nodes[usize::from(i) - 1]
    }
}

/// A `[[port]]` table for a TAP port inside `netns`.
pub fn tap_port(name: &str, netns: &Ns, ifname: &str, mac: &str, mtu: u16) -> String {
    format!(
        "[[port]]\nname = \"{name}\"\ntype = \"tap\"\nnetns = \"{}\"\nifname = \"{ifname}\"\n\
         mac = \"{mac}\"\nmtu = {mtu}\n\n",
        netns.name()
    )
}

/// A `[[port]]` table for a tunnel port (`vxlan`, `geneve`, `ipip`) bound to `local`,
/// with `extra` lines (e.g. `allowed_remotes = ["198.18.0.2/32"]`) appended.
pub fn tunnel_port(name: &str, kind: &str, local: Ipv4Addr, extra: &str) -> String {
    format!("[[port]]\nname = \"{name}\"\ntype = \"{kind}\"\nlocal = \"{local}\"\n{extra}\n\n")
}

/// An Antrea-style ARP responder built from flows: answers `in_port`'s ARP requests for
/// `ip` with `mac`, by turning the request around.
pub fn arp_responder_flow(table: u8, priority: u16, in_port: &str, ip: &str, mac: &str) -> String {
    format!(
        "table={table},priority={priority},in_port={in_port},arp,arp_op=1,arp_tpa={ip} \
         actions=move:NXM_OF_ETH_SRC[]->NXM_OF_ETH_DST[],set_field:{mac}->eth_src,\
         load:0x2->NXM_OF_ARP_OP[],move:NXM_NX_ARP_SHA[]->NXM_NX_ARP_THA[],\
         set_field:{mac}->arp_sha,move:NXM_OF_ARP_SPA[]->NXM_OF_ARP_TPA[],\
         set_field:{ip}->arp_spa,in_port"
    )
}

/// Flags that the test matrix lays over every `weftd` a test starts: `WEFT_TEST_OFFLOADS`
/// (`on`/`off`), `WEFT_TEST_WORKERS` (a number), `WEFT_TEST_PIN_CPUS` (`on`/`off`) and
/// `WEFT_TEST_TUNNEL_GSO` (`on`/`off`: the tunnel-GSO underlay port), when set. `scripts/test` runs the
/// end-to-end suites once per combination.
pub fn matrix_flags() -> Vec<String> {
    let mut v = Vec::new();
    if let Ok(o) = std::env::var("WEFT_TEST_OFFLOADS") {
        v.push(format!("--offloads={o}"));
    }
    if let Ok(w) = std::env::var("WEFT_TEST_WORKERS") {
        v.push(format!("--workers={w}"));
    }
    if let Ok(p) = std::env::var("WEFT_TEST_PIN_CPUS") {
        v.push(format!("--pin-cpus={p}"));
    }
    if let Ok(g) = std::env::var("WEFT_TEST_TUNNEL_GSO") {
        v.push(format!("--tunnel-gso={g}"));
    }
    v
}

/// What a `weftd` is started with.
#[derive(Clone, Debug)]
pub struct WeftdSpec {
    /// Worker threads.
    pub workers: usize,
    /// `[[port]]` tables (see [`tap_port`], [`tunnel_port`]).
    pub ports: String,
    /// Flows, one per line, in ovs-ofctl syntax.
    pub flows: String,
}

/// A `weftd` running in a node namespace, started through the lab.
pub struct Weftd {
    node: Ns,
    label: String,
    dir: PathBuf,
    config: PathBuf,
    proc: Option<ProcId>,
    starts: u32,
}

impl Weftd {
    /// Writes the configuration into `<lab dir>/<label>/` and starts `weftd` in `node`.
    /// Does not wait: see [`Weftd::wait_ready`].
    pub fn start(lab: &mut Lab, node: &Ns, label: &str, spec: &WeftdSpec) -> Result<Weftd> {
        let dir = lab.dir().join(label);
        std::fs::create_dir_all(dir.join("state"))?;
        std::fs::write(dir.join("flows.txt"), &spec.flows)?;
        let config = dir.join("weftd.toml");
        let toml = format!(
            "workers = {}\nstate_dir = \"{}\"\nmetrics = \"{METRICS_ADDR}\"\ncontrol = \"{}\"\n\
             flows = \"flows.txt\"\n\n{}",
            spec.workers,
            dir.join("state").display(),
            dir.join("weftd.sock").display(),
            spec.ports
        );
        std::fs::write(&config, toml)?;
        let mut d = Weftd {
            node: node.clone(),
            label: label.to_string(),
            dir,
            config,
            proc: None,
            starts: 0,
        };
        d.spawn(lab)?;
        Ok(d)
    }

    fn spawn(&mut self, lab: &mut Lab) -> Result<()> {
        self.starts += 1;
        let mut cmd = self.node.command(&weftd_binary().display().to_string());
        cmd.arg("--config").arg(&self.config);
        cmd.args(matrix_flags());
        cmd.env("RUST_LOG", rust_log());
        self.proc = Some(lab.spawn(&self.log_label(self.starts), cmd)?);
        Ok(())
    }

    fn log_label(&self, start: u32) -> String {
        format!("{}.{start}", self.label)
    }

    /// The directory with its configuration, flows file and state.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node namespace it runs in.
    pub fn node(&self) -> &Ns {
        &self.node
    }

    /// Everything it logged, over all its starts.
    pub fn log(&self, lab: &Lab) -> String {
        (1..=self.starts)
            .map(|i| {
                format!(
                    "--- {} ---\n{}",
                    self.log_label(i),
                    lab.log(&self.log_label(i))
                )
            })
            .collect()
    }

    /// Whether the process is running.
    pub fn is_running(&self, lab: &mut Lab) -> bool {
        self.proc.is_some_and(|p| lab.is_running(p))
    }

    /// Its process id while it runs (for its memory in `/proc/PID/status`).
    pub fn pid(&self, lab: &Lab) -> Option<u32> {
        lab.pid(self.proc?)
    }

    /// Waits until the metrics endpoint answers (the datapath is up by then: ports are
    /// opened and flows installed before the metrics server starts). Returns how long
    /// it waited; an error (with the log) if it exited or `timeout` passed.
    pub fn wait_ready(&self, lab: &mut Lab, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if !self.is_running(lab) {
                return Err(LabError(format!(
                    "{} exited during start-up:\n{}",
                    self.label,
                    self.log(lab)
                )));
            }
            if self.metrics().is_ok() {
                return Ok(start.elapsed());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Err(LabError(format!(
            "{} not ready after {timeout:?}:\n{}",
            self.label,
            self.log(lab)
        )))
    }

    /// Stops it with SIGTERM (SIGKILL after 5 s); its exit status, None if killed.
    pub fn stop(&mut self, lab: &mut Lab) -> Option<ExitStatus> {
        let p = self.proc.take()?;
        lab.stop(p, Duration::from_secs(5))
    }

    /// Kills it with SIGKILL (a crash: nothing runs after the signal).
    pub fn kill(&mut self, lab: &mut Lab) -> Option<ExitStatus> {
        let p = self.proc.take()?;
        lab.kill(p)
    }

    /// Stops it (which must be a clean exit 0) and starts it again with the same
    /// configuration and state directory. Returns when the new process is started.
    pub fn restart(&mut self, lab: &mut Lab) -> Result<()> {
        match self.stop(lab) {
            Some(s) if s.success() => {}
            other => {
                return Err(LabError(format!(
                    "{} did not stop cleanly ({other:?}):\n{}",
                    self.label,
                    self.log(lab)
                )));
            }
        }
        self.start_again(lab)
    }

    /// Starts it again after [`Weftd::stop`], with the same configuration and state.
    pub fn start_again(&mut self, lab: &mut Lab) -> Result<()> {
        if self.is_running(lab) {
            return Err(LabError(format!("{} is still running", self.label)));
        }
        self.spawn(lab)
    }

    /// Scrapes `/metrics` from inside the node namespace.
    pub fn metrics(&self) -> Result<Metrics> {
        let out = self.node.run(&[
            &nettool_binary().display().to_string(),
            "http-get",
            "--to",
            METRICS_ADDR,
            "--path",
            "/metrics",
            "--timeout",
            "3",
        ])?;
        Metrics::parse(&out)
    }
}

/// One scrape of the metrics endpoint.
#[derive(Clone, Debug)]
pub struct Metrics {
    /// The HTTP status code.
    pub status: u16,
    /// The `Content-Type` header.
    pub content_type: String,
    /// The body (Prometheus text format).
    pub body: String,
}

impl Metrics {
    /// Splits an HTTP/1.x response.
    pub fn parse(response: &str) -> Result<Metrics> {
        let (head, body) = response
            .split_once("\r\n\r\n")
            .ok_or_else(|| LabError(format!("not an HTTP response: {response:.200}")))?;
        let mut lines = head.lines();
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| LabError(format!("bad status line: {head:.200}")))?;
        let content_type = lines
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| v.trim().to_string())
            .unwrap_or_default();
        Ok(Metrics {
            status,
            content_type,
            body: body.to_string(),
        })
    }

    /// The sum of the samples of metric `name` whose labels include all of `labels`
    /// (`None` when no sample matches).
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<u64> {
        let mut found = None;
        for line in self.body.lines() {
            if line.starts_with('#') {
                continue;
            }
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let (metric, label_text) = match series.split_once('{') {
                Some((m, rest)) => (m, rest.trim_end_matches('}')),
                None => (series, ""),
            };
            if metric != name {
                continue;
            }
            let has = |k: &str, v: &str| {
                label_text
                    .split(',')
                    .any(|kv| kv.trim() == format!("{k}=\"{v}\""))
            };
            if labels.iter().all(|(k, v)| has(k, v)) {
                let v: u64 = value.trim().parse().unwrap_or(0);
                found = Some(found.unwrap_or(0) + v);
            }
        }
        found
    }

    /// `weft_port_drops_total{port, reason}` (0 when absent).
    pub fn port_drops(&self, port: &str, reason: &str) -> u64 {
        self.get(
            "weft_port_drops_total",
            &[("port", port), ("reason", reason)],
        )
        .unwrap_or(0)
    }

    /// A per-port counter, e.g. `weft_port_rx_packets_total` (0 when absent).
    pub fn port(&self, name: &str, port: &str) -> u64 {
        self.get(name, &[("port", port)]).unwrap_or(0)
    }
}

/// Waits until `ifname` exists in `ns` (e.g. the TAP device `weftd` creates in a pod).
pub fn wait_for_link(ns: &Ns, ifname: &str, timeout: Duration) -> Result<Duration> {
    let start = Instant::now();
    loop {
        if ns.ip(&format!("link show {ifname}")).is_ok() {
            return Ok(start.elapsed());
        }
        if start.elapsed() > timeout {
            return Err(LabError(format!(
                "no {ifname} in {} after {timeout:?}",
                ns.name()
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `ping ARGS` in `ns`; whether it succeeded, and stdout and stderr together.
pub fn ping_output(ns: &Ns, args: &[&str]) -> (bool, String) {
    let mut c = ns.command("ping");
    c.args(args);
    match c.output() {
        Ok(o) => (
            o.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&o.stdout),
                String::from_utf8_lossy(&o.stderr)
            ),
        ),
        Err(e) => (false, e.to_string()),
    }
}

/// Pings `dst` from `ns` with short waits until a reply comes or `timeout` passes;
/// returns how long it took. Finer-grained than [`Ns::wait_for_ping`] (50 ms per try).
pub fn wait_for_ping_fast(ns: &Ns, dst: &str, timeout: Duration) -> Option<Duration> {
    let start = Instant::now();
    while start.elapsed() < timeout {
        let (ok, _) = ping_output(ns, &["-n", "-q", "-c", "1", "-W", "0.05", dst]);
        if ok {
            return Some(start.elapsed());
        }
    }
    None
}

/// The outcome of a verified TCP transfer.
#[derive(Clone, Debug)]
pub struct Transfer {
    /// Bytes received and checked.
    pub bytes: u64,
    /// The checksum both sides printed.
    pub checksum: String,
    /// What the receiver printed.
    pub receiver: String,
    /// What the sender printed.
    pub sender: String,
}

/// Sends `bytes` of the deterministic pattern from `from` to `to_ip:port` (a listener in
/// `to`) and checks them all on arrival; an error says what went wrong on which side.
pub fn tcp_transfer(
    lab: &mut Lab,
    from: &Ns,
    to: &Ns,
    to_ip: &str,
    port: u16,
    bytes: u64,
    timeout: Duration,
) -> Result<Transfer> {
    let tool = nettool_binary().display().to_string();
    let n = NEXT_TRANSFER.fetch_add(1, Ordering::Relaxed);
    let label = format!("recv-{port}-{n}");
    let secs = format!("{:.1}", timeout.as_secs_f64());
    let listen = SocketAddr::new(
        to_ip
            .parse()
            .map_err(|_| LabError(format!("bad ip {to_ip}")))?,
        port,
    );
    let mut recv = to.command(&tool);
    recv.args(["tcp-recv", "--listen", &listen.to_string()]);
    recv.args(["--bytes", &bytes.to_string(), "--seed", &n.to_string()]);
    recv.args(["--timeout", &secs]);
    let receiver = lab.spawn(&label, recv)?;
    let start = Instant::now();
    while !lab.log(&label).contains("listening") {
        if !lab.is_running(receiver) || start.elapsed() > Duration::from_secs(5) {
            let _ = lab.stop(receiver, Duration::from_millis(100));
            return Err(LabError(format!(
                "receiver did not start: {}",
                lab.log(&label)
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let mut send = from.command(&tool);
    send.args(["tcp-send", "--to", &listen.to_string()]);
    send.args(["--bytes", &bytes.to_string(), "--seed", &n.to_string()]);
    send.args(["--timeout", &secs]);
    let sent = send.output()?;
    let sender = format!(
        "{}{}",
        String::from_utf8_lossy(&sent.stdout),
        String::from_utf8_lossy(&sent.stderr)
    );
    // The receiver has its own deadline; give it a little more than that to finish.
    let start = Instant::now();
    while lab.is_running(receiver) && start.elapsed() < timeout + Duration::from_secs(2) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let status = lab.stop(receiver, Duration::from_millis(500));
    let received = lab.log(&label);
    if !sent.status.success() || !status.is_some_and(|s| s.success()) {
        return Err(LabError(format!(
            "transfer of {bytes} bytes to {listen} failed\nsender ({}): {sender}\nreceiver \
             ({status:?}): {received}",
            sent.status
        )));
    }
    let sum = |s: &str| {
        s.split_whitespace()
            .find_map(|w| w.strip_prefix("fnv1a="))
            .map(str::to_string)
    };
    let (a, b) = (sum(&sender), sum(&received));
    if a.is_none() || a != b {
        return Err(LabError(format!(
            "checksums differ: sender {sender} receiver {received}"
        )));
    }
    let got = received
        .split_whitespace()
        .skip_while(|w| *w != "received")
        .nth(1)
        .and_then(|w| w.parse().ok())
        .unwrap_or(0);
    Ok(Transfer {
        bytes: got,
        checksum: a.unwrap_or_default(),
        receiver: received,
        sender,
    })
}
