//! The in-memory index of one section: one sequential pass over its headers builds the
//! section's tree — every entry under the same rules as an extraction (`rules.rs`), with where
//! each regular file's data lies in the data file — so the tree can be served in place (a
//! read-only filesystem) without being extracted. Nothing is written anywhere.
//!
//! With the checkpoint's block hashes ([`crate::blocks_file`]), checked first to merge into
//! the section's checksum, the pass reads only the blocks holding headers (and sparse maps),
//! each verified, and skips the files' data, which [`SectionIndex::read_at`] verifies block by
//! block when it is read. Without them, the pass reads and hashes every byte of the section
//! and checks the checksum at its end, keeping each block's chaining value for the reads.
//!
//! Node ids are `1..=len()` ([`ROOT`] is the section's `./`), numbered breadth-first in name
//! order; a hard link is the node of its target, reachable under several names.

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use crate::block_hash::BlockHashes;
use crate::error::{Error, Result};
use crate::extract::RestoreOptions;
use crate::manifest::{checksum_hex, Manifest};
use crate::rules::{self, Res};
use crate::section::{check_count, parse_entries, read_section};
use crate::tar::reader::Reader;
use crate::tar::{Entry, Kind};
use crate::verified_read::{Block, Blocks, VerifiedReader};

/// A node's number, as FUSE inode numbers go.
pub type NodeId = u64;
/// The section's root directory (`./`).
pub const ROOT: NodeId = 1;
/// Most entries a section may hold to be indexed (each costs memory).
pub const MAX_ENTRIES: u64 = 1 << 23;
/// Most bytes of names, link targets and extended attributes an index may hold.
pub const MAX_META_BYTES: u64 = 1 << 30;

/// One file, directory, link or special file of the section.
#[derive(Debug, Clone)]
pub struct Node {
    /// The entry as saved: path (its first name), kind (never `Kind::HardLink`: a hard link
    /// is the node of its target, reachable under several names), mode, uid, gid, mtime,
    /// size (logical), xattrs (filtered as [`RestoreOptions::overlay_layer`] says when set),
    /// sparse map.
    pub entry: Entry,
    /// Names referring to it (directories: 2 + subdirectories, as a filesystem reports).
    pub nlink: u32,
    /// A directory's children, sorted by name (empty for anything else).
    pub children: Vec<(String, NodeId)>,
    /// A regular file's data: extents in logical order, each where it lies in the data file.
    data: Vec<Extent>,
}

/// `len` bytes of a file at `logical`, stored at `stored` in the data file.
#[derive(Debug, Clone, Copy)]
struct Extent {
    logical: u64,
    len: u64,
    stored: u64,
}

/// The index of one section, with its data file open for reads.
#[derive(Debug)]
pub struct SectionIndex {
    data: File,
    /// The section's number, and its range in the data file.
    section: usize,
    start: u64,
    len: u64,
    /// What verifies each block of the range again when it is read.
    blocks: BlockHashes,
    /// `nodes[id - 1]`.
    nodes: Vec<Node>,
    checksum: String,
    /// Bytes of the data file the build read.
    build_read: u64,
}

