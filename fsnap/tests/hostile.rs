//! Hostile and broken filesystem checkpoints: hand-made tars with every escape (`..`, absolute names,
//! symlink and hard-link escapes, device nodes), truncated and flipped data, wrong offsets,
//! manifests with unknown, missing or impossible fields, a newer format; and a deterministic
//! mutation run (which the in-place index judges exactly as the extraction does). Each is refused with an error naming the cause, nothing is written outside the
//! target, and the target is left as it was.

mod common;

use std::path::{Path, PathBuf};

use common::*;

/// A test area: `snap` (the checkpoint), `target` (where restores go), `outside` (must never
/// change).
struct Area {
    dir: tempfile::TempDir,
}

impl Area {
    fn new() -> Area {
        let dir = tempfile::Builder::new()
            .prefix("fsnap-hostile-")
            .tempdir_in("/var/tmp")
            .unwrap();
        std::fs::create_dir(dir.path().join("outside")).unwrap();
        std::fs::write(dir.path().join("outside/keep"), b"untouched").unwrap();
        Area { dir }
    }
    fn p(&self, s: &str) -> PathBuf {
        self.dir.path().join(s)
    }

    /// A checkpoint whose only section is `tar` (see [`checkpoint_of_tar`]).
    fn checkpoint_of(&self, tar: &[u8], files: u64) -> PathBuf {
        let snap = self.p("snap");
        checkpoint_of_tar(&snap, tar, files);
        snap
    }

    /// Restore must fail with a message containing `needle`, and leave no trace.
    fn refused(&self, snap: &Path, needle: &str) {
        let target = self.p("target");
        let e = restore_one(snap, 0, &target)
            .expect_err("a hostile checkpoint was restored")
            .to_string();
        assert!(
            e.contains(needle),
            "error {e:?} does not mention {needle:?}"
        );
        self.assert_untouched();
    }

    fn assert_untouched(&self) {
        assert!(!self.p("target").exists(), "the target was created");
        assert_eq!(
            std::fs::read_dir(self.p("outside")).unwrap().count(),
            1,
            "something was written outside"
        );
        assert_eq!(std::fs::read(self.p("outside/keep")).unwrap(), b"untouched");
        let strays: Vec<_> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().contains("fsnap-restore"))
            .collect();
        assert!(strays.is_empty(), "work directories left: {strays:?}");
        assert!(!Path::new("/var/tmp/evil").exists() && !Path::new("/evil").exists());
    }
}

#[test]
fn parent_components_are_refused() {
    for name in ["../evil", "a/../../evil", "../../../../../../var/tmp/evil"] {
        let a = Area::new();
        let (t, n) = tar(&[file(name, b"x")]);
        a.refused(&a.checkpoint_of(&t, n), "..");
    }
}

#[test]
fn absolute_names_are_refused() {
    let a = Area::new();
    let (t, n) = tar(&[file("/evil", b"x")]);
    a.refused(&a.checkpoint_of(&t, n), "absolute");
}

#[test]
fn writing_through_a_symlink_that_leaves_is_refused() {
    require_root("restored owners");
    let a = Area::new();
    let outside = a.p("outside");
    let link = outside.to_str().unwrap();
    let (t, n) = tar(&[
        (header("abs", b'2', 0, link, (0, 0)), b""),
        file("abs/planted", b"x"),
    ]);
    a.refused(&a.checkpoint_of(&t, n), "outside the target");
    let a = Area::new();
    let (t, n) = tar(&[
        (header("up", b'2', 0, "../outside", (0, 0)), b""),
        file("up/planted", b"x"),
    ]);
    a.refused(&a.checkpoint_of(&t, n), "outside the target");
}

#[test]
fn hard_links_that_leave_are_refused() {
    require_root("restored owners");
    let a = Area::new();
    let (t, n) = tar(&[(header("h", b'1', 0, "../outside/keep", (0, 0)), b"")]);
    a.refused(&a.checkpoint_of(&t, n), "..");
    // Through a symlink to the outside.
    let a = Area::new();
    let link = a.p("outside");
    let (t, n) = tar(&[
        (header("l", b'2', 0, link.to_str().unwrap(), (0, 0)), b""),
        (header("h", b'1', 0, "l/keep", (0, 0)), b""),
    ]);
    a.refused(&a.checkpoint_of(&t, n), "outside the target");
    let a = Area::new();
    let (t, n) = tar(&[(header("h", b'1', 0, "/etc/passwd", (0, 0)), b"")]);
    a.refused(&a.checkpoint_of(&t, n), "absolute");
}

