//! Where the trigger's checkpoints go: numbered directories `1`, `2`, ... under the pod's
//! destination, each claimed by mkdir before the save (so two pods sharing a destination never
//! write one directory), and a `latest` symlink to the newest, replaced atomically (a new link
//! under a temporary name, renamed over the old one).
//!
//! Retention: once a round's checkpoint is saved, it gets a [`MARK`] file (what makes it a
//! checkpoint the trigger made) naming the pod's tenant, `latest` points at it, and [`prune`]
//! removes the trigger's checkpoints of that tenant beyond the newest `keep` (the pod's
//! `.keep`), oldest first — never the one `latest` names, never an entry without the mark,
//! with another tenant's mark (a tenant that claims a destination the admin's `ctr` pods
//! wrote to prunes none of theirs), or not named as [`claim_next`] names (a destination may
//! be shared by pods of one tenant, whose checkpoints count together, or hold the admin's
//! files: `cryo fscheckpoint` into it makes no mark). These three steps run
//! under an exclusive `flock` of the destination directory ([`lock`]), so that a pod sharing
//! the destination never prunes a checkpoint between its mark and its `latest`. A checkpoint
//! goes by a rename to a hidden name (a restore resolving it sees all of it or nothing), then
//! a recursive removal; a failure is the caller's to log, and the next prune removes the
//! hidden directory again. A checkpoint a pod restores from is leased by that pod (a shared
//! `flock` of its directory from RunPodSandbox until the pod ends, `crate::fs_restore`,
//! [`cryo_sandbox::lease`]): a prune skips it (it cannot lock it exclusively), and a later
//! round's prune removes it once the pod ended. (A restored pod whose lazy layer serves a
//! removed checkpoint would keep working anyway: it holds the data file open.)

use std::fs::File;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use cryo_sandbox::lease::Lease;

/// The link to the newest checkpoint.
pub const LATEST: &str = "latest";
/// The file in a numbered directory that says the trigger made it (and may prune it).
pub const MARK: &str = ".cryo-trigger";
/// The mark's text for a pod not made through CRI (no tenant; a tenant's is its owner record).
pub const NO_TENANT: &str = "no tenant (a pod not made through CRI)\n";
/// Longest mark read.
const MAX_MARK: u64 = 4096;
/// The prefix of a checkpoint's hidden name while it is removed.
const PRUNING: &str = ".cryo-pruning-";

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
        if let Some(n) = number(&entry?.file_name()) {
            max = max.max(n);
        }
    }
    Ok(max)
}

/// The number an entry named as [`claim_next`] names them stands for (`1`, `2`, ...; not
/// `0`, `01`, `+1`).
fn number(name: &std::ffi::OsStr) -> Option<u64> {
    let name = name.to_str()?;
    if name.starts_with('0') || !name.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    name.parse().ok()
}

/// An exclusive `flock` of the destination directory, held until the file is dropped.
pub fn lock(dest: &Path) -> std::io::Result<File> {
    let dir = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(dest)?;
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(dir.as_raw_fd(), libc::LOCK_EX) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(dir)
}

/// Mark `dir`, a checkpoint just saved, as the trigger's (`whose`: the tenant's text).
pub fn mark(dir: &Path, whose: &str) -> std::io::Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(dir.join(MARK))?;
    f.write_all(whose.as_bytes())
}

/// A checkpoint the trigger made that [`prune`] removed, skipped or failed to remove.
#[derive(Debug)]
pub struct Pruned {
    pub dir: PathBuf,
    pub outcome: Outcome,
}

/// What [`prune`] did with one checkpoint.
#[derive(Debug)]
pub enum Outcome {
    Removed,
    /// A pod holds a lease on it (it restores from it): left for a later round's prune.
    InUse,
    Failed(std::io::Error),
}

