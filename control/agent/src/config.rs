//! The agent's settings: a TOML file (default `/etc/weft/agent.toml`), every key also a
//! flag; a flag wins over the file.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Where the settings are read from unless `--config` says otherwise.
pub const DEFAULT_CONFIG: &str = "/etc/weft/agent.toml";

/// The settings file as written (every key optional here; [`Config::resolve`] checks).
#[derive(Clone, Debug, Default, Deserialize, clap::Args)]
#[serde(deny_unknown_fields)]
pub struct Settings {
    /// This node's name (default: the host name).
    #[arg(long)]
    pub node_name: Option<String>,
    /// This node's underlay address: the tunnels' endpoint.
    #[arg(long)]
    pub public_ip: Option<Ipv4Addr>,
    /// etcd's client URLs (`http://198.18.0.1:2379`), comma-separated as a flag.
    #[arg(long, value_delimiter = ',')]
    pub etcd_endpoints: Option<Vec<String>>,
    /// The CA that signed etcd's server certificate (PEM); with it, etcd is spoken
    /// over TLS.
    #[arg(long)]
    pub etcd_ca: Option<PathBuf>,
    /// The agent's client certificate for etcd (PEM), with `etcd_key`.
    #[arg(long)]
    pub etcd_cert: Option<PathBuf>,
    /// The client certificate's key (PEM).
    #[arg(long)]
    pub etcd_key: Option<PathBuf>,
    /// The key prefix of the cluster's state (default `/weft/v1/`).
    #[arg(long)]
    pub prefix: Option<String>,
    /// The TTL of the node's lease in seconds (default 60).
    #[arg(long)]
    pub lease_ttl: Option<u64>,
    /// weftd's control socket (default /run/weft/weftd.sock).
    #[arg(long)]
    pub weftd_socket: Option<PathBuf>,
    /// The agent's own socket, for the CNI plugin (default /run/weft/agent.sock).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Serve Prometheus metrics on this address (`127.0.0.1:9102`); default off.
    #[arg(long)]
    pub metrics: Option<SocketAddr>,
    /// Where the CNI configuration list is written when the node is ready (default
    /// /etc/cni/net.d).
    #[arg(long)]
    pub cni_conf_dir: Option<PathBuf>,
    /// The underlay device, for the MTU (default: the device holding public_ip).
    #[arg(long)]
    pub underlay_dev: Option<String>,
    /// The length of each pod TAP's queue toward weftd, in frames (default 10000;
    /// 1 to 524288). A TAP has no backpressure: a burst past it is dropped by the pod's
    /// kernel (weftd's `tap_queue_full`).
    #[arg(long)]
    pub pod_txqueuelen: Option<u32>,
}

/// The settings, checked.
#[derive(Clone, Debug)]
pub struct Config {
    /// This node's name.
    pub node_name: String,
    /// Its underlay address.
    pub public_ip: Ipv4Addr,
    /// etcd's endpoints.
    pub etcd_endpoints: Vec<String>,
    /// TLS: the CA, and optionally the client certificate and key.
    pub tls: Option<Tls>,
    /// The key prefix (ends in `/`).
    pub prefix: String,
    /// The lease TTL.
    pub lease_ttl: Duration,
    /// weftd's socket.
    pub weftd_socket: PathBuf,
    /// The agent's socket.
    pub socket: PathBuf,
    /// The metrics address.
    pub metrics: Option<SocketAddr>,
    /// The CNI configuration directory.
    pub cni_conf_dir: PathBuf,
    /// The underlay device.
    pub underlay_dev: Option<String>,
    /// Each pod TAP's queue length.
    pub pod_txqueuelen: u32,
}

/// The pod TAPs' queue length unless `pod_txqueuelen` says otherwise: ten times the
/// kernel's 1000, about 80 KB of kernel memory a queue (about 9 MB more while one is
/// full of small frames).
pub const DEFAULT_POD_TXQUEUELEN: u32 = 10_000;

