//! One `criu swrk` session: CRIU started with its end of a SOCK_SEQPACKET pair as fd 3, file
//! descriptors it should see installed by number, requests sent and answers read (notifications
//! acknowledged on the way; a terminal's new pty master, sent with `orphan-pts-master`, kept).
//!
//! The session never waits for CRIU: each answer carries its own success, and the embedder's
//! reaper collects the process once it leaves (CRIU exits when its socket closes).

use std::io::IoSliceMut;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::path::Path;

use nix::sys::socket::{
    recvmsg, send, socketpair, AddressFamily, ControlMessageOwned, MsgFlags, SockFlag, SockType,
};
use protobuf::Message;
use rust_criu::rust_criu_protobuf::rpc;

use crate::error::{Error, Result};
use crate::spawn::Spawn;

pub use rpc::{Criu_opts as Opts, Criu_req_type as ReqType, Criu_resp as Resp};

/// CRIU's end of the RPC socket, as CRIU is told (`criu swrk 3`).
const SOCK_FD: RawFd = 3;
/// Extra descriptors (inherited ones CRIU refers to by its own numbers) are installed from
/// here on, in the order given.
pub const FIRST_EXTRA_FD: RawFd = 4;
/// Largest answer CRIU sends (answers are small; a truncated one is an error).
const MAX_ANSWER: usize = 1 << 20;

/// A running `criu swrk`.
pub struct Session {
    pid: i32,
    sock: OwnedFd,
    /// The pty master CRIU sent with `orphan-pts-master` during a restore.
    pts_master: Option<OwnedFd>,
}

impl Session {
    /// Start `binary swrk 3` with `stdio` as its fds 0-2 (`None`: /dev/null) and `extra` as fds
    /// [`FIRST_EXTRA_FD`], [`FIRST_EXTRA_FD`]+1, ...
    pub fn spawn(binary: &Path, stdio: [Option<OwnedFd>; 3], extra: Vec<OwnedFd>) -> Result<Self> {
        let (ours, theirs) = socketpair(
            AddressFamily::Unix,
            SockType::SeqPacket,
            None,
            SockFlag::SOCK_CLOEXEC,
        )
        .map_err(|e| Error::sys("socketpair for criu swrk", e))?;
        let [i, o, e] = stdio;
        let mut spawn = Spawn::new(binary)
            .arg("swrk")
            .arg(SOCK_FD.to_string())
            .fd_or_null(i, 0)
            .fd_or_null(o, 1)
            .fd_or_null(e, 2)
            .fd(theirs, SOCK_FD);
        for (n, fd) in extra.into_iter().enumerate() {
            spawn = spawn.fd(fd, FIRST_EXTRA_FD + n as RawFd);
        }
        // Never waited for: the embedder's reaper collects it (also after a failed exec).
        let pid = spawn
            .spawn()
            .map_err(|e| Error::CriuMissing(e.to_string()))?;
        Ok(Session {
            pid,
            sock: ours,
            pts_master: None,
        })
    }

    /// CRIU's pid (to place it in a cgroup before a restore).
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// The pty master received during the last call, if any.
    pub fn take_pts_master(&mut self) -> Option<OwnedFd> {
        self.pts_master.take()
    }

    /// Send one request and return CRIU's successful answer to it; notifications on the way
    /// are acknowledged. A failed answer becomes [`Error::Criu`] with CRIU's message and errno.
    pub fn call(&mut self, kind: ReqType, opts: Option<Opts>) -> Result<Resp> {
        self.call_with(kind, opts, |_| Ok(()))
    }

