//! Saving directories as a filesystem checkpoint. Each source is planned first (metadata only), which
//! fixes every section's exact size; the sections then stream in parallel straight into their
//! place in the data file (one thread per section, bounded by the cores), hashing as they go.
//! Each section's block chaining values go into the block hashes file ([`crate::blocks_file`]).
//! Everything is written under a temporary name beside the destination, fsynced, and renamed
//! into place: a crash never leaves something that looks like a checkpoint. [`save_stacked`]
//! also takes sections of other checkpoints, copied verbatim ([`crate::stack`]).

use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;

use crate::block_hash::BlockHashes;
use crate::blocks_file;
use crate::destination::{
    check_outside, fsync_dir, parent_dir, require_absent_or_empty, temp_sibling,
};
use crate::error::{Error, Result};
use crate::manifest::{checksum_text, Manifest, ResourceId, Section, DATA_FILE, MANIFEST_FILE};
use crate::pool::{helpers, parallel};
use crate::prefetch::with_prefetch;
use crate::progress::Progress;
use crate::section_writer::{SectionWriter, ALIGN};
use crate::stack::{Content, Input, Parent};
use crate::tar::{header, padded, sparse, Kind, END_OF_ARCHIVE};
use crate::walk::{open_planned, open_root, plan, Planned};

/// A directory to save and what it is.
#[derive(Debug, Clone)]
pub struct Source {
    pub resource: ResourceId,
    pub dir: PathBuf,
}

#[derive(Debug, Default)]
pub struct SaveOptions {
    /// Write the data file with O_DIRECT (bypassing the page cache).
    pub direct: bool,
}

