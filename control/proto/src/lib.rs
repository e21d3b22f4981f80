//! `weft-proto`: the control protocol between `weftctl` (or any client) and `weftd`,
//! its client side ([`client`]) and the pcap writer of captures ([`pcap`]).
//!
//! It builds on `weft-flow` (the flows, filters and ports that requests carry) and is
//! used by both ends: `weftd`'s control server and `weftctl`. No datapath here.
//!
//! A Unix stream socket carrying one JSON object per line (at most [`MAX_LINE`] bytes,
//! newline included). Every request is an object with a numeric `id` and exactly one
//! more member, named after the operation, whose value holds its arguments:
//!
//! ```text
//! {"id":1,"hello":{"version":1}}
//! {"id":2,"bundle":{"text":"priority=100,ip,nw_dst=198.19.2.0/24 actions=output:tun0"}}
//! ```
//!
//! The response echoes the `id` and carries either `ok` (the operation's result, see the
//! `*Reply` types) or `error` ([`ErrorBody`]: a message, and for flows the source line
//! and the change index):
//!
//! ```text
//! {"id":1,"ok":{"name":"weftd","software":"0.1.0","version":1}}
//! {"id":2,"error":{"message":"flow line 3: unknown field 'nw_sorc' (did you mean nw_src?)","line":3}}
//! ```
//!
//! The first request on a connection must be `hello` with [`VERSION`].
//! `docs/control-protocol.md` has an example of every request.
//!
//! [`parse_request`] is the whole server-side reading of a line: JSON syntax, the
//! envelope, the operation's fields (unknown fields are refused everywhere), text forms
//! (flows text, filters, trace packets) parsed with the flow language's parser, and
//! every flow, change and port validated. A request that comes out of it is safe to
//! act on as a whole; a request that does not gets an [`ErrorBody`] that says what and
//! where. It never panics, whatever the bytes (a fuzz target checks that).

#![warn(missing_docs)]

pub mod client;
pub mod pcap;
pub mod sorted_json;

use std::collections::{BTreeMap, HashMap};
use std::fmt;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use weft_flow::port::PortSpec;
use weft_flow::{
    Bundle, BundleError, Flow, FlowFilter, FlowMod, FlowModCommand, Masked, Match, ParseError,
    excerpt, parse_filter, parse_flow_mod, parse_flows_file,
};

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// The longest request line the server reads (16 MiB, enough for a bundle of about
/// 100,000 flows in text form); a longer line gets an error and the connection is
/// closed.
pub const MAX_LINE: usize = 16 << 20;

/// The longest error message (in bytes) a response carries; [`Response::error`] cuts a
/// longer one. Messages quote input only as an [`excerpt`], so this is a last bound.
pub const MAX_ERROR_MESSAGE: usize = 1024;

/// The server's name in the `hello` reply.
pub const SERVER_NAME: &str = "weftd";

/// Why a request was refused, or an operation failed: what the response's `error`
/// member holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// One line, lower case, saying what was wrong and where.
    pub message: String,
    /// The source line of the offending flow (flows text or file), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<usize>,
    /// The index (0-based) of the offending change or flow in the request, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub index: Option<usize>,
}

impl ErrorBody {
    /// An error with only a message.
    pub fn new(message: impl Into<String>) -> ErrorBody {
        ErrorBody {
            message: message.into(),
            line: None,
            index: None,
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ErrorBody {}

impl From<ParseError> for ErrorBody {
    fn from(e: ParseError) -> Self {
        ErrorBody {
            message: e.to_string(),
            line: e.line,
            index: None,
        }
    }
}

impl From<BundleError> for ErrorBody {
    fn from(e: BundleError) -> Self {
        ErrorBody {
            message: e.to_string(),
            line: e.line,
            index: Some(e.index),
        }
    }
}

/// `hello`: the version handshake, first on every connection.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Hello {
    /// The protocol version the client speaks; must equal [`VERSION`].
    pub version: u32,
    /// The client's name, for the server's log.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
}

/// An operation without arguments: `{}` on the wire.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoArgs {}

/// `add_port`: create a port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddPort {
    /// The port as JSON; exactly one of `port` and `text`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<PortSpec>,
    /// The port in `add-port` words (`pod1 type=tap netns=pod1`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `del_port`: delete a port by name.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DelPort {
    /// The port's name.
    pub name: String,
}

/// `bundle`: flow changes applied as one (all or nothing).
///
/// Either `changes` (with optional `lines`, the source line of each change) or `text`,
/// a flows file whose every line is added.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleArgs {
    /// The changes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FlowMod>,
    /// Source line of each change (empty, or as long as `changes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<usize>,
    /// A flows file (one flow per line, `#` comments), every flow added.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

/// `replace_flows`: make the switch's flows equal to this list, changing only what
/// differs (one bundle; flows that stay keep their counters).
///
/// Either `flows` (with optional `lines`) or `text`, a flows file. With `cookie`, only
/// the installed flows whose cookie matches it are compared (added, changed or
/// deleted); every other flow is left alone, and every wanted flow's cookie must match.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplaceArgs {
    /// The wanted flows.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub flows: Vec<Flow>,
    /// Source line of each flow (empty, or as long as `flows`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<usize>,
    /// A flows file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Replace only the flows whose cookie matches (`{"value":V,"mask":M}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Masked<u64>>,
}

/// `dump_flows`: list flows with their counters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpFlowsArgs {
    /// Which flows (default: all).
    #[serde(default, skip_serializing_if = "is_all")]
    pub filter: FlowFilter,
    /// The filter in `dump-flows` text form (`table=0,ip`), instead of `filter`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// Answer in parts as the tables are walked: lines `{"id":N,"flows":[...]}` of at
    /// most [`DUMP_PART_FLOWS`] flows each, then `{"id":N,"ok":{"flows":COUNT}}`.
    #[serde(default, skip_serializing_if = "is_false")]
    pub stream: bool,
    /// What the parts of a streamed dump carry: the flows as JSON (`json`, the
    /// default) or as their `dump-flows` lines (`text`: parts `{"id":N,"text":"..."}`,
    /// see [`write_flow_line`]). `text` needs `stream`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub format: DumpFormat,
}

/// The form of a streamed dump's parts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DumpFormat {
    /// `{"id":N,"flows":[FlowStats...]}`.
    #[default]
    Json,
    /// `{"id":N,"text":"LINE\nLINE\n..."}`: each flow as [`write_flow_line`] prints
    /// it, with a newline after each.
    Text,
}

fn is_default<T: Default + PartialEq>(v: &T) -> bool {
    *v == T::default()
}

/// The most flows in one part of a streamed dump.
pub const DUMP_PART_FLOWS: usize = 1000;

/// The final answer of a streamed dump.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DumpDone {
    /// How many flows the parts carried.
    pub flows: usize,
}

/// What the flow lines of a `bundle_add` part are (as the `weftctl` command that sends
/// them): `add` (full flows, the default), `modify`/`modify_strict` (a filter and
/// `actions=`), `delete`/`delete_strict` (a filter).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PartCommand {
    /// `add-flows`: every line a flow.
    #[default]
    Add,
    /// `mod-flows`: every line a filter with `actions=`.
    Modify,
    /// `mod-flows --strict`.
    ModifyStrict,
    /// `del-flows`: every line a filter.
    Delete,
    /// `del-flows --strict`.
    DeleteStrict,
}

impl PartCommand {
    fn is_add(&self) -> bool {
        *self == PartCommand::Add
    }

    /// The flow language's form of the command.
    pub fn flow_mod_command(self) -> FlowModCommand {
        match self {
            PartCommand::Add => FlowModCommand::Add,
            PartCommand::Modify => FlowModCommand::Modify,
            PartCommand::ModifyStrict => FlowModCommand::ModifyStrict,
            PartCommand::Delete => FlowModCommand::Delete,
            PartCommand::DeleteStrict => FlowModCommand::DeleteStrict,
        }
    }
}

/// `bundle_open`: starts a bundle that is sent in parts ([`BundleAddArgs`]) and applied
/// whole at `bundle_commit` (OpenFlow 1.4's bundle model). It lives with the
/// connection: a connection that ends before the commit leaves nothing behind.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleOpenArgs {
    /// A replace-flows bundle: its parts are the wanted flows, and the commit changes
    /// only what differs (as `replace_flows`). Otherwise the parts are changes.
    #[serde(default, skip_serializing_if = "is_false")]
    pub replace: bool,
    /// A replace bundle restricted to the flows whose cookie matches (as
    /// [`ReplaceArgs::cookie`]); only with `replace`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<Masked<u64>>,
}

