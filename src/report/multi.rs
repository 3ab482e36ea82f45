//! The merged report of two or more runs (`isobench report RUN_DIR RUN_DIR...`), typically from
//! several hosts: one `index.html` and one `summary.md` with a column per run (host and labels),
//! each host's facts in its column, the claim verdicts of each run side by side, and every
//! metric's cost ratio to bare per tier side by side; one chart of the startup ratios. Each run
//! is judged on its own results only: nothing is pooled across hosts. docs/report.md.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::prelude::*;

use super::charts::{self, axis_num, err, positive_range, render, style, Chart, DrawResult, Spec};
use super::claims::{self, ClaimVerdict, Verdict};
use super::metrics::{cost_ratio, is_charted, NOOP};
use super::{esc, ReportError, ReportFiles};
use crate::model::facts::{CgroupLayout, HostFacts};
use crate::model::results::{labels_text, Results, ResultsError};
use crate::model::tier::Tier;
use crate::output::num;
use crate::stats::Ratio;

/// Where `isobench report A B ...` writes unless `--out` says otherwise.
pub const DEFAULT_OUT: &str = "reports/merged";
/// The startup metric the chart shows.
const CHART_METRIC: &str = "launch_to_exit_ms";

#[derive(Debug, thiserror::Error)]
pub enum MultiError {
    #[error(transparent)]
    Results(#[from] ResultsError),
    #[error(transparent)]
    Report(#[from] ReportError),
    #[error("{0} is given twice: give each run once")]
    Duplicate(String),
}

/// One run of the merged report, with the name of its column.
pub struct Column {
    pub name: String,
    pub results: Results,
    pub verdicts: Vec<ClaimVerdict>,
}

/// Column names: the host, then its labels; the run id when that leaves two columns alike.
pub fn columns(runs: Vec<Results>) -> Vec<Column> {
    let base = |r: &Results| {
        let l = labels_text(&r.labels);
        if l.is_empty() {
            r.host.hostname.clone()
        } else {
            format!("{} [{l}]", r.host.hostname)
        }
    };
    let names: Vec<String> = runs.iter().map(base).collect();
    runs.into_iter()
        .enumerate()
        .map(|(i, r)| {
            let alike = names.iter().filter(|n| **n == names[i]).count() > 1;
            let name = if alike {
                format!("{} ({})", names[i], r.run_id)
            } else {
                names[i].clone()
            };
            Column {
                name,
                verdicts: claims::judge(&r),
                results: r,
            }
        })
        .collect()
}

/// Load the runs and write the merged report into `out`.
pub fn write_merged_report(run_dirs: &[PathBuf], out: &Path) -> Result<ReportFiles, MultiError> {
    let mut runs: Vec<Results> = vec![];
    for d in run_dirs {
        let r = Results::load(d)?;
        if runs
            .iter()
            .any(|o| o.run_id == r.run_id && o.host.hostname == r.host.hostname)
        {
            return Err(MultiError::Duplicate(d.display().to_string()));
        }
        runs.push(r);
    }
    Ok(write(out, &columns(runs))?)
}

/// Draw the merged report of `cols` into `out` (index.html, summary.md, charts/).
pub fn write(out: &Path, cols: &[Column]) -> Result<ReportFiles, ReportError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ReportError::Io { path, source }
    };
    let chart_dir = out.join("charts");
    std::fs::create_dir_all(&chart_dir).map_err(io(&chart_dir))?;
    let mut drawn = vec![];
    if let Some(spec) = StartupRatios::of(cols) {
        charts::ensure_font()?;
        drawn.push(render(
            &spec,
            &chart_dir,
            "merged-startup",
            "Startup cost per tier, run by run",
        )?);
    }
    let index_html = out.join("index.html");
    crate::host::fs::write_atomic(&index_html, html(cols, &drawn).as_bytes())
        .map_err(io(&index_html))?;
    let summary_md = out.join("summary.md");
    crate::host::fs::write_atomic(&summary_md, markdown(cols).as_bytes())
        .map_err(io(&summary_md))?;
    Ok(ReportFiles {
        index_html,
        summary_md,
        charts: drawn
            .iter()
            .flat_map(|c| ["svg", "png"].map(|e| chart_dir.join(format!("{}.{e}", c.stem))))
            .collect(),
    })
}

