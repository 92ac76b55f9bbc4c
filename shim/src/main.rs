//! `containerd-shim-cryo-v2`: the binary containerd starts for runtime `io.containerd.cryo.v2`.
//!
//! One process serves a whole pod. It speaks only containerd: the shim start/delete protocol
//! ([`service`]), the Task ttrpc service ([`task`]), events ([`events`]) and stdio ([`stdio`]);
//! the containers themselves are the sandbox engine's (`cryo_sandbox`).

mod annotations;
mod bootstrap;
mod errors;
mod events;
mod exec;
mod exits;
mod metrics;
mod pod;
mod process;
mod service;
mod stdio;
mod task;

/// The runtime id containerd knows us by.
pub const RUNTIME_ID: &str = "io.containerd.cryo.v2";

fn main() {
    // The engine re-executes this binary as a container's init helper: that must happen before
    // any thread exists.
    cryo_sandbox::init::run_if_requested();

    // A single-threaded runtime keeps the shim small; blocking engine calls go to the blocking
    // pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(containerd_shim::asynchronous::run::<service::Service>(
        RUNTIME_ID, None,
    ));
}
