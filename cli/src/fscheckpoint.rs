//! `cryo fscheckpoint`: save directories as a filesystem checkpoint, restore, verify and
//! inspect one. Every rule about the checkpoint itself (names, placement under
//! `--target-root`, what may be read) is fsnap's; this file only maps flags onto it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::Subcommand;
use fsnap::{Manifest, ResourceId, ResourceKind, RestoreOptions, SaveOptions, Source};

use crate::output::{human, print_table, with_progress};

#[derive(Subcommand)]
pub enum Fscheckpoint {
    /// Save directories as one filesystem checkpoint (one section each).
    Save {
        /// A directory to save; repeat for several sections.
        #[arg(long = "path", required = true)]
        paths: Vec<PathBuf>,
        /// The checkpoint directory to create (must not exist, or be empty).
        #[arg(long)]
        image_path: PathBuf,
        /// What the directories are: rootfs-upper, pod-volume or tmpfs.
        #[arg(long, default_value = "rootfs-upper")]
        kind: ResourceKind,
        /// The container the directories belong to (recorded in the manifest; a containerd
        /// id: letters and digits with single '.', '_' or '-' between them).
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
        #[arg(long, conflicts_with = "target_root")]
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
    /// Show what a filesystem checkpoint holds.
    Inspect {
        #[arg(long)]
        image_path: PathBuf,
        /// Print the manifest as JSON.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(cmd: Fscheckpoint) -> Result<()> {
    match cmd {
        Fscheckpoint::Save {
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
        Fscheckpoint::Restore {
            image_path,
            target,
            target_root,
            section,
            allow_devices,
            progress,
        } => {
            let manifest = Manifest::load(&image_path)?;
            let targets = targets(&manifest, target, target_root, section)?;
            let opts = RestoreOptions {
                allow_devices,
                ..Default::default()
            };
            with_progress("restoring", progress, |p| {
                fsnap::restore(&image_path, &targets, &opts, p)
            })?;
            for (i, t) in &targets {
                eprintln!("restored section {i} into {}", t.display());
            }
        }
        Fscheckpoint::Verify { image_path } => {
            let m = fsnap::verify(&image_path)?;
            println!(
                "{}: ok ({} section(s), format {})",
                image_path.display(),
                m.sections.len(),
                m.version
            );
        }
        Fscheckpoint::Inspect { image_path, json } => {
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
                    "the checkpoint has {n} sections: pick one with --section or use --target-root"
                ),
            };
            Ok(vec![(i, t)])
        }
        (None, Some(root)) => Ok(fsnap::targets_under(m, &root)),
        _ => bail!("give --target DIR or --target-root DIR"),
    }
}
