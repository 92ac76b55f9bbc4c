//! Shared by fsnap's integration tests: a generated tree with every kind of entry, an
//! entry-by-entry comparison of two trees (metadata, xattrs, content, holes), and helpers for
//! saving and restoring.

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::{Seek, SeekFrom, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use fsnap::{Progress, ResourceId, ResourceKind, RestoreOptions, SaveOptions, Source};

/// Tests that create device nodes, set owners or `trusted.*` xattrs, or mount, need root: say
/// so plainly instead of failing on the first EPERM (or, worse, passing). CI runs as root.
pub fn require_root(what: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "this test needs root ({what}); run the suite as root, as CI does"
    );
}

/// A temporary directory on disk (not tmpfs: holes, xattrs and owners behave as on a real
/// filesystem), removed when dropped.
pub fn tmp() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("fsnap-test-")
        .tempdir_in("/var/tmp")
        .unwrap()
}

/// Build a tree with files, an empty file, a big random file, a sparse file (1 GiB, 2 data
/// extents, ending in a hole), directories with odd modes, symlinks (relative, absolute,
/// dangling), hard links, a fifo, a whiteout, device nodes, xattrs (user and trusted, an opaque
/// directory), odd owners, nanosecond mtimes, long names.
pub fn make_tree(root: &Path) {
    let p = |s: &str| root.join(s);
    std::fs::create_dir_all(p("dir/sub/deeper")).unwrap();
    std::fs::create_dir_all(p("opaque")).unwrap();
    std::fs::write(p("hello.txt"), b"hello world\n").unwrap();
    std::fs::write(p("empty"), b"").unwrap();
    let mut seed = 0x2545F4914F6CDD1Du64;
    let big: Vec<u8> = (0..3_000_000)
        .map(|_| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed as u8
        })
        .collect();
    std::fs::write(p("dir/big.bin"), &big).unwrap();
    let mut sparse = std::fs::File::create(p("sparse.img")).unwrap();
    sparse.seek(SeekFrom::Start(4096 * 10)).unwrap();
    sparse.write_all(&[7u8; 8192]).unwrap();
    sparse.seek(SeekFrom::Start(512 << 20)).unwrap();
    sparse.write_all(b"middle").unwrap();
    sparse.set_len(1 << 30).unwrap();
    std::os::unix::fs::symlink("hello.txt", p("link-rel")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", p("link-abs")).unwrap();
    std::os::unix::fs::symlink("nowhere", p("link-dangling")).unwrap();
    std::fs::hard_link(p("hello.txt"), p("dir/sub/hardlink")).unwrap();
    nix::unistd::mkfifo(&p("fifo"), nix::sys::stat::Mode::from_bits_truncate(0o640)).unwrap();
    mknod(&p("whiteout"), libc::S_IFCHR, 0, 0);
    mknod(&p("dir/null"), libc::S_IFCHR, 1, 3);
    mknod(&p("dir/loop"), libc::S_IFBLK, 7, 0);
    setxattr(&p("opaque"), "trusted.overlay.opaque", b"y");
    setxattr(&p("hello.txt"), "user.note", b"binary\0\nvalue");
    setxattr(&p("dir"), "user.dir", b"1");
    let long = "n".repeat(120);
    std::fs::create_dir_all(p(&format!("dir/{long}"))).unwrap();
    std::fs::write(p(&format!("dir/{long}/{long}.txt")), b"long").unwrap();
    std::os::unix::fs::chown(p("dir/sub"), Some(1234), Some(5678)).unwrap();
    std::os::unix::fs::lchown(p("link-rel"), Some(42), Some(43)).unwrap();
    std::fs::set_permissions(p("dir/sub"), std::fs::Permissions::from_mode(0o2750)).unwrap();
    std::fs::set_permissions(p("hello.txt"), std::fs::Permissions::from_mode(0o4751)).unwrap();
    set_mtime(&p("hello.txt"), 1_600_000_000, 123_456_789);
    set_mtime(&p("dir/sub"), 1_500_000_000, 987_654_321);
    set_mtime(&p("link-rel"), 1_400_000_000, 5);
}

