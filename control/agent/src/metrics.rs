//! The agent's Prometheus metrics (OpenMetrics text on `GET /metrics`), served when
//! `metrics` is set. A tiny HTTP/1.1 responder: one request per connection, the
//! request head read with a size and time limit.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// The metrics.
#[derive(Default)]
pub struct Metrics {
    /// 1 while etcd answers.
    pub etcd_up: Gauge,
    /// 1 while the node can take pods.
    pub ready: Gauge,
    /// When weftd last matched the state (Unix seconds).
    pub last_sync: Gauge,
    /// Peers programmed.
    pub peers: Gauge,
    /// Local endpoints.
    pub endpoints: Gauge,
    /// Full syncs done.
    pub syncs: Counter,
    /// Syncs that failed.
    pub sync_errors: Counter,
    /// etcd sessions that ended in an error.
    pub etcd_errors: Counter,
}

impl Metrics {
    /// The registry over these metrics.
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("weft_agent");
        r.register("etcd_up", "1 while etcd answers", self.etcd_up.clone());
        r.register(
            "ready",
            "1 while the node can take pods",
            self.ready.clone(),
        );
        r.register(
            "last_sync_timestamp_seconds",
            "When weftd's flows last matched the cluster state",
            self.last_sync.clone(),
        );
        r.register(
            "peers",
            "Other nodes programmed into weftd",
            self.peers.clone(),
        );
        r.register(
            "endpoints",
            "Pod interfaces on this node",
            self.endpoints.clone(),
        );
        r.register("syncs", "Full syncs of weftd", self.syncs.clone());
        r.register(
            "sync_errors",
            "Syncs of weftd that failed",
            self.sync_errors.clone(),
        );
        r.register(
            "etcd_errors",
            "etcd sessions that ended in an error (then retried)",
            self.etcd_errors.clone(),
        );
        r
    }
}

/// Serves `GET /metrics` on `addr` until the runtime ends.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<(), String> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|e| format!("metrics on {addr}: {e}"))?;
    let registry = Arc::new(registry);
    tokio::spawn(async move {
        loop {
            let Ok((mut s, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let mut head = Vec::with_capacity(512);
                let mut buf = [0u8; 512];
                let read = async {
                    while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
                        let n = s.read(&mut buf).await?;
                        if n == 0 {
                            break;
                        }
                        head.extend_from_slice(&buf[..n]);
                    }
                    Ok::<_, std::io::Error>(())
                };
                if tokio::time::timeout(Duration::from_secs(5), read)
                    .await
                    .is_err()
                {
                    return;
                }
                let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
                let line = String::from_utf8_lossy(line);
                let mut words = line.split_whitespace();
                let (status, ctype, body) = match (words.next(), words.next()) {
                    (Some("GET"), Some("/metrics")) => {
                        let mut body = String::new();
                        let _ = encode(&mut body, &registry);
                        (
                            "200 OK",
                            "application/openmetrics-text; version=1.0.0; charset=utf-8",
                            body,
                        )
                    }
                    (Some("GET"), _) => ("404 Not Found", "text/plain", "not found\n".into()),
                    _ => ("405 Method Not Allowed", "text/plain", "only GET\n".into()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\ncontent-type: {ctype}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = s.write_all(resp.as_bytes()).await;
            });
        }
    });
    Ok(())
}
