//! `cryo cache ls | prune`: the node's layer cache of restored filesystem checkpoints (what
//! `CRYO_LAYER_ROOT` names, default `/var/lib/cryo/layers`). Every rule (what is in use, what
//! goes, in which order, what a leftover is) is the sandbox's `layer_cache`; this file maps
//! flags onto it and prints.

use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use cryo_sandbox::layer_cache::{parse_duration, parse_size, LayerCache, Policy};

use crate::output::human;

#[derive(Subcommand)]
pub enum Cache {
    /// List the cached layers, least recently used first: checksum, size, last use, in use.
    Ls {
        /// The cache's root (default: $CRYO_LAYER_ROOT, else /var/lib/cryo/layers).
        #[arg(long)]
        layer_root: Option<PathBuf>,
    },
    /// Remove what crashed extractions and evictions left, and evict unused layers (never
    /// one a pod's overlay stands on): all of them, those unused for a while, or least
    /// recently used first until the cache is at most a size (without --all, --max-size or
    /// --unused-for: only the leftovers).
    Prune {
        /// The cache's root (default: $CRYO_LAYER_ROOT, else /var/lib/cryo/layers).
        #[arg(long)]
        layer_root: Option<PathBuf>,
        /// Evict every unused layer.
        #[arg(long, conflicts_with_all = ["max_size", "unused_for"])]
        all: bool,
        /// Evict least recently used unused layers until the cache uses at most SIZE
        /// (bytes, or with K, M, G or T: 20G).
        #[arg(long, value_name = "SIZE", value_parser = parse_size)]
        max_size: Option<u64>,
        /// Evict unused layers not used for DURATION (s, m, h or d: 7d).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
        unused_for: Option<Duration>,
    },
}

pub fn run(cmd: Cache) -> Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cryo cache: must run as root (the layer cache is root's)");
    }
    match cmd {
        Cache::Ls { layer_root } => ls(cache(layer_root)?),
        Cache::Prune {
            layer_root,
            all,
            max_size,
            unused_for,
        } => prune(
            cache(layer_root)?,
            Policy {
                all,
                max_bytes: max_size,
                unused_for,
                spare: None,
            },
        ),
    }
}

/// The cache `--layer-root` names (an absolute path to a directory), else the environment's.
fn cache(flag: Option<PathBuf>) -> Result<LayerCache> {
    let Some(root) = flag else {
        return Ok(LayerCache::from_env());
    };
    if !root.is_absolute() {
        bail!("--layer-root {}: not an absolute path", root.display());
    }
    let md = std::fs::symlink_metadata(&root)
        .with_context(|| format!("--layer-root {}", root.display()))?;
    if !md.is_dir() {
        bail!(
            "--layer-root {}: not a directory (or a symlink)",
            root.display()
        );
    }
    Ok(LayerCache::new(root))
}

fn ls(cache: LayerCache) -> Result<()> {
    let layers = cache
        .list()
        .with_context(|| format!("layer cache {}", cache.root().display()))?;
    println!(
        "{:<64}  {:>10}  {:>9}  in use",
        "layer", "size", "last used"
    );
    let now = SystemTime::now();
    for l in &layers {
        println!(
            "{:<64}  {:>10}  {:>9}  {}",
            l.hex,
            human(l.bytes),
            ago(now.duration_since(l.last_used).unwrap_or_default()),
            if l.in_use { "yes" } else { "no" }
        );
    }
    let total: u64 = layers.iter().map(|l| l.bytes).sum();
    println!(
        "{} layers, {} ({} in use)",
        layers.len(),
        human(total),
        layers.iter().filter(|l| l.in_use).count()
    );
    Ok(())
}

fn prune(cache: LayerCache, policy: Policy) -> Result<()> {
    let done = cache
        .prune(&policy)
        .with_context(|| format!("layer cache {}", cache.root().display()))?;
    for name in &done.leftovers {
        println!("removed leftover {name}");
    }
    for (hex, bytes) in &done.evicted {
        println!("evicted {hex} ({})", human(*bytes));
    }
    for hex in &done.kept_in_use {
        println!("kept {hex}: in use");
    }
    let freed: u64 = done.evicted.iter().map(|(_, b)| b).sum();
    println!(
        "{} layers evicted, {} freed; the cache holds {}",
        done.evicted.len(),
        human(freed),
        human(done.bytes_after)
    );
    if !done.failures.is_empty() {
        bail!("could not remove: {}", done.failures.join("; "));
    }
    Ok(())
}

/// An age as kubectl prints one: 45s, 12m, 5h, 3d.
fn ago(d: Duration) -> String {
    let s = d.as_secs();
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86400),
    }
}
