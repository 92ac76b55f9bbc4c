//! Planning a section: walk a directory tree (without following symlinks) into the entries it
//! will hold, in a stable order, with their metadata, extended attributes, hard links matched
//! up and sparse files' data extents found. Sockets cannot be saved and are skipped.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};
use crate::tar::{sparse, Entry, Kind};

/// An entry and, for regular files with content, where to read it.
#[derive(Debug, Clone)]
pub struct Planned {
    pub entry: Entry,
    pub source: Option<PathBuf>,
}

/// The entries of the tree at `root`, the root itself first as `.`.
pub fn plan(root: &Path) -> Result<Vec<Planned>> {
    let md = std::fs::symlink_metadata(root).map_err(|e| src(root, e))?;
    if !md.is_dir() {
        return Err(Error::Source {
            path: root.into(),
            reason: "not a directory".into(),
        });
    }
    let mut out = Vec::new();
    let mut links = HashMap::new();
    let root_entry = entry(root, ".", &md, &mut links)?;
    out.push(Planned {
        entry: root_entry,
        source: None,
    });
    walk(root, "", &mut out, &mut links)?;
    Ok(out)
}

fn walk(
    dir: &Path,
    rel: &str,
    out: &mut Vec<Planned>,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<()> {
    let mut names: Vec<_> = std::fs::read_dir(dir)
        .map_err(|e| src(dir, e))?
        .map(|e| e.map(|e| e.file_name()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| src(dir, e))?;
    names.sort();
    for name in names {
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
        let md = std::fs::symlink_metadata(&path).map_err(|e| src(&path, e))?;
        if md.file_type().is_socket() {
            log::warn!("skipping socket {}", path.display());
            continue;
        }
        let e = entry(&path, &rel_path, &md, links)?;
        let is_dir = e.kind == Kind::Dir;
        let has_content = e.kind == Kind::File && e.stored_bytes() > 0;
        out.push(Planned {
            entry: e,
            source: has_content.then(|| path.clone()),
        });
        if is_dir {
            walk(&path, &rel_path, out, links)?;
        }
    }
    Ok(())
}

fn entry(
    path: &Path,
    rel: &str,
    md: &std::fs::Metadata,
    links: &mut HashMap<(u64, u64), String>,
) -> Result<Entry> {
    let ft = md.file_type();
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
    } else if let Some(first) = (md.nlink() > 1)
        .then(|| links.get(&(md.dev(), md.ino())).cloned())
        .flatten()
    {
        Kind::HardLink(first)
    } else if ft.is_file() {
        size = md.len();
        // Fewer allocated blocks than the size: look for holes.
        if md.blocks() * 512 < size {
            let f = std::fs::File::open(path).map_err(|e| src(path, e))?;
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
    if md.nlink() > 1 && !ft.is_dir() && !matches!(kind, Kind::HardLink(_)) {
        links.insert((md.dev(), md.ino()), rel.to_string());
    }
    Ok(Entry {
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
    })
}

/// Extended attributes of `path` itself (not following a symlink), by name.
pub fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Source {
        path: path.into(),
        reason: "path has a NUL byte".into(),
    })?;
    let names = match xattr_call(|buf, len| unsafe {
        // SAFETY: valid C string; buffer and length from xattr_call.
        libc::llistxattr(c.as_ptr(), buf as *mut libc::c_char, len)
    }) {
        Ok(n) => n,
        Err(e) if e.raw_os_error() == Some(libc::ENOTSUP) => return Ok(vec![]),
        Err(e) => return Err(src(path, e)),
    };
    let mut out = Vec::new();
    for name in names.split(|b| *b == 0).filter(|n| !n.is_empty()) {
        let cname = CString::new(name).expect("split at NUL");
        let value = match xattr_call(|buf, len| unsafe {
            // SAFETY: valid C strings; buffer and length from xattr_call.
            libc::lgetxattr(c.as_ptr(), cname.as_ptr(), buf as *mut libc::c_void, len)
        }) {
            Ok(v) => v,
            // Removed meanwhile.
            Err(e) if e.raw_os_error() == Some(libc::ENODATA) => continue,
            Err(e) => return Err(src(path, e)),
        };
        out.push((
            OsStr::from_bytes(name).to_string_lossy().into_owned(),
            value,
        ));
    }
    out.sort();
    Ok(out)
}

/// The size-then-fill dance of the xattr calls.
fn xattr_call(mut f: impl FnMut(*mut u8, usize) -> isize) -> std::io::Result<Vec<u8>> {
    loop {
        let n = f(std::ptr::null_mut(), 0);
        if n < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut buf = vec![0u8; n as usize];
        let m = f(buf.as_mut_ptr(), buf.len());
        if m < 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ERANGE) {
                continue; // grew meanwhile
            }
            return Err(e);
        }
        buf.truncate(m as usize);
        return Ok(buf);
    }
}

fn src(path: &Path, e: std::io::Error) -> Error {
    Error::Source {
        path: path.into(),
        reason: e.to_string(),
    }
}
