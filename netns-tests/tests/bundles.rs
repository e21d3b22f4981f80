//! Bundles of any size, streamed in parts (`bundle_open`, `bundle_add`, `bundle_commit`),
//! and dumps that stream: a `weftd` in a namespace of its own with only a control socket
//! (no ports: the flows drop), programmed with `weftctl` and the client library.
//!
//! - a bundle that fails on its last part (a parse error, or an error found only at
//!   commit) changes nothing: the dump and the pipeline version are the same;
//! - a client that goes away mid-bundle (SIGKILLed `weftctl`, or a dropped connection)
//!   leaves nothing behind, and a bundle is only ever reachable from its connection;
//! - two bundles committed at once both land whole: a watcher never sees a part of one;
//! - a limit exceeded gives one line naming the limit and its setting, and changes
//!   nothing;
//! - the streamed dump equals the one-line dump, and `-o json` is one object per line;
//! - flows added as text, journaled as the lines they came as, are the same after
//!   `kill -9` and a restart.
//!
//! At most 200,000 flows, as CI's time allows.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use netns_tests::lab::{Lab, Ns, ProcId, privileged};
use netns_tests::node::{binary, weftd_binary};
use weft_flow::FlowFilter;
use weft_proto::PartCommand;
use weft_proto::client::Client;

fn weftctl_binary() -> PathBuf {
    binary("weftctl", "WEFTCTL")
}

/// Runs `weftctl -s SOCK ARGS`, with `stdin` (a file's text) piped in when given.
fn weftctl(sock: &Path, args: &[&str], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(weftctl_binary());
    cmd.arg("-s").arg(sock).args(args);
    cmd.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn weftctl");
    let mut pipe = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        // weftctl may stop reading early (an error): a broken pipe is its answer.
        let _ = pipe.write_all(text.as_bytes());
    }
    drop(pipe);
    child.wait_with_output().unwrap()
}

