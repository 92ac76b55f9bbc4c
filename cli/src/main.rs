//! `cryo`: the command-line face of cryo. `cryo fscheckpoint save | restore | verify |
//! inspect`: filesystem checkpoints of plain directories (`fscheckpoint.rs`, printed by
//! `output.rs`); `cryo fscheckpoint [OPTIONS] ID` and `cryo ps`: running pods, through their
//! shims' control sockets (`pod.rs`, `control.rs`); `cryo cache ls | prune`: the node's layer
//! cache (`cache.rs`).

mod cache;
mod control;
mod fscheckpoint;
mod output;
mod pod;

use clap::{Args, Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cryo", version, about = "cryo: freeze and thaw containers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Filesystem checkpoints: of a running pod (`cryo fscheckpoint --image-path DIR ID`), or
    /// of directories (save, restore, verify, inspect).
    Fscheckpoint(FscheckpointCmd),
    /// The pods and containers the shims on this node serve.
    Ps(pod::Ps),
    /// The node's layer cache of restored checkpoints: list, prune.
    Cache {
        #[command(subcommand)]
        command: cache::Cache,
    },
}

#[derive(Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
struct FscheckpointCmd {
    #[command(subcommand)]
    command: Option<fscheckpoint::Fscheckpoint>,
    #[command(flatten)]
    pod: pod::PodCheckpoint,
}

fn main() {
    let result = match Cli::parse().command {
        Command::Fscheckpoint(FscheckpointCmd {
            command: Some(cmd), ..
        }) => fscheckpoint::run(cmd),
        Command::Fscheckpoint(FscheckpointCmd { command: None, pod }) => pod::fscheckpoint(pod),
        Command::Ps(args) => pod::ps(args),
        Command::Cache { command } => cache::run(command),
    };
    if let Err(e) = result {
        eprintln!("cryo: {e:#}");
        std::process::exit(1);
    }
}
