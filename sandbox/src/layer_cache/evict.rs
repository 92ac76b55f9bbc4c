//! The layer cache's leases and eviction: what keeps a layer while overlays stand on it, and
//! what removes layers nobody uses, least recently used first, as kubelet's image garbage
//! collection treats a node's images.
//!
//! - A lease ([`LayerCache::lease`]): whoever mounts a cached layer as an overlay's lower
//!   directory holds a shared `flock` on the layer directory ([`crate::lease`]) for as long as
//!   the overlay lives, and taking it records the use: the stamp `.<hex>.used` (its mtime is the
//!   layer's last use; a layer without one counts from its extraction, its directory's ctime).
//! - In use: a layer someone holds a lease on, or that a mounted overlay of this mount
//!   namespace names among its lower directories (a shim killed with its overlays still
//!   mounted holds no lease any more, yet its overlays stand on the layer until containerd's
//!   `shim delete` unmounts them; removing their lower directory would leave them serving
//!   nothing).
//! - Eviction ([`LayerCache::prune`]), per layer, under the section's `.<hex>.lock` (not
//!   waited for: an extraction or another prune holds it, the layer is skipped): an exclusive
//!   lease, not waited for (a holder: in use, skipped), a look at the mount table, then the
//!   layer is renamed `.<hex>.evicting-*` (from then on no lease can be taken on it, and a new
//!   extraction of the section starts afresh), the lease dropped, and the renamed tree, the
//!   stamp and the lock file removed. Prune also removes what crashed extractions and
//!   evictions left (`.<hex>.partial-*`, fsnap's `..<hex>.partial-*`, `.<hex>.evicting-*`), each
//!   under its section's lock, and stamps and lock files of sections that have no layer.
//! - Which layers go ([`Policy`]): every unused one (`all`), those unused for at least a
//!   duration, and least recently used first until the cache's size is at most a limit (a
//!   layer in use counts towards the size but never goes). The size of a layer is the disk it
//!   occupies (allocated blocks, each inode once).
//! - The shim's automatic eviction: with [`MAX_SIZE_ENV`] set, each background fill that
//!   extracted a layer then evicts least recently used unused layers (never the one it just
//!   filled) until the cache is under the limit.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::{is_layer, LayerCache};
use crate::error::{Error, Result};
use crate::lease::Lease;

/// The environment variable a shim reads its cache size limit from (see [`parse_size`]).
pub const MAX_SIZE_ENV: &str = "CRYO_LAYER_CACHE_MAX_SIZE";

/// One layer of the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CachedLayer {
    /// The section's checksum (hex), the layer's name.
    pub hex: String,
    pub path: PathBuf,
    /// Disk used (allocated blocks).
    pub bytes: u64,
    pub last_used: SystemTime,
    /// Leased, or a lower directory of a mounted overlay.
    pub in_use: bool,
}

/// Which unused layers [`LayerCache::prune`] evicts (none of them set: only leftovers go).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Policy {
    /// Every unused layer.
    pub all: bool,
    /// Layers unused for at least this long.
    pub unused_for: Option<Duration>,
    /// Least recently used first, until the cache uses at most this many bytes.
    pub max_bytes: Option<u64>,
    /// A layer never evicted (hex; the one a fill just extracted).
    pub spare: Option<String>,
}

/// What [`LayerCache::prune`] did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Pruned {
    /// The layers evicted: (hex, bytes).
    pub evicted: Vec<(String, u64)>,
    /// The leftovers of crashed extractions and evictions removed (their names).
    pub leftovers: Vec<String>,
    /// Layers that policy would have evicted but are in use (or busy): their hex.
    pub kept_in_use: Vec<String>,
    /// The cache's size after (layers only).
    pub bytes_after: u64,
    /// What could not be removed, and why (logged too).
    pub failures: Vec<String>,
}

