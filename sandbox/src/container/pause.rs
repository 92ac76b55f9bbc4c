//! Pause and resume: freeze and thaw every process of the container through its cgroup.

use super::Container;
use crate::error::Result;
use crate::state::Status;

impl Container {
    /// Freeze every process of the container.
    pub fn pause(&mut self) -> Result<()> {
        if !self.state.status.can_pause() {
            return Err(self.wrong_state("pause"));
        }
        self.cgroup.freeze()?;
        self.state.status = Status::Paused;
        self.state.save()
    }

    /// Thaw a paused container.
    pub fn resume(&mut self) -> Result<()> {
        if !self.state.status.can_resume() {
            return Err(self.wrong_state("resume"));
        }
        self.cgroup.thaw()?;
        self.state.status = Status::Running;
        self.state.save()
    }
}
