//! `mysql`, the host's side: start the tier serving Debian's `mariadbd` (the agent prepares a
//! fresh data directory on the tier's data path before it signals ready, then starts the
//! server: [`crate::backend::Backend::start_server`]), wait until the server greets a client
//! through the tier's network path, create the sysbench table (`sysbench oltp_read_only
//! prepare`, off the clock), then run `sysbench oltp_read_only run` on the host for every
//! thread count, pinned to CPUs outside the tier's budget, and stop the server.
//!
//! `server_start_ms` is from the tier's ready signal (its data directory made; the agent starts
//! the server right after) to the server's first greeting: the server's own start, what a
//! person waits for once the database exists. `tier_start_ms` is the call that starts the tier
//! to its ready signal (the tier's launch plus the data directory's initialization).
//!
//! Every sysbench run is bounded three times: `--time point_s`, `--events point_events` and a
//! wall-clock kill at `point_timeout_s` (then the point is an error); `prepare` is killed at
//! `prepare_timeout_s`.
//!
//! Metrics per thread count N: `tps_t<N>` (transactions/s), `lat_avg_ms_t<N>`,
//! `lat_p95_ms_t<N>`; and `server_start_ms`, `tier_start_ms`.

use std::io::Read;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, ServerInstance};
use crate::protocol::{Better, Metric, Task};
use crate::workload::{MysqlParams, Workload, MYSQL_INSTALL};

/// The sysbench database the agent creates (empty) in the data directory.
pub const DB: &str = "sbtest";

/// What one `sysbench ... run` printed that we keep.
#[derive(Debug, Clone, PartialEq)]
pub struct RunResult {
    pub tps: f64,
    pub lat_avg_ms: f64,
    pub lat_p95_ms: f64,
    pub transactions: u64,
}

/// Parse the report of `sysbench oltp_read_only run` (1.0): the `transactions:` line (count and
/// rate), and the `avg:` and `95th percentile:` lines of the latency block.
pub fn parse_run(text: &str) -> Result<RunResult, String> {
    let field = |key: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find_map(|l| l.strip_prefix(key).map(str::trim))
    };
    let unreadable = || {
        format!(
            "sysbench printed no result (output: {:?})",
            text.chars().take(200).collect::<String>()
        )
    };
    // "transactions:                        2544   (508.31 per sec.)"
    let tx = field("transactions:").ok_or_else(unreadable)?;
    let transactions = tx
        .split_whitespace()
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or_else(unreadable)?;
    let tps = tx
        .split('(')
        .nth(1)
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .ok_or_else(unreadable)?;
    let num = |key: &str| -> Result<f64, String> {
        field(key)
            .and_then(|v| v.parse().ok())
            .ok_or_else(unreadable)
    };
    Ok(RunResult {
        tps,
        lat_avg_ms: num("avg:")?,
        lat_p95_ms: num("95th percentile:")?,
        transactions,
    })
}

/// The metrics of one point (thread count `t`).
pub fn point_metrics(r: &RunResult, t: u32) -> Vec<Metric> {
    vec![
        Metric::new(&format!("tps_t{t}"), "tx/s", r.tps, Better::Higher),
        Metric::new(
            &format!("lat_avg_ms_t{t}"),
            "ms",
            r.lat_avg_ms,
            Better::Lower,
        ),
        Metric::new(
            &format!("lat_p95_ms_t{t}"),
            "ms",
            r.lat_p95_ms,
            Better::Lower,
        ),
    ]
}

/// The options every sysbench call takes: the server over TCP, one table of `table_rows`.
pub fn common_args(p: &MysqlParams, addr: SocketAddr) -> Vec<String> {
    vec![
        "oltp_read_only".into(),
        "--db-driver=mysql".into(),
        format!("--mysql-host={}", addr.ip()),
        format!("--mysql-port={}", addr.port()),
        "--mysql-user=root".into(),
        format!("--mysql-db={DB}"),
        "--tables=1".into(),
        format!("--table-size={}", p.table_rows),
    ]
}

/// One point's command line: bounded by `--time` and `--events`.
pub fn run_args(p: &MysqlParams, addr: SocketAddr, threads: u32) -> Vec<String> {
    let mut a = common_args(p, addr);
    a.extend([
        format!("--threads={threads}"),
        format!("--time={}", p.point_s),
        format!("--events={}", p.point_events),
        "--percentile=95".into(),
        "--rand-seed=1".into(),
        "run".into(),
    ]);
    a
}

