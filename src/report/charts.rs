//! Charts drawn with `plotters`, each once as SVG (inlined in index.html and written to
//! charts/*.svg) and once as PNG (charts/*.png). Charts read result data only.
//!
//! Text is drawn with `ab_glyph` from a TrueType file found at run time (no fontconfig):
//! `$ISOBENCH_FONT`, else DejaVu Sans from Debian's `fonts-dejavu-core`, else a few other
//! common sans fonts.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use plotters::coord::Shift;
use plotters::prelude::*;
use plotters::style::text_anchor::{HPos, Pos, VPos};

use super::metrics::{self as m, cost_ratio, is_charted, Family};
use super::ReportError;
use crate::model::results::{MetricSummary, Results};
use crate::model::tier::Tier;
use crate::output::num;
use crate::protocol::Better;

const FONT: &str = "sans-serif";
/// Fonts tried in order when `$ISOBENCH_FONT` is not set.
pub const FONT_CANDIDATES: [&str; 6] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf",
    "/usr/share/fonts/truetype/freefont/FreeSans.ttf",
];
const WIDTH: u32 = 900;

/// The colour of a tier, the same in every chart and table (kept with the tier, so a new tier
/// cannot miss one).
pub fn tier_rgb(t: Tier) -> (u8, u8, u8) {
    t.rgb()
}

pub fn tier_hex(t: Tier) -> String {
    let (r, g, b) = tier_rgb(t);
    format!("#{r:02x}{g:02x}{b:02x}")
}

pub(super) fn colour(t: Tier) -> RGBColor {
    let (r, g, b) = tier_rgb(t);
    RGBColor(r, g, b)
}

static FONT_STATE: OnceLock<Result<PathBuf, String>> = OnceLock::new();
static FONT_BYTES: OnceLock<Vec<u8>> = OnceLock::new();

/// Load and register the font once per process.
pub fn ensure_font() -> Result<PathBuf, ReportError> {
    FONT_STATE
        .get_or_init(|| {
            let env = std::env::var_os("ISOBENCH_FONT").map(PathBuf::from);
            let candidates: Vec<PathBuf> = env.into_iter().chain(FONT_CANDIDATES.iter().map(PathBuf::from)).collect();
            let path = candidates.iter().find(|p| p.is_file()).cloned().ok_or_else(|| {
                format!("no TrueType font found (tried {}): install Debian's fonts-dejavu-core, or set ISOBENCH_FONT to a .ttf file", candidates.iter().map(|p| p.display().to_string()).collect::<Vec<_>>().join(", "))
            })?;
            let bytes = std::fs::read(&path).map_err(|e| format!("cannot read font {}: {e}", path.display()))?;
            let bytes: &'static [u8] = FONT_BYTES.get_or_init(|| bytes);
            plotters::style::register_font(FONT, FontStyle::Normal, bytes).map_err(|_| format!("{} is not a usable TrueType font: set ISOBENCH_FONT to another .ttf file", path.display()))?;
            Ok(path)
        })
        .clone()
        .map_err(ReportError::Font)
}

/// A drawn chart: file stem under charts/, title, and the SVG text.
#[derive(Debug, Clone)]
pub struct Chart {
    pub stem: String,
    pub title: String,
    pub svg: String,
}

pub(super) type DrawResult = Result<(), String>;

pub(super) fn err(e: impl std::fmt::Display) -> String {
    e.to_string()
}

pub(super) fn style(size: u32) -> TextStyle<'static> {
    TextStyle::from((FONT, size).into_font()).color(&BLACK)
}

/// What one chart draws; `draw` is generic so the same code feeds the SVG and the PNG backend.
pub(super) trait Spec {
    fn height(&self) -> u32;
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult;
}

pub(super) fn render(
    spec: &impl Spec,
    dir: &Path,
    stem: &str,
    title: &str,
) -> Result<Chart, ReportError> {
    let size = (WIDTH, spec.height());
    let fail = |message: String| ReportError::Chart {
        chart: stem.to_string(),
        message,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, size).into_drawing_area();
        root.fill(&WHITE).map_err(err).map_err(fail)?;
        spec.draw(&root).map_err(fail)?;
        root.present().map_err(err).map_err(fail)?;
    }
    let svg_path = dir.join(format!("{stem}.svg"));
    std::fs::write(&svg_path, &svg).map_err(|source| ReportError::Io {
        path: svg_path,
        source,
    })?;
    let png_path = dir.join(format!("{stem}.png"));
    {
        let root = BitMapBackend::new(&png_path, size).into_drawing_area();
        root.fill(&WHITE).map_err(err).map_err(fail)?;
        spec.draw(&root).map_err(fail)?;
        root.present().map_err(err).map_err(fail)?;
    }
    Ok(Chart {
        stem: stem.into(),
        title: title.into(),
        svg,
    })
}

