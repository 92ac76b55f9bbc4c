//! The conversation between the engine and its init helper: one SOCK_SEQPACKET socket pair,
//! one JSON message at a time, file descriptors (the pty master) passed alongside with
//! SCM_RIGHTS. End of file on the engine's side after `Start` means the workload was exec'd
//! (the helper's end is close-on-exec).
//!
//! A message travels in packets of at most [`CHUNK`] bytes, each led by one byte that says
//! whether more follow, so its size is not bounded by the socket's buffer (a spec with
//! megabytes of arguments or 65536 additional gids crosses as well as a small one). A message
//! may be at most [`MAX_MESSAGE`] bytes (16 MiB) of JSON: the documented limit of a container's
//! configuration, refused by name above it (see [`Channel::send_encoded`]).

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

/// The largest message either side may send, in bytes of JSON (the encoded [`InitConfig`]:
/// the spec with its arguments, environment, gids and seccomp profile). It equals containerd's
/// default gRPC message limit, which a spec has to pass through first, and is far above the
/// kernel's own limits on argv and the environment (128 KiB per string, a quarter of the stack
/// limit in all) and a 65536-entry additionalGids list (about 450 KB).
pub const MAX_MESSAGE: usize = 16 << 20;

/// The payload of one packet: well below the socket's default buffer (about 208 KiB).
const CHUNK: usize = 64 << 10;

/// First byte of a packet: more packets of this message follow.
const MORE: u8 = 1;
/// First byte of a packet: this packet ends the message.
const LAST: u8 = 0;

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

    /// Fail receives, and sends the peer does not take in, that take longer than `limit`.
    pub fn set_timeout(&self, limit: Duration) -> Result<()> {
        let tv = TimeVal::new(limit.as_secs() as _, limit.subsec_micros() as _);
        setsockopt(&self.0, sockopt::ReceiveTimeout, &tv)
            .map_err(|e| Error::sys("SO_RCVTIMEO", e))?;
        setsockopt(&self.0, sockopt::SendTimeout, &tv).map_err(|e| Error::sys("SO_SNDTIMEO", e))
    }

    pub fn send<T: Serialize>(&self, msg: &T) -> Result<()> {
        self.send_with_fd(msg, None)
    }

    pub fn send_with_fd<T: Serialize>(&self, msg: &T, fd: Option<BorrowedFd>) -> Result<()> {
        let bytes = encode(msg)?;
        self.send_encoded(&bytes, fd)
    }

    /// Send a message [`encode`]d beforehand, in as many packets as it needs; `fd` travels
    /// with the first. Refused above [`MAX_MESSAGE`] bytes.
    pub fn send_encoded(&self, bytes: &[u8], fd: Option<BorrowedFd>) -> Result<()> {
        if bytes.len() > MAX_MESSAGE {
            return Err(Error::Init(format!(
                "message of {} bytes exceeds the {MAX_MESSAGE}-byte limit",
                bytes.len()
            )));
        }
        let fds: Vec<RawFd> = fd.iter().map(|f| f.as_raw_fd()).collect();
        let mut chunks = bytes.chunks(CHUNK).peekable();
        let mut first = true;
        loop {
            let chunk = chunks.next().unwrap_or_default();
            let mark = [if chunks.peek().is_some() { MORE } else { LAST }];
            let cmsgs: Vec<ControlMessage> = if first && !fds.is_empty() {
                vec![ControlMessage::ScmRights(&fds)]
            } else {
                vec![]
            };
            self.send_packet(&[IoSlice::new(&mark), IoSlice::new(chunk)], &cmsgs)?;
            first = false;
            if mark[0] == LAST {
                return Ok(());
            }
        }
    }

    fn send_packet(&self, iov: &[IoSlice], cmsgs: &[ControlMessage]) -> Result<()> {
        loop {
            match sendmsg::<()>(self.0.as_raw_fd(), iov, cmsgs, MsgFlags::MSG_NOSIGNAL, None) {
                Err(nix::Error::EINTR) => continue,
                Err(nix::Error::EAGAIN) => {
                    return Err(Error::Init(
                        "timed out sending to the init helper (it does not read)".into(),
                    ))
                }
                Err(e) => return Err(Error::sys("send to init", e)),
                Ok(_) => return Ok(()),
            }
        }
    }

    /// The next message and the descriptor that came with it; `None` at end of file.
    pub fn recv<T: DeserializeOwned>(&self) -> Result<Option<(T, Option<OwnedFd>)>> {
        let mut message = Vec::new();
        let mut buf = vec![0u8; CHUNK + 1];
        let mut fd = None;
        loop {
            let Some(len) = self.recv_packet(&mut buf, &mut fd)? else {
                if message.is_empty() {
                    return Ok(None);
                }
                return Err(Error::Init(format!(
                    "the peer closed the socket within a message ({} bytes received)",
                    message.len()
                )));
            };
            let (mark, payload) = buf[..len]
                .split_first()
                .ok_or_else(|| Error::Init("empty packet from peer".into()))?;
            if message.len() + payload.len() > MAX_MESSAGE {
                return Err(Error::Init(format!(
                    "message from peer exceeds the {MAX_MESSAGE}-byte limit"
                )));
            }
            message.extend_from_slice(payload);
            match *mark {
                MORE => continue,
                LAST => break,
                other => return Err(Error::Init(format!("packet with bad mark {other}"))),
            }
        }
        let msg = serde_json::from_slice(&message)
            .map_err(|e| Error::Init(format!("malformed message from peer: {e}")))?;
        Ok(Some((msg, fd)))
    }

    /// One packet into `buf`; its length, `None` at end of file. The first descriptor that
    /// comes along is kept in `fd` (others are closed).
    fn recv_packet(&self, buf: &mut [u8], fd: &mut Option<OwnedFd>) -> Result<Option<usize>> {
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        loop {
            let mut iov = [IoSliceMut::new(buf)];
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
                        return Err(Error::Init("packet from peer truncated".into()));
                    }
                    for c in msg.cmsgs().map_err(|e| Error::sys("cmsgs", e))? {
                        if let ControlMessageOwned::ScmRights(fds) = c {
                            for raw in fds {
                                // SAFETY: the kernel just installed this descriptor for us.
                                let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                                fd.get_or_insert(owned);
                            }
                        }
                    }
                    return Ok((msg.bytes > 0).then_some(msg.bytes));
                }
            }
        }
    }
}

