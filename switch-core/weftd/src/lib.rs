//! `weftd`: the host service around the switch, what the `weftd` binary
//! (`src/main.rs`) needs besides the datapath.
//!
//! The top of the data path's crates: it hosts a `weft-datapath` [`Switch`], serves
//! `weft-proto`'s control protocol, and reads `weft-flow`'s flows and ports from its
//! configuration. Nothing below it imports it.
//!
//! - [`config`]: the TOML file and the flags that override it ([`Config::load`]), and
//!   the diff of two configurations for `SIGHUP` ([`Config::changes`]).
//! - [`state`]: the ports and flows saved atomically in `<state_dir>/state.json` and
//!   restored at start, so forwarding resumes before any controller reconnects; the
//!   switch saves through [`StateDir`], the [`StateStore`] over that file.
//! - [`metrics`]: Prometheus text at `http://ADDR/metrics`, rendered per scrape from a
//!   plain [`StatsSnapshot`] that the switch fills (the type is the datapath's).
//! - [`signals`]: `SIGTERM`/`SIGINT` (stop) and `SIGHUP` (reload) as a channel.
//! - [`control_server`]: the control socket that `weftctl` talks to (one JSON request
//!   per line, see `weft_proto`), checked with `SO_PEERCRED`.
//! - [`notify`]: systemd's `sd_notify` (`READY=1`, `RELOADING=1`, `STOPPING=1`).
//!
//! None of this touches packets. The switch joins the service through one trait,
//! [`Node`], implemented here for [`Switch`]: the `weftd` binary builds one node at
//! start and drives its life (configuration, reloads, stats, state, stop) only through
//! that trait. The control server is the one other user of the switch: it is handed the
//! same `Arc<Switch>`, because the control protocol is the switch's own API (ports,
//! flows, dumps, traces, captures), not the node's life cycle.

pub mod config;
pub mod control_server;
pub mod metrics;
pub mod notify;
pub mod signals;
pub mod state;

pub use config::{Args, Config, ConfigChanges, ConfigError, PortDiff, diff_ports};
pub use metrics::{MetricsServer, StatsSnapshot};
pub use signals::{Signal, SignalListener};
pub use state::{SavedState, StateDir, StateError, StateStore};
pub use weft_datapath::Switch;

/// What `weftd` needs from the switch to run it. The switch (ports + pipeline +
/// counters) implements it (below); the binary drives the node through nothing else
/// (the control server is given the switch itself, see the crate docs).
///
/// Order of calls in `weftd`: the node is built from the saved state with the
/// configuration already applied ([`Switch::start_with_config`], before its workers
/// start, so no early frame misses the configured flows); then [`Node::apply_config`]
/// once per reload;
/// [`Node::stats`] from the metrics thread at every scrape; [`Node::saved_state`]
/// whenever the binary persists state (after a reload and at stop); [`Node::shutdown`]
/// once, at stop. The node itself should also save state after each change it makes
/// on behalf of the control socket (the switch does, through its [`StateStore`]).
pub trait Node: Send + Sync {
    /// Makes the node match `cfg`: create the ports it lists (keeping the numbers
    /// of saved ports), install its flows file, and so on. Called on every `SIGHUP`
    /// with the re-read configuration (at start the switch applies it itself, see
    /// above). An error is logged and the old configuration stays in force.
    fn apply_config(&self, cfg: &Config) -> anyhow::Result<()>;
    /// The ports (with their `ofport`s) and flows to persist. Also called after
    /// [`Node::shutdown`], for the final save.
    fn saved_state(&self) -> SavedState;
    /// The counters, for one metrics scrape. Called from the metrics thread.
    fn stats(&self) -> StatsSnapshot;
    /// Stops the workers and closes the ports (TAP devices stay: they are persistent).
    fn shutdown(&self);
}

impl Node for Switch {
    fn apply_config(&self, cfg: &Config) -> anyhow::Result<()> {
        Switch::apply_config(self, &cfg.ports, &cfg.flows).map_err(anyhow::Error::from)
    }

    fn saved_state(&self) -> SavedState {
        self.state()
    }

    fn stats(&self) -> StatsSnapshot {
        Switch::stats(self)
    }

    fn shutdown(&self) {
        self.stop();
    }
}
