//! Density: what one more idle sandbox of a tier costs the host's memory.
//!
//! Start K idle instances of the tier at once (the agent running `Workload::Idle`), wait until
//! every one has signalled ready and a settle time has passed, and read the host three ways:
//! - `host_memory_per_instance_mib`: the drop of MemAvailable, over K (everything the host pays,
//!   kernel-side structures and page cache included; noisy on a shared machine);
//! - `pss_per_instance_mib`: the proportional set size of each instance's host processes (the
//!   agent, or the VMM with the guest RAM it touched), shared pages split fairly;
//! - `cgroup_memory_per_instance_mib`: memory charged to the instance's cgroup, where it has one.

use std::time::Duration;

use nix::unistd::Pid;

use crate::backend::{Backend, BackendError, IdleInstance};
use crate::host::proc::meminfo_kib;
use crate::protocol::{Better, Metric, Task};
use crate::workload::{DensityParams, IdleParams, Workload};

/// No idle instance outlives this, whatever happens to the harness.
const IDLE_MAX_S: u64 = 600;

/// PSS of a process in KiB, from /proc/PID/smaps_rollup.
pub fn pss_kib(pid: Pid) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    parse_pss(&s)
}

fn parse_pss(smaps_rollup: &str) -> Option<u64> {
    smaps_rollup
        .lines()
        .find(|l| l.starts_with("Pss:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn mib(kib: f64) -> f64 {
    kib / 1024.0
}

/// Run one density measurement on `backend`. Every started instance is stopped, whatever fails.
pub fn measure(backend: &mut dyn Backend, p: &DensityParams) -> Result<Vec<Metric>, BackendError> {
    let k = p.instances.max(1);
    let task = Task::new(Workload::Idle(IdleParams { max_s: IDLE_MAX_S }));
    std::thread::sleep(Duration::from_millis(200));
    let before = meminfo_kib("MemAvailable")
        .ok_or_else(|| BackendError::Other("cannot read MemAvailable from /proc/meminfo".into()))?;
    let mut running: Vec<Box<dyn IdleInstance>> = Vec::new();
    let mut started = Ok(());
    for _ in 0..k {
        match backend.start_idle(&task) {
            Ok(i) => running.push(i),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let reading = started.map(|()| {
        std::thread::sleep(Duration::from_millis(p.settle_ms));
        let during = meminfo_kib("MemAvailable");
        let pss: Option<u64> = running
            .iter()
            .flat_map(|i| i.host_pids())
            .map(pss_kib)
            .sum();
        let cg: Option<u64> = running.iter().map(|i| i.cgroup_memory_bytes()).sum();
        (during, pss, cg)
    });
    let mut stop_err = None;
    for i in running {
        if let Err(e) = i.stop() {
            stop_err.get_or_insert(e);
        }
    }
    let (during, pss, cg) = reading?;
    if let Some(e) = stop_err {
        return Err(e);
    }
    let kf = f64::from(k);
    let mut m = vec![Metric::bookkeeping("instances", "count", kf)];
    if let Some(d) = during {
        // MemAvailable can rise meanwhile (another process freed memory): report it as measured.
        let drop_kib = before as f64 - d as f64;
        m.push(Metric::new(
            "host_memory_per_instance_mib",
            "MiB",
            mib(drop_kib) / kf,
            Better::Lower,
        ));
    }
    if let Some(pss) = pss {
        m.push(Metric::new(
            "pss_per_instance_mib",
            "MiB",
            mib(pss as f64) / kf,
            Better::Lower,
        ));
    }
    if let Some(cg) = cg {
        m.push(Metric::new(
            "cgroup_memory_per_instance_mib",
            "MiB",
            cg as f64 / 1024.0 / 1024.0 / kf,
            Better::Lower,
        ));
    }
    Ok(m)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_pss() {
        let s = "55a0-7ffd ---p 00000000 00:00 0 [rollup]\nRss:   3000 kB\nPss:   1234 kB\nPss_Anon: 10 kB\n";
        assert_eq!(parse_pss(s), Some(1234));
        assert_eq!(parse_pss("Rss: 1 kB\n"), None);
        assert!(pss_kib(Pid::this()).unwrap() > 0);
    }
}
