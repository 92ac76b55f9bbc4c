//! The block hashes file (`fscheckpoint.blocks`): every save writes it as the format says
//! (checked against values computed here independently), an index built from it is the index
//! of the full pass while reading only the blocks that hold headers, a changed data byte is
//! refused when it is read and a changed header byte or sparse map when the index is built,
//! a tampered, truncated, oversized or misplaced file is refused naming the section, and a
//! checkpoint without it (saved before it existed) is read in the full pass as before.

mod common;

use std::path::{Path, PathBuf};

use common::*;
use fsnap::blocks_file::BLOCKS_FILE;
use fsnap::index::NodeId;
use fsnap::tar::Kind;
use fsnap::{Manifest, RestoreOptions, SectionIndex};

const MIB: usize = 1 << 20;

fn build(snap: &Path, section: usize) -> fsnap::Result<SectionIndex> {
    let m = Manifest::load(snap)?;
    SectionIndex::build(snap, &m, section, &on_read())
}

/// Bytes of `len` that never repeat a 16-byte run, so a place in the data file is found.
/// Header-only builds from the block hashes (the full pass is the default).
fn on_read() -> RestoreOptions {
    RestoreOptions {
        verify_data_on_read: true,
        ..Default::default()
    }
}

fn counter(len: usize, tag: u8) -> Vec<u8> {
    (0..len / 4)
        .flat_map(|i| ((i as u32) ^ (u32::from(tag) << 24)).to_be_bytes())
        .collect()
}

