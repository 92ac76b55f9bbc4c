//! The client side of the shims' control sockets: one socket per shim under the root
//! directory (`--root`, else `CRYO_ROOT`, else `/run/cryo`), one JSON request line and one JSON
//! response line per connection (version 1; the types mirror the shim's
//! `control::protocol`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::Deserialize;
use serde_json::json;

/// The protocol version spoken.
pub const VERSION: u32 = 1;
/// Where shims put their sockets unless told otherwise.
const DEFAULT_ROOT: &str = "/run/cryo";
/// How long a shim may take to answer `ps`.
const PS_LIMIT: Duration = Duration::from_secs(10);

/// One container a shim serves.
#[derive(Debug, Deserialize)]
pub struct ContainerInfo {
    pub id: String,
    pub pod: String,
    pub name: String,
    pub status: String,
    pub pid: i32,
}

/// One saved section.
#[derive(Debug, Deserialize)]
pub struct SectionInfo {
    pub container: String,
    pub path: String,
    pub kind: String,
}

#[derive(Debug, Deserialize)]
pub struct Response {
    pub version: u32,
    pub ok: bool,
    #[serde(default)]
    pub error: Option<String>,
    #[serde(default)]
    pub containers: Vec<ContainerInfo>,
    #[serde(default)]
    pub sections: Vec<SectionInfo>,
}

/// The root directory: `--root`, else `CRYO_ROOT`, else `/run/cryo`.
pub fn root(flag: Option<PathBuf>) -> PathBuf {
    flag.or_else(|| {
        std::env::var_os("CRYO_ROOT")
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    })
    .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT))
}

/// A shim's socket and what it serves.
pub struct Shim {
    pub socket: PathBuf,
    pub containers: Vec<ContainerInfo>,
}

/// Every shim answering under `root` (sockets nobody answers on are skipped).
pub fn shims(root: &Path) -> Result<Vec<Shim>> {
    let entries = match std::fs::read_dir(root) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e).with_context(|| format!("--root {}", root.display())),
    };
    let mut sockets: Vec<PathBuf> = entries
        .filter_map(|e| e.ok())
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "sock"))
        .collect();
    sockets.sort();
    let mut out = Vec::new();
    for socket in sockets {
        match request(
            &socket,
            &json!({"version": VERSION, "op": "ps"}),
            Some(PS_LIMIT),
        ) {
            Ok(r) => out.push(Shim {
                socket,
                containers: r.containers,
            }),
            Err(e) => eprintln!("cryo: skipping {}: {e:#}", socket.display()),
        }
    }
    Ok(out)
}

/// Send one request and read the answer; a refusal by the shim is an error with its message.
pub fn request(
    socket: &Path,
    req: &serde_json::Value,
    limit: Option<Duration>,
) -> Result<Response> {
    let mut conn =
        UnixStream::connect(socket).with_context(|| format!("connect {}", socket.display()))?;
    conn.set_read_timeout(limit)?;
    let mut line = serde_json::to_string(req)?;
    line.push('\n');
    conn.write_all(line.as_bytes())?;
    let mut answer = String::new();
    BufReader::new(conn)
        .read_line(&mut answer)
        .with_context(|| format!("read the answer of {}", socket.display()))?;
    if answer.is_empty() {
        bail!("{} closed the connection unanswered", socket.display());
    }
    let r: Response = serde_json::from_str(&answer)
        .with_context(|| format!("the answer of {}", socket.display()))?;
    if r.version != VERSION {
        bail!(
            "{} speaks version {} (want {VERSION})",
            socket.display(),
            r.version
        );
    }
    if !r.ok {
        bail!("{}", r.error.unwrap_or_else(|| "refused".into()));
    }
    Ok(r)
}
