//! What a comparison can see: the smallest p-value a sample size allows, and how many runs per
//! side would detect a given change at the noise a metric showed. Method: docs/compare.md
//! ("Power").
//!
//! Model: a metric's values are its median times exp(sigma * Z), Z standard normal, with sigma
//! the robust relative spread observed in the two runs; a change of `effect` multiplies one side
//! by (1 + effect). "Detected" means the two-sided Mann-Whitney p-value is at most the first
//! bar of Holm's procedure, alpha / family size. Below 31 runs per side the power is simulated
//! with the exact null distribution (the test that compare runs there, seeded, common random
//! numbers across sizes); from 31 on Noether's normal approximation gives the size.

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use super::mwu::{self, EXACT_MAX_N};

/// Power asked of "would detect".
pub const POWER: f64 = 0.8;
/// Sizes beyond this are reported as "more than".
pub const MAX_RUNS: usize = 10_000;
/// Simulated pairs of samples per size (standard error of a power near 0.8: 0.013).
const TRIALS: usize = 1000;
const SEED: u64 = 0x15_0b_e4_c4;

/// Relative spread of a metric: 1.4826 x the median absolute deviation of every sample from its
/// own side's median (so a shift between the sides is not counted as noise), divided by the
/// base median; the median element of an odd-sized side (deviation 0 by construction) is left
/// out. None when the base median is 0 or a side has fewer than 2 values.
pub fn relative_noise(base: &[f64], new: &[f64]) -> Option<f64> {
    if base.len() < 2 || new.len() < 2 {
        return None;
    }
    let scale = crate::stats::median(base).abs();
    if scale == 0.0 || !scale.is_finite() {
        return None;
    }
    let mut dev: Vec<f64> = vec![];
    for side in [base, new] {
        let m = crate::stats::median(side);
        let mut d: Vec<f64> = side.iter().map(|v| (v - m).abs()).collect();
        d.sort_by(f64::total_cmp);
        if side.len() % 2 == 1 {
            d.remove(0); // the median element itself (or one of equal deviation 0)
        }
        dev.extend(d);
    }
    Some(1.4826 * crate::stats::median(&dev) / scale)
}

/// Runs per side needed for a change: `Some(n)`, or None when more than [`MAX_RUNS`].
pub type RunsNeeded = Option<usize>;

/// Power calculations at one significance bar (alpha / family size), shared by every metric of
/// a comparison.
pub struct PowerModel {
    level: f64,
    /// `crit[n]`: the largest U (of n vs n) with two-sided exact p <= level; None when no U is.
    crit: Vec<Option<usize>>,
    /// Standard normal draws, TRIALS x EXACT_MAX_N per side, reused for every size and metric.
    x: Vec<f64>,
    y: Vec<f64>,
}