/// A tree with every overlayfs attribute a layer meets: an opaque directory (`opaque`), a
/// redirected one (`moved`), a metacopy file with a user attribute (`f`), a whiteout (`gone`).
pub fn make_overlay_attributes_tree(src: &Path) {
    std::fs::create_dir_all(src.join("opaque")).unwrap();
    std::fs::create_dir_all(src.join("moved")).unwrap();
    std::fs::write(src.join("f"), b"x").unwrap();
    mknod(&src.join("gone"), libc::S_IFCHR, 0, 0);
    setxattr(&src.join("opaque"), "trusted.overlay.opaque", b"y");
    setxattr(&src.join("moved"), "trusted.overlay.redirect", b"/etc");
    setxattr(&src.join("f"), "trusted.overlay.metacopy", b"");
    setxattr(&src.join("f"), "user.kept", b"1");
}

pub fn mknod(path: &Path, kind: libc::mode_t, major: u32, minor: u32) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid C string.
    let rc = unsafe { libc::mknod(c.as_ptr(), kind | 0o600, libc::makedev(major, minor)) };
    assert_eq!(rc, 0, "mknod {}", path.display());
}

pub fn setxattr(path: &Path, k: &str, v: &[u8]) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let key = std::ffi::CString::new(k).unwrap();
    // SAFETY: valid C strings and buffer.
    let rc =
        unsafe { libc::lsetxattr(c.as_ptr(), key.as_ptr(), v.as_ptr() as *const _, v.len(), 0) };
    assert_eq!(rc, 0, "setxattr {k} on {}", path.display());
}

