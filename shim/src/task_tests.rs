//! The Task service's state machine driven in-process: requests as containerd sends them, a
//! test engine behind the engine seam (its processes are pids whose exits the test reports to
//! the exit registry, as the reaper would), events read from a channel sink through the real
//! forwarder. Behaviour with the real engine is tested through containerd (the ctr suite).

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::sync::atomic::{AtomicI32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api::{self, Status};
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task as TaskApi;
use containerd_shim_protos::ttrpc::r#async::TtrpcContext;
use containerd_shim_protos::ttrpc::{self, Code};
use cryo_sandbox::state::Status as EngineStatus;
use cryo_sandbox::{ContainerConfig, ExecConfig};
use oci_spec::runtime::{LinuxResources, Spec};
use tokio::sync::mpsc;

use super::TaskService;
use crate::engine::{Engine, EngineContainer, EngineExec};
use crate::exits::Exits;

/// What the test engine does, chosen by the workload's first argument.
const FAIL_CREATE: &str = "fail-create";
const FAIL_START: &str = "fail-start";
const SLOW_START: &str = "slow-start";
const SLOW_CREATE: &str = "slow-create";

/// The OOM watch a test container was given.
type OomWatch = Box<dyn Fn(u64) + Send + 'static>;

#[derive(Default)]
struct Record {
    created: AtomicUsize,
    destroyed: AtomicUsize,
    pids: AtomicI32,
    /// The container's OOM kill count, as the kernel would keep it.
    oom_kills: AtomicU64,
    /// The OOM watch the shim registered, to be fired by a test.
    oom_watch: Mutex<Option<OomWatch>>,
}

impl Record {
    /// A pid for a new process (far above any real one).
    fn new_pid(&self) -> i32 {
        10_000_000 + self.pids.fetch_add(1, Ordering::SeqCst)
    }
}

struct TestEngine {
    exits: Arc<Exits>,
    record: Arc<Record>,
    /// Pids that are gone (signals to them fail with ESRCH).
    gone: Arc<Mutex<Vec<i32>>>,
}

struct TestContainer {
    pid: i32,
    status: EngineStatus,
    behaviour: String,
    exits: Arc<Exits>,
    /// Pids that got their exit (the reaper saw them).
    gone: Arc<Mutex<Vec<i32>>>,
    record: Arc<Record>,
}

struct TestExec {
    pid: i32,
    exits: Arc<Exits>,
    gone: Arc<Mutex<Vec<i32>>>,
}

/// Signal `pid`: gone pids are ESRCH (as kill(2)); signal 0 only probes.
fn signal(exits: &Exits, gone: &Mutex<Vec<i32>>, pid: i32, sig: i32) -> cryo_sandbox::Result<()> {
    let mut gone = gone.lock().unwrap();
    if gone.contains(&pid) {
        return Err(cryo_sandbox::Error::sys(
            format!("kill {sig} pid {pid}"),
            nix::Error::ESRCH,
        ));
    }
    if sig != 0 {
        gone.push(pid);
        exits.record(pid, 128 + sig);
    }
    Ok(())
}

impl Engine for TestEngine {
    fn create(&self, config: ContainerConfig) -> cryo_sandbox::Result<Box<dyn EngineContainer>> {
        let behaviour = config
            .spec
            .process()
            .as_ref()
            .unwrap()
            .args()
            .as_ref()
            .unwrap()[0]
            .clone();
        if behaviour == FAIL_CREATE {
            return Err(cryo_sandbox::Error::InvalidSpec(
                "process.args: fail-create".into(),
            ));
        }
        if behaviour == SLOW_CREATE {
            std::thread::sleep(Duration::from_millis(200));
        }
        self.record.created.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(TestContainer {
            pid: self.record.new_pid(),
            status: EngineStatus::Created,
            behaviour,
            exits: self.exits.clone(),
            gone: self.gone.clone(),
            record: self.record.clone(),
        }))
    }
}

