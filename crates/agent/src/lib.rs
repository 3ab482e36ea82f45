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
            match task.guest.as_ref().map(guest::setup) {
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
    report.peak_rss_kib = peak_rss_kib();
    report
}

fn peak_rss_kib() -> Option<u64> {
    nix::sys::resource::getrusage(nix::sys::resource::UsageWho::RUSAGE_SELF)
        .ok()
        .and_then(|u| u64::try_from(u.max_rss()).ok())
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
