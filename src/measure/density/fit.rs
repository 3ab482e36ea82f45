//! The straight line of a density measurement: memory = a + b * instances, fitted by ordinary
//! least squares, with the slope's 95% interval from Student's t (residual degrees of freedom
//! n - 2), and the pooling of several rounds' slopes (docs/results.md, "density").

/// A least-squares line through (instances, MiB) points.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Line {
    /// MiB per instance.
    pub slope: f64,
    /// MiB at zero instances.
    pub intercept: f64,
    /// The slope's 95% interval; None with fewer than three points (no residual left).
    pub slope_ci: Option<(f64, f64)>,
    /// Points the line was fitted to.
    pub points: usize,
}

/// Two-sided 95% quantile of Student's t with `df` degrees of freedom (table to 30, then the
/// Cornish-Fisher expansion, within 0.001 of the exact value).
pub fn t95(df: usize) -> f64 {
    const T: [f64; 30] = [
        12.706, 4.303, 3.182, 2.776, 2.571, 2.447, 2.365, 2.306, 2.262, 2.228, 2.201, 2.179, 2.160,
        2.145, 2.131, 2.120, 2.110, 2.101, 2.093, 2.086, 2.080, 2.074, 2.069, 2.064, 2.060, 2.056,
        2.052, 2.048, 2.045, 2.042,
    ];
    match df {
        0 => f64::INFINITY,
        1..=30 => T[df - 1],
        _ => {
            let z: f64 = 1.959_964;
            let n = df as f64;
            z + (z.powi(3) + z) / (4.0 * n)
                + (5.0 * z.powi(5) + 16.0 * z.powi(3) + 3.0 * z) / (96.0 * n * n)
        }
    }
}

/// Ordinary least squares of `y` on `x`. None with fewer than two distinct x (no slope).
pub fn ols(points: &[(f64, f64)]) -> Option<Line> {
    let n = points.len();
    if n < 2 {
        return None;
    }
    let nf = n as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / nf;
    let my = points.iter().map(|p| p.1).sum::<f64>() / nf;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx <= 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (p.1 - my)).sum();
    let slope = sxy / sxx;
    let intercept = my - slope * mx;
    let slope_ci = (n >= 3).then(|| {
        let sse: f64 = points
            .iter()
            .map(|p| (p.1 - intercept - slope * p.0).powi(2))
            .sum();
        let se = (sse / (nf - 2.0)).sqrt() / sxx.sqrt();
        let h = t95(n - 2) * se;
        (slope - h, slope + h)
    });
    Some(Line {
        slope,
        intercept,
        slope_ci,
        points: n,
    })
}

/// One round's slope as recorded: the slope, its 95% interval and the points of its fit.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundSlope {
    pub slope: f64,
    pub ci_low: f64,
    pub ci_high: f64,
    pub points: usize,
}

