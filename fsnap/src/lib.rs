//! fsnap: cryo's filesystem snapshots — save directories (overlay upper layers, pod volumes,
//! tmpfs contents) into one snapshot, verify it, restore it. It knows nothing of containers.
//!
//! # Format, version 1
//!
//! A snapshot is a directory holding two files:
//!
//! - `fscheckpoint.json`, the [manifest](manifest::Manifest): `format`
//!   (`"cryo-fscheckpoint"`), `version` (`"1.0"`, major.minor), `producer`, `created`
//!   (RFC 3339), `data_file`, `data_size`, and `sections`, each with its `resource`
//!   (`container`, `path`, `kind`: `rootfs-upper` | `pod-volume` | `tmpfs`), its byte range
//!   `tar_start`..`tar_end` in the data file, a `checksum` (`blake3:<hex>` of those bytes), and
//!   `files`, `logical_bytes`, `stored_bytes`. Unknown fields are refused; later minor versions
//!   add only inside `extensions`. A reader refuses a newer major version by name.
//! - `data.multitar`: the sections' tar streams one after another, each starting on a 4 KiB
//!   boundary (the gaps are zeros outside every range). Each range is a complete, standard tar
//!   (POSIX pax) that GNU tar lists and extracts on its own (`tail -c +N | head -c M | tar -x`).
//!
//! Inside a section: the saved directory itself as `./`, then its tree in name order. Regular
//! files, directories, symlinks, hard links, fifos and device nodes keep mode, uid/gid,
//! nanosecond mtimes (pax `mtime`) and extended attributes (pax `SCHILY.xattr.*`, including
//! `trusted.overlay.*`, so opaque directories stay opaque); overlayfs whiteouts are the 0/0
//! character devices they are. Files with holes are stored by their data only in GNU tar's pax
//! sparse format 1.0 (`GNU.sparse.major=1`, `minor=0`, `name`, `realsize`; the extent map at
//! the start of the data area) and get their holes back on restore.
//!
//! Save plans every section from metadata first (so each section's size is known), writes the
//! sections in parallel into their places in the data file — optionally with O_DIRECT — under
//! a temporary name, fsyncs, and renames into place. Restore extracts each section into a work
//! directory beside its target with every name resolved beneath it (openat2
//! `RESOLVE_BENEATH`), checks the checksum in the same pass, and moves the result into the
//! target only when it verified.

pub mod error;
pub mod manifest;
mod prefetch;
pub mod restore;
pub mod save;
pub mod section;
pub mod tar;
pub mod verify;
pub mod walk;

pub use error::{Error, Result};
pub use manifest::{Manifest, ResourceId, ResourceKind, Section};
pub use restore::{restore, RestoreOptions};
pub use save::{save, Progress, SaveOptions, Source};
pub use verify::verify;
