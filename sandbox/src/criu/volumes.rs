//! The writable state of a container's private overlay volumes (a spec mount of type `overlay`
//! with an `upperdir=`, as the shim's `share=container` volumes are), carried in a checkpoint
//! directory next to CRIU's images, because CRIU carries none of it: to CRIU such a mount is
//! external (its files live in a host directory), and a restore elsewhere has a fresh, empty
//! upper directory.
//!
//! At a dump every such upper directory is saved with fsnap, one section per volume (resource
//! path = the mount's destination, kind `pod-volume`), into the checkpoint directory itself,
//! flat (containerd 2.x's CRI copies the directory's entries one by one): fsnap's manifest
//! [`fsnap::manifest::MANIFEST_FILE`], the data file [`DATA_FILE`] and the block hashes the
//! manifest names ([`BLOCKS_FILE`]); the directory is an
//! fsnap checkpoint that fsnap's own tools verify. The manifest of the checkpoint lists each
//! volume by destination and section.
//!
//! At a restore (Create) each section is matched by destination to the new spec's overlay
//! mount and extracted into its upper directory, which must be empty, before any process
//! exists; fsnap checks every section's checksum while it extracts and places nothing
//! unverified. At Start each overlay is mounted at a private staging mount point that CRIU binds
//! into the restored container as the external mount it was at the dump (Tmpfs volumes need
//! none of this: CRIU dumps a tmpfs's files in its own images).

use std::path::{Path, PathBuf};

use nix::mount::{mount, umount2, MntFlags, MsFlags};
use oci_spec::runtime::Spec;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::mount::{mount_with, MountOptions};

/// The data file of the volumes' sections in the checkpoint directory.
pub const DATA_FILE: &str = "cryo-volumes.multitar";
/// fsnap's block hashes of those sections (named in the manifest), in the checkpoint directory.
pub use fsnap::blocks_file::BLOCKS_FILE;
/// fsnap's manifest of those sections, in the checkpoint directory.
pub use fsnap::manifest::MANIFEST_FILE;
/// Where a save is assembled before its two files move into the checkpoint directory.
const SAVE_TMP: &str = ".cryo-volumes.tmp";

/// One volume carried in the checkpoint.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    /// The mount's destination in the container.
    pub destination: String,
    /// Its section in fsnap's manifest.
    pub section: usize,
}

/// A spec mount that is a private overlay with an upper directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Overlay {
    pub destination: String,
    pub upper: PathBuf,
    /// The spec's options (for the staging mount at a restore).
    options: Vec<String>,
}

/// The spec's overlay mounts that have an upper directory, in spec order.
pub fn overlays(spec: &Spec) -> Vec<Overlay> {
    spec.mounts()
        .as_deref()
        .unwrap_or_default()
        .iter()
        .filter(|m| m.typ().as_deref() == Some("overlay"))
        .filter_map(|m| {
            let options = m.options().clone().unwrap_or_default();
            let upper = options.iter().find_map(|o| o.strip_prefix("upperdir="))?;
            Some(Overlay {
                destination: m.destination().display().to_string(),
                upper: PathBuf::from(upper),
                options,
            })
        })
        .collect()
}

/// Save the upper directory of each of `overlays` into `image_dir` (the container is frozen
/// meanwhile: the caller's). Nothing to save: nothing written.
pub fn save(overlays: &[Overlay], image_dir: &Path) -> Result<Vec<Volume>> {
    if overlays.is_empty() {
        return Ok(Vec::new());
    }
    let sources: Vec<fsnap::Source> = overlays
        .iter()
        .map(|o| fsnap::Source {
            resource: fsnap::ResourceId {
                container: String::new(),
                path: o.destination.clone(),
                kind: fsnap::ResourceKind::PodVolume,
            },
            dir: o.upper.clone(),
        })
        .collect();
    let tmp = image_dir.join(SAVE_TMP);
    let _ = std::fs::remove_dir_all(&tmp);
    let result = save_into(&sources, &tmp, image_dir);
    let _ = std::fs::remove_dir_all(&tmp);
    if result.is_err() {
        remove(image_dir);
    }
    result?;
    Ok(overlays
        .iter()
        .enumerate()
        .map(|(section, o)| Volume {
            destination: o.destination.clone(),
            section,
        })
        .collect())
}

