//! THE launch timer: every launch of every tier is timed here, and nowhere else.
//!
//! A tier implements [`Launch`], split so that this module owns the clock:
//! - `plan` (OFF the clock): per-launch names, the task as the sandbox sees it, ledger
//!   `record`s (durable, fsync'd: record-before-create is a safety rule);
//! - `start` (ON the clock, from the launch instant): create the per-launch resources and the
//!   process through [`crate::backend::process`];
//! - `teardown` (ON the clock, after exit): release every per-launch resource. Ledger
//!   `release`s there are deferred ([`RunState::defer_releases`]) and written after the
//!   `released` instant, so no fsync lands on the clock for any tier.
//!
//! Instants: launch (before `start`), ready (the agent's READY line read), exit (the pidfd
//! fired), released (`teardown` returned). One error path: whatever fails after `plan`, the
//! process is killed and reaped, `teardown` runs (with `None` when `start` failed part way: it
//! removes what the plan names and skips what was never made), the ledger is flushed, and a
//! failed wait is the same error for every tier.

use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use crate::backend::child::{into_report, read_agent, wait_ready, StreamResult};
use crate::backend::process::Process;
use crate::backend::{BackendError, Outcome, Timings};
use crate::protocol::Task;
use crate::state::ledger::RunState;

/// One launch of one tier, split so the core owns the clock.
pub trait Launch {
    /// Everything named and recorded before the launch instant.
    type Plan;
    /// Tier state a started launch holds until teardown (a per-launch peer, ...).
    type Running;
    /// OFF the clock: per-launch names, directories to be, ledger `record`s, the task as the
    /// sandbox sees it; anything that can be prepared before the launch instant.
    fn plan(&mut self, task: &Task) -> Result<Self::Plan, BackendError>;
    /// ON the clock, from the launch instant: create the per-launch resources and the process.
    /// Returns the process whose exit is "exit" (agent, runtime CLI or VMM), the fd the agent's
    /// protocol lines arrive on (pipe or VM serial), and the tier state for teardown. On error,
    /// what was created stays named by `plan`, and `teardown(plan, None)` removes it.
    fn start(&mut self, plan: &mut Self::Plan) -> Result<Started<Self::Running>, BackendError>;
    /// ON the clock, after exit: release every per-launch resource (runtime delete, umount,
    /// rmdir cgroup, veth del, ...) and `release` them in the ledger (deferred by the core).
    /// Idempotent on what was never created; `running` is `None` when `start` failed.
    fn teardown(
        &mut self,
        plan: Self::Plan,
        running: Option<Self::Running>,
    ) -> Result<(), BackendError>;
}

/// A started launch.
pub struct Started<R> {
    pub process: Process,
    /// Where the agent's READY and result lines arrive.
    pub stream: OwnedFd,
    pub running: R,
}

/// A launch as measured, before the agent's report is interpreted (tests of exit codes need
/// the code even when the agent was stopped before reporting).
#[derive(Debug)]
pub struct RawOutcome {
    pub stream: StreamResult,
    pub exit_code: i32,
    /// None when the READY line never came.
    pub launch_to_ready: Option<Duration>,
    pub launch_to_exit: Duration,
    pub launch_to_released: Duration,
}

impl RawOutcome {
    /// exit -> released.
    pub fn teardown(&self) -> Duration {
        self.launch_to_released.saturating_sub(self.launch_to_exit)
    }

    /// The agent's report and the timings, or the error the launch amounts to.
    pub fn into_outcome(self) -> Result<Outcome, BackendError> {
        let report = into_report(&self.stream, self.exit_code)?;
        let launch_to_ready = self
            .launch_to_ready
            .ok_or_else(|| BackendError::Agent("the agent never signalled ready".into()))?;
        Ok(Outcome {
            timings: Timings {
                launch_to_ready,
                launch_to_exit: self.launch_to_exit,
                teardown: self.teardown(),
                launch_to_released: self.launch_to_released,
            },
            report,
            exit_code: Some(self.exit_code),
        })
    }
}

/// THE timer. launch -> ready (ready line seen) -> exit (pidfd) -> released (teardown done).
pub fn measure<L: Launch + ?Sized>(
    l: &mut L,
    task: &Task,
    deadline: Instant,
    cancel: &AtomicBool,
    state: &RunState,
) -> Result<Outcome, BackendError> {
    measure_raw(l, task, deadline, cancel, state)?.into_outcome()
}

