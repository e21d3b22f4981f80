//! `weftd`'s configuration: a TOML file whose every setting is also a flag.
//!
//! ```toml
//! workers = 2
//! offloads = true                # TAP TSO/USO + UDP GSO/GRO + coalescing (default on)
//! pin_cpus = false               # worker i on CPU i
//! state_dir = "/var/lib/weft"
//! metrics = "127.0.0.1:9464"
//! control = "/run/weft/weftd.sock"
//! flows = "flows.txt"            # relative to this file's directory
//!
//! [[port]]
//! name = "pod1"
//! type = "tap"
//! netns = "pod1"
//! mtu = 1450
//! ```
//!
//! The file is read into `toml`'s spanned document tree rather than through serde, so
//! that every error names the file, the line and the field in one line
//! (`weftd.toml line 7: port 'pod1': bad value '9x' for mtu: expected an MTU from 68
//! to 65535`). A `[[port]]` table is turned into the words of `weftctl add-port` and
//! handed to [`PortSpec::parse`]: the port language is validated in exactly one place.
//! The flows file is read with control's parser ([`parse_flows_file`]).
//!
//! [`Config::load`] reads everything again each time it is called, so `SIGHUP` can
//! call it once more and compare the result with [`Config::changes`].

use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use clap::Parser;
use toml::Spanned;
use toml::de::{DeTable, DeValue};
use weft_flow::parse::did_you_mean;
use weft_flow::port::{PortError, PortSpec};
use weft_flow::{Bundle, Flow, line_at, one_line, parse_flows_file};

/// Where state is kept when neither the file nor a flag says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The control socket when neither the file nor a flag says.
pub const DEFAULT_CONTROL: &str = "/run/weft/weftd.sock";
/// The most worker threads `weftd` accepts.
pub const MAX_WORKERS: usize = 256;

/// The top-level keys of the file.
const KEYS: &[&str] = &[
    "workers",
    "offloads",
    "pin_cpus",
    "state_dir",
    "metrics",
    "control",
    "control_group",
    "flows",
    "port",
];

const WORKERS_EXPECTED: &str = "a number of worker threads from 1 to 256";
const METRICS_EXPECTED: &str = "a socket address like 127.0.0.1:9464 or [::1]:9464";

/// `weftd`'s command line. Every flag overrides the file's setting of the same name.
#[derive(Parser, Clone, Debug, Default, PartialEq, Eq)]
#[command(
    name = "weftd",
    version,
    about = "Weft's per-node virtual switch daemon",
    long_about = "Weft's per-node virtual switch daemon.\n\n\
        Settings come from a TOML file (--config); each flag overrides the file's \
        setting of the same name. Without --config, the flags and the defaults are \
        the whole configuration.\n\n\
        Signals: SIGTERM or SIGINT stop cleanly; SIGHUP reloads the configuration file. \
        Logging follows RUST_LOG (default: info)."
)]
pub struct Args {
    /// The TOML configuration file.
    #[arg(short, long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Where the saved ports and flows are kept [default: /var/lib/weft].
    #[arg(long, value_name = "DIR")]
    pub state_dir: Option<PathBuf>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off].
    #[arg(long, value_name = "ADDR")]
    pub metrics: Option<String>,
    /// Number of worker threads [default: one per CPU].
    #[arg(long, value_name = "N")]
    pub workers: Option<String>,
    /// TAP offloads with userspace segmentation/coalescing and UDP GSO/GRO: on or off
    /// [default: on].
    #[arg(long, value_name = "on|off")]
    pub offloads: Option<String>,
    /// Pin worker i to CPU i: on or off [default: off].
    #[arg(long, value_name = "on|off")]
    pub pin_cpus: Option<String>,
    /// The control socket [default: /run/weft/weftd.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// A group whose members may also use the control socket.
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// A flows file (ovs-ofctl syntax) installed at start.
    #[arg(long, value_name = "FILE")]
    pub flows: Option<PathBuf>,
}