/// Remove the trigger's checkpoints in `dest` marked `whose` beyond the newest `keep`, oldest
/// first, never the one `latest` names nor one a pod holds a lease on (it restores from it:
/// [`cryo_sandbox::lease`]; it goes at a later round's prune once the pod ended); first, what
/// an earlier prune failed to remove (hidden `.cryo-pruning-N` directories) is removed again.
/// Call it holding [`lock`], after `latest` moved.
pub fn prune(dest: &Path, keep: u32, whose: &str) -> std::io::Result<Vec<Pruned>> {
    let mut out = retry_leftovers(dest)?;
    let latest = std::fs::read_link(dest.join(LATEST))
        .ok()
        .and_then(|target| target.file_name().and_then(number));
    let made = trigger_made(dest, whose)?;
    out.extend(beyond(&made, keep, latest).into_iter().map(|n| {
        let dir = dest.join(n.to_string());
        let outcome = match Lease::exclusive(&dir) {
            Ok(None) => Outcome::InUse,
            Ok(Some(_removing)) => {
                // Renamed and removed holding the exclusive lease: a pod about to lease it
                // waits, then finds it gone and resolves `latest` again.
                let hidden = dest.join(format!("{PRUNING}{n}"));
                match std::fs::rename(&dir, &hidden).and_then(|()| remove(&hidden)) {
                    Ok(()) => Outcome::Removed,
                    Err(e) => Outcome::Failed(e),
                }
            }
            Err(e) => Outcome::Failed(std::io::Error::new(
                e.kind(),
                format!("lock {}: {e}", dir.display()),
            )),
        };
        Pruned { dir, outcome }
    }));
    Ok(out)
}

/// Remove again the hidden directories of checkpoints an earlier prune renamed but failed to
/// remove (`.cryo-pruning-N`, directories, not links).
fn retry_leftovers(dest: &Path) -> std::io::Result<Vec<Pruned>> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dest)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(n) = name.to_str().and_then(|n| n.strip_prefix(PRUNING)) else {
            continue;
        };
        if number(std::ffi::OsStr::new(n)).is_none() || !entry.file_type().is_ok_and(|t| t.is_dir())
        {
            continue;
        }
        let dir = entry.path();
        let outcome = match remove(&dir) {
            Ok(()) => Outcome::Removed,
            Err(e) => Outcome::Failed(e),
        };
        out.push(Pruned { dir, outcome });
    }
    Ok(out)
}

/// Remove the directory `hidden`, an error naming it.
fn remove(hidden: &Path) -> std::io::Result<()> {
    std::fs::remove_dir_all(hidden)
        .map_err(|e| std::io::Error::new(e.kind(), format!("remove {}: {e}", hidden.display())))
}

/// The numbers of the checkpoints in `dest` the trigger made for `whose`: entries named as
/// [`claim_next`] names them that are directories (not links) holding a [`MARK`] that is a
/// regular file (not a link, never waited on) reading `whose`.
fn trigger_made(dest: &Path, whose: &str) -> std::io::Result<Vec<u64>> {
    let mut made = Vec::new();
    for entry in std::fs::read_dir(dest)? {
        let entry = entry?;
        let Some(n) = number(&entry.file_name()) else {
            continue;
        };
        if !entry.file_type().is_ok_and(|t| t.is_dir()) {
            continue;
        }
        if marked(&entry.path(), whose) {
            made.push(n);
        }
    }
    Ok(made)
}

/// Whether `dir` holds a [`MARK`] reading `whose`.
fn marked(dir: &Path, whose: &str) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(dir.join(MARK))
    else {
        return false;
    };
    if !f.metadata().is_ok_and(|m| m.is_file()) {
        return false;
    }
    let mut text = String::new();
    f.take(MAX_MARK).read_to_string(&mut text).is_ok() && text == whose
}

