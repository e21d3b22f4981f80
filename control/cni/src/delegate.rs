//! Delegation to the IPAM plugin, as the spec describes it: the plugin is found in
//! `CNI_PATH`, run with the same environment (only `CNI_COMMAND` changes when an ADD is
//! undone) and the full config on stdin; its stderr goes straight to ours, its stdout is
//! its result or its error.
//!
//! Debian's host-local (containernetworking-plugins 1.1.1) speaks CNI only up to 1.0.0,
//! so the delegate is first asked `VERSION` and handed the highest version both sides
//! speak; GC and STATUS are delegated only to a plugin that speaks 1.1.0. For a
//! host-local that cannot GC, [`sweep_host_local`] removes its reservations of
//! attachments not in the GC list itself (see there why).

use std::collections::HashSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{Map, Value};
use weft_agent_proto::Attachment;

use crate::config::SUPPORTED_VERSIONS;
use crate::error::{CniError, code};
use crate::types::CniResult;

/// An IPAM plugin found in `CNI_PATH`.
#[derive(Clone, Debug)]
pub struct Delegate {
    /// Its type (the file name).
    pub kind: String,
    /// Its path.
    pub path: PathBuf,
}

impl Delegate {
    /// Finds `kind` in the `CNI_PATH` directories (first match wins).
    pub fn find(kind: &str, cni_path: &[PathBuf]) -> Result<Delegate, CniError> {
        for dir in cni_path {
            let p = dir.join(kind);
            if p.is_file() {
                return Ok(Delegate {
                    kind: kind.to_string(),
                    path: p,
                });
            }
        }
        Err(CniError::new(
            code::INVALID_ENV,
            format!(
                "the IPAM plugin {kind} is not in CNI_PATH ({})",
                cni_path
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect::<Vec<_>>()
                    .join(":")
            ),
        ))
    }

    /// Runs it with `CNI_COMMAND=command` and `stdin`; its stdout on success, its own
    /// error (code and message, prefixed with its name) on failure.
    pub fn exec(&self, command: &str, stdin: &[u8]) -> Result<Vec<u8>, CniError> {
        let mut child = Command::new(&self.path)
            .env("CNI_COMMAND", command)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(|e| {
                CniError::new(code::IO, format!("cannot run {}: {e}", self.path.display()))
            })?;
        if let Some(mut input) = child.stdin.take() {
            // A plugin that exits without reading is judged by its exit status below.
            let _ = input.write_all(stdin);
        }
        let out = child
            .wait_with_output()
            .map_err(|e| CniError::new(code::IO, format!("waiting for {}: {e}", self.kind)))?;
        if out.status.success() {
            return Ok(out.stdout);
        }
        Err(match serde_json::from_slice::<CniError>(&out.stdout) {
            Ok(mut e) => {
                e.msg = format!("{} {command}: {}", self.kind, e.msg);
                e
            }
            Err(_) => CniError::new(
                code::IO,
                format!(
                    "{} {command} failed ({}): {}",
                    self.kind,
                    out.status,
                    String::from_utf8_lossy(&out.stdout).trim()
                ),
            ),
        })
    }

    /// The versions it speaks (its `VERSION` answer).
    pub fn versions(&self, ours: &str) -> Result<Vec<String>, CniError> {
        let out = self.exec(
            "VERSION",
            format!("{{\"cniVersion\":\"{ours}\"}}").as_bytes(),
        )?;
        #[derive(serde::Deserialize)]
        #[serde(rename_all = "camelCase")]
        struct V {
            supported_versions: Vec<String>,
        }
        let v: V = serde_json::from_slice(&out).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("{} VERSION printed no version list: {e}", self.kind),
            )
        })?;
        Ok(v.supported_versions)
    }

    /// The version to hand it: ours if it speaks it, else the highest of ours it
    /// speaks; code 1 if none.
    pub fn negotiate(&self, ours: &str) -> Result<String, CniError> {
        let theirs = self.versions(ours)?;
        if theirs.iter().any(|v| v == ours) {
            return Ok(ours.to_string());
        }
        SUPPORTED_VERSIONS
            .iter()
            .rev()
            .find(|v| theirs.iter().any(|t| t == *v))
            .map(|v| v.to_string())
            .ok_or_else(|| {
                CniError::new(
                    code::INCOMPATIBLE_VERSION,
                    format!(
                        "the IPAM plugin {} speaks {} and weft-cni {}: none in common",
                        self.kind,
                        theirs.join(", "),
                        SUPPORTED_VERSIONS.join(", ")
                    ),
                )
            })
    }
}

/// The full config for the delegate: ours with `ipam` replaced and `cniVersion` set to
/// `version` (and `prevResult` dropped when the version changes: its format is ours).
pub fn delegate_config(
    raw: &Map<String, Value>,
    ipam: Map<String, Value>,
    version: &str,
) -> Vec<u8> {
    let mut m = raw.clone();
    if m.get("cniVersion").and_then(Value::as_str) != Some(version) {
        m.remove("prevResult");
        m.insert("cniVersion".into(), Value::String(version.into()));
    }
    m.insert("ipam".into(), Value::Object(ipam));
    serde_json::to_vec(&Value::Object(m)).unwrap_or_default()
}

/// Parses an IPAM plugin's ADD result.
pub fn parse_result(kind: &str, out: &[u8]) -> Result<CniResult, CniError> {
    serde_json::from_slice(out).map_err(|e| {
        CniError::new(
            code::DECODE,
            format!("{kind} ADD printed something that is not a CNI result: {e}"),
        )
    })
}

