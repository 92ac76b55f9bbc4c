//! Filesystem checkpoints of containers' directories: the filesystems they live on are synced,
//! then the directories are saved as one checkpoint in fsnap's format (sections named by
//! container, path and kind), with the sections of other checkpoints a restored directory
//! stands on copied beneath them as its lower layers (fsnap's stacked sections). Which
//! directories make a pod's checkpoint, and keeping the pod frozen meanwhile, is the
//! embedder's; the format is fsnap's.

use std::os::fd::AsRawFd;
use std::path::Path;

pub use fsnap::manifest::MANIFEST_FILE;
pub use fsnap::{Content, Input, ResourceId, ResourceKind};

use crate::error::{Error, Result};

/// Sync every directory's filesystem, then save `inputs` (directories, and sections of other
/// checkpoints copied verbatim, layers of one resource bottom first) as one checkpoint at
/// `out` (written under a temporary name and renamed into place: a failed save leaves no
/// checkpoint). `direct`: write with O_DIRECT. Blocking.
pub fn save(inputs: &[Input], out: &Path, direct: bool) -> Result<()> {
    for dir in inputs.iter().filter_map(Input::dir) {
        syncfs(dir)?;
    }
    fsnap::save_stacked(
        inputs,
        out,
        &fsnap::SaveOptions { direct },
        &fsnap::Progress::default(),
    )
    .map(drop)
    .map_err(|e| Error::Checkpoint {
        path: out.to_path_buf(),
        reason: e.to_string(),
    })
}

/// Flush the filesystem holding `dir`.
pub(crate) fn syncfs(dir: &Path) -> Result<()> {
    let f =
        std::fs::File::open(dir).map_err(|e| Error::io(format!("open {}", dir.display()), e))?;
    // SAFETY: syncfs on a descriptor we own.
    if unsafe { libc::syncfs(f.as_raw_fd()) } != 0 {
        return Err(Error::sys(
            format!("syncfs {}", dir.display()),
            nix::Error::last(),
        ));
    }
    Ok(())
}
