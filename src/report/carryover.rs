//! Carry-over: does the tier launched just before explain a tier's variance? What one launch
//! leaves behind (deferred namespace release, freed memory, a cold cache) is paid by the next
//! one. Each sample records its `previous_tier`; for the startup metrics of the noop workload a
//! tier's samples are grouped by it and compared with a Kruskal-Wallis test (ranks, ties
//! averaged and corrected, chi-square approximation, as `scipy.stats.kruskal`), with the rank
//! eta-squared `(H - k + 1) / (N - k)` (Tomczak & Tomczak 2014) as the share of variance the
//! previous tier explains.

use super::metrics::{LAUNCH_TO_EXIT_MS, LAUNCH_TO_READY_MS, NOOP};
use crate::model::results::Results;
use crate::model::tier::Tier;
use crate::stats::median;

/// Metrics the analysis covers, with the words the report uses for them.
pub const METRICS: [(&str, &str); 3] = [
    (LAUNCH_TO_EXIT_MS, "launch→exit"),
    (LAUNCH_TO_READY_MS, "launch→ready"),
    ("launch_to_released_ms", "launch→released"),
];

/// Groups (samples after one previous tier) smaller than this are left out of the test.
pub const MIN_GROUP: usize = 3;

/// Significance level of the carry-over test.
pub const ALPHA: f64 = 0.05;

/// The result of a Kruskal-Wallis test.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KruskalWallis {
    /// H, tie-corrected.
    pub h: f64,
    /// Degrees of freedom: groups - 1.
    pub df: usize,
    pub p: f64,
    /// Share of the rank variance between groups, in [0, 1].
    pub eta_squared: f64,
}

/// Kruskal-Wallis H test of `groups` (each non-empty). None when fewer than two groups, as
/// many values as groups, or all values equal (H is undefined).
pub fn kruskal_wallis(groups: &[Vec<f64>]) -> Option<KruskalWallis> {
    let k = groups.len();
    let n: usize = groups.iter().map(Vec::len).sum();
    if k < 2 || n <= k || groups.iter().any(Vec::is_empty) {
        return None;
    }
    // Pool (value, group), sort, average ranks over ties, and collect the tie sizes.
    let mut pooled: Vec<(f64, usize)> = groups
        .iter()
        .enumerate()
        .flat_map(|(g, v)| v.iter().map(move |&x| (x, g)))
        .collect();
    pooled.sort_by(|a, b| a.0.total_cmp(&b.0));
    let mut rank_sum = vec![0.0; k];
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && pooled[j + 1].0 == pooled[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let rank = (count(i) + count(j)) / 2.0 + 1.0;
        for p in &pooled[i..=j] {
            rank_sum[p.1] += rank;
        }
        let t = count(j - i + 1);
        ties += t * t * t - t;
        i = j + 1;
    }
    let nf = count(n);
    let correction = 1.0 - ties / (nf * nf * nf - nf);
    if correction <= 0.0 {
        return None;
    }
    let between: f64 = groups
        .iter()
        .zip(&rank_sum)
        .map(|(g, r)| r * r / count(g.len()))
        .sum();
    let h = (12.0 / (nf * (nf + 1.0)) * between - 3.0 * (nf + 1.0)) / correction;
    let df = k - 1;
    Some(KruskalWallis {
        h,
        df,
        p: chi2_sf(h, count(df)),
        eta_squared: ((h - count(df)) / (nf - count(k))).clamp(0.0, 1.0),
    })
}

/// A count as f64 (exact below 2^53, far beyond any sample count).
fn count(n: usize) -> f64 {
    n as f64
}

/// P(X > x) for X ~ chi-square with `df` degrees of freedom.
pub fn chi2_sf(x: f64, df: f64) -> f64 {
    if x <= 0.0 {
        return 1.0;
    }
    gamma_q(df / 2.0, x / 2.0)
}

/// ln Γ(x), x > 0 (Lanczos, g = 7, 9 terms; relative error about 1e-15).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        // Reflection: Γ(x) Γ(1 - x) = π / sin(πx).
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + count(i));
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

/// Regularized upper incomplete gamma Q(a, x): series below a + 1, continued fraction above
/// (Numerical Recipes, gser/gcf).
fn gamma_q(a: f64, x: f64) -> f64 {
    const EPS: f64 = 1e-15;
    const ITER: usize = 500;
    let front = (-x + a * x.ln() - ln_gamma(a)).exp();
    if x < a + 1.0 {
        let (mut sum, mut term, mut ap) = (1.0 / a, 1.0 / a, a);
        for _ in 0..ITER {
            ap += 1.0;
            term *= x / ap;
            sum += term;
            if term.abs() < sum.abs() * EPS {
                break;
            }
        }
        (1.0 - sum * front).clamp(0.0, 1.0)
    } else {
        let tiny = f64::MIN_POSITIVE / EPS;
        let mut b = x + 1.0 - a;
        let mut c = 1.0 / tiny;
        let mut d = 1.0 / b;
        let mut h = d;
        for i in 1..ITER {
            let an = -count(i) * (count(i) - a);
            b += 2.0;
            d = an * d + b;
            if d.abs() < tiny {
                d = tiny;
            }
            c = b + an / c;
            if c.abs() < tiny {
                c = tiny;
            }
            d = 1.0 / d;
            let del = d * c;
            h *= del;
            if (del - 1.0).abs() < EPS {
                break;
            }
        }
        (front * h).clamp(0.0, 1.0)
    }
}