/// Tier colour chips in one line, from pixel (x, y).
fn legend<DB: DrawingBackend>(
    root: &DrawingArea<DB, Shift>,
    tiers: &[Tier],
    x: i32,
    y: i32,
) -> DrawResult {
    let mut cx = x;
    for t in tiers {
        root.draw(&Rectangle::new(
            [(cx, y), (cx + 12, y + 12)],
            colour(*t).filled(),
        ))
        .map_err(err)?;
        root.draw(&Text::new(t.as_str().to_string(), (cx + 16, y), style(13)))
            .map_err(err)?;
        cx += 30 + 8 * i32::try_from(t.as_str().len()).unwrap_or(10);
    }
    Ok(())
}

/// Axis tick labels: no trailing zeros on round numbers.
pub(super) fn axis_num(v: f64) -> String {
    if v == 0.0 {
        "0".into()
    } else if v.abs() >= 100.0 || v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        num(v)
    }
}

/// A tier's label under its bar or dot: the name, and "(n = 3, no interval)" when the median has
/// none, "(n = 5, 93.8%)" when its interval covers less than 95%.
fn tier_label(tier: &str, s: &crate::stats::Summary) -> String {
    match (s.ci(), s.ci_below_target()) {
        (None, _) => format!("{tier} (n = {}, no interval)", s.n),
        (Some(_), Some(c)) => format!("{tier} (n = {}, {:.1}%)", s.n, c * 100.0),
        (Some(_), None) => tier.to_string(),
    }
}

pub(super) fn positive_range(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values
        .filter(|v| v.is_finite() && *v > 0.0)
        .fold((f64::INFINITY, 0.0f64), |(a, b), v| (a.min(v), b.max(v)));
    if lo.is_infinite() {
        (0.1, 10.0)
    } else {
        (lo / 1.6, hi * 1.6)
    }
}

/// Startup of one metric per tier: every sample (small dots), median (large dot) and its
/// interval (whisker; none below n = 5, and the tier label says so), on a log scale.
struct Startup<'a> {
    title: String,
    unit: String,
    tiers: Vec<(Tier, &'a MetricSummary, Vec<f64>)>,
}

impl Spec for Startup<'_> {
    fn height(&self) -> u32 {
        480
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let n = self.tiers.len();
        let (lo, hi) = positive_range(self.tiers.iter().flat_map(|(_, s, v)| {
            v.iter()
                .copied()
                .chain(s.stats.ci().into_iter().flat_map(|(l, h)| [l, h]))
        }));
        let mut chart = ChartBuilder::on(root)
            .caption(&self.title, style(20))
            .margin(12)
            .margin_top(40)
            .x_label_area_size(46)
            .y_label_area_size(70)
            .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), (lo..hi).log_scale())
            .map_err(err)?;
        chart
            .configure_mesh()
            .disable_x_mesh()
            .x_labels(0)
            .y_labels(8)
            .y_label_formatter(&|v| axis_num(*v))
            .label_style(style(12))
            .draw()
            .map_err(err)?;
        for (i, (t, s, values)) in self.tiers.iter().enumerate() {
            let x = i as f64;
            let c = colour(*t);
            let k = values.len().max(1) as f64;
            chart
                .draw_series(
                    values
                        .iter()
                        .enumerate()
                        .filter(|(_, v)| **v > 0.0)
                        .map(|(j, v)| {
                            Circle::new(
                                (x - 0.25 + 0.2 * (j as f64 / k), *v),
                                2,
                                c.mix(0.45).filled(),
                            )
                        }),
                )
                .map_err(err)?;
            if let Some((cl, ch)) = s.stats.ci() {
                chart
                    .draw_series([
                        PathElement::new(
                            vec![(x + 0.12, cl.max(lo)), (x + 0.12, ch)],
                            c.stroke_width(2),
                        ),
                        PathElement::new(
                            vec![(x + 0.06, cl.max(lo)), (x + 0.18, cl.max(lo))],
                            c.stroke_width(2),
                        ),
                        PathElement::new(vec![(x + 0.06, ch), (x + 0.18, ch)], c.stroke_width(2)),
                    ])
                    .map_err(err)?;
            }
            chart
                .draw_series([Circle::new(
                    (x + 0.12, s.stats.median.max(lo)),
                    6,
                    c.filled(),
                )])
                .map_err(err)?;
            let (px, py) = chart.backend_coord(&(x, lo));
            root.draw(&Text::new(
                tier_label(t.as_str(), &s.stats),
                (px, py + 8),
                style(14).pos(Pos::new(HPos::Center, VPos::Top)),
            ))
            .map_err(err)?;
            let (mx, my) = chart.backend_coord(&(x + 0.2, s.stats.median.max(lo)));
            root.draw(&Text::new(
                format!("{} {}", num(s.stats.median), self.unit),
                (mx + 4, my),
                style(12).pos(Pos::new(HPos::Left, VPos::Center)),
            ))
            .map_err(err)?;
        }
        let (ax, ay) = chart.backend_coord(&(-0.5, hi));
        root.draw(&Text::new(
            format!("{} (log scale)", self.unit),
            (ax - 60, ay - 18),
            style(13),
        ))
        .map_err(err)?;
        let (_, by) = chart.backend_coord(&(0.0, lo));
        root.draw(&Text::new(
            "tier — small dots: every launch; large dot: median; whisker: 95% interval of the median (93.8% at n = 5, none below)"
                .to_string(),
            (i32::try_from(WIDTH / 2).unwrap_or(450), by + 28),
            style(12).pos(Pos::new(HPos::Center, VPos::Top)),
        ))
        .map_err(err)?;
        Ok(())
    }
}

