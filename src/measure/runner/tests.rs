//! Unit tests of the runner with the test-only fake tier (`backend/fake.rs`): every arm goes
//! through the registry (settings checked as `--set` checks them), `registry::make` and the one
//! launch timer, with real processes. No root needed: the state root and the outputs are temp
//! directories. No assertion on timings: the time budget is one no launch can stay under.

use super::*;
use crate::model::facts::{CgroupLayout, KvmKind};
use crate::model::results::TierStatus;
use clap::ValueEnum;

fn host() -> HostFacts {
    HostFacts {
        hostname: "test".into(),
        cpu_model: "test".into(),
        cores: 1,
        memory_bytes: 1 << 30,
        kernel: "test".into(),
        os: "test".into(),
        virtualized: false,
        is_root: false,
        cgroup_layout: CgroupLayout::None,
        kvm: KvmKind::Missing,
        overlayfs: false,
        namespaces: vec![],
        qemu: None,
        qemu_version: None,
    }
}

/// `[tier.fake]` plan lines, one noop workload, seed 7.
fn scenario(plan: &str) -> Scenario {
    let text = format!(
        "name = \"fake\"\nseed = 7\n[tier.fake]\n{plan}\n[budget]\ncpus = 1\n[[workload]]\nkind = \"noop\"\n"
    );
    Scenario::parse(&text, "test").unwrap()
}

/// One fake arm per entry, each with an output of its own (the results record tiers, and every
/// arm here is the fake tier). Settings are checked as `--set` checks them.
struct Run {
    _dir: tempfile::TempDir,
    outputs: Vec<PathBuf>,
    res: anyhow::Result<Vec<Results>>,
    cancel: Arc<AtomicBool>,
}

fn run_fakes(plan: &str, arms: &[&[(&str, &str)]]) -> Run {
    let dir = tempfile::tempdir().unwrap();
    run_in(dir, plan, arms, |_| {})
}

