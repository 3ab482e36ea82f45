//! The schedule of a run: in which order the arms launch within a round, and when an arm has
//! done enough of a workload (warmups, measured launches, time budget, failures in a row). Pure:
//! no clock, no I/O, no backend; the runner asks for the next step, launches it, and reports how
//! it ended and how long it took.
//!
//! Order within a round. A fixed rotation puts an arm after nearly always the same other arm, so
//! whatever one launch leaves behind (deferred namespace release, freed memory, dirty caches) is
//! charged to the same next arm. Here each (round, workload) block follows one row of a Williams
//! design: a latin square in which every arm is immediately preceded by every other arm equally
//! often (once per square for an even number of arms; for an odd number the square and its mirror
//! together, twice). The rows of each square come in a random order under a random relabelling of
//! the arms, both drawn from the run's seed, so the same seed gives the same order and two runs
//! with different seeds share no pattern. Arms that have no work left are skipped, which keeps the
//! balance approximate once arms finish at different times.

use std::time::Duration;

use crate::model::scenario::ResolvedPlan;

/// An arm that fails this many launches in a row is dropped from the run.
pub const MAX_CONSECUTIVE_FAILURES: u32 = 3;

/// Seeds drawn at random stay below 2^53, so that tools reading results.json as doubles (jq,
/// JavaScript) print the seed back exactly. A seed given by the user may be any u64.
const RANDOM_SEED_BITS: u32 = 53;

/// A fresh seed for a run that was given none.
pub fn random_seed() -> u64 {
    rand::random::<u64>() >> (64 - RANDOM_SEED_BITS)
}

/// SplitMix64 (Steele, Lea, Flood 2014): written out here so that a seed gives the same order
/// in every version of isobench, whatever the `rand` crate does with its generators.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (n > 0), without modulo bias.
    fn below(&mut self, n: usize) -> usize {
        let n = n as u64;
        let zone = u64::MAX - u64::MAX % n;
        loop {
            let x = self.next_u64();
            if x < zone {
                return usize::try_from(x % n).expect("below n, which is a usize");
            }
        }
    }

    /// Fisher-Yates.
    fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.below(i + 1);
            v.swap(i, j);
        }
    }
}

/// The rows of a Williams design for `n` arms: `n` rows for even `n`, `2n` (the square and its
/// mirror) for odd `n`. In each row every arm appears once; over all rows every ordered pair of
/// distinct arms is adjacent equally often.
pub fn williams(n: usize) -> Vec<Vec<usize>> {
    if n == 0 {
        return vec![];
    }
    // First row 0, 1, n-1, 2, n-2, ...; row r adds r to every entry (mod n).
    let mut first = Vec::with_capacity(n);
    let (mut lo, mut hi) = (0, n);
    for j in 0..n {
        if j % 2 == 0 {
            first.push(lo);
            lo += 1;
        } else {
            hi -= 1;
            first.push(hi);
        }
    }
    let mut rows: Vec<Vec<usize>> = (0..n)
        .map(|r| first.iter().map(|&x| (x + r) % n).collect())
        .collect();
    if n % 2 == 1 {
        let mirror: Vec<Vec<usize>> = rows
            .iter()
            .map(|r| r.iter().rev().copied().collect())
            .collect();
        rows.extend(mirror);
    }
    rows
}

/// The order of the arms, one block (round and workload) at a time, from a seed.
#[derive(Debug, Clone)]
pub struct Order {
    n: usize,
    rng: SplitMix64,
    /// Rows of the current square still to hand out (taken from the end).
    pending: Vec<Vec<usize>>,
}

impl Order {
    pub fn new(n: usize, seed: u64) -> Order {
        Order {
            n,
            rng: SplitMix64(seed),
            pending: vec![],
        }
    }

    /// The next block's order: every arm index in `0..n` once.
    pub fn next_block(&mut self) -> Vec<usize> {
        if self.pending.is_empty() {
            let mut label: Vec<usize> = (0..self.n).collect();
            self.rng.shuffle(&mut label);
            let mut rows = williams(self.n);
            for row in &mut rows {
                for x in row.iter_mut() {
                    *x = label[*x];
                }
            }
            self.rng.shuffle(&mut rows);
            self.pending = rows;
        }
        self.pending.pop().unwrap_or_default()
    }
}

/// Warmup launches are not recorded; measured ones are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Warmup,
    Measure,
}

/// How a launch ended, as far as the schedule is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    Ok,
    /// The arm cannot run this workload at all: not a failure, no more attempts.
    Unsupported,
    Failed,
}

