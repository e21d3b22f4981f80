//! The persisted state: every port (with its number) and every flow, in the state
//! directory as a snapshot and a write-ahead journal.
//!
//! - `snapshot`: the whole state in compact text, written now and then by the switch's
//!   state thread ([`StateDir::write_snapshot`]): a header line
//!   `weft-snapshot 2 seq=S ports=N`, N lines `port {json}`, one flow per line in the
//!   flow language (ports as numbers), and `end flows=M`. Replaced atomically
//!   (`snapshot.tmp`, fsync, rename, fsync of the directory).
//! - `journal`: every change since, appended before the change is published and
//!   answered ([`StateDir::append`]): an entry is a line `#SEQ LEN HASH` and LEN bytes
//!   of records, `+ FLOW` (added or changed), `- FLOW` (removed: table, priority and
//!   match), `clear TABLE`, `port {json}`, `del-port "NAME"`. Written before the
//!   answer in write(2) calls of at most [`WRITE_CHUNK`] bytes (see there), no fsync on
//!   the control thread: once it returns, the change is in the page cache
//!   and survives the process being killed; the state thread fsyncs the journal at
//!   most every 100 ms, so a power loss can lose the changes of the last 100 ms or so
//!   (a torn last entry is ignored and logged at start). An append that fails (a full
//!   disk) is undone (the journal is cut back) and the change refused.
//! - `journal.old`: the journal rotated away when a snapshot began
//!   ([`StateDir::begin_snapshot`]); removed once the snapshot that covers it is on
//!   disk. Every entry has a sequence number and the snapshot names the last it covers,
//!   so a crash at any point recovers: at start the snapshot is read, then
//!   `journal.old` and `journal`, each entry above the snapshot's number replayed.
//! - `state.json`: the previous format (one pretty JSON document rewritten after each
//!   change). Read when there is no snapshot, and replaced by one at start
//!   ([`StateDir::load`]; if that write fails it is kept and read again next time).
//!
//! A file that cannot be read or understood is an error, not an empty state: starting
//! empty would silently drop the node's flows (and, with them, its pods' traffic).
//! The error says so and tells the operator to move the file aside. The same for a
//! state file that is not a regular file: a symbolic link (dangling or not: a save
//! would replace the link with a file, so it would not keep pointing where the
//! operator meant) or a FIFO, device or directory (which would hang or fail the read).
//!
//! Counters and durations are not state; neither are the pipeline's compiled objects:
//! the journal and the snapshot hold flows.

use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufRead, BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Deserialize;
pub use weft_datapath::state::{FORMAT, SavedState, StateStore};
use weft_datapath::state::{FlowWalk, Record};
use weft_flow::port::PortSpec;
use weft_flow::{Flow, Match};
use weft_pipeline::NetChange;

/// The previous format's state file, read when there is no snapshot.
pub const STATE_FILE: &str = "state.json";
/// The snapshot of the whole state.
pub const SNAPSHOT_FILE: &str = "snapshot";
/// The temporary file a snapshot is written to before the rename.
pub const TMP_FILE: &str = "snapshot.tmp";
/// The journal of changes since the snapshot.
pub const JOURNAL_FILE: &str = "journal";
/// The journal rotated away by a snapshot that is being written.
pub const OLD_JOURNAL_FILE: &str = "journal.old";
/// The snapshot format this code writes and reads.
pub const SNAPSHOT_FORMAT: u32 = 2;
/// A snapshot is due when the journal is larger than the snapshot, but at least this.
pub const MIN_JOURNAL_BYTES: u64 = 1 << 20;
/// ... and at most this.
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;

/// Why the state could not be saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    /// The state file exists but could not be read.
    #[error(
        "cannot read {}: {source}; weftd will not start without its saved ports and flows \
         (fix the permissions, or move the file aside to start empty)",
        path.display()
    )]
    Read {
        /// The state file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The state file is a symbolic link, a FIFO, a device, a socket or a directory.
    #[error(
        "{} is {what}, not a regular file; weftd will not start without its saved ports \
         and flows (put the state file itself there, or move it aside to start empty)",
        path.display()
    )]
    NotAFile {
        /// The state file.
        path: PathBuf,
        /// What it is instead (`a symbolic link to '...'`, `a FIFO`, ...).
        what: String,
    },
    /// The state file is not valid JSON, or not valid ports and flows.
    #[error(
        "{} is corrupt ({detail}); weftd will not start rather than drop the node's ports \
         and flows (move the file aside to start empty)",
        path.display()
    )]
    Corrupt {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        detail: String,
    },
    /// The state file was written by another version of `weftd`.
    #[error(
        "{} has format version {found}, this weftd reads version {reads}; \
         weftd will not start rather than drop the node's ports and flows \
         (run a weftd that reads it, or move the file aside to start empty)",
        path.display()
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version found.
        found: u64,
        /// The version this code reads in that file.
        reads: u32,
    },
    /// The state could not be written.
    #[error("cannot save state to {}: {source}", path.display())]
    Write {
        /// The file or directory that failed.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
}

/// The previous format's state file's path in `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads a state file (`path`) whole, after checking that it is a regular file.
/// `Ok(None)` when there is no such file.
fn read_regular(path: &Path) -> Result<Option<Vec<u8>>, StateError> {
    use std::os::unix::fs::FileTypeExt;
    let path = path.to_path_buf();
    // lstat first: a dangling symbolic link must not read as "no file" (a first start),
    // and a FIFO must not be opened for reading (that waits for a writer, for ever).
    let meta = match fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(StateError::Read { path, source }),
    };
    let t = meta.file_type();
    let not_a_file = |what: String| StateError::NotAFile {
        path: path.clone(),
        what,
    };
    if t.is_symlink() {
        let to = fs::read_link(&path)
            .map(|p| p.display().to_string())
            .unwrap_or_else(|_| "?".into());
        let dangling = if fs::metadata(&path).is_err() {
            "dangling "
        } else {
            ""
        };
        return Err(not_a_file(format!("a {dangling}symbolic link to '{to}'")));
    }
    if !t.is_file() && !t.is_dir() {
        let what = if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else if t.is_block_device() || t.is_char_device() {
            "a device"
        } else {
            "not a file"
        };
        return Err(not_a_file(what.into()));
    }
    // O_NOFOLLOW | O_NONBLOCK: should it have been swapped since the lstat, a link is
    // an error and a FIFO does not block; what was opened is checked again.
    let mut bytes = Vec::new();
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
        .and_then(|mut f| {
            if !f.metadata()?.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidInput,
                    "not a regular file",
                ));
            }
            f.read_to_end(&mut bytes)
        })
        .map_err(|source| StateError::Read {
            path: path.clone(),
            source,
        })?;
    Ok(Some(bytes))
}

