//! `weft-agent` on lab nodes: an [`AgentNode`] is a node namespace running `weftd` (no
//! ports, no flows: the agent makes them) and `weft-agent` beside it, both started
//! through the [`Lab`], with their configuration, sockets and state in
//! `<lab dir>/<label>/`.
//!
//! The agent is configured as docs/cluster-state.md and the shared design say (a TOML
//! file; `node_name`, `public_ip`, `etcd_endpoints`, TLS files, `prefix`, `lease_ttl`,
//! `weftd_socket`, `socket`, `metrics`, `cni_conf_dir`) and asked for its status over its
//! socket with `weft-agent-proto`'s client, as the CNI plugin does. The binary is found
//! like `weftd`'s (next to the test executable, or `WEFT_AGENT`).

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use weft_agent_proto::{
    AttachReply, Attachment, Client, ClientError, Detach, Request, StatusReply,
};

use crate::etcd::EtcdCluster;
use crate::lab::{Lab, LabError, Ns, ProcId, Result};
use crate::node::{Weftd, WeftdSpec, binary};

/// Overrides where `weft-agent` is found.
pub const AGENT_ENV: &str = "WEFT_AGENT";
/// Where each agent serves metrics, on its node's loopback.
pub const AGENT_METRICS_ADDR: &str = "127.0.0.1:9102";

/// The `weft-agent` binary.
pub fn agent_binary() -> PathBuf {
    binary("weft-agent", AGENT_ENV)
}

/// How an agent reaches etcd.
#[derive(Clone, Debug, Default)]
pub struct EtcdAccess {
    /// Client URLs.
    pub endpoints: Vec<String>,
    /// `etcd_ca`, `etcd_cert`, `etcd_key`.
    pub ca: Option<PathBuf>,
    /// The client certificate.
    pub cert: Option<PathBuf>,
    /// Its key.
    pub key: Option<PathBuf>,
}

impl EtcdAccess {
    /// Every member of `etcd`, with its client certificate when it speaks TLS.
    pub fn of(etcd: &EtcdCluster) -> EtcdAccess {
        EtcdAccess {
            endpoints: etcd.endpoints(),
            ca: etcd.certs().map(|c| c.ca.clone()),
            cert: etcd.certs().map(|c| c.client_cert.clone()),
            key: etcd.certs().map(|c| c.client_key.clone()),
        }
    }
}

/// What an agent is started with.
#[derive(Clone, Debug)]
pub struct AgentSpec {
    /// `node_name`.
    pub node_name: String,
    /// `public_ip`.
    pub public_ip: Ipv4Addr,
    /// etcd.
    pub etcd: EtcdAccess,
    /// `prefix` (default: the agent's, `/weft/v1/`).
    pub prefix: Option<String>,
    /// `lease_ttl` in seconds.
    pub lease_ttl: u64,
    /// More `key = value` lines for the TOML file.
    pub extra: String,
}

impl AgentSpec {
    /// Node `name` at `ip` on `etcd`, with a short lease (tests: 3 s).
    pub fn new(name: &str, ip: Ipv4Addr, etcd: EtcdAccess) -> AgentSpec {
        AgentSpec {
            node_name: name.to_string(),
            public_ip: ip,
            etcd,
            prefix: None,
            lease_ttl: 3,
            extra: String::new(),
        }
    }
}

fn toml_str(p: &Path) -> String {
    format!("{:?}", p.display().to_string())
}

/// A `weft-agent` running in a node namespace.
pub struct Agent {
    node: Ns,
    label: String,
    dir: PathBuf,
    config: PathBuf,
    proc: Option<ProcId>,
    starts: u32,
}

