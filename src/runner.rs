//! The measuring loop: prepare every available tier, run warmups and measured launches with the
//! tiers interleaved in rounds (so drift hits every tier alike), keep per-tier time budgets,
//! write the results after every round, and tear everything down on success, failure or Ctrl-C.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::backend::{
    self, Availability, Backend, BackendError, BackendOptions, Budget, Outcome, RunEnv,
};
use crate::host::HostFacts;
use crate::protocol::{Better, Task};
use crate::results::{Failure, Results, Sample, TierRecord, TierStatus, SCHEMA_VERSION};
use crate::scenario::{ResolvedPlan, Scenario};
use crate::state::{Ledger, RunState, StateDir};
use crate::tier::Tier;
use crate::workload::Workload;

/// Completed rounds are saved at most this often (and always at the end).
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

/// A tier that fails this many launches in a row is dropped from the run.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// Everything `run` needs, already validated.
#[derive(Debug, Clone)]
pub struct RunConfig {
    pub scenario: Scenario,
    pub tiers: Vec<Tier>,
    pub runs_override: Option<u32>,
    pub out_dir: PathBuf,
    /// Point `<parent>/latest` at the run directory.
    pub link_latest: bool,
    pub state_root: PathBuf,
    /// Cache kept across runs (guest kernel).
    pub cache_dir: PathBuf,
    pub agent: PathBuf,
    pub options: BackendOptions,
    pub quiet: bool,
}

/// How a run ended.
pub struct RunOutcome {
    pub results: Results,
    pub out_dir: PathBuf,
}

/// The agent binary: `$ISOBENCH_AGENT`, or `isobench-agent` next to this executable.
pub fn locate_agent() -> anyhow::Result<PathBuf> {
    if let Some(p) = std::env::var_os("ISOBENCH_AGENT") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!(
                "ISOBENCH_AGENT={} does not exist: point it at the isobench-agent binary",
                p.display()
            );
        }
        return Ok(p);
    }
    let exe = std::env::current_exe().context("finding the isobench executable")?;
    let p = exe.with_file_name("isobench-agent");
    if !p.is_file() {
        bail!(
            "isobench-agent not found next to {}: build both binaries with `cargo build --release`",
            exe.display()
        );
    }
    Ok(p)
}

/// The last `n` CPUs this process may run on (CPU 0 usually takes the most interrupts and
/// housekeeping, so the budget stays away from it when it can).
pub fn budget_cpus(n: usize) -> anyhow::Result<Vec<usize>> {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .context("reading CPU affinity")?;
    let allowed: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .collect();
    if allowed.len() < n {
        bail!("the scenario's budget asks for {n} CPUs but only {} are available: lower [budget] cpus", allowed.len());
    }
    Ok(allowed[allowed.len() - n..].to_vec())
}

struct TierRun {
    tier: Tier,
    backend: Box<dyn Backend>,
    plan: ResolvedPlan,
    warm: Vec<u32>,
    done: Vec<u32>,
    attempts: Vec<u32>,
    spent: Vec<Duration>,
    consecutive_failures: u32,
    dropped: Option<String>,
    /// Workloads this tier cannot run (skipped with a note).
    unsupported: Vec<bool>,
    /// Workloads that take no warmup (density: a warm host is not what it measures).
    no_warmup: Vec<bool>,
    record_idx: usize,
}

enum Phase {
    Warmup,
    Measure,
}

impl TierRun {
    fn next_phase(&self, wi: usize) -> Option<Phase> {
        if self.dropped.is_some() || self.unsupported[wi] {
            return None;
        }
        let p = &self.plan;
        if self.attempts[wi] >= p.warmup + p.runs + MAX_CONSECUTIVE_FAILURES {
            return None;
        }
        if self.warm[wi] < p.warmup && !self.no_warmup[wi] {
            return Some(Phase::Warmup);
        }
        if self.done[wi] >= p.runs {
            return None;
        }
        if let Some(b) = p.time_budget_s {
            if self.spent[wi].as_secs_f64() >= b && self.done[wi] >= p.min_runs {
                return None;
            }
        }
        Some(Phase::Measure)
    }
}

