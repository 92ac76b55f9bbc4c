//! Planning a section: walk a directory tree into the entries it will hold, in a stable order,
//! with their metadata, extended attributes, hard links matched up and sparse files' data
//! extents found. Sockets cannot be saved and are skipped. The tree may be changing (a
//! container's upper layer): every directory, entry and file is reached beneath the tree's
//! root with no symlink on the way, so a swap never leads the save outside the tree.

use std::collections::HashMap;
use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStringExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::dir::{Dir, Type};
use nix::errno::Errno;
use nix::fcntl::{openat2, readlinkat, AtFlags, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, fstatat, FileStat, SFlag};

use crate::error::{Error, Result};
use crate::pool::parallel;
use crate::tar::{sparse, Entry, Kind};
use crate::xattr::xattrs_beneath;

/// An entry and, for regular files with content, where to read it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: Entry,
    pub source: Option<PathBuf>,
    /// (device, inode) as planned: what is read later must be this very file.
    pub inode: (u64, u64),
}

/// The entries of the tree at `root`, the root itself first as `.`. Names are listed first
/// (directory reads only), metadata and xattrs are then read on all cores, and hard links are
/// matched in entry order.
pub fn plan(root: &Path) -> Result<Vec<Planned>> {
    let md = std::fs::symlink_metadata(root).map_err(|e| src(root, e))?;
    if !md.is_dir() {
        return Err(Error::Source {
            path: root.into(),
            reason: "not a directory".into(),
        });
    }
    let root_dir = open_root(root)?;
    let mut names = vec![(root.to_path_buf(), ".".to_string())];
    list(root_dir.as_fd(), root, "", &mut names)?;
    let chunks: Vec<&[(PathBuf, String)]> = names.chunks(1024).collect();
    let described: Vec<Vec<Option<(Entry, Inode)>>> = parallel(&chunks, |_, chunk| {
        chunk
            .iter()
            .map(|(path, rel)| entry(root_dir.as_fd(), path, rel))
            .collect()
    })?;
    let mut out = Vec::with_capacity(names.len());
    let mut links: HashMap<(u64, u64), String> = HashMap::new();
    for ((path, _), described) in names.iter().zip(described.into_iter().flatten()) {
        let Some((mut e, inode)) = described else {
            continue;
        };
        if inode.nlink > 1 && e.kind != Kind::Dir {
            match links.get(&(inode.dev, inode.ino)) {
                Some(first) => {
                    e.kind = Kind::HardLink(first.clone());
                    e.size = 0;
                    e.sparse = None;
                }
                None => {
                    links.insert((inode.dev, inode.ino), e.path.clone());
                }
            }
        }
        let has_content = e.kind == Kind::File && e.stored_bytes() > 0;
        out.push(Planned {
            entry: e,
            source: has_content.then(|| path.clone()),
            inode: (inode.dev, inode.ino),
        });
    }
    Ok(out)
}

/// Every name below `rel` (a directory beneath `root`, the tree at `top`) in walk order
/// (sorted, depth first), from directory reads alone; each directory is opened beneath the
/// root with no symlink on the way, so a directory swapped for a symlink is never listed.
fn list(root: BorrowedFd, top: &Path, rel: &str, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let shown = if rel.is_empty() {
        top.to_path_buf()
    } else {
        top.join(rel)
    };
    let how = OpenHow::new()
        .flags(OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(beneath_no_symlinks());
    let fd = openat2(root, if rel.is_empty() { "." } else { rel }, how)
        .map_err(|e| changed(&shown, e))?;
    // A second descriptor of the same directory, for entries whose type the read leaves out.
    let dir_fd = fd.try_clone().map_err(|e| src(&shown, e))?;
    let mut dir = Dir::from_fd(fd).map_err(|e| changed(&shown, e))?;
    let mut children: Vec<(OsString, bool)> = Vec::new();
    for ent in dir.iter() {
        let ent = ent.map_err(|e| changed(&shown, e))?;
        let name = ent.file_name().to_bytes();
        if name == b"." || name == b".." {
            continue;
        }
        let is_dir = match ent.file_type() {
            Some(t) => t == Type::Directory,
            None => fstatat(&dir_fd, name, AtFlags::AT_SYMLINK_NOFOLLOW)
                .map(|st| file_type(&st) == SFlag::S_IFDIR)
                .map_err(|e| changed(&shown, e))?,
        };
        children.push((OsString::from_vec(name.to_vec()), is_dir));
    }
    drop(dir);
    children.sort();
    for (name, is_dir) in children {
        let path = shown.join(&name);
        let name = name.to_str().ok_or_else(|| Error::Source {
            path: path.clone(),
            reason: "file name is not UTF-8".into(),
        })?;
        let rel_path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        out.push((path, rel_path.clone()));
        if is_dir {
            list(root, top, &rel_path, out)?;
        }
    }
    Ok(())
}

/// Identity of an inode, for matching hard links.
struct Inode {
    dev: u64,
    ino: u64,
    nlink: u64,
}

/// One entry's metadata (`None` for a socket, which cannot be saved), read beneath `root`
/// through its parent directory's descriptor, never following a symlink (`path` only names it
/// in errors).
fn entry(root: BorrowedFd, path: &Path, rel: &str) -> Result<Option<(Entry, Inode)>> {
    let (parent_rel, name) = match rel {
        "." => (".", "."),
        _ => rel.rsplit_once('/').unwrap_or((".", rel)),
    };
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC)
        .resolve(beneath_no_symlinks());
    let parent = openat2(root, parent_rel, how).map_err(|e| changed(path, e))?;
    let st = fstatat(&parent, name, AtFlags::AT_SYMLINK_NOFOLLOW).map_err(|e| changed(path, e))?;
    let ft = file_type(&st);
    if ft == SFlag::S_IFSOCK {
        log::warn!("skipping socket {}", path.display());
        return Ok(None);
    }
    let dev = || (libc::major(st.st_rdev), libc::minor(st.st_rdev));
    let mut size = 0;
    let mut sparse_map = None;
    let kind = match ft {
        SFlag::S_IFDIR => Kind::Dir,
        SFlag::S_IFLNK => {
            let t = readlinkat(&parent, name).map_err(|e| changed(path, e))?;
            Kind::Symlink(t.into_string().map_err(|_| Error::Source {
                path: path.into(),
                reason: "symlink target is not UTF-8".into(),
            })?)
        }
        SFlag::S_IFREG => {
            size = st.st_size as u64;
            // Fewer allocated blocks than the size: look for holes.
            if (st.st_blocks as u64) * 512 < size {
                let f =
                    open_planned(root, rel, (st.st_dev, st.st_ino)).map_err(|e| src(path, e))?;
                sparse_map = sparse::extents(&f, size).map_err(|e| src(path, e))?;
            }
            Kind::File
        }
        SFlag::S_IFCHR => {
            let (major, minor) = dev();
            Kind::Char { major, minor }
        }
        SFlag::S_IFBLK => {
            let (major, minor) = dev();
            Kind::Block { major, minor }
        }
        SFlag::S_IFIFO => Kind::Fifo,
        _ => {
            return Err(Error::Source {
                path: path.into(),
                reason: "unsupported file type".into(),
            })
        }
    };
    let entry = Entry {
        path: rel.to_string(),
        kind,
        mode: st.st_mode & 0o7777,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_sec: st.st_mtime,
        mtime_nsec: st.st_mtime_nsec as u32,
        size,
        xattrs: xattrs_beneath(parent.as_fd(), name, path)?,
        sparse: sparse_map,
    };
    let inode = Inode {
        dev: st.st_dev,
        ino: st.st_ino,
        nlink: st.st_nlink,
    };
    Ok(Some((entry, inode)))
}

