//! Two-pod test beds in network namespaces, and the measurements run across them.
//!
//! Every bed is built in a [`ClusterLab`] from `netns-tests` (so everything, including
//! the daemons, is removed when the bed drops): nodes `n1`/`n2` at `198.18.0.1`/`.2` on
//! the lab underlay, pod `p1` on `n1` at `198.19.1.11`, pod `p2` on `n2` at
//! `198.19.2.11`, pod MTU 1450, and one of these datapaths between them:
//!
//! - [`Datapath::WeftVxlan`], [`Datapath::WeftGeneve`], [`Datapath::WeftIpip`]: a
//!   `weftd` per node, programmed from a cluster description (l3, as Antrea routes);
//! - [`Datapath::Kernel`]: the kernel's VXLAN device on a bridge on both nodes (as
//!   flannel's VXLAN backend sets it up);
//! - [`Datapath::Ovs`]: Open vSwitch's userspace datapath (`datapath_type=netdev`), one
//!   `ovsdb-server` + `ovs-vswitchd` per node namespace with its own run directory in
//!   the lab directory, started through the lab so that they are stopped with it; the
//!   underlay veth on `br-phy` (which holds the node address), a VXLAN port and the
//!   pod's veth on `br-int`. TSO, GSO and tx checksumming are turned off on the pod
//!   veths: OVS 3.1's userspace VXLAN stalls TCP otherwise;
//! - [`Datapath::Veth`]: the two pods joined by one veth pair (the ceiling).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use netns_tests::cluster::ClusterLab;
use netns_tests::lab::{Lab, LabError, Ns, Result};
use weftctl::cluster::Cluster;

/// The address of the receiving pod.
pub const DST_IP: &str = "198.19.2.11";
/// The address of the sending pod.
pub const SRC_IP: &str = "198.19.1.11";
/// The pods' MTU.
pub const MTU: u16 = 1450;

/// A datapath between the two pods.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Datapath {
    /// Weft, VXLAN, l3 (the tunnel's sockets).
    WeftVxlan,
    /// Weft, VXLAN, l3, over the tunnel-GSO underlay TAP (`--tunnel-gso on`).
    WeftVxlanGso,
    /// [`Datapath::WeftVxlanGso`] with `--pin-cpus on` (workers pinned, TAP frames
    /// steered by the sending CPU: the latency setting).
    WeftVxlanGsoPinned,
    /// Weft, Geneve, l3 (the tunnel's sockets).
    WeftGeneve,
    /// Weft, Geneve, l3, over the tunnel-GSO underlay TAP.
    WeftGeneveGso,
    /// Weft, IP-in-IP, l3.
    WeftIpip,
    /// The kernel's VXLAN device on a bridge on both nodes.
    Kernel,
    /// Open vSwitch's userspace datapath with a VXLAN port.
    Ovs,
    /// One veth pair between the pods.
    Veth,
}

impl Datapath {
    /// Whether it is one of Weft's (a `weftd` per node, with metrics).
    pub fn is_weft(self) -> bool {
        matches!(
            self,
            Datapath::WeftVxlan
                | Datapath::WeftVxlanGso
                | Datapath::WeftVxlanGsoPinned
                | Datapath::WeftGeneve
                | Datapath::WeftGeneveGso
                | Datapath::WeftIpip
        )
    }

