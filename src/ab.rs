//! Same-host A/B: two variants of one tier (each a set of backend settings: a VMM or runtime
//! binary, a guest kernel, a VM option, a memory size) run as two arms of the one runner
//! (src/runner.rs), prepared side by side and launched interleaved in the same seeded order, so
//! that drift of the machine hits both alike and neither variant always goes first. Each
//! variant's samples become a `Results` of its own (`<out>/a`, `<out>/b`), compared with
//! `compare`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use anyhow::bail;

use crate::backend::{registry, BackendOptions};
use crate::measure::runner::{self, Arm, ArmsConfig};
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::results::Results;
use crate::model::scenario::Scenario;
use crate::model::tier::Tier;

/// One side of the A/B.
#[derive(Debug, Clone)]
pub struct Variant {
    /// "a" or "b": the folder and the arm's label.
    pub name: String,
    /// What the user gave (`kernel=./vmlinuz-a ...`), recorded in the tier's settings.
    pub spec: Vec<String>,
    pub options: BackendOptions,
}

/// Everything an A/B run needs, validated.
#[derive(Debug, Clone)]
pub struct AbConfig {
    pub scenario: Scenario,
    pub tier: Tier,
    pub a: Variant,
    pub b: Variant,
    pub runs_override: Option<u32>,
    pub out_dir: PathBuf,
    pub state_root: PathBuf,
    pub cache_dir: PathBuf,
    pub agent: PathBuf,
    pub quiet: bool,
    /// `--seed`: the launch order's seed (wins over the scenario's).
    pub seed: Option<u64>,
}

/// Parse `key=value` settings onto `base`: `kernel=` is the guest kernel, anything else a
/// backend setting.
pub fn variant(name: &str, spec: &[String], base: &BackendOptions) -> anyhow::Result<Variant> {
    let mut options = base.clone();
    for s in spec {
        let Some((k, v)) = s.split_once('=') else {
            bail!("--{name} {s}: expected key=value, e.g. --{name} kernel=./vmlinuz-{name} or --{name} qemu=/usr/bin/qemu-system-x86_64");
        };
        let (k, v) = (k.trim(), v.trim());
        if k == "kernel" {
            let p = PathBuf::from(v);
            if !p.is_file() {
                bail!("--{name} kernel={v}: no such file (give the path of a bzImage)");
            }
            options.kernel = Some(p);
        } else {
            options.settings.insert(k.to_string(), v.to_string());
        }
    }
    Ok(Variant {
        name: name.into(),
        spec: spec.to_vec(),
        options,
    })
}

/// The runner's configuration for an A/B: two arms of one tier, an output each, strict (a side
/// that cannot run ends the A/B with an error).
pub fn arms_config(cfg: &AbConfig) -> ArmsConfig {
    let arms = [&cfg.a, &cfg.b]
        .into_iter()
        .enumerate()
        .map(|(output, v)| Arm {
            label: v.name.clone(),
            tier: cfg.tier,
            options: v.options.clone(),
            extra_settings: BTreeMap::from([(
                "ab_variant".to_string(),
                format!("{}: {}", v.name, v.spec.join(" ")),
            )]),
            output,
        })
        .collect();
    ArmsConfig {
        scenario: cfg.scenario.clone(),
        arms,
        outputs: vec![cfg.out_dir.join(&cfg.a.name), cfg.out_dir.join(&cfg.b.name)],
        runs_override: cfg.runs_override,
        link_latest: false,
        state_root: cfg.state_root.clone(),
        cache_dir: cfg.cache_dir.clone(),
        agent: cfg.agent.clone(),
        quiet: cfg.quiet,
        seed: cfg.seed,
        strict: true,
        label: cfg.out_dir.display().to_string(),
        labels: BTreeMap::new(),
    }
}

/// Run both variants interleaved; returns (A, B). Results are written after every round.
pub fn run(
    cfg: &AbConfig,
    cancel: Arc<AtomicBool>,
    host: HostFacts,
) -> anyhow::Result<(Results, Results)> {
    // Before anything is created: both sides must be able to run.
    for v in [&cfg.a, &cfg.b] {
        if let Availability::Unavailable { reason, fix } =
            registry::availability(cfg.tier, &host, &v.options)
        {
            bail!("variant {} of {}: {reason} (fix: {fix})", v.name, cfg.tier);
        }
    }
    let mut out = runner::run_arms(&arms_config(cfg), cancel, host)?;
    let b = out.pop().expect("two outputs");
    let a = out.pop().expect("two outputs");
    Ok((a, b))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ab_is_two_arms_of_one_tier_with_an_output_each() {
        let base = BackendOptions::default();
        let cfg = AbConfig {
            scenario: Scenario::parse("name='x'\n[[workload]]\nkind='noop'\n", "x").unwrap(),
            tier: Tier::Bare,
            a: variant("a", &["x=1".into()], &base).unwrap(),
            b: variant("b", &["x=2".into()], &base).unwrap(),
            runs_override: Some(4),
            out_dir: PathBuf::from("/tmp/ab-out"),
            state_root: PathBuf::from("/tmp/state"),
            cache_dir: PathBuf::from("/tmp/cache"),
            agent: PathBuf::from("/bin/true"),
            quiet: true,
            seed: Some(3),
        };
        let ac = arms_config(&cfg);
        assert!(ac.strict);
        assert_eq!(ac.seed, Some(3));
        assert_eq!(
            ac.outputs,
            vec![
                PathBuf::from("/tmp/ab-out/a"),
                PathBuf::from("/tmp/ab-out/b")
            ]
        );
        assert_eq!(ac.arms.len(), 2);
        assert!(ac.arms.iter().all(|a| a.tier == Tier::Bare));
        assert_eq!(ac.arms[1].output, 1);
        assert_eq!(ac.arms[1].options.settings.get("x").unwrap(), "2");
        assert_eq!(
            ac.arms[1].extra_settings.get("ab_variant").unwrap(),
            "b: x=2"
        );
        assert!(variant("a", &["nokey".into()], &base).is_err());
    }
}
