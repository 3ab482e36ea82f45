//! `isobench compare`: two runs metric by metric; and the choice of thresholds, the comparison
//! printing and the exit code that `run --baseline` and `ab` share.

use std::path::Path;

use crate::cli::CompareArgs;
use crate::compare::render::{self, render, Format};
use crate::compare::{compare, CompareOptions, Comparison, Thresholds};
use crate::exit_codes::ExitCode;
use crate::model::results::Results;

pub fn run(a: &CompareArgs) -> anyhow::Result<ExitCode> {
    let base = Results::load(&a.base)?;
    let new = Results::load(&a.new)?;
    let opts = compare_options(a.thresholds.as_deref(), &base)?;
    print_hosts(&base, &new);
    let c = compare(
        &base,
        &a.base.display().to_string(),
        &new,
        &a.new.display().to_string(),
        &opts,
    );
    Ok(report_comparison(&c, a.format))
}

/// Runs of different hosts: both hosts' facts on stderr, so the reader sees what differs.
fn print_hosts(base: &Results, new: &Results) {
    let (b, n) = (&base.host, &new.host);
    if (&b.hostname, &b.cpu_model, &b.kernel) != (&n.hostname, &n.cpu_model, &n.kernel) {
        use crate::report::multi::host_line;
        eprintln!("WARNING: the runs come from different hosts; their facts:");
        eprintln!("  base  {}", host_line(b));
        eprintln!("  new   {}", host_line(n));
    }
}

/// Thresholds: --thresholds FILE, else the **base** run's scenario `[compare]`, else the
/// defaults. Never the new run's: a change must not be able to loosen its own gate.
pub fn compare_options(
    thresholds: Option<&Path>,
    base: &Results,
) -> anyhow::Result<CompareOptions> {
    let thresholds = match (thresholds, &base.scenario.compare) {
        (Some(p), _) => Thresholds::load(p)?,
        (None, Some(spec)) => Thresholds::from_spec(
            spec.clone(),
            &format!(
                "[compare] of the base run's scenario {}",
                base.scenario.name
            ),
        )?,
        (None, None) => Thresholds::default(),
    };
    Ok(CompareOptions {
        thresholds,
        ..Default::default()
    })
}

/// Print a comparison; exit 1 naming every regressed metric, else 3 when the gate could not see
/// (a tested metric undetectable at its n, or no metric decided), else 0.
pub fn report_comparison(c: &Comparison, format: Format) -> ExitCode {
    crate::out!("{}", render(c, format));
    if format != Format::Table {
        for w in &c.warnings {
            eprintln!("WARNING: {w}");
        }
    }
    let bad: Vec<String> = c
        .regressed()
        .map(|m| format!("{} ({:+.1}%)", m.key(), m.change_pct().unwrap_or(f64::NAN)))
        .collect();
    if !bad.is_empty() {
        eprintln!("regressed: {}", bad.join(", "));
        return ExitCode::Failure;
    }
    if c.blind() {
        eprintln!("cannot see: {}", render::blind_reason(c));
        return ExitCode::Undetectable;
    }
    ExitCode::Success
}