/// etcd's TLS material, read at start.
#[derive(Clone, Debug)]
pub struct Tls {
    /// The CA (PEM).
    pub ca: Vec<u8>,
    /// The client certificate and key (PEM).
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl Settings {
    /// Reads a settings file. `required`: a missing file is an error (an explicit
    /// `--config`); otherwise it counts as empty.
    pub fn from_file(path: &Path, required: bool) -> Result<Settings, String> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
                return Ok(Settings::default());
            }
            Err(e) => return Err(format!("{}: {e}", path.display())),
        };
        toml::from_str(&text).map_err(|e| {
            let msg = e.message().to_string();
            match e.span() {
                Some(s) => format!(
                    "{} line {}: {msg}",
                    path.display(),
                    text[..s.start].matches('\n').count() + 1
                ),
                None => format!("{}: {msg}", path.display()),
            }
        })
    }

    /// `self` with every key `over` sets replaced.
    pub fn overlay(self, over: Settings) -> Settings {
        Settings {
            node_name: over.node_name.or(self.node_name),
            public_ip: over.public_ip.or(self.public_ip),
            etcd_endpoints: over.etcd_endpoints.or(self.etcd_endpoints),
            etcd_ca: over.etcd_ca.or(self.etcd_ca),
            etcd_cert: over.etcd_cert.or(self.etcd_cert),
            etcd_key: over.etcd_key.or(self.etcd_key),
            prefix: over.prefix.or(self.prefix),
            lease_ttl: over.lease_ttl.or(self.lease_ttl),
            weftd_socket: over.weftd_socket.or(self.weftd_socket),
            socket: over.socket.or(self.socket),
            metrics: over.metrics.or(self.metrics),
            cni_conf_dir: over.cni_conf_dir.or(self.cni_conf_dir),
            underlay_dev: over.underlay_dev.or(self.underlay_dev),
            pod_txqueuelen: over.pod_txqueuelen.or(self.pod_txqueuelen),
        }
    }
}