impl Agent {
    /// Writes `<lab dir>/<label>/agent.toml` and starts the agent in `node`, talking
    /// to the weftd whose socket is `weftd_socket`. Does not wait.
    pub fn start(
        lab: &mut Lab,
        node: &Ns,
        label: &str,
        weftd_socket: &Path,
        spec: &AgentSpec,
    ) -> Result<Agent> {
        let dir = lab.dir().join(label);
        std::fs::create_dir_all(dir.join("cni"))?;
        let mut toml = format!(
            "node_name = \"{}\"\npublic_ip = \"{}\"\netcd_endpoints = [{}]\nlease_ttl = {}\n\
             weftd_socket = {}\nsocket = {}\nmetrics = \"{AGENT_METRICS_ADDR}\"\n\
             cni_conf_dir = {}\n",
            spec.node_name,
            spec.public_ip,
            spec.etcd
                .endpoints
                .iter()
                .map(|e| format!("\"{e}\""))
                .collect::<Vec<_>>()
                .join(", "),
            spec.lease_ttl,
            toml_str(weftd_socket),
            toml_str(&dir.join("agent.sock")),
            toml_str(&dir.join("cni")),
        );
        for (k, v) in [
            ("etcd_ca", &spec.etcd.ca),
            ("etcd_cert", &spec.etcd.cert),
            ("etcd_key", &spec.etcd.key),
        ] {
            if let Some(p) = v {
                toml.push_str(&format!("{k} = {}\n", toml_str(p)));
            }
        }
        if let Some(p) = &spec.prefix {
            toml.push_str(&format!("prefix = \"{p}\"\n"));
        }
        toml.push_str(&spec.extra);
        let config = dir.join("agent.toml");
        std::fs::write(&config, toml)?;
        let mut a = Agent {
            node: node.clone(),
            label: label.to_string(),
            dir,
            config,
            proc: None,
            starts: 0,
        };
        a.spawn(lab)?;
        Ok(a)
    }

    fn spawn(&mut self, lab: &mut Lab) -> Result<()> {
        self.starts += 1;
        let mut cmd = self.node.command(&agent_binary().display().to_string());
        cmd.arg("--config").arg(&self.config);
        cmd.env("RUST_LOG", crate::node::rust_log());
        self.proc = Some(lab.spawn(&self.log_label(self.starts), cmd)?);
        Ok(())
    }

    fn log_label(&self, start: u32) -> String {
        format!("{}.{start}", self.label)
    }

    /// Its directory (configuration, socket, CNI configuration directory `cni/`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Its configuration file.
    pub fn config(&self) -> &Path {
        &self.config
    }

    /// Its socket.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("agent.sock")
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

    /// Whether it runs.
    pub fn is_running(&self, lab: &mut Lab) -> bool {
        self.proc.is_some_and(|p| lab.is_running(p))
    }

    /// Its process id while it runs.
    pub fn pid(&self, lab: &Lab) -> Option<u32> {
        lab.pid(self.proc?)
    }

    /// Sends `signal` (e.g. `libc::SIGSTOP`) to it while it runs ([`Lab::signal`]).
    pub fn signal(&self, lab: &Lab, signal: i32) -> Result<()> {
        let id = self
            .proc
            .ok_or_else(|| LabError("the agent is not running".into()))?;
        lab.signal(id, signal)
    }

    /// A connection to its socket.
    pub fn client(&self) -> std::result::Result<Client, ClientError> {
        Client::connect(&self.socket(), Duration::from_secs(5))
    }

    /// Its status over its socket.
    pub fn status(&self) -> Result<StatusReply> {
        self.client()
            .and_then(|mut c| c.call(&Request::Status))
            .map_err(|e| LabError(format!("{}: status: {e}", self.label)))
    }

