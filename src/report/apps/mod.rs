//! The applications' section of the report (issue 12): per application, throughput against
//! client connections (Redis) or threads (MySQL) per tier, latency, and each tier's ratio to
//! bare beside the study's (Felter et al. 2015: Docker net=host, Docker NAT, volume / layered
//! filesystem, KVM), read from `felter2015.toml`. Charts are inline SVG line charts of medians,
//! drawn with the report's font and tier colours ([`super::charts`]).

use std::fmt::Write as _;

use plotters::prelude::*;
use toml::{Table, Value};

use super::charts::tier_hex;
use super::claims::ran_emulated;
use super::esc;
use crate::model::results::Results;
use crate::model::tier::Tier;
use crate::stats::{self, Ratio};

const FELTER_TOML: &str = include_str!("../felter2015.toml");
const FONT: &str = "sans-serif";

/// The study's ratios to native for one application, read from felter2015.toml: (config label,
/// ratio), in the order Docker net=host, Docker NAT, volume / layered, KVM.
pub fn study_ratios(app: &str) -> Vec<(String, f64)> {
    let Ok(t) = FELTER_TOML.parse::<Table>() else {
        return vec![];
    };
    let results = t
        .get("felter2015")
        .and_then(|f| f.get("result"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let find = |b: &str| {
        results
            .iter()
            .find(|r| r.get("benchmark").and_then(Value::as_str) == Some(b))
            .cloned()
    };
    let f = |v: Option<&Value>| v.and_then(|v| v.as_float().or(v.as_integer().map(|i| i as f64)));
    match app {
        "redis" => {
            let Some(r) = find("redis") else {
                return vec![];
            };
            // At the highest connection count (120), SET and GET averaged.
            let at_last = |cfg: &str| -> Option<f64> {
                let mut acc = vec![];
                for op in ["set_kops", "get_kops"] {
                    let series = r.get(op)?;
                    let last = |k: &str| f(series.get(k)?.as_array()?.last());
                    acc.push(last(cfg)? / last("native")?);
                }
                Some(acc.iter().sum::<f64>() / acc.len() as f64)
            };
            [
                ("Docker net=host", "docker_host"),
                ("Docker NAT", "docker_nat"),
                ("KVM", "kvm"),
            ]
            .into_iter()
            .filter_map(|(l, k)| Some((l.to_string(), at_last(k)?)))
            .collect()
        }
        "mysql" => {
            let Some(r) = find("mysql_sysbench_oltp") else {
                return vec![];
            };
            let peak = r.get("peak_ratio");
            [
                ("Docker net=host, volume", "docker_host_vol"),
                ("Docker NAT, volume", "docker_nat_vol"),
                ("Docker NAT, layered fs (AUFS)", "docker_nat_aufs"),
                ("KVM (qcow2)", "kvm_qcow"),
            ]
            .into_iter()
            .filter_map(|(l, k)| Some((l.to_string(), f(peak?.get(k))?)))
            .collect()
        }
        _ => vec![],
    }
}

/// Every (x, median) of `workload`'s metrics named `<prefix><x>` for `tier`, by x.
fn series(r: &Results, tier: Tier, workload: &str, prefix: &str) -> Vec<(u32, f64)> {
    let mut v: Vec<(u32, f64)> = r
        .summaries
        .iter()
        .filter(|s| s.tier == tier && s.workload == workload)
        .filter_map(|s| Some((s.metric.strip_prefix(prefix)?.parse().ok()?, s.stats.median)))
        .collect();
    v.sort_by_key(|p| p.0);
    v
}

fn tiers_with(r: &Results, workload: &str) -> Vec<Tier> {
    let mut t: Vec<Tier> = r
        .summaries
        .iter()
        .filter(|s| s.workload == workload)
        .map(|s| s.tier)
        .collect();
    t.sort();
    t.dedup();
    t
}

/// The values of one metric of `workload` for `tier`, one per measured launch.
fn values(r: &Results, tier: Tier, workload: &str, metric: &str) -> Vec<f64> {
    r.samples
        .iter()
        .filter(|s| s.tier == tier && s.workload == workload && s.metric == metric)
        .map(|s| s.value)
        .collect()
}

/// A tier's throughput over bare's at the highest x both have (Redis: connections): the ratio
/// of the two medians, with its bootstrap interval from 5 launches a side up
/// ([`stats::ratio_of_medians`], as every ratio of the report).
fn point_ratio(r: &Results, tier: Tier, workload: &str, prefix: &str) -> Option<Ratio> {
    let bare = series(r, Tier::Bare, workload, prefix);
    let x = series(r, tier, workload, prefix)
        .iter()
        .map(|p| p.0)
        .filter(|x| bare.iter().any(|b| b.0 == *x))
        .max()?;
    let metric = format!("{prefix}{x}");
    stats::ratio_of_medians(
        &values(r, tier, workload, &metric),
        &values(r, Tier::Bare, workload, &metric),
        stats::BOOTSTRAP_RESAMPLES,
    )
}

/// Each launch's peak (MySQL: its best tps over the thread sweep), one per round.
fn peaks(r: &Results, tier: Tier, workload: &str, prefix: &str) -> Vec<f64> {
    let mut by_round: std::collections::BTreeMap<u32, f64> = Default::default();
    for s in r.samples.iter().filter(|s| {
        s.tier == tier
            && s.workload == workload
            && s.metric
                .strip_prefix(prefix)
                .is_some_and(|x| x.parse::<u32>().is_ok())
    }) {
        let e = by_round.entry(s.round).or_insert(f64::NEG_INFINITY);
        *e = e.max(s.value);
    }
    by_round.into_values().collect()
}

/// A tier's peak over bare's peak, whatever thread count each peaked at (the study's "at
/// peak"): the ratio of the medians of the launches' peaks, with its bootstrap interval.
fn peak_ratio(r: &Results, tier: Tier, workload: &str, prefix: &str) -> Option<Ratio> {
    stats::ratio_of_medians(
        &peaks(r, tier, workload, prefix),
        &peaks(r, Tier::Bare, workload, prefix),
        stats::BOOTSTRAP_RESAMPLES,
    )
}

/// An axis label: whole numbers from 10 up, two decimals below.
fn axis_num(v: f64) -> String {
    if v == 0.0 || v.abs() >= 10.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

/// An inline SVG line chart: one line per tier, medians against x.
fn line_chart(
    title: &str,
    x_desc: &str,
    y_desc: &str,
    lines: &[(Tier, Vec<(u32, f64)>)],
) -> String {
    let mut svg = String::new();
    let xs = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| f64::from(p.0)));
    let x_max = xs.fold(1.0f64, f64::max);
    let y_max = lines
        .iter()
        .flat_map(|l| l.1.iter().map(|p| p.1))
        .fold(0.0f64, f64::max)
        .max(1e-9)
        * 1.15;
    {
        let root = SVGBackend::with_string(&mut svg, (900, 420)).into_drawing_area();
        let drawn = (|| -> Result<(), Box<dyn std::error::Error + '_>> {
            root.fill(&WHITE)?;
            let mut chart = ChartBuilder::on(&root)
                .caption(title, (FONT, 20))
                .margin(12)
                .x_label_area_size(44)
                .y_label_area_size(70)
                .build_cartesian_2d(0f64..x_max * 1.05, 0f64..y_max)?;
            chart
                .configure_mesh()
                .x_desc(x_desc)
                .y_desc(y_desc)
                .label_style((FONT, 12))
                .x_label_formatter(&|v| format!("{v:.0}"))
                .y_label_formatter(&|v| axis_num(*v))
                .draw()?;
            for (tier, pts) in lines {
                let (cr, cg, cb) = super::charts::tier_rgb(*tier);
                let c = RGBColor(cr, cg, cb);
                let p: Vec<(f64, f64)> = pts.iter().map(|(x, y)| (f64::from(*x), *y)).collect();
                chart
                    .draw_series(LineSeries::new(p.clone(), c.stroke_width(2)))?
                    .label(tier.as_str())
                    .legend(move |(x, y)| {
                        PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(3))
                    });
                chart.draw_series(p.into_iter().map(|xy| Circle::new(xy, 3, c.filled())))?;
            }
            chart
                .configure_series_labels()
                .position(SeriesLabelPosition::UpperLeft)
                .label_font((FONT, 13))
                .background_style(WHITE.mix(0.8))
                .border_style(BLACK.mix(0.3))
                .draw()?;
            root.present()?;
            Ok(())
        })();
        if let Err(e) = drawn {
            return format!(
                "<p class=\"muted\">chart {} not drawn: {}</p>",
                esc(title),
                esc(&e.to_string())
            );
        }
    }
    // The chart is inlined in the page: drop the XML prolog a standalone file would have.
    let body = svg.find("<svg").map_or(svg.as_str(), |i| &svg[i..]);
    format!("<div class=\"chart\">{body}</div>\n")
}