/// The rule: of the checkpoints numbered `made`, those beyond the newest `keep`, oldest
/// first, without `latest`'s.
fn beyond(made: &[u64], keep: u32, latest: Option<u64>) -> Vec<u64> {
    let mut sorted = made.to_vec();
    sorted.sort_unstable_by(|a, b| b.cmp(a));
    sorted.dedup();
    let mut out: Vec<u64> = sorted
        .into_iter()
        .skip(keep as usize)
        .filter(|n| Some(*n) != latest)
        .collect();
    out.reverse();
    out
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

    #[test]
    fn beyond_the_newest_keep_oldest_first_never_latest() {
        assert_eq!(beyond(&[1, 2, 3, 4], 2, Some(4)), vec![1, 2]);
        assert_eq!(beyond(&[4, 1, 3, 2], 2, None), vec![1, 2]);
        assert_eq!(beyond(&[1, 2], 2, Some(2)), Vec::<u64>::new());
        assert_eq!(beyond(&[], 1, None), Vec::<u64>::new());
        // `latest` on an older one (another pod of the destination linked it last) stays.
        assert_eq!(beyond(&[1, 2, 3, 4, 5], 1, Some(3)), vec![1, 2, 4]);
        assert_eq!(beyond(&[7, 30, 100, 9], 3, Some(100)), vec![7]);
    }

    /// `dest/<name>` as the trigger leaves a round: a checkpoint's files and the mark.
    fn round(dest: &Path, name: &str) {
        let dir = dest.join(name);
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("fscheckpoint.json"), b"{}").unwrap();
        std::fs::create_dir(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/data"), b"x").unwrap();
        mark(&dir, "kubernetes namespace a\n").unwrap();
    }

    fn names(dest: &Path) -> Vec<String> {
        let mut n: Vec<String> = std::fs::read_dir(dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().into_string().unwrap())
            .collect();
        n.sort();
        n
    }

    #[test]
    fn prune_removes_only_marked_numbered_directories() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("ck");
        std::fs::create_dir(&dest).unwrap();
        for n in ["1", "2", "3", "5", "6"] {
            round(&dest, n);
        }
        // What the trigger did not make, or does not name as it names its rounds.
        std::fs::create_dir(dest.join("4")).unwrap(); // the admin's (no mark)
        std::fs::write(dest.join("4/fscheckpoint.json"), b"{}").unwrap();
        round(&dest, "04");
        round(&dest, "notes");
        std::fs::write(dest.join("7"), b"a file").unwrap();
        std::os::unix::fs::symlink(dest.join("1"), dest.join("8")).unwrap();
        std::fs::create_dir(dest.join("9")).unwrap(); // a round being saved (no mark yet)
        std::fs::create_dir(dest.join("10")).unwrap(); // a mark that is not a file
        std::fs::create_dir(dest.join("10").join(MARK)).unwrap();
        std::fs::create_dir(dest.join("11")).unwrap(); // a mark that is a link
        std::os::unix::fs::symlink(dest.join("1").join(MARK), dest.join("11").join(MARK)).unwrap();
        std::fs::write(dest.join(".cryo-owner"), b"kubernetes namespace a\n").unwrap();
        // Another tenant's round (it wrote here before `a` claimed the destination).
        std::fs::create_dir(dest.join("3000")).unwrap();
        mark(&dest.join("3000"), NO_TENANT).unwrap();
        // `latest` on 2 (another pod sharing the destination linked it last).
        link_latest(&dest, &dest.join("2")).unwrap();
        let pruned = prune(&dest, 2, "kubernetes namespace a\n").unwrap();
        let gone: Vec<PathBuf> = pruned.iter().map(|p| p.dir.clone()).collect();
        assert_eq!(gone, vec![dest.join("1"), dest.join("3")]);
        assert!(
            pruned.iter().all(|p| matches!(p.outcome, Outcome::Removed)),
            "{pruned:?}"
        );
        assert_eq!(
            names(&dest),
            vec![
                ".cryo-owner",
                "04",
                "10",
                "11",
                "2",
                "3000",
                "4",
                "5",
                "6",
                "7",
                "8",
                "9",
                "latest",
                "notes"
            ]
        );
        // Again: nothing more goes.
        assert!(prune(&dest, 2, "kubernetes namespace a\n")
            .unwrap()
            .is_empty());
        // keep=1 with latest on the newest.
        link_latest(&dest, &dest.join("6")).unwrap();
        let gone: Vec<PathBuf> = prune(&dest, 1, "kubernetes namespace a\n")
            .unwrap()
            .into_iter()
            .map(|p| p.dir)
            .collect();
        assert_eq!(gone, vec![dest.join("2"), dest.join("5")]);
        assert!(dest.join("6").join("sub/data").exists());
        assert!(dest.join("3000").join(MARK).exists());
        // The other tenant's rule: only its own go (none beyond its newest one).
        assert!(prune(&dest, 1, NO_TENANT).unwrap().is_empty());
    }

    #[test]
    fn a_checkpoint_a_pod_leases_is_kept_until_a_later_prune() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("ck");
        std::fs::create_dir(&dest).unwrap();
        for n in ["1", "2", "3", "4"] {
            round(&dest, n);
        }
        link_latest(&dest, &dest.join("4")).unwrap();
        // A pod restores from 1 (it resolved `latest` when it was 1).
        let lease = Lease::shared(&dest.join("1"), false).unwrap().unwrap();
        let pruned = prune(&dest, 1, "kubernetes namespace a\n").unwrap();
        let what: Vec<(PathBuf, bool)> = pruned
            .iter()
            .map(|p| (p.dir.clone(), matches!(p.outcome, Outcome::InUse)))
            .collect();
        assert_eq!(
            what,
            vec![
                (dest.join("1"), true),
                (dest.join("2"), false),
                (dest.join("3"), false)
            ]
        );
        assert!(dest.join("1/sub/data").exists());
        assert_eq!(names(&dest), vec!["1", "4", "latest"]);
        // The pod ended: the next prune removes it.
        drop(lease);
        let pruned = prune(&dest, 1, "kubernetes namespace a\n").unwrap();
        assert_eq!(pruned.len(), 1);
        assert!(matches!(pruned[0].outcome, Outcome::Removed));
        assert_eq!(names(&dest), vec!["4", "latest"]);
    }

    #[test]
    fn what_a_failed_prune_left_is_removed_at_the_next() {
        let tmp = tempfile::tempdir().unwrap();
        let dest = tmp.path().join("ck");
        std::fs::create_dir(&dest).unwrap();
        round(&dest, "5");
        link_latest(&dest, &dest.join("5")).unwrap();
        // A removal that failed half way left the renamed round (its mark may be gone).
        std::fs::create_dir_all(dest.join(".cryo-pruning-3/sub")).unwrap();
        std::fs::write(dest.join(".cryo-pruning-3/sub/data"), b"x").unwrap();
        // Not the prune's: a file, a link, a name it does not give.
        std::fs::write(dest.join(".cryo-pruning-4"), b"x").unwrap();
        std::os::unix::fs::symlink(dest.join("5"), dest.join(".cryo-pruning-6")).unwrap();
        std::fs::create_dir(dest.join(".cryo-pruning-x")).unwrap();
        let pruned = prune(&dest, 1, "kubernetes namespace a\n").unwrap();
        assert_eq!(pruned.len(), 1, "{pruned:?}");
        assert_eq!(pruned[0].dir, dest.join(".cryo-pruning-3"));
        assert!(matches!(pruned[0].outcome, Outcome::Removed));
        assert_eq!(
            names(&dest),
            vec![
                ".cryo-pruning-4",
                ".cryo-pruning-6",
                ".cryo-pruning-x",
                "5",
                "latest"
            ]
        );
        assert!(dest.join("5/sub/data").exists());
    }

    #[test]
    fn lock_excludes_a_second_holder() {
        let tmp = tempfile::tempdir().unwrap();
        let held = lock(tmp.path()).unwrap();
        let other = File::open(tmp.path()).unwrap();
        // SAFETY: flock on a descriptor we own.
        let r = unsafe { libc::flock(other.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        assert_eq!(r, -1);
        drop(held);
        let again = lock(tmp.path()).unwrap();
        drop(again);
        assert!(lock(&tmp.path().join("missing")).is_err());
    }
}
