//! The shim's control socket, for the `cryo` CLI only (containerd never uses it): one socket
//! per shim at `<root>/<shim id>.sock` (root: `CRYO_ROOT`, default `/run/cryo`), mode 0600 and
//! served only to root or the shim's own uid (the ttrpc socket's rules, [`crate::socket`]).
//! One JSON request line, one JSON response line per connection ([`protocol`]). The socket is
//! removed when the shim leaves, and by `delete` when a dead shim left it.

pub mod protocol;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use log::{info, warn};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};

use crate::pod::Pod;
use crate::socket::{self, Bound};
use protocol::{Request, Response};

/// Where control sockets live unless `CRYO_ROOT` says otherwise.
pub const DEFAULT_ROOT: &str = "/run/cryo";
/// The environment variable naming the root (inherited from containerd).
pub const ROOT_ENV: &str = "CRYO_ROOT";
/// The longest request accepted.
const MAX_REQUEST: u64 = 64 * 1024;
/// How long a client may take to send its request.
const READ_LIMIT: Duration = Duration::from_secs(10);

/// The root directory of control sockets.
pub fn root() -> PathBuf {
    std::env::var_os(ROOT_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_ROOT), PathBuf::from)
}

/// The control socket of the shim `id` under `root`.
pub fn socket_path(root: &Path, id: &str) -> PathBuf {
    root.join(format!("{id}.sock"))
}

/// The served control socket; removed when dropped.
pub struct Control {
    path: PathBuf,
}

impl Drop for Control {
    fn drop(&mut self) {
        remove_if_socket(&self.path);
    }
}

/// Bind `<root>/<id>.sock` and serve requests about `pod` until the shim leaves.
pub fn serve(id: &str, pod: Arc<Pod>) -> std::io::Result<Control> {
    let path = socket_path(&root(), id);
    let listener = match socket::bind(&path.display().to_string())? {
        Bound::Listener(l) => l,
        Bound::Served => {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("{} is served by another shim", path.display()),
            ))
        }
    };
    let mut conns = Box::pin(socket::allowed_connections(listener)?);
    tokio::spawn(async move {
        while let Some(conn) = conns.next().await {
            match conn {
                Ok(conn) => {
                    tokio::spawn(handle(conn, pod.clone()));
                }
                Err(e) => {
                    warn!("control socket accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    info!("control socket {}", path.display());
    Ok(Control { path })
}

/// Answer one connection.
async fn handle(conn: tokio::net::UnixStream, pod: Arc<Pod>) {
    let (read, mut write) = conn.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read.take(MAX_REQUEST));
    let response = match tokio::time::timeout(READ_LIMIT, reader.read_line(&mut line)).await {
        Err(_) => Response::error("no request within 10s".into()),
        Ok(Err(e)) => Response::error(format!("read the request: {e}")),
        // Connected and closed without a word: a probe whether the shim is alive (a shim's
        // `delete` looks for stale sockets that way). Nobody waits for an answer.
        Ok(Ok(0)) => return,
        Ok(Ok(_)) => match Request::parse(&line) {
            Err(e) => Response::error(e),
            Ok(req) => answer(req, &pod).await,
        },
    };
    let mut text = serde_json::to_string(&response).unwrap_or_default();
    text.push('\n');
    if let Err(e) = write.write_all(text.as_bytes()).await {
        warn!("control socket: send the response: {e}");
    }
}

async fn answer(req: Request, pod: &Pod) -> Response {
    match req {
        Request::Ps => Response {
            containers: crate::pod_checkpoint::list(pod),
            ..Response::ok()
        },
        Request::Fscheckpoint(args) => {
            // One checkpoint of the pod at a time (the trigger's included).
            let _only = pod.checkpoint_lock().lock().await;
            match crate::pod_checkpoint::save(pod, args).await {
                Ok(sections) => Response {
                    sections,
                    ..Response::ok()
                },
                Err(e) => Response::error(e.to_string()),
            }
        }
    }
}

/// Remove `path` if it is a socket.
pub fn remove_if_socket(path: &Path) {
    let is_socket = std::fs::symlink_metadata(path)
        .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
        .unwrap_or(false);
    if is_socket {
        if let Err(e) = std::fs::remove_file(path) {
            warn!("remove control socket {}: {e}", path.display());
        }
    }
}

/// `delete` after a dead shim: its control socket goes once nothing answers on it.
pub fn remove_stale(id: &str) {
    let path = socket_path(&root(), id);
    if let Err(e) = std::os::unix::net::UnixStream::connect(&path) {
        if e.kind() == std::io::ErrorKind::ConnectionRefused {
            remove_if_socket(&path);
        }
    }
}
