//! Running setup code inside a network namespace given by name or by path.
//!
//! A network namespace is a property of a thread, and a TAP device or a socket belongs
//! to the namespace of the thread that created it, for good. So a port that lives in a
//! pod's namespace is opened from a short-lived thread that has entered it; the file
//! descriptors it returns keep working from any thread afterwards. A port's `netns=` is
//! either a name, `/var/run/netns/NAME` (the place `ip netns add` puts them), or an
//! absolute path to a namespace file, as container runtimes pass them
//! (`/proc/PID/ns/net`, a bind mount such as `/var/run/netns/cni-1234`).

use std::fs::File;
use std::io;
use std::path::PathBuf;

use nix::sched::{CloneFlags, setns};

/// Where `ip netns` keeps named namespaces.
pub const NETNS_DIR: &str = "/var/run/netns";

/// The path of a namespace: `name` itself when it is an absolute path, else
/// `/var/run/netns/NAME`.
pub fn netns_path(name: &str) -> PathBuf {
    if name.starts_with('/') {
        PathBuf::from(name)
    } else {
        PathBuf::from(NETNS_DIR).join(name)
    }
}

/// How errors name a namespace: `'NAME' (PATH)` for a name, `PATH` for a path.
fn describe(name: &str) -> String {
    if name.starts_with('/') {
        name.to_string()
    } else {
        format!("'{name}' ({})", netns_path(name).display())
    }
}

/// The identity of a network namespace: the device and inode of its nsfs file, which
/// two names (or a name and weftd's own namespace) share when they are one namespace.
pub type NetnsId = (u64, u64);

/// The identity of namespace `name` (`None`: the calling thread's own).
pub fn netns_id(name: Option<&str>) -> io::Result<NetnsId> {
    use std::os::unix::fs::MetadataExt;
    let path = match name {
        Some(n) => netns_path(n),
        None => PathBuf::from("/proc/thread-self/ns/net"),
    };
    let m = std::fs::metadata(&path).map_err(|e| match name {
        Some(n) => io::Error::new(e.kind(), format!("network namespace {}: {e}", describe(n))),
        None => io::Error::new(e.kind(), format!("{}: {e}", path.display())),
    })?;
    Ok((m.dev(), m.ino()))
}

/// Runs `f` on a thread inside namespace `name` (or on the calling thread when `name`
/// is `None`) and returns its result.
pub fn in_netns<T, F>(name: Option<&str>, f: F) -> io::Result<T>
where
    T: Send,
    F: FnOnce() -> io::Result<T> + Send,
{
    let Some(name) = name else {
        return f();
    };
    let path = netns_path(name);
    let ns = File::open(&path).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!("network namespace {}: {e}", describe(name)),
        )
    })?;
    std::thread::scope(|s| {
        s.spawn(move || {
            setns(&ns, CloneFlags::CLONE_NEWNET).map_err(|e| {
                io::Error::other(format!(
                    "entering network namespace {}: {e}",
                    describe(name)
                ))
            })?;
            f()
        })
        .join()
        .map_err(|_| io::Error::other("namespace thread panicked"))?
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_namespace_is_a_clear_error() {
        let err = in_netns(Some("weft-no-such-namespace"), || Ok(())).unwrap_err();
        assert!(
            err.to_string().contains("weft-no-such-namespace"),
            "error names the namespace: {err}"
        );
    }

    #[test]
    fn missing_namespace_has_no_identity() {
        let err = netns_id(Some("weft-no-such-namespace")).unwrap_err();
        assert!(err.to_string().contains("weft-no-such-namespace"), "{err}");
        let own = netns_id(None).unwrap();
        assert_eq!(own, netns_id(None).unwrap(), "stable");
    }

    #[test]
    fn a_path_is_used_as_it_is() {
        assert_eq!(netns_path("pod1"), PathBuf::from("/var/run/netns/pod1"));
        assert_eq!(
            netns_path("/proc/1/ns/net"),
            PathBuf::from("/proc/1/ns/net")
        );
        // weftd's own namespace, by path: the same identity as "the calling thread's".
        assert_eq!(
            netns_id(Some("/proc/thread-self/ns/net")).unwrap(),
            netns_id(None).unwrap()
        );
        let err = netns_id(Some("/weft/no/such/ns")).unwrap_err().to_string();
        assert!(
            err.starts_with("network namespace /weft/no/such/ns: "),
            "{err}"
        );
        let err = in_netns(Some("/weft/no/such/ns"), || Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.starts_with("network namespace /weft/no/such/ns: "),
            "{err}"
        );
    }

    #[test]
    fn a_file_that_is_no_namespace_is_refused() {
        let err = in_netns(Some("/proc/self/status"), || Ok(()))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("entering network namespace /proc/self/status"),
            "{err}"
        );
    }

    #[test]
    fn no_namespace_runs_here() {
        let here = std::thread::current().id();
        let ran = in_netns(None, || Ok(std::thread::current().id())).unwrap();
        assert_eq!(ran, here);
    }
}
