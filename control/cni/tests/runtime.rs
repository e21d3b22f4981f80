//! weft-cni driven as a runtime drives it: environment variables, the config on stdin,
//! the result or error on stdout and the exit status. The agent here is a scripted
//! stand-in on a real Unix socket (it records each request and answers as told), so
//! every branch of the plugin is reached without root; the IPAM plugin is Debian's real
//! host-local with its data directory in the test's temp dir. The same commands against
//! the real agent and weftd are in netns-tests/tests/cni.rs.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};

use serde_json::{Value, json};
use weft_agent_proto::{
    AttachReply, ErrorKind, EtcdHealth, GcReply, Request, Response, Route, StatusReply,
};

const HOST_LOCAL_DIR: &str = "/usr/lib/cni";

fn plugin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_weft-cni"))
}

/// host-local is needed for the IPAM half; scripts/test installs it. Missing: skip,
/// unless WEFT_REQUIRE_PRIVILEGED says every test must run.
fn have_host_local(test: &str) -> bool {
    if Path::new(HOST_LOCAL_DIR).join("host-local").is_file() {
        return true;
    }
    if std::env::var_os("WEFT_REQUIRE_PRIVILEGED").is_some() {
        panic!("{test}: needs {HOST_LOCAL_DIR}/host-local (containernetworking-plugins)");
    }
    eprintln!("skipping {test}: needs {HOST_LOCAL_DIR}/host-local (containernetworking-plugins)");
    false
}

/// How the stand-in agent answers.
#[derive(Clone)]
struct Script {
    ready: bool,
    attach: Result<(), ErrorKind>,
    check: Result<(), ErrorKind>,
}

impl Default for Script {
    fn default() -> Self {
        Script {
            ready: true,
            attach: Ok(()),
            check: Ok(()),
        }
    }
}

struct FakeAgent {
    seen: Arc<Mutex<Vec<Request>>>,
    script: Arc<Mutex<Script>>,
}

impl FakeAgent {
    fn start(dir: &Path) -> FakeAgent {
        let socket = dir.join("agent.sock");
        let listener = UnixListener::bind(&socket).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let script = Arc::new(Mutex::new(Script::default()));
        let (s2, sc2) = (seen.clone(), script.clone());
        std::thread::spawn(move || {
            for conn in listener.incoming() {
                let Ok(conn) = conn else { return };
                let (seen, script) = (s2.clone(), sc2.clone());
                std::thread::spawn(move || {
                    let mut w = conn.try_clone().unwrap();
                    for line in BufReader::new(conn).lines() {
                        let Ok(line) = line else { return };
                        let req: Request = serde_json::from_str(&line).unwrap();
                        seen.lock().unwrap().push(req.clone());
                        let sc = script.lock().unwrap().clone();
                        let resp = answer(&req, &sc);
                        let mut out = serde_json::to_string(&resp).unwrap();
                        out.push('\n');
                        if w.write_all(out.as_bytes()).is_err() {
                            return;
                        }
                    }
                });
            }
        });
        FakeAgent { seen, script }
    }

    fn take(&self) -> Vec<Request> {
        std::mem::take(&mut self.seen.lock().unwrap())
    }

    fn set(&self, f: impl FnOnce(&mut Script)) {
        f(&mut self.script.lock().unwrap());
    }
}

