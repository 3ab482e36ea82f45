//! Regression tracking: compare two runs metric by metric and decide, with statistics, which
//! metrics regressed. Method and defaults: docs/compare.md.
//!
//! Per (tier, workload, metric) present in both runs: the ratio of medians (new / base) with its
//! bootstrap interval, a two-sided Mann-Whitney U test on the raw samples, Holm's correction over
//! every metric compared at once. A metric is `regressed` only when the adjusted p-value is at
//! most alpha, the change is beyond the metric's noise threshold, and it goes the bad way.
//! Bookkeeping counters are never tested; a metric whose sample sizes cannot reach alpha after
//! the correction is "cannot detect at this n", with the runs per side that would (`power`).

pub mod mwu;
pub mod power;
pub mod render;
#[doc(hidden)]
pub mod synthetic;
pub mod thresholds;

use std::collections::BTreeMap;

use serde::Serialize;

use crate::model::results::Results;
use crate::model::tier::Tier;
use crate::protocol::{Better, MetricKind};
use crate::stats;

pub use mwu::Method;
pub use thresholds::{Thresholds, ThresholdsError};

/// The verdict on one metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Regressed,
    Improved,
    /// Tested, but at these sample sizes and this many metrics no result could reach alpha
    /// after Holm's correction: the smallest possible p times the family size is above alpha.
    CannotDetect,
    Unchanged,
    /// Too few samples, or present on one side only.
    Inconclusive,
    /// A bookkeeping counter (`MetricKind::Bookkeeping`): shown, never tested.
    Bookkeeping,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Regressed => "regressed",
            Verdict::Improved => "improved",
            Verdict::CannotDetect => "cannot detect at this n",
            Verdict::Unchanged => "unchanged",
            Verdict::Inconclusive => "inconclusive",
            Verdict::Bookkeeping => "bookkeeping",
        }
    }
}

/// How to compare.
#[derive(Debug, Clone)]
pub struct CompareOptions {
    pub thresholds: Thresholds,
    /// Bootstrap resamples for the interval of the ratio (0: no interval). The verdict does not
    /// depend on it.
    pub resamples: usize,
}

impl Default for CompareOptions {
    fn default() -> Self {
        CompareOptions {
            thresholds: Thresholds::default(),
            resamples: stats::BOOTSTRAP_RESAMPLES,
        }
    }
}

/// Identity of one side of the comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RunRef {
    /// What the user gave (a path, `history`, ...).
    pub label: String,
    pub run_id: String,
    pub started_at: String,
    pub hostname: String,
    pub cpu_model: String,
    pub kernel: String,
    pub scenario: String,
}

impl RunRef {
    pub fn of(label: &str, r: &Results) -> Self {
        RunRef {
            label: label.into(),
            run_id: r.run_id.clone(),
            started_at: r.started_at.clone(),
            hostname: r.host.hostname.clone(),
            cpu_model: r.host.cpu_model.clone(),
            kernel: r.host.kernel.clone(),
            scenario: r.scenario.name.clone(),
        }
    }
}

/// One (tier, workload, metric) compared.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct MetricComparison {
    pub tier: Tier,
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    pub base_n: usize,
    pub new_n: usize,
    pub base_median: Option<f64>,
    pub new_median: Option<f64>,
    /// new median / base median.
    pub ratio: Option<f64>,
    /// 95% bootstrap interval of the ratio.
    pub ratio_ci: Option<(f64, f64)>,
    /// Two-sided Mann-Whitney p-value, and after Holm's correction.
    pub p_value: Option<f64>,
    pub p_adjusted: Option<f64>,
    pub test_method: Option<Method>,
    /// Relative noise threshold applied (0.1 = 10%).
    pub threshold: f64,
    /// Observed noise and the runs per side that would detect a 5% and a 10% change.
    pub power: Option<Power>,
    pub verdict: Verdict,
    /// Why the verdict is what it is, when that is not obvious.
    pub note: Option<String>,
}

impl MetricComparison {
    /// "container/noop/launch_to_exit_ms"
    pub fn key(&self) -> String {
        format!("{}/{}/{}", self.tier, self.workload, self.metric)
    }

    /// Relative change of the median in percent (+ = larger).
    pub fn change_pct(&self) -> Option<f64> {
        self.ratio.map(|r| (r - 1.0) * 100.0)
    }
}

