//! Where a save or restore may write. A destination is absent or an empty directory; the work
//! happens in a fresh hidden directory beside it and is renamed into place only when done.
//! Restore targets may not overlap one another; their missing parents are created, and removed
//! again when the restore fails.

use std::fs::File;
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};

/// The one rule for where a save or restore may write: nothing there yet, or an empty
/// directory. `why` completes the refusal.
pub(crate) fn require_absent_or_empty(path: &Path, why: &str) -> Result<()> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::Target {
                path: path.into(),
                reason: why.into(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Target {
            path: path.into(),
            reason: e.to_string(),
        }),
    }
}

/// The directory holding `path` (`.` for a bare name).
pub(crate) fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh directory next to `path` for work in progress (`what`: save or restore).
pub(crate) fn temp_sibling(path: &Path, what: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Target {
            path: path.into(),
            reason: "has no file name".into(),
        })?
        .to_string_lossy();
    let parent = parent_dir(path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(
        ".{name}.fsnap-{what}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir(&tmp).map_err(|e| Error::Target {
        path: tmp.clone(),
        reason: format!("create work directory: {e}"),
    })?;
    Ok(tmp)
}

pub(crate) fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}

/// Restore targets must be distinct and none inside another (a section restored inside
/// another's target would be moved, or overwritten, with it). Compared as resolved paths:
/// symlinks and `..` of the part that exists resolved, the rest taken as written.
pub(crate) fn check_disjoint(targets: &[(usize, PathBuf)]) -> Result<()> {
    let mut resolved: Vec<(PathBuf, usize)> = targets
        .iter()
        .enumerate()
        .map(|(n, (_, t))| Ok((resolve(t)?, n)))
        .collect::<Result<_>>()?;
    // Ordered by components, a directory comes right before everything inside it: comparing
    // neighbours finds every overlap (a manifest may hold tens of thousands of sections).
    resolved.sort();
    for pair in resolved.windows(2) {
        let ((outer, a), (inner, b)) = (&pair[0], &pair[1]);
        if inner.starts_with(outer) {
            let (first, second) = ((*a).min(*b), (*a).max(*b));
            return Err(Error::Target {
                path: targets[second].1.clone(),
                reason: format!(
                    "the target of section {} overlaps the target of section {} ({}); \
                     restore them one at a time with --target",
                    targets[second].0,
                    targets[first].0,
                    targets[first].1.display()
                ),
            });
        }
    }
    Ok(())
}

/// A save's destination may not lie inside (or be) a directory being saved: the save would
/// walk its own work directory.
pub(crate) fn check_outside(out: &Path, sources: &[&Path]) -> Result<()> {
    let resolved = resolve(out)?;
    for dir in sources {
        if resolved.starts_with(resolve(dir)?) {
            return Err(Error::Target {
                path: out.into(),
                reason: format!(
                    "is inside {}, a directory being saved; save elsewhere",
                    dir.display()
                ),
            });
        }
    }
    Ok(())
}

/// `path` made absolute, its existing part canonicalized, `..` applied.
fn resolve(path: &Path) -> Result<PathBuf> {
    let abs = if path.is_absolute() {
        path.to_path_buf()
    } else {
        std::env::current_dir()
            .map_err(|e| Error::io("current directory", e))?
            .join(path)
    };
    // Usually: the longest existing prefix canonicalized once, the missing rest appended.
    let existing = abs
        .ancestors()
        .find(|p| std::fs::symlink_metadata(p).is_ok())
        .unwrap_or(Path::new("/"));
    let rest = abs.strip_prefix(existing).unwrap_or(Path::new(""));
    if !rest.components().any(|c| c == Component::ParentDir) {
        if let Ok(mut real) = std::fs::canonicalize(existing) {
            real.push(rest);
            return Ok(real);
        }
    }
    // A `..` after a missing component may lead back into existing directories: resolve
    // component by component.
    let mut out = PathBuf::from("/");
    for c in abs.components() {
        match c {
            Component::Normal(n) => {
                out.push(n);
                if let Ok(real) = std::fs::canonicalize(&out) {
                    out = real;
                }
            }
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The parent directories a restore created for its targets, removed again (deepest first)
/// when it fails.
#[derive(Default)]
pub(crate) struct CreatedParents(Vec<PathBuf>);

impl CreatedParents {
    /// Create the missing parents of `target`, outermost first.
    pub(crate) fn create_for(&mut self, target: &Path) -> Result<()> {
        let missing: Vec<&Path> = target
            .ancestors()
            .skip(1)
            .filter(|p| !p.as_os_str().is_empty())
            .take_while(|p| std::fs::symlink_metadata(p).is_err())
            .collect();
        for dir in missing.into_iter().rev() {
            match std::fs::create_dir(dir) {
                Ok(()) => self.0.push(dir.to_path_buf()),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => {
                    return Err(Error::Target {
                        path: target.into(),
                        reason: format!("create parent directory {}: {e}", dir.display()),
                    })
                }
            }
        }
        Ok(())
    }

    /// Remove what was created (only directories still empty go).
    pub(crate) fn undo(self) {
        for dir in self.0.iter().rev() {
            let _ = std::fs::remove_dir(dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn overlapping_targets_are_found_through_dots_and_symlinks() {
        let t = tempfile::tempdir().unwrap();
        let p = |s: &str| t.path().join(s);
        std::fs::create_dir(p("real")).unwrap();
        std::os::unix::fs::symlink(p("real"), p("link")).unwrap();
        let overlapping = [
            ("real", "real/a"),
            ("x", "x/../x"),
            ("link/a", "real/a/b"),
            ("real", "link"),
        ];
        for (a, b) in overlapping {
            let targets = [(0, p(a)), (1, p(b))];
            let e = check_disjoint(&targets).expect_err(&format!("{a} and {b}"));
            assert!(e.to_string().contains("section 1 overlaps"), "{e}");
        }
        check_disjoint(&[(0, p("real/a")), (1, p("real/ab")), (2, p("x"))]).unwrap();
        // Many: found among them all, quickly.
        let mut many: Vec<(usize, PathBuf)> =
            (0..50_000).map(|i| (i, p(&format!("t/{i}")))).collect();
        check_disjoint(&many).unwrap();
        many.push((50_000, p("t/49999/inside")));
        let e = check_disjoint(&many).unwrap_err().to_string();
        assert!(
            e.contains("section 50000 overlaps the target of section 49999"),
            "{e}"
        );
    }

    #[test]
    fn created_parents_are_removed_on_undo_and_existing_ones_stay() {
        let t = tempfile::tempdir().unwrap();
        let mut created = CreatedParents::default();
        created.create_for(&t.path().join("a/b/c/target")).unwrap();
        assert!(t.path().join("a/b/c").is_dir());
        assert!(!t.path().join("a/b/c/target").exists());
        created.undo();
        assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
    }
}