/// One arm's progress, per workload.
#[derive(Debug, Clone)]
pub struct Progress {
    pub plan: ResolvedPlan,
    pub warm: Vec<u32>,
    pub done: Vec<u32>,
    pub attempts: Vec<u32>,
    /// Wall time spent launching, warmups included (the time budget counts it).
    pub spent: Vec<Duration>,
    pub consecutive_failures: u32,
    pub dropped: bool,
    pub unsupported: Vec<bool>,
    /// Workloads that take no warmup (density: a warm host is not what it measures).
    pub no_warmup: Vec<bool>,
}

impl Progress {
    /// `no_warmup` has one entry per workload.
    pub fn new(plan: ResolvedPlan, no_warmup: Vec<bool>) -> Progress {
        let nw = no_warmup.len();
        Progress {
            plan,
            warm: vec![0; nw],
            done: vec![0; nw],
            attempts: vec![0; nw],
            spent: vec![Duration::ZERO; nw],
            consecutive_failures: 0,
            dropped: false,
            unsupported: vec![false; nw],
            no_warmup,
        }
    }

    /// What this arm does next in workload `wi`, if anything.
    pub fn next_phase(&self, wi: usize) -> Option<Phase> {
        if self.dropped || self.unsupported[wi] {
            return None;
        }
        let p = &self.plan;
        if self.attempts[wi] >= p.warmup + p.runs + MAX_CONSECUTIVE_FAILURES {
            return None;
        }
        if self.warm[wi] < p.warmup && !self.no_warmup[wi] {
            return Some(Phase::Warmup);
        }
        if self.done[wi] >= p.runs {
            return None;
        }
        if let Some(b) = p.time_budget_s {
            if self.spent[wi].as_secs_f64() >= b && self.done[wi] >= p.min_runs {
                return None;
            }
        }
        Some(Phase::Measure)
    }

    /// Launches planned for one workload, warmups included.
    fn planned(&self, wi: usize) -> u64 {
        let warmup = if self.no_warmup[wi] {
            0
        } else {
            self.plan.warmup
        };
        u64::from(warmup + self.plan.runs)
    }
}

/// One launch to make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Round of the interleaved schedule (0-based; warmups run in the first rounds).
    pub round: u32,
    /// Index of the workload in the scenario.
    pub workload: usize,
    /// Index of the arm.
    pub arm: usize,
    pub phase: Phase,
    /// 0-based position of this launch among the launches of its round and workload.
    pub position: u32,
}

/// Rounds of interleaved launches: within a round, each workload in scenario order, and within
/// a workload each arm that still has work, in the order [`Order`] gives.
#[derive(Debug, Clone)]
pub struct Schedule {
    order: Order,
    arms: Vec<Progress>,
    workloads: usize,
    round: u32,
    wi: usize,
    block: Vec<usize>,
    k: usize,
    in_block: bool,
    position: u32,
    round_did_work: bool,
    finished: bool,
}

impl Schedule {
    /// Every arm's progress must cover the same `workloads` count.
    pub fn new(arms: Vec<Progress>, workloads: usize, seed: u64) -> Schedule {
        assert!(
            arms.iter().all(|a| a.no_warmup.len() == workloads),
            "one no_warmup entry per workload"
        );
        Schedule {
            order: Order::new(arms.len(), seed),
            finished: arms.is_empty() || workloads == 0,
            arms,
            workloads,
            round: 0,
            wi: 0,
            block: vec![],
            k: 0,
            in_block: false,
            position: 0,
            round_did_work: false,
        }
    }

    pub fn arms(&self) -> &[Progress] {
        &self.arms
    }

    /// Launches planned in all, warmups included (for a progress bar).
    pub fn planned_launches(&self) -> u64 {
        self.arms
            .iter()
            .map(|a| (0..self.workloads).map(|wi| a.planned(wi)).sum::<u64>())
            .sum()
    }

    /// Rounds planned: the most launches any arm has planned for one workload.
    pub fn planned_rounds(&self) -> u32 {
        let most = self
            .arms
            .iter()
            .flat_map(|a| (0..self.workloads).map(move |wi| a.planned(wi)))
            .max()
            .unwrap_or(0);
        u32::try_from(most).unwrap_or(u32::MAX)
    }

