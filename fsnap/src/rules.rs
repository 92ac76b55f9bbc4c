//! The rules every reader that materialises a section's tree applies to its entries — the
//! extraction onto disk ([`crate::extract`]) and the in-memory index ([`crate::index`]) — so
//! that a section one of them refuses the other refuses too, with the same sentence. (Path
//! syntax — no `..`, no absolute names, no NUL — is checked for every reader in
//! [`crate::section::read_section`].)

use crate::extract::RestoreOptions;
use crate::tar::{Entry, Kind};

pub(crate) type Res<T> = std::result::Result<T, String>;

/// The overlayfs attribute an overlay layer keeps (with the value `y`).
pub(crate) const OPAQUE: &str = "trusted.overlay.opaque";

/// `e` with the `trusted.overlay.*` attributes an overlay layer does not keep removed (see
/// [`RestoreOptions::overlay_layer`]); `None` when there are none to remove.
pub(crate) fn overlay_layer_entry(e: &Entry) -> Option<Entry> {
    let keep = |(k, v): &(String, Vec<u8>)| {
        !k.starts_with("trusted.overlay.") || (k == OPAQUE && v.as_slice() == b"y")
    };
    if e.xattrs.iter().all(keep) {
        return None;
    }
    let mut kept = e.clone();
    kept.xattrs.retain(keep);
    Some(kept)
}

/// The entry as the options make it: `Some` when it differs from `e`.
pub(crate) fn filtered(e: &Entry, opts: &RestoreOptions) -> Option<Entry> {
    opts.overlay_layer.then(|| overlay_layer_entry(e)).flatten()
}

/// The section's root (`.`) must be a directory.
pub(crate) fn check_root(e: &Entry) -> Res<()> {
    match e.kind {
        Kind::Dir => Ok(()),
        _ => Err("the section's root must be a directory".into()),
    }
}

/// Names go to the kernel as C strings: one with a NUL byte is refused, not truncated.
pub(crate) fn check_name_bytes(s: &str) -> Res<()> {
    if s.contains('\0') {
        return Err(format!("{s:?} contains a NUL byte"));
    }
    Ok(())
}

/// Character and block devices other than whiteouts (0/0 character devices) need
/// [`RestoreOptions::allow_devices`]; FIFOs are always fine.
pub(crate) fn check_device(e: &Entry, opts: &RestoreOptions) -> Res<()> {
    let (major, minor) = match e.kind {
        Kind::Char { major, minor } | Kind::Block { major, minor } => (major, minor),
        _ => return Ok(()),
    };
    if !e.is_whiteout() && !opts.allow_devices {
        return Err(format!(
            "device node {major}:{minor} refused (allow device nodes to restore it)"
        ));
    }
    Ok(())
}

/// An entry beneath `dir`, which is a symlink: refused (the tree must be a tree, and a symlink
/// may lead anywhere).
pub(crate) fn beneath_symlink(dir: &str) -> String {
    format!("{dir:?} is a symlink: an entry beneath it could lead outside the target; refused")
}

/// An entry beneath `dir`, which is neither a directory nor a symlink.
pub(crate) fn beneath_non_dir(dir: &str) -> String {
    format!("{dir:?} is not a directory")
}

/// A later entry replaces an earlier one of the same name, as tar does, except that a
/// directory is never replaced by, nor replaces, anything but a directory (two directory
/// entries of one name are one directory, with the later entry's metadata).
pub(crate) fn check_replace(old_is_dir: bool, new_is_dir: bool) -> Res<()> {
    match (old_is_dir, new_is_dir) {
        (true, false) => Err("replaces a directory of the same name; refused".into()),
        (false, true) => {
            Err("a directory replacing a non-directory of the same name; refused".into())
        }
        _ => Ok(()),
    }
}

/// A hard link whose target is no entry (yet): links name earlier entries only.
pub(crate) fn link_target_missing(target: &str) -> String {
    format!("hard link to {target:?}: no such earlier entry")
}

/// A hard link to a directory.
pub(crate) fn link_target_dir(target: &str) -> String {
    format!("hard link to {target:?}: a directory cannot be hard-linked")
}
