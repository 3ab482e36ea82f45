//! The one small protocol that the host and `isobench-agent` agree on.
//!
//! The host hands the agent a [`Task`] (JSON in the `ISOBENCH_TASK` environment variable; in a VM
//! the kernel passes `ISOBENCH_TASK=hex:<hex of the JSON>` from its command line to /init). The
//! agent writes [`READY_LINE`] on stdout (the serial console in a VM) the instant it starts, runs
//! the workload, then writes one [`RESULT_PREFIX`] line with an [`AgentReport`] as JSON, and exits.
//! Lines that carry neither marker (kernel messages on a serial console) are ignored by the host.

pub mod net;
pub mod workload;

use serde::{Deserialize, Serialize};

use crate::workload::Workload;

/// Environment variable that carries the task.
pub const TASK_ENV: &str = "ISOBENCH_TASK";
/// Set by process tiers that spawn without a pre-exec hook: the harness's pid. The agent arms
/// PR_SET_PDEATHSIG and exits at once if its parent is already another process.
pub const PARENT_ENV: &str = "ISOBENCH_PARENT";
/// Prefix that marks a hex-encoded task (kernel command lines cannot carry JSON).
pub const HEX_PREFIX: &str = "hex:";
/// The line the agent prints the instant it starts.
pub const READY_LINE: &str = "ISOBENCH-READY";
/// The prefix of the one line that carries the agent's report.
pub const RESULT_PREFIX: &str = "ISOBENCH-RESULT ";

/// What the host asks the agent to do.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub workload: Workload,
    /// Collect the isolation view (what the agent sees from inside).
    #[serde(default)]
    pub probe: bool,
    /// Paths whose visibility the probe reports (e.g. a marker file outside a chroot).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub probe_paths: Vec<String>,
    /// Set when the agent is /init of a VM guest: what it must do before the workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub guest: Option<GuestSetup>,
    /// Exit with this code after reporting (tests of exit-code pass-through).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Work the agent does as PID 1 of a VM guest before running the workload.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GuestSetup {
    /// Kernel modules to load, in order (paths inside the initramfs).
    #[serde(default)]
    pub modules: Vec<String>,
    /// Guest network: address/prefix for the first virtio-net interface, e.g. "10.213.0.2/30".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_addr: Option<String>,
    /// Block device holding an ext4 filesystem to mount at `disk_mount` for the fs workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_device: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_mount: Option<String>,
}

impl Task {
    pub fn new(workload: Workload) -> Self {
        Task {
            workload,
            ..Default::default()
        }
    }

    /// Encode for a kernel command line: `hex:` followed by the JSON's bytes in hex.
    pub fn to_hex(&self) -> String {
        let json = serde_json::to_vec(self).expect("Task always serialises");
        let mut s = String::with_capacity(HEX_PREFIX.len() + json.len() * 2);
        s.push_str(HEX_PREFIX);
        for b in json {
            s.push_str(&format!("{b:02x}"));
        }
        s
    }

    /// Decode either plain JSON or the `hex:` form.
    pub fn decode(s: &str) -> Result<Task, String> {
        let json = match s.strip_prefix(HEX_PREFIX) {
            Some(hex) => {
                if hex.len() % 2 != 0 {
                    return Err("odd-length hex task".into());
                }
                let bytes: Result<Vec<u8>, _> = (0..hex.len())
                    .step_by(2)
                    .map(|i| u8::from_str_radix(&hex[i..i + 2], 16))
                    .collect();
                String::from_utf8(bytes.map_err(|e| e.to_string())?).map_err(|e| e.to_string())?
            }
            None => s.to_string(),
        };
        serde_json::from_str(&json).map_err(|e| format!("malformed task JSON: {e}"))
    }
}

/// Which direction of a metric is good.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Better {
    Higher,
    Lower,
}

/// What a metric is: a measurement of the system, or bookkeeping about the run itself.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MetricKind {
    /// A measurement (a time, a rate, a size): what comparisons test.
    #[default]
    Measured,
    /// A counter or setting that describes how the run was done (`*_done` counts, thread and
    /// instance counts, whether direct I/O was used). Kept for the reader; never tested for a
    /// regression (docs/compare.md).
    Bookkeeping,
}

impl MetricKind {
    pub fn is_measured(&self) -> bool {
        *self == MetricKind::Measured
    }
}

/// One measured value. The unit is part of the name as well (`copy_gb_per_s`), so a column
/// header alone is never ambiguous.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Metric {
    pub name: String,
    pub unit: String,
    pub value: f64,
    pub better: Better,
    /// Absent in reports of older agents: measured.
    #[serde(default, skip_serializing_if = "MetricKind::is_measured")]
    pub kind: MetricKind,
}

