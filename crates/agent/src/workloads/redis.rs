//! `redis`, the agent's side: serve Debian's `redis-server` inside the tier until the host is
//! done with it (issue 12). The host drives the load (`redis-benchmark` on the host); the agent
//! only starts the server, waits until it answers `PING`, stays (like `idle`) until its stdin
//! reaches end of file or `max_s` passes, then stops the server: SIGTERM (no persistence is
//! configured, so nothing is saved), a bounded wait, SIGKILL after.
//!
//! The server dies with the agent (PR_SET_PDEATHSIG), so a killed agent leaves no server behind
//! in the process tiers (in a container the PID namespace ends with its PID 1 anyway).
//!
//! Metrics: `server_start_ms` (agent's spawn of the server -> first `+PONG`), `served_s`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::{lower, server};
use crate::protocol::Metric;
use crate::workload::RedisParams;

/// Longest wait for the server to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(5);

/// The server's command line: no persistence, bound to the tier's address; protected mode off
/// only when that address is not loopback (a private address only this run routes).
pub fn server_args(p: &RedisParams) -> Vec<String> {
    let loopback = p.bind.starts_with("127.");
    let mut a: Vec<String> = [
        "--port",
        &p.port.to_string(),
        "--bind",
        &p.bind,
        "--save",
        "",
        "--appendonly",
        "no",
        "--daemonize",
        "no",
        "--dir",
        "/tmp",
        "--logfile",
        "",
    ]
    .iter()
    .map(|s| (*s).to_string())
    .collect();
    a.push("--protected-mode".into());
    a.push(if loopback { "yes" } else { "no" }.into());
    a
}

pub fn run(p: &RedisParams) -> Result<Vec<Metric>, String> {
    if p.bind.is_empty() || p.port == 0 {
        return Err("redis: no bind address or port (the host assigns them)".into());
    }
    let addr: SocketAddr = (p.bind.as_str(), p.port)
        .to_socket_addrs()
        .map_err(|e| format!("redis: bad bind address {}: {e}", p.bind))?
        .next()
        .ok_or_else(|| format!("redis: {} resolves to no address", p.bind))?;
    let t0 = Instant::now();
    let mut cmd = Command::new(&p.server_bin);
    cmd.args(server_args(p))
        // Pipes, not /dev/null: a chroot has no /dev. Its log is drained and dropped.
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe and takes integer arguments only.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        format!(
            "redis: cannot start {}: {e}; install it with `{}`",
            p.server_bin,
            crate::workload::REDIS_INSTALL
        )
    })?;
    drop(child.stdin.take());
    for out in [
        child
            .stdout
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
        child
            .stderr
            .take()
            .map(|o| Box::new(o) as Box<dyn Read + Send>),
    ]
    .into_iter()
    .flatten()
    {
        std::thread::spawn(move || {
            let mut out = out;
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
    }
    let deadline = t0 + Duration::from_secs(p.start_timeout_s);
    if let Err(e) = server::wait_ready("redis", "answer PING", addr, deadline, &mut child, ping) {
        server::stop(&mut child, STOP_DEADLINE);
        return Err(e);
    }
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let served = Instant::now();
    super::idle_until(p.max_s, || matches!(child.try_wait(), Ok(None)));
    let died = !matches!(child.try_wait(), Ok(None));
    server::stop(&mut child, STOP_DEADLINE);
    if died {
        return Err("redis: the server exited while serving".into());
    }
    Ok(vec![
        lower("server_start_ms", "ms", start_ms),
        super::count("served_s", "s", served.elapsed().as_secs_f64()),
    ])
}

/// One `PING` -> `+PONG` exchange.
pub fn ping(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 7];
    s.write_all(b"PING\r\n").is_ok() && s.read_exact(&mut buf).is_ok() && &buf == b"+PONG\r\n"
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn protected_mode_off_only_off_loopback() {
        let mut p = RedisParams {
            bind: "127.0.0.1".into(),
            port: 7000,
            ..RedisParams::default()
        };
        let a = server_args(&p);
        assert_eq!(a[a.len() - 1], "yes");
        assert!(a.windows(2).any(|w| w[0] == "--save" && w[1].is_empty()));
        p.bind = "10.214.0.2".into();
        assert_eq!(server_args(&p).last().unwrap(), "no");
    }

    #[test]
    fn unassigned_address_and_missing_binary_are_errors() {
        assert!(run(&RedisParams::default())
            .unwrap_err()
            .contains("host assigns"));
        let e = run(&RedisParams {
            bind: "127.0.0.1".into(),
            port: 1,
            server_bin: "/nonexistent/redis-server".into(),
            ..RedisParams::default()
        })
        .unwrap_err();
        assert!(e.contains("apt-get install redis-server"), "{e}");
    }
}