fn answer(req: &Request, sc: &Script) -> Response {
    match req {
        Request::Status => Response::ok(&StatusReply {
            ready: sc.ready,
            reason: (!sc.ready).then(|| "no subnet yet".to_string()),
            node: "n1".into(),
            subnet: sc.ready.then(|| "198.19.7.0/24".parse().unwrap()),
            gateway: sc.ready.then(|| "198.19.7.1".parse().unwrap()),
            pod_cidr: Some("198.19.0.0/16".parse().unwrap()),
            mtu: Some(1450),
            peers: vec![],
            endpoints: vec![],
            last_sync: None,
            etcd: EtcdHealth {
                reachable: true,
                error: None,
            },
        }),
        Request::Attach(a) => match sc.attach {
            Ok(()) => Response::ok(&AttachReply {
                ifname: a.attachment.ifname.clone(),
                mac: "02:57:00:00:07:02".into(),
                mtu: 1450,
                port: "p-c1".into(),
                addresses: a.addresses.clone(),
                routes: vec![Route {
                    dst: "0.0.0.0/0".parse().unwrap(),
                    gw: a.gateway,
                }],
            }),
            Err(kind) => Response::error(kind, "scripted failure"),
        },
        Request::Check(_) => match sc.check {
            Ok(()) => Response::ok(&json!({})),
            Err(kind) => Response::error(kind, "route 0.0.0.0/0 is missing"),
        },
        Request::Detach(_) => Response::ok(&json!({})),
        Request::Gc(g) => Response::ok(&GcReply {
            removed: if g.keep.is_empty() {
                vec![weft_agent_proto::Attachment {
                    container_id: "old".into(),
                    ifname: "eth0".into(),
                }]
            } else {
                vec![]
            },
        }),
    }
}

/// One invocation: exit success, stdout parsed as JSON (Null when empty), stderr.
struct Run {
    ok: bool,
    out: Value,
    stderr: String,
}

impl Run {
    fn code(&self) -> u64 {
        assert!(!self.ok, "expected a failure, got {}", self.out);
        self.out["code"]
            .as_u64()
            .unwrap_or_else(|| panic!("no code in {}", self.out))
    }

    fn msg(&self) -> &str {
        self.out["msg"].as_str().unwrap_or_default()
    }
}

fn run(vars: &[(&str, &str)], stdin: &str) -> Run {
    let mut c = Command::new(plugin());
    c.env_clear();
    for (k, v) in vars {
        c.env(k, v);
    }
    let mut child = c
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // A plugin that fails on its environment exits before it reads stdin.
    let _ = child.stdin.take().unwrap().write_all(stdin.as_bytes());
    let o = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&o.stdout).into_owned();
    let out = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("stdout is not JSON ({e}): {text}"))
    };
    Run {
        ok: o.status.success(),
        out,
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

struct Setup {
    dir: tempfile::TempDir,
    version: &'static str,
}

impl Setup {
    fn new(version: &'static str) -> Setup {
        Setup {
            dir: tempfile::tempdir().unwrap(),
            version,
        }
    }

    fn socket(&self) -> PathBuf {
        self.dir.path().join("agent.sock")
    }

    fn ipam_dir(&self) -> PathBuf {
        self.dir.path().join("ipam")
    }

    /// The files host-local holds for network `weft` (addresses only).
    fn reservations(&self) -> Vec<(String, String)> {
        let Ok(rd) = std::fs::read_dir(self.ipam_dir().join("weft")) else {
            return vec![];
        };
        let mut v: Vec<_> = rd
            .flatten()
            .filter_map(|e| {
                let n = e.file_name().to_string_lossy().into_owned();
                n.parse::<std::net::IpAddr>().ok()?;
                Some((n, std::fs::read_to_string(e.path()).unwrap()))
            })
            .collect();
        v.sort();
        v
    }

    fn conf(&self, extra: Value) -> String {
        let mut c = json!({
            "cniVersion": self.version,
            "name": "weft",
            "type": "weft-cni",
            "agentSocket": self.socket(),
            "ipam": {"dataDir": self.ipam_dir()},
        });
        if let (Value::Object(m), Value::Object(e)) = (&mut c, extra) {
            m.extend(e);
        }
        c.to_string()
    }

    fn vars<'a>(&self, command: &'a str, cid: &'a str) -> Vec<(&'a str, String)> {
        vec![
            ("CNI_COMMAND", command.to_string()),
            ("CNI_CONTAINERID", cid.to_string()),
            ("CNI_NETNS", "/var/run/netns/pod-under-test".to_string()),
            ("CNI_IFNAME", "eth0".to_string()),
            ("CNI_PATH", format!("/nonexistent:{HOST_LOCAL_DIR}")),
            (
                "CNI_ARGS",
                "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-1".to_string(),
            ),
        ]
    }

    fn run(&self, command: &str, cid: &str, extra: Value) -> Run {
        let vars = self.vars(command, cid);
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
        run(&v, &self.conf(extra))
    }
}