/// A message as JSON, ready for [`Channel::send_encoded`].
pub fn encode<T: Serialize>(msg: &T) -> Result<Vec<u8>> {
    serde_json::to_vec(msg).map_err(|e| Error::Init(format!("encode: {e}")))
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

    /// Far beyond one packet and beyond the socket's buffer (the old one-packet protocol
    /// failed with EMSGSIZE above about 210 KB).
    #[test]
    fn messages_larger_than_the_socket_buffer_cross_intact() {
        let (a, b) = Channel::pair().unwrap();
        let big = "x".repeat(3 << 20) + "end";
        let sender = std::thread::spawn(move || {
            a.send(&FromInit::Error(big)).unwrap();
            a.send(&FromInit::Ready).unwrap();
        });
        let (m, _) = b.recv::<FromInit>().unwrap().unwrap();
        match m {
            FromInit::Error(s) => {
                assert_eq!(s.len(), (3 << 20) + 3);
                assert!(s.ends_with("xend"));
            }
            other => panic!("got {other:?}"),
        }
        assert_eq!(b.recv::<FromInit>().unwrap().unwrap().0, FromInit::Ready);
        sender.join().unwrap();
    }

    #[test]
    fn messages_over_the_limit_are_refused_by_size() {
        let (a, _b) = Channel::pair().unwrap();
        let e = a
            .send_encoded(&vec![b' '; MAX_MESSAGE + 1], None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("limit"), "{e}");
    }

    #[test]
    fn a_message_cut_short_is_an_error() {
        let (a, b) = Channel::pair().unwrap();
        a.send_packet(&[IoSlice::new(&[MORE]), IoSlice::new(b"{")], &[])
            .unwrap();
        drop(a);
        let e = b.recv::<FromInit>().unwrap_err().to_string();
        assert!(e.contains("within a message"), "{e}");
    }
}
