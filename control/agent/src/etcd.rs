//! The agent's session with etcd: connect, read `config`, hold the node's lease, take
//! or retake its subnet, register the node, list, then watch. Everything it learns goes
//! to the controller as [`Event`]s; the controller never waits on etcd for forwarding.
//!
//! A session ends with an error on any failure (etcd unreachable, a watch cancelled by
//! a compaction, the lease lost, `config` changed); [`run`] starts a new one after a
//! backoff from 100 ms doubling to 5 s, and the new one lists afresh, so nothing is
//! missed. Nothing is ever removed from weftd because etcd cannot be reached.

use std::collections::BTreeMap;
use std::time::Duration;

use etcd_client::{
    Certificate, Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, Identity,
    PutOptions, TlsOptions, Txn, TxnOp, WatchOptions,
};
use ipnet::Ipv4Net;
use tokio::sync::mpsc;

use crate::config::Config;
use crate::schema::{EndpointRecord, Key, Keys, NetConfig, NodeRecord, SubnetRecord, start_index};

/// What the session tells the controller.
pub enum Event {
    /// etcd answered (true) or failed with this one-line reason.
    Health(Result<(), String>),
    /// A line for the status: why the node is not (yet) ready, or `None` when it is.
    Waiting(Option<String>),
    /// The whole state, after a (re)list: the controller makes weftd match it.
    Sync(Box<Snapshot>),
    /// A node was added or changed.
    NodePut(String, NodeRecord),
    /// A node went away (left, or its lease expired).
    NodeDel(String),
    /// One of this node's endpoints was written.
    EndpointPut(String, EndpointRecord),
    /// One of this node's endpoints was deleted.
    EndpointDel(String),
}

/// The state after a list.
pub struct Snapshot {
    /// The network.
    pub net: NetConfig,
    /// This node.
    pub me: NodeRecord,
    /// Every other node.
    pub peers: BTreeMap<String, NodeRecord>,
    /// This node's endpoints.
    pub endpoints: BTreeMap<String, EndpointRecord>,
    /// A client and the lease, for the controller's own writes (endpoints).
    pub client: Client,
    /// The node's lease.
    pub lease: i64,
}

/// Connects to one etcd member (TLS when configured), trying the endpoints in turn from
/// `*next`; the first that answers a status request is used, and `*next` is left on it,
/// so a session that ends because its member died starts on the one after it. Errors
/// are one line, naming every endpoint's failure.
///
/// One endpoint per client on purpose: etcd-client's balanced channel (all endpoints in
/// one) keeps sending requests and streams to a member that is down ("tcp connect
/// error ... Connection refused"), so with one of three members killed every session
/// failed. A session on one member ends when that member goes (its watch streams
/// break); the next session moves on, and keeps the lease, so nothing expires.
pub async fn connect(cfg: &Config, next: &mut usize) -> Result<Client, String> {
    let n = cfg.etcd_endpoints.len().max(1);
    let mut why = Vec::new();
    for i in 0..n {
        let k = (*next + i) % n;
        let Some(ep) = cfg.etcd_endpoints.get(k) else {
            break;
        };
        match connect_one(cfg, ep).await {
            Ok(c) => {
                *next = k;
                return Ok(c);
            }
            Err(e) => why.push(format!("{ep}: {e}")),
        }
    }
    *next = (*next + 1) % n;
    Err(format!("etcd {}", why.join("; ")))
}

async fn connect_one(cfg: &Config, endpoint: &str) -> Result<Client, String> {
    let mut opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(3))
        .with_keep_alive(Duration::from_secs(2), Duration::from_secs(2));
    if let Some(tls) = &cfg.tls {
        let mut t = TlsOptions::new().ca_certificate(Certificate::from_pem(&tls.ca));
        if let Some((cert, key)) = &tls.identity {
            t = t.identity(Identity::from_pem(cert, key));
        }
        opts = opts.with_tls(t);
    }
    let mut c = Client::connect([endpoint], Some(opts))
        .await
        .map_err(|e| one_line(&e))?;
    // connect() is lazy about the first request; ask for status so a wrong CA or an
    // unreachable member shows here.
    c.status().await.map_err(|e| one_line(&e))?;
    Ok(c)
}

