//! The host directory beneath which a pod may name checkpoints in its annotations: the
//! trigger's destination (`dev.cryo.fscheckpoint.path`), which the shim writes as root, and a
//! restore's source (`dev.cryo.fs-restore.image-path`), which it reads as root. Without it a
//! pod author could have the shim write under `/etc` or restore another tenant's checkpoint.
//!
//! The node's admin chooses the root with `CRYO_CHECKPOINT_ROOT` in containerd's environment
//! (shims inherit it); the default is [`DEFAULT_ROOT`]. A path is accepted when it lies
//! beneath the root both as written and once the symlinks of its existing part are resolved
//! (a link beneath the root pointing out of it is refused). The `cryo` CLI, root-only, is not
//! confined.

use std::path::{Path, PathBuf};

/// The environment variable naming the root.
pub const ROOT_ENV: &str = "CRYO_CHECKPOINT_ROOT";
/// The root when the environment names none.
pub const DEFAULT_ROOT: &str = "/var/lib/cryo/checkpoints";

/// The root checkpoint paths given by pods must lie beneath.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CheckpointRoot(PathBuf);

impl CheckpointRoot {
    /// The root `CRYO_CHECKPOINT_ROOT` names (an absolute path), else [`DEFAULT_ROOT`].
    pub fn from_env() -> CheckpointRoot {
        match std::env::var_os(ROOT_ENV).map(PathBuf::from) {
            Some(p) if p.is_absolute() => CheckpointRoot(p.components().collect()),
            Some(p) => {
                log::warn!(
                    "{ROOT_ENV}={}: not an absolute path; using {DEFAULT_ROOT}",
                    p.display()
                );
                CheckpointRoot(DEFAULT_ROOT.into())
            }
            None => CheckpointRoot(DEFAULT_ROOT.into()),
        }
    }

    /// A root at `path` (absolute).
    #[cfg(test)]
    pub fn at(path: &Path) -> CheckpointRoot {
        CheckpointRoot(path.components().collect())
    }

    /// Whether the absolute, clean `path` lies strictly beneath the root, as written and with
    /// the symlinks of its existing part resolved. The refusal says why, naming the root.
    pub fn check(&self, path: &Path) -> Result<(), String> {
        let outside = || {
            format!(
                "not beneath the node's checkpoint root {} ({ROOT_ENV})",
                self.0.display()
            )
        };
        if !beneath(path, &self.0) {
            return Err(outside());
        }
        let root = std::fs::canonicalize(&self.0).unwrap_or_else(|_| self.0.clone());
        let (existing, rest) = longest_existing(path);
        let resolved = std::fs::canonicalize(&existing)
            .map_err(|e| format!("{}: {e}", existing.display()))?
            .join(rest);
        if !beneath(&resolved, &root) {
            return Err(format!(
                "{} (resolves to {})",
                outside(),
                resolved.display()
            ));
        }
        Ok(())
    }
}

/// `path` is below `root` (not `root` itself); both absolute and without `.`/`..`.
fn beneath(path: &Path, root: &Path) -> bool {
    path != root && path.starts_with(root)
}

/// The longest prefix of `path` that exists (as seen through symlinks), and the rest.
fn longest_existing(path: &Path) -> (PathBuf, PathBuf) {
    let mut existing = path.to_path_buf();
    let mut rest = Vec::new();
    while std::fs::metadata(&existing).is_err() {
        match (
            existing.file_name().map(|n| n.to_owned()),
            existing.parent(),
        ) {
            (Some(name), Some(parent)) => {
                rest.push(name);
                existing = parent.to_path_buf();
            }
            _ => break,
        }
    }
    (existing, rest.iter().rev().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_beneath_the_root_only() {
        let t = tempfile::tempdir().unwrap();
        let root = CheckpointRoot::at(t.path());
        assert!(root.check(&t.path().join("a/b")).is_ok());
        std::fs::create_dir(t.path().join("a")).unwrap();
        assert!(root.check(&t.path().join("a")).is_ok());
        assert!(root.check(&t.path().join("a/new/deeper")).is_ok());
        for bad in [t.path().to_path_buf(), PathBuf::from("/etc/cryo")] {
            let e = root.check(&bad).unwrap_err();
            assert!(e.contains(&t.path().display().to_string()), "{e}");
            assert!(e.contains(ROOT_ENV), "{e}");
        }
    }

    #[test]
    fn a_symlink_out_of_the_root_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let out = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink(out.path(), t.path().join("link")).unwrap();
        let root = CheckpointRoot::at(t.path());
        let e = root.check(&t.path().join("link/ck")).unwrap_err();
        assert!(e.contains("resolves to"), "{e}");
        assert!(e.contains(&out.path().display().to_string()), "{e}");
    }
}