    /// The underlay a Weft row is meant to measure (what [`Bed::underlay`] should say):
    /// the tunnel's sockets, or the tunnel-GSO underlay TAP for the `-gso` rows.
    pub fn underlay_wanted(self) -> Option<&'static str> {
        match self {
            d if d.tunnel_gso() => Some("tunnel-GSO TAP"),
            d if d.is_weft() => Some("sockets"),
            _ => None,
        }
    }

    /// Whether it is a Weft row over the tunnel-GSO underlay TAP (`--tunnel-gso=on`).
    pub fn tunnel_gso(self) -> bool {
        matches!(
            self,
            Datapath::WeftVxlanGso | Datapath::WeftVxlanGsoPinned | Datapath::WeftGeneveGso
        )
    }

    /// Every datapath, in report order.
    pub const ALL: [Datapath; 9] = [
        Datapath::WeftVxlan,
        Datapath::WeftVxlanGso,
        Datapath::WeftVxlanGsoPinned,
        Datapath::WeftGeneve,
        Datapath::WeftGeneveGso,
        Datapath::WeftIpip,
        Datapath::Kernel,
        Datapath::Ovs,
        Datapath::Veth,
    ];

    /// Its short name (`weft-vxlan`, `kernel`, `ovs`, ...).
    pub fn name(self) -> &'static str {
        match self {
            Datapath::WeftVxlan => "weft-vxlan",
            Datapath::WeftVxlanGso => "weft-vxlan-gso",
            Datapath::WeftVxlanGsoPinned => "weft-vxlan-gso-pinned",
            Datapath::WeftGeneve => "weft-geneve",
            Datapath::WeftGeneveGso => "weft-geneve-gso",
            Datapath::WeftIpip => "weft-ipip",
            Datapath::Kernel => "kernel",
            Datapath::Ovs => "ovs",
            Datapath::Veth => "veth",
        }
    }

    /// A longer description for tables.
    pub fn describe(self) -> &'static str {
        match self {
            Datapath::WeftVxlan => "Weft VXLAN l3, sockets",
            Datapath::WeftVxlanGso => "Weft VXLAN l3, GSO TAP",
            Datapath::WeftVxlanGsoPinned => "Weft VXLAN, GSO TAP, pinned",
            Datapath::WeftGeneve => "Weft Geneve l3, sockets",
            Datapath::WeftGeneveGso => "Weft Geneve l3, GSO TAP",
            Datapath::WeftIpip => "Weft IP-in-IP (l3)",
            Datapath::Kernel => "kernel VXLAN + bridge",
            Datapath::Ovs => "OVS 3.1 userspace VXLAN*",
            Datapath::Veth => "plain veth (no overlay)",
        }
    }

    /// The datapath called `name` (also accepts `kernel-vxlan`, `ovs-vxlan`).
    pub fn from_name(name: &str) -> Option<Datapath> {
        let n = match name {
            "kernel-vxlan" => "kernel",
            "ovs-vxlan" | "ovs-userspace" => "ovs",
            n => n,
        };
        Datapath::ALL.into_iter().find(|d| d.name() == n)
    }
}

fn err(what: impl std::fmt::Display) -> LabError {
    LabError(what.to_string())
}

/// The cluster description of the Weft and kernel beds.
pub fn description(encap: &str, mode: &str) -> String {
    let mut s = format!(
        "[cluster]\nencap = \"{encap}\"\nvni = 100\nmode = \"{mode}\"\nmtu = {MTU}\n\
         pod_cidr = \"198.19.0.0/16\"\n"
    );
    for i in 1..=2 {
        s += &format!(
            "\n[[node]]\nname = \"n{i}\"\naddress = \"198.18.0.{i}\"\n\
             pod_subnet = \"198.19.{i}.0/24\"\n"
        );
    }
    for i in 1..=2 {
        s += &format!(
            "\n[[pod]]\nname = \"p{i}\"\nnode = \"n{i}\"\nnamespace = \"p{i}\"\n\
             address = \"198.19.{i}.11\"\n"
        );
    }
    s
}

/// Where a workspace binary is: `$env`, else next to this executable (or one level up,
/// from `deps/`), in the release directory first, then the debug one.
pub fn find_binary(name: &str, env: &str) -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(env) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    let mut dir = exe.parent()?.to_path_buf();
    if dir.file_name().is_some_and(|n| n == "deps") {
        dir.pop();
    }
    let mut candidates = vec![dir.join(name)];
    if let Some(target) = dir.parent() {
        candidates.push(target.join("release").join(name));
        candidates.push(target.join("debug").join(name));
    }
    candidates.into_iter().find(|c| c.is_file())
}

/// The `txqueuelen=` of Weft's pod TAP ports in a bed ([`Bed::new`]): deep enough that
/// the UDP burst of `compare` (300,000 frames, written by the sending pod faster than
/// one worker reads them on 2 shared cores) is queued, not dropped. Kernel memory while
/// full: about 0.9 KB per 64-byte frame held.
pub const POD_TXQUEUELEN: u32 = 262_144;

