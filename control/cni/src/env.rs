//! The runtime's environment variables (`CNI_COMMAND`, `CNI_CONTAINERID`, ...), checked
//! per command as the spec requires them.

use std::path::PathBuf;

use crate::error::{CniError, code};

/// The operation the runtime asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Attach a container.
    Add,
    /// Detach a container (succeeds when it is already gone).
    Del,
    /// Verify an attachment.
    Check,
    /// Report the supported versions.
    Version,
    /// Whether the plugin can take ADDs (1.1).
    Status,
    /// Remove every attachment not in a list (1.1).
    Gc,
}

impl Command {
    /// Parses `CNI_COMMAND`.
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "VERSION" => Command::Version,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            _ => return None,
        })
    }

    /// The spec's name of the command.
    pub fn name(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Version => "VERSION",
            Command::Status => "STATUS",
            Command::Gc => "GC",
        }
    }
}

/// The environment of one invocation, validated for its command.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Env {
    /// `CNI_COMMAND`.
    pub command: Command,
    /// `CNI_CONTAINERID` (ADD, DEL, CHECK).
    pub container_id: Option<String>,
    /// `CNI_NETNS` (ADD, CHECK; optional for DEL).
    pub netns: Option<String>,
    /// `CNI_IFNAME` (ADD, DEL, CHECK).
    pub ifname: Option<String>,
    /// `CNI_ARGS` as given (passed unchanged to the IPAM plugin).
    pub args_raw: String,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`.
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`.
    pub pod_name: Option<String>,
    /// `CNI_PATH`, split on `:` (every command but VERSION).
    pub path: Vec<PathBuf>,
}

fn bad_env(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_ENV, msg)
}

impl Env {
    /// Reads and checks the variables through `var` (`std::env::var` in the binary).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Env, CniError> {
        let raw = var("CNI_COMMAND").ok_or_else(|| bad_env("CNI_COMMAND is not set"))?;
        let command = Command::parse(&raw).ok_or_else(|| {
            bad_env(format!(
                "CNI_COMMAND {raw:?} is not one of ADD, DEL, CHECK, VERSION, STATUS, GC"
            ))
        })?;
        let mut env = Env {
            command,
            container_id: None,
            netns: None,
            ifname: None,
            args_raw: String::new(),
            pod_namespace: None,
            pod_name: None,
            path: Vec::new(),
        };
        if command == Command::Version {
            return Ok(env);
        }
        let required = |name: &str| -> Result<String, CniError> {
            match var(name) {
                Some(v) if !v.is_empty() => Ok(v),
                _ => Err(bad_env(format!(
                    "{name} is not set (required for {})",
                    command.name()
                ))),
            }
        };
        let path = required("CNI_PATH")?;
        env.path = path
            .split(':')
            .filter(|p| !p.is_empty())
            .map(PathBuf::from)
            .collect();
        if matches!(command, Command::Status | Command::Gc) {
            return Ok(env);
        }
        let cid = required("CNI_CONTAINERID")?;
        validate_container_id(&cid)?;
        env.container_id = Some(cid);
        let ifname = required("CNI_IFNAME")?;
        validate_ifname(&ifname)?;
        env.ifname = Some(ifname);
        env.netns = match command {
            Command::Del => var("CNI_NETNS").filter(|v| !v.is_empty()),
            _ => Some(required("CNI_NETNS")?),
        };
        env.args_raw = var("CNI_ARGS").unwrap_or_default();
        for (k, v) in parse_args(&env.args_raw)? {
            match k {
                "K8S_POD_NAMESPACE" => env.pod_namespace = Some(v.to_string()),
                "K8S_POD_NAME" => env.pod_name = Some(v.to_string()),
                _ => {}
            }
        }
        Ok(env)
    }

    /// The container id (present for ADD, DEL and CHECK).
    pub fn container_id(&self) -> &str {
        self.container_id.as_deref().unwrap_or_default()
    }

    /// The interface name (present for ADD, DEL and CHECK).
    pub fn ifname(&self) -> &str {
        self.ifname.as_deref().unwrap_or_default()
    }
}

/// Splits `CNI_ARGS` (`A=1;B=2`); an entry without `=` is an error.
pub fn parse_args(raw: &str) -> Result<Vec<(&str, &str)>, CniError> {
    raw.split(';')
        .filter(|kv| !kv.is_empty())
        .map(|kv| {
            kv.split_once('=')
                .filter(|(k, _)| !k.is_empty())
                .ok_or_else(|| bad_env(format!("CNI_ARGS entry {kv:?} is not KEY=VALUE")))
        })
        .collect()
}

