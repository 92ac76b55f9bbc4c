//! A section read in place through its index (`fsnap::SectionIndex`): a saved tree read back
//! through the index equals the original (contents with their holes, modes, owners, mtimes,
//! xattrs, symlinks, hard links as one node, whiteouts, opaque directories, link counts), the
//! overlay-layer filtering is the extraction's, `read_at` is right at every edge, and every
//! hostile section the extraction refuses the index refuses too — with the same sentence and
//! naming the section.

mod common;

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use common::*;
use fsnap::index::{NodeId, ROOT};
use fsnap::tar::{Entry, Kind};
use fsnap::{Manifest, RestoreOptions, SectionIndex};

fn build(snap: &Path, opts: &RestoreOptions) -> fsnap::Result<SectionIndex> {
    let manifest = Manifest::load(snap)?;
    SectionIndex::build(snap, &manifest, 0, opts)
}

fn with_devices() -> RestoreOptions {
    RestoreOptions {
        allow_devices: true,
        ..Default::default()
    }
}

/// Every node by path, as `describe` sees a tree on disk; and each path's link count.
fn describe_index(ix: &SectionIndex) -> (BTreeMap<String, Seen>, BTreeMap<String, u32>) {
    let mut names: BTreeMap<NodeId, Vec<String>> = BTreeMap::new();
    let mut todo = vec![(ROOT, ".".to_string())];
    let mut paths = Vec::new();
    while let Some((id, path)) = todo.pop() {
        let node = ix.node(id).unwrap();
        for (name, child) in &node.children {
            assert_eq!(ix.lookup(id, name), Some(*child));
            let p = if path == "." {
                name.clone()
            } else {
                format!("{path}/{name}")
            };
            todo.push((*child, p));
        }
        names.entry(id).or_default().push(path.clone());
        paths.push((id, path));
    }
    let mut out = BTreeMap::new();
    let mut nlinks = BTreeMap::new();
    for (id, path) in paths {
        let e: &Entry = &ix.node(id).unwrap().entry;
        let (kind, rdev) = match e.kind {
            Kind::File => ("file", 0),
            Kind::Dir => ("dir", 0),
            Kind::Symlink(_) => ("symlink", 0),
            Kind::Fifo => ("fifo", 0),
            Kind::Char { major, minor } => ("char", libc::makedev(major, minor)),
            Kind::Block { major, minor } => ("block", libc::makedev(major, minor)),
            Kind::HardLink(_) => panic!("{path}: a hard link is never a node"),
        };
        let is_file = e.kind == Kind::File;
        let extents = e.sparse.clone().unwrap_or_else(|| {
            if e.size > 0 {
                vec![(0, e.size)]
            } else {
                vec![]
            }
        });
        let group = &names[&id];
        let mut group = if group.len() > 1 && e.kind != Kind::Dir {
            group.clone()
        } else {
            vec![]
        };
        group.sort();
        nlinks.insert(path.clone(), ix.node(id).unwrap().nlink);
        out.insert(
            path.clone(),
            Seen {
                kind: kind.into(),
                mode: e.mode,
                uid: e.uid,
                gid: e.gid,
                mtime: if e.kind == Kind::Dir {
                    (0, 0)
                } else {
                    (e.mtime_sec, i64::from(e.mtime_nsec))
                },
                size: e.size,
                rdev,
                link: match &e.kind {
                    Kind::Symlink(t) => Some(PathBuf::from(t)),
                    _ => None,
                },
                xattrs: e.xattrs.clone(),
                content_hash: is_file.then(|| index_content_hash(ix, id, &extents)),
                data_extents: is_file.then_some(extents),
                hardlink_group: group,
            },
        );
    }
    (out, nlinks)
}

