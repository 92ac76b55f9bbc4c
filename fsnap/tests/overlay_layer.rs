//! Restoring a section as an overlayfs lower layer (`RestoreOptions::overlay_layer`): whiteouts
//! and opaque directories stay what overlayfs reads them as; any other `trusted.overlay.*`
//! attribute a checkpoint carries (a redirect, metacopy, origin) is dropped, while a plain
//! restore keeps every attribute.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use common::{make_overlay_attributes_tree, require_root, save};

fn xattr(path: &Path, k: &str) -> Option<Vec<u8>> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let key = std::ffi::CString::new(k).unwrap();
    let mut buf = vec![0u8; 256];
    // SAFETY: valid C strings and a buffer of the given length.
    let n = unsafe {
        libc::lgetxattr(
            c.as_ptr(),
            key.as_ptr(),
            buf.as_mut_ptr() as *mut libc::c_void,
            buf.len(),
        )
    };
    (n >= 0).then(|| buf[..n as usize].to_vec())
}

#[test]
fn an_overlay_layer_keeps_whiteouts_and_opaque_dirs_and_drops_other_overlay_attributes() {
    require_root("trusted.* xattrs and whiteouts");
    let t = tempfile::tempdir().unwrap();
    let src = t.path().join("src");
    make_overlay_attributes_tree(&src);
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();

    let layer = t.path().join("layer");
    fsnap::restore(
        &snap,
        &[(0, layer.clone())],
        &fsnap::RestoreOptions {
            overlay_layer: true,
            ..Default::default()
        },
        &fsnap::Progress::default(),
    )
    .unwrap();
    let gone = std::fs::symlink_metadata(layer.join("gone")).unwrap();
    assert!(gone.file_type().is_char_device() && gone.rdev() == 0);
    assert_eq!(
        xattr(&layer.join("opaque"), "trusted.overlay.opaque").as_deref(),
        Some(&b"y"[..])
    );
    assert_eq!(
        xattr(&layer.join("moved"), "trusted.overlay.redirect"),
        None
    );
    assert_eq!(xattr(&layer.join("f"), "trusted.overlay.metacopy"), None);
    assert_eq!(
        xattr(&layer.join("f"), "user.kept").as_deref(),
        Some(&b"1"[..])
    );
    assert_eq!(std::fs::read(layer.join("f")).unwrap(), b"x");

    // A plain restore keeps them all.
    let plain = t.path().join("plain");
    common::restore_one(&snap, 0, &plain).unwrap();
    assert_eq!(
        xattr(&plain.join("moved"), "trusted.overlay.redirect").as_deref(),
        Some(&b"/etc"[..])
    );
}
