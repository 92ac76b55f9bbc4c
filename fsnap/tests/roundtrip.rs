//! Save → restore round trips compared entry by entry (metadata, xattrs, content, holes),
//! including an overlayfs upper layer with whiteouts and opaque directories re-mounted after
//! restore; GNU tar interoperability both ways; the destination rules of save.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[test]
fn every_kind_of_entry_round_trips() {
    require_root("device nodes, owners, trusted.* xattrs");
    let t = tmp();
    let src = t.path().join("src");
    make_tree(&src);
    let snap = t.path().join("snap");
    let m = save(&[&src], &snap).unwrap();
    let s = &m.sections[0];
    assert!(s.logical_bytes > 1 << 30, "logical {}", s.logical_bytes);
    assert!(
        s.stored_bytes < 4 << 20,
        "the sparse file's holes were stored: {}",
        s.stored_bytes
    );
    fsnap::verify(&snap).unwrap();
    let out = t.path().join("out");
    restore_with_devices(&snap, &out).unwrap();
    assert_same(&src, &out);
}

#[test]
fn the_sparse_file_costs_only_its_data() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let f = std::fs::File::create(src.join("huge")).unwrap();
    f.set_len(10 << 30).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&[1u8; 1 << 20], 5 << 30).unwrap();
    let snap = t.path().join("snap");
    let m = save(&[&src], &snap).unwrap();
    let data = std::fs::metadata(snap.join(&m.data_file)).unwrap().len();
    assert!(
        data <= (1 << 20) + 64 * 1024,
        "a checkpoint of 1 MiB of data is {data} bytes"
    );
    let out = t.path().join("out");
    restore_one(&snap, 0, &out).unwrap();
    assert_same(&src, &out);
}

#[test]
fn several_sections_save_and_restore_in_parallel() {
    require_root("device nodes, owners, trusted.* xattrs");
    let t = tmp();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make_tree(&a);
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("only-in-b"), b"b").unwrap();
    let snap = t.path().join("snap");
    let m = save(&[&a, &b], &snap).unwrap();
    assert_eq!(m.sections.len(), 2);
    assert!(m.sections[1].tar_start >= m.sections[0].tar_end);
    let (ra, rb) = (t.path().join("ra"), t.path().join("rb"));
    fsnap::restore(
        &snap,
        &[(0, ra.clone()), (1, rb.clone())],
        &fsnap::RestoreOptions {
            allow_devices: true,
            ..Default::default()
        },
        &fsnap::Progress::default(),
    )
    .unwrap();
    assert_same(&a, &ra);
    assert_same(&b, &rb);
}

#[test]
fn direct_io_saves_the_same_checkpoint() {
    require_root("device nodes, owners, trusted.* xattrs");
    let t = tmp();
    let src = t.path().join("src");
    make_tree(&src);
    let snap = t.path().join("snap");
    let sources = vec![source(&src, fsnap::ResourceKind::PodVolume)];
    fsnap::save(
        &sources,
        &snap,
        &fsnap::SaveOptions { direct: true },
        &fsnap::Progress::default(),
    )
    .unwrap();
    fsnap::verify(&snap).unwrap();
    let out = t.path().join("out");
    restore_with_devices(&snap, &out).unwrap();
    assert_same(&src, &out);
}

/// `dir/src` holding one file `f` ("1"), saved as `dir/snap`.
fn one_file_checkpoint(dir: &Path) -> (PathBuf, PathBuf) {
    let src = dir.join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"1").unwrap();
    let snap = dir.join("snap");
    save(&[&src], &snap).unwrap();
    (src, snap)
}

#[test]
fn save_refuses_a_directory_holding_a_checkpoint() {
    let t = tmp();
    let (src, snap) = one_file_checkpoint(t.path());
    let before = listing(&snap);
    let e = save(&[&src], &snap).unwrap_err().to_string();
    assert!(e.contains("already holds a filesystem checkpoint"), "{e}");
    assert_eq!(listing(&snap), before);
    fsnap::verify(&snap).unwrap();
}

