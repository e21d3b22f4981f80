//! [`Switch`]: a node's datapath, and the control-side operations on it.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use control::flow::{Bundle, Flow, FlowFilter, FlowMod};
use control::port::{PortKind as SpecKind, PortSpec};
use mio::{Poll, Waker};

use crate::drop::DropReason;
use crate::pipeline::{
    BundleOutcome, ExpiredFlow, FlowDump, InstallError, MacEntry, Pipeline, PortMap, SharedPipeline,
};
use crate::service::metrics::{PortStats, StatsSnapshot, TableStats};
use crate::service::{Config, Node, SavedState, state};

use super::io::{PortIo, PortSet};
use super::macs::SharedMacTable;
use super::worker::{WAKER_TOKEN, Worker};
use super::{Shared, WorkerStats};

/// Highest port number a port may be given (OpenFlow's reserved ports start above).
const MAX_OFPORT: u32 = 0xfeff;

/// How a switch is built.
#[derive(Clone, Debug)]
pub struct SwitchOptions {
    /// Worker threads (each with its own TAP queue and tunnel socket per port).
    pub workers: usize,
    /// Entries of each worker's flow cache.
    pub cache_entries: usize,
    /// Capacity of the MAC table of `normal`.
    pub mac_capacity: usize,
    /// Ageing of MAC table entries, in milliseconds.
    pub mac_ageing_ms: u64,
    /// Where the state is saved after each change (`None`: not saved).
    pub state_dir: Option<PathBuf>,
    /// TAP offloads (TSO/USO super-frames, checksum offload) with userspace
    /// segmentation, UDP GSO/GRO on the tunnels and coalescing towards the pods.
    pub offloads: bool,
    /// Pin worker `i` to CPU `i` (modulo the CPUs this process may use).
    pub pin_cpus: bool,
}

impl Default for SwitchOptions {
    fn default() -> Self {
        SwitchOptions {
            workers: 1,
            cache_entries: 8192,
            mac_capacity: crate::pipeline::normal::DEFAULT_CAPACITY,
            mac_ageing_ms: crate::pipeline::normal::DEFAULT_AGEING_MS,
            state_dir: None,
            offloads: true,
            pin_cpus: false,
        }
    }
}

/// Why a control-side operation on the switch failed; nothing changed.
#[derive(Debug, thiserror::Error)]
pub enum SwitchError {
    /// A port of that name exists.
    #[error("port '{0}' already exists")]
    PortExists(String),
    /// No port of that name.
    #[error("no port named '{0}'")]
    NoSuchPort(String),
    /// The requested port number is taken.
    #[error("port number {number} is taken by '{by}'")]
    NumberTaken {
        /// The number.
        number: u32,
        /// The port that has it.
        by: String,
    },
    /// No free port numbers.
    #[error("no free port number")]
    NoFreeNumber,
    /// A tunnel on a UDP port (and local address) where another tunnel of another
    /// type, or with the same `remote=`, is already.
    #[error(
        "udp port {0} is taken by tunnel '{1}' (tunnels may share a udp port only when they are of one type and local address and each has its own remote=)"
    )]
    UdpPortTaken(u16, String),
    /// The port description is invalid.
    #[error("{0}")]
    BadSpec(#[from] control::port::PortError),
    /// Opening the device or sockets failed.
    #[error("port '{name}': {error}")]
    Open {
        /// The port.
        name: String,
        /// What the system said.
        error: std::io::Error,
    },
    /// A flow change was refused.
    #[error("{0}")]
    Flows(#[from] InstallError),
    /// A dump filter was refused.
    #[error("{0}")]
    Filter(#[from] crate::pipeline::InstallErrorKind),
    /// A capture is running on the port already.
    #[error("a capture is already running on port '{0}'")]
    CaptureBusy(String),
    /// Saving the state failed (the change itself was made).
    #[error("saving state: {0}")]
    Save(String),
}

/// A port as `dump-ports` shows it.
#[derive(Clone, Debug)]
pub struct PortStatus {
    /// The port's description, with its number.
    pub spec: PortSpec,
    /// Received packets and bytes, sent packets and bytes.
    pub rx_packets: u64,
    /// Received bytes.
    pub rx_bytes: u64,
    /// Sent packets.
    pub tx_packets: u64,
    /// Sent bytes.
    pub tx_bytes: u64,
    /// Drops by reason label.
    pub drops: Vec<(String, u64)>,
    /// For tunnels: the inner MTU in force.
    pub mtu: Option<u16>,
}

/// Control-side state, changed by one writer at a time.
struct Control {
    /// Names of ports the config file declared (a reload may remove them).
    config_ports: BTreeSet<String>,
    /// Flows the config's flows file installed (a reload deletes those it drops).
    config_flows: Vec<Flow>,
    /// The last config applied.
    config: Option<Config>,
}

/// A node's datapath. See the module docs.
pub struct Switch {
    shared: Arc<Shared>,
    options: SwitchOptions,
    wakers: Vec<Waker>,
    stats: Vec<Arc<WorkerStats>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    control: Arc<Mutex<Control>>,
    stopped: AtomicBool,
}

impl std::fmt::Debug for Switch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Switch")
            .field("workers", &self.options.workers)
            .finish()
    }
}

