//! `bare`: the agent as a plain child process, pinned to the budget's CPUs.
//!
//! Data paths: the fs workload works in `<run scratch>/bare-data` (both `DataPath`s: a bare
//! process has only the host's directories), the net workload talks to a `NetPeer` on
//! 127.0.0.1 (both `NetPath`s: loopback is the whole network path of a host process).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::process::{ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::child::{into_report, read_agent, wait_ready, Waiter};
use super::{Backend, BackendError, IdleInstance, Outcome, RunEnv, Timings};
use crate::host::fs::safe_remove_tree;
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;
use crate::netpeer::NetPeer;
use crate::protocol::{Task, TASK_ENV};
use crate::state::ledger::{Resource, RunState};
use crate::workload::Workload;

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

#[derive(Default)]
pub struct Bare {
    agent: PathBuf,
    cpus: Vec<usize>,
    cancel: Arc<AtomicBool>,
    /// The fs workload's host directory, recorded in `state`.
    data: Option<(Arc<RunState>, PathBuf)>,
    /// The net workload's peer on 127.0.0.1.
    peer: Option<NetPeer>,
}

/// Point a process tier's task at its data paths: one directory for both fs paths (`fs_dir`,
/// as the agent sees it) and the loopback peer for both net paths.
pub fn process_task(
    task: &Task,
    fs_dir: &str,
    peer: Option<SocketAddr>,
) -> Result<Task, BackendError> {
    let mut t = task.clone();
    match &mut t.workload {
        Workload::Fs(p) => p.dir = fs_dir.to_string(),
        Workload::Net(p) => {
            let peer = peer.ok_or_else(|| {
                BackendError::Other("the net peer is not running: call prepare() first".into())
            })?;
            p.peer = peer.to_string();
        }
        _ => {}
    }
    Ok(t)
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

/// An idle agent of a process tier (bare, chroot): running until its stdin closes.
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
        // End of file on stdin ends the idle workload; a stuck agent is killed at the deadline
        // (Waiter::wait kills and reaps it then), so the instance is gone either way.
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

/// Spawn `cmd` as an idle instance: stdin and stdout piped, returned once the agent is ready.
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

/// Pre-exec setup shared by the process tiers: die with the harness, stay on the budget's CPUs.
/// Runs in the forked child: only async-signal-safe calls, no allocation.
pub fn child_common(cpus: &nix::sched::CpuSet) -> std::io::Result<()> {
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    nix::sched::sched_setaffinity(Pid::from_raw(0), cpus).map_err(std::io::Error::from)
}

/// Build a CpuSet for a list of host CPU indices.
pub fn cpuset(cpus: &[usize]) -> Result<nix::sched::CpuSet, BackendError> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c)
            .map_err(|e| BackendError::sys(format!("cpu {c} in the budget"), e))?;
    }
    Ok(set)
}

/// Spawn `cmd` (stdout piped), read the agent's lines and wait for exit: the common
/// measurement of the process tiers. `teardown` runs after exit and is timed.
pub fn measure_command(
    mut cmd: Command,
    task: &Task,
    cancel: &AtomicBool,
    teardown: impl FnOnce() -> Result<(), BackendError>,
) -> Result<Outcome, BackendError> {
    cmd.env(
        TASK_ENV,
        serde_json::to_string(task).expect("task serialises"),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let launch = Instant::now();
    let mut child = cmd
        .spawn()
        .map_err(|e| BackendError::io("starting the agent", e))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let waiter = Waiter::new(pid)?;
    let deadline = launch + PROCESS_DEADLINE;
    let stream = match read_agent(stdout.as_fd(), deadline, cancel) {
        Ok(s) => s,
        Err(e) => {
            waiter.kill_and_reap();
            let _ = teardown();
            return Err(e);
        }
    };
    let (exited, code) = waiter.wait(deadline, cancel)?;
    drop(stdout);
    teardown()?;
    let released = Instant::now();
    let report = into_report(&stream, code)?;
    let ready = stream
        .ready_at
        .ok_or_else(|| BackendError::Agent("the agent never signalled ready".into()))?;
    Ok(Outcome {
        timings: Timings {
            launch_to_ready: ready - launch,
            launch_to_exit: exited - launch,
            teardown: released - exited,
        },
        report,
        exit_code: Some(code),
    })
}

impl Backend for Bare {
    fn tier(&self) -> Tier {
        Tier::Bare
    }

    fn prepare(&mut self, env: &RunEnv) -> Result<(), BackendError> {
        self.agent = env.agent.clone();
        self.cpus = env.budget.cpus.clone();
        self.cancel = env.cancel.clone();
        // Children inherit the spawning thread's CPUs: pin this thread to the budget.
        nix::sched::sched_setaffinity(Pid::from_raw(0), &cpuset(&self.cpus)?)
            .map_err(|e| BackendError::sys("pinning the harness thread to the budget's CPUs", e))?;
        let dir = env.state.scratch().join("bare-data");
        make_data_dir(&env.state, &dir)?;
        self.data = Some((env.state.clone(), dir));
        match loopback_peer() {
            Ok(p) => self.peer = Some(p),
            Err(e) => {
                let _ = self.finish();
                return Err(e);
            }
        }
        Ok(())
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let task = self.task_for(task)?;
        measure_command(self.command()?, &task, &self.cancel, || Ok(()))
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        if let Some((state, dir)) = self.data.take() {
            remove_data_dir(&state, &dir)?;
        }
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpus".into(), format!("{:?}", self.cpus)),
            ("fs_path".into(), "host directory (run scratch)".into()),
            ("net_path".into(), "loopback (127.0.0.1)".into()),
        ])
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        let cmd = self.command()?;
        Ok(Box::new(spawn_idle(cmd, task, &self.cancel)?))
    }
}

impl Bare {
    /// A plain spawn, as `hyperfine -N` does it: no pre-exec hook, so the standard library
    /// uses posix_spawn (vfork-style, no copy of the harness's page tables). The CPUs come from
    /// the harness thread, pinned to the budget in `prepare`; dying with the harness is the
    /// agent's first act (`ISOBENCH_PARENT`: PR_SET_PDEATHSIG, then a check that the parent is
    /// still this process, which closes the race).
    fn command(&self) -> Result<Command, BackendError> {
        let mut cmd = Command::new(&self.agent);
        cmd.env(crate::protocol::PARENT_ENV, std::process::id().to_string());
        Ok(cmd)
    }

    fn task_for(&self, task: &Task) -> Result<Task, BackendError> {
        let (_, dir) = self.data.as_ref().ok_or_else(|| {
            BackendError::Other("bare backend used before prepare(): call prepare first".into())
        })?;
        process_task(
            task,
            &dir.to_string_lossy(),
            self.peer.as_ref().map(NetPeer::local_addr),
        )
    }
}
