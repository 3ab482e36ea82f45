//! Density: what one more idle sandbox of a tier costs the host's memory, as a slope.
//!
//! For each count K of the scenario's `counts` (default 0, 1, 2, 4, 8), start K idle instances
//! of the tier at once (the agent running `Workload::Idle`), wait until every one has signalled
//! ready and `settle_ms` has passed, read memory, and stop them. Then fit memory = a + b * K by
//! least squares ([`fit`]): the slope b is the per-instance cost, with its 95% interval.
//! - `memory_per_instance_mib` (headline): from the PSS of every host process of each instance
//!   (the agent; the runtime CLI and what runs under it; Docker's shim and container; the VMM
//!   with the guest RAM it touched), shared pages split fairly. An instance whose process has
//!   exited by the reading is left out of that point (its count is the live instances) and
//!   counted in `instances_exited_early`, so one early exit never drops a round.
//! - `cgroup_memory_per_instance_mib`: from the memory charged to each instance's own cgroup,
//!   where the tier has one (container, the runtimes, docker).
//! - `host_memory_per_instance_mib`: context only, the slope of MemAvailable's drop while the
//!   instances run; the whole host moves it (it moved by hundreds of MiB a second on a shared
//!   machine), so no claim or gate should rest on it.

pub mod fit;

use std::time::Duration;

use nix::unistd::Pid;

use crate::backend::{Backend, BackendError, IdleInstance};
use crate::host::proc::meminfo_kib;
use crate::protocol::{Better, Metric, Task};
use crate::workload::{DensityParams, IdleParams, Workload};

/// No idle instance outlives this, whatever happens to the harness.
const IDLE_MAX_S: u64 = 600;

// Metric names (docs/results.md).
pub const MEMORY_PER_INSTANCE: &str = "memory_per_instance_mib";
pub const MEMORY_PER_INSTANCE_CI_LOW: &str = "memory_per_instance_ci_low_mib";
pub const MEMORY_PER_INSTANCE_CI_HIGH: &str = "memory_per_instance_ci_high_mib";
pub const MEMORY_INTERCEPT: &str = "memory_intercept_mib";
pub const CGROUP_PER_INSTANCE: &str = "cgroup_memory_per_instance_mib";
pub const CGROUP_PER_INSTANCE_CI_LOW: &str = "cgroup_memory_per_instance_ci_low_mib";
pub const CGROUP_PER_INSTANCE_CI_HIGH: &str = "cgroup_memory_per_instance_ci_high_mib";
pub const HOST_PER_INSTANCE: &str = "host_memory_per_instance_mib";
pub const FIT_POINTS: &str = "fit_points";
pub const EXITED_EARLY: &str = "instances_exited_early";
pub const INSTANCES: &str = "instances";

/// PSS of a process in KiB, from /proc/PID/smaps_rollup (None once it has exited: a zombie
/// has no memory map left).
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

/// What one instance showed at the reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct InstanceReading {
    /// PSS summed over its host processes, KiB; None when it has no live process left (it
    /// exited early) or any of them could not be read.
    pub pss_kib: Option<u64>,
    /// Memory charged to its own cgroup, bytes, where it has one.
    pub cgroup_bytes: Option<u64>,
}

fn read_instance(i: &dyn IdleInstance) -> InstanceReading {
    let pids = i.host_pids();
    let pss_kib = if pids.is_empty() {
        None
    } else {
        pids.into_iter().map(pss_kib).sum()
    };
    InstanceReading {
        pss_kib,
        cgroup_bytes: i.cgroup_memory_bytes(),
    }
}

/// One count's reading: `started` instances, what each showed, and MemAvailable before they
/// started and while they ran (KiB).
#[derive(Debug, Clone, PartialEq)]
pub struct CountReading {
    pub started: u32,
    pub instances: Vec<InstanceReading>,
    pub avail_before_kib: Option<u64>,
    pub avail_during_kib: Option<u64>,
}

/// Start `k` instances, settle, read, stop them all (whatever failed).
fn one_count(
    backend: &mut dyn Backend,
    task: &Task,
    k: u32,
    settle: Duration,
) -> Result<CountReading, BackendError> {
    std::thread::sleep(Duration::from_millis(200));
    let avail_before_kib = meminfo_kib("MemAvailable");
    let mut running: Vec<Box<dyn IdleInstance>> = Vec::new();
    let mut started = Ok(());
    for _ in 0..k {
        match backend.start_idle(task) {
            Ok(i) => running.push(i),
            Err(e) => {
                started = Err(e);
                break;
            }
        }
    }
    let reading = started.map(|()| {
        std::thread::sleep(settle);
        let avail_during_kib = meminfo_kib("MemAvailable");
        let instances = running.iter().map(|i| read_instance(i.as_ref())).collect();
        (instances, avail_during_kib)
    });
    let mut stop_err = None;
    for i in running {
        if let Err(e) = i.stop() {
            stop_err.get_or_insert(e);
        }
    }
    let (instances, avail_during_kib) = reading?;
    if let Some(e) = stop_err {
        return Err(e);
    }
    Ok(CountReading {
        started: k,
        instances,
        avail_before_kib,
        avail_during_kib,
    })
}

