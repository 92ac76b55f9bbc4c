//! A CRI client, as kubelet drives containerd: k8s-cri's tonic clients over the private
//! containerd's Unix socket, blocking calls with a time limit; the offline CNI setup pod-network
//! pods need (a plugin that answers with a fixed documentation-range address and touches
//! nothing, plus loopback); the pod and pause images imported into `k8s.io`; and kubelet's
//! emptyDir directories.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use hyper_util::rt::TokioIo;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::*;
use tonic::transport::{Channel, Endpoint, Uri};

use crate::containerd::Containerd;
use crate::image;

/// containerd's namespace for CRI.
pub const K8S_NAMESPACE: &str = "k8s.io";
/// The runtime handler (containerd config `runtimes.cryo`).
pub const HANDLER: &str = "cryo";
/// runc's shim's handler (containerd config `runtimes.runc`), for cases that compare.
pub const RUNC_HANDLER: &str = "runc";
/// How long one CRI call may take.
pub const CALL_LIMIT: Duration = Duration::from_secs(60);
/// kubelet's directory name for emptyDir volumes.
pub const EMPTY_DIR_PLUGIN: &str = "kubernetes.io~empty-dir";

/// A connected CRI client.
pub struct Cri {
    rt: tokio::runtime::Runtime,
    runtime: RuntimeServiceClient<Channel>,
    images: ImageServiceClient<Channel>,
}

