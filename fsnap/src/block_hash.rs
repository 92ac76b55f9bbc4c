//! A section's BLAKE3 checksum computed block by block: the section's bytes are hashed as
//! 64 KiB blocks (complete subtrees of BLAKE3's tree, each starting at its offset in the
//! section), whose chaining values are kept and merged into the very same root hash that
//! `blake3::hash` gives for the whole range. The kept values let a reader verify any block
//! of the section again on its own later (a section read in place, [`crate::index`]), so that
//! data changed after the section was verified is refused rather than served.

use blake3::hazmat::{
    merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode,
};

/// Bytes per block: 64 BLAKE3 chunks, a power of two, so each block is a subtree.
pub const BLOCK: u64 = 64 * 1024;

/// What is kept of a section's hash to verify any of its blocks later.
#[derive(Debug, Clone)]
pub enum BlockHashes {
    /// A section of one block or less: its hash is the block's.
    One(blake3::Hash),
    /// Every block's chaining value, in order.
    Many(Vec<ChainingValue>),
}

/// Hashes a section of known length as it passes, block by block.
pub struct BlockHasher {
    len: u64,
    /// Bytes hashed so far.
    done: u64,
    current: blake3::Hasher,
    cvs: Vec<ChainingValue>,
}

impl BlockHasher {
    /// A hasher for a section of `len` bytes.
    pub fn new(len: u64) -> BlockHasher {
        BlockHasher {
            len,
            done: 0,
            current: blake3::Hasher::new(),
            cvs: Vec::with_capacity(len.div_ceil(BLOCK) as usize),
        }
    }

    pub fn update(&mut self, mut bytes: &[u8]) {
        while !bytes.is_empty() {
            let room = BLOCK - self.done % BLOCK;
            let n = (room as usize).min(bytes.len());
            self.current.update(&bytes[..n]);
            self.done += n as u64;
            bytes = &bytes[n..];
            if self.done.is_multiple_of(BLOCK) && self.len > BLOCK {
                self.cvs.push(self.current.finalize_non_root());
                self.current = blake3::Hasher::new();
                self.current.set_input_offset(self.done);
            }
        }
    }

    /// The root hash (equal to `blake3::hash` of everything passed, which must be the
    /// section's `len` bytes — otherwise the hash is of no use and `None` is returned) and what
    /// verifies each block.
    pub fn finalize(mut self) -> Option<(blake3::Hash, BlockHashes)> {
        if self.done != self.len {
            return None;
        }
        if self.len <= BLOCK {
            let hash = self.current.finalize();
            return Some((hash, BlockHashes::One(hash)));
        }
        if !self.done.is_multiple_of(BLOCK) {
            self.cvs.push(self.current.finalize_non_root());
        }
        let root = root_of(&self.cvs);
        Some((root, BlockHashes::Many(self.cvs)))
    }
}

/// The root hash over the chaining values of two or more blocks: the tree splits a run at the
/// largest power of two of blocks below its length, as BLAKE3 splits chunks.
fn root_of(cvs: &[ChainingValue]) -> blake3::Hash {
    let left = split(cvs.len());
    merge_subtrees_root(&cv_of(&cvs[..left]), &cv_of(&cvs[left..]), Mode::Hash)
}

fn cv_of(cvs: &[ChainingValue]) -> ChainingValue {
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = split(cvs.len());
    merge_subtrees_non_root(&cv_of(&cvs[..left]), &cv_of(&cvs[left..]), Mode::Hash)
}

/// The largest power of two below `n` (n >= 2).
fn split(n: usize) -> usize {
    1 << (usize::BITS - 1 - (n - 1).leading_zeros())
}

/// How many chaining values a section of `len` bytes keeps: none for one block or less (its
/// checksum verifies it), else one per block, the last one possibly short.
pub fn stored_count(len: u64) -> u64 {
    if len <= BLOCK {
        0
    } else {
        len.div_ceil(BLOCK)
    }
}

impl BlockHashes {
    /// The chaining values kept for a section (none for [`BlockHashes::One`]).
    pub fn stored(&self) -> &[ChainingValue] {
        match self {
            BlockHashes::One(_) => &[],
            BlockHashes::Many(cvs) => cvs,
        }
    }

    /// What verifies each block of a section of `len` bytes whose checksum is `root`, from
    /// chaining values saved with it: `None` unless they are exactly [`stored_count`] values
    /// that merge into `root` (so each block verified against them is a block of the section
    /// the checksum names).
    pub fn from_stored(len: u64, cvs: Vec<ChainingValue>, root: &blake3::Hash) -> Option<Self> {
        if cvs.len() as u64 != stored_count(len) {
            return None;
        }
        if cvs.is_empty() {
            return Some(BlockHashes::One(*root));
        }
        (root_of(&cvs) == *root).then_some(BlockHashes::Many(cvs))
    }

    /// Whether `bytes`, block `i` of the section (at offset `i * BLOCK`), is what was hashed.
    pub fn verify(&self, i: u64, bytes: &[u8]) -> bool {
        match self {
            BlockHashes::One(hash) => i == 0 && blake3::hash(bytes) == *hash,
            BlockHashes::Many(cvs) => {
                let Some(cv) = usize::try_from(i).ok().and_then(|i| cvs.get(i)) else {
                    return false;
                };
                let mut h = blake3::Hasher::new();
                h.set_input_offset(i * BLOCK);
                h.update(bytes);
                h.finalize_non_root() == *cv
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_blake3_of_the_whole_for_every_shape() {
        let data: Vec<u8> = (0..(9 * BLOCK + 777))
            .map(|i| (i * 31 % 251) as u8)
            .collect();
        let lens = [
            0,
            1,
            1024,
            BLOCK - 1,
            BLOCK,
            BLOCK + 1,
            2 * BLOCK,
            2 * BLOCK + 5,
            3 * BLOCK,
            4 * BLOCK + 1000,
            8 * BLOCK,
            9 * BLOCK + 777,
        ];
        for len in lens {
            let whole = &data[..len as usize];
            for piece in [1usize, 512, 7000, 1 << 20] {
                let mut h = BlockHasher::new(len);
                for c in whole.chunks(piece) {
                    h.update(c);
                }
                let (root, blocks) = h.finalize().unwrap();
                assert_eq!(root, blake3::hash(whole), "len {len}, pieces of {piece}");
                let root = blake3::hash(whole);
                let kept = blocks.stored().to_vec();
                assert_eq!(kept.len() as u64, stored_count(len));
                assert!(BlockHashes::from_stored(len, kept.clone(), &root).is_some());
                if let Some(first) = kept.first() {
                    let mut bad = kept.clone();
                    bad[0][0] ^= 1;
                    assert!(BlockHashes::from_stored(len, bad, &root).is_none());
                    let mut more = kept.clone();
                    more.push(*first);
                    assert!(BlockHashes::from_stored(len, more, &root).is_none());
                    assert!(BlockHashes::from_stored(len, kept[1..].to_vec(), &root).is_none());
                }
                for (i, b) in whole.chunks(BLOCK as usize).enumerate() {
                    assert!(blocks.verify(i as u64, b), "len {len}: block {i}");
                    let mut changed = b.to_vec();
                    changed[b.len() / 2] ^= 1;
                    assert!(!blocks.verify(i as u64, &changed), "len {len}: block {i}");
                }
            }
        }
        let mut short = BlockHasher::new(10);
        short.update(b"abc");
        assert!(short.finalize().is_none());
    }
}