impl LayerCache {
    /// A lease on the cached layer of section `hex` (see the module's doc), recording its use:
    /// `None` if the cache does not hold it (or it is being evicted). Blocking (briefly: an
    /// eviction holds its exclusive lease only while it renames the layer away).
    pub fn lease(&self, hex: &str) -> Result<Option<Lease>> {
        let path = self.root.join(hex);
        let lease = Lease::shared(&path, true)
            .map_err(|e| Error::io(format!("lease layer {}", path.display()), e))?;
        if lease.is_some() {
            self.touch(hex);
        }
        Ok(lease)
    }

    /// Record a use of layer `hex` now (best effort: logged).
    pub(super) fn touch(&self, hex: &str) {
        let stamp = self.root.join(format!(".{hex}.used"));
        let touched = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&stamp)
            .and_then(|f| f.set_modified(SystemTime::now()));
        if let Err(e) = touched {
            log::warn!(
                "layer cache: record the use of {hex} in {}: {e}",
                stamp.display()
            );
        }
    }

    /// The cache's layers, least recently used first. A missing root is an empty cache.
    pub fn list(&self) -> Result<Vec<CachedLayer>> {
        let mounted = mounted_lowers()?;
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.root) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(Error::io(format!("layer cache {}", self.root.display()), e)),
        };
        for e in entries {
            let e = e.map_err(|e| Error::io(format!("list {}", self.root.display()), e))?;
            let Some(hex) = e
                .file_name()
                .to_str()
                .filter(|n| is_hex(n))
                .map(str::to_string)
            else {
                continue;
            };
            let path = e.path();
            if !matches!(is_layer(&path), Ok(true)) {
                continue;
            }
            let in_use = mounted.contains(&path)
                || match Lease::exclusive(&path) {
                    Ok(Some(_)) => false,
                    Ok(None) => true,
                    Err(e) => {
                        log::warn!("layer cache: lock {}: {e}", path.display());
                        true
                    }
                };
            out.push(CachedLayer {
                bytes: disk_usage(&path),
                last_used: self.last_used(&hex, &path),
                hex,
                path,
                in_use,
            });
        }
        out.sort_by(|a, b| (a.last_used, &a.hex).cmp(&(b.last_used, &b.hex)));
        Ok(out)
    }

    /// Remove the leftovers of crashed extractions and evictions, then evict the unused layers
    /// `policy` names (see the module's doc). Blocking.
    pub fn prune(&self, policy: &Policy) -> Result<Pruned> {
        let mut done = Pruned::default();
        if !self.root.exists() {
            return Ok(done);
        }
        self.remove_leftovers(&mut done)?;
        let layers = self.list()?;
        let mut size: u64 = layers.iter().map(|l| l.bytes).sum();
        let now = SystemTime::now();
        for l in &layers {
            if policy.spare.as_deref() == Some(l.hex.as_str()) {
                continue;
            }
            let old = policy
                .unused_for
                .is_some_and(|d| now.duration_since(l.last_used).unwrap_or_default() >= d);
            let over = policy.max_bytes.is_some_and(|m| size > m);
            if !(policy.all || old || over) {
                continue;
            }
            if l.in_use {
                log::info!("layer cache: kept {}: in use", l.hex);
                done.kept_in_use.push(l.hex.clone());
                continue;
            }
            match self.evict(&l.hex) {
                Ok(true) => {
                    log::info!("layer cache: evicted {} ({} bytes)", l.hex, l.bytes);
                    size = size.saturating_sub(l.bytes);
                    done.evicted.push((l.hex.clone(), l.bytes));
                }
                Ok(false) => {
                    log::info!("layer cache: kept {}: in use", l.hex);
                    done.kept_in_use.push(l.hex.clone())
                }
                Err(e) => {
                    log::warn!("layer cache: evict {}: {e}", l.hex);
                    done.failures.push(format!("{}: {e}", l.hex));
                }
            }
        }
        done.bytes_after = size;
        Ok(done)
    }

    /// Evict layer `hex` unless it is in use or busy (`false`).
    fn evict(&self, hex: &str) -> Result<bool> {
        let Some(section) = self.lock(hex, false)? else {
            return Ok(false);
        };
        let path = self.root.join(hex);
        let Some(lease) = Lease::exclusive(&path)
            .map_err(|e| Error::io(format!("lock {}", path.display()), e))?
        else {
            return Ok(false);
        };
        if mounted_lowers()?.contains(&path) {
            return Ok(false);
        }
        let going = self.root.join(format!(".{hex}.evicting-{}", unique()));
        std::fs::rename(&path, &going)
            .map_err(|e| Error::io(format!("rename {} away", path.display()), e))?;
        drop(lease);
        let _ = std::fs::remove_file(self.root.join(format!(".{hex}.used")));
        let removed = std::fs::remove_dir_all(&going)
            .map_err(|e| Error::io(format!("remove {}", going.display()), e));
        if removed.is_ok() {
            self.remove_lock_file(hex, section);
        }
        removed.map(|()| true)
    }

    /// Unlink section `hex`'s lock file, holding it (whoever opened it meanwhile finds, once it
    /// has the lock, that the path names another file, and opens that: see `lock`).
    fn remove_lock_file(&self, hex: &str, held: File) {
        let _ = std::fs::remove_file(self.root.join(format!(".{hex}.lock")));
        drop(held);
    }

    /// Remove what crashed extractions and evictions left, and the stamps and lock files of
    /// sections without a layer, each under its section's lock (a section whose lock is held
    /// is being worked on: skipped).
    fn remove_leftovers(&self, done: &mut Pruned) -> Result<()> {
        let mut sections: Vec<(String, Vec<(String, bool)>)> = Vec::new();
        let entries = std::fs::read_dir(&self.root)
            .map_err(|e| Error::io(format!("list {}", self.root.display()), e))?;
        for e in entries.flatten() {
            let Some(name) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some((hex, leftover)) = classify(&name) else {
                continue;
            };
            match sections.iter_mut().find(|(h, _)| *h == hex) {
                Some((_, names)) => names.push((name, leftover)),
                None => sections.push((hex, vec![(name, leftover)])),
            }
        }
        for (hex, names) in sections {
            let has_layer = matches!(is_layer(&self.root.join(&hex)), Ok(true));
            let work: Vec<&String> = names
                .iter()
                .filter(|(_, leftover)| *leftover)
                .map(|(n, _)| n)
                .collect();
            // A stamp or lock file of a section without a layer is left over too.
            if work.is_empty() && has_layer {
                continue;
            }
            let Some(held) = self.lock(&hex, false)? else {
                continue;
            };
            for name in work {
                let path = self.root.join(name);
                match std::fs::remove_dir_all(&path) {
                    Ok(()) => {
                        log::info!("layer cache: removed the leftover {name}");
                        done.leftovers.push(name.clone());
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => done.failures.push(format!("{name}: {e}")),
                }
            }
            if !matches!(is_layer(&self.root.join(&hex)), Ok(true)) {
                let _ = std::fs::remove_file(self.root.join(format!(".{hex}.used")));
                self.remove_lock_file(&hex, held);
            }
        }
        Ok(())
    }

    /// When layer `hex` (at `path`) was last used: its stamp's mtime, else its directory's
    /// ctime (its extraction's rename).
    fn last_used(&self, hex: &str, path: &Path) -> SystemTime {
        let stamp = std::fs::symlink_metadata(self.root.join(format!(".{hex}.used")))
            .ok()
            .filter(|m| m.is_file())
            .and_then(|m| m.modified().ok());
        stamp.unwrap_or_else(|| {
            std::fs::symlink_metadata(path)
                .map(|m| {
                    SystemTime::UNIX_EPOCH
                        + Duration::new(m.ctime().max(0) as u64, m.ctime_nsec().max(0) as u32)
                })
                .unwrap_or(SystemTime::UNIX_EPOCH)
        })
    }
}