impl Cri {
    /// Connect to the CRI service on containerd's socket.
    pub fn connect(socket: &Path) -> Result<Cri> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let path = socket.to_path_buf();
        // tonic's channel spawns its worker on the runtime it is created in.
        let _context = rt.enter();
        let channel = rt.block_on(async move {
            Endpoint::try_from("http://[::]:50051")?
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        Ok::<_, std::io::Error>(TokioIo::new(
                            tokio::net::UnixStream::connect(path).await?,
                        ))
                    }
                }))
                .await
                .context("connect to containerd's CRI socket")
        })?;
        Ok(Cri {
            rt,
            runtime: RuntimeServiceClient::new(channel.clone()),
            images: ImageServiceClient::new(channel),
        })
    }

    /// Run one call with the time limit; a CRI error becomes an error naming the call.
    fn call<T, F>(&self, what: &str, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        self.call_within(what, CALL_LIMIT, f)
    }

    fn call_within<T, F>(&self, what: &str, limit: Duration, f: F) -> Result<T>
    where
        F: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match self
            .rt
            .block_on(async { tokio::time::timeout(limit, f).await })
        {
            Ok(Ok(r)) => Ok(r.into_inner()),
            Ok(Err(status)) => bail!(
                "CRI {what} failed: {:?}: {}",
                status.code(),
                status.message()
            ),
            Err(_) => bail!("CRI {what} took more than {limit:?}"),
        }
    }

    pub fn version(&self) -> Result<VersionResponse> {
        self.call(
            "Version",
            self.runtime.clone().version(VersionRequest::default()),
        )
    }

    pub fn image_present(&self, name: &str) -> Result<bool> {
        let r = self.call(
            "ImageStatus",
            self.images.clone().image_status(ImageStatusRequest {
                image: Some(ImageSpec {
                    image: name.to_string(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
        )?;
        Ok(r.image.is_some())
    }

    pub fn run_pod(&self, config: PodSandboxConfig) -> Result<String> {
        self.run_pod_on(config, HANDLER)
    }

    /// RunPodSandbox with runtime handler `handler` (its containers run on it too).
    pub fn run_pod_on(&self, config: PodSandboxConfig, handler: &str) -> Result<String> {
        let r = self.call(
            "RunPodSandbox",
            self.runtime.clone().run_pod_sandbox(RunPodSandboxRequest {
                config: Some(config),
                runtime_handler: handler.to_string(),
            }),
        )?;
        Ok(r.pod_sandbox_id)
    }

    pub fn pod_status(&self, pod: &str) -> Result<PodSandboxStatusResponse> {
        self.call(
            "PodSandboxStatus",
            self.runtime
                .clone()
                .pod_sandbox_status(PodSandboxStatusRequest {
                    pod_sandbox_id: pod.to_string(),
                    verbose: true,
                }),
        )
    }

    pub fn create_container(
        &self,
        pod: &str,
        config: ContainerConfig,
        pod_config: &PodSandboxConfig,
    ) -> Result<String> {
        let r = self.call(
            "CreateContainer",
            self.runtime
                .clone()
                .create_container(CreateContainerRequest {
                    pod_sandbox_id: pod.to_string(),
                    config: Some(config),
                    sandbox_config: Some(pod_config.clone()),
                }),
        )?;
        Ok(r.container_id)
    }

    pub fn start_container(&self, id: &str) -> Result<()> {
        self.call(
            "StartContainer",
            self.runtime.clone().start_container(StartContainerRequest {
                container_id: id.to_string(),
            }),
        )
        .map(|_| ())
    }

    /// `ExecSync`: (exit code, stdout, stderr).
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<(i32, String, String)> {
        self.exec_sync_within(id, cmd, 50)
    }

    /// `ExecSync` with a timeout of `secs`.
    pub fn exec_sync_within(
        &self,
        id: &str,
        cmd: &[&str],
        secs: i64,
    ) -> Result<(i32, String, String)> {
        let r = self.call_within(
            "ExecSync",
            Duration::from_secs(secs as u64 + 30),
            self.runtime.clone().exec_sync(ExecSyncRequest {
                container_id: id.to_string(),
                cmd: cmd.iter().map(|s| s.to_string()).collect(),
                timeout: secs,
            }),
        )?;
        Ok((
            r.exit_code,
            String::from_utf8_lossy(&r.stdout).into_owned(),
            String::from_utf8_lossy(&r.stderr).into_owned(),
        ))
    }

    /// `sh -c script` in the container; its stdout, or an error with its exit code and stderr.
    pub fn sh(&self, id: &str, script: &str) -> Result<String> {
        let (code, out, err) = self.exec_sync(id, &["sh", "-c", script])?;
        if code != 0 {
            bail!("`{script}` in {id} exited {code}: {err}{out}");
        }
        Ok(out)
    }

    pub fn container_status(&self, id: &str) -> Result<ContainerStatusResponse> {
        self.call(
            "ContainerStatus",
            self.runtime
                .clone()
                .container_status(ContainerStatusRequest {
                    container_id: id.to_string(),
                    verbose: true,
                }),
        )
    }

    /// The container's host pid (from ContainerStatus' verbose info).
    pub fn container_pid(&self, id: &str) -> Result<i32> {
        let r = self.container_status(id)?;
        pid_of(&r.info).with_context(|| format!("no pid in ContainerStatus info of {id}"))
    }

    /// The sandbox's host pid (from PodSandboxStatus' verbose info).
    pub fn pod_pid(&self, pod: &str) -> Result<i32> {
        let r = self.pod_status(pod)?;
        pid_of(&r.info).with_context(|| format!("no pid in PodSandboxStatus info of {pod}"))
    }

    pub fn container_stats(&self, id: &str) -> Result<ContainerStats> {
        self.call(
            "ContainerStats",
            self.runtime.clone().container_stats(ContainerStatsRequest {
                container_id: id.to_string(),
            }),
        )?
        .stats
        .context("ContainerStats without stats")
    }

    /// Working-set bytes of every container of `pod` (ListContainerStats).
    pub fn pod_working_set(&self, pod: &str) -> Result<u64> {
        let r = self.call(
            "ListContainerStats",
            self.runtime
                .clone()
                .list_container_stats(ListContainerStatsRequest {
                    filter: Some(ContainerStatsFilter {
                        pod_sandbox_id: pod.to_string(),
                        ..Default::default()
                    }),
                }),
        )?;
        Ok(r.stats
            .iter()
            .filter_map(|s| s.memory.as_ref()?.working_set_bytes.as_ref())
            .map(|v| v.value)
            .sum())
    }

    /// `CheckpointContainer` as kubelet calls it: the archive goes to `location` (a tar path);
    /// `timeout` in seconds (0: containerd's default).
    pub fn checkpoint_container(&self, id: &str, location: &Path, timeout: i64) -> Result<()> {
        self.call(
            "CheckpointContainer",
            self.runtime
                .clone()
                .checkpoint_container(CheckpointContainerRequest {
                    container_id: id.to_string(),
                    location: location.display().to_string(),
                    timeout,
                }),
        )
        .map(|_| ())
    }

    pub fn stop_container(&self, id: &str, timeout: i64) -> Result<()> {
        self.call(
            "StopContainer",
            self.runtime.clone().stop_container(StopContainerRequest {
                container_id: id.to_string(),
                timeout,
            }),
        )
        .map(|_| ())
    }

    pub fn remove_container(&self, id: &str) -> Result<()> {
        self.call(
            "RemoveContainer",
            self.runtime
                .clone()
                .remove_container(RemoveContainerRequest {
                    container_id: id.to_string(),
                }),
        )
        .map(|_| ())
    }

    pub fn stop_pod(&self, pod: &str) -> Result<()> {
        self.call(
            "StopPodSandbox",
            self.runtime
                .clone()
                .stop_pod_sandbox(StopPodSandboxRequest {
                    pod_sandbox_id: pod.to_string(),
                }),
        )
        .map(|_| ())
    }

    pub fn remove_pod(&self, pod: &str) -> Result<()> {
        self.call(
            "RemovePodSandbox",
            self.runtime
                .clone()
                .remove_pod_sandbox(RemovePodSandboxRequest {
                    pod_sandbox_id: pod.to_string(),
                }),
        )
        .map(|_| ())
    }

    /// The ids of the containers of `pod`.
    pub fn list_containers(&self, pod: &str) -> Result<Vec<String>> {
        let r = self.call(
            "ListContainers",
            self.runtime.clone().list_containers(ListContainersRequest {
                filter: Some(ContainerFilter {
                    pod_sandbox_id: pod.to_string(),
                    ..Default::default()
                }),
            }),
        )?;
        Ok(r.containers.into_iter().map(|c| c.id).collect())
    }

    /// Every pod sandbox id containerd's CRI knows.
    pub fn list_pods(&self) -> Result<Vec<String>> {
        let r = self.call(
            "ListPodSandbox",
            self.runtime
                .clone()
                .list_pod_sandbox(ListPodSandboxRequest::default()),
        )?;
        Ok(r.items.into_iter().map(|p| p.id).collect())
    }

    /// Stop and remove a pod (its containers go with it), as kubelet does: retried while
    /// containerd still counts a container as running (containerd 2.x handles the exit of a
    /// shim that died asynchronously, with back-off, so a container of a killed shim reads
    /// "still running" for a second or two; kubelet retries the same way).
    pub fn remove_pod_fully(&self, pod: &str) -> Result<()> {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(15);
        loop {
            self.stop_pod(pod)?;
            match self.remove_pod(pod) {
                Err(e)
                    if format!("{e:#}").contains("still running")
                        && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(200));
                }
                other => return other,
            }
        }
    }
}

/// `"pid": N` in the JSON of a verbose status' `info` entry.
fn pid_of(info: &HashMap<String, String>) -> Option<i32> {
    let v: serde_json::Value = serde_json::from_str(info.get("info")?).ok()?;
    v.get("pid")?.as_i64().map(|p| p as i32)
}

/// The CNI setup a pod-network pod needs offline: a plugin answering VERSION/ADD/DEL with a
/// fixed documentation-range address (touching nothing) and the loopback plugin, in the
/// private containerd's CNI dirs.
pub fn install_cni(cd: &Containerd) -> Result<()> {
    let bin = cd.dir.join("cni/bin");
    let conf = cd.dir.join("cni/net.d");
    let plugin = bin.join("cryo-test-net");
    std::fs::write(
        &plugin,
        r#"#!/bin/sh
# A CNI plugin that answers and touches nothing (tests only).
cat >/dev/null
case "$CNI_COMMAND" in
VERSION) echo '{"cniVersion":"0.4.0","supportedVersions":["0.3.0","0.3.1","0.4.0"]}' ;;
ADD) echo '{"cniVersion":"0.4.0","interfaces":[{"name":"eth0"}],"ips":[{"version":"4","address":"192.0.2.10/24","interface":0}]}' ;;
*) ;;
esac
"#,
    )?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&plugin, std::fs::Permissions::from_mode(0o755))?;
    let loopback = Path::new("/usr/lib/cni/loopback");
    if !loopback.is_file() {
        bail!(
            "{} is missing: install containernetworking-plugins",
            loopback.display()
        );
    }
    std::fs::copy(loopback, bin.join("loopback"))?;
    std::fs::write(
        conf.join("10-cryo-test.conflist"),
        r#"{"cniVersion":"0.4.0","name":"cryo-test","plugins":[{"type":"cryo-test-net"}]}"#,
    )?;
    Ok(())
}

