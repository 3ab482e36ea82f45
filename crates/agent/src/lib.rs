//! The in-sandbox side: signal ready, run the task's workload, report one JSON line, exit.
//!
//! The same code runs as a child process, inside a chroot, as PID 1 of a container and as /init
//! of a VM guest. Nothing here may assume a /proc, a /sys or a writable /.

pub mod guest;
pub mod probe;
pub mod workloads;

// The protocol crate under the paths this code has always used (`crate::protocol::Task`).
use isobench_protocol as protocol;
use isobench_protocol::workload;

use std::io::Write;

use crate::protocol::{AgentReport, Task, READY_LINE, TASK_ENV};
use crate::workload::Workload;

/// Agent entry point.
pub fn main() -> ! {
    // An application's data (mysql's data directory) is made before ready: off its start clock.
    workloads::mysql::prepare_before_ready();
    // Ready first: the host's launch->ready clock stops on this line.
    let ready = format!("{READY_LINE}\n");
    // SAFETY: write(2) on fd 1 with a valid buffer and length.
    unsafe { libc::write(1, ready.as_ptr().cast(), ready.len()) };
    die_with_parent();
    install_signal_handlers();

    let task = match std::env::var(TASK_ENV) {
        Ok(s) => Task::decode(&s),
        Err(_) => Err(format!("no task: set {TASK_ENV} (the host does this)")),
    };
    let mut guest = None;
    let (report, code) = match task {
        Ok(task) => {
            let code = task.exit_code.unwrap_or(0);
            guest = task.guest.clone();
            // As /init of a VM: mounts, modules, network, disk before the workload.
            match task.guest.as_ref().map(guest::setup_once) {
                Some(Err(e)) => (
                    AgentReport {
                        workload: task.workload.name().into(),
                        error: Some(format!("guest setup: {e}")),
                        ..Default::default()
                    },
                    code,
                ),
                _ => (run(&task), code),
            }
        }
        Err(e) => (
            AgentReport {
                workload: "unknown".into(),
                error: Some(e),
                ..Default::default()
            },
            2,
        ),
    };
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{}", report.to_line());
    let _ = out.flush();
    drop(out);
    if let Some(g) = guest {
        // PID 1 of a VM: exiting would panic the kernel; power off instead (ends QEMU).
        guest::teardown(&g);
        guest::power_off()
    }
    std::process::exit(code)
}

/// Run the task and build the report. Never panics on a workload error: it is reported.
pub fn run(task: &Task) -> AgentReport {
    let mut report = AgentReport {
        workload: task.workload.name().into(),
        ..Default::default()
    };
    if task.probe {
        report.isolation = Some(probe::observe(&task.probe_paths));
    }
    let result: Result<Vec<crate::protocol::Metric>, String> = match &task.workload {
        Workload::Noop => Ok(vec![]),
        other => workloads::run(other),
    };
    match result {
        Ok(m) => report.metrics = m,
        Err(e) => report.error = Some(e),
    }
    let (rss, anon) = peak_memory_kib();
    report.peak_rss_kib = rss;
    report.peak_anon_kib = anon;
    report
}

/// The agent's own peak resident set, KiB, from its own address space (which execve replaces,
/// so it counts the agent alone): the larger of `VmHWM` (/proc/self/status) and the current
/// `Rss` of /proc/self/smaps_rollup. `VmHWM` comes from the kernel's RSS counters, which lag
/// behind the page tables on some kernels: before 6.2 each task keeps its own deltas and folds
/// them in only every 64 page faults, so a small process like the agent in a 6.1 VM guest reads
/// a few KiB; 6.2 to 6.15 read per-CPU counters without their pending batches. `smaps_rollup`
/// walks the page tables, so its `Rss` is exact, but only for now; the agent's set at report
/// time is its peak unless a workload freed memory, and then `VmHWM` (updated when memory is
/// unmapped) holds the peak. The guest's own /proc in a VM.
///
/// `getrusage`'s `ru_maxrss` is not used: it keeps the peak of the address space the process
/// had before execve, i.e. the harness's own peak for a process created by fork or vfork.
/// None when /proc is not mounted: absent, never a figure from somewhere else.
///
/// The second figure is the anonymous part of that peak ([`peak_anon_kib`]): how many of the
/// executable's file pages a fault maps is the kernel's policy (fault-around windows, whole
/// large folios since 6.x), so the same binary can read a few percent apart under two kernels
/// (the host's and a VM guest's) while its own memory is the same.
fn peak_memory_kib() -> (Option<u64>, Option<u64>) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return (None, None);
    };
    let rollup = std::fs::read_to_string("/proc/self/smaps_rollup").ok();
    (
        peak_kib(&status, rollup.as_deref()),
        rollup.and_then(|r| peak_anon_kib(&status, &r)),
    )
}

/// The anonymous (heap, stack, data written) part of the peak, KiB: the larger of the current
/// `Anonymous` of smaps_rollup and the peak ([`peak_kib`]) less the file-backed pages mapped
/// now (`Rss - Anonymous`). The agent never unmaps a file page, so the file pages it had at its
/// peak are at most those it has now: the figure is exact when no file page was first mapped
/// after the peak, and otherwise low by the few pages of code run after it (reporting).
/// None without smaps_rollup (old kernels, gVisor): the split cannot be read.
pub fn peak_anon_kib(status: &str, smaps_rollup: &str) -> Option<u64> {
    let peak = peak_kib(status, Some(smaps_rollup))?;
    let rss = kib_field(smaps_rollup, "Rss:")?;
    let anon = kib_field(smaps_rollup, "Anonymous:")?;
    let file = rss.saturating_sub(anon);
    Some(anon.max(peak.saturating_sub(file)))
}