/// A tree of large files (one sparse) and a few small ones, saved as section 0 (and a small
/// tree as section 1): the checkpoint, and the large files' contents by name.
fn large_checkpoint(dir: &Path) -> (PathBuf, Vec<(&'static str, Vec<u8>)>) {
    let (big, small) = (dir.join("big"), dir.join("small"));
    std::fs::create_dir_all(big.join("sub")).unwrap();
    std::fs::create_dir_all(&small).unwrap();
    let files = vec![
        ("a-first", counter(3 * MIB, 1)),
        ("b-second", counter(2 * MIB + 4321, 2)),
        ("sub/c-third", counter(4 * MIB, 3)),
    ];
    for (name, bytes) in &files {
        std::fs::write(big.join(name), bytes).unwrap();
    }
    std::fs::write(big.join("tiny"), b"tiny").unwrap();
    std::fs::write(small.join("s"), b"small").unwrap();
    // Sparse: 1 MiB of data, a 20 MiB hole, 1 MiB of data.
    let f = std::fs::File::create(big.join("sparse")).unwrap();
    use std::os::unix::fs::FileExt;
    f.write_all_at(&counter(MIB, 4), 0).unwrap();
    f.write_all_at(&counter(MIB, 5), 21 * MIB as u64).unwrap();
    drop(f);
    let snap = dir.join("snap");
    save(&[&big, &small], &snap).unwrap();
    (snap, files)
}

/// Everything an index holds, node by node: entry, link count, children, whole content.
fn contents(ix: &SectionIndex) -> Vec<String> {
    (1..=ix.len() as NodeId)
        .map(|id| {
            let n = ix.node(id).unwrap();
            let data = if n.entry.kind == Kind::File {
                let mut buf = vec![0u8; n.entry.size as usize];
                assert_eq!(ix.read_at(id, 0, &mut buf).unwrap(), buf.len());
                blake3::hash(&buf).to_hex().to_string()
            } else {
                String::new()
            };
            format!("{:?} {} {:?} {data}", n.entry, n.nlink, n.children)
        })
        .collect()
}

fn section_len(snap: &Path, i: usize) -> u64 {
    let m = Manifest::load(snap).unwrap();
    m.sections[i].tar_end - m.sections[i].tar_start
}

#[test]
fn a_save_writes_the_block_hashes_the_format_describes() {
    let t = tmp();
    let (snap, _) = large_checkpoint(t.path());
    let m = Manifest::load(&snap).unwrap();
    assert_eq!(
        m.extensions["block_hashes"],
        serde_json::json!({"file": "fscheckpoint.blocks", "block_size": 65536})
    );
    let saved = std::fs::read(snap.join(BLOCKS_FILE)).unwrap();
    // Section 0 is many blocks, section 1 one block (no values).
    assert_eq!(
        saved.len() as u64,
        section_len(&snap, 0).div_ceil(65536) * 32
    );
    add_block_hashes(&snap);
    assert_eq!(std::fs::read(snap.join(BLOCKS_FILE)).unwrap(), saved);
    fsnap::verify(&snap).unwrap();
}

#[test]
fn an_index_from_block_hashes_is_the_full_pass_index_reading_only_header_blocks() {
    let t = tmp();
    let (snap, files) = large_checkpoint(t.path());
    let len = section_len(&snap, 0);
    let lazy = build(&snap, 0).unwrap();
    // Five entries' headers (and the sparse map) lie in at most a few blocks each: far less
    // than the section's 10+ MiB.
    assert!(
        lazy.bytes_read_to_build() <= 12 * 65536,
        "read {} of {len} bytes",
        lazy.bytes_read_to_build()
    );
    let small = build(&snap, 1).unwrap();
    assert_eq!(small.bytes_read_to_build(), section_len(&snap, 1));
    let lazy_contents = contents(&lazy);
    for (name, want) in &files {
        let id = name
            .split('/')
            .try_fold(fsnap::index::ROOT, |id, n| lazy.lookup(id, n))
            .unwrap();
        let mut buf = vec![0u8; want.len()];
        assert_eq!(lazy.read_at(id, 0, &mut buf).unwrap(), want.len());
        assert!(buf == *want, "{name} differs");
    }
    // Without the file: the whole section is read, and the index is the same.
    remove_block_hashes(&snap);
    let full = build(&snap, 0).unwrap();
    assert_eq!(full.bytes_read_to_build(), len);
    assert_eq!(contents(&full), lazy_contents);
    assert_eq!(full.checksum_hex(), lazy.checksum_hex());
    // And the very values saved are what a reader would compute.
    add_block_hashes(&snap);
    assert_eq!(contents(&build(&snap, 0).unwrap()), lazy_contents);
}

/// Flip one byte of the data file where `needle` lies (`skip` bytes after its start).
fn flip(snap: &Path, needle: &[u8], skip: usize) {
    let path = snap.join(fsnap::manifest::DATA_FILE);
    let mut data = std::fs::read(&path).unwrap();
    let at = data
        .windows(needle.len())
        .position(|w| w == needle)
        .expect("needle in the data file");
    data[at + skip] ^= 0x40;
    std::fs::write(&path, &data).unwrap();
}

#[test]
fn by_default_the_build_reads_the_whole_section_even_with_block_hashes() {
    let t = tmp();
    let (snap, files) = large_checkpoint(t.path());
    let m = Manifest::load(&snap).unwrap();
    let full = SectionIndex::build(&snap, &m, 0, &RestoreOptions::default()).unwrap();
    assert_eq!(full.bytes_read_to_build(), section_len(&snap, 0));
    let (_, bytes) = &files[1];
    let at = 1_500_000;
    flip(&snap, &bytes[at..at + 16], 0);
    let e = SectionIndex::build(&snap, &m, 0, &RestoreOptions::default())
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch"),
        "{e}"
    );
}

#[test]
fn a_changed_data_byte_is_refused_when_read_not_at_build() {
    let t = tmp();
    let (snap, files) = large_checkpoint(t.path());
    let (name, bytes) = &files[1];
    let at = 1_500_000;
    flip(&snap, &bytes[at..at + 16], 0);
    let ix = build(&snap, 0).expect("data bytes are verified when read");
    let id = ix.lookup(fsnap::index::ROOT, name).unwrap();
    let mut buf = vec![0u8; 4096];
    let e = ix.read_at(id, at as u64 - 100, &mut buf).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::InvalidData, "{e}");
    assert!(
        e.to_string().contains("section 0") && e.to_string().contains("checksum"),
        "{e}"
    );
    // The rest of the file still reads.
    assert_eq!(ix.read_at(id, 0, &mut buf).unwrap(), 4096);
    assert_eq!(&buf[..], &bytes[..4096]);
    // Every full reader refuses the checkpoint.
    let e = fsnap::verify(&snap).unwrap_err().to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch"),
        "{e}"
    );
    remove_block_hashes(&snap);
    let e = build(&snap, 0).unwrap_err().to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch"),
        "{e}"
    );
}

