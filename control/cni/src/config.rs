//! The network configuration on stdin: the conflist's `weft-cni` entry as the runtime
//! hands it over (with `cniVersion`, `name`, `runtimeConfig`, `prevResult` inserted).
//!
//! Weft's own keys: `agentSocket` (default [`weft_agent_proto::DEFAULT_SOCKET`]) and an
//! optional `ipam` section. Without `ipam` the plugin delegates to `host-local` with the
//! node's subnet and gateway from the agent; an `ipam` section of type `host-local`
//! without `ranges` gets them filled in the same way (so a config may set only, say,
//! `dataDir`); any other `ipam` section is passed on as it is. Unknown keys are kept and
//! passed on to the IPAM plugin with the rest of the config.

use std::path::PathBuf;

use serde_json::{Map, Value};
use weft_agent_proto::Attachment;

use crate::error::{CniError, code};
use crate::types::{CniResult, Dns};

/// The CNI versions this plugin speaks, oldest first.
pub const SUPPORTED_VERSIONS: &[&str] = &["1.0.0", "1.1.0"];

/// The IPAM plugin used when the config names none.
pub const DEFAULT_IPAM: &str = "host-local";

/// host-local's data directory unless the `ipam` section sets `dataDir`.
pub const HOST_LOCAL_DATA_DIR: &str = "/var/lib/cni/networks";

/// A parsed network configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct NetConf {
    /// The whole object as given (passed on to the IPAM plugin).
    pub raw: Map<String, Value>,
    /// `cniVersion` (one of [`SUPPORTED_VERSIONS`]).
    pub cni_version: String,
    /// `name`: the network's name.
    pub name: String,
    /// `agentSocket`.
    pub agent_socket: PathBuf,
    /// `ipam`, when given.
    pub ipam: Option<Map<String, Value>>,
    /// `dns`, when given (reported in ADD's result).
    pub dns: Option<Dns>,
    /// `prevResult`, when given.
    pub prev_result: Option<CniResult>,
    /// GC's `cni.dev/attachments`.
    pub attachments: Option<Vec<Attachment>>,
}

fn bad_config(msg: impl Into<String>) -> CniError {
    CniError::new(code::INVALID_CONFIG, msg)
}

/// Whether `version` is at least 1.1.0 (STATUS and GC exist from there).
pub fn at_least_1_1(version: &str) -> bool {
    version == "1.1.0"
}

