//! What the tiers share about a launch, on top of the one timer ([`crate::measure::launch`])
//! and process creation ([`crate::backend::process`]): the launch of the process tiers (bare,
//! chroot), deadlines, the idle check, the loopback peer, the task's data paths, and ([`cli`])
//! the launch of a CLI (a runtime's, or the VMM).

pub mod cli;

use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::backend::process::{self, Process, Spec, Stdio};
use crate::backend::{BackendError, IdleInstance};
use crate::measure::launch::{self, Launch, Started};
use crate::netpeer::NetPeer;
use crate::protocol::{Task, TASK_ENV};
use crate::workload::Workload;

/// Longest a process-tier launch may take before it is killed.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(300);
/// Longest an idle instance may take to signal ready.
pub const IDLE_READY_DEADLINE: Duration = Duration::from_secs(60);
/// Longest an idle instance may take to exit once its stdin is closed; then it is killed.
pub const IDLE_STOP_DEADLINE: Duration = Duration::from_secs(10);

/// Point a process tier's task at its data paths: one directory for both fs paths (`fs_dir`,
/// as the agent sees it) and the loopback peer for both net paths.
pub fn process_task(task: &Task, fs_dir: &str, peer: SocketAddr) -> Task {
    let mut t = task.clone();
    match &mut t.workload {
        Workload::Fs(p) => p.dir = fs_dir.to_string(),
        Workload::Net(p) => p.peer = peer.to_string(),
        Workload::Mysql(p) => p.dir = fs_dir.to_string(),
        _ => {}
    }
    t
}

/// Whether the task's agent stays until its stdin closes: `idle`, and an application server
/// (the agent serving it until the host is done).
pub fn stays_until_stdin_closes(task: &Task) -> bool {
    matches!(task.workload, Workload::Idle(_)) || task.workload.server_app().is_some()
}

/// Refuse a task other than `idle` (or an application server) for an idle instance.
pub fn check_idle(task: &Task) -> Result<(), BackendError> {
    match task.workload {
        _ if stays_until_stdin_closes(task) => Ok(()),
        ref w => Err(BackendError::Other(format!(
            "start_idle runs the `idle` workload, not `{}`: use run_once for measurements",
            w.name()
        ))),
    }
}

/// The application a `start_server` task serves, or the one-line refusal.
pub fn server_app(task: &Task) -> Result<crate::workload::ServerApp, BackendError> {
    task.workload.server_app().ok_or_else(|| {
        BackendError::Other(format!(
            "start_server runs an application workload, not `{}`",
            task.workload.name()
        ))
    })
}

/// A port free on 127.0.0.1 now: where a tier on the host's network serves an application.
pub fn free_loopback_port() -> Result<u16, BackendError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| BackendError::io("finding a free loopback port", e))
}

/// The task of a tier on the host's network (bare, chroot, the runtimes' shared network):
/// the server on 127.0.0.1 at a port free now, and where the host reaches it.
pub fn loopback_server_task(task: &Task) -> Result<(Task, SocketAddr), BackendError> {
    server_app(task)?;
    let port = free_loopback_port()?;
    let mut t = task.clone();
    t.workload = task.workload.with_endpoint("127.0.0.1", port);
    Ok((t, SocketAddr::from(([127, 0, 0, 1], port))))
}

/// A process tier (bare, chroot) serving an application: the server on 127.0.0.1 at a port
/// free now (the host's loopback is the whole network path of a host process).
pub fn start_loopback_server(
    l: &mut AgentLaunch,
    task: &Task,
    cancel: &AtomicBool,
) -> Result<crate::backend::ServerInstance, BackendError> {
    let (t, addr) = loopback_server_task(task)?;
    let idle = AgentIdle::start(l, &t, cancel)?;
    Ok(crate::backend::ServerInstance {
        instance: Box::new(idle),
        addr,
    })
}

/// Start the loopback peer of the process tiers.
pub fn loopback_peer() -> Result<NetPeer, BackendError> {
    NetPeer::start("127.0.0.1:0").map_err(|e| BackendError::Other(e.to_string()))
}

/// The launch of a process tier (bare, chroot): the agent, pinned, dying with the harness,
/// with a whole environment of its own (PATH and the task), stdout piped; chrooted for chroot.
pub struct AgentLaunch {
    /// The agent's path (inside the jail for chroot).
    pub program: PathBuf,
    pub chroot: Option<PathBuf>,
    /// PATH of the agent's environment.
    pub path_env: &'static str,
    pub cpus: Vec<usize>,
    /// The fs workload's directory as the agent sees it.
    pub fs_dir: String,
    pub peer: SocketAddr,
}

impl AgentLaunch {
    fn spec(&self, task: &Task) -> Spec {
        let task = process_task(task, &self.fs_dir, self.peer);
        let mut spec = Spec::new(&self.program);
        spec.env = vec![
            (OsString::from("PATH"), OsString::from(self.path_env)),
            (
                OsString::from(TASK_ENV),
                OsString::from(serde_json::to_string(&task).expect("task serialises")),
            ),
        ];
        spec.stdout = Stdio::Pipe;
        if stays_until_stdin_closes(&task) {
            spec.stdin = Stdio::Pipe;
        }
        spec.cpus = Some(self.cpus.clone());
        spec.die_with_parent = true;
        spec.chroot = self.chroot.clone();
        spec
    }
}

impl Launch for AgentLaunch {
    /// Everything the spawn needs, built off the clock.
    type Plan = Spec;
    type Running = ();

    fn plan(&mut self, task: &Task) -> Result<Spec, BackendError> {
        Ok(self.spec(task))
    }

    fn start(&mut self, spec: &mut Spec) -> Result<Started<()>, BackendError> {
        let mut process = process::spawn(spec)?;
        let stream = process.stdout.take().expect("stdout is piped");
        Ok(Started {
            process,
            stream,
            running: (),
        })
    }

    /// Nothing per launch: the agent is the whole sandbox.
    fn teardown(&mut self, _spec: Spec, _running: Option<()>) -> Result<(), BackendError> {
        Ok(())
    }
}

/// An idle agent of a process tier (bare, chroot): running until its stdin closes.
pub struct AgentIdle {
    process: Process,
    stdin: Option<OwnedFd>,
    _stream: OwnedFd,
}

impl AgentIdle {
    /// Start one through `l` (check_idle first), returned once it signalled ready.
    pub fn start(
        l: &mut AgentLaunch,
        task: &Task,
        cancel: &AtomicBool,
    ) -> Result<Self, BackendError> {
        check_idle(task)?;
        let (_spec, started) = launch::start_idle(l, task, IDLE_READY_DEADLINE, cancel)?;
        let Started {
            mut process,
            stream,
            ..
        } = started;
        let stdin = process.stdin.take();
        Ok(AgentIdle {
            process,
            stdin,
            _stream: stream,
        })
    }
}

impl IdleInstance for AgentIdle {
    fn host_pids(&self) -> Vec<Pid> {
        vec![self.process.pid]
    }

    fn stop(mut self: Box<Self>) -> Result<(), BackendError> {
        // End of file on stdin ends the idle workload; a stuck agent is killed at the deadline
        // (Process::wait kills and reaps it then), so the instance is gone either way.
        drop(self.stdin.take());
        match self
            .process
            .wait(Instant::now() + IDLE_STOP_DEADLINE, &AtomicBool::new(false))
        {
            Ok(_) | Err(BackendError::Timeout(..)) => Ok(()),
            Err(e) => {
                self.process.kill_and_reap();
                Err(e)
            }
        }
    }
}