/// A test bed: two pods and the datapath between them. Dropping it removes everything.
pub struct Bed {
    /// The datapath.
    pub datapath: Datapath,
    /// The lab (namespaces, daemons).
    pub cl: ClusterLab,
    /// The sending pod.
    pub src: Ns,
    /// The receiving pod.
    pub dst: Ns,
    /// `weft-loadgen`.
    pub loadgen: PathBuf,
    next: u32,
}

impl Bed {
    /// Builds the bed for `datapath`. `weftd` is found through `$WEFTD` (the harness's
    /// own lookup), `weft-loadgen` is `loadgen`. Waits until the pods can ping.
    pub fn new(datapath: Datapath, loadgen: &Path) -> Result<Bed> {
        Bed::with_txqueuelen(datapath, loadgen, Some(POD_TXQUEUELEN))
    }

    /// [`Bed::new`] with Weft's pod TAP ports given `txqueuelen` (`None`: the kernel's
    /// 1000). A TAP has no backpressure, unlike the kernel datapaths' veths: a burst the
    /// sending pod writes faster than a worker reads is dropped beyond the queue.
    pub fn with_txqueuelen(
        datapath: Datapath,
        loadgen: &Path,
        txqueuelen: Option<u32>,
    ) -> Result<Bed> {
        let (encap, mode) = match datapath {
            Datapath::WeftVxlan | Datapath::WeftVxlanGso | Datapath::WeftVxlanGsoPinned => {
                ("vxlan", "l3")
            }
            Datapath::WeftGeneve | Datapath::WeftGeneveGso => ("geneve", "l3"),
            Datapath::WeftIpip => ("ipip", "l3"),
            _ => ("vxlan", "l2"),
        };
        let cluster = Cluster::from_toml(&description(encap, mode))
            .map_err(|e| err(format!("cluster description: {e}")))?;
        let mut cl = ClusterLab::new(&cluster)?;
        let (src, dst) = match datapath {
            Datapath::WeftVxlan
            | Datapath::WeftVxlanGso
            | Datapath::WeftVxlanGsoPinned
            | Datapath::WeftGeneve
            | Datapath::WeftGeneveGso
            | Datapath::WeftIpip => {
                // One row per underlay mode: sockets, or the tunnel-GSO TAP.
                let gso = if datapath.tunnel_gso() { "on" } else { "off" };
                cl.weftd_flags = vec![format!("--tunnel-gso={gso}")];
                if datapath == Datapath::WeftVxlanGsoPinned {
                    cl.weftd_flags.push("--pin-cpus=on".to_string());
                }
                // More of weftd's flags for every Weft node (`compare --weftd-flags`).
                if let Some(extra) = std::env::var_os("WEFT_BENCH_WEFTD_FLAGS") {
                    cl.weftd_flags.extend(
                        extra
                            .to_string_lossy()
                            .split_whitespace()
                            .map(str::to_string),
                    );
                }
                cl.pod_txqueuelen = txqueuelen;
                cl.start_all()?;
                if let Err(e) = cl.install(&cluster) {
                    return Err(err(format!("install: {e}\n{}", cl.logs())));
                }
                (cl.pod("p1").ns.clone(), cl.pod("p2").ns.clone())
            }
            Datapath::Kernel => {
                // Kernel to kernel: checksum offload on, as the reference figures
                // were measured (nothing in userspace reads these packets).
                cl.install_kernel_node_with(&cluster, "n1", true)?;
                cl.install_kernel_node_with(&cluster, "n2", true)?;
                (cl.pod("p1").ns.clone(), cl.pod("p2").ns.clone())
            }
            Datapath::Veth => {
                let a = cl.lab.netns("p1")?;
                let b = cl.lab.netns("p2")?;
                cl.lab.veth(&a, "eth0", &b, "eth0")?;
                for (ns, ip) in [(&a, SRC_IP), (&b, DST_IP)] {
                    ns.ip(&format!("addr add {ip}/16 dev eth0"))?;
                    ns.ip(&format!("link set eth0 mtu {MTU}"))?;
                }
                (a, b)
            }
            Datapath::Ovs => ovs(&mut cl)?,
        };
        let bed = Bed {
            datapath,
            cl,
            src,
            dst,
            loadgen: loadgen.to_path_buf(),
            next: 0,
        };
        let t = if datapath == Datapath::Ovs { 30 } else { 10 };
        for (a, ip) in [(&bed.src, DST_IP), (&bed.dst, SRC_IP)] {
            if a.wait_for_ping(ip, Duration::from_secs(t)).is_none() {
                return Err(err(format!(
                    "{}: {} cannot ping {ip}\n{}",
                    datapath.name(),
                    a.name(),
                    bed.cl.logs()
                )));
            }
        }
        Ok(bed)
    }