/// A tier's samples launched right after one tier.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub previous: Tier,
    pub n: usize,
    pub median: f64,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Finding {
    /// The results carry no launch order (written before schema version 2).
    NotRecorded,
    /// Fewer than two groups of at least [`MIN_GROUP`] samples.
    TooFew,
    Tested {
        kw: KruskalWallis,
        /// Spread of the group medians (largest - smallest) over the tier's median.
        median_spread: f64,
        detected: bool,
    },
}

/// The carry-over analysis of one tier and metric.
#[derive(Debug, Clone, PartialEq)]
pub struct CarryOver {
    pub tier: Tier,
    pub metric: &'static str,
    /// "launch→exit", ...
    pub words: &'static str,
    /// Samples with a recorded previous tier.
    pub n: usize,
    /// Groups by previous tier, in tier order (including those too small to test).
    pub groups: Vec<Group>,
    pub finding: Finding,
}

impl CarryOver {
    /// One plain sentence.
    pub fn sentence(&self) -> String {
        let (t, w) = (self.tier, self.words);
        match &self.finding {
            Finding::NotRecorded => format!("{t} {w}: the launch order was not recorded (results written before schema version 2)"),
            Finding::TooFew => format!("{t} {w}: too few samples (fewer than two previous tiers with {MIN_GROUP} or more launches each)"),
            Finding::Tested { kw, detected: true, .. } => format!(
                "previous tier explains {}% of {t}'s {w} variance ({})",
                percent(kw.eta_squared),
                p_text(kw.p)
            ),
            Finding::Tested { kw, detected: false, .. } => format!(
                "{t} {w}: no detectable carry-over ({}; previous tier explains {}% of the variance)",
                p_text(kw.p),
                percent(kw.eta_squared)
            ),
        }
    }

