//! The two-sample test and the multiple-comparison correction.
//!
//! Mann-Whitney U (Wilcoxon rank-sum), two-sided: exact null distribution when both samples are
//! small and free of ties, otherwise the normal approximation with tie correction and continuity
//! correction. Holm's step-down procedure controls the family-wise error rate over every metric
//! compared at once, under any dependence between the metrics. Why these two: docs/compare.md.

use serde::Serialize;

/// Largest per-side sample size for which the exact distribution is used (no ties).
pub const EXACT_MAX_N: usize = 30;

/// How the p-value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact null distribution of U (small samples, no ties).
    Exact,
    /// Normal approximation with tie and continuity correction.
    Normal,
}

/// Result of one Mann-Whitney U test of `x` against `y`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct MannWhitney {
    /// U statistic of `x`: the number of pairs (xi, yj) with xi > yj, ties counting one half.
    pub u: f64,
    /// Two-sided p-value.
    pub p: f64,
    pub method: Method,
}

/// Two-sided Mann-Whitney U test. Non-finite values must already be removed; both samples must
/// be non-empty.
pub fn mann_whitney(x: &[f64], y: &[f64]) -> MannWhitney {
    assert!(
        !x.is_empty() && !y.is_empty(),
        "mann_whitney of an empty sample"
    );
    let (n1, n2) = (x.len(), y.len());
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    // Average ranks over runs of ties; collect the tie sizes for the variance correction.
    let n = all.len();
    let mut r1 = 0.0;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let avg_rank = (i + j) as f64 / 2.0 + 1.0;
        r1 += avg_rank * all[i..=j].iter().filter(|e| e.1).count() as f64;
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let u = r1 - f1 * (f1 + 1.0) / 2.0;
    if tie_term == 0.0 && n1 <= EXACT_MAX_N && n2 <= EXACT_MAX_N {
        return MannWhitney {
            u,
            p: exact_p(u, n1, n2),
            method: Method::Exact,
        };
    }
    let nf = n as f64;
    let mean = f1 * f2 / 2.0;
    let var = f1 * f2 / 12.0 * ((nf + 1.0) - tie_term / (nf * (nf - 1.0)));
    let p = if var <= 0.0 {
        1.0 // every value equal: no evidence of any difference
    } else {
        let d = (u - mean).abs();
        let z = (d - 0.5).max(0.0) / var.sqrt();
        erfc(z / std::f64::consts::SQRT_2).min(1.0)
    };
    MannWhitney {
        u,
        p,
        method: Method::Normal,
    }
}

/// Two-sided exact p-value of U for sample sizes `m`, `n` without ties:
/// 2 * min(P(U <= u), P(U >= u)), capped at 1.
fn exact_p(u: f64, m: usize, n: usize) -> f64 {
    let counts = u_distribution(m, n);
    let total: f64 = counts.iter().sum();
    // Without ties U is an integer; round guards against float noise in the rank sum.
    let k = u.round() as usize;
    let lower: f64 = counts[..=k].iter().sum();
    let upper: f64 = counts[k..].iter().sum();
    (2.0 * lower.min(upper) / total).min(1.0)
}

/// Number of orderings giving each value of U (0..=m*n), by the recurrence
/// f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u). Counts are f64: past 2^53 (C(60, 30) ~ 1.2e17)
/// they are no longer exact integers but keep f64's relative precision, all a p-value needs.
fn u_distribution(m: usize, n: usize) -> Vec<f64> {
    // prev[j] = distribution for (i-1, j); built row by row over i.
    let mut rows: Vec<Vec<f64>> = (0..=n).map(|_| vec![1.0]).collect(); // i = 0: U = 0 only
    for i in 1..=m {
        let mut cur: Vec<Vec<f64>> = Vec::with_capacity(n + 1);
        cur.push(vec![1.0]); // j = 0
        for j in 1..=n {
            let mut d = vec![0.0; i * j + 1];
            // f(i, j-1, u)
            for (u, c) in cur[j - 1].iter().enumerate() {
                d[u] += c;
            }
            // f(i-1, j, u-j)
            for (u, c) in rows[j].iter().enumerate() {
                d[u + j] += c;
            }
            cur.push(d);
        }
        rows = cur;
    }
    rows.pop().expect("n+1 rows")
}

/// Complementary error function (W. J. Cody's rational Chebyshev form as in Numerical Recipes'
/// `erfcc`; relative error below 1.2e-7 everywhere, ample for p-values compared to alpha / 100).
pub fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let ans = t
        * (-z * z - 1.265_512_23
            + t * (1.000_023_68
                + t * (0.374_091_96
                    + t * (0.096_784_18
                        + t * (-0.186_288_06
                            + t * (0.278_868_07
                                + t * (-1.135_203_98
                                    + t * (1.488_515_87
                                        + t * (-0.822_152_23 + t * 0.170_872_77)))))))))
            .exp();
    if x >= 0.0 {
        ans
    } else {
        2.0 - ans
    }
}