fn file_type(st: &FileStat) -> SFlag {
    SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits())
}

fn beneath_no_symlinks() -> ResolveFlag {
    ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS
}

/// A lookup beneath the root failed: a symlink or a non-directory on the way means the tree
/// changed under the save.
fn changed(path: &Path, e: Errno) -> Error {
    Error::Source {
        path: path.into(),
        reason: match e {
            Errno::ELOOP | Errno::EXDEV | Errno::ENOTDIR => {
                "changed during the save (a symlink or a file where a directory was planned); \
                 pause the writer and save again"
                    .into()
            }
            other => std::io::Error::from(other).to_string(),
        },
    }
}

/// The root of a tree to save, opened once: every file of it is opened beneath this.
pub(crate) fn open_root(root: &Path) -> Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(root)
        .map_err(|e| src(root, e))
}

/// Open the regular file `rel` beneath `root` for reading, safely against a tree that changes
/// under the save (a container may be writing it): no symlink anywhere on the way, nothing
/// opened but as a path until it is known to be a regular file with the inode number that was
/// planned (so a FIFO cannot block the save and a device node is never opened; a file swapped
/// for another is refused unless the filesystem reused the number, when it is just a change of
/// content), then reopened for reading through that descriptor.
pub(crate) fn open_planned(
    root: BorrowedFd,
    rel: &str,
    inode: (u64, u64),
) -> std::io::Result<File> {
    let how = OpenHow::new()
        .flags(OFlag::O_PATH | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC)
        .resolve(beneath_no_symlinks());
    let replaced = |what: &str| {
        std::io::Error::other(format!(
            "was replaced during the save ({what}; pause the writer and save again)"
        ))
    };
    let fd = openat2(root, rel, how).map_err(|e| match e {
        Errno::ELOOP | Errno::EXDEV => replaced("a symlink on its path"),
        other => std::io::Error::from(other),
    })?;
    let st = fstat(&fd)?;
    if file_type(&st) != SFlag::S_IFREG {
        return Err(replaced("no longer a regular file"));
    }
    if (st.st_dev, st.st_ino) != inode {
        return Err(replaced("another file"));
    }
    // Through our own O_PATH descriptor: the same inode, whatever happens to the name.
    File::open(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

fn src(path: &Path, e: std::io::Error) -> Error {
    Error::Source {
        path: path.into(),
        reason: e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `src/d/f` planned; then `d` is swapped for a symlink to a directory outside the tree
    /// (as a container could, racing the save).
    fn swapped() -> (tempfile::TempDir, PathBuf) {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("src");
        std::fs::create_dir_all(src.join("d")).unwrap();
        std::fs::write(src.join("d/f"), b"inside").unwrap();
        let outside = t.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("f"), b"outside, longer").unwrap();
        std::fs::write(outside.join("secret-name"), b"").unwrap();
        std::fs::remove_dir_all(src.join("d")).unwrap();
        std::os::unix::fs::symlink(&outside, src.join("d")).unwrap();
        (t, src)
    }

    #[test]
    fn metadata_is_never_read_through_a_swapped_directory() {
        let (_t, src) = swapped();
        let root = open_root(&src).unwrap();
        let e = entry(root.as_fd(), &src.join("d/f"), "d/f");
        assert!(
            e.is_err(),
            "read through the symlink: {:?}",
            e.map(|e| e.map(|e| e.0))
        );
    }

    #[test]
    fn a_swapped_directory_is_never_listed() {
        let (_t, src) = swapped();
        let root = open_root(&src).unwrap();
        let mut names = Vec::new();
        let e = list(root.as_fd(), &src, "d", &mut names).unwrap_err();
        assert!(e.to_string().contains("changed during the save"), "{e}");
        assert!(names.is_empty(), "{names:?}");
    }
}
