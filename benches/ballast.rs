//! Does the harness's memory change what a tier costs? launch -> exit of bare, chroot and
//! container, through the same backends `isobench run` uses, in blocks without and with a
//! 256 MiB ballast held (allocated and touched) by this process, interleaved in one run.
//!
//! Prints, per tier, the median launch -> exit without and with the ballast, then the
//! chroot/bare and container/bare ratios both ways and how much each ratio moved. A launch path
//! whose cost grows with the harness's RSS (fork copies its page tables) moves the ratios; the
//! CLONE_VM spawn of `backend::process` should not.
//!
//! Needs root (chroot, namespaces, cgroups); otherwise it says so and exits 0.
//! Knobs: BALLAST_BLOCKS (default 8, even, at most 40), BALLAST_LAUNCHES (per tier and block,
//! default 15, at most 100), BALLAST_MIB (default 256, at most 2048).

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use isobench::backend::{registry, Backend, BackendOptions, RunEnv};
use isobench::measure::plan::Order;
use isobench::model::budget::Budget;
use isobench::model::facts::HostFacts;
use isobench::state::ledger::StateDir;

use isobench::protocol::Task;

use isobench::model::tier::Tier;
use isobench::workload::Workload;

fn agent() -> std::path::PathBuf {
    // Benches are built in target/<profile>/deps; the agent binary sits in target/<profile>.
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe.parent().and_then(|d| d.parent()).expect("target dir");
    dir.join("isobench-agent")
}

