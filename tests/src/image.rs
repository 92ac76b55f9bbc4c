//! Images built offline: a busybox rootfs directory (with /etc/passwd, /etc/group, /tmp), and
//! OCI image tars written by hand (one uncompressed layer, config, manifest, index with the
//! image name) that `ctr image import` takes.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde_json::json;

use crate::cmd;

/// The busybox image every test runs (Cmd `sh`).
pub const BUSYBOX_IMAGE: &str = "docker.io/library/busybox-cryo:test";
/// The pod sandbox image for CRI: busybox sleeping forever.
pub const PAUSE_IMAGE: &str = "docker.io/library/pause-local:1";

/// Where busybox-static installs the binary.
const BUSYBOX: &str = "/bin/busybox";

/// Make a busybox rootfs in `dir` (created).
pub fn busybox_rootfs(dir: &Path) -> Result<()> {
    if !Path::new(BUSYBOX).is_file() {
        bail!("{BUSYBOX} is missing: install busybox-static (scripts/setup)");
    }
    for sub in ["bin", "etc", "tmp", "root", "home/app"] {
        std::fs::create_dir_all(dir.join(sub))?;
    }
    std::fs::copy(BUSYBOX, dir.join("bin/busybox"))?;
    sh(Command::new("chroot")
        .arg(dir)
        .args(["/bin/busybox", "--install", "-s", "/bin"]))?;
    std::fs::write(
        dir.join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n",
    )?;
    std::fs::write(
        dir.join("etc/group"),
        "root:x:0:\ntty:x:5:\napp:x:1000:\nnogroup:x:65534:\n",
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(dir.join("tmp"), std::fs::Permissions::from_mode(0o1777))?;
    Ok(())
}

/// Write an OCI image tar of `rootfs` named `name`, with `entrypoint` and `cmd`, to `out`.
pub fn oci_tar(
    rootfs: &Path,
    name: &str,
    entrypoint: &[&str],
    cmd: &[&str],
    out: &Path,
) -> Result<()> {
    let work = out.with_extension("d");
    let blobs = work.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let layer = work.join("layer.tar");
    sh(Command::new("tar")
        .args(["--numeric-owner", "--sort=name", "--mtime=@0", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer)
        .arg("."))?;
    let (layer_digest, layer_size) = store(&blobs, &std::fs::read(&layer)?)?;
    std::fs::remove_file(&layer)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {
            "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "Entrypoint": if entrypoint.is_empty() { serde_json::Value::Null } else { json!(entrypoint) },
            "Cmd": cmd,
            "WorkingDir": "/",
        },
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let (config_digest, config_size) = store(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
    });
    let (manifest_digest, manifest_size) = store(&blobs, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(work.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        work.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    sh(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"]))?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// containerd's (and CRI-O's) mark of a checkpoint image: the checkpointed container's name.
pub const CHECKPOINT_ANNOTATION: &str = "org.criu.checkpoint.container.name";

/// Write an OCI image tar named `name` whose one layer is the CheckpointContainer archive
/// `archive` as it is (what `buildah add` of the archive makes), marked with
/// [`CHECKPOINT_ANNOTATION`] = `container` in the manifest's annotations and the config's
/// labels, to `out`.
pub fn checkpoint_oci_tar(archive: &Path, container: &str, name: &str, out: &Path) -> Result<()> {
    let work = out.with_extension("d");
    let blobs = work.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    let (layer_digest, layer_size) = store(&blobs, &std::fs::read(archive)?)?;
    let config = json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Labels": {CHECKPOINT_ANNOTATION: container}},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    });
    let (config_digest, config_size) = store(&blobs, &serde_json::to_vec(&config)?)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": format!("sha256:{config_digest}"),
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": format!("sha256:{layer_digest}"),
            "size": layer_size,
        }],
        "annotations": {CHECKPOINT_ANNOTATION: container},
    });
    let (manifest_digest, manifest_size) = store(&blobs, &serde_json::to_vec(&manifest)?)?;
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{manifest_digest}"),
            "size": manifest_size,
            "annotations": {"io.containerd.image.name": name},
        }],
    });
    std::fs::write(work.join("index.json"), serde_json::to_vec(&index)?)?;
    std::fs::write(
        work.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )?;
    sh(Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(out)
        .args(["oci-layout", "index.json", "blobs"]))?;
    std::fs::remove_dir_all(&work)?;
    Ok(())
}

/// Build the busybox and pause image tars under `dir`; returns (rootfs, busybox tar, pause tar).
pub fn build_all(dir: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
    let rootfs = dir.join("busybox-rootfs");
    busybox_rootfs(&rootfs)?;
    let busybox = dir.join("busybox.tar");
    oci_tar(&rootfs, BUSYBOX_IMAGE, &[], &["sh"], &busybox)?;
    let pause = dir.join("pause.tar");
    oci_tar(
        &rootfs,
        PAUSE_IMAGE,
        &["/bin/sleep", "2147483647"],
        &[],
        &pause,
    )?;
    Ok((rootfs, busybox, pause))
}

/// Store `bytes` as a blob; returns (hex digest, size).
fn store(blobs: &Path, bytes: &[u8]) -> Result<(String, usize)> {
    let tmp = blobs.join("incoming");
    std::fs::write(&tmp, bytes)?;
    let out = cmd::run(
        Command::new("sha256sum").arg(&tmp),
        None,
        Duration::from_secs(60),
    )?
    .ok()?;
    let digest = out
        .stdout
        .split_whitespace()
        .next()
        .context("sha256sum printed nothing")?
        .to_string();
    std::fs::rename(&tmp, blobs.join(&digest))?;
    Ok((digest, bytes.len()))
}

fn sh(c: &mut Command) -> Result<()> {
    cmd::run(c, None, Duration::from_secs(120))?
        .ok()
        .map(|_| ())
}
