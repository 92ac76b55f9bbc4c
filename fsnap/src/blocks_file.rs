//! The block hashes file, `fscheckpoint.blocks` (formats 1.x and 2.x, named in the manifest's
//! `extensions` as `"block_hashes": {"file": "fscheckpoint.blocks", "block_size": 65536}`):
//! for each section in manifest order, the 32-byte BLAKE3 chaining value of each 64 KiB block
//! of its range, in order (`block_hash.rs`) — none for a section of one block or less —
//! and nothing else. It lets a reader verify the blocks it reads without reading the whole
//! section first: the values of a section must merge into its checksum before any is used,
//! so the file adds nothing a reader must trust. A checkpoint without it (saved before it
//! existed, or moved without it) is read in one full pass, as before.

use std::io::{BufWriter, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;

use crate::block_hash::{stored_count, BlockHashes, BLOCK};
use crate::checkpoint_files::open_regular;
use crate::error::{Error, Result};
use crate::manifest::{checksum_hex, Manifest, Section};

/// The file's name in a checkpoint directory.
pub const BLOCKS_FILE: &str = "fscheckpoint.blocks";
/// The key of its entry in the manifest's `extensions`.
pub const EXTENSION: &str = "block_hashes";
/// Bytes of one chaining value.
const CV: u64 = 32;

/// The manifest's `extensions` entry naming the file.
pub(crate) fn extension() -> serde_json::Value {
    serde_json::json!({ "file": BLOCKS_FILE, "block_size": BLOCK })
}

/// The file the manifest names, if it names one; an error for an entry this build does not
/// read as written by [`extension`] (a checkpoint means exactly what this build understands;
/// another layout, e.g. another block size, would come under another key, which this build
/// ignores).
pub(crate) fn named(m: &Manifest) -> std::result::Result<Option<&'static str>, String> {
    let Some(v) = m.extensions.get(EXTENSION) else {
        return Ok(None);
    };
    if *v != extension() {
        return Err(format!(
            "extensions.{EXTENSION} is {v}, not {} (the only block hashes this build reads)",
            extension()
        ));
    }
    Ok(Some(BLOCKS_FILE))
}

/// Write every section's chaining values (in section order) as `dir/fscheckpoint.blocks`,
/// fsynced.
pub(crate) fn write(dir: &Path, sections: &[BlockHashes]) -> Result<()> {
    let path = dir.join(BLOCKS_FILE);
    let io = |e| Error::io(format!("write {}", path.display()), e);
    let f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(io)?;
    let mut w = BufWriter::with_capacity(1 << 20, &f);
    for s in sections {
        for cv in s.stored() {
            w.write_all(cv).map_err(io)?;
        }
    }
    w.flush().map_err(io)?;
    drop(w);
    f.sync_all()
        .map_err(|e| Error::io(format!("fsync {}", path.display()), e))
}

/// What verifies each block of section `index` of the checkpoint in `dir` (`manifest`
/// validated), from its block hashes file: `None` when the manifest names none or the file is
/// absent (read the section in full). The file must be a regular file of exactly the size the
/// manifest's sections need, and the section's values must merge into its checksum; anything
/// else is refused naming the section (a corrupt checkpoint).
pub(crate) fn load(dir: &Path, manifest: &Manifest, index: usize) -> Result<Option<BlockHashes>> {
    let s = manifest.section(dir, index)?;
    let fail = |reason: String| Error::Section {
        section: index,
        resource: s.resource.to_string(),
        reason,
    };
    let Some(name) = named(manifest).map_err(|reason| Error::Manifest {
        path: dir.join(crate::manifest::MANIFEST_FILE),
        reason,
    })?
    else {
        return Ok(None);
    };
    let path = dir.join(name);
    if let Err(e) = std::fs::symlink_metadata(&path) {
        if e.kind() == std::io::ErrorKind::NotFound {
            log::info!(
                "{}: no {name}; section {index} is verified in one full pass",
                dir.display()
            );
            return Ok(None);
        }
    }
    let (f, size) = open_regular(&path).map_err(|why| fail(format!("{name} {why}")))?;
    let values = |s: &Section| stored_count(s.tar_end - s.tar_start);
    let total: u64 = manifest.sections.iter().map(values).sum::<u64>() * CV;
    if size != total {
        return Err(fail(format!(
            "{name} is {size} bytes, the manifest's sections need {total} (truncated, \
             oversized or replaced: the checkpoint is corrupt)"
        )));
    }
    let before: u64 = manifest.sections[..index].iter().map(values).sum::<u64>() * CV;
    let mut bytes = vec![0u8; (values(s) * CV) as usize];
    f.read_exact_at(&mut bytes, before)
        .map_err(|e| fail(format!("read {name}: {e}")))?;
    let cvs = bytes
        .chunks_exact(CV as usize)
        .map(|c| c.try_into().expect("32-byte chunks"))
        .collect();
    let root = blake3::Hash::from_hex(checksum_hex(&s.checksum).map_err(&fail)?)
        .map_err(|e| fail(format!("checksum: {e}")))?;
    BlockHashes::from_stored(s.tar_end - s.tar_start, cvs, &root)
        .map(Some)
        .ok_or_else(|| {
            fail(format!(
                "the block hashes in {name} do not merge into the section's checksum (the \
                 checkpoint is corrupt)"
            ))
        })
}
