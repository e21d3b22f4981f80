//! A real etcd cluster for end-to-end tests: Debian's etcd 3.4 (`/usr/bin/etcd`), one
//! member per node namespace, listening on the node's underlay address (clients on
//! 2379, peers on 2380), its data in the lab's directory.
//!
//! Members are started through the [`Lab`], so they are stopped when the test ends,
//! also when it fails. [`EtcdCluster`] starts them, waits until they are healthy, kills
//! one (SIGKILL), stops them all and starts them again (their data stays), compacts,
//! and puts and gets keys with `etcdctl` (API v3). With [`Certs`] (made here with
//! `openssl`: a CA, a server certificate naming every member's address, a client
//! certificate, and a second, unrelated CA with its own client certificate for the
//! "wrong CA" case) clients speak TLS and must present a certificate of the CA.
//!
//! `etcd` and `etcdctl` are found on the `PATH`, or where `WEFT_ETCD` and
//! `WEFT_ETCDCTL` say.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, Ns, ProcId, Result};

/// Overrides where `etcd` is found.
pub const ETCD_ENV: &str = "WEFT_ETCD";
/// Overrides where `etcdctl` is found.
pub const ETCDCTL_ENV: &str = "WEFT_ETCDCTL";
/// etcd's client port.
pub const CLIENT_PORT: u16 = 2379;
/// etcd's peer port.
pub const PEER_PORT: u16 = 2380;

fn program(env: &str, name: &str) -> String {
    std::env::var(env).unwrap_or_else(|_| name.to_string())
}