/// What a metric's noise allows: `runs_*` are runs per side for which a 5% / 10% change is
/// found with probability 0.8 at the first Holm bar (alpha / family size); None: more than
/// `power::MAX_RUNS`. Method: `power`, docs/compare.md.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Power {
    /// Robust relative spread (0.03 = 3%).
    pub noise: f64,
    pub runs_5pct: Option<usize>,
    pub runs_10pct: Option<usize>,
}

/// The whole comparison.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Comparison {
    pub base: RunRef,
    pub new: RunRef,
    pub test: &'static str,
    pub correction: &'static str,
    pub alpha: f64,
    pub min_samples: usize,
    /// Metrics in Holm's family (tested ones; bookkeeping never is).
    pub family_size: usize,
    /// Fewest runs per side at which anything in this family can be significant.
    pub min_runs: Option<usize>,
    /// Loud caveats (different hosts or kernels, interrupted runs, ...).
    pub warnings: Vec<String>,
    pub metrics: Vec<MetricComparison>,
}

impl Comparison {
    pub fn regressed(&self) -> impl Iterator<Item = &MetricComparison> {
        self.metrics
            .iter()
            .filter(|m| m.verdict == Verdict::Regressed)
    }

    pub fn count(&self, v: Verdict) -> usize {
        self.metrics.iter().filter(|m| m.verdict == v).count()
    }

    /// The gate could not see: a tested metric was undetectable at its n, or no metric got a
    /// verdict at all (everything inconclusive or bookkeeping). `isobench compare` exits 3 then
    /// (unless something regressed: 1).
    pub fn blind(&self) -> bool {
        let decided = [Verdict::Regressed, Verdict::Improved, Verdict::Unchanged]
            .iter()
            .map(|&v| self.count(v))
            .sum::<usize>();
        self.count(Verdict::CannotDetect) > 0 || decided == 0
    }

    /// Runs per side that would detect a change of 5% and 10% on every metric that has a
    /// noise estimate, with the metric that needs the most (None inside: more than
    /// `power::MAX_RUNS`). None when no metric has one.
    pub fn runs_needed(&self) -> Option<[(Option<usize>, String); 2]> {
        let with: Vec<&MetricComparison> =
            self.metrics.iter().filter(|m| m.power.is_some()).collect();
        let worst = |f: fn(&Power) -> Option<usize>| {
            with.iter()
                .max_by_key(|m| f(m.power.as_ref().expect("filtered")).unwrap_or(usize::MAX))
                .map(|m| (f(m.power.as_ref().expect("filtered")), m.key()))
        };
        Some([worst(|p| p.runs_5pct)?, worst(|p| p.runs_10pct)?])
    }
}

/// Bookkeeping by name, for results written before metrics carried their kind and for rows of
/// the history database (which does not store the kind): the agent's counters (`*_done`,
/// `multi_threads`, `direct_io`), density's (`instances`, `instances_exited_early`,
/// `fit_points`) and the bounds of density's fitted slopes.
pub fn legacy_bookkeeping(metric: &str) -> bool {
    use crate::measure::density as d;
    metric.ends_with("_done")
        || matches!(metric, "multi_threads" | "direct_io")
        || [
            d::INSTANCES,
            d::EXITED_EARLY,
            d::FIT_POINTS,
            d::MEMORY_PER_INSTANCE_CI_LOW,
            d::MEMORY_PER_INSTANCE_CI_HIGH,
            d::CGROUP_PER_INSTANCE_CI_LOW,
            d::CGROUP_PER_INSTANCE_CI_HIGH,
        ]
        .contains(&metric)
}

type Key = (Tier, String, String);

struct Group {
    unit: String,
    better: Better,
    bookkeeping: bool,
    values: Vec<f64>,
}

fn groups(r: &Results) -> BTreeMap<Key, Group> {
    let mut g: BTreeMap<Key, Group> = BTreeMap::new();
    for s in &r.samples {
        let e = g
            .entry((s.tier, s.workload.clone(), s.metric.clone()))
            .or_insert_with(|| Group {
                unit: s.unit.clone(),
                better: s.better,
                bookkeeping: legacy_bookkeeping(&s.metric),
                values: vec![],
            });
        e.bookkeeping |= s.kind == MetricKind::Bookkeeping;
        if s.value.is_finite() {
            e.values.push(s.value);
        }
    }
    g
}

