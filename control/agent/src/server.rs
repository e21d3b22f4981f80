//! The agent's socket (docs/agent-protocol.md): one JSON request per line, answered in
//! order. `status` is answered from the published status at once; the others go to
//! the controller, one at a time (a runtime never runs two CNI operations for one
//! container at once, and serialising them keeps the state simple).

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use weft_agent_proto::{ErrorKind, MAX_LINE, Request, Response};

use crate::agent::{Call, SharedStatus};

/// Most connections served at once; more wait in the listen queue.
const MAX_CLIENTS: usize = 64;

/// Binds `path` (replacing a stale socket, mode 0600) and serves it.
pub fn bind(path: &Path) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(format!("{}: {e}", path.display())),
    }
    let l = UnixListener::bind(path).map_err(|e| format!("{}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(l)
}

/// Serves connections until the runtime ends.
pub async fn serve(l: UnixListener, status: SharedStatus, calls: mpsc::Sender<Call>) {
    let slots = std::sync::Arc::new(tokio::sync::Semaphore::new(MAX_CLIENTS));
    loop {
        let Ok((stream, _)) = l.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let Ok(permit) = slots.clone().acquire_owned().await else {
            return;
        };
        let status = status.clone();
        let calls = calls.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let (r, mut w) = stream.into_split();
            let mut r = BufReader::new(r);
            let mut line = Vec::new();
            loop {
                line.clear();
                let n = match (&mut r)
                    .take(MAX_LINE as u64 + 1)
                    .read_until(b'\n', &mut line)
                    .await
                {
                    Ok(0) | Err(_) => return,
                    Ok(n) => n,
                };
                let resp = if n > MAX_LINE {
                    Response::error(
                        ErrorKind::BadRequest,
                        format!("request line longer than {MAX_LINE} bytes"),
                    )
                } else {
                    answer(&line, &status, &calls).await
                };
                let mut out = serde_json::to_string(&resp).unwrap_or_default();
                out.push('\n');
                if w.write_all(out.as_bytes()).await.is_err() || n > MAX_LINE {
                    return;
                }
            }
        });
    }
}

async fn answer(line: &[u8], status: &SharedStatus, calls: &mpsc::Sender<Call>) -> Response {
    let req: Request = match serde_json::from_slice(line) {
        Ok(r) => r,
        Err(e) => {
            return Response::error(ErrorKind::BadRequest, format!("bad request: {e}"));
        }
    };
    if req == Request::Status {
        return match status.lock() {
            Ok(s) => Response::ok(&*s),
            Err(_) => Response::error(ErrorKind::Failed, "status unavailable"),
        };
    }
    let (tx, rx) = oneshot::channel();
    if calls.send((req, tx)).await.is_err() {
        return Response::error(ErrorKind::NotReady, "the agent is stopping");
    }
    rx.await
        .unwrap_or_else(|_| Response::error(ErrorKind::Failed, "the request was dropped"))
}