    /// "after bare 1.23 (n=12), after chroot 1.31 (n=11)".
    pub fn groups_text(&self) -> String {
        self.groups
            .iter()
            .map(|g| {
                format!(
                    "after {} {} (n={})",
                    g.previous,
                    crate::output::num(g.median),
                    g.n
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn percent(x: f64) -> String {
    format!("{:.0}", x * 100.0)
}

/// "p = 0.012", "p < 0.0001".
pub fn p_text(p: f64) -> String {
    if p < 1e-4 {
        "p < 0.0001".into()
    } else if p < 0.01 {
        format!("p = {p:.4}")
    } else {
        format!("p = {p:.2}")
    }
}

/// How the launch order was drawn, in one line for the report (None for results without it).
pub fn order_line(r: &Results) -> Option<String> {
    r.order.as_ref().map(|o| {
        format!(
            "Launch order within rounds: {} design, seed {} ({}); `--seed {}` repeats it.",
            o.design,
            o.seed,
            match o.seed_from.as_str() {
                "cli" => "given with --seed",
                "scenario" => "from the scenario",
                _ => "drawn at random",
            },
            o.seed
        )
    })
}

/// True when no analysed sample carries its launch order (results before schema version 2).
pub fn unrecorded(c: &[CarryOver]) -> bool {
    c.iter().all(|x| x.finding == Finding::NotRecorded)
}

/// What the carry-over section says when there is nothing to test.
pub const UNRECORDED_TEXT: &str = "This run did not record the launch order (results written before schema version 2): no carry-over analysis.";

/// How to read the section.
pub const EXPLANATION: &str = "Each tier's noop launches grouped by the tier launched just before them; a Kruskal-Wallis test asks whether the groups differ (p < 0.05: carry-over detected), and eta-squared says what share of the tier's variance the previous tier explains. Groups under 3 launches are left out.";

/// The analysis for every tier with noop startup samples, per metric in [`METRICS`].
pub fn analyse(r: &Results) -> Vec<CarryOver> {
    let mut out = vec![];
    for (metric, words) in METRICS {
        let mut tiers: Vec<Tier> = r
            .samples
            .iter()
            .filter(|s| s.workload == NOOP && s.metric == metric)
            .map(|s| s.tier)
            .collect();
        tiers.sort();
        tiers.dedup();
        for tier in tiers {
            out.push(one(r, tier, metric, words));
        }
    }
    out
}

fn one(r: &Results, tier: Tier, metric: &'static str, words: &'static str) -> CarryOver {
    let samples: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.tier == tier && s.workload == NOOP && s.metric == metric)
        .collect();
    let mut by_prev: std::collections::BTreeMap<Tier, Vec<f64>> = Default::default();
    for s in &samples {
        if let Some(p) = s.previous_tier {
            by_prev.entry(p).or_default().push(s.value);
        }
    }
    let n = by_prev.values().map(Vec::len).sum();
    let groups = by_prev
        .iter()
        .map(|(&previous, v)| Group {
            previous,
            n: v.len(),
            median: median(v),
        })
        .collect();
    let finding = if samples.iter().all(|s| s.position.is_none()) {
        Finding::NotRecorded
    } else {
        let tested: Vec<Vec<f64>> = by_prev
            .values()
            .filter(|v| v.len() >= MIN_GROUP)
            .cloned()
            .collect();
        match (tested.len() >= 2)
            .then(|| kruskal_wallis(&tested))
            .flatten()
        {
            None => Finding::TooFew,
            Some(kw) => {
                let medians: Vec<f64> = tested.iter().map(|v| median(v)).collect();
                let all: Vec<f64> = tested.concat();
                let mid = median(&all);
                let spread = medians.iter().copied().fold(f64::MIN, f64::max)
                    - medians.iter().copied().fold(f64::MAX, f64::min);
                Finding::Tested {
                    kw,
                    median_spread: if mid > 0.0 { spread / mid } else { 0.0 },
                    detected: kw.p < ALPHA,
                }
            }
        }
    };
    CarryOver {
        tier,
        metric,
        words,
        n,
        groups,
        finding,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64, rel: f64) {
        assert!(
            (a - b).abs() <= rel * b.abs().max(1e-300),
            "{a} vs {b} (rel {rel})"
        );
    }

    /// Expected values from scipy 1.17.1: `scipy.stats.kruskal(*groups)` for H and p, and
    /// `(H - k + 1) / (N - k)` for eta-squared.
    #[test]
    fn kruskal_wallis_matches_scipy() {
        let cases: [(&[&[f64]], f64, f64, f64); 4] = [
            // Ties within and across groups.
            (
                &[
                    &[1.0, 2.0, 2.0, 3.0, 5.0],
                    &[2.0, 4.0, 4.0, 6.0],
                    &[3.0, 3.0, 7.0, 8.0, 9.0, 9.0],
                ],
                5.704363636363635,
                0.057718252662807945,
                0.30869696969696964,
            ),
            (
                &[
                    &[1.1, 1.2, 1.3, 1.25, 1.15],
                    &[2.1, 2.2, 2.0, 2.3],
                    &[3.0, 3.1, 3.2, 3.3, 2.9, 3.05],
                ],
                12.375,
                0.00205495773120946,
                0.8645833333333334,
            ),
            // Two groups, ties.
            (
                &[&[0.5, 0.5, 0.7, 0.9], &[0.5, 0.8, 0.8, 1.0, 1.2]],
                1.5652173913043477,
                0.21090292605660682,
                0.0807453416149068,
            ),
            // Four groups (odd df), a tiny p.
            (
                &[
                    &[
                        0.0, 1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0, 11.0, 12.0, 13.0,
                        14.0,
                    ],
                    &[
                        10.5, 11.5, 12.5, 13.5, 14.5, 15.5, 16.5, 17.5, 18.5, 19.5, 20.5, 21.5,
                        22.5, 23.5, 24.5,
                    ],
                    &[
                        30.0, 31.0, 32.0, 33.0, 34.0, 35.0, 36.0, 37.0, 38.0, 39.0, 40.0, 41.0,
                        42.0, 43.0, 44.0,
                    ],
                    &[0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0, 0.0, 1.0, 2.0, 3.0],
                ],
                49.30069228106613,
                1.1256743111006708e-10,
                (49.30069228106613 - 3.0) / (57.0 - 4.0),
            ),
        ];
        for (groups, h, p, eta) in cases {
            let g: Vec<Vec<f64>> = groups.iter().map(|x| x.to_vec()).collect();
            let kw = kruskal_wallis(&g).unwrap();
            close(kw.h, h, 1e-12);
            close(kw.p, p, 1e-9);
            close(kw.eta_squared, eta, 1e-12);
            assert_eq!(kw.df, g.len() - 1);
        }
    }

    /// Expected values from scipy 1.17.1 `scipy.stats.chi2.sf(x, df)`.
    #[test]
    fn chi2_tail_matches_scipy() {
        for (x, df, want) in [
            (0.3, 1.0, 0.583882420770365),
            (5.0, 2.0, 0.0820849986238988),
            (12.0, 3.0, 0.007383160505359769),
            (40.0, 5.0, 1.493367900050393e-07),
            (1e-3, 4.0, 0.9999998750416589),
        ] {
            close(chi2_sf(x, df), want, 1e-9);
        }
        assert_eq!(chi2_sf(0.0, 2.0), 1.0);
    }

    #[test]
    fn undefined_cases_are_none() {
        assert!(kruskal_wallis(&[vec![1.0, 2.0]]).is_none());
        assert!(kruskal_wallis(&[vec![1.0, 1.0], vec![1.0, 1.0, 1.0]]).is_none());
        assert!(kruskal_wallis(&[vec![1.0], vec![2.0]]).is_none());
        assert!(kruskal_wallis(&[vec![1.0, 2.0], vec![]]).is_none());
    }

    #[test]
    fn p_is_printed_readably() {
        assert_eq!(p_text(0.5), "p = 0.50");
        assert_eq!(p_text(0.0021), "p = 0.0021");
        assert_eq!(p_text(1e-9), "p < 0.0001");
    }
}
