//! The protocol of `weft-agent`'s socket (docs/agent-protocol.md).
//!
//! A client (the CNI plugin `weft-cni`, `weft-agent status`) connects to the agent's Unix
//! socket and sends one [`Request`] per line as JSON; the agent answers each with one
//! [`Response`] line, in order. A connection may carry any number of requests. The types
//! here are the whole contract between the two binaries; both sides use them, so the
//! wire form cannot drift. [`Client`] is the blocking client (the plugin must stay small
//! and start fast: no async runtime).
//!
//! Attach and detach are keyed by the CNI attachment: `(container_id, ifname)`.

use std::fmt;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::IpAddr;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Where the agent listens unless told otherwise.
pub const DEFAULT_SOCKET: &str = "/run/weft/agent.sock";

/// The longest request or response line either side accepts.
pub const MAX_LINE: usize = 1 << 20;

/// One request: `{"op":"attach","args":{...}}`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(
    tag = "op",
    content = "args",
    rename_all = "snake_case",
    deny_unknown_fields
)]
pub enum Request {
    /// Whether the node can take pods, and what it knows ([`StatusReply`]).
    Status,
    /// Attach a pod interface ([`AttachReply`]).
    Attach(Attach),
    /// Detach a pod interface; succeeds when parts (or all) are already gone ([`Empty`]).
    Detach(Detach),
    /// Verify an attachment is whole ([`Empty`], or an error naming what is missing).
    Check(Attach),
    /// Remove every attachment of this node not in the list ([`GcReply`]).
    Gc(Gc),
}

/// A CNI attachment's identity.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// `CNI_CONTAINERID`.
    pub container_id: String,
    /// `CNI_IFNAME` (the interface's name inside the pod).
    pub ifname: String,
}

/// `attach` (and `check`): put an interface into a pod's namespace and onto the network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attach {
    /// Which attachment.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The pod's network namespace: a path (`/proc/PID/ns/net`, `/var/run/netns/NAME`)
    /// or a name in `/var/run/netns` (`CNI_NETNS`).
    pub netns: String,
    /// The interface's addresses with their prefix length, from IPAM (the node's
    /// subnet's prefix, e.g. `198.19.3.7/24`).
    pub addresses: Vec<IpNet>,
    /// The default gateway IPAM gave (the node's gateway address); `None`: the agent's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// `K8S_POD_NAMESPACE` from `CNI_ARGS`, recorded with the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// `K8S_POD_NAME` from `CNI_ARGS`, recorded with the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// The result of `attach`: what the plugin reports in its CNI result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AttachReply {
    /// The interface's name in the pod (`ifname`).
    pub ifname: String,
    /// Its MAC address (`aa:bb:cc:dd:ee:ff`).
    pub mac: String,
    /// Its MTU.
    pub mtu: u16,
    /// The weftd port that carries it.
    pub port: String,
    /// The addresses set on it.
    pub addresses: Vec<IpNet>,
    /// The routes set in the pod (a default route via the gateway, at least).
    pub routes: Vec<Route>,
}

/// A route in the pod.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Destination (`0.0.0.0/0`).
    pub dst: IpNet,
    /// Next hop.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
}

/// `detach`: undo an attachment.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Detach {
    /// Which attachment.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The pod's namespace if it still exists (`CNI_NETNS` is optional for DEL).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<String>,
}

/// `gc`: the attachments that are still valid; every other one of this node goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Gc {
    /// `cni.dev/attachments` of the GC request.
    pub keep: Vec<Attachment>,
}

/// The result of `gc`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GcReply {
    /// The attachments removed.
    pub removed: Vec<Attachment>,
}

/// An empty result (`{}`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

/// The result of `status`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReply {
    /// The node can take pods: it has its subnet, weftd is programmed, the gateway is up.
    pub ready: bool,
    /// Why not, when not ready (one line).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The node's name.
    pub node: String,
    /// The node's pod subnet, once it has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<IpNet>,
    /// The gateway address pods use (the subnet's first address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    /// The cluster's pod CIDR.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_cidr: Option<IpNet>,
    /// The pod MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u16>,
    /// The other nodes this node has flows for.
    #[serde(default)]
    pub peers: Vec<Peer>,
    /// This node's pod interfaces.
    #[serde(default)]
    pub endpoints: Vec<Endpoint>,
    /// When weftd's flows last matched the state (seconds since the Unix epoch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_sync: Option<u64>,
    /// etcd as the agent sees it.
    pub etcd: EtcdHealth,
}

/// Another node, as this node programs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    /// Its name.
    pub node: String,
    /// Its underlay address.
    pub public_ip: IpAddr,
    /// Its pod subnet.
    pub subnet: IpNet,
}

/// A pod interface on this node.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    /// Which attachment.
    #[serde(flatten)]
    pub attachment: Attachment,
    /// The weftd port.
    pub port: String,
    /// Its addresses.
    pub addresses: Vec<IpNet>,
    /// Its MAC.
    pub mac: String,
    /// The pod's namespace, when the runtime gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_namespace: Option<String>,
    /// The pod's name, when the runtime gave it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_name: Option<String>,
}

