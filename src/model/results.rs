//! The result files of a run: `results.json` (everything) and `samples.csv` (the raw samples,
//! one row per value, columns from the same [`Sample`] struct). Both are rewritten atomically
//! after every round, so an interrupted run keeps what it completed. Schema: docs/results.md.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::host::fs::write_atomic;
use crate::model::availability::Availability;
use crate::model::budget::Budget;
use crate::model::facts::HostFacts;
use crate::model::scenario::{ResolvedPlan, Scenario};
use crate::model::tier::Tier;
use crate::protocol::{Better, MetricKind};
use crate::stats::{self, Ratio};

/// Bumped on every change of [`Results`]; documented in docs/results.md.
/// 3: summaries carry honest intervals (`ci_low`/`ci_high` null below n = 5, `ci_coverage`,
/// `ci_missing`); files of versions 1 and 2 have their summaries recomputed from their samples
/// when loaded.
/// 4: `labels` (`run --label`), absent (no labels) in older files: compatible, nothing recomputed.
pub const SCHEMA_VERSION: u32 = 4;

/// First schema version whose stored summaries are used as they are (older ones carried
/// bootstrap "95%" intervals at any n; [`Results::load`] recomputes them from the samples).
pub const HONEST_INTERVALS_SINCE: u32 = 3;

/// Oldest schema version this isobench still reads (fields added since are optional).
pub const OLDEST_READABLE: u32 = 1;

/// One measured value of one launch.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    pub tier: Tier,
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    /// Round of the interleaved schedule this launch ran in (0-based).
    pub round: u32,
    pub value: f64,
    /// 0-based position of this launch among the launches of its round and workload (None in
    /// results written before schema version 2).
    #[serde(default)]
    pub position: Option<u32>,
    /// The tier launched immediately before this launch (warmups, probes and other workloads
    /// included); None for the run's first launch and in results before schema version 2.
    #[serde(default)]
    pub previous_tier: Option<Tier>,
    /// Bookkeeping counters are shown, never compared (absent in older results: measured).
    // Always written: samples.csv needs the same columns on every row (a skipped field would
    // make a bookkeeping row one column longer than a measured one).
    #[serde(default)]
    pub kind: MetricKind,
}

/// How the order of the arms within each round was drawn (docs/results.md).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRecord {
    /// `williams`: rows of a Williams design in a seeded random order (src/measure/plan.rs).
    pub design: String,
    /// Same seed, same order: give it back with `--seed` (or `seed =` in the scenario).
    pub seed: u64,
    /// Where the seed came from: `cli`, `scenario` or `random`.
    pub seed_from: String,
}

/// Per (tier, workload, metric): the summary and the ratio to `bare`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MetricSummary {
    pub tier: Tier,
    pub workload: String,
    pub metric: String,
    pub unit: String,
    pub better: Better,
    #[serde(flatten)]
    pub stats: stats::Summary,
    /// This tier's median over bare's, with a 95% bootstrap interval when both sides have
    /// enough samples (`stats::MIN_N_RATIO`); None for bare itself or when bare did not run.
    pub ratio_to_bare: Option<Ratio>,
}