/// Parses a replace's cookie `V/MASK` (or `V`, an exact match) as `weftctl
/// replace-flows --cookie` takes it; the error is one line.
pub fn parse_cookie_mask(text: &str) -> Result<Masked<u64>, String> {
    let bad = || {
        format!(
            "bad value '{}' for cookie: expected VALUE/MASK, 64-bit numbers (e.g. \
             0x5745000000000000/0xffff000000000000)",
            excerpt(text)
        )
    };
    let (v, m) = match text.split_once('/') {
        Some((v, m)) => (v, Some(m)),
        None => (text, None),
    };
    let value = weft_flow::parse::parse_u64(v).ok_or_else(bad)?;
    let mask = match m {
        Some(m) => weft_flow::parse::parse_u64(m).ok_or_else(bad)?,
        None => u64::MAX,
    };
    let c = Masked { value, mask };
    check_cookie_mask(&c).map_err(|e| e.message)?;
    Ok(c)
}

/// A replace's cookie must have no value bits outside its mask.
fn check_cookie_mask(c: &Masked<u64>) -> Result<(), ErrorBody> {
    if !c.is_normalized() {
        return Err(ErrorBody::new(format!(
            "cookie: value {:#x} has bits outside mask {:#x}",
            c.value, c.mask
        )));
    }
    Ok(())
}

/// Checks that every wanted flow of a replace restricted to `cookie` has a matching
/// cookie (a flow outside the set could not be replaced by the next such replace);
/// `first` is the index of `flows[0]` in the whole request or bundle.
pub fn check_replace_cookie<'a>(
    cookie: &Masked<u64>,
    flows: impl IntoIterator<Item = &'a Flow>,
    lines: &[usize],
    first: usize,
) -> Result<(), ErrorBody> {
    for (i, f) in flows.into_iter().enumerate() {
        if !cookie.matches(f.cookie) {
            let line = lines.get(i).copied().filter(|l| *l > 0);
            return Err(ErrorBody {
                message: format!(
                    "{}: cookie {:#x} is outside the replaced cookies {:#x}/{:#x}",
                    line.map_or(format!("flow {}", first + i + 1), |l| format!(
                        "flow line {l}"
                    )),
                    f.cookie,
                    cookie.value,
                    cookie.mask
                ),
                line,
                index: Some(first + i),
            });
        }
    }
    Ok(())
}

fn is_false(b: &bool) -> bool {
    !*b
}

/// The result of `bundle_open`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleOpenReply {
    /// The bundle's number, for `bundle_add`, `bundle_commit` and `bundle_discard`.
    pub bundle: u64,
}

/// `bundle_add`: one part of an open bundle, checked as it arrives (a part with an
/// error discards the bundle). Either `changes` (with optional `lines`) or `text`,
/// lines of flow text read as `command` says, numbered from `first_line`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleAddArgs {
    /// The bundle (from `bundle_open`).
    pub bundle: u64,
    /// What the lines of `text` are (default `add`).
    #[serde(default, skip_serializing_if = "PartCommand::is_add")]
    pub command: PartCommand,
    /// The changes, in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub changes: Vec<FlowMod>,
    /// Source line of each change (empty, or as long as `changes`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lines: Vec<usize>,
    /// Lines of flow text (one change per line, `#` comments).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
    /// The line number of the first line of `text` in its file (default 1), so that
    /// errors and warnings name the file's line.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub first_line: Option<usize>,
}

/// The result of `bundle_add`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleAddReply {
    /// Changes (or, in a replace bundle, flows) the bundle holds so far.
    pub changes: usize,
}

/// `bundle_commit` and `bundle_discard`: which bundle.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BundleRef {
    /// The bundle (from `bundle_open`).
    pub bundle: u64,
}

fn is_all(f: &FlowFilter) -> bool {
    *f == FlowFilter::all()
}

/// `trace`: run a packet, described in flow syntax, through the pipeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TraceArgs {
    /// The packet: match fields in flow syntax
    /// (`in_port=pod1,tcp,nw_src=198.19.1.2,nw_dst=198.19.2.2,tp_dst=80`); fields not
    /// given are zero.
    pub packet: String,
}

/// `capture`: copy the frames a port receives and sends. The server answers with one
/// `frame` line per captured frame (same `id`), then a final `ok` ([`CaptureDone`])
/// when `count` frames were sent or `seconds` passed; closing the connection stops the
/// capture too. Only one capture runs on a port at a time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureArgs {
    /// The port to capture on.
    pub port: String,
    /// Stop after this many packets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
    /// Bytes kept of each frame (default 65535, at least 64).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snaplen: Option<u32>,
    /// Stop after this many seconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seconds: Option<u64>,
}

/// One captured frame, streamed during a `capture`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureFrame {
    /// Wall-clock time, nanoseconds since the Unix epoch.
    pub ts_ns: u64,
    /// Length on the wire (the data may be shorter: the snap length).
    pub len: u64,
    /// `rx` (received on the port) or `tx` (sent out of it).
    pub dir: String,
    /// The bytes kept, in hex.
    pub data: String,
}

/// The end of a `capture`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CaptureDone {
    /// Frames sent to the client.
    pub captured: u64,
    /// Copies skipped because the capture fell behind (the traffic itself was not).
    pub skipped: u64,
    /// The snap length used.
    pub snaplen: u32,
}

/// Lower-case hex of `data`.
pub fn to_hex(data: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(data.len() * 2);
    for b in data {
        s.push(DIGITS[usize::from(b >> 4)] as char);
        s.push(DIGITS[usize::from(b & 15)] as char);
    }
    s
}

/// The bytes of lower-case or upper-case `hex`; `None` if it is not hex.
pub fn from_hex(hex: &str) -> Option<Vec<u8>> {
    if !hex.len().is_multiple_of(2) {
        return None;
    }
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(hex.get(i..i + 2)?, 16).ok())
        .collect()
}

/// The operations, each with its arguments. On the wire the variant's name (snake
/// case) is the request's second member.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
// One per request line, never in bulk: boxing the filter would only cost clarity.
#[allow(clippy::large_enum_variant)]
pub enum Op {
    /// Version handshake → [`HelloReply`].
    Hello(Hello),
    /// Ports, flow count, pipeline version → [`ShowReply`].
    Show(NoArgs),
    /// Ports with numbers and options → [`PortsReply`].
    Ports(NoArgs),
    /// Create a port → [`AddPortReply`].
    AddPort(AddPort),
    /// Delete a port → [`Empty`].
    DelPort(DelPort),
    /// Apply flow changes atomically → [`BundleReply`].
    Bundle(BundleArgs),
    /// Replace all flows, changing only what differs → [`BundleReply`].
    ReplaceFlows(ReplaceArgs),
    /// Start a bundle sent in parts → [`BundleOpenReply`].
    BundleOpen(BundleOpenArgs),
    /// One part of an open bundle → [`BundleAddReply`].
    BundleAdd(BundleAddArgs),
    /// Apply an open bundle whole → [`BundleReply`].
    BundleCommit(BundleRef),
    /// Drop an open bundle → [`Empty`].
    BundleDiscard(BundleRef),
    /// Flows with counters → [`DumpFlowsReply`].
    DumpFlows(DumpFlowsArgs),
    /// Counters → [`StatsReply`].
    Stats(NoArgs),
    /// The MAC table of `normal` → [`FdbReply`].
    Fdb(NoArgs),
    /// Trace a packet → [`TraceReply`].
    Trace(TraceArgs),
    /// Packet capture → [`CaptureFrame`] lines, then [`CaptureDone`].
    Capture(CaptureArgs),
}

impl Op {
    /// The operation's wire name.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Hello(_) => "hello",
            Op::Show(_) => "show",
            Op::Ports(_) => "ports",
            Op::AddPort(_) => "add_port",
            Op::DelPort(_) => "del_port",
            Op::Bundle(_) => "bundle",
            Op::ReplaceFlows(_) => "replace_flows",
            Op::BundleOpen(_) => "bundle_open",
            Op::BundleAdd(_) => "bundle_add",
            Op::BundleCommit(_) => "bundle_commit",
            Op::BundleDiscard(_) => "bundle_discard",
            Op::DumpFlows(_) => "dump_flows",
            Op::Stats(_) => "stats",
            Op::Fdb(_) => "fdb",
            Op::Trace(_) => "trace",
            Op::Capture(_) => "capture",
        }
    }

    /// True for operations that change the switch.
    pub fn changes_state(&self) -> bool {
        matches!(
            self,
            Op::AddPort(_)
                | Op::DelPort(_)
                | Op::Bundle(_)
                | Op::ReplaceFlows(_)
                | Op::BundleCommit(_)
        )
    }
}

/// A request: its `id` and operation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Request {
    /// Chosen by the client, echoed in the response.
    pub id: u64,
    /// What to do.
    pub op: Op,
}

