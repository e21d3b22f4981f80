//! Runs the built `weftctl`: one-line errors and exit codes, `--help` with an example
//! on every command, and requests and printed output against a scripted fake `weftd`
//! on a socket in a temporary directory.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;

use serde_json::{Value, json};

const WEFTCTL: &str = env!("CARGO_BIN_EXE_weftctl");

fn run(args: &[&str]) -> Output {
    Command::new(WEFTCTL)
        .args(args)
        .output()
        .expect("run weftctl")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A fake weftd that answers `hello`, then answers the next request with `reply`
/// (as `ok`, or as `error` when `error` is set) and reports the request it got.
fn fake_server(path: &Path, reply: Value, error: bool) -> mpsc::Receiver<Value> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let hello: Value = serde_json::from_str(&line).unwrap();
        assert_eq!(hello["hello"]["version"], 1);
        let resp =
            json!({"id": hello["id"], "ok": {"version": 1, "name": "weftd", "software": "0.1.0"}});
        writeln!(w, "{resp}").unwrap();
        line.clear();
        r.read_line(&mut line).unwrap();
        let req: Value = serde_json::from_str(&line).unwrap();
        let resp = if error {
            json!({"id": req["id"], "error": reply})
        } else {
            json!({"id": req["id"], "ok": reply})
        };
        writeln!(w, "{resp}").unwrap();
        let _ = tx.send(req);
    });
    rx
}

/// A fake weftd that answers `hello`, then each of the next requests with the lines of
/// its entry of `script` (each line's `id` set to the request's), and reports the
/// requests it got.
fn scripted_server(path: &Path, script: Vec<Vec<Value>>) -> mpsc::Receiver<Value> {
    let listener = UnixListener::bind(path).unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let (s, _) = listener.accept().unwrap();
        let mut w = s.try_clone().unwrap();
        let mut r = BufReader::new(s);
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let hello: Value = serde_json::from_str(&line).unwrap();
        let resp =
            json!({"id": hello["id"], "ok": {"version": 1, "name": "weftd", "software": "0.1.0"}});
        writeln!(w, "{resp}").unwrap();
        for lines in script {
            line.clear();
            if r.read_line(&mut line).unwrap() == 0 {
                return;
            }
            let req: Value = serde_json::from_str(&line).unwrap();
            for mut l in lines {
                l["id"] = req["id"].clone();
                writeln!(w, "{l}").unwrap();
            }
            let _ = tx.send(req);
        }
    });
    rx
}

#[test]
fn cannot_connect_is_one_line() {
    let o = run(&["-s", "/nonexistent/weft.sock", "show"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        stderr(&o),
        "weftctl: cannot connect to /nonexistent/weft.sock: No such file or directory (is weftd running?)\n"
    );
}

#[test]
fn bad_flows_are_refused_before_connecting() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("flows.txt");
    std::fs::write(
        &file,
        "priority=1 actions=drop\n# comment\npriority=2,nw_sorc=1.2.3.4 actions=drop\n",
    )
    .unwrap();
    // Files are parsed by weftd as they stream in (its errors name the file's line:
    // `server_errors_are_one_line_with_exit_1`); without a weftd they are not read.
    for cmd in ["add-flows", "replace-flows"] {
        let o = run(&["-s", "/nonexistent", cmd, file.to_str().unwrap()]);
        assert_eq!(o.status.code(), Some(1));
        assert_eq!(
            stderr(&o),
            "weftctl: cannot connect to /nonexistent: No such file or directory (is weftd running?)\n"
        );
    }
    let o = run(&["-s", "/nonexistent", "add-flows", "/nonexistent/flows.txt"]);
    assert_eq!(
        stderr(&o),
        "weftctl: /nonexistent/flows.txt: No such file or directory\n"
    );
    let o = run(&["-s", "/nonexistent", "add-flow", "tcp,tp_dst=80"]);
    assert_eq!(
        stderr(&o),
        "weftctl: flow: missing 'actions=' (use 'actions=drop' to drop)\n"
    );
    let o = run(&["-s", "/nonexistent", "add-port", "p0", "type=tap", "mtu=9"]);
    assert_eq!(
        stderr(&o),
        "weftctl: bad value '9' for mtu: expected an MTU from 68 to 65535\n"
    );
    let o = run(&["-s", "/nonexistent", "add-flows", "/nonexistent/flows"]);
    assert_eq!(
        stderr(&o),
        "weftctl: /nonexistent/flows: No such file or directory\n"
    );
}

