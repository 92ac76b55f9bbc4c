//! The container's filesystem view, built by PID 1 in its new mount namespace: propagation,
//! the spec's mounts (proc, sysfs, tmpfs /dev, devpts, mqueue, cgroup, binds), device nodes,
//! /dev symlinks, pivot_root, the console, the sysctls, masked and readonly paths, a readonly
//! root.

use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{open, OFlag};
use nix::mount::{mount, umount2, MntFlags, MsFlags};
use nix::sys::stat::{makedev, mknod, Mode, SFlag};
use nix::sys::statvfs::{statvfs, FsFlags};
use nix::unistd::{chown, fchdir, pivot_root, Gid, Uid};
use oci_spec::runtime::{LinuxDevice, LinuxDeviceType, LinuxNamespaceType, Mount};

use super::in_root::{fd_path, mount_id, InRoot};
use super::namespaces;
use super::protocol::InitConfig;
use crate::error::{Error, Result};
use crate::mount::{mount_of, mount_with, mountinfo_self, resolve_beneath, MountOptions};

/// Build the filesystem view and pivot into it. Returns the pty master when the config asks
/// for a terminal.
pub fn prepare(config: &InitConfig) -> Result<Option<OwnedFd>> {
    let spec = &config.spec;
    let rootfs = &config.rootfs;
    if !namespaces::has(spec, LinuxNamespaceType::Mount) {
        return Err(Error::InvalidSpec(
            "a mount namespace is required (linux.namespaces has no \"mount\")".into(),
        ));
    }
    let linux = spec.linux().as_ref();
    let propagation = linux
        .and_then(|l| l.rootfs_propagation().as_deref())
        .map(|p| MountOptions::parse(&[p]).propagation)
        .filter(|p| !p.is_empty())
        .unwrap_or(MsFlags::MS_SLAVE | MsFlags::MS_REC);
    mount(None::<&str>, "/", None::<&str>, propagation, None::<&str>)
        .map_err(|e| Error::sys("set rootfs propagation on /", e))?;
    if !rootfs.is_dir() {
        return Err(Error::Rootfs {
            path: rootfs.clone(),
            reason: "not a directory".into(),
        });
    }
    parent_mount_private(rootfs)?;
    mount(
        Some(rootfs.as_path()),
        rootfs.as_path(),
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::sys(format!("bind rootfs {}", rootfs.display()), e))?;

    // Every mount point and directory beneath the rootfs is made and mounted by descriptor.
    let root = InRoot::open(rootfs)?;
    let mut dev_is_tmpfs = false;
    for m in spec.mounts().as_deref().unwrap_or_default() {
        mount_one(config, &root, m)?;
        dev_is_tmpfs |= m.destination() == Path::new("/dev");
    }
    let spec_devices = linux.and_then(|l| l.devices().clone()).unwrap_or_default();
    if dev_is_tmpfs {
        for dev in default_devices().iter().chain(&spec_devices) {
            create_device(rootfs, dev)?;
        }
        dev_symlinks(rootfs)?;
    } else {
        for dev in &spec_devices {
            create_device(rootfs, dev)?;
        }
    }
    if let Some(p) = spec.process() {
        root.mkdir_all(p.cwd())?;
    }
    pivot(rootfs)?;
    let console = if config.terminal {
        Some(terminal(true)?)
    } else {
        reopen_dev_null()?;
        None
    };
    // Before /proc/sys may become read-only below; which sysctls are allowed was checked at
    // Create.
    super::process::apply_sysctls(spec)?;
    for p in linux
        .and_then(|l| l.masked_paths().as_deref())
        .unwrap_or_default()
    {
        mask(Path::new(p))?;
    }
    for p in linux
        .and_then(|l| l.readonly_paths().as_deref())
        .unwrap_or_default()
    {
        readonly(Path::new(p))?;
    }
    if spec
        .root()
        .as_ref()
        .and_then(|r| r.readonly())
        .unwrap_or(false)
    {
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
        .map_err(|e| Error::sys("remount the root readonly", e))?;
    }
    Ok(console)
}

