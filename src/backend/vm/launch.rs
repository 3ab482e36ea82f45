//! One QEMU process and its per-launch directory, shared by measured launches and idle
//! instances.
//!
//! QEMU runs in its own process group (a terminal's Ctrl-C reaches the harness, which tears
//! down), with PR_SET_PDEATHSIG and the budget's CPU affinity. The launch directory (QEMU's
//! stderr) is recorded before it is made and the process right after spawn, by (pid, start
//! time); both are released once QEMU is reaped. A [`Launch`] dropped without [`Launch::exited`]
//! or [`Launch::stop`] is killed and cleaned up, so no error path leaves QEMU behind.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{ChildStdout, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::qemu::{LaunchSpec, Qemu, Vmm};
use super::{record, release, remove_dir};
use crate::backend::bare::{child_common, cpuset};
use crate::backend::child::Waiter;
use crate::backend::BackendError;
use crate::host::proc::process_start_time;
use crate::state::ledger::{Resource, RunState};

/// A running (or exited, not yet released) QEMU.
pub struct Launch {
    state: Arc<RunState>,
    dir: PathBuf,
    log: PathBuf,
    pid: Pid,
    proc_res: Resource,
    waiter: Waiter,
    /// The guest's serial console.
    pub stdout: Option<ChildStdout>,
    /// The instant just before spawn.
    pub at: Instant,
    released: bool,
}

impl Launch {
    /// Record and make `dir`, spawn QEMU for `spec`, record the process. On any error,
    /// everything done so far is undone.
    pub fn start(
        state: &Arc<RunState>,
        qemu: &Qemu,
        spec: &LaunchSpec,
        cpus: &[usize],
        dir: PathBuf,
    ) -> Result<Launch, BackendError> {
        let set = cpuset(cpus)?;
        record(state, &Resource::Dir { path: dir.clone() })?;
        let undo_dir = |e: BackendError| {
            let _ = remove_dir(state, &dir);
            e
        };
        std::fs::create_dir(&dir)
            .map_err(|e| undo_dir(BackendError::io(format!("creating {}", dir.display()), e)))?;
        let log = dir.join("qemu.stderr");
        let stderr = std::fs::File::create(&log)
            .map_err(|e| undo_dir(BackendError::io(format!("creating {}", log.display()), e)))?;
        let mut cmd = qemu.command(spec);
        // The ownership mark `isobench cleanup` checks before it kills a recorded process.
        cmd.env(crate::host::proc::RUN_ID_ENV, &state.id);
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        // SAFETY: the closure calls only setpgid, prctl and sched_setaffinity
        // (async-signal-safe) and allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0))
                    .map_err(std::io::Error::from)?;
                child_common(&set)
            });
        }
        let at = Instant::now();
        let mut child = cmd.spawn().map_err(|e| {
            undo_dir(BackendError::io(
                format!(
                    "starting {} (is it executable? --set qemu=PATH)",
                    qemu.binary.display()
                ),
                e,
            ))
        })?;
        let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
        let proc_res = Resource::Process {
            pid: pid.as_raw(),
            start_time: process_start_time(pid.as_raw()).unwrap_or(0),
        };
        let stdout = child.stdout.take();
        let kill_now = || {
            let _ = killpg(pid, Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
        };
        if let Err(e) = record(state, &proc_res) {
            kill_now();
            return Err(undo_dir(e));
        }
        let waiter = match Waiter::new(pid) {
            Ok(w) => w,
            Err(e) => {
                kill_now();
                let _ = release(state, &proc_res);
                return Err(undo_dir(e));
            }
        };
        Ok(Launch {
            state: state.clone(),
            dir,
            log,
            pid,
            proc_res,
            waiter,
            stdout,
            at,
            released: false,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    pub fn waiter(&self) -> &Waiter {
        &self.waiter
    }

    /// QEMU's own error output so far, formatted to append to an error ("" when silent).
    pub fn said(&self) -> String {
        qemu_said(&self.log)
    }

    /// Is our QEMU (same pid and start time, not yet reaped) still there?
    fn alive(&self) -> bool {
        match &self.proc_res {
            Resource::Process { pid, start_time } => process_start_time(*pid) == Some(*start_time),
            _ => false,
        }
    }

    /// Forget the process and remove the launch directory (QEMU is reaped). A QEMU that
    /// survived SIGKILL (uninterruptible sleep) stays in the ledger for `isobench cleanup`.
    fn release_all(&mut self) -> Result<(), BackendError> {
        self.released = true;
        self.stdout = None;
        if self.alive() {
            return Err(BackendError::Other(format!(
                "QEMU (pid {}) survived SIGKILL: find what holds it (cat /proc/{}/stack), then \
                 run `isobench cleanup`",
                self.pid, self.pid
            )));
        }
        let r = release(&self.state, &self.proc_res);
        remove_dir(&self.state, &self.dir)?;
        r
    }

    /// SIGKILL the process group, reap, release; returns what QEMU said. For errors, deadlines
    /// and cancellation.
    pub fn abort(mut self) -> String {
        self.kill_and_reap();
        let said = self.said();
        let _ = self.release_all();
        said
    }

    /// Only while the process is ours and unreaped: a reaped pid may be reused at any time.
    fn kill_and_reap(&self) {
        if self.alive() {
            let _ = killpg(self.pid, Signal::SIGKILL);
            self.waiter.kill_and_reap();
        }
    }

    /// QEMU has exited and been reaped (through [`Launch::waiter`]): release everything.
    /// Returns what QEMU said.
    pub fn exited(mut self) -> Result<String, BackendError> {
        let said = self.said();
        self.release_all()?;
        Ok(said)
    }

    /// Stop a running QEMU: SIGTERM (QEMU exits cleanly on it), up to `grace` for it to go,
    /// then SIGKILL; reap and release.
    pub fn stop(mut self, grace: Duration) -> Result<(), BackendError> {
        if self.alive() {
            let _ = kill(self.pid, Signal::SIGTERM);
            let never = AtomicBool::new(false);
            // Past the grace period wait() SIGKILLs and reaps, and says so with an error that
            // changes nothing here.
            let _ = self.waiter.wait(Instant::now() + grace, &never);
            self.kill_and_reap();
        }
        self.release_all()
    }
}

impl Drop for Launch {
    fn drop(&mut self) {
        if !self.released {
            self.kill_and_reap();
            let _ = self.release_all();
        }
    }
}

/// QEMU's own error output for a launch, formatted to append to an error ("" when silent).
pub fn qemu_said(log: &Path) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let s = s.trim();
    if s.is_empty() {
        return String::new();
    }
    let tail: String = s
        .chars()
        .rev()
        .take(600)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    format!("; qemu said: {}", tail.replace('\n', " | "))
}
