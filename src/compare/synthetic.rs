//! Deterministic synthetic runs for tests and benchmarks of the comparison (not for users).

use std::collections::BTreeMap;
use std::sync::OnceLock;

use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

use crate::model::budget::Budget;
use crate::model::facts::HostFacts;
use crate::model::results::{Results, Sample, SCHEMA_VERSION};
use crate::model::scenario::Scenario;
use crate::model::tier::Tier;
use crate::protocol::Better;

/// A complete `Results` around `samples`, on a host named `hostname`. Summaries are left empty
/// (a comparison reads only the samples); call `summarize()` when they are needed.
pub fn results(hostname: &str, samples: Vec<Sample>) -> Results {
    static HOST: OnceLock<HostFacts> = OnceLock::new();
    let mut host = HOST.get_or_init(HostFacts::detect).clone();
    host.hostname = hostname.into();
    Results {
        schema_version: SCHEMA_VERSION,
        run_id: format!("synthetic-{hostname}"),
        started_at: "2025-01-01T00:00:00Z".into(),
        finished_at: Some("2025-01-01T00:01:00Z".into()),
        interrupted: false,
        host,
        versions: BTreeMap::new(),
        scenario: Scenario::parse(
            "name = 'synthetic'\n[[workload]]\nkind = 'noop'\n",
            "synthetic",
        )
        .expect("synthetic scenario"),
        budget: Budget {
            cpus: vec![0],
            memory_mib: 512,
        },
        order: None,
        labels: BTreeMap::new(),
        tiers: vec![],
        summaries: vec![],
        samples,
    }
}

/// Name, unit and direction of synthetic metric `i`: alternately a latency (lower is better)
/// and a throughput (higher is better).
pub fn metric(i: usize) -> (Tier, String, &'static str, Better) {
    let tier = [Tier::Bare, Tier::Chroot, Tier::Container][i % 3];
    if i % 2 == 0 {
        (tier, format!("m{i:02}_latency_ms"), "ms", Better::Lower)
    } else {
        (tier, format!("m{i:02}_ops_per_s"), "ops/s", Better::Higher)
    }
}

/// `n` samples of each of `metrics` metrics, drawn from a fixed skewed distribution
/// (log-normal, sigma 0.08, with 3% slow outliers at 1.5-3x), seeded by `seed`.
/// `slow = Some((i, f))` makes metric `i` worse by factor `f` (latency x f, throughput / f).
pub fn draw(seed: u64, metrics: usize, n: usize, slow: Option<(usize, f64)>) -> Vec<Sample> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let mut out = Vec::with_capacity(metrics * n);
    for round in 0..n {
        for i in 0..metrics {
            let (tier, name, unit, better) = metric(i);
            let centre = 10.0 * (i + 1) as f64;
            // Box-Muller normal.
            let (u1, u2): (f64, f64) = (rng.gen_range(f64::EPSILON..1.0), rng.gen());
            let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
            let mut v = centre * (0.08 * z).exp();
            if rng.gen_bool(0.03) {
                v *= rng.gen_range(1.5..3.0);
            }
            if let Some((k, f)) = slow {
                if k == i {
                    v = if better == Better::Lower {
                        v * f
                    } else {
                        v / f
                    };
                }
            }
            out.push(Sample {
                tier,
                workload: "noop".into(),
                metric: name,
                unit: unit.into(),
                better,
                round: u32::try_from(round).unwrap_or(u32::MAX),
                value: v,
                position: None,
                previous_tier: None,
                kind: crate::protocol::MetricKind::Measured,
            });
        }
    }
    out
}
