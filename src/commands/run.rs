//! `isobench run`: validate every input, run the scenario on the tiers, write results and the
//! report, store the run in the history, and compare against a baseline when asked.

use std::path::Path;

use anyhow::bail;

use super::compare::{compare_options, report_comparison};
use super::options::{
    backend_options, install_interrupt, interrupted, is_root, scenario_or_default, state_root,
};
use crate::backend::registry;
use crate::cli::RunArgs;
use crate::compare::render::Format;
use crate::compare::{compare, Thresholds};
use crate::exit_codes::ExitCode;
use crate::history::{self, History};
use crate::measure::runner::{self, RunConfig};
use crate::model::facts::HostFacts;
use crate::model::results::{Results, TierStatus};
use crate::model::scenario::bounds::{self, Machine};
use crate::model::tier::Tier;
use crate::{outdir, outln};

pub fn run(args: RunArgs) -> anyhow::Result<ExitCode> {
    // Validate every input before any side effect: nothing (state directory, --out) is created
    // until every check below has passed.
    check_baseline(&args)?;
    let labels = crate::model::results::parse_labels(&args.labels).map_err(anyhow::Error::msg)?;
    if let Some(n) = args.runs {
        bounds::check_runs_override(n).map_err(anyhow::Error::msg)?;
    }
    let (scenario, origin) = scenario_or_default(args.scenario.as_deref())?;
    let explicit = args.backends.is_some();
    let tiers = match &args.backends {
        Some(list) => Tier::parse_list(list)?,
        None => scenario.tiers_or(registry::default_tiers()),
    };
    if tiers.is_empty() {
        bail!("--backends is empty: name at least one tier, e.g. --backends bare,container");
    }
    let state_root = state_root(&args.common);
    scenario.check_machine(&origin, &tiers, &Machine::probe(&state_root))?;
    if explicit && !is_root() {
        let need: Vec<&str> = tiers
            .iter()
            .filter(|t| **t != Tier::Bare)
            .map(|t| t.as_str())
            .collect();
        if !need.is_empty() {
            bail!(
                "{} need root: run `sudo isobench run ...`, or ask only for --backends bare",
                need.join(", ")
            );
        }
    }
    let options = backend_options(
        &args.common,
        &tiers,
        Some((&scenario, &origin)),
        &args.settings,
    )?;
    let host = HostFacts::detect();
    let (out_dir, link_latest) = match &args.out {
        Some(p) => (outdir::check(p, args.force_out)?, false),
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            (
                outdir::default_path(Path::new("reports"), &format!("{stamp}-{}", host.hostname))?,
                true,
            )
        }
    };
    let cfg = RunConfig {
        scenario,
        tiers,
        runs_override: args.runs,
        out_dir,
        link_latest,
        state_root,
        cache_dir: options.cache_dir.clone(),
        agent: runner::locate_agent()?,
        options,
        quiet: args.quiet,
        seed: args.seed,
        labels,
    };

    let interrupt = install_interrupt(&cfg.state_root)?;
    let outcome = runner::run(&cfg, interrupt.cancel.clone(), host)?;
    let r = &outcome.results;
    if !cfg.quiet {
        if args.table {
            outln!("{}", crate::output::results_table(r));
        }
        for line in crate::output::tier_notes(r) {
            outln!("{line}");
        }
        for line in claim_lines(r) {
            outln!("{line}");
        }
        outln!(
            "results: {}",
            outcome.out_dir.join("results.json").display()
        );
        outln!("samples: {}", outcome.out_dir.join("samples.csv").display());
    }
    // The report reads the result files only; a failure to draw it never loses the results.
    match crate::report::write_report(&outcome.out_dir, r) {
        Ok(files) if !cfg.quiet => {
            outln!("report:  {}", files.index_html.display());
            outln!(
                "summary: {} (every metric{})",
                files.summary_md.display(),
                if args.table { "" } else { "; --table prints them here" }
            );
        }
        Ok(_) => {}
        Err(e) => eprintln!("warning: the report could not be drawn ({e}); the results are kept, retry with `isobench report {}`", outcome.out_dir.display()),
    }
    if r.interrupted {
        crate::output::err(format_args!(
            "interrupted: the completed launches are kept in {}",
            outcome.out_dir.display()
        ));
        return Ok(interrupted(&interrupt));
    }
    let failed = r.tiers.iter().any(|t| t.status == TierStatus::Failed);
    let code = if failed {
        ExitCode::Failure
    } else {
        ExitCode::Success
    };
    after_run(&args, r, code)
}

/// The claims, one line each: verdict, the claim in a few words, the figure that decided it.
pub fn claim_lines(r: &Results) -> Vec<String> {
    let mut v = vec!["claims (rules: docs/claims.md; every check: the report):".to_string()];
    for c in crate::report::claims::judge(r) {
        let h = crate::report::headline(&c);
        v.push(format!(
            "  {} {:<12} {} — {}",
            h.id,
            h.verdict.label(),
            h.title,
            h.figure
        ));
    }
    v
}

/// `run --baseline PATH`: a bad baseline or thresholds file fails before anything runs.
fn check_baseline(args: &RunArgs) -> anyhow::Result<()> {
    if let Some(p) = args.baseline.as_deref().filter(|p| *p != "history") {
        Results::load(Path::new(p))?;
    }
    if let Some(t) = &args.thresholds {
        Thresholds::load(t)?;
    }
    Ok(())
}

/// After a run: load the baseline (before storing this run), store the run, compare.
fn after_run(args: &RunArgs, r: &Results, code: ExitCode) -> anyhow::Result<ExitCode> {
    let baseline = match args.baseline.as_deref() {
        None => None,
        Some("history") => {
            let h = History::open(&args.history)?;
            let k = history::DEFAULT_BASELINE_RUNS;
            match h.pooled_baseline(&r.host.hostname, &r.scenario.name, k, Some(&r.run_id))? {
                Some((b, rows)) => Some((
                    b,
                    format!(
                        "history: last {} run(s) in {}",
                        rows.len(),
                        args.history.display()
                    ),
                )),
                None => {
                    eprintln!(
                        "no earlier run of scenario {} on host {} in {}: nothing to compare against yet; this run becomes the baseline",
                        r.scenario.name,
                        r.host.hostname,
                        args.history.display()
                    );
                    None
                }
            }
        }
        Some(p) => Some((Results::load(Path::new(p))?, p.to_string())),
    };
    if !args.no_history {
        let id = history::record(&args.history, r)?;
        if !args.quiet {
            outln!("history: stored as run #{id} in {}", args.history.display());
        }
    }
    let Some((base, label)) = baseline else {
        return Ok(code);
    };
    let opts = compare_options(args.thresholds.as_deref(), &base)?;
    let c = compare(&base, &label, r, &r.run_id, &opts);
    Ok(report_comparison(&c, Format::Table))
}