impl EngineContainer for TestContainer {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn status(&self) -> EngineStatus {
        self.status
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        None
    }
    fn start(&mut self) -> cryo_sandbox::Result<()> {
        match self.behaviour.as_str() {
            FAIL_START => {
                return Err(cryo_sandbox::Error::Setup(
                    "exec /bin/garbage: exec format error".into(),
                ))
            }
            SLOW_START => std::thread::sleep(Duration::from_secs(2)),
            _ => {}
        }
        self.status = EngineStatus::Running;
        Ok(())
    }
    fn exec(&self, _config: ExecConfig) -> cryo_sandbox::Result<Box<dyn EngineExec>> {
        if self.status != EngineStatus::Running {
            return Err(cryo_sandbox::Error::WrongState {
                id: "c".into(),
                status: format!("{:?}", self.status),
                op: "exec".into(),
            });
        }
        Ok(Box::new(TestExec {
            pid: self.record.new_pid(),
            exits: self.exits.clone(),
            gone: self.gone.clone(),
        }))
    }
    fn pause(&mut self) -> cryo_sandbox::Result<()> {
        if self.status != EngineStatus::Running {
            return Err(cryo_sandbox::Error::WrongState {
                id: "c".into(),
                status: format!("{:?}", self.status),
                op: "pause".into(),
            });
        }
        self.status = EngineStatus::Paused;
        Ok(())
    }
    fn resume(&mut self) -> cryo_sandbox::Result<()> {
        self.status = EngineStatus::Running;
        Ok(())
    }
    fn update(&mut self, _resources: &LinuxResources) -> cryo_sandbox::Result<()> {
        Ok(())
    }
    fn kill(&self, sig: i32, all: bool) -> cryo_sandbox::Result<()> {
        if all {
            let _ = signal(&self.exits, &self.gone, self.pid, sig);
            return Ok(());
        }
        signal(&self.exits, &self.gone, self.pid, sig)
    }
    fn pids(&self) -> cryo_sandbox::Result<Vec<i32>> {
        Ok(vec![self.pid])
    }
    fn metrics(&self) -> Box<dyn MessageDyn> {
        Box::new(api::Empty::default())
    }
    fn on_oom(&self, f: Box<dyn Fn(u64) + Send + 'static>) -> cryo_sandbox::Result<()> {
        *self.record.oom_watch.lock().unwrap() = Some(f);
        Ok(())
    }
    fn oom_kills(&self) -> u64 {
        self.record.oom_kills.load(Ordering::SeqCst)
    }
    fn pid1_exited(&self) {}
    fn set_stopped(&mut self) {
        self.status = EngineStatus::Stopped;
    }
    fn destroy(self: Box<Self>) -> cryo_sandbox::Result<()> {
        self.record.destroyed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

impl EngineExec for TestExec {
    fn pid(&self) -> i32 {
        self.pid
    }
    fn take_console(&mut self) -> Option<OwnedFd> {
        None
    }
    fn start(&mut self) -> cryo_sandbox::Result<()> {
        Ok(())
    }
    fn kill(&self, sig: i32) -> cryo_sandbox::Result<()> {
        signal(&self.exits, &self.gone, self.pid, sig)
    }
}

/// A Task service on the test engine, its events, and bundles in a temp dir.
struct Harness {
    svc: Arc<TaskService>,
    exits: Arc<Exits>,
    record: Arc<Record>,
    gone: Arc<Mutex<Vec<i32>>>,
    events: mpsc::UnboundedReceiver<(String, Box<dyn MessageDyn>)>,
    shutdown: Arc<ExitSignal>,
    dir: tempfile::TempDir,
}

fn ctx() -> TtrpcContext {
    TtrpcContext {
        mh: Default::default(),
        metadata: HashMap::new(),
        timeout_nano: 0,
    }
}

fn code<T: std::fmt::Debug>(r: ttrpc::Result<T>) -> Code {
    match r {
        Err(ttrpc::Error::RpcStatus(s)) => s.code(),
        other => panic!("expected an error status, got {other:?}"),
    }
}

impl Harness {
    fn new() -> Harness {
        let exits = Arc::new(Exits::default());
        let record = Arc::new(Record::default());
        let (sink, events) = mpsc::unbounded_channel();
        let shutdown = Arc::new(ExitSignal::default());
        let gone: Arc<Mutex<Vec<i32>>> = Arc::default();
        let engine = Arc::new(TestEngine {
            exits: exits.clone(),
            record: record.clone(),
            gone: gone.clone(),
        });
        let svc = TaskService::new(
            engine,
            exits.clone(),
            crate::events::forward(sink),
            shutdown.clone(),
        );
        Harness {
            svc: Arc::new(svc),
            exits,
            record,
            gone,
            events,
            shutdown,
            dir: tempfile::tempdir().unwrap(),
        }
    }

    /// A bundle whose workload's first argument picks the test engine's behaviour.
    fn create_req(&self, id: &str, behaviour: &str) -> api::CreateTaskRequest {
        let bundle = self.dir.path().join(id);
        std::fs::create_dir_all(&bundle).unwrap();
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_args(Some(vec![behaviour.to_string()]));
        spec.set_process(Some(process));
        std::fs::write(
            bundle.join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        api::CreateTaskRequest {
            id: id.into(),
            bundle: bundle.display().to_string(),
            ..Default::default()
        }
    }

    async fn create(&self, id: &str, behaviour: &str) -> ttrpc::Result<u32> {
        let req = self.create_req(id, behaviour);
        self.svc.create(&ctx(), req).await.map(|r| r.pid)
    }

    async fn state(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::StateResponse> {
        let req = api::StateRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.svc.state(&ctx(), req).await
    }

    async fn start(&self, id: &str, exec_id: &str) -> ttrpc::Result<u32> {
        let req = api::StartRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.svc.start(&ctx(), req).await.map(|r| r.pid)
    }

    async fn kill(&self, id: &str, exec_id: &str, signal: u32, all: bool) -> ttrpc::Result<()> {
        let req = api::KillRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            signal,
            all,
            ..Default::default()
        };
        self.svc.kill(&ctx(), req).await.map(|_| ())
    }

    async fn wait(&self, id: &str, exec_id: &str) -> u32 {
        let req = api::WaitRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        let ctx = ctx();
        let wait = self.svc.wait(&ctx, req);
        tokio::time::timeout(Duration::from_secs(5), wait)
            .await
            .expect("no exit within 5 s")
            .unwrap()
            .exit_status
    }

    async fn delete(&self, id: &str, exec_id: &str) -> ttrpc::Result<api::DeleteResponse> {
        let req = api::DeleteRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            ..Default::default()
        };
        self.svc.delete(&ctx(), req).await
    }

    async fn exec(&self, id: &str, exec_id: &str) -> ttrpc::Result<()> {
        let process = serde_json::to_vec(&Spec::default().process().clone().unwrap()).unwrap();
        let req = api::ExecProcessRequest {
            id: id.into(),
            exec_id: exec_id.into(),
            spec: MessageField::some(Any {
                value: process,
                ..Default::default()
            }),
            ..Default::default()
        };
        self.svc.exec(&ctx(), req).await.map(|_| ())
    }

    /// The topics published so far, in order.
    async fn topics(&mut self) -> Vec<String> {
        self.svc.events.flush(Duration::from_secs(5)).await;
        let mut topics = Vec::new();
        while let Ok((topic, _)) = self.events.try_recv() {
            topics.push(topic);
        }
        topics
    }
}

#[tokio::test]
async fn create_start_exit_delete_in_order() {
    let mut h = Harness::new();
    let pid = h.create("c1", "run").await.unwrap();
    assert_eq!(
        h.state("c1", "").await.unwrap().status,
        Status::CREATED.into()
    );
    assert_eq!(h.start("c1", "").await.unwrap(), pid);
    let state = h.state("c1", "").await.unwrap();
    assert_eq!((state.status, state.pid), (Status::RUNNING.into(), pid));
    // Delete of a running container is refused.
    assert_eq!(code(h.delete("c1", "").await), Code::FAILED_PRECONDITION);
    // The workload exits with 3 (the reaper reports it).
    h.exits.record(pid as i32, 3);
    assert_eq!(h.wait("c1", "").await, 3);
    let state = h.state("c1", "").await.unwrap();
    assert_eq!(
        (state.status, state.exit_status),
        (Status::STOPPED.into(), 3)
    );
    assert!(state.exited_at.is_some());
    let deleted = h.delete("c1", "").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 3));
    assert_eq!(h.record.destroyed.load(Ordering::SeqCst), 1);
    assert_eq!(code(h.state("c1", "").await), Code::NOT_FOUND);
    assert_eq!(
        h.topics().await,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exit",
            "/tasks/delete"
        ]
    );
    // The last container gone, Shutdown lets the shim leave.
    h.svc.shutdown(&ctx(), Default::default()).await.unwrap();
    tokio::time::timeout(Duration::from_secs(1), h.shutdown.wait())
        .await
        .expect("shutdown not signalled");
}