/// An error as one line (tonic's errors may span several, and end in a debug dump of
/// their source after `, source: `, which says nothing the message does not).
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    let mut s = e.to_string();
    if let Some(i) = s.find(", source: ") {
        s.truncate(i);
    }
    let mut out = String::new();
    for part in s.lines().map(str::trim).filter(|l| !l.is_empty()) {
        if !out.is_empty() {
            out.push_str(": ");
        }
        out.push_str(part);
    }
    out
}

/// The lease the agent holds now, and a client to revoke it with: set by each session
/// once it has the lease, read by a clean stop ([`revoke`]).
pub type Held = std::sync::Arc<std::sync::Mutex<Option<(Client, i64)>>>;

/// A clean stop: revokes the node's lease, so its node, subnet and endpoint keys go at
/// once (other nodes drop it now, not after the TTL). Bounded by `timeout`; an error is
/// one line (the keys then go with the TTL, as after `kill -9`).
pub async fn revoke(held: &Held, timeout: Duration) -> Result<Option<i64>, String> {
    let h = held.lock().ok().and_then(|g| g.clone());
    let Some((mut c, lease)) = h else {
        return Ok(None);
    };
    match tokio::time::timeout(timeout, c.lease_revoke(lease)).await {
        Ok(Ok(_)) => Ok(Some(lease)),
        Ok(Err(e)) => Err(format!("revoking the lease {lease:x}: {}", one_line(&e))),
        Err(_) => Err(format!(
            "revoking the lease {lease:x}: no answer within {timeout:?}"
        )),
    }
}

/// Runs sessions forever, with backoff between them.
pub async fn run(cfg: Config, tx: mpsc::Sender<Event>, held: Held) {
    let keys = Keys::new(&cfg.prefix);
    let mut backoff = Duration::from_millis(100);
    let mut last_good: Option<NetConfig> = None;
    let mut lease: Option<i64> = None;
    let mut subnet: Option<Ipv4Net> = None;
    let mut link = Link { member: 0, held };
    loop {
        let started = tokio::time::Instant::now();
        let e = session(
            &cfg,
            &keys,
            &tx,
            &mut link,
            &mut last_good,
            &mut lease,
            &mut subnet,
        )
        .await;
        tracing::warn!(error = %e, "etcd session ended; listing again after {backoff:?}");
        let _ = tx.send(Event::Health(Err(e))).await;
        // Start the next session on the next member: this one may be the one that went.
        link.member = link.member.wrapping_add(1) % cfg.etcd_endpoints.len().max(1);
        if started.elapsed() > Duration::from_secs(10) {
            backoff = Duration::from_millis(100);
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(5));
    }
}

async fn session(
    cfg: &Config,
    keys: &Keys,
    tx: &mpsc::Sender<Event>,
    link: &mut Link,
    last_good: &mut Option<NetConfig>,
    lease_slot: &mut Option<i64>,
    prev_subnet: &mut Option<Ipv4Net>,
) -> String {
    match session_inner(cfg, keys, tx, link, last_good, lease_slot, prev_subnet).await {
        Ok(never) => match never {},
        Err(e) => e,
    }
}

enum Never {}

/// Which member the next session tries first, and where the lease held is published.
struct Link {
    member: usize,
    held: Held,
}

fn err(e: etcd_client::Error) -> String {
    one_line(&e)
}

