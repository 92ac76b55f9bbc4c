//! Arbitrary bytes as a section's tar stream (with a matching checksum, so that every check
//! but the checksum's is what judges them), indexed: building the index must never panic, and
//! an index that builds is a tree — ids `1..=len`, children sorted and found by `lookup`, each
//! node reached once per name — whose every file reads to its size.
#![no_main]

use std::path::PathBuf;
use std::sync::OnceLock;

use fsnap::index::{NodeId, ROOT};
use fsnap::tar::Kind;
use libfuzzer_sys::fuzz_target;

/// One scratch checkpoint directory for the whole run (rewritten by every input).
fn scratch() -> &'static PathBuf {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("fsnap-fuzz-index-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = scratch();
    std::fs::write(dir.join(fsnap::manifest::DATA_FILE), data).unwrap();
    let manifest = fsnap::Manifest::new(
        vec![fsnap::Section {
            resource: fsnap::ResourceId {
                container: "c".into(),
                path: "/x".into(),
                kind: fsnap::ResourceKind::Tmpfs,
            },
            tar_start: 0,
            tar_end: data.len() as u64,
            checksum: fsnap::manifest::checksum_text(&blake3::hash(data)),
            files: (data.len() as u64 / 512).max(1),
            logical_bytes: 0,
            stored_bytes: 0,
            layer: 0,
        }],
        data.len() as u64,
    );
    let opts = fsnap::RestoreOptions {
        allow_devices: data.len() % 2 == 0,
        overlay_layer: data.len() % 3 == 0,
    };
    let Ok(ix) = fsnap::SectionIndex::build(dir, &manifest, 0, &opts) else {
        return;
    };
    let mut names = vec![0u32; ix.len() + 1];
    names[ROOT as usize] = 1;
    let mut buf = vec![0u8; 4096];
    for id in 1..=ix.len() as NodeId {
        let node = ix.node(id).expect("ids are 1..=len");
        assert!(node.children.windows(2).all(|w| w[0].0 < w[1].0), "children sorted, once");
        for (name, child) in &node.children {
            assert_eq!(ix.lookup(id, name), Some(*child));
            assert!(ix.node(*child).is_some());
            names[*child as usize] += 1;
        }
        assert!(!matches!(node.entry.kind, Kind::HardLink(_)));
        if node.entry.kind == Kind::File {
            let size = node.entry.size.min(1 << 20);
            let mut off = 0;
            while off < size {
                let n = ix.read_at(id, off, &mut buf).expect("a file reads");
                assert!(n > 0, "short only at the end");
                off += n as u64;
            }
        }
    }
    for id in 1..=ix.len() {
        assert!(names[id] >= 1, "node {id} reached by no name");
        let node = ix.node(id as NodeId).unwrap();
        if node.entry.kind == Kind::Dir {
            assert_eq!(names[id], 1, "a directory has one name");
        } else {
            assert_eq!(names[id], node.nlink, "link count of node {id}");
        }
    }
});