/// Why the configuration was refused: one line that names the file, line and field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A file could not be read.
    #[error("cannot read {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Something wrong at a line of the config file or of the flows file.
    #[error("{} line {line}: {message}", file.display())]
    At {
        /// The file.
        file: PathBuf,
        /// 1-based line.
        line: usize,
        /// What is wrong, naming the field.
        message: String,
    },
    /// A bad command-line flag.
    #[error("--{flag}: {message}")]
    Flag {
        /// The flag, without dashes.
        flag: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The complete configuration of one `weftd`.
#[derive(Clone, Debug, PartialEq)]
pub struct Config {
    /// The file it was read from, if any (reload reads it again).
    pub file: Option<PathBuf>,
    /// Number of worker threads (1..=256).
    pub workers: usize,
    /// TAP offloads, UDP GSO/GRO and coalescing.
    pub offloads: bool,
    /// Pin each worker to a CPU.
    pub pin_cpus: bool,
    /// Where `state.json` lives.
    pub state_dir: PathBuf,
    /// Where to serve Prometheus metrics, if anywhere.
    pub metrics: Option<SocketAddr>,
    /// The control socket's path.
    pub control: PathBuf,
    /// A group whose members may use the control socket besides root and its owner.
    pub control_group: Option<String>,
    /// The flows file, resolved (relative to the config file's directory).
    pub flows_file: Option<PathBuf>,
    /// The flows of `flows_file`, each with its line number (empty without a file).
    pub flows: Vec<(usize, Flow)>,
    /// The ports the file declares, in file order.
    pub ports: Vec<PortSpec>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            workers: default_workers(),
            offloads: true,
            pin_cpus: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            metrics: None,
            control: PathBuf::from(DEFAULT_CONTROL),
            control_group: None,
            flows_file: None,
            flows: Vec::new(),
            ports: Vec::new(),
        }
    }
}

/// One worker per available CPU, at least one and at most [`MAX_WORKERS`].
pub fn default_workers() -> usize {
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, MAX_WORKERS)
}

impl Config {
    /// Reads the configuration the way `weftd` starts: the file named by `--config`
    /// (if any), then the flags on top, then the flows file. Call it again to reload.
    pub fn load(args: &Args) -> Result<Config, ConfigError> {
        let mut cfg = match &args.config {
            Some(path) => {
                let text = read_text(path)?;
                Config::from_toml(&text, path)?
            }
            None => Config::default(),
        };
        cfg.apply_flags(args)?;
        cfg.load_flows()?;
        Ok(cfg)
    }

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
                "offloads" | "pin_cpus" => {
                    let b = value
                        .get_ref()
                        .as_bool()
                        .ok_or_else(|| src.bad_value(value, name, "true or false"))?;
                    if name == "offloads" {
                        cfg.offloads = b;
                    } else {
                        cfg.pin_cpus = b;
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

    /// Lays the flags over the file's settings.
    pub fn apply_flags(&mut self, args: &Args) -> Result<(), ConfigError> {
        if let Some(d) = &args.state_dir {
            self.state_dir = non_empty_path("state-dir", d)?;
        }
        if let Some(m) = &args.metrics {
            self.metrics = Some(m.parse().map_err(|_| ConfigError::Flag {
                flag: "metrics",
                message: format!("bad value '{m}': expected {METRICS_EXPECTED}"),
            })?);
        }
        if let Some(w) = &args.workers {
            self.workers = w
                .parse::<usize>()
                .ok()
                .filter(|n| (1..=MAX_WORKERS).contains(n))
                .ok_or_else(|| ConfigError::Flag {
                    flag: "workers",
                    message: format!("bad value '{w}': expected {WORKERS_EXPECTED}"),
                })?;
        }
        if let Some(v) = &args.offloads {
            self.offloads = on_off("offloads", v)?;
        }
        if let Some(v) = &args.pin_cpus {
            self.pin_cpus = on_off("pin-cpus", v)?;
        }
        if let Some(c) = &args.control {
            self.control = non_empty_path("control", c)?;
        }
        if let Some(g) = &args.control_group {
            if !valid_group(g) {
                return Err(ConfigError::Flag {
                    flag: "control-group",
                    message: format!("bad value '{g}': expected a group name"),
                });
            }
            self.control_group = Some(g.clone());
        }
        if let Some(f) = &args.flows {
            self.flows_file = Some(non_empty_path("flows", f)?);
        }
        Ok(())
    }

    /// Reads [`Config::flows_file`] (if set) into [`Config::flows`].
    pub fn load_flows(&mut self) -> Result<(), ConfigError> {
        self.flows = match &self.flows_file {
            None => Vec::new(),
            Some(path) => {
                let text = read_text(path)?;
                parse_flows_file(&text).map_err(|e| ConfigError::At {
                    file: path.clone(),
                    line: e.line.unwrap_or(1),
                    message: e.kind.to_string(),
                })?
            }
        };
        Ok(())
    }

    /// The flows file as one bundle that adds every flow (errors name its lines).
    pub fn flows_bundle(&self) -> Bundle {
        Bundle::add_flows(self.flows.clone())
    }

    /// What changed from `self` (the running configuration) to `new` (a reload).
    pub fn changes(&self, new: &Config) -> ConfigChanges {
        let needs_restart = new.clone().keep_restart_settings(self);
        ConfigChanges {
            ports: diff_ports(&self.ports, &new.ports),
            flows_changed: self.flows_file != new.flows_file
                || !same_flows(&self.flows, &new.flows),
            needs_restart,
        }
    }
}

impl Config {
    /// Sets the settings that take effect only at start (workers, offloads, pin_cpus,
    /// state_dir, metrics, control, control_group) back to those of `running`, and
    /// names the ones that differed. A reload applies the rest of the new file.
    /// This is the one list of those settings: [`Config::changes`] reports from it.
    pub fn keep_restart_settings(&mut self, running: &Config) -> Vec<&'static str> {
        fn keep<T: PartialEq + Clone>(
            changed: &mut Vec<&'static str>,
            name: &'static str,
            new: &mut T,
            running: &T,
        ) {
            if new != running {
                changed.push(name);
                new.clone_from(running);
            }
        }
        let mut changed = Vec::new();
        let c = &mut changed;
        keep(c, "workers", &mut self.workers, &running.workers);
        keep(c, "offloads", &mut self.offloads, &running.offloads);
        keep(c, "pin_cpus", &mut self.pin_cpus, &running.pin_cpus);
        keep(c, "state_dir", &mut self.state_dir, &running.state_dir);
        keep(c, "metrics", &mut self.metrics, &running.metrics);
        keep(c, "control", &mut self.control, &running.control);
        keep(
            c,
            "control_group",
            &mut self.control_group,
            &running.control_group,
        );
        changed
    }
}

fn same_flows(a: &[(usize, Flow)], b: &[(usize, Flow)]) -> bool {
    a.len() == b.len() && a.iter().zip(b).all(|((_, x), (_, y))| x == y)
}

/// What a reload changes (see [`Config::changes`]).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct ConfigChanges {
    /// Ports added, removed or changed.
    pub ports: PortDiff,
    /// The flows file is another file or has other flows.
    pub flows_changed: bool,
    /// Settings that changed but take effect only at the next start.
    pub needs_restart: Vec<&'static str>,
}