/// A tier's cost ratio to bare and its interval (when both sides have enough samples).
type CostPoint = (Tier, f64, Option<(f64, f64)>);

/// One row of the spectrum: a metric and each non-bare tier's cost ratio to bare.
struct SpectrumRow {
    label: String,
    /// (tier, cost ratio, its interval when both sides have enough samples)
    ratios: Vec<CostPoint>,
}

struct Spectrum {
    rows: Vec<SpectrumRow>,
    tiers: Vec<Tier>,
}

const ROW_PX: u32 = 34;

impl Spec for Spectrum {
    fn height(&self) -> u32 {
        130 + ROW_PX * u32::try_from(self.rows.len()).unwrap_or(1).max(1)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let n = self.rows.len().max(1);
        let (lo, hi) = positive_range(
            self.rows
                .iter()
                .flat_map(|r| {
                    r.ratios.iter().flat_map(|x| {
                        [x.1]
                            .into_iter()
                            .chain(x.2.into_iter().flat_map(|(l, h)| [l, h]))
                    })
                })
                .chain([1.0]),
        );
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Spectrum: cost of each tier relative to bare (> 1 = costlier)",
                style(20),
            )
            .margin(12)
            .x_label_area_size(96)
            .y_label_area_size(250)
            .build_cartesian_2d((lo..hi).log_scale(), -0.5f64..(n as f64 - 0.5))
            .map_err(err)?;
        chart.configure_mesh().disable_y_mesh().y_labels(0).x_labels(8).x_label_formatter(&|v| format!("{}×", axis_num(*v))).label_style(style(12)).x_desc("cost ratio to bare (log scale): lower-is-better metrics tier/bare, higher-is-better bare/tier").axis_desc_style(style(13)).draw().map_err(err)?;
        chart
            .draw_series([PathElement::new(
                vec![(1.0, -0.5), (1.0, n as f64 - 0.5)],
                BLACK.stroke_width(1),
            )])
            .map_err(err)?;
        let k = self.tiers.len().max(1) as f64;
        for (i, row) in self.rows.iter().enumerate() {
            let y0 = (n - 1 - i) as f64;
            if i % 2 == 0 {
                chart
                    .draw_series([Rectangle::new(
                        [(lo, y0 - 0.5), (hi, y0 + 0.5)],
                        RGBColor(0xf2, 0xf2, 0xf2).filled(),
                    )])
                    .map_err(err)?;
            }
            for (t, ratio, ci) in &row.ratios {
                let j = self.tiers.iter().position(|x| x == t).unwrap_or(0) as f64;
                let y = y0 + 0.32 - 0.64 * (j + 0.5) / k;
                let c = colour(*t);
                if let Some((cl, ch)) = ci {
                    chart
                        .draw_series([PathElement::new(
                            vec![(cl.max(lo), y), (ch.min(hi), y)],
                            c.stroke_width(2),
                        )])
                        .map_err(err)?;
                }
                chart
                    .draw_series([Circle::new((ratio.clamp(lo, hi), y), 4, c.filled())])
                    .map_err(err)?;
            }
            let (px, py) = chart.backend_coord(&(lo, y0));
            root.draw(&Text::new(
                row.label.clone(),
                (px - 8, py),
                style(12).pos(Pos::new(HPos::Right, VPos::Center)),
            ))
            .map_err(err)?;
        }
        let (_, by) = chart.backend_coord(&(lo, -0.5));
        legend(root, &self.tiers, 262, by + 70)
    }
}

