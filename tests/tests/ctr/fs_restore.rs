//! ctr cases: a plain container (a pod of one, labelled by its id) restored from a filesystem
//! checkpoint with the `dev.cryo.fs-restore.image-path` annotation (`ctr run --annotation`).
//! runc's shim knows no such annotation: every case is cryo's only.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use harness::image::BUSYBOX_IMAGE;
use harness::{Containerd, Runtime, StartOptions};

use super::fscheckpoint::{cryo, writer};
use super::{run_detached, wait_status, Case, Suite};
use harness::Output;

const NO_RESTORE: &str =
    "runc's shim has no filesystem checkpoints (cryo fscheckpoint, dev.cryo.fs-restore.image-path)";

/// Cases runc's shim is not held to, and why.
pub const RUNC_FALLS_SHORT: &[(&str, &str)] = &[
    (
        "fs_restore_brings_back_a_containers_rootfs_changes",
        NO_RESTORE,
    ),
    ("fs_restore_cache_stays_under_its_size_limit", NO_RESTORE),
];

pub const CASES: &[(&str, Case)] = &[
    (
        "fs_restore_brings_back_a_containers_rootfs_changes",
        fs_restore_brings_back_a_containers_rootfs_changes,
    ),
    (
        "fs_restore_cache_stays_under_its_size_limit",
        fs_restore_cache_stays_under_its_size_limit,
    ),
];

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

/// A private containerd whose shims get `CRYO_LAYER_CACHE_MAX_SIZE=max`, with the busybox
/// image of the suite's.
fn limited_containerd(s: &Suite, max: &str) -> Result<Containerd> {
    let cd = Containerd::start_with(
        &harness::built_shim()?,
        &StartOptions {
            env: vec![("CRYO_LAYER_CACHE_MAX_SIZE".into(), max.into())],
            ..Default::default()
        },
    )?;
    let busybox = s.cd.dir.join("images/busybox.tar").display().to_string();
    cd.ctr(&["image", "import", &busybox])?
        .ok()
        .context("import the busybox image")?;
    Ok(cd)
}

/// Container `label` (on the suite's containerd) writes `/<name>` (64 KiB) into its rootfs and
/// is checkpointed (`cryo fscheckpoint`) into `dir/<label>`, then removed; the checkpoint and
/// the section's layer in `cd`'s cache.
fn saved_rootfs(
    s: &Suite,
    rt: Runtime,
    cd: &Containerd,
    dir: &Path,
    label: &str,
    name: &str,
) -> Result<(String, PathBuf)> {
    run_detached(s, rt, label, &[])?;
    let script = format!("yes {name} | head -c 65536 > /{name} && sync");
    s.cd.ctr(&[
        "task",
        "exec",
        "--exec-id",
        "write",
        label,
        "sh",
        "-c",
        &script,
    ])?
    .ok()
    .context("write into the rootfs")?;
    let ck = dir.join(label);
    let ck_text = ck.display().to_string();
    cryo(
        s,
        &[
            "fscheckpoint",
            "--image-path",
            &ck_text,
            "--leave-running",
            label,
        ],
    )?
    .ok()
    .context("cryo fscheckpoint")?;
    remove(&s.cd, label)?;
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(ck.join("fscheckpoint.json"))?)?;
    let hex = m["sections"]
        .as_array()
        .context("no sections")?
        .iter()
        .find(|x| x["resource"]["path"] == "/")
        .and_then(|x| x["checksum"].as_str())
        .and_then(|c| c.strip_prefix("blake3:"))
        .context("no rootfs section")?;
    Ok((ck_text, cd.layer_root().join(hex)))
}

/// Run `id` restoring `ck` on `cd` (busybox, `sleep`).
fn run_restoring(cd: &Containerd, rt: Runtime, id: &str, ck: &str) -> Result<Output> {
    let annotation = format!("dev.cryo.fs-restore.image-path={ck}");
    cd.ctr(&[
        "run",
        "-d",
        "--runtime",
        rt.id(),
        "--annotation",
        &annotation,
        BUSYBOX_IMAGE,
        id,
        "sleep",
        "100000",
    ])
}

/// Kill and remove `id` on `cd`.
fn remove(cd: &Containerd, id: &str) -> Result<()> {
    cd.ctr(&["task", "kill", "-s", "SIGKILL", id])?.ok()?;
    let deadline = Instant::now() + Duration::from_secs(20);
    while cd.ctr(&["task", "rm", id])?.code != 0 {
        ensure!(Instant::now() < deadline, "task {id} never stopped");
        std::thread::sleep(Duration::from_millis(50));
    }
    cd.ctr(&["container", "rm", id])?.ok()?;
    Ok(())
}