impl Request {
    /// The request as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        let mut obj = Map::new();
        obj.insert("id".into(), Value::from(self.id));
        if let Ok(Value::Object(op)) = serde_json::to_value(&self.op) {
            obj.extend(op);
        }
        Value::Object(obj).to_string()
    }
}

/// A request that was refused before anything was done: the `id` when it could be
/// read, and what was wrong.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestError {
    /// The request's `id`, if the line had a readable one.
    pub id: Option<u64>,
    /// What was wrong.
    pub error: ErrorBody,
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.error.message)
    }
}

impl std::error::Error for RequestError {}

/// Reads and checks one request line (without its newline): JSON syntax, the envelope
/// (`id`, exactly one operation), the operation's fields, text forms (parsed with the
/// flow language), and every flow, change, filter and port. The returned request has
/// its text forms replaced by structured ones (`text` fields are `None`), so
/// `parse_request(req.to_line())` gives it back unchanged.
pub fn parse_request(line: &[u8]) -> Result<Request, RequestError> {
    parse_request_keeping_text(line).map(|(req, _)| req)
}

/// The text a `bundle_add` part was parsed from, and where each of its changes' lines
/// is in it, so that a server can keep a change's own words (to journal a flow as it
/// was sent rather than print it again).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PartText {
    /// The part's text, as sent.
    pub text: String,
    /// For each change of the part, in order: its line's byte range in `text`
    /// (without a `#` comment or the newline).
    pub spans: Vec<std::ops::Range<usize>>,
}

impl PartText {
    /// The line change `i` of the part was parsed from.
    pub fn line(&self, i: usize) -> Option<&str> {
        self.spans.get(i).and_then(|r| self.text.get(r.clone()))
    }
}

/// [`parse_request`], also giving back the text of a `bundle_add` part sent as `text`
/// (the request itself has its text replaced by the changes, as always).
pub fn parse_request_keeping_text(
    line: &[u8],
) -> Result<(Request, Option<PartText>), RequestError> {
    let fail = |id, message: String| RequestError {
        id,
        error: ErrorBody::new(message),
    };
    if line.len() > MAX_LINE {
        return Err(fail(None, format!("request longer than {MAX_LINE} bytes")));
    }
    let text =
        std::str::from_utf8(line).map_err(|e| fail(None, format!("request is not utf-8 ({e})")))?;
    let value: Value =
        serde_json::from_str(text).map_err(|e| fail(None, format!("request is not json: {e}")))?;
    let Value::Object(mut obj) = value else {
        return Err(fail(None, "request is not a json object".into()));
    };
    let id = match obj.remove("id") {
        None => return Err(fail(None, "request has no 'id'".into())),
        Some(v) => v.as_u64().ok_or_else(|| {
            fail(
                None,
                format!(
                    "'id' must be a non-negative integer, got {}",
                    excerpt(&v.to_string())
                ),
            )
        })?,
    };
    if obj.len() != 1 {
        let msg = if obj.is_empty() {
            "request names no operation".to_string()
        } else {
            // At most a few names, each an excerpt: the keys are the client's input.
            let mut names: Vec<String> = obj
                .keys()
                .take(QUOTED_NAMES)
                .map(|k| excerpt(k).into_owned())
                .collect();
            if obj.len() > QUOTED_NAMES {
                names.push(format!("… ({} in all)", obj.len()));
            }
            format!(
                "request must name exactly one operation, got {}",
                names.join(", ")
            )
        };
        return Err(fail(Some(id), msg));
    }
    let op: Op = serde_json::from_value(Value::Object(obj)).map_err(|e| {
        fail(
            Some(id),
            format!("bad request: {}", clean_serde(&e.to_string())),
        )
    })?;
    let (op, part) = resolve(op).map_err(|error| RequestError {
        id: Some(id),
        error,
    })?;
    Ok((Request { id, op }, part))
}

/// The property the fuzz target and the corpus replay check: any bytes either give a
/// [`RequestError`] or a request whose line reads back to the same request. Panics
/// otherwise.
pub fn check_request(line: &[u8]) {
    if let Ok(req) = parse_request(line) {
        let again = req.to_line();
        match parse_request(again.as_bytes()) {
            Ok(back) => assert_eq!(back, req, "{again}"),
            Err(e) => panic!("{again} does not read back: {e}"),
        }
    }
}

/// How many of a request's operation names an error lists.
const QUOTED_NAMES: usize = 4;