/// Compare `new` against `base`. Pure: the same inputs always give the same output.
pub fn compare(
    base: &Results,
    base_label: &str,
    new: &Results,
    new_label: &str,
    opts: &CompareOptions,
) -> Comparison {
    let th = &opts.thresholds;
    let (gb, gn) = (groups(base), groups(new));
    let mut keys: Vec<&Key> = gb.keys().chain(gn.keys()).collect();
    keys.sort();
    keys.dedup();

    let mut metrics = Vec::with_capacity(keys.len());
    // (metric index, new samples, base samples) of every tested metric, for the intervals.
    let mut intervals: Vec<(usize, &[f64], &[f64])> = vec![];
    for key in keys {
        let (b, n) = (gb.get(key), gn.get(key));
        let any = b.or(n).expect("key from one side");
        let (tier, workload, metric) = key.clone();
        let threshold = th.threshold(tier, &metric, &any.unit);
        let base_n = b.map_or(0, |g| g.values.len());
        let new_n = n.map_or(0, |g| g.values.len());
        let med = |g: Option<&Group>| {
            g.filter(|g| !g.values.is_empty())
                .map(|g| stats::median(&g.values))
        };
        let (base_median, new_median) = (med(b), med(n));
        let mut m = MetricComparison {
            tier,
            workload,
            metric,
            unit: any.unit.clone(),
            better: n.map_or(any.better, |g| g.better),
            base_n,
            new_n,
            base_median,
            new_median,
            ratio: ratio(base_median, new_median),
            ratio_ci: None,
            p_value: None,
            p_adjusted: None,
            test_method: None,
            threshold,
            power: None,
            verdict: Verdict::Inconclusive,
            note: None,
        };
        // Either side marking it is enough: the history store does not keep the kind.
        let bookkeeping = b.is_some_and(|g| g.bookkeeping) || n.is_some_and(|g| g.bookkeeping);
        match (b, n) {
            _ if bookkeeping => m.verdict = Verdict::Bookkeeping,
            (None, _) => m.note = Some("only in the new run".into()),
            (_, None) => m.note = Some("only in the base run".into()),
            (Some(_), Some(_)) if base_n < th.min_samples || new_n < th.min_samples => {
                m.note = Some(format!(
                    "too few samples (need {} per side)",
                    th.min_samples
                ));
            }
            (Some(b), Some(n)) => {
                let t = mwu::mann_whitney(&n.values, &b.values);
                m.p_value = Some(t.p);
                m.test_method = Some(t.method);
                intervals.push((metrics.len(), &n.values[..], &b.values[..]));
            }
        }
        metrics.push(m);
    }

    if opts.resamples > 0 {
        let cis = parallel_map(&intervals, |&(_, n, b)| {
            stats::ratio_of_medians(n, b, opts.resamples).and_then(|r| r.ci())
        });
        for (&(i, _, _), ci) in intervals.iter().zip(cis) {
            metrics[i].ratio_ci = ci;
        }
    }

    // Holm over every metric that was tested.
    let tested: Vec<usize> = (0..metrics.len())
        .filter(|&i| metrics[i].p_value.is_some())
        .collect();
    let raw: Vec<f64> = tested
        .iter()
        .map(|&i| metrics[i].p_value.expect("tested"))
        .collect();
    let family = tested.len();
    for (&i, adj) in tested.iter().zip(mwu::holm(&raw)) {
        metrics[i].p_adjusted = Some(adj);
        decide(&mut metrics[i], th.alpha);
        let floor = mwu::min_p(metrics[i].base_n, metrics[i].new_n) * family as f64;
        if floor > th.alpha {
            let m = &mut metrics[i];
            m.verdict = Verdict::CannotDetect;
            m.note = Some(format!(
                "smallest possible p at {} vs {} runs is {:.2e}, x {family} metrics = {floor:.3} > alpha {}",
                m.base_n, m.new_n, mwu::min_p(m.base_n, m.new_n), th.alpha
            ));
        }
    }

    // Power at the first Holm bar of this family (of every metric that could be tested, when
    // none was), for every metric with two samples on each side.
    let model = power::PowerModel::new(th.alpha / family.max(1) as f64);
    for m in metrics.iter_mut() {
        if m.verdict == Verdict::Bookkeeping {
            continue;
        }
        let key = (m.tier, m.workload.clone(), m.metric.clone());
        let (Some(b), Some(n)) = (gb.get(&key), gn.get(&key)) else {
            continue;
        };
        if let Some(noise) = power::relative_noise(&b.values, &n.values) {
            m.power = Some(Power {
                noise,
                runs_5pct: model.runs_needed(noise, 0.05),
                runs_10pct: model.runs_needed(noise, 0.10),
            });
        }
    }

    Comparison {
        base: RunRef::of(base_label, base),
        new: RunRef::of(new_label, new),
        test: "mann-whitney-u (two-sided)",
        correction: "holm",
        alpha: th.alpha,
        min_samples: th.min_samples,
        family_size: family,
        min_runs: model.min_runs(),
        warnings: warnings(base, new),
        metrics,
    }
}