/// What happened to one requested tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TierRecord {
    pub tier: Tier,
    pub availability: Availability,
    /// Ran (at least one sample), skipped (unavailable) or failed (all launches failed).
    pub status: TierStatus,
    #[serde(default)]
    pub plan: Option<ResolvedPlan>,
    #[serde(default)]
    pub settings: BTreeMap<String, String>,
    #[serde(default)]
    pub versions: BTreeMap<String, String>,
    /// Failed launches: (workload, round, message).
    #[serde(default)]
    pub failures: Vec<Failure>,
    /// Launches done per workload, warmups excluded.
    #[serde(default)]
    pub launches: BTreeMap<String, u32>,
    /// Why fewer launches ran than planned (time budget, failures, interruption).
    #[serde(default)]
    pub note: Option<String>,
    /// What the agent saw from inside this tier (one unrecorded probe launch).
    #[serde(default)]
    pub isolation: Option<crate::protocol::IsolationView>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TierStatus {
    Ran,
    Skipped,
    Failed,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failure {
    pub workload: String,
    pub round: u32,
    pub message: String,
}

/// Everything a run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub schema_version: u32,
    pub run_id: String,
    pub started_at: String,
    pub finished_at: Option<String>,
    /// True when the run was stopped (Ctrl-C) before its plan was complete.
    pub interrupted: bool,
    pub host: HostFacts,
    /// isobench, qemu, guest kernel, ...
    pub versions: BTreeMap<String, String>,
    pub scenario: Scenario,
    pub budget: Budget,
    /// The order design and its seed (None in results before schema version 2).
    #[serde(default)]
    pub order: Option<OrderRecord>,
    pub tiers: Vec<TierRecord>,
    pub summaries: Vec<MetricSummary>,
    pub samples: Vec<Sample>,
    /// `run --label key=value` (a bare word is `label=WORD`): what a merged report and the
    /// history group and filter runs by (empty before schema version 4).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// Longest label key or value accepted.
pub const LABEL_MAX: usize = 64;

/// `--label` arguments as a map: each `key=value`, or a bare word meaning `label=WORD`. Keys are
/// `[a-z0-9_-]`; values are printable, without `,` (labels are shown and stored comma-joined).
pub fn parse_labels(args: &[String]) -> Result<BTreeMap<String, String>, String> {
    let mut out = BTreeMap::new();
    for a in args {
        let (k, v) = a.split_once('=').unwrap_or(("label", a.as_str()));
        let (k, v) = (k.trim(), v.trim());
        let key_ok = !k.is_empty()
            && k.len() <= LABEL_MAX
            && k.bytes()
                .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_' || b == b'-');
        let value_ok = !v.is_empty()
            && v.chars().count() <= LABEL_MAX
            && v.chars().all(|c| !c.is_control() && c != ',');
        if !key_ok || !value_ok {
            return Err(format!("--label {a:?}: give key=value (key of a-z, 0-9, _ or -; value of 1 to {LABEL_MAX} characters without a comma), or one word, e.g. --label host_class=kvm-metal"));
        }
        if out.insert(k.to_string(), v.to_string()).is_some() {
            return Err(format!("--label {k} given twice: give each key once"));
        }
    }
    Ok(out)
}

/// Labels as shown and stored: `key=value` pairs joined by `,` (empty when none).
pub fn labels_text(labels: &BTreeMap<String, String>) -> String {
    labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

#[derive(Debug, thiserror::Error)]
pub enum ResultsError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid isobench results file: {message} (was the run interrupted while writing, or the file edited by hand?)")]
    Parse { path: PathBuf, message: String },
    #[error("{path} has schema version {found}, this isobench reads versions {OLDEST_READABLE} to {SCHEMA_VERSION}: re-run the benchmark or use a matching isobench")]
    Version { path: PathBuf, found: u32 },
    #[error("writing {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl Results {
    /// Recompute every summary from the raw samples.
    pub fn summarize(&mut self) {
        self.summaries = summarize_samples(&self.samples);
    }

    pub fn summary(&self, tier: Tier, workload: &str, metric: &str) -> Option<&MetricSummary> {
        self.summaries
            .iter()
            .find(|s| s.tier == tier && s.workload == workload && s.metric == metric)
    }

    /// Write results.json and samples.csv into `dir` atomically.
    pub fn write(&self, dir: &Path) -> Result<(), ResultsError> {
        std::fs::create_dir_all(dir).map_err(|source| ResultsError::Write {
            path: dir.into(),
            source,
        })?;
        let json = dir.join("results.json");
        let data = serde_json::to_vec_pretty(self).expect("results serialise");
        write_atomic(&json, &data).map_err(|source| ResultsError::Write {
            path: json.clone(),
            source,
        })?;
        let csv_path = dir.join("samples.csv");
        let mut w = csv::Writer::from_writer(Vec::new());
        for s in &self.samples {
            w.serialize(s).expect("sample serialises to CSV");
        }
        let bytes = w.into_inner().expect("in-memory CSV");
        write_atomic(&csv_path, &bytes).map_err(|source| ResultsError::Write {
            path: csv_path,
            source,
        })
    }

    /// Read `results.json` from a run directory or a file path.
    pub fn load(path: &Path) -> Result<Results, ResultsError> {
        let file = if path.is_dir() {
            path.join("results.json")
        } else {
            path.to_path_buf()
        };
        let bytes = std::fs::read(&file).map_err(|source| ResultsError::Read {
            path: file.clone(),
            source,
        })?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| ResultsError::Parse {
                path: file.clone(),
                message: e.to_string(),
            })?;
        let found = v
            .get("schema_version")
            .and_then(|x| x.as_u64())
            .unwrap_or(0);
        if !(u64::from(OLDEST_READABLE)..=u64::from(SCHEMA_VERSION)).contains(&found) {
            return Err(ResultsError::Version {
                path: file,
                found: u32::try_from(found).unwrap_or(u32::MAX),
            });
        }
        let mut r: Results = serde_json::from_value(v).map_err(|e| ResultsError::Parse {
            path: file,
            message: e.to_string(),
        })?;
        if r.schema_version < HONEST_INTERVALS_SINCE {
            // Migration: the stored intervals were bootstrap ones at any n; recompute.
            r.summarize();
        }
        Ok(r)
    }
}

