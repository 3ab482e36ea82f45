//! The measuring loop: prepare every arm (a tier with its backend settings), run warmups and
//! measured launches with the arms interleaved in rounds (so drift hits every arm alike) in a
//! seeded, balanced order (src/measure/plan.rs), keep per-arm time budgets, write the results
//! after every round, and tear everything down on success, failure or Ctrl-C. `isobench run` is
//! one arm per tier; `isobench ab` two arms of one tier, each writing its own results.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

use crate::backend::registry;
use crate::backend::{Backend, BackendError, BackendOptions, Outcome, RunEnv};
use crate::measure::plan::{self, Ended, Phase, Progress, Schedule, MAX_CONSECUTIVE_FAILURES};
use crate::model::availability::Availability;
use crate::model::budget::Budget;
use crate::model::facts::HostFacts;
use crate::model::results::{
    Failure, OrderRecord, Results, Sample, TierRecord, TierStatus, SCHEMA_VERSION,
};
use crate::model::scenario::Scenario;
use crate::model::tier::Tier;
use crate::protocol::{Better, Task};
use crate::state::ledger::{Ledger, RunState, StateDir};
use crate::workload::Workload;

/// Completed rounds are saved at most this often (and always at the end).
const SAVE_INTERVAL: Duration = Duration::from_secs(1);

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
    /// `--seed`: the launch order's seed (wins over the scenario's).
    pub seed: Option<u64>,
    /// `--label`s, recorded in results.json.
    pub labels: BTreeMap<String, String>,
}

/// One arm of a run: a tier with its backend settings, under a label.
#[derive(Debug, Clone)]
pub struct Arm {
    /// The tier's name for `isobench run`, the variant's ("a", "b") for `isobench ab`.
    pub label: String,
    pub tier: Tier,
    pub options: BackendOptions,
    /// Recorded in the tier record's settings beside the backend's own (A/B: `ab_variant`).
    pub extra_settings: BTreeMap<String, String>,
    /// Index into [`ArmsConfig::outputs`]: where this arm's tier record and samples go.
    pub output: usize,
}

