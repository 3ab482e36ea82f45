//! One long-lived QEMU process (an idle instance, a server) and its directory (measured launches are the backend's
//! `plan`/`start`/`teardown`).
//!
//! QEMU runs in its own session and process group (a terminal's Ctrl-C reaches the harness, which tears
//! down), with PR_SET_PDEATHSIG and the budget's CPU affinity. The launch directory (QEMU's
//! stderr) is recorded before it is made and the process right after spawn, by (pid, start
//! time); both are released once QEMU is reaped. A [`Launch`] dropped without [`Launch::exited`]
//! or [`Launch::stop`] is killed and cleaned up, so no error path leaves QEMU behind.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, killpg, Signal};
use nix::unistd::Pid;

use super::{record, release, remove_dir};
use crate::backend::launch::cli::start_cli;
use crate::backend::process::{Process, Spec};
use crate::backend::BackendError;
use crate::host::proc::process_start_time;
use crate::measure::launch::Started;
use crate::state::ledger::{Resource, RunState};

/// A running (or exited, not yet released) QEMU of an idle instance or a server.
pub struct Launch {
    state: Arc<RunState>,
    dir: PathBuf,
    log: PathBuf,
    pid: Pid,
    proc_res: Resource,
    process: Process,
    /// The guest's serial console.
    pub stdout: Option<std::fs::File>,
    released: bool,
}

impl Launch {
    /// Record and make `dir`, spawn QEMU for `spec`, record the process (untimed: idle
    /// instances live long, so they are also findable by pid and start time). On any error,
    /// everything done so far is undone.
    pub fn start(
        state: &Arc<RunState>,
        spec: &mut Spec,
        dir: PathBuf,
    ) -> Result<Launch, BackendError> {
        record(state, &Resource::Dir { path: dir.clone() })?;
        let undo_dir = |e: BackendError| {
            let _ = remove_dir(state, &dir);
            e
        };
        std::fs::create_dir(&dir)
            .map_err(|e| undo_dir(BackendError::io(format!("creating {}", dir.display()), e)))?;
        let log = dir.join("qemu.stderr");
        let started = start_cli(spec, &log).map_err(|e| {
            undo_dir(BackendError::Other(format!(
                "{e} (is it executable? --set qemu=PATH)"
            )))
        })?;
        let Started {
            mut process,
            stream,
            ..
        } = started;
        let pid = process.pid;
        let proc_res = Resource::Process {
            pid: pid.as_raw(),
            start_time: process_start_time(pid.as_raw()).unwrap_or(0),
        };
        if let Err(e) = record(state, &proc_res) {
            let _ = killpg(pid, Signal::SIGKILL);
            process.kill_and_reap();
            return Err(undo_dir(e));
        }
        Ok(Launch {
            state: state.clone(),
            dir,
            log,
            pid,
            proc_res,
            process,
            stdout: Some(std::fs::File::from(stream)),
            released: false,
        })
    }

    pub fn pid(&self) -> Pid {
        self.pid
    }

    /// QEMU's stdin, when the spec piped it (a server's guest console input).
    pub fn take_stdin(&mut self) -> Option<std::fs::File> {
        self.process.stdin.take().map(std::fs::File::from)
    }

    /// Wait until QEMU exits by itself, at most until `until`; past it QEMU is killed. True
    /// when it exited by itself. The caller then [`Launch::stop`]s it (which releases).
    pub fn wait_exit(&mut self, until: Instant) -> bool {
        if self.process.is_reaped() {
            return true;
        }
        self.process.wait(until, &AtomicBool::new(false)).is_ok()
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
    fn kill_and_reap(&mut self) {
        if !self.process.is_reaped() && self.alive() {
            let _ = killpg(self.pid, Signal::SIGKILL);
            self.process.kill_and_reap();
        }
    }

    /// Stop a running QEMU: SIGTERM (QEMU exits cleanly on it), up to `grace` for it to go,
    /// then SIGKILL; reap and release.
    pub fn stop(mut self, grace: Duration) -> Result<(), BackendError> {
        if self.alive() {
            let _ = kill(self.pid, Signal::SIGTERM);
            let never = AtomicBool::new(false);
            // Past the grace period wait() SIGKILLs and reaps, and says so with an error that
            // changes nothing here.
            let _ = self.process.wait(Instant::now() + grace, &never);
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
