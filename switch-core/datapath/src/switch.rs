//! [`Switch`]: a node's datapath, and the control-side operations on it.
//!
//! Every change from the control socket is validated, then its net effect is appended
//! to the state store's journal (one write, no fsync: see `weftd::state`), and only
//! then published: if the append fails the change is refused and nothing changed (the
//! failure is logged). The cost of saving is the change's, not the table's. The
//! config file's ports and flows, and flow expiry, are the exception: the file itself
//! is their record (applied again at every start), and expired flows are gone, so a
//! failed append is logged and not undone, and a snapshot is written soon instead.
//!
//! The `weft-state` thread fsyncs the journal every 100 ms when something was
//! appended, and writes a snapshot of the whole state when the store says the journal
//! has grown enough: it takes the snapshot's sequence number, the ports and the
//! current (immutable) pipeline version under the control lock, and walks the flows
//! into the snapshot without it, so changes go on meanwhile.
//!
//! A port whose device or sockets cannot be opened at start (its pod's namespace is
//! gone, its local address is missing) does not stop the node: it is kept *down*, with
//! its name and number (flows may still name it, and it stays in the saved state),
//! shown as down by `show`, `dump-ports` and the metrics, and opened again every
//! [`PORT_RETRY`] until it comes up or `del-port` removes it.

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use mio::{Poll, Waker};
use weft_flow::port::{PortKind as SpecKind, PortSpec};
use weft_flow::{Bundle, Flow, FlowFilter, FlowMod};

use crate::port::Attach;
use crate::port::netns::{NetnsId, netns_id};
use crate::state::{ChangeText, Record, SavedState, StateStore};
use crate::stats::{PortStats, StatsSnapshot, TableStats};
use weft_pipeline::drop::DropReason;
use weft_pipeline::{
    BundleOutcome, ExpiredFlow, FlowDump, FlowLimits, InstallError, MacEntry, NetChange, Pipeline,
    PortMap, SharedPipeline,
};

use super::io::{PortDev, PortIo, PortSet};
use super::worker::{WAKER_TOKEN, Worker};
use super::{Shared, WorkerStats};
use weft_pipeline::macs::SharedMacTable;

/// Highest port number a port may be given (OpenFlow's reserved ports start above).
const MAX_OFPORT: u32 = 0xfeff;

/// How often a port that is down is opened again.
pub const PORT_RETRY: Duration = Duration::from_secs(5);

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
    /// Where each change is journaled and the state snapshotted (`None`: not saved).
    pub state_store: Option<Arc<dyn StateStore>>,
    /// TAP offloads (TSO/USO super-frames, checksum offload) with userspace
    /// segmentation, UDP GSO/GRO on the tunnels and coalescing towards the pods.
    pub offloads: bool,
    /// Pin worker `i` to CPU `i` (modulo the CPUs this process may use), and steer each
    /// multi-queue TAP's frames to the queue of the CPU that sent them, so that the
    /// worker on that CPU reads them without a cross-CPU wake-up (`port::steer`).
    pub pin_cpus: bool,
    /// How many flows the tables may hold (a bundle that would exceed it is refused).
    pub flow_limits: FlowLimits,
    /// Carry VXLAN/Geneve over the tunnel-GSO underlay port (a TAP joined to the
    /// underlay device, `port::underlay`) when the kernel has it (probed at start; Linux
    /// 6.17+) and offloads are on; else, or when off, the tunnels' sockets only.
    pub tunnel_gso: bool,
}

