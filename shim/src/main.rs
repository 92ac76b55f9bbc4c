//! `containerd-shim-cryo-v2`: the binary containerd starts for runtime `io.containerd.cryo.v2`.
//!
//! One process serves a whole pod. It speaks only containerd: the shim start/delete protocol
//! ([`service`]), the Task ttrpc service ([`task`]), events ([`events`]) and stdio ([`stdio`]);
//! the containers themselves are the sandbox engine's (`cryo_sandbox`).

mod annotations;
mod bootstrap;
mod checkpoint;
mod checkpoint_root;
mod container;
mod control;
mod engine;
mod error;
mod events;
mod exec;
mod exits;
mod fs_restore;
mod info;
mod init;
mod lifecycle;
mod log_binary;
mod log_uri;
mod logging;
mod metrics;
mod pod;
mod pod_checkpoint;
mod process;
mod registry;
mod serve;
mod service;
mod socket;
mod spec;
mod stdio;
mod task;
mod trigger;
mod volumes;

/// Engine calls (create, start, exec, delete) run on at most this many blocking threads.
const BLOCKING_THREADS: usize = 4;

/// Stack size of the shim's helper threads (they copy bytes and wait).
pub const THREAD_STACK: usize = 256 * 1024;

/// Give memory freed after a container came or went back to the system: a shim lives as long
/// as its pod and mostly waits.
pub fn release_memory() {
    // SAFETY: malloc_trim only returns free heap pages to the kernel.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// The runtime id containerd knows us by.
pub const RUNTIME_ID: &str = "io.containerd.cryo.v2";

fn main() {
    // The engine re-executes this binary as a container's init helper: that must happen before
    // any thread exists.
    cryo_sandbox::init::run_if_requested();

    // containerd 2.x asks `-info` of every shim binary it uses: answered before any setup.
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    if info::requested(&args) {
        info::answer();
    }

    // One malloc arena for all threads: the shim's threads mostly sleep, and per-thread arenas
    // would multiply its resident memory.
    // SAFETY: mallopt only tunes the allocator; called before any other thread exists.
    unsafe {
        libc::mallopt(libc::M_ARENA_MAX, 1);
    }

    // A single-threaded runtime keeps the shim small; blocking engine calls go to the blocking
    // pool.
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(BLOCKING_THREADS)
        .thread_keep_alive(std::time::Duration::from_secs(1))
        .thread_stack_size(THREAD_STACK)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{RUNTIME_ID}: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    // Serving mode binds cryo's own socket (0600, other users refused); `start` and `delete`
    // are the crate's.
    let serving = containerd_shim::parse(&args[1..])
        .ok()
        .filter(serve::requested);
    match serving {
        Some(flags) => {
            if let Err(e) = runtime.block_on(serve::run(RUNTIME_ID, flags)) {
                eprintln!("{RUNTIME_ID}: {e:?}");
                std::process::exit(1);
            }
        }
        None => runtime.block_on(containerd_shim::asynchronous::run::<service::Service>(
            RUNTIME_ID, None,
        )),
    }
}