/// Whether `etcd` and `etcdctl` can run here. When they cannot, a test should return
/// early; like [`crate::lab::privileged`] this prints why, or panics when
/// `WEFT_REQUIRE_PRIVILEGED` is set (CI installs etcd: scripts/test).
pub fn available(test: &str) -> bool {
    let works = |p: String, arg: &str| {
        Command::new(p)
            .arg(arg)
            .env("ETCDCTL_API", "3")
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if works(program(ETCD_ENV, "etcd"), "--version")
        && works(program(ETCDCTL_ENV, "etcdctl"), "version")
    {
        return true;
    }
    let why = "needs etcd and etcdctl (Debian's etcd-server and etcd-client)";
    if std::env::var_os(crate::lab::REQUIRE_PRIVILEGED).is_some() {
        panic!(
            "{test}: {why}, and {} is set: this test must run here",
            crate::lab::REQUIRE_PRIVILEGED
        );
    }
    eprintln!("skipping {test}: {why}");
    false
}

/// Runs a command; its stdout, or an error with the command and its stderr.
fn run(mut c: Command, what: &str) -> Result<String> {
    let out = c.output().map_err(|e| LabError(format!("{what}: {e}")))?;
    if !out.status.success() {
        return Err(LabError(format!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Test certificates, made with `openssl` in a directory of the lab.
#[derive(Clone, Debug)]
pub struct Certs {
    /// The CA that signed the server and the client certificate.
    pub ca: PathBuf,
    /// The members' server certificate (every member address and 127.0.0.1 as SANs).
    pub server_cert: PathBuf,
    /// Its key.
    pub server_key: PathBuf,
    /// A client certificate of the CA (CN `weft-agent`).
    pub client_cert: PathBuf,
    /// Its key.
    pub client_key: PathBuf,
    /// Another CA, which signed nothing etcd trusts or presents.
    pub wrong_ca: PathBuf,
    /// A client certificate of the other CA.
    pub wrong_client_cert: PathBuf,
    /// Its key.
    pub wrong_client_key: PathBuf,
}

impl Certs {
    /// Makes a CA, a server certificate for `ips` (and 127.0.0.1), a client
    /// certificate, and a second CA with a client certificate, in `dir`.
    pub fn make(dir: &Path, ips: &[Ipv4Addr]) -> Result<Certs> {
        std::fs::create_dir_all(dir)?;
        let p = |n: &str| dir.join(n);
        let ca = |name: &str, cn: &str| -> Result<()> {
            let mut c = Command::new("openssl");
            c.args(["req", "-x509", "-newkey", "ec", "-pkeyopt"]);
            c.args(["ec_paramgen_curve:prime256v1", "-nodes", "-days", "2"]);
            c.arg("-subj").arg(format!("/CN={cn}"));
            c.arg("-keyout").arg(p(&format!("{name}.key")));
            c.arg("-out").arg(p(&format!("{name}.crt")));
            run(c, &format!("openssl: the CA {cn}")).map(drop)
        };
        let leaf = |name: &str, ca: &str, cn: &str, ext: &str| -> Result<()> {
            let mut c = Command::new("openssl");
            c.args(["req", "-new", "-newkey", "ec", "-pkeyopt"]);
            c.args(["ec_paramgen_curve:prime256v1", "-nodes"]);
            c.arg("-subj").arg(format!("/CN={cn}"));
            c.arg("-keyout").arg(p(&format!("{name}.key")));
            c.arg("-out").arg(p(&format!("{name}.csr")));
            run(c, &format!("openssl: the request for {cn}"))?;
            std::fs::write(p(&format!("{name}.ext")), ext)?;
            let mut c = Command::new("openssl");
            c.args(["x509", "-req", "-days", "2", "-set_serial"]);
            c.arg(format!("{}", 1000 + name.len() * 7 + cn.len()));
            c.arg("-in").arg(p(&format!("{name}.csr")));
            c.arg("-CA").arg(p(&format!("{ca}.crt")));
            c.arg("-CAkey").arg(p(&format!("{ca}.key")));
            c.arg("-extfile").arg(p(&format!("{name}.ext")));
            c.arg("-out").arg(p(&format!("{name}.crt")));
            run(c, &format!("openssl: signing {cn}")).map(drop)
        };
        ca("ca", "weft-test-ca")?;
        ca("wrong-ca", "weft-test-wrong-ca")?;
        let sans: Vec<String> = ips
            .iter()
            .chain(&[Ipv4Addr::LOCALHOST])
            .map(|ip| format!("IP:{ip}"))
            .collect();
        leaf(
            "server",
            "ca",
            "weft-etcd",
            &format!(
                "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                 extendedKeyUsage=serverAuth,clientAuth\nsubjectAltName={}\n",
                sans.join(",")
            ),
        )?;
        let client = "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n\
                      extendedKeyUsage=clientAuth\n";
        leaf("client", "ca", "weft-agent", client)?;
        leaf("wrong-client", "wrong-ca", "weft-agent", client)?;
        Ok(Certs {
            ca: p("ca.crt"),
            server_cert: p("server.crt"),
            server_key: p("server.key"),
            client_cert: p("client.crt"),
            client_key: p("client.key"),
            wrong_ca: p("wrong-ca.crt"),
            wrong_client_cert: p("wrong-client.crt"),
            wrong_client_key: p("wrong-client.key"),
        })
    }
}

/// One member.
struct Member {
    name: String,
    node: Ns,
    ip: Ipv4Addr,
    data: PathBuf,
    proc: Option<ProcId>,
    starts: u32,
}

/// A 3-member (or any size) etcd cluster on the nodes of a lab's underlay.
pub struct EtcdCluster {
    members: Vec<Member>,
    certs: Option<Certs>,
    initial_cluster: String,
}

impl EtcdCluster {
    /// Starts one member on each `(node, underlay address)`, data in `<lab dir>/etcd/`;
    /// with `certs`, clients must speak TLS with a client certificate of `certs.ca`.
    /// Does not wait: see [`EtcdCluster::wait_healthy`].
    pub fn start(
        lab: &mut Lab,
        nodes: &[(Ns, Ipv4Addr)],
        certs: Option<Certs>,
    ) -> Result<EtcdCluster> {
        let dir = lab.dir().join("etcd");
        std::fs::create_dir_all(&dir)?;
        let scheme = "http";
        let members: Vec<Member> = nodes
            .iter()
            .enumerate()
            .map(|(i, (node, ip))| Member {
                name: format!("m{}", i + 1),
                node: node.clone(),
                ip: *ip,
                data: dir.join(format!("m{}", i + 1)),
                proc: None,
                starts: 0,
            })
            .collect();
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={scheme}://{}:{PEER_PORT}", m.name, m.ip))
            .collect::<Vec<_>>()
            .join(",");
        let mut c = EtcdCluster {
            members,
            certs,
            initial_cluster,
        };
        for i in 0..c.members.len() {
            c.start_member(lab, i)?;
        }
        Ok(c)
    }

    fn client_scheme(&self) -> &'static str {
        if self.certs.is_some() {
            "https"
        } else {
            "http"
        }
    }

    /// The client URL of member `i` (0-based).
    pub fn endpoint(&self, i: usize) -> String {
        format!(
            "{}://{}:{CLIENT_PORT}",
            self.client_scheme(),
            self.members[i].ip
        )
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        (0..self.members.len()).map(|i| self.endpoint(i)).collect()
    }

    /// The certificates, when the cluster speaks TLS.
    pub fn certs(&self) -> Option<&Certs> {
        self.certs.as_ref()
    }

    /// How many members there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    fn label(&self, i: usize, start: u32) -> String {
        format!("etcd-{}.{start}", self.members[i].name)
    }

    /// Starts member `i` (again: its data directory is kept, so it rejoins).
    pub fn start_member(&mut self, lab: &mut Lab, i: usize) -> Result<()> {
        if let Some(p) = self.members[i].proc
            && lab.is_running(p)
        {
            return Err(LabError(format!(
                "etcd member {} is running",
                self.members[i].name
            )));
        }
        let scheme = self.client_scheme();
        let initial = self.initial_cluster.clone();
        let certs = self.certs.clone();
        let m = &mut self.members[i];
        m.starts += 1;
        let mut cmd = m.node.command(&program(ETCD_ENV, "etcd"));
        let client = format!("{scheme}://{}:{CLIENT_PORT}", m.ip);
        let peer = format!("http://{}:{PEER_PORT}", m.ip);
        cmd.arg("--name").arg(&m.name);
        cmd.arg("--data-dir").arg(&m.data);
        cmd.args(["--listen-client-urls", &client]);
        cmd.args(["--advertise-client-urls", &client]);
        cmd.args(["--listen-peer-urls", &peer]);
        cmd.args(["--initial-advertise-peer-urls", &peer]);
        cmd.args(["--initial-cluster", &initial]);
        cmd.args(["--initial-cluster-state", "new"]);
        cmd.args(["--initial-cluster-token", "weft-test"]);
        cmd.args(["--logger", "zap", "--log-outputs", "stderr"]);
        // Quick elections: members come and go in the tests.
        cmd.args(["--heartbeat-interval", "50", "--election-timeout", "500"]);
        if let Some(c) = &certs {
            cmd.arg("--cert-file").arg(&c.server_cert);
            cmd.arg("--key-file").arg(&c.server_key);
            cmd.arg("--trusted-ca-file").arg(&c.ca);
            cmd.arg("--client-cert-auth");
        }
        let label = format!("etcd-{}.{}", m.name, m.starts);
        m.proc = Some(lab.spawn(&label, cmd)?);
        Ok(())
    }

    /// Starts every member that is not running.
    pub fn start_all(&mut self, lab: &mut Lab) -> Result<()> {
        for i in 0..self.members.len() {
            if !self.is_running(lab, i) {
                self.start_member(lab, i)?;
            }
        }
        Ok(())
    }

    /// Whether member `i` runs.
    pub fn is_running(&self, lab: &mut Lab, i: usize) -> bool {
        self.members[i].proc.is_some_and(|p| lab.is_running(p))
    }

    /// Kills member `i` with SIGKILL (a crash).
    pub fn kill(&mut self, lab: &mut Lab, i: usize) {
        if let Some(p) = self.members[i].proc.take() {
            lab.kill(p);
        }
    }

    /// Stops member `i` with SIGTERM (SIGKILL after 5 s).
    pub fn stop(&mut self, lab: &mut Lab, i: usize) {
        if let Some(p) = self.members[i].proc.take() {
            lab.stop(p, Duration::from_secs(5));
        }
    }

    /// Stops every member.
    pub fn stop_all(&mut self, lab: &mut Lab) {
        for i in 0..self.members.len() {
            self.stop(lab, i);
        }
    }

    /// Every member's log, for failure messages.
    pub fn logs(&self, lab: &Lab) -> String {
        let mut s = String::new();
        for (i, m) in self.members.iter().enumerate() {
            for start in 1..=m.starts {
                let label = self.label(i, start);
                let log = lab.log(&label);
                // The end is what matters; etcd is chatty.
                let tail: Vec<&str> = log.lines().rev().take(15).collect();
                s.push_str(&format!("--- {label} (last lines) ---\n"));
                for l in tail.into_iter().rev() {
                    s.push_str(l);
                    s.push('\n');
                }
            }
        }
        s
    }

    /// An `etcdctl` command (API v3) against `endpoints`, run from the namespace of the
    /// first running member (every node reaches every member on the underlay).
    fn etcdctl_at(&self, lab: &mut Lab, endpoints: &[String]) -> Result<Command> {
        let i = (0..self.members.len())
            .find(|i| self.is_running(lab, *i))
            .unwrap_or(0);
        let mut c = self.members[i]
            .node
            .command(&program(ETCDCTL_ENV, "etcdctl"));
        c.env("ETCDCTL_API", "3");
        c.arg(format!("--endpoints={}", endpoints.join(",")));
        c.args(["--dial-timeout=2s", "--command-timeout=5s"]);
        if let Some(t) = &self.certs {
            c.arg("--cacert").arg(&t.ca);
            c.arg("--cert").arg(&t.client_cert);
            c.arg("--key").arg(&t.client_key);
        }
        Ok(c)
    }

    /// Runs `etcdctl ARGS` against every member; its stdout.
    pub fn etcdctl(&self, lab: &mut Lab, args: &[&str]) -> Result<String> {
        // Only the running members: etcd 3.4's etcdctl can stay pinned to a dead first
        // endpoint until its command timeout (seen: `put` after `kill(0)` failing with
        // DeadlineExceeded at the killed member's address).
        let running: Vec<String> = (0..self.members.len())
            .filter(|i| self.is_running(lab, *i))
            .map(|i| self.endpoint(i))
            .collect();
        let endpoints = if running.is_empty() {
            self.endpoints()
        } else {
            running
        };
        let mut c = self.etcdctl_at(lab, &endpoints)?;
        c.args(args);
        run(c, &format!("etcdctl {}", args.join(" ")))
    }

    /// Waits until every running member says it is healthy; how long it took.
    pub fn wait_healthy(&self, lab: &mut Lab, timeout: Duration) -> Result<Duration> {
        let start = Instant::now();
        loop {
            let running: Vec<String> = (0..self.members.len())
                .filter(|i| self.is_running(lab, *i))
                .map(|i| self.endpoint(i))
                .collect();
            if running.is_empty() {
                return Err(LabError(format!(
                    "no etcd member is running:\n{}",
                    self.logs(lab)
                )));
            }
            let mut c = self.etcdctl_at(lab, &running)?;
            c.args(["endpoint", "health"]);
            let last = match run(c, "etcdctl endpoint health") {
                Ok(_) => return Ok(start.elapsed()),
                Err(e) => e.0,
            };
            if start.elapsed() > timeout {
                return Err(LabError(format!(
                    "etcd not healthy after {timeout:?}: {last}\n{}",
                    self.logs(lab)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `etcdctl put KEY VALUE`.
    pub fn put(&self, lab: &mut Lab, key: &str, value: &str) -> Result<()> {
        self.etcdctl(lab, &["put", key, value]).map(drop)
    }

    /// `etcdctl put KEY VALUE --lease=ID` (ID in hex, as `lease grant` prints it).
    pub fn put_with_lease(&self, lab: &mut Lab, key: &str, value: &str, lease: &str) -> Result<()> {
        self.etcdctl(lab, &["put", key, value, &format!("--lease={lease}")])
            .map(drop)
    }

    /// `etcdctl lease grant TTL`: the lease's id in hex.
    pub fn lease_grant(&self, lab: &mut Lab, ttl: u64) -> Result<String> {
        let out = self.etcdctl(lab, &["lease", "grant", &ttl.to_string()])?;
        // "lease 694d77aa9e7c2a0b granted with TTL(5s)"
        out.split_whitespace()
            .nth(1)
            .map(str::to_string)
            .ok_or_else(|| LabError(format!("lease grant: unexpected output {out}")))
    }

    /// The value of `key` (`None`: absent).
    pub fn get(&self, lab: &mut Lab, key: &str) -> Result<Option<String>> {
        let out = self.etcdctl(lab, &["get", key, "--print-value-only"])?;
        Ok(if out.is_empty() {
            None
        } else {
            Some(out.strip_suffix('\n').unwrap_or(&out).to_string())
        })
    }

    /// Every key under `prefix` with its value, in key order.
    pub fn get_prefix(&self, lab: &mut Lab, prefix: &str) -> Result<Vec<(String, String)>> {
        let out = self.etcdctl(lab, &["get", prefix, "--prefix"])?;
        let mut lines = out.lines();
        let mut v = Vec::new();
        while let Some(k) = lines.next() {
            let val = lines.next().unwrap_or_default();
            v.push((k.to_string(), val.to_string()));
        }
        Ok(v)
    }

    /// `etcdctl del KEY` (`prefix`: every key under it); how many were deleted.
    pub fn del(&self, lab: &mut Lab, key: &str, prefix: bool) -> Result<u64> {
        let mut args = vec!["del", key];
        if prefix {
            args.push("--prefix");
        }
        let out = self.etcdctl(lab, &args)?;
        Ok(out.trim().parse().unwrap_or(0))
    }

    /// The cluster's current revision.
    pub fn revision(&self, lab: &mut Lab) -> Result<u64> {
        let out = self.etcdctl(lab, &["get", "/", "--limit=1", "-w", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&out)
            .map_err(|e| LabError(format!("etcdctl get -w json: {e}: {out}")))?;
        v["header"]["revision"]
            .as_u64()
            .ok_or_else(|| LabError(format!("no revision in {out}")))
    }

    /// Compacts the history up to the current revision (watches from an older revision
    /// are then cancelled by etcd); the revision compacted to.
    pub fn compact(&self, lab: &mut Lab) -> Result<u64> {
        let rev = self.revision(lab)?;
        self.etcdctl(lab, &["compact", &rev.to_string(), "--physical"])?;
        Ok(rev)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lab::privileged;
    use crate::node::{Underlay, underlay_ip};

    /// The harness itself: a 3-member cluster that is healthy, keeps working with one
    /// member killed, comes back whole after a full stop with its data, compacts, and
    /// over TLS refuses a client of another CA.
    #[test]
    fn a_three_member_cluster_survives_a_member_and_restarts() {
        let test = "a_three_member_cluster_survives_a_member_and_restarts";
        if !privileged(test) || !available(test) {
            return;
        }
        let mut lab = Lab::new().unwrap();
        let ul = Underlay::new(&mut lab, 3).unwrap();
        let nodes: Vec<(Ns, Ipv4Addr)> = (1..=3u8)
            .map(|i| (ul.node(i).clone(), underlay_ip(i)))
            .collect();
        let ips: Vec<Ipv4Addr> = nodes.iter().map(|n| n.1).collect();
        let certs = Certs::make(&lab.dir().join("certs"), &ips).unwrap();
        let mut etcd = EtcdCluster::start(&mut lab, &nodes, Some(certs.clone())).unwrap();
        let took = etcd
            .wait_healthy(&mut lab, Duration::from_secs(20))
            .unwrap();
        eprintln!("3 members healthy after {took:?}");
        etcd.put(&mut lab, "/weft/test/a", "{\"x\":1}").unwrap();
        assert_eq!(
            etcd.get(&mut lab, "/weft/test/a").unwrap().as_deref(),
            Some("{\"x\":1}")
        );
        assert_eq!(etcd.get(&mut lab, "/weft/test/none").unwrap(), None);

        // One member killed: still a quorum.
        etcd.kill(&mut lab, 0);
        // The two left elect a leader (if the killed one led) before they take writes;
        // on a loaded machine that outlasted etcdctl's 5 s command timeout twice.
        etcd.wait_healthy(&mut lab, Duration::from_secs(20))
            .unwrap();
        etcd.put(&mut lab, "/weft/test/b", "2").unwrap();
        assert_eq!(
            etcd.get_prefix(&mut lab, "/weft/test/").unwrap(),
            vec![
                ("/weft/test/a".to_string(), "{\"x\":1}".to_string()),
                ("/weft/test/b".to_string(), "2".to_string())
            ]
        );
        // All stopped: nothing answers.
        etcd.stop_all(&mut lab);
        assert!(etcd.put(&mut lab, "/weft/test/c", "3").is_err());
        // Started again: the data is there, the killed member caught up.
        etcd.start_all(&mut lab).unwrap();
        etcd.wait_healthy(&mut lab, Duration::from_secs(20))
            .unwrap();
        assert_eq!(
            etcd.get(&mut lab, "/weft/test/b").unwrap().as_deref(),
            Some("2")
        );
        let lease = etcd.lease_grant(&mut lab, 30).unwrap();
        etcd.put_with_lease(&mut lab, "/weft/test/l", "x", &lease)
            .unwrap();
        let rev = etcd.compact(&mut lab).unwrap();
        assert!(rev >= 4, "{rev}");
        let old = etcd.etcdctl(
            &mut lab,
            &["get", "/weft/test/a", &format!("--rev={}", rev - 1)],
        );
        assert!(
            old.as_ref().is_err_and(|e| e.0.contains("compacted")),
            "{old:?}"
        );
        assert_eq!(etcd.del(&mut lab, "/weft/test/", true).unwrap(), 3);

        // A client of the other CA is refused (the client side, too, refuses the
        // server: it does not trust the CA that signed it).
        let mut c = etcd.members[1]
            .node
            .command(&program(ETCDCTL_ENV, "etcdctl"));
        c.env("ETCDCTL_API", "3");
        c.arg(format!("--endpoints={}", etcd.endpoint(1)));
        c.args(["--dial-timeout=2s", "--command-timeout=3s"]);
        c.arg("--cacert").arg(&certs.wrong_ca);
        c.arg("--cert").arg(&certs.wrong_client_cert);
        c.arg("--key").arg(&certs.wrong_client_key);
        c.args(["get", "/weft/test/a"]);
        let e = run(c, "etcdctl with the wrong CA").unwrap_err();
        assert!(
            e.0.contains("certificate") || e.0.contains("deadline"),
            "{e}"
        );
    }
}