/// Create the run's host marker file (inside the run's scratch, removed with it) and return
/// its path; None when it cannot be made (the probe then reports no visibility check).
fn host_marker(env: &RunEnv) -> Option<String> {
    let p = env.state.scratch().join("host-marker");
    std::fs::write(
        &p,
        b"isobench host marker: a sandbox that sees this shares the host's files\n",
    )
    .ok()?;
    p.to_str().map(str::to_string)
}

/// One measured launch (or, for `density`, one density measurement) as samples.
fn launch_samples(
    backend: &mut dyn Backend,
    tier: Tier,
    workload: &Workload,
    round: u32,
) -> Result<Vec<Sample>, BackendError> {
    match workload {
        Workload::Density(p) => Ok(crate::density::measure(backend, p)?
            .into_iter()
            .map(|m| Sample {
                tier,
                workload: workload.name().into(),
                metric: m.name,
                unit: m.unit,
                better: m.better,
                round,
                value: m.value,
            })
            .collect()),
        w => backend
            .run_once(&Task::new(w.clone()))
            .map(|o| samples_of(tier, w.name(), round, &o)),
    }
}

/// Samples of one launch: host-clock startup metrics, then what the agent reported.
pub fn samples_of(tier: Tier, workload: &str, round: u32, o: &Outcome) -> Vec<Sample> {
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    let mut v = vec![
        (
            "launch_to_ready_ms",
            "ms",
            ms(o.timings.launch_to_ready),
            Better::Lower,
        ),
        (
            "launch_to_exit_ms",
            "ms",
            ms(o.timings.launch_to_exit),
            Better::Lower,
        ),
        ("teardown_ms", "ms", ms(o.timings.teardown), Better::Lower),
        (
            "launch_to_released_ms",
            "ms",
            ms(o.timings.launch_to_released),
            Better::Lower,
        ),
    ]
    .into_iter()
    .map(|(m, u, value, better)| Sample {
        tier,
        workload: workload.into(),
        metric: m.into(),
        unit: u.into(),
        better,
        round,
        value,
    })
    .collect::<Vec<_>>();
    for m in &o.report.metrics {
        v.push(Sample {
            tier,
            workload: workload.into(),
            metric: m.name.clone(),
            unit: m.unit.clone(),
            better: m.better,
            round,
            value: m.value,
        });
    }
    if let Some(kib) = o.report.peak_rss_kib {
        v.push(Sample {
            tier,
            workload: workload.into(),
            metric: "agent_peak_rss_kib".into(),
            unit: "KiB".into(),
            better: Better::Lower,
            round,
            value: kib as f64,
        });
    }
    v
}

pub fn now_string() -> String {
    chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
}

/// Run the scenario. Results are written to `cfg.out_dir` after every round; on Ctrl-C the
/// completed rounds are kept and the results say `interrupted`.
pub fn run(
    cfg: &RunConfig,
    cancel: Arc<AtomicBool>,
    host: HostFacts,
) -> anyhow::Result<RunOutcome> {
    let budget = Budget {
        cpus: budget_cpus(cfg.scenario.budget.cpus)?,
        memory_mib: cfg.scenario.budget.memory_mib,
    };
    // The harness runs on the budget's CPUs too: a launch then costs no cross-CPU wakeup, as
    // when `taskset -c <cpus> hyperfine -N` times the agent (docs/architecture.md). The harness
    // sleeps in poll while a sandbox runs, so it takes nothing from the budget.
    let mut own = nix::sched::CpuSet::new();
    for &c in &budget.cpus {
        own.set(c).context("budget CPU out of range")?;
    }
    nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &own)
        .context("pinning isobench to the budget's CPUs")?;

    // The run's own state first, before the output directory or anything else is created:
    // a validated state root, a fresh run id, a directory made exclusively and locked for the
    // run's life (RELIABILITY rule 13). The run id is not derived from --out.
    let state_dir = StateDir::open(&cfg.state_root).with_context(|| {
        format!(
            "opening the state directory {}: fix it as said, or choose another with --state-dir / ISOBENCH_STATE_DIR",
            cfg.state_root.display()
        )
    })?;
    let run_state = Arc::new(
        state_dir
            .begin_run(&cfg.out_dir.display().to_string())
            .context("starting the run's ledger")?,
    );
    note_stale_runs(&state_dir, &run_state, cfg.quiet);
    let res = run_owned(cfg, cancel, host, budget, &run_state);
    let teardown = finish_run(&run_state);
    let outcome = res?;
    teardown?;
    Ok(outcome)
}

