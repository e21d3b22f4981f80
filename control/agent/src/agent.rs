//! The controller: owns the model (this node, its peers, its endpoints), the connection
//! to weftd and the flows it last installed; applies what etcd says ([`Event`]) and
//! what the CNI plugin asks (`attach`, `detach`, `check`, `gc`).
//!
//! Syncing: a full sync (after every list, and whenever weftd's connection is new)
//! makes sure of the tunnel and gateway ports and the gateway's address and route,
//! then sends one `replace_flows` limited to the agent's cookie, so flows with other
//! cookies are never touched and unchanged flows keep their counters. After that events
//! are taken in batches (what is queued and what arrives within a few ms), and each
//! batch is one bundle of the difference between the flows before and after it: a node
//! joining is three added flows, a pod a handful, a thousand nodes one bundle.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use etcd_client::{Client as Etcd, PutOptions};
use ipnet::{IpNet, Ipv4Net};
use tokio::sync::{mpsc, oneshot};

use weft_agent_proto as ap;
use weft_agent_proto::{ErrorKind, Response};
use weft_flow::port::PortSpec;
use weft_flow::{Flow, Masked};
use weft_proto::client::Client as Weftd;

use crate::config::Config;
use crate::etcd::{Event, Snapshot, one_line};
use crate::metrics::Metrics;
use crate::model::{self, COOKIE, COOKIE_MASK, FlowId, GATEWAY_IFNAME, GATEWAY_PORT, Model};
use crate::netlink;
use crate::schema::{EndpointRecord, Keys};

/// Events taken into one bundle at most.
const COALESCE_EVENTS: usize = 4096;
/// How long a batch waits for one more event after the last.
const COALESCE_IDLE: Duration = Duration::from_millis(3);
/// How long a batch is gathered at most.
const COALESCE_MAX: Duration = Duration::from_millis(50);

/// A request from the socket, with where to send the answer.
pub type Call = (ap::Request, oneshot::Sender<Response>);

/// What `status` answers, kept current by the controller.
pub type SharedStatus = Arc<Mutex<ap::StatusReply>>;

/// The controller's state.
pub struct Controller {
    cfg: Config,
    keys: Keys,
    status: SharedStatus,
    metrics: Arc<Metrics>,
    model: Option<Model>,
    etcd: Option<(Etcd, i64)>,
    weftd: Option<Weftd>,
    /// The agent's flows as installed (names, as compiled).
    applied: Option<HashMap<FlowId, Flow>>,
    waiting: Option<String>,
    etcd_ok: bool,
    etcd_error: Option<String>,
    weftd_error: Option<String>,
    conflist_written: bool,
}

impl Controller {
    /// A controller for `cfg`, publishing its status into `status`.
    pub fn new(cfg: Config, status: SharedStatus, metrics: Arc<Metrics>) -> Controller {
        Controller {
            keys: Keys::new(&cfg.prefix),
            cfg,
            status,
            metrics,
            model: None,
            etcd: None,
            weftd: None,
            applied: None,
            waiting: Some("connecting to etcd".into()),
            etcd_ok: false,
            etcd_error: None,
            weftd_error: None,
            conflist_written: false,
        }
    }