/// Save `sources` as a filesystem checkpoint in the new directory `out`.
pub fn save(
    sources: &[Source],
    out: &Path,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<Manifest> {
    let inputs: Vec<Input> = sources
        .iter()
        .map(|s| Input {
            resource: s.resource.clone(),
            layer: 0,
            content: Content::Dir(s.dir.clone()),
        })
        .collect();
    save_stacked(&inputs, out, opts, progress)
}

/// Save `inputs` (directories, and sections of other checkpoints copied verbatim; layers of
/// one resource in order, bottom first) as a filesystem checkpoint in the new directory `out`.
pub fn save_stacked(
    sources: &[Input],
    out: &Path,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<Manifest> {
    crate::resource::check_all(sources.iter().map(|s| (&s.resource, s.layer))).map_err(
        |reason| Error::Target {
            path: out.into(),
            reason: format!("cannot record the sources: {reason}"),
        },
    )?;
    let dirs: Vec<&Path> = sources.iter().filter_map(Input::dir).collect();
    check_outside(out, &dirs)?;
    check_destination(out)?;
    let tmp = temp_sibling(out, "save")?;
    let result = write_checkpoint(sources, &tmp, opts, progress);
    match result {
        Ok(manifest) => {
            if out.exists() {
                std::fs::remove_dir(out).map_err(|e| Error::Target {
                    path: out.into(),
                    reason: format!("replace the empty directory: {e}"),
                })?;
            }
            std::fs::rename(&tmp, out).map_err(|e| {
                let _ = std::fs::remove_dir_all(&tmp);
                Error::Target {
                    path: out.into(),
                    reason: format!("rename into place: {e}"),
                }
            })?;
            fsync_dir(&parent_dir(out))?;
            Ok(manifest)
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(e)
        }
    }
}

/// `out` must not exist, or be an empty directory; never a checkpoint.
fn check_destination(out: &Path) -> Result<()> {
    if out.join(MANIFEST_FILE).exists() {
        return Err(Error::Target {
            path: out.into(),
            reason: "already holds a filesystem checkpoint; save into a new directory".into(),
        });
    }
    require_absent_or_empty(out, "is not empty")
}

/// How one section is made: a walked directory's plan, or a section to copy.
enum Plan {
    Walk(Vec<Planned>),
    Copy(Parent),
}

fn write_checkpoint(
    sources: &[Input],
    dir: &Path,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<Manifest> {
    // Plan every source (metadata only), in parallel.
    let plans: Vec<Plan> = parallel(sources, |_, s| match &s.content {
        Content::Dir(d) => plan(d).map(Plan::Walk),
        Content::Section { checkpoint, index } => Parent::open(checkpoint, *index).map(Plan::Copy),
    })?;
    // Lay the sections out.
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for p in &plans {
        let len: u64 = match p {
            Plan::Walk(p) => {
                p.iter().map(|e| header::encoded_len(&e.entry)).sum::<u64>()
                    + END_OF_ARCHIVE.len() as u64
            }
            Plan::Copy(parent) => parent.len(),
        };
        ranges.push((offset, offset + len));
        offset = (offset + len).div_ceil(ALIGN) * ALIGN;
    }
    let total = ranges.last().map_or(0, |r| r.1);
    progress.total.store(total, Ordering::Relaxed);
    let data_path = dir.join(DATA_FILE);
    let mut oo = std::fs::OpenOptions::new();
    oo.read(true).write(true).create_new(true);
    if opts.direct {
        oo.custom_flags(libc::O_DIRECT);
    }
    let data = oo.open(&data_path).map_err(|e| Error::Target {
        path: data_path.clone(),
        reason: if opts.direct {
            format!("open with O_DIRECT: {e} (the filesystem may not support it)")
        } else {
            e.to_string()
        },
    })?;
    let file_len = if opts.direct {
        total.div_ceil(ALIGN) * ALIGN
    } else {
        total
    };
    data.set_len(file_len)
        .map_err(|e| Error::io(format!("size {}", data_path.display()), e))?;
    let jobs: Vec<SectionJob> = sources
        .iter()
        .zip(&plans)
        .zip(&ranges)
        .enumerate()
        .map(|(i, ((s, p), r))| (i, s, p, *r))
        .collect();
    let written: Vec<(Section, BlockHashes)> =
        parallel(&jobs, |_, (i, s, p, r)| match (p, &s.content) {
            (Plan::Walk(p), Content::Dir(d)) => write_section(
                &data,
                *i,
                &s.resource,
                d,
                s.layer,
                p,
                *r,
                opts.direct,
                progress,
            ),
            (Plan::Copy(parent), _) => {
                parent.copy_into(&data, r.0, &s.resource, s.layer, opts.direct, progress)
            }
            (Plan::Walk(_), Content::Section { .. }) => unreachable!("a walk plans a directory"),
        })?;
    if opts.direct && file_len != total {
        data.set_len(total)
            .map_err(|e| Error::io(format!("size {}", data_path.display()), e))?;
    }
    data.sync_all()
        .map_err(|e| Error::io(format!("fsync {}", data_path.display()), e))?;
    let (sections, blocks): (Vec<Section>, Vec<BlockHashes>) = written.into_iter().unzip();
    blocks_file::write(dir, &blocks)?;
    let mut manifest = Manifest::new(sections, total);
    manifest
        .extensions
        .insert(blocks_file::EXTENSION.into(), blocks_file::extension());
    let mpath = manifest.write(dir)?;
    File::open(&mpath)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", mpath.display()), e))?;
    fsync_dir(dir)?;
    Ok(manifest)
}

/// One section to write: its index, input, plan and byte range.
type SectionJob<'a> = (usize, &'a Input, &'a Plan, (u64, u64));

/// Stream one section (the directory `dir`, planned as `entries`) into `data` at its range.
#[allow(clippy::too_many_arguments)]
fn write_section(
    data: &File,
    index: usize,
    resource: &ResourceId,
    dir: &Path,
    layer: u32,
    entries: &[Planned],
    (start, end): (u64, u64),
    direct: bool,
    progress: &Progress,
) -> Result<(Section, BlockHashes)> {
    let mut w = SectionWriter::new(data, start, end - start, direct, progress);
    let (mut files, mut logical, mut stored) = (0u64, 0u64, 0u64);
    let root = open_root(dir)?;
    with_prefetch(root.as_fd(), entries, helpers(), |pf| -> Result<()> {
        for (i, p) in entries.iter().enumerate() {
            let e = &p.entry;
            let (headers, data_len) = header::encode(e);
            w.put(&headers)?;
            if let (Kind::File, Some(map)) = (&e.kind, &e.sparse) {
                w.put(&sparse::encode_map(map))?;
            }
            let ahead = pf.take(i);
            if let Some(path) = &p.source {
                match ahead {
                    Some(read) => {
                        let (bytes, grew) = read.map_err(|err| source_err(path, err))?;
                        if bytes.len() as u64 != e.size {
                            return Err(changed(path, "shrank"));
                        }
                        if grew {
                            return Err(changed(path, "grew"));
                        }
                        w.put(&bytes)?;
                    }
                    None => stream_file(&mut w, root.as_fd(), p)?,
                }
            }
            let pad = padded(data_len) - data_len;
            w.zeros(pad)?;
            files += 1;
            logical += e.size;
            stored += e.stored_bytes();
            progress.files.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    })?;
    w.put(&END_OF_ARCHIVE)?;
    let (written, hashed) = w.finish()?;
    let Some((hash, blocks)) = hashed.filter(|_| start + written == end) else {
        return Err(Error::Source {
            path: dir.to_path_buf(),
            reason: format!(
                "changed during the save: planned {} bytes, wrote {written}",
                end - start
            ),
        });
    };
    let section = Section {
        resource: resource.clone(),
        layer,
        tar_start: start,
        tar_end: end,
        checksum: checksum_text(&hash),
        files,
        logical_bytes: logical,
        stored_bytes: stored,
    };
    log::debug!("section {index} written");
    Ok((section, blocks))
}

fn changed(path: &Path, what: &str) -> Error {
    Error::Source {
        path: path.into(),
        reason: format!("{what} during the save (pause the writer and save again)"),
    }
}

/// Copy a large or sparse file's stored bytes straight from the file.
fn stream_file(w: &mut SectionWriter, root: BorrowedFd, p: &Planned) -> Result<()> {
    let (e, path) = (
        &p.entry,
        p.source.as_deref().unwrap_or(Path::new(&p.entry.path)),
    );
    let f = open_planned(root, &e.path, p.inode).map_err(|err| source_err(path, err))?;
    let runs: Vec<(u64, u64)> = match &e.sparse {
        Some(map) => map.clone(),
        None => vec![(0, e.size)],
    };
    for (off, len) in runs {
        if !w
            .copy_from(&f, off, len)
            .map_err(|err| source_err(path, err))?
        {
            return Err(changed(path, "shrank"));
        }
    }
    if e.sparse.is_none() {
        let mut probe = [0u8; 1];
        if f.read_at(&mut probe, e.size)
            .map_err(|err| source_err(path, err))?
            != 0
        {
            return Err(changed(path, "grew"));
        }
    }
    Ok(())
}

fn source_err(path: &Path, e: std::io::Error) -> Error {
    Error::Source {
        path: path.into(),
        reason: e.to_string(),
    }
}
