//! The commands: each one a short conversation with the agent and the IPAM plugin.
//!
//! ADD: `status` (the node's subnet and gateway; not ready → 11), IPAM ADD, `attach`;
//! a failed attach undoes what ADD did (agent `detach` unless the interface belonged
//! to someone else, IPAM DEL). DEL: `detach` and IPAM DEL, both always, success when
//! everything is already gone. CHECK: agent `check` of prevResult's addresses, IPAM
//! CHECK. GC: agent `gc` with the attachments to keep, then IPAM GC (or the own sweep
//! of host-local's directory). STATUS: the agent's `ready`, then IPAM STATUS.

use std::time::Duration;

use weft_agent_proto::{
    Attach, AttachReply, Attachment, Client, ClientError, Detach, Empty, ErrorKind, Gc, GcReply,
    Request, StatusReply,
};

use crate::config::{DEFAULT_IPAM, NetConf, SUPPORTED_VERSIONS, at_least_1_1};
use crate::delegate::{
    Delegate, delegate_config, parse_result, release_host_local, sweep_host_local,
};
use crate::env::{Command, Env};
use crate::error::{CniError, code};
use crate::types::{CniResult, Interface, IpConfig, RouteOut};

/// How long one agent request may take (an attach programs netlink, weftd and etcd).
pub const AGENT_TIMEOUT: Duration = Duration::from_secs(30);

/// What one invocation prints: its stdout on success (nothing for DEL, GC, STATUS), or
/// an error; and the version to tag an error with.
pub struct Outcome {
    /// The config's version, or the newest this plugin speaks before it is known.
    pub version: String,
    /// The result.
    pub result: Result<Option<String>, CniError>,
}

/// Runs one invocation.
pub fn run(env: &Env, stdin: &[u8]) -> Outcome {
    let newest = SUPPORTED_VERSIONS[SUPPORTED_VERSIONS.len() - 1].to_string();
    if env.command == Command::Version {
        return Outcome {
            version: newest.clone(),
            result: Ok(Some(version_reply(stdin, &newest))),
        };
    }
    let conf = match NetConf::parse(stdin) {
        Ok(c) => c,
        Err(e) => {
            return Outcome {
                version: newest,
                result: Err(e),
            };
        }
    };
    let result = match env.command {
        Command::Add => add(env, &conf).map(Some),
        Command::Del => del(env, &conf).map(|()| None),
        Command::Check => check(env, &conf).map(|()| None),
        Command::Status => status(env, &conf).map(|()| None),
        Command::Gc => gc(env, &conf).map(|()| None),
        Command::Version => unreachable!("answered above"),
    };
    Outcome {
        version: conf.cni_version.clone(),
        result,
    }
}

/// VERSION's answer: the versions spoken, tagged with the one asked for if we speak it.
fn version_reply(stdin: &[u8], newest: &str) -> String {
    let asked = serde_json::from_slice::<serde_json::Value>(stdin)
        .ok()
        .and_then(|v| {
            v.get("cniVersion")
                .and_then(|v| v.as_str())
                .map(String::from)
        })
        .filter(|v| SUPPORTED_VERSIONS.contains(&v.as_str()))
        .unwrap_or_else(|| newest.to_string());
    serde_json::json!({"cniVersion": asked, "supportedVersions": SUPPORTED_VERSIONS}).to_string()
}

/// A CNI error for a failed agent call.
fn agent_error(e: ClientError) -> CniError {
    match e {
        ClientError::Connect { .. } => CniError::new(
            code::TRY_AGAIN_LATER,
            format!("{e} (is weft-agent running on this node?)"),
        ),
        ClientError::Io(_) => CniError::new(code::TRY_AGAIN_LATER, e.to_string()),
        ClientError::Protocol(_) => CniError::new(code::IO, e.to_string()),
        ClientError::Agent(body) => {
            let c = match body.kind {
                ErrorKind::NotReady => code::TRY_AGAIN_LATER,
                ErrorKind::BadRequest => code::INVALID_CONFIG,
                ErrorKind::Exists => code::EXISTS,
                ErrorKind::Missing => code::MISSING,
                ErrorKind::Failed => code::IO,
            };
            CniError::new(c, format!("weft-agent: {}", body.message))
        }
    }
}

fn connect(conf: &NetConf) -> Result<Client, CniError> {
    Client::connect(&conf.agent_socket, AGENT_TIMEOUT).map_err(agent_error)
}

/// The node's status; not ready is code 11 with the agent's reason.
fn ready_status(client: &mut Client) -> Result<StatusReply, CniError> {
    let s: StatusReply = client.call(&Request::Status).map_err(agent_error)?;
    if !s.ready {
        return Err(CniError::new(
            code::TRY_AGAIN_LATER,
            format!(
                "weft-agent on node {} cannot take pods yet: {}",
                s.node,
                s.reason.as_deref().unwrap_or("not ready")
            ),
        ));
    }
    Ok(s)
}