    /// Runs until the channels close.
    pub async fn run(mut self, mut events: mpsc::Receiver<Event>, mut calls: mpsc::Receiver<Call>) {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                e = events.recv() => match e {
                    Some(e) => {
                        // Coalesce: this event, every one already queued and those
                        // arriving within COALESCE_IDLE of the last (up to COALESCE_MAX
                        // in all) change the model; then one bundle of differences.
                        let mut dirty = self.on_event(e).await;
                        let start = tokio::time::Instant::now();
                        let mut n = 1usize;
                        while n < COALESCE_EVENTS && start.elapsed() < COALESCE_MAX {
                            let next = match events.try_recv() {
                                Ok(e) => Some(e),
                                Err(mpsc::error::TryRecvError::Empty) => {
                                    tokio::time::timeout(COALESCE_IDLE, events.recv())
                                        .await
                                        .ok()
                                        .flatten()
                                }
                                Err(mpsc::error::TryRecvError::Disconnected) => None,
                            };
                            let Some(e) = next else { break };
                            dirty |= self.on_event(e).await;
                            n += 1;
                        }
                        if dirty {
                            let _ = self.incremental().await;
                        }
                    }
                    None => return,
                },
                c = calls.recv() => match c {
                    Some((req, reply)) => {
                        let r = self.on_call(req).await;
                        let _ = reply.send(r);
                    }
                    None => return,
                },
                _ = tick.tick() => self.check_weftd().await,
            }
            self.publish();
        }
    }

    /// Applies one event to the model. Returns whether the flows need bringing in line
    /// (the caller does it once for a batch of events); a sync is done here.
    async fn on_event(&mut self, e: Event) -> bool {
        match e {
            Event::Health(Ok(())) => {
                self.etcd_ok = true;
                if self.etcd_error.take().is_some() {
                    tracing::info!("etcd reachable again");
                }
                false
            }
            Event::Health(Err(why)) => {
                self.etcd_ok = false;
                self.metrics.etcd_errors.inc();
                self.etcd_error = Some(why);
                false
            }
            Event::Waiting(w) => {
                self.waiting = w;
                false
            }
            Event::Sync(s) => {
                let Snapshot {
                    net,
                    me,
                    peers,
                    endpoints,
                    client,
                    lease,
                } = *s;
                let mut endpoints = endpoints;
                // A new lease (the old one expired while etcd was out of reach): the
                // endpoints recorded on the old one are gone from etcd but not from this
                // node. Record them again on the new lease.
                let old_lease = self.etcd.as_ref().map(|(_, l)| *l);
                let lost: Vec<(String, EndpointRecord)> = match (&self.model, old_lease) {
                    (Some(m), Some(old)) if old != lease => m
                        .endpoints
                        .iter()
                        .filter(|(id, _)| !endpoints.contains_key(*id))
                        .map(|(id, e)| (id.clone(), e.clone()))
                        .collect(),
                    _ => Vec::new(),
                };
                self.etcd = Some((client, lease));
                for (id, e) in lost {
                    let Some((c, i)) = id.rsplit_once(':') else {
                        continue;
                    };
                    let a = ap::Attachment {
                        container_id: c.to_string(),
                        ifname: i.to_string(),
                    };
                    match self.put_endpoint(&a, &e).await {
                        Ok(()) => {
                            tracing::info!(endpoint = %id, "recorded the endpoint again on the new lease");
                            endpoints.insert(id, e);
                        }
                        Err(err) => {
                            tracing::warn!(endpoint = %id, "cannot record the endpoint again: {err}")
                        }
                    }
                }
                self.etcd_error = None;
                self.waiting = None;
                let mtu = match net.mtu {
                    Some(m) => m,
                    None => self
                        .underlay_mtu()
                        .await
                        .saturating_sub(net.encap.overhead()),
                };
                self.model = Some(Model {
                    node: self.cfg.node_name.clone(),
                    net,
                    mtu,
                    me,
                    peers,
                    endpoints,
                });
                self.full_sync().await;
                false
            }
            Event::NodePut(name, n) => match &mut self.model {
                Some(m) => m.peers.insert(name, n.clone()) != Some(n),
                None => false,
            },
            Event::NodeDel(name) => self
                .model
                .as_mut()
                .is_some_and(|m| m.peers.remove(&name).is_some()),
            Event::EndpointPut(id, ep) => match &mut self.model {
                Some(m) if m.endpoints.get(&id) != Some(&ep) => {
                    m.endpoints.insert(id, ep);
                    true
                }
                _ => false,
            },
            Event::EndpointDel(id) => self
                .model
                .as_mut()
                .is_some_and(|m| m.endpoints.remove(&id).is_some()),
        }
    }

    async fn underlay_mtu(&self) -> u16 {
        let dev = self.cfg.underlay_dev.clone();
        let ip = self.cfg.public_ip;
        let r = netlink::run_in(None, move |h| async move {
            match dev {
                Some(d) => netlink::mtu_of(&h, &d).await,
                None => netlink::mtu_of_address(&h, ip).await,
            }
        })
        .await;
        match r {
            Ok(Some(m)) => m.min(65535) as u16,
            Ok(None) => {
                tracing::warn!("no device holds {ip}: the MTU is derived from 1500");
                1500
            }
            Err(e) => {
                tracing::warn!("underlay MTU: {e}; derived from 1500");
                1500
            }
        }
    }

    /// Connects to weftd if not connected; notices a lost connection (weftd restarted)
    /// and syncs again.
    async fn check_weftd(&mut self) {
        if let Some(c) = &mut self.weftd {
            if c.show().is_ok() {
                return;
            }
            tracing::warn!("lost weftd's control connection; reconnecting");
            self.weftd = None;
            self.applied = None;
        }
        if self.model.is_some() {
            self.full_sync().await;
        }
    }

    fn connect_weftd(&mut self) -> Result<&mut Weftd, String> {
        if self.weftd.is_none() {
            let c = Weftd::connect_with_timeout(&self.cfg.weftd_socket, Duration::from_secs(5))
                .map_err(|e| format!("weftd: {e}"))?;
            tracing::info!(socket = %self.cfg.weftd_socket.display(), "connected to weftd");
            self.weftd = Some(c);
            self.applied = None;
        }
        Ok(self.weftd.as_mut().expect("just set"))
    }

    /// Makes weftd what the model says: ports, the gateway's address and route, and
    /// the agent's flows (one bundle of differences against what weftd has).
    async fn full_sync(&mut self) {
        match self.try_full_sync().await {
            Ok(n) => {
                self.weftd_error = None;
                self.metrics.syncs.inc();
                self.metrics.last_sync.set(now() as i64);
                tracing::info!(changes = n, "synced weftd with the cluster state");
                self.write_conflist();
            }
            Err(e) => {
                self.metrics.sync_errors.inc();
                if self.weftd_error.as_deref() != Some(&e) {
                    tracing::error!("sync: {e}");
                }
                self.weftd_error = Some(e);
                self.applied = None;
            }
        }
    }

    async fn try_full_sync(&mut self) -> Result<usize, String> {
        let model = self.model.clone().ok_or("no state yet")?;
        let (plan, skipped) = model.plan();
        for s in &skipped {
            tracing::warn!("left out of the flows: {s}");
        }
        let plan = plan.map_err(|e| e.to_string())?;
        let w = self.connect_weftd()?;
        let ports = w.ports().map_err(|e| format!("weftd ports: {e}"))?;
        // Infrastructure ports: the gateway and the tunnel. A pod's port is made at
        // attach; one that is gone is not made again here (its netns may be gone too).
        for p in plan
            .ports
            .iter()
            .filter(|p| p.name == GATEWAY_PORT || p.name == weft_cluster::L3_TUNNEL)
        {
            match ports.ports.iter().find(|q| q.name == p.name) {
                Some(q) if PortSpec::same_port(&q.spec, p) => {}
                Some(_) => {
                    tracing::info!(port = %p.name, "port changed; replacing it");
                    w.del_port(&p.name)
                        .map_err(|e| format!("weftd del-port {}: {e}", p.name))?;
                    w.add_port(p.clone())
                        .map_err(|e| format!("weftd add-port {p}: {e}"))?;
                }
                None => {
                    w.add_port(p.clone())
                        .map_err(|e| format!("weftd add-port {p}: {e}"))?;
                }
            }
        }
        // The gateway: the subnet's first address, and the pod CIDR through it.
        let gw = Ipv4Net::new(first(model.me.subnet), model.me.subnet.prefix_len())
            .expect("prefix fits");
        let cidr = model.net.pod_cidr;
        netlink::run_in(None, move |h| async move {
            netlink::configure(
                &h,
                GATEWAY_IFNAME,
                &[IpNet::V4(gw)],
                &[(IpNet::V4(cidr), None)],
            )
            .await
        })
        .await
        .map_err(|e| format!("gateway port: {e}"))?;
        // Flows: one replace limited to the agent's cookie. weftd compares in its own
        // canonical form, touches no flow of another cookie, and leaves unchanged
        // flows (and their counters) alone.
        let w = self.weftd.as_mut().expect("connected");
        let want = model::index(plan.flows.iter().cloned());
        let r = w
            .replace_flows_of(
                plan.flows.into_iter().map(|f| (0, f)).collect(),
                Some(Masked {
                    value: COOKIE,
                    mask: COOKIE_MASK,
                }),
            )
            .map_err(|e| format!("weftd replace-flows: {e}"))?;
        let n = r.added + r.replaced + r.modified + r.deleted;
        self.applied = Some(want);
        Ok(n)
    }

    /// After one event: the difference between the flows before and after it. An
    /// error says the flows could not be brought in line (a full sync was tried too).
    async fn incremental(&mut self) -> Result<(), String> {
        let Some(applied) = self.applied.take() else {
            // Not in sync with weftd: a full sync does it all.
            self.full_sync().await;
            return match &self.weftd_error {
                Some(e) => Err(e.clone()),
                None => Ok(()),
            };
        };
        let Some(model) = &self.model else {
            self.applied = Some(applied);
            return Ok(());
        };
        let (plan, skipped) = model.plan();
        for s in &skipped {
            tracing::warn!("left out of the flows: {s}");
        }
        let plan = match plan {
            Ok(p) => p,
            Err(e) => {
                tracing::error!("state does not compile: {e}");
                self.applied = Some(applied);
                return Err(format!("state does not compile: {e}"));
            }
        };
        let want = model::index(plan.flows);
        let bundle = model::diff(&applied, &want);
        if bundle.changes.is_empty() {
            self.applied = Some(want);
            return Ok(());
        }
        let n = bundle.changes.len();
        let r = match self.connect_weftd() {
            Ok(w) => w.bundle(bundle).map_err(|e| format!("weftd bundle: {e}")),
            Err(e) => Err(e),
        };
        match r {
            Ok(_) => {
                tracing::debug!(changes = n, "flows updated");
                self.metrics.last_sync.set(now() as i64);
                self.applied = Some(want);
                Ok(())
            }
            Err(e) => {
                tracing::error!("{e}; syncing again");
                self.metrics.sync_errors.inc();
                self.weftd = None;
                self.full_sync().await;
                match &self.weftd_error {
                    Some(e2) => Err(format!("{e}; {e2}")),
                    None => Ok(()),
                }
            }
        }
    }

    fn write_conflist(&mut self) {
        if self.conflist_written {
            return;
        }
        let text = serde_json::json!({
            "cniVersion": "1.0.0",
            "name": "weft",
            "plugins": [
                {"type": "weft-cni", "agentSocket": self.cfg.socket},
                {"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}
            ]
        });
        let dir = &self.cfg.cni_conf_dir;
        let path = dir.join("10-weft.conflist");
        let tmp = dir.join(".10-weft.conflist.tmp");
        let r = std::fs::create_dir_all(dir)
            .and_then(|()| std::fs::write(&tmp, format!("{text:#}\n")))
            .and_then(|()| std::fs::rename(&tmp, &path));
        match r {
            Ok(()) => {
                tracing::info!(path = %path.display(), "wrote the CNI configuration");
                self.conflist_written = true;
            }
            Err(e) => tracing::warn!("cannot write {}: {e}", path.display()),
        }
    }

    fn ready(&self) -> Result<(), String> {
        if self.model.is_none() {
            return Err(match (&self.etcd_error, &self.waiting) {
                (Some(e), _) => format!("no subnet yet: {e}"),
                (None, Some(w)) => w.clone(),
                (None, None) => "no subnet yet".into(),
            });
        }
        if let Some(e) = &self.weftd_error {
            return Err(e.clone());
        }
        if self.applied.is_none() {
            return Err("weftd is not programmed yet".into());
        }
        Ok(())
    }

    /// Publishes the status (and the metrics' gauges).
    fn publish(&self) {
        let m = self.model.as_ref();
        let ready = self.ready();
        let reason = match (&ready, &self.etcd_error, &self.waiting) {
            (Err(e), _, _) => Some(e.clone()),
            (Ok(()), Some(e), _) => Some(format!("etcd unreachable (forwarding goes on): {e}")),
            (Ok(()), None, Some(w)) => Some(w.clone()),
            _ => None,
        };
        let s = ap::StatusReply {
            ready: ready.is_ok(),
            reason,
            node: self.cfg.node_name.clone(),
            subnet: m.map(|m| IpNet::V4(m.me.subnet)),
            gateway: m.map(|m| IpAddr::V4(first(m.me.subnet))),
            pod_cidr: m.map(|m| IpNet::V4(m.net.pod_cidr)),
            mtu: m.map(|m| m.mtu),
            peers: m
                .map(|m| {
                    m.peers
                        .iter()
                        .map(|(n, p)| ap::Peer {
                            node: n.clone(),
                            public_ip: IpAddr::V4(p.public_ip),
                            subnet: IpNet::V4(p.subnet),
                        })
                        .collect()
                })
                .unwrap_or_default(),
            endpoints: m
                .map(|m| {
                    m.endpoints
                        .iter()
                        .map(|(id, e)| endpoint_view(id, e))
                        .collect()
                })
                .unwrap_or_default(),
            last_sync: Some(self.metrics.last_sync.get() as u64).filter(|t| *t > 0),
            etcd: ap::EtcdHealth {
                reachable: self.etcd_ok,
                error: self.etcd_error.clone(),
            },
        };
        self.metrics.etcd_up.set(i64::from(s.etcd.reachable));
        self.metrics.ready.set(i64::from(s.ready));
        self.metrics.peers.set(s.peers.len() as i64);
        self.metrics.endpoints.set(s.endpoints.len() as i64);
        if let Ok(mut g) = self.status.lock() {
            *g = s;
        }
    }

    async fn on_call(&mut self, req: ap::Request) -> Response {
        let r = match req {
            ap::Request::Status => {
                self.publish();
                return match self.status.lock() {
                    Ok(s) => Response::ok(&*s),
                    Err(_) => Response::error(ErrorKind::Failed, "status unavailable"),
                };
            }
            ap::Request::Attach(a) => self.attach(a).await.map(|r| Response::ok(&r)),
            ap::Request::Check(a) => self.check(a).await.map(|()| Response::ok(&ap::Empty {})),
            ap::Request::Detach(d) => self
                .detach(&d.attachment)
                .await
                .map(|_| Response::ok(&ap::Empty {})),
            ap::Request::Gc(g) => self.gc(g).await.map(|r| Response::ok(&r)),
        };
        r.unwrap_or_else(|(kind, message)| Response::error(kind, message))
    }

    fn attach_parts(
        &self,
        a: &ap::Attach,
    ) -> Result<(String, Ipv4Net, Ipv4Addr, PathBuf), (ErrorKind, String)> {
        let m = self
            .model
            .as_ref()
            .ok_or_else(|| (ErrorKind::NotReady, self.ready().err().unwrap_or_default()))?;
        let bad = |s: String| (ErrorKind::BadRequest, s);
        check_attachment(&a.attachment).map_err(bad)?;
        let addr = a
            .addresses
            .iter()
            .find_map(|n| match n {
                IpNet::V4(v) => Some(*v),
                IpNet::V6(_) => None,
            })
            .ok_or_else(|| bad("attach needs an IPv4 address".into()))?;
        if a.addresses.len() != 1 {
            return Err(bad(format!(
                "attach takes one IPv4 address (got {})",
                a.addresses.len()
            )));
        }
        let gw = first(m.me.subnet);
        if !m.me.subnet.contains(&addr.addr())
            || addr.prefix_len() != m.me.subnet.prefix_len()
            || addr.addr() == gw
            || addr.addr() == m.me.subnet.network()
            || addr.addr() == m.me.subnet.broadcast()
        {
            return Err(bad(format!(
                "address {addr} is not a pod address of this node's subnet {}",
                m.me.subnet
            )));
        }
        if let Some(g) = a.gateway
            && g != IpAddr::V4(gw)
        {
            return Err(bad(format!("gateway {g} is not this node's gateway {gw}")));
        }
        let netns = netns_path(&a.netns).map_err(bad)?;
        Ok((port_name(&a.attachment), addr, gw, netns))
    }

    async fn attach(&mut self, a: ap::Attach) -> Result<ap::AttachReply, (ErrorKind, String)> {
        if let Err(e) = self.ready() {
            return Err((ErrorKind::NotReady, e));
        }
        let (port, addr, gw, netns) = self.attach_parts(&a)?;
        let id = endpoint_id(&a.attachment);
        let m = self.model.as_ref().expect("ready");
        if m.endpoints.contains_key(&id) {
            return Err((
                ErrorKind::Exists,
                format!(
                    "attachment {} {} exists (port {port})",
                    a.attachment.container_id, a.attachment.ifname
                ),
            ));
        }
        let mtu = m.mtu;
        let mac = weft_cluster::mac_of(addr.addr());
        let spec = PortSpec::parse(
            &port,
            &[
                "type=tap",
                &format!("netns={}", model::weftd_netns(&netns)),
                &format!("ifname={}", a.attachment.ifname),
                &format!("mtu={mtu}"),
                &format!("mac={mac}"),
                &format!("tag={}", m.net.vni),
                &format!("txqueuelen={}", self.cfg.pod_txqueuelen),
            ],
        )
        .map_err(|e| (ErrorKind::BadRequest, format!("port {port}: {e}")))?;
        let fail = |s: String| (ErrorKind::Failed, s);
        // An interface of that name in the pod already (another attachment's, or the
        // runtime's): CNI's "exists" (100), not a failure, and nothing is made.
        let ifname = a.attachment.ifname.clone();
        let present = netlink::run_in(Some(netns.clone()), move |h| async move {
            netlink::link_index(&h, &ifname).await
        })
        .await
        .map_err(fail)?;
        if present.is_some() {
            return Err((
                ErrorKind::Exists,
                format!(
                    "interface {} exists in network namespace {}",
                    a.attachment.ifname,
                    netns.display()
                ),
            ));
        }
        let w = self.connect_weftd().map_err(fail)?;
        w.add_port(spec).map_err(|e| {
            let s = e.to_string();
            // weftd: "port 'x' already exists", "tap device 'eth0' ... belongs to port".
            if s.contains("exists") || s.contains("belongs to port") {
                (ErrorKind::Exists, format!("weftd add-port {port}: {s}"))
            } else {
                fail(format!("weftd add-port {port}: {s}"))
            }
        })?;
        let routes = vec![ap::Route {
            dst: "0.0.0.0/0".parse().expect("valid"),
            gw: Some(IpAddr::V4(gw)),
        }];
        let ifname = a.attachment.ifname.clone();
        let ns = netns.clone();
        let r = netlink::run_in(Some(ns), move |h| async move {
            netlink::configure(
                &h,
                &ifname,
                &[IpNet::V4(addr)],
                &[("0.0.0.0/0".parse().expect("valid"), Some(IpAddr::V4(gw)))],
            )
            .await
        })
        .await;
        if let Err(e) = r {
            let _ = self.weftd.as_mut().map(|w| w.del_port(&port));
            return Err(fail(format!("pod interface: {e}")));
        }
        let rec = EndpointRecord {
            ips: vec![IpNet::V4(addr)],
            mac: mac.to_string(),
            port: port.clone(),
            netns: a.netns.clone(),
            pod_namespace: a.pod_namespace.clone(),
            pod_name: a.pod_name.clone(),
        };
        if let Err(e) = self.put_endpoint(&a.attachment, &rec).await {
            let _ = self.weftd.as_mut().map(|w| w.del_port(&port));
            return Err(fail(e));
        }
        if let Some(m) = &mut self.model {
            m.endpoints.insert(id.clone(), rec);
        }
        if let Err(e) = self.incremental().await {
            if let Some(m) = &mut self.model {
                m.endpoints.remove(&id);
            }
            let _ = self.incremental().await;
            let _ = self.weftd.as_mut().map(|w| w.del_port(&port));
            let key = self.keys.endpoint(
                &self.cfg.node_name,
                &a.attachment.container_id,
                &a.attachment.ifname,
            );
            if let Some((c, _)) = self.etcd.as_mut() {
                let _ = c.delete(key, None).await;
            }
            return Err(fail(format!("flows: {e}")));
        }
        tracing::info!(container = %a.attachment.container_id, ifname = %a.attachment.ifname, %port, %addr, "attached");
        Ok(ap::AttachReply {
            ifname: a.attachment.ifname,
            mac: mac.to_string(),
            mtu,
            port,
            addresses: vec![IpNet::V4(addr)],
            routes,
        })
    }

    async fn put_endpoint(
        &mut self,
        a: &ap::Attachment,
        rec: &EndpointRecord,
    ) -> Result<(), String> {
        let (c, lease) = self.etcd.as_mut().ok_or("etcd is not connected")?;
        let key = self
            .keys
            .endpoint(&self.cfg.node_name, &a.container_id, &a.ifname);
        c.put(
            key,
            serde_json::to_vec(rec).expect("serialisable"),
            Some(PutOptions::new().with_lease(*lease)),
        )
        .await
        .map(|_| ())
        .map_err(|e| format!("etcd: {}", one_line(&e)))
    }

    async fn check(&mut self, a: ap::Attach) -> Result<(), (ErrorKind, String)> {
        let (port, addr, gw, netns) = self.attach_parts(&a)?;
        let missing = |s: String| (ErrorKind::Missing, s);
        let id = endpoint_id(&a.attachment);
        if !self
            .model
            .as_ref()
            .is_some_and(|m| m.endpoints.contains_key(&id))
        {
            return Err(missing(format!("no endpoint {id} on this node")));
        }
        let w = self.connect_weftd().map_err(|e| (ErrorKind::Failed, e))?;
        let ports = w
            .ports()
            .map_err(|e| (ErrorKind::Failed, format!("weftd: {e}")))?;
        match ports.ports.iter().find(|p| p.name == port) {
            None => return Err(missing(format!("weftd has no port {port}"))),
            Some(p) if p.state != weft_proto::PortState::Up => {
                return Err(missing(format!("weftd's port {port} is down")));
            }
            Some(_) => {}
        }
        let ifname = a.attachment.ifname.clone();
        let default: Ipv4Net = "0.0.0.0/0".parse().expect("valid");
        let (has_addr, has_route) = netlink::run_in(Some(netns), move |h| async move {
            if netlink::link_index(&h, &ifname).await?.is_none() {
                return Err(format!("the pod has no interface {ifname}"));
            }
            let addr_ok = netlink::has_addresses(&h, &ifname, &[IpNet::V4(addr)]).await?;
            let route_ok = netlink::has_route(&h, &ifname, default, gw).await?;
            Ok((addr_ok, route_ok == Some(true)))
        })
        .await
        .map_err(missing)?;
        if !has_addr {
            return Err(missing(format!(
                "{} in the pod lacks {addr}",
                a.attachment.ifname
            )));
        }
        if !has_route {
            return Err(missing(format!(
                "{} in the pod lacks the default route via {gw}",
                a.attachment.ifname
            )));
        }
        self.check_flows(&id, &ports.ports)
    }

    /// CHECK's last part: every flow the endpoint adds to the plan is in weftd, under
    /// the agent's cookie, with its actions (port names compared as weftd's numbers).
    fn check_flows(
        &mut self,
        id: &str,
        ports: &[weft_proto::PortInfo],
    ) -> Result<(), (ErrorKind, String)> {
        let model = self
            .model
            .as_ref()
            .ok_or((ErrorKind::NotReady, "no cluster state yet".to_string()))?;
        let want = model
            .endpoint_flows(id)
            .map_err(|e| (ErrorKind::Failed, e))?;
        let numbers: HashMap<&str, u32> =
            ports.iter().map(|p| (p.name.as_str(), p.ofport)).collect();
        let w = self.connect_weftd().map_err(|e| (ErrorKind::Failed, e))?;
        let have = w
            .dump_flows(weft_flow::FlowFilter {
                cookie: Some(Masked {
                    value: COOKIE,
                    mask: COOKIE_MASK,
                }),
                ..weft_flow::FlowFilter::all()
            })
            .map_err(|e| (ErrorKind::Failed, format!("weftd dump-flows: {e}")))?;
        let have: HashMap<FlowId, String> = have
            .flows
            .into_iter()
            .map(|s| {
                let f = s.flow;
                let text = actions_text(&f);
                ((f.table, f.priority, f.matches), text)
            })
            .collect();
        for f in want {
            let mut m = f.matches.clone();
            if let Some(weft_flow::PortRef::Name(n)) = &m.in_port {
                match numbers.get(n.as_str()) {
                    Some(&no) => m.in_port = Some(weft_flow::PortRef::Number(no)),
                    None => return Err((ErrorKind::Missing, format!("weftd has no port {n}"))),
                }
            }
            match have.get(&(f.table, f.priority, m)) {
                None => return Err((ErrorKind::Missing, format!("weftd lacks the flow {f}"))),
                Some(got) if *got != numbered(&actions_text(&f), &numbers) => {
                    return Err((
                        ErrorKind::Missing,
                        format!("weftd's flow {f} has other actions: {got}"),
                    ));
                }
                Some(_) => {}
            }
        }
        Ok(())
    }

    /// Removes an attachment; whatever part is already gone is skipped. Returns whether
    /// there was anything.
    async fn detach(&mut self, a: &ap::Attachment) -> Result<bool, (ErrorKind, String)> {
        check_attachment(a).map_err(|e| (ErrorKind::BadRequest, e))?;
        let id = endpoint_id(a);
        let port = self
            .model
            .as_ref()
            .and_then(|m| m.endpoints.get(&id))
            .map_or_else(|| port_name(a), |e| e.port.clone());
        let fail = |s: String| (ErrorKind::Failed, s);
        let w = self.connect_weftd().map_err(fail)?;
        let had_port = match w.del_port(&port) {
            Ok(()) => true,
            Err(e) if e.to_string().contains("no port") || e.to_string().contains("no such") => {
                false
            }
            Err(e) => return Err(fail(format!("weftd del-port {port}: {e}"))),
        };
        let had = self
            .model
            .as_mut()
            .is_some_and(|m| m.endpoints.remove(&id).is_some());
        let _ = self.incremental().await;
        let key = self
            .keys
            .endpoint(&self.cfg.node_name, &a.container_id, &a.ifname);
        let (c, _) = self
            .etcd
            .as_mut()
            .ok_or_else(|| fail("etcd is not connected: the endpoint record stays".into()))?;
        c.delete(key, None)
            .await
            .map_err(|e| fail(format!("etcd: {}", one_line(&e))))?;
        if had || had_port {
            tracing::info!(container = %a.container_id, ifname = %a.ifname, %port, "detached");
        }
        Ok(had || had_port)
    }

    async fn gc(&mut self, g: ap::Gc) -> Result<ap::GcReply, (ErrorKind, String)> {
        let keep: std::collections::HashSet<String> = g.keep.iter().map(endpoint_id).collect();
        let gone: Vec<ap::Attachment> = self
            .model
            .as_ref()
            .map(|m| {
                m.endpoints
                    .keys()
                    .filter(|id| !keep.contains(*id))
                    .filter_map(|id| {
                        id.rsplit_once(':').map(|(c, i)| ap::Attachment {
                            container_id: c.to_string(),
                            ifname: i.to_string(),
                        })
                    })
                    .collect()
            })
            .unwrap_or_default();
        // Every stale attachment is tried: one that cannot be detached does not keep
        // the others; the failures are reported together.
        let mut removed = Vec::new();
        let mut failed = Vec::new();
        for a in gone {
            match self.detach(&a).await {
                Ok(_) => removed.push(a),
                Err((_, e)) => failed.push(format!("{}: {e}", endpoint_id(&a))),
            }
        }
        if !failed.is_empty() {
            return Err((
                ErrorKind::Failed,
                format!(
                    "gc removed {} attachment(s); {} could not be removed: {}",
                    removed.len(),
                    failed.len(),
                    failed.join("; ")
                ),
            ));
        }
        Ok(ap::GcReply { removed })
    }
}

