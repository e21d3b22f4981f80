//! Errors of installing flows: what is wrong with one change of a bundle, and which.

use std::fmt;

use weft_flow::{Field, FlowError};

/// What is wrong with one change of a bundle (or a dump filter).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InstallErrorKind {
    /// The change is not a valid flow change (see `weft_flow::FlowError`).
    #[error(transparent)]
    Invalid(#[from] FlowError),
    /// A port named by the change is not in the port map.
    #[error("unknown port '{0}'")]
    UnknownPort(String),
    /// The flow resubmits into its own table without writing anything first, so it
    /// would match itself again forever.
    #[error(
        "resubmit to table {table} from a flow of that table that changes nothing first would loop forever"
    )]
    ResubmitLoop {
        /// The table (the flow's own).
        table: u8,
    },
    /// `arp_op` above 255: the flow key keeps only 8 bits of the opcode (as OVS).
    #[error("arp_op {0} cannot be matched (only opcodes 0 to 255 are kept)")]
    ArpOpTooLarge(u16),
    /// The bundle would leave more flows than a limit allows.
    #[error("{what} would have {flows} flows; the limit is {limit}")]
    TooManyFlows {
        /// What would hold them: `table N` or `the switch`.
        what: String,
        /// How many it would hold.
        flows: usize,
        /// The limit, with the setting that sets it.
        limit: Limit,
    },
    /// Two fields of the match share storage in the flow key (e.g. `tun_src` and
    /// `tun_ipv6_src`).
    #[error("{0} conflicts with another field of the match that shares its storage")]
    Conflict(Field),
}

/// A limit on flows, with the value it has; shown as the value and the `weftd` setting
/// that sets it (`1000000 (max_flows_per_table in weftd.toml)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// `max_flows`: flows in all tables.
    MaxFlows(usize),
    /// `max_flows_per_table`: flows in one table.
    MaxFlowsPerTable(usize),
    /// `max_bundle_flows`: changes in one bundle.
    MaxBundleFlows(usize),
}

impl Limit {
    /// The setting's name (a key of `weftd.toml`, and a flag with `-` for `_`).
    pub fn setting(self) -> &'static str {
        match self {
            Limit::MaxFlows(_) => "max_flows",
            Limit::MaxFlowsPerTable(_) => "max_flows_per_table",
            Limit::MaxBundleFlows(_) => "max_bundle_flows",
        }
    }

    /// The limit's value.
    pub fn value(self) -> usize {
        match self {
            Limit::MaxFlows(n) | Limit::MaxFlowsPerTable(n) | Limit::MaxBundleFlows(n) => n,
        }
    }
}

impl fmt::Display for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} in weftd.toml)", self.value(), self.setting())
    }
}

/// A bundle that was refused: the change it failed on (index, and source line when the
/// bundle came from a file) and why. Nothing was changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstallError {
    /// Index of the change in `Bundle::changes` (0-based).
    pub index: usize,
    /// Source line of the change, if known.
    pub line: Option<usize>,
    /// What is wrong with it.
    pub kind: InstallErrorKind,
}

impl fmt::Display for InstallError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            // A limit is about the whole bundle, not one change.
            _ if matches!(self.kind, InstallErrorKind::TooManyFlows { .. }) => {
                write!(f, "{}", self.kind)
            }
            Some(l) => write!(f, "flow line {l}: {}", self.kind),
            None => write!(f, "change {}: {}", self.index + 1, self.kind),
        }
    }
}

impl std::error::Error for InstallError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.kind)
    }
}