impl SectionIndex {
    /// Section `index` of the checkpoint in `dir` (whose validated manifest is `manifest`):
    /// parses every header, checks every name, link and device node, with the same rules and
    /// the same errors (naming the section and the cause) as extraction, and records where
    /// each file's data lies. With [`RestoreOptions::verify_data_on_read`] and the checkpoint's
    /// block hashes (refused naming the section unless they merge into its checksum) it reads
    /// and verifies only the blocks holding headers; otherwise it reads the whole section and
    /// checks its checksum. Blocking.
    pub fn build(
        dir: &Path,
        manifest: &Manifest,
        index: usize,
        opts: &RestoreOptions,
    ) -> Result<SectionIndex> {
        let section = manifest.section(dir, index)?;
        let fail = |reason: String| Error::Section {
            section: index,
            resource: section.resource.to_string(),
            reason,
        };
        let checksum = checksum_hex(&section.checksum)
            .map_err(&fail)?
            .to_ascii_lowercase();
        if section.files > MAX_ENTRIES {
            return Err(fail(format!(
                "{} entries are more than the {MAX_ENTRIES} an index holds",
                section.files
            )));
        }
        let data = manifest.open_data(dir)?;
        let len = section.tar_end - section.tar_start;
        let mut tree = Tree::new();
        let mut add = |e: &Entry, start: u64| {
            let filtered = rules::filtered(e, opts);
            let e = filtered.as_ref().unwrap_or(e);
            tree.add(e, start, opts).map_err(|reason| Error::Entry {
                section: index,
                entry: e.path.clone(),
                reason,
            })
        };
        let blocks = match opts.verify_data_on_read {
            true => crate::blocks_file::load(dir, manifest, index)?,
            false => None,
        };
        let (blocks, build_read) = match blocks {
            Some(blocks) => {
                // Headers only, each block verified as it is read; files' data skipped.
                let mut r = Reader::new(VerifiedReader::new(Blocks {
                    data: &data,
                    start: section.tar_start,
                    len,
                    hashes: &blocks,
                }));
                let entries = parse_entries(&mut r, index, section, |e, r| {
                    add(e, section.tar_start + r.offset)?;
                    r.skip_content_with(|v, n| v.skip(n)).map_err(&fail)
                })?;
                check_count(entries, index, section)?;
                let read = r.into_inner().loaded();
                (blocks, read)
            }
            None => {
                let blocks = read_section(&data, index, section, |e, r| {
                    add(e, section.tar_start + r.offset)?;
                    if e.stored_bytes() > 0 {
                        // Hashed as it passes; nothing is kept.
                        r.content(|_, _| Ok(())).map_err(&fail)?;
                    }
                    Ok(())
                })?;
                (blocks, len)
            }
        };
        log::debug!("section {index}: index built reading {build_read} of {len} bytes");
        Ok(SectionIndex {
            data,
            section: index,
            start: section.tar_start,
            len,
            blocks,
            nodes: tree.finish(),
            checksum,
            build_read,
        })
    }

    /// Bytes of the data file [`SectionIndex::build`] read: the whole section without block
    /// hashes, only the blocks holding headers with them.
    pub fn bytes_read_to_build(&self) -> u64 {
        self.build_read
    }

    /// The node `id`, if there is one.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        let i = usize::try_from(id.checked_sub(1)?).ok()?;
        self.nodes.get(i)
    }

    /// The child `name` of directory `parent`.
    pub fn lookup(&self, parent: NodeId, name: &str) -> Option<NodeId> {
        let children = &self.node(parent)?.children;
        children
            .binary_search_by(|(n, _)| n.as_str().cmp(name))
            .ok()
            .map(|i| children[i].1)
    }

    /// Read file `id` at `offset` (holes of a sparse file read as zeros); short only at EOF;
    /// an error for a node that is not a regular file. Thread-safe (positional reads). Every
    /// block of the section a read touches is verified against the checksum, so data corrupt
    /// in the data file (never read by a build from block hashes) or changed after
    /// [`SectionIndex::build`] fails the read (`InvalidData`, "checksum mismatch") instead of
    /// being served.
    pub fn read_at(&self, id: NodeId, offset: u64, buf: &mut [u8]) -> std::io::Result<usize> {
        let node = self.node(id).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, format!("no node {id}"))
        })?;
        match node.entry.kind {
            Kind::File => {}
            Kind::Dir => return Err(std::io::Error::from_raw_os_error(libc::EISDIR)),
            _ => return Err(std::io::Error::from_raw_os_error(libc::EINVAL)),
        }
        let size = node.entry.size;
        if offset >= size {
            return Ok(0);
        }
        let want = (size - offset).min(buf.len() as u64) as usize;
        let end = offset + want as u64;
        let data = &node.data;
        let mut block = Block::default();
        let mut i = data.partition_point(|x| x.logical + x.len <= offset);
        let mut pos = offset;
        while pos < end {
            let at = (pos - offset) as usize;
            match data.get(i) {
                Some(x) if x.logical <= pos => {
                    let stop = end.min(x.logical + x.len);
                    let n = (stop - pos) as usize;
                    self.read_verified(
                        x.stored + (pos - x.logical),
                        &mut buf[at..at + n],
                        &mut block,
                    )?;
                    pos = stop;
                    i += 1;
                }
                next => {
                    // A hole up to the next extent (or the end).
                    let stop = next.map_or(end, |x| end.min(x.logical));
                    buf[at..(stop - offset) as usize].fill(0);
                    pos = stop;
                }
            }
        }
        Ok(want)
    }

    /// Fill `out` from the data file at `pos` (inside the section), through whole blocks each
    /// verified before any of it is used; `block` keeps the last one for the next call.
    fn read_verified(&self, pos: u64, out: &mut [u8], block: &mut Block) -> std::io::Result<()> {
        Blocks {
            data: &self.data,
            start: self.start,
            len: self.len,
            hashes: &self.blocks,
        }
        .read(pos - self.start, out, block)
        .map_err(|e| std::io::Error::new(e.kind(), format!("section {}: {e}", self.section)))
    }

    /// Number of nodes (ids are `1..=len()`).
    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    /// Whether the index has no nodes (never: the root is always there).
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// The section's checksum, lowercase hex (the layer cache's key).
    pub fn checksum_hex(&self) -> &str {
        &self.checksum
    }
}

