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
    /// Two fields of the match share storage in the flow key (e.g. `tun_src` and
    /// `tun_ipv6_src`).
    #[error("{0} conflicts with another field of the match that shares its storage")]
    Conflict(Field),
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