/// Several rounds' slopes pooled into one estimate and 95% interval: the mean slope (the
/// pooled least-squares slope when the rounds share their counts, each round keeping its own
/// intercept), with the wider of two intervals: from the rounds' own residuals (standard errors
/// recovered from their intervals, degrees of freedom summed), and, with two rounds or more,
/// from the spread of the slopes between rounds (t with R - 1 degrees of freedom), so drift
/// from round to round widens the interval instead of hiding. None without a round.
pub fn pool(rounds: &[RoundSlope]) -> Option<(f64, f64, f64)> {
    let r = rounds.len();
    if r == 0 {
        return None;
    }
    let rf = r as f64;
    let mean = rounds.iter().map(|x| x.slope).sum::<f64>() / rf;
    let df: usize = rounds.iter().map(|x| x.points.saturating_sub(2)).sum();
    let var_sum: f64 = rounds
        .iter()
        .map(|x| {
            let t = t95(x.points.saturating_sub(2));
            ((x.ci_high - x.ci_low) / (2.0 * t)).powi(2)
        })
        .sum();
    let within = if df > 0 && var_sum.is_finite() {
        t95(df) * var_sum.sqrt() / rf
    } else {
        f64::INFINITY
    };
    let between = if r >= 2 {
        let sd = (rounds.iter().map(|x| (x.slope - mean).powi(2)).sum::<f64>() / (rf - 1.0)).sqrt();
        t95(r - 1) * sd / rf.sqrt()
    } else {
        0.0
    };
    let h = within.max(between);
    Some((mean, mean - h, mean + h))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// xorshift64* and Box-Muller: seeded normal noise for the simulations.
    struct Rng(u64);
    impl Rng {
        fn uniform(&mut self) -> f64 {
            self.0 ^= self.0 >> 12;
            self.0 ^= self.0 << 25;
            self.0 ^= self.0 >> 27;
            ((self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 + 0.5) / (1u64 << 53) as f64
        }
        fn normal(&mut self) -> f64 {
            let (u, v) = (self.uniform(), self.uniform());
            (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
        }
    }

    #[test]
    fn exact_line_and_reference_values() {
        let l = ols(&[(0.0, 1.0), (1.0, 3.0), (2.0, 5.0), (4.0, 9.0)]).unwrap();
        assert!((l.slope - 2.0).abs() < 1e-12 && (l.intercept - 1.0).abs() < 1e-12);
        let (lo, hi) = l.slope_ci.unwrap();
        assert!((hi - lo).abs() < 1e-9, "no residual, no width");
        // scipy.stats.linregress([0,1,2,4,8],[0.3,2.1,3.8,8.4,15.9]): slope 1.975, stderr
        // 0.0442531; scipy.stats.t.ppf(0.975, 3) = 3.18245.
        let l = ols(&[(0.0, 0.3), (1.0, 2.1), (2.0, 3.8), (4.0, 8.4), (8.0, 15.9)]).unwrap();
        assert!((l.slope - 1.975).abs() < 1e-9, "{}", l.slope);
        let (lo, hi) = l.slope_ci.unwrap();
        let se = (hi - lo) / (2.0 * 3.182);
        assert!((se - 0.044_253_06).abs() < 1e-7, "{se}");
        // Two points: a slope, no interval; one distinct x: nothing.
        assert!(ols(&[(0.0, 0.0), (2.0, 4.0)]).unwrap().slope_ci.is_none());
        assert!(ols(&[(2.0, 1.0), (2.0, 4.0)]).is_none());
        assert!((t95(3) - 3.182).abs() < 1e-9 && (t95(60) - 2.000).abs() < 1e-3);
    }

    #[test]
    fn slope_interval_covers_at_95_percent() {
        // Counts 0, 1, 2, 4, 8, noise sd 2 MiB around 5 + 3x: the interval must hold the true
        // slope in about 95% of 4000 seeded simulations, one round and pooled over three.
        let mut rng = Rng(0x5eed_1234_abcd_0001);
        let xs = [0.0, 1.0, 2.0, 4.0, 8.0];
        let mut round = || {
            let pts: Vec<(f64, f64)> = xs
                .iter()
                .map(|&x| (x, 5.0 + 3.0 * x + 2.0 * rng.normal()))
                .collect();
            let l = ols(&pts).unwrap();
            let (lo, hi) = l.slope_ci.unwrap();
            RoundSlope {
                slope: l.slope,
                ci_low: lo,
                ci_high: hi,
                points: l.points,
            }
        };
        let sims = 4000;
        let (mut one, mut pooled) = (0, 0);
        for _ in 0..sims {
            let rs: Vec<RoundSlope> = (0..3).map(|_| round()).collect();
            if rs[0].ci_low <= 3.0 && 3.0 <= rs[0].ci_high {
                one += 1;
            }
            let (_, lo, hi) = pool(&rs).unwrap();
            if lo <= 3.0 && 3.0 <= hi {
                pooled += 1;
            }
        }
        let (one, pooled) = (one as f64 / sims as f64, pooled as f64 / sims as f64);
        assert!((0.93..=0.97).contains(&one), "one round: {one}");
        // The wider of two intervals: at least nominal.
        assert!((0.94..=0.995).contains(&pooled), "pooled: {pooled}");
    }

    #[test]
    fn pooling_drifting_rounds_widens() {
        let r = |s: f64| RoundSlope {
            slope: s,
            ci_low: s - 0.1,
            ci_high: s + 0.1,
            points: 5,
        };
        let (m, lo, hi) = pool(&[r(1.0), r(1.0)]).unwrap();
        assert!((m - 1.0).abs() < 1e-12 && hi - lo < 0.2, "{lo} {hi}");
        let (m, lo, hi) = pool(&[r(1.0), r(3.0)]).unwrap();
        assert!((m - 2.0).abs() < 1e-12 && lo < 1.0 && hi > 3.0, "{lo} {hi}");
        assert!(pool(&[]).is_none());
    }
}
