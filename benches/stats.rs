//! Statistics of a comparison on large runs: the bootstrap interval of a ratio of medians, the
//! Mann-Whitney test, and a whole 40-metric comparison of 2 x 5000 samples per metric.

use criterion::{black_box, criterion_group, criterion_main, BenchmarkId, Criterion};

use isobench::compare::synthetic::{draw, results};
use isobench::compare::{compare, mwu, CompareOptions};
use isobench::stats;

fn values(seed: u64, n: usize) -> Vec<f64> {
    draw(seed, 1, n, None)
        .into_iter()
        .map(|s| s.value)
        .collect()
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("stats");
    g.sample_size(10);
    for n in [40usize, 5000] {
        let (x, y) = (values(1, n), values(2, n));
        g.bench_with_input(
            BenchmarkId::new("ratio_of_medians_bootstrap", n),
            &n,
            |b, _| {
                b.iter(|| {
                    stats::ratio_of_medians(
                        black_box(&x),
                        black_box(&y),
                        stats::BOOTSTRAP_RESAMPLES,
                    )
                })
            },
        );
        g.bench_with_input(BenchmarkId::new("mann_whitney", n), &n, |b, _| {
            b.iter(|| mwu::mann_whitney(black_box(&x), black_box(&y)))
        });
    }
    let (base, new) = (
        results("h", draw(3, 40, 5000, None)),
        results("h", draw(4, 40, 5000, Some((5, 1.3)))),
    );
    g.bench_function("compare_40_metrics_2x5000", |b| {
        b.iter(|| {
            compare(
                black_box(&base),
                "base",
                black_box(&new),
                "new",
                &CompareOptions::default(),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