/// `weftctl` that must succeed; its stdout.
fn ok(sock: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = weftctl(sock, args, stdin);
    assert!(
        o.status.success(),
        "weftctl {args:?} failed: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// `weftctl` that must fail with exit status 1; its stderr.
fn fails(sock: &Path, args: &[&str], stdin: Option<&str>) -> String {
    let o = weftctl(sock, args, stdin);
    assert_eq!(
        o.status.code(),
        Some(1),
        "weftctl {args:?} should fail: {}",
        String::from_utf8_lossy(&o.stdout)
    );
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A `weftd` in a namespace of its own, with only a control socket (and `extra`
/// flags); returns the socket once it answers.
fn start_weftd(lab: &mut Lab, extra: &[&str]) -> PathBuf {
    let ns = lab.netns("node").unwrap();
    let dir = lab.dir().join("weftd");
    spawn_weftd(lab, &ns, &dir, extra).0
}

/// [`start_weftd`] in `ns` with its socket and state under `dir` (kept across a
/// restart); the socket and the process.
fn spawn_weftd(lab: &mut Lab, ns: &Ns, dir: &Path, extra: &[&str]) -> (PathBuf, ProcId) {
    let sock = dir.join("run/weftd.sock");
    let mut cmd = ns.command(&weftd_binary().display().to_string());
    cmd.arg("--control")
        .arg(&sock)
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--workers")
        .arg("1")
        .args(extra);
    cmd.env("RUST_LOG", "info");
    let id = lab.spawn("weftd", cmd).unwrap();
    let start = Instant::now();
    while Client::connect(&sock).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "weftd not answering on {}\n{}",
            sock.display(),
            lab.log("weftd")
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    (sock, id)
}

/// `n` distinct flows in `table` (the 198.19.0.0/16 pod range, then priorities), one a
/// line; every flow drops, so no port is needed.
fn flows(table: u8, n: usize, cookie: u64) -> String {
    let mut s = String::with_capacity(n * 80);
    for i in 0..n {
        let prio = 100 + i / 65536;
        let host = i % 65536;
        s.push_str(&format!(
            "table={table},priority={prio},cookie={cookie:#x},ip,nw_dst=198.19.{}.{} actions=drop\n",
            host / 256,
            host % 256
        ));
    }
    s
}

/// The dump without its clocks (durations and idle ages move on between two dumps).
fn without_clocks(dump: &str) -> String {
    dump.lines()
        .map(|l| {
            l.split(", ")
                .filter(|f| !f.starts_with("duration=") && !f.starts_with("idle_age="))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn version(sock: &Path) -> u64 {
    Client::connect(sock)
        .unwrap()
        .show()
        .unwrap()
        .pipeline_version
}

fn flow_count(sock: &Path) -> usize {
    Client::connect(sock).unwrap().show().unwrap().flows
}

#[test]
fn a_streamed_bundle_that_fails_on_its_last_part_changes_nothing() {
    if !privileged("a_streamed_bundle_that_fails_on_its_last_part_changes_nothing") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let sock = start_weftd(&mut lab, &[]);
    // 100,000 flows installed in parts (about 8 MB of text: several parts).
    let base = flows(0, 100_000, 1);
    let t = Instant::now();
    ok(&sock, &["add-flows", "-"], Some(&base));
    eprintln!("add-flows of 100000 flows: {:?}", t.elapsed());
    assert_eq!(flow_count(&sock), 100_000);

    // The streamed dump is the one-line dump, line for line, in the same order.
    let t = Instant::now();
    let dump = ok(&sock, &["dump-flows"], None);
    eprintln!("dump-flows of 100000 flows: {:?}", t.elapsed());
    assert_eq!(dump.lines().count(), 100_000);
    let whole = Client::connect(&sock)
        .unwrap()
        .dump_flows(FlowFilter::all())
        .unwrap();
    let one_line: String = whole
        .flows
        .iter()
        .map(|f| weftctl::proto_text::flow_line(f) + "\n")
        .collect();
    assert_eq!(without_clocks(&dump), without_clocks(&one_line));
    // -o json: one object per flow per line, the same flows.
    let json = ok(
        &sock,
        &["-o", "json", "dump-flows", "cookie=0x1/0xffff"],
        None,
    );
    let objs: Vec<serde_json::Value> = json
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
        .collect();
    assert_eq!(objs.len(), 100_000);
    assert_eq!(objs[0]["flow"]["table"], 0);
    assert_eq!(
        objs[0]["flow"],
        serde_json::to_value(&whole.flows[0]).unwrap()["flow"]
    );
    // A filter streams too: one /24 of the pods (at priorities 100 and 101).
    let some = ok(&sock, &["dump-flows", "ip,nw_dst=198.19.7.0/24"], None);
    assert_eq!(some.lines().count(), 512, "{some}");

    let before = ok(&sock, &["dump-flows"], None);
    let v = version(&sock);
    // 100,000 new flows whose very last line does not parse: the error names the
    // file's line, found in the last part.
    let mut bad = flows(1, 100_000, 2);
    bad.push_str("table=1,priority=5,tcp,tp_dts=80 actions=drop\n");
    assert_eq!(
        fails(&sock, &["add-flows", "-"], Some(&bad)),
        "weftctl: flow line 100001: unknown field 'tp_dts' (did you mean tp_dst?)\n"
    );
    // Whose last line parses but names a port that does not exist (found at commit).
    let mut bad = flows(1, 100_000, 2);
    bad.push_str("table=1,priority=5,ip actions=output:nosuch\n");
    assert_eq!(
        fails(&sock, &["add-flows", "-"], Some(&bad)),
        "weftctl: flow line 100001: unknown port 'nosuch'\n"
    );
    // replace-flows of the same: nothing deleted either.
    assert_eq!(
        fails(&sock, &["replace-flows", "-"], Some(&bad)),
        "weftctl: flow line 100001: unknown port 'nosuch'\n"
    );
    assert_eq!(version(&sock), v, "a refused bundle published a version");
    let after = ok(&sock, &["dump-flows"], None);
    assert_eq!(without_clocks(&after), without_clocks(&before));

    // replace-flows in parts, its difference computed in weftd: half the flows stay
    // (unchanged), half go, 10 are new.
    let keep: String = base
        .lines()
        .take(50_000)
        .map(|l| format!("{l}\n"))
        .collect();
    let wanted = keep.clone() + &flows(2, 10, 3);
    let r = ok(&sock, &["-o", "json", "replace-flows", "-"], Some(&wanted));
    let r: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["unchanged"], 50_000, "{r}");
    assert_eq!(r["deleted"], 50_000, "{r}");
    assert_eq!(r["added"], 10, "{r}");
    assert_eq!(flow_count(&sock), 50_010);
    // del-flows of a file, strictly, in parts.
    let gone: String = keep
        .lines()
        .take(20_000)
        .map(|l| l.split(" actions=").next().unwrap().to_string() + "\n")
        .collect();
    ok(
        &sock,
        &["del-flows", "--strict", "--file", "-"],
        Some(&gone),
    );
    assert_eq!(flow_count(&sock), 30_010);
}

#[test]
fn a_client_gone_mid_bundle_leaves_nothing() {
    if !privileged("a_client_gone_mid_bundle_leaves_nothing") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let sock = start_weftd(&mut lab, &[]);
    ok(&sock, &["add-flows", "-"], Some(&flows(0, 1000, 1)));
    let v = version(&sock);

    // A weftctl killed while it streams: it has sent parts (3 MB of a file whose end
    // never comes) when it is killed.
    let mut child = Command::new(weftctl_binary())
        .arg("-s")
        .arg(&sock)
        .args(["add-flows", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut pipe = child.stdin.take().unwrap();
    pipe.write_all(flows(1, 40_000, 2).as_bytes()).unwrap();
    pipe.flush().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    child.kill().unwrap();
    child.wait().unwrap();
    drop(pipe);

    // A connection that opened a bundle, added to it, and hung up.
    let mut c = Client::connect(&sock).unwrap();
    let b = c.bundle_open(false).unwrap();
    let held = c
        .bundle_add_text(b, PartCommand::Add, flows(2, 5000, 3), 1)
        .unwrap();
    assert_eq!(held, 5000);
    drop(c);

    // Another connection cannot commit it, or any bundle it did not open.
    let mut other = Client::connect(&sock).unwrap();
    for n in 1..=4 {
        let e = other.bundle_commit(n).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!("no open bundle {n} on this connection")),
            "{e}"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(
        version(&sock),
        v,
        "a bundle of a client that went away was applied"
    );
    assert_eq!(flow_count(&sock), 1000);
    // Discarded explicitly: nothing either; and the connection goes on.
    let b = other.bundle_open(false).unwrap();
    other
        .bundle_add_text(b, PartCommand::Add, flows(3, 10, 4), 1)
        .unwrap();
    other.bundle_discard(b).unwrap();
    assert!(other.bundle_commit(b).is_err());
    assert_eq!(flow_count(&sock), 1000);
    let b = other.bundle_open(false).unwrap();
    other
        .bundle_add_text(b, PartCommand::Add, flows(3, 10, 4), 1)
        .unwrap();
    assert_eq!(other.bundle_commit(b).unwrap().added, 10);
    assert_eq!(flow_count(&sock), 1010);
}

#[test]
fn two_concurrent_bundles_both_land_whole() {
    if !privileged("two_concurrent_bundles_both_land_whole") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let sock = start_weftd(&mut lab, &[]);
    const N: usize = 50_000;
    let a = flows(0, N, 1);
    let b = flows(1, N, 2);
    let stop = std::sync::atomic::AtomicBool::new(false);
    let seen = std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            // Every count a watcher sees is of whole bundles: 0, N or 2N.
            let mut seen = std::collections::BTreeSet::new();
            let mut c = Client::connect(&sock).unwrap();
            let start = Instant::now();
            while !stop.load(std::sync::atomic::Ordering::SeqCst)
                && start.elapsed() < Duration::from_secs(60)
            {
                let show = c.show().unwrap();
                seen.insert((show.flows, show.tables.clone()));
                std::thread::sleep(Duration::from_millis(2));
            }
            seen
        });
        let ta = s.spawn(|| ok(&sock, &["add-flows", "-"], Some(&a)));
        let tb = s.spawn(|| ok(&sock, &["add-flows", "-"], Some(&b)));
        ta.join().unwrap();
        tb.join().unwrap();
        stop.store(true, std::sync::atomic::Ordering::SeqCst);
        watcher.join().unwrap()
    });
    for (flows, tables) in &seen {
        assert!(
            [0, N, 2 * N].contains(flows),
            "a watcher saw {flows} flows ({tables:?}): part of a bundle"
        );
        for (_, n) in tables {
            assert_eq!(*n, N, "a table with part of its bundle: {tables:?}");
        }
    }
    let show = Client::connect(&sock).unwrap().show().unwrap();
    assert_eq!(show.tables, vec![(0, N), (1, N)]);
}

#[test]
fn a_limit_exceeded_gives_its_one_line_error() {
    if !privileged("a_limit_exceeded_gives_its_one_line_error") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let sock = start_weftd(
        &mut lab,
        &[
            "--max-bundle-flows",
            "1000",
            "--max-flows-per-table",
            "1500",
            "--max-flows",
            "2500",
        ],
    );
    assert_eq!(
        fails(&sock, &["add-flows", "-"], Some(&flows(0, 1001, 1))),
        "weftctl: bundle has 1001 flows; the limit is 1000 (max_bundle_flows in weftd.toml)\n"
    );
    assert_eq!(
        fails(&sock, &["replace-flows", "-"], Some(&flows(0, 1001, 1))),
        "weftctl: bundle has 1001 flows; the limit is 1000 (max_bundle_flows in weftd.toml)\n"
    );
    assert_eq!(flow_count(&sock), 0);
    ok(&sock, &["add-flows", "-"], Some(&flows(0, 1000, 1)));
    // 1000 more in table 0 (other priorities: new flows).
    let more = flows(0, 1000, 1).replace("priority=100,", "priority=200,");
    assert_eq!(
        fails(&sock, &["add-flows", "-"], Some(&more)),
        "weftctl: table 0 would have 2000 flows; the limit is 1500 (max_flows_per_table in weftd.toml)\n"
    );
    ok(&sock, &["add-flows", "-"], Some(&flows(1, 1000, 1)));
    let v = version(&sock);
    assert_eq!(
        fails(&sock, &["add-flows", "-"], Some(&flows(2, 1000, 1))),
        "weftctl: the switch would have 3000 flows; the limit is 2500 (max_flows in weftd.toml)\n"
    );
    assert_eq!(version(&sock), v);
    assert_eq!(flow_count(&sock), 2000);
    // A bad setting is refused at start, naming the flag.
    let o = Command::new(weftd_binary())
        .args(["--max-flows", "0", "--control", "/nonexistent/x.sock"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "weftd: --max-flows: bad value '0': expected a number of flows from 1 to 100000000\n"
    );
}

/// The agent's cookie in these tests: its high 16 bits are the set replaced.
const AGENT: u64 = 0x5745_0000_0000_0000;
const AGENT_SET: &str = "0x5745000000000000/0xffff000000000000";

/// The dump line of flow `k` of [`flows`] in `table` (exactly one), `None` if absent.
fn line_of(dump: &str, table: u8, k: usize) -> Option<&str> {
    let t = format!(" table={table}, ");
    let m = format!(",nw_dst=198.19.0.{k} actions=");
    let found: Vec<&str> = dump
        .lines()
        .filter(|l| l.contains(&t) && l.contains(&m))
        .collect();
    assert!(
        found.len() <= 1,
        "flow {k} of table {table} twice in\n{dump}"
    );
    found.first().copied()
}

fn age(line: &str) -> f64 {
    line.split(", ")
        .find_map(|f| f.strip_prefix("duration="))
        .and_then(|d| d.trim_end_matches('s').parse().ok())
        .unwrap_or_else(|| panic!("no duration in {line}"))
}

/// `replace-flows --cookie V/M` (and the protocol's `cookie` on `replace_flows` and a
/// replace `bundle_open`) compares only the flows whose cookie matches: flows with other
/// cookies (an operator's) are untouched, unchanged flows stay (their age and counters
/// go on), and a bad cookie, a flow of the file outside the set, or one that would
/// overwrite an operator's flow is one line that changes nothing.
#[test]
fn replace_flows_restricted_to_a_cookie_leaves_other_flows_alone() {
    if !privileged("replace_flows_restricted_to_a_cookie_leaves_other_flows_alone") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let sock = start_weftd(&mut lab, &[]);
    // An operator's flows (cookie 0x1, table 0) and the agent's (table 1).
    let operator = flows(0, 10, 1);
    ok(&sock, &["add-flows", "-"], Some(&operator));
    let agent = flows(1, 10, AGENT | 1);
    ok(&sock, &["add-flows", "-"], Some(&agent));
    let before = ok(&sock, &["dump-flows"], None);
    std::thread::sleep(Duration::from_millis(600));

    // Wanted: 5 of the agent's flows as they are, 1 with another cookie of the set (a
    // change), 4 gone, 3 new; the file says nothing about the operator's flows.
    let agent_lines: Vec<&str> = agent.lines().collect();
    let mut wanted: String = agent_lines[..5].iter().map(|l| format!("{l}\n")).collect();
    wanted.push_str(&agent_lines[5].replace(
        &format!("cookie={:#x}", AGENT | 1),
        &format!("cookie={:#x}", AGENT | 2),
    ));
    wanted.push('\n');
    wanted.push_str(&flows(2, 3, AGENT | 3));
    let r = ok(
        &sock,
        &["-o", "json", "replace-flows", "--cookie", AGENT_SET, "-"],
        Some(&wanted),
    );
    let r: serde_json::Value = serde_json::from_str(&r).unwrap();
    assert_eq!(r["unchanged"], 5, "{r}");
    assert_eq!(r["deleted"], 4, "{r}");
    assert_eq!(
        r["added"].as_u64().unwrap() + r["replaced"].as_u64().unwrap(),
        4,
        "{r}"
    );
    let after = ok(&sock, &["dump-flows"], None);
    assert_eq!(after.lines().count(), 10 + 5 + 1 + 3, "{after}");
    for k in 0..10 {
        let was = line_of(&before, 0, k).unwrap();
        let now = line_of(&after, 0, k).unwrap_or_else(|| panic!("operator's {k}: {after}"));
        assert!(now.contains("cookie=0x1,"), "{now}");
        assert!(
            age(now) >= age(was) + 0.5,
            "the operator's flow was left alone: {was} -> {now}"
        );
    }
    for k in 0..5 {
        let now = line_of(&after, 1, k).unwrap();
        assert!(now.contains(&format!("cookie={:#x},", AGENT | 1)), "{now}");
        assert!(age(now) >= 0.5, "an unchanged flow stays as it was: {now}");
    }
    let now = line_of(&after, 1, 5).unwrap();
    assert!(now.contains(&format!("cookie={:#x},", AGENT | 2)), "{now}");
    for k in 6..10 {
        assert_eq!(line_of(&after, 1, k), None, "deleted: {after}");
    }
    for k in 0..3 {
        let now = line_of(&after, 2, k).unwrap();
        assert!(now.contains(&format!("cookie={:#x},", AGENT | 3)), "{now}");
    }

    // Refusals: one line each, and nothing changes.
    let v = version(&sock);
    let dump = without_clocks(&ok(&sock, &["dump-flows"], None));
    for (cookie, file, want) in [
        (
            "0xzz",
            wanted.clone(),
            "weftctl: --cookie: bad value '0xzz' for cookie: expected VALUE/MASK, 64-bit numbers (e.g. 0x5745000000000000/0xffff000000000000)\n".to_string(),
        ),
        (
            "0x3/0x1",
            wanted.clone(),
            "weftctl: --cookie: cookie: value 0x3 has bits outside mask 0x1\n".to_string(),
        ),
        (
            AGENT_SET,
            format!("{wanted}{}", flows(3, 1, 7)),
            format!(
                "weftctl: flow line 10: cookie 0x7 is outside the replaced cookies {:#x}/{:#x}\n",
                AGENT, 0xffff_0000_0000_0000u64
            ),
        ),
        (
            AGENT_SET,
            format!("{wanted}{}", operator.lines().next().unwrap().replace("cookie=0x1,", &format!("cookie={AGENT:#x},"))),
            format!(
                "weftctl: flow line 10: an installed flow with the same table, priority and match has cookie 0x1, outside the replaced cookies {:#x}/{:#x} (it is left alone; delete it first)\n",
                AGENT, 0xffff_0000_0000_0000u64
            ),
        ),
    ] {
        let e = fails(&sock, &["replace-flows", "--cookie", cookie, "-"], Some(&file));
        assert_eq!(e, want, "--cookie {cookie}");
        assert_eq!(version(&sock), v, "--cookie {cookie} changed the flows");
        assert_eq!(without_clocks(&ok(&sock, &["dump-flows"], None)), dump);
    }

    // The protocol's replace_flows with a cookie (the client library): an empty list
    // removes the agent's flows, and only those.
    let mut c = Client::connect(&sock).unwrap();
    let set = weft_proto::parse_cookie_mask(AGENT_SET).unwrap();
    let e = c.replace_flows_of(Vec::new(), Some(weft_flow::Masked { value: 3, mask: 1 }));
    assert!(e.unwrap_err().to_string().contains("bits outside mask"));
    let r = c.replace_flows_of(Vec::new(), Some(set)).unwrap();
    assert_eq!((r.deleted, r.unchanged), (9, 0), "{r:?}");
    let left = ok(&sock, &["dump-flows"], None);
    assert_eq!(left.lines().count(), 10, "{left}");
    assert!(left.lines().all(|l| l.contains("cookie=0x1,")), "{left}");
    // A cookie on a bundle that is no replace is refused.
    let e = c
        .bundle_open_with(false, Some(set))
        .unwrap_err()
        .to_string();
    assert!(e.contains("needs 'replace'"), "{e}");
    assert_eq!(flow_count(&sock), 10);
}

/// A bundle of adds sent as text is journaled as the lines its flows came as (not
/// printed again): after `kill -9` and a restart the flows are the same, byte for byte
/// in the dump, also a flow spelled freely (fields out of order, spaces, a comment), one
/// replaced within the bundle, and one deleted afterwards by its identity as rebuilt
/// from the table.
#[test]
fn flows_added_as_text_are_the_same_after_kill_9() {
    if !privileged("flows_added_as_text_are_the_same_after_kill_9") {
        return;
    }
    let mut lab = Lab::new().unwrap();
    let ns = lab.netns("node").unwrap();
    let dir = lab.dir().join("weftd");
    let (sock, id) = spawn_weftd(&mut lab, &ns, &dir, &[]);
    let free = "ip,nw_src=198.19.1.0/24,table=1,priority=7   actions=mod_dl_src:02:00:00:00:00:01,set_field:0x5->reg0,goto_table:2";
    let mut text = String::from("# flows of a controller\n");
    text += &flows(0, 3000, 0x5);
    text += &format!("  {free}  # spelled freely\n\n");
    text += "table=2,priority=1,arp,arp_tpa=198.19.0.9 actions=drop\n";
    text += "table=2,priority=1,arp,arp_tpa=198.19.0.9 actions=normal\n";
    ok(&sock, &["add-flows", "-"], Some(&text));
    let journal = std::fs::read_to_string(dir.join("state/journal")).unwrap();
    assert!(
        journal.contains(&format!("\n+ {free}\n")),
        "journaled as sent"
    );
    ok(
        &sock,
        &[
            "del-flows",
            "--strict",
            "table=0,priority=100,ip,nw_dst=198.19.0.7",
        ],
        None,
    );
    let sorted = |dump: String| {
        let mut v: Vec<String> = without_clocks(&dump).lines().map(String::from).collect();
        v.sort();
        v
    };
    let before = sorted(ok(&sock, &["dump-flows"], None));
    assert_eq!(before.len(), 3000 + 2 - 1, "{before:?}");
    assert!(
        before
            .iter()
            .any(|l| l.contains("arp_tpa=198.19.0.9") && !l.ends_with("actions=drop")),
        "the later flow of an identity wins: {before:?}"
    );
    assert!(!before.iter().any(|l| l.contains("nw_dst=198.19.0.7 ")));
    // No clean stop, no fsync.
    assert!(lab.kill(id).is_some(), "killed");
    let (sock, _) = spawn_weftd(&mut lab, &ns, &dir, &[]);
    let after = sorted(ok(&sock, &["dump-flows"], None));
    assert_eq!(after, before, "{}", lab.log("weftd"));
}