/// etcd's health as the agent last saw it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EtcdHealth {
    /// The last request to etcd succeeded.
    pub reachable: bool,
    /// The last error, when not reachable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// What kind of failure an error is; the CNI plugin maps it to a CNI error code.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// The node cannot take pods yet (no subnet, weftd or etcd not ready): CNI 11.
    NotReady,
    /// The request is malformed or names something invalid: CNI 7.
    BadRequest,
    /// The attachment (or its interface) already exists: CNI 100+ / ADD's rule.
    Exists,
    /// A check found the attachment incomplete (the message says what is missing).
    Missing,
    /// Anything else (netlink, weftd): CNI 5 (I/O) or the plugin's own.
    Failed,
}

/// A failure: one line, plus its kind.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// Its kind.
    pub kind: ErrorKind,
    /// One line saying what went wrong.
    pub message: String,
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// One response: `{"ok":RESULT}` or `{"error":{"kind":...,"message":...}}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Response {
    /// The result, on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<serde_json::Value>,
    /// The failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

impl Response {
    /// A success carrying `result`.
    pub fn ok<T: Serialize>(result: &T) -> Response {
        Response {
            ok: Some(serde_json::to_value(result).unwrap_or(serde_json::Value::Null)),
            error: None,
        }
    }

    /// A failure.
    pub fn error(kind: ErrorKind, message: impl Into<String>) -> Response {
        Response {
            ok: None,
            error: Some(ErrorBody {
                kind,
                message: message.into(),
            }),
        }
    }
}

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The agent's socket could not be reached (the agent is down): CNI 11.
    #[error("weft-agent is not reachable at {}: {error}", .path.display())]
    Connect {
        /// The socket.
        path: PathBuf,
        /// What the system said.
        error: std::io::Error,
    },
    /// The connection broke or timed out mid-call.
    #[error("weft-agent socket: {0}")]
    Io(std::io::Error),
    /// The agent answered something that is not a response.
    #[error("weft-agent protocol error: {0}")]
    Protocol(String),
    /// The agent refused or failed the request.
    #[error("{0}")]
    Agent(ErrorBody),
}

/// A blocking connection to the agent.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the agent's socket; every call then waits at most `timeout`.
    pub fn connect(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|error| ClientError::Connect {
            path: path.to_path_buf(),
            error,
        })?;
        stream
            .set_read_timeout(Some(timeout))
            .and_then(|()| stream.set_write_timeout(Some(timeout)))
            .map_err(ClientError::Io)?;
        let writer = stream.try_clone().map_err(ClientError::Io)?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer,
        })
    }

    /// Sends `req` and returns its result as `T`.
    pub fn call<T: serde::de::DeserializeOwned>(
        &mut self,
        req: &Request,
    ) -> Result<T, ClientError> {
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer
            .write_all(line.as_bytes())
            .map_err(ClientError::Io)?;
        let mut answer = String::new();
        let n = (&mut self.reader)
            .take(MAX_LINE as u64)
            .read_line(&mut answer)
            .map_err(ClientError::Io)?;
        if n == 0 {
            return Err(ClientError::Protocol(
                "the agent closed the connection".into(),
            ));
        }
        let resp: Response =
            serde_json::from_str(&answer).map_err(|e| ClientError::Protocol(e.to_string()))?;
        match (resp.ok, resp.error) {
            (_, Some(e)) => Err(ClientError::Agent(e)),
            (Some(v), None) => {
                serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
            }
            (None, None) => Err(ClientError::Protocol(
                "a response with neither ok nor error".into(),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_have_the_documented_wire_form_and_round_trip() {
        let a = Request::Attach(Attach {
            attachment: Attachment {
                container_id: "c1".into(),
                ifname: "eth0".into(),
            },
            netns: "/proc/42/ns/net".into(),
            addresses: vec!["198.19.3.7/24".parse().unwrap()],
            gateway: Some("198.19.3.1".parse().unwrap()),
            pod_namespace: Some("default".into()),
            pod_name: None,
        });
        let line = serde_json::to_string(&a).unwrap();
        assert_eq!(
            line,
            r#"{"op":"attach","args":{"container_id":"c1","ifname":"eth0","netns":"/proc/42/ns/net","addresses":["198.19.3.7/24"],"gateway":"198.19.3.1","pod_namespace":"default"}}"#
        );
        assert_eq!(serde_json::from_str::<Request>(&line).unwrap(), a);
        assert_eq!(
            serde_json::to_string(&Request::Status).unwrap(),
            r#"{"op":"status"}"#
        );
        assert_eq!(
            serde_json::from_str::<Request>(r#"{"op":"status"}"#).unwrap(),
            Request::Status
        );
    }

    #[test]
    fn malformed_requests_are_refused() {
        for bad in [
            r#"{"op":"atach","args":{}}"#,
            r#"{"op":"detach","args":{"container_id":"c1"}}"#,
            r#"{"op":"gc","args":{"keep":[],"extra":1}}"#,
            r#"{"op":"attach","args":{"container_id":"c","ifname":"e","netns":"n","addresses":["300.1.1.1/24"]}}"#,
            "not json",
        ] {
            assert!(
                serde_json::from_str::<Request>(bad).is_err(),
                "{bad} was accepted"
            );
        }
    }

    #[test]
    fn errors_round_trip_with_their_kind() {
        let r = Response::error(ErrorKind::NotReady, "no subnet yet");
        let line = serde_json::to_string(&r).unwrap();
        assert_eq!(
            line,
            r#"{"error":{"kind":"not_ready","message":"no subnet yet"}}"#
        );
        assert_eq!(serde_json::from_str::<Response>(&line).unwrap(), r);
    }
}