/// GC for a host-local that cannot do it itself (Debian's 1.1.1): removes, under
/// host-local's own lock, every reservation in `dir` whose `(container id, ifname)` is
/// not in `keep`. Returns the addresses released.
///
/// Why here and not nowhere: leaked host-local files are the classic cause of "no IP
/// addresses available" after crashes, and GC is the spec's answer to exactly that; the
/// file format (one file per address named by it, holding `"<cid>\r\n<ifname>"`, plus
/// `lock` and `last_reserved_ip.N`) is host-local's stable on-disk contract, and taking
/// its `lock` with flock(2) is what host-local does, so the sweep never races an ADD or
/// DEL of host-local. Files that do not name an address are left alone.
pub fn sweep_host_local(dir: &Path, keep: &[Attachment]) -> Result<Vec<String>, CniError> {
    let keep: HashSet<(&str, &str)> = keep
        .iter()
        .map(|a| (a.container_id.as_str(), a.ifname.as_str()))
        .collect();
    remove_reservations(dir, |cid, ifname| match ifname {
        Some(ifname) => !keep.contains(&(cid, ifname)),
        // Reservations from before host-local recorded the ifname hold only the id.
        None => !keep.iter().any(|(c, _)| *c == cid),
    })
}

/// DEL for host-local when its config cannot be completed (the agent is away and there
/// is no prevResult, so the subnet is unknown): releases the reservations of this one
/// attachment the same way [`sweep_host_local`] does, so DEL still gives back the
/// address.
pub fn release_host_local(dir: &Path, attachment: &Attachment) -> Result<Vec<String>, CniError> {
    remove_reservations(dir, |cid, ifname| {
        cid == attachment.container_id && ifname.is_none_or(|i| i == attachment.ifname)
    })
}

/// Removes, under host-local's lock, the reservations in `dir` for which `remove(cid,
/// ifname)` says so; returns their addresses.
fn remove_reservations(
    dir: &Path,
    remove: impl Fn(&str, Option<&str>) -> bool,
) -> Result<Vec<String>, CniError> {
    use nix::fcntl::{Flock, FlockArg};
    let io = |what: &str, e: std::io::Error| {
        CniError::new(
            code::IO,
            format!("host-local GC: {what} {}: {e}", dir.display()),
        )
    };
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io("reading", e)),
    };
    let lock_file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(dir.join("lock"))
        .map_err(|e| io("opening the lock of", e))?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive)
        .map_err(|(_, e)| io("locking", std::io::Error::from(e)))?;
    let mut released = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.parse::<std::net::IpAddr>().is_err() {
            continue;
        }
        let Ok(content) = std::fs::read_to_string(e.path()) else {
            continue;
        };
        let mut parts = content.split("\r\n").map(str::trim);
        let cid = parts.next().unwrap_or_default();
        if remove(cid, parts.next().filter(|s| !s.is_empty())) {
            std::fs::remove_file(e.path()).map_err(|e| io("removing a file in", e))?;
            released.push(name);
        }
    }
    released.sort();
    Ok(released)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_sweep_keeps_listed_attachments_and_other_files() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, c: &str| std::fs::write(d.path().join(n), c).unwrap();
        w("198.19.1.2", "c1\r\neth0");
        w("198.19.1.3", "c2\r\neth0");
        w("198.19.1.4", "c1\r\neth1");
        w("198.19.1.5", "c3");
        w("last_reserved_ip.0", "198.19.1.5");
        let keep = vec![Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        }];
        let gone = sweep_host_local(d.path(), &keep).unwrap();
        assert_eq!(gone, vec!["198.19.1.3", "198.19.1.4", "198.19.1.5"]);
        assert!(d.path().join("198.19.1.2").exists());
        assert!(d.path().join("last_reserved_ip.0").exists());
        assert!(d.path().join("lock").exists());
        assert_eq!(
            sweep_host_local(&d.path().join("absent"), &keep).unwrap(),
            Vec::<String>::new()
        );
    }

    #[test]
    fn release_removes_only_that_attachments_reservation() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("198.19.1.2"), "c1\r\neth0").unwrap();
        std::fs::write(d.path().join("198.19.1.3"), "c1\r\neth1").unwrap();
        std::fs::write(d.path().join("198.19.1.4"), "c2\r\neth0").unwrap();
        let a = Attachment {
            container_id: "c1".into(),
            ifname: "eth0".into(),
        };
        assert_eq!(
            release_host_local(d.path(), &a).unwrap(),
            vec!["198.19.1.2"]
        );
        assert!(d.path().join("198.19.1.3").exists());
        assert!(d.path().join("198.19.1.4").exists());
        assert!(release_host_local(d.path(), &a).unwrap().is_empty());
    }

    #[test]
    fn the_delegate_config_is_ours_with_the_ipam_section_and_its_version() {
        let raw: Map<String, Value> = serde_json::from_str(
            r#"{"cniVersion":"1.1.0","name":"weft","type":"weft-cni","prevResult":{"ips":[]}}"#,
        )
        .unwrap();
        let ipam: Map<String, Value> = serde_json::from_str(r#"{"type":"host-local"}"#).unwrap();
        let v: Value =
            serde_json::from_slice(&delegate_config(&raw, ipam.clone(), "1.0.0")).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"cniVersion":"1.0.0","name":"weft","type":"weft-cni","ipam":{"type":"host-local"}})
        );
        let v: Value = serde_json::from_slice(&delegate_config(&raw, ipam, "1.1.0")).unwrap();
        assert!(v.get("prevResult").is_some());
    }

    #[test]
    fn a_missing_delegate_names_the_path() {
        let e = Delegate::find("host-local", &[PathBuf::from("/nonexistent")]).unwrap_err();
        assert_eq!(e.code, code::INVALID_ENV);
        assert!(e.msg.contains("/nonexistent"), "{}", e.msg);
    }
}
