//! `cryo-checkpoint.json`: what cryo writes next to CRIU's images in a checkpoint directory
//! (format version, cryo and CRIU versions, container id, the spec's digest, the stdio and
//! resources that were external to the images, the dump's options, the overlay volumes whose
//! files it carries), and the checks a restore makes before it touches anything: present,
//! readable, a format major this cryo reads, CRIU's images there.
//!
//! Format rules: a reader refuses another major. A minor adds only what a reader of an older
//! minor either may ignore, or fails on by name rather than restore half of. 1.1 added
//! `volumes` and the external kind `overlay` (a 1.0 reader refuses a checkpoint with an overlay
//! volume, "unknown variant `overlay`", instead of restoring it without its files), and
//! `terminal` (a 1.0 reader refuses every terminal restore); 1.0 checkpoints read as having no
//! volumes and no terminal.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use super::volumes::Volume;
use crate::error::{Error, Result};

/// File name of the manifest inside the checkpoint directory (kept flat: containerd 2.x's CRI
/// copies the directory's entries one by one).
pub const MANIFEST_FILE: &str = "cryo-checkpoint.json";
/// Format version written; a restore refuses a newer major.
pub const FORMAT_MAJOR: u32 = 1;
pub const FORMAT_MINOR: u32 = 1;
/// The image every CRIU dump writes first.
const CRIU_INVENTORY: &str = "inventory.img";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Format {
    pub major: u32,
    pub minor: u32,
}

/// CRIU options the dump used; the restore must use the same.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DumpOptions {
    /// Established TCP connections were dumped (`--tcp-established`).
    pub tcp_established: bool,
    /// Unix sockets connected outside the container were dumped (`--ext-unix-sk`).
    pub ext_unix_sk: bool,
    /// File locks were dumped (`--file-locks`).
    pub file_locks: bool,
    /// The container's terminal was external (`--shell-job`).
    pub shell_job: bool,
}

/// One resource outside CRIU's images that the restore must supply anew.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum External {
    /// A bind mount of the spec, by its destination in the container.
    Bind { destination: String },
    /// The container's view of its cgroup in one hierarchy (a bind mount of a host cgroup
    /// directory), by destination and hierarchy name (`memory`, `cpu,cpuacct`, `unified`, or
    /// empty for a cgroup v2 host's single hierarchy).
    Cgroup {
        destination: String,
        hierarchy: String,
    },
    /// A namespace the container joined rather than created (`network`, `pid`), by the key it
    /// has in CRIU's images.
    Namespace { namespace: String, key: String },
    /// A private overlay volume (an overlay mount of the spec with an upper directory), by
    /// destination: its files are in the checkpoint's volume sections (see
    /// [`super::volumes`]), and the restore mounts the new spec's overlay there.
    Overlay { destination: String },
}

/// The manifest itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub format: Format,
    pub cryo_version: String,
    pub criu_version: String,
    pub container_id: String,
    /// `sha256:<hex>` of the spec the container was created from (as JSON).
    pub spec_digest: String,
    /// The container was paused when it was dumped.
    pub paused: bool,
    /// What fds 0, 1, 2 of PID 1 were at the dump (`pipe:[ino]`, a path, or empty); pipes are
    /// reconnected to the new stdio at restore.
    pub stdio: Vec<String>,
    pub options: DumpOptions,
    pub externals: Vec<External>,
    /// When the dump finished, seconds since the epoch.
    pub created_unix: u64,
    /// The overlay volumes whose upper directories the checkpoint carries (format 1.1).
    #[serde(default)]
    pub volumes: Vec<Volume>,
    /// PID 1 had a terminal (`process.terminal`): its pty is restored anew, its master handed
    /// to the embedder (format 1.1).
    #[serde(default)]
    pub terminal: bool,
}

