//! Where the trigger's checkpoints go: numbered directories `1`, `2`, ... under the pod's
//! destination, each claimed by mkdir before the save (so two pods sharing a destination never
//! write one directory), and a `latest` symlink to the newest, replaced atomically (a new link
//! under a temporary name, renamed over the old one).

use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

/// The link to the newest checkpoint.
pub const LATEST: &str = "latest";

/// Claim the next numbered directory under `dest` (created, mode 0700, with `dest` if missing).
pub fn claim_next(dest: &Path) -> std::io::Result<PathBuf> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dest)?;
    let mut next = highest(dest)? + 1;
    for _ in 0..1000 {
        let dir = dest.join(next.to_string());
        match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => next += 1,
            Err(e) => return Err(e),
        }
    }
    Err(std::io::Error::other(format!(
        "{}: no free checkpoint number",
        dest.display()
    )))
}

/// The highest number among `dest`'s entries (0 if none).
fn highest(dest: &Path) -> std::io::Result<u64> {
    let mut max = 0;
    for entry in std::fs::read_dir(dest)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with('0') {
            continue;
        }
        if let Ok(n) = name.parse::<u64>() {
            max = max.max(n);
        }
    }
    Ok(max)
}

/// Point `<dest>/latest` at `dir` (a child of `dest`), atomically.
pub fn link_latest(dest: &Path, dir: &Path) -> std::io::Result<()> {
    let name = dir
        .file_name()
        .ok_or_else(|| std::io::Error::other(format!("{}: no name", dir.display())))?;
    let tmp = dest.join(format!(".{LATEST}.{}.tmp", std::process::id()));
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(name, &tmp)?;
    std::fs::rename(&tmp, dest.join(LATEST)).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// A claimed directory no checkpoint was written to goes again (only if empty).
pub fn release(dir: &Path) {
    let _ = std::fs::remove_dir(dir);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_follow_the_highest_and_latest_moves() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("ck");
        let one = claim_next(&dest).unwrap();
        assert_eq!(one, dest.join("1"));
        link_latest(&dest, &one).unwrap();
        std::fs::create_dir(dest.join("7")).unwrap();
        std::fs::create_dir(dest.join("0099")).unwrap();
        std::fs::write(dest.join("notes"), b"x").unwrap();
        let eight = claim_next(&dest).unwrap();
        assert_eq!(eight, dest.join("8"));
        link_latest(&dest, &eight).unwrap();
        assert_eq!(
            std::fs::read_link(dest.join(LATEST)).unwrap(),
            PathBuf::from("8")
        );
        release(&eight);
        assert!(!eight.exists());
        let left: Vec<_> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .filter(|n| n.ends_with(".tmp"))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
