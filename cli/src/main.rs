//! `cryo`: the command-line face of cryo. Today one command family, `cryo fscheckpoint save |
//! restore | verify | inspect`: filesystem checkpoints of plain directories (the commands are
//! in `fscheckpoint.rs`, what they print in `output.rs`).

mod fscheckpoint;
mod output;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cryo", version, about = "cryo: freeze and thaw containers")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Filesystem checkpoints of directories (overlay upper layers, volumes).
    #[command(subcommand)]
    Fscheckpoint(fscheckpoint::Fscheckpoint),
}

fn main() {
    let Command::Fscheckpoint(cmd) = Cli::parse().command;
    if let Err(e) = fscheckpoint::run(cmd) {
        eprintln!("cryo: {e:#}");
        std::process::exit(1);
    }
}
