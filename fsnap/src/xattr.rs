//! Extended attributes: reading a path's own (never following a symlink) for a save, and
//! setting them on a restored file, through its descriptor or beneath its parent's. nix wraps
//! no xattr call: these are the crate's raw ones.

use std::ffi::{CString, OsStr};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::error::{Error, Result};

/// Extended attributes of `path` itself (not following a symlink), by name.
pub fn xattrs(path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
    let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| Error::Source {
        path: path.into(),
        reason: "path has a NUL byte".into(),
    })?;
    read_all(&c, path)
}

/// Extended attributes of `name` in the directory `parent` itself (`.`: the directory), by
/// name: the path goes through the parent's descriptor, so nothing outside it is resolved and
/// `name` is never followed. `shown` names it in errors.
pub(crate) fn xattrs_beneath(
    parent: BorrowedFd,
    name: &str,
    shown: &Path,
) -> Result<Vec<(String, Vec<u8>)>> {
    let c = CString::new(format!("/proc/self/fd/{}/{name}", parent.as_raw_fd())).map_err(|_| {
        Error::Source {
            path: shown.into(),
            reason: "name has a NUL byte".into(),
        }
    })?;
    read_all(&c, shown)
}

/// Every extended attribute of the C path `c` (not following its last component).
fn read_all(c: &CString, path: &Path) -> Result<Vec<(String, Vec<u8>)>> {
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
        if n == 0 {
            return Ok(Vec::new());
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

/// Set `k` = `v` on an open file or directory.
pub fn set_fd(fd: BorrowedFd, k: &str, v: &[u8]) -> std::io::Result<()> {
    // SAFETY: a valid descriptor; name and value as `set_with` gives them.
    set_with(k, v, |key, value, len| unsafe {
        libc::fsetxattr(fd.as_raw_fd(), key, value, len, 0)
    })
}

/// Set `k` = `v` on `name` in the directory `parent` itself (a symlink or device node, which
/// cannot be opened for fsetxattr), never following a symlink: the path goes through the
/// parent's descriptor, so nothing outside it is resolved.
pub fn set_beneath(parent: BorrowedFd, name: &str, k: &str, v: &[u8]) -> std::io::Result<()> {
    let path = CString::new(format!("/proc/self/fd/{}/{name}", parent.as_raw_fd()))
        .map_err(std::io::Error::other)?;
    // SAFETY: a NUL-terminated path; name and value as `set_with` gives them.
    set_with(k, v, |key, value, len| unsafe {
        libc::lsetxattr(path.as_ptr(), key, value, len, 0)
    })
}

/// Call a setxattr variant with `k` as a NUL-terminated name and `v` as a pointer and its
/// length; the error from errno when it fails.
fn set_with(
    k: &str,
    v: &[u8],
    call: impl FnOnce(*const libc::c_char, *const libc::c_void, usize) -> libc::c_int,
) -> std::io::Result<()> {
    let key = CString::new(k).map_err(std::io::Error::other)?;
    if call(key.as_ptr(), v.as_ptr() as *const libc::c_void, v.len()) < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn src(path: &Path, e: std::io::Error) -> Error {
    Error::Source {
        path: path.into(),
        reason: e.to_string(),
    }
}
