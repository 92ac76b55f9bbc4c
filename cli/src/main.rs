//! `cryo`: the command-line face of cryo's filesystem snapshots (`cryo snapshot save |
//! restore | verify | inspect`), on plain directories.

use std::io::IsTerminal;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use fsnap::{Manifest, Progress, ResourceId, ResourceKind, RestoreOptions, SaveOptions, Source};

#[derive(Parser)]
#[command(name = "cryo", version, about = "cryo: freeze and thaw containers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Filesystem snapshots of directories (overlay upper layers, volumes).
    #[command(subcommand)]
    Snapshot(Snapshot),
}

#[derive(Subcommand)]
enum Snapshot {
    /// Save directories as one snapshot (one section each).
    Save {
        /// A directory to save; repeat for several sections.
        #[arg(long = "path", required = true)]
        paths: Vec<PathBuf>,
        /// The snapshot directory to create (must not exist, or be empty).
        #[arg(long)]
        image_path: PathBuf,
        /// What the directories are: rootfs-upper, pod-volume or tmpfs.
        #[arg(long, default_value = "rootfs-upper")]
        kind: ResourceKind,
        /// The container the directories belong to (recorded in the manifest).
        #[arg(long, default_value = "")]
        container: String,
        /// Write with O_DIRECT, bypassing the page cache.
        #[arg(long)]
        direct: bool,
        /// Show a progress line even when stderr is not a terminal.
        #[arg(long)]
        progress: bool,
    },
    /// Restore sections into empty (or new) directories.
    Restore {
        #[arg(long)]
        image_path: PathBuf,
        /// Restore one section (0, or the one given by --section) into this directory.
        #[arg(long, conflicts_with = "target_root")]
        target: Option<PathBuf>,
        /// Restore every section under this directory, at <root>/<container>/<recorded path>.
        #[arg(long)]
        target_root: Option<PathBuf>,
        /// The section to restore with --target.
        #[arg(long)]
        section: Option<usize>,
        /// Also restore device nodes (overlay whiteouts are always restored).
        #[arg(long)]
        allow_devices: bool,
        #[arg(long)]
        progress: bool,
    },
    /// Check the manifest and every section's checksum without extracting.
    Verify {
        #[arg(long)]
        image_path: PathBuf,
    },
    /// Show what a snapshot holds.
    Inspect {
        #[arg(long)]
        image_path: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    if let Err(e) = run(Cli::parse()) {
        eprintln!("cryo: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    let Command::Snapshot(cmd) = cli.command;
    match cmd {
        Snapshot::Save {
            paths,
            image_path,
            kind,
            container,
            direct,
            progress,
        } => {
            let sources = paths
                .iter()
                .map(|p| {
                    let dir = p
                        .canonicalize()
                        .with_context(|| format!("--path {}", p.display()))?;
                    Ok(Source {
                        resource: ResourceId {
                            container: container.clone(),
                            path: dir.display().to_string(),
                            kind,
                        },
                        dir,
                    })
                })
                .collect::<Result<Vec<_>>>()?;
            let started = Instant::now();
            let m = with_progress("saving", progress, |p| {
                fsnap::save(&sources, &image_path, &SaveOptions { direct }, p)
            })?;
            let secs = started.elapsed().as_secs_f64();
            let bytes: u64 = m.sections.iter().map(|s| s.logical_bytes).sum();
            eprintln!(
                "saved {} section(s), {} files, {} in {secs:.2}s to {}",
                m.sections.len(),
                m.sections.iter().map(|s| s.files).sum::<u64>(),
                human(bytes),
                image_path.display()
            );
        }
        Snapshot::Restore {
            image_path,
            target,
            target_root,
            section,
            allow_devices,
            progress,
        } => {
            let manifest = Manifest::load(&image_path)?;
            let targets = targets(&manifest, target, target_root, section)?;
            let opts = RestoreOptions { allow_devices };
            with_progress("restoring", progress, |p| {
                fsnap::restore(&image_path, &targets, &opts, p)
            })?;
            for (i, t) in &targets {
                eprintln!("restored section {i} into {}", t.display());
            }
        }
        Snapshot::Verify { image_path } => {
            let m = fsnap::verify(&image_path)?;
            println!(
                "{}: ok ({} section(s), format {})",
                image_path.display(),
                m.sections.len(),
                m.version
            );
        }
        Snapshot::Inspect { image_path, json } => {
            let m = Manifest::load(&image_path)?;
            if json {
                println!("{}", serde_json::to_string_pretty(&m)?);
            } else {
                print_table(&m);
            }
        }
    }
    Ok(())
}

/// Where each section goes.
fn targets(
    m: &Manifest,
    target: Option<PathBuf>,
    root: Option<PathBuf>,
    section: Option<usize>,
) -> Result<Vec<(usize, PathBuf)>> {
    match (target, root) {
        (Some(t), None) => {
            let i = match (section, m.sections.len()) {
                (Some(i), _) => i,
                (None, 1) => 0,
                (None, n) => bail!(
                    "the snapshot has {n} sections: pick one with --section or use --target-root"
                ),
            };
            Ok(vec![(i, t)])
        }
        (None, Some(root)) => Ok(fsnap::targets_under(m, &root)),
        _ => bail!("give --target DIR or --target-root DIR"),
    }
}

fn print_table(m: &Manifest) {
    println!(
        "format {} {}  producer {}  created {}  data {} ({})",
        m.format,
        m.version,
        m.producer,
        m.created,
        m.data_file,
        human(m.data_size)
    );
    println!(
        "{:>3}  {:<13} {:<16} {:<30} {:>8} {:>10} {:>10}  checksum",
        "#", "kind", "container", "path", "files", "logical", "stored"
    );
    for (i, s) in m.sections.iter().enumerate() {
        println!(
            "{i:>3}  {:<13} {:<16} {:<30} {:>8} {:>10} {:>10}  {}",
            s.resource.kind.to_string(),
            s.resource.container,
            s.resource.path,
            s.files,
            human(s.logical_bytes),
            human(s.stored_bytes),
            &s.checksum[..s.checksum.len().min(23)]
        );
    }
}

/// Run `f` with a progress line on stderr (when it is a terminal, or when asked).
fn with_progress<T>(
    verb: &str,
    forced: bool,
    f: impl FnOnce(&Progress) -> fsnap::Result<T>,
) -> Result<T> {
    let progress = Arc::new(Progress::default());
    let show = forced || std::io::stderr().is_terminal();
    let done = Arc::new(AtomicBool::new(false));
    let printer = show.then(|| {
        let (p, d, verb) = (progress.clone(), done.clone(), verb.to_string());
        std::thread::spawn(move || {
            let start = Instant::now();
            while !d.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(250));
                let bytes = p.bytes.load(Ordering::Relaxed);
                let secs = start.elapsed().as_secs_f64().max(0.001);
                eprint!(
                    "\r{verb}: {} files, {} of {} ({}/s)   ",
                    p.files.load(Ordering::Relaxed),
                    human(bytes),
                    human(p.total.load(Ordering::Relaxed)),
                    human((bytes as f64 / secs) as u64)
                );
            }
            eprintln!();
        })
    });
    let result = f(&progress);
    done.store(true, Ordering::Relaxed);
    if let Some(t) = printer {
        let _ = t.join();
    }
    Ok(result?)
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