    /// Wall time the launches left should take, at each arm's own pace per workload so far (its
    /// pace over the other workloads where it has not run one yet), capped by its time budget
    /// but not below its `min_runs`. None until every arm that has work left has launched once.
    pub fn remaining(&self) -> Option<Duration> {
        let mut left = Duration::ZERO;
        for a in &self.arms {
            let (spent, tries) = (a.spent.iter().sum::<Duration>(), a.attempts.iter().sum());
            for wi in 0..self.workloads {
                if a.dropped || a.unsupported[wi] {
                    continue;
                }
                let n = a.planned(wi).saturating_sub(u64::from(a.attempts[wi]));
                if n == 0 {
                    continue;
                }
                let pace = match (a.attempts[wi], tries) {
                    (0, 0) => return None,
                    (0, t) => spent / t,
                    (t, _) => a.spent[wi] / t,
                };
                let mut t = pace * u32::try_from(n).unwrap_or(u32::MAX);
                if let Some(b) = a.plan.time_budget_s {
                    let budget_left = Duration::from_secs_f64(b).saturating_sub(a.spent[wi]);
                    let floor = pace * a.plan.min_runs.saturating_sub(a.done[wi]);
                    t = t.min(budget_left).max(floor);
                }
                left += t;
            }
        }
        Some(left)
    }

    /// The next launch, or None when no arm has work left. Call [`Schedule::record`] with its
    /// outcome before asking again: whether an arm has work depends on what it has done.
    pub fn next_step(&mut self) -> Option<Step> {
        loop {
            if self.finished {
                return None;
            }
            if self.k == self.block.len() {
                if self.in_block {
                    self.wi += 1;
                    if self.wi == self.workloads {
                        if !self.round_did_work {
                            self.finished = true;
                            return None;
                        }
                        self.wi = 0;
                        self.round += 1;
                        self.round_did_work = false;
                    }
                }
                self.block = self.order.next_block();
                self.k = 0;
                self.position = 0;
                self.in_block = true;
                continue;
            }
            let arm = self.block[self.k];
            self.k += 1;
            if let Some(phase) = self.arms[arm].next_phase(self.wi) {
                self.round_did_work = true;
                let step = Step {
                    round: self.round,
                    workload: self.wi,
                    arm,
                    phase,
                    position: self.position,
                };
                self.position += 1;
                return Some(step);
            }
        }
    }

