//! The shim's ttrpc socket: created mode 0600 whatever the umask (the socket inode's mode is
//! set before `bind`, so the path never exists with a wider mode), and served only to peers
//! whose `SO_PEERCRED` uid is root or the shim's own (containerd's) uid, as runc's shim refuses
//! other users (containerd's `UnixSocketRequireSameUser`). A refused connection is closed
//! before a byte of it is read.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use containerd_shim_protos::ttrpc::r#async::transport::Listener;
use log::warn;
use nix::sys::socket::{self, AddressFamily, Backlog, SockFlag, SockType, UnixAddr};
use nix::sys::stat::Mode;

/// The socket file's mode.
pub const SOCKET_MODE: u32 = 0o600;

/// How long `bind` waits for a shim already serving the address to answer (as the
/// containerd-shim crate: 200 tries, 5 ms apart).
const PROBE_TRIES: u32 = 200;
const PROBE_INTERVAL: Duration = Duration::from_millis(5);

/// What binding the shim's address found.
pub enum Bound {
    /// A fresh listener, mode 0600.
    Listener(std::os::unix::net::UnixListener),
    /// Another shim already serves the address.
    Served,
}

/// Bind `address` (`unix:///path` or a path): the parent directory is created (0711) if
/// missing; an address in use by a live server is left to it; a stale socket file is replaced.
pub fn bind(address: &str) -> std::io::Result<Bound> {
    let path = Path::new(address.strip_prefix("unix://").unwrap_or(address));
    if let Some(parent) = path.parent() {
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o711)
            .create(parent)?;
    }
    match bind_private(path) {
        Err(e) if e.kind() == std::io::ErrorKind::AddrInUse => {
            for _ in 0..PROBE_TRIES {
                if std::os::unix::net::UnixStream::connect(path).is_ok() {
                    return Ok(Bound::Served);
                }
                std::thread::sleep(PROBE_INTERVAL);
            }
            // Nobody answers: a dead shim's socket.
            if std::fs::symlink_metadata(path)
                .map(|m| std::os::unix::fs::FileTypeExt::is_socket(&m.file_type()))
                .unwrap_or(false)
            {
                std::fs::remove_file(path)?;
            }
            bind_private(path).map(Bound::Listener)
        }
        other => other.map(Bound::Listener),
    }
}

/// A listening socket at `path` whose file is mode 0600 from the moment it exists.
pub fn bind_private(path: &Path) -> std::io::Result<std::os::unix::net::UnixListener> {
    let fd: OwnedFd = socket::socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC,
        None,
    )?;
    // Linux creates the socket file with the socket inode's mode (minus the umask): narrow it
    // before bind so no other user can ever connect.
    nix::sys::stat::fchmod(&fd, Mode::from_bits_truncate(SOCKET_MODE))?;
    socket::bind(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // A umask that removes the owner's bits too must not leave a mode other than 0600.
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(SOCKET_MODE))?;
    socket::listen(&fd, Backlog::MAXCONN)?;
    let listener = std::os::unix::net::UnixListener::from(fd);
    listener.set_nonblocking(true)?;
    Ok(listener)
}

/// Whether a peer with `uid` may talk to the shim: root, or the user the shim runs as
/// (containerd's).
pub fn peer_allowed(uid: u32, own_uid: u32) -> bool {
    uid == 0 || uid == own_uid
}

/// The ttrpc listener over `listener`: connections from other users are closed unanswered.
pub fn serve(listener: std::os::unix::net::UnixListener) -> std::io::Result<Listener> {
    Ok(Listener::new(allowed_connections(listener)?))
}

/// The connections accepted on `listener` from root or the shim's own uid; others are closed
/// unanswered (logged). Shared by the ttrpc socket and the control socket.
pub fn allowed_connections(
    listener: std::os::unix::net::UnixListener,
) -> std::io::Result<impl futures::Stream<Item = std::io::Result<tokio::net::UnixStream>>> {
    let listener = tokio::net::UnixListener::from_std(listener)?;
    let own_uid = nix::unistd::geteuid().as_raw();
    Ok(futures::stream::unfold(
        listener,
        move |listener| async move {
            loop {
                match listener.accept().await {
                Ok((conn, _)) => match conn.peer_cred() {
                    Ok(cred) if peer_allowed(cred.uid(), own_uid) => {
                        return Some((Ok(conn), listener));
                    }
                    Ok(cred) => warn!(
                        "refused a connection from uid {} (pid {}): only root and uid {own_uid} may use this shim",
                        cred.uid(),
                        cred.pid().map_or_else(|| "unknown".to_string(), |p| p.to_string())
                    ),
                    Err(e) => warn!("refused a connection without peer credentials: {e}"),
                },
                Err(e) => return Some((Err(e), listener)),
            }
            }
        },
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileTypeExt;

    #[test]
    fn only_root_and_the_own_uid_are_peers() {
        assert!(peer_allowed(0, 0));
        assert!(!peer_allowed(65534, 0));
        assert!(peer_allowed(1000, 1000));
        assert!(peer_allowed(0, 1000));
        assert!(!peer_allowed(1001, 1000));
    }

    #[test]
    fn the_socket_is_0600_and_a_stale_one_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s/sock");
        let address = format!("unix://{}", path.display());
        let Bound::Listener(first) = bind(&address).unwrap() else {
            panic!("nothing serves the address yet");
        };
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.permissions().mode() & 0o7777, SOCKET_MODE);
        // A live listener keeps its address.
        assert!(matches!(bind(&address).unwrap(), Bound::Served));
        drop(first);
        // The file of a dead listener is replaced.
        let Bound::Listener(_second) = bind(&address).unwrap() else {
            panic!("a stale socket was taken for a live one");
        };
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, SOCKET_MODE);
    }
}