#[tokio::test]
async fn a_container_never_started_is_killed_at_delete() {
    let mut h = Harness::new();
    let pid = h.create("c1", "run").await.unwrap();
    let deleted = h.delete("c1", "").await.unwrap();
    assert_eq!((deleted.pid, deleted.exit_status), (pid, 137));
    assert_eq!(
        h.topics().await,
        ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    );
}

#[tokio::test]
async fn one_id_is_created_once_even_concurrently() {
    let h = Harness::new();
    let (a, b) = tokio::join!(h.create("c1", SLOW_CREATE), h.create("c1", SLOW_CREATE));
    let codes: Vec<Option<Code>> = [a, b]
        .into_iter()
        .map(|r| r.err().map(|e| code::<()>(Err(e))))
        .collect();
    assert!(codes.contains(&None), "{codes:?}");
    assert!(codes.contains(&Some(Code::ALREADY_EXISTS)), "{codes:?}");
    assert_eq!(
        h.record.created.load(Ordering::SeqCst),
        1,
        "the second create built a container"
    );
    assert_eq!(code(h.create("c1", "run").await), Code::ALREADY_EXISTS);
}

#[tokio::test]
async fn a_failed_create_frees_its_id() {
    let h = Harness::new();
    assert_eq!(
        code(h.create("c1", FAIL_CREATE).await),
        Code::INVALID_ARGUMENT
    );
    assert_eq!(code(h.state("c1", "").await), Code::NOT_FOUND);
    h.create("c1", "run").await.unwrap();
}

