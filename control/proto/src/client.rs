//! The client side of the [control protocol](crate): a connection to `weftd`'s
//! socket that sends requests and reads their responses, one line each.
//!
//! [`Client::connect`] opens the socket and does the `hello` handshake; then each call
//! sends one request with a fresh `id` and waits for the response with that `id`. The
//! typed helpers ([`Client::dump_flows`], [`Client::bundle`], ...) return the reply
//! types of [`weft_proto`](crate); [`Client::call`] returns the raw JSON result (what
//! `weftctl -o json` prints).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::{
    self as proto, AddPort, AddPortReply, BundleAddArgs, BundleAddReply, BundleArgs,
    BundleOpenArgs, BundleOpenReply, BundleRef, BundleReply, CaptureArgs, CaptureDone,
    CaptureFrame, DelPort, DumpDone, DumpFlowsArgs, DumpFlowsReply, DumpFormat, Empty, ErrorBody,
    FdbReply, FlowStats, Hello, HelloReply, NoArgs, Op, PartCommand, PortsReply, ReplaceArgs,
    Request, Response, ShowReply, StatsReply, TraceArgs, TraceReply,
};
use weft_flow::port::PortSpec;
use weft_flow::{Bundle, Flow, FlowFilter, Masked};

/// The socket `weftd` listens on unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/weft/weftd.sock";

/// How long a call waits for its response by default (a bundle of a million flows
/// takes a few seconds to validate and publish).
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(120);

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The socket could not be opened.
    #[error("cannot connect to {}: {}{}", .path.display(), io_text(.error), connect_hint(.error))]
    Connect {
        /// The socket's path.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// Reading or writing the socket failed.
    #[error("control socket: {}", io_text(.0))]
    Io(std::io::Error),
    /// The server said something that is not a valid response.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// The server refused the request or the operation failed.
    #[error("{0}")]
    Server(ErrorBody),
    /// Reading the input (a flows file) failed.
    #[error("{}", io_text(.0))]
    Input(std::io::Error),
}

/// A line of a streamed dump, looked at where it was read: the flows of a JSON part
/// are not parsed, only delimited.
#[derive(serde::Deserialize)]
struct RawPart<'a> {
    id: Option<u64>,
    #[serde(borrow, default)]
    flows: Option<Vec<&'a serde_json::value::RawValue>>,
    #[serde(borrow, default)]
    text: Option<std::borrow::Cow<'a, str>>,
    #[serde(borrow, default)]
    ok: Option<&'a serde_json::value::RawValue>,
    #[serde(default)]
    error: Option<ErrorBody>,
}

/// A part of a streamed dump as `Client::read_dump` hands it on.
enum DumpPart<'a, 'b> {
    /// Each flow's JSON, as written.
    Flows(&'b [&'a serde_json::value::RawValue]),
    /// Flow lines.
    Text(&'b str),
}

/// An error line the server could not tie to a request (it then disconnects).
fn unaddressed(resp: Response) -> ClientError {
    match resp.error {
        Some(e) => ClientError::Server(e),
        None => ClientError::Protocol("response without an id".into()),
    }
}

/// How much flow text [`Client::stream_bundle`] sends in one part (whole lines: a part
/// is at least one line).
pub const PART_BYTES: usize = 1 << 20;

/// An I/O error's message without the trailing "(os error N)".
pub fn io_text(e: &std::io::Error) -> String {
    let s = e.to_string();
    match s.find(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

fn connect_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused => {
            " (is weftd running?)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (run as root or as a member of the control group)"
        }
        _ => "",
    }
}

/// A connection to `weftd`'s control socket.
#[derive(Debug)]
pub struct Client {
    writer: UnixStream,
    reader: BufReader<UnixStream>,
    next_id: u64,
    server: HelloReply,
}

