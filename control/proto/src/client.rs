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
    self as proto, AddPort, AddPortReply, BundleArgs, BundleReply, CaptureArgs, CaptureDone,
    CaptureFrame, DelPort, DumpFlowsArgs, DumpFlowsReply, Empty, ErrorBody, FdbReply, Hello,
    HelloReply, NoArgs, Op, PortsReply, ReplaceArgs, Request, Response, ShowReply, StatsReply,
    TraceArgs, TraceReply,
};
use weft_flow::port::PortSpec;
use weft_flow::{Bundle, Flow, FlowFilter};

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
}

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

    /// Sends one request and returns the raw `ok` result.
    pub fn call(&mut self, op: Op) -> Result<Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = Request { id, op }.to_line();
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
            match resp.id {
                // Frames of a capture are read by `Client::capture`.
                Some(got) if got == id && resp.frame.is_some() => continue,
                Some(got) if got == id => {}
                // An error the server could not tie to a request (it then disconnects).
                None => {
                    if let Some(e) = resp.error {
                        return Err(ClientError::Server(e));
                    }
                    return Err(ClientError::Protocol("response without an id".into()));
                }
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
        }))
    }

    /// `dump_flows`.
    pub fn dump_flows(&mut self, filter: FlowFilter) -> Result<DumpFlowsReply, ClientError> {
        self.call_typed(Op::DumpFlows(DumpFlowsArgs { filter, text: None }))
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