    /// Record how `step` ended and how long it took; true when this drops the arm (failures in
    /// a row).
    pub fn record(&mut self, step: &Step, ended: Ended, elapsed: Duration) -> bool {
        let a = &mut self.arms[step.arm];
        let wi = step.workload;
        a.spent[wi] += elapsed;
        a.attempts[wi] += 1;
        match (ended, step.phase) {
            (Ended::Ok, Phase::Measure) => {
                a.consecutive_failures = 0;
                a.done[wi] += 1;
            }
            (Ended::Ok, Phase::Warmup) => {
                a.consecutive_failures = 0;
                a.warm[wi] += 1;
            }
            (Ended::Unsupported, _) => a.unsupported[wi] = true,
            (Ended::Failed, phase) => {
                if phase == Phase::Warmup {
                    a.warm[wi] += 1;
                }
                a.consecutive_failures += 1;
                if a.consecutive_failures >= MAX_CONSECUTIVE_FAILURES && !a.dropped {
                    a.dropped = true;
                    return true;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn plan(runs: u32, warmup: u32, budget: Option<f64>, min_runs: u32) -> ResolvedPlan {
        ResolvedPlan {
            runs,
            warmup,
            time_budget_s: budget,
            min_runs,
            app_scale: None,
        }
    }

    /// Ordered pairs (previous, next) adjacent within the rows.
    fn pairs(rows: &[Vec<usize>]) -> BTreeMap<(usize, usize), u32> {
        let mut m = BTreeMap::new();
        for r in rows {
            for w in r.windows(2) {
                *m.entry((w[0], w[1])).or_default() += 1;
            }
        }
        m
    }

    fn is_permutation(row: &[usize], n: usize) -> bool {
        let mut s = row.to_vec();
        s.sort_unstable();
        s == (0..n).collect::<Vec<_>>()
    }

    #[test]
    fn williams_rows_are_balanced_permutations() {
        for n in 1..=9 {
            let rows = williams(n);
            assert_eq!(rows.len(), if n % 2 == 0 { n } else { 2 * n }, "n={n}");
            assert!(rows.iter().all(|r| is_permutation(r, n)), "n={n}");
            let p = pairs(&rows);
            let want = if n % 2 == 0 { 1 } else { 2 };
            for a in 0..n {
                for b in (0..n).filter(|&b| b != a) {
                    assert_eq!(p.get(&(a, b)).copied(), Some(want), "n={n} pair {a}->{b}");
                }
            }
        }
    }

    #[test]
    fn every_arm_once_per_block_and_balanced_over_whole_squares() {
        for n in 2..=7 {
            let mut o = Order::new(n, 42);
            let per_square = if n % 2 == 0 { n } else { 2 * n };
            let rows: Vec<Vec<usize>> = (0..per_square * 20).map(|_| o.next_block()).collect();
            assert!(rows.iter().all(|r| is_permutation(r, n)));
            // Within blocks, over whole squares: exactly equal.
            let p = pairs(&rows);
            let counts: Vec<u32> = p.values().copied().collect();
            assert_eq!(
                counts.len(),
                n * (n - 1),
                "n={n}: every ordered pair occurs"
            );
            assert!(counts.iter().all(|&c| c == counts[0]), "n={n}: {p:?}");
            // Across block boundaries too (the sequence as launched): roughly equal.
            let flat: Vec<usize> = rows.concat();
            // Self-pairs (an arm last in one block and first in the next) are left out.
            let mut seq = pairs(&[flat]);
            seq.retain(|(a, b), _| a != b);
            let mean = f64::from(seq.values().sum::<u32>()) / seq.len() as f64;
            for (pair, &c) in &seq {
                let c = f64::from(c);
                assert!(
                    (0.6 * mean..=1.4 * mean).contains(&c),
                    "n={n}: {pair:?} adjacent {c} times, mean {mean}"
                );
            }
            // No previous arm dominates: nothing like the rotation's one fixed predecessor.
            for b in 0..n {
                let before: Vec<u32> = (0..n)
                    .filter(|&a| a != b)
                    .map(|a| seq.get(&(a, b)).copied().unwrap_or(0))
                    .collect();
                assert!(before.iter().all(|&c| c > 0), "n={n}: {b} preceded by all");
            }
        }
    }

    #[test]
    fn same_seed_same_order_other_seed_other_order() {
        let take = |seed| {
            let mut o = Order::new(5, seed);
            (0..30).map(|_| o.next_block()).collect::<Vec<_>>()
        };
        assert_eq!(take(7), take(7));
        assert_ne!(take(7), take(8));
        // Pinned: the order of a seed never changes between versions.
        let mut o = Order::new(3, 1);
        let first: Vec<Vec<usize>> = (0..3).map(|_| o.next_block()).collect();
        assert_eq!(first, PINNED_SEED1_N3);
    }

    const PINNED_SEED1_N3: [[usize; 3]; 3] = [[0, 2, 1], [0, 1, 2], [1, 0, 2]];

    #[test]
    fn random_seeds_fit_a_double() {
        for _ in 0..100 {
            assert!(random_seed() < 1 << 53);
        }
    }

    /// Run a schedule to the end with every launch ending as `ended(step)` and taking `dt`.
    fn drive(s: &mut Schedule, mut ended: impl FnMut(&Step) -> Ended, dt: Duration) -> Vec<Step> {
        let mut steps = vec![];
        while let Some(st) = s.next_step() {
            let e = ended(&st);
            s.record(&st, e, dt);
            steps.push(st);
            assert!(steps.len() < 100_000, "schedule does not end");
        }
        steps
    }

    #[test]
    fn warmups_first_then_runs_every_arm_once_per_round() {
        let arms = (0..3)
            .map(|_| Progress::new(plan(5, 2, None, 3), vec![false, false]))
            .collect();
        let mut s = Schedule::new(arms, 2, 9);
        assert_eq!(s.planned_launches(), 3 * 2 * 7);
        let steps = drive(&mut s, |_| Ended::Ok, Duration::from_millis(1));
        assert_eq!(steps.len(), 3 * 2 * 7);
        for st in &steps {
            let want = if st.round < 2 {
                Phase::Warmup
            } else {
                Phase::Measure
            };
            assert_eq!(st.phase, want, "{st:?}");
        }
        // Each (round, workload) block: every arm once, positions 0, 1, 2.
        for round in 0..7 {
            for wi in 0..2 {
                let block: Vec<&Step> = steps
                    .iter()
                    .filter(|x| x.round == round && x.workload == wi)
                    .collect();
                let arms: Vec<usize> = block.iter().map(|x| x.arm).collect();
                assert!(is_permutation(&arms, 3), "{block:?}");
                let pos: Vec<u32> = block.iter().map(|x| x.position).collect();
                assert_eq!(pos, vec![0, 1, 2]);
            }
        }
        assert!(s.arms().iter().all(|a| a.done == vec![5, 5]));
    }

    #[test]
    fn time_budget_stops_an_arm_after_min_runs() {
        let arms = vec![
            Progress::new(plan(10, 1, None, 3), vec![false]),
            // 1 s per launch, 4 s budget: warmup + 3 runs spend it; min_runs 3 is met.
            Progress::new(plan(10, 1, Some(4.0), 3), vec![false]),
        ];
        let mut s = Schedule::new(arms, 1, 3);
        let steps = drive(&mut s, |_| Ended::Ok, Duration::from_secs(1));
        assert_eq!(s.arms()[0].done, vec![10]);
        assert_eq!(s.arms()[1].done, vec![3]);
        assert_eq!(steps.iter().filter(|x| x.arm == 1).count(), 4);
        // A slow arm still gets its min_runs, budget or not.
        let arms = vec![Progress::new(plan(10, 0, Some(1.0), 5), vec![false])];
        let mut s = Schedule::new(arms, 1, 3);
        drive(&mut s, |_| Ended::Ok, Duration::from_secs(60));
        assert_eq!(s.arms()[0].done, vec![5]);
    }

    #[test]
    fn remaining_time_follows_each_arms_pace_and_budget() {
        let arms = vec![
            // 2 workloads × (1 warmup + 4 runs), 1 s per launch.
            Progress::new(plan(4, 1, None, 1), vec![false, false]),
            // 10 s per launch, 15 s budget per workload, at least 2 runs.
            Progress::new(plan(10, 0, Some(15.0), 2), vec![false, false]),
        ];
        let mut s = Schedule::new(arms, 2, 1);
        assert_eq!(s.planned_rounds(), 10);
        assert_eq!(s.remaining(), None, "no pace before a launch");
        let st = s.next_step().unwrap();
        s.record(&st, Ended::Ok, Duration::from_secs(1 + 9 * st.arm as u64));
        let st = s.next_step().unwrap();
        s.record(&st, Ended::Ok, Duration::from_secs(1 + 9 * st.arm as u64));
        // Arm 0: 4 + 5 launches left at 1 s. Arm 1: workload 0 has 5 s of budget left but one
        // more run to its min_runs (10 s); workload 1 at the pace of workload 0: the 15 s budget
        // would stop it, but not before its 2 runs (20 s).
        assert_eq!(s.remaining(), Some(Duration::from_secs(9 + 10 + 20)));
    }

    #[test]
    fn density_takes_no_warmup() {
        let arms = vec![Progress::new(plan(2, 3, None, 1), vec![false, true])];
        let mut s = Schedule::new(arms, 2, 0);
        assert_eq!(s.planned_launches(), 5 + 2);
        let steps = drive(&mut s, |_| Ended::Ok, Duration::ZERO);
        let density: Vec<Phase> = steps
            .iter()
            .filter(|x| x.workload == 1)
            .map(|x| x.phase)
            .collect();
        assert_eq!(density, vec![Phase::Measure, Phase::Measure]);
    }

    #[test]
    fn failures_in_a_row_drop_an_arm_unsupported_skips_a_workload() {
        let arms = vec![
            Progress::new(plan(4, 1, None, 1), vec![false, false]),
            Progress::new(plan(4, 1, None, 1), vec![false, false]),
        ];
        let mut s = Schedule::new(arms, 2, 5);
        let mut drops = 0;
        let mut steps = vec![];
        while let Some(st) = s.next_step() {
            let e = match (st.arm, st.workload) {
                (0, _) => Ended::Failed,
                (1, 1) => Ended::Unsupported,
                _ => Ended::Ok,
            };
            if s.record(&st, e, Duration::ZERO) {
                drops += 1;
            }
            steps.push(st);
        }
        assert_eq!(drops, 1);
        assert!(s.arms()[0].dropped);
        assert_eq!(
            steps.iter().filter(|x| x.arm == 0).count(),
            MAX_CONSECUTIVE_FAILURES as usize
        );
        assert_eq!(s.arms()[1].done, vec![4, 0]);
        assert_eq!(
            steps
                .iter()
                .filter(|x| x.arm == 1 && x.workload == 1)
                .count(),
            1
        );
    }

    #[test]
    fn nothing_to_do_ends_at_once() {
        assert_eq!(Schedule::new(vec![], 1, 0).next_step(), None);
        let arms = vec![Progress::new(plan(0, 0, None, 0), vec![false])];
        assert_eq!(Schedule::new(arms, 1, 0).next_step(), None);
    }
}
