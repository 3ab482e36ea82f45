//! Idle VMs for the density measurement: a guest whose agent runs `Workload::Idle`.
//!
//! Each instance is one QEMU with its own launch directory and ledger entries, and no disk and
//! no network (idle needs neither), so any number can run at once. Once the agent has said
//! READY, a thread drains the console so the guest can never block on a full pipe. Stopping is
//! SIGTERM to QEMU, [`STOP_GRACE`] for it to exit, then SIGKILL; QEMU is reaped and its entries
//! and files released. The backend keeps every live instance in a [`Registry`], so `finish`
//! stops whatever the caller did not.

use std::collections::BTreeMap;
use std::io::Read;
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
use crate::protocol::READY_LINE;

/// How long a stopped QEMU has to exit on SIGTERM before it is killed.
pub const STOP_GRACE: Duration = Duration::from_secs(3);

struct IdleVm {
    launch: Launch,
    drain: Option<JoinHandle<()>>,
}

/// The live idle instances of one backend, by instance number.
#[derive(Clone, Default)]
pub struct Registry(Arc<Mutex<BTreeMap<u64, IdleVm>>>);

impl Registry {
    /// Adopt a launch whose agent has signalled ready; returns the caller's handle.
    pub fn add(&self, id: u64, mut launch: Launch) -> VmIdle {
        let pid = launch.pid();
        let drain = launch.stdout.take().and_then(|mut out| {
            std::thread::Builder::new()
                .name("isobench-vm-console".into())
                .spawn(move || {
                    let mut buf = [0u8; 4096];
                    while matches!(out.read(&mut buf), Ok(n) if n > 0) {}
                })
                .ok()
        });
        self.lock().insert(id, IdleVm { launch, drain });
        VmIdle {
            id,
            pid,
            registry: self.clone(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<u64, IdleVm>> {
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn stop(&self, id: u64) -> Result<(), BackendError> {
        // Taken out first: the lock is not held while QEMU shuts down.
        let vm = self.lock().remove(&id);
        match vm {
            None => Ok(()),
            Some(vm) => {
                let r = vm.launch.stop(STOP_GRACE);
                if let Some(t) = vm.drain {
                    let _ = t.join();
                }
                r
            }
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