impl Default for SwitchOptions {
    fn default() -> Self {
        SwitchOptions {
            workers: 1,
            cache_entries: 8192,
            mac_capacity: weft_pipeline::normal::DEFAULT_CAPACITY,
            mac_ageing_ms: weft_pipeline::normal::DEFAULT_AGEING_MS,
            state_store: None,
            offloads: true,
            pin_cpus: false,
            flow_limits: FlowLimits::default(),
            tunnel_gso: false,
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
    BadSpec(#[from] weft_flow::port::PortError),
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
    Filter(#[from] weft_pipeline::InstallErrorKind),
    /// A capture is running on the port already.
    #[error("a capture is already running on port '{0}'")]
    CaptureBusy(String),
    /// The TAP device belongs to another port of this switch.
    #[error("tap device '{ifname}'{} belongs to port '{by}'", netns.as_ref().map(|n| format!(" in network namespace '{n}'")).unwrap_or_default())]
    TapOwned {
        /// The device's name.
        ifname: String,
        /// Its namespace (`None`: weftd's own).
        netns: Option<String>,
        /// The port that owns it.
        by: String,
    },
    /// Journaling the change failed: the change was refused and not applied.
    #[error("{0}; the change was not applied")]
    Save(String),
}

/// Whether a port is forwarding.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortState {
    /// Its device or sockets are open.
    Up,
    /// They could not be opened (retried every [`PORT_RETRY`]); why, the last time.
    Down(String),
}

/// A port whose device or sockets could not be opened: kept with its number, retried.
#[derive(Clone, Debug)]
struct DownPort {
    spec: PortSpec,
    error: String,
    next_try: Instant,
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
    /// Up, or down and why.
    pub state: PortState,
    /// For VXLAN/Geneve: which underlay carries it (`tunnel-GSO TAP wgso4789`, or
    /// `sockets (why)`).
    pub underlay: Option<String>,
}

/// Control-side state, changed by one writer at a time.
struct Control {
    /// A change was applied that the journal does not hold (an append failed for a
    /// change that is not refused: expiry, the config file): a snapshot is due.
    snapshot_needed: bool,
    /// Names of ports the config file declared (a reload may remove them).
    config_ports: BTreeSet<String>,
    /// Flows the config's flows file installed (a reload deletes those it drops).
    config_flows: Vec<Flow>,
    /// Whether a configuration was applied (the first one, at start, may re-attach
    /// TAP devices and keep ports down; a reload may not).
    config_applied: bool,
}

/// A configuration's ports and flows (each with its line), applied at start.
type FirstConfig<'a> = (&'a [PortSpec], &'a [(usize, Flow)]);

/// What opening, publishing and retrying ports needs; shared with the expiry thread,
/// which retries the ports that are down.
struct Ports {
    shared: Arc<Shared>,
    options: SwitchOptions,
    /// Why the tunnel-GSO underlay port is not used (`None`: it is).
    gso_why: Option<String>,
    wakers: Vec<Waker>,
    down: Mutex<Vec<DownPort>>,
}

/// A node's datapath. See the module docs.
pub struct Switch {
    shared: Arc<Shared>,
    options: SwitchOptions,
    ports: Arc<Ports>,
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
        Self::launch(options, saved, None)
    }

    /// [`Switch::start`], then the first [`Switch::apply_config`] of `ports` and
    /// `flows`, all before the workers start: a frame that arrives while the node comes
    /// up waits in its device's queue until the configured flows are in place, and is
    /// never dropped as a table miss because the ports opened a moment before the
    /// flows were installed.
    pub fn start_with_config(
        options: SwitchOptions,
        saved: Option<SavedState>,
        ports: &[PortSpec],
        flows: &[(usize, Flow)],
    ) -> Result<Switch, SwitchError> {
        Self::launch(options, saved, Some((ports, flows)))
    }

    fn launch(
        options: SwitchOptions,
        saved: Option<SavedState>,
        config: Option<FirstConfig<'_>>,
    ) -> Result<Switch, SwitchError> {
        let workers = options.workers.max(1);
        // Pinned workers read the frames sent on their own CPU (`port::steer`).
        crate::port::steer::set_enabled(options.pin_cpus);
        let shared = Arc::new(Shared {
            pipeline: SharedPipeline::new(
                Pipeline::with_lanes(PortMap::new(), workers).with_limits(options.flow_limits),
            ),
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
        let mut options = SwitchOptions { workers, ..options };
        let gso_why = tunnel_gso_in_use(&options).err();
        options.tunnel_gso = gso_why.is_none();
        let sw = Switch {
            ports: Arc::new(Ports {
                shared: Arc::clone(&shared),
                options: options.clone(),
                gso_why,
                wakers,
                down: Mutex::new(Vec::new()),
            }),
            shared,
            options,
            stats,
            threads: Mutex::new(Vec::new()),
            control: Arc::new(Mutex::new(Control {
                snapshot_needed: false,
                config_ports: BTreeSet::new(),
                config_flows: Vec::new(),
                config_applied: false,
            })),
            stopped: AtomicBool::new(false),
        };
        if let Some(saved) = saved {
            sw.restore(saved)?;
        }
        if let Some((ports, flows)) = config {
            sw.apply_config(ports, flows)?;
        }
        let mut threads = Vec::with_capacity(workers);
        // The versions the workers leave are freed here, not on a worker (worker::held).
        let (retired, reclaim) = crate::worker::held::retired_channel();
        for (id, poll) in polls.into_iter().enumerate() {
            let w = Worker::new(
                id,
                Arc::clone(&sw.shared),
                poll,
                Arc::clone(&sw.stats[id]),
                &sw.options,
                retired.clone(),
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
        // Only the workers hold senders: the reclaimer ends when the last worker does.
        drop(retired);
        threads.push(
            std::thread::Builder::new()
                .name("weft-reclaim".into())
                .spawn(move || crate::worker::held::reclaim_loop(&reclaim))
                .map_err(|error| SwitchError::Open {
                    name: "reclaim thread".into(),
                    error,
                })?,
        );
        let ports = Arc::clone(&sw.ports);
        let control = Arc::clone(&sw.control);
        threads.push(
            std::thread::Builder::new()
                .name("weft-expiry".into())
                .spawn(move || expiry_loop(&ports, &control))
                .map_err(|error| SwitchError::Open {
                    name: "expiry thread".into(),
                    error,
                })?,
        );
        if let Some(store) = sw.options.state_store.clone() {
            let ports = Arc::clone(&sw.ports);
            let control = Arc::clone(&sw.control);
            threads.push(
                std::thread::Builder::new()
                    .name("weft-state".into())
                    .spawn(move || state_loop(&ports, &control, &*store))
                    .map_err(|error| SwitchError::Open {
                        name: "state thread".into(),
                        error,
                    })?,
            );
        }
        *sw.threads.lock().unwrap_or_else(|e| e.into_inner()) = threads;
        Ok(sw)
    }

    fn lock(&self) -> MutexGuard<'_, Control> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Re-attaches the saved ports (one that cannot be opened is kept down, see the
    /// module docs) and installs the saved flows.
    fn restore(&self, saved: SavedState) -> Result<(), SwitchError> {
        let _c = self.lock();
        let SavedState { ports, flows, .. } = saved;
        for spec in ports {
            match self.ports.add(spec.clone(), Attach::CreateOrReattach) {
                Ok(_) => {}
                // Not a port that can be kept (a second port of one name or number in
                // the file): it is left out.
                Err(e @ (SwitchError::PortExists(_) | SwitchError::NumberTaken { .. })) => {
                    tracing::error!(port = %spec.name, "saved port left out: {e}");
                }
                Err(e) => self.ports.keep_down(spec, &e),
            }
        }
        if !flows.is_empty() {
            let flows = flows.into_iter().enumerate().collect();
            self.shared
                .pipeline
                .apply(&Bundle::add_flows(flows), self.shared.now())?;
        }
        let down = self.ports.down().len();
        tracing::info!(
            ports = self.shared.ports.load().iter().count(),
            down,
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
    ///
    /// A TAP device is created: one that exists already (another port's, or anyone
    /// else's) is refused and left alone. The port is saved before it is published;
    /// if the save fails it is closed again (its new device removed) and refused.
    pub fn add_port(&self, mut spec: PortSpec) -> Result<u32, SwitchError> {
        let mut c = self.lock();
        let shared = self.ports.check_new(&mut spec)?;
        let io = self.ports.open(&spec, shared, Attach::Create)?;
        let record = [Record::AddPort(spec.clone())];
        if let Err(e) = self.record(&mut c, &record, &format!("add-port '{}'", spec.name)) {
            if let PortDev::Tap(t) = &io.dev
                && !t.reattached()
                && let Err(u) = t.unpersist()
            {
                tracing::warn!(port = %spec.name, "{u}");
            }
            return Err(e);
        }
        Ok(self.ports.publish_new(io))
    }

    /// The ports that are down, with why.
    pub fn down_ports(&self) -> Vec<(PortSpec, String)> {
        self.ports
            .down()
            .iter()
            .map(|d| (d.spec.clone(), d.error.clone()))
            .collect()
    }

    /// Deletes a port: its TAP device is removed (once the workers let go of it), its
    /// sockets closed, its learned MAC addresses forgotten. Flows that name it stay
    /// (as in OVS); output to it counts as `no_such_port`.
    ///
    /// A port that is down is deleted as well (it is no longer retried). The deletion
    /// is journaled first; if that fails the port stays.
    pub fn del_port(&self, name: &str) -> Result<(), SwitchError> {
        let mut c = self.lock();
        if !self.ports.specs().iter().any(|p| p.name == name) {
            return Err(SwitchError::NoSuchPort(name.to_string()));
        }
        let record = [Record::DelPort(name.to_string())];
        self.record(&mut c, &record, &format!("del-port '{name}'"))?;
        self.del_port_locked(name)?;
        c.config_ports.remove(name);
        Ok(())
    }

    fn del_port_locked(&self, name: &str) -> Result<(), SwitchError> {
        let current = self.shared.ports.load_full();
        let Some(gone) = current.iter().find(|p| p.spec.name == name).cloned() else {
            let mut down = self.ports.down();
            let Some(at) = down.iter().position(|d| d.spec.name == name) else {
                return Err(SwitchError::NoSuchPort(name.to_string()));
            };
            let d = down.remove(at);
            drop(down);
            // The reserved name goes with it.
            self.ports
                .publish(current.iter().cloned().collect(), current.version + 1);
            tracing::info!(port = name, ofport = ?d.spec.ofport, "port deleted (it was down)");
            return Ok(());
        };
        if let PortDev::Tap(t) = &gone.dev
            && let Err(e) = t.unpersist()
        {
            tracing::warn!(port = name, "{e}");
        }
        let ports: Vec<Arc<PortIo>> = current
            .iter()
            .filter(|p| p.spec.name != name)
            .cloned()
            .collect();
        self.ports.publish(ports, current.version + 1);
        self.shared.macs.flush_port(gone.ofport);
        tracing::info!(port = name, ofport = gone.ofport, "port deleted");
        Ok(())
    }

    /// Applies a bundle of flow changes atomically: validated, its net effect
    /// journaled, and only then published; if the journal append fails nothing
    /// changes. A bundle that changes nothing writes nothing.
    pub fn apply(&self, bundle: &Bundle) -> Result<BundleOutcome, SwitchError> {
        self.apply_with_text(bundle, &|_| None)
    }

    /// [`apply`](Self::apply) of a bundle that came as flow text: `text(i)` is the line
    /// change `i` was parsed from, which the journal may keep as it is (see
    /// [`StateStore::append_net_text`]).
    pub fn apply_with_text(
        &self,
        bundle: &Bundle,
        text: ChangeText<'_>,
    ) -> Result<BundleOutcome, SwitchError> {
        let mut c = self.lock();
        self.shared
            .pipeline
            .apply_then(bundle, self.shared.now(), |_, net| {
                self.record_net(&mut c, &net, text, "flow change")
            })
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

    /// Every port with its counters (a port that is down has none), by number.
    pub fn ports(&self) -> Vec<PortStatus> {
        let all = self.shared.ports.load();
        let mut v: Vec<PortStatus> = all
            .iter()
            .map(|p| {
                p.sync_kernel_counts(&all);
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
                    state: PortState::Up,
                    underlay: match &p.dev {
                        PortDev::Udp(u) => Some(u.sockets.underlay_desc()),
                        _ => None,
                    },
                }
            })
            .collect();
        v.extend(self.ports.down().iter().map(|d| PortStatus {
            spec: d.spec.clone(),
            rx_packets: 0,
            rx_bytes: 0,
            tx_packets: 0,
            tx_bytes: 0,
            drops: Vec::new(),
            mtu: None,
            state: PortState::Down(d.error.clone()),
            underlay: None,
        }));
        v.sort_by_key(|p| p.spec.ofport);
        v
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

    /// The state to persist: ports (with numbers, those that are down too) and flows.
    pub fn state(&self) -> SavedState {
        self.ports.state()
    }

    /// Journals a change from the control socket (`records`; nothing when empty). A
    /// failure is logged as `what` refused.
    fn record(&self, _c: &mut Control, records: &[Record], what: &str) -> Result<(), SwitchError> {
        append(&self.options, records).map_err(|e| {
            tracing::error!("{what} refused: {e}");
            SwitchError::Save(e.to_string())
        })
    }

    /// Journals a bundle's net change from the control socket (nothing when it changed
    /// nothing), as [`record`](Self::record) does its records.
    fn record_net(
        &self,
        _c: &mut Control,
        net: &NetChange<'_>,
        text: ChangeText<'_>,
        what: &str,
    ) -> Result<(), SwitchError> {
        match &self.options.state_store {
            Some(store) if !net.is_empty() => store.append_net_text(net, text).map_err(|e| {
                tracing::error!("{what} refused: {e}");
                SwitchError::Save(e.to_string())
            }),
            _ => Ok(()),
        }
    }

    /// Applies (or re-applies, on SIGHUP) a configuration's `ports` and flows file
    /// (`flows`, each with its line number):
    /// new ports are added, ports the previous config declared and this one does not
    /// are deleted, changed ones are re-created; the flows file is installed as one
    /// bundle that also deletes the flows an earlier version of the file had and this
    /// one has not. Ports and flows added through the control socket are left alone.
    ///
    /// At start (the first call) the config's TAP ports may re-attach to their
    /// devices, and a port that cannot be opened is kept down like a saved one; on a
    /// reload a new port must create its device and any error fails the reload. A
    /// failed save afterwards is logged, not returned: the config file is the record
    /// of what it declares.
    pub fn apply_config(
        &self,
        ports: &[PortSpec],
        flows: &[(usize, Flow)],
    ) -> Result<(), SwitchError> {
        let mut c = self.lock();
        let first = !c.config_applied;
        c.config_applied = true;
        let attach = if first {
            Attach::CreateOrReattach
        } else {
            Attach::Create
        };
        let current = self.shared.ports.load_full();
        let down: Vec<PortSpec> = self.ports.down().iter().map(|d| d.spec.clone()).collect();
        // What the config changed, journaled at the end (a failure is logged).
        let mut records = Vec::new();
        for spec in ports {
            let existing = current
                .iter()
                .map(|p| &p.spec)
                .chain(down.iter())
                .find(|p| p.name == spec.name);
            match existing {
                None => {
                    let mut numbered = spec.clone();
                    let added = self.ports.check_new(&mut numbered).and_then(|shared| {
                        let io = self.ports.open(&numbered, shared, attach)?;
                        Ok(self.ports.publish_new(io))
                    });
                    match added {
                        Ok(_) => records.push(Record::AddPort(numbered)),
                        Err(e @ SwitchError::Open { .. }) if first => {
                            records.push(Record::AddPort(numbered.clone()));
                            self.ports.keep_down(numbered, &e)
                        }
                        Err(e) => return Err(e),
                    }
                }
                Some(p) if !p.same_port(spec) => {
                    if matches!(p.kind, SpecKind::Tap(_)) && matches!(spec.kind, SpecKind::Tap(_)) {
                        tracing::warn!(
                            port = %spec.name,
                            "the config changes a tap port's options; delete and re-add it to apply them (that removes the device)"
                        );
                    } else {
                        self.del_port_locked(&spec.name)?;
                        records.push(Record::DelPort(spec.name.clone()));
                        let mut numbered = spec.clone();
                        let n = self.ports.add(numbered.clone(), attach)?;
                        numbered.ofport = Some(n);
                        records.push(Record::AddPort(numbered));
                    }
                }
                Some(_) => {}
            }
            c.config_ports.insert(spec.name.clone());
        }
        let declared: Vec<String> = c.config_ports.iter().cloned().collect();
        for name in declared {
            if !ports.iter().any(|p| p.name == name) {
                if self.del_port_locked(&name).is_ok() {
                    tracing::info!(port = %name, "removed: no longer in the config");
                    records.push(Record::DelPort(name.clone()));
                }
                c.config_ports.remove(&name);
            }
        }
        let new_flows: Vec<Flow> = flows.iter().map(|(_, f)| f.clone()).collect();
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
        for (line, f) in flows {
            changes.push(FlowMod::Add { flow: f.clone() });
            lines.push(*line);
        }
        if !changes.is_empty() {
            self.shared.pipeline.apply_then(
                &Bundle { changes, lines },
                self.shared.now(),
                |_, net| -> Result<(), SwitchError> {
                    records.extend(net_records(net));
                    Ok(())
                },
            )?;
        }
        c.config_flows = new_flows;
        if let Err(e) = append(&self.options, &records) {
            c.snapshot_needed = true;
            tracing::error!(
                "cannot save state: {e}; the configuration is applied (and is applied again from the config file at the next start)"
            );
        }
        Ok(())
    }

    /// The statistics the metrics endpoint serves.
    pub fn stats(&self) -> StatsSnapshot {
        let pipe = self.shared.pipeline.load_full();
        let all = self.shared.ports.load();
        let mut ports: Vec<PortStats> = all
            .iter()
            .map(|p| {
                p.sync_kernel_counts(&all);
                let (rx_packets, rx_bytes, tx_packets, tx_bytes) = p.counters.totals();
                PortStats {
                    up: true,
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
        ports.extend(self.ports.down().iter().map(|d| PortStats {
            up: false,
            name: d.spec.name.clone(),
            ofport: d.spec.ofport.unwrap_or(0),
            port_type: d.spec.port_type().as_str(),
            ..PortStats::default()
        }));
        ports.sort_by_key(|p| p.ofport);
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
            tunnel_gso: self.options.tunnel_gso,
        }
    }

    /// Stops the workers (TAP devices stay, so the pods keep their configuration) and
    /// makes the journal durable (and writes a snapshot if one is due).
    pub fn stop(&self) {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        self.shared.stop.store(true, Ordering::SeqCst);
        for w in &self.ports.wakers {
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
        if let Some(store) = &self.options.state_store {
            if let Err(e) = store.sync() {
                tracing::error!("saving state at stop: {e}");
            }
            let needed = self.lock().snapshot_needed;
            if (needed || store.snapshot_due())
                && let Err(e) = snapshot(&self.ports, &self.control, &**store)
            {
                tracing::error!("writing the state snapshot at stop: {e}");
            }
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

/// Removes expired flows (saving the state after) and retries the ports that are down.
fn expiry_loop(ports: &Ports, control: &Mutex<Control>) {
    let shared = &ports.shared;
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(200));
        // Under the control lock, so that expiry, retries and control changes go in turn.
        let mut c = control.lock().unwrap_or_else(|e| e.into_inner());
        ports.retry_down();
        let gone: Vec<ExpiredFlow> = shared.pipeline.expire(shared.now());
        if !gone.is_empty() {
            tracing::debug!(flows = gone.len(), "flows expired");
            let records: Vec<Record> = gone
                .into_iter()
                .map(|e| {
                    let mut f = e.flow.flow;
                    f.actions.clear();
                    Record::DelFlow(f)
                })
                .collect();
            if let Err(e) = append(&ports.options, &records) {
                c.snapshot_needed = true;
                tracing::error!("saving state after expiry: {e}; a snapshot will follow");
            }
        }
    }
}

/// A bundle's net change as journal records: tables cleared first, then the flows
/// removed and the flows added (disjoint identities).
fn net_records(net: NetChange<'_>) -> Vec<Record> {
    let mut v = Vec::with_capacity(net.cleared.len() + net.deleted.len() + net.added_len());
    let NetChange {
        cleared,
        added,
        added_as_sent,
        deleted,
    } = net;
    v.extend(cleared.into_iter().map(Record::ClearTable));
    v.extend(deleted.into_iter().map(Record::DelFlow));
    v.extend(added.into_iter().map(Record::AddFlow));
    v.extend(added_as_sent.iter().filter_map(|c| match c {
        FlowMod::Add { flow } => Some(Record::AddFlow(flow.clone())),
        _ => None,
    }));
    v
}

/// Appends `records` to the store's journal (nothing when there are none, or no store).
fn append(options: &SwitchOptions, records: &[Record]) -> std::io::Result<()> {
    match &options.state_store {
        Some(store) if !records.is_empty() => store.append(records),
        _ => Ok(()),
    }
}

/// How often the state thread looks at the journal (fsync, snapshot due).
const STATE_TICK: Duration = Duration::from_millis(100);
/// How long after a failed snapshot the next is tried.
const SNAPSHOT_RETRY: Duration = Duration::from_secs(5);

/// The `weft-state` thread: fsyncs the journal (at most every [`STATE_TICK`], when
/// something was appended) and writes a snapshot when one is due.
fn state_loop(ports: &Ports, control: &Mutex<Control>, store: &dyn StateStore) {
    let shared = &ports.shared;
    let mut last_error = String::new();
    let mut next_snapshot = Instant::now();
    while !shared.stop.load(Ordering::Relaxed) {
        std::thread::sleep(STATE_TICK);
        let mut result = store.sync();
        let needed = control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot_needed;
        if result.is_ok() && (needed || store.snapshot_due()) && Instant::now() >= next_snapshot {
            let t0 = Instant::now();
            result = snapshot(ports, control, store);
            match &result {
                Ok(()) => tracing::info!(
                    ms = t0.elapsed().as_millis() as u64,
                    "state snapshot written"
                ),
                Err(_) => next_snapshot = Instant::now() + SNAPSHOT_RETRY,
            }
        }
        match result {
            Ok(()) => last_error.clear(),
            Err(e) => {
                let e = e.to_string();
                if e != last_error {
                    tracing::error!("saving state: {e} (retrying)");
                    last_error = e;
                }
            }
        }
    }
}

/// Writes a snapshot of the state: its sequence number, ports and pipeline version
/// are taken under the control lock, the flows are walked from that version without it.
fn snapshot(
    ports: &Ports,
    control: &Mutex<Control>,
    store: &dyn StateStore,
) -> std::io::Result<()> {
    let (seq, specs, pipe, was_needed) = {
        let mut c = control.lock().unwrap_or_else(|e| e.into_inner());
        let seq = store.begin_snapshot()?;
        let was = std::mem::replace(&mut c.snapshot_needed, false);
        (seq, ports.specs(), ports.shared.pipeline.load_full(), was)
    };
    let written = store.write_snapshot(seq, &specs, &mut |each| {
        let _ = pipe.dump_each(&FlowFilter::all(), 0, |d| each(d.flow));
    });
    if written.is_err() && was_needed {
        control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .snapshot_needed = true;
    }
    // A million flows' text went through this thread's arena.
    crate::mem::release_free_memory();
    written
}

impl Ports {
    fn down(&self) -> MutexGuard<'_, Vec<DownPort>> {
        self.down.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every port (up and down), by number.
    fn specs(&self) -> Vec<PortSpec> {
        let mut ports: Vec<PortSpec> = self
            .shared
            .ports
            .load()
            .iter()
            .map(|p| p.spec.clone())
            .chain(self.down().iter().map(|d| d.spec.clone()))
            .collect();
        ports.sort_by_key(|p| p.ofport);
        ports
    }

    /// Ports (up and down, by number) and flows.
    fn state(&self) -> SavedState {
        SavedState {
            ports: self.specs(),
            flows: self.shared.pipeline.load().flows(),
            ..SavedState::default()
        }
    }

    /// Checks a new port against the switch's (name, number, UDP port, TAP device)
    /// and gives it its number; returns the sockets it must share.
    fn check_new(
        &self,
        spec: &mut PortSpec,
    ) -> Result<Option<Arc<crate::io::UdpSockets>>, SwitchError> {
        spec.validate()?;
        let current = self.shared.ports.load_full();
        let down = self.down();
        if current.iter().any(|p| p.spec.name == spec.name)
            || down.iter().any(|d| d.spec.name == spec.name)
        {
            return Err(SwitchError::PortExists(spec.name.clone()));
        }
        let taken_by = |n: u32| {
            current.get(n).map(|p| p.spec.name.clone()).or_else(|| {
                down.iter()
                    .find(|d| d.spec.ofport == Some(n))
                    .map(|d| d.spec.name.clone())
            })
        };
        let number = match spec.ofport {
            Some(n) => {
                if let Some(by) = taken_by(n) {
                    return Err(SwitchError::NumberTaken { number: n, by });
                }
                n
            }
            None => (1..=MAX_OFPORT)
                .find(|n| taken_by(*n).is_none())
                .ok_or(SwitchError::NoFreeNumber)?,
        };
        drop(down);
        let shared = conflicts(&current, spec)?;
        spec.ofport = Some(number);
        Ok(shared)
    }

    /// Opens a checked port.
    fn open(
        &self,
        spec: &PortSpec,
        shared: Option<Arc<crate::io::UdpSockets>>,
        attach: Attach,
    ) -> Result<PortIo, SwitchError> {
        PortIo::open_with(
            spec,
            self.options.workers,
            shared,
            self.options.offloads,
            attach,
            match &self.gso_why {
                None => Ok(()),
                Some(why) => Err(why.as_str()),
            },
        )
        .map_err(|error| SwitchError::Open {
            name: spec.name.clone(),
            error,
        })
    }

    /// Checks, opens and publishes a port; returns its number.
    fn add(&self, mut spec: PortSpec, attach: Attach) -> Result<u32, SwitchError> {
        let shared = self.check_new(&mut spec)?;
        let io = self.open(&spec, shared, attach)?;
        Ok(self.publish_new(io))
    }

    /// Publishes an opened port; returns its number.
    fn publish_new(&self, io: PortIo) -> u32 {
        let number = io.ofport;
        let spec = &io.spec;
        if let PortDev::Tap(t) = &io.dev {
            tracing::info!(
                port = %spec.name, ofport = number, ifname = t.ifname(), netns = ?t.netns(),
                reattached = t.reattached(), "tap port up"
            );
        } else {
            tracing::info!(port = %spec.name, ofport = number, mtu = ?io.tunnel.as_ref().map(|t| t.mtu), "tunnel port up");
        }
        let current = self.shared.ports.load_full();
        let mut ports: Vec<Arc<PortIo>> = current.iter().cloned().collect();
        ports.push(Arc::new(io));
        self.publish(ports, current.version + 1);
        number
    }

    /// Publishes a port set (and the port map with the names of the ports that are
    /// down reserved) and wakes the workers.
    fn publish(&self, ports: Vec<Arc<PortIo>>, version: u64) {
        let set = PortSet::new(version, ports);
        let mut map = set.port_map();
        for d in self.down().iter() {
            if let Some(n) = d.spec.ofport {
                map.reserve(n, &d.spec.name);
            }
        }
        self.shared.pipeline.set_ports(map);
        self.shared.ports.store(Arc::new(set));
        for w in &self.wakers {
            let _ = w.wake();
        }
    }

    /// Keeps a port that could not be opened as down (its number is set).
    fn keep_down(&self, spec: PortSpec, why: &SwitchError) {
        let error = match why {
            SwitchError::Open { error, .. } => error.to_string(),
            other => other.to_string(),
        };
        tracing::error!(
            port = %spec.name, ofport = ?spec.ofport,
            "port '{}' is down: {error}; retrying every {}s (weftctl del-port {} removes it)",
            spec.name, PORT_RETRY.as_secs(), spec.name
        );
        self.down().push(DownPort {
            spec,
            error,
            next_try: Instant::now() + PORT_RETRY,
        });
        let current = self.shared.ports.load_full();
        self.publish(current.iter().cloned().collect(), current.version + 1);
    }

    /// Opens again the ports that are down and due; publishes those that open.
    fn retry_down(&self) {
        let now = Instant::now();
        let due: Vec<PortSpec> = self
            .down()
            .iter()
            .filter(|d| d.next_try <= now)
            .map(|d| d.spec.clone())
            .collect();
        for spec in due {
            let name = spec.name.clone();
            let current = self.shared.ports.load_full();
            let opened = conflicts(&current, &spec)
                .and_then(|shared| self.open(&spec, shared, Attach::CreateOrReattach));
            let mut down = self.down();
            let Some(at) = down.iter().position(|d| d.spec.name == name) else {
                continue;
            };
            match opened {
                Ok(io) => {
                    down.remove(at);
                    drop(down);
                    tracing::info!(port = %name, "port is up again");
                    self.publish_new(io);
                }
                Err(e) => {
                    let error = match e {
                        SwitchError::Open { error, .. } => error.to_string(),
                        other => other.to_string(),
                    };
                    let d = &mut down[at];
                    if d.error != error {
                        tracing::warn!(port = %name, "port '{name}' is still down: {error}");
                    } else {
                        tracing::debug!(port = %name, "port '{name}' is still down: {error}");
                    }
                    d.error = error;
                    d.next_try = Instant::now() + PORT_RETRY;
                }
            }
        }
    }
}

/// Whether the tunnel-GSO underlay port is used: asked for, offloads on, and the kernel
/// has it (probed once). Logs which underlay is in use and why.
fn tunnel_gso_in_use(options: &SwitchOptions) -> Result<(), String> {
    let why = if !options.tunnel_gso {
        "tunnel_gso off".to_string()
    } else if !options.offloads {
        "tunnel_gso needs offloads on".to_string()
    } else {
        match crate::port::underlay::probe() {
            Ok(()) => {
                tracing::info!(
                    "underlay: tunnel-GSO TAP (the kernel segments tunnel super-frames)"
                );
                return Ok(());
            }
            Err(why) => format!("no tunnel-GSO TAP: {why}"),
        }
    };
    tracing::info!("underlay: tunnel sockets ({why})");
    Err(why)
}

impl Switch {
    /// True when the tunnel-GSO underlay port is in use (asked for and probed).
    pub fn tunnel_gso(&self) -> bool {
        self.options.tunnel_gso
    }
}

/// Checks a port against the open ports of `current`: its UDP port (returns the sockets
/// it must share) and its TAP device (which must not be another port's).
fn conflicts(
    current: &PortSet,
    spec: &PortSpec,
) -> Result<Option<Arc<crate::io::UdpSockets>>, SwitchError> {
    let shared = current
        .udp_sharing(spec)
        .map_err(|by| SwitchError::UdpPortTaken(spec.udp_port().unwrap_or_default(), by))?;
    if let SpecKind::Tap(t) = &spec.kind {
        let ifname = t.ifname.as_deref().unwrap_or(&spec.name);
        // A namespace that is gone has no identity; opening it says so.
        let id = netns_id(t.netns.as_deref()).ok();
        if let Some(by) = tap_owner(current, ifname, t.netns.as_deref(), id) {
            return Err(SwitchError::TapOwned {
                ifname: ifname.to_string(),
                netns: t.netns.clone(),
                by,
            });
        }
    }
    Ok(shared)
}

/// The port of `current` whose TAP device is `ifname` in namespace `netns` (by name,
/// or by the namespace's identity `id`, when two names are one namespace).
fn tap_owner(
    current: &PortSet,
    ifname: &str,
    netns: Option<&str>,
    id: Option<NetnsId>,
) -> Option<String> {
    current.iter().find_map(|p| {
        let PortDev::Tap(t) = &p.dev else {
            return None;
        };
        let same_ns = t.netns() == netns || id == Some(t.netns_id());
        (same_ns && t.ifname() == ifname).then(|| p.spec.name.clone())
    })
}