/// Reads `<dir>/state.json`, the previous format. `Ok(None)` when there is none.
fn load_legacy(dir: &Path) -> Result<Option<SavedState>, StateError> {
    let path = state_path(dir);
    let Some(bytes) = read_regular(&path)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.clone(),
        detail,
    };
    // The version first, so that a newer format is reported as such and not as
    // whatever field it added.
    #[derive(Deserialize)]
    struct Version {
        format: Option<serde_json::Value>,
    }
    let v: Version = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    match v.format {
        None => return Err(corrupt("no format version".into())),
        Some(f) => match f.as_u64() {
            Some(n) if n == u64::from(FORMAT) => {}
            Some(n) => {
                return Err(StateError::Version {
                    path,
                    found: n,
                    reads: FORMAT,
                });
            }
            None => return Err(corrupt(format!("format version {f} is not a number"))),
        },
    }
    let state: SavedState = serde_json::from_slice(&bytes).map_err(|e| corrupt(e.to_string()))?;
    for (i, p) in state.ports.iter().enumerate() {
        p.validate()
            .map_err(|e| corrupt(format!("port {} ('{}'): {e}", i + 1, p.name)))?;
        if p.ofport.is_none() {
            return Err(corrupt(format!("port '{}' has no ofport", p.name)));
        }
    }
    for (i, f) in state.flows.iter().enumerate() {
        f.validate()
            .map_err(|e| corrupt(format!("flow {}: {e}", i + 1)))?;
    }
    Ok(Some(state))
}

/// FNV-1a, 64 bits: tells a torn or garbled journal entry from a whole one.
fn hash(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0000_0100_0000_01b3)
    })
}

/// A flow's identity: table, priority, match.
type Identity = (u8, u16, Match);

fn identity(f: &Flow) -> Identity {
    (f.table, f.priority, f.matches.clone())
}

/// Room kept in front of an entry's payload for its header (`#SEQ LEN HASH\n`: at most
/// 20 + 20 + 16 digits and 4 separators), so that the entry is built in one buffer.
const HEADER_ROOM: usize = 64;

/// One journal entry, header and payload, as the bytes to append (the buffer from
/// the returned offset on): `payload` writes the records' lines after room for the
/// header, which is filled in front of them, so the entry is built in place.
fn encode_entry(
    seq: u64,
    size_hint: usize,
    payload: impl FnOnce(&mut Vec<u8>),
) -> (Vec<u8>, usize) {
    let mut buf: Vec<u8> = Vec::with_capacity(HEADER_ROOM + size_hint);
    buf.resize(HEADER_ROOM, 0);
    payload(&mut buf);
    let payload = &buf[HEADER_ROOM..];
    let header = format!("#{seq} {} {:016x}\n", payload.len(), hash(payload));
    let start = HEADER_ROOM - header.len();
    buf[start..HEADER_ROOM].copy_from_slice(header.as_bytes());
    (buf, start)
}

/// About the text of one flow (an Antrea flow's line is about 100 bytes).
const FLOW_TEXT_HINT: usize = 128;

/// Writes one added flow's journal line.
fn add_line(buf: &mut Vec<u8>, f: &Flow) {
    let _ = writeln!(buf, "+ {f}");
}

/// Writes one removed flow's journal line: its identity only.
fn del_line(buf: &mut Vec<u8>, f: &Flow) {
    if f.actions.is_empty() && f.cookie == 0 {
        let _ = writeln!(buf, "- {f}");
    } else {
        let mut id = f.clone();
        id.actions.clear();
        id.cookie = 0;
        let _ = writeln!(buf, "- {id}");
    }
}

/// Writes the records' journal lines.
fn record_lines(buf: &mut Vec<u8>, records: &[Record]) {
    for r in records {
        let _ = match r {
            Record::AddFlow(f) => {
                add_line(buf, f);
                Ok(())
            }
            Record::DelFlow(f) => {
                del_line(buf, f);
                Ok(())
            }
            Record::ClearTable(t) => writeln!(buf, "clear {t}"),
            Record::AddPort(p) => {
                writeln!(buf, "port {}", serde_json::to_string(p).unwrap_or_default())
            }
            Record::DelPort(n) => writeln!(
                buf,
                "del-port {}",
                serde_json::to_string(n).unwrap_or_default()
            ),
        };
    }
}

fn decode_record(line: &str) -> Result<Record, String> {
    let (kind, rest) = line.split_once(' ').unwrap_or((line, ""));
    Ok(match kind {
        "+" => Record::AddFlow(weft_flow::parse_flow(rest).map_err(|e| e.to_string())?),
        "-" => Record::DelFlow(weft_flow::parse_flow(rest).map_err(|e| e.to_string())?),
        "clear" => Record::ClearTable(rest.parse().map_err(|_| format!("bad table '{rest}'"))?),
        "port" => {
            let p: PortSpec = serde_json::from_str(rest).map_err(|e| e.to_string())?;
            p.validate()
                .map_err(|e| format!("port '{}': {e}", p.name))?;
            if p.ofport.is_none() {
                return Err(format!("port '{}' has no ofport", p.name));
            }
            Record::AddPort(p)
        }
        "del-port" => Record::DelPort(serde_json::from_str(rest).map_err(|e| e.to_string())?),
        other => return Err(format!("unknown record '{}'", weft_flow::excerpt(other))),
    })
}

/// A journal file read back.
#[derive(Debug, Default)]
struct JournalRead {
    /// The whole entries, in order.
    entries: Vec<(u64, Vec<Record>)>,
    /// Bytes of whole entries from the start (the rest is a torn tail).
    good_len: u64,
    /// Bytes after them (a torn last entry from a crash), ignored.
    torn: u64,
}

