//! Saving directories as a snapshot. Each source is planned first (metadata only), which
//! fixes every section's exact size; the sections then stream in parallel straight into their
//! place in the data file (one thread per section, bounded by the cores), hashing as they go.
//! Everything is written under a temporary name beside the destination, fsynced, and renamed
//! into place: a crash never leaves something that looks like a snapshot.

use std::fs::File;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use crate::error::{Error, Result};
use crate::manifest::{checksum_text, Manifest, ResourceId, Section, DATA_FILE, MANIFEST_FILE};
use crate::prefetch::with_prefetch;
use crate::tar::{header, padded, sparse, Kind, END_OF_ARCHIVE};
use crate::walk::{plan, Planned};

/// Sections start on this boundary (O_DIRECT needs it; the gap is zeros outside any range).
const ALIGN: u64 = 4096;
/// Size of each section's write buffer.
const BUFFER: usize = 4 << 20;

/// A directory to save and what it is.
#[derive(Debug, Clone)]
pub struct Source {
    pub resource: ResourceId,
    pub dir: PathBuf,
}

/// Counters a caller may watch while a save or restore runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Total bytes expected (known once planning is done).
    pub total: AtomicU64,
}

#[derive(Debug, Default)]
pub struct SaveOptions {
    /// Write the data file with O_DIRECT (bypassing the page cache).
    pub direct: bool,
}