/// `content_hash`'s scheme over the index's `read_at`.
fn index_content_hash(ix: &SectionIndex, id: NodeId, extents: &[(u64, u64)]) -> String {
    let mut h = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    for (off, len) in extents {
        h.update(&off.to_le_bytes());
        let mut done = 0;
        while done < *len {
            let want = (len - done).min(buf.len() as u64) as usize;
            let n = ix.read_at(id, off + done, &mut buf[..want]).unwrap();
            assert_eq!(n, want, "short read inside the file");
            h.update(&buf[..n]);
            done += n as u64;
        }
    }
    h.finalize().to_hex().to_string()
}

fn node_at(ix: &SectionIndex, path: &str) -> NodeId {
    path.split('/')
        .try_fold(ROOT, |id, name| ix.lookup(id, name))
        .unwrap_or_else(|| panic!("{path} not in the index"))
}

#[test]
fn a_saved_tree_reads_back_through_the_index() {
    require_root("device nodes, owners, trusted.* xattrs");
    let t = tmp();
    let src = t.path().join("src");
    make_tree(&src);
    let snap = t.path().join("snap");
    let m = save(&[&src], &snap).unwrap();
    let ix = build(&snap, &with_devices()).unwrap();
    let want = describe(&src);
    let (got, nlinks) = describe_index(&ix);
    assert_eq!(
        got.keys().collect::<Vec<_>>(),
        want.keys().collect::<Vec<_>>()
    );
    for (k, v) in &want {
        assert_eq!(&got[k], v, "entry {k} differs");
    }
    let dirs: BTreeMap<String, (i64, i64)> = dir_mtimes(&src);
    for (k, mtime) in &dirs {
        let e = &ix.node(node_at_or_root(&ix, k)).unwrap().entry;
        assert_eq!((e.mtime_sec, i64::from(e.mtime_nsec)), *mtime, "{k} mtime");
    }
    for (k, n) in &nlinks {
        let md = std::fs::symlink_metadata(src.join(k)).unwrap();
        assert_eq!(u64::from(*n), md.nlink(), "{k} link count");
    }
    assert_eq!(
        ix.len(),
        got.len() - 1,
        "one node per name, one for the hard link"
    );
    assert_eq!(
        node_at(&ix, "hello.txt"),
        node_at(&ix, "dir/sub/hardlink"),
        "a hard link is its target's node"
    );
    assert_eq!(
        ix.checksum_hex(),
        fsnap::manifest::checksum_hex(&m.sections[0].checksum).unwrap()
    );
    // Whiteouts and opaque directories are what overlayfs reads in a lower layer.
    let wh = &ix.node(node_at(&ix, "whiteout")).unwrap().entry;
    assert!(wh.is_whiteout());
    let opaque = &ix.node(node_at(&ix, "opaque")).unwrap().entry;
    assert_eq!(
        opaque.xattrs,
        vec![("trusted.overlay.opaque".to_string(), b"y".to_vec())]
    );
    // Node ids are 1..=len, each once.
    let mut ids: Vec<NodeId> = (1..=ix.len() as NodeId)
        .filter(|id| ix.node(*id).is_some())
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), ix.len());
    assert!(ix.node(0).is_none() && ix.node(ix.len() as NodeId + 1).is_none());
}

fn node_at_or_root(ix: &SectionIndex, path: &str) -> NodeId {
    if path == "." {
        ROOT
    } else {
        node_at(ix, path)
    }
}

