//! `weftd`: the per-node Weft daemon.
//!
//! Start-up: flags → configuration (`--config FILE`, flags on top; a bad configuration
//! is one line on stderr and exit status 2) → logging (`RUST_LOG`, default `info`) →
//! signal handlers → saved state (`<state_dir>/snapshot` and `journal`; a corrupt file stops
//! `weftd` with exit status 1 rather than drop the node's flows) → the node (see
//! [`start_node`]) → the control socket (`--control`, see
//! `weftd::control_server`) → the metrics server → `READY=1` to systemd.
//!
//! Then the main thread waits for signals: `SIGHUP` re-reads the configuration and
//! hands it to the node (on any error the running configuration stays), `SIGTERM` or
//! `SIGINT` closes the control socket, stops the node, saves its state and exits 0.

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use tracing::{error, info, warn};
use tracing_subscriber::EnvFilter;
use weft_datapath::{Switch, SwitchOptions};
use weftd::control_server::{ControlOptions, ControlServer};
use weftd::notify::{self, READY, RELOADING, STOPPING};
use weftd::{Args, Config, MetricsServer, Node, SavedState, Signal, SignalListener, StateDir};

fn main() -> ExitCode {
    let args = Args::parse();
    let cfg = match Config::load(&args) {
        Ok(cfg) => cfg,
        Err(e) => {
            eprintln!("weftd: {e}");
            return ExitCode::from(2);
        }
    };
    init_logging();
    match run(&args, cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("weftd: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Builds the node's datapath from the configuration and the state saved by the
/// previous run (`None` on a first start): saved ports re-attached, saved flows
/// installed and the configuration applied, all before the workers start.
fn start_node(
    cfg: &Config,
    store: Arc<StateDir>,
    saved: Option<SavedState>,
) -> anyhow::Result<Arc<Switch>> {
    let options = SwitchOptions {
        workers: cfg.workers,
        offloads: cfg.offloads,
        pin_cpus: cfg.pin_cpus,
        tunnel_gso: cfg.tunnel_gso,
        state_store: Some(store),
        flow_limits: weft_pipeline::FlowLimits {
            max_flows: cfg.max_flows,
            max_flows_per_table: cfg.max_flows_per_table,
        },
        ..SwitchOptions::default()
    };
    // The configuration's ports and flows are in place before the workers start.
    let sw = Switch::start_with_config(options, saved, &cfg.ports, &cfg.flows)
        .context("cannot start the datapath with the configuration")?;
    // Restoring a large state parsed and rebuilt every flow: hand back what it freed.
    weft_datapath::mem::release_free_memory();
    Ok(Arc::new(sw))
}

fn init_logging() {
    let filter = match std::env::var("RUST_LOG") {
        Ok(spec) => EnvFilter::try_new(&spec).unwrap_or_else(|e| {
            eprintln!("weftd: ignoring RUST_LOG={spec:?} ({e}); logging at info");
            EnvFilter::new("info")
        }),
        Err(_) => EnvFilter::new("info"),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .init();
}

fn sd_notify(state: &str) {
    if let Err(e) = notify::notify(state) {
        warn!("cannot notify systemd ({state}): {e}");
    }
}

fn run(args: &Args, mut cfg: Config) -> anyhow::Result<()> {
    // Before anything slow, so that a SIGTERM during start-up is a clean stop.
    let signals = SignalListener::install().context("cannot install signal handlers")?;
    info!(
        config = %cfg.file.as_deref().map_or("(none)".into(), |p| p.display().to_string()),
        workers = cfg.workers,
        offloads = cfg.offloads,
        state_dir = %cfg.state_dir.display(),
        control = %cfg.control.display(),
        ports = cfg.ports.len(),
        flows = cfg.flows.len(),
        "weftd {} starting",
        env!("CARGO_PKG_VERSION")
    );
    let store = Arc::new(StateDir::new(cfg.state_dir.clone()));
    let saved = store.load()?;
    match &saved {
        Some(s) => info!(
            ports = s.ports.len(),
            flows = s.flows.len(),
            "restored state from {}",
            cfg.state_dir.display()
        ),
        None => info!("no saved state in {}: first start", cfg.state_dir.display()),
    }
    let switch = start_node(&cfg, store, saved)?;
    let node: Arc<dyn Node> = Arc::clone(&switch) as Arc<dyn Node>;
    let control = ControlServer::start(
        ControlOptions {
            group: cfg.control_group.clone(),
            max_bundle_flows: cfg.max_bundle_flows,
            bundle_timeout: cfg.bundle_timeout,
            ..ControlOptions::new(&cfg.control)
        },
        switch,
    )
    .context("cannot open the control socket")?;
    let metrics = match cfg.metrics {
        Some(addr) => {
            let n = Arc::clone(&node);
            let server = MetricsServer::start(addr, move || n.stats())
                .with_context(|| format!("cannot serve metrics on {addr}"))?;
            info!("metrics at http://{}/metrics", server.local_addr());
            Some(server)
        }
        None => None,
    };
    sd_notify(READY);
    info!("running");

    loop {
        match signals.recv() {
            Some(Signal::Reload) => reload(args, &mut cfg, node.as_ref()),
            Some(Signal::Stop(name)) => {
                info!("{name}: stopping");
                break;
            }
            None => {
                warn!("signal thread ended: stopping");
                break;
            }
        }
    }

    sd_notify(STOPPING);
    control.stop();
    if let Some(m) = metrics {
        m.stop();
    }
    // Saves the state too (when it changed; a failure is logged).
    node.shutdown();
    info!("stopped");
    Ok(())
}

/// `SIGHUP`: read the configuration again and hand it to the node. Settings that only
/// take effect at start stay as they are (and are reported); on any error the running
/// configuration stays in force.
fn reload(args: &Args, cfg: &mut Config, node: &dyn Node) {
    sd_notify(RELOADING);
    match &cfg.file {
        Some(f) => info!("SIGHUP: reloading {}", f.display()),
        None => info!("SIGHUP: no config file; re-reading the flows file only"),
    }
    match Config::load(args) {
        Err(e) => error!("reload failed, the running configuration stays: {e}"),
        Ok(mut new) => {
            let changes = cfg.changes(&new);
            for setting in &changes.needs_restart {
                warn!("{setting} changed: takes effect at the next start");
            }
            new.keep_restart_settings(cfg);
            if changes.ports.is_empty() && !changes.flows_changed {
                info!("reload: no port or flow changes");
            } else {
                info!(
                    flows_changed = changes.flows_changed,
                    "reload: {}", changes.ports
                );
            }
            match node.apply_config(&new) {
                // The node saved its state (or logged why it could not).
                Ok(()) => *cfg = new,
                Err(e) => error!("reload failed, the running configuration stays: {e:#}"),
            }
        }
    }
    sd_notify(READY);
}
