//! `redis`, the host's side: start the tier serving Debian's `redis-server` (the agent starts it
//! inside the tier: [`crate::backend::Backend::start_server`]), wait until it answers `PING`
//! through the tier's network path (`server_start_ms`: from the call that starts the tier to the
//! first `+PONG`, what a person waits for), then run `redis-benchmark` on the host for every
//! connection count, pinned to CPUs outside the tier's budget, and stop the server.
//!
//! Every benchmark run is bounded twice: `-n requests` and a wall-clock deadline
//! (`point_timeout_s`) after which it is killed and the point is an error. Output is
//! `redis-benchmark --csv` (7.0: rps, average, min, p50, p95, p99, max latency in ms).
//!
//! Metrics per operation (`set`, `get`) and connection count N: `<op>_rps_c<N>`,
//! `<op>_p50_ms_c<N>`, `<op>_p99_ms_c<N>`; and `server_start_ms`.

use std::io::Read;
use std::net::{SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::backend::{Backend, BackendError, ServerInstance};
use crate::protocol::{Better, Metric, Task};
use crate::workload::{RedisParams, Workload};

/// Operations measured, as `redis-benchmark -t` names them.
pub const OPS: [&str; 2] = ["set", "get"];

/// One row of `redis-benchmark --csv`.
#[derive(Debug, Clone, PartialEq)]
pub struct CsvRow {
    pub test: String,
    pub rps: f64,
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// Parse `redis-benchmark --csv` output: a header line naming the columns (7.x), then one row
/// per test. Older versions print no header and two columns (test, rps): then no percentiles.
pub fn parse_csv(text: &str) -> Result<Vec<CsvRow>, String> {
    let split = |l: &str| -> Vec<String> {
        l.split(',')
            .map(|f| f.trim().trim_matches('"').to_string())
            .collect()
    };
    let mut cols: Option<Vec<String>> = None;
    let mut rows = vec![];
    for line in text.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let f = split(line);
        if f.first().is_some_and(|t| t == "test") {
            cols = Some(f);
            continue;
        }
        let col = |name: &str| -> Option<f64> {
            let i = match &cols {
                Some(c) => c.iter().position(|c| c == name)?,
                None if name == "rps" => 1,
                None => return None,
            };
            f.get(i)?.parse().ok()
        };
        let rps = col("rps").ok_or_else(|| format!("redis-benchmark: unreadable line {line:?}"))?;
        rows.push(CsvRow {
            test: f[0].clone(),
            rps,
            p50_ms: col("p50_latency_ms"),
            p99_ms: col("p99_latency_ms"),
        });
    }
    if rows.is_empty() {
        return Err(format!(
            "redis-benchmark printed no result (output: {:?})",
            text.chars().take(200).collect::<String>()
        ));
    }
    Ok(rows)
}

/// The metrics of one point (connection count `c`).
pub fn point_metrics(rows: &[CsvRow], c: u32) -> Vec<Metric> {
    let mut m = vec![];
    for r in rows {
        let op = r.test.to_ascii_lowercase();
        if !OPS.contains(&op.as_str()) {
            continue;
        }
        m.push(Metric::new(
            &format!("{op}_rps_c{c}"),
            "req/s",
            r.rps,
            Better::Higher,
        ));
        if let Some(v) = r.p50_ms {
            m.push(Metric::new(
                &format!("{op}_p50_ms_c{c}"),
                "ms",
                v,
                Better::Lower,
            ));
        }
        if let Some(v) = r.p99_ms {
            m.push(Metric::new(
                &format!("{op}_p99_ms_c{c}"),
                "ms",
                v,
                Better::Lower,
            ));
        }
    }
    m
}

/// The benchmark's command line for one point.
pub fn bench_args(p: &RedisParams, addr: SocketAddr, c: u32) -> Vec<String> {
    vec![
        "-h".into(),
        addr.ip().to_string(),
        "-p".into(),
        addr.port().to_string(),
        "-c".into(),
        c.to_string(),
        "-n".into(),
        p.requests.to_string(),
        "-d".into(),
        p.value_bytes.to_string(),
        "-r".into(),
        p.keyspace.to_string(),
        "-t".into(),
        OPS.join(","),
        "--csv".into(),
    ]
}

/// Run one point: the benchmark pinned to `cpus`, killed at the deadline or when `cancel` is
/// set (Ctrl-C: [`BackendError::Interrupted`]).
fn run_point(
    p: &RedisParams,
    addr: SocketAddr,
    c: u32,
    cpus: &[usize],
    cancel: &AtomicBool,
) -> Result<String, BackendError> {
    let super::Client {
        mut child,
        stdout: out_t,
        stderr: err_t,
    } = super::spawn_client(
        "redis",
        &p.client_bin,
        &bench_args(p, addr, c),
        cpus,
        crate::workload::REDIS_INSTALL,
    )?;
    let deadline = Instant::now() + Duration::from_secs(p.point_timeout_s);
    let mut cancelled = false;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break Some(st),
            Ok(None) => {}
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(BackendError::io("waiting for redis-benchmark", e));
            }
        }
        cancelled = cancel.load(Ordering::Relaxed);
        if cancelled || Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    match status {
        None if cancelled => Err(BackendError::Interrupted),
        None => Err(BackendError::Other(format!(
            "redis: redis-benchmark -c {c} against {addr} did not finish within point_timeout_s = {}: lower requests or raise point_timeout_s",
            p.point_timeout_s
        ))),
        Some(st) if !st.success() => Err(BackendError::Other(format!(
            "redis: redis-benchmark -c {c} against {addr} failed ({st}): {}",
            err.lines().last().unwrap_or("").trim()
        ))),
        Some(_) => Ok(out),
    }
}