impl Switch {
    /// Builds the switch, restores `saved` (ports re-attached, flows installed) and only
    /// then starts the workers, so no packet meets a half-restored node.
    pub fn start(options: SwitchOptions, saved: Option<SavedState>) -> Result<Switch, SwitchError> {
        let workers = options.workers.max(1);
        let shared = Arc::new(Shared {
            pipeline: SharedPipeline::new(Pipeline::new(PortMap::new())),
            ports: ArcSwap::from_pointee(PortSet::default()),
            macs: SharedMacTable::new(options.mac_capacity, options.mac_ageing_ms),
            stop: AtomicBool::new(false),
            start: Instant::now(),
        });
        let mut polls = Vec::with_capacity(workers);
        let mut wakers = Vec::with_capacity(workers);
        for _ in 0..workers {
            let poll = Poll::new().map_err(|error| SwitchError::Open {
                name: "poll".into(),
                error,
            })?;
            let waker =
                Waker::new(poll.registry(), WAKER_TOKEN).map_err(|error| SwitchError::Open {
                    name: "waker".into(),
                    error,
                })?;
            polls.push(poll);
            wakers.push(waker);
        }
        let stats: Vec<Arc<WorkerStats>> = (0..workers)
            .map(|_| Arc::new(WorkerStats::default()))
            .collect();
        let sw = Switch {
            shared,
            options: SwitchOptions { workers, ..options },
            wakers,
            stats,
            threads: Mutex::new(Vec::new()),
            control: Arc::new(Mutex::new(Control {
                config_ports: BTreeSet::new(),
                config_flows: Vec::new(),
                config: None,
            })),
            stopped: AtomicBool::new(false),
        };
        if let Some(saved) = saved {
            sw.restore(saved)?;
        }
        let mut threads = Vec::with_capacity(workers);
        for (id, poll) in polls.into_iter().enumerate() {
            let w = Worker::new(
                id,
                Arc::clone(&sw.shared),
                poll,
                Arc::clone(&sw.stats[id]),
                &sw.options,
            );
            let t = std::thread::Builder::new()
                .name(format!("weft-worker-{id}"))
                .spawn(move || w.run())
                .map_err(|error| SwitchError::Open {
                    name: "worker thread".into(),
                    error,
                })?;
            threads.push(t);
        }
        let shared = Arc::clone(&sw.shared);
        let control = Arc::clone(&sw.control);
        let state_dir = sw.options.state_dir.clone();
        threads.push(
            std::thread::Builder::new()
                .name("weft-expiry".into())
                .spawn(move || expiry_loop(&shared, &control, state_dir))
                .map_err(|error| SwitchError::Open {
                    name: "expiry thread".into(),
                    error,
                })?,
        );
        *sw.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(sw)
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn restore(&self, saved: SavedState) -> Result<(), SwitchError> {
        let _c = self.lock();
        for spec in saved.ports {
            self.add_port_locked(spec)?;
        }
        if !saved.flows.is_empty() {
            let flows = saved.flows.into_iter().enumerate().collect();
            self.shared
                .pipeline
                .apply(&Bundle::add_flows(flows), self.shared.now())?;
        }
        tracing::info!(
            ports = self.shared.ports.load().iter().count(),
            flows = self.shared.pipeline.load().len(),
            "restored saved state"
        );
        Ok(())
    }

    /// Milliseconds on the switch's clock.
    pub fn now(&self) -> u64 {
        self.shared.now()
    }

    /// Adds a port (number: `spec.ofport`, else the lowest free one) and returns its
    /// number. TAP devices are created or re-attached, tunnel sockets bound.
    pub fn add_port(&self, spec: PortSpec) -> Result<u32, SwitchError> {
        let _c = self.lock();
        let n = self.add_port_locked(spec)?;
        self.save_locked()?;
        Ok(n)
    }

    fn add_port_locked(&self, mut spec: PortSpec) -> Result<u32, SwitchError> {
        spec.validate()?;
        let current = self.shared.ports.load_full();
        if current.iter().any(|p| p.spec.name == spec.name) {
            return Err(SwitchError::PortExists(spec.name));
        }
        let number = match spec.ofport {
            Some(n) => {
                if let Some(p) = current.get(n) {
                    return Err(SwitchError::NumberTaken {
                        number: n,
                        by: p.spec.name.clone(),
                    });
                }
                n
            }
            None => (1..=MAX_OFPORT)
                .find(|n| current.get(*n).is_none())
                .ok_or(SwitchError::NoFreeNumber)?,
        };
        let shared = current
            .udp_sharing(&spec)
            .map_err(|by| SwitchError::UdpPortTaken(spec.udp_port().unwrap_or_default(), by))?;
        spec.ofport = Some(number);
        let io = PortIo::open(&spec, self.options.workers, shared, self.options.offloads).map_err(
            |error| SwitchError::Open {
                name: spec.name.clone(),
                error,
            },
        )?;
        if let super::io::PortDev::Tap(t) = &io.dev {
            tracing::info!(
                port = %spec.name, ofport = number, ifname = t.ifname(), netns = ?t.netns(),
                reattached = t.reattached(), "tap port up"
            );
        } else {
            tracing::info!(port = %spec.name, ofport = number, mtu = ?io.tunnel.as_ref().map(|t| t.mtu), "tunnel port up");
        }
        let mut ports: Vec<Arc<PortIo>> = current.iter().cloned().collect();
        ports.push(Arc::new(io));
        self.publish_ports(ports, current.version + 1);
        Ok(number)
    }

    /// Deletes a port: its TAP device is removed (once the workers let go of it), its
    /// sockets closed, its learned MAC addresses forgotten. Flows that name it stay
    /// (as in OVS); output to it counts as `no_such_port`.
    pub fn del_port(&self, name: &str) -> Result<(), SwitchError> {
        let mut c = self.lock();
        self.del_port_locked(name)?;
        c.config_ports.remove(name);
        self.save_locked()
    }

    fn del_port_locked(&self, name: &str) -> Result<(), SwitchError> {
        let current = self.shared.ports.load_full();
        let Some(gone) = current.iter().find(|p| p.spec.name == name).cloned() else {
            return Err(SwitchError::NoSuchPort(name.to_string()));
        };
        if let super::io::PortDev::Tap(t) = &gone.dev
            && let Err(e) = t.unpersist()
        {
            tracing::warn!(port = name, "{e}");
        }
        let ports: Vec<Arc<PortIo>> = current
            .iter()
            .filter(|p| p.spec.name != name)
            .cloned()
            .collect();
        self.publish_ports(ports, current.version + 1);
        self.shared.macs.flush_port(gone.ofport);
        tracing::info!(port = name, ofport = gone.ofport, "port deleted");
        Ok(())
    }

    fn publish_ports(&self, ports: Vec<Arc<PortIo>>, version: u64) {
        let set = PortSet::new(version, ports);
        self.shared.pipeline.set_ports(set.port_map());
        self.shared.ports.store(Arc::new(set));
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Applies a bundle of flow changes atomically.
    pub fn apply(&self, bundle: &Bundle) -> Result<BundleOutcome, SwitchError> {
        let _c = self.lock();
        let outcome = self.shared.pipeline.apply(bundle, self.shared.now())?;
        self.save_locked()?;
        Ok(outcome)
    }

    /// The flows selected by `filter`, with their counters.
    pub fn dump_flows(&self, filter: &FlowFilter) -> Result<Vec<FlowDump>, SwitchError> {
        Ok(self
            .shared
            .pipeline
            .load()
            .dump(filter, self.shared.now())?)
    }

    /// The current pipeline snapshot (for trace and statistics).
    pub fn pipeline(&self) -> Arc<Pipeline> {
        self.shared.pipeline.load_full()
    }

    /// Every port with its counters.
    pub fn ports(&self) -> Vec<PortStatus> {
        self.shared
            .ports
            .load()
            .iter()
            .map(|p| {
                let (rx_packets, rx_bytes, tx_packets, tx_bytes) = p.counters.totals();
                PortStatus {
                    spec: p.spec.clone(),
                    rx_packets,
                    rx_bytes,
                    tx_packets,
                    tx_bytes,
                    drops: p
                        .counters
                        .drops()
                        .into_iter()
                        .map(|(d, n)| (d.label(), n))
                        .collect(),
                    mtu: p.tunnel.as_ref().map(|t| t.mtu),
                }
            })
            .collect()
    }

    /// Starts capturing the frames a port receives and sends (at most `snaplen` bytes
    /// of each); one capture per port at a time. Stop it with [`Switch::stop_capture`].
    pub fn start_capture(
        &self,
        port: &str,
        snaplen: usize,
    ) -> Result<Arc<super::capture::Capture>, SwitchError> {
        let ports = self.shared.ports.load();
        let p = ports
            .iter()
            .find(|p| p.spec.name == port)
            .ok_or_else(|| SwitchError::NoSuchPort(port.to_string()))?;
        let cap = Arc::new(super::capture::Capture::new(snaplen));
        let prev = p.capture.compare_and_swap(
            &None::<Arc<super::capture::Capture>>,
            Some(Arc::clone(&cap)),
        );
        if prev.is_some() {
            return Err(SwitchError::CaptureBusy(port.to_string()));
        }
        Ok(cap)
    }

    /// Stops a capture started by [`Switch::start_capture`] (if the port still exists).
    pub fn stop_capture(&self, port: &str, cap: &Arc<super::capture::Capture>) {
        if let Some(p) = self
            .shared
            .ports
            .load()
            .iter()
            .find(|p| p.spec.name == port)
        {
            let cur = p.capture.load_full();
            if cur.as_ref().is_some_and(|c| Arc::ptr_eq(c, cap)) {
                p.capture.store(None);
            }
        }
    }

    /// `(capacity, evictions)` of the MAC table.
    pub fn mac_stats(&self) -> (u64, u64) {
        (
            self.shared.macs.capacity() as u64,
            self.shared.macs.evictions(),
        )
    }

    /// The learned MAC addresses.
    pub fn mac_entries(&self) -> Vec<MacEntry> {
        self.shared.macs.entries(self.shared.now())
    }

    /// `(hits, misses)` of the workers' flow caches.
    pub fn cache_stats(&self) -> (u64, u64) {
        self.stats.iter().fold((0, 0), |(h, m), s| {
            (
                h + s.cache_hits.load(Ordering::Relaxed),
                m + s.cache_misses.load(Ordering::Relaxed),
            )
        })
    }

    /// The state to persist: ports (with numbers) and flows.
    pub fn state(&self) -> SavedState {
        let ports = self
            .shared
            .ports
            .load()
            .iter()
            .map(|p| p.spec.clone())
            .collect();
        SavedState {
            ports,
            flows: self.shared.pipeline.load().flows(),
            ..SavedState::default()
        }
    }

    fn save_locked(&self) -> Result<(), SwitchError> {
        match &self.options.state_dir {
            Some(dir) => {
                state::save(dir, &self.state()).map_err(|e| SwitchError::Save(e.to_string()))
            }
            None => Ok(()),
        }
    }

    /// Applies (or re-applies, on SIGHUP) a configuration's ports and flows file:
    /// new ports are added, ports the previous config declared and this one does not
    /// are deleted, changed ones are re-created; the flows file is installed as one
    /// bundle that also deletes the flows an earlier version of the file had and this
    /// one has not. Ports and flows added through the control socket are left alone.
    pub fn apply_config(&self, cfg: &Config) -> Result<(), SwitchError> {
        let mut c = self.lock();
        let current = self.shared.ports.load_full();
        for spec in &cfg.ports {
            let existing = current.iter().find(|p| p.spec.name == spec.name);
            match existing {
                None => {
                    self.add_port_locked(spec.clone())?;
                }
                Some(p) if !same_port(&p.spec, spec) => {
                    if matches!(p.spec.kind, SpecKind::Tap(_))
                        && matches!(spec.kind, SpecKind::Tap(_))
                    {
                        tracing::warn!(
                            port = %spec.name,
                            "the config changes a tap port's options; delete and re-add it to apply them (that removes the device)"
                        );
                    } else {
                        self.del_port_locked(&spec.name)?;
                        self.add_port_locked(spec.clone())?;
                    }
                }
                Some(_) => {}
            }
            c.config_ports.insert(spec.name.clone());
        }
        let declared: Vec<String> = c.config_ports.iter().cloned().collect();
        for name in declared {
            if !cfg.ports.iter().any(|p| p.name == name) {
                if self.del_port_locked(&name).is_ok() {
                    tracing::info!(port = %name, "removed: no longer in the config");
                }
                c.config_ports.remove(&name);
            }
        }
        let new_flows: Vec<Flow> = cfg.flows.iter().map(|(_, f)| f.clone()).collect();
        let mut changes = Vec::new();
        let mut lines = Vec::new();
        for old in &c.config_flows {
            if !new_flows.iter().any(|f| f.same_identity(old)) {
                changes.push(FlowMod::DeleteStrict {
                    filter: FlowFilter {
                        table: Some(old.table),
                        cookie: None,
                        priority: Some(old.priority),
                        matches: old.matches.clone(),
                    },
                });
                lines.push(0);
            }
        }
        for (line, f) in &cfg.flows {
            changes.push(FlowMod::Add { flow: f.clone() });
            lines.push(*line);
        }
        if !changes.is_empty() {
            self.shared
                .pipeline
                .apply(&Bundle { changes, lines }, self.shared.now())?;
        }
        c.config_flows = new_flows;
        c.config = Some(cfg.clone());
        self.save_locked()
    }

    /// The statistics the metrics endpoint serves.
    pub fn stats(&self) -> StatsSnapshot {
        let pipe = self.shared.pipeline.load_full();
        let ports = self
            .shared
            .ports
            .load()
            .iter()
            .map(|p| {
                let (rx_packets, rx_bytes, tx_packets, tx_bytes) = p.counters.totals();
                PortStats {
                    name: p.spec.name.clone(),
                    ofport: p.ofport,
                    port_type: p.spec.port_type().as_str(),
                    rx_packets,
                    rx_bytes,
                    tx_packets,
                    tx_bytes,
                    drops: p
                        .counters
                        .drops()
                        .into_iter()
                        .map(|(d, n)| (d.label(), n))
                        .collect(),
                }
            })
            .collect();
        let tables = (0..=253u8)
            .filter(|t| pipe.table_len(*t) > 0 || pipe.table_stats(*t).lookups() > 0)
            .map(|t| {
                let s = pipe.table_stats(t);
                TableStats {
                    id: t,
                    flows: pipe.table_len(t) as u64,
                    lookups: s.lookups(),
                    matches: s.matches(),
                    misses: s.misses(),
                }
            })
            .collect();
        let (cache_hits, cache_misses) = self.cache_stats();
        StatsSnapshot {
            ports,
            tables,
            cache_hits,
            cache_misses,
            drops: pipe
                .drops()
                .snapshot()
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
            flow_drops: pipe.drop_flow_counts(),
            pipeline_version: pipe.version(),
            mac_entries: self.shared.macs.entries(self.shared.now()).len() as u64,
            mac_capacity: self.shared.macs.capacity() as u64,
            mac_evictions: self.shared.macs.evictions(),
            mac_moves: self.shared.macs.moves(),
        }
    }

    /// Stops the workers (TAP devices stay, so the pods keep their configuration) and
    /// saves the state.
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &self.wakers {
            let _ = w.wake();
        }
        let threads: Vec<_> = self
            .threads
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .collect();
        for t in threads {
            let _ = t.join();
        }
        let _c = self.lock();
        if let Err(e) = self.save_locked() {
            tracing::error!("{e}");
        }
    }

    /// Counts one drop in the pipeline's counters (for tests and tools).
    pub fn count_drop(&self, reason: DropReason) {
        self.shared.pipeline.load().count_drop(reason);
    }
}

impl Drop for Switch {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Two specs describe the same port (the number is kept when the config has none).
fn same_port(running: &PortSpec, wanted: &PortSpec) -> bool {
    let mut w = wanted.clone();
    if w.ofport.is_none() {
        w.ofport = running.ofport;
    }
    *running == w
}

fn expiry_loop(shared: &Shared, control: &Mutex<Control>, state_dir: Option<PathBuf>) {
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        // Under the control lock, so that expiry and control changes save in turn.
        let _c = control.lock().unwrap_or_else(|e| e.into_inner());
        let gone: Vec<ExpiredFlow> = shared.pipeline.expire(shared.now());
        if !gone.is_empty() {
            tracing::debug!(flows = gone.len(), "flows expired");
            if let Some(dir) = &state_dir {
                let st = SavedState {
                    ports: shared.ports.load().iter().map(|p| p.spec.clone()).collect(),
                    flows: shared.pipeline.load().flows(),
                    ..SavedState::default()
                };
                if let Err(e) = state::save(dir, &st) {
                    tracing::error!("saving state after expiry: {e}");
                }
            }
        }
    }
}

impl Node for Switch {
    fn apply_config(&self, cfg: &Config) -> anyhow::Result<()> {
        Switch::apply_config(self, cfg).map_err(anyhow::Error::from)
    }

    fn saved_state(&self) -> SavedState {
        self.state()
    }

    fn stats(&self) -> StatsSnapshot {
        Switch::stats(self)
    }

    fn shutdown(&self) {
        self.stop();
    }
}