/// The part of [`run`] that happens while the run owns its state directory.
fn run_owned(
    cfg: &RunConfig,
    cancel: Arc<AtomicBool>,
    host: HostFacts,
    budget: Budget,
    run_state: &Arc<RunState>,
) -> anyhow::Result<RunOutcome> {
    let run_id = run_state.id.clone();
    let mut results = Results {
        schema_version: SCHEMA_VERSION,
        run_id: run_id.clone(),
        started_at: now_string(),
        finished_at: None,
        interrupted: false,
        host: host.clone(),
        versions: BTreeMap::from([(
            "isobench".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        )]),
        scenario: cfg.scenario.clone(),
        budget: budget.clone(),
        tiers: vec![],
        summaries: vec![],
        samples: vec![],
    };
    if let Some(q) = &host.qemu_version {
        results.versions.insert("qemu".into(), q.clone());
    }
    results
        .versions
        .insert("host_kernel".into(), host.kernel.clone());

    // Availability first: skipped tiers are recorded with their reason, never dropped silently.
    let mut available = vec![];
    for &tier in &cfg.tiers {
        let a = backend::availability(tier, &host, &cfg.options);
        let status = if a.is_available() {
            TierStatus::Ran
        } else {
            TierStatus::Skipped
        };
        if let Availability::Unavailable { reason, fix } = &a {
            if !cfg.quiet {
                eprintln!("skipping {tier}: {reason} (fix: {fix})");
            }
        } else {
            available.push(tier);
        }
        results.tiers.push(TierRecord {
            tier,
            availability: a,
            status,
            plan: None,
            settings: BTreeMap::new(),
            versions: BTreeMap::new(),
            failures: vec![],
            launches: BTreeMap::new(),
            note: None,
            isolation: None,
        });
    }
    results.write(&cfg.out_dir)?;
    if cfg.link_latest {
        link_latest(&cfg.out_dir);
    }

    let env = RunEnv {
        agent: cfg.agent.clone(),
        state: run_state.clone(),
        cache_dir: cfg.cache_dir.clone(),
        budget: budget.clone(),
        options: cfg.options.clone(),
        host: host.clone(),
        cancel: cancel.clone(),
    };

    let outcome = measure(cfg, &env, &available, &mut results, &cancel);
    results.interrupted = cancel.load(Ordering::Relaxed);
    results.finished_at = Some(now_string());
    results.summarize();
    let write = results.write(&cfg.out_dir);
    outcome?;
    write?;
    Ok(RunOutcome {
        results,
        out_dir: cfg.out_dir.clone(),
    })
}

