//! What the agent sees from inside: the isolation view, observed, never assumed.

use std::collections::BTreeMap;
use std::path::Path;

use crate::protocol::IsolationView;

/// Observe the sandbox. Works without /proc and /sys (fields become None or empty).
pub fn observe(probe_paths: &[String]) -> IsolationView {
    let uts = nix::sys::utsname::uname().ok();
    let mut interfaces: Vec<String> = nix::ifaddrs::getifaddrs()
        .map(|it| it.map(|i| i.interface_name).collect())
        .unwrap_or_default();
    interfaces.sort();
    interfaces.dedup();
    let visible_processes = std::fs::read_dir("/proc").ok().map(|d| {
        d.flatten()
            .filter(|e| {
                e.file_name()
                    .to_str()
                    .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
            })
            .count()
    });
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .ok()
        .map(|s| s.lines().count());
    let mut namespaces = BTreeMap::new();
    if let Ok(d) = std::fs::read_dir("/proc/self/ns") {
        for e in d.flatten() {
            if let Ok(t) = std::fs::read_link(e.path()) {
                namespaces.insert(
                    e.file_name().to_string_lossy().into_owned(),
                    t.to_string_lossy().into_owned(),
                );
            }
        }
    }
    let mut root_entries: Vec<String> = std::fs::read_dir("/")
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    root_entries.sort();
    IsolationView {
        pid: nix::unistd::getpid().as_raw(),
        ppid: nix::unistd::getppid().as_raw(),
        uid: nix::unistd::getuid().as_raw(),
        gid: nix::unistd::getgid().as_raw(),
        hostname: nix::unistd::gethostname()
            .map(|h| h.to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel_release: uts
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        interfaces,
        visible_processes,
        mounts,
        namespaces,
        cgroup: std::fs::read_to_string("/proc/self/cgroup").ok(),
        memory_limit_bytes: memory_limit(),
        cpus_allowed: nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .map(|s| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&i| s.is_set(i).unwrap_or(false))
                    .count()
            })
            .unwrap_or(0),
        extra_fds: extra_fds(),
        cwd: std::env::current_dir()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        root_entries,
        visible_paths: probe_paths
            .iter()
            .map(|p| (p.clone(), Path::new(p).exists()))
            .collect(),
    }
}

/// The memory limit in force, if a cgroup filesystem is visible (v2 memory.max or v1
/// memory.limit_in_bytes). "max" or the v1 "unlimited" sentinel count as no limit.
fn memory_limit() -> Option<u64> {
    for f in [
        "/sys/fs/cgroup/memory.max",
        "/sys/fs/cgroup/memory/memory.limit_in_bytes",
    ] {
        if let Ok(s) = std::fs::read_to_string(f) {
            if let Ok(v) = s.trim().parse::<u64>() {
                if v < (1u64 << 60) {
                    return Some(v);
                }
            }
        }
    }
    None
}

/// File descriptors open besides stdin/stdout/stderr (a leaked fd into a sandbox shows here).
fn extra_fds() -> Vec<i32> {
    (3..1024)
        .filter(|&fd| nix::fcntl::fcntl(fd, nix::fcntl::FcntlArg::F_GETFD).is_ok())
        .collect()
}