fn save_into(sources: &[fsnap::Source], tmp: &Path, image_dir: &Path) -> Result<()> {
    let failed = |e: String| Error::Checkpoint {
        path: image_dir.join(DATA_FILE),
        reason: format!("save the overlay volumes: {e}"),
    };
    let mut manifest = fsnap::save(
        sources,
        tmp,
        &fsnap::SaveOptions::default(),
        &fsnap::Progress::default(),
    )
    .map_err(|e| failed(e.to_string()))?;
    std::fs::rename(tmp.join(&manifest.data_file), image_dir.join(DATA_FILE))
        .map_err(|e| failed(format!("move the data file: {e}")))?;
    // The block hashes the manifest names (by a fixed name) come along, so that a reader
    // verifies blocks as it reads them instead of reading each section in full first.
    let blocks = tmp.join(BLOCKS_FILE);
    if std::fs::symlink_metadata(&blocks).is_ok() {
        std::fs::rename(&blocks, image_dir.join(BLOCKS_FILE))
            .map_err(|e| failed(format!("move {BLOCKS_FILE}: {e}")))?;
    }
    manifest.data_file = DATA_FILE.to_string();
    let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| failed(e.to_string()))?;
    let written = tmp.join(MANIFEST_FILE);
    std::fs::write(&written, bytes)
        .and_then(|()| std::fs::rename(&written, image_dir.join(MANIFEST_FILE)))
        .map_err(|e| failed(format!("write {MANIFEST_FILE}: {e}")))
}

/// Remove what [`save`] wrote into `image_dir` (after a failed dump).
pub fn remove(image_dir: &Path) {
    let _ = std::fs::remove_file(image_dir.join(DATA_FILE));
    let _ = std::fs::remove_file(image_dir.join(BLOCKS_FILE));
    let _ = std::fs::remove_file(image_dir.join(MANIFEST_FILE));
}

/// The overlay of `spec` at `destination`, or the refusal naming it.
fn overlay_at(spec: &Spec, destination: &str) -> Result<Overlay> {
    overlays(spec)
        .into_iter()
        .find(|o| o.destination == destination)
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "the checkpoint carries an overlay volume at {destination}; the spec's mounts \
                 have no overlay with an upperdir there"
            ))
        })
}

/// Upper directories filled by [`restore`]: emptied again on [`Restored::undo`].
#[derive(Debug, Default)]
pub struct Restored {
    uppers: Vec<PathBuf>,
}

impl Restored {
    /// Empty the upper directories this restore filled (they were empty before).
    pub fn undo(self) {
        for upper in self.uppers {
            if let Ok(entries) = std::fs::read_dir(&upper) {
                for e in entries.flatten() {
                    let p = e.path();
                    let _ = if e.file_type().is_ok_and(|t| t.is_dir()) {
                        std::fs::remove_dir_all(&p)
                    } else {
                        std::fs::remove_file(&p)
                    };
                }
            }
        }
    }
}

