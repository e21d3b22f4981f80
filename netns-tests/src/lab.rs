//! A lab of network namespaces for end-to-end tests.
//!
//! A [`Lab`] owns everything a test makes: namespaces (nodes, pods, the underlay switch),
//! the devices inside them and the processes it started. Dropping the lab (also while a
//! failing test unwinds) stops the processes and deletes the namespaces, which takes
//! their veth, bridge and TAP devices with them.
//!
//! Names carry a per-lab prefix `weft-<pid>-<n>-` so parallel tests never collide, and a
//! new lab first sweeps namespaces left by test processes that no longer exist (a test
//! killed by SIGKILL cannot clean up after itself).
//!
//! Namespaces are fresh: they have a loopback device and whatever the test adds, and
//! the test only ever adds addresses and routes from the benchmarking ranges
//! (`198.18.0.0/24` underlay, `198.19.0.0/16` pods), so no test traffic has a route out.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The environment variable that turns a skipped privileged test into a failure (CI sets it).
pub const REQUIRE_PRIVILEGED: &str = "WEFT_REQUIRE_PRIVILEGED";

const NS_PREFIX: &str = "weft-";
static NEXT_LAB: AtomicU32 = AtomicU32::new(0);

/// Whether this process may build labs (root, `ip`, `/dev/net/tun`).
///
/// When it may not, the test should return early: this prints why to stderr, or panics
/// when [`REQUIRE_PRIVILEGED`] is set, so that CI cannot pass by skipping.
pub fn privileged(test: &str) -> bool {
    let why = if unsafe_free_euid() != Some(0) {
        Some("needs root")
    } else if !std::path::Path::new("/dev/net/tun").exists() {
        Some("needs /dev/net/tun")
    } else if Command::new("ip")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| !s.success())
        .unwrap_or(true)
    {
        Some("needs iproute2's ip")
    } else {
        None
    };
    match why {
        None => true,
        Some(why) if std::env::var_os(REQUIRE_PRIVILEGED).is_some() => {
            panic!("{test}: {why}, and {REQUIRE_PRIVILEGED} is set: this test must run here")
        }
        Some(why) => {
            eprintln!("skipping {test}: {why} (run as root, e.g. through scripts/test)");
            false
        }
    }
}

/// The effective uid, read from /proc so that this crate needs no `unsafe`.
fn unsafe_free_euid() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Uid:"))?;
    line.split_whitespace().nth(2)?.parse().ok()
}

/// An error from a command the lab ran.
#[derive(Debug)]
pub struct LabError(pub String);

impl fmt::Display for LabError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for LabError {}

impl From<io::Error> for LabError {
    fn from(e: io::Error) -> Self {
        LabError(e.to_string())
    }
}

/// The result type of lab operations.
pub type Result<T> = std::result::Result<T, LabError>;

/// A network namespace made by a [`Lab`]; cheap to clone, deleted by the lab.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ns {
    name: String,
}

impl Ns {
    /// The namespace's full name (as in `ip netns list`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A command that runs `program` inside this namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Runs a command inside the namespace and returns its stdout; a non-zero exit is an
    /// error that carries the command line and its stderr.
    pub fn run(&self, args: &[&str]) -> Result<String> {
        let (program, rest) = args.split_first().expect("a command");
        let mut c = self.command(program);
        c.args(rest);
        output_ok(c.output()?, &self.name, args)
    }

    /// Runs `ip ARGS` inside the namespace.
    pub fn ip(&self, args: &str) -> Result<String> {
        let mut c = Command::new("ip");
        c.args(["-n", &self.name]);
        c.args(args.split_whitespace());
        output_ok(c.output()?, &self.name, &["ip", args])
    }

    /// Pings `dst` from this namespace: `count` echo requests, each waited for `wait`
    /// seconds at most. Returns whether every request got its reply.
    pub fn ping(&self, dst: &str, count: u32, wait: u32) -> bool {
        let mut c = self.command("ping");
        c.args([
            "-n",
            "-q",
            "-c",
            &count.to_string(),
            "-W",
            &wait.to_string(),
        ]);
        c.args(["-i", "0.2", dst]);
        c.stdout(Stdio::null()).stderr(Stdio::null());
        c.status().map(|s| s.success()).unwrap_or(false)
    }

