//! ctr cases: a plain container (a pod of one, labelled by its id) restored from a filesystem
//! checkpoint with the `dev.cryo.fs-restore.image-path` annotation (`ctr run --annotation`).
//! runc's shim knows no such annotation: every case is cryo's only.

use anyhow::{ensure, Context, Result};
use harness::Runtime;

use super::fscheckpoint::{cryo, writer};
use super::{run_detached, wait_status, Case, Suite};

const NO_RESTORE: &str =
    "runc's shim has no filesystem checkpoints (cryo fscheckpoint, dev.cryo.fs-restore.image-path)";

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[(
    "fs_restore_brings_back_a_containers_rootfs_changes",
    NO_RESTORE,
)];

pub const CASES: &[(&str, Case)] = &[(
    "fs_restore_brings_back_a_containers_rootfs_changes",
    fs_restore_brings_back_a_containers_rootfs_changes,
)];

/// A container writes into its rootfs (a file, a directory, deletes an image file), is
/// checkpointed with `cryo fscheckpoint --leave-running`, removed, and run again under the
/// same id with the restore annotation: it starts with every change, the deletion included,
/// (from a lazy layer: the first restore on the node), the run's layer cache fills with the
/// section meanwhile, and the container's new writes stay out of the cached layer.
fn fs_restore_brings_back_a_containers_rootfs_changes(
    s: &Suite,
    rt: Runtime,
    id: &str,
) -> Result<()> {
    writer(s, rt, id)?;
    let tmp = tempfile::Builder::new()
        .prefix("cryo-fsrestore-")
        .tempdir_in("/tmp")?;
    let ck = tmp.path().join("ck").display().to_string();
    cryo(
        s,
        &["fscheckpoint", "--image-path", &ck, "--leave-running", id],
    )?
    .ok()
    .context("cryo fscheckpoint")?;
    s.cd.ctr(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
    wait_status(s, id, "STOPPED")?;
    s.cd.ctr(&["task", "rm", id])?.ok()?;
    s.cd.ctr(&["container", "rm", id])?.ok()?;

    let annotation = format!("dev.cryo.fs-restore.image-path={ck}");
    run_detached(s, rt, id, &["--annotation", &annotation])?;
    let seen =
        s.cd.ctr(&[
            "task",
            "exec",
            "--exec-id",
            "read",
            id,
            "sh",
            "-c",
            "cat /new.txt /d/f; test -e /bin/ls && echo ls-is-back; echo again > /new.txt; true",
        ])?
        .ok()?
        .stdout;
    ensure!(
        seen == "hello\ndeep\n",
        "the restored container sees {seen:?}"
    );
    // The first restore on the node is lazy: the cache fills in the background.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let layer = loop {
        let layers: Vec<_> = std::fs::read_dir(s.cd.layer_root())
            .into_iter()
            .flatten()
            .filter_map(|e| e.ok())
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .map(|e| e.path())
            .collect();
        if let Some(l) = layers.iter().find(|l| l.join("d/f").is_file()) {
            break l.clone();
        }
        ensure!(
            std::time::Instant::now() < deadline,
            "no layer holds d/f: {layers:?}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    ensure!(
        std::fs::read_to_string(layer.join("new.txt"))? == "hello\n",
        "the container's write reached the cached layer"
    );
    Ok(())
}