    /// The same, with each notification shown to `on_notify` first: its error is acknowledged
    /// as a failure (CRIU then aborts the request and kills what it restored) and returned once
    /// CRIU answered.
    pub fn call_with(
        &mut self,
        kind: ReqType,
        opts: Option<Opts>,
        mut on_notify: impl FnMut(&Resp) -> Result<()>,
    ) -> Result<Resp> {
        let mut req = rpc::Criu_req::new();
        req.set_type(kind);
        if let Some(opts) = opts {
            req.opts = protobuf::MessageField::some(opts);
        }
        self.send(&req)?;
        let mut refused: Option<Error> = None;
        loop {
            let resp = self.recv(kind)?;
            if !resp.success() {
                if let Some(e) = refused {
                    return Err(e);
                }
                let mut reason = format!("CRIU answered {:?} unsuccessfully", resp.type_());
                let msg = resp.cr_errmsg().trim();
                if !msg.is_empty() && !super::log::is_noise(msg) {
                    reason.push_str(&format!(": {msg}"));
                }
                if resp.has_cr_errno() && resp.cr_errno() != 0 {
                    reason.push_str(&format!(
                        " ({})",
                        nix::errno::Errno::from_raw(resp.cr_errno())
                    ));
                }
                return Err(Error::Criu {
                    op: op_name(kind),
                    reason,
                });
            }
            if resp.type_() == ReqType::NOTIFY {
                let ok = refused.is_none()
                    && match on_notify(&resp) {
                        Ok(()) => true,
                        Err(e) => {
                            refused = Some(e);
                            false
                        }
                    };
                let mut ack = rpc::Criu_req::new();
                ack.set_type(ReqType::NOTIFY);
                ack.set_notify_success(ok);
                self.send(&ack)?;
                continue;
            }
            if let Some(e) = refused {
                return Err(e);
            }
            if resp.type_() != kind {
                return Err(Error::Criu {
                    op: op_name(kind),
                    reason: format!("CRIU answered {:?} to {kind:?}", resp.type_()),
                });
            }
            return Ok(resp);
        }
    }

    fn send(&self, req: &rpc::Criu_req) -> Result<()> {
        let bytes = req.write_to_bytes().map_err(|e| Error::Criu {
            op: op_name(req.type_()),
            reason: format!("encode the request: {e}"),
        })?;
        send(self.sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL)
            .map_err(|e| Error::sys("send a request to criu swrk", e))?;
        Ok(())
    }

    fn recv(&mut self, kind: ReqType) -> Result<Resp> {
        let mut buf = vec![0u8; MAX_ANSWER];
        let mut cmsg = nix::cmsg_space!([RawFd; 1]);
        let (len, fd) = {
            let mut iov = [IoSliceMut::new(&mut buf)];
            let msg = loop {
                match recvmsg::<()>(
                    self.sock.as_raw_fd(),
                    &mut iov,
                    Some(&mut cmsg),
                    MsgFlags::MSG_CMSG_CLOEXEC,
                ) {
                    Err(nix::errno::Errno::EINTR) => continue,
                    other => break other,
                }
            }
            .map_err(|e| Error::sys("read criu's answer", e))?;
            if msg.flags.contains(MsgFlags::MSG_TRUNC) {
                return Err(Error::Criu {
                    op: op_name(kind),
                    reason: "CRIU's answer was larger than expected".into(),
                });
            }
            let mut fd = None;
            if let Ok(cmsgs) = msg.cmsgs() {
                for c in cmsgs {
                    if let ControlMessageOwned::ScmRights(fds) = c {
                        for raw in fds {
                            // SAFETY: received with SCM_RIGHTS: a new descriptor that is ours.
                            let owned = unsafe { OwnedFd::from_raw_fd(raw) };
                            fd.get_or_insert(owned);
                        }
                    }
                }
            }
            (msg.bytes, fd)
        };
        if len == 0 {
            return Err(Error::Criu {
                op: op_name(kind),
                reason: "CRIU exited without answering".into(),
            });
        }
        let resp = Resp::parse_from_bytes(&buf[..len]).map_err(|e| Error::Criu {
            op: op_name(kind),
            reason: format!("unreadable answer: {e}"),
        })?;
        if let Some(fd) = fd {
            if resp.notify.script() == "orphan-pts-master" {
                self.pts_master = Some(fd);
            }
        }
        Ok(resp)
    }
}

fn op_name(kind: ReqType) -> String {
    format!("{kind:?}").to_lowercase()
}
