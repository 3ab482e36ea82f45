//! `bare`: the agent as a plain child process, pinned to the budget's CPUs.

use std::collections::BTreeMap;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::child::{into_report, read_agent, Waiter};
use super::{Availability, Backend, BackendError, Outcome, RunEnv, Timings};
use crate::host::HostFacts;
use crate::protocol::{Task, TASK_ENV};
use crate::tier::Tier;

/// Longest a process-tier launch may take before it is killed.
pub const PROCESS_DEADLINE: Duration = Duration::from_secs(300);

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
        Ok(())
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let set = cpuset(&self.cpus)?;
        let mut cmd = Command::new(&self.agent);
        // SAFETY: the closure only calls prctl and sched_setaffinity (async-signal-safe).
        unsafe {
            cmd.pre_exec(move || child_common(&set));
        }
        measure_command(cmd, task, &self.cancel, || Ok(()))
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("cpus".into(), format!("{:?}", self.cpus))])
    }
}
