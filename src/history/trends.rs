//! Per-metric trends over the stored runs: a table (median per run) and one SVG chart per
//! (workload, metric), one line per tier with the interval of each median (none below n = 5) as a bar.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, CellAlignment, Table};
use plotters::prelude::*;
use rusqlite::params;

use super::{History, HistoryError, RunRow};
use crate::model::tier::Tier;
use crate::output::num;

/// The median of one metric in one run.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// Index into the runs of the [`Trends`] (oldest first).
    pub run: usize,
    pub median: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub n: usize,
}

impl Point {
    /// The median's interval; None below `stats::MIN_N_INTERVAL` samples (stored as the
    /// median then).
    pub fn ci(&self) -> Option<(f64, f64)> {
        (self.n >= crate::stats::MIN_N_INTERVAL).then_some((self.ci_low, self.ci_high))
    }
}

/// One metric over the runs, per tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Trend {
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub series: BTreeMap<Tier, Vec<Point>>,
}

/// Trends of every metric over the last runs.
#[derive(Debug, Clone, PartialEq)]
pub struct Trends {
    pub runs: Vec<RunRow>,
    pub trends: Vec<Trend>,
}

#[derive(Debug, thiserror::Error)]
pub enum ChartError {
    #[error("{0}")]
    Font(String),
    #[error("drawing {path}: {message}")]
    Draw { path: PathBuf, message: String },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl History {
    /// The last `last` runs (all hosts and scenarios) and, per metric, the median of each run.
    /// `metric` keeps only metrics of that name.
    pub fn trends(&self, metric: Option<&str>, last: usize) -> Result<Trends, HistoryError> {
        self.trends_where(&super::RunFilter::default(), metric, last)
    }

    /// As [`History::trends`], over the runs `filter` keeps.
    pub fn trends_where(
        &self,
        filter: &super::RunFilter,
        metric: Option<&str>,
        last: usize,
    ) -> Result<Trends, HistoryError> {
        let runs = self.runs_where(filter, last)?;
        let mut by_key: BTreeMap<(String, String), Trend> = BTreeMap::new();
        let mut st = self
            .conn
            .prepare("SELECT tier, workload, metric, unit, n, median, ci_low, ci_high FROM summaries WHERE run = ?1 AND (?2 IS NULL OR metric = ?2)")
            .map_err(|e| self.sql(e))?;
        for (i, run) in runs.iter().enumerate() {
            let rows = st
                .query_map(params![run.id, metric], |r| {
                    Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?, r.get::<_, String>(3)?, r.get::<_, i64>(4)?, r.get(5)?, r.get(6)?, r.get(7)?))
                })
                .and_then(|it| it.collect::<Result<Vec<(String, String, String, String, i64, f64, f64, f64)>, _>>())
                .map_err(|e| self.sql(e))?;
            for (tier, workload, metric, unit, n, median, ci_low, ci_high) in rows {
                let Ok(tier) = tier.parse::<Tier>() else {
                    continue;
                };
                let t = by_key
                    .entry((workload.clone(), metric.clone()))
                    .or_insert_with(|| Trend {
                        workload,
                        metric,
                        unit,
                        series: BTreeMap::new(),
                    });
                t.series.entry(tier).or_default().push(Point {
                    run: i,
                    median,
                    ci_low,
                    ci_high,
                    n: usize::try_from(n).unwrap_or(0),
                });
            }
        }
        Ok(Trends {
            runs,
            trends: by_key.into_values().collect(),
        })
    }
}

/// One row per (tier, workload, metric), one column per run (oldest first), then the change of
/// the last median against the first.
pub fn table(t: &Trends) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "runs (oldest first):");
    for (i, r) in t.runs.iter().enumerate() {
        let _ = writeln!(
            out,
            "  #{i}: {} {} host {} scenario {} branch {} ({}){}",
            r.label(),
            r.started_at,
            r.host,
            r.scenario,
            r.git_branch.as_deref().unwrap_or("-"),
            r.run_id,
            if r.labels.is_empty() {
                String::new()
            } else {
                format!(" labels {}", crate::model::results::labels_text(&r.labels))
            }
        );
    }
    let mut tab = Table::new();
    tab.load_preset(UTF8_FULL_CONDENSED);
    let mut header = vec!["tier".to_string(), "workload".into(), "metric".into()];
    header.extend((0..t.runs.len()).map(|i| format!("#{i}")));
    header.push("last vs first".into());
    tab.set_header(header);
    for tr in &t.trends {
        for (tier, pts) in &tr.series {
            let mut row = vec![
                Cell::new(tier.as_str()),
                Cell::new(&tr.workload),
                Cell::new(format!("{} ({})", tr.metric, tr.unit)),
            ];
            for i in 0..t.runs.len() {
                let v = pts
                    .iter()
                    .find(|p| p.run == i)
                    .map_or("-".into(), |p| num(p.median));
                row.push(Cell::new(v).set_alignment(CellAlignment::Right));
            }
            let change = match (pts.first(), pts.last()) {
                (Some(a), Some(b)) if pts.len() > 1 && a.median != 0.0 => {
                    format!("{:+.1}%", (b.median / a.median - 1.0) * 100.0)
                }
                _ => "-".into(),
            };
            row.push(Cell::new(change).set_alignment(CellAlignment::Right));
            tab.add_row(row);
        }
    }
    let _ = writeln!(out, "{tab}");
    out
}