fn endpoint_view(id: &str, e: &EndpointRecord) -> ap::Endpoint {
    let (c, i) = id.rsplit_once(':').unwrap_or((id, ""));
    ap::Endpoint {
        attachment: ap::Attachment {
            container_id: c.to_string(),
            ifname: i.to_string(),
        },
        port: e.port.clone(),
        addresses: e.ips.clone(),
        mac: e.mac.clone(),
        pod_namespace: e.pod_namespace.clone(),
        pod_name: e.pod_name.clone(),
    }
}

/// A flow's actions as its text has them (`actions=...`).
fn actions_text(f: &Flow) -> String {
    let text = f.to_string();
    match text.split_once("actions=") {
        Some((_, a)) => a.to_string(),
        None => text,
    }
}

/// `text` with every word that is a port's name (between `:`, `,`, `=`, `(` and `)`)
/// replaced by the port's number, as weftd prints its flows.
fn numbered(text: &str, numbers: &HashMap<&str, u32>) -> String {
    let mut out = String::with_capacity(text.len());
    let mut word = String::new();
    let flush = |word: &mut String, out: &mut String| {
        match numbers.get(word.as_str()) {
            Some(n) => out.push_str(&n.to_string()),
            None => out.push_str(word),
        }
        word.clear();
    };
    for c in text.chars() {
        if matches!(c, ':' | ',' | '=' | '(' | ')') {
            flush(&mut word, &mut out);
            out.push(c);
        } else {
            word.push(c);
        }
    }
    flush(&mut word, &mut out);
    out
}

