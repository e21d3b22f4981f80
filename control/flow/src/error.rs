//! Errors of the flow language: [`FlowError`] for a flow that is well-formed text but
//! not a valid flow (also raised on flows that arrive as JSON), [`ParseError`] for text,
//! which says where (line, column, token), and [`BundleError`] for a bundle, which names
//! the offending change.

use std::borrow::Cow;
use std::fmt;

use super::field::Field;

/// The most characters of someone's input an error message quotes.
pub const EXCERPT_CHARS: usize = 80;

/// `s` as an error message quotes it: whole when it has at most [`EXCERPT_CHARS`]
/// characters, else its first [`EXCERPT_CHARS`] followed by `…`. A message built from
/// input of any size stays short (and costs little to build and send).
pub fn excerpt(s: &str) -> Cow<'_, str> {
    match s.char_indices().nth(EXCERPT_CHARS) {
        None => Cow::Borrowed(s),
        Some((end, _)) => Cow::Owned(format!("{}…", &s[..end])),
    }
}

/// The 1-based line of byte `offset` of `text` (an offset past the end is on the last
/// line): where a file's error is.
pub fn line_at(text: &[u8], offset: usize) -> usize {
    let end = offset.min(text.len());
    text[..end].iter().filter(|b| **b == b'\n').count() + 1
}

/// A parser's message as one line of an error: its non-empty lines, trimmed, joined with
/// `; `, and code quoted with `'` as this project's messages quote it (the `toml`
/// crate's messages span lines and quote with backticks). `weftd`'s config file and
/// `weftctl`'s cluster descriptions both report their TOML errors through it.
pub fn one_line(message: &str) -> String {
    message
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .collect::<Vec<_>>()
        .join("; ")
        .replace('`', "'")
}

/// Why a flow, match or change is invalid, independent of where it came from.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FlowError {
    /// The table number is above 253.
    #[error("table {0} is out of range (tables are 0 to 253)")]
    TableOutOfRange(u8),
    /// A field is used without its prerequisite.
    #[error("{} requires {} ({})", .0, .0.prereq().describe(), .0.prereq().hint())]
    MissingPrereq(Field),
    /// A mask on a field that takes none.
    #[error("{0} does not take a mask")]
    NotMaskable(Field),
    /// A match with mask zero (JSON only; the parser drops such fields).
    #[error("{0} has an all-zero mask (leave the field out to match anything)")]
    ZeroMask(Field),
    /// A value with bits outside its mask (JSON only).
    #[error("{0} has value bits outside its mask")]
    ValueOutsideMask(Field),
    /// A value of the wrong type for the field (JSON only).
    #[error("value of the wrong type or width for {0}")]
    WrongKind(Field),
    /// `nw_tos` with ECN bits set.
    #[error("nw_tos {0} has its two low (ECN) bits set; nw_tos is the DSCP shifted left by 2")]
    NwTosEcn(u8),
    /// A port name that is not valid.
    #[error("invalid port name '{}'", excerpt(.0))]
    BadPortName(String),
    /// An action writes a field that cannot be written.
    #[error("{0} cannot be written by an action")]
    NotWritable(Field),
    /// `move` of a field that cannot be read.
    #[error("{0} cannot be read by move")]
    NotReadable(Field),
    /// A bit range beyond the field's width.
    #[error("bit range [{start}..{end}] is outside {field} ({bits} bits)")]
    BadRange {
        /// The field.
        field: Field,
        /// First bit.
        start: u16,
        /// Last bit.
        end: u16,
        /// The field's width.
        bits: u16,
    },
    /// `move` between ranges of different widths.
    #[error("move: source {src} is {src_bits} bits but destination {dst} is {dst_bits} bits")]
    WidthMismatch {
        /// Source field.
        src: Field,
        /// Source width.
        src_bits: u16,
        /// Destination field.
        dst: Field,
        /// Destination width.
        dst_bits: u16,
    },
    /// An action after `goto_table`.
    #[error("goto_table must be the last action")]
    GotoNotLast,
    /// `goto_table` to this or an earlier table.
    #[error("goto_table:{to} in table {from} must go to a later table")]
    GotoBackwards {
        /// The flow's table.
        from: u8,
        /// The target.
        to: u8,
    },
    /// `resubmit` with neither port nor table.
    #[error("resubmit needs a port or a table")]
    EmptyResubmit,
    /// An action sets a tunnel ID wider than the tunnels carry.
    #[error("tun_id {0:#x} is out of range: VXLAN and Geneve carry a 24-bit VNI (0 to 0xffffff)")]
    TunnelIdTooWide(u64),
}

