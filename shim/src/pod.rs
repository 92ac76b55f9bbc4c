//! The pod one shim serves (one pod, or one container when not run by CRI): its containers by
//! id, its volumes, its fscheckpoint trigger, and the lock that makes its filesystem
//! checkpoints one at a time.

use std::sync::Arc;

use crate::container::Container;
use crate::error::Result;
use crate::fs_restore::PodRestore;
use crate::registry::{Registry, Reservation};
use crate::trigger::Trigger;
use crate::volumes::PodVolumes;

pub struct Pod {
    containers: Registry<Container>,
    pub volumes: PodVolumes,
    pub trigger: Trigger,
    /// Held by each filesystem checkpoint of the pod (`cryo fscheckpoint` or the trigger): a
    /// second one would find the pod frozen by the first and could thaw it under it.
    checkpoints: tokio::sync::Mutex<()>,
    /// The filesystem checkpoint the pod was created from, if any.
    pub fs_restore: Arc<PodRestore>,
}

impl Default for Pod {
    fn default() -> Self {
        Pod {
            containers: Registry::new("container"),
            volumes: PodVolumes::default(),
            trigger: Trigger::default(),
            checkpoints: tokio::sync::Mutex::default(),
            fs_restore: Arc::default(),
        }
    }
}

impl Pod {
    /// Claim a container id before anything is built for it.
    pub fn reserve(&self, id: &str) -> Result<Reservation<Container>> {
        self.containers.reserve(id)
    }

    pub fn get(&self, id: &str) -> Result<Arc<Container>> {
        self.containers.get(id)
    }

    /// Forget a deleted container (its rootfs unmounted) and unmount its lazy layers; when it
    /// is the pod's sandbox (pause) container, the pod's volumes, trigger and remaining lazy
    /// layers are unmounted.
    pub async fn remove(&self, id: &str) {
        self.containers.remove(id);
        self.trigger.container_removed(id).await;
        self.volumes.container_removed(id).await;
        self.fs_restore.container_removed(id).await;
    }

    /// The lock every filesystem checkpoint of the pod holds while it runs.
    pub fn checkpoint_lock(&self) -> &tokio::sync::Mutex<()> {
        &self.checkpoints
    }

    /// Every container built so far.
    pub fn containers(&self) -> Vec<Arc<Container>> {
        self.containers.all()
    }

    /// No container, and none being created.
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
    }
}
