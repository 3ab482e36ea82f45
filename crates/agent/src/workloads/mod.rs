//! The measurement workloads, written once and run byte-identical in every tier.
//!
//! Each workload takes its parameters from its [`Workload`] variant, is bounded in size and in
//! time, and returns a list of [`Metric`]s whose names carry their unit (`copy_gb_per_s`,
//! `latency_ns`). Where the time budget cut the work short, a `*_done` metric says how much was
//! done. Errors are returned as a message for the report; nothing here panics on a failed
//! syscall.
//!
//! Unit conventions (converted in one place, the helpers below): GB, MB and Gbit are decimal
//! (10^9, 10^6), as STREAM, fio's "MB/s" and iperf3 use them.

pub mod cpu;
pub mod fs;
pub mod memory;
pub mod mysql;
pub mod net;
pub mod redis;
pub mod server;

use std::time::{Duration, Instant};

use crate::protocol::{Better, Metric};
use crate::workload::Workload;

/// Run one workload. `Noop` does nothing and reports nothing.
pub fn run(workload: &Workload) -> Result<Vec<Metric>, String> {
    match workload {
        Workload::Noop => Ok(vec![]),
        Workload::Cpu(p) => cpu::run(p),
        Workload::Memory(p) => memory::run(p),
        Workload::Fs(p) => fs::run(p),
        Workload::Net(p) => net::run(p),
        Workload::Idle(p) => idle(p.max_s),
        Workload::Density(_) => {
            Err("density is measured by the host; the agent runs `idle` instances".into())
        }
        Workload::Redis(p) => redis::run(p),
        Workload::Mysql(p) => mysql::run(p),
    }
}

/// Sit idle until stdin reaches end of file (the host closes it to stop the instance) or
/// `max_s` passes; costs no CPU meanwhile.
fn idle(max_s: u64) -> Result<Vec<Metric>, String> {
    let start = std::time::Instant::now();
    idle_until(max_s, || true);
    Ok(vec![Metric::new(
        "idle_s",
        "s",
        start.elapsed().as_secs_f64(),
        crate::protocol::Better::Lower,
    )])
}

/// Wait until stdin reaches end of file, `max_s` passes or `go_on` says stop (asked at least
/// once a second).
pub(crate) fn idle_until(max_s: u64, mut go_on: impl FnMut() -> bool) {
    use std::os::fd::AsFd;
    let start = std::time::Instant::now();
    let limit = Duration::from_secs(max_s);
    let stdin = std::io::stdin();
    let mut buf = [0u8; 64];
    while start.elapsed() < limit && go_on() {
        let left = limit.saturating_sub(start.elapsed());
        let ms = u16::try_from(left.as_millis().min(1000))
            .unwrap_or(1000)
            .max(1);
        let mut fds = [nix::poll::PollFd::new(
            stdin.as_fd(),
            nix::poll::PollFlags::POLLIN,
        )];
        match nix::poll::poll(&mut fds, nix::poll::PollTimeout::from(ms)) {
            Ok(0) | Err(nix::errno::Errno::EINTR) => continue,
            Ok(_) => match nix::unistd::read(0, &mut buf) {
                Ok(0) | Err(_) => break,
                Ok(_) => continue,
            },
            Err(_) => break,
        }
    }
}

/// A count as f64. Counts here stay far below 2^53, where the conversion is exact.
#[allow(clippy::cast_precision_loss)]
pub(crate) fn count_f64(n: u64) -> f64 {
    n as f64
}

/// `count` per second over `elapsed` (0 when nothing was timed).
pub(crate) fn per_s(count: u64, elapsed: Duration) -> f64 {
    let s = elapsed.as_secs_f64();
    if s > 0.0 {
        count_f64(count) / s
    } else {
        0.0
    }
}

/// A metric where more is better.
pub(crate) fn higher(name: &str, unit: &str, value: f64) -> Metric {
    Metric::new(name, unit, value, Better::Higher)
}

/// A bookkeeping counter (how much work a phase did, a setting): reported, never compared.
pub(crate) fn count(name: &str, unit: &str, value: f64) -> Metric {
    Metric::bookkeeping(name, unit, value)
}

/// A metric where less is better.
pub(crate) fn lower(name: &str, unit: &str, value: f64) -> Metric {
    Metric::new(name, unit, value, Better::Lower)
}

/// A time budget that starts when it is made.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Budget {
    deadline: Instant,
}

