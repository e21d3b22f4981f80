//! The `weft-agent` binary's one-line errors and exit codes (no root, no etcd).

use std::process::Command;

const AGENT: &str = env!("CARGO_BIN_EXE_weft-agent");

fn run(args: &[&str]) -> (i32, String) {
    let out = Command::new(AGENT)
        .args(args)
        .env("RUST_LOG", "off")
        .output()
        .expect("run weft-agent");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_settings_are_one_line_and_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let (code, err) = run(&["--config", "/nonexistent/agent.toml"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("weft-agent: /nonexistent/agent.toml: "),
        "{err}"
    );
    assert_eq!(err.lines().count(), 1, "{err}");
    let cfg = dir.path().join("agent.toml");
    std::fs::write(&cfg, "node_name = \"n1\"\nlease_tl = 5\n").unwrap();
    let (code, err) = run(&["--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(err.contains("line 2") && err.contains("lease_tl"), "{err}");
    let (code, err) = run(&[
        "--node-name",
        "n1",
        "--etcd-endpoints",
        "http://198.18.0.1:2379",
    ]);
    assert_eq!(
        (code, err.as_str()),
        (
            1,
            "weft-agent: public_ip is not set (the node's underlay address)\n"
        )
    );
    let (code, err) = run(&[
        "--node-name",
        "n1",
        "--public-ip",
        "198.18.0.1",
        "--etcd-endpoints",
        "198.18.0.1:2379",
    ]);
    assert_eq!(code, 1);
    assert!(err.contains("must start with http:// or https://"), "{err}");
}

#[test]
fn status_without_an_agent_says_so() {
    let (code, err) = run(&["status", "--socket", "/nonexistent/agent.sock"]);
    assert_eq!(code, 1);
    assert!(
        err.starts_with("weft-agent: weft-agent is not reachable at /nonexistent/agent.sock"),
        "{err}"
    );
    let (code, err) = run(&[
        "status",
        "-o",
        "yaml",
        "--socket",
        "/nonexistent/agent.sock",
    ]);
    assert_eq!(
        (code, err.as_str()),
        (1, "weft-agent: unknown output 'yaml' (text or json)\n")
    );
}