fn run_in(
    dir: tempfile::TempDir,
    plan: &str,
    arms: &[&[(&str, &str)]],
    edit: impl Fn(&mut BTreeMap<String, String>),
) -> Run {
    let outputs: Vec<PathBuf> = (0..arms.len())
        .map(|i| dir.path().join(format!("out{i}")))
        .collect();
    let arms = arms
        .iter()
        .enumerate()
        .map(|(i, kv)| {
            let mut settings: BTreeMap<String, String> = kv
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
            edit(&mut settings);
            registry::check_settings(&[Tier::Fake], &settings, "--set").unwrap();
            Arm {
                label: format!("arm{i}"),
                tier: Tier::Fake,
                options: BackendOptions {
                    settings,
                    ..BackendOptions::default()
                },
                extra_settings: BTreeMap::new(),
                output: i,
            }
        })
        .collect();
    let cfg = ArmsConfig {
        scenario: scenario(plan),
        arms,
        outputs: outputs.clone(),
        runs_override: None,
        link_latest: false,
        state_root: dir.path().join("state"),
        cache_dir: dir.path().join("cache"),
        agent: PathBuf::from("/bin/sh"),
        quiet: true,
        seed: None,
        strict: false,
        label: "fake test".into(),
        labels: BTreeMap::from([("k".to_string(), "v".to_string())]),
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let res = run_arms(&cfg, cancel.clone(), host());
    Run {
        _dir: dir,
        outputs,
        res,
        cancel,
    }
}

/// The fake's metric samples: (round, position, value).
fn fake_values(r: &Results) -> Vec<(u32, u32, f64)> {
    r.samples
        .iter()
        .filter(|s| s.metric == "fake_value")
        .map(|s| (s.round, s.position.unwrap(), s.value))
        .collect()
}

fn on_disk(dir: &Path) -> Results {
    Results::load(&dir.join("results.json")).unwrap()
}

#[test]
fn runner_unknown_fake_setting_is_refused_like_any_tier() {
    let s = BTreeMap::from([("fail_evry".to_string(), "3".to_string())]);
    let e = registry::check_settings(&[Tier::Fake], &s, "--set")
        .unwrap_err()
        .to_string();
    assert!(e.contains("fail_every="), "{e}");
    assert!(!registry::default_tiers().contains(&Tier::Fake));
    assert!(Tier::Fake.to_possible_value().unwrap().is_hide_set());
}

#[test]
fn runner_interleaves_arms_and_records_the_order() {
    let r = run_fakes("runs = 4\nwarmup = 1", &[&[], &[]]);
    let outs = r.res.unwrap();
    assert_eq!(outs.len(), 2);
    let mut first = [0, 0];
    for (i, o) in outs.iter().enumerate() {
        assert_eq!(o.order.as_ref().unwrap().seed, 7);
        assert!(!o.interrupted);
        let t = &o.tiers[0];
        assert_eq!(t.status, TierStatus::Ran, "{t:?}");
        assert_eq!(t.launches.get("noop"), Some(&4));
        assert!(t.failures.is_empty(), "{:?}", t.failures);
        assert!(t.isolation.is_some(), "the probe launch is recorded");
        let v = fake_values(o);
        // Launch 1 is the probe, 2 the warmup (neither recorded), 3..=6 measured.
        let values: Vec<f64> = v.iter().map(|x| x.2).collect();
        assert_eq!(values, vec![3.0, 4.0, 5.0, 6.0], "arm {i}");
        // Warmups run in the first round; measured launches in rounds 1..=4.
        let rounds: Vec<u32> = v.iter().map(|x| x.0).collect();
        assert_eq!(rounds, vec![1, 2, 3, 4]);
        first[i] = v.iter().filter(|x| x.1 == 0).count();
        for s in &o.samples {
            assert_eq!(s.previous_tier, Some(Tier::Fake), "{s:?}");
            assert!(s.position.unwrap() < 2);
        }
        // Every launch's startup metrics are there too.
        for m in [
            "launch_to_ready_ms",
            "launch_to_exit_ms",
            "launch_to_released_ms",
        ] {
            assert_eq!(o.samples.iter().filter(|s| s.metric == m).count(), 4);
        }
    }
    // Within each round the two arms take positions 0 and 1; over whole Williams squares
    // (two rounds for two arms) each arm goes first equally often.
    let (a, b) = (fake_values(&outs[0]), fake_values(&outs[1]));
    for (x, y) in a.iter().zip(&b) {
        assert_eq!(x.0, y.0);
        assert_ne!(x.1, y.1, "rounds {a:?} {b:?}");
    }
    assert_eq!(first, [2, 2], "{a:?} {b:?}");
    // What was returned is what was written.
    for (o, dir) in outs.iter().zip(&r.outputs) {
        assert_eq!(fake_values(&on_disk(dir)), fake_values(o));
    }
}

#[test]
fn runner_time_budget_stops_at_min_runs() {
    // No launch takes less than a microsecond: the budget is spent after the first.
    let r = run_fakes(
        "runs = 10\nwarmup = 0\ntime_budget_s = 0.000001\nmin_runs = 2",
        &[&[]],
    );
    let o = &r.res.unwrap()[0];
    let t = &o.tiers[0];
    assert_eq!(t.launches.get("noop"), Some(&2));
    assert_eq!(fake_values(o).len(), 2);
    let note = t.note.as_deref().unwrap_or_default();
    assert!(
        note.contains("time budget reached") && note.contains("2 of 10"),
        "{note}"
    );
}

#[test]
fn runner_drops_an_arm_after_three_failures_in_a_row_and_runs_the_others() {
    let r = run_fakes(
        "runs = 6\nwarmup = 0",
        &[
            // Probe (launch 1), 2 and 3 measured, then 4, 5, 6 fail.
            &[("fail_from", "4")],
            &[],
            // 4, 5, 6 hang until their deadline (a timeout is a failed launch like any).
            &[("hang_from", "4"), ("deadline_ms", "200")],
            // Every other launch fails: never three in a row, so never dropped.
            &[("fail_every", "3")],
        ],
    );
    let outs = r.res.unwrap();
    for (i, o) in outs.iter().enumerate().filter(|(i, _)| *i == 0 || *i == 2) {
        let t = &o.tiers[0];
        assert_eq!(t.status, TierStatus::Ran, "arm {i} kept its samples");
        assert_eq!(t.launches.get("noop"), Some(&2), "arm {i}");
        assert_eq!(t.failures.len(), 3, "arm {i}: {:?}", t.failures);
        let note = t.note.as_deref().unwrap_or_default();
        assert!(
            note.contains("dropped after 3 failed launches in a row"),
            "{note}"
        );
    }
    assert!(outs[0].tiers[0].failures[0]
        .message
        .contains("fails on purpose"));
    assert!(
        outs[2].tiers[0].failures[0]
            .message
            .contains("did not report within"),
        "{:?}",
        outs[2].tiers[0].failures
    );
    let ok = &outs[1].tiers[0];
    assert_eq!(ok.launches.get("noop"), Some(&6));
    assert!(ok.failures.is_empty() && ok.note.is_none());
    // fail_every=3: launches 3, 6, 9 fail (one in a row each time); 6 measured in launches
    // 2..=10, which is within the cap of runs + 3 attempts.
    let some = &outs[3].tiers[0];
    assert_eq!(some.launches.get("noop"), Some(&6));
    assert_eq!(some.failures.len(), 3, "{:?}", some.failures);
    assert!(some.note.is_none(), "{:?}", some.note);
}

#[test]
fn runner_records_a_prepare_failure_and_runs_the_others() {
    let r = run_fakes("runs = 3\nwarmup = 0", &[&[("fail_prepare", "yes")], &[]]);
    let outs = r.res.unwrap();
    let failed = &outs[0].tiers[0];
    assert_eq!(failed.status, TierStatus::Failed);
    assert_eq!(failed.failures.len(), 1);
    assert_eq!(failed.failures[0].workload, "prepare");
    assert!(failed.failures[0].message.contains("on purpose"));
    assert!(outs[0].samples.is_empty());
    assert_eq!(outs[1].tiers[0].launches.get("noop"), Some(&3));
    // The run ended with its ledger empty (run_arms fails otherwise) and its directory gone.
    let runs = r.outputs[0].parent().unwrap().join("state/runs");
    assert_eq!(std::fs::read_dir(runs).unwrap().count(), 0);
}

#[test]
fn runner_interrupt_keeps_completed_samples() {
    // Launch 5 raises the cancel flag as Ctrl-C would, and hangs until the timer sees it.
    let r = run_fakes(
        "runs = 10\nwarmup = 0",
        &[&[("interrupt_at", "5")], &[("value", "42")]],
    );
    assert!(r.cancel.load(Ordering::Relaxed));
    let outs = r.res.unwrap();
    for (o, dir) in outs.iter().zip(&r.outputs) {
        assert!(o.interrupted);
        assert!(on_disk(dir).interrupted);
        assert_eq!(fake_values(&on_disk(dir)), fake_values(o));
    }
    // Launches 2, 3, 4 completed; 5 was interrupted and is neither a sample nor a failure.
    let a = &outs[0];
    let values: Vec<f64> = fake_values(a).iter().map(|x| x.2).collect();
    assert_eq!(values, vec![2.0, 3.0, 4.0]);
    assert!(a.tiers[0].failures.is_empty(), "{:?}", a.tiers[0].failures);
    assert!(a.tiers[0].note.is_none(), "{:?}", a.tiers[0].note);
    // The other arm stopped too, with the rounds it completed (3 or 4: it may come after the
    // interrupted launch in round 3 or before it), each reporting its given value.
    let b = fake_values(&outs[1]);
    assert!((3..=4).contains(&b.len()), "{b:?}");
    assert!(b.iter().all(|x| x.2 == 42.0));
}

#[test]
fn runner_writes_results_after_rounds() {
    // Every launch takes at least a second (longer than the save interval), so the round that
    // starts after round 0 finds round 0's sample on disk; the fake copies results.json before
    // each launch.
    let dir = tempfile::tempdir().unwrap();
    let watch = dir.path().join("out0/results.json");
    let w = watch.to_str().unwrap().to_string();
    if w.chars().count() > 64 {
        println!(
            "SKIPPED runner_writes_results_after_rounds: temp path {w} longer than a Text setting"
        );
        return;
    }
    let r = run_in(
        dir,
        "runs = 2\nwarmup = 0",
        &[&[("sleep_ms", "1000")]],
        |s| {
            s.insert("watch".into(), w.clone());
        },
    );
    let outs = r.res.unwrap();
    assert_eq!(fake_values(&outs[0]).len(), 2);
    let seen = |n: u32| {
        let p = format!("{w}.launch-{n}");
        let r: Results = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        fake_values(&r).len()
    };
    // Before the probe and before round 0: the tier records only; before round 1: round 0.
    assert_eq!(seen(1), 0);
    assert_eq!(seen(2), 0);
    assert_eq!(seen(3), 1);
}