fn knob(name: &str, default: usize, max: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .clamp(1, max)
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n == 0 {
        return f64::NAN;
    }
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|k| k.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A touched ballast: every page written, so it is resident and mapped in the page tables.
fn ballast(mib: usize) -> Vec<u8> {
    let mut v = vec![0u8; mib << 20];
    for i in (0..v.len()).step_by(4096) {
        v[i] = 1;
    }
    v
}

fn main() {
    if !nix::unistd::geteuid().is_root() {
        println!("SKIPPED ballast: needs root (chroot, namespaces, cgroups); run it with sudo");
        return;
    }
    let agent = agent();
    if !agent.is_file() {
        println!(
            "SKIPPED ballast: build the agent first: cargo build --release --bins ({} missing)",
            agent.display()
        );
        return;
    }
    let blocks = knob("BALLAST_BLOCKS", 8, 40).div_ceil(2) * 2;
    let per_block = knob("BALLAST_LAUNCHES", 15, 100);
    let mib = knob("BALLAST_MIB", 256, 2048);
    let host = HostFacts::detect();
    let tmp = tempfile::tempdir().expect("temp dir");
    let state = StateDir::open(tmp.path().join("state")).expect("state dir");
    let run = Arc::new(state.begin_run("ballast").expect("run"));
    let opts = BackendOptions::default();
    let env = RunEnv {
        agent,
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
    let tiers = [Tier::Bare, Tier::Chroot, Tier::Container];
    let mut backends: Vec<(Tier, Box<dyn Backend>)> = vec![];
    for tier in tiers {
        if let isobench::model::availability::Availability::Unavailable { reason, .. } =
            registry::availability(tier, &host, &opts)
        {
            println!("SKIPPED ballast {tier}: {reason}");
            continue;
        }
        match registry::make(tier, &env) {
            Ok(b) => backends.push((tier, b)),
            Err(e) => println!("SKIPPED ballast {tier}: prepare failed: {e}"),
        }
    }
    let task = Task::new(Workload::Noop);
    // Warm-up: page cache, dentries, cgroup parents.
    let mut failed = None;
    for (tier, b) in &mut backends {
        for _ in 0..3 {
            if let Err(e) = b.run_once(&task) {
                failed.get_or_insert(format!("{tier} warm-up launch failed: {e}"));
            }
        }
    }
    // samples[tier][with ballast] = launch -> exit, ms
    let mut samples: BTreeMap<(Tier, bool), Vec<f64>> = BTreeMap::new();
    let mut paired: BTreeMap<(Tier, bool), Vec<f64>> = BTreeMap::new();
    let mut rss_with = 0.0f64;
    let mut rss_without = f64::MAX;
    let mut order = Order::new(backends.len(), 0x150b_e4c4);
    for block in 0..blocks {
        if failed.is_some() {
            break;
        }
        let with = block % 2 == 1;
        let held = with.then(|| ballast(mib));
        if with {
            rss_with = rss_with.max(rss_mib());
        } else {
            rss_without = rss_without.min(rss_mib());
        }
        let mut this: Vec<Vec<f64>> = vec![vec![]; backends.len()];
        for _ in 0..per_block {
            let mut round: BTreeMap<Tier, f64> = BTreeMap::new();
            // The runner's order (a Williams design, seeded): every tier follows every other
            // equally often, so what one launch leaves behind is not always charged to bare.
            for k in order.next_block() {
                let (tier, b) = &mut backends[k];
                let o = match b.run_once(&task) {
                    Ok(o) => o,
                    Err(e) => {
                        failed.get_or_insert(format!("{tier} launch failed: {e}"));
                        continue;
                    }
                };
                let ms = o.timings.launch_to_exit.as_secs_f64() * 1e3;
                samples.entry((*tier, with)).or_default().push(ms);
                this[k].push(ms);
                round.insert(*tier, ms);
            }
            // Paired ratios: each tier against the bare launch of the same round (the load of
            // a shared machine drifts slower than one round).
            if let Some(b) = round.get(&Tier::Bare).copied() {
                for (t, ms) in &round {
                    paired.entry((*t, with)).or_default().push(ms / b);
                }
            }
        }
        drop(held);
        let line: Vec<String> = backends
            .iter()
            .zip(&mut this)
            .map(|((t, _), v)| format!("{} {:.3}", t.as_str(), median(v)))
            .collect();
        println!(
            "block {block} ({}): median ms {}",
            if with { "ballast" } else { "none" },
            line.join(", ")
        );
    }
    // Every backend is finished, whatever failed (nothing may be left on the host).
    for (tier, b) in &mut backends {
        if let Err(e) = b.finish() {
            eprintln!("finishing {tier}: {e}");
        }
    }
    if let Some(f) = failed {
        eprintln!("ballast: {f}");
        std::process::exit(1);
    }
    println!(
        "ballast: {blocks} blocks x {per_block} launches per tier, alternating without/with a {mib} MiB touched ballast (harness RSS {rss_without:.0} MiB / {rss_with:.0} MiB)"
    );
    let mut med: BTreeMap<(Tier, bool), f64> = BTreeMap::new();
    for ((tier, with), v) in &mut samples {
        med.insert((*tier, *with), median(v));
    }
    println!("{:<10} {:>16} {:>16}", "tier", "without (ms)", "with (ms)");
    for (tier, _) in &backends {
        println!(
            "{:<10} {:>16.3} {:>16.3}",
            tier.as_str(),
            med[&(*tier, false)],
            med[&(*tier, true)]
        );
    }
    let bare = |w: bool| med.get(&(Tier::Bare, w)).copied();
    for tier in [Tier::Chroot, Tier::Container] {
        let (Some(b0), Some(b1), Some(t0), Some(t1)) = (
            bare(false),
            bare(true),
            med.get(&(tier, false)),
            med.get(&(tier, true)),
        ) else {
            continue;
        };
        let (r0, r1) = (t0 / b0, t1 / b1);
        println!(
            "{}/bare launch_to_exit ratio of medians: without {r0:.3}, with {r1:.3}, change {:+.1}%",
            tier.as_str(),
            (r1 / r0 - 1.0) * 100.0
        );
        if let (Some(p0), Some(p1)) = (
            paired.get_mut(&(tier, false)).map(|v| median(v)),
            paired.get_mut(&(tier, true)).map(|v| median(v)),
        ) {
            println!(
                "{}/bare launch_to_exit median of paired ratios: without {p0:.3}, with {p1:.3}, change {:+.1}%",
                tier.as_str(),
                (p1 / p0 - 1.0) * 100.0
            );
        }
    }
}