#[test]
fn read_at_serves_holes_extents_and_eof() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // Data at [40960, 49152) and [1 MiB, 1 MiB + 6), a hole to 4 MiB.
    let sparse = src.join("sparse");
    {
        use std::io::{Seek, SeekFrom, Write};
        let mut f = std::fs::File::create(&sparse).unwrap();
        f.seek(SeekFrom::Start(40960)).unwrap();
        f.write_all(&[7u8; 8192]).unwrap();
        f.seek(SeekFrom::Start(1 << 20)).unwrap();
        f.write_all(b"middle").unwrap();
        f.set_len(4 << 20).unwrap();
    }
    let plain: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(src.join("plain"), &plain).unwrap();
    std::fs::create_dir(src.join("d")).unwrap();
    std::os::unix::fs::symlink("plain", src.join("l")).unwrap();
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();
    let ix = build(&snap, &RestoreOptions::default()).unwrap();
    let s = node_at(&ix, "sparse");
    assert!(
        ix.node(s).unwrap().entry.sparse.is_some(),
        "not stored sparse"
    );
    let whole = std::fs::read(&sparse).unwrap();
    let read = |id, off: u64, len: usize| {
        let mut buf = vec![0xAAu8; len];
        let n = ix.read_at(id, off, &mut buf).unwrap();
        buf.truncate(n);
        buf
    };
    // Inside a hole, across a hole into an extent and out again, inside an extent.
    assert_eq!(read(s, 100, 4000), vec![0u8; 4000]);
    assert_eq!(read(s, 40000, 10000), whole[40000..50000]);
    assert_eq!(read(s, 41000, 100), vec![7u8; 100]);
    assert_eq!(
        read(s, (1 << 20) - 3, 12),
        whole[(1 << 20) - 3..(1 << 20) + 9]
    );
    // The file's end is a hole: a read across it is short, past it empty.
    let size = 4u64 << 20;
    assert_eq!(read(s, size - 10, 100), vec![0u8; 10]);
    assert!(read(s, size, 10).is_empty());
    assert!(read(s, size + 12345, 10).is_empty());
    // The whole file in odd-sized pieces.
    let mut all = Vec::new();
    let mut off = 0u64;
    loop {
        let b = read(s, off, 77_777);
        if b.is_empty() {
            break;
        }
        off += b.len() as u64;
        all.extend(b);
    }
    assert_eq!(all, whole);
    // A plain file: every boundary.
    let p = node_at(&ix, "plain");
    assert_eq!(read(p, 0, 1 << 20), plain);
    assert_eq!(read(p, 299_990, 100), plain[299_990..]);
    assert_eq!(read(p, 123_457, 5), plain[123_457..123_462]);
    assert!(read(p, 300_000, 1).is_empty());
    // Only regular files have data.
    let mut buf = [0u8; 8];
    for id in [ROOT, node_at(&ix, "d"), node_at(&ix, "l")] {
        assert!(ix.read_at(id, 0, &mut buf).is_err());
    }
    assert!(ix.read_at(ix.len() as NodeId + 1, 0, &mut buf).is_err());
    // Positional reads from several threads at once.
    std::thread::scope(|sc| {
        for k in 0..4u64 {
            let ix = &ix;
            let plain = &plain;
            sc.spawn(move || {
                for i in 0..200u64 {
                    let off = (i * 1499 + k * 7) % 300_000;
                    let mut b = [0u8; 64];
                    let n = ix.read_at(p, off, &mut b).unwrap();
                    assert_eq!(&b[..n], &plain[off as usize..off as usize + n]);
                }
            });
        }
    });
}

#[test]
fn the_overlay_layer_option_filters_attributes_as_extraction_does() {
    require_root("trusted.* xattrs and whiteouts");
    let t = tmp();
    let src = t.path().join("src");
    make_overlay_attributes_tree(&src);
    std::fs::create_dir_all(src.join("not-opaque")).unwrap();
    setxattr(&src.join("not-opaque"), "trusted.overlay.opaque", b"x");
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();
    let layer_opts = RestoreOptions {
        overlay_layer: true,
        ..Default::default()
    };
    let layer = build(&snap, &layer_opts).unwrap();
    let plain = build(&snap, &RestoreOptions::default()).unwrap();
    // The index's attributes are exactly what an extraction with the same options writes.
    for (ix, opts) in [(&layer, &layer_opts), (&plain, &RestoreOptions::default())] {
        let out = t.path().join(format!("out-{}", opts.overlay_layer));
        fsnap::restore(
            &snap,
            &[(0, out.clone())],
            opts,
            &fsnap::Progress::default(),
        )
        .unwrap();
        for name in ["opaque", "not-opaque", "moved", "f", "gone"] {
            let got = &ix.node(node_at(ix, name)).unwrap().entry.xattrs;
            let want = fsnap::xattr::xattrs(&out.join(name)).unwrap();
            assert_eq!(got, &want, "{name} with {opts:?}");
        }
    }
    let x =
        |ix: &SectionIndex, name: &str| ix.node(node_at(ix, name)).unwrap().entry.xattrs.clone();
    assert_eq!(
        x(&layer, "f"),
        vec![("user.kept".to_string(), b"1".to_vec())]
    );
    assert!(x(&layer, "moved").is_empty() && x(&layer, "not-opaque").is_empty());
    assert_eq!(x(&plain, "moved").len(), 1);
    assert!(layer
        .node(node_at(&layer, "gone"))
        .unwrap()
        .entry
        .is_whiteout());
}

