//! ctr cases: the shim's ttrpc socket. A containerd running with umask 000 starts the shim;
//! its socket must still be mode 0600, and a client running as uid 65534 must get no answer
//! to Connect — neither through the file mode, nor when it holds CAP_DAC_OVERRIDE and reaches
//! the socket anyway (then only the shim's own peer check stands between it and the Task API,
//! as runc's shim refuses other users).

use std::os::fd::IntoRawFd;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use harness::{Containerd, Runtime, ShimAddress, StartOptions};

use super::{Case, Suite};

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[];

pub const CASES: &[(&str, Case)] = &[
    (
        "shim_socket_is_0600_under_umask_000",
        shim_socket_is_0600_under_umask_000,
    ),
    ("other_users_get_no_answer", other_users_get_no_answer),
];

/// The unprivileged user of the probes.
const NOBODY: u32 = 65534;
/// How long a probe waits for an answer to Connect.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

fn shim_socket_is_0600_under_umask_000(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    with_umask_000_shim(s, rt, id, |shim| {
        use std::os::unix::fs::{FileTypeExt, PermissionsExt};
        let socket = &shim.path()?;
        let meta = std::fs::metadata(socket)?;
        ensure!(
            meta.file_type().is_socket(),
            "{} is no socket",
            socket.display()
        );
        let mode = meta.permissions().mode() & 0o7777;
        ensure!(
            mode == 0o600,
            "the shim socket {} has mode {mode:04o} under umask 000 (want 0600)",
            socket.display()
        );
        Ok(())
    })
}

fn other_users_get_no_answer(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    with_umask_000_shim(s, rt, id, |socket| {
        // The harness's own Connect (as root) is answered: the probes below are meaningful.
        probe(socket, id, None, false)?
            .map_err(anyhow::Error::msg)
            .context("root's Connect got no answer")?;
        let mut answered = Vec::new();
        for dac_override in [false, true] {
            match probe(socket, id, Some(NOBODY), dac_override)? {
                Ok(answer) => answered.push(format!(
                    "uid {NOBODY}{}: {answer}",
                    if dac_override {
                        " with CAP_DAC_OVERRIDE"
                    } else {
                        ""
                    }
                )),
                // Past the file mode, the connection itself must have been made: what refused
                // it is the shim.
                Err(why) if dac_override => ensure!(
                    why.starts_with("Connect:"),
                    "the probe with CAP_DAC_OVERRIDE did not reach the shim: {why}"
                ),
                Err(_) => {}
            }
        }
        ensure!(
            answered.is_empty(),
            "the shim answered other users: {}",
            answered.join("; ")
        );
        Ok(())
    })
}

/// Run a sleeping container of `rt` under a private containerd started with umask 000, hand
/// `check` its shim's socket, then remove everything (that containerd's teardown checks for
/// leftovers).
fn with_umask_000_shim(
    s: &Suite,
    rt: Runtime,
    id: &str,
    check: impl FnOnce(&ShimAddress) -> Result<()>,
) -> Result<()> {
    let cd = Containerd::start_with(
        &harness::built_shim()?,
        &StartOptions {
            umask: Some(0),
            ..Default::default()
        },
    )?;
    let result = (|| {
        let rootfs = s.rootfs.display().to_string();
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            rt.id(),
            "--env",
            "PATH=/bin",
            "--rootfs",
            &rootfs,
            id,
            "sleep",
            "100000",
        ])?
        .ok()?;
        check(&cd.shim_address(id)?)
    })();
    let torn = cd.teardown(&[]);
    result?;
    torn
}

/// Send the shim a ttrpc Connect from a thread of its own running as `uid` (gid the same, no
/// supplementary groups; with CAP_DAC_OVERRIDE if `dac_override`), or as root if `None`.
/// `Ok(Ok(answer))` if the shim answered, `Ok(Err(why))` if it did not.
fn probe(
    shim: &ShimAddress,
    id: &str,
    uid: Option<u32>,
    dac_override: bool,
) -> Result<std::result::Result<String, String>> {
    let socket = shim.path()?;
    let service = shim.task_service();
    let id = id.to_string();
    // Credentials are per thread in the kernel: the raw syscalls change only this thread's
    // (glibc's wrappers would change every thread of the test process).
    std::thread::spawn(move || -> Result<std::result::Result<String, String>> {
        if let Some(uid) = uid {
            become_user(uid, dac_override)?;
        }
        let stream = match std::os::unix::net::UnixStream::connect(&socket) {
            Ok(s) => s,
            Err(e) => return Ok(Err(format!("connect: {e}"))),
        };
        use containerd_shim_protos::protobuf::Message;
        use containerd_shim_protos::{api, ttrpc};
        let client = ttrpc::Client::new(stream.into_raw_fd()).context("ttrpc client")?;
        // The request by hand: the Task API's version (v2, or v3 for containerd 2.x's runc
        // shim) only changes the service name; ConnectRequest/Response are the same.
        let mut req = ttrpc::Request::new();
        req.set_service(service);
        req.set_method("Connect".into());
        req.set_timeout_nano(PROBE_TIMEOUT.as_nanos() as i64);
        req.payload = api::ConnectRequest {
            id,
            ..Default::default()
        }
        .write_to_bytes()?;
        Ok(match client.request(req) {
            Ok(res) => {
                let r = api::ConnectResponse::parse_from_bytes(&res.payload)?;
                Ok(format!(
                    "Connect answered (shim pid {}, task pid {})",
                    r.shim_pid, r.task_pid
                ))
            }
            Err(e) => Err(format!("Connect: {e}")),
        })
    })
    .join()
    .map_err(|_| anyhow::anyhow!("probe thread panicked"))?
}

/// Switch the calling thread (only) to `uid`/`uid`, keeping CAP_DAC_OVERRIDE if asked.
pub(super) fn become_user(uid: u32, dac_override: bool) -> Result<()> {
    let sys = |what: &str, rc: libc::c_long| -> Result<()> {
        if rc != 0 {
            bail!("{what}: {}", std::io::Error::last_os_error());
        }
        Ok(())
    };
    // SAFETY: raw credential syscalls on the calling thread; no memory is shared.
    unsafe {
        if dac_override {
            sys(
                "prctl(PR_SET_KEEPCAPS)",
                libc::syscall(libc::SYS_prctl, libc::PR_SET_KEEPCAPS, 1, 0, 0, 0),
            )?;
        }
        sys(
            "setgroups",
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()),
        )?;
        sys(
            "setresgid",
            libc::syscall(libc::SYS_setresgid, uid, uid, uid),
        )?;
        sys(
            "setresuid",
            libc::syscall(libc::SYS_setresuid, uid, uid, uid),
        )?;
        if dac_override {
            #[repr(C)]
            struct Header {
                version: u32,
                pid: i32,
            }
            #[repr(C)]
            #[derive(Clone, Copy)]
            struct Data {
                effective: u32,
                permitted: u32,
                inheritable: u32,
            }
            const VERSION_3: u32 = 0x2008_0522;
            let bit = 1u32 << 1; // CAP_DAC_OVERRIDE
            let mut header = Header {
                version: VERSION_3,
                pid: 0,
            };
            let data = [
                Data {
                    effective: bit,
                    permitted: bit,
                    inheritable: 0,
                },
                Data {
                    effective: 0,
                    permitted: 0,
                    inheritable: 0,
                },
            ];
            sys(
                "capset",
                libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()),
            )?;
        }
        ensure!(
            libc::syscall(libc::SYS_geteuid) as u32 == uid,
            "the probe thread did not become uid {uid}"
        );
    }
    Ok(())
}
