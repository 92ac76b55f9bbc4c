//! Planning a section: walk a directory tree (without following symlinks) into the entries it
//! will hold, in a stable order, with their metadata, extended attributes, hard links matched
//! up and sparse files' data extents found. Sockets cannot be saved and are skipped.

use std::collections::HashMap;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::{openat2, OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{fstat, SFlag};

use crate::error::{Error, Result};
use crate::pool::parallel;
use crate::tar::{sparse, Entry, Kind};
use crate::xattr::xattrs;

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
    list(root, "", &mut names)?;
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

/// Every name below `dir` in walk order (sorted, depth first), from directory reads alone.
fn list(dir: &Path, rel: &str, out: &mut Vec<(PathBuf, String)>) -> Result<()> {
    let mut children: Vec<(std::ffi::OsString, bool)> = std::fs::read_dir(dir)
        .map_err(|e| src(dir, e))?
        .map(|e| e.and_then(|e| Ok((e.file_name(), e.file_type()?.is_dir()))))
        .collect::<std::io::Result<_>>()
        .map_err(|e| src(dir, e))?;
    children.sort();
    for (name, is_dir) in children {
        let path = dir.join(&name);
        let name = name.to_str().ok_or_else(|| Error::Source {
            path: path.clone(),
            reason: "file name is not UTF-8".into(),
        })?;
        let rel_path = if rel.is_empty() {
            name.to_string()
        } else {
            format!("{rel}/{name}")
        };
        out.push((path.clone(), rel_path.clone()));
        if is_dir {
            list(&path, &rel_path, out)?;
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

/// One entry's metadata (`None` for a socket, which cannot be saved).
fn entry(root: BorrowedFd, path: &Path, rel: &str) -> Result<Option<(Entry, Inode)>> {
    let md = std::fs::symlink_metadata(path).map_err(|e| src(path, e))?;
    let ft = md.file_type();
    if ft.is_socket() {
        log::warn!("skipping socket {}", path.display());
        return Ok(None);
    }
    let rdev = md.rdev();
    let dev = || (libc::major(rdev), libc::minor(rdev));
    let mut size = 0;
    let mut sparse_map = None;
    let kind = if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        let t = std::fs::read_link(path).map_err(|e| src(path, e))?;
        Kind::Symlink(
            t.to_str()
                .map(str::to_string)
                .ok_or_else(|| Error::Source {
                    path: path.into(),
                    reason: "symlink target is not UTF-8".into(),
                })?,
        )
    } else if ft.is_file() {
        size = md.len();
        // Fewer allocated blocks than the size: look for holes.
        if md.blocks() * 512 < size {
            let f = open_planned(root, rel, (md.dev(), md.ino())).map_err(|e| src(path, e))?;
            sparse_map = sparse::extents(&f, size).map_err(|e| src(path, e))?;
        }
        Kind::File
    } else if ft.is_char_device() {
        let (major, minor) = dev();
        Kind::Char { major, minor }
    } else if ft.is_block_device() {
        let (major, minor) = dev();
        Kind::Block { major, minor }
    } else if ft.is_fifo() {
        Kind::Fifo
    } else {
        return Err(Error::Source {
            path: path.into(),
            reason: "unsupported file type".into(),
        });
    };
    let entry = Entry {
        path: rel.to_string(),
        kind,
        mode: md.mode() & 0o7777,
        uid: md.uid(),
        gid: md.gid(),
        mtime_sec: md.mtime(),
        mtime_nsec: md.mtime_nsec() as u32,
        size,
        xattrs: xattrs(path)?,
        sparse: sparse_map,
    };
    let inode = Inode {
        dev: md.dev(),
        ino: md.ino(),
        nlink: md.nlink(),
    };
    Ok(Some((entry, inode)))
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
        .resolve(ResolveFlag::RESOLVE_BENEATH | ResolveFlag::RESOLVE_NO_SYMLINKS);
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
    if SFlag::from_bits_truncate(st.st_mode & SFlag::S_IFMT.bits()) != SFlag::S_IFREG {
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
