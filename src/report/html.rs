//! index.html: one self-contained page (inline CSS and SVG, no scripts, nothing fetched).

use std::fmt::Write;

use super::carryover::{self, Finding};
use super::charts::{tier_hex, tiers_present, Chart};
use super::claims::{ClaimVerdict, Verdict};
use super::isolation;
use super::metrics::{cost_ratio, Family, STARTUP_METRICS};
use super::published::{FigureRow, Provenance, Published};
use super::{esc, honesty_warnings};
use crate::model::availability::Availability;
use crate::model::results::{MetricSummary, Results, TierStatus};
use crate::model::tier::Tier;
use crate::output::{ci_text, num, ratio_ci_text};
use crate::stats::Ratio;

const CSS: &str = r#"
:root{--fg:#1d1d1f;--muted:#5f6368;--line:#d9d9de;--bg:#fff;--soft:#f6f6f8}
*{box-sizing:border-box}
body{margin:0;font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;color:var(--fg);background:var(--bg)}
main{max-width:1100px;margin:0 auto;padding:12px 16px 48px}
h1{font-size:1.6em;margin:.4em 0 .2em}h2{font-size:1.3em;margin:1.6em 0 .4em;border-bottom:2px solid var(--line);padding-bottom:.2em}
h3{font-size:1.05em;margin:1.2em 0 .3em}
nav{display:flex;flex-wrap:wrap;gap:6px 14px;font-size:.92em;margin:.4em 0 1em}
a{color:#0b57d0}
.banner{border-radius:8px;padding:10px 14px;margin:10px 0}
.host{background:var(--soft);border:1px solid var(--line)}
.warn{background:#fff4e5;border:1px solid #f0b35a}
.warn li{margin:.2em 0}
.muted{color:var(--muted);font-size:.92em}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch;margin:.4em 0 1em}
table{border-collapse:collapse;font-size:.9em;min-width:100%}
th,td{border:1px solid var(--line);padding:4px 7px;text-align:left;vertical-align:top}
th{background:var(--soft)}
td.n{text-align:right;white-space:nowrap;font-variant-numeric:tabular-nums}
figure{margin:.6em 0 1.2em;overflow-x:auto;-webkit-overflow-scrolling:touch}
figure svg{width:100%;min-width:620px;height:auto;display:block;border:1px solid var(--line);border-radius:6px}
figcaption{font-size:.88em;color:var(--muted)}
.chip{display:inline-block;width:.9em;height:.9em;border-radius:2px;vertical-align:-.1em;margin-right:.3em}
.legend span{margin-right:1em;white-space:nowrap}
.v{font-weight:600;padding:1px 7px;border-radius:10px;white-space:nowrap}
.v-supported{background:#e3f5e8;color:#11652c}.v-contradicted{background:#fde7e7;color:#9b1c1c}.v-inconclusive{background:#eeeef2;color:#44464d}
ul.checks{margin:.2em 0;padding-left:1.1em}
@media (max-width:600px){body{font-size:14px}main{padding:8px}th,td{padding:3px 5px}}
"#;

fn chip(t: Tier) -> String {
    format!(
        "<span class=\"chip\" style=\"background:{}\"></span>{}",
        tier_hex(t),
        esc(t.as_str())
    )
}

fn verdict(v: Verdict) -> String {
    format!("<span class=\"v v-{0}\">{0}</span>", v.label())
}

fn ratio_text(r: &Ratio) -> String {
    format!("×{:.2} {}", r.ratio, esc(&ratio_ci_text(r)))
}

/// Inline a chart's SVG so that it scales with the page (the viewBox stays, the fixed size goes).
fn inline_svg(c: &Chart) -> String {
    let svg = match (c.svg.find("<svg "), c.svg.find("viewBox")) {
        (Some(start), Some(vb)) if vb > start => format!(
            "{}<svg role=\"img\" aria-label=\"{}\" {}",
            &c.svg[..start],
            esc(&c.title),
            &c.svg[vb..]
        ),
        _ => c.svg.clone(),
    };
    format!(
        "<figure id=\"chart-{stem}\">{svg}<figcaption><b>{title}.</b> {what} <a href=\"charts/{stem}.svg\">SVG</a> · <a href=\"charts/{stem}.png\">PNG</a></figcaption></figure>\n",
        stem = esc(&c.stem),
        title = esc(&c.title),
        what = esc(&chart_sentence(c))
    )
}

/// What a chart shows, in a sentence (under every chart).
fn chart_sentence(c: &Chart) -> String {
    if c.stem == "spectrum" {
        "Each row is one metric, each dot one tier's median cost relative to bare, oriented so that > 1 always means costlier (time and latency: tier / bare; throughput: bare / tier); bars are the 95% bootstrap interval, drawn only when both sides have ≥ 5 samples.".into()
    } else if let Some(metric) = c.stem.strip_prefix("startup-") {
        format!("Each tier's launches of the do-nothing agent (noop workload) and their median: what the tier adds to {metric} compared with a plain process.")
    } else {
        "One bar per tier and metric: the median with its interval; a tier's bar against bare's shows what the tier costs that workload.".into()
    }
}

fn section(out: &mut String, id: &str, title: &str) {
    let _ = write!(
        out,
        "<section id=\"{}\">\n<h2>{}</h2>\n",
        esc(id),
        esc(title)
    );
}

fn title(r: &Results, out: &mut String) {
    let _ = write!(
        out,
        "<h1>isobench report</h1>\n<p class=\"muted\">run {} · started {} · finished {} · scenario “{}”</p>\n",
        esc(&r.run_id),
        esc(&r.started_at),
        esc(r.finished_at.as_deref().unwrap_or("not finished")),
        esc(&r.scenario.name)
    );
}

fn host(r: &Results, out: &mut String) {
    let h = &r.host;
    section(out, "host", "Host");
    let _ = writeln!(
        out,
        "<div class=\"banner host\"><b>{}</b> · {} · {} cores · {} GiB · kernel {} · {} · KVM: {} · cgroup {:?} · {}<br><span class=\"muted\">budget per tier: {} CPU(s), {} MiB · isobench {}</span></div>",
        esc(&h.hostname),
        esc(&h.cpu_model),
        h.cores,
        num(h.memory_bytes as f64 / (1u64 << 30) as f64),
        esc(&h.kernel),
        esc(&h.os),
        esc(&h.kvm.label()),
        h.cgroup_layout,
        if h.virtualized { "the host is itself a VM" } else { "bare-metal host" },
        r.budget.cpus.len(),
        r.budget.memory_mib,
        esc(r.versions.get("isobench").map(String::as_str).unwrap_or("?")),
    );
    out.push_str("</section>\n");
}

/// What the run found: one row per claim, its verdict and the figure that decided it.
fn findings(claims: &[ClaimVerdict], out: &mut String) {
    section(out, "findings", "What this run found");
    out.push_str("<div class=\"scroll\"><table id=\"findings-table\"><tr><th>#</th><th>the guide's claim</th><th>verdict</th><th>what decided it</th></tr>\n");
    for c in claims {
        let h = super::headline(c);
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td><b>{}</b><br><span class=\"muted\">{}</span></td><td>{}</td><td>{}</td></tr>",
            h.id,
            esc(h.title),
            esc(c.claim),
            verdict(h.verdict),
            esc(&h.figure)
        );
    }
    out.push_str("</table></div><p class=\"muted\">Every check of every claim, and its rule: <a href=\"#claims\">the claims, judged</a> (docs/claims.md). Host, warnings and the tiers below the spectrum.</p></section>\n");
}

fn honesty(r: &Results, out: &mut String) {
    let w = honesty_warnings(r);
    if w.is_empty() {
        return;
    }
    section(out, "honesty", "Read this first");
    out.push_str("<div class=\"banner warn\"><ul>");
    for line in w {
        let _ = write!(out, "<li>{}</li>", esc(&line));
    }
    out.push_str("</ul></div></section>\n");
}

fn tiers_table(r: &Results, out: &mut String) {
    section(out, "tiers", "Tiers");
    out.push_str("<div class=\"scroll\"><table><tr><th>tier</th><th>what it is</th><th>status</th><th>how it ran</th><th>launches</th></tr>\n");
    let mut tiers: Vec<_> = r.tiers.iter().collect();
    tiers.sort_by_key(|t| t.tier);
    for t in tiers {
        let how = match &t.availability {
            Availability::Available { detail } => detail.clone(),
            Availability::Unavailable { reason, fix } => {
                format!("unavailable: {reason} (fix: {fix})")
            }
        };
        let settings: Vec<String> = t.settings.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let status = match t.status {
            TierStatus::Ran => "ran",
            TierStatus::Skipped => "skipped",
            TierStatus::Failed => "failed",
        };
        let launches: u32 = t.launches.values().sum();
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{status}{}</td><td><details><summary>{}</summary>{}{}</details></td><td class=\"n\">{launches}</td></tr>",
            chip(t.tier),
            esc(&t.tier.describe()),
            if t.failures.is_empty() { String::new() } else { format!(" ({} failed launches)", t.failures.len()) },
            esc(&first_words(&how)),
            esc(&how),
            if settings.is_empty() { String::new() } else { format!("<br><span class=\"muted\">{}</span>", esc(&settings.join(", "))) },
        );
    }
    out.push_str("</table></div>\n<p class=\"legend\">");
    for t in tiers_present(r) {
        let _ = write!(out, "<span>{}</span>", chip(t));
    }
    out.push_str("</p></section>\n");
}

/// The summary line of a folded "how it ran": up to the first parenthesis or colon, at most 60
/// characters.
fn first_words(s: &str) -> String {
    let head = s[..s.find(['(', ':']).unwrap_or(s.len())].trim();
    let short: String = head.chars().take(60).collect();
    if short.len() < s.trim().len() {
        format!("{short} …")
    } else {
        short
    }
}

/// Family table: one row per metric, one column per tier (median [CI], ratio to bare).
fn family_table(r: &Results, fam: &Family, out: &mut String) {
    let tiers = tiers_present(r);
    let mut keys: Vec<(&str, &str, &str)> = r
        .summaries
        .iter()
        .filter(|s| &Family::of_workload(&s.workload) == fam)
        .map(|s| (s.workload.as_str(), s.metric.as_str(), s.unit.as_str()))
        .collect();
    let order = |m: &str| {
        STARTUP_METRICS
            .iter()
            .position(|x| *x == m)
            .map(|p| p + 100)
            .unwrap_or(if super::metrics::is_bookkeeping(m, "") {
                200
            } else {
                0
            })
    };
    keys.sort_by_key(|(w, m, _)| (*w, order(m), *m));
    keys.dedup();
    out.push_str("<div class=\"scroll\"><table><tr><th>workload / metric (unit)</th>");
    for t in &tiers {
        let _ = write!(out, "<th>{}</th>", chip(*t));
    }
    out.push_str("</tr>\n");
    for (w, m, unit) in keys {
        let better = r
            .summaries
            .iter()
            .find(|s| s.workload == w && s.metric == m)
            .map(|s| s.better);
        let arrow = match better {
            Some(crate::protocol::Better::Higher) => "↑",
            _ => "↓",
        };
        let _ = write!(
            out,
            "<tr><td>{}/{} ({}) {arrow}</td>",
            esc(w),
            esc(m),
            esc(unit)
        );
        for t in &tiers {
            match r.summary(*t, w, m) {
                Some(s) => {
                    let _ = write!(out, "<td class=\"n\">{}</td>", cell(s));
                }
                None => out.push_str("<td class=\"n\">-</td>"),
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div><p class=\"muted\">Each cell: median [95% interval of the median, distribution-free; at n = 5 it is [min, max] and labelled with its 93.8% coverage; none below n = 5] (n launches); second line: cost ratio to bare [95% bootstrap interval, only with ≥ 5 samples on both sides], &gt; 1 = costlier. ↑ higher is better, ↓ lower is better.</p>\n");
}

fn cell(s: &MetricSummary) -> String {
    let ratio = match &s.ratio_to_bare {
        Some(x) => ratio_text(&cost_ratio(x.clone(), s.better)),
        None if s.tier == Tier::Bare => "reference".into(),
        None => "-".into(),
    };
    format!(
        "{} {} (n={})<br><span class=\"muted\">{}</span>",
        num(s.stats.median),
        esc(&ci_text(&s.stats)),
        s.stats.n,
        ratio
    )
}

/// Carry-over: per tier and startup metric, does the previous tier explain the variance?
fn carry_over(r: &Results, out: &mut String) {
    section(
        out,
        "carry-over",
        "Carry-over: does the previous tier explain a tier's variance?",
    );
    let rows = carryover::analyse(r);
    if rows.is_empty() {
        out.push_str(
            "<p class=\"muted\">No noop launches in this run: nothing to analyse.</p></section>\n",
        );
        return;
    }
    if carryover::unrecorded(&rows) {
        let _ = writeln!(
            out,
            "<p class=\"muted\">{}</p></section>",
            esc(carryover::UNRECORDED_TEXT)
        );
        return;
    }
    if let Some(line) = carryover::order_line(r) {
        let _ = writeln!(out, "<p>{}</p>", esc(&line));
    }
    out.push_str("<div class=\"scroll\"><table id=\"carry-over-table\"><tr><th>tier</th><th>metric</th><th>n</th><th>median (ms) by previous tier</th><th>H (df)</th><th>p</th><th>η²</th><th>spread of medians</th><th>finding</th></tr>\n");
    for c in &rows {
        let (h, p, eta, spread) = match &c.finding {
            Finding::Tested {
                kw, median_spread, ..
            } => (
                format!("{:.2} ({})", kw.h, kw.df),
                carryover::p_text(kw.p),
                format!("{:.2}", kw.eta_squared),
                format!("{:.1}%", median_spread * 100.0),
            ),
            _ => ("-".into(), "-".into(), "-".into(), "-".into()),
        };
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            chip(c.tier),
            esc(c.metric),
            c.n,
            esc(&c.groups_text()),
            esc(&h),
            esc(&p),
            esc(&eta),
            esc(&spread),
            esc(&c.sentence())
        );
    }
    let _ = writeln!(
        out,
        "</table></div><p class=\"muted\">{} Spread of medians: largest minus smallest group median, over the tier's median.</p></section>",
        esc(carryover::EXPLANATION)
    );
}

fn claims_table(v: &[ClaimVerdict], out: &mut String) {
    section(out, "claims", "The guide's claims, judged");
    out.push_str("<p class=\"muted\">Each claim is mapped to metrics by the rule shown (docs/claims.md). A claim is contradicted when any check is, supported when every check is, inconclusive otherwise.</p>\n");
    out.push_str("<div class=\"scroll\"><table id=\"claims-table\"><tr><th>#</th><th>claim</th><th>verdict</th><th>rule</th><th>evidence</th></tr>\n");
    for c in v {
        let _ = write!(
            out,
            "<tr><td>{}</td><td>{}</td><td>{}{}</td><td>{}</td><td><ul class=\"checks\">",
            c.id,
            esc(c.claim),
            verdict(c.verdict),
            c.parts
                .iter()
                .map(|(name, v)| format!("<br>{}: {}", esc(name), verdict(*v)))
                .collect::<String>(),
            esc(c.rule)
        );
        for k in &c.checks {
            let _ = write!(
                out,
                "<li>{} <b>{}</b>: {}</li>",
                verdict(k.verdict),
                esc(&k.what),
                esc(&k.evidence)
            );
        }
        for n in &c.notes {
            let _ = write!(out, "<li class=\"muted\">note: {}</li>", esc(n));
        }
        out.push_str("</ul></td></tr>\n");
    }
    out.push_str("</table></div></section>\n");
}

fn provenance(p: &Provenance, out: &mut String) {
    let _ = write!(out, "<p class=\"muted\">Source: <i>{}</i>", esc(&p.title));
    for (k, v) in &p.detail {
        let _ = write!(out, " · {}: {}", esc(k), esc(v));
    }
    let _ = write!(out, " · confidence: <b>{}</b>", esc(&p.confidence));
    if p.is_secondary() {
        out.push_str(" (read from notes and replications that quote the paper, not from its tables: treat the published figures as approximate)");
    }
    out.push_str("</p>\n");
}

fn opt_ratio(r: Option<&Ratio>) -> String {
    r.map(ratio_text).unwrap_or_else(|| "not measured".into())
}

fn felter(p: &Published, out: &mut String) {
    section(out, "felter", "Felter et al. 2015 beside our ratios");
    provenance(&p.felter, out);
    out.push_str("<div class=\"scroll\"><table id=\"felter-table\"><tr><th>benchmark</th><th>what</th><th>Felter Docker / native</th><th>ours container / bare</th><th>within the study's Docker range?</th><th>Felter KVM / native</th><th>ours microvm / bare</th><th>within the study's KVM range?</th><th>ours emulated / bare (context: TCG, not KVM)</th><th>our metric</th><th>the study's parameters</th><th>ours</th><th>note</th></tr>\n");
    for row in &p.felter_rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"n\">{}</td><td>{}</td><td class=\"muted\">{}</td><td class=\"muted\">{}</td><td class=\"muted\">{}</td></tr>",
            esc(&row.benchmark),
            esc(&row.what),
            esc(&row.docker),
            opt_ratio(row.container.as_ref()),
            esc(&row.docker_within),
            esc(&row.kvm),
            opt_ratio(row.microvm.as_ref()),
            esc(&row.kvm_within),
            opt_ratio(row.emulated.as_ref()),
            esc(row.ours.as_deref().unwrap_or("none comparable")),
            esc(&row.study_params),
            esc(&row.our_params),
            esc(&row.note)
        );
    }
    let _ = writeln!(
        out,
        "</table></div><p class=\"muted\">Ratios are guest / native in each metric's own direction, as in the paper: for throughput &lt; 1 is worse, for latency &gt; 1 is worse. \"Within the study's range\": our ratio's 95% interval overlaps the study's figure (or its range, e.g. TCP and UDP RR) widened by {:.0}% each side (other hardware, other sizes: see the parameters). The emulated tier is QEMU's TCG software emulation: it stands for neither hosted nor hardware-assisted virtualization and is never judged against the study's KVM.</p></section>",
        super::published::STUDY_TOLERANCE * 100.0
    );
}