// ---- hostile sections: the index refuses what extraction refuses, in the same words ----

/// The index and an extraction both refuse `tar` with an error containing `needle`; the
/// index's names the section.
fn both_refuse(tar: &[u8], files: u64, needle: &str) {
    let t = tmp();
    let snap = t.path().join("snap");
    checkpoint_of_tar(&snap, tar, files);
    let e = build(&snap, &RestoreOptions::default())
        .expect_err("the index took a hostile section")
        .to_string();
    assert!(e.contains("section 0"), "{e:?} does not name the section");
    assert!(
        e.contains(needle),
        "index: {e:?} does not mention {needle:?}"
    );
    // Built from block hashes (headers only), the index refuses it in the same words.
    add_block_hashes(&snap);
    let lazy = build(
        &snap,
        &RestoreOptions {
            verify_data_on_read: true,
            ..Default::default()
        },
    )
    .map(|_| ())
    .expect_err("the index from block hashes took a hostile section")
    .to_string();
    assert_eq!(lazy, e, "the header-only build refused it differently");
    let target = t.path().join("target");
    let e = restore_one(&snap, 0, &target)
        .expect_err("extraction took a hostile section")
        .to_string();
    assert!(
        e.contains(needle),
        "extraction: {e:?} does not mention {needle:?}"
    );
    assert!(!target.exists());
}

fn link(name: &str, typeflag: u8, target: &str) -> ([u8; 512], &'static [u8]) {
    (header(name, typeflag, 0, target, (0, 0)), b"")
}

fn dir(name: &str) -> ([u8; 512], &'static [u8]) {
    (header(name, b'5', 0, "", (0, 0)), b"")
}

/// A pax extended header carrying `records`, as one `tar` entry (not counted as a file).
fn pax(records: &[(&str, &[u8])]) -> ([u8; 512], &'static [u8]) {
    let mut body = Vec::new();
    for (k, v) in records {
        body.extend(fsnap::tar::pax::record(k, v));
    }
    let body: &'static [u8] = Box::leak(body.into_boxed_slice());
    (header("pax", b'x', body.len() as u64, "", (0, 0)), body)
}

#[test]
fn names_that_leave_the_section_are_refused() {
    for name in ["../evil", "a/../../evil"] {
        let (t, n) = tar(&[file(name, b"x")]);
        both_refuse(&t, n, "path with '..' refused");
    }
    let (t, n) = tar(&[file("/evil", b"x")]);
    both_refuse(&t, n, "absolute path refused");
    let (t, n) = tar(&[link("h", b'1', "../outside")]);
    both_refuse(&t, n, "'..' refused");
}

#[test]
fn the_tree_must_be_a_tree() {
    require_root("extraction sets owners");
    // Beneath a symlink, wherever it points (inside the section too).
    for target in ["/etc", "../x", "d"] {
        let (t, n) = tar(&[dir("d"), link("s", b'2', target), file("s/planted", b"x")]);
        both_refuse(&t, n, "\"s\" is a symlink");
    }
    // Beneath a regular file.
    let (t, n) = tar(&[file("f", b"x"), file("f/x", b"y")]);
    both_refuse(&t, n, "\"f\" is not a directory");
    // A directory and a non-directory of one name, either way round.
    let (t, n) = tar(&[file("x", b"1"), dir("x")]);
    both_refuse(&t, n, "a directory replacing a non-directory");
    let (t, n) = tar(&[dir("x"), file("x", b"1")]);
    both_refuse(&t, n, "replaces a directory");
    // The root is a directory.
    let (t, n) = tar(&[file(".", b"x")]);
    both_refuse(&t, n, "the section's root must be a directory");
}

