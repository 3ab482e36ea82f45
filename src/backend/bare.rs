//! `bare`: the agent as a plain child process, pinned to the budget's CPUs.
//!
//! Data paths: the fs workload works in `<run scratch>/bare-data` (both `DataPath`s: a bare
//! process has only the host's directories), the net workload talks to a `NetPeer` on
//! 127.0.0.1 (both `NetPath`s: loopback is the whole network path of a host process).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::SocketAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::child::{wait_ready, Waiter};
use super::process::{self, Process, Spec};
use super::{Backend, BackendError, IdleInstance, Outcome, RunEnv};
use crate::host::fs::safe_remove_tree;
use crate::measure::launch::{self, Launch, Started};
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;
use crate::netpeer::NetPeer;
use crate::protocol::{Task, TASK_ENV};
use crate::state::ledger::{Resource, RunState};
use crate::workload::Workload;

pub use super::process::cpuset;

/// Longest a process-tier launch may take before it is killed.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(300);
/// Longest an idle instance may take to signal ready.
pub const IDLE_READY_DEADLINE: Duration = Duration::from_secs(60);
/// Longest an idle instance may take to exit once its stdin is closed; then it is killed.
pub const IDLE_STOP_DEADLINE: Duration = Duration::from_secs(10);

pub fn availability(_host: &HostFacts) -> Availability {
    Availability::Available {
        detail: "plain child process".into(),
    }
}

/// The prepared bare tier.
pub struct Bare {
    agent: AgentLaunch,
    state: Arc<RunState>,
    cancel: Arc<AtomicBool>,
    /// The fs workload's host directory, recorded in `state` (None once finished).
    data: Option<PathBuf>,
    /// The net workload's peer on 127.0.0.1.
    peer: Option<NetPeer>,
}

/// Point a process tier's task at its data paths: one directory for both fs paths (`fs_dir`,
/// as the agent sees it) and the loopback peer for both net paths.
pub fn process_task(task: &Task, fs_dir: &str, peer: SocketAddr) -> Task {
    let mut t = task.clone();
    match &mut t.workload {
        Workload::Fs(p) => p.dir = fs_dir.to_string(),
        Workload::Net(p) => p.peer = peer.to_string(),
        _ => {}
    }
    t
}

/// Refuse a task other than `idle` for an idle instance.
pub fn check_idle(task: &Task) -> Result<(), BackendError> {
    match task.workload {
        Workload::Idle(_) => Ok(()),
        ref w => Err(BackendError::Other(format!(
            "start_idle runs the `idle` workload, not `{}`: use run_once for measurements",
            w.name()
        ))),
    }
}

/// Start the loopback peer of the process tiers.
pub fn loopback_peer() -> Result<NetPeer, BackendError> {
    NetPeer::start("127.0.0.1:0").map_err(|e| BackendError::Other(e.to_string()))
}

/// Make a run-level data directory: refused if it exists, recorded, then created.
pub fn make_data_dir(state: &RunState, dir: &std::path::Path) -> Result<(), BackendError> {
    super::resources::refuse_existing(dir)?;
    state
        .record(Resource::Dir { path: dir.into() })
        .map_err(|e| BackendError::io("recording the data directory in the ledger", e))?;
    std::fs::create_dir(dir).map_err(|e| {
        let _ = state.release(&Resource::Dir { path: dir.into() });
        BackendError::io(format!("creating {}", dir.display()), e)
    })
}

