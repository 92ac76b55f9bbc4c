//! Writing one section into the data file: buffered positional writes at the section's place,
//! hashing what passes block by block ([`crate::block_hash`]: the checksum and each block's
//! chaining value, saved in the block hashes file); with O_DIRECT the buffer is page-aligned
//! and flushed in whole pages.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::sync::atomic::Ordering;

use crate::block_hash::{BlockHasher, BlockHashes};
use crate::error::{Error, Result};
use crate::progress::Progress;

/// Sections start on this boundary (O_DIRECT needs it; the gap is zeros outside any range).
pub(crate) const ALIGN: u64 = 4096;
/// Size of each section's write buffer.
const BUFFER: usize = 4 << 20;

/// Buffered positional writes of one section, hashing what it writes; with O_DIRECT the
/// buffer is page-aligned and flushed in whole pages.
pub(crate) struct SectionWriter<'a> {
    file: &'a File,
    progress: &'a Progress,
    /// File offset of `buf[0]`.
    at: u64,
    buf: AlignedBuf,
    len: usize,
    hasher: BlockHasher,
    written: u64,
    direct: bool,
}

impl<'a> SectionWriter<'a> {
    /// A writer of a section of `len` bytes at `at`.
    pub(crate) fn new(
        file: &'a File,
        at: u64,
        len: u64,
        direct: bool,
        progress: &'a Progress,
    ) -> Self {
        SectionWriter {
            file,
            progress,
            at,
            buf: AlignedBuf::new(BUFFER),
            len: 0,
            hasher: BlockHasher::new(len),
            written: 0,
            direct,
        }
    }

    pub(crate) fn put(&mut self, mut bytes: &[u8]) -> Result<()> {
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

    pub(crate) fn zeros(&mut self, mut n: u64) -> Result<()> {
        const Z: [u8; 512] = [0; 512];
        while n > 0 {
            let k = n.min(512) as usize;
            self.put(&Z[..k])?;
            n -= k as u64;
        }
        Ok(())
    }

    /// Copy `len` bytes of `f` from `offset`; false when the file ended early.
    pub(crate) fn copy_from(
        &mut self,
        f: &File,
        mut offset: u64,
        mut len: u64,
    ) -> std::io::Result<bool> {
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

    /// Bytes written, and the checksum with each block's chaining value — `None` unless
    /// exactly the section's `len` bytes were written.
    pub(crate) fn finish(mut self) -> Result<(u64, Option<(blake3::Hash, BlockHashes)>)> {
        self.flush()?;
        Ok((self.written, self.hasher.finalize()))
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
    pub(crate) fn new(size: usize) -> Self {
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
