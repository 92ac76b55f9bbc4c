//! Reading one section of the data file: a byte range read with positional reads, hashed as
//! it passes, so that a section's checksum is checked in the same pass that parses it.

use std::fs::File;
use std::io::{BufReader, Read};
use std::os::unix::fs::FileExt;

use crate::block_hash::{BlockHasher, BlockHashes};
use crate::error::{Error, Result};
use crate::manifest::{checksum_hex, Section};
use crate::tar::reader::Reader;
use crate::tar::{Entry, Kind};

/// `Read` over `[start, end)` of a file with positional reads.
pub struct RangeReader<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl<'a> RangeReader<'a> {
    pub fn new(file: &'a File, start: u64, end: u64) -> Self {
        RangeReader {
            file,
            pos: start,
            end,
        }
    }
}

impl Read for RangeReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let want = (self.end - self.pos).min(buf.len() as u64) as usize;
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        if n == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "the data file ends inside the section",
            ));
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A reader that hashes what passes through it (a section of a known length, block by
/// block: see [`crate::block_hash`]).
pub struct Hashing<R> {
    pub inner: R,
    pub hasher: BlockHasher,
}

impl<R> Hashing<R> {
    pub fn new(inner: R, len: u64) -> Self {
        Hashing {
            inner,
            hasher: BlockHasher::new(len),
        }
    }
}

impl<R: Read> Read for Hashing<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.hasher.update(&buf[..n]);
        Ok(n)
    }
}

/// Bytes read from the data file at a time while a section is parsed (headers are 512 bytes:
/// one read serves many).
const READ_AHEAD: usize = 1 << 20;

/// The reader a section is parsed with.
pub type SectionReader<'a> = Reader<Hashing<BufReader<RangeReader<'a>>>>;

/// Parse section `index` of `data`: every entry (its path checked to stay inside the section)
/// goes to `each`, which may consume its content; then the checksum of the whole range is
/// compared. Any failure names the section. What verifies each block of the section again
/// later is returned.
pub fn read_section(
    data: &File,
    index: usize,
    s: &Section,
    each: impl FnMut(&Entry, &mut SectionReader) -> Result<()>,
) -> Result<BlockHashes> {
    let fail = |reason: String| Error::Section {
        section: index,
        resource: s.resource.to_string(),
        reason,
    };
    let range = RangeReader::new(data, s.tar_start, s.tar_end);
    let len = s.tar_end - s.tar_start;
    let mut r = Reader::new(Hashing::new(
        BufReader::with_capacity(READ_AHEAD, range),
        len,
    ));
    let entries = parse_entries(&mut r, index, s, each)?;
    r.drain().map_err(&fail)?;
    let (hash, blocks) = r
        .into_inner()
        .hasher
        .finalize()
        .ok_or_else(|| fail("the section was not read to its end".into()))?;
    let want = checksum_hex(&s.checksum).map_err(&fail)?;
    if hash.to_hex().as_str() != want {
        return Err(fail(format!(
            "checksum mismatch: the data is corrupt or was changed (blake3 {} != {want})",
            hash.to_hex()
        )));
    }
    check_count(entries, index, s)?;
    Ok(blocks)
}

/// Every entry of section `index` from `r` up to the tar's end, each path checked to stay
/// inside the section and no more entries than the manifest says, each handed to `each`;
/// how many there were.
pub(crate) fn parse_entries<R: Read>(
    r: &mut Reader<R>,
    index: usize,
    s: &Section,
    mut each: impl FnMut(&Entry, &mut Reader<R>) -> Result<()>,
) -> Result<u64> {
    let fail = |reason: String| Error::Section {
        section: index,
        resource: s.resource.to_string(),
        reason,
    };
    let mut entries = 0u64;
    while let Some(e) = r.next_entry().map_err(&fail)? {
        check_path(&e.path).map_err(|reason| Error::Entry {
            section: index,
            entry: e.path.clone(),
            reason,
        })?;
        if let Kind::HardLink(t) = &e.kind {
            check_path(t).map_err(|reason| Error::Entry {
                section: index,
                entry: e.path.clone(),
                reason: format!("hard link target: {reason}"),
            })?;
        }
        entries += 1;
        if entries > s.files {
            return Err(fail(format!(
                "holds more entries than the {} the manifest says",
                s.files
            )));
        }
        each(&e, r)?;
    }
    Ok(entries)
}

/// A section must hold exactly the entries its manifest says.
pub(crate) fn check_count(entries: u64, index: usize, s: &Section) -> Result<()> {
    if entries != s.files {
        return Err(Error::Section {
            section: index,
            resource: s.resource.to_string(),
            reason: format!("holds {entries} entries, the manifest says {}", s.files),
        });
    }
    Ok(())
}

/// An entry path must be relative and stay inside the section: no leading `/`, no `..`, no
/// NUL.
pub fn check_path(path: &str) -> std::result::Result<(), String> {
    if path.starts_with('/') {
        return Err("absolute path refused".into());
    }
    if path.contains('\0') {
        return Err("path with a NUL byte refused".into());
    }
    if path.split('/').any(|c| c == "..") {
        return Err("path with '..' refused".into());
    }
    if path != "." && path.split('/').any(|c| c.is_empty() || c == ".") {
        return Err("path with empty or '.' components refused".into());
    }
    Ok(())
}
