//! `lxc`: the same rootfs run by `lxc-execute` (LXC's application containers: `init.lxc` is
//! PID 1 and the agent its child, so the agent sees itself as pid 2). The configuration is a
//! per-launch file written by isobench; containers live under an lxcpath in the run's scratch
//! area, so nothing goes to /var/lib/lxc.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::path::Path;

use crate::host::cgroup::{budget_memory_bytes, cpu_list, cpu_quota_us};
use crate::model::budget::Budget;
use crate::model::facts::CgroupLayout;

/// What one LXC launch needs.
pub struct LxcLaunch<'a> {
    pub rootfs: &'a Path,
    pub task_json: &'a str,
    pub budget: &'a Budget,
    pub layout: CgroupLayout,
    /// Share the host's network namespace (the `net` workload) instead of an empty one.
    pub share_host_net: bool,
    /// Host directory bind-mounted at /volume.
    pub volume: Option<&'a Path>,
    /// Cgroup directory, relative to the cgroup root (`isobench-lxc-<run>/<name>`).
    pub cgroup_dir: &'a str,
    /// `pids.max` of the container's cgroup (None where no pids controller is mounted: LXC
    /// fails on a key it cannot write).
    pub pids_max: Option<u64>,
}

/// The LXC configuration file of one launch.
pub fn config(l: &LxcLaunch<'_>) -> String {
    let mut s = String::new();
    let mut line = |k: &str, v: &str| {
        let _ = writeln!(s, "{k} = {v}");
    };
    line("lxc.uts.name", "isobench");
    line("lxc.rootfs.path", &format!("dir:{}", l.rootfs.display()));
    line(
        "lxc.net.0.type",
        if l.share_host_net { "none" } else { "empty" },
    );
    line(
        "lxc.mount.auto",
        if l.share_host_net {
            "proc:mixed"
        } else {
            "proc:mixed sys:ro"
        },
    );
    if let Some(v) = l.volume {
        line(
            "lxc.mount.entry",
            &format!("{} volume none rbind,create=dir 0 0", v.display()),
        );
    }
    line("lxc.environment", "PATH=/bin");
    line("lxc.environment", &format!("ISOBENCH_TASK={}", l.task_json));
    line("lxc.apparmor.profile", "unconfined");
    line("lxc.cgroup.dir", l.cgroup_dir);
    let mem = budget_memory_bytes(l.budget);
    let cpus = cpu_list(&l.budget.cpus);
    let (quota, period) = cpu_quota_us(l.budget.cpus.len());
    match l.layout {
        CgroupLayout::V2 => {
            line("lxc.cgroup2.memory.max", &mem.to_string());
            line("lxc.cgroup2.cpuset.cpus", &cpus);
            if quota > 0 {
                line("lxc.cgroup2.cpu.max", &format!("{quota} {period}"));
            }
            if let Some(n) = l.pids_max {
                line("lxc.cgroup2.pids.max", &n.to_string());
            }
        }
        _ => {
            line("lxc.cgroup.memory.limit_in_bytes", &mem.to_string());
            line("lxc.cgroup.cpuset.cpus", &cpus);
            if quota > 0 {
                line("lxc.cgroup.cpu.cfs_period_us", &period.to_string());
                line("lxc.cgroup.cpu.cfs_quota_us", &quota.to_string());
            }
            if let Some(n) = l.pids_max {
                line("lxc.cgroup.pids.max", &n.to_string());
            }
        }
    }
    s
}

/// `lxc-execute`'s arguments for one launch (the config file, the lxcpath, a log file for
/// errors).
pub fn run_args(lxcpath: &Path, name: &str, conf: &Path, log: &Path) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["-P".into(), lxcpath.into(), "-n".into(), name.into()];
    a.extend(["-f".into(), conf.into(), "-o".into(), log.into()]);
    a.extend(
        ["-l", "ERROR", "--", crate::host::rootfs::AGENT_IN_ROOTFS]
            .into_iter()
            .map(OsString::from),
    );
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_carries_budget_task_and_paths() {
        let b = Budget {
            cpus: vec![0, 1],
            memory_mib: 512,
        };
        let c = config(&LxcLaunch {
            rootfs: Path::new("/r/rootfs"),
            task_json: r#"{"workload":{"kind":"noop"}}"#,
            budget: &b,
            layout: CgroupLayout::Hybrid,
            share_host_net: false,
            volume: Some(Path::new("/r/volume")),
            cgroup_dir: "isobench-lxc-x/isobench-x-1",
            pids_max: Some(4096),
        });
        assert!(c.contains("lxc.rootfs.path = dir:/r/rootfs\n"));
        assert!(c.contains("lxc.net.0.type = empty\n"));
        assert!(c.contains("lxc.cgroup.memory.limit_in_bytes = 536870912\n"));
        assert!(c.contains("lxc.cgroup.cpuset.cpus = 0-1\n"));
        assert!(c.contains("lxc.cgroup.cpu.cfs_quota_us = 200000\n"));
        assert!(c.contains("lxc.cgroup.pids.max = 4096\n"));
        assert!(c.contains("lxc.cgroup.dir = isobench-lxc-x/isobench-x-1\n"));
        assert!(c.contains("lxc.mount.entry = /r/volume volume none rbind,create=dir 0 0\n"));
        assert!(c.contains(r#"ISOBENCH_TASK={"workload":{"kind":"noop"}}"#));
    }

    #[test]
    fn v2_config_and_no_pids_controller() {
        let b = Budget {
            cpus: vec![0],
            memory_mib: 64,
        };
        let mut l = LxcLaunch {
            rootfs: Path::new("/r/rootfs"),
            task_json: "{}",
            budget: &b,
            layout: CgroupLayout::V2,
            share_host_net: true,
            volume: None,
            cgroup_dir: "isobench-lxc-x/isobench-x-1",
            pids_max: Some(4096),
        };
        let c = config(&l);
        assert!(c.contains("lxc.cgroup2.pids.max = 4096\n"));
        assert!(c.contains("lxc.cgroup2.memory.max = 67108864\n"));
        l.pids_max = None;
        l.layout = CgroupLayout::V1;
        assert!(!config(&l).contains("pids.max"));
    }
}