fn figures(rows: &[FigureRow], out: &mut String) {
    out.push_str("<div class=\"scroll\"><table><tr><th>figure</th><th>published</th><th>ours: median [interval of the median]</th></tr>\n");
    for f in rows {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"n\">{}</td><td>{}</td></tr>",
            esc(&f.figure),
            esc(&f.published),
            esc(&f.ours)
        );
    }
    out.push_str("</table></div>\n");
}

fn firecracker(p: &Published, out: &mut String) {
    section(
        out,
        "firecracker",
        "Firecracker's published figures beside the VM tiers",
    );
    provenance(&p.firecracker, out);
    figures(&p.firecracker_rows, out);
    out.push_str("<h3>Container runtimes</h3>\n");
    provenance(&p.runtimes, out);
    figures(&p.runtime_rows, out);
    out.push_str("<p class=\"muted\">Published figures come from other hardware and other setups: set them beside ours for scale, not as a benchmark of this machine.</p></section>\n");
}

fn isolation_matrix(r: &Results, out: &mut String) {
    section(
        out,
        "isolation",
        "Isolation matrix: what the agent saw from inside",
    );
    out.push_str("<p class=\"muted\">Observed by the agent in one probe launch per tier; namespaces compared with bare's (own = different from bare's, shared = the same).</p>\n<div class=\"scroll\"><table id=\"isolation-table\"><tr><th>tier</th>");
    for c in isolation::COLUMNS {
        let _ = write!(out, "<th>{}</th>", esc(c));
    }
    out.push_str("</tr>\n");
    for row in isolation::matrix(r) {
        let _ = write!(out, "<tr><td>{}</td>", chip(row.tier));
        match row.cells {
            Some(cells) => {
                for c in cells {
                    let _ = write!(out, "<td>{}</td>", esc(&c));
                }
            }
            None => {
                let _ = write!(out, "<td colspan=\"{}\" class=\"muted\">not observed (the tier did not run, or its probe failed)</td>", isolation::COLUMNS.len());
            }
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table></div></section>\n");
}

/// The whole page.
pub fn page(
    r: &Results,
    fams: &[Family],
    charts: &[Chart],
    claims: &[ClaimVerdict],
    published: &Published,
) -> String {
    let mut out = String::with_capacity(256 * 1024);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>isobench report — {}</title>\n<style>{CSS}</style></head>\n<body><main>\n",
        esc(&r.run_id)
    );
    let spectrum = charts.iter().find(|c| c.stem == "spectrum");
    let mut nav = vec![("findings", "Findings".to_string())];
    if spectrum.is_some() {
        nav.push(("spectrum", "Spectrum".into()));
    }
    nav.push(("host", "Host".into()));
    if !honesty_warnings(r).is_empty() {
        nav.push(("honesty", "Read this first".into()));
    }
    nav.push(("tiers", "Tiers".into()));
    let fam_ids: Vec<(String, String)> = fams
        .iter()
        .map(|f| (format!("family-{}", f.id()), f.title()))
        .collect();
    let mut nav_html = String::from("<nav>");
    for (id, title) in nav
        .iter()
        .map(|(a, b)| ((*a).to_string(), b.clone()))
        .chain(fam_ids.iter().cloned())
        .chain(
            [
                ("carry-over", "Carry-over"),
                ("claims", "Claims"),
                ("felter", "Felter 2015"),
                ("firecracker", "Firecracker"),
                ("isolation", "Isolation"),
                ("raw-data", "Raw data"),
            ]
            .map(|(a, b)| (a.to_string(), b.to_string())),
        )
    {
        let _ = write!(nav_html, "<a href=\"#{}\">{}</a>", esc(&id), esc(&title));
    }
    nav_html.push_str("</nav>\n");

    // What the run found first (verdicts, the spectrum), then the details: host, warnings, tiers,
    // each family, the claims' checks, the published figures.
    title(r, &mut out);
    out.push_str(&nav_html);
    findings(claims, &mut out);
    if let Some(c) = spectrum {
        section(
            &mut out,
            "spectrum",
            "Spectrum: what each tier costs, metric by metric",
        );
        out.push_str(&inline_svg(c));
        out.push_str("</section>\n");
    }
    host(r, &mut out);
    honesty(r, &mut out);
    tiers_table(r, &mut out);
    for (f, (id, title)) in fams.iter().zip(&fam_ids) {
        section(&mut out, id, title);
        let prefix = if *f == Family::Startup {
            "startup-".to_string()
        } else {
            f.id()
        };
        for c in charts.iter().filter(|c| {
            if *f == Family::Startup {
                c.stem.starts_with(&prefix)
            } else {
                c.stem == prefix
            }
        }) {
            out.push_str(&inline_svg(c));
        }
        family_table(r, f, &mut out);
        out.push_str("</section>\n");
    }
    super::apps::html(r, &mut out);
    carry_over(r, &mut out);
    claims_table(claims, &mut out);
    felter(published, &mut out);
    firecracker(published, &mut out);
    isolation_matrix(r, &mut out);
    section(&mut out, "raw-data", "Raw data");
    out.push_str("<ul><li><a href=\"results.json\">results.json</a>: everything (host, tiers, summaries, samples); schema in docs/results.md</li><li><a href=\"samples.csv\">samples.csv</a>: one row per measured value</li><li><a href=\"summary.md\">summary.md</a>: the Markdown summary</li><li>charts: <code>charts/*.svg</code>, <code>charts/*.png</code></li></ul>\n</section>\n");
    out.push_str("</main></body></html>\n");
    out
}
