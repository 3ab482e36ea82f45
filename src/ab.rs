//! Same-host A/B: two variants of one tier (each a set of backend settings: a VMM or runtime
//! binary, a guest kernel, a VM option, a memory size) prepared side by side and launched
//! interleaved in the same session, so that drift of the machine hits both alike. The order
//! within a round alternates (A B, then B A) so neither variant always goes first. Each variant's
//! samples become a `Results` of its own (`<out>/a`, `<out>/b`), compared with `compare`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::backend::{self, Backend, BackendError, BackendOptions, Budget, RunEnv};
use crate::host::HostFacts;
use crate::protocol::Task;
use crate::results::{Failure, Results, TierRecord, TierStatus, SCHEMA_VERSION};
use crate::runner;
use crate::scenario::Scenario;
use crate::state::{RunState, StateDir};
use crate::tier::Tier;

/// Consecutive failed launches of one variant that end the A/B run.
const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// One side of the A/B.
#[derive(Debug, Clone)]
pub struct Variant {
    /// "a" or "b": the folder and the run id suffix.
    pub name: String,
    /// What the user gave (`kernel=./vmlinuz-a ...`), recorded in the tier's settings.
    pub spec: Vec<String>,
    pub options: BackendOptions,
}

/// Everything an A/B run needs, validated.
#[derive(Debug, Clone)]
pub struct AbConfig {
    pub scenario: Scenario,
    pub tier: Tier,
    pub a: Variant,
    pub b: Variant,
    pub runs_override: Option<u32>,
    pub out_dir: PathBuf,
    pub state_root: PathBuf,
    pub cache_dir: PathBuf,
    pub agent: PathBuf,
    pub quiet: bool,
}

/// Parse `key=value` settings onto `base`: `kernel=` is the guest kernel, anything else a
/// backend setting.
pub fn variant(name: &str, spec: &[String], base: &BackendOptions) -> anyhow::Result<Variant> {
    let mut options = base.clone();
    for s in spec {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--{name} {s}: expected key=value, e.g. --{name} kernel=./vmlinuz-{name} or --{name} qemu=/usr/bin/qemu-system-x86_64");
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "kernel" {
            let p = PathBuf::from(v);
            if !p.is_file() {
                bail!("--{name} kernel={v}: no such file (give the path of a bzImage)");
            }
            options.kernel = Some(p);
        } else {
            options.settings.insert(k.to_string(), v.to_string());
        }
    }
    Ok(Variant {
        name: name.into(),
        spec: spec.to_vec(),
        options,
    })
}

struct Side<'a> {
    v: &'a Variant,
    backend: Box<dyn Backend>,
    state: Arc<RunState>,
    results: Results,
    consecutive_failures: u32,
}

/// Run both variants interleaved; returns (A, B). Results are written after every round.
pub fn run(
    cfg: &AbConfig,
    cancel: Arc<AtomicBool>,
    host: HostFacts,
) -> anyhow::Result<(Results, Results)> {
    let budget = Budget {
        cpus: runner::budget_cpus(cfg.scenario.budget.cpus)?,
        memory_mib: cfg.scenario.budget.memory_mib,
    };
    for v in [&cfg.a, &cfg.b] {
        if let backend::Availability::Unavailable { reason, fix } =
            backend::availability(cfg.tier, &host, &v.options)
        {
            bail!("variant {} of {}: {reason} (fix: {fix})", v.name, cfg.tier);
        }
    }
    let state_dir = StateDir::open(&cfg.state_root).with_context(|| {
        format!(
            "creating the state directory {}: run as root or set ISOBENCH_STATE_DIR",
            cfg.state_root.display()
        )
    })?;
    let mut sides = vec![];
    let mut res = Ok(());
    for v in [&cfg.a, &cfg.b] {
        let state = Arc::new(
            state_dir
                .begin_run(v.name.as_str())
                .context("starting the run's ledger")?,
        );
        // Each side's results carry its own unique run id (the ledger's), never the --out name.
        let run_id = state.id.clone();
        let env = RunEnv {
            agent: cfg.agent.clone(),
            state: state.clone(),
            cache_dir: cfg.cache_dir.clone(),
            budget: budget.clone(),
            options: v.options.clone(),
            host: host.clone(),
            cancel: cancel.clone(),
        };
        if !cfg.quiet {
            eprintln!(
                "preparing {} variant {} ({}) ...",
                cfg.tier,
                v.name,
                v.spec.join(" ")
            );
        }
        let backend = match backend::make(cfg.tier, &env) {
            Ok(b) => b,
            Err(e) => {
                let _ = runner::finish_run(&state);
                res = Err(anyhow::anyhow!(
                    "preparing {} variant {}: {e}",
                    cfg.tier,
                    v.name
                ));
                break;
            }
        };
        let results = empty_results(cfg, v, &run_id, &host, &budget, backend.as_ref());
        sides.push(Side {
            v,
            backend,
            state,
            results,
            consecutive_failures: 0,
        });
    }
    if res.is_ok() {
        res = interleave(cfg, &mut sides, &cancel);
    }
    let mut out = vec![];
    for mut s in sides {
        if let Err(e) = s.backend.finish() {
            if res.is_ok() {
                res = Err(anyhow::anyhow!(
                    "tearing down {} variant {}: {e}",
                    cfg.tier,
                    s.v.name
                ));
            }
        }
        let teardown = runner::finish_run(&s.state);
        if res.is_ok() {
            res = teardown;
        }
        s.results.interrupted = cancel.load(Ordering::Relaxed);
        s.results.finished_at = Some(runner::now_string());
        s.results.summarize();
        s.results.write(&cfg.out_dir.join(&s.v.name))?;
        out.push(s.results);
    }
    res?;
    let b = out.pop().expect("two sides");
    let a = out.pop().expect("two sides");
    Ok((a, b))
}