/// Prepare, interleave, measure; backends are always finished, whatever happens.
fn measure(
    cfg: &RunConfig,
    env: &RunEnv,
    available: &[Tier],
    results: &mut Results,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let nw = cfg.scenario.workloads.len();
    let mut runs: Vec<TierRun> = vec![];
    let mut res = Ok(());
    for &tier in available {
        let idx = results
            .tiers
            .iter()
            .position(|r| r.tier == tier)
            .expect("tier recorded");
        let plan = cfg.scenario.plan(tier, cfg.runs_override);
        results.tiers[idx].plan = Some(plan);
        if !cfg.quiet {
            eprintln!("preparing {tier} ...");
        }
        match backend::make(tier, env) {
            Ok(backend) => {
                results.tiers[idx].settings = backend.settings();
                results.tiers[idx].versions = backend.versions();
                for (k, v) in backend.versions() {
                    results.versions.entry(format!("{tier}.{k}")).or_insert(v);
                }
                runs.push(TierRun {
                    tier,
                    backend,
                    plan,
                    warm: vec![0; nw],
                    done: vec![0; nw],
                    attempts: vec![0; nw],
                    spent: vec![Duration::ZERO; nw],
                    consecutive_failures: 0,
                    dropped: None,
                    unsupported: vec![false; nw],
                    no_warmup: cfg
                        .scenario
                        .workloads
                        .iter()
                        .map(|w| matches!(w, Workload::Density(_)))
                        .collect(),
                    record_idx: idx,
                });
            }
            Err(e) => {
                results.tiers[idx].status = TierStatus::Failed;
                results.tiers[idx].failures.push(Failure {
                    workload: "prepare".into(),
                    round: 0,
                    message: e.to_string(),
                });
                if !cfg.quiet {
                    eprintln!("{tier} could not be prepared: {e}");
                }
            }
        }
        if cancel.load(Ordering::Relaxed) {
            break;
        }
    }
    if !cancel.load(Ordering::Relaxed) {
        res = interleave(cfg, env, &mut runs, results, cancel);
    }
    // Interrupted: keep what completed, marked so, before the teardown (a second signal may end
    // the process before the teardown does).
    if cancel.load(Ordering::Relaxed) {
        results.interrupted = true;
        results.summarize();
        if let Err(e) = results.write(&cfg.out_dir) {
            tracing::warn!(error = %e, "saving the interrupted results before teardown");
        }
    }
    for r in &mut runs {
        if let Err(e) = r.backend.finish() {
            let rec = &mut results.tiers[r.record_idx];
            rec.failures.push(Failure {
                workload: "teardown".into(),
                round: 0,
                message: e.to_string(),
            });
            if res.is_ok() {
                res = Err(anyhow::anyhow!("tearing down {}: {e}", r.tier));
            }
        }
    }
    res
}

fn interleave(
    cfg: &RunConfig,
    env: &RunEnv,
    runs: &mut [TierRun],
    results: &mut Results,
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let total: u64 = runs
        .iter()
        .map(|r| u64::from(r.plan.warmup + r.plan.runs) * cfg.scenario.workloads.len() as u64)
        .sum();
    let pb = crate::output::progress(total, cfg.quiet);
    // One unrecorded probe launch per tier: the isolation view, seen from inside.
    for r in runs.iter_mut() {
        let mut task = Task::new(crate::workload::Workload::Noop);
        task.probe = true;
        // A file on the host, outside every rootfs: visible to bare, invisible to a jail.
        task.probe_paths = host_marker(env).into_iter().collect();
        match r.backend.run_once(&task) {
            Ok(o) => results.tiers[r.record_idx].isolation = o.report.isolation,
            Err(BackendError::Interrupted) => return Ok(()),
            Err(e) => results.tiers[r.record_idx].failures.push(Failure {
                workload: "probe".into(),
                round: 0,
                message: e.to_string(),
            }),
        }
    }
    let mut round: u32 = 0;
    let mut last_save = Instant::now();
    'rounds: loop {
        let mut did_work = false;
        for (wi, workload) in cfg.scenario.workloads.iter().enumerate() {
            let n = runs.len();
            for k in 0..n {
                // Rotate the order every round so each tier takes each position in turn.
                let r = &mut runs[(k + round as usize) % n];
                let Some(phase) = r.next_phase(wi) else {
                    continue;
                };
                if cancel.load(Ordering::Relaxed) {
                    break 'rounds;
                }
                did_work = true;
                pb.set_message(format!("{} {}", r.tier, workload.name()));
                let start = Instant::now();
                let out = launch_samples(r.backend.as_mut(), r.tier, workload, round);
                r.spent[wi] += start.elapsed();
                r.attempts[wi] += 1;
                pb.inc(1);
                let rec = &mut results.tiers[r.record_idx];
                match (out, phase) {
                    (Ok(samples), Phase::Measure) => {
                        r.consecutive_failures = 0;
                        r.done[wi] += 1;
                        *rec.launches.entry(workload.name().to_string()).or_default() += 1;
                        results.samples.extend(samples);
                    }
                    (Ok(_), Phase::Warmup) => {
                        r.consecutive_failures = 0;
                        r.warm[wi] += 1;
                    }
                    (Err(BackendError::Interrupted), _) => break 'rounds,
                    (Err(BackendError::Unsupported(why)), _) => {
                        // Not a failed launch: this tier cannot run this workload at all.
                        r.unsupported[wi] = true;
                        let note = format!("{}: {why}", workload.name());
                        rec.note = Some(match rec.note.take() {
                            Some(n) => format!("{n}; {note}"),
                            None => note,
                        });
                    }
                    (Err(e), phase) => {
                        if matches!(phase, Phase::Warmup) {
                            r.warm[wi] += 1;
                        }
                        r.consecutive_failures += 1;
                        tracing::warn!(tier = %r.tier, error = %e, "launch failed");
                        rec.failures.push(Failure {
                            workload: workload.name().into(),
                            round,
                            message: e.to_string(),
                        });
                        if r.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                            let why = format!("dropped after {MAX_CONSECUTIVE_FAILURES} failed launches in a row: {e}");
                            pb.println(format!("{}: {why}", r.tier));
                            rec.note = Some(why.clone());
                            r.dropped = Some(why);
                        }
                    }
                }
            }
        }
        // Save completed rounds, at most once a second: a write ends with fsync, whose journal
        // commit would otherwise land in the next launch of fast tiers. The run also saves at
        // its end and on Ctrl-C, so at most one second of launches is lost to a SIGKILL.
        if !did_work || last_save.elapsed() >= SAVE_INTERVAL {
            results.summarize();
            results.write(&cfg.out_dir)?;
            last_save = Instant::now();
        }
        if !did_work {
            break;
        }
        round += 1;
    }
    pb.finish_and_clear();
    for r in runs.iter() {
        let rec = &mut results.tiers[r.record_idx];
        if rec.launches.values().all(|&n| n == 0) {
            rec.status = TierStatus::Failed;
        }
        let short: Vec<String> = cfg
            .scenario
            .workloads
            .iter()
            .enumerate()
            .filter(|(wi, _)| {
                r.done[*wi] < r.plan.runs && r.dropped.is_none() && !r.unsupported[*wi]
            })
            .map(|(wi, w)| {
                format!(
                    "{}: {} of {} launches in the {:.0} s budget",
                    w.name(),
                    r.done[wi],
                    r.plan.runs,
                    r.spent[wi].as_secs_f64()
                )
            })
            .collect();
        if !short.is_empty() && !cancel.load(Ordering::Relaxed) && rec.note.is_none() {
            rec.note = Some(format!("time budget reached ({})", short.join("; ")));
        }
    }
    Ok(())
}