/// A run of arms, validated. Each output directory gets a results.json and samples.csv of the
/// arms that name it; the arms of all outputs are interleaved in one schedule.
#[derive(Debug, Clone)]
pub struct ArmsConfig {
    pub scenario: Scenario,
    pub arms: Vec<Arm>,
    pub outputs: Vec<PathBuf>,
    pub runs_override: Option<u32>,
    /// Point `<parent>/latest` at the first output.
    pub link_latest: bool,
    pub state_root: PathBuf,
    pub cache_dir: PathBuf,
    pub agent: PathBuf,
    pub quiet: bool,
    /// The launch order's seed from the command line (wins over the scenario's).
    pub seed: Option<u64>,
    /// Every arm must run: an unavailable, unprepared or dropped arm ends the run with an error
    /// (an A/B with one side compares nothing). Otherwise such an arm is recorded and skipped.
    pub strict: bool,
    /// Names the run in the state directory's log.
    pub label: String,
    /// `run --label`s, recorded in every output's results.json.
    pub labels: BTreeMap<String, String>,
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
        crate::host::rootfs::require_static(&p)?;
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
    crate::host::rootfs::require_static(&p)?;
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
    client_cpus: &[usize],
    cancel: &AtomicBool,
) -> Result<Vec<Sample>, BackendError> {
    let host_side = match workload {
        Workload::Density(p) => Some(crate::measure::density::measure(backend, p)?),
        Workload::Redis(p) => Some(crate::measure::apps::redis::measure(
            backend,
            p,
            client_cpus,
            cancel,
        )?),
        Workload::Mysql(p) => Some(crate::measure::apps::mysql::measure(
            backend,
            p,
            client_cpus,
        )?),
        _ => None,
    };
    match host_side {
        Some(metrics) => Ok(metrics
            .into_iter()
            .map(|m| Sample {
                tier,
                workload: workload.name().into(),
                metric: m.name,
                unit: m.unit,
                better: m.better,
                round,
                value: m.value,
                position: None,
                previous_tier: None,
                kind: m.kind,
            })
            .collect()),
        None => backend
            .run_once(&Task::new(workload.clone()))
            .map(|o| samples_of(tier, workload.name(), round, &o)),
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
        position: None,
        previous_tier: None,
        kind: crate::protocol::MetricKind::Measured,
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
            position: None,
            previous_tier: None,
            kind: m.kind,
        });
    }
    let memory = [
        ("agent_peak_rss_kib", o.report.peak_rss_kib),
        ("agent_peak_anon_kib", o.report.peak_anon_kib),
    ];
    for (metric, kib) in memory {
        let Some(kib) = kib else { continue };
        v.push(Sample {
            tier,
            workload: workload.into(),
            metric: metric.into(),
            unit: "KiB".into(),
            better: Better::Lower,
            round,
            value: kib as f64,
            position: None,
            previous_tier: None,
            kind: crate::protocol::MetricKind::Measured,
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
    let arms = cfg
        .tiers
        .iter()
        .map(|&tier| Arm {
            label: tier.to_string(),
            tier,
            options: cfg.options.clone(),
            extra_settings: BTreeMap::new(),
            output: 0,
        })
        .collect();
    let arms_cfg = ArmsConfig {
        scenario: cfg.scenario.clone(),
        arms,
        outputs: vec![cfg.out_dir.clone()],
        runs_override: cfg.runs_override,
        link_latest: cfg.link_latest,
        state_root: cfg.state_root.clone(),
        cache_dir: cfg.cache_dir.clone(),
        agent: cfg.agent.clone(),
        quiet: cfg.quiet,
        seed: cfg.seed,
        strict: false,
        label: cfg.out_dir.display().to_string(),
        labels: cfg.labels.clone(),
    };
    let mut results = run_arms(&arms_cfg, cancel, host)?;
    Ok(RunOutcome {
        results: results.pop().expect("one output"),
        out_dir: cfg.out_dir.clone(),
    })
}

/// Run the arms interleaved; returns one `Results` per output, in order. Results are written
/// after every round; on Ctrl-C the completed rounds are kept and marked `interrupted`.
pub fn run_arms(
    cfg: &ArmsConfig,
    cancel: Arc<AtomicBool>,
    host: HostFacts,
) -> anyhow::Result<Vec<Results>> {
    assert!(
        cfg.arms.iter().all(|a| a.output < cfg.outputs.len()),
        "every arm names an output"
    );
    if cfg.outputs.is_empty() {
        bail!("a run needs at least one output directory");
    }
    for (i, a) in cfg.arms.iter().enumerate() {
        if cfg.arms[..i]
            .iter()
            .any(|b| b.output == a.output && b.tier == a.tier)
        {
            bail!(
                "{} appears twice in one output: two arms of one tier need an output each (as `isobench ab` does)",
                a.tier
            );
        }
    }
    let budget = Budget {
        cpus: budget_cpus(cfg.scenario.budget.cpus)?,
        memory_mib: cfg.scenario.budget.memory_mib,
    };
    if cfg.strict {
        for a in &cfg.arms {
            if let Availability::Unavailable { reason, fix } =
                registry::availability(a.tier, &host, &a.options)
            {
                bail!("{} of {}: {reason} (fix: {fix})", a.label, a.tier);
            }
        }
    }
    // Where an application workload's benchmark client runs: the CPUs left outside the budget
    // (read before the harness pins itself below).
    let client_cpus = crate::measure::apps::client_cpus(&budget.cpus);
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
    // One ledger (and scratch directory) per output: backends name their resources by tier,
    // so two arms of one tier (an A/B) need two. Each output's results carry its ledger's id.
    let mut states: Vec<Arc<RunState>> = vec![];
    for dir in &cfg.outputs {
        let label = if cfg.outputs.len() == 1 {
            cfg.label.clone()
        } else {
            format!("{} ({})", cfg.label, dir.display())
        };
        match state_dir.begin_run(&label) {
            Ok(s) => states.push(Arc::new(s)),
            Err(e) => {
                for s in &states {
                    if let Err(t) = finish_run(s) {
                        tracing::warn!(error = %t, "tearing down after a failed start");
                    }
                }
                return Err(e).context("starting the run's ledger");
            }
        }
    }
    note_stale_runs(&state_dir, &states, cfg.quiet);
    let res = run_owned(cfg, cancel, host, budget, &client_cpus, &states);
    let mut teardown = Ok(());
    for s in &states {
        let t = finish_run(s);
        if teardown.is_ok() {
            teardown = t;
        }
    }
    let outcome = res?;
    teardown?;
    Ok(outcome)
}

/// Where the order's seed comes from: `--seed`, else the scenario, else a fresh random one.
fn order_record(cfg: &ArmsConfig) -> OrderRecord {
    let (seed, from) = match (cfg.seed, cfg.scenario.seed) {
        (Some(s), _) => (s, "cli"),
        (None, Some(s)) => (s, "scenario"),
        (None, None) => (plan::random_seed(), "random"),
    };
    OrderRecord {
        design: "williams".into(),
        seed,
        seed_from: from.into(),
    }
}

/// The part of [`run_arms`] that happens while the run owns its state directory.
fn run_owned(
    cfg: &ArmsConfig,
    cancel: Arc<AtomicBool>,
    host: HostFacts,
    budget: Budget,
    client_cpus: &[usize],
    states: &[Arc<RunState>],
) -> anyhow::Result<Vec<Results>> {
    let mut versions = BTreeMap::from([(
        "isobench".to_string(),
        env!("CARGO_PKG_VERSION").to_string(),
    )]);
    if let Some(q) = &host.qemu_version {
        versions.insert("qemu".into(), q.clone());
    }
    versions.insert("host_kernel".into(), host.kernel.clone());
    let order = order_record(cfg);
    let started_at = now_string();
    let mut outs: Vec<Results> = states
        .iter()
        .map(|state| Results {
            schema_version: SCHEMA_VERSION,
            run_id: state.id.clone(),
            started_at: started_at.clone(),
            finished_at: None,
            interrupted: false,
            host: host.clone(),
            versions: versions.clone(),
            scenario: cfg.scenario.clone(),
            budget: budget.clone(),
            order: Some(order.clone()),
            labels: cfg.labels.clone(),
            tiers: vec![],
            summaries: vec![],
            samples: vec![],
        })
        .collect();

    // Availability first: skipped arms are recorded with their reason, never dropped silently.
    let mut available = vec![];
    for (i, arm) in cfg.arms.iter().enumerate() {
        let a = registry::availability(arm.tier, &host, &arm.options);
        let status = if a.is_available() {
            TierStatus::Ran
        } else {
            TierStatus::Skipped
        };
        if let Availability::Unavailable { reason, fix } = &a {
            if !cfg.quiet {
                eprintln!("skipping {}: {reason} (fix: {fix})", arm.label);
            }
        } else {
            available.push(i);
        }
        let rec = &mut outs[arm.output].tiers;
        rec.push(TierRecord {
            tier: arm.tier,
            availability: a,
            status,
            plan: None,
            settings: arm.extra_settings.clone(),
            versions: BTreeMap::new(),
            failures: vec![],
            launches: BTreeMap::new(),
            note: None,
            isolation: None,
        });
    }
    write_all(cfg, &outs)?;
    if cfg.link_latest {
        if let Some(first) = cfg.outputs.first() {
            link_latest(first);
        }
    }

    let envs: Vec<RunEnv> = cfg
        .arms
        .iter()
        .map(|arm| RunEnv {
            agent: cfg.agent.clone(),
            state: states[arm.output].clone(),
            cache_dir: cfg.cache_dir.clone(),
            budget: budget.clone(),
            options: arm.options.clone(),
            host: host.clone(),
            cancel: cancel.clone(),
        })
        .collect();

    let outcome = measure(
        cfg,
        &envs,
        &available,
        &mut outs,
        order.seed,
        client_cpus,
        &cancel,
    );
    for r in &mut outs {
        r.interrupted = cancel.load(Ordering::Relaxed);
        r.finished_at = Some(now_string());
        r.summarize();
    }
    let write = write_all(cfg, &outs);
    outcome?;
    write?;
    Ok(outs)
}

/// Write every output's result files.
fn write_all(cfg: &ArmsConfig, outs: &[Results]) -> anyhow::Result<()> {
    for (r, dir) in outs.iter().zip(&cfg.outputs) {
        r.write(dir)?;
    }
    Ok(())
}

/// A prepared arm.
struct ArmRun {
    label: String,
    tier: Tier,
    backend: Box<dyn Backend>,
    /// Output index and tier-record index within it.
    out: usize,
    rec: usize,
    /// CPUs outside the tier's budget, for an application workload's benchmark client.
    client_cpus: Vec<usize>,
    /// The tier's `app_scale` (application points shrunk, e.g. under TCG).
    app_scale: Option<f64>,
}

/// The tier record of arm `i`: its output's records hold the arms of that output, in order.
fn record_index(cfg: &ArmsConfig, i: usize) -> usize {
    let out = cfg.arms[i].output;
    cfg.arms[..i].iter().filter(|a| a.output == out).count()
}

/// What each application workload's server needs that the tier keeps for the run (an image,
/// an initramfs), made before the first round so no server start is timed with it. A failure
/// is recorded and the launches go on: `start_server` tries again and fails with its own error.
fn prepare_servers(
    cfg: &ArmsConfig,
    backend: &mut dyn Backend,
    record: &mut TierRecord,
    arm: &Arm,
    cancel: &AtomicBool,
) {
    for w in cfg.scenario.workloads.iter() {
        if w.server_app().is_none() || cancel.load(Ordering::Relaxed) {
            continue;
        }
        if let Err(e) = backend.prepare_server(&Task::new(w.clone())) {
            if !cfg.quiet {
                eprintln!("{}: preparing {}: {e}", arm_name(arm), w.name());
            }
            record.failures.push(Failure {
                workload: w.name().into(),
                round: 0,
                message: format!("preparing the server: {e}"),
            });
        }
    }
}

/// Prepare, interleave, measure; backends are always finished, whatever happens.
fn measure(
    cfg: &ArmsConfig,
    envs: &[RunEnv],
    available: &[usize],
    outs: &mut [Results],
    seed: u64,
    client_cpus: &[usize],
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let mut runs: Vec<ArmRun> = vec![];
    let mut progress: Vec<Progress> = vec![];
    let mut res = Ok(());
    let no_warmup: Vec<bool> = cfg
        .scenario
        .workloads
        .iter()
        .map(|w| matches!(w, Workload::Density(_)) || w.server_app().is_some())
        .collect();
    for &i in available {
        let arm = &cfg.arms[i];
        let (out, rec) = (arm.output, record_index(cfg, i));
        let plan = cfg.scenario.plan(arm.tier, cfg.runs_override);
        let record = &mut outs[out].tiers[rec];
        record.plan = Some(plan);
        if !cfg.quiet {
            eprintln!("preparing {} ...", arm_name(arm));
        }
        match registry::make(arm.tier, &envs[i]) {
            Ok(mut backend) => {
                prepare_servers(cfg, backend.as_mut(), record, arm, cancel);
                let mut settings = backend.settings();
                settings.extend(arm.extra_settings.clone());
                if cfg
                    .scenario
                    .workloads
                    .iter()
                    .any(|w| w.server_app().is_some())
                {
                    settings.insert(
                        "app_client_cpus".into(),
                        format!(
                            "{client_cpus:?} (the benchmark client, outside the tier's {:?})",
                            envs[i].budget.cpus
                        ),
                    );
                }
                record.settings = settings;
                record.versions = backend.versions();
                for (k, v) in backend.versions() {
                    outs[out]
                        .versions
                        .entry(format!("{}.{k}", arm.tier))
                        .or_insert(v);
                }
                runs.push(ArmRun {
                    label: arm.label.clone(),
                    tier: arm.tier,
                    backend,
                    out,
                    rec,
                    client_cpus: client_cpus.to_vec(),
                    app_scale: plan.app_scale,
                });
                progress.push(Progress::new(plan, no_warmup.clone()));
            }
            Err(e) => {
                record.status = TierStatus::Failed;
                record.failures.push(Failure {
                    workload: "prepare".into(),
                    round: 0,
                    message: e.to_string(),
                });
                if !cfg.quiet {
                    eprintln!("{} could not be prepared: {e}", arm_name(arm));
                }
                if cfg.strict {
                    res = Err(anyhow::anyhow!("preparing {}: {e}", arm_name(arm)));
                    break;
                }
            }
        }
        if cancel.load(Ordering::Relaxed) {
            break;
        }
    }
    if res.is_ok() && !cancel.load(Ordering::Relaxed) {
        let mut schedule = Schedule::new(progress, cfg.scenario.workloads.len(), seed);
        res = interleave(cfg, envs, &mut runs, &mut schedule, outs, cancel);
    }
    // Interrupted: keep what completed, marked so, before the teardown (a second signal may end
    // the process before the teardown does).
    if cancel.load(Ordering::Relaxed) {
        for r in outs.iter_mut() {
            r.interrupted = true;
            r.summarize();
        }
        if let Err(e) = write_all(cfg, outs) {
            tracing::warn!(error = %e, "saving the interrupted results before teardown");
        }
    }
    for r in &mut runs {
        if let Err(e) = r.backend.finish() {
            outs[r.out].tiers[r.rec].failures.push(Failure {
                workload: "teardown".into(),
                round: 0,
                message: e.to_string(),
            });
            if res.is_ok() {
                res = Err(anyhow::anyhow!("tearing down {}: {e}", r.label));
            }
        }
    }
    res
}

/// "container", or "emulated variant a" when the label is not the tier's name.
fn arm_name(a: &Arm) -> String {
    if a.label == a.tier.as_str() {
        a.label.clone()
    } else {
        format!("{} variant {}", a.tier, a.label)
    }
}

fn interleave(
    cfg: &ArmsConfig,
    envs: &[RunEnv],
    runs: &mut [ArmRun],
    schedule: &mut Schedule,
    outs: &mut [Results],
    cancel: &AtomicBool,
) -> anyhow::Result<()> {
    let pb = crate::output::progress(
        schedule.planned_launches(),
        schedule.planned_rounds(),
        cfg.quiet,
    );
    // The tier launched last, whatever the launch was (probe, warmup, measured, failed): what it
    // left behind is paid by the next launch, whose samples record it.
    let mut previous: Option<Tier> = None;
    // One unrecorded probe launch per arm: the isolation view, seen from inside.
    for r in runs.iter_mut() {
        let mut task = Task::new(crate::workload::Workload::Noop);
        task.probe = true;
        // A file on the host, outside every rootfs: visible to bare, invisible to a jail.
        // Any arm's environment will do: the marker lives in the run's scratch.
        task.probe_paths = envs.first().and_then(host_marker).into_iter().collect();
        let out = r.backend.run_once(&task);
        previous = Some(r.tier);
        let rec = &mut outs[r.out].tiers[r.rec];
        match out {
            Ok(o) => rec.isolation = o.report.isolation,
            Err(BackendError::Interrupted) => return Ok(()),
            Err(e) => rec.failures.push(Failure {
                workload: "probe".into(),
                round: 0,
                message: e.to_string(),
            }),
        }
    }
    let mut round = 0;
    let mut last_save = Instant::now();
    while let Some(step) = schedule.next_step() {
        // A round completed: save it, at most once a second. A write ends with fsync, whose
        // journal commit would otherwise land in the next launch of fast tiers. The run also
        // saves at its end and on Ctrl-C, so at most one second of launches is lost to SIGKILL.
        if step.round != round {
            round = step.round;
            if last_save.elapsed() >= SAVE_INTERVAL {
                for r in outs.iter_mut() {
                    r.summarize();
                }
                write_all(cfg, outs)?;
                last_save = Instant::now();
            }
        }
        if cancel.load(Ordering::Relaxed) {
            break;
        }
        let r = &mut runs[step.arm];
        let workload =
            &crate::model::scenario::scale_app(&cfg.scenario.workloads[step.workload], r.app_scale);
        pb.step(step.round, &r.label, workload.name(), schedule.remaining());
        let start = Instant::now();
        let out = launch_samples(
            r.backend.as_mut(),
            r.tier,
            workload,
            step.round,
            &r.client_cpus,
            cancel,
        );
        let elapsed = start.elapsed();
        pb.inc(1);
        let rec = &mut outs[r.out].tiers[r.rec];
        let mut error = None;
        let ended = match out {
            Ok(mut samples) => {
                if step.phase == Phase::Measure {
                    for s in &mut samples {
                        s.position = Some(step.position);
                        s.previous_tier = previous;
                    }
                    *rec.launches.entry(workload.name().to_string()).or_default() += 1;
                    outs[r.out].samples.extend(samples);
                }
                previous = Some(r.tier);
                Ended::Ok
            }
            Err(BackendError::Interrupted) => break,
            Err(BackendError::Unsupported(why)) => {
                // Not a failed launch: this tier cannot run this workload at all.
                let note = format!("{}: {why}", workload.name());
                rec.note = Some(match rec.note.take() {
                    Some(n) => format!("{n}; {note}"),
                    None => note,
                });
                Ended::Unsupported
            }
            Err(e) => {
                previous = Some(r.tier);
                tracing::warn!(arm = %r.label, error = %e, "launch failed");
                rec.failures.push(Failure {
                    workload: workload.name().into(),
                    round: step.round,
                    message: e.to_string(),
                });
                error = Some(e.to_string());
                Ended::Failed
            }
        };
        if schedule.record(&step, ended, elapsed) {
            let why = format!(
                "dropped after {MAX_CONSECUTIVE_FAILURES} failed launches in a row: {}",
                error.unwrap_or_default()
            );
            pb.println(format!("{}: {why}", r.label));
            let rec = &mut outs[r.out].tiers[r.rec];
            rec.note = Some(why.clone());
            if cfg.strict {
                rec.status = TierStatus::Failed;
                pb.finish_and_clear();
                bail!("{}: {why}", r.label);
            }
        }
    }
    pb.finish_and_clear();
    for (r, p) in runs.iter().zip(schedule.arms()) {
        let rec = &mut outs[r.out].tiers[r.rec];
        if rec.launches.values().all(|&n| n == 0) {
            // A tier that can carry none of the workloads (its note says why) is skipped, not
            // failed: nothing went wrong (e.g. redis on a tier that does not carry it yet).
            rec.status = if p.unsupported.iter().all(|&u| u) {
                TierStatus::Skipped
            } else {
                TierStatus::Failed
            };
        }
        let short: Vec<String> = cfg
            .scenario
            .workloads
            .iter()
            .enumerate()
            .filter(|(wi, _)| p.done[*wi] < p.plan.runs && !p.dropped && !p.unsupported[*wi])
            .map(|(wi, w)| {
                format!(
                    "{}: {} of {} launches in the {:.0} s budget",
                    w.name(),
                    p.done[wi],
                    p.plan.runs,
                    p.spent[wi].as_secs_f64()
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
fn note_stale_runs(state: &StateDir, mine: &[Arc<RunState>], quiet: bool) {
    if quiet {
        return;
    }
    let stale = state
        .run_dirs()
        .into_iter()
        .filter(|d| mine.iter().all(|m| *d != m.dir) && !crate::state::ledger::run_in_progress(d))
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
    let r = crate::state::cleanup::cleanup_run(&run.dir, &ledger);
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

#[cfg(test)]
mod tests;
