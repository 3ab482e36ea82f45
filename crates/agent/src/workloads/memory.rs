//! `memory`: STREAM-style bandwidth and pointer-chase latency, single-threaded.
//!
//! Bandwidth: three f64 arrays of `array_mib` each (far above the LLC), initialised (and so
//! faulted in) before any timing, in one loop over all three (`a[j] = 1; b[j] = 2; c[j] = 0`) as
//! STREAM's own initialisation does, so both get the same first-touch order. Each repetition
//! times STREAM's Copy (`c[j] = a[j]`) and Triad (`a[j] = b[j] + q*c[j]`); the best repetition
//! counts, and bytes are counted as STREAM does (Copy 2 x 8 bytes, Triad 3 x 8 bytes per
//! element; write-allocate traffic is not counted).
//!
//! Copy is `copy_from_slice`, i.e. libc's `memcpy`, because that is what gcc -O2 makes of
//! STREAM's Copy loop (loop distribution turns it into a `memcpy` call). For copies this large
//! glibc's `memcpy` uses non-temporal stores, which skip the read-for-ownership of `c`; the
//! element loop rustc emitted here instead (16-byte SSE2 loads and stores, no `memcpy`: the
//! arrays are not provably disjoint at that point) pays that extra read (issue 11 saw Copy
//! ~14 % below C STREAM; in-process here the element loop read a median 0.93 of `memcpy`). The
//! bytes counted are STREAM's either way. Triad stays an element loop in both
//! (SSE2 `mulpd` + `addpd`, plain stores). The C reference is `benches/stream/stream.c`, run side
//! by side by `benches/stream/compare.sh` (docs/accuracy.md, "Memory bandwidth against C STREAM").
//!
//! Latency: a buffer of `chase_mib` split into 64-byte cache lines, linked into one random cycle
//! (Sattolo) through the first word of each line; each load's address depends on the previous
//! load, so the time per step is the full load-to-use latency (caches, TLB, DRAM).
//!
//! Metrics: `copy_gb_per_s`, `triad_gb_per_s`, `stream_repeats_done`, `latency_ns`,
//! `latency_accesses_done`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use super::{count, count_f64, higher, lower, per_s, sattolo_with, Budget, SplitMix64};
use crate::protocol::Metric;
use crate::workload::MemoryParams;

const MIB: u64 = 1 << 20;
const F64_BYTES: u64 = 8;
/// Loads between two looks at the clock.
const CHASE_CHUNK: u64 = 1 << 16;

pub fn run(p: &MemoryParams) -> Result<Vec<Metric>, String> {
    if p.array_mib == 0 || p.chase_mib == 0 || p.repeats == 0 || p.chase_accesses == 0 {
        return Err("memory: array_mib, chase_mib, repeats and chase_accesses must be > 0".into());
    }
    let mut metrics = bandwidth(p)?;
    metrics.extend(latency(p)?);
    Ok(metrics)
}

fn elements(mib: u64, elem_bytes: u64) -> Result<usize, String> {
    usize::try_from(mib * MIB / elem_bytes)
        .map_err(|_| format!("memory: {mib} MiB does not fit this address space"))
}

fn reserve_f64(n: usize) -> Result<Vec<f64>, String> {
    let mut a = Vec::new();
    a.try_reserve_exact(n)
        .map_err(|e| format!("memory: cannot allocate {n} f64: {e}; lower array_mib"))?;
    Ok(a)
}

/// `(a, b, c)`.
type StreamArrays = (Vec<f64>, Vec<f64>, Vec<f64>);

/// STREAM's three arrays, `a = 1`, `b = 2`, `c = 0`, first touched together element by element
/// as STREAM's initialisation loop does (see the module comment for why the order matters).
/// Every page is faulted in here, before any timed loop.
fn stream_arrays(n: usize) -> Result<StreamArrays, String> {
    let (mut a, mut b, mut c) = (reserve_f64(n)?, reserve_f64(n)?, reserve_f64(n)?);
    // The values come through black_box so that no store can be skipped as already zero.
    let (va, vb, vc) = black_box((1.0f64, 2.0f64, 0.0f64));
    for _ in 0..n {
        // Within the reserved capacity: no reallocation.
        a.push(va);
        b.push(vb);
        c.push(vc);
    }
    Ok((a, b, c))
}

