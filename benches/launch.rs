//! launch -> exit of the process tiers, through the same backends `isobench run` uses.
//! Tiers that need root are skipped with a line saying so when not root.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use criterion::{criterion_group, criterion_main, Criterion};

use isobench::backend::registry;
use isobench::backend::{BackendOptions, RunEnv};
use isobench::model::budget::Budget;
use isobench::model::facts::HostFacts;
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::ledger::StateDir;
use isobench::workload::Workload;

fn agent() -> std::path::PathBuf {
    // Benches are built in target/<profile>/deps; the agent binary sits in target/<profile>.
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().unwrap().parent().unwrap();
    let p = dir.join("isobench-agent");
    assert!(
        p.is_file(),
        "build the agent first: cargo build --release --bins ({} missing)",
        p.display()
    );
    p
}

fn launch(c: &mut Criterion) {
    let host = HostFacts::detect();
    let tmp = tempfile::tempdir().unwrap();
    let state = StateDir::open(tmp.path().join("state")).unwrap();
    let run = Arc::new(state.begin_run("bench").unwrap());
    let opts = BackendOptions::default();
    let env = RunEnv {
        agent: agent(),
        state: run.clone(),
        cache_dir: tmp.path().join("cache"),
        budget: Budget {
            cpus: vec![0],
            memory_mib: 512,
        },
        options: opts.clone(),
        host: host.clone(),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let mut g = c.benchmark_group("launch_to_exit");
    g.sample_size(30);
    for tier in [Tier::Bare, Tier::Chroot, Tier::Container] {
        if let isobench::model::availability::Availability::Unavailable { reason, .. } =
            registry::availability(tier, &host, &opts)
        {
            eprintln!("skipping {tier}: {reason}");
            continue;
        }
        let mut b = registry::make(tier, &env).unwrap();
        let task = Task::new(Workload::Noop);
        g.bench_function(tier.as_str(), |bench| {
            bench.iter(|| b.run_once(&task).unwrap())
        });
        b.finish().unwrap();
    }
    g.finish();
}

fn stats(c: &mut Criterion) {
    let xs: Vec<f64> = (0..1000).map(|i| ((i * 7919) % 1009) as f64).collect();
    let ys: Vec<f64> = xs.iter().map(|x| x * 1.1).collect();
    c.bench_function("summarize_n1000", |b| {
        b.iter(|| isobench::stats::summarize(&xs))
    });
    c.bench_function("ratio_of_medians_n1000", |b| {
        b.iter(|| isobench::stats::ratio_of_medians(&ys, &xs, 2000))
    });
}

criterion_group!(benches, launch, stats);
criterion_main!(benches);
