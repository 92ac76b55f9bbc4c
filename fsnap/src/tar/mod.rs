//! The tar dialect of a section: POSIX pax (ustar headers, pax extended headers for long
//! names, big numbers, nanosecond mtimes and `SCHILY.xattr.*` extended attributes) with GNU's
//! pax sparse format 1.0 for files with holes — what `tar --format=pax --xattrs --sparse`
//! writes and reads. The reader also takes GNU long-name entries (`L`/`K`), so sections made
//! by GNU tar's default format restore too (except its old `S` sparse entries).

pub mod header;
pub mod pax;
pub mod reader;
pub mod sparse;

/// Tar's block size.
pub const BLOCK: u64 = 512;

/// Round `n` up to whole blocks (saturating: a hostile size near 2^64 stays past any end).
pub fn padded(n: u64) -> u64 {
    n.div_ceil(BLOCK).saturating_mul(BLOCK)
}

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File,
    Dir,
    Symlink(String),
    /// A hard link to an earlier entry of the same section (its path).
    HardLink(String),
    Char {
        major: u32,
        minor: u32,
    },
    Block {
        major: u32,
        minor: u32,
    },
    Fifo,
}

/// One entry's metadata.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path inside the section (`.` is the section's root directory).
    pub path: String,
    pub kind: Kind,
    /// Permission bits (incl. setuid/setgid/sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime_sec: i64,
    pub mtime_nsec: u32,
    /// Logical size of a regular file (0 for anything else).
    pub size: u64,
    /// Extended attributes, in name order.
    pub xattrs: Vec<(String, Vec<u8>)>,
    /// For a sparse regular file: its data extents `(offset, length)`; only these are stored.
    pub sparse: Option<Vec<(u64, u64)>>,
}

impl Entry {
    /// Bytes of content stored for the entry (before the sparse map and block padding).
    pub fn stored_bytes(&self) -> u64 {
        match (&self.kind, &self.sparse) {
            (Kind::File, Some(map)) => map.iter().map(|(_, l)| l).sum(),
            (Kind::File, None) => self.size,
            _ => 0,
        }
    }

    /// Whether this is an overlayfs whiteout (a 0/0 character device).
    pub fn is_whiteout(&self) -> bool {
        self.kind == (Kind::Char { major: 0, minor: 0 })
    }
}

/// The two zero blocks that end a tar stream.
pub const END_OF_ARCHIVE: [u8; 1024] = [0; 1024];