/// serde_json appends "at line 1 column N" of the re-serialised value, which means
/// nothing to the client; drop it. What serde quotes of the input (an unknown field or
/// variant in backquotes, a string value in double quotes) is cut to an [`excerpt`].
fn clean_serde(msg: &str) -> String {
    let msg = match msg.rfind(" at line ") {
        Some(i) => &msg[..i],
        None => msg,
    };
    let mut out = String::new();
    let mut rest = msg;
    // Quoted parts alternate with the rest, whichever quote opens them.
    while let Some(open) = rest.find(['`', '"']) {
        let q = &rest[open..=open];
        out.push_str(&rest[..=open]);
        let inner = &rest[open + 1..];
        // serde writes a string value with Debug, so an inner quote is `\"`.
        let close = if q == "\"" {
            let mut at = None;
            let b = inner.as_bytes();
            let mut i = 0;
            while i < b.len() {
                match b[i] {
                    b'\\' => i += 2,
                    b'"' => {
                        at = Some(i);
                        break;
                    }
                    _ => i += 1,
                }
            }
            at
        } else {
            inner.find('`')
        };
        match close {
            Some(c) => {
                out.push_str(&excerpt(&inner[..c]));
                out.push_str(q);
                rest = &inner[c + 1..];
            }
            None => {
                out.push_str(&excerpt(inner));
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

fn both(what: &str) -> ErrorBody {
    ErrorBody::new(format!(
        "{what}: give either the json form or 'text', not both"
    ))
}

fn check_lines(n: usize, lines: &[usize], what: &str) -> Result<(), ErrorBody> {
    if !lines.is_empty() && lines.len() != n {
        return Err(ErrorBody::new(format!(
            "{what}: 'lines' has {} entries for {n} items",
            lines.len()
        )));
    }
    Ok(())
}

/// Replaces text forms by structured ones and validates everything; a `bundle_add`
/// part's text is given back.
fn resolve(op: Op) -> Result<(Op, Option<PartText>), ErrorBody> {
    if let Op::BundleAdd(a) = op {
        let (bundle, part) = match a.text {
            Some(_) if !a.changes.is_empty() || !a.lines.is_empty() => {
                return Err(both("bundle_add"));
            }
            // The parser's changes are canonical and checked already.
            Some(text) => {
                let mut spans = Vec::new();
                let b = parse_part_spans(&text, a.command, a.first_line.unwrap_or(1), &mut spans)?;
                (b, Some(PartText { text, spans }))
            }
            None => {
                check_lines(a.changes.len(), &a.lines, "bundle_add")?;
                let bundle = Bundle {
                    changes: a.changes,
                    lines: a.lines,
                };
                bundle.validate()?;
                (bundle, None)
            }
        };
        let op = Op::BundleAdd(BundleAddArgs {
            bundle: a.bundle,
            command: PartCommand::Add,
            changes: bundle.changes,
            lines: bundle.lines,
            text: None,
            first_line: None,
        });
        return Ok((op, part));
    }
    resolve_other(op).map(|op| (op, None))
}

/// [`resolve`] of every operation but `bundle_add`.
fn resolve_other(op: Op) -> Result<Op, ErrorBody> {
    Ok(match op {
        Op::AddPort(a) => {
            let spec = match (a.port, a.text) {
                (Some(_), Some(_)) => return Err(both("add_port")),
                (None, None) => return Err(ErrorBody::new("add_port needs 'port' or 'text'")),
                (Some(p), None) => p,
                (None, Some(t)) => {
                    let words: Vec<&str> = t.split_whitespace().collect();
                    let Some((name, args)) = words.split_first() else {
                        return Err(ErrorBody::new("add_port: empty port description"));
                    };
                    PortSpec::parse(name, args).map_err(|e| ErrorBody::new(e.to_string()))?
                }
            };
            spec.validate().map_err(|e| ErrorBody::new(e.to_string()))?;
            Op::AddPort(AddPort {
                port: Some(spec),
                text: None,
            })
        }
        Op::DelPort(d) => {
            weft_flow::port::validate_name(&d.name).map_err(|e| ErrorBody::new(e.to_string()))?;
            Op::DelPort(d)
        }
        Op::Bundle(b) => {
            let bundle = match b.text {
                Some(_) if !b.changes.is_empty() || !b.lines.is_empty() => {
                    return Err(both("bundle"));
                }
                Some(t) => weft_flow::parse_bundle_file(&t)?,
                None => {
                    check_lines(b.changes.len(), &b.lines, "bundle")?;
                    Bundle {
                        changes: b.changes,
                        lines: b.lines,
                    }
                }
            };
            bundle.validate()?;
            Op::Bundle(BundleArgs {
                changes: bundle.changes,
                lines: bundle.lines,
                text: None,
            })
        }
        Op::ReplaceFlows(r) => {
            let (flows, lines) = match r.text {
                Some(_) if !r.flows.is_empty() || !r.lines.is_empty() => {
                    return Err(both("replace_flows"));
                }
                Some(t) => {
                    let (lines, flows) = parse_flows_file(&t)?.into_iter().unzip();
                    (flows, lines)
                }
                None => {
                    check_lines(r.flows.len(), &r.lines, "replace_flows")?;
                    (r.flows, r.lines)
                }
            };
            if let Some(c) = &r.cookie {
                check_cookie_mask(c)?;
                check_replace_cookie(c, &flows, &lines, 0)?;
            }
            for (i, f) in flows.iter().enumerate() {
                f.validate().map_err(|error| {
                    ErrorBody::from(BundleError {
                        index: i,
                        line: lines.get(i).copied(),
                        error,
                    })
                })?;
            }
            Op::ReplaceFlows(ReplaceArgs {
                flows,
                lines,
                text: None,
                cookie: r.cookie,
            })
        }
        Op::BundleOpen(o) => {
            if let Some(c) = &o.cookie {
                if !o.replace {
                    return Err(ErrorBody::new(
                        "bundle_open: 'cookie' restricts a replace bundle; it needs 'replace'",
                    ));
                }
                check_cookie_mask(c)?;
            }
            Op::BundleOpen(o)
        }
        Op::DumpFlows(d) => {
            let filter = match d.text {
                Some(_) if !is_all(&d.filter) => return Err(both("dump_flows")),
                Some(t) => parse_filter(&t)?,
                None => d.filter,
            };
            filter
                .validate()
                .map_err(|e| ErrorBody::new(format!("filter: {e}")))?;
            if d.format == DumpFormat::Text && !d.stream {
                return Err(ErrorBody::new(
                    "dump_flows: 'format':'text' answers in parts; it needs 'stream':true",
                ));
            }
            Op::DumpFlows(DumpFlowsArgs {
                filter,
                text: None,
                stream: d.stream,
                format: d.format,
            })
        }
        Op::Trace(t) => {
            trace_packet(&t.packet)?;
            Op::Trace(t)
        }
        other => other,
    })
}

/// Reads the text of a bundle part: one change per line as `command` says, blank
/// lines and `#` comments skipped, the first line numbered `first_line` (errors and
/// the bundle's `lines` carry the file's line numbers).
pub fn parse_part(
    text: &str,
    command: PartCommand,
    first_line: usize,
) -> Result<Bundle, ErrorBody> {
    parse_part_spans(text, command, first_line, &mut Vec::new())
}

/// [`parse_part`], also noting in `spans` each change's line (its byte range in
/// `text`, without a comment).
pub fn parse_part_spans(
    text: &str,
    command: PartCommand,
    first_line: usize,
    spans: &mut Vec<std::ops::Range<usize>>,
) -> Result<Bundle, ErrorBody> {
    let cmd = command.flow_mod_command();
    let mut b = Bundle::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        if line.trim().is_empty() {
            continue;
        }
        let n = first_line.saturating_add(i);
        let change = parse_flow_mod(cmd, line).map_err(|e| ErrorBody::from(e.at_line(n)))?;
        b.changes.push(change);
        b.lines.push(n);
        // `line` is a slice of `text`: its offset is where it starts.
        let at = line.as_ptr() as usize - text.as_ptr() as usize;
        spans.push(at..at + line.len());
    }
    Ok(b)
}

/// The TTL (hop limit) of a traced IP packet that names none: what Linux sends with.
pub const TRACE_TTL: u8 = 64;

/// Reads a trace packet: match fields in flow syntax, nothing else (no `table`,
/// `cookie` or `priority`, no actions). A field left out is 0, except the TTL of an IP
/// packet: without `nw_ttl` it is [`TRACE_TTL`], as a real packet's would be (a TTL of
/// 0 ended every trace through `dec_ttl` in `ttl_expired`).
pub fn trace_packet(text: &str) -> Result<Match, ErrorBody> {
    let f = parse_filter(text).map_err(|e| ErrorBody::new(format!("packet: {}", e.kind)))?;
    if f.table.is_some() || f.cookie.is_some() || f.priority.is_some() {
        return Err(ErrorBody::new(
            "packet: only header fields (no table, cookie or priority)",
        ));
    }
    let mut m = f.matches;
    if (m.is_ipv4() || m.is_ipv6()) && m.nw_ttl.is_none() {
        m.nw_ttl = Some(weft_flow::Masked::exact(TRACE_TTL));
    }
    Ok(m)
}

/// A response as it travels: the echoed `id` (`null` when the request had none that
/// could be read) and either `ok` or `error`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The request's `id`.
    pub id: Option<u64>,
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    /// What went wrong, on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
    /// A frame of a running `capture` (neither `ok` nor `error`: more lines follow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub frame: Option<CaptureFrame>,
    /// A part of a streamed `dump_flows` (neither `ok` nor `error`: more lines follow).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flows: Option<Vec<FlowStats>>,
    /// A part of a streamed `dump_flows` with `"format":"text"`: its flows' lines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<String>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok<T: Serialize>(id: u64, result: &T) -> Response {
        match serde_json::to_value(result) {
            Ok(v) => Response {
                id: Some(id),
                ok: Some(v),
                error: None,
                frame: None,
                flows: None,
                text: None,
            },
            Err(e) => Response::error(Some(id), ErrorBody::new(format!("internal: {e}"))),
        }
    }

    /// A failure. A message longer than [`MAX_ERROR_MESSAGE`] bytes is cut there (with
    /// `…`): whatever quoted the input, an error reply stays small.
    pub fn error(id: Option<u64>, mut error: ErrorBody) -> Response {
        if error.message.len() > MAX_ERROR_MESSAGE {
            let mut end = MAX_ERROR_MESSAGE;
            while !error.message.is_char_boundary(end) {
                end -= 1;
            }
            error.message.truncate(end);
            error.message.push('…');
        }
        Response {
            id,
            ok: None,
            error: Some(error),
            frame: None,
            flows: None,
            text: None,
        }
    }

    /// The response as one JSON line (without the newline).
    pub fn to_line(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|e| {
            format!("{{\"id\":null,\"error\":{{\"message\":\"internal: {e}\"}}}}")
        })
    }

    /// The result as `T`, or the error.
    pub fn into_result<T: DeserializeOwned>(self) -> Result<T, ErrorBody> {
        match (self.ok, self.error) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => serde_json::from_value(v)
                .map_err(|e| ErrorBody::new(format!("unexpected reply: {e}"))),
            (None, None) => Err(ErrorBody::new("reply has neither 'ok' nor 'error'")),
        }
    }
}

/// An empty result (`{}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Empty {}

/// The result of `hello`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HelloReply {
    /// The server's protocol version.
    pub version: u32,
    /// The server's name (`weftd`).
    pub name: String,
    /// The server's software version.
    pub software: String,
}

/// Whether a port is forwarding.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PortState {
    /// Its device or sockets are open.
    #[default]
    Up,
    /// Its device or sockets could not be opened (at start: the pod's namespace is
    /// gone, the local address is missing); `weftd` tries again every few seconds, and
    /// `del-port` removes it.
    Down,
}

impl PortState {
    /// `up` or `down`.
    pub fn as_str(self) -> &'static str {
        match self {
            PortState::Up => "up",
            PortState::Down => "down",
        }
    }
}

/// A port with its number and options.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortInfo {
    /// The port's number.
    pub ofport: u32,
    /// The port's name.
    pub name: String,
    /// `tap`, `vxlan`, `geneve` or `ipip`.
    #[serde(rename = "type")]
    pub port_type: String,
    /// The options in `add-port` form (`remote=flow key=flow dst_port=4789`), without
    /// name, type and number.
    pub options: String,
    /// The full description.
    pub spec: PortSpec,
    /// For tunnels: the inner MTU in force.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// Up or down.
    #[serde(default)]
    pub state: PortState,
    /// Why the port is down (the last attempt's error).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// For VXLAN/Geneve ports that are up: the underlay that carries them,
    /// `tunnel-GSO TAP wgso4789` or `sockets (why)` (`tunnel_gso off`, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub underlay: Option<String>,
}

