//! The tasks one shim serves (one pod, or one container when not run by CRI), by id.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use containerd_shim_protos::ttrpc;

use crate::errors;
use crate::process::Task;

#[derive(Default)]
pub struct Pod {
    tasks: Mutex<HashMap<String, Arc<Task>>>,
}

impl Pod {
    pub fn get(&self, id: &str) -> Result<Arc<Task>, ttrpc::Error> {
        self.lock()
            .get(id)
            .cloned()
            .ok_or_else(|| errors::not_found(format!("container {id} not found")))
    }

    pub fn contains(&self, id: &str) -> bool {
        self.lock().contains_key(id)
    }

    pub fn insert(&self, task: Arc<Task>) -> Result<(), ttrpc::Error> {
        let mut tasks = self.lock();
        if tasks.contains_key(&task.id) {
            return Err(errors::already_exists(format!(
                "container {} already exists",
                task.id
            )));
        }
        tasks.insert(task.id.clone(), task);
        Ok(())
    }

    /// Forget a deleted task; the sandbox's removal unmounts the pod's volumes.
    pub fn remove(&self, id: &str) {
        self.lock().remove(id);
        crate::volumes::container_removed(id);
    }

    pub fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Arc<Task>>> {
        self.tasks.lock().unwrap_or_else(|e| e.into_inner())
    }
}
