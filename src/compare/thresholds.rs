//! Significance level and per-metric noise thresholds of a comparison: from `--thresholds FILE`,
//! else the `[compare]` table of the new run's scenario, else the documented defaults
//! (docs/compare.md).

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::model::scenario::CompareSpec;
use crate::model::tier::Tier;

/// Family-wise significance level (Holm) when none is given.
pub const DEFAULT_ALPHA: f64 = 0.01;
/// Noise threshold of startup and latency metrics (time units): 10%.
pub const DEFAULT_LATENCY_THRESHOLD: f64 = 0.10;
/// Noise threshold of throughput, rate and size metrics: 5%.
pub const DEFAULT_THROUGHPUT_THRESHOLD: f64 = 0.05;
/// Fewest samples per side for a verdict other than inconclusive.
pub const DEFAULT_MIN_SAMPLES: usize = 5;

#[derive(Debug, thiserror::Error)]
pub enum ThresholdsError {
    #[error("cannot read thresholds file {path}: {source} (give the path of a TOML file, see docs/compare.md)")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {message} (fix the thresholds file; see docs/compare.md)")]
    Parse { path: PathBuf, message: String },
    #[error("{origin}: {message}")]
    Invalid { origin: String, message: String },
}

/// Resolved settings: what a comparison uses.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Thresholds {
    pub alpha: f64,
    pub min_samples: usize,
    #[serde(skip)]
    spec: CompareSpec,
}

impl Default for Thresholds {
    fn default() -> Self {
        Thresholds {
            alpha: DEFAULT_ALPHA,
            min_samples: DEFAULT_MIN_SAMPLES,
            spec: CompareSpec::default(),
        }
    }
}

impl Thresholds {
    /// Validate a spec; `origin` names it in errors.
    pub fn from_spec(spec: CompareSpec, origin: &str) -> Result<Thresholds, ThresholdsError> {
        let bad = |message: String| ThresholdsError::Invalid {
            origin: origin.into(),
            message,
        };
        let alpha = spec.alpha.unwrap_or(DEFAULT_ALPHA);
        if !(alpha > 0.0 && alpha <= 0.5) {
            return Err(bad(format!(
                "alpha = {alpha} is outside (0, 0.5]: use e.g. alpha = 0.01"
            )));
        }
        let min_samples = spec.min_samples.unwrap_or(DEFAULT_MIN_SAMPLES);
        if min_samples < 2 {
            return Err(bad(format!(
                "min_samples = {min_samples}: a test needs at least 2 samples per side"
            )));
        }
        let all = spec.threshold.iter().chain(spec.metrics.values()).chain(
            spec.tiers
                .values()
                .flat_map(|t| t.threshold.iter().chain(t.metrics.values())),
        );
        for &t in all {
            if !(t.is_finite() && (0.0..10.0).contains(&t)) {
                return Err(bad(format!(
                    "threshold {t} is not a fraction in [0, 10): write 0.05 for 5%"
                )));
            }
        }
        Ok(Thresholds {
            alpha,
            min_samples,
            spec,
        })
    }

    /// Read a thresholds TOML file.
    pub fn load(path: &Path) -> Result<Thresholds, ThresholdsError> {
        let text = std::fs::read_to_string(path).map_err(|source| ThresholdsError::Read {
            path: path.into(),
            source,
        })?;
        let spec: CompareSpec = toml::from_str(&text).map_err(|e| ThresholdsError::Parse {
            path: path.into(),
            message: e.message().trim().to_string(),
        })?;
        Thresholds::from_spec(spec, &path.display().to_string())
    }

    /// Relative noise threshold of one metric: tier+metric, tier, metric, file-wide, built-in.
    pub fn threshold(&self, tier: Tier, metric: &str, unit: &str) -> f64 {
        let s = &self.spec;
        let t = s.tiers.get(&tier);
        t.and_then(|t| t.metrics.get(metric).copied())
            .or_else(|| t.and_then(|t| t.threshold))
            .or_else(|| s.metrics.get(metric).copied())
            .or(s.threshold)
            .unwrap_or_else(|| builtin_threshold(metric, unit))
    }
}

/// 10% for time metrics (startup, latency: noisy, skewed), 5% for the others (throughput,
/// sizes: steadier).
pub fn builtin_threshold(metric: &str, unit: &str) -> f64 {
    if is_time_metric(metric, unit) {
        DEFAULT_LATENCY_THRESHOLD
    } else {
        DEFAULT_THROUGHPUT_THRESHOLD
    }
}

/// A time unit, or a name that says so (not `_per_s`: that is a rate).
fn is_time_metric(metric: &str, unit: &str) -> bool {
    matches!(unit, "s" | "ms" | "us" | "µs" | "ns")
        || ["_ms", "_us", "_ns"].iter().any(|s| metric.ends_with(s))
        || metric.contains("latency")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolution_order() {
        let spec: CompareSpec = toml::from_str(
            "alpha = 0.05\nthreshold = 0.07\n[metrics]\nlaunch_to_exit_ms = 0.2\n[tiers.emulated]\nthreshold = 0.3\n[tiers.emulated.metrics]\nlaunch_to_exit_ms = 0.4\n",
        )
        .unwrap();
        let t = Thresholds::from_spec(spec, "x").unwrap();
        assert_eq!(t.alpha, 0.05);
        assert_eq!(t.threshold(Tier::Emulated, "launch_to_exit_ms", "ms"), 0.4);
        assert_eq!(t.threshold(Tier::Emulated, "teardown_ms", "ms"), 0.3);
        assert_eq!(t.threshold(Tier::Bare, "launch_to_exit_ms", "ms"), 0.2);
        assert_eq!(t.threshold(Tier::Bare, "copy_gb_per_s", "GB/s"), 0.07);
    }

    #[test]
    fn builtin_defaults() {
        let t = Thresholds::default();
        assert_eq!(t.alpha, DEFAULT_ALPHA);
        assert_eq!(t.threshold(Tier::Bare, "launch_to_ready_ms", "ms"), 0.10);
        assert_eq!(t.threshold(Tier::Bare, "rr_latency_us", "us"), 0.10);
        assert_eq!(t.threshold(Tier::Bare, "copy_gb_per_s", "GB/s"), 0.05);
        assert_eq!(t.threshold(Tier::Bare, "agent_peak_rss_kib", "KiB"), 0.05);
    }

    #[test]
    fn bad_values_are_errors_that_say_what_to_write() {
        let e = Thresholds::from_spec(
            CompareSpec {
                alpha: Some(0.0),
                ..Default::default()
            },
            "t.toml",
        )
        .unwrap_err();
        assert!(
            e.to_string().contains("t.toml") && e.to_string().contains("alpha"),
            "{e}"
        );
        let e = Thresholds::from_spec(
            CompareSpec {
                threshold: Some(5.0e1),
                ..Default::default()
            },
            "t.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("0.05 for 5%"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("th.toml");
        std::fs::write(&p, "alpah = 0.01\n").unwrap();
        let e = Thresholds::load(&p).unwrap_err().to_string();
        assert!(e.contains("th.toml") && e.contains("alpah"), "{e}");
    }
}
