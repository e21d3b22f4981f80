//! `weftd`'s configuration: a TOML file whose every setting is also a flag.
//!
//! ```toml
//! workers = 2
//! offloads = true                # TAP TSO/USO + UDP GSO/GRO + coalescing (default on)
//! pin_cpus = false               # worker i on CPU i, TAP frames steered by CPU
//! tunnel_gso = false             # VXLAN/Geneve over a tunnel-GSO TAP (Linux 6.17+)
//! state_dir = "/var/lib/weft"
//! metrics = "127.0.0.1:9464"
//! control = "/run/weft/weftd.sock"
//! flows = "flows.txt"            # relative to this file's directory
//! max_flows = 2000000            # flows in all tables
//! max_flows_per_table = 1000000  # flows in one table
//! max_bundle_flows = 2000000     # changes in one bundle (add-flows, replace-flows)
//! bundle_timeout = 60            # seconds from bundle_open to commit, else discarded
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
//!
//! Three parts: this module (the flags, [`Config`] itself, reading the files),
//! `file` (the TOML file's tree: [`Config::from_toml`]) and `reload` (what a `SIGHUP`
//! changes: [`Config::changes`], [`Config::keep_restart_settings`], [`diff_ports`]).

mod file;
mod reload;

pub use reload::{ConfigChanges, PortDiff, diff_ports};

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Parser;
use weft_flow::port::PortSpec;
use weft_flow::{Bundle, Flow, line_at, parse_flows_file};

/// Where state is kept when neither the file nor a flag says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/weft";
/// The control socket when neither the file nor a flag says.
pub const DEFAULT_CONTROL: &str = "/run/weft/weftd.sock";
/// The most worker threads `weftd` accepts.
pub const MAX_WORKERS: usize = 256;

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
    /// Pin worker i to CPU i, and steer each multi-queue TAP's frames to the queue of the
    /// CPU that sent them (fewer cross-CPU wake-ups, a shorter ping; less throughput on
    /// few cores, see docs/DESIGN.md): on or off [default: off].
    #[arg(long, value_name = "on|off")]
    pub pin_cpus: Option<String>,
    /// Carry VXLAN/Geneve with an IPv4 local= over the tunnel-GSO underlay TAP when the
    /// kernel has it (probed at start, else sockets): on or off [default: off].
    #[arg(long, value_name = "on|off")]
    pub tunnel_gso: Option<String>,
    /// The control socket [default: /run/weft/weftd.sock].
    #[arg(long, value_name = "PATH")]
    pub control: Option<PathBuf>,
    /// A group whose members may also use the control socket.
    #[arg(long, value_name = "GROUP")]
    pub control_group: Option<String>,
    /// A flows file (ovs-ofctl syntax) installed at start.
    #[arg(long, value_name = "FILE")]
    pub flows: Option<PathBuf>,
    /// The most flows in all tables together [default: 2000000].
    #[arg(long, value_name = "N")]
    pub max_flows: Option<String>,
    /// The most flows in one table [default: 1000000].
    #[arg(long, value_name = "N")]
    pub max_flows_per_table: Option<String>,
    /// The most changes in one bundle (add-flows, replace-flows, del-flows) [default:
    /// 2000000].
    #[arg(long, value_name = "N")]
    pub max_bundle_flows: Option<String>,
    /// Seconds a bundle sent in parts may stay open (from bundle_open to its commit)
    /// before it is discarded [default: 60].
    #[arg(long, value_name = "S")]
    pub bundle_timeout: Option<String>,
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
    /// Use the tunnel-GSO underlay port when the kernel has it.
    pub tunnel_gso: bool,
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
    /// The most flows in all tables together.
    pub max_flows: usize,
    /// The most flows in one table.
    pub max_flows_per_table: usize,
    /// The most changes in one bundle.
    pub max_bundle_flows: usize,
    /// How long a bundle sent in parts may stay open before it is discarded.
    pub bundle_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            file: None,
            workers: default_workers(),
            offloads: true,
            pin_cpus: false,
            tunnel_gso: false,
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            metrics: None,
            control: PathBuf::from(DEFAULT_CONTROL),
            control_group: None,
            flows_file: None,
            flows: Vec::new(),
            ports: Vec::new(),
            max_flows: weft_pipeline::FlowLimits::DEFAULT_MAX_FLOWS,
            max_flows_per_table: weft_pipeline::FlowLimits::DEFAULT_MAX_FLOWS_PER_TABLE,
            max_bundle_flows: crate::control_server::DEFAULT_MAX_BUNDLE_FLOWS,
            bundle_timeout: crate::control_server::DEFAULT_BUNDLE_TIMEOUT,
        }
    }
}

/// The longest [`Config::bundle_timeout`], in seconds (a day).
pub const MAX_BUNDLE_TIMEOUT_SECS: u64 = 86_400;
pub(crate) const BUNDLE_TIMEOUT_EXPECTED: &str = "a number of seconds from 1 to 86400";

