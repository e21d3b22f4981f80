//! The persisted state: every port (with its number) and every flow, in
//! `<state_dir>/state.json`.
//!
//! `weftd` writes it after each change and reads it at start, so a restarted node
//! forwards again with the same port numbers and flows before any controller has
//! reconnected. The file is replaced atomically ([`save`]: write a temporary file in
//! the same directory, fsync it, rename it over `state.json`, fsync the directory), so
//! a crash leaves either the old state or the new one, never a torn file. A leftover
//! `state.json.tmp` from a crash is never read and is overwritten by the next save.
//!
//! A file that cannot be read or understood is an error, not an empty state: starting
//! empty would silently drop the node's flows (and, with them, its pods' traffic).
//! The error says so and tells the operator to move the file aside. The same for a
//! `state.json` that is not a regular file: a symbolic link (dangling or not: [`save`]
//! would replace the link with a file, so it would not keep pointing where the
//! operator meant) or a FIFO, device or directory (which would hang or fail the read).
//!
//! One writer at a time: the caller serialises calls to [`save`] (they share the
//! temporary file's name).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use serde::Deserialize;
pub use weft_datapath::state::{FORMAT, SavedState, StateStore};

/// The state file's name inside the state directory.
pub const STATE_FILE: &str = "state.json";
/// The temporary file written before the rename.
pub const TMP_FILE: &str = "state.json.tmp";

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
        "{} has format version {found}, this weftd reads version {FORMAT}; \
         weftd will not start rather than drop the node's ports and flows \
         (run a weftd that reads it, or move the file aside to start empty)",
        path.display()
    )]
    Version {
        /// The state file.
        path: PathBuf,
        /// The version found.
        found: u64,
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

/// The state file's path in `dir`.
pub fn state_path(dir: &Path) -> PathBuf {
    dir.join(STATE_FILE)
}

/// Reads `<dir>/state.json`. `Ok(None)` when there is no such file (a first start).
pub fn load(dir: &Path) -> Result<Option<SavedState>, StateError> {
    use std::io::Read;
    use std::os::unix::fs::FileTypeExt;
    let path = state_path(dir);
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
            Some(n) => return Err(StateError::Version { path, found: n }),
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

/// Writes `state` to `<dir>/state.json` atomically: a temporary file in the same
/// directory, fsync, rename, fsync of the directory. Creates `dir` (mode 0700) if it
/// is missing.
pub fn save(dir: &Path, state: &SavedState) -> Result<(), StateError> {
    let werr = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StateError::Write { path, source }
    };
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(werr(dir))?;
    let mut json = serde_json::to_vec_pretty(state)
        .map_err(|e| werr(dir)(io::Error::new(io::ErrorKind::InvalidData, e)))?;
    json.push(b'\n');
    let tmp = dir.join(TMP_FILE);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(werr(&tmp))?;
    f.write_all(&json).map_err(werr(&tmp))?;
    f.sync_all().map_err(werr(&tmp))?;
    drop(f);
    let path = state_path(dir);
    fs::rename(&tmp, &path).map_err(werr(&path))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(werr(dir))?;
    Ok(())
}

/// The switch's [`StateStore`]: [`save`] into a state directory.
#[derive(Clone, Debug)]
pub struct StateDir(pub PathBuf);

impl StateStore for StateDir {
    fn save(&self, state: &SavedState) -> io::Result<()> {
        save(&self.0, state).map_err(io::Error::other)
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
        let fmode = fs::metadata(state_path(&sub)).unwrap().permissions().mode() & 0o777;
        assert_eq!(fmode, 0o600);
        assert!(!sub.join(TMP_FILE).exists());
        // Saving again replaces it.
        let empty = SavedState::default();
        save(&sub, &empty).unwrap();
        assert_eq!(load(&sub).unwrap(), Some(empty));
        // Pretty JSON that names things.
        save(&sub, &s).unwrap();
        let text = fs::read_to_string(state_path(&sub)).unwrap();
        assert!(text.contains("\n  \"format\": 1"), "{text}");
        assert!(text.contains("\"ofport\": 2"), "{text}");
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
        std::os::unix::fs::symlink(state_path(&real), &path).unwrap();
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

    #[test]
    fn state_dir_is_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let store = StateDir(dir.path().join("s"));
        let s = sample();
        StateStore::save(&store, &s).unwrap();
        assert_eq!(load(&dir.path().join("s")).unwrap(), Some(s));
        // The error keeps the file's path and the reason.
        fs::create_dir(dir.path().join("s").join(TMP_FILE)).unwrap();
        let e = StateStore::save(&store, &SavedState::default()).unwrap_err();
        assert!(e.to_string().starts_with("cannot save state to "), "{e}");
        assert!(e.to_string().contains(TMP_FILE), "{e}");
    }
}
