//! The config file's TOML, read into `toml`'s spanned document tree rather than through
//! serde, so that every error names the file, the line and the field; a `[[port]]`
//! table becomes the words of `weftctl add-port` for [`PortSpec::parse`].

use std::collections::HashMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;
use toml::de::{DeTable, DeValue};
use weft_flow::parse::did_you_mean;
use weft_flow::port::{PortError, PortSpec};
use weft_flow::{line_at, one_line};

use super::{
    Config, ConfigError, LIMIT_EXPECTED, MAX_WORKERS, METRICS_EXPECTED, WORKERS_EXPECTED,
    valid_group, valid_limit,
};

/// The top-level keys of the file.
const KEYS: &[&str] = &[
    "workers",
    "offloads",
    "pin_cpus",
    "tunnel_gso",
    "state_dir",
    "metrics",
    "control",
    "control_group",
    "flows",
    "max_flows",
    "max_flows_per_table",
    "max_bundle_flows",
    "bundle_timeout",
    "port",
];

impl Config {
    /// Parses the text of a config file; `file` is where it came from (for messages,
    /// and to resolve a relative `flows` path). Does not read the flows file.
    pub fn from_toml(text: &str, file: &Path) -> Result<Config, ConfigError> {
        let doc = DeTable::parse(text).map_err(|e| toml_error(text, file, &e))?;
        let src = Source { text, file };
        let mut cfg = Config {
            file: Some(file.to_path_buf()),
            ..Config::default()
        };
        for (key, value) in by_position(doc.get_ref()) {
            let name = key.get_ref().as_ref();
            match name {
                "workers" => {
                    cfg.workers = integer(value.get_ref())
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| (1..=MAX_WORKERS).contains(n))
                        .ok_or_else(|| src.bad_value(value, name, WORKERS_EXPECTED))?;
                }
                "offloads" | "pin_cpus" | "tunnel_gso" => {
                    let b = value
                        .get_ref()
                        .as_bool()
                        .ok_or_else(|| src.bad_value(value, name, "true or false"))?;
                    match name {
                        "offloads" => cfg.offloads = b,
                        "pin_cpus" => cfg.pin_cpus = b,
                        _ => cfg.tunnel_gso = b,
                    }
                }
                "state_dir" => cfg.state_dir = src.path(value, name)?,
                "metrics" => {
                    cfg.metrics = Some(
                        value
                            .get_ref()
                            .as_str()
                            .and_then(|s| s.parse().ok())
                            .ok_or_else(|| src.bad_value(value, name, METRICS_EXPECTED))?,
                    );
                }
                "control" => cfg.control = src.path(value, name)?,
                "control_group" => {
                    cfg.control_group = Some(
                        value
                            .get_ref()
                            .as_str()
                            .filter(|g| valid_group(g))
                            .ok_or_else(|| src.bad_value(value, name, "a group name"))?
                            .to_string(),
                    );
                }
                "flows" => {
                    let p = src.path(value, name)?;
                    let dir = file.parent().unwrap_or(Path::new(""));
                    cfg.flows_file = Some(if p.is_relative() { dir.join(p) } else { p });
                }
                "max_flows" | "max_flows_per_table" | "max_bundle_flows" => {
                    let n = integer(value.get_ref())
                        .and_then(|n| usize::try_from(n).ok())
                        .filter(|n| valid_limit(*n))
                        .ok_or_else(|| src.bad_value(value, name, LIMIT_EXPECTED))?;
                    match name {
                        "max_flows" => cfg.max_flows = n,
                        "max_flows_per_table" => cfg.max_flows_per_table = n,
                        _ => cfg.max_bundle_flows = n,
                    }
                }
                "bundle_timeout" => {
                    cfg.bundle_timeout = integer(value.get_ref())
                        .and_then(|n| u64::try_from(n).ok())
                        .and_then(super::bundle_timeout)
                        .ok_or_else(|| {
                            src.bad_value(value, name, super::BUNDLE_TIMEOUT_EXPECTED)
                        })?;
                }
                "port" => cfg.ports = src.ports(value)?,
                other => {
                    let mut message = format!("unknown key '{other}'");
                    if let Some(s) = did_you_mean(other, KEYS.iter().copied()) {
                        message.push_str(&format!(" (did you mean {s}?)"));
                    } else {
                        message.push_str(&format!(" (known keys: {})", KEYS.join(", ")));
                    }
                    return Err(src.at(key.span(), message));
                }
            }
        }
        Ok(cfg)
    }
}