fn bandwidth(p: &MemoryParams) -> Result<Vec<Metric>, String> {
    let n = elements(p.array_mib, F64_BYTES)?;
    let (mut a, b, mut c) = stream_arrays(n)?;
    let q = black_box(3.0f64);

    let budget = Budget::ms(p.time_budget_ms);
    let mut best_copy = Duration::MAX;
    let mut best_triad = Duration::MAX;
    let mut done = 0u32;
    while done < p.repeats {
        let t0 = Instant::now();
        // STREAM Copy, as gcc -O2 compiles it: one memcpy (see the module comment).
        c.copy_from_slice(&a);
        black_box(c.as_mut_slice());
        let t1 = Instant::now();
        for ((aj, bj), cj) in a.iter_mut().zip(b.iter()).zip(c.iter()) {
            *aj = *bj + q * *cj;
        }
        black_box(a.as_mut_slice());
        let t2 = Instant::now();
        best_copy = best_copy.min(t1 - t0);
        best_triad = best_triad.min(t2 - t1);
        done += 1;
        if budget.spent() {
            break;
        }
    }
    let n_u64 = u64::try_from(n).map_err(|e| e.to_string())?;
    let gb = |bytes: u64, t: Duration| per_s(bytes, t) / 1e9;
    Ok(vec![
        higher(
            "copy_gb_per_s",
            "GB/s",
            gb(2 * F64_BYTES * n_u64, best_copy),
        ),
        higher(
            "triad_gb_per_s",
            "GB/s",
            gb(3 * F64_BYTES * n_u64, best_triad),
        ),
        count("stream_repeats_done", "repeats", f64::from(done)),
    ])
}

/// One cache line; the chase link lives in word 0.
#[derive(Clone, Copy)]
#[repr(C, align(64))]
struct Line([usize; 8]);

fn latency(p: &MemoryParams) -> Result<Vec<Metric>, String> {
    let n = elements(p.chase_mib, 64)?;
    let mut lines: Vec<Line> = Vec::new();
    lines
        .try_reserve_exact(n)
        .map_err(|e| format!("memory: cannot allocate the chase buffer: {e}; lower chase_mib"))?;
    lines.extend((0..n).map(|i| Line([i, 0, 0, 0, 0, 0, 0, 0])));
    // Link the lines into one random cycle, in place.
    sattolo_with(n, &mut SplitMix64::new(0x1503_BE4C), |i, j| {
        let t = lines[i].0[0];
        lines[i].0[0] = lines[j].0[0];
        lines[j].0[0] = t;
    });

    let budget = Budget::ms(p.time_budget_ms);
    let mut at = 0usize;
    let mut done = 0u64;
    let t0 = Instant::now();
    while done < p.chase_accesses {
        let k = CHASE_CHUNK.min(p.chase_accesses - done);
        at = chase(&lines, at, k);
        done += k;
        if budget.spent() {
            break;
        }
    }
    let t = t0.elapsed();
    black_box(at);
    let ns = if done > 0 {
        t.as_secs_f64() * 1e9 / count_f64(done)
    } else {
        0.0
    };
    Ok(vec![
        lower("latency_ns", "ns", ns),
        count("latency_accesses_done", "accesses", count_f64(done)),
    ])
}

/// `k` dependent loads starting at line `at`; returns where the chase ended.
#[inline(never)]
fn chase(lines: &[Line], mut at: usize, k: u64) -> usize {
    // No black_box inside the loop (it would add a stack round trip per load): the loads cannot
    // be skipped because each address comes from the previous load and the end is observed.
    for _ in 0..k {
        at = lines[at].0[0];
    }
    at
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn small_run_reports_all_metrics() {
        let m = run(&MemoryParams {
            array_mib: 1,
            repeats: 2,
            chase_mib: 1,
            chase_accesses: 10_000,
            time_budget_ms: 1_000,
        })
        .unwrap();
        let names: Vec<&str> = m.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "copy_gb_per_s",
                "triad_gb_per_s",
                "stream_repeats_done",
                "latency_ns",
                "latency_accesses_done"
            ]
        );
        assert!(m.iter().all(|m| m.value.is_finite() && m.value > 0.0));
    }

    #[test]
    fn zero_sizes_are_rejected() {
        assert!(run(&MemoryParams {
            array_mib: 0,
            ..MemoryParams::default()
        })
        .is_err());
    }
}