/// Run sysbench with `args`, pinned to `cpus`, killed after `timeout_s`; its stdout.
fn sysbench(
    p: &MysqlParams,
    args: &[String],
    cpus: &[usize],
    timeout_s: u64,
    what: &str,
) -> Result<String, BackendError> {
    let super::Client {
        mut child,
        stdout: out_t,
        stderr: err_t,
    } = super::spawn_client("mysql", &p.client_bin, args, cpus, MYSQL_INSTALL)?;
    let deadline = Instant::now() + Duration::from_secs(timeout_s);
    let status = loop {
        if let Some(st) = child
            .try_wait()
            .map_err(|e| BackendError::io("waiting for sysbench", e))?
        {
            break Some(st);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    match status {
        None => Err(BackendError::Other(format!(
            "mysql: sysbench {what} did not finish within {timeout_s} s: lower table_rows or point_s, or raise the timeout"
        ))),
        Some(st) if !st.success() => {
            let why = err
                .lines()
                .chain(out.lines())
                .find(|l| l.contains("FATAL") || l.contains("error"))
                .or_else(|| err.lines().last())
                .unwrap_or("")
                .trim()
                .to_string();
            Err(BackendError::Other(format!(
                "mysql: sysbench {what} failed ({st}): {why}"
            )))
        }
        Some(_) => Ok(out),
    }
}

/// Wait until the server at `addr` greets a client, or fail at `deadline`.
fn wait_greeting(addr: SocketAddr, deadline: Instant, timeout_s: u64) -> Result<(), BackendError> {
    loop {
        let t = Duration::from_millis(200);
        if let Ok(mut s) = std::net::TcpStream::connect_timeout(&addr, t) {
            let _ = s.set_read_timeout(Some(t));
            let mut buf = [0u8; 5];
            // A protocol-10 handshake: 4 bytes of header, then the version.
            if s.read_exact(&mut buf).is_ok() && buf[4] == 10 {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(BackendError::Other(format!(
                "mysql: the server did not accept connections at {addr} within start_timeout_s = {timeout_s}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One mysql measurement (every thread count) on `backend`, the client on `client_cpus`. The
/// server is stopped whatever fails.
pub fn measure(
    backend: &mut dyn Backend,
    p: &MysqlParams,
    client_cpus: &[usize],
) -> Result<Vec<Metric>, BackendError> {
    p.check_binaries().map_err(BackendError::Other)?;
    let task = Task::new(Workload::Mysql(p.clone()));
    let t0 = Instant::now();
    let ServerInstance { instance, addr } = backend.start_server(&task)?;
    let ready = instance.ready_at().unwrap_or_else(Instant::now);
    let deadline = ready + Duration::from_secs(p.start_timeout_s);
    let res = wait_greeting(addr, deadline, p.start_timeout_s).and_then(|()| {
        let start_ms = ready.elapsed().as_secs_f64() * 1e3;
        let tier_ms = ready.duration_since(t0).as_secs_f64() * 1e3;
        let mut m = vec![
            Metric::new("server_start_ms", "ms", start_ms, Better::Lower),
            Metric::new("tier_start_ms", "ms", tier_ms, Better::Lower),
        ];
        let mut prepare = common_args(p, addr);
        prepare.push("prepare".into());
        sysbench(p, &prepare, client_cpus, p.prepare_timeout_s, "prepare")?;
        for &t in &p.threads {
            let out = sysbench(
                p,
                &run_args(p, addr, t),
                client_cpus,
                p.point_timeout_s,
                &format!("run --threads={t} against {addr}"),
            )?;
            let r = parse_run(&out).map_err(BackendError::Other)?;
            m.extend(point_metrics(&r, t));
        }
        Ok(m)
    });
    let stopped = instance.stop();
    let m = res?;
    stopped?;
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RUN: &str = "sysbench 1.0.20 (using system LuaJIT 2.1.0-beta3)\n\nSQL statistics:\n    queries performed:\n        read:                            35616\n    transactions:                        2544   (508.31 per sec.)\n    queries:                             40704  (8132.88 per sec.)\n\nGeneral statistics:\n    total time:                          5.0043s\n    total number of events:              2544\n\nLatency (ms):\n         min:                                    1.74\n         avg:                                    7.86\n         max:                                  119.79\n         95th percentile:                       31.94\n         sum:                                19988.54\n";

    #[test]
    fn parses_sysbench_run() {
        let r = parse_run(RUN).unwrap();
        assert_eq!(
            r,
            RunResult {
                tps: 508.31,
                lat_avg_ms: 7.86,
                lat_p95_ms: 31.94,
                transactions: 2544
            }
        );
        let names: Vec<String> = point_metrics(&r, 8).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["tps_t8", "lat_avg_ms_t8", "lat_p95_ms_t8"]);
        assert!(parse_run("").unwrap_err().contains("no result"));
        assert!(parse_run("transactions: many\n").is_err());
    }

    #[test]
    fn every_point_is_bounded_in_time_and_events() {
        let p = MysqlParams {
            point_s: 3,
            point_events: 5000,
            table_rows: 1000,
            ..MysqlParams::default()
        };
        let a = run_args(&p, "10.214.0.2:3306".parse().unwrap(), 4).join(" ");
        assert!(
            a.contains("--mysql-host=10.214.0.2 --mysql-port=3306")
                && a.contains("--table-size=1000 --threads=4 --time=3 --events=5000")
                && a.ends_with(" run"),
            "{a}"
        );
    }
}
