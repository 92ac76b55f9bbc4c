//! Mount plumbing shared by the host side and the init helper: parsing `mount -o` style options
//! into flags and data, resolving a path beneath a root without escaping it through symlinks,
//! reading mountinfo, and mounting/unmounting the rootfs mounts a container is built from.

use std::path::{Component, Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};

use crate::config::RootfsMount;
use crate::error::{Error, Result};

/// `mount -o` options split into what mount(2) takes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountOptions {
    /// Flags for the mount itself (MS_RDONLY, MS_NOSUID, MS_BIND, ...).
    pub flags: MsFlags,
    /// Propagation to apply afterwards (MS_PRIVATE, MS_SLAVE, ... possibly with MS_REC).
    pub propagation: MsFlags,
    /// Filesystem-specific data (`mode=755`, `lowerdir=...`), comma-joined.
    pub data: String,
}

impl Default for MountOptions {
    fn default() -> Self {
        MountOptions {
            flags: MsFlags::empty(),
            propagation: MsFlags::empty(),
            data: String::new(),
        }
    }
}

impl MountOptions {
    /// Parse options as runc does: known flags set or clear bits, propagation words are kept
    /// apart, anything else is filesystem data.
    pub fn parse<S: AsRef<str>>(options: &[S]) -> MountOptions {
        let mut out = MountOptions::default();
        let mut data = Vec::new();
        for opt in options {
            let opt = opt.as_ref();
            if let Some(p) = propagation_flag(opt) {
                out.propagation |= p;
                continue;
            }
            match flag(opt) {
                Some((true, f)) => out.flags |= f,
                Some((false, f)) => out.flags &= !f,
                None => data.push(opt),
            }
        }
        out.data = data.join(",");
        out
    }

    /// Whether this is a bind mount.
    pub fn is_bind(&self) -> bool {
        self.flags.contains(MsFlags::MS_BIND)
    }

    /// Flags a bind mount needs a second, remounting call for (bind ignores them at first).
    pub fn remount_flags(&self) -> MsFlags {
        self.flags & !(MsFlags::MS_BIND | MsFlags::MS_REC | MsFlags::MS_REMOUNT)
    }

    fn data(&self) -> Option<&str> {
        (!self.data.is_empty()).then_some(self.data.as_str())
    }
}

/// `(set, flag)` for a known flag word: `set` false means the word clears the flag.
fn flag(opt: &str) -> Option<(bool, MsFlags)> {
    Some(match opt {
        "defaults" => (true, MsFlags::empty()),
        "ro" => (true, MsFlags::MS_RDONLY),
        "rw" => (false, MsFlags::MS_RDONLY),
        "nosuid" => (true, MsFlags::MS_NOSUID),
        "suid" => (false, MsFlags::MS_NOSUID),
        "nodev" => (true, MsFlags::MS_NODEV),
        "dev" => (false, MsFlags::MS_NODEV),
        "noexec" => (true, MsFlags::MS_NOEXEC),
        "exec" => (false, MsFlags::MS_NOEXEC),
        "sync" => (true, MsFlags::MS_SYNCHRONOUS),
        "async" => (false, MsFlags::MS_SYNCHRONOUS),
        "dirsync" => (true, MsFlags::MS_DIRSYNC),
        "remount" => (true, MsFlags::MS_REMOUNT),
        "mand" => (true, MsFlags::MS_MANDLOCK),
        "nomand" => (false, MsFlags::MS_MANDLOCK),
        "atime" => (false, MsFlags::MS_NOATIME),
        "noatime" => (true, MsFlags::MS_NOATIME),
        "diratime" => (false, MsFlags::MS_NODIRATIME),
        "nodiratime" => (true, MsFlags::MS_NODIRATIME),
        "relatime" => (true, MsFlags::MS_RELATIME),
        "norelatime" => (false, MsFlags::MS_RELATIME),
        "strictatime" => (true, MsFlags::MS_STRICTATIME),
        "nostrictatime" => (false, MsFlags::MS_STRICTATIME),
        "bind" => (true, MsFlags::MS_BIND),
        "rbind" => (true, MsFlags::MS_BIND | MsFlags::MS_REC),
        _ => return None,
    })
}

/// The propagation flags of a propagation word (`rshared`, `private`, ...); `None` for others.
pub fn propagation_flag(opt: &str) -> Option<MsFlags> {
    Some(match opt {
        "private" => MsFlags::MS_PRIVATE,
        "rprivate" => MsFlags::MS_PRIVATE | MsFlags::MS_REC,
        "shared" => MsFlags::MS_SHARED,
        "rshared" => MsFlags::MS_SHARED | MsFlags::MS_REC,
        "slave" => MsFlags::MS_SLAVE,
        "rslave" => MsFlags::MS_SLAVE | MsFlags::MS_REC,
        "unbindable" => MsFlags::MS_UNBINDABLE,
        "runbindable" => MsFlags::MS_UNBINDABLE | MsFlags::MS_REC,
        _ => return None,
    })
}