/// Small multiples: one panel per metric, a bar per tier (median) with its interval (none below
/// n = 5, and the tier label says so).
struct Bars<'a> {
    title: String,
    metrics: Vec<Vec<&'a MetricSummary>>,
}

const PANEL_H: u32 = 300;

impl Spec for Bars<'_> {
    fn height(&self) -> u32 {
        60 + PANEL_H
            * u32::try_from(self.metrics.len().div_ceil(2))
                .unwrap_or(1)
                .max(1)
    }
    fn draw<DB: DrawingBackend>(&self, root: &DrawingArea<DB, Shift>) -> DrawResult {
        let body = root.titled(&self.title, style(20)).map_err(err)?;
        let rows = self.metrics.len().div_ceil(2).max(1);
        let panels = body.split_evenly((rows, 2));
        for (panel, group) in panels.iter().zip(&self.metrics) {
            let first = group[0];
            let hi = group
                .iter()
                .map(|s| {
                    s.stats
                        .ci_high
                        .unwrap_or(s.stats.median)
                        .max(s.stats.median)
                })
                .fold(0.0f64, f64::max)
                * 1.18;
            let hi = if hi > 0.0 { hi } else { 1.0 };
            let n = group.len();
            let arrow = if first.better == Better::Higher {
                "higher is better"
            } else {
                "lower is better"
            };
            let mut chart = ChartBuilder::on(panel)
                .caption(format!("{} ({arrow})", first.metric), style(14))
                .margin(10)
                .margin_top(30)
                .x_label_area_size(26)
                .y_label_area_size(64)
                .build_cartesian_2d(-0.5f64..(n as f64 - 0.5), 0f64..hi)
                .map_err(err)?;
            chart
                .configure_mesh()
                .disable_x_mesh()
                .x_labels(0)
                .y_labels(5)
                .y_label_formatter(&|v| axis_num(*v))
                .label_style(style(11))
                .draw()
                .map_err(err)?;
            for (i, s) in group.iter().enumerate() {
                let x = i as f64;
                let c = colour(s.tier);
                chart
                    .draw_series([Rectangle::new(
                        [(x - 0.32, 0.0), (x + 0.32, s.stats.median)],
                        c.mix(0.85).filled(),
                    )])
                    .map_err(err)?;
                if let Some((cl, ch)) = s.stats.ci() {
                    chart
                        .draw_series([
                            PathElement::new(vec![(x, cl), (x, ch)], BLACK.stroke_width(2)),
                            PathElement::new(
                                vec![(x - 0.1, cl), (x + 0.1, cl)],
                                BLACK.stroke_width(2),
                            ),
                            PathElement::new(
                                vec![(x - 0.1, ch), (x + 0.1, ch)],
                                BLACK.stroke_width(2),
                            ),
                        ])
                        .map_err(err)?;
                }
                let (px, py) = chart.backend_coord(&(x, 0.0));
                panel
                    .draw(&Text::new(
                        tier_label(s.tier.as_str(), &s.stats),
                        (
                            px - panel.get_base_pixel().0,
                            py - panel.get_base_pixel().1 + 6,
                        ),
                        style(12).pos(Pos::new(HPos::Center, VPos::Top)),
                    ))
                    .map_err(err)?;
            }
            let (ax, ay) = chart.backend_coord(&(-0.5, hi));
            panel
                .draw(&Text::new(
                    first.unit.clone(),
                    (
                        ax - panel.get_base_pixel().0 - 56,
                        ay - panel.get_base_pixel().1 - 16,
                    ),
                    style(12),
                ))
                .map_err(err)?;
        }
        Ok(())
    }
}

fn samples_of(r: &Results, t: Tier, wl: &str, metric: &str) -> Vec<f64> {
    r.samples
        .iter()
        .filter(|s| s.tier == t && s.workload == wl && s.metric == metric)
        .map(|s| s.value)
        .collect()
}