/// `<container_id>:<ifname>`.
pub fn endpoint_id(a: &ap::Attachment) -> String {
    format!("{}:{}", a.container_id, a.ifname)
}

/// A container id and an interface name that fit keys and device names.
fn check_attachment(a: &ap::Attachment) -> Result<(), String> {
    let cid = &a.container_id;
    if cid.is_empty()
        || cid.len() > 256
        || !cid
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "container_id '{cid}' must be 1 to 256 of letters, digits, '-', '_', '.'"
        ));
    }
    let i = &a.ifname;
    if i.is_empty()
        || i.len() > 15
        || i == "."
        || i == ".."
        || i.bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0)
    {
        return Err(format!("ifname '{i}' is not a valid interface name"));
    }
    Ok(())
}

/// The weftd port of an attachment: `p-` and 12 hex digits of a hash (FNV-1a) of
/// `<container_id>:<ifname>`, 14 characters whatever the ids' lengths. Not a prefix of
/// the container id: containerd's ids start with its namespace (`<namespace>-<id>`), so
/// all containers of one containerd shared their first 8 characters. The endpoint record
/// keeps the real ids and the port.
pub fn port_name(a: &ap::Attachment) -> String {
    let h = crate::schema::start_index(&endpoint_id(a));
    let n = format!("p-{:012x}", h & 0xffff_ffff_ffff);
    debug_assert!(n.len() <= weft_flow::port::MAX_PORT_NAME);
    n
}