/// A section's entries in the cache root: (its hex, whether it is a leftover to remove) for
/// `.<hex>.partial-*`, `..<hex>.partial-*` and `.<hex>.evicting-*` (leftovers) and
/// `.<hex>.used`, `.<hex>.lock` (kept while the section has a layer).
fn classify(name: &str) -> Option<(String, bool)> {
    let rest = name.strip_prefix("..").or_else(|| name.strip_prefix('.'))?;
    let (hex, what) = rest.split_once('.')?;
    if !is_hex(hex) {
        return None;
    }
    let leftover = if what.starts_with("partial-") || what.starts_with("evicting-") {
        true
    } else if (what == "used" || what == "lock") && !name.starts_with("..") {
        false
    } else {
        return None;
    };
    Some((hex.to_string(), leftover))
}

/// A layer's name: a blake3 checksum's hex, lowercase.
fn is_hex(name: &str) -> bool {
    name.len() == 64 && name.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// A name no other eviction uses at once.
fn unique() -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("{}-{nanos}", std::process::id())
}

/// The lower directories of the overlays mounted in this mount namespace.
fn mounted_lowers() -> Result<HashSet<PathBuf>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    Ok(crate::mount::parse_mountinfo(&text)
        .into_iter()
        .filter(|m| m.fstype == "overlay")
        .flat_map(|m| {
            m.super_options
                .split(',')
                .filter_map(|o| {
                    o.strip_prefix("lowerdir=")
                        .or_else(|| o.strip_prefix("lowerdir+="))
                })
                .flat_map(|l| l.split(':'))
                .map(|l| PathBuf::from(unescape_octal(l)))
                .collect::<Vec<_>>()
        })
        .collect())
}

