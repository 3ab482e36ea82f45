//! Scenario files (`scenarios/*.toml`): which workloads, how many repetitions per tier, and the
//! CPU/memory budget every tier gets. Parsed strictly: a typo is an error that names the line.

pub mod bounds;

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::model::tier::Tier;
use crate::workload::Workload;

/// The embedded default scenario, used when `scenarios/default.toml` is not in reach.
pub const DEFAULT_SCENARIO: &str = include_str!("../../scenarios/default.toml");

/// Longest scenario file read (a scenario is a few dozen lines).
pub const MAX_SCENARIO_BYTES: u64 = 1 << 20;

/// Repetitions of one tier (every field optional; unset fields fall back to `[defaults]`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RepeatPlan {
    /// Measured launches per workload.
    pub runs: Option<u32>,
    /// Unrecorded launches first, per workload.
    pub warmup: Option<u32>,
    /// Stop measuring this tier once it has used this much wall time per workload (seconds),
    /// as long as it has `min_runs`.
    pub time_budget_s: Option<f64>,
    /// Fewest measured launches even when the time budget is spent.
    pub min_runs: Option<u32>,
    /// Size of every application point (redis requests, mysql point time and events) times
    /// this, with a floor ([`scale_app`]): `[tier.emulated] app_scale = 0.05`, so a TCG guest
    /// finishes. 0 < s <= 1; rates per second stay comparable, amounts do not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_scale: Option<f64>,
}

/// A fully resolved plan for one tier.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct ResolvedPlan {
    pub runs: u32,
    pub warmup: u32,
    pub time_budget_s: Option<f64>,
    pub min_runs: u32,
    /// Application points scaled by this (absent: full size); recorded so that nobody compares
    /// unlike sizes unknowingly.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub app_scale: Option<f64>,
}

/// Fewest redis requests per operation and point once scaled.
pub const MIN_SCALED_REQUESTS: u64 = 100;
/// Fewest sysbench seconds per mysql point once scaled.
pub const MIN_SCALED_POINT_S: u64 = 1;
/// Fewest sysbench transactions (`--events`) per mysql point once scaled.
pub const MIN_SCALED_EVENTS: u64 = 100;

/// `w` with its application points scaled by `s` (`app_scale`): redis `requests`, mysql
/// `point_s` and `point_events`, each rounded and held at its floor (never raised above the
/// original); every other workload, and `None` or 1, unchanged. What a point measures per
/// second is unchanged; only how long it runs.
pub fn scale_app(w: &Workload, s: Option<f64>) -> Workload {
    let Some(s) = s.filter(|s| *s < 1.0) else {
        return w.clone();
    };
    let by = |v: u64, floor: u64| -> u64 {
        // Lossless enough: point sizes are far below 2^53.
        let scaled = (v as f64 * s).round() as u64;
        scaled.max(floor).min(v)
    };
    match w {
        Workload::Redis(p) => Workload::Redis(crate::workload::RedisParams {
            requests: by(p.requests, MIN_SCALED_REQUESTS),
            ..p.clone()
        }),
        Workload::Mysql(p) => Workload::Mysql(crate::workload::MysqlParams {
            point_s: by(p.point_s, MIN_SCALED_POINT_S),
            point_events: by(p.point_events, MIN_SCALED_EVENTS),
            ..p.clone()
        }),
        w => w.clone(),
    }
}

/// CPU and memory budget, identical for every tier.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetSpec {
    /// Number of host CPUs (the first ones the harness may use).
    #[serde(default = "default_cpus")]
    pub cpus: usize,
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
}

fn default_cpus() -> usize {
    1
}
fn default_memory() -> u64 {
    512
}

impl Default for BudgetSpec {
    fn default() -> Self {
        BudgetSpec {
            cpus: default_cpus(),
            memory_mib: default_memory(),
        }
    }
}