/// The study's comparable configuration for our tier: (label, its ratio to native).
fn study_peer(r: &Results, tier: Tier, study: &[(String, f64)], app: &str, volume: bool) -> String {
    let pick = |starts: &str| {
        study
            .iter()
            .find(|(l, _)| l.starts_with(starts))
            .map(|(l, v)| format!("{l}: {v:.3}"))
            .unwrap_or_default()
    };
    if tier == Tier::Bare || tier == Tier::Chroot {
        return "native: 1".into();
    }
    if tier.is_vm() {
        let kvm = pick("KVM");
        return if ran_emulated(r, tier) {
            format!("{kvm} (ours is TCG emulation here, not KVM)")
        } else {
            kvm
        };
    }
    match (app, volume, tier) {
        // For Redis `volume` says the tier also ran the NAT path (`redis_nat`).
        ("redis", true, _) => format!(
            "direct ~ {}; NAT ~ {}",
            pick("Docker net=host"),
            pick("Docker NAT")
        ),
        ("redis", false, _) => pick("Docker net=host"),
        (_, true, _) => pick("Docker net=host, volume"),
        (_, false, _) => pick("Docker NAT, layered"),
    }
}

/// "points scaled ×0.05" when `tier` ran its application points shrunk (`app_scale`).
pub fn scale_note(r: &Results, tier: Tier) -> Option<String> {
    let s = r
        .tiers
        .iter()
        .find(|t| t.tier == tier)?
        .plan
        .as_ref()?
        .app_scale?;
    Some(format!("points scaled ×{s}"))
}