#[test]
fn a_failed_save_leaves_nothing() {
    let t = tmp();
    let snap = t.path().join("snap");
    let e = save(&[&t.path().join("missing")], &snap)
        .unwrap_err()
        .to_string();
    assert!(e.contains("missing"), "{e}");
    assert!(!snap.exists());
    let left: Vec<_> = std::fs::read_dir(t.path()).unwrap().collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn restore_refuses_a_non_empty_target() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();
    let out = t.path().join("out");
    std::fs::create_dir(&out).unwrap();
    std::fs::write(out.join("mine"), b"keep").unwrap();
    let e = restore_one(&snap, 0, &out).unwrap_err().to_string();
    assert!(e.contains("not empty"), "{e}");
    assert_eq!(std::fs::read(out.join("mine")).unwrap(), b"keep");
}

#[test]
fn every_section_restores_under_a_target_root_creating_its_parents() {
    let t = tmp();
    let p = |s: &str| t.path().join(s);
    for (dir, file) in [("upper", "u"), ("vol", "v"), ("plain", "p")] {
        std::fs::create_dir(p(dir)).unwrap();
        std::fs::write(p(dir).join(file), dir).unwrap();
    }
    let id = |container: &str, path: &str, kind| fsnap::ResourceId {
        container: container.into(),
        path: path.into(),
        kind,
    };
    let sources = [
        (id("c1", "/", fsnap::ResourceKind::RootfsUpper), "upper"),
        (
            id("c2", "/data/cache", fsnap::ResourceKind::PodVolume),
            "vol",
        ),
        (id("", "/srv/plain", fsnap::ResourceKind::Tmpfs), "plain"),
    ]
    .map(|(resource, dir)| fsnap::Source {
        resource,
        dir: p(dir),
    });
    let snap = p("snap");
    fsnap::save(
        &sources,
        &snap,
        &fsnap::SaveOptions::default(),
        &fsnap::Progress::default(),
    )
    .unwrap();
    let root = p("root/deeper");
    let m = fsnap::Manifest::load(&snap).unwrap();
    let targets = fsnap::targets_under(&m, &root);
    assert_eq!(
        targets,
        vec![
            (0, root.join("c1")),
            (1, root.join("c2/data/cache")),
            (2, root.join("srv/plain")),
        ]
    );
    fsnap::restore(
        &snap,
        &targets,
        &fsnap::RestoreOptions::default(),
        &fsnap::Progress::default(),
    )
    .unwrap();
    assert_same(&p("upper"), &root.join("c1"));
    assert_same(&p("vol"), &root.join("c2/data/cache"));
    assert_same(&p("plain"), &root.join("srv/plain"));
}

