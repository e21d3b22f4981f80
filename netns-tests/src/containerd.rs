//! A containerd per node namespace, for tests of CNI plugins under a real runtime.
//!
//! [`Containerd::start`] runs Debian's `containerd` with its own root, state, sockets
//! and config inside `<lab dir>/<label>/`, in the node's network namespace. It is entered
//! with `nsenter --net` rather than `ip netns exec`: the latter remounts `/sys`, which
//! hides the cgroup hierarchy that runc needs. Containers run from a directory
//! ([`busybox_rootfs`]: Debian's static busybox and its applet links), with
//! `ctr run --rm --cni --rootfs DIR ID CMD`: `ctr` itself runs the CNI plugins, so it runs
//! under `ip netns exec NODE` (the plugins must run in the node's namespace), and in that
//! private mount namespace the node's own CNI config and plugin directories
//! ([`Containerd::cni_conf_dir`], [`Containerd::cni_bin_dir`]) are bind-mounted over
//! `/etc/cni/net.d` and `/opt/cni/bin`, the directories `ctr` reads (plugins are also
//! found in `/usr/lib/cni`, where Debian's are), and a lab directory over `/var/lib/cni`
//! (libcni's result cache). Those directories must exist on the host as mount points;
//! [`available`] creates them empty when they are missing, and nothing is ever written
//! into them.
//!
//! Each lab's containers live in their own containerd namespace (`weft-<pid>-<n>`; CNI
//! sees `CNI_CONTAINERID=<namespace>-<id>`) with runc's state in the lab directory.
//! Dropping the [`Containerd`] (also while a failing test unwinds) kills its
//! containers, lets their `ctr` finish (which runs CNI DEL), removes the containers,
//! stops containerd and its shims, unmounts whatever is left under its directory and
//! removes the directory.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

use crate::lab::{Lab, LabError, Ns, REQUIRE_PRIVILEGED, Result, privileged};

/// Where the static busybox is (Debian's `busybox-static`).
pub const BUSYBOX: &str = "/bin/busybox";
/// The CNI config directory `ctr` reads.
pub const CTR_CNI_CONF_DIR: &str = "/etc/cni/net.d";
/// The first CNI plugin directory `ctr` searches (then `/usr/lib/cni`).
pub const CTR_CNI_BIN_DIR: &str = "/opt/cni/bin";
/// libcni's cache of results (and host-local's default data directory below it).
pub const CNI_STATE_DIR: &str = "/var/lib/cni";
/// Where the cgroup hierarchies are mounted.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// Where Debian's CNI plugins are.
pub const DEBIAN_CNI_DIR: &str = "/usr/lib/cni";

/// Whether tests can run containers here: privileged (see [`privileged`]), with
/// containerd, ctr, runc, nsenter, a static busybox and Debian's CNI plugins. Prints why
/// not (or panics under [`REQUIRE_PRIVILEGED`]). Creates the empty mount points
/// `/etc/cni/net.d`, `/opt/cni/bin` and `/var/lib/cni` when missing.
pub fn available(test: &str) -> bool {
    if !privileged(test) {
        return false;
    }
    let missing = [
        "containerd",
        "ctr",
        "runc",
        "nsenter",
        "containerd-shim-runc-v2",
    ]
    .into_iter()
    .find(|p| !in_path(p))
    .map(|p| format!("needs {p} (Debian's containerd, runc, util-linux)"))
    .or_else(|| {
        (!is_static(Path::new(BUSYBOX)))
            .then(|| format!("needs a static {BUSYBOX} (busybox-static)"))
    })
    .or_else(|| {
        (!Path::new(DEBIAN_CNI_DIR).join("host-local").is_file())
            .then(|| format!("needs {DEBIAN_CNI_DIR}/host-local (containernetworking-plugins)"))
    });
    if let Some(why) = missing {
        if std::env::var_os(REQUIRE_PRIVILEGED).is_some() {
            panic!("{test}: {why}, and {REQUIRE_PRIVILEGED} is set: this test must run here");
        }
        eprintln!("skipping {test}: {why} (scripts/test installs it)");
        return false;
    }
    for d in [CTR_CNI_CONF_DIR, CTR_CNI_BIN_DIR, CNI_STATE_DIR] {
        if let Err(e) = std::fs::create_dir_all(d) {
            panic!("{test}: cannot create the mount point {d}: {e}");
        }
    }
    true
}

