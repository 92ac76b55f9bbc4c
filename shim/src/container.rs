//! One container as the shim holds it: its init process and the processes exec'd into it,
//! found by exec id in one place ([`Container::get_process`]).

use std::sync::Arc;

use containerd_shim_protos::api;

use crate::error::Result;
use crate::events::EventTx;
use crate::exec::ExecProcess;
use crate::exits::{Exit, Exits};
use crate::init::InitProcess;
use crate::process::Process;
use crate::registry::Registry;

pub struct Container {
    pub id: String,
    pub bundle: String,
    pub init: Arc<InitProcess>,
    execs: Registry<ExecProcess>,
}

impl Container {
    pub fn new(id: &str, bundle: &str, init: Arc<InitProcess>) -> Container {
        Container {
            id: id.to_string(),
            bundle: bundle.to_string(),
            init,
            execs: Registry::new("exec process"),
        }
    }

    /// The init process (empty `exec_id`) or an exec process.
    pub fn get_process(&self, exec_id: &str) -> Result<Arc<dyn Process>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        Ok(self.execs.get(exec_id)?)
    }

    /// Create an exec process in the running container (TaskExecAdded is sent). The exec id is
    /// reserved first: a second Exec with the same id is AlreadyExists before anything runs.
    pub async fn exec(
        &self,
        req: &api::ExecProcessRequest,
        namespace: &str,
        exits: &Exits,
        events: &EventTx,
    ) -> Result<()> {
        let reservation = self.execs.reserve(&req.exec_id)?;
        let exec = ExecProcess::create(&self.id, req, self.init.engine(), namespace, exits, events)
            .await?;
        reservation.fill(Arc::new(exec));
        Ok(())
    }

    /// Delete an exec process: its exit (refused while it runs), and it is forgotten.
    pub async fn delete_exec(&self, exec_id: &str) -> Result<(i32, Exit)> {
        let exec = self.execs.get(exec_id)?;
        let exit = exec.exit_for_delete().await?;
        self.execs.remove(exec_id);
        Ok((exec.pid(), exit))
    }
}