/// Host facts, one row each: (name, value per run).
pub fn fact_rows(cols: &[Column]) -> Vec<(&'static str, Vec<String>)> {
    type Fact = fn(&Results) -> String;
    let facts: [(&'static str, Fact); 12] = [
        ("host", |r| r.host.hostname.clone()),
        ("labels", |r| labels_text(&r.labels)),
        ("run", |r| r.run_id.clone()),
        ("started", |r| r.started_at.clone()),
        ("scenario", |r| r.scenario.name.clone()),
        ("CPU model", |r| r.host.cpu_model.clone()),
        ("cores", |r| r.host.cores.to_string()),
        ("memory", |r| format!("{} MiB", r.host.memory_bytes >> 20)),
        ("kernel", |r| r.host.kernel.clone()),
        ("KVM", |r| r.host.kvm.label()),
        ("cgroup layout", |r| cgroup_text(r.host.cgroup_layout)),
        ("host is a VM", |r| yes_no(r.host.virtualized)),
    ];
    facts
        .iter()
        .map(|(name, f)| (*name, cols.iter().map(|c| f(&c.results)).collect()))
        .collect()
}

fn yes_no(b: bool) -> String {
    if b { "yes" } else { "no" }.into()
}

fn cgroup_text(c: CgroupLayout) -> String {
    match c {
        CgroupLayout::V2 => "v2",
        CgroupLayout::V1 => "v1",
        CgroupLayout::Hybrid => "hybrid (v1 + v2)",
        CgroupLayout::None => "none",
    }
    .into()
}

/// One line of a host's facts, for `compare` across hosts.
pub fn host_line(h: &HostFacts) -> String {
    format!(
        "{}: {}, {} cores, kernel {}, KVM {}, cgroup {}{}",
        h.hostname,
        h.cpu_model,
        h.cores,
        h.kernel,
        h.kvm.label(),
        cgroup_text(h.cgroup_layout),
        if h.virtualized { ", itself a VM" } else { "" }
    )
}

/// Caveats of putting these runs side by side.
pub fn warnings(cols: &[Column]) -> Vec<String> {
    let mut w = vec![];
    let distinct = |f: fn(&Results) -> String| {
        cols.iter()
            .map(|c| f(&c.results))
            .collect::<BTreeSet<_>>()
            .len()
            > 1
    };
    if distinct(|r| r.host.hostname.clone()) {
        w.push("The runs come from different hosts: compare ratios to bare (each host's own baseline), not absolute numbers.".into());
    }
    if distinct(|r| r.scenario.name.clone()) {
        w.push("The runs used different scenarios: a metric missing in a column was not measured there.".into());
    }
    for c in cols {
        if c.results.interrupted {
            w.push(format!(
                "{} was interrupted: fewer launches than planned.",
                c.name
            ));
        }
    }
    w
}

/// Every (workload, metric, tier) with a ratio to bare in some run, in a stable order.
fn ratio_keys(cols: &[Column]) -> Vec<(String, String, Tier)> {
    let mut keys = BTreeSet::new();
    for c in cols {
        for s in &c.results.summaries {
            if s.ratio_to_bare.is_some() && is_charted(s) {
                // Startup first: the noop workload sorts before the others.
                keys.insert((
                    s.workload != NOOP,
                    s.workload.clone(),
                    s.metric.clone(),
                    s.tier,
                ));
            }
        }
    }
    keys.into_iter().map(|(_, w, m, t)| (w, m, t)).collect()
}

fn ratio_of(r: &Results, wl: &str, metric: &str, tier: Tier) -> Option<Ratio> {
    let s = r.summary(tier, wl, metric)?;
    Some(cost_ratio(s.ratio_to_bare.clone()?, s.better))
}

fn ratio_text(r: Option<&Ratio>) -> String {
    match r {
        None => "–".into(),
        Some(r) => match r.ci() {
            Some((lo, hi)) => format!("{}× [{}, {}]", num(r.ratio), num(lo), num(hi)),
            None => format!("{}× (no interval)", num(r.ratio)),
        },
    }
}

fn verdict_html(v: Verdict) -> String {
    format!("<span class=\"v {0}\">{0}</span>", v.label())
}

const CSS: &str = "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:#222}main{max-width:1200px;margin:auto;padding:1em 2em}table{border-collapse:collapse;margin:.5em 0}th,td{border:1px solid #ccc;padding:.3em .6em;vertical-align:top;text-align:left}th.run{background:#f3f3f8}.muted{color:#666}.warn{background:#fff4e0;border:1px solid #e0b060;padding:.5em 1em}.v{font-weight:600}.supported{color:#17803d}.contradicted{color:#b42318}.inconclusive{color:#8a6d00}.scroll{overflow-x:auto}td.num{font-variant-numeric:tabular-nums}";

fn header_row(cols: &[Column], first: &[&str]) -> String {
    let mut s = String::from("<tr>");
    for f in first {
        let _ = write!(s, "<th>{}</th>", esc(f));
    }
    for (i, c) in cols.iter().enumerate() {
        let _ = write!(
            s,
            "<th class=\"run\" data-run=\"{i}\">{}</th>",
            esc(&c.name)
        );
    }
    s.push_str("</tr>\n");
    s
}

/// The merged page.
pub fn html(cols: &[Column], drawn: &[Chart]) -> String {
    let mut o = String::with_capacity(64 * 1024);
    let _ = write!(o, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>isobench merged report — {} runs</title>\n<style>{CSS}</style></head>\n<body><main>\n", cols.len());
    let _ = write!(o, "<h1>isobench: {} runs side by side</h1>\n<p class=\"muted\">One column per run. Each run is judged on its own results; ratios are to that run's own bare tier, so hosts of different speed stay comparable. Runs: {}.</p>\n", cols.len(), cols.iter().map(|c| format!("<b>{}</b>", esc(&c.name))).collect::<Vec<_>>().join(", "));
    let w = warnings(cols);
    if !w.is_empty() {
        o.push_str("<div class=\"warn\" id=\"warnings\"><ul>");
        for x in &w {
            let _ = write!(o, "<li>{}</li>", esc(x));
        }
        o.push_str("</ul></div>\n");
    }

    o.push_str("<section id=\"claims\"><h2>The guide's claims, run by run</h2>\n<p class=\"muted\">Each claim judged on each run alone (docs/claims.md); a claim can be inconclusive on a host that lacks the tier it needs (hardware KVM for claims 2 and 3).</p>\n<div class=\"scroll\"><table id=\"merged-claims\">");
    o.push_str(&header_row(cols, &["#", "claim"]));
    for (k, v0) in cols[0].verdicts.iter().enumerate() {
        let _ = write!(o, "<tr><td>{}</td><td>{}</td>", v0.id, esc(v0.claim));
        for c in cols {
            let v = &c.verdicts[k];
            let _ = write!(
                o,
                "<td>{}<details><summary class=\"muted\">evidence</summary><ul>",
                verdict_html(v.verdict)
            );
            for ch in &v.checks {
                let _ = write!(
                    o,
                    "<li>{} <b>{}</b>: {}</li>",
                    verdict_html(ch.verdict),
                    esc(&ch.what),
                    esc(&ch.evidence)
                );
            }
            o.push_str("</ul></details></td>");
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table></div></section>\n");

    if let Some(c) = drawn.first() {
        let _ = write!(o, "<section id=\"chart\"><h2>{}</h2>\n<p class=\"muted\">The noop workload's launch → exit time of each tier over that run's bare, one bar per run (&gt; 1 is costlier than bare); whiskers are the 95% bootstrap interval where both sides have ≥ 5 samples.</p>\n", esc(&c.title));
        match c.svg.find("<svg") {
            Some(i) => o.push_str(&c.svg[i..]),
            None => o.push_str(&c.svg),
        }
        o.push_str("</section>\n");
    }

    o.push_str("<section id=\"ratios\"><h2>Cost ratio to bare, tier by tier</h2>\n<p class=\"muted\">Median of the tier over the median of bare on the same host, with its 95% bootstrap interval; oriented so that &gt; 1 is always costlier (time: tier / bare; throughput: bare / tier). – : not measured in that run.</p>\n<div class=\"scroll\"><table id=\"merged-ratios\">");
    o.push_str(&header_row(cols, &["workload", "metric", "tier"]));
    for (wl, metric, tier) in ratio_keys(cols) {
        let _ = write!(
            o,
            "<tr><td>{}</td><td>{}</td><td>{}</td>",
            esc(&wl),
            esc(&metric),
            tier
        );
        for c in cols {
            let r = ratio_of(&c.results, &wl, &metric, tier);
            let _ = write!(o, "<td class=\"num\">{}</td>", esc(&ratio_text(r.as_ref())));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table></div></section>\n");

    o.push_str(
        "<section id=\"hosts\"><h2>Hosts</h2>\n<div class=\"scroll\"><table id=\"merged-hosts\">",
    );
    o.push_str(&header_row(cols, &["fact"]));
    for (name, values) in fact_rows(cols) {
        let _ = write!(o, "<tr><th>{}</th>", esc(name));
        for v in values {
            let _ = write!(o, "<td>{}</td>", esc(&v));
        }
        o.push_str("</tr>\n");
    }
    o.push_str("</table></div>\n<p class=\"muted\">Each run's own report (with every chart, the raw samples and the isolation view) is in its folder: <code>isobench report RUN_DIR</code>.</p></section>\n</main></body></html>\n");
    o
}

fn md_row(cells: impl IntoIterator<Item = String>) -> String {
    let cells: Vec<String> = cells.into_iter().map(|c| c.replace('|', "\\|")).collect();
    format!("| {} |\n", cells.join(" | "))
}

fn md_header(cols: &[Column], first: &[&str]) -> String {
    let head = first
        .iter()
        .map(|s| s.to_string())
        .chain(cols.iter().map(|c| c.name.clone()));
    let n = first.len() + cols.len();
    format!("{}|{}\n", md_row(head), vec!["---|"; n].concat())
}

/// summary.md of the merged report.
pub fn markdown(cols: &[Column]) -> String {
    let mut o = format!("# isobench: {} runs side by side\n\n", cols.len());
    for w in warnings(cols) {
        let _ = writeln!(o, "> **Warning:** {w}");
    }
    o.push_str("\n## Claims\n\n");
    o.push_str(&md_header(cols, &["#", "claim"]));
    for (k, v0) in cols[0].verdicts.iter().enumerate() {
        let cells = [v0.id.to_string(), v0.claim.to_string()].into_iter().chain(
            cols.iter()
                .map(|c| c.verdicts[k].verdict.label().to_string()),
        );
        o.push_str(&md_row(cells));
    }
    o.push_str("\n## Cost ratio to bare (> 1 is costlier; 95% interval)\n\n");
    o.push_str(&md_header(cols, &["workload", "metric", "tier"]));
    for (wl, metric, tier) in ratio_keys(cols) {
        let cells = [wl.clone(), metric.clone(), tier.to_string()]
            .into_iter()
            .chain(
                cols.iter()
                    .map(|c| ratio_text(ratio_of(&c.results, &wl, &metric, tier).as_ref())),
            );
        o.push_str(&md_row(cells));
    }
    o.push_str("\n## Hosts\n\n");
    o.push_str(&md_header(cols, &["fact"]));
    for (name, values) in fact_rows(cols) {
        o.push_str(&md_row(std::iter::once(name.to_string()).chain(values)));
    }
    o
}

/// The chart: per tier (bare excluded), one bar per run of the startup cost ratio.
struct StartupRatios {
    runs: Vec<String>,
    /// (tier, ratio per run)
    tiers: Vec<(Tier, Vec<Option<Ratio>>)>,
}

/// Run colours (a run is not a tier: its own palette).
const RUN_RGB: [(u8, u8, u8); 6] = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
];

fn run_colour(i: usize) -> RGBColor {
    let (r, g, b) = RUN_RGB[i % RUN_RGB.len()];
    RGBColor(r, g, b)
}

impl StartupRatios {
    fn of(cols: &[Column]) -> Option<StartupRatios> {
        let tiers: Vec<(Tier, Vec<Option<Ratio>>)> = ratio_keys(cols)
            .into_iter()
            .filter(|(wl, m, _)| wl == NOOP && m == CHART_METRIC)
            .map(|(wl, m, t)| {
                (
                    t,
                    cols.iter()
                        .map(|c| ratio_of(&c.results, &wl, &m, t))
                        .collect(),
                )
            })
            .collect();
        (!tiers.is_empty()).then(|| StartupRatios {
            runs: cols.iter().map(|c| c.name.clone()).collect(),
            tiers,
        })
    }
}

impl Spec for StartupRatios {
    fn height(&self) -> u32 {
        440
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let (lo, hi) = positive_range(self.tiers.iter().flat_map(|(_, v)| {
            v.iter().flatten().flat_map(|r| {
                std::iter::once(r.ratio).chain(r.ci().into_iter().flat_map(|(a, b)| [a, b]))
            })
        }));
        let (lo, hi) = (lo.min(0.8), hi.max(1.25));
        let n = self.tiers.len();
        let k = self.runs.len();
        // Half-slot units: a bar is 2 wide, so its whisker can sit at its centre (odd x).
        let slots = i32::try_from(2 * n * (k + 1)).unwrap_or(1);
        let mut chart = ChartBuilder::on(root)
            .caption("noop launch → exit, tier / bare, per run", style(20))
            .margin(12)
            .margin_top(40)
            .x_label_area_size(40)
            .y_label_area_size(60)
            .build_cartesian_2d(0..slots, (lo..hi).log_scale())
            .map_err(err)?;
        let names: Vec<String> = self.tiers.iter().map(|(t, _)| t.to_string()).collect();
        let per = 2 * i32::try_from(k + 1).unwrap_or(1);
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(slots as usize)
            .x_label_formatter(&|x| {
                let i = usize::try_from(*x / per).unwrap_or(0);
                // The centre of the group's k bars (2k half-slots wide).
                if *x % per == per / 2 - 1 {
                    names.get(i).cloned().unwrap_or_default()
                } else {
                    String::new()
                }
            })
            .y_desc("cost ratio to bare (log)")
            .y_label_formatter(&|v| axis_num(*v))
            .label_style(style(13))
            .draw()
            .map_err(err)?;
        chart
            .draw_series(LineSeries::new([(0, 1.0), (slots, 1.0)], BLACK.mix(0.4)))
            .map_err(err)?;
        for (ti, (_, ratios)) in self.tiers.iter().enumerate() {
            for (ri, r) in ratios.iter().enumerate() {
                let Some(r) = r else { continue };
                let x = i32::try_from(ti).unwrap_or(0) * per + 2 * i32::try_from(ri).unwrap_or(0);
                let c = run_colour(ri);
                chart
                    .draw_series([Rectangle::new([(x, lo), (x + 2, r.ratio)], c.filled())])
                    .map_err(err)?;
                if let Some((a, b)) = r.ci() {
                    chart
                        .draw_series([PathElement::new(
                            [(x + 1, a), (x + 1, b)],
                            BLACK.stroke_width(2),
                        )])
                        .map_err(err)?;
                }
            }
        }
        let mut cx = 70;
        for (i, name) in self.runs.iter().enumerate() {
            root.draw(&Rectangle::new(
                [(cx, 8), (cx + 12, 20)],
                run_colour(i).filled(),
            ))
            .map_err(err)?;
            root.draw(&Text::new(name.clone(), (cx + 16, 8), style(13)))
                .map_err(err)?;
            cx += 40 + 7 * i32::try_from(name.chars().count()).unwrap_or(10);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::synthetic::{draw, results};

    fn run(host: &str, label: Option<&str>, seed: u64) -> Results {
        let mut r = results(host, draw(seed, 3, 8, None));
        r.run_id = format!("r{seed}");
        if let Some(l) = label {
            r.labels = [("class".to_string(), l.to_string())].into();
        }
        r.summarize();
        r
    }

    #[test]
    fn columns_are_named_by_host_and_label() {
        let cols = columns(vec![
            run("a", Some("x"), 1),
            run("a", Some("y"), 2),
            run("b", None, 3),
        ]);
        let names: Vec<&str> = cols.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["a [class=x]", "a [class=y]", "b"]);
        let same = columns(vec![run("a", None, 1), run("a", None, 2)]);
        assert_eq!(same[0].name, "a (r1)");
        assert!(warnings(&cols)
            .iter()
            .any(|w| w.contains("different hosts")));
        assert!(warnings(&same).is_empty());
    }

    #[test]
    fn tables_have_a_column_per_run() {
        let cols = columns(vec![run("a", Some("x"), 1), run("b", Some("y"), 2)]);
        let md = markdown(&cols);
        let claims_head = md.lines().find(|l| l.starts_with("| # | claim")).unwrap();
        assert_eq!(claims_head, "| # | claim | a [class=x] | b [class=y] |");
        assert_eq!(md.lines().filter(|l| l.starts_with("| 1 |")).count(), 1);
        let page = html(&cols, &[]);
        assert_eq!(
            page.matches("<th class=\"run\" data-run=\"1\">b [class=y]</th>")
                .count(),
            3
        );
        assert!(page.contains("<th>KVM</th>"));
    }
}
