//! The report of a run: `index.html` (one self-contained page), `charts/*.svg` and
//! `charts/*.png`, and `summary.md`, all written into the run directory from `Results` alone.
//! What the page shows and how to read it: docs/report.md; the claim rules: docs/claims.md.

pub mod apps;
pub mod carryover;
pub mod charts;
pub mod claims;
mod html;
pub mod isolation;
mod markdown;
pub mod metrics;
pub mod multi;
pub mod published;

use std::path::{Path, PathBuf};

use crate::model::availability::Availability;
use crate::model::results::{Results, TierStatus};
use crate::model::tier::Tier;
use metrics::Family;

#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("writing {path}: {source} (is the run directory writable?)")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("drawing chart {chart}: {message}")]
    Chart { chart: String, message: String },
    #[error("{0}")]
    Font(String),
    #[error(
        "the compiled-in published figures are malformed: {0} (fix src/report/published.toml)"
    )]
    Published(String),
}

/// The files one report consists of.
#[derive(Debug, Clone, PartialEq)]
pub struct ReportFiles {
    pub index_html: PathBuf,
    pub summary_md: PathBuf,
    /// charts/*.svg and charts/*.png, in drawing order.
    pub charts: Vec<PathBuf>,
}

/// Draw the report of `results` into `run_dir` (index.html, summary.md, charts/).
pub fn write_report(run_dir: &Path, results: &Results) -> Result<ReportFiles, ReportError> {
    std::fs::create_dir_all(run_dir).map_err(|source| ReportError::Io {
        path: run_dir.into(),
        source,
    })?;
    let fams = families(results);
    let chart_dir = run_dir.join("charts");
    let drawn = charts::draw_all(results, &chart_dir, &fams)?;
    let verdicts = claims::judge(results);
    let published = published::compare(results)?;

    let index_html = run_dir.join("index.html");
    let page = html::page(results, &fams, &drawn, &verdicts, &published);
    write(&index_html, &page)?;
    let summary_md = run_dir.join("summary.md");
    write(&summary_md, &markdown::summary(results, &verdicts))?;

    let charts = drawn
        .iter()
        .flat_map(|c| ["svg", "png"].map(|ext| chart_dir.join(format!("{}.{ext}", c.stem))))
        .collect();
    Ok(ReportFiles {
        index_html,
        summary_md,
        charts,
    })
}

fn write(path: &Path, text: &str) -> Result<(), ReportError> {
    crate::host::fs::write_atomic(path, text.as_bytes()).map_err(|source| ReportError::Io {
        path: path.into(),
        source,
    })
}

/// The metric families this run has summaries for, in report order.
pub fn families(r: &Results) -> Vec<Family> {
    let mut v: Vec<Family> = r
        .summaries
        .iter()
        .map(|s| Family::of_workload(&s.workload))
        .collect();
    // Every workload carries startup metrics; the startup family is the noop workload's.
    v.sort();
    v.dedup();
    v
}

/// A claim in one line: what the terminal, the top of index.html and summary.md open with.
#[derive(Debug, Clone, PartialEq)]
pub struct Headline {
    pub id: u8,
    /// The claim in a few words.
    pub title: &'static str,
    pub verdict: claims::Verdict,
    /// The one figure that decided the verdict (or what is missing for one).
    pub figure: String,
}

/// The claim in a few words (the full sentence is [`claims::ClaimVerdict::claim`]).
pub fn claim_title(id: u8) -> &'static str {
    match id {
        1 => "containers lose almost nothing",
        2 => "containers far faster than a VM",
        3 => "a guest OS still costs",
        4 => "chroot isolates only the path view",
        5 => "namespaces + cgroups isolate containers",
        _ => "claim",
    }
}

/// The headline of a verdict: a decided claim shows its first check with that verdict; an
/// undecided one what it lacks (hardware KVM, samples, a tier), from its first undecided check.
pub fn headline(c: &claims::ClaimVerdict) -> Headline {
    let decisive = c.checks.iter().find(|k| k.verdict == c.verdict);
    let figure = match decisive {
        Some(k) if k.evidence.starts_with(claims::NEEDS_KVM) => k
            .evidence
            .split("; ")
            .next()
            .unwrap_or(&k.evidence)
            .to_string(),
        Some(k) => format!("{}: {}", k.what, k.evidence),
        None => c
            .notes
            .first()
            .cloned()
            .unwrap_or_else(|| "no checks".into()),
    };
    Headline {
        id: c.id,
        title: claim_title(c.id),
        verdict: c.verdict,
        figure,
    }
}

/// Warnings that belong at the top of the report: what makes some numbers or verdicts weaker.
pub fn honesty_warnings(r: &Results) -> Vec<String> {
    let mut w = vec![];
    if r.host.virtualized {
        w.push("This host is itself a virtual machine: every tier runs nested inside it, and the microvm tier (if it ran) uses nested virtualization. Absolute numbers are those of a guest, not of bare metal.".to_string());
    }
    match r.tiers.iter().find(|t| t.tier == Tier::Microvm) {
        None => w.push("microvm (hardware KVM) was not part of this run: claims about hardware-assisted virtualization are inconclusive.".into()),
        Some(t) if t.status != TierStatus::Ran => {
            let why = match &t.availability {
                Availability::Unavailable { reason, fix } => format!("{reason} (fix: {fix})"),
                Availability::Available { .. } => t.failures.last().map(|f| f.message.clone()).unwrap_or_else(|| "no launch succeeded".into()),
            };
            w.push(format!("microvm (hardware KVM) did not run: {why}. Claims about hardware-assisted virtualization are inconclusive."));
        }
        Some(_) => {}
    }
    for t in &r.tiers {
        if t.tier.is_vm() && t.status == TierStatus::Ran && claims::ran_emulated(r, t.tier) {
            let how = if t.tier == Tier::Emulated {
                "by design"
            } else {
                "because accel=tcg"
            };
            w.push(format!(
                "{} ran under QEMU TCG software emulation ({how}): its numbers show the cost of emulation, not of hardware-assisted virtualization, and are never used as evidence about KVM.",
                t.tier
            ));
        }
    }
    if r.interrupted {
        w.push("The run was interrupted before its plan completed: some tiers have fewer launches than planned.".into());
    }
    for t in &r.tiers {
        if t.status == TierStatus::Failed {
            w.push(format!(
                "{} failed: {}",
                t.tier,
                t.failures
                    .last()
                    .map(|f| f.message.as_str())
                    .unwrap_or("no launch succeeded")
            ));
        }
    }
    w
}

/// Escape text for HTML element content and attribute values.
pub fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            '\'' => o.push_str("&#39;"),
            c => o.push(c),
        }
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            esc("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