/// Reads a journal (`path`; none is empty). An entry that is not whole (short, or
/// its hash does not match) ends it: a torn last write. A whole entry whose records
/// do not parse is corruption, an error.
fn read_journal(path: &Path) -> Result<JournalRead, StateError> {
    let Some(bytes) = read_regular(path)? else {
        return Ok(JournalRead::default());
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let mut out = JournalRead::default();
    let mut at = 0usize;
    let mut last = 0u64;
    while at < bytes.len() {
        let rest = &bytes[at..];
        let Some(nl) = rest.iter().position(|b| *b == b'\n') else {
            break;
        };
        let header = std::str::from_utf8(&rest[..nl]).unwrap_or("");
        let mut it = header.strip_prefix('#').unwrap_or("").split(' ');
        let (Some(seq), Some(len), Some(h), None) = (it.next(), it.next(), it.next(), it.next())
        else {
            break;
        };
        let (Ok(seq), Ok(len), Ok(h)) = (
            seq.parse::<u64>(),
            len.parse::<usize>(),
            u64::from_str_radix(h, 16),
        ) else {
            break;
        };
        let Some(payload) = rest.get(nl + 1..nl + 1 + len) else {
            break;
        };
        if hash(payload) != h {
            break;
        }
        if seq <= last {
            return Err(corrupt(format!(
                "entry {seq} at byte {at} follows entry {last}"
            )));
        }
        last = seq;
        let text = std::str::from_utf8(payload)
            .map_err(|_| corrupt(format!("entry {seq} is not text")))?;
        let records = text
            .lines()
            .map(decode_record)
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| corrupt(format!("entry {seq}: {e}")))?;
        out.entries.push((seq, records));
        at += nl + 1 + len;
    }
    out.good_len = at as u64;
    out.torn = (bytes.len() - at) as u64;
    Ok(out)
}

/// Reads a snapshot (`path`): its sequence number and state. `Ok(None)`: none.
fn read_snapshot(path: &Path) -> Result<Option<(u64, SavedState)>, StateError> {
    let Some(bytes) = read_regular(path)? else {
        return Ok(None);
    };
    let corrupt = |detail: String| StateError::Corrupt {
        path: path.to_path_buf(),
        detail,
    };
    let text = std::str::from_utf8(&bytes).map_err(|_| corrupt("not text".into()))?;
    let mut lines = text.lines().enumerate();
    let header = lines.next().map(|(_, l)| l).unwrap_or("");
    let mut it = header.split(' ');
    if it.next() != Some("weft-snapshot") {
        return Err(corrupt("no 'weft-snapshot' header".into()));
    }
    match it.next().map(str::parse::<u64>) {
        Some(Ok(n)) if n == u64::from(SNAPSHOT_FORMAT) => {}
        Some(Ok(n)) => {
            return Err(StateError::Version {
                path: path.to_path_buf(),
                found: n,
                reads: SNAPSHOT_FORMAT,
            });
        }
        _ => return Err(corrupt("no format version".into())),
    }
    let field = |v: Option<&str>, name: &str| -> Result<u64, StateError> {
        v.and_then(|v| v.strip_prefix(name))
            .and_then(|v| v.parse().ok())
            .ok_or_else(|| corrupt(format!("header has no {name}N")))
    };
    let seq = field(it.next(), "seq=")?;
    let n_ports = field(it.next(), "ports=")?;
    let mut state = SavedState::default();
    for _ in 0..n_ports {
        let (i, l) = lines
            .next()
            .ok_or_else(|| corrupt("ports cut short".into()))?;
        match decode_record(l) {
            Ok(Record::AddPort(p)) => state.ports.push(p),
            Ok(_) => return Err(corrupt(format!("line {}: not a port", i + 1))),
            Err(e) => return Err(corrupt(format!("line {}: {e}", i + 1))),
        }
    }
    for (i, l) in lines {
        if let Some(n) = l.strip_prefix("end flows=") {
            if n.parse::<usize>().ok() != Some(state.flows.len()) {
                return Err(corrupt(format!(
                    "says {n} flows, has {}",
                    state.flows.len()
                )));
            }
            return Ok(Some((seq, state)));
        }
        let f = weft_flow::parse_flow(l).map_err(|e| corrupt(format!("line {}: {e}", i + 1)))?;
        state.flows.push(f);
    }
    Err(corrupt("cut short (no 'end' line)".into()))
}

/// What [`load`] found besides the state.
#[derive(Debug, Default)]
struct LoadInfo {
    /// The last sequence number in the snapshot or the journals.
    seq: u64,
    /// The base was `state.json` (the previous format), not a snapshot.
    legacy: bool,
    /// Entries replayed from the journals.
    replayed: usize,
}

/// Replays journal entries above `above` on `state`.
fn replay(state: &mut SavedState, entries: Vec<(u64, Vec<Record>)>, above: u64) -> usize {
    // Flow changes go into an overlay over the base's flows (by identity), so that
    // replay is linear in the base and the journal.
    let mut overlay: HashMap<Identity, Option<Flow>> = HashMap::new();
    let mut cleared: Vec<u8> = Vec::new();
    let mut n = 0;
    for (seq, records) in entries {
        if seq <= above {
            continue;
        }
        n += 1;
        for r in records {
            match r {
                Record::AddFlow(f) => {
                    overlay.insert(identity(&f), Some(f));
                }
                Record::DelFlow(f) => {
                    overlay.insert(identity(&f), None);
                }
                Record::ClearTable(t) => {
                    overlay.retain(|k, _| k.0 != t);
                    if !cleared.contains(&t) {
                        cleared.push(t);
                    }
                }
                Record::AddPort(p) => {
                    state.ports.retain(|q| q.name != p.name);
                    state.ports.push(p);
                    state.ports.sort_by_key(|p| p.ofport);
                }
                Record::DelPort(name) => state.ports.retain(|p| p.name != name),
            }
        }
    }
    if !overlay.is_empty() || !cleared.is_empty() {
        state
            .flows
            .retain(|f| !cleared.contains(&f.table) && !overlay.contains_key(&identity(f)));
        state.flows.extend(overlay.into_values().flatten());
    }
    n
}

/// Reads the state: the snapshot (or else `state.json`), then the journals replayed
/// on it. `Ok(None)` when there is nothing (a first start).
fn load_with_info(dir: &Path) -> Result<Option<(SavedState, LoadInfo)>, StateError> {
    let mut info = LoadInfo::default();
    let (mut state, base_seq, found) = match read_snapshot(&dir.join(SNAPSHOT_FILE))? {
        Some((seq, st)) => (st, seq, true),
        None => match load_legacy(dir)? {
            Some(st) => {
                info.legacy = true;
                (st, 0, true)
            }
            None => (SavedState::default(), 0, false),
        },
    };
    info.seq = base_seq;
    let mut any_journal = false;
    for name in [OLD_JOURNAL_FILE, JOURNAL_FILE] {
        let path = dir.join(name);
        let j = read_journal(&path)?;
        if j.torn > 0 {
            tracing::warn!(
                "{}: ignored {} bytes after byte {}: a torn last entry (the process or the \
                 machine stopped while it was written)",
                path.display(),
                j.torn,
                j.good_len
            );
        }
        if let Some((last, _)) = j.entries.last() {
            info.seq = info.seq.max(*last);
            any_journal = true;
        }
        info.replayed += replay(&mut state, j.entries, base_seq);
    }
    if !found && !any_journal {
        return Ok(None);
    }
    Ok(Some((state, info)))
}