/// Wait until the server at `addr` answers PING, or fail at `deadline` (or on `cancel`).
fn wait_ping(
    addr: SocketAddr,
    deadline: Instant,
    timeout_s: u64,
    cancel: &AtomicBool,
) -> Result<(), BackendError> {
    use std::io::Write;
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Interrupted);
        }
        let t = Duration::from_millis(200);
        if let Ok(mut s) = TcpStream::connect_timeout(&addr, t) {
            let _ = s.set_read_timeout(Some(t));
            let mut buf = [0u8; 7];
            if s.write_all(b"PING\r\n").is_ok()
                && s.read_exact(&mut buf).is_ok()
                && &buf == b"+PONG\r\n"
            {
                return Ok(());
            }
        }
        if Instant::now() >= deadline {
            return Err(BackendError::Other(format!(
                "redis: the server did not accept connections at {addr} within start_timeout_s = {timeout_s}"
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// One redis measurement (every connection count) on `backend`, the client on `client_cpus`.
/// `cancel` (Ctrl-C) is checked between points and kills a running benchmark. The server is
/// stopped whatever fails.
pub fn measure(
    backend: &mut dyn Backend,
    p: &RedisParams,
    client_cpus: &[usize],
    cancel: &AtomicBool,
) -> Result<Vec<Metric>, BackendError> {
    p.check_binaries().map_err(BackendError::Other)?;
    let task = Task::new(Workload::Redis(p.clone()));
    let t0 = Instant::now();
    let ServerInstance { instance, addr } = backend.start_server(&task)?;
    let deadline = t0 + Duration::from_secs(p.start_timeout_s);
    let res = wait_ping(addr, deadline, p.start_timeout_s, cancel).and_then(|()| {
        let start_ms = t0.elapsed().as_secs_f64() * 1e3;
        let mut m = vec![Metric::new(
            "server_start_ms",
            "ms",
            start_ms,
            Better::Lower,
        )];
        for &c in &p.connections {
            if cancel.load(Ordering::Relaxed) {
                return Err(BackendError::Interrupted);
            }
            let out = run_point(p, addr, c, client_cpus, cancel)?;
            let rows = parse_csv(&out).map_err(BackendError::Other)?;
            m.extend(point_metrics(&rows, c));
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

    const CSV_7: &str = "\"test\",\"rps\",\"avg_latency_ms\",\"min_latency_ms\",\"p50_latency_ms\",\"p95_latency_ms\",\"p99_latency_ms\",\"max_latency_ms\"\n\"SET\",\"21978.02\",\"0.126\",\"0.048\",\"0.119\",\"0.207\",\"0.263\",\"0.535\"\n\"GET\",\"18691.59\",\"0.159\",\"0.040\",\"0.103\",\"0.191\",\"0.407\",\"7.839\"\n";

    #[test]
    fn parses_redis_7_csv() {
        let rows = parse_csv(CSV_7).unwrap();
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].test, "SET");
        assert_eq!(rows[0].rps, 21978.02);
        assert_eq!(rows[0].p50_ms, Some(0.119));
        assert_eq!(rows[1].p99_ms, Some(0.407));
        let m = point_metrics(&rows, 120);
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "set_rps_c120",
                "set_p50_ms_c120",
                "set_p99_ms_c120",
                "get_rps_c120",
                "get_p50_ms_c120",
                "get_p99_ms_c120"
            ]
        );
    }

    #[test]
    fn parses_headerless_csv_and_refuses_empty() {
        let rows = parse_csv("\"SET\",\"1000.00\"\n\"GET\",\"2000.00\"\n").unwrap();
        assert_eq!(rows[1].rps, 2000.0);
        assert_eq!(rows[1].p50_ms, None);
        assert!(parse_csv("").unwrap_err().contains("no result"));
        assert!(parse_csv("\"SET\",\"fast\"\n").is_err());
    }

    #[test]
    fn benchmark_is_bounded_in_requests() {
        let a = bench_args(
            &RedisParams {
                requests: 500,
                ..RedisParams::default()
            },
            "10.214.0.2:6379".parse().unwrap(),
            4,
        );
        let s = a.join(" ");
        assert!(
            s.contains("-h 10.214.0.2 -p 6379 -c 4 -n 500 -d 50 -r 100000 -t set,get --csv"),
            "{s}"
        );
    }
}