/// Remove whatever the run's ledger still lists (normally nothing: backends release what they
/// made) and then the run directory, without crossing mount points.
/// Say (once, on stderr) that crashed runs left state behind; a new run never touches them.
fn note_stale_runs(state: &StateDir, me: &RunState, quiet: bool) {
    if quiet {
        return;
    }
    let stale = state
        .run_dirs()
        .into_iter()
        .filter(|d| *d != me.dir && !crate::state::run_in_progress(d))
        .count();
    if stale > 0 {
        eprintln!(
            "note: {stale} earlier run(s) left state in {} (crashed or killed); they are left alone: run `isobench cleanup` to remove them",
            state.runs_dir().display()
        );
    }
}

pub fn finish_run(run: &RunState) -> anyhow::Result<()> {
    let left = run.resources();
    if !left.is_empty() {
        tracing::warn!(?left, "resources left after teardown; removing them");
    }
    let ledger = Ledger {
        run_id: run.id.clone(),
        owner: None,
        resources: left,
    };
    let r = crate::cleanup::cleanup_run(&run.dir, &ledger);
    if !r.errors.is_empty() {
        bail!(
            "teardown of {} incomplete: {}; then run `isobench cleanup`",
            run.dir.display(),
            r.errors.join("; ")
        );
    }
    Ok(())
}

/// `<parent>/latest` -> the run directory (relative symlink, replaced atomically).
fn link_latest(out: &Path) {
    let (Some(parent), Some(name)) = (out.parent(), out.file_name()) else {
        return;
    };
    let tmp = parent.join(".latest.tmp");
    let _ = std::fs::remove_file(&tmp);
    if std::os::unix::fs::symlink(name, &tmp).is_ok() {
        let _ = std::fs::rename(&tmp, parent.join("latest"));
    }
}
