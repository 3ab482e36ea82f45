//! Every count, size and duration a scenario or the command line can give, bounded at parse time:
//! first against fixed sane maxima ([`check_scenario`], no I/O), then against this machine
//! ([`check_machine`]: memory, free disk, CPUs, pids). A value out of bounds is an error that
//! names the field, the bound and what to do, before anything is created.

use std::path::{Path, PathBuf};

use crate::model::scenario::Scenario;
use crate::model::tier::Tier;
use crate::workload::{CpuParams, DensityParams, FsParams, MemoryParams, NetParams, Workload};

/// Most measured launches per tier and workload (`-n`, `runs`, `min_runs`).
pub const MAX_RUNS: u32 = 100_000;
/// Most unrecorded warmup launches.
pub const MAX_WARMUP: u32 = 10_000;
/// Longest per-tier time budget: one week.
pub const MAX_TIME_BUDGET_S: f64 = 7.0 * 86_400.0;
/// Most CPUs a budget can ask for.
pub const MAX_CPUS: usize = 4_096;
/// Largest budget, array, file or stream size: 1 TiB.
pub const MAX_SIZE_MIB: u64 = 1 << 20;
/// Longest phase of a workload (time budgets, stream duration): one hour.
pub const MAX_PHASE_MS: u64 = 3_600_000;
/// Longest wait (connect timeout, density settle time): ten minutes.
pub const MAX_WAIT_MS: u64 = 600_000;
/// Most threads of the cpu workload.
pub const MAX_THREADS: usize = 4_096;
/// Most idle instances of a density measurement (its largest count).
pub const MAX_INSTANCES: u32 = 1_000;
/// Most counts a density measurement may list (each is a start of that many instances).
pub const MAX_DENSITY_COUNTS: usize = 16;
/// Most operations of a counted phase (cpu rounds, chase loads).
pub const MAX_OPS: u64 = 1_000_000_000_000;
/// Most items of a counted phase (random I/O, files, fsyncs, transactions, STREAM repeats).
pub const MAX_COUNT: u64 = 100_000_000;
/// Largest request or response of the net workload: 1 MiB.
pub const MAX_MESSAGE_BYTES: u32 = 1 << 20;
/// Largest block of sequential I/O: 64 MiB.
pub const MAX_BLOCK_KIB: u64 = 65_536;

/// Fields the harness fills in for each tier; a scenario that sets them is refused.
pub const HOST_ASSIGNED: [(&str, &str); 4] = [
    (
        "dir",
        "isobench points the fs workload at each tier's data path: remove `dir` and choose the path with path = \"rootfs\" or \"volume\"",
    ),
    (
        "peer",
        "isobench starts the net workload's peer for each tier: remove `peer` and choose the path with path = \"direct\" or \"nat\"",
    ),
    ("bind", "isobench binds the redis server to each tier's own address: remove `bind`"),
    ("port", "isobench picks the redis server's port for each tier: remove `port`"),
];

/// `-n N` of the command line.
pub fn check_runs_override(n: u32) -> Result<(), String> {
    if n == 0 || n > MAX_RUNS {
        return Err(format!(
            "-n {n}: give between 1 and {MAX_RUNS} launches per tier"
        ));
    }
    Ok(())
}

fn within<T: PartialOrd + std::fmt::Display>(
    what: &str,
    v: T,
    lo: T,
    hi: T,
    unit: &str,
) -> Result<(), String> {
    if v < lo || v > hi {
        return Err(format!(
            "{what} = {v} is out of bounds: give {lo} to {hi}{unit}"
        ));
    }
    Ok(())
}

/// The label of workload `i` in messages: `[[workload]] #2 (fs)`.
fn label(i: usize, w: &Workload) -> String {
    format!("[[workload]] #{} ({})", i + 1, w.name())
}

