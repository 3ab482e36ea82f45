//! A comparison as a terminal table, Markdown (CI job summaries) or JSON. Warnings come first
//! in every format, so that nobody reads numbers from two different machines unwarned; what the
//! comparison could not see (power) comes right after the counts. Bookkeeping counters are
//! counted, not listed, in the table and Markdown (JSON lists them).

use std::fmt::Write as _;

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Color, Table};

use super::{Comparison, MetricComparison, Verdict};
use crate::output::num;

/// Output format of `isobench compare`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Markdown,
    Json,
}

pub fn render(c: &Comparison, f: Format) -> String {
    match f {
        Format::Table => table(c),
        Format::Markdown => markdown(c),
        Format::Json => json(c),
    }
}

fn sorted(c: &Comparison) -> Vec<&MetricComparison> {
    let mut v: Vec<&MetricComparison> = c
        .metrics
        .iter()
        .filter(|m| m.verdict != Verdict::Bookkeeping)
        .collect();
    v.sort_by(|a, b| {
        (a.verdict, &a.workload, &a.metric, a.tier).cmp(&(
            b.verdict,
            &b.workload,
            &b.metric,
            b.tier,
        ))
    });
    v
}

fn change(m: &MetricComparison) -> String {
    let Some(pct) = m.change_pct() else {
        return "-".into();
    };
    let mut s = format!("{pct:+.1}%");
    if let Some((lo, hi)) = m.ratio_ci {
        let _ = write!(
            s,
            " [{:+.1}, {:+.1}]",
            (lo - 1.0) * 100.0,
            (hi - 1.0) * 100.0
        );
    }
    s
}

fn p_cell(m: &MetricComparison) -> String {
    match (m.p_value, m.p_adjusted) {
        (Some(p), Some(a)) => format!("{} ({})", pval(p), pval(a)),
        _ => "-".into(),
    }
}

fn pval(p: f64) -> String {
    if p < 1e-4 {
        "<1e-4".into()
    } else {
        format!("{p:.4}")
    }
}

fn median(v: Option<f64>, n: usize) -> String {
    v.map_or("-".into(), |v| format!("{} (n={n})", num(v)))
}

/// Runs per side, or "more than MAX".
fn runs(r: Option<usize>) -> String {
    r.map_or(format!(">{}", super::power::MAX_RUNS), |n| n.to_string())
}

/// "12 / 5": runs per side to detect 5% / 10% at the observed noise.
fn runs_cell(m: &MetricComparison) -> String {
    m.power.map_or("-".into(), |p| {
        format!("{} / {}", runs(p.runs_5pct), runs(p.runs_10pct))
    })
}

/// The headline: counts of every verdict and how they were decided.
pub fn summary_line(c: &Comparison) -> String {
    format!(
        "{} regressed, {} improved, {} unchanged, {} cannot detect at this n, {} inconclusive, {} bookkeeping (not tested) ({}, {} correction over {} tested metrics, alpha {})",
        c.count(Verdict::Regressed),
        c.count(Verdict::Improved),
        c.count(Verdict::Unchanged),
        c.count(Verdict::CannotDetect),
        c.count(Verdict::Inconclusive),
        c.count(Verdict::Bookkeeping),
        c.test,
        c.correction,
        c.family_size,
        c.alpha,
    )
}

/// Why the gate could not see (for `Comparison::blind`).
pub fn blind_reason(c: &Comparison) -> String {
    let k = c.count(Verdict::CannotDetect);
    if k > 0 {
        format!(
            "{k} of {} tested metrics cannot detect any change at their n (with {} metrics, alpha {} needs at least {} runs per side)",
            c.family_size,
            c.family_size,
            c.alpha,
            runs(c.min_runs)
        )
    } else {
        "no metric could be tested (every one inconclusive or bookkeeping)".into()
    }
}

/// What the comparison could see, and the runs per side that would see a 5% and a 10% change
/// on every metric at the noise observed: one line per statement.
pub fn power_lines(c: &Comparison) -> Vec<String> {
    let mut v = vec![];
    if c.blind() {
        v.push(format!("CANNOT SEE: {}", blind_reason(c)));
    }
    if let Some([(r5, k5), (r10, k10)]) = c.runs_needed() {
        v.push(format!(
            "runs per side to detect a change on every metric at the observed noise (power {}, Holm over {} metrics): 5%: {} (most needed by {k5}); 10%: {} (by {k10})",
            super::power::POWER,
            c.family_size.max(1),
            runs(r5),
            runs(r10),
        ));
    }
    v
}