/// The entries of a table in the order they appear in the file (so the first error
/// reported is the first one in the file).
fn by_position<'a, 'i>(
    table: &'a DeTable<'i>,
) -> Vec<(
    &'a Spanned<std::borrow::Cow<'i, str>>,
    &'a Spanned<DeValue<'i>>,
)> {
    let mut v: Vec<_> = table.iter().collect();
    v.sort_by_key(|(k, _)| k.span().start);
    v
}

fn integer(v: &DeValue<'_>) -> Option<i128> {
    let n = v.as_integer()?;
    i128::from_str_radix(n.as_str(), n.radix()).ok()
}

fn toml_error(text: &str, file: &Path, e: &toml::de::Error) -> ConfigError {
    let line = e
        .span()
        .map(|s| line_at(text.as_bytes(), s.start))
        .unwrap_or(1);
    ConfigError::At {
        file: file.to_path_buf(),
        line,
        message: format!("invalid TOML: {}", one_line(e.message())),
    }
}

/// The config text and its file name, for errors.
struct Source<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Source<'_> {
    fn at(&self, span: Range<usize>, message: String) -> ConfigError {
        ConfigError::At {
            file: self.file.to_path_buf(),
            line: line_at(self.text.as_bytes(), span.start),
            message,
        }
    }

    /// A value as the user wrote it: a string's contents, else the source text.
    fn shown(&self, v: &Spanned<DeValue<'_>>) -> String {
        match v.get_ref().as_str() {
            Some(s) => s.to_string(),
            None => self.text.get(v.span()).unwrap_or("?").trim().to_string(),
        }
    }

    fn bad_value(&self, v: &Spanned<DeValue<'_>>, key: &str, expected: &str) -> ConfigError {
        self.at(
            v.span(),
            format!(
                "bad value '{}' for {key}: expected {expected}",
                self.shown(v)
            ),
        )
    }

    fn path(&self, v: &Spanned<DeValue<'_>>, key: &str) -> Result<PathBuf, ConfigError> {
        match v.get_ref().as_str() {
            Some(s) if !s.is_empty() => Ok(PathBuf::from(s)),
            _ => Err(self.bad_value(v, key, "a path (a non-empty string)")),
        }
    }

    /// The `[[port]]` array of tables.
    fn ports(&self, v: &Spanned<DeValue<'_>>) -> Result<Vec<PortSpec>, ConfigError> {
        let not_tables = || {
            self.at(
                v.span(),
                "'port' must be an array of tables: write [[port]] sections".into(),
            )
        };
        let array = v.get_ref().as_array().ok_or_else(not_tables)?;
        let mut ports: Vec<PortSpec> = Vec::with_capacity(array.len());
        let mut first_line: HashMap<String, usize> = HashMap::new();
        let mut ofports: HashMap<u32, String> = HashMap::new();
        for item in array.iter() {
            let table = item.get_ref().as_table().ok_or_else(not_tables)?;
            let (spec, name_span) = self.port(item.span(), table)?;
            let line = line_at(self.text.as_bytes(), name_span.start);
            if let Some(first) = first_line.get(&spec.name) {
                return Err(self.at(
                    name_span,
                    format!(
                        "port '{}' is declared twice (first at line {first})",
                        spec.name
                    ),
                ));
            }
            if let Some(n) = spec.ofport {
                if let Some(other) = ofports.get(&n) {
                    return Err(self.at(
                        name_span,
                        format!("port '{}': ofport {n} is already port '{other}'", spec.name),
                    ));
                }
                ofports.insert(n, spec.name.clone());
            }
            first_line.insert(spec.name.clone(), line);
            ports.push(spec);
        }
        Ok(ports)
    }

    /// One `[[port]]` table: its keys become `key=value` words for [`PortSpec::parse`].
    fn port(
        &self,
        table_span: Range<usize>,
        table: &DeTable<'_>,
    ) -> Result<(PortSpec, Range<usize>), ConfigError> {
        let entries = by_position(table);
        let Some((name_key, name_value)) = entries.iter().find(|(k, _)| k.get_ref() == "name")
        else {
            return Err(self.at(
                table_span,
                "[[port]] without a name (add name = \"...\")".into(),
            ));
        };
        let name = name_value
            .get_ref()
            .as_str()
            .ok_or_else(|| self.bad_value(name_value, "name", "a port name (a string)"))?;
        let name_span = name_key.span();
        // (option, span of its key, span of its value, the word)
        let mut words: Vec<(String, Range<usize>, Range<usize>, String)> = Vec::new();
        for (key, value) in &entries {
            let k = key.get_ref().as_ref();
            if k == "name" {
                continue;
            }
            let in_port =
                |message: String| self.at(key.span(), format!("port '{name}': {message}"));
            if k.is_empty()
                || !k
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            {
                return Err(in_port(format!("invalid option name '{k}'")));
            }
            let expected = "a string or an integer";
            let text = match value.get_ref() {
                DeValue::String(s) => s.to_string(),
                DeValue::Integer(_) => match integer(value.get_ref()) {
                    Some(n) => n.to_string(),
                    None => return Err(self.port_value(name, value, k, expected)),
                },
                DeValue::Array(items) => {
                    let mut parts = Vec::with_capacity(items.len());
                    for item in items.iter() {
                        match item.get_ref() {
                            DeValue::String(s) => parts.push(s.to_string()),
                            DeValue::Integer(_) => match integer(item.get_ref()) {
                                Some(n) => parts.push(n.to_string()),
                                None => return Err(self.port_value(name, item, k, expected)),
                            },
                            _ => {
                                return Err(self.port_value(name, item, k, expected));
                            }
                        }
                    }
                    if parts.is_empty() {
                        continue; // an empty list is the default: no option
                    }
                    parts.join(",")
                }
                _ => return Err(self.port_value(name, value, k, expected)),
            };
            if text.chars().any(|c| c.is_whitespace() || c.is_control()) {
                return Err(self.port_value(name, value, k, "a value without spaces"));
            }
            words.push((
                k.to_string(),
                key.span(),
                value.span(),
                format!("{k}={text}"),
            ));
        }
        let args: Vec<&str> = words.iter().map(|w| w.3.as_str()).collect();
        let spec = PortSpec::parse(name, &args).map_err(|e| {
            let key_of = |option: &str| words.iter().find(|w| w.0 == option);
            let (span, prefix) = match &e {
                PortError::BadName { name: bad, .. } if bad == name => (name_value.span(), false),
                PortError::BadName { .. } => (
                    key_of("ifname").map_or(table_span.clone(), |w| w.2.clone()),
                    true,
                ),
                PortError::BadValue { option, .. } => (
                    key_of(option).map_or(table_span.clone(), |w| w.2.clone()),
                    true,
                ),
                PortError::UnknownOption { option, .. } | PortError::Duplicate(option) => (
                    key_of(option).map_or(table_span.clone(), |w| w.1.clone()),
                    true,
                ),
                PortError::NoType(_) => (name_span.clone(), true),
                PortError::NotKeyValue(_) => (table_span.clone(), true),
            };
            let message = match &e {
                PortError::NoType(_) => {
                    "needs type = \"tap\", \"vxlan\", \"geneve\" or \"ipip\"".to_string()
                }
                other => other.to_string(),
            };
            if prefix {
                self.at(span, format!("port '{name}': {message}"))
            } else {
                self.at(span, message)
            }
        })?;
        Ok((spec, name_span))
    }

    fn port_value(
        &self,
        port: &str,
        v: &Spanned<DeValue<'_>>,
        key: &str,
        expected: &str,
    ) -> ConfigError {
        if v.get_ref().is_table() {
            return self.at(
                v.span(),
                format!("port '{port}': {key} must be {expected}, not a table"),
            );
        }
        self.at(
            v.span(),
            format!(
                "port '{port}': bad value '{}' for {key}: expected {expected}",
                self.shown(v)
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::tests::{err, parse};
    use crate::config::{DEFAULT_CONTROL, DEFAULT_STATE_DIR};
    use weft_flow::port::{Key, PortKind, Remote};

    const FULL: &str = r#"
workers = 4
offloads = false
pin_cpus = true
tunnel_gso = true
state_dir = "/tmp/weft-state"
metrics = "127.0.0.1:9464"
control = "/tmp/weftd.sock"
control_group = "weft"
flows = "flows.txt"

[[port]]
name = "pod1"
type = "tap"
netns = "pod1"
mtu = 1450
mac = "02:00:00:00:01:01"
ofport = 1

[[port]]
name = "vx0"
type = "vxlan"
local = "198.18.0.1"
key = 0x10
dst_port = 4789
allowed_remotes = ["198.18.0.0/24", "198.18.1.5"]
"#;

    #[test]
    fn full_file() {
        let cfg = Config::from_toml(FULL, Path::new("/etc/weft/weftd.toml")).unwrap();
        assert_eq!(cfg.workers, 4);
        assert!(!cfg.offloads);
        assert!(cfg.pin_cpus);
        assert!(cfg.tunnel_gso);
        assert_eq!(cfg.state_dir, Path::new("/tmp/weft-state"));
        assert_eq!(cfg.metrics, Some("127.0.0.1:9464".parse().unwrap()));
        assert_eq!(cfg.control, Path::new("/tmp/weftd.sock"));
        assert_eq!(cfg.control_group.as_deref(), Some("weft"));
        assert_eq!(
            cfg.flows_file.as_deref(),
            Some(Path::new("/etc/weft/flows.txt"))
        );
        assert_eq!(cfg.ports.len(), 2);
        assert_eq!(
            cfg.ports[0].to_string(),
            "pod1 type=tap ofport=1 netns=pod1 mtu=1450 mac=02:00:00:00:01:01"
        );
        let PortKind::Vxlan(t) = &cfg.ports[1].kind else {
            panic!("{:?}", cfg.ports[1])
        };
        assert_eq!(t.key, Key::Fixed(16));
        assert_eq!(t.remote, Remote::Flow);
        assert_eq!(t.allowed_remotes.len(), 2);
        // A comma string means the same as an array.
        let comma = FULL.replace(
            r#"["198.18.0.0/24", "198.18.1.5"]"#,
            r#""198.18.0.0/24,198.18.1.5""#,
        );
        assert_eq!(parse(&comma).unwrap().ports, parse(FULL).unwrap().ports);
    }

    #[test]
    fn the_example_in_dist_is_valid() {
        let text = include_str!("../../../../dist/weftd.toml");
        let cfg = Config::from_toml(text, Path::new("dist/weftd.toml")).unwrap();
        assert_eq!(cfg.ports.len(), 2);
        assert_eq!(cfg.metrics, Some("127.0.0.1:9464".parse().unwrap()));
    }

    #[test]
    fn empty_file_is_the_defaults() {
        let cfg = parse("").unwrap();
        assert_eq!(
            cfg,
            Config {
                file: Some("weftd.toml".into()),
                ..Config::default()
            }
        );
        assert_eq!(cfg.state_dir, Path::new(DEFAULT_STATE_DIR));
        assert_eq!(cfg.control, Path::new(DEFAULT_CONTROL));
        assert!(cfg.workers >= 1);
    }

    #[test]
    fn errors_name_file_line_and_field() {
        let text = "workers = 2\n\n[[port]]\nname = \"pod1\"\ntype = \"tap\"\n\nmtu = \"9x\"\n";
        assert_eq!(
            err(text),
            "weftd.toml line 7: port 'pod1': bad value '9x' for mtu: expected an MTU from 68 to 65535"
        );
        assert_eq!(
            err("\n\nwrokers = 3\n"),
            "weftd.toml line 3: unknown key 'wrokers' (did you mean workers?)"
        );
        assert!(err("zzzzzzz = 1").contains("known keys: workers"));
        assert_eq!(
            err("workers = 0"),
            "weftd.toml line 1: bad value '0' for workers: expected a number of worker threads from 1 to 256"
        );
        assert!(err("workers = \"four\"").contains("bad value 'four' for workers"));
        assert!(err("workers = 1.5").contains("bad value '1.5' for workers"));
        assert!(
            err("metrics = \"localhost\"")
                .starts_with("weftd.toml line 1: bad value 'localhost' for metrics")
        );
        assert!(err("state_dir = 3").contains("for state_dir: expected a path"));
        assert!(err("control_group = \"a b\"").contains("expected a group name"));
        assert!(err("workers = 2\nworkers = 3").starts_with("weftd.toml line 2: invalid TOML"));
        assert!(err("[[port]\nname=1").starts_with("weftd.toml line 1: invalid TOML"));
        // toml's multi-line messages become one line, quoted as weftctl's cluster
        // descriptions quote them (weft_flow::one_line).
        assert_eq!(
            err("offloads = tru"),
            "weftd.toml line 1: invalid TOML: invalid boolean, expected 'true'"
        );
        assert!(err("port = 3").contains("[[port]]"));
        assert!(err("port = [1]").contains("[[port]]"));
    }

    #[test]
    fn port_errors() {
        let port = |body: &str| err(&format!("workers = 1\n[[port]]\n{body}"));
        assert_eq!(
            port("type = \"tap\"\nmtu = 1500"),
            "weftd.toml line 2: [[port]] without a name (add name = \"...\")"
        );
        assert_eq!(
            port("name = \"p\"\nmtu = 1500"),
            "weftd.toml line 3: port 'p': needs type = \"tap\", \"vxlan\", \"geneve\" or \"ipip\""
        );
        assert_eq!(
            port("name = \"p\"\ntype = \"tap\"\nnetsn = \"x\""),
            "weftd.toml line 5: port 'p': tap ports take no option 'netsn' (they take: ofport, netns, ifname, mtu, mac, tag, txqueuelen)"
        );
        assert!(
            port("name = \"p\"\ntype = \"tup\"")
                .starts_with("weftd.toml line 4: port 'p': bad value 'tup' for type")
        );
        assert!(
            port("name = \"normal\"\ntype = \"tap\"")
                .starts_with("weftd.toml line 3: invalid port name 'normal'")
        );
        assert!(
            port("name = 7\ntype = \"tap\"")
                .starts_with("weftd.toml line 3: bad value '7' for name")
        );
        assert!(
            port("name = \"p\"\ntype = \"tap\"\nifname = \"a/b\"")
                .starts_with("weftd.toml line 5: port 'p': invalid port name 'a/b'")
        );
        assert!(port("name = \"p\"\ntype = \"tap\"\nmtu = true").starts_with("weftd.toml line 5: port 'p': bad value 'true' for mtu: expected a string or an integer"));
        assert!(port("name = \"p\"\ntype = \"tap\"\nnetns = \"a b\"").contains("without spaces"));
        assert!(
            port("name = \"v\"\ntype = \"vxlan\"\nallowed_remotes = [\"198.18.0.0/33\"]")
                .starts_with(
                    "weftd.toml line 5: port 'v': bad value '198.18.0.0/33' for allowed_remotes"
                )
        );
        assert!(
            port("name = \"v\"\ntype = \"vxlan\"\nallowed_remotes = [1.5]")
                .contains("bad value '1.5' for allowed_remotes")
        );
        assert!(
            port("name = \"v\"\ntype = \"vxlan\"\nmtu = 99999999999999999999999999999999999999999")
                .contains("for mtu")
        );
        assert!(
            port("name = \"v\"\ntype = \"vxlan\"\n\"a=b\" = 1")
                .contains("invalid option name 'a=b'")
        );
        assert_eq!(
            port("name = \"v\"\ntype = \"vxlan\"\n[port.local]\nx = 1"),
            "weftd.toml line 5: port 'v': local must be a string or an integer, not a table"
        );
        let two =
            "[[port]]\nname = \"p\"\ntype = \"tap\"\n[[port]]\nname = \"p\"\ntype = \"tap\"\n";
        assert_eq!(
            err(two),
            "weftd.toml line 5: port 'p' is declared twice (first at line 2)"
        );
        let clash = "[[port]]\nname = \"a\"\ntype = \"tap\"\nofport = 3\n[[port]]\nname = \"b\"\ntype = \"tap\"\nofport = 3\n";
        assert_eq!(
            err(clash),
            "weftd.toml line 6: port 'b': ofport 3 is already port 'a'"
        );
        // An empty allowed_remotes list is the default.
        let ok = parse("[[port]]\nname = \"v\"\ntype = \"vxlan\"\nallowed_remotes = []").unwrap();
        assert!(
            ok.ports[0]
                .kind
                .tunnel()
                .unwrap()
                .allowed_remotes
                .is_empty()
        );
    }
}