#[test]
fn hard_links_name_earlier_non_directories() {
    require_root("extraction sets owners");
    let (t, n) = tar(&[link("h", b'1', "missing")]);
    both_refuse(&t, n, "hard link to \"missing\": no such earlier entry");
    let (t, n) = tar(&[link("h", b'1', "later"), file("later", b"x")]);
    both_refuse(&t, n, "hard link to \"later\": no such earlier entry");
    let (t, n) = tar(&[link("h", b'1', "h")]);
    both_refuse(&t, n, "hard link to \"h\": no such earlier entry");
    let (t, n) = tar(&[dir("d"), link("h", b'1', "d")]);
    both_refuse(
        &t,
        n,
        "hard link to \"d\": a directory cannot be hard-linked",
    );
    let (t, n) = tar(&[dir("d"), link("s", b'2', "d"), link("h", b'1', "s/x")]);
    both_refuse(&t, n, "\"s\" is a symlink");
}

#[test]
fn device_nodes_need_permission_but_whiteouts_do_not() {
    require_root("device nodes");
    let (t, n) = tar(&[(header("mem", b'3', 0, "", (1, 1)), b"")]);
    both_refuse(&t, n, "device node 1:1 refused");
    let (t, n) = tar(&[(header("sda", b'4', 0, "", (8, 0)), b"")]);
    both_refuse(&t, n, "device node 8:0 refused");
    let d = tmp();
    let snap = d.path().join("snap");
    checkpoint_of_tar(&snap, &t, n);
    let ix = build(&snap, &with_devices()).unwrap();
    assert_eq!(
        ix.node(node_at(&ix, "sda")).unwrap().entry.kind,
        Kind::Block { major: 8, minor: 0 }
    );
    let (t, n) = tar(&[(header("wh", b'3', 0, "", (0, 0)), b"")]);
    let snap = d.path().join("snap2");
    checkpoint_of_tar(&snap, &t, n);
    let ix = build(&snap, &RestoreOptions::default()).unwrap();
    assert!(ix.node(node_at(&ix, "wh")).unwrap().entry.is_whiteout());
}

#[test]
fn bad_sparse_maps_and_link_names_are_refused() {
    require_root("extraction sets owners");
    let sparse = |map: &'static [u8]| {
        let (h, body) = pax(&[
            ("GNU.sparse.major", b"1"),
            ("GNU.sparse.minor", b"0"),
            ("GNU.sparse.name", b"s"),
            ("GNU.sparse.realsize", b"100"),
        ]);
        let mut area = map.to_vec();
        area.resize(512, 0);
        let area: &'static [u8] = Box::leak(area.into_boxed_slice());
        let (t, n) = tar(&[
            (h, body),
            (header("GNUSparseFile/s", b'0', 512, "", (0, 0)), area),
        ]);
        (t, n - 1)
    };
    let (t, n) = sparse(b"1\n0\n1000\n");
    both_refuse(&t, n, "beyond the file's 100 bytes");
    let (t, n) = sparse(b"2\n0\n10\n5\n10\n");
    both_refuse(&t, n, "out of order");
    // A symlink target with a NUL byte (only a pax record can carry one).
    let (h, body) = pax(&[("linkpath", b"a\0b")]);
    let (t, n) = tar(&[(h, body), link("s", b'2', "x")]);
    both_refuse(&t, n - 1, "contains a NUL byte");
}