/// Mount `source` on `target` as `fstype` with `opts`: binds are made first and remounted with
/// their flags; propagation is applied last.
pub fn mount_with(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    opts: &MountOptions,
) -> Result<()> {
    let err = |e: nix::Error| Error::Mount {
        target: target.to_path_buf(),
        reason: format!(
            "mount {} ({}): {e}",
            source.map(|s| s.display().to_string()).unwrap_or_default(),
            fstype.unwrap_or("bind")
        ),
    };
    if opts.is_bind() {
        mount(
            source,
            target,
            None::<&str>,
            opts.flags & (MsFlags::MS_BIND | MsFlags::MS_REC),
            None::<&str>,
        )
        .map_err(err)?;
        let extra = opts.remount_flags();
        if !extra.is_empty() {
            mount(
                None::<&str>,
                target,
                None::<&str>,
                extra | MsFlags::MS_BIND | MsFlags::MS_REMOUNT,
                None::<&str>,
            )
            .map_err(err)?;
        }
    } else if fstype == Some("overlay") && opts.data.len() > MAX_MOUNT_DATA {
        overlay_by_parts(target, opts)?;
    } else {
        mount(source, target, fstype, opts.flags, opts.data()).map_err(err)?;
    }
    if !opts.propagation.is_empty() {
        mount(
            None::<&str>,
            target,
            None::<&str>,
            opts.propagation,
            None::<&str>,
        )
        .map_err(err)?;
    }
    Ok(())
}

/// mount(2) takes at most a page of options.
const MAX_MOUNT_DATA: usize = 4000;

/// An overlay whose options exceed a page (an image with many layers): mounted through the new
/// mount API one option at a time, each lower layer appended with `lowerdir+` (Linux 6.8+).
fn overlay_by_parts(target: &Path, opts: &MountOptions) -> Result<()> {
    use crate::fs_context::{self, FsContext};
    let fail = |what: &str, e: std::io::Error| Error::Mount {
        target: target.to_path_buf(),
        reason: format!("overlay ({} bytes of options) {what}: {e}", opts.data.len()),
    };
    let fs = FsContext::open("overlay").map_err(|e| fail("fsopen", e))?;
    for opt in opts.data.split(',').filter(|o| !o.is_empty()) {
        let set = match opt.split_once('=') {
            Some(("lowerdir", dirs)) => dirs
                .split(':')
                .try_for_each(|dir| fs.set_string("lowerdir+", dir)),
            Some((k, v)) => fs.set_string(k, v),
            None => fs.set_flag(opt),
        };
        set.map_err(|e| {
            fail(
                &format!("option {}", opt.split('=').next().unwrap_or(opt)),
                e,
            )
        })?;
    }
    let mut attrs = 0;
    for (flag, attr) in [
        (MsFlags::MS_RDONLY, fs_context::ATTR_RDONLY),
        (MsFlags::MS_NOSUID, fs_context::ATTR_NOSUID),
        (MsFlags::MS_NODEV, fs_context::ATTR_NODEV),
        (MsFlags::MS_NOEXEC, fs_context::ATTR_NOEXEC),
    ] {
        if opts.flags.contains(flag) {
            attrs |= attr;
        }
    }
    let mnt = fs.mount(attrs).map_err(|e| fail("create and fsmount", e))?;
    fs_context::attach(&mnt, target).map_err(|e| fail("move_mount", e))
}

/// Apply the rootfs mounts onto `rootfs` in order. On failure the ones already made are undone.
pub fn mount_rootfs(rootfs: &Path, mounts: &[RootfsMount]) -> Result<()> {
    for (done, m) in mounts.iter().enumerate() {
        let mut opts = MountOptions::parse(&m.options);
        if m.fstype == "bind" || m.fstype == "rbind" {
            opts.flags |= MsFlags::MS_BIND;
        }
        let res = mount_with(
            Some(Path::new(&m.source)),
            rootfs,
            Some(m.fstype.as_str()),
            &opts,
        );
        if let Err(e) = res {
            let _ = unmount_rootfs(rootfs, &mounts[..done]);
            return Err(e);
        }
    }
    Ok(())
}