fn range_of(s: &StatusReply) -> Option<(ipnet::IpNet, std::net::IpAddr)> {
    Some((s.subnet?, s.gateway?))
}

/// The range from a previous result (DEL and CHECK when the agent is away).
fn range_of_prev(conf: &NetConf) -> Option<(ipnet::IpNet, std::net::IpAddr)> {
    let p = conf.prev_result.as_ref()?;
    let ip = p.ips.first()?;
    Some((
        ip.address.trunc(),
        ip.gateway.unwrap_or(ip.address.network()),
    ))
}

/// The IPAM plugin, the version to speak to it and the config to give it.
struct Ipam {
    delegate: Delegate,
    version: String,
    config: Vec<u8>,
}

impl Ipam {
    fn new(
        env: &Env,
        conf: &NetConf,
        range: Option<(ipnet::IpNet, std::net::IpAddr)>,
    ) -> Result<Ipam, CniError> {
        let section = conf.ipam_section(range)?;
        let delegate = Delegate::find(conf.ipam_type(), &env.path)?;
        let version = delegate.negotiate(&conf.cni_version)?;
        let config = delegate_config(&conf.raw, section, &version);
        Ok(Ipam {
            delegate,
            version,
            config,
        })
    }

    fn exec(&self, command: &str) -> Result<Vec<u8>, CniError> {
        self.delegate.exec(command, &self.config)
    }

    fn speaks_1_1(&self) -> bool {
        at_least_1_1(&self.version)
    }
}

fn attach_args(
    env: &Env,
    addresses: Vec<ipnet::IpNet>,
    gateway: Option<std::net::IpAddr>,
) -> Attach {
    Attach {
        attachment: attachment(env),
        netns: env.netns.clone().unwrap_or_default(),
        addresses,
        gateway,
        pod_namespace: env.pod_namespace.clone(),
        pod_name: env.pod_name.clone(),
    }
}

fn attachment(env: &Env) -> Attachment {
    Attachment {
        container_id: env.container_id().to_string(),
        ifname: env.ifname().to_string(),
    }
}

fn add(env: &Env, conf: &NetConf) -> Result<String, CniError> {
    let mut client = connect(conf)?;
    let status = ready_status(&mut client)?;
    let ipam = Ipam::new(env, conf, range_of(&status))?;
    let out = ipam.exec("ADD")?;
    let undo_ipam = |why: &CniError| {
        if let Err(e) = ipam.exec("DEL") {
            eprintln!(
                "weft-cni: undoing the address after a failed ADD ({}): {e}",
                why.msg
            );
        }
    };
    let allocated = match parse_result(&ipam.delegate.kind, &out) {
        Ok(r) if !r.ips.is_empty() => r,
        Ok(_) => {
            let e = CniError::new(
                code::INVALID_CONFIG,
                format!("{} gave no address", ipam.delegate.kind),
            );
            undo_ipam(&e);
            return Err(e);
        }
        Err(e) => {
            undo_ipam(&e);
            return Err(e);
        }
    };
    let addresses = allocated.ips.iter().map(|ip| ip.address).collect();
    let gateway = allocated.ips.iter().find_map(|ip| ip.gateway);
    let req = Request::Attach(attach_args(env, addresses, gateway));
    let reply: AttachReply = match client.call(&req) {
        Ok(r) => r,
        Err(e) => {
            let exists = matches!(&e, ClientError::Agent(b) if b.kind == ErrorKind::Exists);
            let err = agent_error(e);
            // An interface that already existed is someone else's: leave it.
            if !exists {
                let detach = Request::Detach(Detach {
                    attachment: attachment(env),
                    netns: env.netns.clone(),
                });
                let undone = Client::connect(&conf.agent_socket, AGENT_TIMEOUT)
                    .and_then(|mut c| c.call::<Empty>(&detach));
                if let Err(d) = undone {
                    eprintln!("weft-cni: undoing a failed attach ({}): {d}", err.msg);
                }
            }
            undo_ipam(&err);
            return Err(err);
        }
    };
    let result = CniResult {
        cni_version: conf.cni_version.clone(),
        interfaces: vec![Interface {
            name: reply.ifname,
            mac: reply.mac,
            mtu: at_least_1_1(&conf.cni_version).then_some(reply.mtu),
            sandbox: env.netns.clone(),
        }],
        ips: reply
            .addresses
            .iter()
            .map(|a| IpConfig {
                address: *a,
                gateway: allocated
                    .ips
                    .iter()
                    .find(|ip| ip.address.addr() == a.addr())
                    .and_then(|ip| ip.gateway),
                interface: Some(0),
            })
            .collect(),
        routes: reply
            .routes
            .into_iter()
            .map(|r| RouteOut {
                dst: r.dst,
                gw: r.gw,
            })
            .collect(),
        dns: conf.dns.clone().unwrap_or(allocated.dns),
    };
    serde_json::to_string(&result)
        .map_err(|e| CniError::new(code::IO, format!("encoding the result: {e}")))
}

