//! Long-lived VMs: idle instances for the density measurement (a guest whose agent runs
//! `Workload::Idle`) and application servers (issue 12, see [`super::server`]).
//!
//! Each instance is one QEMU with its own launch directory and ledger entries. Idle instances
//! have no disk and no network (idle needs neither), so any number can run at once; a server
//! has the run's tap. Once the agent has said READY, a thread drains the console so the guest
//! can never block on a full pipe, keeping its last bytes ([`Console`]: the agent's report).
//! Stopping an idle instance is SIGTERM to QEMU, [`STOP_GRACE`] for it to exit, then SIGKILL. A
//! server is first asked to stop cleanly: end of file on the guest's console (see
//! [`ASK_STOP`]), up to [`SERVER_STOP_GRACE`] for the agent to stop the server, report and power
//! the guest off; then as for idle. QEMU is reaped and its entries and files released. The
//! backend keeps every live instance in a [`Registry`], so `finish` stops whatever the caller
//! did not.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::unistd::Pid;

use super::launch::Launch;
use crate::backend::{BackendError, IdleInstance};
use crate::protocol::{AgentReport, READY_LINE};

/// How long a stopped QEMU has to exit on SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long a server's guest has, once asked, to stop the server, report and power off: the
/// agent gives the server 5 s after SIGTERM, and an emulated guest is slow.
pub const SERVER_STOP_GRACE: Duration = Duration::from_secs(15);
/// What asks a server's agent to stop, written to QEMU's stdin (the guest's serial console):
/// a newline ends any pending input line, then ^D on an empty line is end of file for a read of
/// the console in canonical mode (the kernel's default termios for it), which ends the agent's
/// wait as a closed stdin does in the other tiers.
pub const ASK_STOP: &[u8] = b"\n\x04";
/// Bytes of console output kept after ready (the report line and what precedes it).
const CONSOLE_KEEP: usize = 16 * 1024;

/// The guest console after ready, drained by a thread: its last bytes, and whether it ended
/// (QEMU closed it: the guest is gone).
#[derive(Clone, Default)]
pub struct Console(Arc<(Mutex<Vec<u8>>, AtomicBool)>);

impl Console {
    fn push(&self, b: &[u8]) {
        let mut t = self
            .0
             .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        t.extend_from_slice(b);
        if t.len() > 2 * CONSOLE_KEEP {
            let cut = t.len() - CONSOLE_KEEP;
            t.drain(..cut);
        }
    }

    /// The text kept so far.
    pub fn text(&self) -> String {
        let t = self
            .0
             .0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        String::from_utf8_lossy(&t).into_owned()
    }

    /// The console reached end of file.
    pub fn ended(&self) -> bool {
        self.0 .1.load(Ordering::Acquire)
    }

    /// The agent's report, once its result line is on the console.
    pub fn report(&self) -> Option<Result<AgentReport, String>> {
        self.text().lines().rev().find_map(AgentReport::parse_line)
    }

    /// The last non-empty lines, for an error message.
    pub fn tail(&self, n: usize) -> String {
        let s = self.text();
        let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines[lines.len().saturating_sub(n)..].join(" | ")
    }

    /// [`Console::drain`] for tests of what reads a console.
    #[cfg(test)]
    pub fn drain_for_test(&self, out: std::fs::File) -> JoinHandle<()> {
        self.drain(out).expect("a thread")
    }

    /// Drain `out` on a thread until end of file.
    fn drain(&self, mut out: std::fs::File) -> Option<JoinHandle<()>> {
        let me = self.clone();
        std::thread::Builder::new()
            .name("isobench-vm-console".into())
            .spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n @ 1..) = out.read(&mut buf) {
                    me.push(&buf[..n]);
                }
                me.0 .1.store(true, Ordering::Release);
            })
            .ok()
    }
}

struct IdleVm {
    launch: Launch,
    drain: Option<JoinHandle<()>>,
    console: Console,
    /// A server's: QEMU's stdin (the guest console's input), to ask the agent to stop.
    ask: Option<std::fs::File>,
}

/// The live idle instances of one backend, by instance number.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<u64, IdleVm>>>);

impl Registry {
    /// Adopt a launch whose agent has signalled ready; returns the caller's handle.
    pub fn add(&self, id: u64, launch: Launch) -> VmIdle {
        self.adopt(id, launch, None).0
    }

    /// Adopt a server's launch whose agent has signalled ready, with QEMU's stdin (how it is
    /// asked to stop); returns the caller's handle and the console.
    pub fn add_server(&self, id: u64, launch: Launch, ask: std::fs::File) -> (VmIdle, Console) {
        self.adopt(id, launch, Some(ask))
    }

    fn adopt(&self, id: u64, mut launch: Launch, ask: Option<std::fs::File>) -> (VmIdle, Console) {
        let pid = launch.pid();
        let console = Console::default();
        let drain = launch.stdout.take().and_then(|out| console.drain(out));
        let handle = VmIdle {
            id,
            pid,
            registry: self.clone(),
        };
        let vm = IdleVm {
            launch,
            drain,
            console: console.clone(),
            ask,
        };
        self.lock().insert(id, vm);
        (handle, console)
    }