/// Fixed maxima, no I/O: every repetition plan, the budget and every workload's parameters.
pub fn check_scenario(s: &Scenario) -> Result<(), String> {
    within("[budget] cpus", s.budget.cpus, 1, MAX_CPUS, "")?;
    within(
        "[budget] memory_mib",
        s.budget.memory_mib,
        64,
        MAX_SIZE_MIB,
        " MiB",
    )?;
    for (name, p) in std::iter::once(("defaults".to_string(), &s.defaults))
        .chain(s.tier.iter().map(|(t, p)| (format!("tier.{t}"), p)))
    {
        if let Some(r) = p.runs {
            within(&format!("[{name}] runs"), r, 1, MAX_RUNS, "")?;
        }
        if let Some(r) = p.min_runs {
            within(&format!("[{name}] min_runs"), r, 1, MAX_RUNS, "")?;
        }
        if let Some(w) = p.warmup {
            within(&format!("[{name}] warmup"), w, 0, MAX_WARMUP, "")?;
        }
        if let Some(b) = p.time_budget_s {
            if !(b.is_finite() && b > 0.0 && b <= MAX_TIME_BUDGET_S) {
                return Err(format!(
                    "[{name}] time_budget_s = {b} is out of bounds: give a number of seconds above 0 and at most {MAX_TIME_BUDGET_S}"
                ));
            }
        }
        if let Some(a) = p.app_scale {
            if !(a.is_finite() && a > 0.0 && a <= 1.0) {
                return Err(format!(
                    "[{name}] app_scale = {a} is out of bounds: give a factor above 0 and at most 1 (e.g. 0.05: every redis/mysql point 5 % as long)"
                ));
            }
        }
    }
    for (i, w) in s.workloads.iter().enumerate() {
        let l = label(i, w);
        match w {
            Workload::Noop | Workload::Idle(_) => {}
            Workload::Cpu(p) => cpu(&l, p)?,
            Workload::Memory(p) => memory(&l, p, s.budget.memory_mib)?,
            Workload::Fs(p) => fs(&l, p)?,
            Workload::Net(p) => net(&l, p)?,
            Workload::Density(p) => density(&l, p)?,
            Workload::Redis(p) => p.check().map_err(|e| format!("{l} {e}"))?,
            Workload::Mysql(p) => {
                p.check().map_err(|e| format!("{l} {e}"))?;
                // Room for the server beyond its buffer pool, MiB (measured here: RSS 138 MiB with a
                // 128 MiB pool serving the 100,000-row table, the pool not full).
                const MYSQL_OVERHEAD_MIB: u64 = 128;
                if p.buffer_pool_mib + MYSQL_OVERHEAD_MIB > s.budget.memory_mib {
                    return Err(format!(
                        "{l} buffer_pool_mib = {} does not fit the tier's [budget] memory_mib = {} with the server's own ~{MYSQL_OVERHEAD_MIB} MiB: lower buffer_pool_mib or raise memory_mib",
                        p.buffer_pool_mib, s.budget.memory_mib
                    ));
                }
            }
        }
    }
    Ok(())
}

fn cpu(l: &str, p: &CpuParams) -> Result<(), String> {
    within(
        &format!("{l} ops_per_thread"),
        p.ops_per_thread,
        1,
        MAX_OPS,
        "",
    )?;
    within(
        &format!("{l} threads"),
        p.threads,
        0,
        MAX_THREADS,
        " (0 = one per CPU)",
    )?;
    within(
        &format!("{l} time_budget_ms"),
        p.time_budget_ms,
        1,
        MAX_PHASE_MS,
        " ms",
    )
}

fn memory(l: &str, p: &MemoryParams, budget_mib: u64) -> Result<(), String> {
    within(
        &format!("{l} array_mib"),
        p.array_mib,
        1,
        MAX_SIZE_MIB,
        " MiB",
    )?;
    within(
        &format!("{l} chase_mib"),
        p.chase_mib,
        1,
        MAX_SIZE_MIB,
        " MiB",
    )?;
    within(
        &format!("{l} repeats"),
        u64::from(p.repeats),
        1,
        MAX_COUNT,
        "",
    )?;
    within(
        &format!("{l} chase_accesses"),
        p.chase_accesses,
        1,
        MAX_OPS,
        "",
    )?;
    within(
        &format!("{l} time_budget_ms"),
        p.time_budget_ms,
        1,
        MAX_PHASE_MS,
        " ms",
    )?;
    // The agent holds the three STREAM arrays at once, then the chase buffer alone, inside the
    // budget's memory limit.
    let arrays = p.array_mib.saturating_mul(3);
    if arrays > budget_mib {
        return Err(format!(
            "{l}: three arrays of array_mib = {} ({arrays} MiB) do not fit [budget] memory_mib = {budget_mib}: lower array_mib to at most {} or raise memory_mib",
            p.array_mib,
            budget_mib / 3
        ));
    }
    if p.chase_mib > budget_mib {
        return Err(format!(
            "{l}: chase_mib = {} does not fit [budget] memory_mib = {budget_mib}: lower chase_mib or raise memory_mib",
            p.chase_mib
        ));
    }
    Ok(())
}

