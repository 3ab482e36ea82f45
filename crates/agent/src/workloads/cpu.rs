//! `cpu`: a fixed number of rounds of a 256-bit integer mixing function (add-rotate-xor-multiply,
//! four lanes that feed each other), first on one thread, then on one thread per CPU the agent
//! may run on (sched_getaffinity). Every round depends on the previous one and the state is
//! passed through `black_box` after each chunk, so the compiler can neither skip nor fold it.
//!
//! Metrics: `single_ops_per_s`, `multi_ops_per_s`, `multi_threads`, and `single_ops_done` /
//! `multi_ops_done` (how much the time budget let run).

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::{count, count_f64, higher, per_s, Budget};
use crate::protocol::Metric;
use crate::workload::CpuParams;

/// Rounds between two looks at the clock.
const CHUNK: u64 = 1 << 16;

pub fn run(p: &CpuParams) -> Result<Vec<Metric>, String> {
    if p.ops_per_thread == 0 {
        return Err("cpu: ops_per_thread must be > 0".into());
    }
    let threads = if p.threads == 0 {
        allowed_cpus()
    } else {
        p.threads
    };

    let (single_done, single_t) = single(p);
    let (multi_done, multi_t) = multi(p, threads);

    let threads_u64 = u64::try_from(threads).map_err(|e| e.to_string())?;
    Ok(vec![
        higher("single_ops_per_s", "ops/s", per_s(single_done, single_t)),
        higher("multi_ops_per_s", "ops/s", per_s(multi_done, multi_t)),
        count("multi_threads", "threads", count_f64(threads_u64)),
        count("single_ops_done", "ops", count_f64(single_done)),
        count("multi_ops_done", "ops", count_f64(multi_done)),
    ])
}

fn single(p: &CpuParams) -> (u64, Duration) {
    let budget = Budget::ms(p.time_budget_ms);
    let t0 = Instant::now();
    let (done, digest) = work(0, p.ops_per_thread, budget);
    let t = t0.elapsed();
    black_box(digest);
    (done, t)
}

fn multi(p: &CpuParams, threads: usize) -> (u64, Duration) {
    let budget = Budget::ms(p.time_budget_ms);
    let t0 = Instant::now();
    let done = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|i| {
                let seed = u64::try_from(i).unwrap_or(u64::MAX);
                s.spawn(move || work(seed, p.ops_per_thread, budget))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| {
                let (done, digest) = h.join().expect("cpu worker does not panic");
                black_box(digest);
                done
            })
            .sum::<u64>()
    });
    (done, t0.elapsed())
}

/// Run up to `ops` rounds (whole chunks, the last one partial) or until the budget is spent.
/// Returns the rounds done and a digest of the final state.
fn work(seed: u64, ops: u64, budget: Budget) -> (u64, u64) {
    let mut s = [
        0x6A09_E667_F3BC_C908 ^ seed,
        0xBB67_AE85_84CA_A73B,
        0x3C6E_F372_FE94_F82B,
        0xA54F_F53A_5F1D_36F1,
    ];
    let mut done = 0u64;
    while done < ops {
        let n = CHUNK.min(ops - done);
        s = black_box(chunk(s, done, n));
        done += n;
        if budget.spent() {
            break;
        }
    }
    (done, s[0] ^ s[1] ^ s[2] ^ s[3])
}

/// `n` dependent rounds of the mixing function, starting at round index `start`.
#[inline(never)]
fn chunk(mut s: [u64; 4], start: u64, n: u64) -> [u64; 4] {
    for i in start..start + n {
        s[0] = s[0].wrapping_add(s[1]).rotate_left(13) ^ i;
        s[1] = (s[1] ^ s[2]).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        s[2] = s[2].wrapping_add(s[3]).rotate_left(29);
        s[3] = (s[3] ^ s[0]).wrapping_mul(0xBF58_4760_1CE4_E5B9);
    }
    s
}

/// CPUs this process may run on (sched_getaffinity); 1 if it cannot be read.
fn allowed_cpus() -> usize {
    nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0))
        .map(|set| {
            (0..nix::sched::CpuSet::count())
                .filter(|&i| set.is_set(i).unwrap_or(false))
                .count()
        })
        .unwrap_or(1)
        .max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn work_is_deterministic_and_chunking_invariant() {
        let far = Budget::ms(60_000);
        let (d1, a) = work(3, 200_000, far);
        let (d2, b) = work(3, 200_000, far);
        assert_eq!((d1, d2), (200_000, 200_000));
        assert_eq!(a, b);
        // Same result as one big chunk: the chunking does not change the work.
        let s0 = [
            0x6A09_E667_F3BC_C908 ^ 3,
            0xBB67_AE85_84CA_A73B,
            0x3C6E_F372_FE94_F82B,
            0xA54F_F53A_5F1D_36F1,
        ];
        let s = chunk(s0, 0, 200_000);
        assert_eq!(a, s[0] ^ s[1] ^ s[2] ^ s[3]);
        assert_ne!(work(4, 200_000, far).1, a);
    }

    #[test]
    fn spent_budget_stops_after_one_chunk() {
        let (done, _) = work(0, 10 * CHUNK, Budget::ms(0));
        assert_eq!(done, CHUNK);
    }

    #[test]
    fn allowed_cpus_is_positive() {
        assert!(allowed_cpus() >= 1);
    }
}
