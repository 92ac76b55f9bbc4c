//! ctr cases: filesystem checkpoints of a running pod (`cryo fscheckpoint ID`, `cryo ps`)
//! through the shim's control socket under the private containerd's `CRYO_ROOT`. runc's shim
//! has no such thing: every case is cryo's only.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use harness::{Output, Runtime};

use super::{run_detached, wait_status, Case, Suite};

const NO_SUCH_SOCKET: &str =
    "runc's shim serves no cryo control socket (cryo fscheckpoint, cryo ps)";

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "fscheckpoint_leave_running_saves_the_rootfs_changes",
        NO_SUCH_SOCKET,
    ),
    ("fscheckpoint_stops_the_task_by_default", NO_SUCH_SOCKET),
    ("control_socket_is_0600_and_root_only", NO_SUCH_SOCKET),
    ("fscheckpoint_errors_change_nothing", NO_SUCH_SOCKET),
    ("forged_overlay_options_are_not_trusted", NO_SUCH_SOCKET),
    (
        "a_full_destination_leaves_no_snapshot_and_the_pod_running",
        NO_SUCH_SOCKET,
    ),
    ("all_volumes_saves_a_tmpfs_of_the_container", NO_SUCH_SOCKET),
];

pub const CASES: &[(&str, Case)] = &[
    (
        "fscheckpoint_leave_running_saves_the_rootfs_changes",
        fscheckpoint_leave_running_saves_the_rootfs_changes,
    ),
    (
        "fscheckpoint_stops_the_task_by_default",
        fscheckpoint_stops_the_task_by_default,
    ),
    (
        "control_socket_is_0600_and_root_only",
        control_socket_is_0600_and_root_only,
    ),
    (
        "fscheckpoint_errors_change_nothing",
        fscheckpoint_errors_change_nothing,
    ),
    (
        "forged_overlay_options_are_not_trusted",
        forged_overlay_options_are_not_trusted,
    ),
    (
        "a_full_destination_leaves_no_snapshot_and_the_pod_running",
        a_full_destination_leaves_no_snapshot_and_the_pod_running,
    ),
    (
        "all_volumes_saves_a_tmpfs_of_the_container",
        all_volumes_saves_a_tmpfs_of_the_container,
    ),
];

/// How long one `cryo` command may take.
const CLI_LIMIT: Duration = Duration::from_secs(60);

/// `cryo ARGS...` with the suite's containerd's root.
pub(super) fn cryo(s: &Suite, args: &[&str]) -> Result<Output> {
    let bin = harness::built_shim()?.with_file_name("cryo");
    ensure!(
        bin.is_file(),
        "{} is missing: cargo build --workspace --bins",
        bin.display()
    );
    let mut cmd = Command::new(bin);
    cmd.args(args).env("CRYO_ROOT", s.cd.cryo_root());
    harness::cmd::run(&mut cmd, None, CLI_LIMIT)
}

/// A running busybox container that wrote `/new.txt` and `/d/f` and deleted the image's
/// `/bin/ls` (→ a whiteout in its upper layer).
pub(super) fn writer(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(s, rt, id, &[])?;
    s.cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "write",
        id,
        "sh",
        "-c",
        "echo hello > /new.txt && mkdir /d && echo deep > /d/f && rm /bin/ls && sync",
    ])?
    .ok()
    .context("write into the rootfs")?;
    Ok(())
}

fn tmp() -> Result<tempfile::TempDir> {
    Ok(tempfile::Builder::new()
        .prefix("cryo-fsck-")
        .tempdir_in("/tmp")?)
}