/// Run one density measurement (one round: every count) on `backend`. Every started instance
/// is stopped, whatever fails; an instance that exits early is counted, not fatal.
pub fn measure(backend: &mut dyn Backend, p: &DensityParams) -> Result<Vec<Metric>, BackendError> {
    let task = Task::new(Workload::Idle(IdleParams { max_s: IDLE_MAX_S }));
    let settle = Duration::from_millis(p.settle_ms);
    let mut readings = Vec::with_capacity(p.counts.len());
    for &k in &p.counts {
        readings.push(one_count(backend, &task, k, settle)?);
    }
    let tier = backend.tier();
    let exited = exited_early(&readings);
    if exited > 0 {
        let which: Vec<String> = readings
            .iter()
            .filter(|r| r.instances.iter().any(|i| i.pss_kib.is_none()))
            .map(|r| {
                let gone = r.instances.iter().filter(|i| i.pss_kib.is_none()).count();
                format!("{gone} of {}", r.started)
            })
            .collect();
        tracing::warn!(
            %tier,
            "density: {exited} idle instance(s) exited before the reading ({}); those points count only the live ones",
            which.join(", ")
        );
    }
    Ok(metrics(&readings))
}

/// Instances that had no live process at their reading.
pub fn exited_early(readings: &[CountReading]) -> u32 {
    readings
        .iter()
        .flat_map(|r| &r.instances)
        .filter(|i| i.pss_kib.is_none())
        .count() as u32
}

/// The three series of points (instances, MiB) of a round: PSS (live instances only), cgroup
/// (live instances with a cgroup; None when no instance had one), MemAvailable drop (started
/// instances, 0 included; None when it could not be read).
///
/// PSS and cgroup memory are zero by definition at zero instances, and the first instance
/// carries the pages all instances share (the agent's text, the runtime's binary) whole, so
/// their points start at one live instance: the line's intercept is then the shared part and
/// its slope the cost of one more instance. (With the zero point the step from nothing to one
/// instance would tilt the line and widen its interval.)
pub fn points(readings: &[CountReading]) -> [Option<Vec<(f64, f64)>>; 3] {
    let mut pss = vec![];
    let mut cg = vec![];
    let mut host = vec![];
    let any_cgroup = readings
        .iter()
        .flat_map(|r| &r.instances)
        .any(|i| i.cgroup_bytes.is_some());
    for r in readings {
        let live: Vec<&InstanceReading> =
            r.instances.iter().filter(|i| i.pss_kib.is_some()).collect();
        let kib: u64 = live.iter().filter_map(|i| i.pss_kib).sum();
        if !live.is_empty() {
            pss.push((live.len() as f64, mib(kib as f64)));
        }
        let with_cg: Vec<u64> = live.iter().filter_map(|i| i.cgroup_bytes).collect();
        let bytes: u64 = with_cg.iter().sum();
        if !with_cg.is_empty() {
            cg.push((with_cg.len() as f64, bytes as f64 / 1024.0 / 1024.0));
        }
        if let (Some(b), Some(d)) = (r.avail_before_kib, r.avail_during_kib) {
            host.push((f64::from(r.started), mib(b as f64 - d as f64)));
        }
    }
    let host = (host.len() == readings.len()).then_some(host);
    [Some(pss), any_cgroup.then_some(cg), host]
}