/// `f` over `items` on every available CPU, results in order. Bootstrap intervals of large runs
/// dominate a comparison's time, and each is independent (seeded by its own data).
fn parallel_map<T: Sync, R: Send>(items: &[T], f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .min(items.len());
    if threads <= 1 {
        return items.iter().map(&f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    std::thread::scope(|s| {
        let handles: Vec<_> = items
            .chunks(chunk)
            .map(|c| s.spawn(|| c.iter().map(&f).collect::<Vec<R>>()))
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("interval thread panicked"))
            .collect()
    })
}

fn ratio(base: Option<f64>, new: Option<f64>) -> Option<f64> {
    let (b, n) = (base?, new?);
    Some(if b != 0.0 {
        n / b
    } else if n == 0.0 {
        1.0
    } else {
        // From zero to anything: beyond every threshold, in the direction of the change.
        f64::INFINITY.copysign(n)
    })
}

/// Significant, beyond the threshold, and in which direction.
fn decide(m: &mut MetricComparison, alpha: f64) {
    let (Some(p), Some(r)) = (m.p_adjusted, m.ratio) else {
        m.verdict = Verdict::Inconclusive;
        return;
    };
    let significant = p <= alpha;
    let beyond = r > 1.0 + m.threshold || r < 1.0 - m.threshold;
    let worse = match m.better {
        Better::Lower => r > 1.0,
        Better::Higher => r < 1.0,
    };
    m.verdict = match (significant, beyond) {
        (true, true) if worse => Verdict::Regressed,
        (true, true) => Verdict::Improved,
        (true, false) => {
            m.note = Some("significant, within threshold".into());
            Verdict::Unchanged
        }
        (false, true) => {
            m.note = Some("beyond threshold, not significant".into());
            Verdict::Unchanged
        }
        (false, false) => Verdict::Unchanged,
    };
}

/// Caveats that make a comparison less trustworthy; printed loudly in every format.
pub fn warnings(base: &Results, new: &Results) -> Vec<String> {
    let mut w = vec![];
    let (hb, hn) = (&base.host, &new.host);
    if hb.hostname != hn.hostname {
        w.push(format!("runs come from different hosts ({} vs {}): differences may be the machine, not the change", hb.hostname, hn.hostname));
    }
    if hb.cpu_model != hn.cpu_model {
        w.push(format!("runs come from different CPUs ({} vs {}): differences may be the machine, not the change", hb.cpu_model, hn.cpu_model));
    }
    if hb.kernel != hn.kernel {
        w.push(format!("runs come from different host kernels ({} vs {}): differences may be the kernel, not the change", hb.kernel, hn.kernel));
    }
    if base.scenario.compare != new.scenario.compare {
        w.push(format!(
            "the new run's scenario has a different [compare] table from the base run's: ignored, thresholds come from {}",
            if base.scenario.compare.is_some() { "the base run's scenario or --thresholds" } else { "the defaults or --thresholds" }
        ));
    }
    if base.scenario.name != new.scenario.name {
        w.push(format!(
            "runs used different scenarios ({} vs {})",
            base.scenario.name, new.scenario.name
        ));
    }
    for (side, r) in [("base", base), ("new", new)] {
        if r.interrupted {
            w.push(format!(
                "the {side} run was interrupted: it has fewer samples than planned"
            ));
        }
    }
    w
}

#[cfg(test)]
mod tests;