/// Save `sources` as a snapshot in the new directory `out`.
pub fn save(
    sources: &[Source],
    out: &Path,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<Manifest> {
    check_destination(out)?;
    let tmp = temp_sibling(out, "save")?;
    let result = write_snapshot(sources, &tmp, opts, progress);
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

/// `out` must not exist, or be an empty directory; never a snapshot.
fn check_destination(out: &Path) -> Result<()> {
    if out.join(MANIFEST_FILE).exists() {
        return Err(Error::Target {
            path: out.into(),
            reason: "already holds a snapshot; save into a new directory".into(),
        });
    }
    require_absent_or_empty(out, "is not empty")
}

/// The one rule for where a save or restore may write: nothing there yet, or an empty
/// directory. `why` completes the refusal.
pub(crate) fn require_absent_or_empty(path: &Path, why: &str) -> Result<()> {
    match std::fs::read_dir(path) {
        Ok(mut entries) => match entries.next() {
            None => Ok(()),
            Some(_) => Err(Error::Target {
                path: path.into(),
                reason: why.into(),
            }),
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::Target {
            path: path.into(),
            reason: e.to_string(),
        }),
    }
}

/// The directory holding `path` (`.` for a bare name).
fn parent_dir(path: &Path) -> PathBuf {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}

/// A fresh directory next to `path` for work in progress.
pub(crate) fn temp_sibling(path: &Path, what: &str) -> Result<PathBuf> {
    let name = path
        .file_name()
        .ok_or_else(|| Error::Target {
            path: path.into(),
            reason: "has no file name".into(),
        })?
        .to_string_lossy();
    let parent = parent_dir(path);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    let tmp = parent.join(format!(
        ".{name}.fsnap-{what}-{}-{nanos}",
        std::process::id()
    ));
    std::fs::create_dir(&tmp).map_err(|e| Error::Target {
        path: tmp.clone(),
        reason: format!("create work directory: {e}"),
    })?;
    Ok(tmp)
}

fn write_snapshot(
    sources: &[Source],
    dir: &Path,
    opts: &SaveOptions,
    progress: &Progress,
) -> Result<Manifest> {
    // Plan every source (metadata only), in parallel.
    let plans: Vec<Vec<Planned>> = parallel(sources, |_, s| plan(&s.dir))?;
    // Lay the sections out.
    let mut ranges = Vec::new();
    let mut offset = 0u64;
    for p in &plans {
        let len: u64 = p.iter().map(|e| header::encoded_len(&e.entry)).sum::<u64>()
            + END_OF_ARCHIVE.len() as u64;
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
    let sections: Vec<Section> = parallel(&jobs, |_, (i, s, p, r)| {
        write_section(&data, *i, s, p, *r, opts.direct, progress)
    })?;
    if opts.direct && file_len != total {
        data.set_len(total)
            .map_err(|e| Error::io(format!("size {}", data_path.display()), e))?;
    }
    data.sync_all()
        .map_err(|e| Error::io(format!("fsync {}", data_path.display()), e))?;
    let manifest = Manifest::new(sections, total);
    let mpath = manifest.write(dir)?;
    File::open(&mpath)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", mpath.display()), e))?;
    fsync_dir(dir)?;
    Ok(manifest)
}

/// One section to write: its index, source, planned entries and byte range.
type SectionJob<'a> = (usize, &'a Source, &'a Vec<Planned>, (u64, u64));

/// Stream one section into `data` at its range.
fn write_section(
    data: &File,
    index: usize,
    source: &Source,
    entries: &[Planned],
    (start, end): (u64, u64),
    direct: bool,
    progress: &Progress,
) -> Result<Section> {
    let mut w = SectionWriter::new(data, start, direct, progress);
    let (mut files, mut logical, mut stored) = (0u64, 0u64, 0u64);
    let readers = std::thread::available_parallelism()
        .map(|n| n.get().saturating_sub(1))
        .unwrap_or(1)
        .max(1);
    with_prefetch(entries, readers, |pf| -> Result<()> {
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
                    None => stream_file(&mut w, path, e)?,
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
    let (hash, written) = w.finish()?;
    if start + written != end {
        return Err(Error::Source {
            path: source.dir.clone(),
            reason: format!(
                "changed during the save: planned {} bytes, wrote {written}",
                end - start
            ),
        });
    }
    Ok(Section {
        resource: source.resource.clone(),
        tar_start: start,
        tar_end: end,
        checksum: checksum_text(&hash),
        files,
        logical_bytes: logical,
        stored_bytes: stored,
    })
    .inspect(|_| log::debug!("section {index} written"))
}

fn changed(path: &Path, what: &str) -> Error {
    Error::Source {
        path: path.into(),
        reason: format!("{what} during the save (pause the writer and save again)"),
    }
}

/// Copy a large or sparse file's stored bytes straight from the file.
fn stream_file(w: &mut SectionWriter, path: &Path, e: &crate::tar::Entry) -> Result<()> {
    let f = File::open(path).map_err(|err| source_err(path, err))?;
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

/// Buffered positional writes of one section, hashing what it writes; with O_DIRECT the
/// buffer is page-aligned and flushed in whole pages.
struct SectionWriter<'a> {
    file: &'a File,
    progress: &'a Progress,
    /// File offset of `buf[0]`.
    at: u64,
    buf: AlignedBuf,
    len: usize,
    hasher: blake3::Hasher,
    written: u64,
    direct: bool,
}

impl<'a> SectionWriter<'a> {
    fn new(file: &'a File, at: u64, direct: bool, progress: &'a Progress) -> Self {
        SectionWriter {
            file,
            progress,
            at,
            buf: AlignedBuf::new(BUFFER),
            len: 0,
            hasher: blake3::Hasher::new(),
            written: 0,
            direct,
        }
    }

    fn put(&mut self, mut bytes: &[u8]) -> Result<()> {
        while !bytes.is_empty() {
            let n = bytes.len().min(BUFFER - self.len);
            self.buf.as_mut()[self.len..self.len + n].copy_from_slice(&bytes[..n]);
            self.len += n;
            bytes = &bytes[n..];
            if self.len == BUFFER {
                self.flush()?;
            }
        }
        Ok(())
    }

    fn zeros(&mut self, mut n: u64) -> Result<()> {
        const Z: [u8; 512] = [0; 512];
        while n > 0 {
            let k = n.min(512) as usize;
            self.put(&Z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Copy `len` bytes of `f` from `offset`; false when the file ended early.
    fn copy_from(&mut self, f: &File, mut offset: u64, mut len: u64) -> std::io::Result<bool> {
        while len > 0 {
            let room = BUFFER - self.len;
            let want = (len as usize).min(room);
            let n = f.read_at(&mut self.buf.as_mut()[self.len..self.len + want], offset)?;
            if n == 0 {
                return Ok(false);
            }
            self.len += n;
            offset += n as u64;
            len -= n as u64;
            if self.len == BUFFER {
                self.flush().map_err(std::io::Error::other)?;
            }
        }
        Ok(true)
    }

    fn flush(&mut self) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.hasher.update(&self.buf.as_mut()[..self.len]);
        let mut out = self.len;
        if self.direct {
            // Whole pages only; the zeros beyond the section fall in the alignment gap.
            let aligned = self.len.div_ceil(ALIGN as usize) * ALIGN as usize;
            self.buf.as_mut()[self.len..aligned].fill(0);
            out = aligned;
        }
        self.file
            .write_all_at(&self.buf.as_mut()[..out], self.at)
            .map_err(|e| Error::io("write the data file", e))?;
        self.at += self.len as u64;
        self.written += self.len as u64;
        self.progress
            .bytes
            .fetch_add(self.len as u64, Ordering::Relaxed);
        self.len = 0;
        Ok(())
    }

    fn finish(mut self) -> Result<(blake3::Hash, u64)> {
        self.flush()?;
        Ok((self.hasher.finalize(), self.written))
    }
}

/// A page-aligned byte buffer (O_DIRECT needs aligned memory).
struct AlignedBuf {
    ptr: *mut u8,
    layout: std::alloc::Layout,
}

// SAFETY: the buffer is exclusively owned.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    fn new(size: usize) -> Self {
        let layout = std::alloc::Layout::from_size_align(size + ALIGN as usize, ALIGN as usize)
            .expect("valid layout");
        // SAFETY: non-zero size.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        if ptr.is_null() {
            std::alloc::handle_alloc_error(layout);
        }
        AlignedBuf { ptr, layout }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr is valid for layout.size() bytes.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.layout.size()) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated with this layout.
        unsafe { std::alloc::dealloc(self.ptr, self.layout) }
    }
}

/// Run `f` over `items` on up to as many threads as there are cores; results in order, the
/// first error wins.
pub(crate) fn parallel<T: Sync, R: Send>(
    items: &[T],
    f: impl Fn(usize, &T) -> Result<R> + Sync,
) -> Result<Vec<R>> {
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(items.len().max(1));
    let next = AtomicU64::new(0);
    let results: Mutex<Vec<Option<Result<R>>>> =
        Mutex::new((0..items.len()).map(|_| None).collect());
    std::thread::scope(|scope| {
        for _ in 0..threads {
            scope.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= items.len() {
                    return;
                }
                let r = f(i, &items[i]);
                results.lock().unwrap_or_else(|e| e.into_inner())[i] = Some(r);
            });
        }
    });
    results
        .into_inner()
        .unwrap_or_else(|e| e.into_inner())
        .into_iter()
        .map(|r| r.expect("every item ran"))
        .collect()
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(|e| Error::io(format!("fsync {}", dir.display()), e))
}