fn in_path(program: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
        .unwrap_or(false)
}

/// A statically linked ELF (no `PT_INTERP`): it runs in a rootfs with no libc.
fn is_static(path: &Path) -> bool {
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    if bytes.len() < 64 || &bytes[..4] != b"\x7fELF" || bytes[4] != 2 {
        return false;
    }
    let u16_at = |o: usize| u16::from_le_bytes([bytes[o], bytes[o + 1]]) as usize;
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&bytes[o..o + 8]);
        u64::from_le_bytes(b) as usize
    };
    let (phoff, phentsize, phnum) = (u64_at(32), u16_at(54), u16_at(56));
    (0..phnum).all(|i| {
        let o = phoff + i * phentsize;
        // PT_INTERP = 3
        o + 4 <= bytes.len()
            && u32::from_le_bytes([bytes[o], bytes[o + 1], bytes[o + 2], bytes[o + 3]]) != 3
    })
}

/// Builds a rootfs in `dir`: `bin/busybox` (a copy of the static one) with a link per
/// applet, and the empty directories runc mounts over. Returns `dir`.
pub fn busybox_rootfs(dir: &Path) -> Result<PathBuf> {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin)?;
    for d in ["proc", "sys", "dev", "etc", "tmp", "run"] {
        std::fs::create_dir_all(dir.join(d))?;
    }
    std::fs::copy(BUSYBOX, bin.join("busybox"))?;
    let out = Command::new(BUSYBOX).arg("--list").output()?;
    if !out.status.success() {
        return Err(LabError(format!("{BUSYBOX} --list failed")));
    }
    for applet in String::from_utf8_lossy(&out.stdout).lines() {
        let applet = applet.trim();
        if applet.is_empty() || applet == "busybox" || applet.contains('/') {
            continue;
        }
        let link = bin.join(applet);
        if !link.exists() {
            std::os::unix::fs::symlink("busybox", link)?;
        }
    }
    std::fs::write(dir.join("etc/hosts"), "127.0.0.1 localhost\n")?;
    Ok(dir.to_path_buf())
}

/// A containerd running in a node namespace, with its containers.
pub struct Containerd {
    node: Ns,
    label: String,
    dir: PathBuf,
    socket: PathBuf,
    namespace: String,
    rootfs: PathBuf,
    daemon: Option<Child>,
    /// The directory mounted over `/etc/cni/net.d` for ctr.
    conf_dir: PathBuf,
    /// Containers started with [`Containerd::start_container`]: their `ctr run`.
    running: Vec<(String, Child)>,
}

