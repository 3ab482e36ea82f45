//! Regression tracking end to end: the statistics on deterministic synthetic runs (false-alarm
//! rate, power on a planted slowdown) and `isobench compare` on result files (exit codes,
//! messages, warnings).

use std::path::Path;
use std::process::{Command, Output};

use isobench::compare::synthetic::{draw, metric, results};
use isobench::compare::thresholds::Thresholds;
use isobench::compare::{compare, CompareOptions, Verdict};
use isobench::model::scenario::CompareSpec;

const METRICS: usize = 24;
const N: usize = 40;
const PAIRS: u64 = 200;

fn isobench(args: &[&std::ffi::OsStr]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isobench"))
        .args(args)
        .output()
        .expect("run isobench")
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Upper bound for an observed rate whose true value is at most `alpha` over `PAIRS` trials:
/// alpha + 3 binomial standard deviations.
fn bound(alpha: f64) -> f64 {
    alpha + 3.0 * (alpha * (1.0 - alpha) / PAIRS as f64).sqrt()
}

/// Pairs of runs of an unchanged build: every metric from the same distribution.
fn false_alarm_rates(opts: &CompareOptions) -> (f64, f64) {
    let (mut any_regressed, mut any_significant) = (0u32, 0u32);
    for pair in 0..PAIRS {
        let base = results("h", draw(1000 + 2 * pair, METRICS, N, None));
        let new = results("h", draw(1001 + 2 * pair, METRICS, N, None));
        let c = compare(&base, "base", &new, "new", opts);
        assert_eq!(c.metrics.len(), METRICS);
        any_regressed += u32::from(c.count(Verdict::Regressed) > 0);
        any_significant += u32::from(c.metrics.iter().any(|m| m.p_adjusted.unwrap() <= c.alpha));
    }
    (
        f64::from(any_regressed) / PAIRS as f64,
        f64::from(any_significant) / PAIRS as f64,
    )
}

#[test]
fn false_alarm_rate_is_at_most_alpha() {
    // resamples = 0: the interval is not part of the verdict, and 200 x 24 bootstraps are slow.
    let opts = CompareOptions {
        resamples: 0,
        ..Default::default()
    };
    let alpha = opts.thresholds.alpha;
    let (regressed, significant) = false_alarm_rates(&opts);
    eprintln!("false alarms over {PAIRS} pairs of {METRICS} metrics x {N} samples: any regressed {regressed:.3}, any significant (Holm) {significant:.3}, alpha {alpha}");
    assert!(
        significant <= bound(alpha),
        "family-wise rate of significant tests {significant} > {}",
        bound(alpha)
    );
    assert!(
        regressed <= bound(alpha),
        "false-regression rate {regressed} > {}",
        bound(alpha)
    );

    // With no noise threshold at all, and a lax alpha, the test and Holm alone must still hold
    // the family-wise rate near alpha.
    let spec = CompareSpec {
        alpha: Some(0.1),
        threshold: Some(0.0),
        ..Default::default()
    };
    let opts = CompareOptions {
        thresholds: Thresholds::from_spec(spec, "test").unwrap(),
        resamples: 0,
    };
    let (regressed, significant) = false_alarm_rates(&opts);
    eprintln!(
        "threshold 0, alpha 0.1: any regressed {regressed:.3}, any significant {significant:.3}"
    );
    assert!(
        significant <= bound(0.1),
        "family-wise rate {significant} > {}",
        bound(0.1)
    );
}

#[test]
fn planted_slowdown_is_found_in_every_pair() {
    let opts = CompareOptions {
        resamples: 0,
        ..Default::default()
    };
    for pair in 0..20u64 {
        let k = usize::try_from(pair).unwrap() % METRICS;
        let base = results("h", draw(5000 + 2 * pair, METRICS, N, None));
        let new = results("h", draw(5001 + 2 * pair, METRICS, N, Some((k, 1.3))));
        let c = compare(&base, "base", &new, "new", &opts);
        let flagged: Vec<String> = c.regressed().map(|m| m.metric.clone()).collect();
        assert_eq!(flagged, vec![metric(k).1], "pair {pair}");
    }
}

fn write(dir: &Path, name: &str, r: &isobench::model::results::Results) -> std::path::PathBuf {
    let d = dir.join(name);
    r.write(&d).unwrap();
    d
}

#[test]
fn compare_cli_exit_codes() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(tmp.path(), "base", &results("h", draw(1, 8, N, None)));
    let same = write(tmp.path(), "same", &results("h", draw(2, 8, N, None)));
    let slow = write(
        tmp.path(),
        "slow",
        &results("h", draw(2, 8, N, Some((3, 1.3)))),
    );

    // A run against itself, and against an unchanged build: exit 0.
    for other in [&base, &same] {
        let o = isobench(&["compare".as_ref(), base.as_os_str(), other.as_os_str()]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        assert!(String::from_utf8_lossy(&o.stdout).contains("0 regressed"));
    }

    // A planted 30% slowdown: exit 1, naming exactly that metric (results.json path works too).
    let o = isobench(&[
        "compare".as_ref(),
        base.as_os_str(),
        slow.join("results.json").as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    let (tier, name, _, _) = metric(3);
    assert!(
        e.contains(&format!("regressed: {tier}/noop/{name} (-")),
        "{e}"
    );
    assert_eq!(e.matches("/noop/").count(), 1, "{e}");

    // Markdown and JSON carry the same verdicts.
    let o = isobench(&[
        "compare".as_ref(),
        base.as_os_str(),
        slow.as_os_str(),
        "--format".as_ref(),
        "markdown".as_ref(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let md = String::from_utf8_lossy(&o.stdout);
    assert!(
        md.contains("❌ regression") && md.contains(&name) && md.contains("**regressed**"),
        "{md}"
    );
    let o = isobench(&[
        "compare".as_ref(),
        base.as_os_str(),
        slow.as_os_str(),
        "--format".as_ref(),
        "json".as_ref(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["summary"]["regressed"], 1);

    // A thresholds file that allows 50% turns the slowdown into "unchanged".
    let th = tmp.path().join("th.toml");
    std::fs::write(&th, format!("alpha = 0.01\n[metrics]\n{name} = 0.5\n")).unwrap();
    let o = isobench(&[
        "compare".as_ref(),
        base.as_os_str(),
        slow.as_os_str(),
        "--thresholds".as_ref(),
        th.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

#[test]
fn corrupt_and_truncated_files_exit_2_naming_the_file() {
    let tmp = tempfile::tempdir().unwrap();
    let good = write(tmp.path(), "good", &results("h", draw(1, 4, 10, None)));
    let text = std::fs::read(good.join("results.json")).unwrap();

    let garbage = tmp.path().join("garbage.json");
    std::fs::write(&garbage, [0u8, 159, 146, 150, 255, 1, 2, 3, b'{', b'x']).unwrap();
    let truncated = tmp.path().join("truncated.json");
    std::fs::write(&truncated, &text[..text.len() / 2]).unwrap();
    let missing = tmp.path().join("missing");

    for bad in [&garbage, &truncated, &missing] {
        for args in [
            [good.as_os_str(), bad.as_os_str()],
            [bad.as_os_str(), good.as_os_str()],
        ] {
            let o = isobench(&["compare".as_ref(), args[0], args[1]]);
            assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
            let e = stderr(&o);
            let shown = bad.file_name().unwrap().to_string_lossy().into_owned();
            assert!(e.starts_with("error: ") && e.contains(&shown), "{e}");
            assert_eq!(e.trim().lines().count(), 1, "{e}");
        }
    }
    let o = isobench(&[
        "compare".as_ref(),
        good.as_os_str(),
        good.as_os_str(),
        "--thresholds".as_ref(),
        missing.as_os_str(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("thresholds file"), "{}", stderr(&o));
}

#[test]
fn different_hosts_warn_in_every_format() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write(tmp.path(), "a", &results("host-a", draw(1, 4, 10, None)));
    let b = write(tmp.path(), "b", &results("host-b", draw(2, 4, 10, None)));
    for f in ["table", "markdown", "json"] {
        let o = isobench(&[
            "compare".as_ref(),
            a.as_os_str(),
            b.as_os_str(),
            "--format".as_ref(),
            f.as_ref(),
        ]);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(
            out.contains("different hosts (host-a vs host-b)"),
            "{f}: {out}"
        );
    }
}

/// The real path on the bare tier (the startup scenario: the default one is the whole claims
/// suite): `run` stores history, `run --baseline history` compares,
/// `history` draws trends, `ab` writes both sides and compares them.
#[test]
fn run_baseline_history_and_ab_on_bare() {
    let tmp = tempfile::tempdir().unwrap();
    let h = tmp.path().join("hist/history.sqlite");
    let base = || {
        let mut c = Command::new(env!("CARGO_BIN_EXE_isobench"));
        c.current_dir(env!("CARGO_MANIFEST_DIR"));
        c
    };
    let (d1, d2) = (tmp.path().join("r1"), tmp.path().join("r2"));
    let run = |out: &Path, extra: &[&str]| {
        base()
            .args([
                "run",
                "scenarios/startup.toml",
                "--backends",
                "bare",
                "-n",
                "6",
                "-q",
            ])
            .arg("--out")
            .arg(out)
            .arg("--history")
            .arg(&h)
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&d1, &[]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let o = run(&d2, &["--baseline", "history"]);
    let out = String::from_utf8_lossy(&o.stdout);
    // 6 vs 6 runs: 2/C(12,6) = 0.0022 times the family of 5 is above alpha 0.01, so every
    // tested metric is "cannot detect at this n" and the exit is 3 (1 only on a regression).
    assert!(matches!(o.status.code(), Some(1 | 3)), "{}", stderr(&o));
    assert!(
        out.contains("history: last 1 run(s)") && out.contains("cannot detect at this n"),
        "{out}"
    );

    let o = base()
        .arg("history")
        .arg("--history")
        .arg(&h)
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("#0") && out.contains("#1") && out.contains("launch_to_exit_ms"),
        "{out}"
    );
    if out.contains("trend charts:") {
        assert!(tmp
            .path()
            .join("hist/trends/noop-launch_to_exit_ms.svg")
            .is_file());
    } else {
        eprintln!("SKIPPED trend chart check: {}", stderr(&o));
    }

    // A missing baseline file fails before anything runs.
    let o = run(&tmp.path().join("r3"), &["--baseline", "/nonexistent/base"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/nonexistent/base") && !tmp.path().join("r3").exists());

    let ab = tmp.path().join("ab");
    let o = base()
        .args([
            "ab",
            "scenarios/startup.toml",
            "--backends",
            "bare",
            "--a",
            "label=x1",
            "--b",
            "label=x2",
            "-n",
            "6",
            "-q",
            "--out",
        ])
        .arg(&ab)
        .output()
        .unwrap();
    assert!(matches!(o.status.code(), Some(1 | 3)), "{}", stderr(&o));
    assert!(ab.join("a/results.json").is_file() && ab.join("b/results.json").is_file());
    let b = isobench::model::results::Results::load(&ab.join("b")).unwrap();
    assert_eq!(
        b.tiers[0].settings.get("ab_variant").map(String::as_str),
        Some("b: label=x2")
    );
    assert_eq!(
        b.samples
            .iter()
            .filter(|s| s.metric == "launch_to_exit_ms")
            .count(),
        6
    );
    let o = base()
        .args([
            "ab",
            "--backends",
            "bare,chroot",
            "--a",
            "x=1",
            "--b",
            "x=2",
        ])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("exactly one tier"), "{}", stderr(&o));
}

/// Identical distributions, rounded to integers so that most samples tie, at sizes where the
/// exact path runs: the family-wise false-alarm rate stays at most alpha (seeded, so the same
/// rate on every machine).
#[test]
fn false_alarm_rate_with_ties_on_the_exact_path() {
    const PAIRS: u64 = 400;
    const METRICS: usize = 4;
    const N: usize = 12;
    let spec = CompareSpec {
        alpha: Some(0.1),
        threshold: Some(0.0), // the test and Holm alone
        ..Default::default()
    };
    let opts = CompareOptions {
        thresholds: Thresholds::from_spec(spec, "test").unwrap(),
        resamples: 0,
    };
    let rounded = |seed| {
        let mut v = draw(seed, METRICS, N, None);
        for s in &mut v {
            s.value = s.value.round();
        }
        results("h", v)
    };
    let (mut any_significant, mut tied) = (0u32, 0u32);
    for pair in 0..PAIRS {
        let (base, new) = (rounded(9000 + 2 * pair), rounded(9001 + 2 * pair));
        let c = compare(&base, "base", &new, "new", &opts);
        assert_eq!(c.family_size, METRICS);
        for m in &c.metrics {
            assert_eq!(m.test_method, Some(isobench::compare::Method::Exact));
        }
        tied += u32::from(base.samples.iter().any(|a| {
            new.samples
                .iter()
                .any(|b| a.metric == b.metric && a.value == b.value)
        }));
        any_significant += u32::from(c.metrics.iter().any(|m| m.p_adjusted.unwrap() <= c.alpha));
    }
    let rate = f64::from(any_significant) / PAIRS as f64;
    let bound = 0.1 + 3.0 * (0.1 * 0.9 / PAIRS as f64).sqrt();
    eprintln!("exact path with ties: {tied} of {PAIRS} pairs tied across sides; family-wise false-alarm rate {rate:.4} (alpha 0.1)");
    assert_eq!(tied, PAIRS as u32, "the data must tie");
    assert!(rate <= bound, "false-alarm rate {rate} > {bound}");
}

/// The new run's own `[compare]` table cannot loosen the gate: thresholds come from the base
/// run's scenario (or --thresholds), and a planted slowdown still fails.
#[test]
fn a_new_run_cannot_loosen_its_own_thresholds() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(tmp.path(), "base", &results("h", draw(1, 8, N, None)));
    let mut slow = results("h", draw(2, 8, N, Some((3, 1.3))));
    let (_, name, _, _) = metric(3);
    slow.scenario.compare = Some(CompareSpec {
        alpha: Some(1e-9),
        threshold: Some(5.0),
        ..Default::default()
    });
    let slow = write(tmp.path(), "slow", &slow);
    let o = isobench(&["compare".as_ref(), base.as_os_str(), slow.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains(&name), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("[compare]") && out.contains("ignored"),
        "{out}"
    );

    // The base run's table does apply (here: it allows 50% on that metric).
    let mut lax = results("h", draw(1, 8, N, None));
    lax.scenario.compare = Some(CompareSpec {
        metrics: [(name.clone(), 0.5)].into_iter().collect(),
        ..Default::default()
    });
    let lax = write(tmp.path(), "lax", &lax);
    let o = isobench(&["compare".as_ref(), lax.as_os_str(), slow.as_os_str()]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
}

/// The issue's case end to end: 66 metrics, 5 runs per side, a planted x1.3 slowdown: "cannot
/// detect at this n", the runs needed, exit 3; with enough runs, exit 1 on exactly that metric.
#[test]
fn five_runs_cannot_see_and_exit_3() {
    let tmp = tempfile::tempdir().unwrap();
    let base = write(tmp.path(), "b5", &results("h", draw(31, 66, 5, None)));
    let slow = write(
        tmp.path(),
        "s5",
        &results("h", draw(32, 66, 5, Some((7, 1.3)))),
    );
    for f in ["table", "markdown", "json"] {
        let o = isobench(&[
            "compare".as_ref(),
            base.as_os_str(),
            slow.as_os_str(),
            "--format".as_ref(),
            f.as_ref(),
        ]);
        assert_eq!(o.status.code(), Some(3), "{f}: {}", stderr(&o));
        assert!(
            stderr(&o).contains("cannot see: 66 of 66"),
            "{}",
            stderr(&o)
        );
        let out = String::from_utf8_lossy(&o.stdout);
        assert!(out.contains("runs per side to detect"), "{f}: {out}");
        if f == "table" {
            eprintln!(
                "{}",
                out.lines().rev().take(3).collect::<Vec<_>>().join("\n")
            );
        }
    }
    let base = write(tmp.path(), "b30", &results("h", draw(33, 66, 30, None)));
    let slow = write(
        tmp.path(),
        "s30",
        &results("h", draw(34, 66, 30, Some((7, 1.3)))),
    );
    let o = isobench(&["compare".as_ref(), base.as_os_str(), slow.as_os_str()]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains(&metric(7).1) && e.matches("/noop/").count() == 1,
        "{e}"
    );
}