/// The tree while it is built: nodes by provisional id, and every name's node.
struct Tree {
    nodes: Vec<Node>,
    paths: HashMap<String, usize>,
    meta_bytes: u64,
    now: i64,
}

impl Tree {
    fn new() -> Tree {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let mut t = Tree {
            nodes: Vec::new(),
            paths: HashMap::new(),
            meta_bytes: 0,
            now,
        };
        // A section without a `./` entry still has a root, as an extraction's target does.
        let root = t.implicit_dir(".");
        t.paths.insert(".".into(), root);
        t
    }

    /// A directory an entry needs that has no entry of its own (made as extraction makes
    /// missing parents: 0755, root's, now).
    fn implicit_dir(&mut self, path: &str) -> usize {
        self.push(Entry {
            path: path.to_string(),
            kind: Kind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_sec: self.now,
            mtime_nsec: 0,
            size: 0,
            xattrs: Vec::new(),
            sparse: None,
        })
    }

    fn push(&mut self, entry: Entry) -> usize {
        self.nodes.push(Node {
            entry,
            nlink: 0,
            children: Vec::new(),
            data: Vec::new(),
        });
        self.nodes.len() - 1
    }

    fn is_dir(&self, n: usize) -> bool {
        self.nodes[n].entry.kind == Kind::Dir
    }

    /// The directory `dir` (a path), created with its missing parents when `create`; an error
    /// when a component is not a directory.
    fn dir(&mut self, dir: &str, create: bool) -> Res<Option<usize>> {
        if let Some(&n) = self.paths.get(dir) {
            if self.is_dir(n) {
                return Ok(Some(n));
            }
        }
        let mut current = String::new();
        let mut node = None;
        for comp in dir.split('/') {
            if !current.is_empty() {
                current.push('/');
            }
            current.push_str(comp);
            node = match self.paths.get(current.as_str()) {
                Some(&n) => match &self.nodes[n].entry.kind {
                    Kind::Dir => Some(n),
                    Kind::Symlink(_) => return Err(rules::beneath_symlink(&current)),
                    _ => return Err(rules::beneath_non_dir(&current)),
                },
                None if create => {
                    self.meta_bytes += current.len() as u64;
                    let n = self.implicit_dir(&current);
                    self.paths.insert(current.clone(), n);
                    Some(n)
                }
                None => return Ok(None),
            };
        }
        Ok(node)
    }