/// What went wrong in flow text.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorKind {
    /// A match field or setting name that does not exist.
    #[error("unknown field '{}'{}", excerpt(.name), suggest(.suggestion))]
    UnknownField {
        /// What was written.
        name: String,
        /// The closest known name, if close enough.
        suggestion: Option<&'static str>,
    },
    /// An action name that does not exist.
    #[error("unknown action '{}'{}", excerpt(.name), suggest(.suggestion))]
    UnknownAction {
        /// What was written.
        name: String,
        /// The closest known action, if close enough.
        suggestion: Option<&'static str>,
    },
    /// A value that does not parse for its field or action.
    #[error("invalid value '{}' for {} (expected {expected})", excerpt(.value), excerpt(.what))]
    BadValue {
        /// The field, setting or action.
        what: String,
        /// What was written.
        value: String,
        /// What is expected, in words.
        expected: String,
    },
    /// A field or setting without `=value`.
    #[error("{k} needs a value ({k}=...)", k = excerpt(.0))]
    MissingValue(String),
    /// A shorthand (`tcp`, `ip`) given a value.
    #[error("{} is a shorthand and takes no value", excerpt(.0))]
    UnexpectedValue(String),
    /// The same field set twice to different values (e.g. `tcp,udp`).
    #[error("{} is given twice with different values", excerpt(.0))]
    Conflict(String),
    /// A flow without `actions=`.
    #[error("missing 'actions=' (use 'actions=drop' to drop)")]
    MissingActions,
    /// `actions=` where only a match is allowed.
    #[error("actions are not allowed here (only a match)")]
    ActionsNotAllowed,
    /// A setting that is not allowed in this form (e.g. `idle_timeout` in a filter).
    #[error("{} is not allowed here", excerpt(.0))]
    NotAllowed(String),
    /// Anything else about the shape of the text.
    #[error("{0}")]
    Syntax(String),
    /// Well-formed text that is not a valid flow.
    #[error(transparent)]
    Invalid(#[from] FlowError),
}

fn suggest(s: &Option<&'static str>) -> String {
    match s {
        Some(s) => format!(" (did you mean {s}?)"),
        None => String::new(),
    }
}

/// An error in flow text, with where it is: `flow line 12: unknown field 'nw_sorc'
/// (did you mean nw_src?)`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// Line number (1-based) in a flows file; `None` for a single flow.
    pub line: Option<usize>,
    /// Column (1-based, in characters) where the offending token starts.
    pub column: usize,
    /// The offending token (an [`excerpt`] of it when it is long).
    pub token: String,
    /// What is wrong.
    pub kind: ParseErrorKind,
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "flow line {l}: {}", self.kind),
            None => write!(f, "flow: {}", self.kind),
        }
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

impl ParseError {
    /// The same error, placed on `line` of a file.
    pub fn at_line(mut self, line: usize) -> ParseError {
        self.line = Some(line);
        self
    }
}

/// An invalid change in a [`Bundle`](super::Bundle): names the change by its source line
/// when known, else by its index (1-based in the message).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BundleError {
    /// Index of the change in `Bundle::changes` (0-based).
    pub index: usize,
    /// Source line of the change, if it came from a file.
    pub line: Option<usize>,
    /// What is wrong with it.
    pub error: FlowError,
}

impl fmt::Display for BundleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(l) => write!(f, "flow line {l}: {}", self.error),
            None => write!(f, "change {}: {}", self.index + 1, self.error),
        }
    }
}

impl std::error::Error for BundleError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn line_at_and_one_line() {
        assert_eq!(line_at(b"a\nb\nc", 0), 1);
        assert_eq!(line_at(b"a\nb\nc", 2), 2);
        assert_eq!(line_at(b"a\nb\nc", 99), 3);
        assert_eq!(
            one_line("invalid table header\n  expected `.`, `]`\n\n"),
            "invalid table header; expected '.', ']'"
        );
    }
}
