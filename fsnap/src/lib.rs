//! fsnap: cryo's filesystem checkpoints — save directories (overlay upper layers, pod volumes,
//! tmpfs contents) into one checkpoint, verify it, restore it. It knows nothing of containers.
//!
//! "Filesystem checkpoint" (fscheckpoint) is the one name for the concept, as in gVisor; it is
//! the filesystem half of a checkpoint (CRIU's images are the process half), and not a
//! containerd snapshot (a snapshotter's layer).
//!
//! # Format, version 1
//!
//! A filesystem checkpoint is a directory holding two regular files and, when saved by a build
//! that writes block hashes, a third that readers may do without:
//!
//! - `fscheckpoint.json`, the [manifest](manifest::Manifest) (version 2.0 adds stacked
//!   sections, each with its `layer`: see [`manifest`] and [`stack`]): `format`
//!   (`"cryo-fscheckpoint"`), `version` (`"1.0"`, major.minor), `producer`, `created`
//!   (RFC 3339), `data_file`, `data_size`, and `sections`, each with its `resource`
//!   (`container`, `path`, `kind`: `rootfs-upper` | `pod-volume` | `tmpfs`; the naming rules
//!   are in [`resource`]), its byte range `tar_start`..`tar_end` in the data file, a
//!   `checksum` (`blake3:<hex>` of those bytes), and `files`, `logical_bytes`, `stored_bytes`. Unknown fields are refused; later minor versions
//!   add only inside `extensions`. A reader refuses a newer major version by name.
//! - `data.multitar`: the sections' tar streams one after another, each starting on a 4 KiB
//!   boundary (the gaps are zeros outside every range). Each range is a complete, standard tar
//!   (POSIX pax) that GNU tar lists and extracts on its own (`tail -c +N | head -c M | tar -x`).
//! - `fscheckpoint.blocks`, the [block hashes](blocks_file), named in the manifest's
//!   `extensions` as `"block_hashes": {"file": "fscheckpoint.blocks", "block_size": 65536}`:
//!   for each section in order, the 32-byte BLAKE3 chaining value of each 64 KiB block of its
//!   range (the subtrees BLAKE3 builds the section's `checksum` from: they merge into it), none
//!   for a section of 64 KiB or less, and nothing else. Readers that do not know it ignore it
//!   (an `extensions` entry); a reader that does checks a section's values merge into its
//!   checksum before using them, and reads a checkpoint without the file in one full pass.
//!
//! Inside a section: the saved directory itself as `./`, then its tree in name order. Regular
//! files, directories, symlinks, hard links, fifos and device nodes keep mode, uid/gid,
//! nanosecond mtimes (pax `mtime`) and extended attributes (pax `SCHILY.xattr.*`, including
//! `trusted.overlay.*`, so opaque directories stay opaque); overlayfs whiteouts are the 0/0
//! character devices they are. Files with holes are stored by their data only in GNU tar's pax
//! sparse format 1.0 (`GNU.sparse.major=1`, `minor=0`, `name`, `realsize`; the extent map at
//! the start of the data area) and get their holes back on restore.
//!
//! Readers open both files without following symlinks or blocking and refuse anything but a
//! regular file; a manifest over [`manifest::MAX_MANIFEST_BYTES`] is refused unread.
//!
//! Save plans every section from metadata first (so each section's size is known), writes the
//! sections in parallel into their places in the data file — optionally with O_DIRECT — under
//! a temporary name, fsyncs, and renames into place; it reads each file beneath its source's
//! root as the very inode it planned, so a tree changing under it fails the save rather than
//! redirecting it. Restore extracts each section into a work
//! directory beside its target with every name resolved beneath it (openat2
//! `RESOLVE_BENEATH`), checks the checksum in the same pass, and moves the result into the
//! target only when it verified.
//!
//! A section can also be read in place, without extracting it: [`index::SectionIndex`] builds
//! its tree in memory in one pass (the same rules as extraction, from `rules.rs`) and reads
//! each file's data from the data file where it lies, every block verified when it is read.
//! With the block hashes the pass reads only the blocks holding headers (verified); without
//! them it reads the whole section and checks its checksum.

mod block_hash;
pub mod blocks_file;
mod checkpoint_files;
mod destination;
pub mod error;
mod extract;
pub mod index;
pub mod manifest;
mod pool;
mod prefetch;
pub mod progress;
pub mod resource;
pub mod restore;
mod rules;
pub mod save;
pub mod section;
mod section_writer;
pub mod stack;
pub mod tar;
mod verified_read;
pub mod verify;
mod walk;
pub mod xattr;

pub use error::{Error, Result};
pub use index::SectionIndex;
pub use manifest::{Manifest, Section};
pub use progress::Progress;
pub use resource::{ResourceId, ResourceKind};
pub use restore::{restore, targets_under, RestoreOptions};
pub use save::{save, save_stacked, SaveOptions, Source};
pub use stack::{Content, Input};
pub use verify::verify;
