//! Runs the built `weftd` binary: configuration errors, `--help`, and a full start
//! with metrics, reload and a clean stop. Needs no privileges (the binary has no
//! datapath wired in yet, so no device is created).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

const WEFTD: &str = env!("CARGO_BIN_EXE_weftd");

fn run(args: &[&str]) -> Output {
    Command::new(WEFTD)
        .args(args)
        .env_remove("NOTIFY_SOCKET")
        .output()
        .expect("run weftd")
}

/// A running weftd, killed if the test fails before it stops.
struct Daemon(Child);

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Daemon {
    fn start(args: &[&str]) -> Daemon {
        let child = Command::new(WEFTD)
            .args(args)
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn weftd");
        Daemon(child)
    }

    fn signal(&self, sig: Signal) {
        kill(Pid::from_raw(self.0.id() as i32), sig).unwrap();
    }

    /// Waits for the exit; returns (exit code, stderr).
    fn wait(mut self, limit: Duration) -> (Option<i32>, String) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.0.try_wait().unwrap() {
                let mut err = String::new();
                self.0
                    .stderr
                    .take()
                    .unwrap()
                    .read_to_string(&mut err)
                    .unwrap();
                return (status.code(), err);
            }
            assert!(
                start.elapsed() < limit,
                "weftd did not exit within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn free_port() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
}

fn http_get(addr: SocketAddr, path: &str) -> std::io::Result<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: weftd\r\n\r\n")?;
    let mut out = String::new();
    s.read_to_string(&mut out)?;
    Ok(out)
}

