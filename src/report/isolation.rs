//! The isolation matrix: what the agent saw from inside each tier, one row per tier. Observed
//! values only; namespaces are compared with bare's to say "own" or "shared".

use crate::model::results::Results;
use crate::model::tier::Tier;
use crate::protocol::IsolationView;

pub const COLUMNS: [&str; 9] = [
    "PID view",
    "network interfaces",
    "mount table",
    "hostname",
    "IPC",
    "user IDs",
    "cgroup limits in force",
    "kernel",
    "probed host paths",
];

/// One tier's row: None when the tier was not observed.
#[derive(Debug, Clone, PartialEq)]
pub struct Row {
    pub tier: Tier,
    pub cells: Option<Vec<String>>,
}

/// "own" / "shared" / "?" for namespace `kind`, relative to bare's view.
fn ns(v: &IsolationView, bare: Option<&IsolationView>, tier: Tier, kind: &str) -> String {
    if tier == Tier::Bare {
        return if v.namespaces.contains_key(kind) {
            format!("{kind} ns: host (reference)")
        } else {
            format!("{kind} ns: ?")
        };
    }
    match super::claims::own_namespace(v, bare, kind) {
        Some(true) => format!("{kind} ns: own"),
        Some(false) => format!("{kind} ns: shared"),
        None => format!("{kind} ns: ? (not observable)"),
    }
}

fn opt<T: std::fmt::Display>(x: Option<T>) -> String {
    x.map(|v| v.to_string())
        .unwrap_or_else(|| "? (no /proc)".into())
}

fn cells(r: &Results, v: &IsolationView, bare: Option<&IsolationView>, tier: Tier) -> Vec<String> {
    let host_kernel = bare
        .map(|b| b.kernel_release.clone())
        .unwrap_or_else(|| r.host.kernel.clone());
    let kernel_note = if tier == Tier::Bare {
        "host"
    } else if v.kernel_release == host_kernel {
        "same as host"
    } else {
        "differs from host"
    };
    let mem = v
        .memory_limit_bytes
        .map(|b| format!("memory {} MiB", b / (1024 * 1024)))
        .unwrap_or_else(|| "no memory limit seen".into());
    let paths = if v.visible_paths.is_empty() {
        "none probed".into()
    } else {
        v.visible_paths
            .iter()
            .map(|(p, vis)| format!("{p}: {}", if *vis { "visible" } else { "invisible" }))
            .collect::<Vec<_>>()
            .join("; ")
    };
    vec![
        format!(
            "pid {} (ppid {}); {} processes visible; {}",
            v.pid,
            v.ppid,
            opt(v.visible_processes),
            ns(v, bare, tier, "pid")
        ),
        format!(
            "{}; {}",
            if v.interfaces.is_empty() {
                "none".into()
            } else {
                v.interfaces.join(", ")
            },
            ns(v, bare, tier, "net")
        ),
        format!("{} mounts; {}", opt(v.mounts), ns(v, bare, tier, "mnt")),
        format!("{}; {}", v.hostname, ns(v, bare, tier, "uts")),
        ns(v, bare, tier, "ipc"),
        format!("uid {} gid {}; {}", v.uid, v.gid, ns(v, bare, tier, "user")),
        format!(
            "{mem}; {} CPUs allowed; {}",
            v.cpus_allowed,
            ns(v, bare, tier, "cgroup")
        ),
        format!("{} ({kernel_note})", v.kernel_release),
        paths,
    ]
}

/// One row per tier of the run, in spectrum order.
pub fn matrix(r: &Results) -> Vec<Row> {
    let bare = r
        .tiers
        .iter()
        .find(|t| t.tier == Tier::Bare)
        .and_then(|t| t.isolation.as_ref());
    let mut tiers: Vec<_> = r.tiers.iter().collect();
    tiers.sort_by_key(|t| t.tier);
    tiers
        .into_iter()
        .map(|t| Row {
            tier: t.tier,
            cells: t.isolation.as_ref().map(|v| cells(r, v, bare, t.tier)),
        })
        .collect()
}