fn fs(l: &str, p: &FsParams) -> Result<(), String> {
    within(
        &format!("{l} file_mib"),
        p.file_mib,
        1,
        MAX_SIZE_MIB,
        " MiB",
    )?;
    within(
        &format!("{l} seq_block_kib"),
        p.seq_block_kib,
        4,
        MAX_BLOCK_KIB,
        " KiB",
    )?;
    if p.seq_block_kib % 4 != 0 {
        return Err(format!(
            "{l} seq_block_kib = {} is not a multiple of 4: give 4, 8, ... (e.g. 1024)",
            p.seq_block_kib
        ));
    }
    within(&format!("{l} rand_ops"), p.rand_ops, 0, MAX_COUNT, "")?;
    within(&format!("{l} meta_files"), p.meta_files, 0, MAX_COUNT, "")?;
    within(&format!("{l} fsync_ops"), p.fsync_ops, 0, MAX_COUNT, "")?;
    within(
        &format!("{l} time_budget_ms"),
        p.time_budget_ms,
        1,
        MAX_PHASE_MS,
        " ms",
    )
}

fn net(l: &str, p: &NetParams) -> Result<(), String> {
    within(
        &format!("{l} stream_duration_ms"),
        p.stream_duration_ms,
        1,
        MAX_PHASE_MS,
        " ms",
    )?;
    within(
        &format!("{l} stream_max_mib"),
        p.stream_max_mib,
        1,
        MAX_SIZE_MIB,
        " MiB",
    )?;
    within(
        &format!("{l} stream_block_kib"),
        p.stream_block_kib,
        1,
        MAX_BLOCK_KIB,
        " KiB",
    )?;
    within(
        &format!("{l} rr_transactions"),
        p.rr_transactions,
        0,
        MAX_COUNT,
        "",
    )?;
    within(
        &format!("{l} rr_request_bytes"),
        p.rr_request_bytes,
        1,
        MAX_MESSAGE_BYTES,
        " bytes",
    )?;
    within(
        &format!("{l} rr_response_bytes"),
        p.rr_response_bytes,
        1,
        MAX_MESSAGE_BYTES,
        " bytes",
    )?;
    within(
        &format!("{l} time_budget_ms"),
        p.time_budget_ms,
        1,
        MAX_PHASE_MS,
        " ms",
    )?;
    within(
        &format!("{l} connect_timeout_ms"),
        p.connect_timeout_ms,
        1,
        MAX_WAIT_MS,
        " ms",
    )
}

fn density(l: &str, p: &DensityParams) -> Result<(), String> {
    p.check_counts(MAX_INSTANCES, MAX_DENSITY_COUNTS)
        .map_err(|e| format!("{l} {e}"))?;
    within(
        &format!("{l} settle_ms"),
        p.settle_ms,
        0,
        MAX_WAIT_MS,
        " ms",
    )
}

/// Refuse host-assigned fields (`dir`, `peer`) in the scenario's `[[workload]]` tables, naming
/// the field. Runs on the raw TOML, so results and tasks (which carry the assigned values) still
/// parse.
pub fn check_host_assigned(doc: &toml::Table) -> Result<(), String> {
    let Some(toml::Value::Array(ws)) = doc.get("workload") else {
        return Ok(());
    };
    for (i, w) in ws.iter().enumerate() {
        let Some(t) = w.as_table() else { continue };
        for (field, fix) in HOST_ASSIGNED {
            if t.contains_key(field) {
                let kind = t.get("kind").and_then(|k| k.as_str()).unwrap_or("?");
                return Err(format!(
                    "[[workload]] #{} ({kind}): `{field}` is assigned by the host, not by a scenario: {fix}",
                    i + 1
                ));
            }
        }
    }
    Ok(())
}

/// What this machine can give a run: read once, before anything is created.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Machine {
    /// MemAvailable, MiB.
    pub mem_available_mib: Option<u64>,
    /// Free space for an unprivileged-or-root writer on the filesystem that holds the state
    /// directory (where the fs workload's files and the VM disk images go), MiB.
    pub free_disk_mib: Option<u64>,
    /// The existing directory whose filesystem `free_disk_mib` was read from.
    pub disk_path: PathBuf,
    /// CPUs this process may run on.
    pub cpus: Option<usize>,
    /// Tasks the kernel allows: the smaller of threads-max and pid_max.
    pub max_tasks: Option<u64>,
}