impl PowerModel {
    pub fn new(level: f64) -> Self {
        let crit = (0..=EXACT_MAX_N)
            .map(|n| {
                if n == 0 {
                    return None;
                }
                let d = mwu::u_distribution(n, n);
                let total: f64 = d.iter().sum();
                let mut cum = 0.0;
                let mut best = None;
                for (u, c) in d.iter().enumerate().take(n * n / 2 + 1) {
                    cum += c;
                    if 2.0 * cum / total <= level {
                        best = Some(u);
                    } else {
                        break;
                    }
                }
                best
            })
            .collect();
        let mut rng = SmallRng::seed_from_u64(SEED);
        let mut normal = || {
            let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
            (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
        };
        let x = (0..TRIALS * EXACT_MAX_N).map(|_| normal()).collect();
        let y = (0..TRIALS * EXACT_MAX_N).map(|_| normal()).collect();
        PowerModel { level, crit, x, y }
    }

    /// Smallest equal size per side at which any result can reach the bar.
    pub fn min_runs(&self) -> RunsNeeded {
        (2..=MAX_RUNS).find(|&n| mwu::min_p(n, n) <= self.level)
    }

    /// Simulated power at n vs n (n <= EXACT_MAX_N) for a shift of `dz` noise units.
    fn simulated_power(&self, n: usize, dz: f64) -> f64 {
        let Some(c) = self.crit[n] else {
            return 0.0;
        };
        let hits = (0..TRIALS)
            .filter(|t| {
                let xs = &self.x[t * EXACT_MAX_N..t * EXACT_MAX_N + n];
                let ys = &self.y[t * EXACT_MAX_N..t * EXACT_MAX_N + n];
                // U of the shifted side; continuous draws: no ties.
                let u: usize = ys
                    .iter()
                    .map(|&b| xs.iter().filter(|&&a| a + dz > b).count())
                    .sum();
                u.min(n * n - u) <= c
            })
            .count();
        hits as f64 / TRIALS as f64
    }

    /// Runs per side that detect a relative change `effect` (0.05 = 5%) with probability
    /// [`POWER`] when the noise is `sigma` (relative).
    pub fn runs_needed(&self, sigma: f64, effect: f64) -> RunsNeeded {
        let shift = (1.0 + effect).ln();
        if sigma <= 0.0 || !sigma.is_finite() {
            // No noise at all: any change separates the samples completely.
            return self.min_runs();
        }
        let dz = shift / sigma;
        let start = self.min_runs()?;
        for n in start..=EXACT_MAX_N {
            if self.simulated_power(n, dz) >= POWER {
                return Some(n);
            }
        }
        // Noether (1987): n per side = (z_{1-level/2} + z_{power})^2 / (6 (P - 1/2)^2), with
        // P = P(shifted > unshifted) = Phi(dz / sqrt 2).
        let p = 1.0 - 0.5 * mwu::erfc(dz / 2.0);
        let z = z_upper(self.level / 2.0) + z_upper(1.0 - POWER);
        let n = (z * z / (6.0 * (p - 0.5).powi(2))).ceil();
        (n.is_finite() && n <= MAX_RUNS as f64).then(|| (n as usize).max(EXACT_MAX_N + 1))
    }
}

/// z with P(Z > z) = q (0 < q < 1), by bisection on erfc: ample precision for a sample size.
fn z_upper(q: f64) -> f64 {
    let (mut lo, mut hi) = (-40.0f64, 40.0f64);
    for _ in 0..200 {
        let mid = 0.5 * (lo + hi);
        if 0.5 * mwu::erfc(mid / std::f64::consts::SQRT_2) > q {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn z_quantiles() {
        assert!((z_upper(0.025) - 1.959_964).abs() < 1e-5);
        assert!((z_upper(0.2) - 0.841_621).abs() < 1e-5);
    }

    #[test]
    fn min_runs_follow_the_exact_distribution() {
        // 2/C(10,5) = 0.0079 <= 0.01: 5 runs; at 0.01/66 = 1.52e-4: 2/C(16,8) = 1.55e-4 is
        // still above, 2/C(18,9) = 4.1e-5 below: 9 runs.
        assert_eq!(PowerModel::new(0.01).min_runs(), Some(5));
        assert_eq!(PowerModel::new(0.01 / 66.0).min_runs(), Some(9));
        assert!(mwu::min_p(8, 8) > 0.01 / 66.0 && mwu::min_p(9, 9) <= 0.01 / 66.0);
    }

    #[test]
    fn runs_needed_is_monotone_and_consistent_with_power() {
        let m = PowerModel::new(0.01 / 66.0);
        let (small, large) = (
            m.runs_needed(0.05, 0.10).unwrap(),
            m.runs_needed(0.05, 0.05).unwrap(),
        );
        assert!(small < large && small <= EXACT_MAX_N, "{small} {large}");
        // Cross-check with scipy (4000 trials, numpy seed 1): power of
        // mannwhitneyu(y, x, method="exact") <= 0.01/66 with y shifted by ln(1.1)/0.05 sd is
        // 0.787 at n = 16 and 0.842 at n = 17.
        assert!((16..=17).contains(&small), "{small}");
        assert!(m.runs_needed(0.02, 0.10).unwrap() <= small);
        // Three noise units: the minimum size already has nearly enough power.
        let n = m.runs_needed(0.01, 0.03).unwrap();
        assert!((9..=11).contains(&n), "{n}");
        // At the size found the simulated power holds, one run fewer it does not.
        let dz = 1.10f64.ln() / 0.05;
        assert!(m.simulated_power(small, dz) >= POWER);
        assert!(m.simulated_power(small - 1, dz) < POWER);
        assert_eq!(m.runs_needed(0.0, 0.05), Some(9));
        assert_eq!(m.runs_needed(10.0, 0.01), None);
    }

    #[test]
    fn noise_ignores_the_shift_between_sides() {
        let base = [9.0, 10.0, 11.0, 10.0, 10.0];
        let new: Vec<f64> = base.iter().map(|v| v * 2.0).collect();
        let s = relative_noise(&base, &new).unwrap();
        // deviations: base 0,0,1,1 (median element dropped), new 0,0,2,2: median 0.5
        assert!((s - 0.5 * 1.4826 / 10.0).abs() < 1e-12, "{s}");
        assert_eq!(relative_noise(&[0.0, 0.0], &[1.0, 2.0]), None);
    }
}