/// Group samples by (tier, workload, metric) and summarise each, with ratios to bare.
pub fn summarize_samples(samples: &[Sample]) -> Vec<MetricSummary> {
    type Key = (Tier, String, String);
    let mut groups: BTreeMap<Key, (String, Better, Vec<f64>)> = BTreeMap::new();
    for s in samples {
        groups
            .entry((s.tier, s.workload.clone(), s.metric.clone()))
            .or_insert_with(|| (s.unit.clone(), s.better, Vec::new()))
            .2
            .push(s.value);
    }
    let mut out = Vec::new();
    for ((tier, workload, metric), (unit, better, values)) in &groups {
        let Some(st) = stats::summarize(values) else {
            continue;
        };
        let ratio_to_bare = if *tier == Tier::Bare {
            None
        } else {
            groups
                .get(&(Tier::Bare, workload.clone(), metric.clone()))
                .and_then(|(_, _, base)| {
                    stats::ratio_of_medians(values, base, stats::BOOTSTRAP_RESAMPLES)
                })
        };
        out.push(MetricSummary {
            tier: *tier,
            workload: workload.clone(),
            metric: metric.clone(),
            unit: unit.clone(),
            better: *better,
            stats: st,
            ratio_to_bare,
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(tier: Tier, v: f64) -> Sample {
        Sample {
            tier,
            workload: "noop".into(),
            metric: "launch_to_exit_ms".into(),
            unit: "ms".into(),
            better: Better::Lower,
            round: 0,
            value: v,
            position: Some(1),
            previous_tier: Some(Tier::Bare),
            kind: MetricKind::Measured,
        }
    }

    #[test]
    fn summaries_carry_ratio_to_bare() {
        let mut s: Vec<Sample> = (1..=10).map(|i| sample(Tier::Bare, f64::from(i))).collect();
        s.extend((1..=10).map(|i| sample(Tier::Container, f64::from(i) * 3.0)));
        let sum = summarize_samples(&s);
        let c = sum.iter().find(|m| m.tier == Tier::Container).unwrap();
        assert!((c.ratio_to_bare.as_ref().unwrap().ratio - 3.0).abs() < 1e-9);
        assert!(sum
            .iter()
            .find(|m| m.tier == Tier::Bare)
            .unwrap()
            .ratio_to_bare
            .is_none());
    }

    #[test]
    fn csv_columns_come_from_the_struct() {
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(sample(Tier::Chroot, 1.5)).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            "tier,workload,metric,unit,better,round,value,position,previous_tier,kind"
        );
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "chroot,noop,launch_to_exit_ms,ms,lower,0,1.5,1,bare,measured"
        );
        let mut first = sample(Tier::Chroot, 1.5);
        first.previous_tier = None;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(first).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        assert_eq!(
            text.lines().nth(1).unwrap(),
            "chroot,noop,launch_to_exit_ms,ms,lower,0,1.5,1,,measured"
        );
    }

    /// A run mixes measured and bookkeeping samples: every row has the same columns, and the
    /// whole run writes and reads back.
    #[test]
    fn bookkeeping_rows_have_the_same_columns() {
        let mut counter = sample(Tier::Bare, 5.0);
        counter.metric = "stream_repeats_done".into();
        counter.kind = MetricKind::Bookkeeping;
        let mut w = csv::Writer::from_writer(Vec::new());
        w.serialize(sample(Tier::Bare, 1.0)).unwrap();
        w.serialize(counter).unwrap();
        w.serialize(sample(Tier::Bare, 2.0)).unwrap();
        let text = String::from_utf8(w.into_inner().unwrap()).unwrap();
        let widths: Vec<usize> = text.lines().map(|l| l.split(',').count()).collect();
        assert_eq!(widths, vec![10, 10, 10, 10], "{text}");
        assert!(text.lines().nth(2).unwrap().ends_with(",bookkeeping"));
    }

    /// A results.json of schema version 2 carried a bootstrap "95%" interval at any n: loading
    /// it recomputes the summaries, so n = 3 has no interval (and says why), n = 6 the
    /// order-statistic one; a version 3 file keeps its null intervals.
    #[test]
    fn schema_2_intervals_are_recomputed() {
        let mut samples: Vec<Sample> = (1..=3).map(|i| sample(Tier::Bare, f64::from(i))).collect();
        samples.extend((1..=6).map(|i| sample(Tier::Container, f64::from(i) * 2.0)));
        let mut r = crate::compare::synthetic::results("old", samples);
        r.summarize();
        let mut v = serde_json::to_value(&r).unwrap();
        v["schema_version"] = 2.into();
        for s in v["summaries"].as_array_mut().unwrap() {
            let o = s.as_object_mut().unwrap();
            o.insert("ci_low".into(), 1.0.into());
            o.insert("ci_high".into(), 3.0.into());
            o.remove("ci_coverage");
            o.remove("ci_missing");
            if let Some(rt) = o.get_mut("ratio_to_bare").and_then(|x| x.as_object_mut()) {
                rt.insert("ci_low".into(), 1.5.into());
                rt.insert("ci_high".into(), 2.5.into());
                rt.remove("ci_missing");
            }
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let back = Results::load(&path).unwrap();
        let bare = back
            .summary(Tier::Bare, "noop", "launch_to_exit_ms")
            .unwrap();
        assert_eq!(bare.stats.ci(), None);
        assert_eq!(
            bare.stats.ci_missing.as_deref(),
            Some("no interval: n = 3 < 5")
        );
        let c = back
            .summary(Tier::Container, "noop", "launch_to_exit_ms")
            .unwrap();
        assert_eq!(c.stats.ci(), Some((2.0, 12.0)));
        assert_eq!(c.stats.ci_coverage, Some(0.96875));
        let ratio = c.ratio_to_bare.as_ref().unwrap();
        assert_eq!((ratio.ratio, ratio.ci()), (3.5, None));
        // Version 3 as written: nulls load as None.
        let fresh = serde_json::to_vec(&back).unwrap();
        std::fs::write(&path, fresh).unwrap();
        let again = Results::load(&path).unwrap();
        assert_eq!(again.summaries, back.summaries);
    }

    #[test]
    fn labels_parse_and_old_files_have_none() {
        let l = parse_labels(&["host_class=kvm-metal".into(), "ci".into()]).unwrap();
        assert_eq!(labels_text(&l), "host_class=kvm-metal,label=ci");
        for bad in ["Bad=x", "k=", "=v", "k=a,b", "k=x\ny"] {
            assert!(parse_labels(&[bad.into()]).is_err(), "{bad}");
        }
        assert!(parse_labels(&["a=1".into(), "a=2".into()]).is_err());
        // A version 3 file (no labels) loads with none; labels written come back.
        let mut r = crate::compare::synthetic::results("old", vec![sample(Tier::Bare, 2.0)]);
        let mut v = serde_json::to_value(&r).unwrap();
        assert!(v.get("labels").is_none(), "no labels, no field");
        v["schema_version"] = 3.into();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(Results::load(&path).unwrap().labels.is_empty());
        r.labels = l.clone();
        r.write(dir.path()).unwrap();
        assert_eq!(Results::load(dir.path()).unwrap().labels, l);
    }

    /// A results.json of schema version 1 (no order, no position, no previous_tier) still
    /// loads, with those fields absent.
    #[test]
    fn schema_1_files_still_load() {
        let mut r = crate::compare::synthetic::results("old", vec![sample(Tier::Bare, 2.0)]);
        r.order = Some(OrderRecord {
            design: "williams".into(),
            seed: 5,
            seed_from: "cli".into(),
        });
        let mut v = serde_json::to_value(&r).unwrap();
        v["schema_version"] = 1.into();
        v.as_object_mut().unwrap().remove("order");
        let s0 = v["samples"][0].as_object_mut().unwrap();
        s0.remove("position");
        s0.remove("previous_tier");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("results.json");
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        let back = Results::load(&path).unwrap();
        assert_eq!(back.schema_version, 1);
        assert_eq!(back.order, None);
        assert_eq!(back.samples[0].position, None);
        assert_eq!(back.samples[0].previous_tier, None);
        v["schema_version"] = 99.into();
        std::fs::write(&path, serde_json::to_vec(&v).unwrap()).unwrap();
        assert!(matches!(
            Results::load(&path),
            Err(ResultsError::Version { found: 99, .. })
        ));
    }
}