impl Machine {
    /// Read the machine; `state_root` may not exist yet (its nearest existing ancestor is used).
    pub fn probe(state_root: &Path) -> Machine {
        let mut disk_path = state_root.to_path_buf();
        while !disk_path.is_dir() {
            match disk_path.parent() {
                Some(p) if !p.as_os_str().is_empty() => disk_path = p.to_path_buf(),
                _ => {
                    disk_path = PathBuf::from(".");
                    break;
                }
            }
        }
        // Blocks free to unprivileged writers, in fragment-size units (statvfs(3)).
        let free_disk_mib = nix::sys::statvfs::statvfs(&disk_path)
            .ok()
            .map(|v| v.blocks_available().saturating_mul(v.fragment_size()) >> 20);
        let read_u64 =
            |p: &str| -> Option<u64> { std::fs::read_to_string(p).ok()?.trim().parse().ok() };
        let max_tasks = match (
            read_u64("/proc/sys/kernel/threads-max"),
            read_u64("/proc/sys/kernel/pid_max"),
        ) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let cpus = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
            .ok()
            .map(|set| {
                (0..nix::sched::CpuSet::count())
                    .filter(|&i| set.is_set(i).unwrap_or(false))
                    .count()
            });
        Machine {
            mem_available_mib: crate::host::proc::meminfo_kib("MemAvailable").map(|k| k >> 10),
            free_disk_mib,
            disk_path,
            cpus,
            max_tasks,
        }
    }
}