fn table(c: &Comparison) -> String {
    let mut out = String::new();
    for w in &c.warnings {
        let _ = writeln!(out, "WARNING: {w}");
    }
    let _ = writeln!(
        out,
        "base: {} ({}, {})",
        c.base.label, c.base.run_id, c.base.hostname
    );
    let _ = writeln!(
        out,
        "new:  {} ({}, {})",
        c.new.label, c.new.run_id, c.new.hostname
    );
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "tier",
        "workload",
        "metric",
        "base median",
        "new median",
        "change [95% CI]",
        "p (Holm)",
        "threshold",
        "runs for 5% / 10%",
        "verdict",
    ]);
    for m in sorted(c) {
        let colour = match m.verdict {
            Verdict::Regressed => Color::Red,
            Verdict::Improved => Color::Green,
            Verdict::Unchanged | Verdict::Bookkeeping => Color::Reset,
            Verdict::Inconclusive | Verdict::CannotDetect => Color::Yellow,
        };
        let mut verdict = m.verdict.as_str().to_string();
        if let Some(n) = &m.note {
            let _ = write!(verdict, ": {n}");
        }
        let right = |s: String| Cell::new(s).set_alignment(CellAlignment::Right);
        t.add_row(vec![
            Cell::new(m.tier.as_str()),
            Cell::new(&m.workload),
            Cell::new(format!("{} ({})", m.metric, m.unit)),
            right(median(m.base_median, m.base_n)),
            right(median(m.new_median, m.new_n)),
            right(change(m)),
            right(p_cell(m)),
            right(format!("±{:.0}%", m.threshold * 100.0)),
            right(runs_cell(m)),
            Cell::new(verdict).fg(colour),
        ]);
    }
    let _ = writeln!(out, "{t}");
    let _ = writeln!(out, "{}", summary_line(c));
    for l in power_lines(c) {
        let _ = writeln!(out, "{l}");
    }
    out
}

fn md_escape(s: &str) -> String {
    s.replace('|', "\\|")
}

fn markdown(c: &Comparison) -> String {
    let mut out = String::new();
    let headline = if c.count(Verdict::Regressed) > 0 {
        "❌ regression"
    } else if c.blind() {
        "⚠️ cannot see (no regression found, none could have been)"
    } else {
        "✅ no regression"
    };
    let _ = writeln!(out, "## isobench compare: {headline}\n");
    for w in &c.warnings {
        let _ = writeln!(out, "> **⚠️ WARNING:** {}\n", md_escape(w));
    }
    let _ = writeln!(
        out,
        "- base: `{}` ({}, host {}, kernel {})",
        c.base.label, c.base.run_id, c.base.hostname, c.base.kernel
    );
    let _ = writeln!(
        out,
        "- new: `{}` ({}, host {}, kernel {})",
        c.new.label, c.new.run_id, c.new.hostname, c.new.kernel
    );
    let _ = writeln!(out, "- {}", summary_line(c));
    for l in power_lines(c) {
        let _ = writeln!(out, "- {}", md_escape(&l));
    }
    let _ = writeln!(out);
    let _ = writeln!(out, "| tier | workload | metric | base median | new median | change [95% CI] | p (Holm) | threshold | runs for 5% / 10% | verdict |");
    let _ = writeln!(out, "|---|---|---|--:|--:|--:|--:|--:|--:|---|");
    for m in sorted(c) {
        let mut verdict = match m.verdict {
            Verdict::Regressed => "**regressed**".to_string(),
            v => v.as_str().to_string(),
        };
        if let Some(n) = &m.note {
            let _ = write!(verdict, " ({n})");
        }
        let _ = writeln!(
            out,
            "| {} | {} | {} ({}) | {} | {} | {} | {} | ±{:.0}% | {} | {} |",
            m.tier,
            md_escape(&m.workload),
            md_escape(&m.metric),
            md_escape(&m.unit),
            median(m.base_median, m.base_n),
            median(m.new_median, m.new_n),
            change(m),
            p_cell(m),
            m.threshold * 100.0,
            runs_cell(m),
            md_escape(&verdict),
        );
    }
    out
}

fn json(c: &Comparison) -> String {
    let mut v = serde_json::to_value(c).expect("comparison serialises");
    v["summary"] = serde_json::json!({
        "regressed": c.count(Verdict::Regressed),
        "improved": c.count(Verdict::Improved),
        "unchanged": c.count(Verdict::Unchanged),
        "inconclusive": c.count(Verdict::Inconclusive),
        "cannot_detect": c.count(Verdict::CannotDetect),
        "bookkeeping": c.count(Verdict::Bookkeeping),
        "blind": c.blind(),
        "power": power_lines(c),
        "regressed_metrics": c.regressed().map(MetricComparison::key).collect::<Vec<_>>(),
    });
    let mut s = serde_json::to_string_pretty(&v).expect("json value serialises");
    s.push('\n');
    s
}