fn empty_results(
    cfg: &AbConfig,
    v: &Variant,
    run_id: &str,
    host: &HostFacts,
    budget: &Budget,
    b: &dyn Backend,
) -> Results {
    let mut settings = b.settings();
    settings.insert(
        "ab_variant".into(),
        format!("{}: {}", v.name, v.spec.join(" ")),
    );
    let plan = cfg.scenario.plan(cfg.tier, cfg.runs_override);
    let mut versions = BTreeMap::from([
        (
            "isobench".to_string(),
            env!("CARGO_PKG_VERSION").to_string(),
        ),
        ("host_kernel".into(), host.kernel.clone()),
    ]);
    for (k, val) in b.versions() {
        versions.insert(format!("{}.{k}", cfg.tier), val);
    }
    Results {
        schema_version: SCHEMA_VERSION,
        run_id: run_id.into(),
        started_at: runner::now_string(),
        finished_at: None,
        interrupted: false,
        host: host.clone(),
        versions,
        scenario: cfg.scenario.clone(),
        budget: budget.clone(),
        tiers: vec![TierRecord {
            tier: cfg.tier,
            availability: backend::availability(cfg.tier, host, &v.options),
            status: TierStatus::Ran,
            plan: Some(plan),
            settings,
            versions: b.versions(),
            failures: vec![],
            launches: BTreeMap::new(),
            note: None,
            isolation: None,
        }],
        summaries: vec![],
        samples: vec![],
    }
}

/// Warmups, then measured rounds; within a round A B on even rounds, B A on odd ones.
fn interleave(cfg: &AbConfig, sides: &mut [Side], cancel: &AtomicBool) -> anyhow::Result<()> {
    let plan = cfg.scenario.plan(cfg.tier, cfg.runs_override);
    let total = u64::from(plan.warmup + plan.runs) * cfg.scenario.workloads.len() as u64 * 2;
    let pb = crate::output::progress(total, cfg.quiet);
    for round in 0..plan.warmup + plan.runs {
        let measured = round >= plan.warmup;
        let mround = round.saturating_sub(plan.warmup);
        for workload in &cfg.scenario.workloads {
            for k in 0..2 {
                let s = &mut sides[(k + round as usize) % 2];
                if cancel.load(Ordering::Relaxed) {
                    return Ok(());
                }
                pb.set_message(format!("{} {} {}", s.v.name, cfg.tier, workload.name()));
                let out = s.backend.run_once(&Task::new(workload.clone()));
                pb.inc(1);
                let rec = &mut s.results.tiers[0];
                match out {
                    Ok(o) => {
                        s.consecutive_failures = 0;
                        if measured {
                            *rec.launches.entry(workload.name().to_string()).or_default() += 1;
                            s.results.samples.extend(runner::samples_of(
                                cfg.tier,
                                workload.name(),
                                mround,
                                &o,
                            ));
                        }
                    }
                    Err(BackendError::Interrupted) => return Ok(()),
                    Err(e) => {
                        rec.failures.push(Failure {
                            workload: workload.name().into(),
                            round: mround,
                            message: e.to_string(),
                        });
                        s.consecutive_failures += 1;
                        if s.consecutive_failures >= MAX_CONSECUTIVE_FAILURES {
                            rec.status = TierStatus::Failed;
                            bail!("variant {} failed {MAX_CONSECUTIVE_FAILURES} launches in a row: {e}", s.v.name);
                        }
                    }
                }
            }
        }
        for s in sides.iter_mut() {
            s.results.summarize();
            s.results.write(&cfg.out_dir.join(&s.v.name))?;
        }
    }
    pb.finish_and_clear();
    Ok(())
}