/// The tier as its row names it: with its scale when its points were shrunk.
fn tier_label(r: &Results, tier: Tier) -> String {
    match scale_note(r, tier) {
        Some(n) => format!("{tier} ({n})"),
        None => tier.to_string(),
    }
}

/// "0.84 [0.80, 0.88]" (the 95% interval), "0.84 (n = 3 vs 3: no interval)", or "–".
fn ratio_cell(v: &Option<Ratio>) -> String {
    match v {
        None => "–".into(),
        Some(r) => match r.ci() {
            Some((lo, hi)) => format!("{:.2} [{lo:.2}, {hi:.2}]", r.ratio),
            None => format!("{:.2} (no interval)", r.ratio),
        },
    }
}

/// What the section shows, as rows: (tier, [our ratios], study peer), per application.
struct AppTable {
    app: &'static str,
    columns: Vec<String>,
    rows: Vec<(Tier, Vec<Option<Ratio>>, String)>,
    study: Vec<(String, f64)>,
}

fn tables(r: &Results) -> Vec<AppTable> {
    let mut out = vec![];
    let mut redis = tiers_with(r, "redis");
    let nat = tiers_with(r, "redis_nat");
    redis.extend(nat.iter().copied());
    redis.sort();
    redis.dedup();
    if !redis.is_empty() {
        let top = |w: &str| {
            series(r, Tier::Bare, w, "get_rps_c")
                .last()
                .map(|p| format!(" at {} connections", p.0))
                .unwrap_or_default()
        };
        let (at, at_nat) = (top("redis"), top("redis_nat"));
        let study = study_ratios("redis");
        let mut columns = vec![
            format!("SET / bare{at}, direct"),
            format!("GET / bare{at}, direct"),
        ];
        if !nat.is_empty() {
            columns.push(format!("SET / bare{at_nat}, NAT"));
            columns.push(format!("GET / bare{at_nat}, NAT"));
        }
        out.push(AppTable {
            app: "redis",
            columns,
            rows: redis
                .iter()
                .map(|&t| {
                    let mut v = vec![
                        point_ratio(r, t, "redis", "set_rps_c"),
                        point_ratio(r, t, "redis", "get_rps_c"),
                    ];
                    if !nat.is_empty() {
                        v.push(point_ratio(r, t, "redis_nat", "set_rps_c"));
                        v.push(point_ratio(r, t, "redis_nat", "get_rps_c"));
                    }
                    (t, v, study_peer(r, t, &study, "redis", nat.contains(&t)))
                })
                .collect(),
            study,
        });
    }
    let mut mysql = tiers_with(r, "mysql");
    mysql.extend(tiers_with(r, "mysql_volume"));
    mysql.sort();
    mysql.dedup();
    if !mysql.is_empty() {
        let study = study_ratios("mysql");
        out.push(AppTable {
            app: "mysql",
            columns: vec![
                "rootfs: peak tps / bare's".into(),
                "volume: peak tps / bare's".into(),
            ],
            rows: mysql
                .iter()
                .map(|&t| {
                    let peer = format!(
                        "rootfs ~ {}; volume ~ {}",
                        study_peer(r, t, &study, "mysql", false),
                        study_peer(r, t, &study, "mysql", true)
                    );
                    (
                        t,
                        vec![
                            peak_ratio(r, t, "mysql", "tps_t"),
                            peak_ratio(r, t, "mysql_volume", "tps_t"),
                        ],
                        peer,
                    )
                })
                .collect(),
            study,
        });
    }
    out
}