/// Polls until the metrics endpoint answers (weftd is up).
fn wait_for_metrics(addr: SocketAddr) -> String {
    let start = Instant::now();
    loop {
        if let Ok(r) = http_get(addr, "/metrics") {
            return r;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "metrics never answered"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn write(path: &Path, text: &str) {
    std::fs::write(path, text).unwrap();
}

#[test]
fn bad_config_is_one_line_and_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("weftd.toml");
    write(
        &cfg,
        "workers = 2\n\n[[port]]\nname = \"pod1\"\ntype = \"tap\"\n\nmtu = \"9x\"\n",
    );
    let out = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert_eq!(
        err,
        format!(
            "weftd: {} line 7: port 'pod1': bad value '9x' for mtu: expected an MTU from 68 to 65535\n",
            cfg.display()
        )
    );

    write(&cfg, "wrokers = 2\n");
    let out = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(
        err.ends_with("line 1: unknown key 'wrokers' (did you mean workers?)\n"),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");

    let out = run(&[
        "--config",
        dir.path().join("missing.toml").to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(String::from_utf8(out.stderr).unwrap().lines().count(), 1);

    let out = run(&["--workers", "0"]);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8(out.stderr).unwrap(),
        "weftd: --workers: bad value '0': expected a number of worker threads from 1 to 256\n"
    );

    // clap's own errors also exit 2.
    assert_eq!(run(&["--no-such-flag"]).status.code(), Some(2));
}

#[test]
fn help_lists_every_flag() {
    let out = run(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--config",
        "--state-dir",
        "--metrics",
        "--workers",
        "--control",
        "--control-group",
        "--flows",
        "SIGHUP",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    let out = run(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8(out.stdout).unwrap().starts_with("weftd "));
}

#[test]
fn serves_metrics_reloads_and_stops_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let cfg = dir.path().join("weftd.toml");
    write(
        &dir.path().join("flows.txt"),
        "table=0,priority=0 actions=normal\n",
    );
    // A tunnel port on loopback needs no privileges (a TAP would).
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let udp_port = udp.local_addr().unwrap().port();
    drop(udp);
    write(
        &cfg,
        &format!(
            "workers = 1\nstate_dir = \"{}\"\ncontrol = \"{}\"\nflows = \"flows.txt\"\n\
             metrics = \"127.0.0.1:1\"\n\n[[port]]\nname = \"vx0\"\ntype = \"vxlan\"\n\
             local = \"127.0.0.1\"\ndst_port = {udp_port}\n",
            state.display(),
            dir.path().join("weftd.sock").display()
        ),
    );
    let addr = free_port();
    let addr_text = addr.to_string();
    // --metrics overrides the file's (unusable) address.
    let d = Daemon::start(&["--config", cfg.to_str().unwrap(), "--metrics", &addr_text]);
    let resp = wait_for_metrics(addr);
    assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
    assert!(
        resp.to_ascii_lowercase()
            .contains("\r\ncontent-type: application/openmetrics-text; version=1.0.0"),
        "{resp}"
    );
    assert!(resp.contains("\nweft_pipeline_version "), "{resp}");
    assert!(
        resp.contains("\nweft_table_flows{table=\"0\"} 1\n"),
        "{resp}"
    );
    assert!(
        resp.contains("weft_port_rx_packets_total{port=\"vx0\",ofport=\"1\",type=\"vxlan\"} 0"),
        "{resp}"
    );
    assert!(
        resp.contains("# TYPE weft_cache_hits counter\n")
            && resp.contains("\nweft_cache_hits_total ")
            && resp.ends_with("\n# EOF\n"),
        "{resp}"
    );
    let resp = http_get(addr, "/nope").unwrap();
    assert!(resp.starts_with("HTTP/1.1 404 "), "{resp}");

    // A reload with a broken file keeps running; a good one too.
    write(&cfg, "workers = \"x\"\n");
    d.signal(Signal::SIGHUP);
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        http_get(addr, "/metrics")
            .unwrap()
            .starts_with("HTTP/1.1 200")
    );

    d.signal(Signal::SIGTERM);
    let (code, err) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(
        err.contains("reload failed, the running configuration stays"),
        "{err}"
    );
    assert!(err.contains("bad value 'x' for workers"), "{err}");
    assert!(err.contains("SIGTERM: stopping"), "{err}");
    // State was saved (journal and snapshot: no temporary file left), with the port
    // and flow, and it reads back as weftd's next start reads it.
    let saved = weftd::state::load(&state)
        .unwrap()
        .expect("state was saved");
    assert!(saved.ports.iter().any(|p| p.name == "vx0"), "{saved:?}");
    assert!(
        saved.flows.iter().any(|f| f.to_string().contains("normal")),
        "{saved:?}"
    );
    assert!(!state.join(weftd::state::TMP_FILE).exists());
}

#[test]
fn flags_only_and_sigint() {
    let dir = tempfile::tempdir().unwrap();
    let addr = free_port();
    let addr_text = addr.to_string();
    let state = dir.path().join("s");
    let d = Daemon::start(&[
        "--state-dir",
        state.to_str().unwrap(),
        "--control",
        dir.path().join("c.sock").to_str().unwrap(),
        "--metrics",
        &addr_text,
        "--workers",
        "2",
    ]);
    wait_for_metrics(addr);
    d.signal(Signal::SIGINT);
    let (code, err) = d.wait(Duration::from_secs(10));
    assert_eq!(code, Some(0), "{err}");
    assert!(err.contains("SIGINT: stopping"), "{err}");
}

#[test]
fn corrupt_state_refuses_to_start() {
    let dir = tempfile::tempdir().unwrap();
    write(
        &dir.path().join("state.json"),
        "{\"format\": 1, \"ports\": [",
    );
    let out = run(&["--state-dir", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8(out.stderr).unwrap();
    let last = err.lines().last().unwrap_or_default();
    assert!(last.starts_with("weftd: "), "{err}");
    assert!(last.contains("state.json is corrupt"), "{err}");
    assert!(last.contains("move the file aside"), "{err}");
    // The file is left as it was.
    assert_eq!(
        std::fs::read_to_string(dir.path().join("state.json")).unwrap(),
        "{\"format\": 1, \"ports\": ["
    );
}