/// Reads the state saved in `dir`: the snapshot (or else `state.json`, the previous
/// format), then the journal replayed on it (a torn last entry ignored and logged).
/// `Ok(None)` when there is nothing (a first start).
pub fn load(dir: &Path) -> Result<Option<SavedState>, StateError> {
    Ok(load_with_info(dir)?.map(|(s, _)| s))
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> StateError + use<> {
    let path = path.to_path_buf();
    move |source| StateError::Write { path, source }
}

fn create_dir(dir: &Path) -> Result<(), StateError> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(werr(dir))
}

/// The most one write(2) of the journal or the snapshot copies. The kernel copies a
/// buffered write into the page cache without a point where another thread may take
/// the CPU (this kernel preempts only where code yields, `PREEMPT_NONE`): one 100 MB
/// write of a 1M-flow bundle held a CPU for up to 10.7 ms while a `SCHED_FIFO` worker
/// waited for it (`perf sched timehist`, flowbench's gap stream). Each return from a
/// 64 KiB write is such a point; a `SCHED_FIFO` task that waited on a CPU beside 200 MB
/// written in one call waited up to 5.5-7.4 ms, beside 64 KiB writes 2.7-3.3 ms. A
/// process killed between two writes leaves a torn entry, which is ignored at start:
/// the change was never answered.
pub(crate) const WRITE_CHUNK: usize = 64 << 10;

/// Writes all of `buf` in write(2) calls of at most [`WRITE_CHUNK`] bytes.
fn write_chunked(f: &File, buf: &[u8]) -> io::Result<()> {
    let mut w = f;
    for part in buf.chunks(WRITE_CHUNK) {
        w.write_all(part)?;
    }
    Ok(())
}

fn sync_dir(dir: &Path) -> Result<(), StateError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(werr(dir))
}

/// Writes a snapshot (sequence number `seq`, `ports`, the flows `flows` walks) to
/// `<dir>/snapshot` atomically: `snapshot.tmp`, fsync, rename, fsync of the directory.
/// Returns its size.
fn write_snapshot_file(
    dir: &Path,
    seq: u64,
    ports: &[PortSpec],
    flows: FlowWalk<'_>,
) -> Result<u64, StateError> {
    create_dir(dir)?;
    let tmp = dir.join(TMP_FILE);
    let f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr(&tmp))?;
    let mut w = BufWriter::with_capacity(WRITE_CHUNK, f);
    let mut result: io::Result<()> = (|| {
        writeln!(
            w,
            "weft-snapshot {SNAPSHOT_FORMAT} seq={seq} ports={}",
            ports.len()
        )?;
        for p in ports {
            writeln!(
                w,
                "port {}",
                serde_json::to_string(p).map_err(io::Error::other)?
            )?;
        }
        Ok(())
    })();
    let mut n = 0usize;
    if result.is_ok() {
        flows(&mut |f| {
            n += 1;
            match writeln!(w, "{f}") {
                Ok(()) => true,
                Err(e) => {
                    result = Err(e);
                    false
                }
            }
        });
    }
    let size = result
        .and_then(|()| writeln!(w, "end flows={n}"))
        .and_then(|()| w.into_inner().map_err(|e| e.into_error()))
        .and_then(|f| {
            f.sync_all()?;
            f.metadata().map(|m| m.len())
        });
    let size = match size {
        Ok(s) => s,
        Err(e) => {
            // Do not leave a large temporary file on a full disk.
            let _ = fs::remove_file(&tmp);
            return Err(werr(&tmp)(e));
        }
    };
    let path = dir.join(SNAPSHOT_FILE);
    fs::rename(&tmp, &path).map_err(werr(&path))?;
    sync_dir(dir)?;
    Ok(size)
}

/// Replaces the state saved in `dir` with `state`: a snapshot, then the journals and
/// `state.json` removed. For tools and tests; `weftd` saves through [`StateDir`].
pub fn save(dir: &Path, state: &SavedState) -> Result<(), StateError> {
    let seq = load_with_info(dir).ok().flatten().map_or(0, |(_, i)| i.seq);
    write_snapshot_file(dir, seq, &state.ports, &mut |each| {
        for f in &state.flows {
            if !each(f.clone()) {
                break;
            }
        }
    })?;
    for name in [JOURNAL_FILE, OLD_JOURNAL_FILE, STATE_FILE] {
        match fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(werr(&dir.join(name))(e)),
            _ => {}
        }
    }
    sync_dir(dir)
}

/// The open journal.
#[derive(Debug)]
struct Journal {
    /// Opened for appending (`None` until the first append, and after a failed one
    /// could not be undone: it is opened, checked and cut back again).
    file: Option<Arc<File>>,
    /// Its length (whole entries).
    len: u64,
    /// The length of `journal.old`, if there is one.
    old_len: Option<u64>,
    /// The last sequence number appended (or read).
    seq: u64,
    /// The snapshot's size (a snapshot is due when the journal outgrows it).
    snapshot_len: u64,
    /// Appended since the last fsync.
    dirty: bool,
}

/// The switch's [`StateStore`]: the journal and the snapshot in a state directory
/// (see the module docs). One per directory and process.
#[derive(Debug)]
pub struct StateDir {
    dir: PathBuf,
    journal: Mutex<Journal>,
    min_journal: u64,
    max_journal: u64,
}

impl StateDir {
    /// The store for `dir` (created, mode 0700, at the first write). The journal is
    /// opened at the first append.
    pub fn new(dir: impl Into<PathBuf>) -> StateDir {
        StateDir {
            dir: dir.into(),
            journal: Mutex::new(Journal {
                file: None,
                len: 0,
                old_len: None,
                seq: 0,
                snapshot_len: 0,
                dirty: false,
            }),
            min_journal: MIN_JOURNAL_BYTES,
            max_journal: MAX_JOURNAL_BYTES,
        }
    }

    /// A snapshot becomes due when the journal is larger than the snapshot, clamped to
    /// `min..=max` bytes (defaults [`MIN_JOURNAL_BYTES`], [`MAX_JOURNAL_BYTES`]).
    pub fn with_journal_limits(mut self, min: u64, max: u64) -> StateDir {
        self.min_journal = min;
        self.max_journal = max.max(min);
        self
    }