pub fn set_mtime(path: &Path, sec: i64, nsec: i64) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    let t = libc::timespec {
        tv_sec: sec,
        tv_nsec: nsec,
    };
    // SAFETY: valid C string and times.
    let rc = unsafe {
        libc::utimensat(
            libc::AT_FDCWD,
            c.as_ptr(),
            [t, t].as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    assert_eq!(rc, 0);
}

/// Everything compared about one entry.
#[derive(Debug, PartialEq, Eq)]
pub struct Seen {
    pub kind: String,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: (i64, i64),
    pub size: u64,
    pub rdev: u64,
    pub link: Option<PathBuf>,
    pub xattrs: Vec<(String, Vec<u8>)>,
    pub content_hash: Option<String>,
    pub data_extents: Option<Vec<(u64, u64)>>,
    /// Other paths sharing the inode (hard links).
    pub hardlink_group: Vec<String>,
}

/// Describe every entry of a tree, by relative path (the root is ".").
pub fn describe(root: &Path) -> BTreeMap<String, Seen> {
    let mut out = BTreeMap::new();
    let mut inodes: BTreeMap<u64, Vec<String>> = BTreeMap::new();
    let mut paths = vec![(root.to_path_buf(), ".".to_string())];
    while let Some((path, rel)) = paths.pop() {
        let md = std::fs::symlink_metadata(&path).unwrap();
        let ft = md.file_type();
        if ft.is_dir() {
            for e in std::fs::read_dir(&path).unwrap() {
                let e = e.unwrap();
                let name = e.file_name().to_string_lossy().into_owned();
                let r = if rel == "." {
                    name
                } else {
                    format!("{rel}/{name}")
                };
                paths.push((e.path(), r));
            }
        } else {
            inodes.entry(md.ino()).or_default().push(rel.clone());
        }
        use std::os::unix::fs::FileTypeExt;
        let kind = if ft.is_dir() {
            "dir"
        } else if ft.is_symlink() {
            "symlink"
        } else if ft.is_file() {
            "file"
        } else if ft.is_fifo() {
            "fifo"
        } else if ft.is_char_device() {
            "char"
        } else if ft.is_block_device() {
            "block"
        } else {
            "other"
        };
        let is_file = ft.is_file();
        out.insert(
            rel.clone(),
            Seen {
                kind: kind.into(),
                mode: md.mode() & 0o7777,
                uid: md.uid(),
                gid: md.gid(),
                mtime: if ft.is_dir() {
                    (0, 0)
                } else {
                    (md.mtime(), md.mtime_nsec())
                },
                size: if is_file { md.len() } else { 0 },
                rdev: md.rdev(),
                link: ft.is_symlink().then(|| std::fs::read_link(&path).unwrap()),
                xattrs: fsnap::xattr::xattrs(&path).unwrap(),
                content_hash: is_file.then(|| content_hash(&path)),
                data_extents: is_file.then(|| data_extents(&path)),
                hardlink_group: vec![],
            },
        );
    }
    for group in inodes.values().filter(|g| g.len() > 1) {
        for p in group {
            let mut others = group.clone();
            others.sort();
            out.get_mut(p).unwrap().hardlink_group = others;
        }
    }
    out
}

/// Directory mtimes too (checked separately: they change when a tree is built in place).
pub fn dir_mtimes(root: &Path) -> BTreeMap<String, (i64, i64)> {
    describe(root)
        .keys()
        .filter_map(|k| {
            let md = std::fs::symlink_metadata(root.join(k)).ok()?;
            md.is_dir()
                .then(|| (k.clone(), (md.mtime(), md.mtime_nsec())))
        })
        .collect()
}

/// Hash of a file's content, reading only its data extents (holes are zeros by definition, and
/// the extents are compared separately).
pub fn content_hash(path: &Path) -> String {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(path).unwrap();
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for (off, len) in data_extents(path) {
        h.update(&off.to_le_bytes());
        let mut done = 0;
        while done < len {
            let n = (len - done).min(buf.len() as u64) as usize;
            f.read_exact_at(&mut buf[..n], off + done).unwrap();
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    h.finalize().to_hex().to_string()
}

fn data_extents(path: &Path) -> Vec<(u64, u64)> {
    let f = std::fs::File::open(path).unwrap();
    let size = f.metadata().unwrap().len();
    fsnap::tar::sparse::extents(&f, size)
        .unwrap()
        .unwrap_or_else(|| if size > 0 { vec![(0, size)] } else { vec![] })
}

/// Assert two trees are the same, entry by entry.
pub fn assert_same(a: &Path, b: &Path) {
    let (da, db) = (describe(a), describe(b));
    let ka: Vec<_> = da.keys().collect();
    let kb: Vec<_> = db.keys().collect();
    assert_eq!(ka, kb, "entries differ");
    for (k, v) in &da {
        assert_eq!(v, &db[k], "entry {k} differs");
    }
    assert_eq!(dir_mtimes(a), dir_mtimes(b), "directory mtimes differ");
}

pub fn source(dir: &Path, kind: ResourceKind) -> Source {
    Source {
        resource: ResourceId {
            container: "test".into(),
            path: dir.display().to_string(),
            kind,
        },
        dir: dir.to_path_buf(),
    }
}

pub fn save(dirs: &[&Path], out: &Path) -> fsnap::Result<fsnap::Manifest> {
    let sources: Vec<Source> = dirs
        .iter()
        .map(|d| source(d, ResourceKind::RootfsUpper))
        .collect();
    fsnap::save(&sources, out, &SaveOptions::default(), &Progress::default())
}

pub fn restore_one(snap: &Path, section: usize, target: &Path) -> fsnap::Result<fsnap::Manifest> {
    fsnap::restore(
        snap,
        &[(section, target.to_path_buf())],
        &RestoreOptions::default(),
        &Progress::default(),
    )
}

pub fn restore_with_devices(snap: &Path, target: &Path) -> fsnap::Result<fsnap::Manifest> {
    fsnap::restore(
        snap,
        &[(0, target.to_path_buf())],
        &RestoreOptions {
            allow_devices: true,
            ..Default::default()
        },
        &Progress::default(),
    )
}

/// Everything under `dir` as (relative path, bytes or link), to show a directory unchanged.
pub fn listing(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = describe(dir)
        .into_iter()
        .map(|(k, s)| format!("{k} {:?} {:?} {:?}", s.kind, s.content_hash, s.link))
        .collect();
    v.sort();
    v
}

// Hand-made tars, for hostile input.

/// A raw ustar header.
pub fn header(name: &str, typeflag: u8, size: u64, link: &str, dev: (u32, u32)) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..107].copy_from_slice(b"0000644");
    h[108..115].copy_from_slice(b"0000000");
    h[116..123].copy_from_slice(b"0000000");
    h[124..135].copy_from_slice(format!("{size:011o}").as_bytes());
    h[136..147].copy_from_slice(b"00000000000");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link.as_bytes());
    h[257..263].copy_from_slice(b"ustar\0");
    h[263..265].copy_from_slice(b"00");
    h[329..336].copy_from_slice(format!("{:07o}", dev.0).as_bytes());
    h[337..344].copy_from_slice(format!("{:07o}", dev.1).as_bytes());
    h[148..156].copy_from_slice(b"        ");
    let sum: u32 = h.iter().map(|b| u32::from(*b)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    h
}

/// A tar of `(header, content)` pairs, with the root directory first and the end blocks.
pub fn tar(entries: &[([u8; 512], &[u8])]) -> (Vec<u8>, u64) {
    let mut out = header("./", b'5', 0, "", (0, 0)).to_vec();
    for (h, content) in entries {
        out.extend_from_slice(h);
        out.extend_from_slice(content);
        out.resize(out.len().div_ceil(512) * 512, 0);
    }
    out.extend_from_slice(&[0u8; 1024]);
    (out, entries.len() as u64 + 1)
}

pub fn file(name: &str, content: &'static [u8]) -> ([u8; 512], &'static [u8]) {
    (
        header(name, b'0', content.len() as u64, "", (0, 0)),
        content,
    )
}

/// Write a checkpoint into `snap` whose only section is `tar` (with a correct checksum, so
/// that the readers' own checks are what refuse it).
pub fn checkpoint_of_tar(snap: &Path, tar: &[u8], files: u64) {
    std::fs::create_dir_all(snap).unwrap();
    std::fs::write(snap.join(fsnap::manifest::DATA_FILE), tar).unwrap();
    write_one_section_manifest(snap, tar.len() as u64, files, &blake3::hash(tar));
}

/// Write the manifest of a checkpoint in `snap` whose data file is one section of `len` bytes
/// holding `files` entries, with checksum `hash`.
pub fn write_one_section_manifest(snap: &Path, len: u64, files: u64, hash: &blake3::Hash) {
    fsnap::Manifest::new(
        vec![fsnap::Section {
            resource: source(Path::new("/x"), ResourceKind::Tmpfs).resource,
            tar_start: 0,
            tar_end: len,
            checksum: fsnap::manifest::checksum_text(hash),
            files,
            logical_bytes: 0,
            stored_bytes: 0,
            layer: 0,
        }],
        len,
    )
    .write(snap)
    .unwrap();
}

/// Give the checkpoint in `snap` a block hashes file as the format describes it (each
/// section's BLAKE3 chaining values of its 64 KiB blocks, none for a section of one block or
/// less), computed here independently of fsnap, and name it in the manifest's `extensions`.
pub fn add_block_hashes(snap: &Path) {
    use blake3::hazmat::HasherExt;
    const BLOCK: usize = 64 * 1024;
    let mpath = snap.join(fsnap::manifest::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    let data = std::fs::read(snap.join(m["data_file"].as_str().unwrap())).unwrap();
    let mut out = Vec::new();
    for s in m["sections"].as_array().unwrap() {
        let range = &data
            [s["tar_start"].as_u64().unwrap() as usize..s["tar_end"].as_u64().unwrap() as usize];
        if range.len() > BLOCK {
            for (i, block) in range.chunks(BLOCK).enumerate() {
                let mut h = blake3::Hasher::new();
                h.set_input_offset((i * BLOCK) as u64);
                h.update(block);
                out.extend(h.finalize_non_root());
            }
        }
    }
    std::fs::write(snap.join(fsnap::blocks_file::BLOCKS_FILE), out).unwrap();
    m["extensions"]["block_hashes"] =
        serde_json::json!({"file": "fscheckpoint.blocks", "block_size": 65536});
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
}

/// Take the block hashes file and its manifest entry away (a checkpoint saved before them).
pub fn remove_block_hashes(snap: &Path) {
    let mpath = snap.join(fsnap::manifest::MANIFEST_FILE);
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    m.as_object_mut().unwrap().remove("extensions");
    std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
    std::fs::remove_file(snap.join(fsnap::blocks_file::BLOCKS_FILE)).unwrap();
}