    /// Pings `dst` until one reply arrives or `timeout` passes; returns the time it took.
    pub fn wait_for_ping(&self, dst: &str, timeout: Duration) -> Option<Duration> {
        let start = Instant::now();
        while start.elapsed() < timeout {
            if self.ping(dst, 1, 1) {
                return Some(start.elapsed());
            }
        }
        None
    }
}

fn output_ok(out: Output, ns: &str, args: &[&str]) -> Result<String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(LabError(format!(
            "in namespace {ns}: `{}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// A process started by the lab; stopped when the lab is dropped (or earlier by
/// [`Lab::stop`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProcId(usize);

/// Everything one test made: namespaces and processes, removed on drop.
pub struct Lab {
    prefix: String,
    namespaces: Vec<Ns>,
    procs: Vec<Option<(String, Child)>>,
    /// Where the lab keeps files (logs, state directories, sockets); removed on drop.
    dir: PathBuf,
}

impl Lab {
    /// A new, empty lab. Sweeps namespaces that earlier, dead test processes left behind.
    pub fn new() -> Result<Lab> {
        sweep_stale();
        let n = NEXT_LAB.fetch_add(1, Ordering::Relaxed);
        let prefix = format!("{NS_PREFIX}{}-{n}-", std::process::id());
        let dir = std::env::temp_dir().join(prefix.trim_end_matches('-'));
        std::fs::create_dir_all(&dir)?;
        Ok(Lab {
            prefix,
            namespaces: Vec::new(),
            procs: Vec::new(),
            dir,
        })
    }

    /// The lab's scratch directory.
    pub fn dir(&self) -> &std::path::Path {
        &self.dir
    }

    /// Creates a namespace `<prefix><short>` with its loopback up.
    pub fn netns(&mut self, short: &str) -> Result<Ns> {
        let name = format!("{}{short}", self.prefix);
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        output_ok(out, "(root)", &["ip", "netns", "add", &name])?;
        let ns = Ns { name };
        self.namespaces.push(ns.clone());
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// Joins two namespaces with a veth pair named `a_if` in `a` and `b_if` in `b`,
    /// both brought up.
    pub fn veth(&self, a: &Ns, a_if: &str, b: &Ns, b_if: &str) -> Result<()> {
        a.ip(&format!(
            "link add {a_if} type veth peer name {b_if} netns {}",
            b.name()
        ))?;
        a.ip(&format!("link set {a_if} up"))?;
        b.ip(&format!("link set {b_if} up"))?;
        Ok(())
    }

    /// Starts `cmd` (already set up, e.g. with [`Ns::command`]); its stdout and stderr go
    /// to `<lab dir>/<label>.log`, which [`Lab::log`] reads back.
    pub fn spawn(&mut self, label: &str, mut cmd: Command) -> Result<ProcId> {
        let log = std::fs::File::create(self.dir.join(format!("{label}.log")))?;
        cmd.stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let child = cmd
            .spawn()
            .map_err(|e| LabError(format!("starting {label}: {e}")))?;
        self.procs.push(Some((label.to_string(), child)));
        Ok(ProcId(self.procs.len() - 1))
    }

    /// The log of a process the lab started.
    pub fn log(&self, label: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{label}.log"))).unwrap_or_default()
    }

    /// Whether a started process is still running.
    pub fn is_running(&mut self, id: ProcId) -> bool {
        match self.procs.get_mut(id.0) {
            Some(Some((_, child))) => matches!(child.try_wait(), Ok(None)),
            _ => false,
        }
    }

    /// The process id of a started process that has not been stopped (e.g. for its
    /// `/proc/PID/ns/net`).
    pub fn pid(&self, id: ProcId) -> Option<u32> {
        match self.procs.get(id.0) {
            Some(Some((_, child))) => Some(child.id()),
            _ => None,
        }
    }

    /// Sends `signal` (e.g. `libc::SIGHUP`) to a started process.
    pub fn signal(&self, id: ProcId, signal: i32) -> Result<()> {
        let Some(Some((label, child))) = self.procs.get(id.0) else {
            return Err(LabError(format!("process {id:?} is not running")));
        };
        let out = Command::new("kill")
            .args([format!("-{signal}"), child.id().to_string()])
            .output()?;
        output_ok(out, "(root)", &["kill", label])?;
        Ok(())
    }

    /// Stops a started process: SIGTERM, then SIGKILL after `grace`. Returns its exit
    /// status (None if it had to be killed).
    pub fn stop(&mut self, id: ProcId, grace: Duration) -> Option<std::process::ExitStatus> {
        let (_, mut child) = self.procs.get_mut(id.0)?.take()?;
        stop_child(&mut child, grace)
    }

    /// Kills one process with SIGKILL at once (a crash) and reaps it.
    pub fn kill(&mut self, id: ProcId) -> Option<std::process::ExitStatus> {
        let (_, mut child) = self.procs.get_mut(id.0)?.take()?;
        let _ = child.kill();
        child.wait().ok()
    }

    /// Deletes one namespace now (it is otherwise deleted on drop).
    pub fn delete_netns(&mut self, ns: &Ns) -> Result<()> {
        self.namespaces.retain(|n| n != ns);
        let out = Command::new("ip")
            .args(["netns", "del", ns.name()])
            .output()?;
        output_ok(out, "(root)", &["ip", "netns", "del", ns.name()]).map(drop)
    }
}

fn stop_child(child: &mut Child, grace: Duration) -> Option<std::process::ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        return Some(status);
    }
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .stderr(Stdio::null())
        .status();
    let start = Instant::now();
    while start.elapsed() < grace {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Drop for Lab {
    fn drop(&mut self) {
        for (_, mut child) in self.procs.drain(..).flatten() {
            stop_child(&mut child, Duration::from_secs(3));
        }
        for ns in self.namespaces.drain(..).rev() {
            let _ = Command::new("ip")
                .args(["netns", "del", ns.name()])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Deletes `weft-<pid>-...` namespaces whose test process is gone.
fn sweep_stale() {
    let Ok(entries) = std::fs::read_dir("/var/run/netns") else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(rest) = name.strip_prefix(NS_PREFIX) else {
            continue;
        };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else {
            continue;
        };
        if !std::path::Path::new(&format!("/proc/{pid}")).exists() {
            let _ = Command::new("ip")
                .args(["netns", "del", &name])
                .stderr(Stdio::null())
                .status();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn namespaces_veth_and_cleanup() {
        if !privileged("namespaces_veth_and_cleanup") {
            return;
        }
        let names;
        {
            let mut lab = Lab::new().unwrap();
            let a = lab.netns("a").unwrap();
            let b = lab.netns("b").unwrap();
            lab.veth(&a, "eth0", &b, "eth0").unwrap();
            a.ip("addr add 198.18.0.1/24 dev eth0").unwrap();
            b.ip("addr add 198.18.0.2/24 dev eth0").unwrap();
            assert!(a.ping("198.18.0.2", 1, 2), "ping across a veth pair");
            // No route out: only the lab's own subnet is reachable.
            let routes = a.ip("route show").unwrap();
            assert!(
                !routes.contains("default"),
                "unexpected default route: {routes}"
            );
            let err = a.ip("link set nosuchdev up").unwrap_err();
            assert!(
                err.0.contains("nosuchdev"),
                "error names the command: {err}"
            );
            names = vec![a.name().to_string(), b.name().to_string()];
            let mut c = a.command("sleep");
            c.arg("30");
            let sleeper = lab.spawn("sleeper", c).unwrap();
            assert!(lab.is_running(sleeper));
        }
        let listed = String::from_utf8(
            Command::new("ip")
                .args(["netns", "list"])
                .output()
                .unwrap()
                .stdout,
        )
        .unwrap();
        for n in names {
            assert!(!listed.contains(&n), "namespace {n} left behind");
        }
    }

    #[test]
    fn cleanup_happens_when_a_test_panics() {
        if !privileged("cleanup_happens_when_a_test_panics") {
            return;
        }
        let name = std::sync::Mutex::new(String::new());
        let r = std::panic::catch_unwind(|| {
            let mut lab = Lab::new().unwrap();
            let a = lab.netns("p").unwrap();
            *name.lock().unwrap() = a.name().to_string();
            panic!("a failing test");
        });
        assert!(r.is_err());
        let name = name.into_inner().unwrap();
        assert!(!name.is_empty());
        assert!(
            !std::path::Path::new(&format!("/var/run/netns/{name}")).exists(),
            "{name} left behind after a panic"
        );
    }
}