fn fscheckpoint_leave_running_saves_the_rootfs_changes(
    s: &Suite,
    rt: Runtime,
    id: &str,
) -> Result<()> {
    writer(s, rt, id)?;
    let dir = tmp()?;
    let ck = dir.path().join("ck");
    let ck_s = ck.display().to_string();
    cryo(
        s,
        &["fscheckpoint", "--image-path", &ck_s, "--leave-running", id],
    )?
    .ok()
    .context("cryo fscheckpoint --leave-running")?;
    // Still running, and not left frozen: an exec answers.
    wait_status(s, id, "RUNNING")?;
    let echo =
        s.cd.ctr(&["task", "exec", "--exec-id", "alive", id, "echo", "alive"])?
            .ok()?;
    ensure!(
        echo.stdout.trim() == "alive",
        "exec after the checkpoint: {echo:?}"
    );
    // The manifest names the container, the path and the kind.
    let inspect = cryo(s, &["fscheckpoint", "inspect", "--image-path", &ck_s])?.ok()?;
    let line = inspect
        .stdout
        .lines()
        .find(|l| l.contains("rootfs-upper"))
        .with_context(|| format!("no rootfs-upper section:\n{}", inspect.stdout))?;
    ensure!(
        line.contains(id) && line.split_whitespace().any(|w| w == "/"),
        "section line {line:?} does not name {id} and /"
    );
    // Restored, the section holds the files and the whiteout.
    let out = dir.path().join("out");
    cryo(
        s,
        &[
            "fscheckpoint",
            "restore",
            "--image-path",
            &ck_s,
            "--target",
            &out.display().to_string(),
        ],
    )?
    .ok()?;
    ensure!(std::fs::read_to_string(out.join("new.txt"))? == "hello\n");
    ensure!(std::fs::read_to_string(out.join("d/f"))? == "deep\n");
    let ls = std::fs::symlink_metadata(out.join("bin/ls")).context("the whiteout of /bin/ls")?;
    ensure!(
        ls.file_type().is_char_device() && ls.rdev() == 0,
        "/bin/ls restored as {:?} (rdev {}), not a whiteout",
        ls.file_type(),
        ls.rdev()
    );
    // cryo ps lists it.
    let ps = cryo(s, &["ps"])?.ok()?;
    ensure!(
        ps.stdout
            .lines()
            .any(|l| l.split_whitespace().next() == Some(id) && l.contains("running")),
        "cryo ps does not list {id} running:\n{}",
        ps.stdout
    );
    Ok(())
}