impl PortInfo {
    /// Describes a port that has its number.
    pub fn from_spec(spec: &PortSpec, mtu: Option<u16>) -> PortInfo {
        let words = spec.to_string();
        let options: Vec<&str> = words
            .split_whitespace()
            .skip(1)
            .filter(|w| !w.starts_with("type=") && !w.starts_with("ofport="))
            .collect();
        PortInfo {
            ofport: spec.ofport.unwrap_or(0),
            name: spec.name.clone(),
            port_type: spec.port_type().to_string(),
            options: options.join(" "),
            spec: spec.clone(),
            mtu,
            state: PortState::Up,
            error: None,
            underlay: None,
        }
    }

    /// The same port, marked down because of `error`.
    pub fn down(mut self, error: &str) -> PortInfo {
        self.state = PortState::Down;
        self.error = Some(error.to_string());
        self
    }
}

/// The result of `ports`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortsReply {
    /// Every port, by number.
    pub ports: Vec<PortInfo>,
}

/// The result of `show`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShowReply {
    /// The server's software version.
    pub software: String,
    /// Every port, by number.
    pub ports: Vec<PortInfo>,
    /// Number of flows installed.
    pub flows: usize,
    /// Flows per table in use (table, flows).
    pub tables: Vec<(u8, usize)>,
    /// The published pipeline version.
    pub pipeline_version: u64,
}

/// The result of `add_port`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddPortReply {
    /// The number the port got.
    pub ofport: u32,
}

/// The result of `bundle` and `replace_flows`: what changed.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BundleReply {
    /// The pipeline version published (the current one when nothing changed).
    pub version: u64,
    /// Flows added.
    pub added: usize,
    /// Flows replaced by an add of the same identity.
    pub replaced: usize,
    /// Flows whose actions a modify changed.
    pub modified: usize,
    /// Flows deleted.
    pub deleted: usize,
    /// `replace_flows` only: flows left alone because they did not change.
    #[serde(default)]
    pub unchanged: usize,
    /// What was applied but probably not meant: a port number no port has (in
    /// `in_port=`, `output:` or `resubmit`), one line each, at most
    /// [`MAX_WARNINGS`]. Absent when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// The most warnings a [`BundleReply`] carries (the last one says how many more).
pub const MAX_WARNINGS: usize = 16;

/// One flow with its counters.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowStats {
    /// The flow (ports as numbers).
    pub flow: Flow,
    /// Packets that matched it.
    pub packets: u64,
    /// Bytes of those packets.
    pub bytes: u64,
    /// Milliseconds since it was installed.
    pub duration_ms: u64,
    /// Milliseconds since a packet last matched it (since installed, if none).
    pub idle_age_ms: u64,
}

impl FlowStats {
    /// The flow's `dump-flows` line (see [`write_flow_line`]) appended to `out`.
    pub fn write_line(&self, out: &mut String) {
        write_flow_line(
            out,
            &self.flow,
            self.packets,
            self.bytes,
            self.duration_ms,
            self.idle_age_ms,
        );
    }
}

/// One `dump-flows` line, as `ovs-ofctl dump-flows` prints it, appended to `out`
/// (without a newline): ` cookie=0x0, duration=12.345s, table=0, n_packets=10,
/// n_bytes=980, idle_age=3, priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2`
/// (`idle_timeout=N, ` and `hard_timeout=N, ` before `idle_age` when set). `weftd`
/// writes the parts of a text dump with this and `weftctl` prints a JSON dump with
/// it, so both forms print the same bytes. Allocates nothing once `out` has room.
pub fn write_flow_line(
    out: &mut String,
    flow: &Flow,
    packets: u64,
    bytes: u64,
    duration_ms: u64,
    idle_age_ms: u64,
) {
    use std::fmt::Write as _;
    out.push_str(" cookie=");
    push_hex(out, flow.cookie);
    out.push_str(", duration=");
    push_u64(out, duration_ms / 1000);
    let ms = (duration_ms % 1000) as u32;
    out.push('.');
    out.push(char::from(b'0' + (ms / 100) as u8));
    out.push(char::from(b'0' + (ms / 10 % 10) as u8));
    out.push(char::from(b'0' + (ms % 10) as u8));
    out.push_str("s, table=");
    push_u64(out, u64::from(flow.table));
    out.push_str(", n_packets=");
    push_u64(out, packets);
    out.push_str(", n_bytes=");
    push_u64(out, bytes);
    out.push_str(", ");
    if flow.idle_timeout != 0 {
        out.push_str("idle_timeout=");
        push_u64(out, u64::from(flow.idle_timeout));
        out.push_str(", ");
    }
    if flow.hard_timeout != 0 {
        out.push_str("hard_timeout=");
        push_u64(out, u64::from(flow.hard_timeout));
        out.push_str(", ");
    }
    out.push_str("idle_age=");
    push_u64(out, idle_age_ms / 1000);
    out.push_str(", ");
    // Writing to a String cannot fail.
    let _ = write!(out, "{}", flow.rule());
}

/// `n` in decimal.
fn push_u64(out: &mut String, n: u64) {
    out.push_str(itoa::Buffer::new().format(n));
}

/// `n` as `{:#x}` prints it: `0x` and lower-case hex digits, no leading zeros.
fn push_hex(out: &mut String, n: u64) {
    let mut b = [0u8; 18];
    let mut i = b.len();
    let mut v = n;
    loop {
        i -= 1;
        b[i] = b"0123456789abcdef"[(v & 0xf) as usize];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    i -= 2;
    b[i] = b'0';
    b[i + 1] = b'x';
    // Only ASCII was written.
    out.push_str(std::str::from_utf8(&b[i..]).unwrap_or_default());
}

/// The result of `dump_flows`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpFlowsReply {
    /// The selected flows, by table, then priority (highest first).
    pub flows: Vec<FlowStats>,
}

/// The counters of one port.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PortCounters {
    /// The port's number.
    pub ofport: u32,
    /// The port's name.
    pub name: String,
    /// Frames received.
    pub rx_packets: u64,
    /// Bytes received.
    pub rx_bytes: u64,
    /// Frames received and dropped (every reason that is not a transmit reason).
    pub rx_dropped: u64,
    /// Frames sent.
    pub tx_packets: u64,
    /// Bytes sent.
    pub tx_bytes: u64,
    /// Frames that could not be sent (see [`is_tx_drop`]).
    pub tx_dropped: u64,
    /// Every non-zero drop counter of the port, by reason.
    pub drops: BTreeMap<String, u64>,
    /// Up or down (a port that is down has no counters).
    #[serde(default)]
    pub state: PortState,
    /// Why the port is down.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

pub use weft_flow::port::is_tx_drop;

impl PortCounters {
    /// Builds the counters, splitting the drops into receive and transmit.
    pub fn new(
        ofport: u32,
        name: &str,
        rx: (u64, u64),
        tx: (u64, u64),
        drops: impl IntoIterator<Item = (String, u64)>,
    ) -> PortCounters {
        let drops: BTreeMap<String, u64> = drops.into_iter().collect();
        let tx_dropped = drops
            .iter()
            .filter(|(r, _)| is_tx_drop(r))
            .map(|(_, n)| n)
            .sum();
        let rx_dropped = drops
            .iter()
            .filter(|(r, _)| !is_tx_drop(r))
            .map(|(_, n)| n)
            .sum();
        PortCounters {
            ofport,
            name: name.to_string(),
            rx_packets: rx.0,
            rx_bytes: rx.1,
            rx_dropped,
            tx_packets: tx.0,
            tx_bytes: tx.1,
            tx_dropped,
            drops,
            state: PortState::Up,
            error: None,
        }
    }
}

/// The counters of one table.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableCounters {
    /// The table's number.
    pub table: u8,
    /// Flows installed.
    pub flows: u64,
    /// Lookups.
    pub lookups: u64,
    /// Lookups that matched.
    pub matches: u64,
    /// Lookups that missed.
    pub misses: u64,
}

/// The result of `stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatsReply {
    /// Per port, by number.
    pub ports: Vec<PortCounters>,
    /// Per table in use.
    pub tables: Vec<TableCounters>,
    /// Datapath drops by reason (non-zero only).
    pub drops: BTreeMap<String, u64>,
    /// Flow cache hits (all workers).
    pub cache_hits: u64,
    /// Flow cache misses (all workers).
    pub cache_misses: u64,
    /// The published pipeline version.
    pub pipeline_version: u64,
}

/// One entry of the MAC table.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbEntry {
    /// The port it was learned on.
    pub port: u32,
    /// That port's name, if it still exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_name: Option<String>,
    /// The VNI (`tun_id`) it is scoped to; the VLAN column of `fdb/show`.
    pub vni: u64,
    /// The MAC address.
    pub mac: weft_flow::MacAddr,
    /// Milliseconds since it was last seen.
    pub age_ms: u64,
    /// The tunnel peer it came from, for entries learned on a tunnel.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub remote: Option<std::net::IpAddr>,
}