/// Mount one entry of the spec's `mounts` beneath the rootfs.
fn mount_one(config: &InitConfig, root: &InRoot, m: &Mount) -> Result<()> {
    let dest = m.destination();
    let typ = m.typ().as_deref().unwrap_or("");
    let mut opts = MountOptions::parse(m.options().as_deref().unwrap_or_default());
    if typ == "bind" {
        opts.flags |= MsFlags::MS_BIND;
    }
    if typ == "cgroup" || typ == "cgroup2" {
        return mount_cgroup(root, dest, &opts);
    }
    if opts.is_bind() {
        let source = m.source().as_ref().ok_or_else(|| Error::Mount {
            target: dest.clone(),
            reason: "bind mount without a source".into(),
        })?;
        let source = if source.is_relative() {
            config.bundle.join(source)
        } else {
            source.clone()
        };
        let md = std::fs::metadata(&source).map_err(|e| Error::Mount {
            target: dest.clone(),
            reason: format!("bind source {}: {e}", source.display()),
        })?;
        let target = if md.is_dir() {
            root.mkdir_all(dest)?
        } else {
            root.touch(dest)?
        };
        return mount_on(root, dest, &target, Some(&source), None, &opts);
    }
    let target = root.mkdir_all(dest)?;
    let source = m.source().clone().unwrap_or_else(|| PathBuf::from(typ));
    match mount_on(root, dest, &target, Some(&source), Some(typ), &opts) {
        // Without a network namespace of its own the container may not mount sysfs: bind the
        // host's, readonly, as runc does.
        Err(_) if typ == "sysfs" => {
            let mut bind = opts.clone();
            bind.flags |= MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_RDONLY;
            mount_on(root, dest, &target, Some(Path::new("/sys")), None, &bind)
        }
        other => other,
    }
}

/// Mount onto the inode `target` holds (opened beneath the root), never onto a path a
/// co-tenant could redirect. What must be applied to the new mount itself afterwards (a bind's
/// flags, propagation) goes through a fresh descriptor of `dest`, which must now be on another
/// mount than `target` was: the mount point was not swapped meanwhile.
fn mount_on(
    root: &InRoot,
    dest: &Path,
    target: &OwnedFd,
    source: Option<&Path>,
    fstype: Option<&str>,
    opts: &MountOptions,
) -> Result<()> {
    let first = MountOptions {
        flags: if opts.is_bind() {
            opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC)
        } else {
            opts.flags
        },
        propagation: MsFlags::empty(),
        data: opts.data.clone(),
    };
    mount_with(source, &fd_path(target), fstype, &first)?;
    let remount = if opts.is_bind() {
        opts.remount_flags()
    } else {
        MsFlags::empty()
    };
    if remount.is_empty() && opts.propagation.is_empty() {
        return Ok(());
    }
    let mounted = new_mount_at(root, dest, target)?;
    if !remount.is_empty() {
        mount(
            None::<&str>,
            &fd_path(&mounted),
            None::<&str>,
            remount | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("remount {} with its flags", dest.display()), e))?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            &fd_path(&mounted),
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(|e| Error::sys(format!("propagation of {}", dest.display()), e))?;
    }
    Ok(())
}

/// `dest` opened afresh after a mount onto `target`: it must now be the root of another mount
/// than the one `target` lies on (else the mount point was swapped meanwhile).
fn new_mount_at(root: &InRoot, dest: &Path, target: &OwnedFd) -> Result<OwnedFd> {
    let mounted = root.open_any(dest)?;
    if mount_id(&mounted).is_none() || mount_id(&mounted) == mount_id(target) {
        return Err(Error::Mount {
            target: dest.to_path_buf(),
            reason: "the mount point changed while it was being mounted".into(),
        });
    }
    Ok(mounted)
}