impl Budget {
    pub(crate) fn ms(ms: u64) -> Self {
        Budget {
            deadline: Instant::now() + Duration::from_millis(ms),
        }
    }

    pub(crate) fn spent(&self) -> bool {
        Instant::now() >= self.deadline
    }
}

/// Nearest-rank percentile (`p` in 0..=100) of an ascending slice; 0 for an empty one.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let n = sorted.len();
    // rank = ceil(p/100 * n), clamped to 1..=n; computed in integers to stay exact.
    let p_milli = (p.clamp(0.0, 100.0) * 1000.0).round();
    // p_milli is in 0..=100_000, so the cast is exact.
    #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
    let p_milli = p_milli as usize;
    let rank = (p_milli * n).div_ceil(100_000).clamp(1, n);
    sorted[rank - 1]
}

/// Sort latencies and return (p50, p99).
pub(crate) fn p50_p99(samples: &mut [f64]) -> (f64, f64) {
    samples.sort_by(f64::total_cmp);
    (percentile(samples, 50.0), percentile(samples, 99.0))
}

/// SplitMix64: a tiny deterministic generator, so every tier draws the same "random" offsets.
#[derive(Debug, Clone)]
pub(crate) struct SplitMix64(u64);

impl SplitMix64 {
    pub(crate) fn new(seed: u64) -> Self {
        SplitMix64(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_4760_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in 0..n (n > 0), by Lemire's multiply-shift (bias below 2^-32 for our n).
    pub(crate) fn below(&mut self, n: u64) -> u64 {
        let wide = u128::from(self.next_u64()) * u128::from(n);
        // The high 64 bits of a 64x64 product fit in u64.
        u64::try_from(wide >> 64).expect("high half fits")
    }
}

/// Sattolo's algorithm: a uniformly random permutation of 0..n that is one single cycle, so a
/// pointer chase through it visits every element before it repeats. `swap(i, j)` is called for
/// each step on a table that starts as the identity, so a caller can build the permutation in
/// place (in the chase buffer itself) without a second table.
pub(crate) fn sattolo_with(n: usize, rng: &mut SplitMix64, mut swap: impl FnMut(usize, usize)) {
    for i in (1..n).rev() {
        let bound = u64::try_from(i).expect("usize fits in u64");
        let j = usize::try_from(rng.below(bound)).expect("j < i fits in usize");
        swap(i, j);
    }
}

/// [`sattolo_with`] on a plain table.
#[cfg(test)]
pub(crate) fn sattolo(n: usize, rng: &mut SplitMix64) -> Vec<usize> {
    let mut p: Vec<usize> = (0..n).collect();
    sattolo_with(n, rng, |i, j| p.swap(i, j));
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&v, 50.0), 50.0);
        assert_eq!(percentile(&v, 99.0), 99.0);
        assert_eq!(percentile(&v, 100.0), 100.0);
        assert_eq!(percentile(&v, 0.0), 1.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert_eq!(percentile(&[], 50.0), 0.0);
        let three = [1.0, 2.0, 3.0];
        assert_eq!(percentile(&three, 50.0), 2.0);
        assert_eq!(percentile(&three, 99.0), 3.0);
    }

    #[test]
    fn p50_p99_sorts() {
        let mut v = vec![5.0, 1.0, 3.0, 2.0, 4.0];
        assert_eq!(p50_p99(&mut v), (3.0, 5.0));
    }

    #[test]
    fn sattolo_is_one_cycle() {
        for (n, seed) in [
            (1usize, 1u64),
            (2, 2),
            (3, 3),
            (10, 4),
            (1000, 5),
            (4096, 6),
        ] {
            let p = sattolo(n, &mut SplitMix64::new(seed));
            let mut seen = vec![false; n];
            let mut i = 0;
            for _ in 0..n {
                assert!(!seen[i], "n={n}: revisited {i} before covering all");
                seen[i] = true;
                i = p[i];
            }
            assert_eq!(i, 0, "n={n}: cycle does not close after n steps");
            assert!(seen.iter().all(|&s| s));
        }
    }

    #[test]
    fn splitmix_is_deterministic_and_bounded() {
        let a: Vec<u64> = {
            let mut r = SplitMix64::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = SplitMix64::new(42);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert!((0..1000).all(|_| r.below(7) < 7));
    }

    #[test]
    fn per_s_handles_zero_time() {
        assert_eq!(per_s(10, Duration::ZERO), 0.0);
        assert_eq!(per_s(10, Duration::from_secs(2)), 5.0);
    }
}