/// The round's metrics from its readings.
pub fn metrics(readings: &[CountReading]) -> Vec<Metric> {
    let max = readings.iter().map(|r| r.started).max().unwrap_or(0);
    let mut m = vec![
        Metric::bookkeeping(INSTANCES, "count", f64::from(max)),
        Metric::bookkeeping(EXITED_EARLY, "count", f64::from(exited_early(readings))),
    ];
    let [pss, cg, host] = points(readings);
    let mib_metric = |name: &str, v: f64| Metric::new(name, "MiB", v, Better::Lower);
    // The slope's interval bounds are derived from the slope's fit, not measurements of their
    // own: recorded for the report, never tested by `compare`.
    let bound = |name: &str, v: f64| Metric::bookkeeping(name, "MiB", v);
    if let Some(l) = pss.as_deref().and_then(fit::ols) {
        m.push(mib_metric(MEMORY_PER_INSTANCE, l.slope));
        if let Some((lo, hi)) = l.slope_ci {
            m.push(bound(MEMORY_PER_INSTANCE_CI_LOW, lo));
            m.push(bound(MEMORY_PER_INSTANCE_CI_HIGH, hi));
        }
        m.push(mib_metric(MEMORY_INTERCEPT, l.intercept));
        m.push(Metric::bookkeeping(FIT_POINTS, "count", l.points as f64));
    }
    if let Some(l) = cg.as_deref().and_then(fit::ols) {
        m.push(mib_metric(CGROUP_PER_INSTANCE, l.slope));
        if let Some((lo, hi)) = l.slope_ci {
            m.push(bound(CGROUP_PER_INSTANCE_CI_LOW, lo));
            m.push(bound(CGROUP_PER_INSTANCE_CI_HIGH, hi));
        }
    }
    if let Some(l) = host.as_deref().and_then(fit::ols) {
        m.push(mib_metric(HOST_PER_INSTANCE, l.slope));
    }
    m
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

    fn reading(started: u32, pss_mib: &[Option<u64>], cg: bool) -> CountReading {
        CountReading {
            started,
            instances: pss_mib
                .iter()
                .map(|p| InstanceReading {
                    pss_kib: p.map(|m| m * 1024),
                    cgroup_bytes: cg.then_some(2 << 20),
                })
                .collect(),
            avail_before_kib: Some(1_000_000),
            avail_during_kib: Some(1_000_000 - u64::from(started) * 3 * 1024),
        }
    }

    fn get(m: &[Metric], name: &str) -> Option<f64> {
        m.iter().find(|x| x.name == name).map(|x| x.value)
    }

    fn close(m: &[Metric], name: &str, want: f64) {
        let v = get(m, name).unwrap_or_else(|| panic!("{name} missing"));
        assert!((v - want).abs() < 1e-9, "{name} = {v}, want {want}");
    }

    #[test]
    fn slope_from_every_count() {
        let r = vec![
            reading(0, &[], true),
            reading(1, &[Some(5)], true),
            reading(2, &[Some(5); 2], true),
            reading(4, &[Some(5); 4], true),
        ];
        let m = metrics(&r);
        close(&m, MEMORY_PER_INSTANCE, 5.0);
        close(&m, MEMORY_INTERCEPT, 0.0);
        // Shared pages carried by the first instance: the intercept, not the slope.
        let shared = vec![
            reading(0, &[], false),
            reading(1, &[Some(9)], false),
            reading(2, &[Some(7); 2], false),
            reading(4, &[Some(6); 4], false),
        ];
        let m2 = metrics(&shared);
        assert!((get(&m2, MEMORY_PER_INSTANCE).unwrap() - 5.0).abs() < 1e-9);
        assert!((get(&m2, MEMORY_INTERCEPT).unwrap() - 4.0).abs() < 1e-9);
        close(&m, CGROUP_PER_INSTANCE, 2.0);
        close(&m, HOST_PER_INSTANCE, 3.0);
        // The zero count is not a PSS point (nothing to read), only a MemAvailable one.
        assert_eq!(get(&m, FIT_POINTS), Some(3.0));
        assert_eq!(get(&m, EXITED_EARLY), Some(0.0));
        assert_eq!(get(&m, INSTANCES), Some(4.0));
        assert!(get(&m, MEMORY_PER_INSTANCE_CI_LOW).is_some());
    }

    #[test]
    fn an_early_exit_is_counted_not_dropped() {
        // One of four instances exited before the reading: that point counts three.
        let r = vec![
            reading(0, &[], false),
            reading(1, &[Some(5)], false),
            reading(2, &[Some(5); 2], false),
            reading(4, &[Some(5), None, Some(5), Some(5)], false),
        ];
        let m = metrics(&r);
        assert_eq!(get(&m, EXITED_EARLY), Some(1.0));
        close(&m, MEMORY_PER_INSTANCE, 5.0);
        assert_eq!(get(&m, FIT_POINTS), Some(3.0));
        // No instance had a cgroup: no cgroup metric at all (not a zero).
        assert_eq!(get(&m, CGROUP_PER_INSTANCE), None);
        let [pss, _, _] = points(&r);
        assert_eq!(pss.unwrap()[2], (3.0, 15.0));
    }
}