#[test]
fn a_changed_header_byte_is_refused_at_build() {
    let t = tmp();
    let (snap, _) = large_checkpoint(t.path());
    // A header of `b-second` (its pax header's, the first of its headers), 3 MiB into the
    // section, far from its first blocks: a name byte changed, the tar header checksum made
    // right again, so the header still parses and only the checksum can tell.
    let path = snap.join(fsnap::manifest::DATA_FILE);
    let mut data = std::fs::read(&path).unwrap();
    let at = data
        .windows(9)
        .position(|w| w == b"b-second\0")
        .expect("the header");
    assert!(at > 3 * MIB, "the header is beyond the first blocks");
    data[at] = b'x';
    let at = at / 512 * 512; // the section starts at 0, its headers on 512-byte boundaries
    let sum: u32 = data[at..at + 512]
        .iter()
        .enumerate()
        .map(|(i, b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(*b)
            }
        })
        .sum();
    data[at + 148..at + 156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    std::fs::write(&path, &data).unwrap();
    let e = build(&snap, 0).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch: bytes"),
        "{e}"
    );
    // The full pass finds it only at the section's end, by the checksum.
    remove_block_hashes(&snap);
    let e = build(&snap, 0).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch"),
        "{e}"
    );
}

#[test]
fn a_tampered_truncated_oversized_or_odd_blocks_file_is_refused_naming_the_section() {
    let t = tmp();
    let (snap, _) = large_checkpoint(t.path());
    let path = snap.join(BLOCKS_FILE);
    let good = std::fs::read(&path).unwrap();
    let refused = |needle: &str| {
        let e = build(&snap, 0)
            .map(|_| ())
            .expect_err("a bad blocks file was taken")
            .to_string();
        assert!(
            e.contains("section 0") && e.contains(needle),
            "{e:?} does not name the section and {needle:?}"
        );
    };
    // One value changed; two values swapped; a value of another offset.
    let mut bad = good.clone();
    bad[40] ^= 1;
    std::fs::write(&path, &bad).unwrap();
    refused("do not merge into the section's checksum");
    let e = fsnap::verify(&snap).unwrap_err().to_string();
    assert!(e.contains("do not merge"), "{e}");
    let mut bad = good.clone();
    bad[..64].rotate_left(32);
    std::fs::write(&path, &bad).unwrap();
    refused("do not merge into the section's checksum");
    // Truncated by one value, or by one byte; one value more.
    for bad in [
        good[..good.len() - 32].to_vec(),
        good[..good.len() - 1].to_vec(),
        [&good[..], &good[..32]].concat(),
        Vec::new(),
    ] {
        std::fs::write(&path, &bad).unwrap();
        refused(&format!(
            "{BLOCKS_FILE} is {} bytes, the manifest's sections need {}",
            bad.len(),
            good.len()
        ));
    }
    // Not a regular file: refused by what it is, without blocking on a FIFO.
    std::fs::remove_file(&path).unwrap();
    std::os::unix::fs::symlink(snap.join(fsnap::manifest::DATA_FILE), &path).unwrap();
    refused("is a symlink");
    std::fs::remove_file(&path).unwrap();
    nix::unistd::mkfifo(&path, nix::sys::stat::Mode::S_IRWXU).unwrap();
    refused("is a FIFO");
    std::fs::remove_file(&path).unwrap();
    std::fs::create_dir(&path).unwrap();
    refused("is a directory");
    std::fs::remove_dir(&path).unwrap();
    // Absent: the full pass.
    assert_eq!(
        build(&snap, 0).unwrap().bytes_read_to_build(),
        section_len(&snap, 0)
    );
    std::fs::write(&path, &good).unwrap();
    // A manifest entry this build does not write is refused by every reader, by name.
    let mpath = snap.join(fsnap::manifest::MANIFEST_FILE);
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(&mpath).unwrap()).unwrap();
    for ext in [
        serde_json::json!({"file": "fscheckpoint.blocks", "block_size": 4096}),
        serde_json::json!({"file": "../elsewhere", "block_size": 65536}),
        serde_json::json!("fscheckpoint.blocks"),
    ] {
        let mut m = m.clone();
        m["extensions"]["block_hashes"] = ext;
        std::fs::write(&mpath, serde_json::to_vec(&m).unwrap()).unwrap();
        let e = Manifest::load(&snap).unwrap_err().to_string();
        assert!(e.contains("extensions.block_hashes"), "{e}");
    }
}