#[test]
fn truncated_corrupt_and_miscounted_sections_are_refused() {
    // A file whose data runs past the section's end.
    let mut t = header("big", b'0', 100_000, "", (0, 0)).to_vec();
    t.extend([1u8; 4096]);
    let mut all = header("./", b'5', 0, "", (0, 0)).to_vec();
    all.extend(t);
    both_refuse(&all, 2, "truncated");
    // One flipped content byte.
    let (mut t, n) = tar(&[file("f", b"hello")]);
    let at = t.windows(5).position(|w| w == b"hello").unwrap();
    let d = tmp();
    let snap = d.path().join("snap");
    checkpoint_of_tar(&snap, &t, n);
    t[at] = b'j';
    std::fs::write(snap.join(fsnap::manifest::DATA_FILE), &t).unwrap();
    let e = build(&snap, &RestoreOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch"),
        "{e}"
    );
    // More entries than the manifest says.
    let (t, n) = tar(&[file("a", b"1"), file("b", b"2")]);
    both_refuse(&t, n - 1, "more entries than the 2 the manifest says");
}

#[test]
fn more_entries_than_an_index_holds_are_refused_unread() {
    let d = tmp();
    let snap = d.path().join("snap");
    let files = fsnap::index::MAX_ENTRIES + 1;
    let len = files * 512 + 1024;
    std::fs::create_dir_all(&snap).unwrap();
    // Sparse: nothing of it is ever read.
    let f = std::fs::File::create(snap.join(fsnap::manifest::DATA_FILE)).unwrap();
    f.set_len(len).unwrap();
    write_one_section_manifest(&snap, len, files, &blake3::hash(b""));
    let started = std::time::Instant::now();
    let e = build(&snap, &RestoreOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("section 0") && e.contains("more than the"),
        "{e}"
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(2));
}

#[test]
fn duplicate_names_resolve_as_extraction_does() {
    require_root("extraction sets owners");
    let (t, n) = tar(&[
        file("f", b"first"),
        link("h", b'1', "f"),
        file("f", b"second"),
        (header("d", b'5', 0, "", (0, 0)), b""),
        file("d/x", b"x"),
        dir("d"),
    ]);
    let d = tmp();
    let snap = d.path().join("snap");
    checkpoint_of_tar(&snap, &t, n);
    let ix = build(&snap, &RestoreOptions::default()).unwrap();
    let out = d.path().join("out");
    restore_one(&snap, 0, &out).unwrap();
    let read = |id| {
        let mut b = vec![0u8; 64];
        let k = ix.read_at(id, 0, &mut b).unwrap();
        b.truncate(k);
        b
    };
    // The later file replaces the name; the link keeps the earlier file.
    assert_eq!(
        read(node_at(&ix, "f")),
        std::fs::read(out.join("f")).unwrap()
    );
    assert_eq!(
        read(node_at(&ix, "h")),
        std::fs::read(out.join("h")).unwrap()
    );
    assert_eq!(read(node_at(&ix, "f")), b"second");
    assert_eq!(read(node_at(&ix, "h")), b"first");
    assert_eq!(ix.node(node_at(&ix, "h")).unwrap().nlink, 1);
    // Two entries of one directory are one directory, its children kept.
    assert_eq!(ix.node(node_at(&ix, "d/x")).unwrap().entry.kind, Kind::File);
    // Nothing unreachable is numbered: ., f, h, d, d/x.
    assert_eq!(ix.len(), 5);
    assert_eq!(ix.node(ROOT).unwrap().nlink, 3);
}