/// A `cgroup` mount: the container sees its own cgroup as the root of each hierarchy
/// (bind mounts of its cgroup directories, as runc does without a cgroup namespace).
fn mount_cgroup(root: &InRoot, dest: &Path, opts: &MountOptions) -> Result<()> {
    let target = root.mkdir_all(dest)?;
    let own = own_cgroups()?;
    let mounts = mountinfo_self()?;
    let hierarchies: Vec<_> = mounts
        .iter()
        .filter(|m| m.fstype == "cgroup" || m.fstype == "cgroup2")
        .filter(|m| m.mount_point.starts_with("/sys/fs/cgroup"))
        .collect();
    let bind_opts = MountOptions {
        flags: MsFlags::MS_BIND | (opts.flags & !MsFlags::MS_BIND),
        ..Default::default()
    };
    // Pure cgroup v2 host: one hierarchy at /sys/fs/cgroup.
    if let Some(v2) = hierarchies
        .iter()
        .find(|m| m.mount_point == Path::new("/sys/fs/cgroup"))
    {
        let path = own_path(&own, v2).unwrap_or_default();
        return mount_on(
            root,
            dest,
            &target,
            Some(&host_dir(v2, &path)),
            None,
            &bind_opts,
        );
    }
    let tmpfs = MountOptions {
        flags: MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        propagation: MsFlags::empty(),
        data: "mode=755".into(),
    };
    mount_on(
        root,
        dest,
        &target,
        Some(Path::new("tmpfs")),
        Some("tmpfs"),
        &tmpfs,
    )?;
    // The fresh tmpfs, by descriptor, for the links below.
    let tmpfs_root = new_mount_at(root, dest, &target)?;
    for h in &hierarchies {
        let Some(name) = h.mount_point.file_name() else {
            continue;
        };
        let Some(path) = own_path(&own, h) else {
            continue;
        };
        let sub = dest.join(name);
        let target = root.mkdir_all(&sub)?;
        mount_on(
            root,
            &sub,
            &target,
            Some(&host_dir(h, &path)),
            None,
            &bind_opts,
        )?;
        let name = name.to_string_lossy();
        if name.contains(',') {
            for part in name.split(',') {
                let _ = nix::unistd::symlinkat(&*name, &tmpfs_root, part);
            }
        }
    }
    if opts.flags.contains(MsFlags::MS_RDONLY) {
        mount(
            None::<&str>,
            &fd_path(&tmpfs_root),
            None::<&str>,
            tmpfs.flags | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            Some("mode=755"),
        )
        .map_err(|e| Error::sys(format!("remount {} readonly", dest.display()), e))?;
    }
    Ok(())
}

/// This process's cgroups: (controllers, path) per line of /proc/self/cgroup.
pub(crate) fn own_cgroups() -> Result<Vec<(String, String)>> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| Error::io("read /proc/self/cgroup", e))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut parts = l.splitn(3, ':');
            let _id = parts.next()?;
            Some((parts.next()?.to_string(), parts.next()?.to_string()))
        })
        .collect())
}

/// The path of this process's cgroup in hierarchy `h`.
pub(crate) fn own_path(own: &[(String, String)], h: &crate::mount::MountInfo) -> Option<String> {
    if h.fstype == "cgroup2" {
        return own
            .iter()
            .find(|(c, _)| c.is_empty())
            .map(|(_, p)| p.clone());
    }
    let opts: Vec<&str> = h.super_options.split(',').collect();
    own.iter()
        .find(|(c, _)| !c.is_empty() && c.split(',').all(|x| opts.contains(&x)))
        .map(|(_, p)| p.clone())
}

/// Host directory of cgroup `path` in hierarchy `h`.
fn host_dir(h: &crate::mount::MountInfo, path: &str) -> PathBuf {
    let rel = path
        .strip_prefix(h.root.as_str())
        .unwrap_or(path)
        .trim_start_matches('/');
    h.mount_point.join(rel)
}

/// The devices every container gets on a tmpfs /dev.
fn default_devices() -> Vec<LinuxDevice> {
    [
        ("/dev/null", 1, 3),
        ("/dev/zero", 1, 5),
        ("/dev/full", 1, 7),
        ("/dev/random", 1, 8),
        ("/dev/urandom", 1, 9),
        ("/dev/tty", 5, 0),
    ]
    .into_iter()
    .map(|(path, major, minor)| {
        let mut d = LinuxDevice::default();
        d.set_path(PathBuf::from(path))
            .set_typ(LinuxDeviceType::C)
            .set_major(major)
            .set_minor(minor)
            .set_file_mode(Some(0o666))
            .set_uid(Some(0))
            .set_gid(Some(0));
        d
    })
    .collect()
}

fn create_device(rootfs: &Path, dev: &LinuxDevice) -> Result<()> {
    let path = resolve_beneath(rootfs, dev.path())?;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .map_err(|e| Error::io(format!("mkdir {}", parent.display()), e))?;
    }
    let kind = match dev.typ() {
        LinuxDeviceType::B => SFlag::S_IFBLK,
        LinuxDeviceType::P => SFlag::S_IFIFO,
        _ => SFlag::S_IFCHR,
    };
    let mode = dev.file_mode().unwrap_or(0o666) & 0o7777;
    let _ = std::fs::remove_file(&path);
    mknod(
        &path,
        kind,
        Mode::from_bits_truncate(mode),
        makedev(dev.major() as u64, dev.minor() as u64),
    )
    .map_err(|e| Error::sys(format!("mknod {}", dev.path().display()), e))?;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| Error::io(format!("chmod {}", dev.path().display()), e))?;
    chown(
        &path,
        dev.uid().map(Uid::from_raw),
        dev.gid().map(Gid::from_raw),
    )
    .map_err(|e| Error::sys(format!("chown {}", dev.path().display()), e))
}