/// The spec: a container id is non-empty, starts with an alphanumeric character and has
/// only alphanumerics, `_`, `.` and `-`.
pub fn validate_container_id(id: &str) -> Result<(), CniError> {
    let ok_first = id.chars().next().is_some_and(|c| c.is_ascii_alphanumeric());
    let ok_rest = id
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok_first && ok_rest {
        Ok(())
    } else {
        Err(bad_env(format!(
            "CNI_CONTAINERID {id:?} has characters other than letters, digits, '_', '.', '-' \
             (or does not start with a letter or digit)"
        )))
    }
}

/// The spec: an interface name has at most 15 bytes, is not `.` or `..`, and has no
/// `/`, `:` or whitespace.
pub fn validate_ifname(name: &str) -> Result<(), CniError> {
    let why = if name.len() > 15 {
        Some("is longer than 15 bytes")
    } else if name == "." || name == ".." {
        Some("is . or ..")
    } else if name
        .chars()
        .any(|c| c == '/' || c == ':' || c.is_whitespace())
    {
        Some("contains '/', ':' or whitespace")
    } else {
        None
    };
    match why {
        None => Ok(()),
        Some(why) => Err(bad_env(format!("CNI_IFNAME {name:?} {why}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<Env, CniError> {
        let m: HashMap<String, String> = pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Env::from_vars(|k| m.get(k).cloned())
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "default-c1"),
        ("CNI_NETNS", "/proc/42/ns/net"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        (
            "CNI_ARGS",
            "IgnoreUnknown=1;K8S_POD_NAMESPACE=web;K8S_POD_NAME=front-1",
        ),
    ];

    #[test]
    fn add_reads_every_variable_and_the_pod_identity() {
        let e = env(ADD).unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.container_id(), "default-c1");
        assert_eq!(e.netns.as_deref(), Some("/proc/42/ns/net"));
        assert_eq!(e.ifname(), "eth0");
        assert_eq!(
            e.path,
            vec![PathBuf::from("/opt/cni/bin"), PathBuf::from("/usr/lib/cni")]
        );
        assert_eq!(e.pod_namespace.as_deref(), Some("web"));
        assert_eq!(e.pod_name.as_deref(), Some("front-1"));
    }

    #[test]
    fn each_missing_required_variable_is_code_4_naming_it() {
        for missing in ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"] {
            let pairs: Vec<_> = ADD.iter().copied().filter(|(k, _)| *k != missing).collect();
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{missing}");
            assert!(e.msg.contains(missing), "{missing}: {}", e.msg);
        }
        let e = env(&[]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("CNI_COMMAND"));
        let e = env(&[("CNI_COMMAND", "ATTACH")]).unwrap_err();
        assert_eq!(e.code, 4);
        assert!(e.msg.contains("ATTACH"));
    }

    #[test]
    fn del_needs_no_netns_and_version_status_gc_need_less() {
        let pairs: Vec<_> = ADD
            .iter()
            .copied()
            .filter(|(k, _)| *k != "CNI_NETNS")
            .map(|(k, v)| {
                if k == "CNI_COMMAND" {
                    (k, "DEL")
                } else {
                    (k, v)
                }
            })
            .collect();
        let e = env(&pairs).unwrap();
        assert_eq!(e.netns, None);
        assert_eq!(
            env(&[("CNI_COMMAND", "VERSION")]).unwrap().command,
            Command::Version
        );
        for c in ["STATUS", "GC"] {
            assert!(env(&[("CNI_COMMAND", c), ("CNI_PATH", "/x")]).is_ok());
            assert_eq!(env(&[("CNI_COMMAND", c)]).unwrap_err().code, 4);
        }
    }

    #[test]
    fn bad_ids_names_and_args_are_code_4() {
        for (k, v) in [
            ("CNI_CONTAINERID", "-c1"),
            ("CNI_CONTAINERID", "c/1"),
            ("CNI_IFNAME", "eth0:1"),
            ("CNI_IFNAME", "a-very-long-ifname"),
            ("CNI_IFNAME", ".."),
            ("CNI_ARGS", "K8S_POD_NAME"),
            ("CNI_ARGS", "=x"),
        ] {
            let pairs: Vec<_> = ADD
                .iter()
                .copied()
                .map(|(a, b)| if a == k { (a, v) } else { (a, b) })
                .collect();
            let e = env(&pairs).unwrap_err();
            assert_eq!(e.code, code::INVALID_ENV, "{k}={v}");
            assert!(e.msg.contains(k), "{k}={v}: {}", e.msg);
        }
    }
}