impl ConfigChanges {
    /// True when the reload changes nothing.
    pub fn is_empty(&self) -> bool {
        self.ports.is_empty() && !self.flows_changed && self.needs_restart.is_empty()
    }
}

/// The difference between two port lists, by port name.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PortDiff {
    /// Ports only in the new list.
    pub added: Vec<PortSpec>,
    /// Ports only in the old list.
    pub removed: Vec<PortSpec>,
    /// Ports in both lists with another type, number or options: `(old, new)`.
    pub changed: Vec<(PortSpec, PortSpec)>,
}

impl PortDiff {
    /// True when the lists describe the same ports.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for PortDiff {
    /// `added pod3; removed pod1; changed vx0`, or `no port changes`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_empty() {
            return f.write_str("no port changes");
        }
        let mut parts = Vec::new();
        let names = |v: &mut dyn Iterator<Item = &str>| v.collect::<Vec<_>>().join(", ");
        if !self.added.is_empty() {
            parts.push(format!(
                "added {}",
                names(&mut self.added.iter().map(|p| p.name.as_str()))
            ));
        }
        if !self.removed.is_empty() {
            parts.push(format!(
                "removed {}",
                names(&mut self.removed.iter().map(|p| p.name.as_str()))
            ));
        }
        if !self.changed.is_empty() {
            parts.push(format!(
                "changed {}",
                names(&mut self.changed.iter().map(|(_, p)| p.name.as_str()))
            ));
        }
        f.write_str(&parts.join("; "))
    }
}

/// Compares two port lists by name: which ports a reload adds, removes or changes
/// ([`PortSpec::same_port`], the test the datapath applies). Lists are kept in the
/// order of `new` (added, changed) and `old` (removed).
pub fn diff_ports(old: &[PortSpec], new: &[PortSpec]) -> PortDiff {
    let old_by_name: HashMap<&str, &PortSpec> = old.iter().map(|p| (p.name.as_str(), p)).collect();
    let new_names: HashMap<&str, ()> = new.iter().map(|p| (p.name.as_str(), ())).collect();
    let mut diff = PortDiff::default();
    for p in new {
        match old_by_name.get(p.name.as_str()) {
            None => diff.added.push(p.clone()),
            Some(o) if !o.same_port(p) => diff.changed.push(((*o).clone(), p.clone())),
            Some(_) => {}
        }
    }
    for p in old {
        if !new_names.contains_key(p.name.as_str()) {
            diff.removed.push(p.clone());
        }
    }
    diff
}

