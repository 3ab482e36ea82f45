//! `mysql`, the agent's side: serve Debian's `mariadbd` inside the tier until the host is done
//! with it (issue 12). The host drives the load (`sysbench` on the host); the agent only
//! prepares a data directory, starts the server, waits until it greets a client, stays (like
//! `idle`) until its stdin reaches end of file or `max_s` passes, then stops the server
//! (SIGTERM, a bounded wait, SIGKILL after) and removes the data directory.
//!
//! The data directory is made fresh under the task's `dir` (the tier's data path: the overlay
//! rootfs or the volume of a container, the run scratch of bare) by `mariadbd --bootstrap`
//! (InnoDB's files and the empty `sbtest` database; no grant tables: the server runs with
//! `--skip-grant-tables`, reachable only on the tier's own address). That happens in
//! [`prepare_before_ready`], before the agent signals ready, so it is off the host's server
//! start clock (ready -> the server's greeting). In a VM guest the data path is the guest's
//! virtio-blk disk: the guest is set up first (mounts, modules, network, the disk;
//! [`crate::guest::setup_once`]), also before ready, so the same holds there.
//!
//! The server dies with the agent (PR_SET_PDEATHSIG); a killed agent leaves its data directory
//! on the tier's data path, which the tier removes with its scratch, overlay or volume.
//!
//! Metrics: `server_start_ms` (the agent's spawn of the server -> its greeting), `served_s`.

use std::io::Read;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use super::{lower, server};
use crate::protocol::{Metric, Task, TASK_ENV};
use crate::workload::{MysqlParams, Workload, MYSQL_INSTALL};

/// Longest wait for the server to exit after SIGTERM before SIGKILL.
const STOP_DEADLINE: Duration = Duration::from_secs(20);
/// The data directory's name under the tier's data path.
pub const DATA_DIR: &str = "isobench-mysql";

/// The data directory prepared before ready (or why it could not be).
static PREPARED: OnceLock<Result<PathBuf, String>> = OnceLock::new();

/// Called by the agent's entry point before it signals ready: for a `mysql` task, make the
/// data directory now, off the server's start clock. In a VM guest its data disk is mounted
/// first (the guest's setup, done once: a failure is reported by the entry point as for any
/// guest).
pub fn prepare_before_ready() {
    let Ok(s) = std::env::var(TASK_ENV) else {
        return;
    };
    let Ok(task) = Task::decode(&s) else {
        return;
    };
    let Workload::Mysql(p) = &task.workload else {
        return;
    };
    if p.dir.is_empty() {
        return;
    }
    if let Some(g) = &task.guest {
        if crate::guest::setup_once(g).is_err() {
            return;
        }
    }
    let _ = PREPARED.set(prepare(p));
}

/// Options both the bootstrap and the server take: everything in the data directory, no
/// option files read, no binary log, no grant tables, the buffer pool sized by the task.
pub fn common_args(p: &MysqlParams, data: &Path) -> Vec<String> {
    let d = data.display();
    vec![
        "--no-defaults".into(),
        format!("--datadir={d}"),
        format!("--tmpdir={d}"),
        format!("--pid-file={d}/mariadbd.pid"),
        "--user=root".into(),
        "--skip-grant-tables".into(),
        "--skip-name-resolve".into(),
        "--skip-log-bin".into(),
        format!("--innodb-buffer-pool-size={}M", p.buffer_pool_mib),
        "--innodb-log-file-size=16M".into(),
        "--innodb-buffer-pool-load-at-startup=0".into(),
        "--innodb-buffer-pool-dump-at-shutdown=0".into(),
    ]
}

/// The server's command line: bound to the tier's address only, its socket in the data
/// directory (relative: the server works there, and a socket path has a length limit).
pub fn server_args(p: &MysqlParams, data: &Path) -> Vec<String> {
    let max_threads = p.threads.iter().copied().max().unwrap_or(1);
    let mut a = common_args(p, data);
    a.extend([
        format!("--bind-address={}", p.bind),
        format!("--port={}", p.port),
        "--socket=mariadbd.sock".into(),
        format!("--max-connections={}", max_threads + 16),
    ]);
    a
}

/// Spawn `p.server_bin` with `args`, dying with the agent, stdin piped, output drained (all but
/// the last lines of stderr dropped: they say why a failed start failed).
fn spawn(
    p: &MysqlParams,
    args: &[String],
) -> Result<(Child, std::thread::JoinHandle<String>), String> {
    let mut cmd = Command::new(&p.server_bin);
    // Pipes, not /dev/null: a chroot has no /dev.
    cmd.args(args)
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
            "mysql: cannot start {}: {e}; install it with `{MYSQL_INSTALL}`",
            p.server_bin
        )
    })?;
    if let Some(mut out) = child.stdout.take() {
        std::thread::spawn(move || {
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
    }
    let mut err = child.stderr.take().expect("piped");
    let tail = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = err.read_to_string(&mut s);
        let lines: Vec<&str> = s.lines().filter(|l| l.contains("ERROR")).collect();
        lines.last().copied().unwrap_or("").to_string()
    });
    Ok((child, tail))
}