/// The peak from the texts of /proc/self/status and (where the kernel has it)
/// /proc/self/smaps_rollup: see [`peak_memory_kib`].
pub fn peak_kib(status: &str, smaps_rollup: Option<&str>) -> Option<u64> {
    let hwm = vm_hwm_kib(status)?;
    let rss = smaps_rollup.and_then(|s| kib_field(s, "Rss:"));
    Some(rss.map_or(hwm, |r| r.max(hwm)))
}

/// `VmHWM` from the text of a /proc/<pid>/status file, in KiB (the kernel writes `kB`, which
/// means KiB). None when the line is missing or malformed (kernel threads have no VmHWM).
pub fn vm_hwm_kib(status: &str) -> Option<u64> {
    kib_field(status, "VmHWM:")
}

/// A `Name:   123 kB` line of a /proc file, in KiB.
fn kib_field(text: &str, name: &str) -> Option<u64> {
    let rest = text.lines().find_map(|l| l.strip_prefix(name))?.trim();
    let number = rest.strip_suffix("kB")?.trim();
    number.parse().ok()
}

/// When the host asks for it (`ISOBENCH_PARENT`), die with the harness: arm PR_SET_PDEATHSIG,
/// then check the parent is still the harness (it may have died before the prctl).
fn die_with_parent() {
    let Some(want) = std::env::var(crate::protocol::PARENT_ENV)
        .ok()
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return;
    };
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
    if nix::unistd::getppid().as_raw() != want {
        std::process::exit(125);
    }
}

extern "C" fn on_signal(sig: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(128 + sig) }
}

/// As PID 1 of a container the kernel delivers no signal without a handler: install handlers so
/// SIGTERM/SIGINT/SIGHUP end the agent with 128+signal, as for any other process.
fn install_signal_handlers() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: installing a handler that only calls _exit.
        unsafe {
            libc::signal(
                sig,
                on_signal as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

#[cfg(test)]
mod tests {
    use super::{peak_anon_kib, peak_kib, vm_hwm_kib};

    /// A /proc/self/status as Linux 6.x writes it (trimmed).
    const STATUS: &str = "Name:\tisobench-agent\nUmask:\t0022\nState:\tR (running)\n\
Tgid:\t4242\nPid:\t4242\nVmPeak:\t    4900 kB\nVmSize:\t    4884 kB\nVmLck:\t       0 kB\n\
VmPin:\t       0 kB\nVmHWM:\t    1456 kB\nVmRSS:\t    1452 kB\nRssAnon:\t      76 kB\n\
Threads:\t1\n";

    #[test]
    fn reads_vm_hwm_not_its_neighbours() {
        assert_eq!(vm_hwm_kib(STATUS), Some(1456));
    }

    #[test]
    fn absent_or_malformed_is_none() {
        // A kernel thread's status has no Vm* lines.
        assert_eq!(vm_hwm_kib("Name:\tkthreadd\nState:\tS (sleeping)\n"), None);
        assert_eq!(vm_hwm_kib(""), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t   12 MB\n"), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t  lots kB\n"), None);
        assert_eq!(vm_hwm_kib("VmHWM:\t 0 kB\n"), Some(0));
    }

    /// smaps_rollup as Linux 6.1 writes it (trimmed).
    const ROLLUP: &str = "55d0c0000000-7ffc00000000 ---p 00000000 00:00 0    [rollup]\n\
Rss:                1604 kB\nPss:                1580 kB\nPss_Anon:             96 kB\n\
Anonymous:            96 kB\n";

    #[test]
    fn the_anonymous_peak_is_the_peak_less_the_file_pages() {
        // Nothing freed: the peak is now, and its anonymous part is smaps_rollup's.
        assert_eq!(peak_anon_kib(STATUS, ROLLUP), Some(96));
        // A 64 MiB buffer freed before the report: the high-water mark less the 1508 KiB of
        // file pages mapped now.
        let freed = STATUS.replace("1456 kB\nVmRSS", "67000 kB\nVmRSS");
        assert_eq!(peak_anon_kib(&freed, ROLLUP), Some(67000 - 1508));
        // No Anonymous line (gVisor's smaps_rollup, if any): absent.
        assert_eq!(peak_anon_kib(STATUS, "Rss:   1604 kB\n"), None);
    }

    #[test]
    fn a_lagging_high_water_mark_gives_way_to_the_page_tables() {
        // A 6.1 guest: the task's RSS deltas were never folded in, VmHWM reads 4 kB.
        let stale = STATUS.replace("1456 kB\nVmRSS", "4 kB\nVmRSS");
        assert_eq!(peak_kib(&stale, Some(ROLLUP)), Some(1604));
        // A workload that freed a big buffer: the high-water mark holds the peak.
        let freed = STATUS.replace("1456 kB\nVmRSS", "67000 kB\nVmRSS");
        assert_eq!(peak_kib(&freed, Some(ROLLUP)), Some(67000));
        // No smaps_rollup (an old kernel, gVisor): VmHWM alone.
        assert_eq!(peak_kib(STATUS, None), Some(1456));
        assert_eq!(peak_kib(STATUS, Some("Rss: lots\n")), Some(1456));
        // No VmHWM: absent, whatever smaps_rollup says.
        assert_eq!(peak_kib("Name:\tx\n", Some(ROLLUP)), None);
    }

    #[test]
    fn this_process_has_one() {
        match std::fs::read_to_string("/proc/self/status") {
            Ok(s) => assert!(vm_hwm_kib(&s).is_some_and(|k| k > 0), "{s}"),
            Err(e) => println!("SKIPPED this_process_has_one: /proc/self/status unreadable ({e})"),
        }
    }
}