    /// The state directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Reads the saved state ([`load`]) and, when it came from `state.json` (the
    /// previous format), writes it as a snapshot and removes `state.json`; if that
    /// fails (a full disk) it is logged, and `state.json` stays and is read again.
    pub fn load(&self) -> Result<Option<SavedState>, StateError> {
        let Some((state, info)) = load_with_info(&self.dir)? else {
            return Ok(None);
        };
        if info.replayed > 0 {
            tracing::info!(entries = info.replayed, "replayed the state journal");
        }
        if info.legacy {
            let migrated = write_snapshot_file(&self.dir, info.seq, &state.ports, &mut |each| {
                for f in &state.flows {
                    if !each(f.clone()) {
                        break;
                    }
                }
            })
            .and_then(|_| {
                fs::remove_file(state_path(&self.dir)).map_err(werr(&state_path(&self.dir)))?;
                sync_dir(&self.dir)
            });
            match migrated {
                Ok(()) => tracing::info!(
                    "converted {} to {}",
                    state_path(&self.dir).display(),
                    self.dir.join(SNAPSHOT_FILE).display()
                ),
                Err(e) => tracing::warn!("{e}; {STATE_FILE} is kept and read again"),
            }
        }
        // Open the journal now, so that the first change does not read it.
        if let Err(e) = self.open(&mut self.lock()) {
            tracing::warn!("{e}");
        }
        Ok(Some(state))
    }

    /// Appends one entry whose records `payload` writes, in write(2) calls of at most
    /// [`WRITE_CHUNK`] bytes.
    fn append_entry(&self, size_hint: usize, payload: impl FnOnce(&mut Vec<u8>)) -> io::Result<()> {
        let mut j = self.lock();
        let f = self.open(&mut j).map_err(io::Error::other)?;
        let (buf, start) = encode_entry(j.seq + 1, size_hint, payload);
        let entry = &buf[start..];
        let path = self.dir.join(JOURNAL_FILE);
        if let Err(e) = write_chunked(&f, entry) {
            // Cut a partial write back, so that the next entry follows a whole one; if
            // that fails too, the journal is opened (and cut) again at the next append.
            if f.set_len(j.len).is_err() {
                j.file = None;
            }
            return Err(io::Error::other(werr(&path)(e)));
        }
        j.seq += 1;
        j.len += entry.len() as u64;
        j.dirty = true;
        Ok(())
    }

    fn lock(&self) -> MutexGuard<'_, Journal> {
        self.journal.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Opens the journal for appending: its last sequence number and those of the
    /// snapshot and `journal.old` are read, and a torn last entry is cut off.
    fn open(&self, j: &mut Journal) -> Result<Arc<File>, StateError> {
        if let Some(f) = &j.file {
            return Ok(Arc::clone(f));
        }
        create_dir(&self.dir)?;
        let snap = self.dir.join(SNAPSHOT_FILE);
        let mut seq = 0;
        if let Ok(f) = File::open(&snap) {
            let mut header = String::new();
            let _ = io::BufReader::new(f.take(256)).read_line(&mut header);
            seq = header
                .split(' ')
                .find_map(|w| w.strip_prefix("seq="))
                .and_then(|s| s.parse().ok())
                .unwrap_or(0);
            j.snapshot_len = fs::metadata(&snap).map_or(0, |m| m.len());
        }
        let old = read_journal(&self.dir.join(OLD_JOURNAL_FILE))?;
        if let Some((s, _)) = old.entries.last() {
            seq = seq.max(*s);
        }
        j.old_len = fs::metadata(self.dir.join(OLD_JOURNAL_FILE))
            .ok()
            .map(|m| m.len());
        let path = self.dir.join(JOURNAL_FILE);
        let cur = read_journal(&path)?;
        if let Some((s, _)) = cur.entries.last() {
            seq = seq.max(*s);
        }
        let f = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&path)
            .map_err(werr(&path))?;
        if cur.torn > 0 {
            f.set_len(cur.good_len).map_err(werr(&path))?;
        }
        let f = Arc::new(f);
        j.file = Some(Arc::clone(&f));
        j.len = cur.good_len;
        j.seq = seq;
        Ok(f)
    }
}

impl StateStore for StateDir {
    fn append(&self, records: &[Record]) -> io::Result<()> {
        self.append_entry(FLOW_TEXT_HINT * records.len(), |buf| {
            record_lines(buf, records)
        })
    }

    fn append_net(&self, net: &NetChange<'_>) -> io::Result<()> {
        self.append_net_text(net, &|_| None)
    }

    fn append_net_text(
        &self,
        net: &NetChange<'_>,
        text: weft_datapath::ChangeText<'_>,
    ) -> io::Result<()> {
        let n = net.cleared.len() + net.deleted.len() + net.added_len();
        self.append_entry(FLOW_TEXT_HINT * n, |buf| {
            // The order of `net_records`: tables cleared, flows removed, flows added.
            for t in &net.cleared {
                let _ = writeln!(buf, "clear {t}");
            }
            for f in &net.deleted {
                del_line(buf, f);
            }
            for f in &net.added {
                add_line(buf, f);
            }
            // A flow lent from the bundle is journaled as the line it was parsed from
            // when there is one: that line reads back as the same flow (the parser
            // made it from it), and copying it costs far less than printing the flow.
            for (i, c) in net.added_as_sent.iter().enumerate() {
                match (text(i), c) {
                    (Some(line), _) if !line.contains('\n') => {
                        buf.extend_from_slice(b"+ ");
                        buf.extend_from_slice(line.trim().as_bytes());
                        buf.push(b'\n');
                    }
                    (_, weft_flow::FlowMod::Add { flow }) => add_line(buf, flow),
                    _ => {}
                }
            }
        })
    }

    fn sync(&self) -> io::Result<()> {
        let f = {
            let mut j = self.lock();
            if !j.dirty {
                return Ok(());
            }
            j.dirty = false;
            j.file.clone()
        };
        // Outside the lock: appends go on while the disk works.
        if let Some(f) = f
            && let Err(e) = f.sync_data()
        {
            self.lock().dirty = true;
            return Err(io::Error::other(werr(&self.dir.join(JOURNAL_FILE))(e)));
        }
        Ok(())
    }

    fn snapshot_due(&self) -> bool {
        let j = self.lock();
        let limit = j.snapshot_len.clamp(self.min_journal, self.max_journal);
        j.len + j.old_len.unwrap_or(0) > limit
    }