/// Undo [`mount_rootfs`]: unmount `rootfs` once per mount, newest first. A target that is not
/// mounted any more is fine (cleanup may run twice).
pub fn unmount_rootfs(rootfs: &Path, mounts: &[RootfsMount]) -> Result<()> {
    for _ in mounts {
        unmount(rootfs)?;
    }
    Ok(())
}

/// Unmount `target`, lazily if it is busy; not mounted is not an error.
pub fn unmount(target: &Path) -> Result<()> {
    match umount2(target, MntFlags::empty()) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => Ok(()),
        Err(nix::Error::EBUSY) => umount2(target, MntFlags::MNT_DETACH).map_err(|e| Error::Mount {
            target: target.to_path_buf(),
            reason: format!("unmount: {e}"),
        }),
        Err(e) => Err(Error::Mount {
            target: target.to_path_buf(),
            reason: format!("unmount: {e}"),
        }),
    }
}

/// Resolve `path` as if `root` were `/`: `..` stops at the root and symlinks (absolute or
/// relative) are followed inside it, so the result always lies beneath `root`. Components that
/// do not exist yet are kept as they are.
pub fn resolve_beneath(root: &Path, path: &Path) -> Result<PathBuf> {
    const MAX_LINKS: usize = 255;
    let mut pending: Vec<std::ffi::OsString> = components(path);
    pending.reverse();
    let mut resolved: Vec<std::ffi::OsString> = Vec::new();
    let mut links = 0;
    while let Some(part) = pending.pop() {
        if part == ".." {
            resolved.pop();
            continue;
        }
        let candidate: PathBuf = root.join(resolved.iter().collect::<PathBuf>()).join(&part);
        match std::fs::symlink_metadata(&candidate) {
            Ok(md) if md.file_type().is_symlink() => {
                links += 1;
                if links > MAX_LINKS {
                    return Err(Error::Mount {
                        target: root.join(path.strip_prefix("/").unwrap_or(path)),
                        reason: "too many levels of symbolic links".into(),
                    });
                }
                let dest = std::fs::read_link(&candidate)
                    .map_err(|e| Error::io(format!("readlink {}", candidate.display()), e))?;
                if dest.is_absolute() {
                    resolved.clear();
                }
                let mut more = components(&dest);
                more.reverse();
                pending.extend(more);
            }
            _ => resolved.push(part),
        }
    }
    Ok(root.join(resolved.iter().collect::<PathBuf>()))
}

/// Normal components of `path` (`.` and the root dropped, `..` kept).
fn components(path: &Path) -> Vec<std::ffi::OsString> {
    path.components()
        .filter_map(|c| match c {
            Component::Normal(s) => Some(s.to_os_string()),
            Component::ParentDir => Some("..".into()),
            _ => None,
        })
        .collect()
}

/// One line of /proc/PID/mountinfo, the fields cryo uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Root of the mount within its filesystem.
    pub root: String,
    pub mount_point: PathBuf,
    pub fstype: String,
    pub source: String,
    /// Per-superblock options (for cgroup v1: the controllers).
    pub super_options: String,
    /// Whether the mount is in a shared peer group (optional field `shared:N`).
    pub shared: bool,
}

/// Parse mountinfo text (see proc(5)); malformed lines are skipped.
pub fn parse_mountinfo(text: &str) -> Vec<MountInfo> {
    text.lines()
        .filter_map(|line| {
            let (left, right) = line.split_once(" - ")?;
            let left: Vec<&str> = left.split(' ').collect();
            let right: Vec<&str> = right.split(' ').collect();
            if left.len() < 5 || right.len() < 3 {
                return None;
            }
            Some(MountInfo {
                root: unescape(left[3]),
                mount_point: PathBuf::from(unescape(left[4])),
                fstype: right[0].to_string(),
                source: unescape(right[1]),
                super_options: right[2].to_string(),
                shared: left[5..].iter().any(|f| f.starts_with("shared:")),
            })
        })
        .collect()
}

/// The mount `path` lives on: the mount point that is its longest prefix (`path` itself when it
/// is a mount point).
pub fn mount_of<'a>(mounts: &'a [MountInfo], path: &Path) -> Option<&'a MountInfo> {
    mounts
        .iter()
        .filter(|m| path.starts_with(&m.mount_point))
        .max_by_key(|m| m.mount_point.components().count())
}

/// The mounts of this process's mount namespace.
pub fn mountinfo_self() -> Result<Vec<MountInfo>> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|t| parse_mountinfo(&t))
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))
}