    fn label(&mut self, what: &str) -> String {
        self.next += 1;
        format!("{what}-{}", self.next)
    }

    /// Spawns `cmd` in the lab and waits until its log contains `ready`.
    fn spawn_ready(
        &mut self,
        label: &str,
        cmd: Command,
        ready: &str,
    ) -> Result<netns_tests::lab::ProcId> {
        let id = self.cl.lab.spawn(label, cmd)?;
        let start = Instant::now();
        while !self.cl.lab.log(label).contains(ready) {
            if !self.cl.lab.is_running(id) || start.elapsed() > Duration::from_secs(10) {
                self.cl.lab.stop(id, Duration::from_secs(1));
                return Err(err(format!(
                    "{label} did not start: {}",
                    self.cl.lab.log(label)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(id)
    }

    /// Waits up to `timeout` for a process to exit, then stops it; its log.
    fn finish(&mut self, id: netns_tests::lab::ProcId, label: &str, timeout: Duration) -> String {
        let start = Instant::now();
        while self.cl.lab.is_running(id) && start.elapsed() < timeout {
            std::thread::sleep(Duration::from_millis(5));
        }
        self.cl.lab.stop(id, Duration::from_secs(1));
        self.cl.lab.log(label)
    }

    /// Sends `count` UDP datagrams in `size`-byte Ethernet frames from the source pod to
    /// the destination pod with `weft-loadgen`, and returns what arrived.
    pub fn udp(&mut self, size: usize, count: u64, run_id: u64) -> Result<UdpRun> {
        let port = 9000 + (self.next % 1000) as u16;
        let label = self.label("loadgen-recv");
        let to = format!("{DST_IP}:{port}");
        let tool = self.loadgen.display().to_string();
        let common = [
            "--size".to_string(),
            size.to_string(),
            "--count".to_string(),
            count.to_string(),
            "--run-id".to_string(),
            run_id.to_string(),
            "--timeout".to_string(),
            "60".to_string(),
        ];
        let mut recv = self.dst.command(&tool);
        recv.args(["recv", "--listen", &to, "--idle-ms", "300"])
            .args(&common);
        let id = self.spawn_ready(&label, recv, "listening")?;
        let mut args = vec![tool.as_str(), "send", "--to", &to];
        args.extend(common.iter().map(String::as_str));
        let sent = self.src.run(&args);
        let log = self.finish(id, &label, Duration::from_secs(65));
        let sent = sent?;
        let s = json_line(&sent, "sent")?;
        let r = json_line(&log, "expected")?;
        let n = |v: &serde_json::Value, k: &str| v[k].as_u64().unwrap_or(0);
        Ok(UdpRun {
            size,
            sent: n(&s, "sent"),
            send_errors: n(&s, "errors"),
            send_time: Duration::from_nanos(n(&s, "duration_ns")),
            received: n(&r, "received"),
            duplicates: n(&r, "duplicates"),
            corrupt: n(&r, "corrupt"),
            wrong_run: n(&r, "wrong_run"),
            duration: Duration::from_nanos(n(&r, "duration_ns")),
        })
    }

    /// Where frames were lost, as one line per place with a non-zero count: the kernel's
    /// counters in the pods' and nodes' namespaces (each device's tx/rx dropped, UDP
    /// receive/send buffer errors) and, for Weft, every port drop reason of each
    /// `weftd`. For a run whose loss has to be explained (the counters are those of a
    /// fresh bed, so they count that run and the pings before it).
    pub fn loss_report(&self) -> String {
        let mut out = String::new();
        let mut places: Vec<(String, &Ns)> =
            vec![("src".into(), &self.src), ("dst".into(), &self.dst)];
        for n in self.cl.nodes() {
            places.push((n.name.clone(), &n.ns));
        }
        for (place, ns) in &places {
            if let Ok(j) = ns.ip("-j -s link show") {
                let v: serde_json::Value = serde_json::from_str(&j).unwrap_or_default();
                for dev in v.as_array().into_iter().flatten() {
                    let name = dev["ifname"].as_str().unwrap_or("?");
                    for dir in ["tx", "rx"] {
                        let d = dev["stats64"][dir]["dropped"].as_u64().unwrap_or(0);
                        if d > 0 {
                            out.push_str(&format!("  {place} {name}: {dir} dropped {d}\n"));
                        }
                    }
                }
            }
            if let Ok(snmp) = ns.run(&["cat", "/proc/net/snmp"]) {
                let udp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Udp:")).collect();
                if let [names, values] = udp[..] {
                    for (k, v) in names.split_whitespace().zip(values.split_whitespace()) {
                        let bad = matches!(k, "InErrors" | "RcvbufErrors" | "SndbufErrors");
                        if bad && v != "0" {
                            out.push_str(&format!("  {place} Udp{k}: {v}\n"));
                        }
                    }
                }
            }
        }
        if self.datapath.is_weft() {
            for n in self.cl.nodes() {
                let Ok(m) = self.cl.metrics(&n.name) else {
                    continue;
                };
                for line in m.body.lines() {
                    if line.starts_with("weft_port_drops_total{") && !line.ends_with(" 0") {
                        out.push_str(&format!("  {} {line}\n", n.name));
                    }
                }
            }
        }
        out
    }

    /// For a Weft bed, the underlay every node's `weftd` says it uses
    /// (`weft_underlay_tunnel_gso`): `"tunnel-GSO TAP"`, `"sockets"`, or `"mixed"` when
    /// the nodes differ; `None` for other datapaths or when a node cannot be scraped.
    /// A `-gso` row whose kernel lacks the feature falls back to sockets, and says so.
    pub fn underlay(&self) -> Option<&'static str> {
        if !self.datapath.is_weft() {
            return None;
        }
        let mut modes = Vec::new();
        for n in self.cl.nodes() {
            let m = self.cl.metrics(&n.name).ok()?;
            modes.push(m.get("weft_underlay_tunnel_gso", &[])? == 1);
        }
        Some(match (modes.iter().all(|&g| g), modes.iter().any(|&g| g)) {
            (true, _) => "tunnel-GSO TAP",
            (false, false) => "sockets",
            (false, true) => "mixed",
        })
    }

    /// TCP throughput with `iperf3 -t secs -P streams`, in bit/s (received).
    pub fn iperf(&mut self, streams: u32, secs: u32) -> Result<f64> {
        let port = 5201 + (self.next % 100) as u16;
        let label = self.label("iperf3-server");
        let mut server = self.dst.command("iperf3");
        server.args([
            "-s",
            "-1",
            "--forceflush",
            "-B",
            DST_IP,
            "-p",
            &port.to_string(),
        ]);
        let id = self.spawn_ready(&label, server, "Server listening")?;
        let out = self.src.run(&[
            "iperf3",
            "-c",
            DST_IP,
            "-p",
            &port.to_string(),
            "-t",
            &secs.to_string(),
            "-P",
            &streams.to_string(),
            "-J",
        ]);
        self.finish(id, &label, Duration::from_secs(5));
        let out = out?;
        let v: serde_json::Value =
            serde_json::from_str(&out).map_err(|e| err(format!("iperf3 -J output: {e}")))?;
        v["end"]["sum_received"]["bits_per_second"]
            .as_f64()
            .ok_or_else(|| err(format!("iperf3: no end.sum_received: {out}")))
    }

    /// Round-trip times of `count` pings 10 ms apart, in milliseconds (lost ones left out).
    /// `compare` sends [`PINGS`], enough for a p99 that is not just the slowest one.
    pub fn ping(&self, count: u32) -> Result<Vec<f64>> {
        let out = self
            .src
            .command("ping")
            .args([
                "-n",
                "-c",
                &count.to_string(),
                "-i",
                "0.01",
                "-W",
                "1",
                DST_IP,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&out.stdout);
        let rtts: Vec<f64> = text
            .split_whitespace()
            .filter_map(|w| w.strip_prefix("time="))
            .filter_map(|t| t.parse().ok())
            .collect();
        if rtts.is_empty() {
            return Err(err(format!("ping {DST_IP}: no replies: {text}")));
        }
        Ok(rtts)
    }
}

/// The JSON object on the line of `text` that contains `"key"`.
fn json_line(text: &str, key: &str) -> Result<serde_json::Value> {
    let needle = format!("\"{key}\"");
    let line = text
        .lines()
        .rev()
        .find(|l| l.starts_with('{') && l.contains(&needle))
        .ok_or_else(|| err(format!("weft-loadgen printed no result: {text}")))?;
    serde_json::from_str(line).map_err(|e| err(format!("weft-loadgen result {line}: {e}")))
}

/// What one load generator run did.
#[derive(Clone, Debug)]
pub struct UdpRun {
    /// Ethernet frame size.
    pub size: usize,
    /// Datagrams sent.
    pub sent: u64,
    /// `sendmmsg` errors (full queues), counted as sent.
    pub send_errors: u64,
    /// How long the sender took.
    pub send_time: Duration,
    /// Distinct datagrams of this run that arrived intact.
    pub received: u64,
    /// Datagrams that arrived more than once.
    pub duplicates: u64,
    /// Datagrams that arrived damaged.
    pub corrupt: u64,
    /// Datagrams of another run.
    pub wrong_run: u64,
    /// From the first to the last datagram that arrived.
    pub duration: Duration,
}

impl UdpRun {
    /// The fraction of datagrams lost.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 0.0;
        }
        1.0 - self.received as f64 / self.sent as f64
    }

    /// Frames that arrived per second.
    pub fn rate(&self) -> f64 {
        if self.duration.is_zero() {
            return 0.0;
        }
        self.received as f64 / self.duration.as_secs_f64()
    }

    /// The duration scaled so that `sent / scaled` is the arrival rate (what criterion
    /// measures with a fixed element count per iteration).
    pub fn scaled(&self) -> Duration {
        if self.received == 0 {
            return Duration::from_secs(3600);
        }
        self.duration
            .mul_f64(self.sent as f64 / self.received as f64)
    }

    /// One line for logs.
    pub fn summary(&self) -> String {
        format!(
            "{} B: sent {} (sender {:.0} f/s), arrived {} in {:.3} s = {:.0} frames/s, \
             {:.2} Gbit/s, loss {:.2}%, dup {}, corrupt {}, other run {}",
            self.size,
            self.sent,
            self.sent as f64 / self.send_time.as_secs_f64().max(1e-9),
            self.received,
            self.duration.as_secs_f64(),
            self.rate(),
            self.rate() * self.size as f64 * 8.0 / 1e9,
            self.loss() * 100.0,
            self.duplicates,
            self.corrupt,
            self.wrong_run
        )
    }
}

/// Runs `ovs-vsctl` against a node's database.
fn vsctl(ns: &Ns, dir: &Path, args: &[&str]) -> Result<String> {
    let mut c = ns.command("ovs-vsctl");
    ovs_env(&mut c, dir);
    c.arg(format!("--db=unix:{}", dir.join("db.sock").display()))
        .arg("--timeout=20")
        .args(args);
    let out = c.output()?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(err(format!(
            "in {}: ovs-vsctl {} failed: {}",
            ns.name(),
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn ovs_env(c: &mut Command, dir: &Path) {
    for (k, v) in ovs_env_vars(dir) {
        c.env(k, v);
    }
}

fn ovs_env_vars(dir: &Path) -> [(&'static str, PathBuf); 5] {
    [
        ("OVS_RUNDIR", dir.to_path_buf()),
        ("OVS_DBDIR", dir.to_path_buf()),
        ("OVS_LOGDIR", dir.to_path_buf()),
        ("OVS_SYSCONFDIR", dir.to_path_buf()),
        ("OVS_PKGDATADIR", PathBuf::from("/usr/share/openvswitch")),
    ]
}

/// Whether Open vSwitch's daemons are installed.
pub fn ovs_installed() -> bool {
    ["ovsdb-server", "ovs-vswitchd", "ovs-vsctl", "ovsdb-tool"]
        .iter()
        .all(|p| {
            ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"]
                .iter()
                .any(|d| Path::new(d).join(p).is_file())
        })
        && Path::new(OVS_SCHEMA).is_file()
}

const OVS_SCHEMA: &str = "/usr/share/openvswitch/vswitch.ovsschema";

/// Open vSwitch's two daemons in one namespace, with their database, sockets, pid files
/// and logs in a directory of their own, started through a [`Lab`] (so they stop with
/// it, also on failure): `ovsdb-server` with a fresh database, then `ovs-vswitchd`.
pub struct OvsNode {
    ns: Ns,
    dir: PathBuf,
    tag: String,
    vswitchd: Option<netns_tests::lab::ProcId>,
    starts: u32,
}

impl OvsNode {
    /// Creates the database in `dir` and starts both daemons in `ns`; `tag` names their
    /// logs in the lab (`ovsdb-server-TAG`, `ovs-vswitchd-TAG.N`).
    pub fn start(lab: &mut Lab, ns: &Ns, dir: &Path, tag: &str) -> Result<OvsNode> {
        std::fs::create_dir_all(dir)?;
        let db = dir.join("conf.db");
        let out = Command::new("ovsdb-tool")
            .arg("create")
            .arg(&db)
            .arg(OVS_SCHEMA)
            .output()?;
        if !out.status.success() {
            return Err(err(format!(
                "ovsdb-tool create: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        let d = dir.display().to_string();
        let mut server = ns.command("ovsdb-server");
        ovs_env(&mut server, dir);
        server.args([
            &db.display().to_string(),
            &format!("--remote=punix:{d}/db.sock"),
            &format!("--pidfile={d}/ovsdb.pid"),
            &format!("--unixctl={d}/ovsdb.ctl"),
            &format!("--log-file={d}/ovsdb.log"),
        ]);
        let label = format!("ovsdb-server-{tag}");
        let sid = lab.spawn(&label, server)?;
        let start = Instant::now();
        while vsctl(ns, dir, &["--no-wait", "init"]).is_err() {
            if !lab.is_running(sid) || start.elapsed() > Duration::from_secs(10) {
                return Err(err(format!("ovsdb-server on {tag}: {}", lab.log(&label))));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut node = OvsNode {
            ns: ns.clone(),
            dir: dir.to_path_buf(),
            tag: tag.to_string(),
            vswitchd: None,
            starts: 0,
        };
        node.start_vswitchd(lab)?;
        Ok(node)
    }

    /// Starts `ovs-vswitchd` (again, after [`OvsNode::kill_vswitchd`]); it reads its
    /// bridges and ports from the database, but no flows: OpenFlow flows are not kept.
    pub fn start_vswitchd(&mut self, lab: &mut Lab) -> Result<()> {
        if self.vswitchd.is_some_and(|p| lab.is_running(p)) {
            return Err(err(format!("ovs-vswitchd-{} is still running", self.tag)));
        }
        self.starts += 1;
        let d = self.dir.display().to_string();
        let mut vs = self.command("ovs-vswitchd");
        vs.args([
            &format!("unix:{d}/db.sock"),
            &format!("--pidfile={d}/vs.pid"),
            &format!("--unixctl={d}/vs.ctl"),
            &format!("--log-file={d}/vs.log"),
        ]);
        self.vswitchd = Some(lab.spawn(&format!("ovs-vswitchd-{}.{}", self.tag, self.starts), vs)?);
        Ok(())
    }

    /// Kills `ovs-vswitchd` with SIGKILL (a crash).
    pub fn kill_vswitchd(&mut self, lab: &mut Lab) {
        if let Some(p) = self.vswitchd.take() {
            lab.kill(p);
        }
    }

    /// Whether `ovs-vswitchd` runs.
    pub fn vswitchd_running(&self, lab: &mut Lab) -> bool {
        self.vswitchd.is_some_and(|p| lab.is_running(p))
    }

    /// `program` in the namespace, with the OVS environment pointing at the directory
    /// (so `ovs-ofctl BRIDGE` finds `BRIDGE.mgmt` there).
    pub fn command(&self, program: &str) -> Command {
        let mut c = self.ns.command(program);
        ovs_env(&mut c, &self.dir);
        c
    }

    /// The environment that points OVS's tools at the directory (for a command run
    /// outside the namespace: `ovs-ofctl` reaches `BRIDGE.mgmt` by its path).
    pub fn env(&self) -> [(&'static str, PathBuf); 5] {
        ovs_env_vars(&self.dir)
    }

    /// `ovs-vsctl ARGS` against this database; its stdout.
    pub fn vsctl(&self, args: &[&str]) -> Result<String> {
        vsctl(&self.ns, &self.dir, args)
    }

    /// The namespace.
    pub fn ns(&self) -> &Ns {
        &self.ns
    }

    /// The directory (database, sockets, logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// The OVS userspace bed on the lab's two nodes: see the module docs.
fn ovs(cl: &mut ClusterLab) -> Result<(Ns, Ns)> {
    let mut pods = Vec::new();
    for i in 1..=2u8 {
        let node = cl.underlay.node(i).clone();
        let peer = 3 - i;
        let dir = cl.lab.dir().join(format!("ovs-n{i}"));
        let ovs = OvsNode::start(&mut cl.lab, &node, &dir, &format!("n{i}"))?;
        // The underlay address moves from ul0 to br-phy, which takes ul0's MAC.
        let link = node.ip("-br link show ul0")?;
        let mac = link
            .split_whitespace()
            .nth(2)
            .ok_or_else(|| err(format!("no MAC in {link}")))?
            .to_string();
        node.ip(&format!("addr del 198.18.0.{i}/24 dev ul0"))?;
        ovs.vsctl(&[
            "add-br",
            "br-phy",
            "--",
            "set",
            "Bridge",
            "br-phy",
            "datapath_type=netdev",
            "fail-mode=standalone",
            &format!("other_config:hwaddr={mac}"),
        ])?;
        ovs.vsctl(&["add-port", "br-phy", "ul0"])?;
        node.ip(&format!("addr add 198.18.0.{i}/24 dev br-phy"))?;
        node.ip("link set br-phy up")?;
        ovs.vsctl(&[
            "add-br",
            "br-int",
            "--",
            "set",
            "Bridge",
            "br-int",
            "datapath_type=netdev",
            "fail-mode=standalone",
        ])?;
        let pod = cl.lab.netns(&format!("p{i}"))?;
        let host_if = format!("pod{i}");
        cl.lab.veth(&pod, "eth0", &node, &host_if)?;
        pod.ip(&format!("addr add 198.19.{i}.11/16 dev eth0"))?;
        pod.ip(&format!("link set eth0 mtu {MTU}"))?;
        for (ns, dev) in [(&pod, "eth0"), (&node, host_if.as_str())] {
            ns.run(&[
                "ethtool", "-K", dev, "tso", "off", "gso", "off", "tx", "off",
            ])?;
        }
        ovs.vsctl(&["add-port", "br-int", &host_if])?;
        ovs.vsctl(&[
            "add-port",
            "br-int",
            "vx0",
            "--",
            "set",
            "interface",
            "vx0",
            "type=vxlan",
            &format!("options:remote_ip=198.18.0.{peer}"),
            "options:key=100",
        ])?;
        node.ip("link set br-int up")?;
        pods.push(pod);
    }
    let p2 = pods.pop().expect("two pods");
    let p1 = pods.pop().expect("two pods");
    Ok((p1, p2))
}

/// Pings `compare` sends per datapath and round (10 ms apart): 200 make the 99th
/// percentile the third-slowest, not the slowest.
pub const PINGS: u32 = 200;

/// The `p`-th percentile of `v` (`p` in 0..=100), nearest rank: the smallest value that
/// at least `p`% of the values do not exceed (NaN when empty; NaNs are left out).
pub fn percentile(v: &[f64], p: f64) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() || !(0.0..=100.0).contains(&p) {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let rank = (p / 100.0 * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// The median of `v` (NaN when empty).
pub fn median(v: &[f64]) -> f64 {
    let mut v: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let v: Vec<f64> = (1..=200).rev().map(f64::from).collect();
        assert_eq!(percentile(&v, 99.0), 198.0);
        assert_eq!(percentile(&v, 50.0), 100.0);
        assert_eq!(percentile(&v, 100.0), 200.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[0.3, f64::NAN, 0.1], 99.0), 0.3);
        assert!(percentile(&[], 99.0).is_nan());
        assert!(percentile(&v, 101.0).is_nan());
    }

    #[test]
    fn median_averages_the_middle_pair() {
        assert_eq!(median(&[4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert!(median(&[]).is_nan());
    }
}
