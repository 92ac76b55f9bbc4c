//! Destroy a container this process owns, or clean up one whose owner died (from its state
//! record): kill what is left, remove the cgroup, unmount the rootfs, remove the record.

use std::path::Path;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use super::{start_time, Container};
use crate::cgroup::Cgroup;
use crate::error::Result;
use crate::mount;
use crate::state::State;

impl Container {
    /// Kill whatever remains, remove the cgroup, unmount the rootfs mounts cryo made, remove the
    /// state record. Blocking.
    pub fn destroy(self) -> Result<()> {
        teardown(&self.state, &self.cgroup)
    }
}

/// Clean up a container whose owner died, from the state record in `bundle`: SIGKILL what is
/// left in its cgroup, remove the cgroup, unmount, remove the record. Returns the record that
/// was found (`None` when there was nothing to clean). Blocking.
pub fn cleanup(bundle: &Path) -> Result<Option<State>> {
    let Some(state) = State::load(bundle)? else {
        return Ok(None);
    };
    // PID 1 outside its cgroup (should not happen) is still ours if its start time matches.
    if state.pid > 0 && start_time(state.pid) == Some(state.pid_start_time) {
        let _ = kill(Pid::from_raw(state.pid), Signal::SIGKILL);
    }
    let cgroup = Cgroup::open(&state.cgroup_path)?;
    teardown(&state, &cgroup)?;
    Ok(Some(state))
}

/// Kill, remove the cgroup, unmount, forget.
fn teardown(state: &State, cgroup: &Cgroup) -> Result<()> {
    cgroup.destroy()?;
    mount::unmount_rootfs(&state.rootfs, &state.rootfs_mounts)?;
    State::remove(&state.bundle)
}