fn fscheckpoint_stops_the_task_by_default(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    writer(s, rt, id)?;
    let dir = tmp()?;
    let ck = dir.path().join("ck");
    cryo(
        s,
        &[
            "fscheckpoint",
            "--image-path",
            &ck.display().to_string(),
            id,
        ],
    )?
    .ok()
    .context("cryo fscheckpoint")?;
    wait_status(s, id, "STOPPED")?;
    ensure!(
        ck.join("fscheckpoint.json").is_file(),
        "no checkpoint written"
    );
    // The socket goes with the shim.
    let socket = socket_of(s, id);
    s.cd.ctr(&["task", "delete", id])?.ok()?;
    s.cd.ctr(&["container", "delete", id])?.ok()?;
    for _ in 0..100 {
        if !socket.exists() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    anyhow::bail!("{} left after the shim left", socket.display())
}

fn socket_of(s: &Suite, id: &str) -> PathBuf {
    s.cd.cryo_root().join(format!("{id}.sock"))
}

fn control_socket_is_0600_and_root_only(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(s, rt, id, &[])?;
    let socket = socket_of(s, id);
    let meta = std::fs::metadata(&socket).with_context(|| socket.display().to_string())?;
    ensure!(
        meta.file_type().is_socket(),
        "{} is no socket",
        socket.display()
    );
    let mode = meta.permissions().mode() & 0o7777;
    ensure!(mode == 0o600, "control socket mode {mode:04o}, want 0600");
    // Root is answered; uid 65534 is not, even past the file mode (CAP_DAC_OVERRIDE).
    ensure!(
        ask_ps(&socket, None)?.contains(id),
        "root's ps was not answered with {id}"
    );
    let answer = ask_ps(&socket, Some(65534))?;
    ensure!(answer.is_empty(), "uid 65534 got an answer: {answer}");
    // Under a containerd running with umask 000 too.
    let cd = harness::Containerd::start_with(
        &harness::built_shim()?,
        &harness::StartOptions {
            umask: Some(0),
            ..Default::default()
        },
    )?;
    let checked = (|| -> Result<()> {
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
        let socket = cd.cryo_root().join(format!("{id}.sock"));
        let mode = std::fs::metadata(&socket)?.permissions().mode() & 0o7777;
        ensure!(
            mode == 0o600,
            "control socket mode {mode:04o} under umask 000, want 0600"
        );
        Ok(())
    })();
    let torn = cd.teardown(&[]);
    checked?;
    torn
}

/// Send `ps` as root or as `uid` (with CAP_DAC_OVERRIDE, from a thread of its own); what came
/// back (empty if nothing).
fn ask_ps(socket: &Path, uid: Option<u32>) -> Result<String> {
    let socket = socket.to_path_buf();
    std::thread::spawn(move || -> Result<String> {
        if let Some(uid) = uid {
            super::socket::become_user(uid, true)?;
        }
        let mut conn = std::os::unix::net::UnixStream::connect(&socket)
            .with_context(|| format!("connect {}", socket.display()))?;
        conn.set_read_timeout(Some(Duration::from_secs(5)))?;
        // A refused peer's connection may be closed before the request is out (EPIPE).
        if conn.write_all(b"{\"version\":1,\"op\":\"ps\"}\n").is_err() {
            return Ok(String::new());
        }
        let mut line = String::new();
        let _ = BufReader::new(conn).read_line(&mut line);
        Ok(line)
    })
    .join()
    .map_err(|_| anyhow::anyhow!("the client thread panicked"))?
}

fn fscheckpoint_errors_change_nothing(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    writer(s, rt, id)?;
    let dir = tmp()?;
    let ck = dir.path().join("ck");
    let ck_s = ck.display().to_string();
    let refused = |out: Output, needles: &[&str]| -> Result<()> {
        ensure!(out.code != 0, "accepted: {out:?}");
        for n in needles {
            ensure!(
                out.stderr.contains(n),
                "the error does not say {n:?}: {}",
                out.stderr
            );
        }
        Ok(())
    };
    // Unknown id.
    refused(
        cryo(s, &["fscheckpoint", "--image-path", &ck_s, "no-such-pod"])?,
        &["no-such-pod"],
    )?;
    ensure!(!ck.exists(), "a checkpoint dir was made for an unknown id");
    // A --path no container mounts: nothing written, the task runs on.
    refused(
        cryo(
            s,
            &[
                "fscheckpoint",
                "--image-path",
                &ck_s,
                "--path",
                "/nowhere",
                id,
            ],
        )?,
        &["--path /nowhere", "mounts it"],
    )?;
    ensure!(!ck.exists(), "a checkpoint dir was left by a failed save");
    wait_status(s, id, "RUNNING")?;
    // A kernel view is no volume; nor is a relative path.
    refused(
        cryo(
            s,
            &["fscheckpoint", "--image-path", &ck_s, "--path", "/proc", id],
        )?,
        &["--path /proc", "proc mount", "not a volume"],
    )?;
    refused(
        cryo(
            s,
            &["fscheckpoint", "--image-path", &ck_s, "--path", "etc", id],
        )?,
        &["--path \"etc\"", "not an absolute path"],
    )?;
    ensure!(!ck.exists(), "a checkpoint dir was left by a failed save");
    wait_status(s, id, "RUNNING")?;
    // A destination that already holds a checkpoint: refused, unchanged, the task runs on.
    cryo(
        s,
        &["fscheckpoint", "--image-path", &ck_s, "--leave-running", id],
    )?
    .ok()?;
    let before = std::fs::read(ck.join("fscheckpoint.json"))?;
    refused(
        cryo(s, &["fscheckpoint", "--image-path", &ck_s, id])?,
        &[&ck_s, "checkpoint"],
    )?;
    ensure!(
        std::fs::read(ck.join("fscheckpoint.json"))? == before,
        "the existing checkpoint was changed"
    );
    wait_status(s, id, "RUNNING")?;
    let echo =
        s.cd.ctr(&["task", "exec", "--exec-id", "alive", id, "echo", "alive"])?
            .ok()?;
    ensure!(
        echo.stdout.trim() == "alive",
        "the task is not running: {echo:?}"
    );
    Ok(())
}

/// A privileged container mounts an overlay whose `upperdir=` names, inside the container, the
/// same path as a host directory holding a secret. Saving that mount must read the container's
/// overlay, never the host directory its options name.
fn forged_overlay_options_are_not_trusted(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let dir = tmp()?;
    let host_dir = dir.path().join("secret");
    std::fs::create_dir(&host_dir)?;
    std::fs::write(host_dir.join("secret.txt"), "host secret")?;
    let u = host_dir.display().to_string();
    let script = format!(
        "mount -t tmpfs none /tmp && mkdir -p {u} /tmp/w /tmp/l /mnt/evil && echo mine > {u}/mine.txt \\
         && mount -t overlay overlay -o lowerdir=/tmp/l,upperdir={u},workdir=/tmp/w /mnt/evil \\
         && touch /ready && exec sleep 100000"
    );
    s.cd.ctr(&[
        "run",
        "-d",
        "--privileged",
        "--runtime",
        rt.id(),
        harness::image::BUSYBOX_IMAGE,
        id,
        "sh",
        "-c",
        &script,
    ])?
    .ok()?;
    wait_status(s, id, "RUNNING")?;
    for _ in 0..100 {
        if s.cd
            .ctr(&[
                "task",
                "exec",
                "--exec-id",
                "probe",
                id,
                "test",
                "-e",
                "/ready",
            ])?
            .code
            == 0
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ck = dir.path().join("ck");
    let ck_s = ck.display().to_string();
    cryo(
        s,
        &[
            "fscheckpoint",
            "--image-path",
            &ck_s,
            "--path",
            "/mnt/evil",
            "--leave-running",
            id,
        ],
    )?
    .ok()?;
    let out = dir.path().join("out");
    cryo(
        s,
        &[
            "fscheckpoint",
            "restore",
            "--image-path",
            &ck_s,
            "--target",
            &out.display().to_string(),
        ],
    )?
    .ok()?;
    ensure!(
        !out.join("secret.txt").exists(),
        "the host directory named by the container's overlay options was saved"
    );
    ensure!(
        std::fs::read_to_string(out.join("mine.txt"))? == "mine\n",
        "the container's overlay was not saved"
    );
    Ok(())
}

/// A tmpfs mounted for a case, unmounted when dropped.
struct SmallTmpfs(PathBuf);

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

/// The destination fills up (ENOSPC) while saving: the error says so, nothing of the checkpoint
/// is left, and the task runs on, with `--leave-running` or without (a failed save does not
/// stop the pod: nothing was saved).
fn a_full_destination_leaves_no_snapshot_and_the_pod_running(
    s: &Suite,
    rt: Runtime,
    id: &str,
) -> Result<()> {
    run_detached(s, rt, id, &[])?;
    s.cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "fill",
        id,
        "sh",
        "-c",
        "head -c 4194304 /dev/urandom > /big && sync",
    ])?
    .ok()?;
    let dir = tmp()?;
    let small = dir.path().join("small");
    std::fs::create_dir(&small)?;
    nix::mount::mount(
        Some("tmpfs"),
        &small,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )?;
    let _mounted = SmallTmpfs(small.clone());
    let ck = small.join("ck").display().to_string();
    for leave_running in [true, false] {
        let mut args = vec!["fscheckpoint", "--image-path", &ck];
        if leave_running {
            args.push("--leave-running");
        }
        args.push(id);
        let out = cryo(s, &args)?;
        ensure!(
            out.code != 0,
            "a save into 1 MiB of 4 MiB succeeded: {out:?}"
        );
        ensure!(
            out.stderr.contains("No space left") || out.stderr.contains("ENOSPC"),
            "the error does not say the destination is full: {}",
            out.stderr
        );
        let left: Vec<_> = std::fs::read_dir(&small)?
            .flatten()
            .map(|e| e.path())
            .collect();
        ensure!(
            left.is_empty(),
            "left in the destination's filesystem: {left:?}"
        );
        wait_status(s, id, "RUNNING")?;
        let echo =
            s.cd.ctr(&["task", "exec", "--exec-id", "alive", id, "echo", "alive"])?
                .ok()?;
        ensure!(
            echo.stdout.trim() == "alive",
            "the task is not running: {echo:?}"
        );
    }
    Ok(())
}