impl Metric {
    pub fn new(name: &str, unit: &str, value: f64, better: Better) -> Self {
        Metric {
            name: name.into(),
            unit: unit.into(),
            value,
            better,
            kind: MetricKind::Measured,
        }
    }

    /// A bookkeeping counter (see [`MetricKind::Bookkeeping`]).
    pub fn bookkeeping(name: &str, unit: &str, value: f64) -> Self {
        Metric {
            kind: MetricKind::Bookkeeping,
            ..Metric::new(name, unit, value, Better::Higher)
        }
    }
}

/// What the agent saw from inside its sandbox. Every field is observed, never assumed.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IsolationView {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub gid: u32,
    pub hostname: String,
    pub kernel_release: String,
    /// Network interfaces visible (by name).
    pub interfaces: Vec<String>,
    /// Number of processes visible in /proc (None when /proc is not mounted).
    pub visible_processes: Option<usize>,
    /// Number of mounts in /proc/self/mountinfo (None when /proc is not mounted).
    pub mounts: Option<usize>,
    /// Namespace identities from /proc/self/ns (e.g. "pid" -> "pid:[4026531836]").
    pub namespaces: std::collections::BTreeMap<String, String>,
    /// /proc/self/cgroup as read (None when /proc is not mounted).
    pub cgroup: Option<String>,
    /// Memory limit in force, in bytes, if the agent can read one.
    pub memory_limit_bytes: Option<u64>,
    /// Number of CPUs the agent may run on.
    pub cpus_allowed: usize,
    /// File descriptors open at start other than 0, 1, 2.
    pub extra_fds: Vec<i32>,
    /// Working directory at start.
    pub cwd: String,
    /// Entries of "/" (shows a jail's contents).
    pub root_entries: Vec<String>,
    /// For each probed path: whether it was visible.
    pub visible_paths: Vec<(String, bool)>,
}

/// The agent's one result line.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentReport {
    pub workload: String,
    #[serde(default)]
    pub metrics: Vec<Metric>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationView>,
    /// Peak resident set of the agent's own address space, KiB: `VmHWM` of /proc/self/status
    /// (reset at execve). None where /proc cannot be read (e.g. a chroot jail without /proc).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_rss_kib: Option<u64>,
    /// The anonymous part of that peak, KiB (heap, stack, written data: not the executable's
    /// file pages, whose residency is the kernel's fault-around policy). None where
    /// /proc/self/smaps_rollup cannot be read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_anon_kib: Option<u64>,
    /// Set when the workload failed; the host records the run as failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl AgentReport {
    pub fn to_line(&self) -> String {
        format!(
            "{RESULT_PREFIX}{}",
            serde_json::to_string(self).expect("report serialises")
        )
    }

    /// Parse a result line (with its prefix); None when the line is not a result line.
    pub fn parse_line(line: &str) -> Option<Result<AgentReport, String>> {
        let rest = line.trim_end_matches(['\r', '\n']);
        let idx = rest.find(RESULT_PREFIX)?;
        Some(serde_json::from_str(&rest[idx + RESULT_PREFIX.len()..]).map_err(|e| e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_hex_roundtrip() {
        let mut t = Task::new(Workload::Noop);
        t.probe = true;
        t.probe_paths = vec!["/etc/host marker".into()];
        let hex = t.to_hex();
        assert!(hex.starts_with("hex:"));
        assert!(!hex.contains(' ') && !hex.contains('.'));
        assert_eq!(Task::decode(&hex).unwrap(), t);
        assert_eq!(
            Task::decode(&serde_json::to_string(&t).unwrap()).unwrap(),
            t
        );
    }

    #[test]
    fn result_line_survives_console_noise() {
        let r = AgentReport {
            workload: "noop".into(),
            ..Default::default()
        };
        let line = format!("\r[    1.23] random kernel noise {}\r\n", r.to_line());
        assert_eq!(AgentReport::parse_line(&line).unwrap().unwrap(), r);
        assert!(AgentReport::parse_line("ISOBENCH-READY").is_none());
    }

    #[test]
    fn metric_kind_defaults_to_measured_and_round_trips() {
        let old = r#"{"name":"x_done","unit":"ops","value":3.0,"better":"higher"}"#;
        let m: Metric = serde_json::from_str(old).unwrap();
        assert_eq!(m.kind, MetricKind::Measured);
        assert!(!serde_json::to_string(&m).unwrap().contains("kind"));
        let b = Metric::bookkeeping("x_done", "ops", 3.0);
        let s = serde_json::to_string(&b).unwrap();
        assert!(s.contains(r#""kind":"bookkeeping""#), "{s}");
        assert_eq!(serde_json::from_str::<Metric>(&s).unwrap(), b);
    }
}