/// Extract each of `volumes`' sections from `image_dir` into the upper directory of the new
/// spec's overlay at its destination (empty, or refused). Every section's checksum is checked;
/// on any failure nothing is left in the upper directories.
pub fn restore(volumes: &[Volume], image_dir: &Path, spec: &Spec) -> Result<Restored> {
    if volumes.is_empty() {
        return Ok(Restored::default());
    }
    let data = image_dir.join(DATA_FILE);
    let invalid = |reason: String| Error::Checkpoint {
        path: data.clone(),
        reason,
    };
    let manifest = fsnap::Manifest::load(image_dir).map_err(|e| invalid(e.to_string()))?;
    if manifest.data_file != DATA_FILE {
        return Err(invalid(format!(
            "{MANIFEST_FILE} names data file {:?}, not {DATA_FILE}",
            manifest.data_file
        )));
    }
    let mut targets: Vec<(usize, PathBuf)> = Vec::new();
    for (i, v) in volumes.iter().enumerate() {
        if volumes[..i]
            .iter()
            .any(|o| o.destination == v.destination || o.section == v.section)
        {
            return Err(invalid(format!(
                "volume {} (section {}) is listed twice",
                v.destination, v.section
            )));
        }
        let section = manifest.sections.get(v.section).ok_or_else(|| {
            invalid(format!(
                "volume {}: there is no section {} ({} sections)",
                v.destination,
                v.section,
                manifest.sections.len()
            ))
        })?;
        if section.resource.path != v.destination {
            return Err(invalid(format!(
                "volume {}: section {} holds {}, not this volume",
                v.destination, v.section, section.resource.path
            )));
        }
        targets.push((v.section, overlay_at(spec, &v.destination)?.upper));
    }
    let restored = fsnap::restore(
        image_dir,
        &targets,
        &fsnap::RestoreOptions::default(),
        &fsnap::Progress::default(),
    );
    let done = Restored {
        uppers: targets.iter().map(|(_, t)| t.clone()).collect(),
    };
    if let Err(e) = restored {
        // The volume the failure is about: by its section, or by its upper directory.
        let volume = volumes
            .iter()
            .zip(&targets)
            .find(|(v, (_, upper))| match &e {
                fsnap::Error::Section { section, .. } | fsnap::Error::Entry { section, .. } => {
                    *section == v.section
                }
                other => other.to_string().contains(&upper.display().to_string()),
            })
            .map(|(v, _)| v.destination.as_str())
            .or((volumes.len() == 1).then(|| volumes[0].destination.as_str()));
        let names = match volume {
            Some(d) => format!("volume {d}"),
            None => format!(
                "volumes {}",
                volumes
                    .iter()
                    .map(|v| v.destination.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        };
        // Sections already placed before a later one failed are taken out again (a target
        // refused as not empty was never touched).
        if !matches!(e, fsnap::Error::Target { .. }) {
            done.undo();
        }
        return Err(invalid(format!("{names}: {e}")));
    }
    Ok(done)
}

/// Overlays mounted for CRIU to bind into the restored container; unmounted when dropped (the
/// container's own copies stay).
#[derive(Debug, Default)]
pub struct Staged {
    mounts: Vec<PathBuf>,
}

impl Staged {
    /// (destination, staging mount point) for CRIU's external mount map.
    pub fn mount(&mut self, spec: &Spec, destination: &str, under: &Path) -> Result<PathBuf> {
        let overlay = overlay_at(spec, destination)?;
        let target = under.join(format!("volume-{}", self.mounts.len()));
        std::fs::create_dir_all(&target)
            .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
        let opts = MountOptions::parse(&overlay.options);
        if let Err(e) = mount_with(Some(Path::new("overlay")), &target, Some("overlay"), &opts) {
            let _ = std::fs::remove_dir(&target);
            return Err(Error::Mount {
                target: target.clone(),
                reason: format!("overlay volume {destination} for the restore: {e}"),
            });
        }
        self.mounts.push(target.clone());
        // Private: its unmount below must not reach the copy CRIU binds into the container.
        mount(
            None::<&str>,
            &target,
            None::<&str>,
            MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .map_err(|e| Error::Mount {
            target: target.clone(),
            reason: format!("overlay volume {destination} for the restore: make private: {e}"),
        })?;
        Ok(target)
    }
}

impl Drop for Staged {
    fn drop(&mut self) {
        for m in self.mounts.drain(..) {
            let _ = umount2(&m, MntFlags::MNT_DETACH);
            let _ = std::fs::remove_dir(&m);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(upper: &Path) -> Spec {
        serde_json::from_value(serde_json::json!({
            "ociVersion": "1.0.2",
            "mounts": [
                {"destination": "/tmpfs", "type": "tmpfs", "source": "tmpfs"},
                {"destination": "/ws", "type": "overlay", "source": "overlay",
                 "options": ["rw", "lowerdir=/l", format!("upperdir={}", upper.display()),
                             "workdir=/w"]},
            ]
        }))
        .unwrap()
    }

    #[test]
    fn a_volume_round_trips_and_a_corrupt_one_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, images) = (dir.path().join("upper"), dir.path().join("images"));
        std::fs::create_dir_all(upper.join("sub")).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(upper.join("sub/f"), vec![7u8; 100_000]).unwrap();
        std::os::unix::fs::symlink("sub/f", upper.join("link")).unwrap();
        let s = spec(&upper);
        assert_eq!(overlays(&s).len(), 1);
        let volumes = save(&overlays(&s), &images).unwrap();
        assert_eq!(
            volumes,
            [Volume {
                destination: "/ws".into(),
                section: 0
            }]
        );
        // Flat: three files, no directory; the block hashes the manifest names are there
        // (a reader verifies blocks as it reads), and they check out.
        let mut names: Vec<String> = std::fs::read_dir(&images)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        assert_eq!(names, [DATA_FILE, BLOCKS_FILE, MANIFEST_FILE]);
        let manifest = fsnap::verify::verify(&images).unwrap();
        assert!(manifest
            .extensions
            .contains_key(fsnap::blocks_file::EXTENSION));
        let blocks = images.join(BLOCKS_FILE);
        let good = std::fs::read(&blocks).unwrap();
        let mut bad = good.clone();
        bad[0] ^= 1;
        std::fs::write(&blocks, bad).unwrap();
        let err = fsnap::verify::verify(&images).unwrap_err().to_string();
        assert!(err.contains(BLOCKS_FILE), "{err}");
        std::fs::write(&blocks, good).unwrap();

        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        restore(&volumes, &images, &spec(&fresh)).unwrap();
        assert_eq!(
            std::fs::read(fresh.join("sub/f")).unwrap(),
            vec![7u8; 100_000]
        );
        assert_eq!(
            std::fs::read_link(fresh.join("link")).unwrap(),
            Path::new("sub/f")
        );
        // Not empty any more: refused, nothing changed.
        let err = restore(&volumes, &images, &spec(&fresh))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/ws") && err.contains("not empty"), "{err}");

        // A changed byte in the section: refused naming the volume and the section, the
        // upper directory stays empty.
        let data = images.join(DATA_FILE);
        let mut bytes = std::fs::read(&data).unwrap();
        bytes[3000] ^= 0xff;
        std::fs::write(&data, bytes).unwrap();
        let other = dir.path().join("other");
        std::fs::create_dir(&other).unwrap();
        let err = restore(&volumes, &images, &spec(&other))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/ws") && err.contains("section 0"), "{err}");
        assert_eq!(std::fs::read_dir(&other).unwrap().count(), 0);
    }

    #[test]
    fn a_hostile_volume_list_is_refused_by_name() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, images) = (dir.path().join("upper"), dir.path().join("images"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::create_dir_all(&images).unwrap();
        let s = spec(&upper);
        save(&overlays(&s), &images).unwrap();
        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        for (v, want) in [
            (
                Volume {
                    destination: "/ws".into(),
                    section: 9,
                },
                "no section 9",
            ),
            (
                Volume {
                    destination: "/etc".into(),
                    section: 0,
                },
                "holds /ws",
            ),
        ] {
            let err = restore(&[v], &images, &spec(&fresh))
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{err}");
        }
        // A destination the new spec has no overlay at.
        let mut other = spec(&fresh);
        other.set_mounts(None);
        let err = restore(
            &[Volume {
                destination: "/ws".into(),
                section: 0,
            }],
            &images,
            &other,
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("/ws") && err.contains("no overlay"), "{err}");
    }

    #[test]
    fn a_volume_listed_twice_is_refused_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (upper, images) = (dir.path().join("upper"), dir.path().join("images"));
        std::fs::create_dir_all(&upper).unwrap();
        std::fs::write(upper.join("f"), b"x").unwrap();
        std::fs::create_dir_all(&images).unwrap();
        let s = spec(&upper);
        let volumes = save(&overlays(&s), &images).unwrap();
        let twice = [volumes[0].clone(), volumes[0].clone()];
        let fresh = dir.path().join("fresh");
        std::fs::create_dir(&fresh).unwrap();
        let err = restore(&twice, &images, &spec(&fresh))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/ws") && err.contains("twice"), "{err}");
        assert_eq!(std::fs::read_dir(&fresh).unwrap().count(), 0);
    }
}
