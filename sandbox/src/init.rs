//! The init helper: the embedding binary re-executed as a single-threaded process that builds
//! the container (namespaces, mounts, pivot_root, hostname, rlimits, cgroup placement, user,
//! capabilities, no_new_privs, seccomp) and finally execs the workload. It receives its
//! configuration over a pipe, never from argv.

/// Environment variable that marks a process as the init helper (value: the protocol role).
pub const INIT_ENV: &str = "_CRYO_INIT";

/// If this process was started as the init helper, run it and never return; otherwise return
/// at once. Call it first thing in `main`, before any thread or async runtime exists.
pub fn run_if_requested() {
    if std::env::var_os(INIT_ENV).is_none() {
        return;
    }
    todo!("sandbox engine")
}
