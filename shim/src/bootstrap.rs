//! What containerd writes on the shim's stdin at `start`: nothing (containerd 1.6 without
//! runtime options), runtime options, or containerd 2.3+'s BootstrapParams. It is drained once
//! before the crate's `spawn`, which would otherwise parse it as runc options and fail on
//! BootstrapParams. cryo takes no runtime options, so the bytes are dropped.

use std::io::Read;

/// Drain stdin so nothing downstream misreads it; returns how many bytes were there.
pub fn drain_stdin() -> usize {
    let mut data = Vec::new();
    std::io::stdin().read_to_end(&mut data).unwrap_or(0)
}