/// Undo mountinfo's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'\\' && i + 3 < bytes.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_split_into_flags_propagation_and_data() {
        let o = MountOptions::parse(&["nosuid", "noexec", "ro", "mode=755", "size=65536k"]);
        assert_eq!(
            o.flags,
            MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC | MsFlags::MS_RDONLY
        );
        assert_eq!(o.data, "mode=755,size=65536k");
        assert!(o.propagation.is_empty());

        let o = MountOptions::parse(&["rbind", "rprivate", "rw"]);
        assert!(o.is_bind());
        assert_eq!(o.flags, MsFlags::MS_BIND | MsFlags::MS_REC);
        assert_eq!(o.propagation, MsFlags::MS_PRIVATE | MsFlags::MS_REC);
        assert!(o.remount_flags().is_empty());
    }

    #[test]
    fn later_words_override_earlier_ones() {
        let o = MountOptions::parse(&["ro", "rw", "nodev", "dev"]);
        assert!(o.flags.is_empty());
    }

    #[test]
    fn overlay_options_are_data() {
        let o = MountOptions::parse(&["index=off", "workdir=/w", "upperdir=/u", "lowerdir=/a:/b"]);
        assert!(o.flags.is_empty());
        assert_eq!(o.data, "index=off,workdir=/w,upperdir=/u,lowerdir=/a:/b");
    }

    #[test]
    fn mountinfo_lines_parse() {
        let text = "36 35 98:0 /mnt1 /mnt\\040x rw,noatime master:1 - ext3 /dev/root rw,errors=continue\n\
                    25 20 0:22 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid shared:9 - cgroup cgroup rw,cpu,cpuacct\n\
                    garbage\n";
        let m = parse_mountinfo(text);
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].mount_point, PathBuf::from("/mnt x"));
        assert_eq!(m[0].root, "/mnt1");
        assert_eq!(m[0].fstype, "ext3");
        assert_eq!(m[1].super_options, "rw,cpu,cpuacct");
        assert!(!m[0].shared && m[1].shared);
        let on = |p: &str| mount_of(&m, Path::new(p)).map(|m| m.mount_point.clone());
        assert_eq!(on("/mnt x/y"), Some(PathBuf::from("/mnt x")));
        assert_eq!(
            on("/sys/fs/cgroup/cpu,cpuacct"),
            Some(PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"))
        );
        assert_eq!(on("/elsewhere"), None);
    }

    #[test]
    fn resolve_beneath_never_leaves_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::os::unix::fs::symlink("/etc", root.join("abs")).unwrap();
        std::os::unix::fs::symlink("../../..", root.join("a/b/up")).unwrap();
        std::os::unix::fs::symlink("b", root.join("a/rel")).unwrap();
        assert_eq!(
            resolve_beneath(root, Path::new("/abs/passwd")).unwrap(),
            root.join("etc/passwd")
        );
        assert_eq!(
            resolve_beneath(root, Path::new("/a/b/up/x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            resolve_beneath(root, Path::new("../../x")).unwrap(),
            root.join("x")
        );
        assert_eq!(
            resolve_beneath(root, Path::new("/a/rel/new")).unwrap(),
            root.join("a/b/new")
        );
    }

    #[test]
    fn an_overlay_with_more_layers_than_a_page_of_options_mounts() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let long = "l".repeat(60);
        let mut lowers = Vec::new();
        for i in 0..100 {
            let d = dir.path().join(format!("{long}-{i:03}"));
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join(format!("layer-{i:03}")), i.to_string()).unwrap();
            lowers.push(d.display().to_string());
        }
        let (upper, work, root) = (
            dir.path().join("u"),
            dir.path().join("w"),
            dir.path().join("r"),
        );
        for d in [&upper, &work, &root] {
            std::fs::create_dir(d).unwrap();
        }
        let mounts = vec![RootfsMount {
            fstype: "overlay".into(),
            source: "overlay".into(),
            options: vec![
                "index=off".into(),
                format!("workdir={}", work.display()),
                format!("upperdir={}", upper.display()),
                format!("lowerdir={}", lowers.join(":")),
            ],
        }];
        assert!(mounts[0].options[3].len() > MAX_MOUNT_DATA);
        mount_rootfs(&root, &mounts).unwrap();
        let first = std::fs::read_to_string(root.join("layer-000"));
        let last = std::fs::read_to_string(root.join("layer-099"));
        unmount_rootfs(&root, &mounts).unwrap();
        assert_eq!(first.unwrap(), "0");
        assert_eq!(last.unwrap(), "99");
        assert!(!root.join("layer-000").exists(), "still mounted");
    }

    #[test]
    fn symlink_loops_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("loop", dir.path().join("loop")).unwrap();
        assert!(resolve_beneath(dir.path(), Path::new("/loop/x")).is_err());
    }
}