#[test]
fn device_nodes_need_permission_but_whiteouts_do_not() {
    require_root("device nodes");
    let a = Area::new();
    let (t, n) = tar(&[(header("mem", b'3', 0, "", (1, 1)), b"")]);
    let snap = a.checkpoint_of(&t, n);
    a.refused(&snap, "device node 1:1 refused");
    restore_with_devices(&snap, &a.p("target")).unwrap();
    let a = Area::new();
    let (t, n) = tar(&[(header("wh", b'3', 0, "", (0, 0)), b"")]);
    restore_one(&a.checkpoint_of(&t, n), 0, &a.p("target")).unwrap();
}

/// A real checkpoint of a small tree.
fn real_checkpoint(a: &Area) -> PathBuf {
    let src = a.p("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("a"), vec![b'a'; 20000]).unwrap();
    std::fs::write(src.join("b"), b"bbb").unwrap();
    let snap = a.p("snap");
    save(&[&src], &snap).unwrap();
    snap
}

fn data_path(snap: &Path) -> PathBuf {
    snap.join(fsnap::manifest::DATA_FILE)
}

fn edit_manifest(snap: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let path = snap.join(fsnap::manifest::MANIFEST_FILE);
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
}

#[test]
fn a_truncated_data_file_is_refused() {
    let a = Area::new();
    let snap = real_checkpoint(&a);
    let len = std::fs::metadata(data_path(&snap)).unwrap().len();
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(data_path(&snap))
        .unwrap();
    f.set_len(len - 1000).unwrap();
    a.refused(&snap, "truncated");
    // Even with the manifest edited to match, the section no longer fits.
    edit_manifest(&snap, |m| m["data_size"] = (len - 1000).into());
    a.refused(&snap, "beyond the data file");
}

#[test]
fn a_flipped_byte_is_refused_naming_the_section() {
    for at in [700u64, 5000, 300] {
        let a = Area::new();
        let snap = real_checkpoint(&a);
        let mut data = std::fs::read(data_path(&snap)).unwrap();
        data[at as usize] ^= 0x20;
        std::fs::write(data_path(&snap), &data).unwrap();
        a.refused(&snap, "section 0");
        let e = fsnap::verify(&snap).unwrap_err().to_string();
        assert!(e.contains("section 0"), "{e}");
    }
}

#[test]
fn an_existing_empty_target_is_left_as_it_was() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    // The last content byte: the whole section extracts before the checksum disagrees.
    let a = Area::new();
    let snap = real_checkpoint(&a);
    let mut data = std::fs::read(data_path(&snap)).unwrap();
    let at = data.iter().rposition(|&b| b == b'b').unwrap();
    data[at] = b'x';
    std::fs::write(data_path(&snap), &data).unwrap();
    let target = a.p("target");
    std::fs::create_dir(&target).unwrap();
    std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o750)).unwrap();
    let before = std::fs::metadata(&target).unwrap();
    let e = restore_one(&snap, 0, &target).unwrap_err().to_string();
    assert!(e.contains("section 0"), "{e}");
    let after = std::fs::metadata(&target).unwrap();
    assert_eq!(
        std::fs::read_dir(&target).unwrap().count(),
        0,
        "target written"
    );
    assert_eq!(
        (
            before.ino(),
            before.mode(),
            before.mtime(),
            before.mtime_nsec()
        ),
        (after.ino(), after.mode(), after.mtime(), after.mtime_nsec())
    );
    std::fs::remove_dir(&target).unwrap();
    a.assert_untouched();
}

#[test]
fn wrong_offsets_are_refused() {
    let a = Area::new();
    let snap = real_checkpoint(&a);
    edit_manifest(&snap, |m| {
        let s = &mut m["sections"][0];
        s["tar_start"] = 512.into();
    });
    a.refused(&snap, "section 0");
    let a = Area::new();
    let snap = real_checkpoint(&a);
    edit_manifest(&snap, |m| m["sections"][0]["tar_end"] = 1000.into());
    a.refused(&snap, "tar blocks");
}