/// A scenario file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Scenario {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Tiers to run; empty = every tier.
    #[serde(default)]
    pub tiers: Vec<Tier>,
    #[serde(default)]
    pub defaults: RepeatPlan,
    /// Per-tier overrides, keyed by tier name.
    #[serde(default)]
    pub tier: BTreeMap<Tier, RepeatPlan>,
    #[serde(default)]
    pub budget: BudgetSpec,
    /// Seed of the launch order within rounds (same seed, same order); `--seed` wins, and
    /// without either a run draws one and records it in results.json.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seed: Option<u64>,
    #[serde(rename = "workload")]
    pub workloads: Vec<Workload>,
    /// Backend settings, as `--set key=value` gives them (the command line wins): checked
    /// against the settings of the tiers that run (docs/scenarios.md).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub settings: BTreeMap<String, SettingValue>,
    /// Significance level and noise thresholds for `isobench compare` (docs/compare.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub compare: Option<crate::model::scenario::CompareSpec>,
}

/// The `[compare]` table of a scenario, or a thresholds file. Every field is optional.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CompareSpec {
    /// Family-wise significance level across all metrics compared at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub alpha: Option<f64>,
    /// Fewest samples per side for a verdict other than inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_samples: Option<usize>,
    /// Relative threshold (0.05 = 5%) for every metric without a more specific one; unset =
    /// 10% for time metrics, 5% for the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    /// Per metric name, e.g. `launch_to_exit_ms = 0.15`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
    /// Per tier: `[tiers.emulated] threshold = 0.2` and `[tiers.emulated.metrics]`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub tiers: BTreeMap<Tier, TierThresholds>,
}

/// Per-tier overrides.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TierThresholds {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<f64>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metrics: BTreeMap<String, f64>,
}

/// The value of a backend setting in a scenario file: a word, a path or a number.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum SettingValue {
    Int(u64),
    Text(String),
}

