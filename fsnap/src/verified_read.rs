//! Reading a section's bytes in place, each 64 KiB block verified against what its checksum
//! keeps ([`BlockHashes`]) before any of it is used: the reads of an index's files, and the
//! header-only pass that builds an index from saved block hashes ([`crate::blocks_file`]).

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::FileExt;

use crate::block_hash::{BlockHashes, BLOCK};

/// A section's range of the data file and what verifies each of its blocks.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Blocks<'a> {
    pub data: &'a File,
    /// The section's range in the data file.
    pub start: u64,
    pub len: u64,
    pub hashes: &'a BlockHashes,
}

/// The last block read and verified, kept for the next read.
#[derive(Default)]
pub(crate) struct Block {
    index: Option<u64>,
    bytes: Vec<u8>,
    /// Bytes read from the data file so far.
    pub loaded: u64,
}

impl Blocks<'_> {
    /// Fill `out` from offset `at` of the section (the range must be inside it), through
    /// whole blocks each verified before any of it is used; `block` keeps the last one.
    pub(crate) fn read(&self, at: u64, out: &mut [u8], block: &mut Block) -> std::io::Result<()> {
        if at
            .checked_add(out.len() as u64)
            .is_none_or(|end| end > self.len)
        {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "bytes {at}..+{} are outside the section's {} bytes",
                    out.len(),
                    self.len
                ),
            ));
        }
        let mut done = 0;
        while done < out.len() {
            let at = at + done as u64;
            let i = at / BLOCK;
            if block.index != Some(i) {
                let first = i * BLOCK;
                let n = (self.len - first).min(BLOCK);
                block.bytes.resize(n as usize, 0);
                block.index = None;
                self.data
                    .read_exact_at(&mut block.bytes, self.start + first)?;
                block.loaded += n;
                if !self.hashes.verify(i, &block.bytes) {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        format!(
                            "checksum mismatch: bytes {first}..{} of the section are corrupt or \
                             were changed; refused",
                            first + n
                        ),
                    ));
                }
                block.index = Some(i);
            }
            let from = (at - i * BLOCK) as usize;
            let n = (block.bytes.len() - from).min(out.len() - done);
            out[done..done + n].copy_from_slice(&block.bytes[from..from + n]);
            done += n;
        }
        Ok(())
    }
}

/// `Read` over a whole section, verified block by block, that can also skip bytes unread.
pub(crate) struct VerifiedReader<'a> {
    blocks: Blocks<'a>,
    block: Block,
    /// Offset in the section.
    pos: u64,
}

impl<'a> VerifiedReader<'a> {
    pub(crate) fn new(blocks: Blocks<'a>) -> Self {
        VerifiedReader {
            blocks,
            block: Block::default(),
            pos: 0,
        }
    }

    /// Move `n` bytes on without reading them; past the section's end is a truncated stream.
    pub(crate) fn skip(&mut self, n: u64) -> std::io::Result<()> {
        match self.pos.checked_add(n) {
            Some(p) if p <= self.blocks.len => {
                self.pos = p;
                Ok(())
            }
            _ => {
                self.pos = self.blocks.len;
                Err(std::io::ErrorKind::UnexpectedEof.into())
            }
        }
    }

    /// Bytes of the data file read so far.
    pub(crate) fn loaded(&self) -> u64 {
        self.block.loaded
    }
}

impl Read for VerifiedReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = (self.blocks.len - self.pos).min(buf.len() as u64) as usize;
        if n == 0 {
            return Ok(0);
        }
        self.blocks.read(self.pos, &mut buf[..n], &mut self.block)?;
        self.pos += n as u64;
        Ok(n)
    }
}