fn del(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let mut first_error = None;
    let mut status = None;
    match connect(conf) {
        Ok(mut client) => {
            status = client.call::<StatusReply>(&Request::Status).ok();
            let req = Request::Detach(Detach {
                attachment: attachment(env),
                netns: env.netns.clone(),
            });
            if let Err(e) = client.call::<Empty>(&req) {
                first_error = Some(agent_error(e));
            }
        }
        Err(e) => first_error = Some(e),
    }
    let range = status
        .as_ref()
        .and_then(range_of)
        .or_else(|| range_of_prev(conf));
    let released = if range.is_none() && conf.ipam_needs_ranges() {
        release_host_local(&conf.host_local_dir(), &attachment(env)).map(drop)
    } else {
        Ipam::new(env, conf, range).and_then(|ipam| ipam.exec("DEL").map(drop))
    };
    match (first_error, released) {
        (Some(e), _) | (None, Err(e)) => Err(e),
        (None, Ok(())) => Ok(()),
    }
}

fn check(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    let prev = conf.prev_result.as_ref().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "CHECK needs prevResult (the ADD's result)",
        )
    })?;
    let index = prev
        .interfaces
        .iter()
        .position(|i| i.name == env.ifname() && i.sandbox.is_some())
        .ok_or_else(|| {
            CniError::new(
                code::INVALID_CONFIG,
                format!("prevResult has no interface {} in a sandbox", env.ifname()),
            )
        })?;
    let mine: Vec<&IpConfig> = prev
        .ips
        .iter()
        .filter(|ip| ip.interface.is_none_or(|i| i == index))
        .collect();
    let mut client = connect(conf)?;
    let status = client
        .call::<StatusReply>(&Request::Status)
        .map_err(agent_error)?;
    let req = Request::Check(attach_args(
        env,
        mine.iter().map(|ip| ip.address).collect(),
        mine.iter().find_map(|ip| ip.gateway),
    ));
    client.call::<Empty>(&req).map_err(agent_error)?;
    let range = range_of(&status).or_else(|| range_of_prev(conf));
    Ipam::new(env, conf, range)?.exec("CHECK").map(drop)
}

fn needs_1_1(conf: &NetConf, what: &str) -> Result<(), CniError> {
    if at_least_1_1(&conf.cni_version) {
        Ok(())
    } else {
        Err(CniError::new(
            code::INCOMPATIBLE_VERSION,
            format!(
                "{what} needs cniVersion 1.1.0; the config says {}",
                conf.cni_version
            ),
        ))
    }
}

fn status(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    needs_1_1(conf, "STATUS")?;
    let unavailable = |e: CniError| CniError::new(code::NOT_AVAILABLE, e.msg);
    let mut client = connect(conf).map_err(unavailable)?;
    let s = ready_status(&mut client).map_err(unavailable)?;
    let ipam = Ipam::new(env, conf, range_of(&s))?;
    // Debian's host-local speaks only 1.0.0, which has no STATUS: nothing to ask it.
    if ipam.speaks_1_1() {
        ipam.exec("STATUS")?;
    }
    Ok(())
}

fn gc(env: &Env, conf: &NetConf) -> Result<(), CniError> {
    needs_1_1(conf, "GC")?;
    // An absent list would mean "keep nothing": refuse rather than remove every pod.
    let keep = conf.attachments.clone().ok_or_else(|| {
        CniError::new(
            code::INVALID_CONFIG,
            "GC needs cni.dev/attachments (the attachments to keep)",
        )
    })?;
    let mut client = connect(conf)?;
    let status = client
        .call::<StatusReply>(&Request::Status)
        .map_err(agent_error)?;
    let removed: GcReply = client
        .call(&Request::Gc(Gc { keep: keep.clone() }))
        .map_err(agent_error)?;
    for a in &removed.removed {
        eprintln!("weft-cni: GC removed {}:{}", a.container_id, a.ifname);
    }
    let range = range_of(&status);
    if conf.ipam_type() == DEFAULT_IPAM && conf.ipam_needs_ranges() && range.is_none() {
        // No subnet to describe host-local's config with; its files can still be swept.
        sweep_host_local(&conf.host_local_dir(), &keep)?;
        return Ok(());
    }
    let ipam = Ipam::new(env, conf, range)?;
    if ipam.speaks_1_1() {
        ipam.exec("GC")?;
    } else if ipam.delegate.kind == DEFAULT_IPAM {
        for ip in sweep_host_local(&conf.host_local_dir(), &keep)? {
            eprintln!("weft-cni: GC released {ip} in host-local's reservations");
        }
    }
    Ok(())
}