impl Config {
    /// Checks the settings and reads the TLS files. One line on error.
    pub fn resolve(s: Settings) -> Result<Config, String> {
        let node_name = match s.node_name {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .map_err(|e| format!("node_name is not set and the host name is unknown: {e}"))?
                .to_string_lossy()
                .into_owned(),
        };
        crate::schema::check_node_name(&node_name)?;
        let public_ip = s
            .public_ip
            .ok_or("public_ip is not set (the node's underlay address)")?;
        let etcd_endpoints = s.etcd_endpoints.unwrap_or_default();
        if etcd_endpoints.is_empty() {
            return Err("etcd_endpoints is not set".into());
        }
        for e in &etcd_endpoints {
            if !(e.starts_with("http://") || e.starts_with("https://")) {
                return Err(format!(
                    "etcd endpoint '{e}' must start with http:// or https://"
                ));
            }
        }
        let read = |p: &PathBuf, what: &str| {
            std::fs::read(p).map_err(|e| format!("{what} {}: {e}", p.display()))
        };
        let tls = match (&s.etcd_ca, &s.etcd_cert, &s.etcd_key) {
            (None, None, None) => None,
            (None, _, _) => return Err("etcd_cert and etcd_key need etcd_ca".into()),
            (Some(ca), cert, key) => {
                let identity = match (cert, key) {
                    (Some(c), Some(k)) => Some((read(c, "etcd_cert")?, read(k, "etcd_key")?)),
                    (None, None) => None,
                    _ => return Err("etcd_cert and etcd_key go together".into()),
                };
                Some(Tls {
                    ca: read(ca, "etcd_ca")?,
                    identity,
                })
            }
        };
        if tls.is_some() && etcd_endpoints.iter().any(|e| e.starts_with("http://")) {
            return Err("etcd_ca is set: the etcd endpoints must be https://".into());
        }
        let lease_ttl = s.lease_ttl.unwrap_or(60);
        if !(2..=86_400).contains(&lease_ttl) {
            return Err(format!(
                "lease_ttl {lease_ttl} is out of range (2 to 86400 seconds)"
            ));
        }
        let max = weft_flow::port::MAX_TXQUEUELEN;
        let pod_txqueuelen = s.pod_txqueuelen.unwrap_or(DEFAULT_POD_TXQUEUELEN);
        if !(1..=max).contains(&pod_txqueuelen) {
            return Err(format!(
                "pod_txqueuelen {pod_txqueuelen} is out of range (1 to {max} frames)"
            ));
        }
        let mut prefix = s.prefix.unwrap_or_else(|| "/weft/v1/".into());
        if !prefix.starts_with('/') {
            return Err(format!("prefix '{prefix}' must start with /"));
        }
        if !prefix.ends_with('/') {
            prefix.push('/');
        }
        Ok(Config {
            node_name,
            public_ip,
            etcd_endpoints,
            tls,
            prefix,
            lease_ttl: Duration::from_secs(lease_ttl),
            weftd_socket: s
                .weftd_socket
                .unwrap_or_else(|| "/run/weft/weftd.sock".into()),
            socket: s
                .socket
                .unwrap_or_else(|| weft_agent_proto::DEFAULT_SOCKET.into()),
            metrics: s.metrics,
            cni_conf_dir: s.cni_conf_dir.unwrap_or_else(|| "/etc/cni/net.d".into()),
            underlay_dev: s.underlay_dev,
            pod_txqueuelen,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_config_file_reads_and_resolves_to_the_defaults() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../dist/agent.toml");
        let s = Settings::from_file(&p, true).unwrap();
        let c = Config::resolve(Settings {
            node_name: Some("n1".into()),
            ..s
        })
        .unwrap();
        assert_eq!(c.public_ip, Ipv4Addr::new(198, 18, 0, 1));
        assert_eq!(c.etcd_endpoints, ["http://198.18.0.1:2379"]);
        assert!(c.tls.is_none());
        assert_eq!(c.prefix, "/weft/v1/");
        assert_eq!(c.lease_ttl, Duration::from_secs(60));
        assert_eq!(c.weftd_socket, Path::new("/run/weft/weftd.sock"));
        assert_eq!(c.socket, Path::new(weft_agent_proto::DEFAULT_SOCKET));
        assert_eq!(c.cni_conf_dir, Path::new("/etc/cni/net.d"));
        assert_eq!(c.pod_txqueuelen, DEFAULT_POD_TXQUEUELEN);
        // The commented settings are the defaults they name: uncommented, the same.
        let text = std::fs::read_to_string(&p).unwrap();
        let open: String = text
            .lines()
            .map(|l| match l.strip_prefix("# ") {
                Some(k) if k.contains(" = ") && !k.starts_with("etcd_") => k,
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect();
        let all: Settings = toml::from_str(&open).unwrap();
        let d = Config::resolve(all).unwrap();
        assert_eq!(d.prefix, c.prefix);
        assert_eq!(d.lease_ttl, c.lease_ttl);
        assert_eq!(d.weftd_socket, c.weftd_socket);
        assert_eq!(d.socket, c.socket);
        assert_eq!(d.cni_conf_dir, c.cni_conf_dir);
        assert_eq!(d.pod_txqueuelen, c.pod_txqueuelen);
    }

    #[test]
    fn file_then_flags_and_checks() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("agent.toml");
        std::fs::write(
            &p,
            "node_name = \"n1\"\npublic_ip = \"198.18.0.1\"\netcd_endpoints = [\"http://198.18.0.1:2379\"]\nlease_ttl = 5\n",
        )
        .unwrap();
        let file = Settings::from_file(&p, true).unwrap();
        let c = Config::resolve(file.clone().overlay(Settings {
            node_name: Some("n2".into()),
            ..Settings::default()
        }))
        .unwrap();
        assert_eq!(c.node_name, "n2");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.prefix, "/weft/v1/");
        std::fs::write(&p, "node_nam = \"x\"\n").unwrap();
        let e = Settings::from_file(&p, true).unwrap_err();
        assert!(e.contains("line 1") && e.contains("node_nam"), "{e}");
        assert!(Settings::from_file(&dir.path().join("none"), false).is_ok());
        assert!(Settings::from_file(&dir.path().join("none"), true).is_err());
        let e = Config::resolve(Settings {
            lease_ttl: Some(1),
            ..file.clone()
        })
        .unwrap_err();
        assert!(e.contains("lease_ttl 1"), "{e}");
        assert_eq!(c.pod_txqueuelen, DEFAULT_POD_TXQUEUELEN);
        let q = |n| {
            Config::resolve(Settings {
                pod_txqueuelen: Some(n),
                ..file.clone()
            })
        };
        assert_eq!(q(262_144).unwrap().pod_txqueuelen, 262_144);
        for bad in [0, weft_flow::port::MAX_TXQUEUELEN + 1] {
            let e = q(bad).unwrap_err();
            assert!(
                e.starts_with(&format!("pod_txqueuelen {bad} is out of range")),
                "{e}"
            );
        }
        let e = Config::resolve(Settings {
            etcd_ca: Some(dir.path().join("missing.pem")),
            ..file
        })
        .unwrap_err();
        assert!(e.contains("etcd_ca"), "{e}");
    }
}
