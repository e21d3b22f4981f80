//! The control socket: `weftd`'s side of the [control protocol](weft_proto).
//!
//! # What it is
//!
//! A Unix stream socket (default `/run/weft/weftd.sock`) that `weftctl` and scripts talk
//! to, one JSON request per line, one JSON response per line. [`ControlServer::start`]
//! creates the directory if it is missing, removes a stale socket file (but refuses to
//! steal the socket of a `weftd` that still answers), binds, and sets the mode: `0600`,
//! or `0660` and the configured group's ownership when a control group is set.
//!
//! # Who may talk
//!
//! Each connection's peer is checked with `SO_PEERCRED` ([`peer_allowed`]): root, the
//! socket's owner (the user `weftd` runs as), or, with a control group, a member of it
//! (primary or supplementary). Anyone else gets one error line and is disconnected.
//!
//! # Threads, limits and why nothing can block the datapath
//!
//! One accept thread, and one thread per client up to [`ControlOptions::max_clients`]
//! (a client beyond that gets an error line and is closed). A client is always under
//! one deadline while it reads: its `hello` within [`ControlOptions::line_timeout`] of
//! connecting, a started line within `line_timeout` of its first byte, the next request
//! within [`ControlOptions::idle_timeout`] (blank lines do not count). A read never
//! waits past the deadline and the deadline is checked after every read, so a client
//! that trickles bytes cannot stretch it; a client past it is dropped with one log line
//! saying why, which frees its slot. It also notices shutdown within a short tick.
//! Responses go out through a buffer of at most [`REPLY_CHUNK`] bytes; a client that
//! keeps one response waiting for [`ControlOptions::write_timeout`] in all (it does not
//! read) is dropped rather than holding a thread. `dump_flows` is written out as the
//! flows are rebuilt from the pipeline snapshot ([`Pipeline::dump_each`]), so a dump
//! of any size costs a client at most that buffer (and a reference per flow), not a
//! copy of the table and its JSON. A line longer than [`MAX_LINE`] gets an error and
//! the connection is closed. A request is only acted on once its whole line has arrived
//! and [`parse_request`] has checked all of it, so a slow client holds no lock while
//! it dribbles bytes. Changes are serialised by one mutex here (so `replace_flows`
//! computes its diff and applies it with no other control change in between) and by
//! the switch's own lock; the datapath never takes either: workers only load the
//! published pipeline and port snapshots.
//!
//! # Replace-flows
//!
//! The wanted flows are first installed into a scratch pipeline with the switch's port
//! map (which validates them like an add-flows bundle, errors naming their line, and
//! gives them the exact form the switch dumps: ports as numbers, `mod_*` as
//! `set_field`), then [`replace_diff`] compares that with the installed flows, and the
//! difference is applied as one bundle. Unchanged flows are not touched, so they keep
//! their counters and their age.

use std::collections::HashMap;
use std::io::{self, ErrorKind, Read, Write};
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use weft_flow::{Action, Bundle, Flow, FlowFilter, FlowMod, Masked, PortRef};
use weft_proto::{
    self as proto, AddPortReply, BundleReply, DumpFlowsReply, Empty, ErrorBody, FdbEntry, FdbReply,
    FlowStats, HelloReply, MAX_LINE, Op, PortCounters, PortInfo, PortsReply, Request, Response,
    ShowReply, StatsReply, TableCounters, TraceReply, TraceStep as WireStep, replace_diff,
};

use weft_datapath::{PortState, Switch, SwitchError};
use weft_pipeline::{DpAction, Forward, MacTable, Pipeline, TraceStep};

/// How the control socket is set up.
#[derive(Clone, Debug)]
pub struct ControlOptions {
    /// The socket's path.
    pub path: PathBuf,
    /// A group whose members may also use the socket (mode 0660 instead of 0600).
    pub group: Option<String>,
    /// Clients served at once; more are refused.
    pub max_clients: usize,
    /// A connection with no request (blank lines are none) for this long is closed.
    pub idle_timeout: Duration,
    /// A request line that has started must be complete within this long of its first
    /// byte; the `hello` must be answered within this long of connecting.
    pub line_timeout: Duration,
    /// A client that keeps one response waiting (does not read it) for this long in all
    /// is dropped.
    pub write_timeout: Duration,
    /// The most changes (flows) one bundle may hold, whether sent in one request or in
    /// parts (`max_bundle_flows`).
    pub max_bundle_flows: usize,
    /// A bundle sent in parts that is not committed (or discarded) within this long of
    /// its `bundle_open` is discarded (`bundle_timeout`), whether or not its connection
    /// is still there: a client that stalls in the middle of a bundle holds its memory
    /// only this long, not for the connection's `idle_timeout`.
    pub bundle_timeout: Duration,
}

/// The default of [`ControlOptions::bundle_timeout`]: a million-flow file streams in a
/// few seconds, so a minute is a stalled client.
pub const DEFAULT_BUNDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How many discarded bundles' numbers a connection remembers, to say why a late
/// `bundle_add` or `bundle_commit` of one finds nothing.
const EXPIRED_REMEMBERED: usize = 8;

/// The default of [`ControlOptions::max_bundle_flows`]: room for an Antrea-scale
/// node's million flows twice.
pub const DEFAULT_MAX_BUNDLE_FLOWS: usize = 2_000_000;

/// How many bundles one connection may have open at once.
pub const MAX_OPEN_BUNDLES: usize = 8;

impl ControlOptions {
    /// Defaults for `path`: no group, 64 clients, 10 minutes idle, 30 s per line, 10 s
    /// per response, bundles of at most [`DEFAULT_MAX_BUNDLE_FLOWS`] changes committed
    /// within [`DEFAULT_BUNDLE_TIMEOUT`].
    pub fn new(path: impl Into<PathBuf>) -> ControlOptions {
        ControlOptions {
            path: path.into(),
            group: None,
            max_clients: 64,
            idle_timeout: Duration::from_secs(600),
            line_timeout: Duration::from_secs(30),
            write_timeout: Duration::from_secs(10),
            max_bundle_flows: DEFAULT_MAX_BUNDLE_FLOWS,
            bundle_timeout: DEFAULT_BUNDLE_TIMEOUT,
        }
    }
}

/// Why the control socket could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    /// A filesystem or socket call failed.
    #[error("control socket {}: {what}: {error}", .path.display())]
    Io {
        /// The socket's path.
        path: PathBuf,
        /// What was being done.
        what: &'static str,
        /// What the system said.
        error: io::Error,
    },
    /// Another process answers on the socket.
    #[error("control socket {}: another weftd is listening there", .0.display())]
    InUse(PathBuf),
    /// The path exists and is not a socket.
    #[error("control socket {}: the path exists and is not a socket", .0.display())]
    NotASocket(PathBuf),
    /// The control group does not exist.
    #[error("control group '{0}' does not exist")]
    NoSuchGroup(String),
}

/// The decision of the `SO_PEERCRED` check: may a peer with user `uid` in groups
/// `groups` (primary first, then supplementary) use a socket owned by `owner`, with
/// control group `group`? Root and the owner always may; with a group, its members may.
pub fn peer_allowed(uid: u32, groups: &[u32], owner: u32, group: Option<u32>) -> bool {
    uid == 0 || uid == owner || group.is_some_and(|g| groups.contains(&g))
}

/// The peer's user, and its groups (primary, then supplementary when a group check
/// needs them).
fn peer_identity(stream: &UnixStream, need_groups: Option<u32>) -> io::Result<(u32, Vec<u32>)> {
    use nix::sys::socket::{getsockopt, sockopt::PeerCredentials};
    let cred = getsockopt(stream, PeerCredentials).map_err(io::Error::from)?;
    let (uid, gid) = (cred.uid(), cred.gid());
    let mut groups = vec![gid];
    if let Some(g) = need_groups
        && gid != g
        && let Ok(Some(user)) = nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
        && let Ok(name) = std::ffi::CString::new(user.name)
        && let Ok(list) = nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(gid))
    {
        groups.extend(list.into_iter().map(|g| g.as_raw()));
    }
    Ok((uid, groups))
}