/// The result of `fdb`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FdbReply {
    /// The live entries.
    pub entries: Vec<FdbEntry>,
    /// Entries the table can hold.
    #[serde(default)]
    pub capacity: u64,
    /// Entries evicted because their set was full (least recently seen first).
    #[serde(default)]
    pub evictions: u64,
}

/// One step of a trace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum TraceStep {
    /// A table lookup.
    Table {
        /// Resubmit nesting depth (0 = the main walk).
        depth: u32,
        /// The table.
        table: u8,
        /// The matching flow in text form, `None` for a miss.
        flow: Option<String>,
    },
    /// An action of the matched flow.
    Action {
        /// Resubmit nesting depth.
        depth: u32,
        /// The action in text form.
        action: String,
    },
    /// Processing stopped, or an output was skipped, and why.
    Note {
        /// Resubmit nesting depth.
        depth: u32,
        /// The drop reason's label.
        reason: String,
    },
}

/// The result of `trace`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct TraceReply {
    /// The trace as `ofproto/trace` prints it.
    pub text: String,
    /// Each table visited, action run and stop.
    pub steps: Vec<TraceStep>,
    /// The final datapath actions in text form (`output:2`, `normal: learned port 3`).
    pub actions: Vec<String>,
    /// Why the packet is dropped, when there are no actions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub drop: Option<String>,
}

/// The changes that make the installed flows equal to `wanted`, touching only what
/// differs: a delete-strict for every installed flow whose identity (table, priority,
/// match) is not wanted, an add for every wanted flow that is new or differs in
/// anything else (actions, cookie, timeouts); flows that are equal are left alone
/// (and so keep their counters). Deletes come first. A wanted flow given twice counts
/// once (the last one wins, as adds would).
///
/// Both lists must be in the same canonical form (the switch compares the flows it
/// dumps with the wanted flows as it would install them: ports as numbers). `wanted`
/// carries each flow's source line, kept on its add.
pub fn replace_diff(current: &[Flow], wanted: &[(usize, Flow)]) -> (Bundle, usize) {
    type Identity<'a> = (u8, u16, &'a Match);
    let mut want: HashMap<Identity<'_>, (usize, &Flow)> = HashMap::with_capacity(wanted.len());
    let mut order: Vec<Identity<'_>> = Vec::with_capacity(wanted.len());
    for (line, f) in wanted {
        let id = (f.table, f.priority, &f.matches);
        if want.insert(id, (*line, f)).is_none() {
            order.push(id);
        }
    }
    let have: HashMap<Identity<'_>, &Flow> = current
        .iter()
        .map(|f| ((f.table, f.priority, &f.matches), f))
        .collect();
    let mut bundle = Bundle::default();
    for f in current {
        if !want.contains_key(&(f.table, f.priority, &f.matches)) {
            bundle.changes.push(FlowMod::DeleteStrict {
                filter: FlowFilter {
                    table: Some(f.table),
                    cookie: None,
                    priority: Some(f.priority),
                    matches: f.matches.clone(),
                },
            });
            bundle.lines.push(0);
        }
    }
    let mut unchanged = 0;
    for id in order {
        let (line, f) = want[&id];
        if have.get(&id).is_some_and(|h| *h == f) {
            unchanged += 1;
            continue;
        }
        bundle.changes.push(FlowMod::Add { flow: f.clone() });
        bundle.lines.push(line);
    }
    if bundle.lines.iter().all(|l| *l == 0) {
        bundle.lines.clear();
    }
    (bundle, unchanged)
}

#[cfg(test)]
mod tests {
    use super::*;
    use weft_flow::parse_flow;

    fn err(line: &str) -> RequestError {
        parse_request(line.as_bytes()).expect_err(line)
    }

    /// A `bundle_add` part's text comes back with each change's line (comments,
    /// blank lines and the newline left out), and the request is the canonical one.
    #[test]
    fn a_part_keeps_the_line_of_each_change() {
        let text = "table=1,priority=5,ip actions=drop # one\n\n# two\n  priority=3,arp actions=normal\r\n";
        let line = serde_json::json!({"id": 4, "bundle_add": {"bundle": 1, "text": text, "first_line": 7}})
            .to_string();
        let (req, part) = parse_request_keeping_text(line.as_bytes()).unwrap();
        assert_eq!(req, parse_request(line.as_bytes()).unwrap());
        let Op::BundleAdd(a) = &req.op else {
            panic!("{req:?}")
        };
        assert_eq!(a.lines, [7, 10]);
        let part = part.expect("a part sent as text");
        assert_eq!(part.text, text);
        assert_eq!(part.line(0), Some("table=1,priority=5,ip actions=drop "));
        assert_eq!(part.line(1), Some("  priority=3,arp actions=normal"));
        assert_eq!(part.line(2), None);
        for (i, c) in a.changes.iter().enumerate() {
            let flow = parse_flow(part.line(i).unwrap()).unwrap();
            assert_eq!(c, &FlowMod::Add { flow });
        }
        // Changes sent as JSON have no text.
        let json = req.to_line();
        assert_eq!(parse_request_keeping_text(json.as_bytes()).unwrap().1, None);
    }

    /// The `dump-flows` line as `weftctl` printed it before the line was shared with
    /// `weftd` (through `fmt`): the reference for [`write_flow_line`].
    fn reference_flow_line(s: &FlowStats) -> String {
        use std::fmt::Write as _;
        let mut out = String::new();
        let f = &s.flow;
        let _ = write!(
            out,
            " cookie={:#x}, duration={}.{:03}s, table={}, n_packets={}, n_bytes={}, ",
            f.cookie,
            s.duration_ms / 1000,
            s.duration_ms % 1000,
            f.table,
            s.packets,
            s.bytes
        );
        if f.idle_timeout != 0 {
            let _ = write!(out, "idle_timeout={}, ", f.idle_timeout);
        }
        if f.hard_timeout != 0 {
            let _ = write!(out, "hard_timeout={}, ", f.hard_timeout);
        }
        let _ = write!(out, "idle_age={}, {}", s.idle_age_ms / 1000, f.rule());
        out
    }

    #[test]
    fn flow_lines_are_what_dump_flows_printed_before() {
        let flows = [
            "priority=100,ip,nw_dst=198.19.2.0/24 actions=output:2",
            "cookie=0x2a,table=1,idle_timeout=10,hard_timeout=20,arp actions=normal",
            "cookie=0xffffffffffffffff,table=253,priority=0 actions=drop",
            "table=7,hard_timeout=65535,ipv6,ipv6_dst=2001:2::/48 actions=dec_ttl,flood",
            "priority=65535,tcp,in_port=3,tp_dst=80,reg0=0x5/0xff actions=set_field:0x1->reg1,move:NXM_NX_REG0[0..15]->NXM_NX_REG2[0..15],resubmit(,4)",
            "idle_timeout=1,dl_src=02:00:00:00:aa:01/ff:ff:ff:00:00:00 actions=mod_dl_dst:02:00:00:00:00:fe,in_port",
        ];
        // Durations and ages around every digit boundary, counters up to the largest.
        let clocks = [
            (0, 0),
            (5, 999),
            (1000, 1001),
            (12_345, 3_999),
            (99_999_999, 100_000),
            (u64::MAX, u64::MAX),
        ];
        let counters = [(0, 0), (10, 980), (u64::MAX, u64::MAX - 1)];
        let mut out = String::new();
        for text in flows {
            let flow = parse_flow(text).unwrap();
            for &(duration_ms, idle_age_ms) in &clocks {
                for &(packets, bytes) in &counters {
                    let s = FlowStats {
                        flow: flow.clone(),
                        packets,
                        bytes,
                        duration_ms,
                        idle_age_ms,
                    };
                    out.clear();
                    out.push_str("kept|");
                    s.write_line(&mut out);
                    assert_eq!(out, format!("kept|{}", reference_flow_line(&s)));
                }
            }
        }
        assert_eq!(
            {
                out.clear();
                write_flow_line(&mut out, &parse_flow(flows[1]).unwrap(), 7, 700, 5, 5);
                out
            },
            " cookie=0x2a, duration=0.005s, table=1, n_packets=7, n_bytes=700, \
             idle_timeout=10, hard_timeout=20, idle_age=0, arp actions=normal"
        );
    }