#[test]
fn command_line_errors_are_one_line() {
    for args in [
        &[][..],
        &["frobnicate"],
        &["del-port"],
        &["show", "--bogus"],
    ] {
        let o = run(args);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        let e = stderr(&o);
        assert_eq!(e.lines().count(), 1, "{args:?}: {e}");
        assert!(e.starts_with("weftctl: "), "{e}");
    }
}

#[test]
fn every_command_has_help_with_an_example() {
    for cmd in [
        "show",
        "add-port",
        "del-port",
        "add-flow",
        "add-flows",
        "mod-flows",
        "del-flows",
        "replace-flows",
        "dump-flows",
        "dump-ports",
        "dump-tables",
        "fdb-show",
        "trace",
        "capture",
        "compile",
    ] {
        let o = run(&[cmd, "--help"]);
        assert!(o.status.success(), "{cmd}");
        let out = stdout(&o);
        assert!(out.contains("Example"), "{cmd}: {out}");
        assert!(out.contains(&format!("weftctl {cmd}")), "{cmd}: {out}");
    }
}

#[test]
fn dump_flows_sends_the_filter_and_prints_like_ovs_ofctl() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let flow = serde_json::to_value(
        weft_flow::parse_flow("priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2").unwrap(),
    )
    .unwrap();
    let one = json!({"flow": flow, "packets": 10, "bytes": 980, "duration_ms": 12345, "idle_age_ms": 3000});
    // Two parts, then the count: printed as they come, in order.
    let answer = vec![
        json!({"flows": [one, one]}),
        json!({"flows": [one]}),
        json!({"ok": {"flows": 3}}),
    ];
    let rx = scripted_server(&sock, vec![answer.clone()]);
    let o = run(&["-s", sock.to_str().unwrap(), "dump-flows", "table=0,ip"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let line = " cookie=0x0, duration=12.345s, table=0, n_packets=10, n_bytes=980, idle_age=3, priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2\n";
    assert_eq!(stdout(&o), line.repeat(3));
    let req = rx.recv().unwrap();
    assert_eq!(req["dump_flows"]["filter"]["table"], 0, "{req}");
    assert_eq!(req["dump_flows"]["stream"], true, "{req}");
    assert_eq!(req["dump_flows"]["format"], "text", "{req}");

    // Text parts (what weftd sends for that) are copied out as they are.
    let sock_t = dir.path().join("st");
    let text_answer = vec![
        json!({"text": line.repeat(2)}),
        json!({"text": line}),
        json!({"ok": {"flows": 3}}),
    ];
    let _rx = scripted_server(&sock_t, vec![text_answer]);
    let o = run(&["-s", sock_t.to_str().unwrap(), "dump-flows"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), line.repeat(3));

    // A weftd from before the text form refuses `format`: asked again for JSON.
    let sock_old = dir.path().join("sold");
    let refused = vec![
        json!({"error": {"message": "bad request: unknown field `format`, expected one of `filter`, `text`, `stream`"}}),
    ];
    let rx = scripted_server(&sock_old, vec![refused, answer.clone()]);
    let o = run(&["-s", sock_old.to_str().unwrap(), "dump-flows", "table=0"]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stdout(&o), line.repeat(3));
    let first = rx.recv().unwrap();
    let again = rx.recv().unwrap();
    assert_eq!(first["dump_flows"]["format"], "text", "{first}");
    assert!(again["dump_flows"].get("format").is_none(), "{again}");
    assert_eq!(again["dump_flows"]["filter"]["table"], 0, "{again}");

    // -o json: one JSON object per flow per line.
    let sock2 = dir.path().join("s2");
    let _rx = scripted_server(&sock2, vec![answer]);
    let o = run(&["-s", sock2.to_str().unwrap(), "-o", "json", "dump-flows"]);
    let lines: Vec<Value> = stdout(&o)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines, vec![one.clone(), one.clone(), one.clone()]);
    // Each object as compact JSON with sorted members, one per line.
    assert_eq!(stdout(&o), format!("{one}\n").repeat(3));

    // An error after parts: one line, exit 1.
    let sock3 = dir.path().join("s3");
    let _rx = scripted_server(
        &sock3,
        vec![vec![
            json!({"error": {"message": "filter: unknown port 'x'"}}),
        ]],
    );
    let o = run(&["-s", sock3.to_str().unwrap(), "dump-flows", "in_port=x"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "weftctl: filter: unknown port 'x'\n");
}

#[test]
fn server_errors_are_one_line_with_exit_1() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let file = dir.path().join("flows");
    std::fs::write(
        &file,
        "priority=1 actions=drop\n\npriority=2,ip actions=output:nosuch\n",
    )
    .unwrap();
    let rx = scripted_server(
        &sock,
        vec![
            vec![json!({"ok": {"bundle": 4}})],
            vec![json!({"ok": {"changes": 2}})],
            vec![
                json!({"error": {"message": "flow line 3: unknown port 'nosuch'", "line": 3, "index": 1}}),
            ],
        ],
    );
    let mut child = Command::new(WEFTCTL)
        .args(["-s", sock.to_str().unwrap(), "add-flows", "-"])
        .stdin(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(&std::fs::read(&file).unwrap())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(stderr(&o), "weftctl: flow line 3: unknown port 'nosuch'\n");
    // The file went as a bundle in parts: its text from line 1, then the commit.
    assert_eq!(rx.recv().unwrap()["bundle_open"], json!({}));
    let add = rx.recv().unwrap();
    assert_eq!(add["bundle_add"]["bundle"], 4, "{add}");
    assert_eq!(add["bundle_add"]["first_line"], 1, "{add}");
    assert_eq!(
        add["bundle_add"]["text"],
        "priority=1 actions=drop\n\npriority=2,ip actions=output:nosuch\n"
    );
    assert_eq!(rx.recv().unwrap()["bundle_commit"], json!({"bundle": 4}));
}

/// Warnings in a flow change's reply (port numbers no port has) go to stderr, one line
/// each, and the command still succeeds (the flows were applied); stdout stays empty.
#[test]
fn bundle_warnings_are_printed_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("s");
    let warning = "change 1: output:99: no port has number 99; packets sent to it are dropped (no_such_port) until one does";
    let _rx = fake_server(
        &sock,
        json!({"version": 3, "added": 1, "replaced": 0, "modified": 0, "deleted": 0, "warnings": [warning]}),
        false,
    );
    let o = run(&[
        "-s",
        sock.to_str().unwrap(),
        "add-flow",
        "actions=output:99",
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    assert_eq!(stderr(&o), format!("weftctl: warning: {warning}\n"));
    assert_eq!(stdout(&o), "");
    // Without warnings nothing is printed.
    let sock2 = dir.path().join("s2");
    let _rx = fake_server(
        &sock2,
        json!({"version": 3, "added": 1, "replaced": 0, "modified": 0, "deleted": 0}),
        false,
    );
    let o = run(&[
        "-s",
        sock2.to_str().unwrap(),
        "add-flow",
        "actions=output:1",
    ]);
    assert!(o.status.success());
    assert_eq!(stderr(&o), "");
}