#[test]
fn version_lists_what_it_speaks() {
    let r = run(&[("CNI_COMMAND", "VERSION")], r#"{"cniVersion":"1.0.0"}"#);
    assert!(r.ok);
    assert_eq!(
        r.out,
        json!({"cniVersion":"1.0.0","supportedVersions":["1.0.0","1.1.0"]})
    );
    let r = run(&[("CNI_COMMAND", "VERSION")], "");
    assert!(r.ok);
    assert_eq!(r.out["supportedVersions"], json!(["1.0.0", "1.1.0"]));
}

#[test]
fn errors_that_need_no_agent_have_the_spec_codes() {
    let s = Setup::new("1.0.0");
    let good = s.conf(json!({}));
    let base = s.vars("ADD", "c1");
    let with = |drop: &str, set: Option<(&'static str, &'static str)>| -> Vec<(String, String)> {
        base.iter()
            .filter(|(k, _)| *k != drop)
            .map(|(k, v)| match set {
                Some((sk, sv)) if sk == *k => (k.to_string(), sv.to_string()),
                _ => (k.to_string(), v.clone()),
            })
            .collect()
    };
    let go = |vars: Vec<(String, String)>, stdin: &str| {
        let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        run(&v, stdin)
    };
    for (vars, stdin, want, says) in [
        (with("CNI_COMMAND", None), good.clone(), 4, "CNI_COMMAND"),
        (
            with("", Some(("CNI_COMMAND", "PUT"))),
            good.clone(),
            4,
            "PUT",
        ),
        (
            with("CNI_CONTAINERID", None),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (with("CNI_NETNS", None), good.clone(), 4, "CNI_NETNS"),
        (with("CNI_IFNAME", None), good.clone(), 4, "CNI_IFNAME"),
        (with("CNI_PATH", None), good.clone(), 4, "CNI_PATH"),
        (
            with("", Some(("CNI_IFNAME", "eth0/x"))),
            good.clone(),
            4,
            "CNI_IFNAME",
        ),
        (
            with("", Some(("CNI_CONTAINERID", "c 1"))),
            good.clone(),
            4,
            "CNI_CONTAINERID",
        ),
        (
            with("", Some(("CNI_ARGS", "K8S_POD_NAME"))),
            good.clone(),
            4,
            "CNI_ARGS",
        ),
        (with("", None), "{not json".to_string(), 6, "not JSON"),
        (
            with("", None),
            r#"{"name":"weft"}"#.to_string(),
            7,
            "cniVersion",
        ),
        (
            with("", None),
            r#"{"cniVersion":"1.0.0"}"#.to_string(),
            7,
            "name",
        ),
        (
            with("", None),
            s.conf(json!({"cniVersion":"0.4.0"})),
            1,
            "0.4.0",
        ),
        (
            with("", None),
            s.conf(json!({"cniVersion":"1.2.0"})),
            1,
            "1.2.0",
        ),
        (
            with("", None),
            s.conf(json!({"ipam":"host-local"})),
            7,
            "ipam",
        ),
        (
            with("", None),
            s.conf(json!({"agentSocket":""})),
            7,
            "agentSocket",
        ),
        (
            with("", Some(("CNI_COMMAND", "STATUS"))),
            good.clone(),
            1,
            "1.1.0",
        ),
        (
            with("", Some(("CNI_COMMAND", "GC"))),
            good.clone(),
            1,
            "1.1.0",
        ),
    ] {
        let r = go(vars, &stdin);
        assert_eq!(r.code(), want, "{says}: {}", r.out);
        assert!(
            r.msg().contains(says),
            "the message names {says}: {}",
            r.out
        );
        assert!(!r.msg().contains('\n'));
        assert!(r.out["cniVersion"].is_string(), "{}", r.out);
    }
    assert!(
        !s.ipam_dir().exists(),
        "an error before IPAM touched host-local's files"
    );
}

#[test]
fn with_no_agent_status_is_50_and_add_is_11_and_leaves_nothing() {
    if !have_host_local("with_no_agent_status_is_50_and_add_is_11_and_leaves_nothing") {
        return;
    }
    let s = Setup::new("1.1.0");
    let r = s.run("STATUS", "c1", json!({}));
    assert_eq!(r.code(), 50, "{}", r.out);
    assert!(r.msg().contains("not reachable"), "{}", r.out);
    let r = s.run("ADD", "c1", json!({}));
    assert_eq!(r.code(), 11, "{}", r.out);
    assert!(
        r.msg().contains(&s.socket().display().to_string()),
        "names the socket: {}",
        r.out
    );
    assert!(s.reservations().is_empty());
    // DEL with the agent away cannot detach: it says so (11), and still releases.
    let r = s.run("DEL", "c1", json!({}));
    assert_eq!(r.code(), 11, "{}", r.out);
}

#[test]
fn add_check_del_against_the_agent_with_host_local() {
    if !have_host_local("add_check_del_against_the_agent_with_host_local") {
        return;
    }
    for version in ["1.0.0", "1.1.0"] {
        let s = Setup::new(version);
        let agent = FakeAgent::start(s.dir.path());
        let r = s.run("ADD", "c1", json!({"dns":{"nameservers":["198.19.0.10"]}}));
        assert!(r.ok, "{version}: {} {}", r.out, r.stderr);
        let mut want = json!({
            "cniVersion": version,
            "interfaces": [{"name":"eth0","mac":"02:57:00:00:07:02","sandbox":"/var/run/netns/pod-under-test"}],
            "ips": [{"address":"198.19.7.2/24","gateway":"198.19.7.1","interface":0}],
            "routes": [{"dst":"0.0.0.0/0","gw":"198.19.7.1"}],
            "dns": {"nameservers":["198.19.0.10"]},
        });
        if version == "1.1.0" {
            want["interfaces"][0]["mtu"] = json!(1450);
        }
        assert_eq!(r.out, want, "{version}");
        assert_eq!(
            s.reservations(),
            vec![("198.19.7.2".to_string(), "c1\r\neth0".to_string())]
        );
        let seen = agent.take();
        assert!(matches!(seen[0], Request::Status), "{seen:?}");
        let Request::Attach(a) = &seen[1] else {
            panic!("{seen:?}")
        };
        assert_eq!(a.attachment.container_id, "c1");
        assert_eq!(a.netns, "/var/run/netns/pod-under-test");
        assert_eq!(a.addresses, vec!["198.19.7.2/24".parse().unwrap()]);
        assert_eq!(a.gateway, Some("198.19.7.1".parse().unwrap()));
        assert_eq!(a.pod_namespace.as_deref(), Some("web"));
        assert_eq!(a.pod_name.as_deref(), Some("front-1"));

        // A second ADD of the same attachment fails and keeps the first's address.
        let r = s.run("ADD", "c1", json!({}));
        assert!(!r.ok);
        assert_eq!(s.reservations().len(), 1);
        agent.take();

        // CHECK hands the agent prevResult's addresses; a missing part is 101.
        let prev = json!({"prevResult": want});
        let r = s.run("CHECK", "c1", prev.clone());
        assert!(r.ok, "{version}: {} {}", r.out, r.stderr);
        let seen = agent.take();
        let Some(Request::Check(c)) = seen.last() else {
            panic!("{seen:?}")
        };
        assert_eq!(c.addresses, vec!["198.19.7.2/24".parse().unwrap()]);
        agent.set(|s| s.check = Err(ErrorKind::Missing));
        let r = s.run("CHECK", "c1", prev.clone());
        assert_eq!(r.code(), 101, "{}", r.out);
        assert!(r.msg().contains("route 0.0.0.0/0 is missing"), "{}", r.out);
        agent.set(|s| s.check = Ok(()));
        let r = s.run("CHECK", "c1", json!({}));
        assert_eq!(r.code(), 7, "CHECK without prevResult: {}", r.out);
        agent.take();

        // DEL: detach and release; again; and without CNI_NETNS.
        for _ in 0..2 {
            let r = s.run("DEL", "c1", prev.clone());
            assert!(r.ok, "{} {}", r.out, r.stderr);
            assert_eq!(r.out, Value::Null, "DEL prints nothing");
        }
        assert!(s.reservations().is_empty(), "{:?}", s.reservations());
        let seen = agent.take();
        assert_eq!(
            seen.iter()
                .filter(|r| matches!(r, Request::Detach(_)))
                .count(),
            2
        );
        let vars = s.vars("DEL", "c1");
        let v: Vec<(&str, &str)> = vars
            .iter()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| (*k, v.as_str()))
            .collect();
        let r = run(&v, &s.conf(json!({})));
        assert!(r.ok, "DEL without CNI_NETNS: {} {}", r.out, r.stderr);
        let seen = agent.take();
        let Some(Request::Detach(d)) = seen.last() else {
            panic!("{seen:?}")
        };
        assert_eq!(d.netns, None);

        // With the agent away and no prevResult, DEL cannot detach (11, so the runtime
        // retries) but still gives the address back.
        let r = s.run("ADD", "c9", json!({}));
        assert!(r.ok, "{} {}", r.out, r.stderr);
        assert_eq!(s.reservations().len(), 1);
        let away = json!({"agentSocket": s.dir.path().join("gone.sock")});
        let r = s.run("DEL", "c9", away);
        assert_eq!(r.code(), 11, "{}", r.out);
        assert!(s.reservations().is_empty(), "{:?}", s.reservations());
    }
}

/// The IPAM plugin is found through CNI_PATH and run with the runtime's environment
/// and the whole network config; what it writes to stderr reaches the runtime's
/// stderr as written, and its error (code and message) is the plugin's answer.
#[test]
fn the_ipam_plugin_gets_the_environment_and_config_and_its_stderr_passes_through() {
    let s = Setup::new("1.0.0");
    let _agent = FakeAgent::start(s.dir.path());
    let bin = s.dir.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let seen = s.dir.path().join("ipam-stdin.json");
    let script = bin.join("noisy-ipam");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh
             if [ \"$CNI_COMMAND\" = VERSION ]; then
               echo '{{\"cniVersion\":\"1.0.0\",\"supportedVersions\":[\"1.0.0\"]}}'; exit 0
             fi
             [ \"$CNI_COMMAND\" = ADD ] || exit 0
             cat > {}
             echo \"noisy-ipam: $CNI_COMMAND $CNI_CONTAINERID $CNI_IFNAME $CNI_NETNS $CNI_ARGS\" >&2
             echo '{{\"cniVersion\":\"1.0.0\",\"code\":11,\"msg\":\"pool p1 exhausted\"}}'
             exit 1
",
            seen.display()
        ),
    )
    .unwrap();
    Command::new("chmod")
        .arg("+x")
        .arg(&script)
        .status()
        .unwrap();
    let mut vars = s.vars("ADD", "c7");
    for (k, v) in &mut vars {
        if *k == "CNI_PATH" {
            *v = format!("/nonexistent:{}", bin.display());
        }
    }
    let v: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let conf = s.conf(json!({"ipam": {"type": "noisy-ipam", "pool": "p1"}}));
    let r = run(&v, &conf);
    assert_eq!(r.code(), 11, "the IPAM plugin's code: {}", r.out);
    assert!(r.msg().contains("pool p1 exhausted"), "{}", r.out);
    let line = r
        .stderr
        .lines()
        .find(|l| l.starts_with("noisy-ipam: "))
        .unwrap_or_else(|| panic!("the IPAM plugin's stderr did not pass: {}", r.stderr));
    assert_eq!(
        line,
        "noisy-ipam: ADD c7 eth0 /var/run/netns/pod-under-test \
         IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-1"
    );
    let given: Value = serde_json::from_slice(&std::fs::read(&seen).unwrap()).unwrap();
    assert_eq!(given["name"], "weft", "{given}");
    assert_eq!(given["cniVersion"], "1.0.0", "{given}");
    assert_eq!(given["type"], "weft-cni", "{given}");
    assert_eq!(given["ipam"]["type"], "noisy-ipam", "{given}");
    assert_eq!(given["ipam"]["pool"], "p1", "{given}");
}

#[test]
fn a_failed_add_undoes_the_address_and_the_attach() {
    if !have_host_local("a_failed_add_undoes_the_address_and_the_attach") {
        return;
    }
    let s = Setup::new("1.0.0");
    let agent = FakeAgent::start(s.dir.path());
    for (kind, want, detached) in [
        (ErrorKind::Failed, 5, true),
        (ErrorKind::NotReady, 11, true),
        (ErrorKind::BadRequest, 7, true),
        (ErrorKind::Exists, 100, false),
    ] {
        agent.set(|s| s.attach = Err(kind));
        let r = s.run("ADD", "c2", json!({}));
        assert_eq!(r.code(), want, "{kind:?}: {}", r.out);
        assert!(r.msg().contains("scripted failure"), "{}", r.out);
        assert!(
            s.reservations().is_empty(),
            "{kind:?}: {:?}",
            s.reservations()
        );
        let seen = agent.take();
        assert_eq!(
            seen.iter().any(|r| matches!(r, Request::Detach(_))),
            detached,
            "{kind:?}: {seen:?}"
        );
    }
    agent.set(|s| {
        s.attach = Ok(());
        s.ready = false;
    });
    let r = s.run("ADD", "c2", json!({}));
    assert_eq!(r.code(), 11, "{}", r.out);
    assert!(
        r.msg().contains("no subnet yet"),
        "the agent's reason: {}",
        r.out
    );
    assert!(s.reservations().is_empty());
}

#[test]
fn status_and_gc_against_the_agent() {
    if !have_host_local("status_and_gc_against_the_agent") {
        return;
    }
    let s = Setup::new("1.1.0");
    let agent = FakeAgent::start(s.dir.path());
    let r = s.run("STATUS", "x", json!({}));
    assert!(r.ok, "{} {}", r.out, r.stderr);
    assert_eq!(r.out, Value::Null);
    agent.set(|s| s.ready = false);
    let r = s.run("STATUS", "x", json!({}));
    assert_eq!(r.code(), 50, "{}", r.out);
    assert!(r.msg().contains("no subnet yet"), "{}", r.out);
    agent.set(|s| s.ready = true);

    for cid in ["k1", "k2", "k3"] {
        let r = s.run("ADD", cid, json!({}));
        assert!(r.ok, "{} {}", r.out, r.stderr);
    }
    assert_eq!(s.reservations().len(), 3);
    agent.take();
    let r = s.run("GC", "x", json!({}));
    assert_eq!(r.code(), 7, "GC without a list: {}", r.out);
    let keep = json!({"cni.dev/attachments":[{"containerID":"k2","ifname":"eth0"}]});
    let r = s.run("GC", "x", keep);
    assert!(r.ok, "{} {}", r.out, r.stderr);
    assert_eq!(r.out, Value::Null, "GC prints nothing");
    assert_eq!(
        s.reservations(),
        vec![("198.19.7.3".to_string(), "k2\r\neth0".to_string())]
    );
    let seen = agent.take();
    let Some(Request::Gc(g)) = seen.iter().find(|r| matches!(r, Request::Gc(_))) else {
        panic!("{seen:?}")
    };
    assert_eq!(g.keep.len(), 1);
    assert_eq!(g.keep[0].container_id, "k2");
}

#[test]
fn concurrent_adds_and_dels_of_different_containers_are_safe() {
    if !have_host_local("concurrent_adds_and_dels_of_different_containers_are_safe") {
        return;
    }
    let s = Setup::new("1.0.0");
    let _agent = FakeAgent::start(s.dir.path());
    let go = |command: &'static str| {
        std::thread::scope(|scope| {
            let handles: Vec<_> = (0..10)
                .map(|i| {
                    let s = &s;
                    scope.spawn(move || s.run(command, &format!("k{i}"), json!({})))
                })
                .collect();
            for h in handles {
                let r = h.join().unwrap();
                assert!(r.ok, "{command}: {} {}", r.out, r.stderr);
            }
        })
    };
    go("ADD");
    let held = s.reservations();
    assert_eq!(held.len(), 10, "{held:?}");
    let owners: std::collections::HashSet<_> = held.iter().map(|(_, o)| o.clone()).collect();
    assert_eq!(owners.len(), 10, "one address per container: {held:?}");
    go("DEL");
    assert!(s.reservations().is_empty(), "{:?}", s.reservations());
}