impl Client {
    /// Connects to `path` and does the version handshake.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        Client::connect_with_timeout(path, DEFAULT_TIMEOUT)
    }

    /// Connects with a limit on how long each call waits.
    pub fn connect_with_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|error| ClientError::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(ClientError::Io)?;
        let reader = BufReader::new(stream.try_clone().map_err(ClientError::Io)?);
        let mut c = Client {
            writer: stream,
            reader,
            next_id: 1,
            server: HelloReply {
                version: 0,
                name: String::new(),
                software: String::new(),
            },
        };
        let hello: HelloReply = c.call_typed(Op::Hello(Hello {
            version: proto::VERSION,
            client: Some(format!("weftctl {}", env!("CARGO_PKG_VERSION"))),
        }))?;
        c.server = hello;
        Ok(c)
    }

    /// What the server said in the handshake.
    pub fn server(&self) -> &HelloReply {
        &self.server
    }

    /// Sends one request; returns its `id`.
    fn send(&mut self, op: Op) -> Result<u64, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = Request { id, op }.to_line();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(ClientError::Io)?;
        Ok(id)
    }

    /// Reads one response line (using `buf`).
    fn read_response(&mut self, buf: &mut String) -> Result<Response, ClientError> {
        buf.clear();
        let n = self.reader.read_line(buf).map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the server closed the connection".into(),
            ));
        }
        serde_json::from_str(buf.trim_end())
            .map_err(|e| ClientError::Protocol(format!("bad response: {e}")))
    }

    /// Sends one request and returns the raw `ok` result.
    pub fn call(&mut self, op: Op) -> Result<Value, ClientError> {
        let id = self.send(op)?;
        let mut buf = String::new();
        loop {
            let resp = self.read_response(&mut buf)?;
            match resp.id {
                // Frames of a capture are read by `Client::capture`, dump parts by
                // `Client::dump_flows_each`.
                Some(got)
                    if got == id
                        && (resp.frame.is_some()
                            || resp.flows.is_some()
                            || resp.text.is_some()) =>
                {
                    continue;
                }
                Some(got) if got == id => {}
                // An error the server could not tie to a request (it then disconnects).
                None => return Err(unaddressed(resp)),
                Some(_) => continue,
            }
            return match (resp.ok, resp.error) {
                (_, Some(e)) => Err(ClientError::Server(e)),
                (Some(v), None) => Ok(v),
                (None, None) => Err(ClientError::Protocol(
                    "response has neither 'ok' nor 'error'".into(),
                )),
            };
        }
    }

    /// Sends one request and reads its result as `T`.
    pub fn call_typed<T: DeserializeOwned>(&mut self, op: Op) -> Result<T, ClientError> {
        let v = self.call(op)?;
        serde_json::from_value(v)
            .map_err(|e| ClientError::Protocol(format!("unexpected reply: {e}")))
    }

    /// `show`.
    pub fn show(&mut self) -> Result<ShowReply, ClientError> {
        self.call_typed(Op::Show(NoArgs {}))
    }

    /// `ports`.
    pub fn ports(&mut self) -> Result<PortsReply, ClientError> {
        self.call_typed(Op::Ports(NoArgs {}))
    }

    /// `add_port`: returns the port's number.
    pub fn add_port(&mut self, spec: PortSpec) -> Result<u32, ClientError> {
        let r: AddPortReply = self.call_typed(Op::AddPort(AddPort {
            port: Some(spec),
            text: None,
        }))?;
        Ok(r.ofport)
    }

    /// `del_port`.
    pub fn del_port(&mut self, name: &str) -> Result<(), ClientError> {
        let _: Empty = self.call_typed(Op::DelPort(DelPort {
            name: name.to_string(),
        }))?;
        Ok(())
    }

    /// `bundle`: applies the changes atomically.
    pub fn bundle(&mut self, bundle: Bundle) -> Result<BundleReply, ClientError> {
        self.call_typed(Op::Bundle(BundleArgs {
            changes: bundle.changes,
            lines: bundle.lines,
            text: None,
        }))
    }

    /// `replace_flows`: makes the flows equal to `flows` (with their source lines),
    /// changing only what differs.
    pub fn replace_flows(&mut self, flows: Vec<(usize, Flow)>) -> Result<BundleReply, ClientError> {
        self.replace_flows_of(flows, None)
    }

    /// `replace_flows` restricted to the flows whose cookie matches `cookie` (every
    /// other flow is left alone; each of `flows` must have a matching cookie).
    pub fn replace_flows_of(
        &mut self,
        flows: Vec<(usize, Flow)>,
        cookie: Option<Masked<u64>>,
    ) -> Result<BundleReply, ClientError> {
        let (lines, flows): (Vec<usize>, Vec<Flow>) = flows.into_iter().unzip();
        let lines = if lines.iter().all(|l| *l == 0) {
            Vec::new()
        } else {
            lines
        };
        self.call_typed(Op::ReplaceFlows(ReplaceArgs {
            flows,
            lines,
            text: None,
            cookie,
        }))
    }

    /// `dump_flows`.
    pub fn dump_flows(&mut self, filter: FlowFilter) -> Result<DumpFlowsReply, ClientError> {
        self.call_typed(Op::DumpFlows(DumpFlowsArgs {
            filter,
            text: None,
            stream: false,
            format: DumpFormat::Json,
        }))
    }

    /// `dump_flows` in parts: calls `on_part` with each part (at most
    /// [`proto::DUMP_PART_FLOWS`] flows) as it arrives; returns how many flows there
    /// were. When `on_part` returns false the rest is not read (the connection is then
    /// of no further use: drop the client).
    pub fn dump_flows_each(
        &mut self,
        filter: FlowFilter,
        mut on_part: impl FnMut(Vec<FlowStats>) -> bool,
    ) -> Result<usize, ClientError> {
        let id = self.send(Op::DumpFlows(DumpFlowsArgs {
            filter,
            text: None,
            stream: true,
            format: DumpFormat::Json,
        }))?;
        let mut buf = String::new();
        loop {
            let resp = self.read_response(&mut buf)?;
            match resp.id {
                Some(got) if got == id => {}
                None => return Err(unaddressed(resp)),
                Some(_) => continue,
            }
            if let Some(part) = resp.flows {
                if !on_part(part) {
                    return Ok(0);
                }
                continue;
            }
            return match (resp.ok, resp.error) {
                (_, Some(e)) => Err(ClientError::Server(e)),
                (Some(v), None) => serde_json::from_value::<DumpDone>(v)
                    .map(|d| d.flows)
                    .map_err(|e| ClientError::Protocol(format!("unexpected reply: {e}"))),
                (None, None) => Err(ClientError::Protocol(
                    "response has neither 'ok' nor 'error'".into(),
                )),
            };
        }
    }

    /// `dump_flows` in parts of text: calls `on_text` with each part's `dump-flows`
    /// lines (each with its newline, as [`crate::write_flow_line`] prints them) as it
    /// arrives; returns how many flows there were. A server that does not know the
    /// text form (it refuses `format`) is asked for JSON parts, which are printed here
    /// into the same lines. When `on_text` returns false the rest is not read (the
    /// connection is then of no further use).
    pub fn dump_flows_text_each(
        &mut self,
        filter: FlowFilter,
        mut on_text: impl FnMut(&str) -> bool,
    ) -> Result<usize, ClientError> {
        let id = self.send(Op::DumpFlows(DumpFlowsArgs {
            filter: filter.clone(),
            text: None,
            stream: true,
            format: DumpFormat::Text,
        }))?;
        let mut stopped = false;
        let mut text = String::new();
        let r = self.read_dump(id, |part| {
            let text = match part {
                DumpPart::Text(t) => t,
                // A server that sends JSON parts anyway: printed here.
                DumpPart::Flows(flows) => {
                    text.clear();
                    for f in flows {
                        let f: FlowStats = serde_json::from_str(f.get()).map_err(|e| {
                            ClientError::Protocol(format!("bad flow in a dump: {e}"))
                        })?;
                        f.write_line(&mut text);
                        text.push('\n');
                    }
                    &text
                }
            };
            stopped = !on_text(text);
            Ok(!stopped)
        });
        match r {
            Err(ClientError::Server(e)) if e.message.contains("unknown field `format`") => {}
            r => return if stopped { Ok(0) } else { r },
        }
        // An older weftd: JSON parts, printed here.
        self.dump_flows_each(filter, |part| {
            text.clear();
            for f in &part {
                f.write_line(&mut text);
                text.push('\n');
            }
            on_text(&text)
        })
    }

    /// `dump_flows` in parts of JSON, without reading the flows: calls `on_flow` with
    /// each flow's JSON object exactly as the server wrote it (compact, members
    /// sorted: what [`FlowStats`] serializes to); returns how many flows there were.
    /// When `on_flow` returns false the rest is not read.
    pub fn dump_flows_json_each(
        &mut self,
        filter: FlowFilter,
        mut on_flow: impl FnMut(&str) -> bool,
    ) -> Result<usize, ClientError> {
        let id = self.send(Op::DumpFlows(DumpFlowsArgs {
            filter,
            text: None,
            stream: true,
            format: DumpFormat::Json,
        }))?;
        let mut stopped = false;
        let r = self.read_dump(id, |part| {
            let DumpPart::Flows(flows) = part else {
                return Err(ClientError::Protocol(
                    "the server sent text for a JSON dump".into(),
                ));
            };
            stopped = !flows.iter().all(|f| on_flow(f.get()));
            Ok(!stopped)
        });
        if stopped { Ok(0) } else { r }
    }

    /// Reads the parts of streamed dump `id` (each line read into one reused buffer
    /// and looked at in place), giving each to `on_part` until it returns false, then
    /// the final count.
    fn read_dump(
        &mut self,
        id: u64,
        mut on_part: impl FnMut(DumpPart<'_, '_>) -> Result<bool, ClientError>,
    ) -> Result<usize, ClientError> {
        let mut buf = Vec::new();
        loop {
            buf.clear();
            let n = self
                .reader
                .read_until(b'\n', &mut buf)
                .map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            let line: RawPart<'_> = serde_json::from_slice(buf.trim_ascii_end())
                .map_err(|e| ClientError::Protocol(format!("bad response: {e}")))?;
            match line.id {
                Some(got) if got == id => {}
                None => {
                    return Err(match line.error {
                        Some(e) => ClientError::Server(e),
                        None => ClientError::Protocol("response without an id".into()),
                    });
                }
                Some(_) => continue,
            }
            let part = match (&line.flows, &line.text) {
                (Some(f), _) => Some(DumpPart::Flows(f)),
                (None, Some(t)) => Some(DumpPart::Text(t)),
                (None, None) => None,
            };
            if let Some(part) = part {
                if !on_part(part)? {
                    return Ok(0);
                }
                continue;
            }
            return match (line.ok, line.error) {
                (_, Some(e)) => Err(ClientError::Server(e)),
                (Some(v), None) => serde_json::from_str::<DumpDone>(v.get())
                    .map(|d| d.flows)
                    .map_err(|e| ClientError::Protocol(format!("unexpected reply: {e}"))),
                (None, None) => Err(ClientError::Protocol(
                    "response has neither 'ok' nor 'error'".into(),
                )),
            };
        }
    }

    /// `bundle_open`: returns the bundle's number.
    pub fn bundle_open(&mut self, replace: bool) -> Result<u64, ClientError> {
        self.bundle_open_with(replace, None)
    }

    /// `bundle_open`; a replace bundle may be restricted to the flows whose cookie
    /// matches `cookie` (see [`Client::replace_flows_of`]).
    pub fn bundle_open_with(
        &mut self,
        replace: bool,
        cookie: Option<Masked<u64>>,
    ) -> Result<u64, ClientError> {
        let r: BundleOpenReply =
            self.call_typed(Op::BundleOpen(BundleOpenArgs { replace, cookie }))?;
        Ok(r.bundle)
    }

    /// `bundle_add` of lines of flow text (`first_line` is the number of the first in
    /// its file); returns how many changes the bundle holds.
    pub fn bundle_add_text(
        &mut self,
        bundle: u64,
        command: PartCommand,
        text: String,
        first_line: usize,
    ) -> Result<usize, ClientError> {
        let r: BundleAddReply = self.call_typed(Op::BundleAdd(BundleAddArgs {
            bundle,
            command,
            text: Some(text),
            first_line: Some(first_line),
            ..BundleAddArgs::default()
        }))?;
        Ok(r.changes)
    }

    /// `bundle_commit`: applies the bundle whole.
    pub fn bundle_commit(&mut self, bundle: u64) -> Result<BundleReply, ClientError> {
        self.call_typed(Op::BundleCommit(BundleRef { bundle }))
    }

    /// `bundle_discard`.
    pub fn bundle_discard(&mut self, bundle: u64) -> Result<(), ClientError> {
        let _: Empty = self.call_typed(Op::BundleDiscard(BundleRef { bundle }))?;
        Ok(())
    }

    /// Sends a flows file of any length as one bundle in parts of about
    /// [`PART_BYTES`] (whole lines), then commits it: `add-flows`, `del-flows`,
    /// `mod-flows` (as `command` says) or, with `replace`, `replace-flows`. Nothing is
    /// parsed here: weftd parses each part as it arrives and names the file's line in
    /// an error. On any error the bundle is discarded (by weftd when the connection
    /// ends, or at once when it can be told).
    pub fn stream_bundle(
        &mut self,
        input: impl BufRead,
        command: PartCommand,
        replace: bool,
    ) -> Result<BundleReply, ClientError> {
        self.stream_bundle_with(input, command, replace, None)
    }

    /// [`Client::stream_bundle`]; a replace may be restricted to the flows whose cookie
    /// matches `cookie`.
    pub fn stream_bundle_with(
        &mut self,
        mut input: impl BufRead,
        command: PartCommand,
        replace: bool,
        cookie: Option<Masked<u64>>,
    ) -> Result<BundleReply, ClientError> {
        let bundle = self.bundle_open_with(replace, cookie)?;
        let mut part = String::with_capacity(PART_BYTES + 4096);
        let mut first_line = 1;
        let mut lines_in_part = 0;
        loop {
            let n = input.read_line(&mut part).map_err(ClientError::Input)?;
            if n > 0 {
                lines_in_part += 1;
                if !part.ends_with('\n') {
                    part.push('\n');
                }
            }
            if (n == 0 && lines_in_part > 0) || part.len() >= PART_BYTES {
                let text = std::mem::replace(&mut part, String::with_capacity(PART_BYTES + 4096));
                if let Err(e) = self.bundle_add_text(bundle, command, text, first_line) {
                    if matches!(e, ClientError::Server(_)) {
                        // weftd dropped the bundle with the error already.
                        let _ = self.bundle_discard(bundle);
                    }
                    return Err(e);
                }
                first_line += lines_in_part;
                lines_in_part = 0;
            }
            if n == 0 {
                break;
            }
        }
        self.bundle_commit(bundle)
    }

    /// `stats`.
    pub fn stats(&mut self) -> Result<StatsReply, ClientError> {
        self.call_typed(Op::Stats(NoArgs {}))
    }

    /// `fdb`.
    pub fn fdb(&mut self) -> Result<FdbReply, ClientError> {
        self.call_typed(Op::Fdb(NoArgs {}))
    }

    /// `trace`.
    pub fn trace(&mut self, packet: &str) -> Result<TraceReply, ClientError> {
        self.call_typed(Op::Trace(TraceArgs {
            packet: packet.to_string(),
        }))
    }

    /// `capture`: calls `on_frame` for every captured frame as it arrives, until the
    /// capture ends (count, seconds) or `on_frame` returns false (then the connection is
    /// closed, which stops the capture in weftd). The client's read timeout applies
    /// between frames, so use a long one (or `seconds`) on a quiet port.
    pub fn capture(
        mut self,
        args: CaptureArgs,
        mut on_frame: impl FnMut(&CaptureFrame) -> bool,
    ) -> Result<Option<CaptureDone>, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = Request {
            id,
            op: Op::Capture(args),
        }
        .to_line();
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(ClientError::Io)?;
        let mut buf = String::new();
        loop {
            buf.clear();
            let n = self.reader.read_line(&mut buf).map_err(ClientError::Io)?;
            if n == 0 {
                return Err(ClientError::Protocol(
                    "the server closed the connection".into(),
                ));
            }
            let resp: Response = serde_json::from_str(buf.trim_end())
                .map_err(|e| ClientError::Protocol(format!("bad response: {e}")))?;
            if resp.id != Some(id) {
                if let (None, Some(e)) = (resp.id, resp.error) {
                    return Err(ClientError::Server(e));
                }
                continue;
            }
            if let Some(f) = &resp.frame {
                if !on_frame(f) {
                    return Ok(None);
                }
                continue;
            }
            return match (resp.ok, resp.error) {
                (_, Some(e)) => Err(ClientError::Server(e)),
                (Some(v), None) => serde_json::from_value(v)
                    .map(Some)
                    .map_err(|e| ClientError::Protocol(format!("unexpected reply: {e}"))),
                (None, None) => Err(ClientError::Protocol(
                    "response has neither 'ok' nor 'error'".into(),
                )),
            };
        }
    }

    /// Sets how long a call waits for each line of the answer.
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<(), ClientError> {
        self.writer
            .set_read_timeout(timeout)
            .map_err(ClientError::Io)
    }
}
