//! `cryo ps` and `cryo fscheckpoint [OPTIONS] ID`: what the shims on this node serve, and
//! filesystem checkpoints of a running pod, asked of the pod's shim over its control socket
//! ([`crate::control`]). The shim freezes the pod and writes the checkpoint.

use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Args;
use serde_json::json;

use crate::control::{self, VERSION};

/// `cryo fscheckpoint` without a subcommand: save a running pod (flags as runsc's).
#[derive(Args, Debug)]
pub struct PodCheckpoint {
    /// The checkpoint directory to create (must not exist, or be empty).
    #[arg(long, required = true)]
    pub image_path: Option<PathBuf>,
    /// What to save: `/` (every container's rootfs changes; the default), a volume's mount
    /// path, or `all-volumes` (alias `all-tmpfs`). Repeatable.
    #[arg(long = "path")]
    pub paths: Vec<String>,
    /// Keep the pod running after the checkpoint (default: its containers are stopped).
    #[arg(long)]
    pub leave_running: bool,
    /// Write with O_DIRECT, bypassing the page cache.
    #[arg(long)]
    pub direct: bool,
    /// Where the shims' control sockets are (default: $CRYO_ROOT, else /run/cryo).
    #[arg(long)]
    pub root: Option<PathBuf>,
    /// A pod sandbox id or any container's id (its whole pod is saved).
    #[arg(required = true)]
    pub id: Option<String>,
}

pub fn fscheckpoint(args: PodCheckpoint) -> Result<()> {
    let (Some(image_path), Some(id)) = (args.image_path, args.id) else {
        bail!("give --image-path DIR and the pod or container ID");
    };
    let root = control::root(args.root);
    let image_path = std::path::absolute(&image_path)
        .with_context(|| format!("--image-path {}", image_path.display()))?;
    let shim = control::shims(&root)?
        .into_iter()
        .find(|s| s.containers.iter().any(|c| c.id == id || c.pod == id))
        .with_context(|| {
            format!(
                "no pod or container {id:?} is served by a shim under {}",
                root.display()
            )
        })?;
    let r = control::request(
        &shim.socket,
        &json!({
            "version": VERSION,
            "op": "fscheckpoint",
            "id": id,
            "image_path": image_path,
            "paths": args.paths,
            "leave_running": args.leave_running,
            "direct": args.direct,
        }),
        None,
    )?;
    for s in &r.sections {
        eprintln!("saved {} {} ({})", s.container, s.path, s.kind);
    }
    eprintln!(
        "saved {} section(s) to {}{}",
        r.sections.len(),
        image_path.display(),
        if args.leave_running {
            ""
        } else {
            "; the pod's containers were stopped"
        }
    );
    Ok(())
}

/// `cryo ps`: the pods and containers the shims under the root serve.
#[derive(Args, Debug)]
pub struct Ps {
    /// Where the shims' control sockets are (default: $CRYO_ROOT, else /run/cryo).
    #[arg(long)]
    pub root: Option<PathBuf>,
}

pub fn ps(args: Ps) -> Result<()> {
    let root = control::root(args.root);
    let mut rows = vec![[
        "ID".to_string(),
        "POD".into(),
        "NAME".into(),
        "STATUS".into(),
        "PID".into(),
    ]];
    for shim in control::shims(&root)? {
        for c in shim.containers {
            rows.push([c.id, c.pod, c.name, c.status, c.pid.to_string()]);
        }
    }
    let widths: Vec<usize> = (0..5)
        .map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0))
        .collect();
    for r in rows {
        let line: Vec<String> = r
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("  ").trim_end());
    }
    Ok(())
}