#[test]
fn a_checkpoint_without_block_hashes_still_indexes_and_restores() {
    let t = tmp();
    let (snap, files) = large_checkpoint(t.path());
    remove_block_hashes(&snap);
    let m = fsnap::verify(&snap).unwrap();
    assert!(m.extensions.is_empty());
    let ix = build(&snap, 0).unwrap();
    assert_eq!(ix.bytes_read_to_build(), section_len(&snap, 0));
    let out = t.path().join("out");
    restore_one(&snap, 0, &out).unwrap();
    for (name, want) in &files {
        assert!(std::fs::read(out.join(name)).unwrap() == *want, "{name}");
    }
}

#[test]
fn a_stacked_save_carries_the_copied_sections_block_hashes() {
    let t = tmp();
    let (snap, files) = large_checkpoint(t.path());
    let top = t.path().join("top");
    std::fs::create_dir(&top).unwrap();
    std::fs::write(top.join("new"), b"new").unwrap();
    let m1 = Manifest::load(&snap).unwrap();
    let resource = m1.sections[0].resource.clone();
    let stacked = t.path().join("stacked");
    let inputs = [
        fsnap::Input {
            resource: resource.clone(),
            layer: 0,
            content: fsnap::Content::Section {
                checkpoint: snap.clone(),
                index: 0,
            },
        },
        fsnap::Input {
            resource,
            layer: 1,
            content: fsnap::Content::Dir(top),
        },
    ];
    fsnap::save_stacked(
        &inputs,
        &stacked,
        &fsnap::SaveOptions::default(),
        &fsnap::Progress::default(),
    )
    .unwrap();
    assert_eq!(
        std::fs::read(stacked.join(BLOCKS_FILE)).unwrap(),
        std::fs::read(snap.join(BLOCKS_FILE)).unwrap()
    );
    let ix = build(&stacked, 0).unwrap();
    assert!(ix.bytes_read_to_build() <= 12 * 65536);
    let id = ix.lookup(fsnap::index::ROOT, files[0].0).unwrap();
    let mut buf = vec![0u8; files[0].1.len()];
    ix.read_at(id, 0, &mut buf).unwrap();
    assert!(buf == files[0].1);
}

#[test]
fn a_changed_sparse_map_is_refused_at_build() {
    let t = tmp();
    let (snap, _) = large_checkpoint(t.path());
    // The map at the start of `sparse`'s data area, 5 MiB into the section: its second
    // extent's offset changed to one that still parses (20971520 instead of 22020096).
    let path = snap.join(fsnap::manifest::DATA_FILE);
    let mut data = std::fs::read(&path).unwrap();
    let at = data
        .windows(10)
        .position(|w| w == b"\n22020096\n")
        .expect("the sparse map");
    assert!(at > 5 * MIB, "the map is beyond the first blocks");
    data[at + 1..at + 9].copy_from_slice(b"20971520");
    std::fs::write(&path, &data).unwrap();
    let e = build(&snap, 0).map(|_| ()).unwrap_err().to_string();
    assert!(
        e.contains("section 0") && e.contains("checksum mismatch: bytes"),
        "{e}"
    );
}