async fn session_inner(
    cfg: &Config,
    keys: &Keys,
    tx: &mpsc::Sender<Event>,
    link: &mut Link,
    last_good: &mut Option<NetConfig>,
    lease_slot: &mut Option<i64>,
    prev_subnet: &mut Option<Ipv4Net>,
) -> Result<Never, String> {
    let mut c = connect(cfg, &mut link.member).await?;
    let _ = tx.send(Event::Health(Ok(()))).await;

    // 1. config: wait while absent; a bad one is refused and the last good one kept.
    let mut said = String::new();
    let mut say = |line: String, error: bool| {
        if line != said {
            if error {
                tracing::error!("{line}");
            } else {
                tracing::info!("{line}");
            }
            said = line;
        }
    };
    let (net, config_rev) = loop {
        let r = c.get(keys.config(), None).await.map_err(err)?;
        let rev = r.header().map_or(0, |h| h.revision());
        match r.kvs().first() {
            None => {
                let line = format!("waiting for the network config at {}", keys.config());
                say(line.clone(), false);
                let _ = tx.send(Event::Waiting(Some(line))).await;
            }
            Some(kv) => match NetConfig::parse(kv.value()) {
                Ok(n) => {
                    *last_good = Some(n.clone());
                    break (n, rev);
                }
                Err(e) => {
                    let line = format!("{} refused: {e}", keys.config());
                    say(line.clone(), true);
                    match last_good {
                        Some(n) => {
                            let _ = tx
                                .send(Event::Waiting(Some(format!(
                                    "{line}; running with the previous config"
                                ))))
                                .await;
                            break (n.clone(), rev);
                        }
                        None => {
                            let _ = tx.send(Event::Waiting(Some(line))).await;
                        }
                    }
                }
            },
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    };

    // 2. The lease: the one this process holds, or the one the node's keys are on (a
    // restart within the TTL), or a new one.
    let ttl = cfg.lease_ttl.as_secs() as i64;
    let mut lease = None;
    let mut candidates: Vec<i64> = lease_slot.iter().copied().collect();
    let mine = c.get(keys.node(&cfg.node_name), None).await.map_err(err)?;
    if let Some(kv) = mine.kvs().first()
        && kv.lease() != 0
    {
        candidates.push(kv.lease());
    }
    for id in candidates {
        match c.lease_time_to_live(id, None).await {
            Ok(r) if r.ttl() > 0 => {
                lease = Some(id);
                break;
            }
            Ok(_) => {}
            Err(e) => return Err(err(e)),
        }
    }
    let lease = match lease {
        Some(l) => l,
        None => c.lease_grant(ttl, None).await.map_err(err)?.id(),
    };
    *lease_slot = Some(lease);
    if let Ok(mut g) = link.held.lock() {
        *g = Some((c.clone(), lease));
    }
    let (mut keeper, mut keep_stream) = c.lease_keep_alive(lease).await.map_err(err)?;
    keeper.keep_alive().await.map_err(err)?;

    // 3. The subnet.
    let subnet = take_subnet(&mut c, cfg, keys, &net, lease, *prev_subnet).await?;
    *prev_subnet = Some(subnet);
    let me = NodeRecord {
        public_ip: cfg.public_ip,
        subnet,
        gateway_mac: weft_cluster::mac_of(first(subnet)).to_string(),
        encap: net.encap,
    };
    let put_lease = Some(PutOptions::new().with_lease(lease));
    c.put(
        keys.node(&cfg.node_name),
        serde_json::to_vec(&me).expect("serialisable"),
        put_lease.clone(),
    )
    .await
    .map_err(err)?;
    tracing::info!(node = %cfg.node_name, %subnet, lease = format!("{lease:x}"), "registered");

    // 4. List at one revision.
    let r = c
        .get(keys.nodes(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(err)?;
    let rev = r.header().map_or(0, |h| h.revision()).max(config_rev);
    let mut peers = BTreeMap::new();
    for kv in r.kvs() {
        if let Key::Node(name) = keys.classify(kv.key())
            && name != cfg.node_name
        {
            match serde_json::from_slice::<NodeRecord>(kv.value()) {
                Ok(n) => {
                    peers.insert(name, n);
                }
                Err(e) => tracing::warn!(node = %name, "node record ignored: {e}"),
            }
        }
    }
    let r = c
        .get(
            keys.endpoints(&cfg.node_name),
            Some(GetOptions::new().with_prefix().with_revision(rev)),
        )
        .await
        .map_err(err)?;
    let mut endpoints = BTreeMap::new();
    for kv in r.kvs() {
        if let Key::Endpoint(_, id) = keys.classify(kv.key()) {
            match serde_json::from_slice::<EndpointRecord>(kv.value()) {
                Ok(e) => {
                    endpoints.insert(id, e);
                }
                Err(e) => tracing::warn!(endpoint = %id, "endpoint record ignored: {e}"),
            }
        }
    }
    let _ = tx
        .send(Event::Sync(Box::new(Snapshot {
            net: net.clone(),
            me: me.clone(),
            peers,
            endpoints,
            client: c.clone(),
            lease,
        })))
        .await;

    // 5. Watch from the listed revision.
    let from = WatchOptions::new()
        .with_prefix()
        .with_start_revision(rev + 1);
    let mut nodes = c
        .watch(keys.nodes(), Some(from.clone()))
        .await
        .map_err(err)?;
    let mut eps = c
        .watch(keys.endpoints(&cfg.node_name), Some(from))
        .await
        .map_err(err)?;
    let mut conf = c
        .watch(
            keys.config(),
            Some(WatchOptions::new().with_start_revision(rev + 1)),
        )
        .await
        .map_err(err)?;
    let mut tick = tokio::time::interval(cfg.lease_ttl / 3);
    loop {
        tokio::select! {
            _ = tick.tick() => {
                keeper.keep_alive().await.map_err(err)?;
            }
            m = keep_stream.message() => {
                match m.map_err(err)? {
                    Some(r) if r.ttl() > 0 => {}
                    _ => return Err(format!("the node's lease {lease:x} expired")),
                }
            }
            m = nodes.message() => {
                let r = watch_response(m)?;
                for e in r.events() {
                    let Some(kv) = e.kv() else { continue };
                    let Key::Node(name) = keys.classify(kv.key()) else { continue };
                    if name == cfg.node_name {
                        if e.event_type() == EventType::Delete {
                            return Err("this node's registration was deleted".into());
                        }
                        continue;
                    }
                    match e.event_type() {
                        EventType::Put => match serde_json::from_slice::<NodeRecord>(kv.value()) {
                            Ok(n) => { let _ = tx.send(Event::NodePut(name, n)).await; }
                            Err(e) => tracing::warn!(node = %name, "node record ignored: {e}"),
                        },
                        EventType::Delete => { let _ = tx.send(Event::NodeDel(name)).await; }
                    }
                }
            }
            m = eps.message() => {
                let r = watch_response(m)?;
                for e in r.events() {
                    let Some(kv) = e.kv() else { continue };
                    let Key::Endpoint(_, id) = keys.classify(kv.key()) else { continue };
                    match e.event_type() {
                        EventType::Put => match serde_json::from_slice::<EndpointRecord>(kv.value()) {
                            Ok(ep) => { let _ = tx.send(Event::EndpointPut(id, ep)).await; }
                            Err(e) => tracing::warn!(endpoint = %id, "endpoint record ignored: {e}"),
                        },
                        EventType::Delete => { let _ = tx.send(Event::EndpointDel(id)).await; }
                    }
                }
            }
            m = conf.message() => {
                let r = watch_response(m)?;
                if let Some(e) = r.events().last() {
                    let value = e.kv().map(|kv| kv.value().to_vec()).unwrap_or_default();
                    match NetConfig::parse(&value) {
                        // The config is good again (or was rewritten unchanged).
                        Ok(n) if n == net => {
                            let _ = tx.send(Event::Waiting(None)).await;
                        }
                        Ok(_) => return Err("the network config changed".into()),
                        Err(why) => {
                            let line = format!("{} refused: {why}; running with the previous config", keys.config());
                            tracing::error!("{line}");
                            let _ = tx.send(Event::Waiting(Some(line))).await;
                        }
                    }
                }
            }
        }
    }
}

fn watch_response(
    m: Result<Option<etcd_client::WatchResponse>, etcd_client::Error>,
) -> Result<etcd_client::WatchResponse, String> {
    match m.map_err(err)? {
        None => Err("the watch stream ended".into()),
        Some(r) if r.compact_revision() > 0 => Err(format!(
            "the watch was compacted (revision {})",
            r.compact_revision()
        )),
        Some(r) if r.canceled() => Err(format!("the watch was cancelled: {}", r.cancel_reason())),
        Some(r) => Ok(r),
    }
}

fn first(s: Ipv4Net) -> std::net::Ipv4Addr {
    std::net::Ipv4Addr::from(u32::from(s.network()).wrapping_add(1))
}

/// Takes this node's subnet back (a record with its name, rebound to `lease`), or a
/// free one with a transaction that succeeds only if its key does not exist: two nodes
/// never hold the same subnet, whatever the timing.
async fn take_subnet(
    c: &mut Client,
    cfg: &Config,
    keys: &Keys,
    net: &NetConfig,
    lease: i64,
    prev: Option<Ipv4Net>,
) -> Result<Ipv4Net, String> {
    let record = serde_json::to_vec(&SubnetRecord {
        node: cfg.node_name.clone(),
        public_ip: cfg.public_ip,
    })
    .expect("serialisable");
    let put = || PutOptions::new().with_lease(lease);
    let count = net.subnet_count();
    let start = start_index(&cfg.node_name);
    for _round in 0..count.min(64) + 4 {
        let r = c
            .get(keys.subnets(), Some(GetOptions::new().with_prefix()))
            .await
            .map_err(err)?;
        let mut taken = std::collections::HashSet::new();
        for kv in r.kvs() {
            let Key::Subnet(name) = keys.classify(kv.key()) else {
                continue;
            };
            let Some(s) = parse_subnet_key(&name) else {
                continue;
            };
            taken.insert(s);
            let Ok(rec) = serde_json::from_slice::<SubnetRecord>(kv.value()) else {
                continue;
            };
            let fits = net.pod_cidr.contains(&s) && s.prefix_len() == net.subnet_len;
            if rec.node == cfg.node_name && fits {
                if kv.lease() == lease && rec.public_ip == cfg.public_ip {
                    return Ok(s);
                }
                // Ours from before (another lease, or a new public IP): rebind it, if
                // nobody changed it since we read it.
                let t = Txn::new()
                    .when([Compare::mod_revision(
                        kv.key().to_vec(),
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put(kv.key().to_vec(), record.clone(), Some(put()))]);
                if c.txn(t).await.map_err(err)?.succeeded() {
                    tracing::info!(subnet = %s, "took back this node's subnet");
                    return Ok(s);
                }
            }
        }
        if taken.len() as u64 >= count {
            return Err(format!(
                "no free subnet: all {count} /{} subnets of {} are taken",
                net.subnet_len, net.pod_cidr
            ));
        }
        // Try the subnet this process held before (its lease expired while etcd was
        // out of reach: its pods still use it), then a handful of free ones from this
        // node's starting point.
        let mut tried = 0;
        let before = prev.filter(|p| net.pod_cidr.contains(p) && p.prefix_len() == net.subnet_len);
        let order = before
            .into_iter()
            .chain((0..count).map(|i| net.nth_subnet(start.wrapping_add(i))));
        for s in order {
            if taken.contains(&s) {
                continue;
            }
            let key = keys.subnet(s);
            let t = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, record.clone(), Some(put()))]);
            if c.txn(t).await.map_err(err)?.succeeded() {
                tracing::info!(subnet = %s, "took a free subnet");
                return Ok(s);
            }
            tried += 1;
            if tried >= 4 {
                break;
            }
        }
    }
    Err("could not take a subnet (every attempt lost to another node)".into())
}

/// `198.19.3.0-24` → 198.19.3.0/24.
pub fn parse_subnet_key(name: &str) -> Option<Ipv4Net> {
    name.replacen('-', "/", 1).parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnet_keys_and_error_lines() {
        assert_eq!(
            parse_subnet_key("198.19.3.0-24"),
            Some("198.19.3.0/24".parse().unwrap())
        );
        assert_eq!(parse_subnet_key("198.19.3.0"), None);
        assert_eq!(parse_subnet_key("x-24"), None);
        let e = "grpc request error: code: 'Unavailable', message: \"invalid peer certificate: UnknownIssuer\", source: tonic::transport::Error(Transport, X)\nmore";
        assert_eq!(
            one_line(&e),
            "grpc request error: code: 'Unavailable', message: \"invalid peer certificate: UnknownIssuer\""
        );
        assert_eq!(one_line(&"a\n  b\n"), "a: b");
    }
}