/// A tmpfs the container mounts (in its own mount namespace, out of the host's sight) is saved
/// by `--path all-volumes` and by its path, read through the container's root, as kind tmpfs.
fn all_volumes_saves_a_tmpfs_of_the_container(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    run_detached(
        s,
        rt,
        id,
        &["--mount", "type=tmpfs,src=tmpfs,dst=/scratch,options=rw"],
    )?;
    s.cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "w",
        id,
        "sh",
        "-c",
        "echo t > /scratch/t.txt",
    ])?
    .ok()?;
    let dir = tmp()?;
    for (n, path) in ["all-volumes", "/scratch"].iter().enumerate() {
        let ck = dir.path().join(format!("ck{n}"));
        let ck_s = ck.display().to_string();
        cryo(
            s,
            &[
                "fscheckpoint",
                "--image-path",
                &ck_s,
                "--path",
                path,
                "--leave-running",
                id,
            ],
        )?
        .ok()?;
        let json = cryo(
            s,
            &["fscheckpoint", "inspect", "--json", "--image-path", &ck_s],
        )?
        .ok()?
        .stdout;
        let m: serde_json::Value = serde_json::from_str(&json)?;
        let sections = m["sections"].as_array().context("no sections")?;
        let i = sections
            .iter()
            .position(|x| x["resource"]["path"] == "/scratch")
            .with_context(|| format!("--path {path}: no /scratch section: {json}"))?;
        ensure!(
            sections[i]["resource"]["kind"] == "tmpfs"
                && sections[i]["resource"]["container"] == id,
            "--path {path}: {}",
            sections[i]
        );
        let out = dir.path().join(format!("out{n}"));
        cryo(
            s,
            &[
                "fscheckpoint",
                "restore",
                "--image-path",
                &ck_s,
                "--section",
                &i.to_string(),
                "--target",
                &out.display().to_string(),
            ],
        )?
        .ok()?;
        ensure!(std::fs::read_to_string(out.join("t.txt"))? == "t\n");
    }
    wait_status(s, id, "RUNNING")
}
