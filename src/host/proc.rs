//! Readers of /proc: memory figures, process identity (pid + start time) and the
//! environment marker that ties a process to its run; and sysctl restoration.

use std::path::Path;

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_time_of_self() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }
}