/// Undo the octal escapes of a mountinfo field (`\040` for a space).
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The disk a tree uses: allocated blocks of every inode once, not following links, not
/// crossing into other filesystems.
fn disk_usage(root: &Path) -> u64 {
    let Ok(top) = std::fs::symlink_metadata(root) else {
        return 0;
    };
    let mut seen = HashSet::new();
    let mut total = 0u64;
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(md) = std::fs::symlink_metadata(&dir) else {
            continue;
        };
        total += md.blocks() * 512;
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let Ok(md) = e.metadata() else { continue };
            if md.is_dir() {
                if md.dev() == top.dev() {
                    stack.push(e.path());
                }
            } else if md.nlink() <= 1 || seen.insert((md.dev(), md.ino())) {
                total += md.blocks() * 512;
            }
        }
    }
    total
}

/// A size in bytes: digits, then optionally `K`, `M`, `G` or `T` (powers of 1024; `Ki`, `Mi`,
/// `Gi`, `Ti` alike). The refusal says what is accepted.
pub fn parse_size(value: &str) -> std::result::Result<u64, String> {
    let bad =
        || format!("{value:?} is not a size (bytes, or a number with K, M, G or T: 512M, 20G)");
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = value[..digits].parse().map_err(|_| bad())?;
    let shift = match &value[digits..] {
        "" => 0,
        "K" | "Ki" => 10,
        "M" | "Mi" => 20,
        "G" | "Gi" => 30,
        "T" | "Ti" => 40,
        _ => return Err(bad()),
    };
    n.checked_mul(1u64 << shift).ok_or_else(bad)
}

/// A duration: digits, then `s`, `m`, `h` or `d` (`90m`, `7d`). The refusal says what is
/// accepted.
pub fn parse_duration(value: &str) -> std::result::Result<Duration, String> {
    let bad = || format!("{value:?} is not a duration (a number with s, m, h or d: 90m, 7d)");
    let digits = value.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(bad());
    }
    let n: u64 = value[..digits].parse().map_err(|_| bad())?;
    let unit = match &value[digits..] {
        "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return Err(bad()),
    };
    n.checked_mul(unit).map(Duration::from_secs).ok_or_else(bad)
}

