//! Restoring sections of a filesystem checkpoint into directories: the orchestration. Each
//! target is checked first (absent or empty, none overlapping another), its missing parents
//! are created, each section is extracted ([`crate::extract`]) into a fresh work directory
//! beside its target with its checksum checked in the same pass, and only when every section
//! verified are the work directories moved into place; a failure removes the work directories
//! and the parents it created, so a corrupt or truncated checkpoint leaves the targets as they
//! were.

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use nix::sys::stat::futimens;
use nix::sys::time::TimeSpec;

use crate::destination::{check_disjoint, require_absent_or_empty, temp_sibling, CreatedParents};
use crate::error::{Error, Result};
use crate::extract::extract;
pub use crate::extract::RestoreOptions;
use crate::manifest::Manifest;
use crate::pool::parallel;
use crate::progress::Progress;
use crate::xattr;

/// Every section's target beneath `root`: `<root>/<container>/<path>` (see
/// [`crate::resource::ResourceId::relative_target`]). The manifest's validation guarantees
/// these stay beneath `root`.
pub fn targets_under(manifest: &Manifest, root: &Path) -> Vec<(usize, PathBuf)> {
    manifest
        .sections
        .iter()
        .enumerate()
        .map(|(i, s)| (i, root.join(s.resource.relative_target())))
        .collect()
}

/// Two layers of one stacked resource are overlay layers, not one directory: restoring both
/// (into one target) is refused by name; one section at a time may be restored.
fn refuse_merging_layers(
    checkpoint: &Path,
    manifest: &Manifest,
    targets: &[(usize, PathBuf)],
) -> Result<()> {
    for (n, (i, _)) in targets.iter().enumerate() {
        let s = &manifest.sections[*i];
        if let Some((j, _)) = targets[..n].iter().find(|(j, _)| {
            let o = &manifest.sections[*j];
            o.resource.container == s.resource.container && o.resource.path == s.resource.path
        }) {
            return Err(Error::Target {
                path: checkpoint.into(),
                reason: format!(
                    "sections {j} and {i} are layers {} and {} of one stacked resource ({}): \
                     they are overlay layers (restore them into a pod with \
                     dev.cryo.fs-restore.image-path), not one directory; restore one section \
                     at a time",
                    manifest.sections[*j].layer, s.layer, s.resource
                ),
            });
        }
    }
    Ok(())
}

/// Restore section `index` of the checkpoint in `checkpoint` into each target (which must not
/// exist or be empty; missing parents are created), sections in parallel.
pub fn restore(
    checkpoint: &Path,
    targets: &[(usize, PathBuf)],
    opts: &RestoreOptions,
    progress: &Progress,
) -> Result<Manifest> {
    let (manifest, data) = Manifest::open(checkpoint)?;
    for (i, _) in targets {
        manifest.section(checkpoint, *i)?;
    }
    refuse_merging_layers(checkpoint, &manifest, targets)?;
    for (_, t) in targets {
        require_absent_or_empty(t, "is not empty; restore into an empty or new directory")?;
    }
    check_disjoint(targets)?;
    progress.total.store(
        targets
            .iter()
            .map(|(i, _)| manifest.sections[*i].stored_bytes)
            .sum(),
        Ordering::Relaxed,
    );
    let mut parents = CreatedParents::default();
    let mut work = Vec::new();
    match stage(
        &data,
        &manifest,
        targets,
        opts,
        progress,
        &mut parents,
        &mut work,
    ) {
        Ok(()) => {
            for (n, ((_, target), w)) in targets.iter().zip(&work).enumerate() {
                if let Err(e) = place(w, target) {
                    // Those already placed stay restored; nothing else is left behind.
                    for w in &work[n..] {
                        let _ = std::fs::remove_dir_all(w);
                    }
                    return Err(e);
                }
            }
            Ok(manifest)
        }
        Err(e) => {
            for w in &work {
                let _ = std::fs::remove_dir_all(w);
            }
            parents.undo();
            Err(e)
        }
    }
}

/// Create the targets' parents and work directories (recorded as they are made, for the
/// caller to undo), then extract every section into its work directory.
fn stage(
    data: &File,
    manifest: &Manifest,
    targets: &[(usize, PathBuf)],
    opts: &RestoreOptions,
    progress: &Progress,
    parents: &mut CreatedParents,
    work: &mut Vec<PathBuf>,
) -> Result<()> {
    for (_, t) in targets {
        parents.create_for(t)?;
        work.push(temp_sibling(t, "restore")?);
    }
    let jobs: Vec<(usize, &PathBuf)> = targets.iter().map(|(i, _)| *i).zip(work.iter()).collect();
    parallel(&jobs, |_, (i, dir)| {
        extract(data, *i, manifest, dir, opts, progress)
    })?;
    Ok(())
}

/// Move a verified work directory into place: rename when possible, else (a mount point or
/// another filesystem) move its entries and its root's metadata into the empty target. A
/// target that is no longer empty (written to while the sections were extracted) is refused,
/// never merged into.
fn place(work: &Path, target: &Path) -> Result<()> {
    let err = |e: std::io::Error| Error::Target {
        path: target.into(),
        reason: format!("move the restored tree into place: {e}"),
    };
    let written = || Error::Target {
        path: target.into(),
        reason: "was written to during the restore; the restored tree is not moved into it".into(),
    };
    if target.exists() {
        match std::fs::remove_dir(target) {
            Ok(()) => {}
            Err(e) if e.raw_os_error() == Some(libc::ENOTEMPTY) => return Err(written()),
            Err(_) => {
                if std::fs::read_dir(target).map_err(err)?.next().is_some() {
                    return Err(written());
                }
                for entry in std::fs::read_dir(work).map_err(err)? {
                    let entry = entry.map_err(err)?;
                    std::fs::rename(entry.path(), target.join(entry.file_name())).map_err(err)?;
                }
                copy_root_metadata(work, target).map_err(err)?;
                return std::fs::remove_dir(work).map_err(err);
            }
        }
    }
    std::fs::rename(work, target).map_err(err)
}

fn copy_root_metadata(from: &Path, to: &Path) -> std::io::Result<()> {
    let md = std::fs::metadata(from)?;
    std::os::unix::fs::chown(to, Some(md.uid()), Some(md.gid()))?;
    std::fs::set_permissions(to, md.permissions())?;
    let dir = File::open(to)?;
    for (k, v) in xattr::xattrs(from).map_err(std::io::Error::other)? {
        xattr::set_fd(dir.as_fd(), &k, &v)?;
    }
    futimens(
        &dir,
        &TimeSpec::new(md.atime(), md.atime_nsec()),
        &TimeSpec::new(md.mtime(), md.mtime_nsec()),
    )?;
    Ok(())
}