/// [`measure`] without interpreting the report.
pub fn measure_raw<L: Launch + ?Sized>(
    l: &mut L,
    task: &Task,
    deadline: Instant,
    cancel: &AtomicBool,
    state: &RunState,
) -> Result<RawOutcome, BackendError> {
    let mut plan = l.plan(task)?;
    let hold = state.defer_releases();
    let launch = Instant::now();
    let started = match l.start(&mut plan) {
        Ok(s) => s,
        Err(e) => {
            let torn = l.teardown(plan, None);
            return Err(with_flush(combine(e, torn), hold.flush()));
        }
    };
    let Started {
        mut process,
        stream,
        running,
    } = started;
    let read = read_agent(stream.as_fd(), deadline, cancel);
    let waited = match &read {
        Ok(_) => process.wait(deadline, cancel),
        Err(_) => {
            process.kill_and_reap();
            Err(BackendError::Other("not waited".into()))
        }
    };
    drop(stream);
    let torn = l.teardown(plan, Some(running));
    let released = Instant::now();
    drop(process);
    let flushed = hold.flush();
    let failure = match (read, waited) {
        (Err(e), _) | (Ok(_), Err(e)) => Some(e),
        (Ok(s), Ok((exited, code))) => {
            return match torn {
                Err(t) => Err(with_flush(
                    BackendError::Other(format!(
                        "tearing the launch down failed: {t} (run `isobench cleanup`)"
                    )),
                    flushed,
                )),
                Ok(()) => {
                    if let Err(e) = flushed {
                        tracing::warn!("writing the run ledger after a launch: {e}");
                    }
                    Ok(RawOutcome {
                        launch_to_ready: s.ready_at.map(|r| r.saturating_duration_since(launch)),
                        stream: s,
                        exit_code: code,
                        launch_to_exit: exited.saturating_duration_since(launch),
                        launch_to_released: released.saturating_duration_since(launch),
                    })
                }
            };
        }
    };
    let e = match failure.expect("set above") {
        // One shape for every tier: how long it was given and what it printed.
        BackendError::Timeout(_, tail) => {
            BackendError::Timeout(deadline.saturating_duration_since(launch), tail)
        }
        e => e,
    };
    Err(with_flush(combine(e, torn), flushed))
}

/// Start one idle instance, untimed: plan, start, wait for READY (within `ready_within`), with
/// the same error path as [`measure`]. The caller owns the result and tears it down later.
pub fn start_idle<L: Launch + ?Sized>(
    l: &mut L,
    task: &Task,
    ready_within: Duration,
    cancel: &AtomicBool,
) -> Result<(L::Plan, Started<L::Running>), BackendError> {
    let mut plan = l.plan(task)?;
    let mut started = match l.start(&mut plan) {
        Ok(s) => s,
        Err(e) => {
            let torn = l.teardown(plan, None);
            return Err(combine(e, torn));
        }
    };
    if let Err(e) = wait_ready(
        started.stream.as_fd(),
        Instant::now() + ready_within,
        cancel,
    ) {
        started.process.kill_and_reap();
        let torn = l.teardown(plan, Some(started.running));
        return Err(combine(e, torn));
    }
    Ok((plan, started))
}

/// A [`Launch`] that calls `after_start(pid)` once its inner launch has started (tests signal
/// the sandbox's process this way).
pub struct AfterStart<'a, L: ?Sized> {
    pub inner: &'a mut L,
    pub after_start: Option<Box<dyn FnOnce(Pid) + 'a>>,
}

impl<L: Launch + ?Sized> Launch for AfterStart<'_, L> {
    type Plan = L::Plan;
    type Running = L::Running;
    fn plan(&mut self, task: &Task) -> Result<Self::Plan, BackendError> {
        self.inner.plan(task)
    }
    fn start(&mut self, plan: &mut Self::Plan) -> Result<Started<Self::Running>, BackendError> {
        let s = self.inner.start(plan)?;
        if let Some(f) = self.after_start.take() {
            f(s.process.pid);
        }
        Ok(s)
    }
    fn teardown(
        &mut self,
        plan: Self::Plan,
        running: Option<Self::Running>,
    ) -> Result<(), BackendError> {
        self.inner.teardown(plan, running)
    }
}

/// The launch's error, plus the teardown's if it failed too (then the ledger keeps the
/// resources for `isobench cleanup`).
fn combine(e: BackendError, torn: Result<(), BackendError>) -> BackendError {
    match torn {
        Ok(()) => e,
        Err(t) => BackendError::Other(format!(
            "{e}; tearing the launch down also failed: {t} (run `isobench cleanup`)"
        )),
    }
}

