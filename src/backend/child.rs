//! Shared pieces for driving a launched agent: reading its ready/result lines from a pipe (or a
//! VM's serial console) with a deadline, and waiting for a process with a pidfd so the exit
//! instant is exact and the wait is bounded.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, BorrowedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};

use super::BackendError;
use crate::protocol::{AgentReport, READY_LINE};

/// What was read from an agent's output stream.
#[derive(Debug, Default)]
pub struct StreamResult {
    /// Instant the ready line was seen.
    pub ready_at: Option<Instant>,
    /// The parsed result line, if one came.
    pub report: Option<Result<AgentReport, String>>,
    /// The last lines that were neither ready nor result (console noise, error messages).
    pub tail: String,
}

const TAIL_LINES: usize = 20;
/// How often a blocked wait looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

/// Read `fd` line by line until end of file, the deadline or cancellation.
/// Returns `Timeout` on the deadline and `Interrupted` on cancel.
pub fn read_agent(
    fd: BorrowedFd<'_>,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<StreamResult, BackendError> {
    let mut res = StreamResult::default();
    let mut pending: Vec<u8> = Vec::with_capacity(4096);
    let mut tail: VecDeque<String> = VecDeque::new();
    let mut buf = [0u8; 8192];
    loop {
        let now = Instant::now();
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Interrupted);
        }
        if now >= deadline {
            let t: Vec<String> = tail.into_iter().collect();
            return Err(BackendError::Timeout(Duration::ZERO, t.join(" | ")));
        }
        let wait = (deadline - now).min(CANCEL_POLL);
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(BackendError::sys("poll on the agent's output", e)),
        }
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(BackendError::sys("reading the agent's output", e)),
        };
        let at = Instant::now();
        if n == 0 {
            if !pending.is_empty() {
                let line = String::from_utf8_lossy(&pending).into_owned();
                take_line(&line, at, &mut res, &mut tail);
            }
            break;
        }
        pending.extend_from_slice(&buf[..n]);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line).into_owned();
            take_line(&line, at, &mut res, &mut tail);
        }
        // The ready marker may arrive without its newline yet (serial consoles).
        if res.ready_at.is_none() && contains(&pending, READY_LINE.as_bytes()) {
            res.ready_at = Some(at);
        }
    }
    res.tail = tail.into_iter().collect::<Vec<_>>().join(" | ");
    Ok(res)
}

/// Read `fd` only until the agent's ready line (an idle instance keeps running after it) and
/// return the instant it came. End of file first means the agent died: an error with what it
/// printed. `Timeout` on the deadline, `Interrupted` on cancel.
pub fn wait_ready(
    fd: BorrowedFd<'_>,
    deadline: Instant,
    cancel: &AtomicBool,
) -> Result<Instant, BackendError> {
    let mut seen: Vec<u8> = Vec::with_capacity(256);
    let mut buf = [0u8; 4096];
    loop {
        let now = Instant::now();
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Interrupted);
        }
        if now >= deadline {
            return Err(BackendError::Timeout(
                Duration::ZERO,
                String::from_utf8_lossy(&seen).trim().to_string(),
            ));
        }
        let wait = (deadline - now).min(CANCEL_POLL);
        let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
        let mut fds = [PollFd::new(fd, PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => {}
            Err(e) => return Err(BackendError::sys("poll on the agent's output", e)),
        }
        let n = match nix::unistd::read(fd.as_raw_fd(), &mut buf) {
            Ok(n) => n,
            Err(Errno::EINTR) | Err(Errno::EAGAIN) => continue,
            Err(e) => return Err(BackendError::sys("reading the agent's output", e)),
        };
        if n == 0 {
            let tail: String = String::from_utf8_lossy(&seen)
                .chars()
                .rev()
                .take(600)
                .collect();
            let tail: String = tail.chars().rev().collect();
            return Err(BackendError::Agent(format!(
                "the idle agent exited before signalling ready; output: {}",
                if tail.trim().is_empty() {
                    "<empty>"
                } else {
                    tail.trim()
                }
            )));
        }
        let at = Instant::now();
        seen.extend_from_slice(&buf[..n]);
        if contains(&seen, READY_LINE.as_bytes()) {
            return Ok(at);
        }
        if seen.len() > 64 * 1024 {
            seen.drain(..32 * 1024);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn take_line(line: &str, at: Instant, res: &mut StreamResult, tail: &mut VecDeque<String>) {
    if let Some(r) = AgentReport::parse_line(line) {
        res.report = Some(r);
    } else if line.contains(READY_LINE) {
        res.ready_at.get_or_insert(at);
    } else {
        let l = line.trim();
        if !l.is_empty() {
            if tail.len() == TAIL_LINES {
                tail.pop_front();
            }
            tail.push_back(l.chars().take(300).collect());
        }
    }
}

/// Turn a read stream into the agent's report, or an error carrying the output tail.
pub fn into_report(s: &StreamResult, exit_code: i32) -> Result<AgentReport, BackendError> {
    match &s.report {
        Some(Ok(r)) => match &r.error {
            Some(e) => Err(BackendError::Agent(format!("{} failed: {e}", r.workload))),
            None => Ok(r.clone()),
        },
        Some(Err(e)) => Err(BackendError::Agent(format!("unreadable result line: {e}"))),
        None => Err(BackendError::Agent(format!(
            "no result line (exit code {exit_code}); output tail: {}",
            if s.tail.is_empty() {
                "<empty>"
            } else {
                &s.tail
            }
        ))),
    }
}