/// Remove a run-level data directory made by [`make_data_dir`] and forget it.
pub fn remove_data_dir(state: &RunState, dir: &std::path::Path) -> Result<(), BackendError> {
    safe_remove_tree(dir)
        .map_err(|e| BackendError::io(format!("removing {}", dir.display()), e))?;
    state
        .release(&Resource::Dir { path: dir.into() })
        .map_err(|e| BackendError::io("updating the run ledger", e))
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
        spec.stdout = process::Stdio::Pipe;
        if matches!(task.workload, Workload::Idle(_)) {
            spec.stdin = process::Stdio::Pipe;
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

/// An idle agent started through `std::process::Command` (transitional: the runtime tiers'
/// idle path until they create their processes through [`process`]).
pub struct ProcessIdle {
    waiter: Waiter,
    stdin: Option<ChildStdin>,
    _stdout: ChildStdout,
}

impl IdleInstance for ProcessIdle {
    fn host_pids(&self) -> Vec<Pid> {
        vec![self.waiter.pid()]
    }

    fn stop(mut self: Box<Self>) -> Result<(), BackendError> {
        drop(self.stdin.take());
        match self
            .waiter
            .wait(Instant::now() + IDLE_STOP_DEADLINE, &AtomicBool::new(false))
        {
            Ok(_) | Err(BackendError::Timeout(..)) => Ok(()),
            Err(e) => {
                self.waiter.kill_and_reap();
                Err(e)
            }
        }
    }
}

/// Spawn `cmd` as an idle instance (transitional, see [`ProcessIdle`]).
pub fn spawn_idle(
    mut cmd: Command,
    task: &Task,
    cancel: &AtomicBool,
) -> Result<ProcessIdle, BackendError> {
    check_idle(task)?;
    cmd.env(
        TASK_ENV,
        serde_json::to_string(task).expect("task serialises"),
    )
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = cmd
        .spawn()
        .map_err(|e| BackendError::io("starting the idle agent", e))?;
    let stdin = child.stdin.take().expect("stdin was piped");
    let stdout = child.stdout.take().expect("stdout was piped");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let waiter = match Waiter::new(pid) {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    if let Err(e) = wait_ready(stdout.as_fd(), Instant::now() + IDLE_READY_DEADLINE, cancel) {
        waiter.kill_and_reap();
        return Err(e);
    }
    Ok(ProcessIdle {
        waiter,
        stdin: Some(stdin),
        _stdout: stdout,
    })
}

/// Pre-exec setup for `Command::pre_exec` (transitional: the runtime and VM tiers until they
/// create their processes through [`process`]). Async-signal-safe, no allocation.
pub fn child_common(cpus: &nix::sched::CpuSet) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::sched::sched_setaffinity(Pid::from_raw(0), cpus).map_err(std::io::Error::from)
}

impl Bare {
    /// Prepare the bare tier: its data directory (recorded, then made) and its loopback peer.
    pub fn prepare(env: &RunEnv) -> Result<Self, BackendError> {
        process::cpuset(&env.budget.cpus)?;
        let dir = env.state.scratch().join("bare-data");
        make_data_dir(&env.state, &dir)?;
        let peer = match loopback_peer() {
            Ok(p) => p,
            Err(e) => {
                let _ = remove_data_dir(&env.state, &dir);
                return Err(e);
            }
        };
        Ok(Bare {
            agent: AgentLaunch {
                program: env.agent.clone(),
                chroot: None,
                path_env: "/usr/local/bin:/usr/bin:/bin",
                cpus: env.budget.cpus.clone(),
                fs_dir: dir.to_string_lossy().into_owned(),
                peer: peer.local_addr(),
            },
            state: env.state.clone(),
            cancel: env.cancel.clone(),
            data: Some(dir),
            peer: Some(peer),
        })
    }
}

impl Backend for Bare {
    fn tier(&self) -> Tier {
        Tier::Bare
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        launch::measure(
            &mut self.agent,
            task,
            Instant::now() + PROCESS_DEADLINE,
            &self.cancel,
            &self.state,
        )
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        if let Some(dir) = self.data.take() {
            remove_data_dir(&self.state, &dir)?;
        }
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpus".into(), format!("{:?}", self.agent.cpus)),
            ("fs_path".into(), "host directory (run scratch)".into()),
            ("net_path".into(), "loopback (127.0.0.1)".into()),
        ])
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        Ok(Box::new(AgentIdle::start(
            &mut self.agent,
            task,
            &self.cancel,
        )?))
    }
}