#[tokio::test]
async fn a_failed_start_leaves_the_task_stopped_before_it_replies() {
    let mut h = Harness::new();
    h.create("c1", FAIL_START).await.unwrap();
    let err = h.start("c1", "").await.unwrap_err();
    assert!(format!("{err:?}").contains("exec format error"), "{err:?}");
    // Right after the reply: STOPPED with an exit status, so containerd's Delete works.
    let state = h.state("c1", "").await.unwrap();
    assert_eq!(
        (state.status, state.exit_status),
        (Status::STOPPED.into(), 137)
    );
    h.delete("c1", "").await.unwrap();
    assert_eq!(h.record.destroyed.load(Ordering::SeqCst), 1);
    assert_eq!(
        h.topics().await,
        ["/tasks/create", "/tasks/exit", "/tasks/delete"]
    );
}

#[tokio::test]
async fn a_slow_start_does_not_stall_state() {
    let h = Harness::new();
    h.create("c1", SLOW_START).await.unwrap();
    let svc = h.svc.clone();
    let asked = Instant::now();
    let start = tokio::spawn(async move {
        let req = api::StartRequest {
            id: "c1".into(),
            ..Default::default()
        };
        svc.start(&ctx(), req).await
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    let state = h.state("c1", "").await.unwrap();
    // Start takes 2 s on the blocking pool; the runtime thread answers State meanwhile.
    assert!(
        asked.elapsed() < Duration::from_millis(1000),
        "State answered after {:?}, behind Start",
        asked.elapsed()
    );
    assert_eq!(state.status, Status::CREATED.into());
    start.await.unwrap().unwrap();
    assert_eq!(
        h.state("c1", "").await.unwrap().status,
        Status::RUNNING.into()
    );
}

#[tokio::test]
async fn exec_processes_by_id() {
    let mut h = Harness::new();
    h.create("c1", "run").await.unwrap();
    // Not running yet: exec is refused by the engine.
    assert_eq!(code(h.exec("c1", "e1").await), Code::FAILED_PRECONDITION);
    h.start("c1", "").await.unwrap();
    h.exec("c1", "e1").await.unwrap();
    assert_eq!(code(h.exec("c1", "e1").await), Code::ALREADY_EXISTS);
    assert_eq!(code(h.exec("nope", "e1").await), Code::NOT_FOUND);
    let state = h.state("c1", "e1").await.unwrap();
    assert_eq!((state.id.as_str(), state.exec_id.as_str()), ("e1", "e1"));
    assert_eq!(state.status, Status::CREATED.into());
    let pid = h.start("c1", "e1").await.unwrap();
    assert_eq!(state.pid, pid);
    assert_eq!(code(h.start("c1", "e1").await), Code::FAILED_PRECONDITION);
    assert_eq!(code(h.delete("c1", "e1").await), Code::FAILED_PRECONDITION);
    for unknown in [
        h.state("c1", "e2").await.map(|_| ()),
        h.start("c1", "e2").await.map(|_| ()),
        h.kill("c1", "e2", 9, false).await,
        h.delete("c1", "e2").await.map(|_| ()),
    ] {
        assert_eq!(code(unknown), Code::NOT_FOUND);
    }
    h.exits.record(pid as i32, 0);
    assert_eq!(h.wait("c1", "e1").await, 0);
    assert_eq!(
        h.state("c1", "e1").await.unwrap().status,
        Status::STOPPED.into()
    );
    assert_eq!(h.delete("c1", "e1").await.unwrap().pid, pid);
    assert_eq!(code(h.state("c1", "e1").await), Code::NOT_FOUND);
    // The id is free again.
    h.exec("c1", "e1").await.unwrap();
    let topics = h.topics().await;
    assert_eq!(
        topics,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/exec-added",
            "/tasks/exec-started",
            "/tasks/exit",
            "/tasks/exec-added"
        ]
    );
}

#[tokio::test]
async fn kill_of_a_gone_process_is_not_found() {
    let h = Harness::new();
    h.create("c1", "run").await.unwrap();
    h.start("c1", "").await.unwrap();
    h.exec("c1", "e1").await.unwrap();
    h.start("c1", "e1").await.unwrap();
    // Killed: the exit is known afterwards; a second kill finds it gone.
    h.kill("c1", "e1", 9, false).await.unwrap();
    assert_eq!(h.wait("c1", "e1").await, 137);
    assert_eq!(code(h.kill("c1", "e1", 9, false).await), Code::NOT_FOUND);
    // Gone before its exit is known (reaped while its stdio still drains): the engine's
    // ESRCH is NotFound too, not Unknown.
    h.exec("c1", "e2").await.unwrap();
    let e2 = h.start("c1", "e2").await.unwrap();
    h.gone.lock().unwrap().push(e2 as i32);
    assert_eq!(code(h.kill("c1", "e2", 15, false).await), Code::NOT_FOUND);
    assert_eq!(
        h.state("c1", "e2").await.unwrap().status,
        Status::RUNNING.into()
    );
    // Wrong states are FailedPrecondition; unknown ids NotFound.
    h.kill("c1", "", 9, false).await.unwrap();
    h.wait("c1", "").await;
    assert_eq!(code(h.kill("c1", "", 9, false).await), Code::NOT_FOUND);
    assert_eq!(code(h.kill("nope", "", 9, false).await), Code::NOT_FOUND);
    let pause = api::PauseRequest {
        id: "c1".into(),
        ..Default::default()
    };
    assert_eq!(
        code(h.svc.pause(&ctx(), pause).await),
        Code::FAILED_PRECONDITION
    );
    assert_eq!(code(h.start("c1", "").await), Code::FAILED_PRECONDITION);
}

#[tokio::test]
async fn an_oom_kill_the_watch_has_not_seen_is_reported_before_the_exit() {
    let mut h = Harness::new();
    let pid = h.create("c1", "run").await.unwrap();
    h.start("c1", "").await.unwrap();
    // The kernel counted the kill; its notification has not reached the watch yet.
    h.record.oom_kills.store(1, Ordering::SeqCst);
    h.exits.record(pid as i32, 137);
    assert_eq!(h.wait("c1", "").await, 137);
    // The watch fires late for the same kill: nothing more is sent.
    (h.record
        .oom_watch
        .lock()
        .unwrap()
        .as_ref()
        .expect("watched"))(1);
    assert_eq!(
        h.topics().await,
        ["/tasks/create", "/tasks/start", "/tasks/oom", "/tasks/exit"]
    );
}

#[tokio::test]
async fn each_oom_kill_is_reported_once() {
    let mut h = Harness::new();
    let pid = h.create("c1", "run").await.unwrap();
    h.start("c1", "").await.unwrap();
    let fire = |kills| {
        h.record.oom_kills.store(kills, Ordering::SeqCst);
        (h.record
            .oom_watch
            .lock()
            .unwrap()
            .as_ref()
            .expect("watched"))(kills);
    };
    fire(1);
    fire(1);
    fire(2);
    h.exits.record(pid as i32, 137);
    assert_eq!(h.wait("c1", "").await, 137);
    assert_eq!(
        h.topics().await,
        [
            "/tasks/create",
            "/tasks/start",
            "/tasks/oom",
            "/tasks/oom",
            "/tasks/exit"
        ]
    );
}