/// A fresh data directory under `p.dir`: InnoDB's files and the empty `sbtest` database, made
/// by `mariadbd --bootstrap` (bounded by `start_timeout_s`).
pub fn prepare(p: &MysqlParams) -> Result<PathBuf, String> {
    use std::io::Write;
    let data = Path::new(&p.dir).join(DATA_DIR);
    if data.exists() {
        std::fs::remove_dir_all(&data)
            .map_err(|e| format!("mysql: removing a stale {}: {e}", data.display()))?;
    }
    std::fs::create_dir_all(&data)
        .map_err(|e| format!("mysql: creating the data directory {}: {e}", data.display()))?;
    let mut args = common_args(p, &data);
    args.extend(["--bootstrap".into(), "--skip-networking".into()]);
    let (mut child, tail) = spawn(p, &args).inspect_err(|_| {
        let _ = std::fs::remove_dir_all(&data);
    })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(b"CREATE DATABASE sbtest;\n");
    }
    let deadline = Instant::now() + Duration::from_secs(p.start_timeout_s);
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                break None;
            }
        }
    };
    let why = tail.join().unwrap_or_default();
    let res = match status {
        Some(st) if st.success() => return Ok(data),
        Some(st) => format!("mysql: initializing the data directory failed ({st}): {why}"),
        None => format!(
            "mysql: initializing the data directory took longer than start_timeout_s = {}",
            p.start_timeout_s
        ),
    };
    let _ = std::fs::remove_dir_all(&data);
    Err(res)
}

pub fn run(p: &MysqlParams) -> Result<Vec<Metric>, String> {
    if p.bind.is_empty() || p.port == 0 || p.dir.is_empty() {
        return Err("mysql: no bind address, port or data path (the host assigns them)".into());
    }
    let addr: SocketAddr = (p.bind.as_str(), p.port)
        .to_socket_addrs()
        .map_err(|e| format!("mysql: bad bind address {}: {e}", p.bind))?
        .next()
        .ok_or_else(|| format!("mysql: {} resolves to no address", p.bind))?;
    let data = match PREPARED.get() {
        Some(r) => r.clone()?,
        None => prepare(p)?,
    };
    let res = serve(p, addr, &data);
    let removed = std::fs::remove_dir_all(&data);
    let m = res?;
    removed.map_err(|e| format!("mysql: removing the data directory {}: {e}", data.display()))?;
    Ok(m)
}

fn serve(p: &MysqlParams, addr: SocketAddr, data: &Path) -> Result<Vec<Metric>, String> {
    let t0 = Instant::now();
    let (mut child, tail) = spawn(p, &server_args(p, data))?;
    drop(child.stdin.take());
    let deadline = t0 + Duration::from_secs(p.start_timeout_s);
    if let Err(e) = server::wait_ready(
        "mysql",
        "greet a client",
        addr,
        deadline,
        &mut child,
        greets,
    ) {
        server::stop(&mut child, STOP_DEADLINE);
        let why = tail.join().unwrap_or_default();
        return Err(if why.is_empty() {
            e
        } else {
            format!("{e}: {why}")
        });
    }
    let start_ms = t0.elapsed().as_secs_f64() * 1e3;
    let served = Instant::now();
    super::idle_until(p.max_s, || matches!(child.try_wait(), Ok(None)));
    let died = !matches!(child.try_wait(), Ok(None));
    server::stop(&mut child, STOP_DEADLINE);
    if died {
        return Err("mysql: the server exited while serving".into());
    }
    Ok(vec![
        lower("server_start_ms", "ms", start_ms),
        super::count("served_s", "s", served.elapsed().as_secs_f64()),
    ])
}

/// The server greets a new connection with a protocol-10 handshake packet (a 4-byte header,
/// then the protocol version 10); an error packet (0xff) or nothing is not ready.
pub fn greets(addr: SocketAddr, timeout: Duration) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, timeout) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(timeout));
    let mut buf = [0u8; 5];
    s.read_exact(&mut buf).is_ok() && buf[4] == 10
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_is_bound_to_the_tier_and_keeps_everything_in_its_data_dir() {
        let p = MysqlParams {
            bind: "10.214.0.2".into(),
            port: 3306,
            threads: vec![1, 32],
            ..MysqlParams::default()
        };
        let a = server_args(&p, Path::new("/volume/isobench-mysql")).join(" ");
        for want in [
            "--no-defaults",
            "--datadir=/volume/isobench-mysql",
            "--bind-address=10.214.0.2",
            "--port=3306",
            "--skip-grant-tables",
            "--max-connections=48",
            "--innodb-buffer-pool-size=128M",
        ] {
            assert!(a.contains(want), "{want} missing from {a}");
        }
    }

    #[test]
    fn unassigned_endpoint_and_missing_binary_are_errors() {
        assert!(run(&MysqlParams::default())
            .unwrap_err()
            .contains("host assigns"));
        let dir = std::env::temp_dir().join(format!("isobench-mysql-test-{}", std::process::id()));
        let e = prepare(&MysqlParams {
            dir: dir.display().to_string(),
            server_bin: "/nonexistent/mariadbd".into(),
            ..MysqlParams::default()
        })
        .unwrap_err();
        assert!(e.contains("apt-get install mariadb-server sysbench"), "{e}");
        assert!(!dir.join(DATA_DIR).exists(), "the data directory was left");
        let _ = std::fs::remove_dir(&dir);
    }
}