/// The size limit [`MAX_SIZE_ENV`] sets (`None`: unset or empty); a refusal names the
/// variable and its value.
pub fn max_size_from_env() -> std::result::Result<Option<u64>, String> {
    max_size(std::env::var_os(MAX_SIZE_ENV).as_deref())
}

/// [`max_size_from_env`] of the variable's value.
fn max_size(value: Option<&std::ffi::OsStr>) -> std::result::Result<Option<u64>, String> {
    match value {
        None => Ok(None),
        Some(v) if v.is_empty() => Ok(None),
        Some(v) => match v.to_str() {
            Some(s) => parse_size(s)
                .map(Some)
                .map_err(|why| format!("{MAX_SIZE_ENV}={s:?}: {why}")),
            None => Err(format!("{MAX_SIZE_ENV}={v:?}: not UTF-8")),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layer_cache::{checksum_hex, save_dir, Filled};

    fn require_root() {
        assert!(
            nix::unistd::geteuid().is_root(),
            "needs root (overlay mounts, owners): run as root, as CI does"
        );
    }

    /// A cache at `t/layers` holding one layer per name, of 64 KiB of that name's bytes each;
    /// their hex, in order.
    fn cache_of(t: &Path, names: &[&str]) -> (LayerCache, Vec<String>) {
        let cache = LayerCache::new(t.join("layers"));
        let hexes = names
            .iter()
            .map(|n| {
                let src = t.join(format!("src-{n}"));
                std::fs::create_dir_all(&src).unwrap();
                std::fs::write(src.join("f"), n.repeat(65536 / n.len())).unwrap();
                let (ck, m) = save_dir(src, t.join(format!("ck-{n}")));
                let layer = cache.layer(&ck, &m, 0).unwrap();
                assert!(layer.extracted);
                checksum_hex(&m.sections[0].checksum).unwrap().to_string()
            })
            .collect();
        (cache, hexes)
    }

    /// Layer `hex` last used `ago` ago.
    fn used_ago(cache: &LayerCache, hex: &str, ago: Duration) {
        let f = File::options()
            .write(true)
            .open(cache.root().join(format!(".{hex}.used")))
            .unwrap();
        f.set_modified(SystemTime::now() - ago).unwrap();
    }

    fn entries(dir: &Path) -> Vec<String> {
        let mut v: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        v.sort();
        v
    }

    /// What the cache root holds for a kept layer.
    fn kept(hex: &str) -> [String; 3] {
        [
            format!(".{hex}.lock"),
            format!(".{hex}.used"),
            hex.to_string(),
        ]
    }

    #[test]
    fn least_recently_used_go_first_until_under_the_size_and_a_leased_one_stays() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (cache, h) = cache_of(t.path(), &["a", "b", "c"]);
        for (hex, mins) in h.iter().zip([30, 20, 10]) {
            used_ago(&cache, hex, Duration::from_secs(mins * 60));
        }
        let lease = cache.lease(&h[0]).unwrap().expect("a lease on a");
        // Taking the lease recorded a use: a is now the most recent; make it the oldest again.
        used_ago(&cache, &h[0], Duration::from_secs(3600));
        let listed = cache.list().unwrap();
        let order: Vec<(&str, bool)> = listed.iter().map(|l| (l.hex.as_str(), l.in_use)).collect();
        assert_eq!(
            order,
            [
                (h[0].as_str(), true),
                (h[1].as_str(), false),
                (h[2].as_str(), false)
            ]
        );
        let one = listed[1].bytes;
        assert!(one >= 65536, "{listed:?}");
        let total: u64 = listed.iter().map(|l| l.bytes).sum();
        let pruned = cache
            .prune(&Policy {
                max_bytes: Some(total - one / 2),
                ..Policy::default()
            })
            .unwrap();
        assert_eq!(pruned.evicted, [(h[1].clone(), one)]);
        assert_eq!(pruned.kept_in_use, [h[0].clone()]);
        assert_eq!(pruned.bytes_after, total - one);
        let mut want: Vec<String> = kept(&h[0]).into_iter().chain(kept(&h[2])).collect();
        want.sort();
        assert_eq!(entries(cache.root()), want);
        // The lease still serves: the layer's content is there.
        assert!(lease.path().join("f").is_file());
        drop(lease);
        let pruned = cache
            .prune(&Policy {
                all: true,
                ..Policy::default()
            })
            .unwrap();
        assert_eq!(pruned.evicted.len(), 2, "{pruned:?}");
        assert_eq!(entries(cache.root()), Vec::<String>::new());
    }

    #[test]
    fn a_layer_a_mounted_overlay_stands_on_is_in_use_without_a_lease() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (cache, h) = cache_of(t.path(), &["a"]);
        let layer = cache.root().join(&h[0]);
        let (upper, work, merged) = (t.path().join("u"), t.path().join("w"), t.path().join("m"));
        for d in [&upper, &work, &merged] {
            std::fs::create_dir(d).unwrap();
        }
        let data = format!(
            "lowerdir={},upperdir={},workdir={}",
            layer.display(),
            upper.display(),
            work.display()
        );
        nix::mount::mount(
            Some("overlay"),
            &merged,
            Some("overlay"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .unwrap();
        // What a killed shim leaves: the overlay, no lease.
        let listed = cache.list();
        let pruned = cache.prune(&Policy {
            all: true,
            ..Policy::default()
        });
        let still = merged.join("f").is_file();
        nix::mount::umount2(&merged, nix::mount::MntFlags::MNT_DETACH).unwrap();
        assert!(listed.unwrap()[0].in_use);
        let pruned = pruned.unwrap();
        assert!(pruned.evicted.is_empty(), "{pruned:?}");
        assert_eq!(pruned.kept_in_use, [h[0].clone()]);
        assert!(still, "the overlay lost its lower layer");
        let pruned = cache
            .prune(&Policy {
                all: true,
                ..Policy::default()
            })
            .unwrap();
        assert_eq!(pruned.evicted.len(), 1, "{pruned:?}");
    }

    #[test]
    fn unused_for_evicts_only_what_was_unused_that_long() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (cache, h) = cache_of(t.path(), &["a", "b"]);
        used_ago(&cache, &h[0], Duration::from_secs(3 * 3600));
        used_ago(&cache, &h[1], Duration::from_secs(1800));
        let pruned = cache
            .prune(&Policy {
                unused_for: Some(Duration::from_secs(3600)),
                ..Policy::default()
            })
            .unwrap();
        assert_eq!(pruned.evicted.len(), 1);
        assert_eq!(pruned.evicted[0].0, h[0]);
        assert_eq!(entries(cache.root()), kept(&h[1]));
        // Without a policy, nothing but leftovers goes.
        assert!(cache.prune(&Policy::default()).unwrap().evicted.is_empty());
        assert_eq!(entries(cache.root()), kept(&h[1]));
    }

    #[test]
    fn an_evicted_layer_gives_no_lease_and_is_extracted_again() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (cache, h) = cache_of(t.path(), &["a"]);
        let (ck, m) = (
            t.path().join("ck-a"),
            fsnap::Manifest::load(&t.path().join("ck-a")).unwrap(),
        );
        cache
            .prune(&Policy {
                all: true,
                ..Policy::default()
            })
            .unwrap();
        assert!(cache.lease(&h[0]).unwrap().is_none());
        assert_eq!(cache.cached(&m, 0), None);
        let again = cache.layer(&ck, &m, 0).unwrap();
        assert!(again.extracted);
        assert!(cache.lease(&h[0]).unwrap().is_some());
    }

    #[test]
    fn prune_removes_what_crashes_left_but_not_what_an_extraction_holds() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (cache, h) = cache_of(t.path(), &["a"]);
        let root = cache.root().to_path_buf();
        let (x, y) = ("1".repeat(64), "2".repeat(64));
        for d in [
            format!(".{x}.partial-1-2/sub"),
            format!("..{x}.partial-1-2"),
            format!(".{}.evicting-3-4/sub", h[0]),
            format!(".{y}.partial-5-6"),
        ] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join(format!(".{x}.used")), b"").unwrap();
        std::fs::write(root.join("notes"), b"the admin's").unwrap();
        // An extraction of y runs (it holds y's lock): its partial directory stays.
        let held = cache.lock(&y, true).unwrap().unwrap();
        let pruned = cache.prune(&Policy::default()).unwrap();
        let mut gone = pruned.leftovers.clone();
        gone.sort();
        assert_eq!(gone.len(), 3, "{pruned:?}");
        let mut want: Vec<String> = kept(&h[0])
            .into_iter()
            .chain([
                format!(".{y}.lock"),
                format!(".{y}.partial-5-6"),
                "notes".into(),
            ])
            .collect();
        want.sort();
        assert_eq!(entries(&root), want);
        drop(held);
        cache.prune(&Policy::default()).unwrap();
        let mut want: Vec<String> = kept(&h[0]).into_iter().chain(["notes".into()]).collect();
        want.sort();
        assert_eq!(entries(&root), want);
    }

    #[test]
    fn a_fill_keeps_the_cache_under_its_limit_and_spares_what_it_filled() {
        require_root();
        let t = tempfile::tempdir().unwrap();
        let (cache, h) = cache_of(t.path(), &["a", "b"]);
        let src = t.path().join("src-new");
        std::fs::create_dir_all(&src).unwrap();
        std::fs::write(src.join("f"), vec![9u8; 65536]).unwrap();
        let (ck, m) = save_dir(src, t.path().join("ck-new"));
        let leased = cache.lease(&h[1]).unwrap().unwrap();
        let limited = cache.clone().with_max_size(Some(0));
        let path = match limited.fill_in_background(&ck, &m, 0).wait() {
            Filled::Extracted(p) => p,
            other => panic!("{other:?}"),
        };
        let new = checksum_hex(&m.sections[0].checksum).unwrap().to_string();
        let mut want: Vec<String> = kept(&h[1]).into_iter().chain(kept(&new)).collect();
        want.sort();
        assert_eq!(
            entries(cache.root()),
            want,
            "a (unused) goes, b (leased) stays"
        );
        assert!(path.join("f").is_file());
        drop(leased);
    }

    #[test]
    fn sizes_and_durations_parse_and_bad_ones_are_named() {
        assert_eq!(parse_size("0"), Ok(0));
        assert_eq!(parse_size("512"), Ok(512));
        assert_eq!(parse_size("4K"), Ok(4096));
        assert_eq!(parse_size("3Mi"), Ok(3 << 20));
        assert_eq!(parse_size("20G"), Ok(20 << 30));
        assert_eq!(parse_size("2T"), Ok(2 << 40));
        for bad in [
            "",
            "G",
            "-1",
            "1.5G",
            "10 G",
            "10g",
            "10GB",
            "99999999999T",
            "1e9",
        ] {
            let e = parse_size(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
        assert_eq!(max_size(None), Ok(None));
        assert_eq!(max_size(Some("".as_ref())), Ok(None));
        assert_eq!(max_size(Some("2G".as_ref())), Ok(Some(2 << 30)));
        let e = max_size(Some("2 GB".as_ref())).unwrap_err();
        assert!(e.starts_with("CRYO_LAYER_CACHE_MAX_SIZE=\"2 GB\": "), "{e}");
        assert_eq!(parse_duration("90m"), Ok(Duration::from_secs(5400)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0s"), Ok(Duration::ZERO));
        for bad in ["", "5", "h", "1.5h", "-1h", "1w", "1h30m"] {
            let e = parse_duration(bad).unwrap_err();
            assert!(e.contains(&format!("{bad:?}")), "{bad}: {e}");
        }
    }
}