#[test]
fn a_failed_restore_removes_the_parents_it_created() {
    let t = tmp();
    let (_, snap) = one_file_checkpoint(t.path());
    let data = snap.join(fsnap::manifest::DATA_FILE);
    let mut bytes = std::fs::read(&data).unwrap();
    let at = bytes.iter().rposition(|&b| b == b'1').unwrap();
    bytes[at] = b'2';
    std::fs::write(&data, &bytes).unwrap();
    let e = restore_one(&snap, 0, &t.path().join("new/parents/target"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("checksum"), "{e}");
    assert!(
        !t.path().join("new").exists(),
        "created parents left behind"
    );
}

/// A mounted overlay, unmounted (lazily if busy) when dropped.
struct Overlay(PathBuf);

impl Overlay {
    fn mount(lower: &Path, upper: &Path, work: &Path, merged: &Path) -> Overlay {
        for d in [upper, work, merged] {
            std::fs::create_dir_all(d).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .expect("mount overlay");
        Overlay(merged.to_path_buf())
    }
}

impl Drop for Overlay {
    fn drop(&mut self) {
        let _ = nix::mount::umount2(&self.0, nix::mount::MntFlags::MNT_DETACH);
    }
}

#[test]
fn an_overlay_upper_layer_means_the_same_after_restore() {
    require_root("overlay mounts, trusted.* xattrs");
    let t = tmp();
    let p = |s: &str| t.path().join(s);
    // The image layer.
    std::fs::create_dir_all(p("lower/etc/conf.d")).unwrap();
    std::fs::create_dir_all(p("lower/var/cache/pkg")).unwrap();
    std::fs::write(p("lower/etc/hosts"), b"127.0.0.1 localhost\n").unwrap();
    std::fs::write(p("lower/etc/conf.d/a"), b"a").unwrap();
    std::fs::write(p("lower/var/cache/pkg/old"), b"old").unwrap();
    std::fs::write(p("lower/remove-me"), b"bye").unwrap();
    {
        // The container's changes, through a real overlay.
        let _m = Overlay::mount(&p("lower"), &p("upper"), &p("work"), &p("merged"));
        let m = |s: &str| p("merged").join(s);
        std::fs::remove_file(m("remove-me")).unwrap(); // a whiteout
        std::fs::remove_dir_all(m("var/cache/pkg")).unwrap(); // then recreated: opaque
        std::fs::create_dir(m("var/cache/pkg")).unwrap();
        std::fs::write(m("var/cache/pkg/new"), b"new").unwrap();
        std::fs::write(m("etc/hosts"), b"10.0.0.1 changed\n").unwrap();
        std::fs::write(m("created"), b"fresh").unwrap();
        std::fs::remove_file(m("etc/conf.d/a")).unwrap();
    }
    let snap = p("snap");
    fsnap::save(
        &[source(&p("upper"), fsnap::ResourceKind::RootfsUpper)],
        &snap,
        &fsnap::SaveOptions::default(),
        &fsnap::Progress::default(),
    )
    .unwrap();
    // Restore without permission for devices: whiteouts still come back.
    restore_one(&snap, 0, &p("upper2")).unwrap();
    assert_same(&p("upper"), &p("upper2"));
    let original = Overlay::mount(&p("lower"), &p("upper"), &p("work"), &p("merged"));
    let restored = Overlay::mount(&p("lower"), &p("upper2"), &p("work2"), &p("merged2"));
    let a = listing(&p("merged"));
    let b = listing(&p("merged2"));
    drop((original, restored));
    assert_eq!(a, b, "the merged views differ");
    assert!(a.iter().any(|l| l.starts_with("created ")));
    assert!(!a.iter().any(|l| l.starts_with("remove-me ")));
    assert!(!a.iter().any(|l| l.starts_with("var/cache/pkg/old ")));
    assert!(!a.iter().any(|l| l.starts_with("etc/conf.d/a ")));
}

/// The bytes of a section as its own file.
fn extract_section(snap: &Path, m: &fsnap::Manifest, i: usize, to: &Path) {
    let s = &m.sections[i];
    let data = std::fs::read(snap.join(&m.data_file)).unwrap();
    std::fs::write(to, &data[s.tar_start as usize..s.tar_end as usize]).unwrap();
}

fn tar(args: &[&str]) {
    let out = Command::new("tar").args(args).output().unwrap();
    assert!(
        out.status.success(),
        "tar {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn gnu_tar_extracts_each_section() {
    require_root("device nodes, owners, trusted.* xattrs");
    let t = tmp();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    make_tree(&a);
    std::fs::create_dir(&b).unwrap();
    std::fs::write(b.join("x"), b"x").unwrap();
    let snap = t.path().join("snap");
    let m = save(&[&a, &b], &snap).unwrap();
    for (i, src) in [&a, &b].into_iter().enumerate() {
        let tarfile = t.path().join(format!("s{i}.tar"));
        extract_section(&snap, &m, i, &tarfile);
        let out = t.path().join(format!("gnu{i}"));
        std::fs::create_dir(&out).unwrap();
        tar(&[
            "-x",
            "--xattrs",
            "--xattrs-include=*",
            "-f",
            tarfile.to_str().unwrap(),
            "-C",
            out.to_str().unwrap(),
        ]);
        assert_same(src, &out);
    }
}

#[test]
fn a_section_made_by_gnu_tar_restores() {
    require_root("restored owners");
    let t = tmp();
    let src = t.path().join("src");
    make_tree(&src);
    let tarfile = t.path().join("gnu.tar");
    tar(&[
        "--format=pax",
        "--xattrs",
        "--xattrs-include=*",
        "--sparse",
        "--sparse-version=1.0",
        "-C",
        src.to_str().unwrap(),
        "-cf",
        tarfile.to_str().unwrap(),
        ".",
    ]);
    let bytes = std::fs::read(&tarfile).unwrap();
    let listed = Command::new("tar")
        .args(["-tf", tarfile.to_str().unwrap()])
        .output()
        .unwrap();
    let files = String::from_utf8_lossy(&listed.stdout).lines().count() as u64;
    let snap = t.path().join("snap");
    std::fs::create_dir(&snap).unwrap();
    std::fs::write(snap.join(fsnap::manifest::DATA_FILE), &bytes).unwrap();
    let m = fsnap::Manifest::new(
        vec![fsnap::Section {
            resource: source(&src, fsnap::ResourceKind::RootfsUpper).resource,
            tar_start: 0,
            tar_end: bytes.len() as u64,
            checksum: fsnap::manifest::checksum_text(&blake3::hash(&bytes)),
            files,
            logical_bytes: 0,
            stored_bytes: 0,
            layer: 0,
        }],
        bytes.len() as u64,
    );
    m.write(&snap).unwrap();
    let out = t.path().join("out");
    restore_with_devices(&snap, &out).unwrap();
    assert_same(&src, &out);
}

#[test]
fn save_refuses_a_destination_inside_a_source() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"1").unwrap();
    for out in [src.join("snap"), src.join("a/../snap"), src.clone()] {
        let e = save(&[&src], &out).unwrap_err().to_string();
        assert!(e.contains("inside"), "{}: {e}", out.display());
        assert_eq!(
            listing(&src).len(),
            2,
            "{}: the source changed",
            out.display()
        );
    }
}

#[test]
fn a_target_written_during_the_restore_is_not_merged_into() {
    use std::sync::atomic::Ordering;
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Enough data that the restore is still extracting when the intruder writes.
    let big = vec![0x5au8; 64 << 20];
    std::fs::write(src.join("big"), big).unwrap();
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();
    let target = t.path().join("target");
    std::fs::create_dir(&target).unwrap();
    let progress = fsnap::Progress::default();
    let result = std::thread::scope(|s| {
        s.spawn(|| {
            while progress.bytes.load(Ordering::Relaxed) == 0 {
                std::thread::yield_now();
            }
            std::fs::write(target.join("intruder"), b"mine").unwrap();
        });
        fsnap::restore(
            &snap,
            &[(0, target.clone())],
            &fsnap::RestoreOptions::default(),
            &progress,
        )
    });
    let e = result
        .expect_err("restored into a target written meanwhile")
        .to_string();
    assert!(e.contains("written to during the restore"), "{e}");
    let left: Vec<_> = std::fs::read_dir(&target)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, vec![std::ffi::OsString::from("intruder")]);
    let strays: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("fsnap-restore"))
        .collect();
    assert!(strays.is_empty(), "work directories left: {strays:?}");
}

#[test]
fn a_cancelled_restore_stops_and_leaves_nothing() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir_all(src.join("d")).unwrap();
    std::fs::write(src.join("d/f"), b"x").unwrap();
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();
    let progress = fsnap::Progress::default();
    progress.request_cancel();
    let target = t.path().join("deep/target");
    let e = fsnap::restore(
        &snap,
        &[(0, target.clone())],
        &fsnap::RestoreOptions::default(),
        &progress,
    )
    .unwrap_err();
    assert!(matches!(e, fsnap::Error::Cancelled), "{e}");
    let left: Vec<_> = std::fs::read_dir(t.path())
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!t.path().join("deep").exists());
}