#[test]
fn bad_manifests_are_refused_by_name() {
    type Edit = Box<dyn Fn(&mut serde_json::Value)>;
    let cases: Vec<(&str, Edit)> = vec![
        (
            "unknown field",
            Box::new(|m| m["sections"][0]["owner"] = "me".into()),
        ),
        (
            "missing field",
            Box::new(|m| {
                m.as_object_mut().unwrap().remove("data_size");
            }),
        ),
        (
            "huge",
            Box::new(|m| m["sections"][0]["tar_end"] = serde_json::json!(1e40)),
        ),
        (
            "files",
            Box::new(|m| m["sections"][0]["files"] = serde_json::json!(u64::MAX)),
        ),
        ("newer", Box::new(|m| m["version"] = "3.1".into())),
        ("format", Box::new(|m| m["format"] = "tarball".into())),
    ];
    for (what, edit) in cases {
        let a = Area::new();
        let snap = real_checkpoint(&a);
        edit_manifest(&snap, edit);
        let e = restore_one(&snap, 0, &a.p("target"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("manifest") || e.contains("newer"), "{what}: {e}");
        a.assert_untouched();
    }
}

#[test]
fn mutated_checkpoints_never_escape_or_panic() {
    // A fixed-seed run of random corruptions (the fuzz target explores further).
    let mut seed = 0x9E3779B97F4A7C15u64;
    let mut rand = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let a = Area::new();
    let pristine_dir = real_checkpoint(&a);
    let data = std::fs::read(data_path(&pristine_dir)).unwrap();
    let manifest = std::fs::read(pristine_dir.join(fsnap::manifest::MANIFEST_FILE)).unwrap();
    let mut refused = 0;
    for _ in 0..300 {
        let mut d = data.clone();
        let mut m = manifest.clone();
        match rand() % 4 {
            0 => {
                let i = (rand() % d.len() as u64) as usize;
                d[i] ^= 1 << (rand() % 8);
            }
            1 => d.truncate((rand() % d.len() as u64) as usize),
            2 => {
                let i = (rand() % m.len() as u64) as usize;
                m[i] = (rand() % 256) as u8;
            }
            _ => {
                for _ in 0..8 {
                    let i = (rand() % d.len() as u64) as usize;
                    d[i] = (rand() % 256) as u8;
                }
            }
        }
        std::fs::write(data_path(&pristine_dir), &d).unwrap();
        std::fs::write(pristine_dir.join(fsnap::manifest::MANIFEST_FILE), &m).unwrap();
        let target = a.p("target");
        let restored = restore_one(&pristine_dir, 0, &target);
        // The index (for a manifest that loads) judges it as the extraction did: in one full
        // pass (no block hashes) with the very same error; from the block hashes, refused at
        // its build or when a file's data is read — never served.
        if let Ok(m) = fsnap::Manifest::load(&pristine_dir) {
            let on_read = fsnap::RestoreOptions {
                verify_data_on_read: true,
                ..Default::default()
            };
            let lazy = fsnap::SectionIndex::build(&pristine_dir, &m, 0, &on_read)
                .map_err(|e| e.to_string())
                .and_then(|ix| read_every_file(&ix));
            assert_eq!(
                lazy.is_ok(),
                restored.is_ok(),
                "the index from block hashes and the extraction disagree: {lazy:?}, {restored:?}"
            );
            if let Err(e) = lazy {
                assert!(e.contains("section 0"), "{e}");
            }
            let blocks = pristine_dir.join(fsnap::blocks_file::BLOCKS_FILE);
            let aside = a.p("blocks-aside");
            std::fs::rename(&blocks, &aside).unwrap();
            let index = fsnap::SectionIndex::build(&pristine_dir, &m, 0, &Default::default());
            std::fs::rename(&aside, &blocks).unwrap();
            assert_eq!(
                index.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                restored.as_ref().map(|_| ()).map_err(|e| e.to_string()),
                "the index and the extraction disagree"
            );
        }
        match restored {
            Ok(_) => {
                std::fs::remove_dir_all(&target).unwrap();
            }
            Err(_) => {
                refused += 1;
                a.assert_untouched();
            }
        }
    }
    assert!(
        refused > 250,
        "only {refused} of 300 corruptions were noticed"
    );
}

/// Read every regular file of `ix` whole; the first refusal.
fn read_every_file(ix: &fsnap::SectionIndex) -> Result<(), String> {
    for id in 1..=ix.len() as u64 {
        let node = ix.node(id).unwrap();
        if node.entry.kind == fsnap::tar::Kind::File {
            let mut buf = vec![0u8; node.entry.size as usize];
            ix.read_at(id, 0, &mut buf).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Every reader of a checkpoint: inspect (the manifest alone), verify, restore.
fn every_reader(a: &Area, snap: &Path) -> Vec<(&'static str, String)> {
    vec![
        (
            "load",
            fsnap::Manifest::load(snap)
                .expect_err("load accepted it")
                .to_string(),
        ),
        (
            "verify",
            fsnap::verify(snap)
                .expect_err("verify accepted it")
                .to_string(),
        ),
        (
            "restore",
            restore_one(snap, 0, &a.p("target"))
                .expect_err("restore accepted it")
                .to_string(),
        ),
    ]
}

#[test]
fn resource_names_that_could_leave_a_target_root_are_refused_by_every_reader() {
    let cases = [
        ("container", "/abs"),
        ("container", ".."),
        ("container", "."),
        ("container", "a/b"),
        ("container", "../../outside"),
        ("container", "a\0b"),
        ("container", "a\nb"),
        ("path", "/../../outside"),
        ("path", "a/../../outside"),
        ("path", "../outside"),
        ("path", ".."),
        ("path", "a//b"),
        ("path", "/a/"),
        ("path", "./a"),
        ("path", ""),
        ("path", "//"),
        ("path", "a\0b"),
    ];
    for (field, value) in cases {
        let a = Area::new();
        let snap = real_checkpoint(&a);
        edit_manifest(&snap, |m| {
            m["sections"][0]["resource"][field] = value.into();
        });
        for (reader, e) in every_reader(&a, &snap) {
            assert!(
                e.contains("section 0")
                    && e.contains(&format!("resource.{field}"))
                    && e.contains(&format!("{value:?}")),
                "{reader} of {field}={value:?}: the error does not name the section, field and value: {e}"
            );
        }
        a.assert_untouched();
    }
}

#[test]
fn two_sections_of_one_resource_are_refused() {
    let a = Area::new();
    let src = a.p("src");
    std::fs::create_dir(&src).unwrap();
    let e = save(&[&src, &src], &a.p("snap")).unwrap_err().to_string();
    assert!(
        e.contains("section 1") && e.contains("section 0"),
        "save: {e}"
    );
    assert!(!a.p("snap").exists());
    let other = a.p("other");
    std::fs::create_dir(&other).unwrap();
    let snap = a.p("snap");
    save(&[&src, &other], &snap).unwrap();
    edit_manifest(&snap, |m| {
        m["sections"][1]["resource"] = m["sections"][0]["resource"].clone();
        m["sections"][1]["resource"]["kind"] = "tmpfs".into();
    });
    for (reader, e) in every_reader(&a, &snap) {
        assert!(
            e.contains("section 1") && e.contains("section 0"),
            "{reader}: {e}"
        );
    }
    a.assert_untouched();
}

/// Run `f` on another thread; fail (rather than hang the suite) when it takes more than 10 s,
/// first opening `fifo` for writing so that a reader blocked on it returns.
fn within_10s<T: Send + 'static>(
    what: &str,
    fifo: Option<&Path>,
    f: impl FnOnce() -> T + Send + 'static,
) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    match rx.recv_timeout(std::time::Duration::from_secs(10)) {
        Ok(v) => v,
        Err(_) => {
            if let Some(p) = fifo {
                use std::os::unix::fs::OpenOptionsExt;
                let _ = std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_NONBLOCK)
                    .open(p);
            }
            panic!("{what} hung for 10 s");
        }
    }
}

/// Replace `name` in a checkpoint of no sections (and an empty data file) by something that is
/// not a regular file; every reader must refuse it by name, at once.
fn refused_as_not_regular(name: &str, make: impl Fn(&Path)) {
    let a = Area::new();
    let snap = a.p("snap");
    std::fs::create_dir(&snap).unwrap();
    std::fs::write(snap.join(fsnap::manifest::DATA_FILE), b"").unwrap();
    fsnap::Manifest::new(vec![], 0).write(&snap).unwrap();
    let victim = snap.join(name);
    std::fs::remove_file(&victim).unwrap();
    make(&victim);
    let fifo = Some(victim.clone());
    type Reader = fn(&Path, &Path) -> Option<String>;
    let readers: [(&str, Reader); 3] = [
        ("load", |s, _| {
            fsnap::Manifest::load(s).err().map(|e| e.to_string())
        }),
        ("verify", |s, _| {
            fsnap::verify(s).err().map(|e| e.to_string())
        }),
        ("restore", |s, t| {
            fsnap::restore(
                s,
                &[],
                &fsnap::RestoreOptions::default(),
                &fsnap::Progress::default(),
            )
            .err()
            .map(|e| e.to_string())
            .or_else(|| restore_one(s, 0, t).err().map(|e| e.to_string()))
        }),
    ];
    for (reader, f) in readers {
        let (s, t) = (snap.clone(), a.p("target"));
        let e = within_10s(
            &format!("{reader} with {name} replaced"),
            fifo.as_deref(),
            move || f(&s, &t),
        )
        .unwrap_or_else(|| panic!("{reader} accepted {name} that is not a regular file"));
        assert!(
            e.contains(name) && e.contains("not a regular file"),
            "{reader}, {name}: {e}"
        );
    }
    a.assert_untouched();
}

fn make_fifo(p: &Path) {
    nix::unistd::mkfifo(p, nix::sys::stat::Mode::from_bits_truncate(0o600)).unwrap();
}

fn make_dir(p: &Path) {
    std::fs::create_dir(p).unwrap();
}

fn make_symlink_to_a_regular_file(p: &Path) {
    let real = p.with_extension("real");
    std::fs::copy(
        p.parent().unwrap().join(fsnap::manifest::MANIFEST_FILE),
        &real,
    )
    .ok();
    std::fs::write(&real, std::fs::read(&real).unwrap_or_default()).unwrap();
    std::os::unix::fs::symlink(&real, p).unwrap();
}

fn make_char_device(p: &Path) {
    mknod(p, libc::S_IFCHR, 1, 3);
}

#[test]
fn a_data_file_that_is_not_a_regular_file_is_refused_without_hanging() {
    require_root("device nodes");
    let data = fsnap::manifest::DATA_FILE;
    refused_as_not_regular(data, make_fifo);
    refused_as_not_regular(data, make_dir);
    refused_as_not_regular(data, make_symlink_to_a_regular_file);
    refused_as_not_regular(data, make_char_device);
}

#[test]
fn a_manifest_that_is_not_a_regular_file_is_refused_without_hanging() {
    require_root("device nodes");
    let manifest = fsnap::manifest::MANIFEST_FILE;
    refused_as_not_regular(manifest, make_fifo);
    refused_as_not_regular(manifest, make_dir);
    refused_as_not_regular(manifest, |p| {
        // A symlink to a valid manifest (kept beside it under another name).
        let real = p.with_extension("real");
        fsnap::Manifest::new(vec![], 0)
            .write(p.parent().unwrap())
            .unwrap();
        std::fs::rename(p, &real).unwrap();
        std::os::unix::fs::symlink(&real, p).unwrap();
    });
    refused_as_not_regular(manifest, make_char_device);
}

#[test]
fn a_huge_manifest_is_refused_without_reading_it() {
    let a = Area::new();
    let snap = real_checkpoint(&a);
    let path = snap.join(fsnap::manifest::MANIFEST_FILE);
    // A sparse 4 GiB file: reading it whole would take the memory and the time.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(4 << 30)
        .unwrap();
    let started = std::time::Instant::now();
    for (reader, e) in every_reader(&a, &snap) {
        assert!(e.contains("larger than"), "{reader}: {e}");
    }
    assert!(started.elapsed().as_secs() < 5, "{:?}", started.elapsed());
    a.assert_untouched();
}

#[test]
fn nested_or_repeated_targets_are_refused_before_anything_is_written() {
    let a = Area::new();
    let src = a.p("src");
    std::fs::create_dir(&src).unwrap();
    std::fs::write(src.join("f"), b"1").unwrap();
    let other = a.p("other");
    std::fs::create_dir(&other).unwrap();
    std::fs::write(other.join("g"), b"2").unwrap();
    let snap = a.p("snap");
    save(&[&src, &other], &snap).unwrap();
    let target = a.p("target");
    let cases = [
        vec![(0, target.clone()), (1, target.join("sub"))],
        vec![(1, target.join("sub")), (0, target.clone())],
        vec![(0, target.clone()), (1, target.clone())],
        vec![(0, target.join("x")), (1, target.join("x/../x"))],
    ];
    for targets in cases {
        let e = fsnap::restore(
            &snap,
            &targets,
            &fsnap::RestoreOptions::default(),
            &fsnap::Progress::default(),
        )
        .expect_err("overlapping targets accepted")
        .to_string();
        assert!(e.contains("target"), "{targets:?}: {e}");
        a.assert_untouched();
    }
}

#[test]
fn errors_never_carry_a_manifests_control_characters() {
    let a = Area::new();
    let snap = real_checkpoint(&a);
    edit_manifest(&snap, |m| {
        m["sections"][0]["resource"]["path"] = "/x\u{1b}]0;pwned\u{7}\rforged".into();
    });
    let mut data = std::fs::read(data_path(&snap)).unwrap();
    data[700] ^= 0x20;
    std::fs::write(data_path(&snap), &data).unwrap();
    let errors = [
        ("verify", fsnap::verify(&snap).unwrap_err().to_string()),
        (
            "restore",
            restore_one(&snap, 0, &a.p("target"))
                .unwrap_err()
                .to_string(),
        ),
    ];
    for (reader, e) in errors {
        assert!(e.contains("section 0"), "{reader}: {e}");
        assert!(
            !e.chars().any(char::is_control),
            "{reader}: control characters in the error: {e:?}"
        );
    }
    a.assert_untouched();
}
