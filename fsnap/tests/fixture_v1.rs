//! A filesystem checkpoint written by an older build (format 1.0, committed under `tests/fixtures/v1`)
//! still verifies and restores, entry by entry as it was made.

mod common;

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

#[test]
fn the_version_1_fixture_restores() {
    common::require_root("a whiteout device node, trusted.* xattrs");
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/v1");
    let m = fsnap::verify(&fixture).unwrap();
    assert_eq!(m.version, "1.0");
    assert_eq!(m.sections[0].resource.container, "fixture");
    let t = tempfile::tempdir().unwrap();
    let out = t.path().join("out");
    fsnap::restore(
        &fixture,
        &[(0, out.clone())],
        &fsnap::RestoreOptions::default(),
        &fsnap::Progress::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(out.join("etc/motd")).unwrap(),
        b"fixture v1\n"
    );
    let motd = std::fs::metadata(out.join("etc/motd")).unwrap();
    let hard = std::fs::metadata(out.join("etc/motd-hard")).unwrap();
    assert_eq!(motd.ino(), hard.ino());
    assert_eq!(motd.mtime(), 1767225600);
    assert_eq!(motd.mtime_nsec(), 500_000_000);
    assert_eq!(
        std::fs::read_link(out.join("motd-link")).unwrap(),
        Path::new("etc/motd")
    );
    let wh = std::fs::symlink_metadata(out.join("whiteout")).unwrap();
    assert!(wh.file_type().is_char_device() && wh.rdev() == 0);
    let xattrs = fsnap::xattr::xattrs(&out.join("opaque")).unwrap();
    assert_eq!(
        xattrs,
        vec![("trusted.overlay.opaque".to_string(), b"y".to_vec())]
    );
    let sparse = std::fs::read(out.join("sparse")).unwrap();
    assert_eq!(sparse.len(), 1 << 20);
    assert_eq!(&sparse[524288..524291], b"end");
    assert!(std::fs::metadata(out.join("sparse")).unwrap().blocks() * 512 < 1 << 20);
    // Saved before block hashes: its index is built in one full pass, and reads as before.
    assert!(!fixture.join(fsnap::blocks_file::BLOCKS_FILE).exists());
    let ix =
        fsnap::SectionIndex::build(&fixture, &m, 0, &fsnap::RestoreOptions::default()).unwrap();
    let s = &m.sections[0];
    assert_eq!(ix.bytes_read_to_build(), s.tar_end - s.tar_start);
    let motd = ["etc", "motd"]
        .iter()
        .try_fold(fsnap::index::ROOT, |id, n| ix.lookup(id, n))
        .unwrap();
    let mut buf = [0u8; 64];
    let n = ix.read_at(motd, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], b"fixture v1\n");
}