    /// Waits until its status satisfies `pred` (at most `timeout`); the status, or an
    /// error with the last status (or why there was none) and the log.
    pub fn wait_status(
        &self,
        lab: &mut Lab,
        timeout: Duration,
        what: &str,
        pred: impl Fn(&StatusReply) -> bool,
    ) -> Result<StatusReply> {
        let start = Instant::now();
        loop {
            if !self.is_running(lab) {
                return Err(LabError(format!(
                    "{} exited while waiting for {what}:\n{}",
                    self.label,
                    self.log(lab)
                )));
            }
            let last = match self.status() {
                Ok(s) if pred(&s) => return Ok(s),
                Ok(s) => format!("{s:?}"),
                Err(e) => e.0,
            };
            if start.elapsed() > timeout {
                return Err(LabError(format!(
                    "{}: no {what} after {timeout:?}; last status: {last}\n{}",
                    self.label,
                    self.log(lab)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until it is ready (subnet taken, weftd programmed).
    pub fn wait_ready(&self, lab: &mut Lab, timeout: Duration) -> Result<StatusReply> {
        self.wait_status(lab, timeout, "ready status", |s| s.ready)
    }

    /// Attaches a pod interface as the CNI plugin would.
    pub fn attach(&self, a: weft_agent_proto::Attach) -> Result<AttachReply> {
        self.client()
            .and_then(|mut c| c.call(&Request::Attach(a)))
            .map_err(|e| LabError(format!("{}: attach: {e}", self.label)))
    }

    /// Detaches a pod interface.
    pub fn detach(&self, container_id: &str, ifname: &str, netns: Option<&str>) -> Result<()> {
        let d = Detach {
            attachment: Attachment {
                container_id: container_id.into(),
                ifname: ifname.into(),
            },
            netns: netns.map(str::to_string),
        };
        self.client()
            .and_then(|mut c| c.call::<serde_json::Value>(&Request::Detach(d)))
            .map(drop)
            .map_err(|e| LabError(format!("{}: detach: {e}", self.label)))
    }

    /// Stops it with SIGTERM (SIGKILL after 5 s); its exit status, None if killed.
    pub fn stop(&mut self, lab: &mut Lab) -> Option<ExitStatus> {
        let p = self.proc.take()?;
        lab.stop(p, Duration::from_secs(5))
    }

    /// Kills it with SIGKILL.
    pub fn kill(&mut self, lab: &mut Lab) -> Option<ExitStatus> {
        let p = self.proc.take()?;
        lab.kill(p)
    }

    /// Starts it again (after a stop or a kill) with the same configuration.
    pub fn start_again(&mut self, lab: &mut Lab) -> Result<()> {
        if self.is_running(lab) {
            return Err(LabError(format!("{} is still running", self.label)));
        }
        self.spawn(lab)
    }
}

/// A node run by `weft-agent`: its namespace, its `weftd`, its agent.
pub struct AgentNode {
    /// The node's name in etcd.
    pub name: String,
    /// Its namespace.
    pub ns: Ns,
    /// Its underlay address.
    pub ip: Ipv4Addr,
    /// Its `weftd` (label `weftd-<name>`).
    pub weftd: Weftd,
    /// Its agent (label `agent-<name>`).
    pub agent: Agent,
}

impl AgentNode {
    /// Starts `weftd` (empty: no ports, no flows) in `ns`, waits until it is up, then
    /// starts the agent with `spec`. Does not wait for the agent.
    pub fn start(lab: &mut Lab, ns: &Ns, spec: &AgentSpec) -> Result<AgentNode> {
        let weftd = Weftd::start(
            lab,
            ns,
            &format!("weftd-{}", spec.node_name),
            &WeftdSpec {
                workers: 2,
                ports: String::new(),
                flows: String::new(),
            },
        )?;
        weftd.wait_ready(lab, Duration::from_secs(10))?;
        let agent = Agent::start(
            lab,
            ns,
            &format!("agent-{}", spec.node_name),
            &weftd.dir().join("weftd.sock"),
            spec,
        )?;
        Ok(AgentNode {
            name: spec.node_name.clone(),
            ns: ns.clone(),
            ip: spec.public_ip,
            weftd,
            agent,
        })
    }

    /// weftd's control socket.
    pub fn weftd_socket(&self) -> PathBuf {
        self.weftd.dir().join("weftd.sock")
    }

    /// Both logs.
    pub fn logs(&self, lab: &Lab) -> String {
        format!("{}{}", self.weftd.log(lab), self.agent.log(lab))
    }

    /// weftd's flows, as `weftctl dump-flows` prints them.
    pub fn dump_flows(&self) -> Result<String> {
        let out = std::process::Command::new(binary("weftctl", "WEFTCTL"))
            .arg("-s")
            .arg(self.weftd_socket())
            .arg("dump-flows")
            .output()?;
        if !out.status.success() {
            return Err(LabError(format!(
                "weftctl dump-flows on {}: {}",
                self.name,
                String::from_utf8_lossy(&out.stderr).trim()
            )));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

/// The agent metrics page served in `ns` (at [`AGENT_METRICS_ADDR`], the node's loopback),
/// fetched with weft-nettool.
pub fn scrape_metrics(ns: &Ns) -> Result<String> {
    ns.run(&[
        &crate::node::nettool_binary().display().to_string(),
        "http-get",
        "--to",
        AGENT_METRICS_ADDR,
        "--path",
        "/metrics",
        "--timeout",
        "3",
    ])
}