/// A namespace as given (a path, or a name in /var/run/netns) as a path.
fn netns_path(ns: &str) -> Result<PathBuf, String> {
    if ns.starts_with('/') {
        return Ok(PathBuf::from(ns));
    }
    if ns.is_empty() || ns.contains('/') || ns == "." || ns == ".." {
        return Err(format!(
            "netns '{ns}' is neither a path nor a namespace name"
        ));
    }
    Ok(Path::new("/var/run/netns").join(ns))
}

fn first(s: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(s.network()).wrapping_add(1))
}

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att(c: &str, i: &str) -> ap::Attachment {
        ap::Attachment {
            container_id: c.into(),
            ifname: i.into(),
        }
    }

    #[test]
    fn port_names_in_actions_become_numbers_and_nothing_else_does() {
        let numbers: HashMap<&str, u32> = [("p-ab", 5), ("tun0", 2)].into_iter().collect();
        assert_eq!(
            numbered("set_field:198.18.0.2->tun_dst,output:tun0", &numbers),
            "set_field:198.18.0.2->tun_dst,output:2"
        );
        assert_eq!(
            numbered("mod_dl_dst:0a:58:c6:13:01:05,output:p-ab", &numbers),
            "mod_dl_dst:0a:58:c6:13:01:05,output:5"
        );
        // A word that only contains a name stays.
        assert_eq!(
            numbered("output:p-abc,xp-ab", &numbers),
            "output:p-abc,xp-ab"
        );
        assert_eq!(numbered("", &numbers), "");
    }

    #[test]
    fn port_names_fit_and_differ() {
        let a = port_name(&att("0123456789abcdef", "eth0"));
        assert!(
            a.len() <= weft_flow::port::MAX_PORT_NAME && a.starts_with("p-"),
            "{a}"
        );
        assert_eq!(a, port_name(&att("0123456789abcdef", "eth0")), "stable");
        assert_ne!(a, port_name(&att("0123456789abcdef", "eth1")));
        // containerd's ids share their first characters (`<namespace>-<id>`).
        let names: std::collections::HashSet<String> = (0..1000)
            .map(|i| port_name(&att(&format!("weft-8731-{i:04}"), "eth0")))
            .collect();
        assert_eq!(names.len(), 1000, "ids with one prefix get distinct ports");
        let long = port_name(&att(&"x".repeat(256), "eth10"));
        assert!(long.len() <= weft_flow::port::MAX_PORT_NAME, "{long}");
        assert!(check_attachment(&att("c1", "eth0")).is_ok());
        assert!(check_attachment(&att("c/1", "eth0")).is_err());
        assert!(check_attachment(&att("c1", "a:b")).is_err());
        assert!(check_attachment(&att("", "eth0")).is_err());
    }

    #[test]
    fn namespaces_are_paths_and_weftd_gets_names_where_it_can() {
        assert_eq!(
            netns_path("pod1").unwrap(),
            PathBuf::from("/var/run/netns/pod1")
        );
        assert_eq!(
            netns_path("/proc/7/ns/net").unwrap(),
            PathBuf::from("/proc/7/ns/net")
        );
        assert!(netns_path("../x").is_err());
        assert_eq!(model::weftd_netns(Path::new("/var/run/netns/pod1")), "pod1");
        assert_eq!(model::weftd_netns(Path::new("/run/netns/pod1")), "pod1");
        assert_eq!(
            model::weftd_netns(Path::new("/proc/7/ns/net")),
            "/proc/7/ns/net"
        );
    }
}