    fn begin_snapshot(&self) -> io::Result<u64> {
        let mut j = self.lock();
        self.open(&mut j).map_err(io::Error::other)?;
        if j.old_len.is_none() {
            // Rotate: appends from now on go to a new journal, the snapshot covers
            // everything up to `seq`.
            let from = self.dir.join(JOURNAL_FILE);
            let to = self.dir.join(OLD_JOURNAL_FILE);
            fs::rename(&from, &to).map_err(|e| io::Error::other(werr(&from)(e)))?;
            j.old_len = Some(j.len);
            // Unsynced entries are in journal.old now: fsync the old handle first.
            if let Some(f) = j.file.take()
                && j.dirty
            {
                f.sync_data().map_err(|e| io::Error::other(werr(&to)(e)))?;
            }
            let f = OpenOptions::new()
                .append(true)
                .create(true)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&from)
                .map_err(|e| io::Error::other(werr(&from)(e)))?;
            j.file = Some(Arc::new(f));
            j.len = 0;
            j.dirty = false;
        }
        // Else a snapshot failed earlier and journal.old is still needed: the new
        // snapshot covers it too, and the journal's entries up to `seq` are skipped
        // at replay.
        Ok(j.seq)
    }

    fn write_snapshot(&self, seq: u64, ports: &[PortSpec], flows: FlowWalk<'_>) -> io::Result<()> {
        let size = write_snapshot_file(&self.dir, seq, ports, flows).map_err(io::Error::other)?;
        let old = self.dir.join(OLD_JOURNAL_FILE);
        match fs::remove_file(&old) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => {
                return Err(io::Error::other(werr(&old)(e)));
            }
            _ => {}
        }
        let _ = fs::remove_file(state_path(&self.dir));
        let mut j = self.lock();
        j.old_len = None;
        j.snapshot_len = size;
        Ok(())
    }
}
#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;
    use weft_flow::port::PortSpec;

    fn sample() -> SavedState {
        let port = |line: &str| {
            let mut it = line.split_whitespace();
            let name = it.next().unwrap();
            let args: Vec<&str> = it.collect();
            PortSpec::parse(name, &args).unwrap()
        };
        SavedState {
            format: FORMAT,
            ports: vec![
                port("pod1 type=tap ofport=1 netns=pod1 mtu=1450"),
                port("vx0 type=vxlan ofport=2 local=198.18.0.1 key=flow allowed_remotes=198.18.0.0/24"),
            ],
            flows: weft_flow::parse_flows_file(
                "table=0,priority=100,in_port=pod1,ip,nw_dst=198.19.2.0/24 actions=set_field:198.18.0.2->tun_dst,output:vx0\n\
                 table=0,priority=0 actions=normal\n",
            )
            .unwrap()
            .into_iter()
            .map(|(_, f)| f)
            .collect(),
        }
    }

    #[test]
    fn round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("a/b");
        assert!(load(&sub).unwrap().is_none());
        let s = sample();
        save(&sub, &s).unwrap();
        assert_eq!(load(&sub).unwrap(), Some(s.clone()));
        let mode = fs::metadata(&sub).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        let fmode = fs::metadata(sub.join(SNAPSHOT_FILE))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(fmode, 0o600);
        assert!(!sub.join(TMP_FILE).exists());
        // Saving again replaces it.
        let empty = SavedState::default();
        save(&sub, &empty).unwrap();
        assert_eq!(load(&sub).unwrap(), Some(empty));
        // Compact text: a header, ports as JSON, one flow per line.
        save(&sub, &s).unwrap();
        let text = fs::read_to_string(sub.join(SNAPSHOT_FILE)).unwrap();
        assert!(
            text.starts_with("weft-snapshot 2 seq=0 ports=2\nport {"),
            "{text}"
        );
        assert!(
            text.contains("\npriority=0 actions=normal\nend flows=2\n"),
            "{text}"
        );
    }

    #[test]
    fn leftover_tmp_from_a_crash() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        save(dir.path(), &s).unwrap();
        // A crash between writing the temporary file and the rename: the old state is
        // what load sees, and the next save overwrites the leftover.
        fs::write(
            dir.path().join(TMP_FILE),
            b"{\"format\": 1, \"ports\": [tru",
        )
        .unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s.clone()));
        let mut s2 = s.clone();
        s2.flows.pop();
        save(dir.path(), &s2).unwrap();
        assert_eq!(load(dir.path()).unwrap(), Some(s2));
        assert!(!dir.path().join(TMP_FILE).exists());
    }

    #[test]
    fn old_state_intact_until_rename() {
        let dir = tempfile::tempdir().unwrap();
        let s = sample();
        save(dir.path(), &s).unwrap();
        // Make the temporary file impossible to create: a directory in its place.
        fs::create_dir(dir.path().join(TMP_FILE)).unwrap();
        let e = save(dir.path(), &SavedState::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot save state to "), "{e}");
        assert!(e.to_string().contains(TMP_FILE), "{e}");
        assert_eq!(load(dir.path()).unwrap(), Some(s));
    }

    #[test]
    fn corrupt_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        let check = |content: &[u8], want: &str| {
            fs::write(&path, content).unwrap();
            let e = load(dir.path()).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(want), "{want:?} not in {e}");
            assert!(e.contains("move the file aside"), "{e}");
            assert!(!e.contains('\n'), "{e}");
        };
        check(b"", "corrupt");
        check(b"{\"format\": 1, \"ports\": [", "corrupt");
        check(b"\xff\xfe", "corrupt");
        check(b"[]", "corrupt");
        check(b"{\"ports\": [], \"flows\": []}", "no format version");
        check(
            b"{\"format\": \"one\", \"ports\": [], \"flows\": []}",
            "not a number",
        );
        check(
            b"{\"format\": 1, \"ports\": [], \"flows\": [], \"extra\": 1}",
            "unknown field",
        );
        check(
            b"{\"format\": 1, \"ports\": [{\"name\": \"normal\", \"ofport\": 1, \"type\": \"tap\"}], \"flows\": []}",
            "port 1 ('normal')",
        );
        check(
            b"{\"format\": 1, \"ports\": [{\"name\": \"p\", \"type\": \"tap\"}], \"flows\": []}",
            "no ofport",
        );
        check(
            b"{\"format\": 1, \"ports\": [], \"flows\": [{\"table\": 254}]}",
            "flow 1",
        );
    }

    #[test]
    fn unknown_format_version() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(
            state_path(dir.path()),
            b"{\"format\": 2, \"ports\": [], \"flows\": [], \"groups\": []}",
        )
        .unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Version { found: 2, .. }), "{e:?}");
        assert!(
            e.to_string()
                .contains("has format version 2, this weftd reads version 1"),
            "{e}"
        );
    }

    #[test]
    fn a_symbolic_link_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        // Dangling: not a first start.
        std::os::unix::fs::symlink(dir.path().join("elsewhere.json"), &path).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::NotAFile { .. }), "{e:?}");
        let text = e.to_string();
        assert!(text.contains("a dangling symbolic link to '"), "{text}");
        assert!(text.contains("elsewhere.json"), "{text}");
        assert!(text.contains("move it aside"), "{text}");
        assert!(!text.contains('\n'), "{text}");
        // To a good state file: refused as well (a save would replace the link).
        fs::remove_file(&path).unwrap();
        let real = dir.path().join("real");
        save(&real, &sample()).unwrap();
        std::os::unix::fs::symlink(real.join(SNAPSHOT_FILE), &path).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link to '"), "{e}");
    }

    #[test]
    fn a_fifo_is_refused_without_waiting() {
        let dir = tempfile::tempdir().unwrap();
        let path = state_path(dir.path());
        nix::unistd::mkfifo(&path, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        let d = dir.path().to_path_buf();
        std::thread::spawn(move || {
            let _ = tx.send(load(&d).map(|_| ()).map_err(|e| e.to_string()));
        });
        let got = rx
            .recv_timeout(std::time::Duration::from_secs(3))
            .expect("load of a FIFO returns at once, it must not wait for a writer");
        let e = got.unwrap_err();
        assert!(e.contains("is a FIFO, not a regular file"), "{e}");
        assert!(e.contains(&path.display().to_string()), "{e}");
    }

    #[test]
    fn unreadable_file_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        // A directory where the file should be: reading fails with something other
        // than "not found", which must not be taken for a first start.
        fs::create_dir(state_path(dir.path())).unwrap();
        let e = load(dir.path()).unwrap_err();
        assert!(matches!(e, StateError::Read { .. }), "{e:?}");
        assert!(e.to_string().contains("move the file aside"), "{e}");
    }

    fn flow(text: &str) -> Flow {
        weft_flow::parse_flow(text).unwrap()
    }

    /// Flows as sorted text (the order of a replayed state is not the table's).
    fn sorted(mut s: SavedState) -> SavedState {
        s.flows.sort_by_key(|f| f.to_string());
        s
    }

    /// A bundle of adds journaled with the lines its flows came as: those lines are
    /// written as they are (no printing), a flow without one is printed, and either
    /// reads back as the flow the bundle installed; a later flow of the same identity
    /// wins, as it did in the bundle.
    #[test]
    fn flows_added_as_sent_are_journaled_as_their_lines() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let store = StateDir::new(&d);
        let lines = [
            Some(
                "ip,nw_dst=198.19.0.1,table=1,priority=5   actions=mod_dl_src:02:00:00:00:00:01,output:3",
            ),
            None,
            Some(" table=2,priority=1,ip actions=drop"),
            Some("table=2,priority=1,ip actions=output:4"),
        ];
        let texts = [
            "ip,nw_dst=198.19.0.1,table=1,priority=5   actions=mod_dl_src:02:00:00:00:00:01,output:3",
            "table=0,priority=9,in_port=2 actions=goto_table:1",
            " table=2,priority=1,ip actions=drop",
            "table=2,priority=1,ip actions=output:4",
        ];
        let changes: Vec<weft_flow::FlowMod> = texts
            .iter()
            .map(|t| weft_flow::FlowMod::Add { flow: flow(t) })
            .collect();
        let net = NetChange {
            added_as_sent: &changes,
            ..NetChange::default()
        };
        store
            .append_net_text(&net, &|i| lines.get(i).copied().flatten())
            .unwrap();
        let j = fs::read_to_string(d.join(JOURNAL_FILE)).unwrap();
        assert!(
            j.contains(&format!("\n+ {}\n", texts[0])),
            "the line as sent: {j}"
        );
        assert!(
            j.contains("\n+ table=2,priority=1,ip actions=drop\n"),
            "trimmed: {j}"
        );
        assert!(
            j.contains(&format!("\n+ {}\n", flow(texts[1]))),
            "printed without a line: {j}"
        );
        let mut want: Vec<Flow> = [0, 1, 3].iter().map(|i| flow(texts[*i])).collect();
        want.sort_by_key(|f| f.to_string());
        let got = sorted(load(&d).unwrap().unwrap());
        assert_eq!(got.flows, want);
    }

    #[test]
    fn the_journal_replays_on_the_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().join("s");
        let store = StateDir::new(&d);
        let s = sample();
        for p in &s.ports {
            store.append(&[Record::AddPort(p.clone())]).unwrap();
        }
        let adds: Vec<Record> = s.flows.iter().cloned().map(Record::AddFlow).collect();
        store.append(&adds).unwrap();
        assert!(!d.join(SNAPSHOT_FILE).exists(), "no snapshot yet");
        assert_eq!(load(&d).unwrap().map(sorted), Some(sorted(s.clone())));
        // Replace one flow, delete another, add to a table that is then cleared,
        // delete a port.
        let mut changed = flow("table=0,priority=0 actions=drop");
        store
            .append(&[
                Record::AddFlow(changed.clone()),
                Record::DelFlow(s.flows[0].clone()),
                Record::AddFlow(flow("table=5,priority=1 actions=drop")),
            ])
            .unwrap();
        store.append(&[Record::ClearTable(5)]).unwrap();
        store.append(&[Record::DelPort("vx0".into())]).unwrap();
        let got = load(&d).unwrap().unwrap();
        assert_eq!(got.ports.len(), 1);
        assert_eq!(got.ports[0].name, "pod1");
        changed.cookie = 0;
        assert_eq!(got.flows, vec![changed.clone()]);
        // A snapshot now, more changes after: both read back.
        let seq = store.begin_snapshot().unwrap();
        assert_eq!(seq, 6);
        store
            .append(&[Record::AddFlow(flow("table=1,priority=9 actions=drop"))])
            .unwrap();
        store
            .write_snapshot(seq, &got.ports, &mut |each| {
                for f in &got.flows {
                    each(f.clone());
                }
            })
            .unwrap();
        assert!(!d.join(OLD_JOURNAL_FILE).exists());
        let after = load(&d).unwrap().unwrap();
        assert_eq!(after.flows.len(), 2, "{after:?}");
        let text = fs::read_to_string(d.join(SNAPSHOT_FILE)).unwrap();
        assert!(
            text.starts_with("weft-snapshot 2 seq=6 ports=1\n"),
            "{text}"
        );
        // A store opened again (a restart) goes on from the last number.
        drop(store);
        let store = StateDir::new(&d);
        store.append(&[Record::DelFlow(changed)]).unwrap();
        let j = fs::read_to_string(d.join(JOURNAL_FILE)).unwrap();
        assert!(j.contains("#8 "), "{j}");
        assert_eq!(load(&d).unwrap().unwrap().flows.len(), 1);
    }

    #[test]
    fn an_entry_longer_than_a_write_chunk_reads_back_and_a_cut_between_chunks_is_torn() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = StateDir::new(d);
        store
            .append(&[Record::AddFlow(flow("priority=1 actions=drop"))])
            .unwrap();
        let big: Vec<Record> = (0..6000)
            .map(|i| {
                Record::AddFlow(flow(&format!(
                    "table=10,priority=100,ip,nw_dst=198.19.{}.{},tcp,tp_dst={} \
                     actions=load:0x{i:x}->NXM_NX_REG0[],goto_table:20",
                    i / 250,
                    i % 250 + 1,
                    i % 60000 + 1
                )))
            })
            .collect();
        store.append(&big).unwrap();
        drop(store);
        let path = d.join(JOURNAL_FILE);
        let whole = fs::read(&path).unwrap();
        let second = whole.iter().rposition(|b| *b == b'#').unwrap();
        assert!(
            whole.len() - second > 3 * WRITE_CHUNK,
            "the entry spans several write(2) calls: {} bytes",
            whole.len() - second
        );
        assert_eq!(load(d).unwrap().unwrap().flows.len(), 6001);
        // A process killed between two of its writes leaves whole chunks of it.
        fs::write(&path, &whole[..second + 2 * WRITE_CHUNK]).unwrap();
        assert_eq!(
            load(d).unwrap().unwrap().flows,
            vec![flow("priority=1 actions=drop")]
        );
    }

    #[test]
    fn a_torn_last_entry_is_ignored_and_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = StateDir::new(d);
        store
            .append(&[Record::AddFlow(flow("priority=1 actions=drop"))])
            .unwrap();
        store
            .append(&[Record::AddFlow(flow("priority=2 actions=drop"))])
            .unwrap();
        drop(store);
        let path = d.join(JOURNAL_FILE);
        let whole = fs::read(&path).unwrap();
        // Every cut inside the second entry (its header or its records) loses that
        // entry only.
        let second = whole.iter().rposition(|b| *b == b'#').unwrap();
        for cut in [second + 1, second + 5, whole.len() - 1] {
            fs::write(&path, &whole[..cut]).unwrap();
            let got = load(d).unwrap().unwrap();
            assert_eq!(
                got.flows,
                vec![flow("priority=1 actions=drop")],
                "cut at {cut}"
            );
        }
        // Garbled rather than short: the hash tells.
        let mut bad = whole.clone();
        let last = bad.len() - 3;
        bad[last] ^= 1;
        fs::write(&path, &bad).unwrap();
        assert_eq!(load(d).unwrap().unwrap().flows.len(), 1);
        // The next run cuts the torn tail off before it appends.
        let store = StateDir::new(d);
        store
            .append(&[Record::AddFlow(flow("priority=3 actions=drop"))])
            .unwrap();
        let got = sorted(load(d).unwrap().unwrap());
        assert_eq!(
            got.flows,
            vec![
                flow("priority=1 actions=drop"),
                flow("priority=3 actions=drop")
            ]
        );
        // A whole entry that does not parse is corruption, not a torn tail.
        let mut j = fs::read(&path).unwrap();
        let payload = b"+ table=999 actions=drop\n";
        j.extend_from_slice(format!("#9 {} {:016x}\n", payload.len(), hash(payload)).as_bytes());
        j.extend_from_slice(payload);
        fs::write(&path, &j).unwrap();
        let e = load(d).unwrap_err().to_string();
        assert!(e.contains("is corrupt (entry 9"), "{e}");
    }

    #[test]
    fn a_crash_at_any_step_of_a_snapshot_loses_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let store = StateDir::new(d);
        let f = |p: u16| flow(&format!("priority={p} actions=drop"));
        let all = |n: u16| (1..=n).map(f).collect::<Vec<_>>();
        for p in 1..=3 {
            store.append(&[Record::AddFlow(f(p))]).unwrap();
        }
        // Crash after the rotation, before the snapshot: journal.old + journal.
        let seq = store.begin_snapshot().unwrap();
        assert!(d.join(OLD_JOURNAL_FILE).exists());
        store.append(&[Record::AddFlow(f(4))]).unwrap();
        assert_eq!(sorted(load(d).unwrap().unwrap()).flows, all(4));
        // A snapshot that cannot be written (a directory in the temporary file's
        // place): journal.old stays, nothing is lost.
        fs::create_dir(d.join(TMP_FILE)).unwrap();
        let walk_all = |n: u16| {
            move |each: &mut dyn FnMut(Flow) -> bool| {
                for x in all(n) {
                    each(x);
                }
            }
        };
        assert!(store.write_snapshot(seq, &[], &mut walk_all(3)).is_err());
        assert!(d.join(OLD_JOURNAL_FILE).exists());
        assert_eq!(sorted(load(d).unwrap().unwrap()).flows, all(4));
        fs::remove_dir(d.join(TMP_FILE)).unwrap();
        // The next snapshot does not rotate again (journal.old is still needed) and
        // covers both journals up to its number.
        store.append(&[Record::AddFlow(f(5))]).unwrap();
        let seq = store.begin_snapshot().unwrap();
        assert_eq!(seq, 5);
        store.append(&[Record::AddFlow(f(6))]).unwrap();
        // Crash after the snapshot's rename, before journal.old is removed: the
        // entries it covers are skipped, not applied twice.
        write_snapshot_file(d, seq, &[], &mut walk_all(5)).unwrap();
        store.append(&[Record::DelFlow(f(1))]).unwrap();
        let got = sorted(load(d).unwrap().unwrap()).flows;
        assert_eq!(got, all(6)[1..].to_vec());
        store.write_snapshot(seq, &[], &mut walk_all(5)).unwrap();
        assert!(!d.join(OLD_JOURNAL_FILE).exists());
        assert_eq!(
            sorted(load(d).unwrap().unwrap()).flows,
            all(6)[1..].to_vec()
        );
    }

    #[test]
    fn state_json_is_read_and_converted_to_a_snapshot() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let s = sample();
        let mut json = serde_json::to_vec_pretty(&s).unwrap();
        json.push(b'\n');
        fs::write(state_path(d), &json).unwrap();
        let store = StateDir::new(d);
        assert_eq!(store.load().unwrap(), Some(s.clone()));
        assert!(!state_path(d).exists(), "converted");
        assert!(d.join(SNAPSHOT_FILE).exists());
        assert_eq!(load(d).unwrap(), Some(s));
    }

    #[test]
    fn a_journal_that_is_not_a_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join(JOURNAL_FILE)).unwrap();
        let e = load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("is a symbolic link to '/etc/passwd'"), "{e}");
        assert!(
            StateDir::new(dir.path())
                .append(&[Record::ClearTable(1)])
                .is_err()
        );
    }
}
