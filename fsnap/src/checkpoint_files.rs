//! Opening a checkpoint's own files (manifest, data file) for reading. They come from
//! wherever the user points, so only a regular file is read: the open never blocks (a FIFO
//! would wait for a writer forever), never follows a symlink, and the descriptor's own type is
//! checked before any read; a size limit keeps a huge manifest from being read whole.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::fcntl::{fcntl, FcntlArg, OFlag};

/// A regular file opened for reading, and its size; any other refusal is a sentence naming
/// what the file is.
pub(crate) fn open_regular(path: &Path) -> Result<(File, u64), String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|e| match e.raw_os_error() {
            Some(libc::ELOOP) => "is a symlink, not a regular file".to_string(),
            _ => format!("cannot open: {e}"),
        })?;
    let md = f.metadata().map_err(|e| format!("cannot stat: {e}"))?;
    let ft = md.file_type();
    if !ft.is_file() {
        let what = if ft.is_dir() {
            "a directory"
        } else if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_char_device() {
            "a character device"
        } else if ft.is_block_device() {
            "a block device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "of an unknown type"
        };
        return Err(format!("is {what}, not a regular file"));
    }
    // Reads of a regular file never block; drop the flag so nothing downstream sees it.
    fcntl(&f, FcntlArg::F_SETFL(OFlag::empty()))
        .map_err(|e| format!("cannot clear O_NONBLOCK: {e}"))?;
    Ok((f, md.len()))
}

/// The whole of a regular file of at most `limit` bytes.
pub(crate) fn read_regular(path: &Path, limit: u64) -> Result<Vec<u8>, String> {
    let (f, len) = open_regular(path)?;
    if len > limit {
        return Err(format!(
            "is {len} bytes, larger than the {limit} bytes allowed"
        ));
    }
    let mut bytes = Vec::with_capacity(len as usize);
    // One byte more than allowed shows a file that grew since the fstat.
    f.take(limit + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| format!("cannot read: {e}"))?;
    if bytes.len() as u64 > limit {
        return Err(format!("grew larger than the {limit} bytes allowed"));
    }
    Ok(bytes)
}