/// The scenario against this machine, for the tiers that will run. Unknown facts (None) are not
/// checked.
pub fn check_machine(s: &Scenario, tiers: &[Tier], m: &Machine) -> Result<(), String> {
    if let Some(n) = m.cpus {
        if s.budget.cpus > n {
            return Err(format!(
                "[budget] cpus = {} but this process may use only {n} CPU(s): lower cpus to at most {n}",
                s.budget.cpus
            ));
        }
    }
    let any_vm = tiers.iter().any(|t| t.is_vm());
    if let Some(avail) = m.mem_available_mib {
        if s.budget.memory_mib > avail {
            return Err(format!(
                "[budget] memory_mib = {} is more than this machine's available memory ({avail} MiB MemAvailable): lower memory_mib",
                s.budget.memory_mib
            ));
        }
        for (i, w) in s.workloads.iter().enumerate() {
            if let Workload::Density(p) = w {
                // Each VM instance reserves the budget's RAM; process instances are small.
                if any_vm {
                    let need = u64::from(p.max_count()).saturating_mul(s.budget.memory_mib);
                    if need > avail {
                        return Err(format!(
                            "{}: {} VM instances (the largest of counts) of {} MiB need {need} MiB but only {avail} MiB is available (MemAvailable): lower the counts to at most {} or [budget] memory_mib",
                            label(i, w),
                            p.max_count(),
                            s.budget.memory_mib,
                            avail / s.budget.memory_mib.max(1)
                        ));
                    }
                }
            }
        }
    }
    if let Some(free) = m.free_disk_mib {
        for (i, w) in s.workloads.iter().enumerate() {
            if let Workload::Fs(p) = w {
                if p.file_mib > free {
                    return Err(format!(
                        "{}: file_mib = {} is more than the {free} MiB free on the filesystem of {}: lower file_mib or free some space (or give another --state-dir)",
                        label(i, w),
                        p.file_mib,
                        m.disk_path.display()
                    ));
                }
            }
        }
    }
    for (i, w) in s.workloads.iter().enumerate() {
        let found = match w {
            Workload::Redis(p) => p.check_binaries(),
            Workload::Mysql(p) => p.check_binaries(),
            _ => Ok(()),
        };
        found.map_err(|e| format!("{}: {e}", label(i, w)))?;
    }
    if let Some(max) = m.max_tasks {
        // Leave half of the machine's tasks to everything else.
        let room = max / 2;
        for (i, w) in s.workloads.iter().enumerate() {
            let (what, n) = match w {
                Workload::Cpu(p) => ("threads", p.threads as u64),
                Workload::Density(p) => ("the largest of counts", u64::from(p.max_count())),
                _ => continue,
            };
            if n > room {
                return Err(format!(
                    "{}: {what} = {n} is more than half of the tasks this kernel allows ({max}, the smaller of kernel.threads-max and kernel.pid_max): lower {what} to at most {room}",
                    label(i, w)
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scenario(extra: &str) -> Result<Scenario, String> {
        Scenario::parse(&format!("name='x'\n{extra}"), "x.toml").map_err(|e| e.to_string())
    }

    #[test]
    fn fixed_maxima_name_the_field() {
        for (text, field) in [
            (
                "[defaults]\nruns = 4294967295\n[[workload]]\nkind='noop'\n",
                "runs",
            ),
            (
                "[defaults]\nwarmup = 100000\n[[workload]]\nkind='noop'\n",
                "warmup",
            ),
            ("[[workload]]\nkind='fs'\nfile_mib = 0\n", "file_mib"),
            (
                "[[workload]]\nkind='fs'\nseq_block_kib = 6\n",
                "seq_block_kib",
            ),
            (
                "[[workload]]\nkind='memory'\narray_mib = 200\n",
                "array_mib",
            ),
            ("[[workload]]\nkind='cpu'\nthreads = 100000\n", "threads"),
            (
                "[[workload]]\nkind='density'\ninstances = 4\n",
                "counts = [0, 1, 2, 4, 8]",
            ),
            (
                "[[workload]]\nkind='density'\ncounts = [2, 2]\n",
                "two distinct",
            ),
            ("[[workload]]\nkind='density'\ncounts = []\n", "counts"),
            (
                "[[workload]]\nkind='density'\ncounts = [0, 5000]\n",
                "counts entry",
            ),
            (
                "[[workload]]\nkind='net'\nconnect_timeout_ms = 0\n",
                "connect_timeout_ms",
            ),
            (
                "[[workload]]\nkind='mysql'\nthreads = [0]\n",
                "threads entry = 0",
            ),
            (
                "[budget]\nmemory_mib = 200\n[[workload]]\nkind='mysql'\n",
                "buffer_pool_mib = 128 does not fit",
            ),
            ("[[workload]]\nkind='fs'\ndir = '/etc'\n", "`dir`"),
            ("[[workload]]\nkind='net'\npeer = '1.2.3.4:5'\n", "`peer`"),
        ] {
            let e = scenario(text).unwrap_err();
            assert!(e.contains("x.toml") && e.contains(field), "{text}: {e}");
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn machine_bounds() {
        let s = scenario("[budget]\nmemory_mib = 1024\n[[workload]]\nkind='fs'\nfile_mib = 100\n[[workload]]\nkind='density'\ncounts = [0, 2, 4]\n[[workload]]\nkind='cpu'\nthreads = 64\n").unwrap();
        let roomy = Machine {
            mem_available_mib: Some(8192),
            free_disk_mib: Some(1000),
            disk_path: PathBuf::from("/var"),
            cpus: Some(2),
            max_tasks: Some(1000),
        };
        check_machine(&s, &[Tier::Bare, Tier::Emulated], &roomy).unwrap();
        let e = check_machine(
            &s,
            &[Tier::Bare],
            &Machine {
                mem_available_mib: Some(512),
                ..roomy.clone()
            },
        )
        .unwrap_err();
        assert!(
            e.contains("memory_mib") && e.contains("MemAvailable"),
            "{e}"
        );
        // Four VMs of 1 GiB do not fit 3 GiB; process instances do.
        let small = Machine {
            mem_available_mib: Some(3072),
            ..roomy.clone()
        };
        check_machine(&s, &[Tier::Bare], &small).unwrap();
        let e = check_machine(&s, &[Tier::Emulated], &small).unwrap_err();
        assert!(e.contains("4 VM instances") && e.contains("counts"), "{e}");
        let e = check_machine(
            &s,
            &[Tier::Bare],
            &Machine {
                free_disk_mib: Some(50),
                ..roomy.clone()
            },
        )
        .unwrap_err();
        assert!(e.contains("file_mib") && e.contains("/var"), "{e}");
        let e = check_machine(
            &s,
            &[Tier::Bare],
            &Machine {
                max_tasks: Some(100),
                ..roomy.clone()
            },
        )
        .unwrap_err();
        assert!(e.contains("threads = 64"), "{e}");
        let e = check_machine(
            &s,
            &[Tier::Bare],
            &Machine {
                cpus: Some(0),
                ..roomy
            },
        )
        .unwrap_err();
        assert!(e.contains("cpus"), "{e}");
    }

    #[test]
    fn runs_override_bounds() {
        assert!(check_runs_override(1).is_ok());
        assert!(check_runs_override(MAX_RUNS).is_ok());
        assert!(check_runs_override(0).is_err());
        assert!(check_runs_override(MAX_RUNS + 1)
            .unwrap_err()
            .contains("100000"));
    }

    #[test]
    fn probe_reads_this_machine() {
        let m = Machine::probe(Path::new("/nonexistent/isobench/state"));
        assert_eq!(m.disk_path, PathBuf::from("/"));
        assert!(m.mem_available_mib.is_some_and(|v| v > 0));
        assert!(m.free_disk_mib.is_some());
        assert!(m.cpus.is_some_and(|n| n >= 1));
        assert!(m.max_tasks.is_some_and(|n| n > 0));
    }
}
