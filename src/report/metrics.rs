//! Metric and workload names the report knows by name, in one place, and how the report groups
//! and orients them. The names are the ones the agent writes (src/agent/workloads/*.rs) and the
//! host records (docs/results.md); when a workload renames a metric, change it here only.

use crate::model::results::MetricSummary;
use crate::protocol::Better;
use crate::stats::Ratio;

// Startup, measured for every launch of every workload.
pub const LAUNCH_TO_READY_MS: &str = "launch_to_ready_ms";
pub const LAUNCH_TO_EXIT_MS: &str = "launch_to_exit_ms";
pub const TEARDOWN_MS: &str = "teardown_ms";
pub const AGENT_PEAK_RSS_KIB: &str = "agent_peak_rss_kib";
/// The anonymous part of the agent's peak: its own memory, whatever the kernel's fault-around.
pub const AGENT_PEAK_ANON_KIB: &str = "agent_peak_anon_kib";
pub const STARTUP_METRICS: [&str; 5] = [
    LAUNCH_TO_READY_MS,
    LAUNCH_TO_EXIT_MS,
    TEARDOWN_MS,
    AGENT_PEAK_RSS_KIB,
    AGENT_PEAK_ANON_KIB,
];

// Workloads.
pub const NOOP: &str = "noop";
pub const CPU: &str = "cpu";
pub const MEMORY: &str = "memory";
pub const FS: &str = "fs";
/// The fs workload on a volume (a bind mount) rather than the tier's rootfs.
pub const FS_VOLUME: &str = "fs_volume";
pub const NET: &str = "net";
/// The net workload over the tier's NAT path (Docker's default bridge), where it has one.
pub const NET_NAT: &str = "net_nat";
/// Workloads whose name starts with this measure memory per instance (many sandboxes at once).
pub const DENSITY_PREFIX: &str = "density";

// cpu
pub const CPU_SINGLE: &str = "single_ops_per_s";
pub const CPU_MULTI: &str = "multi_ops_per_s";
// memory
pub const MEM_COPY: &str = "copy_gb_per_s";
pub const MEM_TRIAD: &str = "triad_gb_per_s";
pub const MEM_LATENCY: &str = "latency_ns";
// fs
pub const FS_SEQ_WRITE: &str = "seq_write_mb_per_s";
pub const FS_SEQ_READ: &str = "seq_read_mb_per_s";
pub const FS_RAND_READ: &str = "rand_read_iops";
pub const FS_RAND_WRITE: &str = "rand_write_iops";
pub const FS_META: &str = "meta_ops_per_s";
pub const FS_FSYNC_P50: &str = "fsync_p50_us";
pub const FS_FSYNC_P99: &str = "fsync_p99_us";
// net
pub const NET_STREAM: &str = "stream_gbit_per_s";
pub const NET_RR_P50: &str = "rr_latency_p50_us";
pub const NET_RR_P99: &str = "rr_latency_p99_us";
pub const NET_RR_RATE: &str = "rr_transactions_per_s";
// density: memory the host spends per running instance (the PSS slope over instance counts,
// src/measure/density; its 95% interval in `memory_per_instance_ci_{low,high}_mib`).
pub const DENSITY_MEM_PER_INSTANCE: &str = "memory_per_instance_mib";

/// A section of the report, derived from the workload name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Family {
    Startup,
    Cpu,
    Memory,
    Fs,
    Net,
    Density,
    /// A workload the report does not know yet, shown by its name.
    Other(String),
}

impl Family {
    /// The family of a workload: `noop` is startup; the others by name.
    pub fn of_workload(workload: &str) -> Family {
        match workload {
            NOOP => Family::Startup,
            CPU => Family::Cpu,
            MEMORY => Family::Memory,
            FS => Family::Fs,
            NET => Family::Net,
            w if w.starts_with(DENSITY_PREFIX) => Family::Density,
            w => Family::Other(w.to_string()),
        }
    }

    /// HTML id / chart file stem.
    pub fn id(&self) -> String {
        match self {
            Family::Startup => "startup".into(),
            Family::Cpu => "cpu".into(),
            Family::Memory => "memory".into(),
            Family::Fs => "fs".into(),
            Family::Net => "net".into(),
            Family::Density => "density".into(),
            Family::Other(w) => format!("other-{}", sanitize(w)),
        }
    }

    pub fn title(&self) -> String {
        match self {
            Family::Startup => "Startup (noop workload)".into(),
            Family::Cpu => "CPU".into(),
            Family::Memory => "Memory bandwidth and latency".into(),
            Family::Fs => "Filesystem".into(),
            Family::Net => "Network".into(),
            Family::Density => "Density: memory per instance".into(),
            Family::Other(w) => format!("Workload {w}"),
        }
    }
}

/// Keep `[a-z0-9_-]`, replace the rest: safe in file names and HTML ids.
pub fn sanitize(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

/// Bookkeeping values that say how much work was done, not how fast: shown in tables, left out
/// of charts, the spectrum and the claims.
pub fn is_bookkeeping(metric: &str, unit: &str) -> bool {
    metric.ends_with("_done")
        || matches!(unit, "bool" | "threads")
        || metric == "multi_threads"
        || metric == "direct_io"
}

/// Metrics that belong in the family's charts and in the spectrum. Startup metrics count only
/// for the `noop` workload (for the others they include the workload's own run time).
pub fn is_charted(m: &MetricSummary) -> bool {
    if is_bookkeeping(&m.metric, &m.unit) {
        return false;
    }
    let startup = STARTUP_METRICS.contains(&m.metric.as_str());
    if m.workload == NOOP {
        startup
    } else {
        !startup
    }
}

/// A ratio turned so that > 1 always means "costlier than the reference": unchanged for
/// lower-is-better metrics, inverted (reference / tier) for higher-is-better ones.
pub fn cost_ratio(r: Ratio, better: Better) -> Ratio {
    match better {
        Better::Lower => r,
        Better::Higher => Ratio {
            ratio: recip(r.ratio),
            ci_low: r.ci_high.map(recip),
            ci_high: r.ci_low.map(recip),
            ci_missing: r.ci_missing,
        },
    }
}

fn recip(x: f64) -> f64 {
    if x == 0.0 {
        f64::INFINITY
    } else {
        1.0 / x
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_from_workload_names() {
        assert_eq!(Family::of_workload("noop"), Family::Startup);
        assert_eq!(Family::of_workload("fs"), Family::Fs);
        assert_eq!(Family::of_workload("density_100"), Family::Density);
        assert_eq!(Family::of_workload("gpu").id(), "other-gpu");
    }

    #[test]
    fn cost_ratio_is_oriented() {
        let r = Ratio::with_ci(0.5, 0.4, 0.8);
        let c = cost_ratio(r.clone(), Better::Higher);
        assert_eq!(c.ratio, 2.0);
        assert_eq!(c.ci(), Some((1.25, 2.5)));
        assert_eq!(cost_ratio(r.clone(), Better::Lower), r);
        let none = Ratio::without_ci(0.5, "no interval: n = 3 vs 10, needs >= 5 per side");
        let c = cost_ratio(none, Better::Higher);
        assert_eq!((c.ratio, c.ci()), (2.0, None));
        assert!(c.ci_missing.unwrap().contains("n = 3 vs 10"));
    }

    #[test]
    fn bookkeeping_is_not_charted() {
        assert!(is_bookkeeping("single_ops_done", "ops"));
        assert!(is_bookkeeping("direct_io", "bool"));
        assert!(!is_bookkeeping("rand_read_iops", "ops/s"));
    }
}