/// Build the busybox and pause images and import them into `k8s.io`.
pub fn import_images(cd: &Containerd) -> Result<()> {
    let (_rootfs, busybox, pause) = image::build_all(&cd.dir.join("images"))?;
    for tar in [busybox, pause] {
        cd.ctr_in(
            K8S_NAMESPACE,
            &["image", "import", &tar.display().to_string()],
            None,
        )?
        .ok()
        .with_context(|| format!("import {}", tar.display()))?;
    }
    Ok(())
}

/// kubelet's emptyDir directory for volume `name` of pod `uid` under `kubelet_root`
/// (created, mode 0777 as kubelet makes it).
pub fn empty_dir(kubelet_root: &Path, uid: &str, name: &str) -> Result<PathBuf> {
    let dir = kubelet_root
        .join("pods")
        .join(uid)
        .join("volumes")
        .join(EMPTY_DIR_PLUGIN)
        .join(name);
    std::fs::create_dir_all(&dir)?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o777))?;
    Ok(dir)
}

/// A pod config: metadata, annotations, a cgroup parent of the test's, logs under `logs`.
pub fn pod_config(
    name: &str,
    uid: &str,
    annotations: &[(&str, &str)],
    cgroup_parent: &str,
    logs: &Path,
) -> PodSandboxConfig {
    PodSandboxConfig {
        metadata: Some(PodSandboxMetadata {
            name: name.to_string(),
            uid: uid.to_string(),
            namespace: "default".to_string(),
            attempt: 0,
        }),
        hostname: name.to_string(),
        log_directory: logs.display().to_string(),
        annotations: annotations
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        linux: Some(LinuxPodSandboxConfig {
            cgroup_parent: cgroup_parent.to_string(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// A busybox container running `sh -c script` with `mounts` (container path, host path).
pub fn container_config(name: &str, script: &str, mounts: &[(&str, &Path)]) -> ContainerConfig {
    ContainerConfig {
        metadata: Some(ContainerMetadata {
            name: name.to_string(),
            attempt: 0,
        }),
        image: Some(ImageSpec {
            image: image::BUSYBOX_IMAGE.to_string(),
            ..Default::default()
        }),
        command: vec!["sh".into(), "-c".into(), script.into()],
        log_path: format!("{name}.log"),
        mounts: mounts
            .iter()
            .map(|(dest, host)| Mount {
                container_path: dest.to_string(),
                host_path: host.display().to_string(),
                ..Default::default()
            })
            .collect(),
        ..Default::default()
    }
}