impl Containerd {
    /// Starts containerd in `node` with everything in `<lab dir>/<label>/`; returns when
    /// it answers (or an error with its log after 20 s).
    pub fn start(lab: &Lab, node: &Ns, label: &str) -> Result<Containerd> {
        let dir = lab.dir().join(label);
        for d in ["root", "state", "net.d", "bin", "runc", "opt", "cni-cache"] {
            std::fs::create_dir_all(dir.join(d))?;
        }
        let rootfs = busybox_rootfs(&dir.join("rootfs"))?;
        let socket = dir.join("containerd.sock");
        let config = format!(
            "version = 2\nroot = \"{root}\"\nstate = \"{state}\"\n\
             disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\n\
             [grpc]\n  address = \"{sock}\"\n\n[ttrpc]\n  address = \"{sock}.ttrpc\"\n\n\
             [plugins.\"io.containerd.internal.v1.opt\"]\n  path = \"{opt}\"\n",
            root = dir.join("root").display(),
            state = dir.join("state").display(),
            sock = socket.display(),
            opt = dir.join("opt").display(),
        );
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.join("containerd.log"))?;
        let daemon = Command::new("nsenter")
            .arg(format!("--net=/var/run/netns/{}", node.name()))
            .arg("containerd")
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| LabError(format!("starting containerd: {e}")))?;
        let namespace = lab
            .dir()
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "weft-test".into());
        let mut c = Containerd {
            node: node.clone(),
            label: label.to_string(),
            conf_dir: dir.join("net.d"),
            dir,
            socket,
            namespace,
            rootfs,
            daemon: Some(daemon),
            running: Vec::new(),
        };
        let start = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = c.daemon.as_mut().map(Child::try_wait) {
                return Err(LabError(format!(
                    "containerd {label} exited ({status}):\n{}",
                    c.log()
                )));
            }
            let ok = c
                .ctr(&["version"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
            if ok {
                return Ok(c);
            }
            if start.elapsed() > Duration::from_secs(20) {
                return Err(LabError(format!(
                    "containerd {label} not answering after 20 s:\n{}",
                    c.log()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What containerd logged.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("containerd.log")).unwrap_or_default()
    }

    /// Its directory (config, root, state, sockets, rootfs, CNI directories).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The node namespace it serves.
    pub fn node(&self) -> &Ns {
        &self.node
    }

    /// The CNI config directory `ctr` sees as `/etc/cni/net.d` (by default `net.d` in
    /// its directory).
    pub fn cni_conf_dir(&self) -> PathBuf {
        self.conf_dir.clone()
    }

    /// Makes `ctr` read its CNI config from `dir` instead (e.g. the directory where an
    /// agent writes its conflist).
    pub fn set_cni_conf_dir(&mut self, dir: &Path) {
        self.conf_dir = dir.to_path_buf();
    }

    /// The plugin directory `ctr` sees as `/opt/cni/bin`.
    pub fn cni_bin_dir(&self) -> PathBuf {
        self.dir.join("bin")
    }

    /// The rootfs containers run from.
    pub fn rootfs(&self) -> &Path {
        &self.rootfs
    }

    /// The containerd namespace of this lab's containers.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// Runs this lab's containers in containerd namespace `ns` from now on (ctr's
    /// `CNI_CONTAINERID` is `<ns>-<id>`).
    pub fn set_namespace(&mut self, ns: &str) {
        self.namespace = ns.to_string();
    }

    /// The `CNI_CONTAINERID` ctr gives container `id`.
    pub fn cni_container_id(&self, id: &str) -> String {
        format!("{}-{id}", self.namespace)
    }

    /// Makes `plugin` available as `/opt/cni/bin/<name>` to this node's `ctr`.
    pub fn install_plugin(&self, name: &str, plugin: &Path) -> Result<()> {
        let link = self.cni_bin_dir().join(name);
        let _ = std::fs::remove_file(&link);
        std::os::unix::fs::symlink(plugin, link)?;
        Ok(())
    }

    /// Makes `file_name` holding `json` the only file in the node's CNI config directory.
    pub fn set_conflist(&self, file_name: &str, json: &str) -> Result<()> {
        for e in std::fs::read_dir(self.cni_conf_dir())?.flatten() {
            std::fs::remove_file(e.path())?;
        }
        std::fs::write(self.cni_conf_dir().join(file_name), json)?;
        Ok(())
    }

    /// A `ctr -a SOCKET -n NAMESPACE ARGS` in the node namespace, with the node's CNI
    /// directories mounted where ctr looks, and `/var/lib/cni` (libcni's result cache,
    /// host-local's default data directory) in the lab too.
    pub fn ctr(&self, args: &[&str]) -> Command {
        let mut c = self.node.command("sh");
        c.arg("-c")
            .arg(
                "mount --bind \"$0\" /etc/cni/net.d && mount --bind \"$1\" /opt/cni/bin && \
                 mount --bind \"$2\" /var/lib/cni && shift 2 && exec ctr \"$@\"",
            )
            .arg(self.cni_conf_dir())
            .arg(self.cni_bin_dir())
            .arg(self.dir.join("cni-cache"))
            .arg("-a")
            .arg(&self.socket)
            .arg("-n")
            .arg(&self.namespace)
            .args(args);
        c.stdin(Stdio::null());
        c
    }

    fn run_args<'a>(&'a self, runc_root: &'a str, id: &'a str, cmd: &[&'a str]) -> Vec<&'a str> {
        let mut v = vec!["run", "--rm", "--cni", "--runc-root", runc_root, "--rootfs"];
        v.push(self.rootfs.to_str().unwrap_or_default());
        v.push(id);
        v.extend_from_slice(cmd);
        v
    }

    /// Runs a container in the foreground (`ctr run --rm --cni`: CNI ADD before it
    /// starts, DEL after it exits) and returns ctr's output; killed after `timeout`.
    pub fn run(&mut self, id: &str, cmd: &[&str], timeout: Duration) -> Result<Output> {
        let runc_root = self.dir.join("runc").display().to_string();
        let args = self.run_args(&runc_root, id, cmd);
        let child = self
            .ctr(&args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let start = Instant::now();
        let mut child = child;
        loop {
            if child.try_wait()?.is_some() {
                return Ok(child.wait_with_output()?);
            }
            if start.elapsed() > timeout {
                self.kill_task(id);
                let out = child.wait_with_output()?;
                return Err(LabError(format!(
                    "container {id} still running after {timeout:?}; killed. ctr said: {}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Starts a container whose `ctr run --rm --cni` stays in the background (stopped by
    /// [`Containerd::stop_container`] or on drop); its output goes to
    /// `<dir>/<id>.log`. Returns when its task runs (so ADD has returned).
    pub fn start_container(&mut self, id: &str, cmd: &[&str], timeout: Duration) -> Result<()> {
        self.start_containers(&[id], cmd, timeout)
    }

    /// Starts several background containers at once (their ADDs run concurrently) and
    /// returns when all their tasks run; on a failure, stops the ones it started.
    pub fn start_containers(
        &mut self,
        ids: &[&str],
        cmd: &[&str],
        timeout: Duration,
    ) -> Result<()> {
        let runc_root = self.dir.join("runc").display().to_string();
        for id in ids {
            let args = self.run_args(&runc_root, id, cmd);
            let log = std::fs::File::create(self.dir.join(format!("{id}.log")))?;
            let child = self
                .ctr(&args)
                .stdout(log.try_clone()?)
                .stderr(log)
                .spawn()?;
            self.running.push((id.to_string(), child));
        }
        let start = Instant::now();
        let mut waiting: Vec<&str> = ids.to_vec();
        while !waiting.is_empty() {
            let running = self.running_tasks();
            waiting.retain(|id| !running.iter().any(|r| r == id));
            let exited = waiting.iter().copied().find(|id| {
                self.running
                    .iter_mut()
                    .find(|(i, _)| i == id)
                    .map(|(_, c)| matches!(c.try_wait(), Ok(Some(_))))
                    .unwrap_or(true)
            });
            if exited.is_some() || (!waiting.is_empty() && start.elapsed() > timeout) {
                let bad = exited.unwrap_or(waiting[0]).to_string();
                let log = self.container_log(&bad);
                for id in ids {
                    let _ = self.stop_container(id, Duration::from_secs(10));
                }
                return Err(LabError(format!(
                    "container {bad} did not start (exited: {}): {log}",
                    exited.is_some()
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(())
    }

    /// The ids of the tasks in state RUNNING.
    fn running_tasks(&self) -> Vec<String> {
        let Ok(out) = self.ctr(&["tasks", "ls"]).output() else {
            return vec![];
        };
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                let w: Vec<&str> = l.split_whitespace().collect();
                (w.len() >= 3 && w[2] == "RUNNING").then(|| w[0].to_string())
            })
            .collect()
    }

    /// Stops several background containers at once (their DELs run concurrently): kills
    /// all their tasks, then waits for each `ctr run` to finish.
    pub fn stop_containers(&mut self, ids: &[&str], timeout: Duration) -> Result<()> {
        for id in ids {
            self.kill_task(id);
        }
        let mut first_error = None;
        for id in ids {
            if let Err(e) = self.stop_container(id, timeout) {
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    /// What a background container's `ctr run` printed.
    pub fn container_log(&self, id: &str) -> String {
        std::fs::read_to_string(self.dir.join(format!("{id}.log"))).unwrap_or_default()
    }

    /// The task's status (`RUNNING`, `STOPPED`, ...), None when there is none.
    pub fn task_status(&self, id: &str) -> Option<String> {
        let out = self.ctr(&["tasks", "ls"]).output().ok()?;
        String::from_utf8_lossy(&out.stdout).lines().find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next() == Some(id)).then(|| w.nth(1).unwrap_or_default().to_string())
        })
    }

    /// Runs `cmd` inside a running container (no `PATH` there: `/bin/...`); its stdout, or
    /// an error with stderr.
    pub fn exec(&self, id: &str, cmd: &[&str]) -> Result<String> {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let exec_id = format!(
            "x{}",
            NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        );
        let mut args = vec!["tasks", "exec", "--exec-id", &exec_id, id];
        args.extend_from_slice(cmd);
        let out = self.ctr(&args).output()?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(LabError(format!(
                "in container {id}: `{}` failed ({}): {}{}",
                cmd.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stdout).trim(),
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    fn kill_task(&self, id: &str) {
        let _ = self
            .ctr(&["tasks", "kill", "-s", "SIGKILL", id])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }

    /// Kills a background container's task and waits (up to `timeout`) for its `ctr run`
    /// to finish, which runs CNI DEL and removes the container. Returns ctr's status.
    pub fn stop_container(&mut self, id: &str, timeout: Duration) -> Result<ExitStatus> {
        let Some(pos) = self.running.iter().position(|(i, _)| i == id) else {
            return Err(LabError(format!("container {id} was not started here")));
        };
        let (_, mut child) = self.running.remove(pos);
        let start = Instant::now();
        loop {
            if let Some(s) = child.try_wait()? {
                return Ok(s);
            }
            self.kill_task(id);
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return Err(LabError(format!(
                    "ctr run of {id} did not finish {timeout:?} after its task was killed: {}",
                    self.container_log(id)
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The containers containerd still knows in this lab's namespace.
    pub fn containers(&self) -> Vec<String> {
        self.ctr(&["containers", "ls", "-q"])
            .output()
            .map(|o| {
                String::from_utf8_lossy(&o.stdout)
                    .lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Mount points under this containerd's directory (left-over rootfs mounts).
    pub fn mounts(&self) -> Vec<String> {
        mounts_under(&self.dir)
    }

    /// The label it was started with.
    pub fn label(&self) -> &str {
        &self.label
    }
}

/// Mount points at or under `dir`, deepest last as the kernel lists them.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let prefix = dir.display().to_string();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4))
        .filter(|m| *m == prefix || m.starts_with(&format!("{prefix}/")))
        .map(String::from)
        .collect()
}

/// The pids of processes whose command line contains `needle` (the shims of one
/// containerd carry its socket's path in `-address`).
fn pids_with_arg(needle: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return vec![];
    };
    rd.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| {
                    c.split(|b| *b == 0)
                        .any(|a| String::from_utf8_lossy(a).contains(needle))
                })
                .unwrap_or(false)
        })
        .filter(|pid| *pid != std::process::id())
        .collect()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        let ids: Vec<String> = self.running.iter().map(|(i, _)| i.clone()).collect();
        for id in ids {
            let _ = self.stop_container(&id, Duration::from_secs(10));
        }
        for id in self.containers() {
            self.kill_task(&id);
            let _ = self
                .ctr(&["tasks", "delete", "--force", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
            let _ = self
                .ctr(&["containers", "delete", &id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
        if let Some(mut d) = self.daemon.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &d.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let start = Instant::now();
            while start.elapsed() < Duration::from_secs(5) {
                if matches!(d.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = d.kill();
            let _ = d.wait();
        }
        // Shims outlive containerd by design; these belong to this one only.
        for pid in pids_with_arg(&self.socket.display().to_string()) {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .stderr(Stdio::null())
                .status();
        }
        for m in self.mounts().into_iter().rev() {
            let _ = Command::new("umount")
                .args(["-l", &m])
                .stderr(Stdio::null())
                .status();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        remove_cgroups(&self.namespace);
    }
}

/// The cgroup directories runc made for containerd namespace `namespace`
/// (`<hierarchy>/<namespace>[/<container>]`, under `/sys/fs/cgroup` itself with cgroup
/// v2 and under each controller's hierarchy with v1).
pub fn cgroups_of(namespace: &str) -> Vec<PathBuf> {
    let root = Path::new(CGROUP_ROOT);
    let mut hierarchies = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        hierarchies.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
    }
    let mut found = Vec::new();
    for h in hierarchies {
        let d = h.join(namespace);
        if !d.is_dir() {
            continue;
        }
        if let Ok(rd) = std::fs::read_dir(&d) {
            found.extend(rd.flatten().map(|e| e.path()).filter(|p| p.is_dir()));
        }
        found.push(d);
    }
    found
}

/// Removes the (empty: no process left) cgroups of containerd namespace `namespace`,
/// containers' first. One still in use (another node's containerd of the same lab) stays.
fn remove_cgroups(namespace: &str) {
    for d in cgroups_of(namespace) {
        let _ = std::fs::remove_dir(d);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BRIDGE: &str = r#"{"cniVersion":"1.0.0","name":"selftest","plugins":[
        {"type":"bridge","bridge":"cni0","isGateway":true,
         "ipam":{"type":"host-local","ranges":[[{"subnet":"198.19.200.0/24"}]],"dataDir":"DATADIR"}}]}"#;

    fn reservations(dir: &Path) -> Vec<String> {
        std::fs::read_dir(dir.join("selftest"))
            .map(|rd| {
                rd.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    #[test]
    fn containerd_runs_a_busybox_container_with_bridge_cni_and_cleans_up() {
        if !available("containerd_runs_a_busybox_container_with_bridge_cni_and_cleans_up") {
            return;
        }
        let mut lab = Lab::new().unwrap();
        let node = lab.netns("n1").unwrap();
        let ipam = lab.dir().join("ipam");
        let (dir, socket, namespace);
        {
            let mut ctd = Containerd::start(&lab, &node, "ctd1").unwrap();
            dir = ctd.dir().to_path_buf();
            socket = ctd.socket.display().to_string();
            namespace = ctd.namespace().to_string();
            ctd.set_conflist(
                "10-selftest.conflist",
                &BRIDGE.replace("DATADIR", &ipam.display().to_string()),
            )
            .unwrap();
            let out = ctd
                .run(
                    "c1",
                    &[
                        "/bin/sh",
                        "-c",
                        "ip -4 -o addr show dev eth0; ping -c 1 -W 2 198.19.200.1",
                    ],
                    Duration::from_secs(30),
                )
                .unwrap();
            let text = String::from_utf8_lossy(&out.stdout);
            assert!(
                out.status.success(),
                "{text}{}",
                String::from_utf8_lossy(&out.stderr)
            );
            assert!(text.contains("inet 198.19.200.2/24"), "its address: {text}");
            assert!(
                text.contains("1 packets received"),
                "it reached its gateway: {text}"
            );
            // ctr ran DEL when the task exited: the address is released.
            assert!(reservations(&ipam).is_empty(), "{:?}", reservations(&ipam));
            assert!(ctd.containers().is_empty(), "--rm removed it");

            // A background container, exec into it, and DEL when it is killed.
            ctd.start_container("c2", &["/bin/sleep", "60"], Duration::from_secs(30))
                .unwrap();
            assert_eq!(reservations(&ipam).len(), 1);
            let addr = ctd
                .exec(
                    "c2",
                    &["/bin/ip", "-4", "-o", "addr", "show", "dev", "eth0"],
                )
                .unwrap();
            assert!(addr.contains("198.19.200."), "{addr}");
            ctd.stop_container("c2", Duration::from_secs(20)).unwrap();
            assert!(reservations(&ipam).is_empty(), "DEL after kill released it");
            // One left running for the drop to clean up.
            ctd.start_container("c3", &["/bin/sleep", "60"], Duration::from_secs(30))
                .unwrap();
            assert!(
                !pids_with_arg(&socket).is_empty(),
                "containerd and its shim run"
            );
        }
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(mounts_under(&dir).is_empty(), "{:?}", mounts_under(&dir));
        assert!(
            pids_with_arg(&socket).is_empty(),
            "processes of containerd left behind"
        );
        assert!(
            reservations(&ipam).is_empty(),
            "the dropped container's address was released"
        );
        assert!(
            cgroups_of(&namespace).is_empty(),
            "cgroups left behind: {:?}",
            cgroups_of(&namespace)
        );
    }

    #[test]
    fn containerd_is_stopped_and_removed_when_a_test_panics() {
        if !available("containerd_is_stopped_and_removed_when_a_test_panics") {
            return;
        }
        let seen = std::sync::Mutex::new(None);
        let r = std::panic::catch_unwind(|| {
            let mut lab = Lab::new().unwrap();
            let node = lab.netns("n1").unwrap();
            let mut ctd = Containerd::start(&lab, &node, "ctd1").unwrap();
            let ipam = lab.dir().join("ipam").display().to_string();
            ctd.set_conflist("10-selftest.conflist", &BRIDGE.replace("DATADIR", &ipam))
                .unwrap();
            ctd.start_container("c1", &["/bin/sleep", "60"], Duration::from_secs(30))
                .unwrap();
            *seen.lock().unwrap() =
                Some((ctd.dir().to_path_buf(), ctd.socket.display().to_string()));
            panic!("a failing test");
        });
        assert!(r.is_err());
        let (dir, socket) = seen.into_inner().unwrap().expect("the container started");
        assert!(!dir.exists(), "{} left behind", dir.display());
        assert!(mounts_under(&dir).is_empty());
        assert!(
            pids_with_arg(&socket).is_empty(),
            "processes of containerd left behind"
        );
    }
}