fn read_text(path: &Path) -> Result<String, ConfigError> {
    let bytes = std::fs::read(path).map_err(|source| ConfigError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|e| {
        let offset = e.utf8_error().valid_up_to();
        let line = line_at(e.as_bytes(), offset);
        ConfigError::At {
            file: path.to_path_buf(),
            line,
            message: "not valid UTF-8".into(),
        }
    })
}

fn non_empty_path(flag: &'static str, p: &Path) -> Result<PathBuf, ConfigError> {
    if p.as_os_str().is_empty() {
        return Err(ConfigError::Flag {
            flag,
            message: "expected a path, got nothing".into(),
        });
    }
    Ok(p.to_path_buf())
}

/// A POSIX-ish group name: what `groupadd` accepts.
fn valid_group(g: &str) -> bool {
    !g.is_empty()
        && g.len() <= 32
        && !g.starts_with('-')
        && g.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.')
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

fn on_off(flag: &'static str, v: &str) -> Result<bool, ConfigError> {
    match v {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        _ => Err(ConfigError::Flag {
            flag,
            message: format!("bad value '{v}': expected on or off"),
        }),
    }
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
    use weft_flow::port::{Key, PortKind, Remote};

    fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("weftd.toml")).map_err(|e| e.to_string())
    }

    fn err(text: &str) -> String {
        let e = parse(text).unwrap_err();
        assert!(!e.contains('\n'), "error is not one line: {e}");
        e
    }

    const FULL: &str = r#"