fn with_flush(e: BackendError, flushed: std::io::Result<()>) -> BackendError {
    match flushed {
        Ok(()) => e,
        Err(f) => BackendError::Other(format!("{e}; writing the run ledger also failed: {f}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::process::{spawn, Spec, Stdio};
    use crate::state::ledger::{read_ledger, Resource, StateDir};

    use crate::workload::Workload;
    use std::sync::atomic::Ordering;

    /// What the fake did, for the assertions.
    #[derive(Debug, Default)]
    struct Log {
        created: bool,
        torn_down: Vec<bool>,
    }

    /// A fake tier: its "sandbox" is a shell script, its per-launch resource a directory.
    struct Fake<'a> {
        state: &'a RunState,
        script: &'static str,
        fail_start_after_create: bool,
        log: Log,
    }

    impl Launch for Fake<'_> {
        type Plan = std::path::PathBuf;
        type Running = ();
        fn plan(&mut self, _task: &Task) -> Result<Self::Plan, BackendError> {
            let d = self.state.scratch().join("fake-launch");
            self.state
                .record(Resource::Dir { path: d.clone() })
                .map_err(|e| BackendError::io("record", e))?;
            Ok(d)
        }
        fn start(&mut self, plan: &mut Self::Plan) -> Result<Started<()>, BackendError> {
            std::fs::create_dir(&*plan).map_err(|e| BackendError::io("mkdir", e))?;
            self.log.created = true;
            if self.fail_start_after_create {
                return Err(BackendError::Other("start failed on purpose".into()));
            }
            let mut spec = Spec::new("/bin/sh");
            spec.args = vec!["-c".into(), self.script.into()];
            spec.stdout = Stdio::Pipe;
            let mut process = spawn(&spec)?;
            let stream = process.stdout.take().expect("piped");
            Ok(Started {
                process,
                stream,
                running: (),
            })
        }
        fn teardown(&mut self, plan: Self::Plan, running: Option<()>) -> Result<(), BackendError> {
            self.log.torn_down.push(running.is_some());
            if plan.exists() {
                std::fs::remove_dir(&plan).map_err(|e| BackendError::io("rmdir", e))?;
            }
            self.state
                .release(&Resource::Dir { path: plan })
                .map_err(|e| BackendError::io("release", e))
        }
    }

    fn run(
        script: &'static str,
        fail_start: bool,
        deadline: Duration,
        cancel: bool,
    ) -> (Result<RawOutcome, BackendError>, Log, Vec<Resource>) {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let rs = sd.begin_run("fake").unwrap();
        let mut f = Fake {
            state: &rs,
            script,
            fail_start_after_create: fail_start,
            log: Log::default(),
        };
        let c = AtomicBool::new(cancel);
        let r = measure_raw(
            &mut f,
            &Task::new(Workload::Noop),
            Instant::now() + deadline,
            &c,
            &rs,
        );
        c.store(false, Ordering::Relaxed);
        let on_disk = read_ledger(&rs.dir).unwrap().resources;
        (r, f.log, on_disk)
    }

    const GOOD: &str = "echo ISOBENCH-READY; echo 'not a result line'";

    #[test]
    fn launch_success_orders_the_instants_and_flushes_the_ledger() {
        let (r, log, left) = run(GOOD, false, Duration::from_secs(30), false);
        let o = r.unwrap();
        assert_eq!(o.exit_code, 0);
        assert!(o.launch_to_ready.unwrap() <= o.launch_to_exit);
        assert!(o.launch_to_exit <= o.launch_to_released);
        assert_eq!(log.torn_down, vec![true]);
        assert!(left.is_empty(), "{left:?}");
        // No result line: the report is an error carrying the output tail.
        let e = o.into_outcome().unwrap_err().to_string();
        assert!(e.contains("not a result line"), "{e}");
    }

    #[test]
    fn launch_start_failure_after_partial_creation_tears_down() {
        let (r, log, left) = run(GOOD, true, Duration::from_secs(30), false);
        assert!(r.unwrap_err().to_string().contains("on purpose"));
        assert!(log.created);
        assert_eq!(log.torn_down, vec![false]);
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn launch_wait_timeout_kills_and_tears_down() {
        let (r, log, left) = run(
            "echo ISOBENCH-READY; exec sleep 30",
            false,
            Duration::from_millis(300),
            false,
        );
        match r {
            Err(BackendError::Timeout(d, _)) => assert!(d > Duration::ZERO),
            other => panic!("expected a timeout, got {other:?}"),
        }
        assert_eq!(log.torn_down, vec![true]);
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn launch_cancel_kills_and_tears_down() {
        let (r, log, left) = run("exec sleep 30", false, Duration::from_secs(30), true);
        assert!(matches!(r, Err(BackendError::Interrupted)), "{r:?}");
        assert_eq!(log.torn_down, vec![true]);
        assert!(left.is_empty(), "{left:?}");
    }

    #[test]
    fn launch_idle_start_failure_tears_down() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let rs = sd.begin_run("fake").unwrap();
        let mut f = Fake {
            state: &rs,
            script: "echo no ready line",
            fail_start_after_create: false,
            log: Log::default(),
        };
        let r = start_idle(
            &mut f,
            &Task::new(Workload::Noop),
            Duration::from_secs(30),
            &AtomicBool::new(false),
        );
        assert!(r.is_err());
        assert_eq!(f.log.torn_down, vec![true]);
        assert!(rs.resources().is_empty());
    }
}