/// The report's colour of a tier, so a tier looks the same in every chart.
fn tier_colour(t: Tier) -> RGBColor {
    let (r, g, b) = crate::report::charts::tier_rgb(t);
    RGBColor(r, g, b)
}

fn file_name(tr: &Trend) -> String {
    let clean = |s: &str| {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                    c
                } else {
                    '_'
                }
            })
            .collect::<String>()
    };
    format!("{}-{}.svg", clean(&tr.workload), clean(&tr.metric))
}

/// Write one SVG per trend into `dir`; returns the files written.
pub fn charts(t: &Trends, dir: &Path) -> Result<Vec<PathBuf>, ChartError> {
    crate::report::charts::ensure_font().map_err(|e| ChartError::Font(e.to_string()))?;
    std::fs::create_dir_all(dir).map_err(|source| ChartError::Create {
        path: dir.into(),
        source,
    })?;
    let mut written = vec![];
    for tr in &t.trends {
        let path = dir.join(file_name(tr));
        draw(t, tr, &path).map_err(|e| ChartError::Draw {
            path: path.clone(),
            message: e.to_string(),
        })?;
        written.push(path);
    }
    Ok(written)
}

fn draw(t: &Trends, tr: &Trend, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let pts = tr.series.values().flatten();
    let (lo, hi) = pts.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), p| {
        (
            lo.min(p.ci_low.min(p.median)),
            hi.max(p.ci_high.max(p.median)),
        )
    });
    let (lo, hi) = if lo.is_finite() && hi.is_finite() {
        (lo, hi)
    } else {
        (0.0, 1.0)
    };
    let pad = ((hi - lo) * 0.1).max(hi.abs() * 0.01).max(1e-9);
    let n = t.runs.len().max(1);
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!(
                "{} / {} ({}): median per run, interval of the median (none below n = 5)",
                tr.workload, tr.metric, tr.unit
            ),
            ("sans-serif", 18),
        )
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(70)
        .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo - pad)..(hi + pad))?;
    let labels: Vec<String> = t.runs.iter().map(RunRow::label).collect();
    chart
        .configure_mesh()
        .x_labels(n.min(12))
        .x_label_formatter(&|x| {
            let i = x.round();
            if (x - i).abs() > 1e-6 || i < 0.0 {
                return String::new();
            }
            labels
                .get(i as usize)
                .map(|l| format!("#{i} {l}"))
                .unwrap_or_default()
        })
        .y_desc(tr.unit.as_str())
        .x_desc("run (git commit or run id), oldest first")
        .draw()?;
    for (tier, pts) in &tr.series {
        let c = tier_colour(*tier);
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.run as f64, p.median)).collect();
        chart
            .draw_series(LineSeries::new(xy.clone(), c.stroke_width(2)))?
            .label(tier.as_str())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], c.stroke_width(2)));
        chart.draw_series(xy.iter().map(|&(x, y)| Circle::new((x, y), 3, c.filled())))?;
        chart.draw_series(pts.iter().filter_map(|p| {
            let (lo, hi) = p.ci()?;
            Some(PathElement::new(
                vec![(p.run as f64, lo), (p.run as f64, hi)],
                c.stroke_width(1),
            ))
        }))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::synthetic::{draw as draw_samples, results};
    use crate::history::GitInfo;

    #[test]
    fn trends_table_and_charts() {
        let dir = tempfile::tempdir().unwrap();
        let mut h = History::open(&dir.path().join("h.sqlite")).unwrap();
        for i in 0..3u64 {
            let mut r = results("h", draw_samples(i, 2, 10, None));
            r.summarize();
            h.record(
                &r,
                &GitInfo {
                    commit: Some(format!("abcdef{i}0000")),
                    branch: None,
                },
            )
            .unwrap();
        }
        let t = h.trends(None, 10).unwrap();
        assert_eq!(t.runs.len(), 3);
        assert_eq!(t.trends.len(), 2);
        assert!(t
            .trends
            .iter()
            .all(|tr| tr.series.values().all(|p| p.len() == 3)));
        let s = table(&t);
        assert!(
            s.contains("#2") && s.contains("abcdef20") && s.contains("last vs first"),
            "{s}"
        );
        let only = h.trends(Some("m01_ops_per_s"), 2).unwrap();
        assert_eq!((only.runs.len(), only.trends.len()), (2, 1));
        match charts(&t, &dir.path().join("trends")) {
            Ok(files) => {
                assert_eq!(files.len(), 2);
                let svg = std::fs::read_to_string(&files[0]).unwrap();
                assert!(svg.starts_with("<svg") && svg.contains("bare"), "{svg}");
            }
            Err(ChartError::Font(e)) => eprintln!("SKIPPED chart drawing: {e}"),
            Err(e) => panic!("{e}"),
        }
    }
}