impl NetConf {
    /// Parses stdin. Not JSON, or not an object: code 6; a missing or wrong field:
    /// code 7; a version this plugin does not speak: code 1.
    pub fn parse(stdin: &[u8]) -> Result<NetConf, CniError> {
        let value: Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(
                code::DECODE,
                format!("the network config on stdin is not JSON: {e}"),
            )
        })?;
        let Value::Object(raw) = value else {
            return Err(CniError::new(
                code::DECODE,
                "the network config on stdin is not a JSON object",
            ));
        };
        let cni_version = match raw.get("cniVersion") {
            Some(Value::String(v)) => v.clone(),
            Some(_) => return Err(bad_config("cniVersion is not a string")),
            None => return Err(bad_config("the network config has no cniVersion")),
        };
        if !SUPPORTED_VERSIONS.contains(&cni_version.as_str()) {
            return Err(CniError::new(
                code::INCOMPATIBLE_VERSION,
                format!(
                    "weft-cni does not speak CNI version {cni_version:?} (it speaks {})",
                    SUPPORTED_VERSIONS.join(", ")
                ),
            ));
        }
        let name = match raw.get("name") {
            Some(Value::String(n)) if !n.is_empty() => n.clone(),
            Some(Value::String(_)) => return Err(bad_config("name is empty")),
            Some(_) => return Err(bad_config("name is not a string")),
            None => return Err(bad_config("the network config has no name")),
        };
        if name.contains('/') || name == "." || name == ".." {
            return Err(bad_config(format!(
                "name {name:?} cannot be a directory name"
            )));
        }
        let agent_socket = match raw.get("agentSocket") {
            None => PathBuf::from(weft_agent_proto::DEFAULT_SOCKET),
            Some(Value::String(s)) if !s.is_empty() => PathBuf::from(s),
            Some(_) => return Err(bad_config("agentSocket is not a non-empty string")),
        };
        let ipam = match raw.get("ipam") {
            None => None,
            Some(Value::Object(m)) => {
                match m.get("type") {
                    None | Some(Value::String(_)) => {}
                    Some(_) => return Err(bad_config("ipam.type is not a string")),
                }
                if let Some(Value::String(t)) = m.get("type")
                    && (t.is_empty() || t.contains('/'))
                {
                    return Err(bad_config(format!("ipam.type {t:?} is not a plugin name")));
                }
                Some(m.clone())
            }
            Some(_) => return Err(bad_config("ipam is not an object")),
        };
        let dns = match raw.get("dns") {
            None => None,
            Some(v) => Some(
                serde_json::from_value(v.clone()).map_err(|e| bad_config(format!("dns: {e}")))?,
            ),
        };
        let prev_result = match raw.get("prevResult") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                serde_json::from_value(v.clone())
                    .map_err(|e| bad_config(format!("prevResult is not a CNI result: {e}")))?,
            ),
        };
        let attachments = match raw.get("cni.dev/attachments") {
            None => None,
            Some(v) => {
                #[derive(serde::Deserialize)]
                #[serde(rename_all = "camelCase")]
                struct Entry {
                    #[serde(rename = "containerID")]
                    container_id: String,
                    ifname: String,
                }
                let list: Vec<Entry> = serde_json::from_value(v.clone()).map_err(|e| {
                    bad_config(format!(
                        "cni.dev/attachments is not a list of {{containerID, ifname}}: {e}"
                    ))
                })?;
                Some(
                    list.into_iter()
                        .map(|e| Attachment {
                            container_id: e.container_id,
                            ifname: e.ifname,
                        })
                        .collect(),
                )
            }
        };
        Ok(NetConf {
            raw,
            cni_version,
            name,
            agent_socket,
            ipam,
            dns,
            prev_result,
            attachments,
        })
    }

    /// The IPAM plugin's type.
    pub fn ipam_type(&self) -> &str {
        self.ipam
            .as_ref()
            .and_then(|m| m.get("type"))
            .and_then(Value::as_str)
            .unwrap_or(DEFAULT_IPAM)
    }

    /// Whether the IPAM section must be completed with the node's subnet and gateway.
    pub fn ipam_needs_ranges(&self) -> bool {
        self.ipam_type() == DEFAULT_IPAM
            && !self
                .ipam
                .as_ref()
                .is_some_and(|m| m.contains_key("ranges") || m.contains_key("subnet"))
    }

    /// The IPAM section handed to the plugin: the config's, with `type` set and, for
    /// host-local without ranges, `ranges: [[{subnet, gateway}]]` from `range`.
    pub fn ipam_section(
        &self,
        range: Option<(ipnet::IpNet, std::net::IpAddr)>,
    ) -> Result<Map<String, Value>, CniError> {
        let mut m = self.ipam.clone().unwrap_or_default();
        m.insert("type".into(), Value::String(self.ipam_type().to_string()));
        if self.ipam_needs_ranges() {
            let Some((subnet, gateway)) = range else {
                return Err(CniError::new(
                    code::TRY_AGAIN_LATER,
                    "the node's pod subnet is not known (weft-agent did not say, and there is \
                     no prevResult to take it from)",
                ));
            };
            m.insert(
                "ranges".into(),
                serde_json::json!([[{"subnet": subnet.trunc().to_string(), "gateway": gateway.to_string()}]]),
            );
        }
        Ok(m)
    }

    /// host-local's directory for this network (for GC's own sweep).
    pub fn host_local_dir(&self) -> PathBuf {
        let base = self
            .ipam
            .as_ref()
            .and_then(|m| m.get("dataDir"))
            .and_then(Value::as_str)
            .unwrap_or(HOST_LOCAL_DATA_DIR);
        PathBuf::from(base).join(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetConf, CniError> {
        NetConf::parse(s.as_bytes())
    }

    #[test]
    fn a_conflist_entry_with_runtime_keys_parses() {
        let c = parse(
            r#"{"cniVersion":"1.0.0","name":"weft","type":"weft-cni",
                "agentSocket":"/tmp/a.sock","runtimeConfig":{"portMappings":[]},
                "dns":{"nameservers":["198.19.0.10"]},
                "prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0","mac":"02:00:00:00:00:01","sandbox":"/proc/1/ns/net"}],
                   "ips":[{"address":"198.19.1.5/24","gateway":"198.19.1.1","interface":0}],
                   "routes":[{"dst":"0.0.0.0/0","gw":"198.19.1.1"}]}}"#,
        )
        .unwrap();
        assert_eq!(c.cni_version, "1.0.0");
        assert_eq!(c.name, "weft");
        assert_eq!(c.agent_socket, PathBuf::from("/tmp/a.sock"));
        assert_eq!(c.dns.clone().unwrap().nameservers, vec!["198.19.0.10"]);
        let p = c.prev_result.clone().unwrap();
        assert_eq!(p.ips[0].interface, Some(0));
        assert_eq!(p.interfaces[0].sandbox.as_deref(), Some("/proc/1/ns/net"));
        assert_eq!(c.ipam_type(), "host-local");
    }

    #[test]
    fn the_ipam_section_gets_the_nodes_range_unless_it_has_one() {
        let c = parse(r#"{"cniVersion":"1.1.0","name":"weft","ipam":{"dataDir":"/tmp/ipam"}}"#)
            .unwrap();
        let range = Some((
            "198.19.4.1/24".parse().unwrap(),
            "198.19.4.1".parse().unwrap(),
        ));
        let m = c.ipam_section(range).unwrap();
        assert_eq!(
            Value::Object(m),
            serde_json::json!({"type":"host-local","dataDir":"/tmp/ipam",
                "ranges":[[{"subnet":"198.19.4.0/24","gateway":"198.19.4.1"}]]})
        );
        assert_eq!(c.host_local_dir(), PathBuf::from("/tmp/ipam/weft"));
        assert_eq!(
            c.ipam_section(None).unwrap_err().code,
            code::TRY_AGAIN_LATER
        );
        let own = parse(
            r#"{"cniVersion":"1.1.0","name":"weft","ipam":{"type":"static","addresses":[]}}"#,
        )
        .unwrap();
        assert!(!own.ipam_needs_ranges());
        assert_eq!(own.ipam_section(None).unwrap()["type"], "static");
    }

    #[test]
    fn bad_configs_get_the_spec_codes() {
        for (input, want) in [
            ("", code::DECODE),
            ("{", code::DECODE),
            ("[1]", code::DECODE),
            (r#"{"name":"weft"}"#, code::INVALID_CONFIG),
            (r#"{"cniVersion":1,"name":"weft"}"#, code::INVALID_CONFIG),
            (
                r#"{"cniVersion":"0.4.0","name":"weft"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (
                r#"{"cniVersion":"2.0.0","name":"weft"}"#,
                code::INCOMPATIBLE_VERSION,
            ),
            (r#"{"cniVersion":"1.0.0"}"#, code::INVALID_CONFIG),
            (
                r#"{"cniVersion":"1.0.0","name":"../x"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","agentSocket":3}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","ipam":"host-local"}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","ipam":{"type":"../sh"}}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.0.0","name":"w","prevResult":{"ips":"x"}}"#,
                code::INVALID_CONFIG,
            ),
            (
                r#"{"cniVersion":"1.1.0","name":"w","cni.dev/attachments":[{"ifname":"eth0"}]}"#,
                code::INVALID_CONFIG,
            ),
        ] {
            let e = parse(input).unwrap_err();
            assert_eq!(e.code, want, "{input}: {}", e.msg);
            assert!(!e.msg.contains('\n'), "one line: {}", e.msg);
        }
    }

    #[test]
    fn gc_attachments_parse() {
        let c = parse(
            r#"{"cniVersion":"1.1.0","name":"w","cni.dev/attachments":[{"containerID":"c1","ifname":"eth0"}]}"#,
        )
        .unwrap();
        assert_eq!(
            c.attachments.unwrap(),
            vec![Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into()
            }]
        );
    }
}

#[cfg(test)]
mod props {
    use super::*;
    use proptest::prelude::*;

    fn json_value() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(Value::from),
            "[a-z0-9./:-]{0,12}".prop_map(Value::String),
            Just(Value::String("1.0.0".into())),
            Just(Value::String("1.1.0".into())),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::vec(
                    (
                        prop_oneof![
                            Just("cniVersion".to_string()),
                            Just("name".to_string()),
                            Just("ipam".to_string()),
                            Just("type".to_string()),
                            Just("dns".to_string()),
                            Just("prevResult".to_string()),
                            Just("agentSocket".to_string()),
                            Just("cni.dev/attachments".to_string()),
                            Just("ips".to_string()),
                            Just("interfaces".to_string()),
                            "[a-z]{1,6}",
                        ],
                        inner
                    ),
                    0..6
                )
                .prop_map(|kv| Value::Object(kv.into_iter().collect())),
            ]
        })
    }

    proptest! {
        /// Whatever the runtime sends, parsing answers (never panics) and an error is
        /// one line with one of the spec's codes for config problems.
        #[test]
        fn any_config_parses_or_fails_with_a_config_code(v in json_value()) {
            let bytes = serde_json::to_vec(&v).unwrap();
            match NetConf::parse(&bytes) {
                Ok(c) => {
                    prop_assert!(SUPPORTED_VERSIONS.contains(&c.cni_version.as_str()));
                    prop_assert!(!c.name.is_empty());
                }
                Err(e) => {
                    prop_assert!([code::INCOMPATIBLE_VERSION, code::DECODE, code::INVALID_CONFIG].contains(&e.code), "{e:?}");
                    prop_assert!(!e.msg.contains('\n'), "{e:?}");
                }
            }
        }

        #[test]
        fn any_bytes_are_refused_or_parsed_without_panic(b in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = NetConf::parse(&b);
        }
    }
}
