//! `isobench ab`: two variants of one tier, interleaved, then compared.

use std::path::Path;

use anyhow::bail;

use super::compare::{compare_options, report_comparison};
use super::options::{
    backend_options, install_interrupt, interrupted, is_root, scenario_or_default, state_root,
};
use crate::backend::registry;
use crate::cli::AbArgs;
use crate::compare::{compare, CompareOptions, Thresholds};
use crate::exit_codes::ExitCode;
use crate::measure::runner;
use crate::model::facts::HostFacts;
use crate::model::scenario::bounds::{self, Machine};
use crate::model::tier::Tier;
use crate::{outdir, outln};

pub fn run(a: AbArgs) -> anyhow::Result<ExitCode> {
    if let Some(n) = a.runs {
        bounds::check_runs_override(n).map_err(anyhow::Error::msg)?;
    }
    let (scenario, origin) = scenario_or_default(a.scenario.as_deref())?;
    let tiers = Tier::parse_list(&a.backends)?;
    let [tier] = tiers[..] else {
        bail!(
            "--backends {}: an A/B runs two variants of exactly one tier, e.g. --backends emulated",
            a.backends
        );
    };
    if tier != Tier::Bare && !is_root() {
        bail!("{tier} needs root: run `sudo isobench ab ...`");
    }
    let base = backend_options(&a.common, &[tier], Some((&scenario, &origin)), &[])?;
    let state_root = state_root(&a.common);
    scenario.check_machine(&origin, &[tier], &Machine::probe(&state_root))?;
    let (va, vb) = (
        crate::ab::variant("a", &a.a, &base)?,
        crate::ab::variant("b", &a.b, &base)?,
    );
    registry::check_settings(&[tier], &va.options.settings, "--a")?;
    registry::check_settings(&[tier], &vb.options.settings, "--b")?;
    let thresholds = a.thresholds.as_deref().map(Thresholds::load).transpose()?;
    let host = HostFacts::detect();
    let out_dir = match &a.out {
        Some(p) => outdir::check_ab(p, a.force_out)?,
        None => {
            let stamp = chrono::Local::now().format("%Y%m%d-%H%M%S");
            outdir::default_path(
                Path::new("reports"),
                &format!("ab-{stamp}-{}", host.hostname),
            )?
        }
    };
    let cfg = crate::ab::AbConfig {
        scenario,
        tier,
        a: va,
        b: vb,
        runs_override: a.runs,
        out_dir,
        state_root,
        cache_dir: base.cache_dir.clone(),
        agent: runner::locate_agent()?,
        quiet: a.quiet,
        seed: a.seed,
    };
    let interrupt = install_interrupt(&cfg.state_root)?;
    let (ra, rb) = crate::ab::run(&cfg, interrupt.cancel.clone(), host)?;
    outln!(
        "results: {} and {}",
        cfg.out_dir.join("a").display(),
        cfg.out_dir.join("b").display()
    );
    if interrupt.signal().is_some() {
        crate::output::err(format_args!(
            "interrupted: the completed launches are kept in {}",
            cfg.out_dir.display()
        ));
        return Ok(interrupted(&interrupt));
    }
    let opts = match thresholds {
        Some(thresholds) => CompareOptions {
            thresholds,
            ..Default::default()
        },
        None => compare_options(None, &ra)?,
    };
    let c = compare(
        &ra,
        &format!("A: {}", cfg.a.spec.join(" ")),
        &rb,
        &format!("B: {}", cfg.b.spec.join(" ")),
        &opts,
    );
    Ok(report_comparison(&c, a.format))
}