    /// Add one entry (already filtered by the options) whose data area starts at `start` in
    /// the data file.
    fn add(&mut self, e: &Entry, start: u64, opts: &RestoreOptions) -> Res<()> {
        self.meta_bytes += (e.path.len()
            + e.xattrs
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()) as u64;
        if let Kind::Symlink(t) | Kind::HardLink(t) = &e.kind {
            self.meta_bytes += t.len() as u64;
        }
        if self.meta_bytes > MAX_META_BYTES {
            return Err(format!(
                "the section's names and attributes exceed the {MAX_META_BYTES} bytes an \
                 index holds"
            ));
        }
        if e.path == "." {
            rules::check_root(e)?;
            let root = self.paths["."];
            self.nodes[root].entry = e.clone();
            return Ok(());
        }
        if let Some((dir, _)) = e.path.rsplit_once('/') {
            self.dir(dir, true)?;
        }
        // What the entry is may refuse it before what it replaces does (as extraction checks).
        match &e.kind {
            Kind::Symlink(t) => rules::check_name_bytes(t)?,
            Kind::Char { .. } | Kind::Block { .. } => rules::check_device(e, opts)?,
            _ => {}
        }
        let old = self.paths.get(e.path.as_str()).copied();
        if let Some(old) = old {
            rules::check_replace(self.is_dir(old), e.kind == Kind::Dir)?;
        }
        let node = match &e.kind {
            Kind::Dir => {
                if let Some(old) = old {
                    // One directory, the later entry's metadata.
                    self.nodes[old].entry = e.clone();
                    return Ok(());
                }
                self.push(e.clone())
            }
            Kind::HardLink(target) => {
                // The name is removed before the link is made: a link to itself, or to
                // something beneath the name it replaces, finds nothing.
                let beneath = target
                    .strip_prefix(e.path.as_str())
                    .is_some_and(|rest| rest.starts_with('/'));
                let found = if *target == e.path || beneath {
                    None
                } else {
                    match target.rsplit_once('/') {
                        Some((dir, _)) => self.dir(dir, false)?,
                        None => Some(self.paths["."]),
                    }
                    .and_then(|_| self.paths.get(target.as_str()).copied())
                };
                let n = found.ok_or_else(|| rules::link_target_missing(target))?;
                if self.is_dir(n) {
                    return Err(rules::link_target_dir(target));
                }
                n
            }
            Kind::Symlink(_) | Kind::Char { .. } | Kind::Block { .. } | Kind::Fifo => {
                self.push(e.clone())
            }
            Kind::File => {
                let n = self.push(e.clone());
                self.nodes[n].data = extents(e, start);
                n
            }
        };
        self.paths.insert(e.path.clone(), node);
        Ok(())
    }

    /// The final nodes: children lists from every name, ids renumbered breadth-first from the
    /// root in name order (nodes no name reaches any more — replaced — dropped), link counts.
    fn finish(self) -> Vec<Node> {
        let Tree {
            mut nodes, paths, ..
        } = self;
        let root = paths["."];
        for (path, &n) in &paths {
            if let Some((dir, name)) = path.rsplit_once('/').or(if path == "." {
                None
            } else {
                Some((".", path.as_str()))
            }) {
                let parent = paths[dir];
                nodes[parent].children.push((name.to_string(), n as NodeId));
            }
        }
        drop(paths);
        let mut new_id: Vec<NodeId> = vec![0; nodes.len()];
        let mut order = vec![root];
        new_id[root] = ROOT;
        let mut next = 0;
        while next < order.len() {
            let n = order[next];
            next += 1;
            nodes[n].children.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            for (_, c) in &nodes[n].children {
                let c = *c as usize;
                if new_id[c] == 0 {
                    order.push(c);
                    new_id[c] = order.len() as NodeId;
                }
            }
        }
        let mut names = vec![0u32; nodes.len()];
        for n in &order {
            for (_, c) in &nodes[*n].children {
                names[*c as usize] += 1;
            }
        }
        let is_dir: Vec<bool> = nodes.iter().map(|n| n.entry.kind == Kind::Dir).collect();
        let mut taken: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        let mut out = Vec::with_capacity(order.len());
        for n in order {
            let mut node = taken[n].take().expect("each node once");
            node.nlink = if is_dir[n] {
                let subdirs = node.children.iter().filter(|(_, c)| is_dir[*c as usize]);
                2 + subdirs.count() as u32
            } else {
                names[n]
            };
            for (_, c) in node.children.iter_mut() {
                *c = new_id[*c as usize];
            }
            out.push(node);
        }
        out
    }
}

/// Extents of a regular file whose stored data starts at `start`: its sparse map, or all of
/// it; stored one after another.
fn extents(e: &Entry, start: u64) -> Vec<Extent> {
    let mut stored = start;
    let runs: Vec<(u64, u64)> = match &e.sparse {
        Some(map) => map.clone(),
        None if e.size > 0 => vec![(0, e.size)],
        None => Vec::new(),
    };
    runs.into_iter()
        .filter(|(_, len)| *len > 0)
        .map(|(logical, len)| {
            let x = Extent {
                logical,
                len,
                stored,
            };
            // Saturating: data said to run past any end fails the build as a truncated
            // stream once the entry's data area is passed (these extents are never used).
            stored = stored.saturating_add(len);
            x
        })
        .collect()
}