    /// A server is live (it holds the run's tap and guest address).
    pub fn has_server(&self) -> bool {
        self.lock().values().any(|v| v.ask.is_some())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, IdleVm>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stop(&self, id: u64) -> Result<(), BackendError> {
        // Taken out first: the lock is not held while QEMU shuts down.
        let vm = self.lock().remove(&id);
        let Some(mut vm) = vm else {
            return Ok(());
        };
        let server = vm.ask.take().map(|mut ask| {
            // A guest already gone makes this fail (EPIPE): the wait below then returns at once.
            let _ = ask.write_all(ASK_STOP).and_then(|()| ask.flush());
            let clean = vm.launch.wait_exit(Instant::now() + SERVER_STOP_GRACE);
            drop(ask);
            clean
        });
        let r = vm.launch.stop(STOP_GRACE);
        if let Some(t) = vm.drain {
            let _ = t.join();
        }
        match server {
            Some(clean) => r.and(server_stopped(clean, &vm.console)),
            None => r,
        }
    }

    /// Stop every live instance (`finish`); the first error is returned after all were tried.
    pub fn stop_all(&self) -> Result<(), BackendError> {
        let ids: Vec<u64> = self.lock().keys().copied().collect();
        let mut first = Ok(());
        for id in ids {
            if let Err(e) = self.stop(id) {
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// How a server's guest ended: clean when it powered off by itself after a report without an
/// error (the agent stopped the server); otherwise an error that says what happened.
fn server_stopped(powered_off: bool, console: &Console) -> Result<(), BackendError> {
    match (powered_off, console.report()) {
        (true, Some(Ok(r))) => match r.error {
            None => Ok(()),
            Some(e) => Err(BackendError::Agent(format!(
                "the guest's agent reported: {e}"
            ))),
        },
        (true, Some(Err(e))) => Err(BackendError::Agent(format!(
            "the guest's agent wrote an unreadable report: {e}"
        ))),
        (true, None) => Err(BackendError::Agent(format!(
            "the guest powered off without a report; console tail: {}",
            console.tail(5)
        ))),
        (false, _) => Err(BackendError::Other(format!(
            "the server's guest did not power off within {} s of being asked to stop: QEMU was \
             killed; console tail: {}",
            SERVER_STOP_GRACE.as_secs(),
            console.tail(5)
        ))),
    }
}

/// The caller's handle on one idle VM.
pub struct VmIdle {
    id: u64,
    pid: Pid,
    registry: Registry,
}

impl IdleInstance for VmIdle {
    fn host_pids(&self) -> Vec<Pid> {
        vec![self.pid]
    }

    fn stop(self: Box<Self>) -> Result<(), BackendError> {
        self.registry.stop(self.id)
    }
}

/// Read the console until the ready line, the deadline, cancellation or end of file (QEMU
/// exited). Errors carry the console's last lines.
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<(), BackendError> {
    let mut seen: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    let tail = |seen: &[u8]| {
        let s = String::from_utf8_lossy(seen);
        let lines: Vec<&str> = s.lines().map(str::trim).filter(|l| !l.is_empty()).collect();
        lines[lines.len().saturating_sub(5)..].join(" | ")
    };
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Interrupted);
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(BackendError::Timeout(Duration::ZERO, tail(&seen)));
        }
        let ms = u16::try_from((deadline - now).min(Duration::from_millis(100)).as_millis())
            .unwrap_or(100)
            .max(1);
        let mut fds = [PollFd::new(fd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(BackendError::sys("poll on the guest console", e)),
        }
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(BackendError::sys("reading the guest console", e)),
        };
        if n == 0 {
            return Err(BackendError::Agent(format!(
                "the idle guest ended before it signalled ready; console tail: {}",
                tail(&seen)
            )));
        }
        seen.extend_from_slice(&buf[..n]);
        if seen
            .windows(READY_LINE.len())
            .any(|w| w == READY_LINE.as_bytes())
        {
            return Ok(());
        }
        // Keep what a ready line split across reads and the error tail need.
        if seen.len() > 64 * 1024 {
            seen.drain(..32 * 1024);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_is_found_across_reads_and_eof_is_an_error() {
        let (r, w) = nix::unistd::pipe().unwrap();
        let writer = std::thread::spawn(move || {
            nix::unistd::write(&w, b"[ 0.1] boot noise\r\nISOBENCH-RE").unwrap();
            std::thread::sleep(Duration::from_millis(50));
            nix::unistd::write(&w, b"ADY\r\n").unwrap();
        });
        let never = AtomicBool::new(false);
        wait_ready(r.as_fd(), Instant::now() + Duration::from_secs(5), &never).unwrap();
        writer.join().unwrap();
        // The writer is gone: end of file before a ready line.
        let (r, w) = nix::unistd::pipe().unwrap();
        nix::unistd::write(&w, b"Kernel panic\n").unwrap();
        drop(w);
        let e = wait_ready(r.as_fd(), Instant::now() + Duration::from_secs(5), &never)
            .unwrap_err()
            .to_string();
        assert!(e.contains("Kernel panic"), "{e}");
    }
}