workers = 4
offloads = false
pin_cpus = true
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
            "weftd.toml line 5: port 'p': tap ports take no option 'netsn' (they take: ofport, netns, ifname, mtu, mac, tag)"
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

    #[test]
    fn flags_override_the_file_and_work_alone() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weftd.toml");
        std::fs::write(
            &file,
            "workers = 2\nmetrics = \"127.0.0.1:1\"\nflows = \"f.txt\"\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("f.txt"),
            "# comment\ntable=0,priority=10,ip actions=drop\n\ntable=0 actions=normal\n",
        )
        .unwrap();
        let args = Args {
            config: Some(file.clone()),
            workers: Some("3".into()),
            offloads: Some("off".into()),
            state_dir: Some("/tmp/s".into()),
            ..Args::default()
        };
        let cfg = Config::load(&args).unwrap();
        assert_eq!(cfg.workers, 3);
        assert!(!cfg.offloads, "--offloads off");
        assert!(!cfg.pin_cpus);
        assert_eq!(cfg.metrics, Some("127.0.0.1:1".parse().unwrap()));
        assert_eq!(cfg.state_dir, Path::new("/tmp/s"));
        assert_eq!(cfg.flows.len(), 2);
        assert_eq!(cfg.flows[0].0, 2);
        assert_eq!(cfg.flows[1].0, 4);
        assert_eq!(cfg.flows_bundle().changes.len(), 2);

        // No file at all.
        let cfg = Config::load(&Args {
            metrics: Some("[::1]:9464".into()),
            control: Some("/tmp/c.sock".into()),
            ..Args::default()
        })
        .unwrap();
        assert_eq!(cfg.file, None);
        assert_eq!(cfg.metrics, Some("[::1]:9464".parse().unwrap()));
        assert_eq!(cfg.control, Path::new("/tmp/c.sock"));
        assert!(cfg.ports.is_empty());

        let bad = |a: Args| Config::load(&a).unwrap_err().to_string();
        assert_eq!(
            bad(Args {
                workers: Some("0".into()),
                ..Args::default()
            }),
            "--workers: bad value '0': expected a number of worker threads from 1 to 256"
        );
        assert_eq!(
            bad(Args {
                offloads: Some("maybe".into()),
                ..Args::default()
            }),
            "--offloads: bad value 'maybe': expected on or off"
        );
        assert!(
            bad(Args {
                metrics: Some("nope".into()),
                ..Args::default()
            })
            .starts_with("--metrics: bad value 'nope'")
        );
        let missing = bad(Args {
            config: Some(dir.path().join("missing.toml")),
            ..Args::default()
        });
        assert!(
            missing.starts_with("cannot read ") && missing.contains("missing.toml"),
            "{missing}"
        );
    }

    #[test]
    fn flows_file_errors_name_the_flows_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weftd.toml");
        std::fs::write(&file, "flows = \"flows.txt\"\n").unwrap();
        let flows = dir.path().join("flows.txt");
        std::fs::write(
            &flows,
            "table=0 actions=drop\n\n\nnw_sorc=1.2.3.4 actions=drop\n",
        )
        .unwrap();
        let e = Config::load(&Args {
            config: Some(file.clone()),
            ..Args::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(
            e,
            format!(
                "{} line 4: unknown field 'nw_sorc' (did you mean nw_src?)",
                flows.display()
            )
        );
        std::fs::remove_file(&flows).unwrap();
        let e = Config::load(&Args {
            config: Some(file),
            ..Args::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.starts_with(&format!("cannot read {}", flows.display())),
            "{e}"
        );
    }

    #[test]
    fn non_utf8_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("weftd.toml");
        std::fs::write(&file, b"workers = 1\n\xff = 2\n").unwrap();
        let e = Config::load(&Args {
            config: Some(file.clone()),
            ..Args::default()
        })
        .unwrap_err()
        .to_string();
        assert_eq!(e, format!("{} line 2: not valid UTF-8", file.display()));
    }

    #[test]
    fn reload_diff() {
        let old = parse(
            "[[port]]\nname = \"a\"\ntype = \"tap\"\n[[port]]\nname = \"b\"\ntype = \"tap\"\n\
             [[port]]\nname = \"c\"\ntype = \"tap\"\n",
        )
        .unwrap();
        let new = parse(
            "workers = 7\n[[port]]\nname = \"a\"\ntype = \"tap\"\n[[port]]\nname = \"b\"\ntype = \"tap\"\nmtu = 1400\n\
             [[port]]\nname = \"d\"\ntype = \"tap\"\n",
        )
        .unwrap();
        let ch = old.changes(&new);
        let names = |v: &[PortSpec]| v.iter().map(|p| p.name.clone()).collect::<Vec<_>>();
        assert_eq!(names(&ch.ports.added), ["d"]);
        assert_eq!(names(&ch.ports.removed), ["c"]);
        assert_eq!(ch.ports.changed.len(), 1);
        assert_eq!(ch.ports.changed[0].1.to_string(), "b type=tap mtu=1400");
        assert_eq!(ch.ports.to_string(), "added d; removed c; changed b");
        assert!(!ch.flows_changed);
        if default_workers() != 7 {
            assert_eq!(ch.needs_restart, ["workers"]);
        }
        assert!(old.changes(&old).is_empty());
        assert_eq!(diff_ports(&[], &[]).to_string(), "no port changes");
    }

    /// Every setting that needs a restart is reported and set back; ports and flows
    /// are what a reload applies, so they stay as the new file has them.
    #[test]
    fn restart_settings_are_reported_and_kept() {
        let running = parse("workers = 2\n").unwrap();
        let mut new = parse(
            "workers = 3\noffloads = false\npin_cpus = true\nstate_dir = \"/x\"\n\
             metrics = \"127.0.0.1:1\"\ncontrol = \"/y.sock\"\ncontrol_group = \"g\"\n\
             [[port]]\nname = \"a\"\ntype = \"tap\"\n",
        )
        .unwrap();
        let all = [
            "workers",
            "offloads",
            "pin_cpus",
            "state_dir",
            "metrics",
            "control",
            "control_group",
        ];
        assert_eq!(running.changes(&new).needs_restart, all);
        assert_eq!(new.keep_restart_settings(&running), all);
        assert_eq!(new.ports.len(), 1);
        new.ports.clear();
        assert_eq!(new, running);
        assert!(running.changes(&new).is_empty());
        assert!(new.keep_restart_settings(&running).is_empty());
    }

    /// A reload reports a port as changed exactly when the datapath changes it: a
    /// number the file no longer gives is kept, so that is no change.
    #[test]
    fn reload_diff_keeps_a_port_number_the_file_drops() {
        let port = |extra: &str| {
            parse(&format!("[[port]]\nname = \"a\"\ntype = \"tap\"\n{extra}")).unwrap()
        };
        let numbered = port("ofport = 3\n");
        let ch = numbered.changes(&port(""));
        assert!(ch.ports.is_empty(), "{}", ch.ports);
        let ch = numbered.changes(&port("ofport = 4\n"));
        assert_eq!(ch.ports.to_string(), "changed a");
        let ch = port("").changes(&port("ofport = 4\n"));
        assert_eq!(ch.ports.to_string(), "changed a");
    }
}
