//! summary.md: a compact Markdown summary for a CI job summary or a pull-request comment.

use std::fmt::Write;

use super::carryover;
use super::charts::tiers_present;
use super::claims::ClaimVerdict;
use super::honesty_warnings;
use super::metrics::{LAUNCH_TO_EXIT_MS, LAUNCH_TO_READY_MS, NOOP};
use crate::model::results::Results;
use crate::model::tier::Tier;
use crate::output::{ci_text, num, ratio_ci_text};

/// Table cells must not break the table.
fn cell(s: &str) -> String {
    s.replace('|', "\\|").replace('\n', " ")
}

fn startup_cell(r: &Results, t: Tier, metric: &str) -> (String, String) {
    match r.summary(t, NOOP, metric) {
        Some(s) => (
            format!("{} {}", num(s.stats.median), ci_text(&s.stats)),
            match &s.ratio_to_bare {
                Some(x) => format!("×{:.2} {}", x.ratio, ratio_ci_text(x)),
                None if t == Tier::Bare => "1 (reference)".into(),
                None => "-".into(),
            },
        ),
        None => ("-".into(), "-".into()),
    }
}

pub fn summary(r: &Results, claims: &[ClaimVerdict]) -> String {
    let mut o = String::new();
    let h = &r.host;
    let _ = writeln!(o, "## isobench report: {}\n", cell(&r.run_id));
    // What the run found first; the host, its warnings and the numbers after.
    claims_table(claims, &mut o);
    let _ = writeln!(
        o,
        "**Host:** {} · {} · {} cores · kernel {} · KVM {} · {}\n",
        cell(&h.hostname),
        cell(&h.cpu_model),
        h.cores,
        cell(&h.kernel),
        cell(&h.kvm.label()),
        if h.virtualized {
            "the host is itself a VM"
        } else {
            "bare metal"
        }
    );
    for w in honesty_warnings(r) {
        let _ = writeln!(o, "> ⚠️ {}\n", cell(&w));
    }
    o.push('\n');
    let _ = writeln!(
        o,
        "### Startup (noop workload, ms: median [interval], ratio to bare [interval]; intervals 95%, 93.8% at n = 5, none below)\n"
    );
    let _ = writeln!(
        o,
        "| tier | {LAUNCH_TO_READY_MS} | ratio | {LAUNCH_TO_EXIT_MS} | ratio | n |"
    );
    let _ = writeln!(o, "|---|---:|---:|---:|---:|---:|");
    for t in tiers_present(r) {
        let (ready, ready_ratio) = startup_cell(r, t, LAUNCH_TO_READY_MS);
        let (exit, exit_ratio) = startup_cell(r, t, LAUNCH_TO_EXIT_MS);
        let n = r
            .summary(t, NOOP, LAUNCH_TO_EXIT_MS)
            .or(r.summary(t, NOOP, LAUNCH_TO_READY_MS))
            .map(|s| s.stats.n.to_string())
            .unwrap_or_else(|| "-".into());
        let _ = writeln!(
            o,
            "| {t} | {ready} | {ready_ratio} | {exit} | {exit_ratio} | {n} |"
        );
    }
    carry_over(r, &mut o);
    super::apps::markdown(r, &mut o);
    all_metrics(r, &mut o);
    let _ = writeln!(o, "\nFull report: `index.html` (charts, every metric, Felter 2015 and Firecracker comparisons, isolation matrix); rules in docs/claims.md.");
    o
}

/// The claims: verdict, and the checks that decided it.
fn claims_table(claims: &[ClaimVerdict], o: &mut String) {
    let _ = writeln!(o, "### What this run found: the guide's claims\n");
    let _ = writeln!(o, "| # | claim | verdict | evidence |");
    let _ = writeln!(o, "|---|---|---|---|");
    for c in claims {
        let decisive: Vec<String> = c
            .checks
            .iter()
            .filter(|k| k.verdict == c.verdict)
            .take(3)
            .map(|k| format!("{}: {}", k.what, k.evidence))
            .collect();
        let parts: Vec<String> = c
            .parts
            .iter()
            .map(|(name, v)| format!("{name}: {}", v.label()))
            .collect();
        let verdict = if parts.is_empty() {
            format!("**{}**", c.verdict.label())
        } else {
            format!("**{}** ({})", c.verdict.label(), parts.join(" · "))
        };
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            c.id,
            cell(c.claim),
            verdict,
            cell(&decisive.join("; "))
        );
    }
    o.push('\n');
}

/// Every metric of the run: what `isobench run --table` prints.
fn all_metrics(r: &Results, o: &mut String) {
    let _ = writeln!(
        o,
        "\n### Every metric (median [95% interval of the median], ratio to bare [95% interval])\n"
    );
    let _ = writeln!(
        o,
        "| workload | metric (unit) | tier | n | median | interval | ratio to bare |"
    );
    let _ = writeln!(o, "|---|---|---|---:|---:|---:|---:|");
    for m in crate::output::sorted_summaries(r) {
        let _ = writeln!(
            o,
            "| {} | {} ({}) | {} | {} | {} | {} | {} |",
            cell(&m.workload),
            cell(&m.metric),
            cell(&m.unit),
            m.tier,
            m.stats.n,
            num(m.stats.median),
            cell(&ci_text(&m.stats)),
            cell(&crate::output::ratio_cell(m))
        );
    }
}

/// The carry-over section: one row per tier and startup metric.
fn carry_over(r: &Results, o: &mut String) {
    let rows = carryover::analyse(r);
    if rows.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n### Carry-over (noop workload): does the previous tier explain a tier's variance?\n"
    );
    if carryover::unrecorded(&rows) {
        let _ = writeln!(o, "{}", carryover::UNRECORDED_TEXT);
        return;
    }
    if let Some(line) = carryover::order_line(r) {
        let _ = writeln!(o, "{line}\n");
    }
    let _ = writeln!(
        o,
        "| tier | metric | finding | median (ms) by previous tier |"
    );
    let _ = writeln!(o, "|---|---|---|---|");
    for c in &rows {
        let _ = writeln!(
            o,
            "| {} | {} | {} | {} |",
            c.tier,
            c.metric,
            cell(&c.sentence()),
            cell(&c.groups_text())
        );
    }
    let _ = writeln!(o, "\n{}", carryover::EXPLANATION);
}