impl Manifest {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(MANIFEST_FILE)
    }

    /// Write the manifest into `dir` (atomically).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = Self::path(dir);
        let tmp = dir.join(format!(".{MANIFEST_FILE}.tmp"));
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| invalid(&path, e))?;
        std::fs::write(&tmp, bytes)
            .and_then(|_| std::fs::rename(&tmp, &path))
            .map_err(|e| invalid(&path, format!("write: {e}")))
    }

    /// Read and check the manifest of the checkpoint in `dir`: present, a format this cryo
    /// reads, CRIU's images there.
    pub fn load(dir: &Path) -> Result<Manifest> {
        let path = Self::path(dir);
        let bytes = std::fs::read(&path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                invalid(
                    dir,
                    format!("no {MANIFEST_FILE}: not a checkpoint written by cryo"),
                )
            } else {
                invalid(&path, e)
            }
        })?;
        // The format first, so that a newer layout is named as such rather than as garbage.
        let value: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(&path, e))?;
        let format: Format = value
            .get("format")
            .cloned()
            .ok_or_else(|| invalid(&path, "no \"format\" field"))
            .and_then(|f| {
                serde_json::from_value(f).map_err(|e| invalid(&path, format!("format: {e}")))
            })?;
        if format.major != FORMAT_MAJOR {
            return Err(invalid(
                &path,
                format!(
                    "checkpoint format {}.{} is not one this cryo reads ({FORMAT_MAJOR}.x)",
                    format.major, format.minor
                ),
            ));
        }
        let manifest: Manifest = serde_json::from_value(value).map_err(|e| invalid(&path, e))?;
        for e in &manifest.externals {
            if let External::Overlay { destination } = e {
                if !manifest
                    .volumes
                    .iter()
                    .any(|v| v.destination == *destination)
                {
                    return Err(invalid(
                        &path,
                        format!(
                            "the overlay volume at {destination} is external to CRIU's images \
                             but no volume section carries its files"
                        ),
                    ));
                }
            }
        }
        if !dir.join(CRIU_INVENTORY).is_file() {
            return Err(invalid(
                dir,
                format!("no CRIU images ({CRIU_INVENTORY} is missing)"),
            ));
        }
        Ok(manifest)
    }
}

/// `sha256:<hex>` of the spec as JSON.
pub fn spec_digest(spec: &oci_spec::runtime::Spec) -> String {
    let bytes = serde_json::to_vec(spec).unwrap_or_default();
    let digest = Sha256::digest(&bytes);
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn invalid(path: &Path, reason: impl std::fmt::Display) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        Manifest {
            format: Format {
                major: FORMAT_MAJOR,
                minor: FORMAT_MINOR,
            },
            cryo_version: "0.1.0".into(),
            criu_version: "4.1.1".into(),
            container_id: "c1".into(),
            spec_digest: "sha256:00".into(),
            paused: false,
            stdio: vec!["pipe:[1]".into(), "pipe:[2]".into(), "pipe:[3]".into()],
            options: DumpOptions::default(),
            externals: vec![
                External::Bind {
                    destination: "/data".into(),
                },
                External::Namespace {
                    namespace: "network".into(),
                    key: "extRootNetNS".into(),
                },
            ],
            created_unix: 1,
            volumes: Vec::new(),
            terminal: false,
        }
    }

    #[test]
    fn round_trips_and_checks_the_images() {
        let dir = tempfile::tempdir().unwrap();
        sample().save(dir.path()).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("inventory.img"), "{err}");
        std::fs::write(dir.path().join(CRIU_INVENTORY), b"x").unwrap();
        assert_eq!(Manifest::load(dir.path()).unwrap(), sample());
    }

    #[test]
    fn a_format_1_0_manifest_reads_as_having_no_volumes() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CRIU_INVENTORY), b"x").unwrap();
        let mut value = serde_json::to_value(sample()).unwrap();
        value["format"]["minor"] = 0.into();
        value.as_object_mut().unwrap().remove("volumes");
        std::fs::write(Manifest::path(dir.path()), value.to_string()).unwrap();
        assert!(Manifest::load(dir.path()).unwrap().volumes.is_empty());
    }

    #[test]
    fn an_overlay_external_without_its_volume_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(CRIU_INVENTORY), b"x").unwrap();
        let mut m = sample();
        m.externals.push(External::Overlay {
            destination: "/ws".into(),
        });
        m.save(dir.path()).unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("/ws"), "{err}");
    }

    #[test]
    fn a_newer_major_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            Manifest::path(dir.path()),
            r#"{"format":{"major":2,"minor":0},"something":"new"}"#,
        )
        .unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains("format 2.0"), "{err}");
    }

    #[test]
    fn a_missing_or_corrupt_manifest_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(MANIFEST_FILE), "{err}");
        std::fs::write(Manifest::path(dir.path()), b"{not json").unwrap();
        let err = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(MANIFEST_FILE), "{err}");
    }
}