/// Random sections from a small alphabet of names and every kind of entry, in any order
/// (duplicates, links to anything, entries beneath files and symlinks, a file as the root,
/// device nodes with and without permission, overlay attributes with and without the
/// overlay-layer filter):
/// the index and an extraction accept exactly the same ones, with the same error, and what
/// they accept is the same tree.
#[test]
fn random_sections_are_judged_alike_and_read_alike() {
    require_root("extraction sets owners");
    let mut seed = 0x2545F4914F6CDD1Du64;
    let mut rand = move |n: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % n
    };
    let names = ["a", "b", "a/b", "a/c", "b/a", "a/b/c", ".", "c"];
    let contents: [&'static [u8]; 3] = [b"", b"one", b"second content"];
    let d = tmp();
    let (mut accepted, mut refused) = (0, 0);
    for round in 0..400 {
        let mut entries = Vec::new();
        let mut pax_headers = 0;
        for _ in 0..1 + rand(12) {
            let name = names[rand(names.len() as u64) as usize];
            let other = names[rand(names.len() as u64) as usize];
            let kind = rand(9);
            if kind <= 4 && rand(3) == 0 {
                // Extended attributes for a file or directory: kept, or filtered out of an
                // overlay layer.
                let (k, v): (&str, &[u8]) = [
                    ("SCHILY.xattr.trusted.overlay.opaque", &b"y"[..]),
                    ("SCHILY.xattr.trusted.overlay.opaque", &b"x"[..]),
                    ("SCHILY.xattr.trusted.overlay.redirect", &b"/etc"[..]),
                    ("SCHILY.xattr.user.note", &b"1"[..]),
                ][rand(4) as usize];
                entries.push(pax(&[(k, v)]));
                pax_headers += 1;
            }
            entries.push(match kind {
                0..=2 => file(name, contents[rand(3) as usize]),
                3 | 4 => dir(name),
                5 => link(name, b'2', other),
                6 => link(name, b'1', other),
                7 => {
                    let dev = [(0, 0), (0, 0), (1, 3)][rand(3) as usize];
                    (header(name, b'3', 0, "", dev), &b""[..])
                }
                _ => (header(name, b'6', 0, "", (0, 0)), &b""[..]),
            });
        }
        let (t, n) = tar(&entries);
        let snap = d.path().join(format!("snap{round}"));
        checkpoint_of_tar(&snap, &t, n - pax_headers);
        let out = d.path().join(format!("out{round}"));
        let opts = RestoreOptions {
            allow_devices: rand(2) == 0,
            overlay_layer: rand(2) == 0,
            ..Default::default()
        };
        let index = build(&snap, &opts);
        // The same section with block hashes: built from its headers alone, the same verdict
        // and the same index.
        add_block_hashes(&snap);
        let lazy = build(
            &snap,
            &RestoreOptions {
                verify_data_on_read: true,
                ..opts.clone()
            },
        );
        match (&index, &lazy) {
            (Ok(full), Ok(lazy)) => assert_eq!(
                describe_index(full),
                describe_index(lazy),
                "round {round}: the header-only index differs"
            ),
            (Err(f), Err(l)) => assert_eq!(
                f.to_string(),
                l.to_string(),
                "round {round}: the header-only build refused it differently"
            ),
            (f, l) => panic!(
                "round {round}: full pass {:?} but header-only {:?}",
                f.as_ref().map(|_| ()),
                l.as_ref().map(|_| ())
            ),
        }
        let restored = fsnap::restore(&snap, &[(0, out.clone())], &opts, &Default::default());
        match (index, restored) {
            (Ok(ix), Ok(_)) => {
                accepted += 1;
                let (mut got, _) = describe_index(&ix);
                let mut want = describe(&out);
                for seen in got.values_mut().chain(want.values_mut()) {
                    if seen.kind == "symlink" {
                        seen.mode = 0; // always 0777 on disk, whatever the header says
                    }
                }
                assert_eq!(
                    got.keys().collect::<Vec<_>>(),
                    want.keys().collect::<Vec<_>>(),
                    "round {round}: names differ"
                );
                for (k, v) in &want {
                    assert_eq!(&got[k], v, "round {round}: entry {k} differs");
                }
                std::fs::remove_dir_all(&out).unwrap();
            }
            (Err(i), Err(r)) => {
                refused += 1;
                let strip = |e: String| e.replace("section 0 (tmpfs /x), ", "");
                assert_eq!(
                    strip(i.to_string()),
                    strip(r.to_string()),
                    "round {round}: refused for different reasons"
                );
                assert!(!out.exists());
            }
            (i, r) => panic!(
                "round {round}: index {:?} but extraction {:?}",
                i.map(|_| ()),
                r.map(|_| ())
            ),
        }
        std::fs::remove_dir_all(&snap).unwrap();
    }
    assert!(
        accepted > 30 && refused > 30,
        "{accepted} accepted, {refused} refused"
    );
}

