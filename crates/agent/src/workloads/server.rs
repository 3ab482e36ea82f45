//! What the application workloads (redis, mysql) share inside the tier: waiting until the
//! server they started answers a client, and stopping it.

use std::net::SocketAddr;
use std::process::Child;
use std::time::{Duration, Instant};

/// Poll `answers(addr, 200 ms)` every 5 ms until it holds, the server exits, or `deadline`.
/// `app` names the server in the error, `answer` says what it failed to do ("answer PING").
pub fn wait_ready(
    app: &str,
    answer: &str,
    addr: SocketAddr,
    deadline: Instant,
    child: &mut Child,
    answers: impl Fn(SocketAddr, Duration) -> bool,
) -> Result<(), String> {
    loop {
        if let Ok(Some(st)) = child.try_wait() {
            return Err(format!("{app}: the server exited before accepting ({st})"));
        }
        if answers(addr, Duration::from_millis(200)) {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!(
                "{app}: the server did not {answer} at {addr} in time"
            ));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// SIGTERM, wait at most `grace`, then SIGKILL; always reaped.
pub fn stop(child: &mut Child, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    if let Ok(pid) = i32::try_from(child.id()) {
        // SAFETY: kill(2) on our own child's pid (not yet reaped, so not reused).
        unsafe { libc::kill(pid, libc::SIGTERM) };
    }
    let until = Instant::now() + grace;
    while Instant::now() < until {
        if matches!(child.try_wait(), Ok(Some(_)) | Err(_)) {
            return;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = child.kill();
    let _ = child.wait();
}