/// State shared by the accept thread and the client threads.
struct Shared {
    switch: Arc<Switch>,
    opts: ControlOptions,
    owner: u32,
    group: Option<u32>,
    stop: AtomicBool,
    active: AtomicUsize,
    /// One control change at a time (replace-flows reads, diffs, then applies).
    changes: Mutex<()>,
    /// Clones of the client streams, to shut them down at stop.
    clients: Mutex<HashMap<u64, UnixStream>>,
    next_client: AtomicU64,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

/// The running control socket. [`ControlServer::stop`] (or drop) closes it.
pub struct ControlServer {
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for ControlServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ControlServer")
            .field("path", &self.shared.opts.path)
            .finish()
    }
}

fn io_err(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> ControlError + use<> {
    let path = path.to_path_buf();
    move |error| ControlError::Io { path, what, error }
}

/// Binds the socket at `path`: parent directory, stale file, mode and group.
fn bind(path: &Path, group: Option<u32>) -> Result<UnixListener, ControlError> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir).map_err(io_err(path, "creating its directory"))?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            if UnixStream::connect(path).is_ok() {
                return Err(ControlError::InUse(path.to_path_buf()));
            }
            std::fs::remove_file(path).map_err(io_err(path, "removing the stale socket"))?;
        }
        Ok(_) => return Err(ControlError::NotASocket(path.to_path_buf())),
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => return Err(io_err(path, "checking the path")(e)),
    }
    let listener = UnixListener::bind(path).map_err(io_err(path, "bind"))?;
    let mode = if group.is_some() { 0o660 } else { 0o600 };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(io_err(path, "chmod"))?;
    if let Some(g) = group {
        std::os::unix::fs::chown(path, None, Some(g)).map_err(io_err(path, "chown"))?;
    }
    Ok(listener)
}

impl ControlServer {
    /// Binds the socket and starts serving `switch`.
    pub fn start(opts: ControlOptions, switch: Arc<Switch>) -> Result<ControlServer, ControlError> {
        let group = match &opts.group {
            None => None,
            Some(name) => Some(
                nix::unistd::Group::from_name(name)
                    .ok()
                    .flatten()
                    .ok_or_else(|| ControlError::NoSuchGroup(name.clone()))?
                    .gid
                    .as_raw(),
            ),
        };
        let listener = bind(&opts.path, group)?;
        let shared = Arc::new(Shared {
            switch,
            owner: nix::unistd::geteuid().as_raw(),
            group,
            opts,
            stop: AtomicBool::new(false),
            active: AtomicUsize::new(0),
            changes: Mutex::new(()),
            clients: Mutex::new(HashMap::new()),
            next_client: AtomicU64::new(1),
            threads: Mutex::new(Vec::new()),
        });
        let s = Arc::clone(&shared);
        let accept = std::thread::Builder::new()
            .name("weft-control".into())
            .spawn(move || accept_loop(&s, listener))
            .map_err(io_err(&shared.opts.path, "starting the accept thread"))?;
        tracing::info!(path = %shared.opts.path.display(), group = ?shared.opts.group, "control socket listening");
        Ok(ControlServer {
            shared,
            accept: Some(accept),
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.shared.opts.path
    }

    /// Stops accepting, disconnects every client, waits for their threads and removes
    /// the socket file.
    pub fn stop(mut self) {
        self.shutdown();
    }

    fn shutdown(&mut self) {
        let Some(accept) = self.accept.take() else {
            return;
        };
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = accept.join();
        for (_, c) in lock(&self.shared.clients).drain() {
            let _ = c.shutdown(std::net::Shutdown::Both);
        }
        let threads: Vec<_> = lock(&self.shared.threads).drain(..).collect();
        for t in threads {
            let _ = t.join();
        }
        let _ = std::fs::remove_file(&self.shared.opts.path);
        tracing::info!("control socket closed");
    }
}

impl Drop for ControlServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// How many bytes of a response are gathered before they are written: the most output
/// a client has waiting in `weftd` (beyond the socket's own buffer) for a dump, however
/// many flows it asked for (a dump is written as it is made). Other replies are bounded
/// by the switch's own limits (ports, the MAC table's capacity) and are written from
/// the one line they are built as.
pub const REPLY_CHUNK: usize = 64 * 1024;

/// The writing side of a client connection: gathers at most [`REPLY_CHUNK`] bytes, then
/// writes them; a client that keeps one response waiting (does not read it) for
/// `budget` in all is given up on.
struct Out {
    stream: UnixStream,
    buf: Vec<u8>,
    budget: Duration,
    /// Time left of `budget` for the response being written.
    left: Duration,
}

/// Why writing a response failed.
#[derive(Debug)]
enum OutError {
    /// The client did not take the response within the budget.
    TooSlow(Duration),
    /// The connection failed (the client went away).
    Io(io::Error),
}

impl std::fmt::Display for OutError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            OutError::TooSlow(t) => {
                write!(f, "it did not read its response within {} s", secs(*t))
            }
            OutError::Io(e) => write!(f, "writing its response failed: {e}"),
        }
    }
}

impl Out {
    fn new(stream: UnixStream, budget: Duration) -> Out {
        Out {
            stream,
            buf: Vec::with_capacity(REPLY_CHUNK),
            budget,
            left: budget,
        }
    }

    /// Starts a response: it gets the whole budget.
    fn begin(&mut self) {
        self.buf.clear();
        self.left = self.budget;
    }

    /// Starts the next line of a streamed response: the budget starts again, and what
    /// is gathered stays.
    fn begin_part(&mut self) {
        self.left = self.budget;
    }

    /// Adds `bytes` to the response; what is gathered is written once it reaches
    /// [`REPLY_CHUNK`] (a larger piece is written as it is, never copied).
    fn put(&mut self, bytes: &[u8]) -> Result<(), OutError> {
        if self.buf.len() + bytes.len() < REPLY_CHUNK {
            self.buf.extend_from_slice(bytes);
            return Ok(());
        }
        self.flush()?;
        if bytes.len() < REPLY_CHUNK {
            self.buf.extend_from_slice(bytes);
            Ok(())
        } else {
            self.write(bytes)
        }
    }

    /// Writes what is gathered.
    fn flush(&mut self) -> Result<(), OutError> {
        let buf = std::mem::take(&mut self.buf);
        let r = self.write(&buf);
        self.buf = buf;
        self.buf.clear();
        r
    }

    /// Writes `bytes`; time spent waiting for the client counts against the budget.
    fn write(&mut self, bytes: &[u8]) -> Result<(), OutError> {
        let mut at = 0;
        while at < bytes.len() {
            if self.left.is_zero() {
                return Err(OutError::TooSlow(self.budget));
            }
            // SO_SNDTIMEO: at most what is left (a zero timeout would mean none).
            let _ = self
                .stream
                .set_write_timeout(Some(self.left.max(Duration::from_millis(1))));
            let t = Instant::now();
            let r = self.stream.write(&bytes[at..]);
            self.left = self.left.saturating_sub(t.elapsed());
            match r {
                Ok(0) => return Err(OutError::Io(ErrorKind::WriteZero.into())),
                Ok(n) => at += n,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    self.left = Duration::ZERO;
                }
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(e) => return Err(OutError::Io(e)),
            }
        }
        Ok(())
    }

    /// Writes one whole response line.
    fn line(&mut self, resp: &Response) -> Result<(), OutError> {
        self.begin();
        self.put(resp.to_line().as_bytes())?;
        self.put(b"\n")?;
        self.flush()
    }
}

/// Writes one response line within `budget`; false when the client is gone or too slow.
fn send(stream: &UnixStream, budget: Duration, resp: &Response) -> bool {
    match stream.try_clone() {
        Ok(s) => Out::new(s, budget).line(resp).is_ok(),
        Err(_) => false,
    }
}