/// Tiers with any summary, in spectrum order.
pub fn tiers_present(r: &Results) -> Vec<Tier> {
    let mut v: Vec<Tier> = r.summaries.iter().map(|s| s.tier).collect();
    v.sort();
    v.dedup();
    v
}

/// Charted metrics of one family, grouped by (workload, metric), tiers in order.
pub fn family_groups<'a>(r: &'a Results, fam: &Family) -> Vec<Vec<&'a MetricSummary>> {
    let mut keys: Vec<(&str, &str)> = r
        .summaries
        .iter()
        .filter(|s| &Family::of_workload(&s.workload) == fam && is_charted(s))
        .map(|s| (s.workload.as_str(), s.metric.as_str()))
        .collect();
    keys.sort_by_key(|(w, metric)| (*w, metric_order(metric), *metric));
    keys.dedup();
    keys.into_iter()
        .map(|(w, metric)| {
            let mut g: Vec<&MetricSummary> = r
                .summaries
                .iter()
                .filter(|s| s.workload == w && s.metric == metric)
                .collect();
            g.sort_by_key(|s| s.tier);
            g
        })
        .collect()
}

fn metric_order(metric: &str) -> usize {
    m::STARTUP_METRICS
        .iter()
        .position(|x| *x == metric)
        .unwrap_or(m::STARTUP_METRICS.len())
}

/// Draw every chart this run has data for into `dir` (charts/); returns them for inlining.
pub fn draw_all(r: &Results, dir: &Path, families: &[Family]) -> Result<Vec<Chart>, ReportError> {
    ensure_font()?;
    std::fs::create_dir_all(dir).map_err(|source| ReportError::Io {
        path: dir.into(),
        source,
    })?;
    let mut out = vec![];
    let tiers = tiers_present(r);

    // Spectrum.
    let mut rows = vec![];
    for fam in families {
        for g in family_groups(r, fam) {
            let ratios: Vec<CostPoint> = g
                .iter()
                .filter_map(|s| {
                    let c = cost_ratio(s.ratio_to_bare.clone()?, s.better);
                    Some((s.tier, c.ratio, c.ci()))
                })
                .collect();
            if !ratios.is_empty() {
                rows.push(SpectrumRow {
                    label: format!("{}/{}", g[0].workload, g[0].metric),
                    ratios,
                });
            }
        }
    }
    if !rows.is_empty() {
        let spec = Spectrum {
            rows,
            tiers: tiers.iter().copied().filter(|t| *t != Tier::Bare).collect(),
        };
        out.push(render(
            &spec,
            dir,
            "spectrum",
            "Spectrum: cost relative to bare",
        )?);
    }

    // Startup, per metric of the noop workload.
    for metric in [m::LAUNCH_TO_READY_MS, m::LAUNCH_TO_EXIT_MS] {
        let sums: Vec<(Tier, &MetricSummary, Vec<f64>)> = tiers
            .iter()
            .filter_map(|t| {
                r.summary(*t, m::NOOP, metric)
                    .map(|s| (*t, s, samples_of(r, *t, m::NOOP, metric)))
            })
            .collect();
        if sums.is_empty() {
            continue;
        }
        let title = format!("Startup: {metric} per tier (noop workload)");
        let spec = Startup {
            title: title.clone(),
            unit: sums[0].1.unit.clone(),
            tiers: sums,
        };
        out.push(render(
            &spec,
            dir,
            &format!("startup-{}", m::sanitize(metric)),
            &title,
        )?);
    }

    // Per family bars (startup is drawn above).
    for fam in families.iter().filter(|f| **f != Family::Startup) {
        let metrics = family_groups(r, fam);
        if metrics.is_empty() {
            continue;
        }
        let title = format!(
            "{}: median per tier with its interval (95%; 93.8% at n = 5; none below)",
            fam.title()
        );
        out.push(render(
            &Bars {
                title: title.clone(),
                metrics,
            },
            dir,
            &fam.id(),
            &title,
        )?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn palette_is_distinct_and_stable() {
        let hex: Vec<String> = Tier::all().iter().map(|t| tier_hex(*t)).collect();
        let mut d = hex.clone();
        d.sort();
        d.dedup();
        assert_eq!(d.len(), hex.len());
        assert_eq!(tier_hex(Tier::Container), "#0072b2");
    }

    #[test]
    fn log_range_ignores_non_positive() {
        let (lo, hi) = positive_range([0.0, 2.0, 8.0, f64::NAN].into_iter());
        assert!(lo < 2.0 && lo > 0.0 && hi > 8.0);
    }
}