fn dev_symlinks(rootfs: &Path) -> Result<()> {
    let dev = resolve_beneath(rootfs, Path::new("/dev"))?;
    for (name, target) in [
        ("fd", "/proc/self/fd"),
        ("stdin", "/proc/self/fd/0"),
        ("stdout", "/proc/self/fd/1"),
        ("stderr", "/proc/self/fd/2"),
        ("core", "/proc/kcore"),
        ("ptmx", "pts/ptmx"),
    ] {
        let link = dev.join(name);
        let _ = std::fs::remove_file(&link);
        symlink(target, &link).map_err(|e| Error::io(format!("symlink /dev/{name}"), e))?;
    }
    Ok(())
}

/// Stdio that is the host's /dev/null (what the engine gives for a stream nobody wants) is
/// reopened as the container's own /dev/null, as runc does: CRIU cannot checkpoint a descriptor
/// on a mount outside the container. Without a /dev/null of its own nothing changes.
fn reopen_dev_null() -> Result<()> {
    let Ok(ours) = nix::sys::stat::stat("/dev/null") else {
        return Ok(());
    };
    let is_null = |st: &nix::sys::stat::FileStat| {
        st.st_mode & libc::S_IFMT == libc::S_IFCHR && st.st_rdev == makedev(1, 3)
    };
    if !is_null(&ours) {
        return Ok(());
    }
    for fd in 0..3 {
        // SAFETY: fds 0-2 are this process's stdio, borrowed only for the call.
        let borrowed = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        let Ok(st) = nix::sys::stat::fstat(borrowed) else {
            continue;
        };
        if !is_null(&st) || (st.st_dev == ours.st_dev && st.st_ino == ours.st_ino) {
            continue;
        }
        let access = nix::fcntl::fcntl(borrowed, nix::fcntl::FcntlArg::F_GETFL)
            .map(|f| OFlag::from_bits_truncate(f) & OFlag::O_ACCMODE)
            .map_err(|e| Error::sys(format!("read the flags of fd {fd}"), e))?;
        let null = open("/dev/null", access | OFlag::O_CLOEXEC, Mode::empty())
            .map_err(|e| Error::sys("open the container's /dev/null", e))?;
        // SAFETY: replaces stdio fd `fd` with the container's /dev/null; `null` stays owned.
        if unsafe { libc::dup2(null.as_raw_fd(), fd) } < 0 {
            return Err(Error::sys(
                format!("dup2 /dev/null onto fd {fd}"),
                nix::Error::last(),
            ));
        }
    }
    Ok(())
}

