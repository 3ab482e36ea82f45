//! Readers of /proc: memory figures, process identity (pid + start time), process trees and the
//! environment marker that ties a process to its run; and sysctl restoration.

use std::path::Path;

use nix::unistd::Pid;

/// The environment variable that marks a process the harness started directly.
pub const RUN_ID_ENV: &str = "ISOBENCH_RUN_ID";

/// A value from /proc/meminfo, in KiB.
pub fn meminfo_kib(key: &str) -> Option<u64> {
    let s = std::fs::read_to_string("/proc/meminfo").ok()?;
    s.lines()
        .find(|l| l.split(':').next() == Some(key))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn process_start_time(pid: i32) -> Option<u64> {
    if pid <= 0 {
        return None;
    }
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = s.get(s.rfind(')')? + 2..)?;
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Put a sysctl under /proc/sys back to `value`.
pub fn restore_sysctl(path: &Path, value: &str) -> Result<(), String> {
    if !path.starts_with("/proc/sys/") || path.components().any(|c| c.as_os_str() == "..") {
        return Err(format!(
            "ledger names {} as a sysctl, which is not under /proc/sys: edit the ledger by hand",
            path.display()
        ));
    }
    std::fs::write(path, value).map_err(|e| {
        format!(
            "restoring {} to {value:?}: {e}; set it by hand (sysctl -w)",
            path.display()
        )
    })
}

/// `root` and every process below it (from /proc/*/stat parent links), root first.
pub fn descendants(root: Pid) -> Vec<Pid> {
    let mut parent_of: Vec<(i32, i32)> = vec![];
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                continue;
            };
            // Fields after the command name (which may hold spaces and parentheses).
            let Some(rest) = stat.rfind(')').map(|i| &stat[i + 2..]) else {
                continue;
            };
            if let Some(ppid) = rest.split_whitespace().nth(1).and_then(|p| p.parse().ok()) {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut out = vec![root];
    let mut i = 0;
    while i < out.len() {
        let p = out[i].as_raw();
        out.extend(
            parent_of
                .iter()
                .filter(|(_, pp)| *pp == p)
                .map(|(c, _)| Pid::from_raw(*c)),
        );
        i += 1;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn descendants_start_with_the_root() {
        assert_eq!(descendants(Pid::this())[0], Pid::this());
    }

    #[test]
    fn start_time_of_self() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }
}
