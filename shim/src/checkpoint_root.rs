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
//!
//! Beneath the root, each directory a pod's trigger writes to belongs to the pod's tenant, its
//! Kubernetes namespace ([`Tenant`]): the first round claims it with an [`OWNER_FILE`]; a pod
//! of another namespace may neither write there (it would re-point `latest` at checkpoints of
//! its making, which the owner's next restore would bring into its pods) nor restore from it
//! (it would read the owner's files). Pods not made through CRI (no namespace: the node's
//! admin, through `ctr`) claim nothing, may restore from anywhere beneath the root, and may
//! not write to a claimed directory.

use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use oci_spec::runtime::Spec;

use crate::annotations;

/// The file in a claimed directory naming its tenant.
pub const OWNER_FILE: &str = ".cryo-owner";
/// Longest owner file read.
const MAX_OWNER: u64 = 4096;

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

/// Whose checkpoints a pod makes and may read: its Kubernetes namespace, `None` for a pod not
/// made through CRI.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tenant(Option<String>);

impl Tenant {
    /// The tenant of the pod `spec` belongs to (CRI's sandbox-namespace annotation).
    pub fn of(spec: &Spec) -> Tenant {
        Tenant(annotations::get(spec, annotations::SANDBOX_NAMESPACE).map(str::to_string))
    }

    #[cfg(test)]
    pub fn namespace(ns: &str) -> Tenant {
        Tenant(Some(ns.to_string()))
    }

    /// The owner file's text for this tenant.
    pub(crate) fn record(&self) -> Option<String> {
        self.0
            .as_ref()
            .map(|ns| format!("kubernetes namespace {ns}\n"))
    }

    /// Claim `dest` for this tenant (it and its owner file created when missing, mode 0700 and
    /// 0600) once [`Tenant::may_write`] allows it. The refusal names the owner.
    pub fn claim(&self, dest: &Path) -> Result<(), String> {
        self.may_write(dest)?;
        let Some(record) = self.record() else {
            return Ok(());
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dest)
            .map_err(|e| format!("{}: {e}", dest.display()))?;
        let file = dest.join(OWNER_FILE);
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&file)
        {
            Ok(mut f) => f
                .write_all(record.as_bytes())
                .map_err(|e| format!("{}: {e}", file.display())),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => self.may_write(dest),
            Err(e) => Err(format!("{}: {e}", file.display())),
        }
    }

    /// Whether this tenant may write checkpoints into `dest`: not a symlink, and neither it
    /// nor a directory above it (symlinks resolved) claimed by another tenant.
    pub fn may_write(&self, dest: &Path) -> Result<(), String> {
        if std::fs::symlink_metadata(dest).is_ok_and(|m| m.file_type().is_symlink()) {
            return Err(format!("{} is a symlink", dest.display()));
        }
        self.owned_by_others(dest, self.record())
    }

    /// Whether this tenant may restore the checkpoint directory `dir`: neither it nor a
    /// directory above it (symlinks resolved) claimed by another tenant. Pods not made through
    /// CRI may restore any.
    pub fn may_read(&self, dir: &Path) -> Result<(), String> {
        match self.record() {
            None => Ok(()),
            mine => self.owned_by_others(dir, mine),
        }
    }

    /// Refuse when `path` or a directory above it, symlinks resolved, holds an owner file
    /// other than `mine`.
    fn owned_by_others(&self, path: &Path, mine: Option<String>) -> Result<(), String> {
        let (existing, _) = longest_existing(path);
        let resolved =
            std::fs::canonicalize(&existing).map_err(|e| format!("{}: {e}", existing.display()))?;
        for dir in resolved.ancestors() {
            if let Some(owner) = owner(dir)? {
                if Some(&owner) != mine.as_ref() {
                    return Err(refusal(dir, &owner, self));
                }
            }
        }
        Ok(())
    }
}

/// The owner file's text in `dir`, if it has one (it must be a regular file).
fn owner(dir: &Path) -> Result<Option<String>, String> {
    use std::io::Read;
    let file = dir.join(OWNER_FILE);
    let f = match std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&file)
    {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("{}: {e}", file.display())),
    };
    let regular = f.metadata().is_ok_and(|m| m.is_file());
    let mut text = String::new();
    if !regular || f.take(MAX_OWNER).read_to_string(&mut text).is_err() {
        return Err(format!("{}: not a readable owner file", file.display()));
    }
    Ok(Some(text))
}

fn refusal(dir: &Path, owner: &str, tenant: &Tenant) -> String {
    let who = match &tenant.0 {
        Some(ns) => format!("pods of kubernetes namespace {ns}"),
        None => "pods not made through CRI".to_string(),
    };
    format!(
        "{} belongs to {} ({OWNER_FILE}); {who} may not use it",
        dir.display(),
        owner.trim()
    )
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
    fn a_claimed_directory_is_its_tenant_s_alone() {
        let t = tempfile::tempdir().unwrap();
        let dest = t.path().join("a/ck");
        let (a, b, admin) = (Tenant::namespace("a"), Tenant::namespace("b"), Tenant(None));
        assert!(a.may_write(&dest).is_ok());
        a.claim(&dest).unwrap();
        a.claim(&dest).unwrap();
        assert!(a.may_read(&dest.join("1")).is_ok());
        assert!(admin.may_read(&dest.join("1")).is_ok());
        let e = b.claim(&dest).unwrap_err();
        assert!(
            e.contains("kubernetes namespace a") && e.contains(" b "),
            "{e}"
        );
        assert!(b.may_read(&dest.join("1")).is_err());
        assert!(b.may_read(&dest).is_err());
        assert!(admin.claim(&dest).is_err());
        // Unclaimed: the admin's pods write without claiming.
        let free = t.path().join("free");
        admin.claim(&free).unwrap();
        assert!(!free.join(OWNER_FILE).exists());
        // Beneath a claimed directory, or through a symlink into one: the owner's alone.
        let inner = dest.join("1");
        std::fs::create_dir(&inner).unwrap();
        assert!(b.claim(&inner).is_err());
        assert!(!inner.join(OWNER_FILE).exists());
        std::os::unix::fs::symlink(&inner, t.path().join("via")).unwrap();
        let e = b.claim(&t.path().join("via")).unwrap_err();
        assert!(e.contains("symlink"), "{e}");
        assert!(b.may_read(&t.path().join("via")).is_err());
        assert!(a.claim(&inner).is_ok());
        // An owner file that is a symlink is refused, not followed.
        let odd = t.path().join("odd");
        std::fs::create_dir(&odd).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", odd.join(OWNER_FILE)).unwrap();
        assert!(a.may_write(&odd).is_err());
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
