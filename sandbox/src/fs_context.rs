//! Linux's new mount API (fsopen, fsconfig, fsmount, move_mount), which nix does not wrap: a
//! filesystem context configured one option at a time (no page limit on the options, as
//! mount(2) has), mounted detached, then attached where wanted — or used through its
//! descriptor only, never appearing in a mount table.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::Path;

const FSOPEN_CLOEXEC: libc::c_uint = 1;
const FSCONFIG_SET_FLAG: libc::c_uint = 0;
const FSCONFIG_SET_STRING: libc::c_uint = 1;
const FSCONFIG_CMD_CREATE: libc::c_uint = 6;
const FSMOUNT_CLOEXEC: libc::c_uint = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 4;

/// `MOUNT_ATTR_*` flags of a detached mount.
pub const ATTR_RDONLY: libc::c_uint = 0x1;
pub const ATTR_NOSUID: libc::c_uint = 0x2;
pub const ATTR_NODEV: libc::c_uint = 0x4;
pub const ATTR_NOEXEC: libc::c_uint = 0x8;

/// A filesystem context being configured.
pub struct FsContext(OwnedFd);

impl FsContext {
    /// A new context for filesystem type `fstype` (e.g. `overlay`).
    pub fn open(fstype: &str) -> io::Result<FsContext> {
        let fstype = c_string(fstype)?;
        // SAFETY: a valid C string; the returned descriptor is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_fsopen, fstype.as_ptr(), FSOPEN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from fsopen, owned by nothing else.
        Ok(FsContext(unsafe { OwnedFd::from_raw_fd(fd as i32) }))
    }

    /// Set option `key` to `value`.
    pub fn set_string(&self, key: &str, value: &str) -> io::Result<()> {
        let value = c_string(value)?;
        self.config(FSCONFIG_SET_STRING, Some(key), value.as_ptr())
    }

    /// Set flag option `key`.
    pub fn set_flag(&self, key: &str) -> io::Result<()> {
        self.config(FSCONFIG_SET_FLAG, Some(key), std::ptr::null())
    }

    /// Create the filesystem and mount it detached with `attrs` (`ATTR_*`): the descriptor is
    /// the mount's root; the mount lives as long as a descriptor on it (or until attached).
    pub fn mount(self, attrs: libc::c_uint) -> io::Result<OwnedFd> {
        self.config(FSCONFIG_CMD_CREATE, None, std::ptr::null())?;
        // SAFETY: a valid context descriptor.
        let mnt = unsafe {
            libc::syscall(
                libc::SYS_fsmount,
                self.0.as_raw_fd(),
                FSMOUNT_CLOEXEC,
                attrs,
            )
        };
        if mnt < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor from fsmount, owned by nothing else.
        Ok(unsafe { OwnedFd::from_raw_fd(mnt as i32) })
    }

    fn config(
        &self,
        cmd: libc::c_uint,
        key: Option<&str>,
        value: *const libc::c_char,
    ) -> io::Result<()> {
        let key = key.map(c_string).transpose()?;
        let key_ptr = key.as_ref().map_or(std::ptr::null(), |k| k.as_ptr());
        // SAFETY: a valid context descriptor; key and value are C strings or null, as `cmd`
        // takes them.
        let rc = unsafe {
            libc::syscall(
                libc::SYS_fsconfig,
                self.0.as_raw_fd(),
                cmd,
                key_ptr,
                value,
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }
}

/// Attach the detached mount `mnt` at `target`.
pub fn attach(mnt: &OwnedFd, target: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let to = CString::new(target.as_os_str().as_bytes()).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} has a NUL byte", target.display()),
        )
    })?;
    let empty = c_string("")?;
    // SAFETY: a valid mount descriptor and C strings.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            mnt.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn c_string(s: &str) -> io::Result<CString> {
    CString::new(s)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?} has a NUL byte")))
}