/// pivot_root into `rootfs` and detach the old root (runc's `pivot_root(".", ".")` way).
fn pivot(rootfs: &Path) -> Result<()> {
    let old = open("/", OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| Error::sys("open /", e))?;
    let new = open(rootfs, OFlag::O_DIRECTORY | OFlag::O_RDONLY, Mode::empty())
        .map_err(|e| Error::sys(format!("open rootfs {}", rootfs.display()), e))?;
    fchdir(&new).map_err(|e| Error::sys("chdir to the rootfs", e))?;
    pivot_root(".", ".").map_err(|e| Error::sys("pivot_root", e))?;
    fchdir(&old).map_err(|e| Error::sys("chdir to the old root", e))?;
    mount(
        None::<&str>,
        ".",
        None::<&str>,
        MsFlags::MS_SLAVE | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(|e| Error::sys("make the old root a slave", e))?;
    umount2(".", MntFlags::MNT_DETACH).map_err(|e| Error::sys("detach the old root", e))?;
    std::env::set_current_dir("/").map_err(|e| Error::io("chdir /", e))
}

/// The rootfs's parent mount made private when it is shared: pivot_root refuses a new root
/// whose parent mount is shared (EINVAL), which `rootfsPropagation: rshared` makes of `/`.
/// As runc's `rootfsParentMountPrivate`.
fn parent_mount_private(rootfs: &Path) -> Result<()> {
    let mounts = mountinfo_self()?;
    let Some(parent) = mount_of(&mounts, rootfs).filter(|m| m.shared) else {
        return Ok(());
    };
    mount(
        None::<&str>,
        &parent.mount_point,
        None::<&str>,
        MsFlags::MS_PRIVATE,
        None::<&str>,
    )
    .map_err(|e| {
        Error::sys(
            format!(
                "make {} (the rootfs's parent mount) private",
                parent.mount_point.display()
            ),
            e,
        )
    })
}

/// An exec'd process's terminal: a new pty whose slave becomes stdio and controlling
/// terminal; the master is returned for the engine. The container's mounts are not touched.
pub fn console() -> Result<OwnedFd> {
    terminal(false)
}

/// A new pty: the slave becomes stdio and controlling terminal and, for PID 1 only
/// (`on_console`), is bound onto /dev/console; the master is returned for the engine.
fn terminal(on_console: bool) -> Result<OwnedFd> {
    use nix::pty::{grantpt, posix_openpt, ptsname_r, unlockpt};
    let master = posix_openpt(OFlag::O_RDWR | OFlag::O_NOCTTY | OFlag::O_CLOEXEC)
        .map_err(|e| Error::sys("open /dev/ptmx", e))?;
    grantpt(&master).map_err(|e| Error::sys("grantpt", e))?;
    unlockpt(&master).map_err(|e| Error::sys("unlockpt", e))?;
    let name = ptsname_r(&master).map_err(|e| Error::sys("ptsname", e))?;
    let slave = open(
        name.as_str(),
        OFlag::O_RDWR | OFlag::O_NOCTTY,
        Mode::empty(),
    )
    .map_err(|e| Error::sys(format!("open {name}"), e))?;
    if on_console {
        let console = Path::new("/dev/console");
        if !console.exists() {
            let _ = std::fs::File::create(console);
        }
        let _ = mount(
            Some(name.as_str()),
            console,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        );
    }
    for fd in 0..3 {
        // SAFETY: installs the slave as stdio; fds 0-2 are ours to replace.
        if unsafe { libc::dup2(slave.as_raw_fd(), fd) } < 0 {
            return Err(Error::sys("dup2 pty slave", nix::Error::last()));
        }
    }
    // SAFETY: TIOCSCTTY on our own stdin, which is the pty slave just installed.
    if unsafe { libc::ioctl(0, libc::TIOCSCTTY, 0) } < 0 {
        return Err(Error::sys("TIOCSCTTY", nix::Error::last()));
    }
    let fd: OwnedFd = master.into();
    Ok(fd)
}

/// Hide `path`: /dev/null over a file, an empty readonly tmpfs over a directory.
fn mask(path: &Path) -> Result<()> {
    let md = match std::fs::metadata(path) {
        Ok(md) => md,
        Err(_) => return Ok(()),
    };
    let res = if md.is_dir() {
        mount(
            Some("tmpfs"),
            path,
            Some("tmpfs"),
            MsFlags::MS_RDONLY,
            None::<&str>,
        )
    } else {
        mount(
            Some("/dev/null"),
            path,
            None::<&str>,
            MsFlags::MS_BIND,
            None::<&str>,
        )
    };
    res.map_err(|e| Error::sys(format!("mask {}", path.display()), e))
}

/// Make `path` readonly with a bind mount onto itself, keeping the flags its mount had
/// (nosuid, nodev, noexec, atime flags), as runc does: a bind remount drops what it does not
/// repeat.
fn readonly(path: &Path) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let err = |e| Error::sys(format!("readonly {}", path.display()), e);
    mount(
        Some(path),
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REC,
        None::<&str>,
    )
    .map_err(err)?;
    let kept = statvfs(path).map(|s| kept_flags(s.flags())).map_err(err)?;
    mount(
        None::<&str>,
        path,
        None::<&str>,
        MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY | MsFlags::MS_REC | kept,
        None::<&str>,
    )
    .map_err(err)
}

/// The per-mount flags of a mount (as statvfs reports them) that a remount must repeat.
fn kept_flags(flags: FsFlags) -> MsFlags {
    [
        (FsFlags::ST_NOSUID, MsFlags::MS_NOSUID),
        (FsFlags::ST_NODEV, MsFlags::MS_NODEV),
        (FsFlags::ST_NOEXEC, MsFlags::MS_NOEXEC),
        (FsFlags::ST_NOATIME, MsFlags::MS_NOATIME),
        (FsFlags::ST_NODIRATIME, MsFlags::MS_NODIRATIME),
        (FsFlags::ST_RELATIME, MsFlags::MS_RELATIME),
    ]
    .into_iter()
    .filter(|(st, _)| flags.contains(*st))
    .fold(MsFlags::empty(), |acc, (_, ms)| acc | ms)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remounts_keep_the_mounts_flags() {
        let kept = kept_flags(FsFlags::ST_NOSUID | FsFlags::ST_NOEXEC | FsFlags::ST_RDONLY);
        assert_eq!(kept, MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC);
        assert_eq!(
            kept_flags(FsFlags::ST_NODEV | FsFlags::ST_RELATIME),
            MsFlags::MS_NODEV | MsFlags::MS_RELATIME
        );
    }
}