#[test]
fn every_section_of_a_checkpoint_reads_from_its_own_range() {
    let t = tmp();
    let (a, b) = (t.path().join("a"), t.path().join("b"));
    std::fs::create_dir_all(&a).unwrap();
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(a.join("f"), vec![b'a'; 70_000]).unwrap();
    std::fs::write(b.join("f"), vec![b'b'; 5000]).unwrap();
    std::fs::write(b.join("g"), b"gee").unwrap();
    let snap = t.path().join("snap");
    let m = save(&[&a, &b], &snap).unwrap();
    assert!(m.sections[1].tar_start > 0);
    for (i, src) in [(0, &a), (1, &b)] {
        let ix = SectionIndex::build(&snap, &m, i, &RestoreOptions::default()).unwrap();
        for name in ["f", "g"] {
            let want = std::fs::read(src.join(name)).ok();
            let got = ix.lookup(ROOT, name).map(|id| {
                let mut buf = vec![0u8; 100_000];
                let n = ix.read_at(id, 0, &mut buf).unwrap();
                buf.truncate(n);
                buf
            });
            assert_eq!(got, want, "section {i}, {name}");
        }
        assert_eq!(
            ix.checksum_hex(),
            fsnap::manifest::checksum_hex(&m.sections[i].checksum).unwrap()
        );
    }
    let e = SectionIndex::build(&snap, &m, 2, &RestoreOptions::default()).unwrap_err();
    assert!(e.to_string().contains("no section 2"), "{e}");
}

#[test]
fn data_changed_after_the_build_is_refused_not_served() {
    let t = tmp();
    let src = t.path().join("src");
    std::fs::create_dir(&src).unwrap();
    // 400 KB of a counter (no 16-byte run repeats), so one place in the data file is found.
    let plain: Vec<u8> = (0..100_000u32).flat_map(|i| i.to_be_bytes()).collect();
    std::fs::write(src.join("plain"), &plain).unwrap();
    let snap = t.path().join("snap");
    save(&[&src], &snap).unwrap();
    let ix = build(&snap, &RestoreOptions::default()).unwrap();
    let p = node_at(&ix, "plain");
    // Change 4 bytes at 300 000 in the file, where the data file holds them.
    let data_path = snap.join(fsnap::manifest::DATA_FILE);
    let mut data = std::fs::read(&data_path).unwrap();
    let at = data
        .windows(16)
        .position(|w| w == &plain[300_000..300_016])
        .unwrap();
    data[at] ^= 0xff;
    std::fs::write(&data_path, &data).unwrap();
    let mut buf = vec![0u8; 8192];
    let e = ix.read_at(p, 298_000, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(e.to_string().contains("section 0"), "{e}");
    // Blocks of the section away from the change still read.
    let n = ix.read_at(p, 0, &mut buf).unwrap();
    assert_eq!(&buf[..n], &plain[..8192]);
}

/// A pax `size` so large that its data area (rounded up to whole tar blocks) does not fit in
/// 64 bits, on a file and on a directory: refused as a truncated stream by every reader, the
/// header-only build too — never a file whose data lies past the section.
#[test]
fn sizes_past_the_section_are_refused() {
    for (size, typeflag) in [
        (&b"18446744073709551615"[..], b'0'),
        (&b"18446744073709551615"[..], b'5'),
        (&b"18446744073709551000"[..], b'0'),
        (&b"1099511627776"[..], b'0'),
    ] {
        let (h, body) = pax(&[("size", size)]);
        let (t, n) = tar(&[
            (h, body),
            (header("huge", typeflag, 0, "", (0, 0)), &b""[..]),
            file("after", b"x"),
        ]);
        both_refuse(&t, n - 1, "truncated");
    }
}
