//! The two-sample test and the multiple-comparison correction.
//!
//! Mann-Whitney U (Wilcoxon rank-sum), two-sided: the exact permutation distribution when both
//! samples are small (ties included: the distribution of the rank sum conditional on the tied
//! mid-ranks, what an exhaustive permutation test gives), otherwise the normal approximation with
//! tie correction and continuity correction. Holm's step-down procedure controls the family-wise
//! error rate over every metric compared at once, under any dependence between the metrics. Why
//! these two, and how this differs from scipy's `method="exact"` with ties: docs/compare.md.

use serde::Serialize;

/// Largest per-side sample size for which the exact distribution is used.
pub const EXACT_MAX_N: usize = 30;

/// How the p-value was obtained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// Exact permutation distribution of U (small samples; with ties, conditional on them).
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
    // Average ranks over runs of ties (kept doubled, so they are integers, for the exact path);
    // collect the tie sizes for the variance correction.
    let n = all.len();
    let mut ranks2: Vec<usize> = Vec::with_capacity(n);
    let mut r1_2 = 0usize;
    let mut tie_term = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        let t = (j - i + 1) as f64;
        let rank2 = i + j + 2; // 2 x the average of ranks i+1 ..= j+1
        r1_2 += rank2 * all[i..=j].iter().filter(|e| e.1).count();
        ranks2.extend(std::iter::repeat(rank2).take(j - i + 1));
        tie_term += t * t * t - t;
        i = j + 1;
    }
    let (f1, f2) = (n1 as f64, n2 as f64);
    let u = r1_2 as f64 / 2.0 - f1 * (f1 + 1.0) / 2.0;
    if n1 <= EXACT_MAX_N && n2 <= EXACT_MAX_N {
        let p = if tie_term == 0.0 {
            exact_p(u, n1, n2)
        } else {
            exact_p_ties(&ranks2, n1, r1_2)
        };
        return MannWhitney {
            u,
            p,
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

/// Two-sided exact p-value with ties: the permutation distribution of the first sample's rank
/// sum over all C(N, m) ways to pick its `m` mid-ranks (given doubled, so that they are
/// integers), 2 * min(P(R <= r), P(R >= r)), capped at 1: exactly what an exhaustive
/// permutation test of U gives (`scipy.stats.permutation_test`, two-sided).
fn exact_p_ties(ranks2: &[usize], m: usize, observed: usize) -> f64 {
    let max_sum: usize = ranks2.iter().sum();
    // ways[k][s]: subsets of size k of the ranks seen so far with doubled sum s.
    let mut ways = vec![vec![0.0f64; max_sum + 1]; m + 1];
    ways[0][0] = 1.0;
    let mut reach = 0usize;
    for &r in ranks2 {
        reach += r;
        for k in (1..=m).rev() {
            let (lo, hi) = ways.split_at_mut(k);
            let (prev, cur) = (&lo[k - 1], &mut hi[0]);
            for s in (r..=reach).rev() {
                cur[s] += prev[s - r];
            }
        }
    }
    let dist = &ways[m];
    let total: f64 = dist.iter().sum();
    let lower: f64 = dist[..=observed].iter().sum();
    let upper: f64 = dist[observed..].iter().sum();
    (2.0 * lower.min(upper) / total).min(1.0)
}

/// The smallest two-sided p-value the test can give at sample sizes `m`, `n`: complete
/// separation, 2 / C(m + n, m) (ties only make it larger). When this times the Holm family
/// size exceeds alpha, no result at these sizes can be significant.
pub fn min_p(m: usize, n: usize) -> f64 {
    if m == 0 || n == 0 {
        return 1.0;
    }
    // ln C(m + n, m), summed term by term: exact enough and never overflows.
    let (k, total) = (m.min(n), m + n);
    let ln_c: f64 = (0..k)
        .map(|i| ((total - i) as f64).ln() - ((i + 1) as f64).ln())
        .sum();
    (2.0 * (-ln_c).exp()).min(1.0)
}

/// Number of orderings giving each value of U (0..=m*n), by the recurrence
/// f(m, n, u) = f(m-1, n, u-n) + f(m, n-1, u). Counts are f64: past 2^53 (C(60, 30) ~ 1.2e17)
/// they are no longer exact integers but keep f64's relative precision, all a p-value needs.
pub(crate) fn u_distribution(m: usize, n: usize) -> Vec<f64> {
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

    // Reference data, generated the same way here and in the Python that computed the
    // expected values (scipy 1.17.1):
    //
    //   from scipy.stats import mannwhitneyu, permutation_test
    //   def ties(n1, n2, a, b, m1, m2, off):   # integers: many ties
    //       return ([float((i*a) % m1) for i in range(n1)],
    //               [float((j*b) % m2 + off) for j in range(n2)])
    //   def distinct(n1, n2, a, b, P, shift):   # x half-integers, y integers, P prime: no ties
    //       return ([float((i*a) % P) + 0.5 + shift for i in range(n1)],
    //               [float((j*b) % P) for j in range(n2)])
    //   mannwhitneyu(x, y, method="exact")                             # no ties
    //   mannwhitneyu(x, y, method="asymptotic", use_continuity=True)   # normal path
    //   stat = lambda x, y, axis: mannwhitneyu(x, y, method="asymptotic", axis=axis).statistic
    //   permutation_test((x, y), stat, permutation_type="independent",
    //                    alternative="two-sided", n_resamples=10**7)    # exhaustive: exact
    //
    // For 30 vs 30 and 25 vs 30 with ties the permutations are too many to enumerate; the
    // expected value there comes from the exact conditional distribution computed in Python with
    // `fractions.Fraction` (a subset-sum over the mid-ranks, independent of this code), which
    // equals permutation_test on every case small enough for both.
    fn ties(
        n1: usize,
        n2: usize,
        a: usize,
        b: usize,
        m1: usize,
        m2: usize,
        off: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        (
            (0..n1).map(|i| ((i * a) % m1) as f64).collect(),
            (0..n2).map(|j| ((j * b) % m2) as f64 + off).collect(),
        )
    }

    fn distinct(
        n1: usize,
        n2: usize,
        a: usize,
        b: usize,
        p: usize,
        shift: f64,
    ) -> (Vec<f64>, Vec<f64>) {
        (
            (0..n1)
                .map(|i| ((i * a) % p) as f64 + 0.5 + shift)
                .collect(),
            (0..n2).map(|j| ((j * b) % p) as f64).collect(),
        )
    }

    fn close(got: f64, want: f64) -> bool {
        (got - want).abs() <= 1e-9 * want.max(1e-300) + 1e-12
    }

    #[test]
    fn exact_path_without_ties_matches_scipy_exact() {
        // (n1, n2, a, b, P, shift) -> (U, scipy p)
        let cases = [
            ((5, 5, 2, 3, 7, 0.0), 12.0, 1.0),
            ((7, 9, 3, 5, 11, 2.0), 39.0, 0.469_755_244_755_244_77),
            ((12, 10, 5, 7, 13, 3.0), 89.0, 0.059_135_910_529_099_39),
            ((30, 30, 7, 11, 31, 6.0), 614.0, 0.014_867_606_314_175_25),
            ((20, 28, 3, 5, 29, -4.0), 224.0, 0.248_402_870_762_073_04),
        ];
        for ((n1, n2, a, b, p, shift), u, want) in cases {
            let (x, y) = distinct(n1, n2, a, b, p, shift);
            let r = mann_whitney(&x, &y);
            assert_eq!(r.method, Method::Exact, "{n1} vs {n2}");
            assert_eq!(r.u, u, "{n1} vs {n2}");
            assert!(close(r.p, want), "{n1} vs {n2}: {} vs scipy {want}", r.p);
        }
    }

    #[test]
    fn exact_path_with_ties_matches_an_exhaustive_permutation_test() {
        // (n1, n2, a, b, m1, m2, off) -> (U, permutation-test p, scipy method="exact" p).
        // scipy's "exact" ignores ties (no-tie distribution of the larger U, cast to an integer:
        // docs of scipy.stats.mannwhitneyu, "the exact method is not corrected for ties"), so its
        // p is the wrong one here, always a little larger; ours is the permutation test's.
        let cases = [
            ((5, 5, 3, 2, 7, 5, 1.0), 13.5, 0.880_952_380_952_380_9, 1.0),
            (
                (6, 8, 5, 3, 4, 6, 0.0),
                22.0,
                0.841_824_841_824_841_9,
                0.851_814_851_814_851_8,
            ),
            (
                (9, 7, 4, 7, 10, 9, 2.0),
                17.0,
                0.131_118_881_118_881_12,
                0.141_608_391_608_391_61,
            ),
            (
                (10, 10, 3, 7, 6, 6, 1.0),
                25.0,
                0.054_601_745_004_221_78,
                0.063_012_838_554_634_22,
            ),
            (
                (30, 30, 7, 11, 13, 12, 2.0),
                305.0,
                0.031_178_872_673_161_575,
                0.031_940_988_950_725_474,
            ),
            (
                (25, 30, 7, 11, 9, 10, 1.0),
                273.0,
                0.084_064_163_294_952_25,
                0.086_274_476_878_379_27,
            ),
        ];
        for ((n1, n2, a, b, m1, m2, off), u, want, scipy_exact) in cases {
            let (x, y) = ties(n1, n2, a, b, m1, m2, off);
            let r = mann_whitney(&x, &y);
            assert_eq!(r.method, Method::Exact, "{n1} vs {n2}");
            assert_eq!(r.u, u, "{n1} vs {n2}");
            assert!(close(r.p, want), "{n1} vs {n2}: {} vs {want}", r.p);
            assert!(r.p < scipy_exact, "{n1} vs {n2}");
            // Symmetric in the two samples.
            assert!(close(mann_whitney(&y, &x).p, want), "{n1} vs {n2} swapped");
        }
    }

    #[test]
    fn normal_path_matches_scipy_asymptotic() {
        // Ties: mannwhitneyu(x, y, method="asymptotic", use_continuity=True).
        let cases = [
            (
                (35, 40, 7, 11, 13, 12, 2.0),
                492.0,
                0.027_117_146_124_476_348,
            ),
            (
                (31, 50, 5, 3, 17, 9, -1.0),
                1313.5,
                1.089_032_134_848_148_8e-7,
            ),
        ];
        for ((n1, n2, a, b, m1, m2, off), u, want) in cases {
            let (x, y) = ties(n1, n2, a, b, m1, m2, off);
            let r = mann_whitney(&x, &y);
            assert_eq!(r.method, Method::Normal);
            assert_eq!(r.u, u);
            // erfc is good to ~1.2e-7 relative.
            assert!(
                (r.p - want).abs() <= 5e-7 * want,
                "{n1} vs {n2}: {} vs {want}",
                r.p
            );
        }
        // No ties: distinct(40, 45, 7, 11, 47, 9).
        let (x, y) = distinct(40, 45, 7, 11, 47, 9.0);
        let r = mann_whitney(&x, &y);
        assert_eq!((r.method, r.u), (Method::Normal, 1224.0));
        let want = 0.004_395_917_733_901_071;
        assert!((r.p - want).abs() <= 5e-7 * want, "{} vs {want}", r.p);
    }

    #[test]
    fn min_p_is_complete_separation() {
        assert!((min_p(5, 5) - 2.0 / 252.0).abs() < 1e-15);
        assert!((min_p(3, 4) - 2.0 / 35.0).abs() < 1e-15);
        assert!((min_p(8, 8) - 2.0 / 12_870.0).abs() < 1e-16);
        assert_eq!(min_p(0, 5), 1.0);
        // Complete separation reaches it exactly.
        let r = mann_whitney(&[6.0, 7.0, 8.0], &[1.0, 2.0, 3.0, 4.0]);
        assert!((r.p - min_p(3, 4)).abs() < 1e-15);
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