/// Wait until `what` holds (20 s).
fn until(what: &str, mut f: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f()? {
        if Instant::now() > deadline {
            bail!("never: {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// With `CRYO_LAYER_CACHE_MAX_SIZE` (1 byte: every layer is over it), each background fill
/// evicts the least recently used unused layers, never the one it filled nor one a container
/// uses: a second checkpoint's fill evicts the first's layer; a container restored from the
/// cached second layer keeps it through the next fill. A value that is not a size fails the
/// run of a restoring container naming the variable and the value; a container that restores
/// nothing runs.
fn fs_restore_cache_stays_under_its_size_limit(s: &Suite, rt: Runtime, id: &str) -> Result<()> {
    let tmp = tempfile::Builder::new()
        .prefix("cryo-fsrestore-")
        .tempdir_in("/tmp")?;
    let (one, two) = (format!("{id}-1"), format!("{id}-2"));
    let cd = limited_containerd(s, "1")?;
    let (ck1, layer1) = saved_rootfs(s, rt, &cd, tmp.path(), &one, "one")?;
    let (ck2, layer2) = saved_rootfs(s, rt, &cd, tmp.path(), &two, "two")?;
    let evicted = (|| -> Result<()> {
        let cat = |id: &str, file: &str| -> Result<String> {
            Ok(cd
                .ctr(&["task", "exec", "--exec-id", "cat", id, "cat", file])?
                .ok()?
                .stdout)
        };
        // The first restore fills the cache (over the limit, but a fill spares its own layer).
        run_restoring(&cd, rt, &one, &ck1)?.ok()?;
        ensure!(cat(&one, "/one")?.starts_with("one\none\n"));
        until("the first layer is cached", || Ok(layer1.is_dir()))?;
        remove(&cd, &one)?;
        // The second fill evicts the first layer: unused, least recently used.
        run_restoring(&cd, rt, &two, &ck2)?.ok()?;
        until("the second layer is cached and the first evicted", || {
            Ok(layer2.is_dir() && !layer1.exists())
        })?;
        remove(&cd, &two)?;
        // A container on the cached second layer keeps it through the first's next fill.
        run_restoring(&cd, rt, &two, &ck2)?.ok()?;
        run_restoring(&cd, rt, &one, &ck1)?.ok()?;
        let log = cd.dir.join("containerd.log");
        let kept = format!(
            "layer cache: kept {}: in use",
            layer2.file_name().unwrap_or_default().to_string_lossy()
        );
        until("the first layer's fill kept the second, in use", || {
            Ok(layer1.is_dir()
                && std::fs::read_to_string(&log)?
                    .lines()
                    .any(|l| l.contains(&kept)))
        })?;
        ensure!(layer2.is_dir(), "the layer a container uses was evicted");
        ensure!(cat(&two, "/two")?.starts_with("two\ntwo\n"));
        Ok(())
    })();
    let cleaned = remove_all(&cd, &[&one, &two]);
    drop(cd);
    evicted.and(cleaned)?;

    let cd = limited_containerd(s, "lots")?;
    let refused = (|| -> Result<()> {
        let out = run_restoring(&cd, rt, &one, &ck1)?;
        ensure!(
            out.code != 0
                && out.stderr.contains("CRYO_LAYER_CACHE_MAX_SIZE=\"lots\"")
                && out.stderr.contains("not a size"),
            "a restore under CRYO_LAYER_CACHE_MAX_SIZE=lots: exit {}, {}",
            out.code,
            out.stderr
        );
        cd.ctr(&[
            "run",
            "-d",
            "--runtime",
            rt.id(),
            BUSYBOX_IMAGE,
            &two,
            "sleep",
            "100000",
        ])?
        .ok()
        .context("a container that restores nothing")?;
        Ok(())
    })();
    let cleaned = remove_all(&cd, &[&one, &two]);
    refused.and(cleaned)
}

/// Whatever of containers `ids` is on `cd` goes (tasks killed first); the first failure.
fn remove_all(cd: &Containerd, ids: &[&str]) -> Result<()> {
    let mut result = Ok(());
    let listed = cd.ctr(&["container", "ls", "-q"])?.ok()?.stdout;
    for id in ids {
        if !listed.lines().any(|l| l == *id) {
            continue;
        }
        let tasks = cd.ctr(&["task", "ls", "-q"])?.ok()?.stdout;
        let gone = match tasks.lines().any(|l| l == *id) {
            true => remove(cd, id),
            false => cd.ctr(&["container", "rm", id])?.ok().map(|_| ()),
        };
        if result.is_ok() {
            result = gone;
        }
    }
    result
}