    #[test]
    fn a_text_dump_must_be_streamed() {
        let e = err(r#"{"id":1,"dump_flows":{"format":"text"}}"#);
        assert_eq!(
            e.error.message,
            "dump_flows: 'format':'text' answers in parts; it needs 'stream':true"
        );
        let e = err(r#"{"id":1,"dump_flows":{"format":"html","stream":true}}"#);
        assert!(
            e.error.message.contains("unknown variant `html`"),
            "{}",
            e.error.message
        );
        let r = parse_request(
            br#"{"id":2,"dump_flows":{"format":"text","stream":true,"text":"table=3"}}"#,
        )
        .unwrap();
        let Op::DumpFlows(d) = r.op else { panic!() };
        assert_eq!(d.format, DumpFormat::Text);
        assert_eq!(d.filter.table, Some(3));
        // The default is left out, so that older servers read the request as before.
        let line = Request {
            id: 3,
            op: Op::DumpFlows(DumpFlowsArgs {
                stream: true,
                ..DumpFlowsArgs::default()
            }),
        }
        .to_line();
        assert_eq!(line, r#"{"dump_flows":{"stream":true},"id":3}"#);
    }

    #[test]
    fn hello_round_trip() {
        let r = parse_request(br#"{"id":1,"hello":{"version":1}}"#).unwrap();
        assert_eq!(
            r,
            Request {
                id: 1,
                op: Op::Hello(Hello {
                    version: 1,
                    client: None
                })
            }
        );
        assert_eq!(r.to_line(), r#"{"hello":{"version":1},"id":1}"#);
        assert_eq!(parse_request(r.to_line().as_bytes()).unwrap(), r);
    }

    #[test]
    fn text_forms_resolve_and_round_trip() {
        let r = parse_request(
            br##"{"id":7,"bundle":{"text":"# c\npriority=10,ip actions=normal\n\ntable=1 actions=drop\n"}}"##,
        )
        .unwrap();
        let Op::Bundle(b) = &r.op else { panic!() };
        assert_eq!(b.changes.len(), 2);
        assert_eq!(b.lines, vec![2, 4]);
        assert!(b.text.is_none());
        assert_eq!(parse_request(r.to_line().as_bytes()).unwrap(), r);

        let r = parse_request(br#"{"id":8,"dump_flows":{"text":"table=0,ip"}}"#).unwrap();
        let Op::DumpFlows(d) = &r.op else { panic!() };
        assert_eq!(d.filter.table, Some(0));
        assert_eq!(parse_request(r.to_line().as_bytes()).unwrap(), r);

        let r = parse_request(
            br#"{"id":9,"add_port":{"text":"vx0 type=vxlan local=127.0.0.1 dst_port=4790"}}"#,
        )
        .unwrap();
        assert_eq!(parse_request(r.to_line().as_bytes()).unwrap(), r);

        let r = parse_request(br#"{"id":10,"replace_flows":{"text":"priority=1 actions=drop\n"}}"#)
            .unwrap();
        assert_eq!(parse_request(r.to_line().as_bytes()).unwrap(), r);
    }

    #[test]
    fn every_op_round_trips() {
        let flow = parse_flow("priority=100,ip,nw_dst=198.19.2.0/24 actions=output:3").unwrap();
        let ops = vec![
            Op::Hello(Hello {
                version: 1,
                client: Some("weftctl".into()),
            }),
            Op::Show(NoArgs {}),
            Op::Ports(NoArgs {}),
            Op::AddPort(AddPort {
                port: Some(PortSpec::parse("pod1", &["type=tap", "netns=pod1"]).unwrap()),
                text: None,
            }),
            Op::DelPort(DelPort {
                name: "pod1".into(),
            }),
            Op::Bundle(BundleArgs {
                changes: vec![FlowMod::Add { flow: flow.clone() }],
                lines: vec![3],
                text: None,
            }),
            Op::ReplaceFlows(ReplaceArgs {
                flows: vec![flow.clone()],
                lines: vec![],
                text: None,
                cookie: None,
            }),
            Op::ReplaceFlows(ReplaceArgs {
                flows: vec![flow.clone()],
                lines: vec![],
                text: None,
                cookie: Some(Masked {
                    value: flow.cookie,
                    mask: u64::MAX,
                }),
            }),
            Op::BundleOpen(BundleOpenArgs {
                replace: true,
                cookie: Some(Masked {
                    value: 0x5745_0000_0000_0000,
                    mask: 0xffff_0000_0000_0000,
                }),
            }),
            Op::DumpFlows(DumpFlowsArgs::default()),
            Op::DumpFlows(DumpFlowsArgs {
                stream: true,
                ..DumpFlowsArgs::default()
            }),
            Op::DumpFlows(DumpFlowsArgs {
                stream: true,
                format: DumpFormat::Text,
                ..DumpFlowsArgs::default()
            }),
            Op::BundleOpen(BundleOpenArgs {
                replace: true,
                cookie: None,
            }),
            Op::BundleAdd(BundleAddArgs {
                bundle: 2,
                changes: vec![FlowMod::Add { flow: flow.clone() }],
                lines: vec![7],
                ..BundleAddArgs::default()
            }),
            Op::BundleCommit(BundleRef { bundle: 2 }),
            Op::BundleDiscard(BundleRef { bundle: 3 }),
            Op::Stats(NoArgs {}),
            Op::Fdb(NoArgs {}),
            Op::Trace(TraceArgs {
                packet: "in_port=1,tcp,tp_dst=80".into(),
            }),
            Op::Capture(CaptureArgs {
                port: "pod1".into(),
                count: Some(3),
                snaplen: Some(128),
                seconds: None,
            }),
        ];
        for (i, op) in ops.into_iter().enumerate() {
            let r = Request { id: i as u64, op };
            let back = parse_request(r.to_line().as_bytes()).unwrap();
            assert_eq!(back, r, "{}", r.to_line());
        }
    }

    #[test]
    fn bundle_parts_name_the_files_lines() {
        // A part starting at line 1001 of its file: lines keep the file's numbers,
        // comments and blank lines count as lines but hold no change.
        let line = r##"{"id":5,"bundle_add":{"bundle":1,"first_line":1001,"text":"# c\npriority=1 actions=drop\n\npriority=2,ip actions=drop\n"}}"##;
        let Op::BundleAdd(a) = parse_request(line.as_bytes()).unwrap().op else {
            panic!("not a bundle_add");
        };
        assert_eq!(a.lines, vec![1002, 1004]);
        assert_eq!(a.changes.len(), 2);
        assert_eq!(a.text, None);
        let bad = r#"{"id":6,"bundle_add":{"bundle":1,"first_line":1001,"text":"priority=1 actions=drop\npriority=2,tcp,tp_dts=1 actions=drop\n"}}"#;
        let e = err(bad);
        assert_eq!(e.id, Some(6));
        assert_eq!(e.error.line, Some(1002));
        assert_eq!(
            e.error.message,
            "flow line 1002: unknown field 'tp_dts' (did you mean tp_dst?)"
        );
        // Delete parts are filters, strict ones with a priority.
        let del = r#"{"id":7,"bundle_add":{"bundle":1,"command":"delete_strict","text":"priority=9,ip,nw_dst=198.19.0.1\n"}}"#;
        let Op::BundleAdd(a) = parse_request(del.as_bytes()).unwrap().op else {
            panic!("not a bundle_add");
        };
        assert!(
            matches!(&a.changes[0], FlowMod::DeleteStrict { filter } if filter.priority == Some(9))
        );
        assert_eq!(a.lines, vec![1]);
        // A delete part has no actions; text and changes are not both given.
        assert!(
            err(
                r#"{"id":8,"bundle_add":{"bundle":1,"command":"delete","text":"ip actions=drop"}}"#
            )
            .error
            .message
            .starts_with("flow line 1: ")
        );
        assert_eq!(
            err(r#"{"id":9,"bundle_add":{"bundle":1,"text":"","changes":[{"command":"delete","filter":{}}]}}"#)
                .error
                .message,
            "bundle_add: give either the json form or 'text', not both"
        );
    }

    #[test]
    fn responses_round_trip() {
        let ok = Response::ok(
            3,
            &HelloReply {
                version: 1,
                name: "weftd".into(),
                software: "0.1.0".into(),
            },
        );
        let line = ok.to_line();
        assert_eq!(
            line,
            r#"{"id":3,"ok":{"name":"weftd","software":"0.1.0","version":1}}"#
        );
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_result::<HelloReply>().unwrap().version, 1);
        let e = Response::error(
            None,
            ErrorBody {
                message: "flow line 3: x".into(),
                line: Some(3),
                index: Some(2),
            },
        );
        let line = e.to_line();
        assert_eq!(
            line,
            r#"{"id":null,"error":{"message":"flow line 3: x","line":3,"index":2}}"#
        );
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back.into_result::<Empty>().unwrap_err().line, Some(3));
    }

    #[test]
    fn malformed_requests_are_refused_cleanly() {
        let e = err("not json");
        assert!(e.error.message.starts_with("request is not json"), "{e}");
        assert_eq!(e.id, None);
        assert!(err("[1,2]").error.message.contains("not a json object"));
        assert_eq!(err(r#"{"show":{}}"#).error.message, "request has no 'id'");
        assert!(
            err(r#"{"id":-1,"show":{}}"#)
                .error
                .message
                .contains("'id' must be")
        );
        assert!(
            err(r#"{"id":"a","show":{}}"#)
                .error
                .message
                .contains("'id' must be")
        );
        let e = err(r#"{"id":4,"frobnicate":{}}"#);
        assert_eq!(e.id, Some(4));
        assert!(
            e.error.message.contains("unknown variant `frobnicate`"),
            "{e}"
        );
        assert!(
            err(r#"{"id":4}"#)
                .error
                .message
                .contains("names no operation")
        );
        assert!(
            err(r#"{"id":4,"show":{},"stats":{}}"#)
                .error
                .message
                .contains("exactly one operation")
        );
        let e = err(r#"{"id":4,"show":{"x":1}}"#);
        assert!(e.error.message.contains("unknown field `x`"), "{e}");
        let e = err(r#"{"id":4,"hello":{"version":1,"extra":true}}"#);
        assert!(e.error.message.contains("unknown field `extra`"), "{e}");
        // Invalid UTF-8.
        assert!(
            parse_request(b"{\"id\":1,\xff}")
                .unwrap_err()
                .error
                .message
                .contains("utf-8")
        );
        // Oversized.
        let big = vec![b' '; MAX_LINE + 1];
        assert!(
            parse_request(&big)
                .unwrap_err()
                .error
                .message
                .contains("longer than")
        );
    }

    #[test]
    fn bad_flows_name_their_line_or_index() {
        let e = err(
            r#"{"id":5,"bundle":{"text":"actions=drop\n\npriority=1,nw_sorc=1.2.3.4 actions=drop\n"}}"#,
        );
        assert_eq!(e.id, Some(5));
        assert_eq!(e.error.line, Some(3));
        assert_eq!(
            e.error.message,
            "flow line 3: unknown field 'nw_sorc' (did you mean nw_src?)"
        );
        // A JSON flow whose match lacks a prerequisite (tp_dst without tcp).
        let mut bad = Flow::default();
        bad.matches.tp_dst = Some(weft_flow::Masked::exact(80));
        let good = Flow::default();
        let req = Request {
            id: 6,
            op: Op::Bundle(BundleArgs {
                changes: vec![
                    FlowMod::Add { flow: good.clone() },
                    FlowMod::Add { flow: bad.clone() },
                ],
                lines: vec![],
                text: None,
            }),
        };
        let e = parse_request(req.to_line().as_bytes()).unwrap_err();
        assert_eq!(e.error.index, Some(1));
        assert!(
            e.error.message.starts_with("change 2: tp_dst requires"),
            "{e}"
        );
        let req = Request {
            id: 6,
            op: Op::ReplaceFlows(ReplaceArgs {
                flows: vec![good, bad],
                lines: vec![10, 12],
                text: None,
                cookie: None,
            }),
        };
        let e = parse_request(req.to_line().as_bytes()).unwrap_err();
        assert_eq!((e.error.index, e.error.line), (Some(1), Some(12)));
        // Mismatched lines.
        let e = err(r#"{"id":1,"bundle":{"changes":[],"lines":[1]}}"#);
        assert!(e.error.message.contains("'lines'"), "{e}");
        // Text and JSON together.
        let e = err(r#"{"id":1,"dump_flows":{"text":"ip","filter":{"table":1}}}"#);
        assert!(e.error.message.contains("not both"), "{e}");
    }

    #[test]
    fn errors_quote_only_an_excerpt_of_huge_input() {
        use weft_flow::EXCERPT_CHARS;
        let big = "z".repeat(4 << 20);
        for req in [
            format!(r#"{{"id":"{big}","show":{{}}}}"#),
            format!(r#"{{"id":1,"{big}":{{}},"show":{{}}}}"#),
            format!(r#"{{"id":1,"{big}":{{}}}}"#),
            format!(r#"{{"id":1,"show":"{big}"}}"#),
            format!(r#"{{"id":1,"add_port":{{"text":"{big} type=tap"}}}}"#),
            format!(r#"{{"id":1,"add_port":{{"text":"p type=tap {big}=1"}}}}"#),
            format!(r#"{{"id":1,"del_port":{{"name":"{big}"}}}}"#),
            format!(r#"{{"id":1,"bundle":{{"text":"{big} actions=drop"}}}}"#),
            format!(r#"{{"id":1,"dump_flows":{{"text":"{big}"}}}}"#),
            format!(r#"{{"id":1,"trace":{{"packet":"ip,{big}=1"}}}}"#),
        ] {
            let e = err(&req);
            let m = &e.error.message;
            assert!(m.len() < 400, "{}", &m[..300]);
            // An excerpt (of the input, or of the json value holding it) and an ellipsis.
            let zs = m.matches('z').count();
            assert!(
                (70..=EXCERPT_CHARS).contains(&zs) && m.contains("z…"),
                "{m}"
            );
        }
        // Many operation names: a few are listed, and how many there were.
        let names: Vec<String> = (0..1000).map(|i| format!(r#""op{i}":{{}}"#)).collect();
        let e = err(&format!(r#"{{"id":1,{}}}"#, names.join(",")));
        assert!(e.error.message.ends_with("… (1000 in all)"), "{e}");
        // And any error reply is bounded, whatever built its message.
        let r = Response::error(Some(1), ErrorBody::new("é".repeat(1 << 20)));
        let m = r.error.unwrap().message;
        assert!(m.len() <= MAX_ERROR_MESSAGE + '…'.len_utf8(), "{}", m.len());
        assert!(m.ends_with('…'));
        // Unchanged for what is short.
        let e = err(r#"{"id":1,"frobnicate":{}}"#);
        assert!(
            e.error.message.contains("unknown variant `frobnicate`"),
            "{e}"
        );
    }

    #[test]
    fn bad_ports_and_packets_are_refused() {
        let e = err(r#"{"id":1,"add_port":{"text":"pod1 type=tap mtu=1"}}"#);
        assert!(e.error.message.contains("mtu"), "{e}");
        let e = err(r#"{"id":1,"add_port":{"port":{"name":"p","type":"tap","bogus":1}}}"#);
        assert!(e.error.message.contains("bad request"), "{e}");
        let e = err(r#"{"id":1,"del_port":{"name":"in_port"}}"#);
        assert!(e.error.message.contains("reserved"), "{e}");
        let e = err(r#"{"id":1,"trace":{"packet":"tcp,tp_dts=80"}}"#);
        assert!(e.error.message.contains("did you mean tp_dst"), "{e}");
        let e = err(r#"{"id":1,"trace":{"packet":"table=1,tcp"}}"#);
        assert!(e.error.message.contains("only header fields"), "{e}");
    }

    fn flows(text: &str) -> Vec<(usize, Flow)> {
        parse_flows_file(text).unwrap()
    }

    #[test]
    fn replace_diff_touches_only_what_differs() {
        let current: Vec<Flow> = flows(
            "priority=10,ip actions=normal\n\
             priority=20,arp actions=flood\n\
             table=1,priority=5 actions=drop\n\
             cookie=0x1,priority=30,tcp actions=normal\n",
        )
        .into_iter()
        .map(|(_, f)| f)
        .collect();
        let wanted = flows(
            "priority=10,ip actions=normal\n\
             priority=20,arp actions=normal\n\
             cookie=0x2,priority=30,tcp actions=normal\n\
             table=2 actions=drop\n",
        );
        let (b, unchanged) = replace_diff(&current, &wanted);
        assert_eq!(unchanged, 1);
        let text = b.to_string();
        assert_eq!(
            text,
            "delete_strict table=1,priority=5\n\
             add priority=20,arp actions=normal\n\
             add cookie=0x2,priority=30,tcp actions=normal\n\
             add table=2 actions=drop\n"
        );
        assert_eq!(b.lines, vec![0, 2, 3, 4]);
        // Equal sets: nothing to do.
        let (b, unchanged) = replace_diff(
            &current,
            &current.iter().cloned().map(|f| (0, f)).collect::<Vec<_>>(),
        );
        assert!(b.changes.is_empty());
        assert!(b.lines.is_empty());
        assert_eq!(unchanged, 4);
        // Empty wanted: delete everything.
        let (b, _) = replace_diff(&current, &[]);
        assert_eq!(b.changes.len(), 4);
        assert!(
            b.changes
                .iter()
                .all(|c| matches!(c, FlowMod::DeleteStrict { .. }))
        );
        // A duplicate identity counts once, the last one wins.
        let wanted = flows("priority=10,ip actions=drop\npriority=10,ip actions=normal\n");
        let (b, unchanged) = replace_diff(&current[..1], &wanted);
        assert_eq!(unchanged, 1, "{b}");
        assert!(b.changes.is_empty());
    }
}
