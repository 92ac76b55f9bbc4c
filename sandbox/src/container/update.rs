//! Update: new cgroup resources for a container that has not stopped.

use oci_spec::runtime::LinuxResources;

use super::validate::check_resources;
use super::Container;
use crate::error::Result;

impl Container {
    /// Apply new cgroup resources to the running container.
    pub fn update(&mut self, resources: &LinuxResources) -> Result<()> {
        if !self.state.status.can_update() {
            return Err(self.wrong_state("update"));
        }
        check_resources(resources)?;
        self.cgroup.update(resources)
    }
}