/// Refused connections whose close is lingering (see [`refuse`]).
static LINGERING: AtomicUsize = AtomicUsize::new(0);
/// At most this many refused connections linger at once; past it they are closed at once.
const MAX_LINGERING: usize = 8;
/// How long a refused connection lingers for the client's request to arrive.
const LINGER: Duration = Duration::from_millis(200);

/// Answers a refused client with one error line and closes the connection.
///
/// The close lingers: the server stops writing, then reads (and discards) what the
/// client sends for up to [`LINGER`], off the accept thread. Closing at once would
/// reset a client whose request was still on its way (it then sees `Broken pipe`
/// instead of the reason). Lingering is bounded by [`MAX_LINGERING`].
fn refuse(stream: UnixStream, message: &str) {
    if !send(
        &stream,
        Duration::from_secs(1),
        &Response::error(None, ErrorBody::new(message)),
    ) {
        return;
    }
    if LINGERING.fetch_add(1, Ordering::SeqCst) >= MAX_LINGERING {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("weft-ctl-refused".into())
        .spawn(move || {
            linger(stream);
            LINGERING.fetch_sub(1, Ordering::SeqCst);
        });
    if spawned.is_err() {
        LINGERING.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Half-closes `stream` and discards what arrives until EOF, [`LINGER`] or 64 KiB.
fn linger(mut stream: UnixStream) {
    let _ = stream.shutdown(std::net::Shutdown::Write);
    let until = Instant::now() + LINGER;
    let mut buf = [0u8; 4096];
    let mut left = 64 * 1024usize;
    while left > 0 {
        let now = Instant::now();
        if now >= until || stream.set_read_timeout(Some(until - now)).is_err() {
            break;
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => left = left.saturating_sub(n),
        }
    }
}

/// How often the accept thread checks for stop when nobody connects. It waits in
/// poll(2) on the listener, so a client that connects is accepted at once (sleeping
/// instead cost every weftctl command up to this long before its first byte).
const ACCEPT_TICK: Duration = Duration::from_millis(50);

/// Waits until `listener` has a connection to accept, or [`ACCEPT_TICK`] passed.
fn wait_for_client(listener: &UnixListener) {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    use std::os::fd::AsFd;
    let mut fds = [PollFd::new(listener.as_fd(), PollFlags::POLLIN)];
    let tick = PollTimeout::from(ACCEPT_TICK.as_millis() as u16);
    if poll(&mut fds, tick).is_err() {
        // EINTR or a broken listener: don't spin.
        std::thread::sleep(ACCEPT_TICK);
    }
}

fn accept_loop(s: &Arc<Shared>, listener: UnixListener) {
    // Non-blocking, so that stop never depends on being able to connect to the path
    // (someone may have removed the file).
    if let Err(e) = listener.set_nonblocking(true) {
        tracing::warn!("control socket: cannot make the listener non-blocking: {e}");
    }
    while !s.stop.load(Ordering::SeqCst) {
        let stream = match listener.accept() {
            Ok((c, _)) => c,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {
                wait_for_client(&listener);
                continue;
            }
            Err(e) => {
                tracing::warn!("control socket: accept: {e}");
                std::thread::sleep(ACCEPT_TICK);
                continue;
            }
        };
        if s.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Err(e) = stream.set_nonblocking(false) {
            tracing::warn!("control socket: {e}");
            continue;
        }
        match peer_identity(&stream, s.group) {
            Ok((uid, groups)) if peer_allowed(uid, &groups, s.owner, s.group) => {}
            Ok((uid, _)) => {
                tracing::warn!(uid, "control socket: peer refused");
                refuse(
                    stream,
                    "permission denied: only root, the owner of weftd or the control group may use this socket",
                );
                continue;
            }
            Err(e) => {
                tracing::warn!("control socket: cannot read the peer's credentials: {e}");
                refuse(
                    stream,
                    "permission denied: cannot read the peer's credentials",
                );
                continue;
            }
        }
        if s.active.load(Ordering::SeqCst) >= s.opts.max_clients {
            refuse(stream, "too many clients; try again later");
            continue;
        }
        let id = s.next_client.fetch_add(1, Ordering::Relaxed);
        if let Ok(c) = stream.try_clone() {
            lock(&s.clients).insert(id, c);
        }
        s.active.fetch_add(1, Ordering::SeqCst);
        let sc = Arc::clone(s);
        let spawned = std::thread::Builder::new()
            .name(format!("weft-control-{id}"))
            .spawn(move || {
                let Ok(out) = stream.try_clone() else {
                    tracing::warn!(client = id, "control socket: cannot clone the stream");
                    lock(&sc.clients).remove(&id);
                    sc.active.fetch_sub(1, Ordering::SeqCst);
                    return;
                };
                let mut conn = Connection {
                    s: &sc,
                    id,
                    stream,
                    out: Out::new(out, sc.opts.write_timeout),
                    greeted: false,
                    closing: false,
                    bundles: HashMap::new(),
                    next_bundle: 1,
                    expired: Vec::new(),
                    trim: false,
                };
                conn.serve();
                lock(&sc.clients).remove(&id);
                sc.active.fetch_sub(1, Ordering::SeqCst);
            });
        match spawned {
            Ok(t) => {
                let mut threads = lock(&s.threads);
                threads.retain(|t| !t.is_finished());
                threads.push(t);
            }
            Err(e) => {
                tracing::warn!("control socket: cannot start a client thread: {e}");
                lock(&s.clients).remove(&id);
                s.active.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }
}

/// A bundle or dump of at least this many flows hands its freed memory back to the
/// kernel when answered (see `weft_datapath::mem`).
const TRIM_AFTER_FLOWS: usize = 10_000;

/// How often a client thread wakes to check for stop and timeouts.
const TICK: Duration = Duration::from_millis(200);

struct Connection<'a> {
    s: &'a Shared,
    /// The client's number (in log lines).
    id: u64,
    stream: UnixStream,
    /// Where responses are written (a clone of `stream`).
    out: Out,
    greeted: bool,
    /// Set when the connection must end after the current response.
    closing: bool,
    /// Bundles opened on this connection and not yet committed or discarded; they end
    /// with it.
    bundles: HashMap<u64, Pending>,
    next_bundle: u64,
    /// Bundles discarded by `bundle_timeout` (the last few), for a clear error.
    expired: Vec<u64>,
    /// Set by a request that built and freed many temporaries (a large bundle or
    /// dump): the freed memory is handed back to the kernel once it is answered.
    trim: bool,
}

/// A bundle being sent in parts: what its parts held so far (each checked as it came).
#[derive(Debug)]
struct Pending {
    /// When `bundle_open` opened it (`bundle_timeout` runs from here).
    opened: Instant,
    /// A replace-flows bundle (its changes are the wanted flows, all adds).
    replace: bool,
    /// A replace restricted to the flows whose cookie matches.
    cookie: Option<Masked<u64>>,
    changes: Vec<FlowMod>,
    lines: Vec<usize>,
    /// The texts the parts came as (those sent as text), kept for the journal, which
    /// writes a flow added as sent as its own line.
    texts: Vec<String>,
    /// For each change: the part text (index into `texts`) and byte range its line
    /// is; [`NO_TEXT`] for a change sent as JSON.
    spans: Vec<(u32, u32, u32)>,
}

/// A change without text in [`Pending::spans`].
const NO_TEXT: (u32, u32, u32) = (u32::MAX, 0, 0);

impl Pending {
    /// Notes where the `n` changes of a part about to be added came from.
    fn note_text(&mut self, n: usize, part: Option<proto::PartText>) {
        match part {
            // Byte offsets fit: a part is one request line of at most MAX_LINE bytes.
            Some(t) if t.spans.len() == n && u32::try_from(self.texts.len()).is_ok() => {
                let at = self.texts.len() as u32;
                self.spans
                    .extend(t.spans.iter().map(|r| (at, r.start as u32, r.end as u32)));
                self.texts.push(t.text);
            }
            _ => self.spans.extend(std::iter::repeat_n(NO_TEXT, n)),
        }
    }
}

/// A duration in seconds for a message: `30`, or `0.5` when not whole.
fn secs(d: Duration) -> String {
    if d.subsec_nanos() == 0 {
        d.as_secs().to_string()
    } else {
        format!("{:.1}", d.as_secs_f64())
    }
}

/// The one deadline a connection is under while it reads.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Wait {
    /// Before `hello` has been answered: from the connection's start.
    Hello,
    /// A request line has started: from its first byte.
    Line,
    /// Between requests: from the end of the last one.
    Idle,
}

impl Connection<'_> {
    /// Discards the bundles whose `bundle_timeout` has passed at `now`, each with one
    /// log line.
    fn expire_bundles(&mut self, now: Instant) {
        let timeout = self.s.opts.bundle_timeout;
        if self.bundles.is_empty() {
            return;
        }
        let mut late: Vec<u64> = self
            .bundles
            .iter()
            .filter(|(_, p)| now.duration_since(p.opened) >= timeout)
            .map(|(n, _)| *n)
            .collect();
        late.sort_unstable();
        let mut trim = false;
        for n in late {
            if let Some(p) = self.bundles.remove(&n) {
                tracing::warn!(
                    client = self.id,
                    "control: bundle {n} discarded ({} changes): not committed within {} s of its bundle_open (bundle_timeout)",
                    p.changes.len(),
                    secs(timeout)
                );
                if self.expired.len() == EXPIRED_REMEMBERED {
                    self.expired.remove(0);
                }
                self.expired.push(n);
                trim |= p.changes.len() >= TRIM_AFTER_FLOWS;
            }
        }
        if trim {
            weft_datapath::mem::release_free_memory();
        }
    }

    /// Drops the client, with one log line saying why, and an error line to it when
    /// `tell`.
    fn drop_client(&mut self, why: &str, tell: bool) {
        tracing::warn!(client = self.id, "control client dropped: {why}");
        if tell {
            let resp = Response::error(None, ErrorBody::new(format!("{why}; closing")));
            let _ = self.out.line(&resp);
        }
    }

    fn serve(&mut self) {
        let mut buf: Vec<u8> = Vec::new();
        let mut chunk = vec![0u8; 64 * 1024];
        let mut scanned = 0;
        let connected = Instant::now();
        let mut last_request = connected;
        let mut line_started: Option<Instant> = None;
        let opts = &self.s.opts;
        loop {
            if self.s.stop.load(Ordering::SeqCst) {
                return;
            }
            // The deadline holds however the bytes trickle in: it is measured from the
            // start of the wait, checked after every read, and no read waits past it.
            let (wait, deadline) = if !self.greeted {
                (Wait::Hello, connected + opts.line_timeout)
            } else if let Some(t) = line_started {
                (Wait::Line, t + opts.line_timeout)
            } else {
                (Wait::Idle, last_request + opts.idle_timeout)
            };
            let now = Instant::now();
            self.expire_bundles(now);
            if now >= deadline {
                match wait {
                    Wait::Hello => self.drop_client(
                        &format!(
                            "no hello within {} s of connecting",
                            secs(opts.line_timeout)
                        ),
                        true,
                    ),
                    Wait::Line => self.drop_client(
                        &format!(
                            "request line not finished within {} s",
                            secs(opts.line_timeout)
                        ),
                        true,
                    ),
                    Wait::Idle => tracing::info!(
                        client = self.id,
                        "control client dropped: no request for {} s",
                        secs(opts.idle_timeout)
                    ),
                }
                return;
            }
            let wake = (deadline - now).clamp(Duration::from_millis(1), TICK);
            let _ = self.stream.set_read_timeout(Some(wake));
            match self.stream.read(&mut chunk) {
                Ok(0) => return,
                Ok(n) => {
                    buf.extend_from_slice(&chunk[..n]);
                    // Whitespace alone starts no request.
                    if line_started.is_none() && !chunk[..n].iter().all(u8::is_ascii_whitespace) {
                        line_started = Some(Instant::now());
                    }
                    while let Some(pos) = buf[scanned..].iter().position(|b| *b == b'\n') {
                        let end = scanned + pos;
                        let line = &buf[..end];
                        let line = line.strip_suffix(b"\r").unwrap_or(line);
                        if line.len() > MAX_LINE {
                            self.too_long();
                            return;
                        }
                        // A blank line is no request: it does not reset the idle time.
                        let blank = line.iter().all(u8::is_ascii_whitespace);
                        if !blank && !self.handle_line(line) {
                            return;
                        }
                        buf.drain(..=end);
                        scanned = 0;
                        if !blank {
                            last_request = Instant::now();
                        }
                        // What follows the line came in this read (at most a chunk).
                        line_started =
                            (!buf.iter().all(u8::is_ascii_whitespace)).then(Instant::now);
                    }
                    scanned = buf.len();
                    if buf.len() > MAX_LINE {
                        self.too_long();
                        return;
                    }
                }
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return,
            }
        }
    }

    fn too_long(&mut self) {
        self.drop_client(&format!("request longer than {MAX_LINE} bytes"), true);
    }

    /// Handles one complete (not blank) line; false when the client should be dropped.
    fn handle_line(&mut self, line: &[u8]) -> bool {
        let sent = match proto::parse_request_keeping_text(line) {
            Err(e) => self.out.line(&Response::error(e.id, e.error)),
            Ok((
                Request {
                    id,
                    op: Op::DumpFlows(d),
                },
                _,
            )) if self.greeted && d.stream && d.format == proto::DumpFormat::Text => {
                self.dump_text(id, &d.filter)
            }
            Ok((
                Request {
                    id,
                    op: Op::DumpFlows(d),
                },
                _,
            )) if self.greeted && d.stream => self.dump_stream(id, &d.filter),
            Ok((
                Request {
                    id,
                    op: Op::DumpFlows(d),
                },
                _,
            )) if self.greeted => self.dump_flows(id, &d.filter),
            Ok((req, part)) => {
                let resp = self.handle(req, part);
                self.out.line(&resp)
            }
        };
        if std::mem::take(&mut self.trim) {
            // After the answer, so that the client does not wait for it.
            weft_datapath::mem::release_free_memory();
        }
        match sent {
            Ok(()) => !self.closing,
            Err(e @ OutError::TooSlow(_)) => {
                self.drop_client(&e.to_string(), false);
                false
            }
            Err(e) => {
                tracing::debug!(client = self.id, "control client gone: {e}");
                false
            }
        }
    }

    /// `dump_flows`, written out as the flows are rebuilt from the current pipeline
    /// (at most [`REPLY_CHUNK`] bytes of it gathered at a time): the same line as
    /// [`execute`] would answer, without ever holding it, or a copy of the flows, in
    /// memory.
    fn dump_flows(&mut self, id: u64, filter: &FlowFilter) -> Result<(), OutError> {
        let pipe = self.s.switch.pipeline();
        let now = self.s.switch.now();
        let out = &mut self.out;
        out.begin();
        let mut failed = None;
        let mut first = true;
        let mut count = 0usize;
        let mut item = Vec::new();
        let done = pipe.dump_each_ref(filter, now, |d| {
            count += 1;
            let stats = FlowStatsRef::from(d);
            item.clear();
            if first {
                item.extend_from_slice(format!("{{\"id\":{id},\"ok\":{{\"flows\":[").as_bytes());
            } else {
                item.push(b',');
            }
            first = false;
            // Members sorted, as every other reply's (through a json value).
            let written = proto::sorted_json::to_writer_sorted(&mut item, &stats)
                .map_err(|e| OutError::Io(io::Error::other(format!("internal: {e}"))))
                .and_then(|()| out.put(&item));
            match written {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        self.trim = count >= TRIM_AFTER_FLOWS;
        let out = &mut self.out;
        match done {
            Err(e) => out.line(&Response::error(
                Some(id),
                switch_error(SwitchError::from(e)),
            )),
            Ok(_) if first => out.line(&Response::ok(id, &DumpFlowsReply { flows: Vec::new() })),
            Ok(_) => {
                out.put(b"]}}\n")?;
                out.flush()
            }
        }
    }

    /// `dump_flows` with `stream`: parts of at most [`proto::DUMP_PART_FLOWS`] flows,
    /// each its own line (`{"id":N,"flows":[...]}`), written as the tables are walked,
    /// then `{"id":N,"ok":{"flows":COUNT}}`. At most [`REPLY_CHUNK`] bytes are held.
    fn dump_stream(&mut self, id: u64, filter: &FlowFilter) -> Result<(), OutError> {
        let head = format!("{{\"id\":{id},\"flows\":[");
        self.dump_parts(id, filter, &head, b"]}\n", |item, first, d| {
            if !first {
                item.push(b',');
            }
            write_flow_stats(item, d);
        })
    }

    /// `dump_flows` with `stream` and `"format":"text"`: parts of at most
    /// [`proto::DUMP_PART_FLOWS`] flows as their `dump-flows` lines
    /// (`{"id":N,"text":"LINE\nLINE\n"}`), written as the tables are walked, then
    /// `{"id":N,"ok":{"flows":COUNT}}`. Every line is written into one reused buffer:
    /// nothing is allocated per flow, and at most [`REPLY_CHUNK`] bytes are held.
    fn dump_text(&mut self, id: u64, filter: &FlowFilter) -> Result<(), OutError> {
        let head = format!("{{\"id\":{id},\"text\":\"");
        let mut line = String::with_capacity(512);
        self.dump_parts(id, filter, &head, b"\"}\n", |item, _, d| {
            line.clear();
            proto::write_flow_line(
                &mut line,
                &d.flow,
                d.packets,
                d.bytes,
                d.duration_ms,
                d.idle_age_ms,
            );
            push_json_str(item, &line);
            item.extend_from_slice(b"\\n");
        })
    }

    /// The walk of a streamed dump: each part is `head`, then `write` of each of its
    /// flows (told whether it is the part's first), then `tail`; then the closing
    /// `{"id":N,"ok":{"flows":COUNT}}` (or the walk's error).
    fn dump_parts(
        &mut self,
        id: u64,
        filter: &FlowFilter,
        head: &str,
        tail: &[u8],
        mut write: impl FnMut(&mut Vec<u8>, bool, &weft_pipeline::FlowDump),
    ) -> Result<(), OutError> {
        let pipe = self.s.switch.pipeline();
        let now = self.s.switch.now();
        let out = &mut self.out;
        out.begin();
        let mut failed = None;
        let mut in_part = 0usize;
        let mut count = 0usize;
        let mut item = Vec::with_capacity(1024);
        let done = pipe.dump_each_ref(filter, now, |d| {
            item.clear();
            let first = in_part == 0;
            if first {
                // Each part is a response line of its own, with its own write budget: a
                // reader that is slower than the walk but keeps reading gets every part
                // of a million-flow dump; one that stops is dropped within the budget.
                out.begin_part();
                item.extend_from_slice(head.as_bytes());
            }
            write(&mut item, first, d);
            in_part += 1;
            count += 1;
            if in_part == proto::DUMP_PART_FLOWS {
                item.extend_from_slice(tail);
                in_part = 0;
            }
            match out.put(&item) {
                Ok(()) => true,
                Err(e) => {
                    failed = Some(e);
                    false
                }
            }
        });
        if let Some(e) = failed {
            return Err(e);
        }
        self.trim = count >= TRIM_AFTER_FLOWS;
        let out = &mut self.out;
        if in_part > 0 {
            out.put(tail)?;
        }
        let last = match done {
            Err(e) => Response::error(Some(id), switch_error(SwitchError::from(e))),
            Ok(_) => Response::ok(id, &proto::DumpDone { flows: count }),
        };
        out.put(last.to_line().as_bytes())?;
        out.put(b"\n")?;
        out.flush()
    }

    /// Bundles sent in parts (`bundle_open`, `bundle_add`, `bundle_commit`,
    /// `bundle_discard`): they live in this connection until committed or discarded.
    fn bundle_op(
        &mut self,
        op: Op,
        part: Option<proto::PartText>,
    ) -> Result<serde_json::Value, ErrorBody> {
        // One that ran out of time while this request was read is gone too.
        self.expire_bundles(Instant::now());
        let expired = self.expired.clone();
        let timeout = self.s.opts.bundle_timeout;
        let no_such = |n: u64| {
            ErrorBody::new(if expired.contains(&n) {
                format!(
                    "bundle {n} was discarded: not committed within {} s of its bundle_open (bundle_timeout in weftd.toml)",
                    secs(timeout)
                )
            } else {
                format!(
                    "no open bundle {n} on this connection (never opened, or already committed or discarded)"
                )
            })
        };
        match op {
            Op::BundleOpen(a) => {
                if self.bundles.len() >= MAX_OPEN_BUNDLES {
                    return Err(ErrorBody::new(format!(
                        "{MAX_OPEN_BUNDLES} bundles are open on this connection already (the most there may be); commit or discard one"
                    )));
                }
                let n = self.next_bundle;
                self.next_bundle += 1;
                self.bundles.insert(
                    n,
                    Pending {
                        opened: Instant::now(),
                        replace: a.replace,
                        cookie: a.cookie,
                        changes: Vec::new(),
                        lines: Vec::new(),
                        texts: Vec::new(),
                        spans: Vec::new(),
                    },
                );
                to_value(&proto::BundleOpenReply { bundle: n })
            }
            Op::BundleAdd(a) => {
                let max = self.s.opts.max_bundle_flows;
                let p = self
                    .bundles
                    .get_mut(&a.bundle)
                    .ok_or_else(|| no_such(a.bundle))?;
                if p.replace
                    && let Some(i) = a
                        .changes
                        .iter()
                        .position(|c| !matches!(c, FlowMod::Add { .. }))
                {
                    return Err(ErrorBody {
                        message: format!(
                            "{}: a replace-flows bundle holds only flows to add",
                            a.lines
                                .get(i)
                                .map_or(format!("change {}", i + 1), |l| format!("flow line {l}"))
                        ),
                        line: a.lines.get(i).copied(),
                        index: Some(p.changes.len() + i),
                    });
                }
                if let Some(c) = &p.cookie {
                    let flows = a.changes.iter().filter_map(|c| match c {
                        FlowMod::Add { flow } => Some(flow),
                        _ => None,
                    });
                    proto::check_replace_cookie(c, flows, &a.lines, p.changes.len())?;
                }
                let total = p.changes.len() + a.changes.len();
                check_bundle_size(total, max)?;
                // Lines are kept for every change or for none (a part without them
                // numbers its changes as the bundle's changes).
                if a.lines.len() == a.changes.len() && p.lines.len() == p.changes.len() {
                    p.lines.extend_from_slice(&a.lines);
                } else {
                    p.lines.clear();
                }
                p.note_text(a.changes.len(), part);
                p.changes.extend(a.changes);
                to_value(&proto::BundleAddReply { changes: total })
            }
            Op::BundleCommit(r) => {
                let p = self
                    .bundles
                    .remove(&r.bundle)
                    .ok_or_else(|| no_such(r.bundle))?;
                let sw = &self.s.switch;
                let _g = lock(&self.s.changes);
                self.trim = p.changes.len() >= TRIM_AFTER_FLOWS;
                if p.replace {
                    let flows = p
                        .changes
                        .into_iter()
                        .filter_map(|c| match c {
                            FlowMod::Add { flow } => Some(flow),
                            _ => None,
                        })
                        .collect();
                    replace_flows(sw, flows, p.lines, p.cookie)
                } else {
                    let bundle = Bundle {
                        changes: p.changes,
                        lines: p.lines,
                    };
                    let (texts, spans) = (&p.texts, &p.spans);
                    apply_bundle(sw, bundle, &|i| {
                        let &(part, start, end) = spans.get(i)?;
                        texts.get(part as usize)?.get(start as usize..end as usize)
                    })
                }
            }
            Op::BundleDiscard(r) => {
                self.bundles
                    .remove(&r.bundle)
                    .ok_or_else(|| no_such(r.bundle))?;
                to_value(&Empty {})
            }
            _ => Err(ErrorBody::new("internal: not a bundle operation")),
        }
    }

    /// Answers one request; `part` is the text a `bundle_add` part came as.
    fn handle(&mut self, req: Request, part: Option<proto::PartText>) -> Response {
        let id = req.id;
        if let Op::Hello(h) = &req.op {
            if h.version != proto::VERSION {
                return Response::error(
                    Some(id),
                    ErrorBody::new(format!(
                        "protocol version {} is not supported (this weftd speaks version {})",
                        h.version,
                        proto::VERSION
                    )),
                );
            }
            self.greeted = true;
            tracing::debug!(client = ?h.client, "control client connected");
            return Response::ok(
                id,
                &HelloReply {
                    version: proto::VERSION,
                    name: proto::SERVER_NAME.into(),
                    software: env!("CARGO_PKG_VERSION").into(),
                },
            );
        }
        if !self.greeted {
            return Response::error(
                Some(id),
                ErrorBody::new(format!(
                    "the first request must be hello (e.g. {{\"id\":1,\"hello\":{{\"version\":{}}}}})",
                    proto::VERSION
                )),
            );
        }
        if let Op::Capture(args) = &req.op {
            return self.capture(id, args);
        }
        let name = req.op.name();
        let max = self.s.opts.max_bundle_flows;
        let too_big = match &req.op {
            Op::Bundle(b) => check_bundle_size(b.changes.len(), max).err(),
            Op::ReplaceFlows(r) => check_bundle_size(r.flows.len(), max).err(),
            _ => None,
        };
        self.trim = match &req.op {
            Op::Bundle(b) => b.changes.len() >= TRIM_AFTER_FLOWS,
            Op::ReplaceFlows(r) => r.flows.len() >= TRIM_AFTER_FLOWS,
            _ => false,
        };
        let result = if let Some(e) = too_big {
            Err(e)
        } else if matches!(
            req.op,
            Op::BundleOpen(_) | Op::BundleAdd(_) | Op::BundleCommit(_) | Op::BundleDiscard(_)
        ) {
            self.bundle_op(req.op, part)
        } else if req.op.changes_state() {
            let _g = lock(&self.s.changes);
            execute(&self.s.switch, req.op)
        } else {
            execute(&self.s.switch, req.op)
        };
        match result {
            Ok(v) => Response {
                id: Some(id),
                ok: Some(v),
                error: None,
                frame: None,
                flows: None,
                text: None,
            },
            Err(e) => {
                tracing::debug!(op = name, "control request failed: {e}");
                Response::error(Some(id), e)
            }
        }
    }
}

impl Connection<'_> {
    /// Streams the frames of a capture to this client until `count` frames, `seconds`,
    /// the client going away, or weftd stopping; then the final response.
    fn capture(&mut self, id: u64, args: &proto::CaptureArgs) -> Response {
        let snaplen = args
            .snaplen
            .map_or(weft_datapath::capture::DEFAULT_SNAPLEN, |n| n as usize);
        let cap = match self.s.switch.start_capture(&args.port, snaplen) {
            Ok(c) => c,
            Err(e) => return Response::error(Some(id), switch_error(e)),
        };
        let deadline = args
            .seconds
            .map(|s| Instant::now() + Duration::from_secs(s));
        let mut captured = 0u64;
        let mut client_gone = false;
        while args.count.is_none_or(|c| captured < c)
            && deadline.is_none_or(|d| Instant::now() < d)
            && !self.s.stop.load(Ordering::SeqCst)
        {
            let Some(f) = cap.next(TICK) else {
                // Nothing to send: notice a client that hung up. A client sends nothing
                // during a capture; if it does, that cancels the capture and, since its
                // line was cut, the connection is closed after the final answer.
                let _ = self.stream.set_nonblocking(true);
                let mut probe = [0u8; 1];
                let gone = !matches!(self.stream.read(&mut probe), Err(ref e) if e.kind() == ErrorKind::WouldBlock);
                let _ = self.stream.set_nonblocking(false);
                if gone {
                    client_gone = true;
                    break;
                }
                continue;
            };
            let frame = proto::CaptureFrame {
                ts_ns: f.ts_ns,
                len: f.orig_len as u64,
                dir: match f.direction {
                    weft_datapath::capture::Direction::Rx => "rx".into(),
                    weft_datapath::capture::Direction::Tx => "tx".into(),
                },
                data: proto::to_hex(f.data()),
            };
            cap.recycle(f);
            let line = Response {
                id: Some(id),
                ok: None,
                error: None,
                frame: Some(frame),
                flows: None,
                text: None,
            };
            if let Err(e) = self.out.line(&line) {
                if let OutError::TooSlow(_) = e {
                    tracing::warn!(client = self.id, "control client dropped: {e}");
                }
                client_gone = true;
                break;
            }
            captured += 1;
        }
        self.s.switch.stop_capture(&args.port, &cap);
        if client_gone {
            tracing::debug!(port = %args.port, captured, "capture client went away");
            self.closing = true;
        }
        Response::ok(
            id,
            &proto::CaptureDone {
                captured,
                skipped: cap.skipped(),
                snaplen: cap.snaplen() as u32,
            },
        )
    }
}

/// Applies a bundle (journaled with `text`, the line each change came as, when known)
/// and answers it: counts, version and warnings about unknown port numbers.
fn apply_bundle(
    sw: &Switch,
    bundle: Bundle,
    text: weft_datapath::ChangeText<'_>,
) -> Result<serde_json::Value, ErrorBody> {
    let o = sw.apply_with_text(&bundle, text).map_err(switch_error)?;
    let flows = bundle.changes.iter().map(|c| match c {
        FlowMod::Add { flow } => (Some(&flow.matches), flow.actions.as_slice()),
        FlowMod::Modify { actions, .. } | FlowMod::ModifyStrict { actions, .. } => {
            (None, actions.as_slice())
        }
        FlowMod::Delete { .. } | FlowMod::DeleteStrict { .. } => (None, &[][..]),
    });
    let warnings = port_warnings(flows, &bundle.lines, sw.pipeline().ports());
    tracing::info!(
        changes = bundle.changes.len(),
        added = o.added,
        replaced = o.replaced,
        modified = o.modified,
        deleted = o.deleted,
        version = o.version,
        "control: bundle applied"
    );
    to_value(&BundleReply {
        version: o.version,
        added: o.added,
        replaced: o.replaced,
        modified: o.modified,
        deleted: o.deleted,
        unchanged: 0,
        warnings,
    })
}

/// Refuses a bundle of more than `max` changes, naming the limit and its setting.
fn check_bundle_size(changes: usize, max: usize) -> Result<(), ErrorBody> {
    if changes > max {
        return Err(ErrorBody::new(format!(
            "bundle has {changes} flows; the limit is {}",
            weft_pipeline::Limit::MaxBundleFlows(max)
        )));
    }
    Ok(())
}

/// `text` inside a JSON string (without the quotes), escaped as `serde_json` escapes
/// it. Flow text is printable ASCII, which is copied as it is.
fn push_json_str(out: &mut Vec<u8>, text: &str) {
    let b = text.as_bytes();
    // Without short cuts, so that the check runs over whole vectors of bytes.
    if !b.iter().fold(false, |bad, &c| {
        bad | (c < 0x20) | (c == b'"') | (c == b'\\')
    }) {
        out.extend_from_slice(b);
        return;
    }
    let len = out.len();
    match serde_json::to_writer(&mut *out, text) {
        // Without the quotes serde_json put around it.
        Ok(()) => {
            out.pop();
            out.remove(len);
        }
        Err(_) => out.truncate(len),
    }
}

/// [`FlowStats`] borrowing its flow: serializes to the same JSON.
#[derive(serde::Serialize)]
struct FlowStatsRef<'a> {
    flow: &'a weft_flow::Flow,
    packets: u64,
    bytes: u64,
    duration_ms: u64,
    idle_age_ms: u64,
}

impl<'a> From<&'a weft_pipeline::FlowDump> for FlowStatsRef<'a> {
    fn from(d: &'a weft_pipeline::FlowDump) -> Self {
        FlowStatsRef {
            flow: &d.flow,
            packets: d.packets,
            bytes: d.bytes,
            duration_ms: d.duration_ms,
            idle_age_ms: d.idle_age_ms,
        }
    }
}

/// One flow of a dump as JSON (members in alphabetical order, as every reply).
fn write_flow_stats(out: &mut Vec<u8>, d: &weft_pipeline::FlowDump) {
    let stats = FlowStatsRef::from(d);
    // Members sorted, as every other reply's (through a json value); nothing of a
    // flow that cannot be written.
    let len = out.len();
    if proto::sorted_json::to_writer_sorted(out, &stats).is_err() {
        out.truncate(len);
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Result<serde_json::Value, ErrorBody> {
    serde_json::to_value(v).map_err(|e| ErrorBody::new(format!("internal: {e}")))
}

/// A switch error as a response error (flow errors keep their line and index).
fn switch_error(e: SwitchError) -> ErrorBody {
    match e {
        SwitchError::Flows(ie) => ErrorBody {
            message: ie.to_string(),
            line: ie.line,
            index: Some(ie.index),
        },
        other => ErrorBody::new(other.to_string()),
    }
}

/// Runs one checked operation against the switch (the request passed
/// [`parse_request`], so its text forms are resolved and everything is valid).
pub fn execute(sw: &Switch, op: Op) -> Result<serde_json::Value, ErrorBody> {
    match op {
        Op::Hello(_) => to_value(&HelloReply {
            version: proto::VERSION,
            name: proto::SERVER_NAME.into(),
            software: env!("CARGO_PKG_VERSION").into(),
        }),
        Op::Show(_) => {
            let pipe = sw.pipeline();
            to_value(&ShowReply {
                software: env!("CARGO_PKG_VERSION").into(),
                ports: port_infos(sw),
                flows: pipe.len(),
                tables: (0..=weft_flow::MAX_TABLE)
                    .filter(|t| pipe.table_len(*t) > 0)
                    .map(|t| (t, pipe.table_len(t)))
                    .collect(),
                pipeline_version: pipe.version(),
            })
        }
        Op::Ports(_) => to_value(&PortsReply {
            ports: port_infos(sw),
        }),
        Op::AddPort(a) => {
            let spec = a
                .port
                .ok_or_else(|| ErrorBody::new("add_port needs 'port'"))?;
            let name = spec.name.clone();
            let ofport = sw.add_port(spec).map_err(switch_error)?;
            tracing::info!(port = %name, ofport, "control: port added");
            to_value(&AddPortReply { ofport })
        }
        Op::DelPort(d) => {
            sw.del_port(&d.name).map_err(switch_error)?;
            tracing::info!(port = %d.name, "control: port deleted");
            to_value(&Empty {})
        }
        Op::Bundle(b) => {
            let bundle = Bundle {
                changes: b.changes,
                lines: b.lines,
            };
            apply_bundle(sw, bundle, &|_| None)
        }
        Op::ReplaceFlows(r) => replace_flows(sw, r.flows, r.lines, r.cookie),
        Op::DumpFlows(d) => {
            let flows = sw.dump_flows(&d.filter).map_err(switch_error)?;
            to_value(&DumpFlowsReply {
                flows: flows
                    .into_iter()
                    .map(|d| FlowStats {
                        flow: d.flow,
                        packets: d.packets,
                        bytes: d.bytes,
                        duration_ms: d.duration_ms,
                        idle_age_ms: d.idle_age_ms,
                    })
                    .collect(),
            })
        }
        Op::Stats(_) => {
            let st = sw.stats();
            let down = sw.down_ports();
            let mut ports: Vec<PortCounters> = st
                .ports
                .into_iter()
                .map(|p| {
                    let mut c = PortCounters::new(
                        p.ofport,
                        &p.name,
                        (p.rx_packets, p.rx_bytes),
                        (p.tx_packets, p.tx_bytes),
                        p.drops,
                    );
                    if !p.up {
                        c.state = proto::PortState::Down;
                        c.error = down
                            .iter()
                            .find(|(spec, _)| spec.name == p.name)
                            .map(|(_, why)| why.clone());
                    }
                    c
                })
                .collect();
            ports.sort_by_key(|p| p.ofport);
            to_value(&StatsReply {
                ports,
                tables: st
                    .tables
                    .into_iter()
                    .map(|t| TableCounters {
                        table: t.id,
                        flows: t.flows,
                        lookups: t.lookups,
                        matches: t.matches,
                        misses: t.misses,
                    })
                    .collect(),
                drops: st.drops.into_iter().filter(|(_, n)| *n > 0).collect(),
                cache_hits: st.cache_hits,
                cache_misses: st.cache_misses,
                pipeline_version: st.pipeline_version,
            })
        }
        Op::Fdb(_) => {
            let names: HashMap<u32, String> = sw
                .ports()
                .into_iter()
                .filter_map(|p| Some((p.spec.ofport?, p.spec.name)))
                .collect();
            let st_mac = sw.mac_stats();
            to_value(&FdbReply {
                entries: sw
                    .mac_entries()
                    .into_iter()
                    .map(|e| FdbEntry {
                        port: e.port,
                        port_name: names.get(&e.port).cloned(),
                        vni: e.vni,
                        mac: weft_flow::MacAddr(e.mac),
                        age_ms: e.age_ms,
                        remote: (e.remote != 0)
                            .then(|| weft_pipeline::flow_key::u128_to_ip(e.remote)),
                    })
                    .collect(),
                capacity: st_mac.0,
                evictions: st_mac.1,
            })
        }
        Op::Trace(t) => to_value(&trace(sw, &t.packet)?),
        Op::Capture(_) => Err(ErrorBody::new(
            "capture streams its frames on the connection that asked for it",
        )),
        Op::BundleOpen(_) | Op::BundleAdd(_) | Op::BundleCommit(_) | Op::BundleDiscard(_) => Err(
            ErrorBody::new("a bundle sent in parts lives on the connection that opened it"),
        ),
    }
}

fn port_infos(sw: &Switch) -> Vec<PortInfo> {
    let mut v: Vec<PortInfo> = sw
        .ports()
        .iter()
        .map(|p| {
            let mut info = PortInfo::from_spec(&p.spec, p.mtu);
            info.underlay = p.underlay.clone();
            match &p.state {
                PortState::Up => info,
                PortState::Down(why) => info.down(why),
            }
        })
        .collect();
    v.sort_by_key(|p| p.ofport);
    v
}

/// `replace_flows`: see the module docs.
fn replace_flows(
    sw: &Switch,
    flows: Vec<Flow>,
    lines: Vec<usize>,
    cookie: Option<Masked<u64>>,
) -> Result<serde_json::Value, ErrorBody> {
    let current = sw.pipeline();
    let wanted: Vec<(usize, Flow)> = flows
        .into_iter()
        .enumerate()
        .map(|(i, f)| (lines.get(i).copied().unwrap_or(0), f))
        .collect();
    // Where each wanted flow's identity came from, with in_port as a number (the form
    // of the scratch pipeline's dump).
    let mut line_of: HashMap<(u8, u16, weft_flow::Match), usize> = HashMap::new();
    for (line, f) in &wanted {
        let mut m = f.matches.clone();
        if let Some(PortRef::Name(n)) = &m.in_port
            && let Some(num) = current.ports().number(n)
        {
            m.in_port = Some(PortRef::Number(num));
        }
        line_of.insert((f.table, f.priority, m), *line);
    }
    let warnings = port_warnings(
        wanted
            .iter()
            .map(|(_, f)| (Some(&f.matches), f.actions.as_slice())),
        &lines,
        current.ports(),
    );
    let scratch = Pipeline::new(current.ports().clone());
    let (scratch, _) = scratch
        .apply(&Bundle::add_flows(wanted), sw.now())
        .map_err(|e| switch_error(SwitchError::Flows(e)))?;
    let canonical: Vec<(usize, Flow)> = scratch
        .flows()
        .into_iter()
        .map(|f| {
            let line = line_of
                .get(&(f.table, f.priority, f.matches.clone()))
                .copied()
                .unwrap_or(0);
            (line, f)
        })
        .collect();
    let mut installed: Vec<Flow> = sw
        .dump_flows(&FlowFilter::all())
        .map_err(switch_error)?
        .into_iter()
        .map(|d| d.flow)
        .collect();
    if let Some(c) = cookie {
        // Only the flows of the cookie are compared; a wanted flow with the identity of
        // a flow outside them would replace that flow, so it is refused.
        let (mine, others): (Vec<Flow>, Vec<Flow>) =
            installed.into_iter().partition(|f| c.matches(f.cookie));
        let outside: HashMap<(u8, u16, &weft_flow::Match), u64> = others
            .iter()
            .map(|f| ((f.table, f.priority, &f.matches), f.cookie))
            .collect();
        for (i, (line, f)) in canonical.iter().enumerate() {
            if let Some(theirs) = outside.get(&(f.table, f.priority, &f.matches)) {
                let line = Some(*line).filter(|l| *l > 0);
                return Err(ErrorBody {
                    message: format!(
                        "{}: an installed flow with the same table, priority and match has \
                         cookie {theirs:#x}, outside the replaced cookies {:#x}/{:#x} (it is \
                         left alone; delete it first)",
                        line.map_or(format!("flow {}", i + 1), |l| format!("flow line {l}")),
                        c.value,
                        c.mask
                    ),
                    line,
                    index: None,
                });
            }
        }
        installed = mine;
    }
    let (bundle, unchanged) = replace_diff(&installed, &canonical);
    if bundle.changes.is_empty() {
        return to_value(&BundleReply {
            version: sw.pipeline().version(),
            unchanged,
            warnings,
            ..BundleReply::default()
        });
    }
    let o = sw.apply(&bundle).map_err(switch_error)?;
    tracing::info!(
        added = o.added,
        replaced = o.replaced,
        deleted = o.deleted,
        unchanged,
        version = o.version,
        "control: flows replaced"
    );
    to_value(&BundleReply {
        version: o.version,
        added: o.added,
        replaced: o.replaced,
        modified: o.modified,
        deleted: o.deleted,
        unchanged,
        warnings,
    })
}

/// Warnings for port numbers that no port has, in the matches and actions of the
/// changes (in order; `lines` are their source lines when known). OVS accepts such
/// flows, and so does Weft (a port may get that number later), but a typo'd number
/// otherwise fails silently: a flow that never matches, or a counted `no_such_port`
/// drop. One warning per distinct use of a number, at most [`proto::MAX_WARNINGS`].
fn port_warnings<'a>(
    changes: impl Iterator<Item = (Option<&'a weft_flow::Match>, &'a [Action])>,
    lines: &[usize],
    ports: &weft_pipeline::PortMap,
) -> Vec<String> {
    let missing = |p: &PortRef| match p {
        PortRef::Number(n) if ports.get(*n).is_none() => Some(*n),
        _ => None,
    };
    let mut seen: Vec<(&'static str, u32)> = Vec::new();
    let mut out = Vec::new();
    let mut more = 0usize;
    for (i, (m, actions)) in changes.enumerate() {
        let mut uses: Vec<(&'static str, u32)> = Vec::new();
        if let Some(n) = m.and_then(|m| m.in_port.as_ref()).and_then(missing) {
            uses.push(("in_port", n));
        }
        for a in actions {
            match a {
                Action::Output(p) => uses.extend(missing(p).map(|n| ("output", n))),
                Action::Resubmit { port: Some(p), .. } => {
                    uses.extend(missing(p).map(|n| ("resubmit", n)))
                }
                _ => {}
            }
        }
        for u in uses {
            if seen.contains(&u) {
                continue;
            }
            seen.push(u);
            if out.len() + 1 >= proto::MAX_WARNINGS {
                more += 1;
                continue;
            }
            let at = match lines.get(i) {
                Some(l) => format!("flow line {l}"),
                None => format!("change {}", i + 1),
            };
            let (what, n) = u;
            let effect = match what {
                "output" => "packets sent to it are dropped (no_such_port)",
                _ => "the flow matches no packet",
            };
            let spelled = match what {
                "in_port" => format!("in_port={n}"),
                "output" => format!("output:{n}"),
                _ => format!("resubmit({n},...)"),
            };
            out.push(format!(
                "{at}: {spelled}: no port has number {n}; {effect} until one does"
            ));
        }
    }
    if more > 0 {
        out.push(format!(
            "{more} more unknown port numbers not listed (at most {} warnings)",
            proto::MAX_WARNINGS
        ));
    }
    out
}

/// `trace`: the packet as a flow key, walked through the current pipeline with the
/// current MAC table (no counters, no learning).
fn trace(sw: &Switch, packet: &str) -> Result<TraceReply, ErrorBody> {
    let m = proto::trace_packet(packet)?;
    let pipe = sw.pipeline();
    let (key, _, _) = weft_pipeline::translate::compile_match(&m, pipe.ports())
        .map_err(|e| ErrorBody::new(format!("packet: {e}")))?;
    let now = sw.now();
    let entries = sw.mac_entries();
    // A private copy of the MAC table as it is now; it never ages during the trace.
    let mut macs = MacTable::new(
        (entries.len() * 4).max(weft_pipeline::normal::DEFAULT_CAPACITY),
        u64::MAX / 4,
    );
    for e in &entries {
        macs.learn(e.vni, e.mac, e.port, e.remote, now.saturating_sub(e.age_ms));
    }
    let t = pipe.trace(&key, Some(&macs), now);
    let shown = t.to_string();
    let body = shown.split_once('\n').map_or("", |(_, rest)| rest);
    let text = format!("Flow: {m}\n{body}");
    let steps = t
        .steps
        .iter()
        .map(|s| match s {
            TraceStep::Table { depth, table, flow } => WireStep::Table {
                depth: *depth,
                table: *table,
                flow: flow.as_ref().map(|f| f.to_string()),
            },
            TraceStep::Action { depth, action } => WireStep::Action {
                depth: *depth,
                action: action.to_string(),
            },
            TraceStep::Note { depth, reason } => WireStep::Note {
                depth: *depth,
                reason: reason.as_str().to_string(),
            },
        })
        .collect();
    let actions = t
        .actions
        .iter()
        .map(|(a, _, fwd)| match a {
            DpAction::Output { port, .. } => format!("output:{port}"),
            DpAction::Flood { .. } => "flood".to_string(),
            DpAction::Normal { .. } => match fwd {
                Some(Forward::Port { port, .. }) => format!("normal: learned port {port}"),
                Some(Forward::Flood) => "normal: flood".to_string(),
                Some(Forward::Drop(r)) => format!("normal: drop ({})", r.as_str()),
                None => "normal".to_string(),
            },
        })
        .collect();
    Ok(TraceReply {
        text,
        steps,
        actions,
        drop: t.drop.map(|r| r.as_str().to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::peer_allowed;

    #[test]
    fn peer_decision() {
        // Root always, the owner always.
        assert!(peer_allowed(0, &[0], 1000, None));
        assert!(peer_allowed(1000, &[1000], 1000, None));
        // Someone else: only through the group.
        assert!(!peer_allowed(1001, &[1001], 1000, None));
        assert!(!peer_allowed(1001, &[1001, 27], 1000, Some(50)));
        assert!(peer_allowed(1001, &[50], 1000, Some(50)));
        assert!(peer_allowed(1001, &[1001, 4, 50], 1000, Some(50)));
        // A root-owned socket: other users need the group.
        assert!(!peer_allowed(1000, &[1000], 0, None));
        assert!(peer_allowed(1000, &[1000, 60], 0, Some(60)));
    }
}