/// A `bundle_timeout` value in seconds, if valid.
pub(crate) fn bundle_timeout(secs: u64) -> Option<Duration> {
    (1..=MAX_BUNDLE_TIMEOUT_SECS)
        .contains(&secs)
        .then(|| Duration::from_secs(secs))
}

/// The most any flow limit may be set to.
pub const MAX_LIMIT: usize = 100_000_000;
pub(crate) const LIMIT_EXPECTED: &str = "a number of flows from 1 to 100000000";

pub(crate) fn valid_limit(n: usize) -> bool {
    (1..=MAX_LIMIT).contains(&n)
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
        if let Some(v) = &args.tunnel_gso {
            self.tunnel_gso = on_off("tunnel-gso", v)?;
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
        for (flag, value, slot) in [
            ("max-flows", &args.max_flows, &mut self.max_flows),
            (
                "max-flows-per-table",
                &args.max_flows_per_table,
                &mut self.max_flows_per_table,
            ),
            (
                "max-bundle-flows",
                &args.max_bundle_flows,
                &mut self.max_bundle_flows,
            ),
        ] {
            if let Some(v) = value {
                *slot = v
                    .parse::<usize>()
                    .ok()
                    .filter(|n| valid_limit(*n))
                    .ok_or_else(|| ConfigError::Flag {
                        flag,
                        message: format!("bad value '{v}': expected {LIMIT_EXPECTED}"),
                    })?;
            }
        }
        if let Some(v) = &args.bundle_timeout {
            self.bundle_timeout =
                v.parse::<u64>()
                    .ok()
                    .and_then(bundle_timeout)
                    .ok_or_else(|| ConfigError::Flag {
                        flag: "bundle-timeout",
                        message: format!("bad value '{v}': expected {BUNDLE_TIMEOUT_EXPECTED}"),
                    })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A config file's text as `weftd.toml` gives it; the error as its one line.
    pub(super) fn parse(text: &str) -> Result<Config, String> {
        Config::from_toml(text, Path::new("weftd.toml")).map_err(|e| e.to_string())
    }

    /// The error `text` gives, which must be one line.
    pub(super) fn err(text: &str) -> String {
        let e = parse(text).unwrap_err();
        assert!(!e.contains('\n'), "error is not one line: {e}");
        e
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
    fn flow_limits_from_the_file_and_flags() {
        let d = Config::default();
        assert_eq!(d.max_flows, 2_000_000);
        assert_eq!(d.max_flows_per_table, 1_000_000);
        assert_eq!(d.max_bundle_flows, 2_000_000);
        let mut cfg =
            parse("max_flows = 30\nmax_flows_per_table = 20\nmax_bundle_flows = 10\n").unwrap();
        assert_eq!(
            (cfg.max_flows, cfg.max_flows_per_table, cfg.max_bundle_flows),
            (30, 20, 10)
        );
        assert_eq!(
            err("max_flows = 0"),
            "weftd.toml line 1: bad value '0' for max_flows: expected a number of flows from 1 to 100000000"
        );
        assert!(
            err("max_bundle_flows = \"many\"").contains("bad value 'many' for max_bundle_flows")
        );
        assert!(err("max_flow = 1").contains("(did you mean max_flows?)"));
        let args = Args {
            max_bundle_flows: Some("5".into()),
            ..Args::default()
        };
        cfg.apply_flags(&args).unwrap();
        assert_eq!(cfg.max_bundle_flows, 5);
        let bad = Args {
            max_flows_per_table: Some("-1".into()),
            ..Args::default()
        };
        assert_eq!(
            cfg.apply_flags(&bad).unwrap_err().to_string(),
            "--max-flows-per-table: bad value '-1': expected a number of flows from 1 to 100000000"
        );
        let other = Config {
            max_flows: 31,
            ..cfg.clone()
        };
        assert_eq!(cfg.changes(&other).needs_restart, ["max_flows"]);
    }

    #[test]
    fn bundle_timeout_from_the_file_and_flags() {
        assert_eq!(Config::default().bundle_timeout, Duration::from_secs(60));
        let mut cfg = parse("bundle_timeout = 5\n").unwrap();
        assert_eq!(cfg.bundle_timeout, Duration::from_secs(5));
        assert_eq!(
            err("bundle_timeout = 0"),
            "weftd.toml line 1: bad value '0' for bundle_timeout: expected a number of seconds from 1 to 86400"
        );
        assert!(err("bundle_timeout = \"1m\"").contains("bad value '1m' for bundle_timeout"));
        let args = Args {
            bundle_timeout: Some("7".into()),
            ..Args::default()
        };
        cfg.apply_flags(&args).unwrap();
        assert_eq!(cfg.bundle_timeout, Duration::from_secs(7));
        let bad = Args {
            bundle_timeout: Some("86401".into()),
            ..Args::default()
        };
        assert_eq!(
            cfg.apply_flags(&bad).unwrap_err().to_string(),
            "--bundle-timeout: bad value '86401': expected a number of seconds from 1 to 86400"
        );
        let other = Config {
            bundle_timeout: Duration::from_secs(8),
            ..cfg.clone()
        };
        assert_eq!(cfg.changes(&other).needs_restart, ["bundle_timeout"]);
    }
}
