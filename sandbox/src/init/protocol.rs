//! The conversation between the engine and its init helper: one SOCK_SEQPACKET socket pair,
//! one JSON message per packet, file descriptors (the pty master) passed alongside with
//! SCM_RIGHTS. End of file on the engine's side after `Start` means the workload was exec'd
//! (the helper's end is close-on-exec).

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::path::PathBuf;
use std::time::Duration;

use nix::sys::socket::{
    recvmsg, sendmsg, setsockopt, socketpair, sockopt, AddressFamily, ControlMessage,
    ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use nix::sys::time::TimeVal;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The largest message either side sends (the spec with a seccomp profile fits easily).
const MAX_MESSAGE: usize = 1 << 20;

/// What the helper needs to build the container.
#[derive(Debug, Serialize, Deserialize)]
pub struct InitConfig {
    pub spec: oci_spec::runtime::Spec,
    /// Absolute host path of the rootfs (already mounted).
    pub rootfs: PathBuf,
    /// Bundle directory, for relative bind sources.
    pub bundle: PathBuf,
    /// Create a pty and send its master back.
    pub terminal: bool,
    /// Exec into the running container whose PID 1 has this host pid (join its namespaces)
    /// instead of creating a new container; `spec.process` is then the exec'd process.
    pub join: Option<i32>,
}

/// Engine → helper.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToInit {
    Config(Box<InitConfig>),
    /// Exec the workload now.
    Start,
}

/// Helper → engine.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub enum FromInit {
    /// Host pid of the container's PID 1 (sent by the helper after fork).
    Pid(i32),
    /// The pty master travels with this message.
    Console,
    /// PID 1 is set up and waits for `Start`.
    Ready,
    /// Setup or exec failed; the text names the cause.
    Error(String),
}

/// One end of the socket pair.
#[derive(Debug)]
pub struct Channel(OwnedFd);

impl Channel {
    /// A connected pair, both ends close-on-exec.
    pub fn pair() -> Result<(Channel, Channel)> {
        let (a, b) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::sys("socketpair", e))?;
        Ok((Channel(a), Channel(b)))
    }

    /// Adopt `fd` (the helper's inherited end).
    ///
    /// # Safety
    /// `fd` must be an open socket this process owns.
    pub unsafe fn from_raw_fd(fd: RawFd) -> Channel {
        Channel(OwnedFd::from_raw_fd(fd))
    }

    pub fn as_fd(&self) -> BorrowedFd<'_> {
        use std::os::fd::AsFd;
        self.0.as_fd()
    }

    pub fn into_fd(self) -> OwnedFd {
        self.0
    }

    /// Fail receives that take longer than `limit`.
    pub fn set_timeout(&self, limit: Duration) -> Result<()> {
        let tv = TimeVal::new(limit.as_secs() as _, limit.subsec_micros() as _);
        setsockopt(&self.0, sockopt::ReceiveTimeout, &tv).map_err(|e| Error::sys("SO_RCVTIMEO", e))
    }

    pub fn send<T: Serialize>(&self, msg: &T) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd<T: Serialize>(&self, msg: &T, fd: Option<BorrowedFd>) -> Result<()> {
        let bytes = serde_json::to_vec(msg).map_err(|e| Error::Init(format!("encode: {e}")))?;
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Init(format!(
                "message of {} bytes exceeds the {MAX_MESSAGE}-byte limit",
                bytes.len()
            )));
        }
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let cmsgs: Vec<ControlMessage> = if fds.is_empty() {
            vec![]
        } else {
            vec![ControlMessage::ScmRights(&fds)]
        };
        loop {
            match sendmsg::<()>(
                self.0.as_raw_fd(),
                &[IoSlice::new(&bytes)],
                &cmsgs,
                MsgFlags::MSG_NOSIGNAL,
                None,
            ) {
                Err(nix::Error::EINTR) => continue,
                Err(e) => return Err(Error::sys("send to init", e)),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// The next message and the descriptor that came with it; `None` at end of file.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<(T, Option<OwnedFd>)>> {
        let mut buf = vec![0u8; MAX_MESSAGE];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = loop {
            let mut iov = [IoSliceMut::new(&mut buf)];
            match recvmsg::<()>(
                self.0.as_raw_fd(),
                &mut iov,
                Some(&mut cmsg),
                MsgFlags::MSG_CMSG_CLOEXEC,
            ) {
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => {
                    return Err(Error::Init("timed out waiting for the init helper".into()))
                }
                Err(e) => return Err(Error::sys("receive from init", e)),
                Ok(msg) => {
                    if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                        return Err(Error::Init("message from init truncated".into()));
                    }
                    let mut fd = None;
                    for c in msg.cmsgs().map_err(|e| Error::sys("cmsgs", e))? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for raw in fds {
                                // SAFETY: the kernel just installed this descriptor for us.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                fd.get_or_insert(owned);
                            }
                        }
                    }
                    break (msg.bytes, fd);
                }
            }
        };
        if len == 0 {
            return Ok(None);
        }
        let msg = serde_json::from_slice(&buf[..len])
            .map_err(|e| Error::Init(format!("malformed message from peer: {e}")))?;
        Ok(Some((msg, fd)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_and_descriptors_cross_the_pair() {
        let (a, b) = Channel::pair().unwrap();
        a.send(&FromInit::Pid(42)).unwrap();
        let devnull = std::fs::File::open("/dev/null").unwrap();
        use std::os::fd::AsFd;
        a.send_with_fd(&FromInit::Console, Some(devnull.as_fd()))
            .unwrap();
        let (m, fd) = b.recv::<FromInit>().unwrap().unwrap();
        assert_eq!(m, FromInit::Pid(42));
        assert!(fd.is_none());
        let (m, fd) = b.recv::<FromInit>().unwrap().unwrap();
        assert_eq!(m, FromInit::Console);
        assert!(fd.is_some());
        drop(a);
        assert!(b.recv::<FromInit>().unwrap().is_none());
    }
}