impl std::fmt::Display for SettingValue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SettingValue::Int(n) => write!(f, "{n}"),
            SettingValue::Text(s) => f.write_str(s),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ScenarioError {
    #[error("cannot read scenario {path}: {source} (give the path of a scenarios/*.toml file)")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: {message} (fix the scenario file; see docs/scenarios.md)")]
    Parse { path: String, message: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Scenario {
    /// Check the scenario against this machine for the tiers that will run (memory, free disk,
    /// CPUs, pids; see [`crate::model::scenario::bounds::check_machine`]). `origin` names the file in errors.
    pub fn check_machine(
        &self,
        origin: &str,
        tiers: &[Tier],
        machine: &crate::model::scenario::bounds::Machine,
    ) -> Result<(), ScenarioError> {
        crate::model::scenario::bounds::check_machine(self, tiers, machine).map_err(|message| {
            ScenarioError::Invalid {
                path: origin.into(),
                message,
            }
        })
    }
}

impl Scenario {
    pub fn load(path: &Path) -> Result<Scenario, ScenarioError> {
        use std::io::Read;
        let read = || -> std::io::Result<String> {
            let mut text = String::new();
            std::fs::File::open(path)?
                .take(MAX_SCENARIO_BYTES + 1)
                .read_to_string(&mut text)?;
            Ok(text)
        };
        let text = read().map_err(|source| ScenarioError::Read {
            path: path.display().to_string(),
            source,
        })?;
        if text.len() as u64 > MAX_SCENARIO_BYTES {
            return Err(ScenarioError::Invalid {
                path: path.display().to_string(),
                message: format!(
                    "longer than {MAX_SCENARIO_BYTES} bytes: a scenario is a short TOML file (see docs/scenarios.md)"
                ),
            });
        }
        Scenario::parse(&text, &path.display().to_string())
    }

    /// Parse and validate; `origin` names the source in errors.
    pub fn parse(text: &str, origin: &str) -> Result<Scenario, ScenarioError> {
        // Host-assigned fields first, on the raw document: serde would accept them (results and
        // tasks carry them), and the harness would silently overwrite them.
        if let Ok(doc) = text.parse::<toml::Table>() {
            crate::model::scenario::bounds::check_host_assigned(&doc).map_err(|message| {
                ScenarioError::Invalid {
                    path: origin.into(),
                    message,
                }
            })?;
        }
        let s: Scenario = toml::from_str(text).map_err(|e| ScenarioError::Parse {
            path: origin.into(),
            message: one_line(&e),
        })?;
        s.validate().map_err(|message| ScenarioError::Invalid {
            path: origin.into(),
            message,
        })?;
        Ok(s)
    }

    fn validate(&self) -> Result<(), String> {
        if self.workloads.is_empty() {
            return Err(
                "no [[workload]] given: add at least one, e.g. [[workload]] kind = \"noop\"".into(),
            );
        }
        if self
            .workloads
            .iter()
            .any(|w| matches!(w, Workload::Idle(_)))
        {
            return Err(
                "kind = \"idle\" is internal (density instances use it): use kind = \"density\""
                    .into(),
            );
        }
        crate::model::scenario::bounds::check_scenario(self)
    }

    /// The plan for `tier`: tier override, then `[defaults]`, then built-in defaults;
    /// `runs_override` (the CLI's `-n`) wins over the file.
    pub fn plan(&self, tier: Tier, runs_override: Option<u32>) -> ResolvedPlan {
        let t = self.tier.get(&tier).cloned().unwrap_or_default();
        let d = &self.defaults;
        let runs = runs_override.or(t.runs).or(d.runs).unwrap_or(20);
        ResolvedPlan {
            runs,
            warmup: t.warmup.or(d.warmup).unwrap_or(2),
            time_budget_s: t.time_budget_s.or(d.time_budget_s),
            min_runs: t.min_runs.or(d.min_runs).unwrap_or(3).min(runs),
            app_scale: t.app_scale.or(d.app_scale).filter(|s| *s < 1.0),
        }
    }

    /// The tiers this scenario asks for; `default` (the registry's default set) when it names
    /// none.
    pub fn tiers_or(&self, default: Vec<Tier>) -> Vec<Tier> {
        if self.tiers.is_empty() {
            default
        } else {
            self.tiers.clone()
        }
    }

    /// The `[settings]` table as `key=value` strings (as `--set` gives them).
    pub fn settings(&self) -> BTreeMap<String, String> {
        self.settings
            .iter()
            .map(|(k, v)| (k.clone(), v.to_string()))
            .collect()
    }
}

/// toml errors span several lines with a caret; keep the first line and the message.
fn one_line(e: &toml::de::Error) -> String {
    let msg = e.message().trim().to_string();
    match e.span() {
        Some(span) => format!("at byte {}: {msg}", span.start),
        None => msg,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_scenario_parses() {
        let s = Scenario::parse(DEFAULT_SCENARIO, "default").unwrap();
        assert!(!s.workloads.is_empty());
        assert!(s.plan(Tier::Emulated, None).runs <= s.plan(Tier::Bare, None).runs);
    }

    #[test]
    fn every_shipped_scenario_parses() {
        for e in std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/scenarios")).unwrap() {
            let p = e.unwrap().path();
            if p.extension().is_some_and(|x| x == "toml") {
                Scenario::load(&p).unwrap_or_else(|e| panic!("{e}"));
            }
        }
    }

    #[test]
    fn typos_are_errors_with_location() {
        let e = Scenario::parse(
            "name='x'\n[defaults]\nrnus = 3\n[[workload]]\nkind='noop'\n",
            "x.toml",
        )
        .unwrap_err();
        let m = e.to_string();
        assert!(m.contains("x.toml") && m.contains("rnus"), "{m}");
        assert!(!m.contains('\n'), "one line: {m}");
        let e = Scenario::parse(
            "name='x'\ntiers=['bare','vmware']\n[[workload]]\nkind='noop'\n",
            "x.toml",
        )
        .unwrap_err();
        assert!(e.to_string().contains("vmware"));
        let e = Scenario::parse("name='x'\n", "x.toml").unwrap_err();
        assert!(e.to_string().contains("workload"));
    }

    #[test]
    fn settings_are_words_paths_or_numbers() {
        let s = Scenario::parse(
            "name='x'\n[settings]\ndisk_mib = 512\ndisk_aio = 'threads'\n[[workload]]\nkind='noop'\n",
            "x",
        )
        .unwrap();
        assert_eq!(s.settings()["disk_mib"], "512");
        assert_eq!(s.settings()["disk_aio"], "threads");
        let e = Scenario::parse(
            "name='x'\n[settings]\ndisk_mib = [1]\n[[workload]]\nkind='noop'\n",
            "x",
        )
        .unwrap_err();
        assert!(e.to_string().contains("x"), "{e}");
    }

    #[test]
    fn plan_resolution_order() {
        let s = Scenario::parse("name='x'\n[defaults]\nruns=10\nwarmup=1\n[tier.emulated]\nruns=3\ntime_budget_s=60\n[[workload]]\nkind='noop'\n", "x").unwrap();
        assert_eq!(s.plan(Tier::Bare, None).runs, 10);
        assert_eq!(s.plan(Tier::Emulated, None).runs, 3);
        assert_eq!(s.plan(Tier::Emulated, None).time_budget_s, Some(60.0));
        assert_eq!(s.plan(Tier::Emulated, Some(50)).runs, 50);
        assert_eq!(s.plan(Tier::Emulated, None).warmup, 1);
        assert_eq!(s.plan(Tier::Emulated, None).app_scale, None);
    }

    #[test]
    fn app_scale_is_per_tier_and_bounded() {
        let s = Scenario::parse(
            "name='x'\n[tier.emulated]\napp_scale = 0.05\n[tier.chroot]\napp_scale = 1.0\n[[workload]]\nkind='redis'\n",
            "x",
        )
        .unwrap();
        assert_eq!(s.plan(Tier::Emulated, None).app_scale, Some(0.05));
        assert_eq!(s.plan(Tier::Bare, None).app_scale, None);
        // 1 is full size: not recorded as a scale.
        assert_eq!(s.plan(Tier::Chroot, None).app_scale, None);
        for bad in ["0", "0.0", "-0.5", "1.5", "nan", "inf"] {
            let e = Scenario::parse(
                &format!(
                    "name='x'\n[tier.emulated]\napp_scale = {bad}\n[[workload]]\nkind='noop'\n"
                ),
                "x.toml",
            )
            .unwrap_err()
            .to_string();
            assert!(
                e.contains("[tier.emulated] app_scale") && e.contains("above 0 and at most 1"),
                "{bad}: {e}"
            );
            assert!(!e.contains('\n'), "one line: {e}");
        }
    }

    #[test]
    fn app_scale_shrinks_application_points_to_a_floor() {
        use crate::workload::{MysqlParams, RedisParams};
        let redis = Workload::Redis(RedisParams {
            requests: 20_000,
            ..RedisParams::default()
        });
        let Workload::Redis(r) = scale_app(&redis, Some(0.05)) else {
            panic!()
        };
        assert_eq!(r.requests, 1_000);
        assert_eq!(r.connections, RedisParams::default().connections);
        let Workload::Redis(r) = scale_app(&redis, Some(0.001)) else {
            panic!()
        };
        assert_eq!(r.requests, MIN_SCALED_REQUESTS);
        // A point already below the floor is never raised.
        let small = Workload::Redis(RedisParams {
            requests: 10,
            ..RedisParams::default()
        });
        assert_eq!(scale_app(&small, Some(0.5)), small);
        let mysql = Workload::Mysql(MysqlParams {
            point_s: 5,
            point_events: 1_000_000,
            ..MysqlParams::default()
        });
        let Workload::Mysql(m) = scale_app(&mysql, Some(0.05)) else {
            panic!()
        };
        assert_eq!((m.point_s, m.point_events), (1, 50_000));
        assert_eq!(m.table_rows, MysqlParams::default().table_rows);
        let Workload::Mysql(m) = scale_app(&mysql, Some(0.5)) else {
            panic!()
        };
        assert_eq!((m.point_s, m.point_events), (3, 500_000));
        // Unscaled: the same workload; other workloads untouched.
        assert_eq!(scale_app(&mysql, None), mysql);
        assert_eq!(scale_app(&mysql, Some(1.0)), mysql);
        assert_eq!(scale_app(&Workload::Noop, Some(0.1)), Workload::Noop);
    }
}