/// The charts of one application: (workload, metric prefix, title, x, y).
fn chart_specs(
    app: &str,
) -> Vec<(
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static str,
)> {
    match app {
        "redis" => vec![
            (
                "redis",
                "set_rps_c",
                "Redis SET throughput vs client connections (medians)",
                "client connections",
                "requests/s",
            ),
            (
                "redis",
                "get_rps_c",
                "Redis GET throughput vs client connections (medians)",
                "client connections",
                "requests/s",
            ),
            (
                "redis",
                "get_p99_ms_c",
                "Redis GET p99 latency vs client connections (medians)",
                "client connections",
                "ms",
            ),
        ],
        _ => vec![
            (
                "mysql",
                "tps_t",
                "MySQL (sysbench OLTP read-only), data on the rootfs: tps vs threads",
                "client threads",
                "transactions/s",
            ),
            (
                "mysql_volume",
                "tps_t",
                "MySQL, data on a volume: tps vs threads",
                "client threads",
                "transactions/s",
            ),
            (
                "mysql",
                "lat_p95_ms_t",
                "MySQL, data on the rootfs: p95 latency vs threads",
                "client threads",
                "ms",
            ),
            (
                "mysql_volume",
                "lat_p95_ms_t",
                "MySQL, data on a volume: p95 latency vs threads",
                "client threads",
                "ms",
            ),
        ],
    }
}

/// The HTML section (nothing when the run had no application workload).
pub fn html(r: &Results, out: &mut String) {
    let tables = tables(r);
    if tables.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "<section id=\"apps\">\n<h2>Applications: Redis and MySQL beside the study</h2>"
    );
    out.push_str("<p class=\"muted\">The server runs inside each tier and the benchmark client on the host, over the tier's own network path (docs/apps.md). Lines are medians per point; the tables give each tier's ratio to bare with its 95% bootstrap interval from 5 launches a side (Redis: requests/s at the highest connection count, direct and through NAT; MySQL: the median of each launch's peak tps over bare's, whatever thread count each peaked at), beside the study's ratio to native for its comparable configuration (Felter et al. 2015, from the authors' data). The study ran on a 32-core, 2-machine testbed; this run's host may be small and shared, and its VM tier may be emulated. A tier marked \"points scaled ×s\" ran every point s times as long (redis requests, mysql time and events; `app_scale`): its rates per second compare with the others', its absolute counts do not.</p>\n");
    for t in &tables {
        let _ = writeln!(out, "<h3>{}</h3>", esc(t.app));
        for (w, prefix, title, x, y) in chart_specs(t.app) {
            let lines: Vec<(Tier, Vec<(u32, f64)>)> = tiers_with(r, w)
                .into_iter()
                .map(|tier| (tier, series(r, tier, w, prefix)))
                .filter(|l| !l.1.is_empty())
                .collect();
            if !lines.is_empty() {
                out.push_str(&line_chart(title, x, y, &lines));
            }
        }
        out.push_str("<div class=\"scroll\"><table><tr><th>tier</th>");
        for c in &t.columns {
            let _ = write!(out, "<th>{}</th>", esc(c));
        }
        out.push_str("<th>the study's comparable configuration / native</th></tr>\n");
        for (tier, vals, peer) in &t.rows {
            let _ = write!(
                out,
                "<tr><td><span style=\"color:{}\">■</span> {}</td>",
                tier_hex(*tier),
                esc(&tier_label(r, *tier))
            );
            for v in vals {
                let _ = write!(out, "<td class=\"n\">{}</td>", ratio_cell(v));
            }
            let _ = writeln!(out, "<td>{}</td></tr>", esc(peer));
        }
        out.push_str("</table></div>\n<p class=\"muted\">The study: ");
        let s: Vec<String> = t
            .study
            .iter()
            .map(|(l, v)| format!("{} {v:.3}", esc(l)))
            .collect();
        out.push_str(&s.join(" · "));
        out.push_str("</p>\n");
    }
    out.push_str("</section>\n");
}

/// The Markdown section (nothing when the run had no application workload).
pub fn markdown(r: &Results, o: &mut String) {
    let tables = tables(r);
    if tables.is_empty() {
        return;
    }
    let _ = writeln!(
        o,
        "\n### Applications beside the study (ratio to bare; the study's to native)\n"
    );
    for t in &tables {
        let _ = writeln!(o, "**{}**\n", t.app);
        let _ = writeln!(
            o,
            "| tier | {} | the study's comparable configuration |",
            t.columns.join(" | ")
        );
        let _ = writeln!(o, "|---|{}---|", "---:|".repeat(t.columns.len()));
        for (tier, vals, peer) in &t.rows {
            let v: Vec<String> = vals.iter().map(ratio_cell).collect();
            let _ = writeln!(
                o,
                "| {} | {} | {peer} |",
                tier_label(r, *tier),
                v.join(" | ")
            );
        }
        let s: Vec<String> = t.study.iter().map(|(l, v)| format!("{l} {v:.3}")).collect();
        let _ = writeln!(o, "\nThe study: {}\n", s.join(" · "));
    }
}

#[cfg(test)]
mod tests;
