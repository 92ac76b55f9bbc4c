//! Progress of a save or restore: counters the caller may read from another thread while the
//! work runs.

use std::sync::atomic::AtomicU64;

/// Counters a caller may watch while a save or restore runs.
#[derive(Debug, Default)]
pub struct Progress {
    pub files: AtomicU64,
    pub bytes: AtomicU64,
    /// Total bytes expected (known once planning is done).
    pub total: AtomicU64,
}