/// Holm's step-down adjusted p-values, in the order given. A hypothesis is rejected at
/// family-wise level alpha exactly when its adjusted p-value is <= alpha.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut idx: Vec<usize> = (0..m).collect();
    idx.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut out = vec![1.0; m];
    let mut running = 0.0f64;
    for (rank, &i) in idx.iter().enumerate() {
        let adj = ((m - rank) as f64 * p[i]).min(1.0);
        running = running.max(adj);
        out[i] = running;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn erfc_known_values() {
        assert!((erfc(0.0) - 1.0).abs() < 1e-7);
        assert!((erfc(1.0) - 0.157_299_207).abs() < 1e-7);
        assert!((erfc(2.0) - 0.004_677_735).abs() < 1e-8);
        assert!((erfc(-1.0) - 1.842_700_793).abs() < 1e-7);
    }

    #[test]
    fn exact_distribution_small_cases() {
        // m = n = 2: U in 0..=4 with counts 1,1,2,1,1 (6 orderings).
        assert_eq!(u_distribution(2, 2), vec![1.0, 1.0, 2.0, 1.0, 1.0]);
        assert_eq!(u_distribution(3, 1), vec![1.0, 1.0, 1.0, 1.0]);
        let total: f64 = u_distribution(10, 12).iter().sum();
        assert_eq!(total, 646_646.0); // C(22, 10)
    }

    #[test]
    fn complete_separation_exact() {
        // x all above y, m = n = 5: P(U = 25) = 1 / C(10, 5) = 1/252; two-sided 2/252.
        let x = [6.0, 7.0, 8.0, 9.0, 10.0];
        let y = [1.0, 2.0, 3.0, 4.0, 5.0];
        let r = mann_whitney(&x, &y);
        assert_eq!(r.u, 25.0);
        assert_eq!(r.method, Method::Exact);
        assert!((r.p - 2.0 / 252.0).abs() < 1e-12, "{}", r.p);
        assert_eq!(mann_whitney(&y, &x).p, r.p);
    }

    #[test]
    fn matches_scipy_normal_approximation() {
        // scipy.stats.mannwhitneyu(x, y, method="asymptotic", use_continuity=True):
        // U = 1, ties present -> normal; values computed by hand below.
        let x = [1.0, 2.0, 2.0, 3.0, 3.0, 3.0];
        let y = [3.0, 4.0, 4.0, 5.0, 6.0, 7.0];
        let r = mann_whitney(&x, &y);
        assert_eq!(r.method, Method::Normal);
        // ranks: 1, 2.5, 2.5, 5.5 x3 | 5.5, 8.5, 8.5, 10, 11, 12; R1 = 22.5, U = 1.5
        assert_eq!(r.u, 1.5);
        let tie: f64 = (8.0 - 2.0) + (64.0 - 4.0) + (8.0 - 2.0);
        let var = 36.0 / 12.0 * (13.0 - tie / (12.0 * 11.0));
        let z = ((18.0f64 - 1.5).abs() - 0.5) / var.sqrt();
        assert!((r.p - erfc(z / std::f64::consts::SQRT_2)).abs() < 1e-12);
        assert!(r.p < 0.01);
    }

    #[test]
    fn identical_constant_samples_have_p_one() {
        let r = mann_whitney(&[5.0; 40], &[5.0; 40]);
        assert_eq!(r.p, 1.0);
    }

    #[test]
    fn holm_adjusts_step_down() {
        let adj = holm(&[0.01, 0.04, 0.03, 0.005]);
        // sorted: 0.005*4 = 0.02, 0.01*3 = 0.03, 0.03*2 = 0.06, 0.04*1 -> max(0.06, 0.04) = 0.06
        assert_eq!(adj, vec![0.03, 0.06, 0.06, 0.02]);
        assert!(holm(&[]).is_empty());
        assert_eq!(holm(&[0.9, 0.8]), vec![1.0, 1.0]);
    }

    proptest! {
        #[test]
        fn p_is_a_probability_and_symmetric(
            x in proptest::collection::vec(0.0f64..100.0, 1..50),
            y in proptest::collection::vec(0.0f64..100.0, 1..50),
        ) {
            let a = mann_whitney(&x, &y);
            let b = mann_whitney(&y, &x);
            prop_assert!((0.0..=1.0).contains(&a.p));
            prop_assert!((a.p - b.p).abs() < 1e-9);
            prop_assert!((a.u + b.u - (x.len() * y.len()) as f64).abs() < 1e-9);
        }

        #[test]
        fn holm_never_below_raw(p in proptest::collection::vec(0.0f64..1.0, 1..40)) {
            let adj = holm(&p);
            for (a, r) in adj.iter().zip(&p) {
                prop_assert!(*a >= *r && *a <= 1.0);
            }
        }
    }
}
