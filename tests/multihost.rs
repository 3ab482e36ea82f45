//! Results beyond one machine, through the real binary: a merged report of two runs with
//! different labels (and Chromium rendering it), `compare` across hosts, history label filters,
//! `history export/import` (round trip, idempotent), a history database written by the previous
//! schema, a live labelled run, and the CI workflow example passing a GitHub Actions linter.
//!
//! The runs in tests/fixtures/multihost/ are real (`isobench run tests/fixtures/multihost/noop.toml
//! --backends bare,chroot --label class=a|b --label kernel=debian12`, 5 runs per tier), trimmed to
//! results.json; history-v1.sqlite was written by isobench before labels (history schema 1).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/multihost")
}

fn isobench(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_isobench"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("running isobench")
}

fn ok(out: &Output) -> String {
    assert!(
        out.status.success(),
        "isobench failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A temp dir holding copies of the fixture runs `run-a` and `run-b`.
fn runs() -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for r in ["run-a", "run-b"] {
        std::fs::create_dir(dir.path().join(r)).unwrap();
        std::fs::copy(
            fixtures().join(r).join("results.json"),
            dir.path().join(r).join("results.json"),
        )
        .unwrap();
    }
    dir
}

const COL_A: &str = "vm [class=a,kernel=debian12]";
const COL_B: &str = "vm [class=b,kernel=debian12]";

fn run_id(dir: &Path) -> String {
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("results.json")).unwrap()).unwrap();
    v["run_id"].as_str().unwrap().to_string()
}

#[test]
fn merged_report_shows_both_runs_side_by_side() {
    let d = runs();
    let out = ok(&isobench(
        &["report", "run-a", "run-b", "--out", "merged"],
        d.path(),
    ));
    assert!(out.contains("merged report of 2 runs"), "{out}");
    let html = std::fs::read_to_string(d.path().join("merged/index.html")).unwrap();
    // One header cell per run in each of the three tables: claims, ratios, hosts.
    for (i, col) in [COL_A, COL_B].iter().enumerate() {
        let th = format!("<th class=\"run\" data-run=\"{i}\">{col}</th>");
        assert_eq!(html.matches(&th).count(), 3, "{th}");
    }
    for id in ["merged-claims", "merged-ratios", "merged-hosts"] {
        assert!(html.contains(&format!("id=\"{id}\"")), "{id}");
    }
    // The chroot tier's startup ratio to bare, for both runs, on one row; host facts beside.
    let row = html
        .lines()
        .find(|l| l.contains("<td>noop</td><td>launch_to_exit_ms</td><td>chroot</td>"))
        .expect("the chroot startup row");
    assert_eq!(row.matches("<td class=\"num\">").count(), 2, "{row}");
    assert_eq!(row.matches('×').count(), 2, "{row}");
    assert!(html.contains(
        "<th>KVM</th><td>paravirtual only (kvm_pvm)</td><td>paravirtual only (kvm_pvm)</td>"
    ));
    assert!(html.contains("<th>cgroup layout</th>"));
    assert!(html.contains("<svg"), "the startup chart is inlined");
    assert!(d.path().join("merged/charts/merged-startup.png").is_file());

    let md = std::fs::read_to_string(d.path().join("merged/summary.md")).unwrap();
    assert!(
        md.contains(&format!("| # | claim | {COL_A} | {COL_B} |")),
        "{md}"
    );
    let claim4 = md.lines().find(|l| l.starts_with("| 4 |")).unwrap();
    assert!(claim4.ends_with("| supported | supported |"), "{claim4}");
    assert!(md.contains("| labels | class=a,kernel=debian12 | class=b,kernel=debian12 |"));

    // One run: today's report, in the run's own folder.
    ok(&isobench(&["report", "run-a"], d.path()));
    let single = std::fs::read_to_string(d.path().join("run-a/index.html")).unwrap();
    assert!(!single.contains("side by side"));
    assert!(single.contains("id=\"claims-table\""));
    // --out with one run is refused, with what to do.
    let e = isobench(&["report", "run-a", "--out", "x"], d.path());
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("two or more runs"));
}

#[test]
fn merged_report_renders_in_chromium() {
    let test = "merged_report_renders_in_chromium";
    let Some(browser) = ["chromium", "chromium-browser"]
        .iter()
        .find_map(|b| isobench::host::facts::which(b))
    else {
        return common::skip(
            test,
            "chromium not installed (apt-get install chromium)",
            "ISOBENCH_REQUIRE_PRIVILEGED",
        );
    };
    let d = runs();
    ok(&isobench(
        &["report", "run-a", "run-b", "--out", "merged"],
        d.path(),
    ));
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("timeout")
        .args(["--kill-after=5", "90"])
        .arg(&browser)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--disable-dev-shm-usage",
            "--dump-dom",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(format!(
            "file://{}",
            d.path().join("merged/index.html").display()
        ))
        .output()
        .expect("running chromium");
    assert!(
        out.status.success(),
        "chromium failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let dom = String::from_utf8_lossy(&out.stdout);
    for (i, col) in [COL_A, COL_B].iter().enumerate() {
        assert_eq!(
            dom.matches(&format!("data-run=\"{i}\">{col}</th>")).count(),
            3,
            "column {col} missing from the DOM"
        );
    }
    assert!(dom.contains("id=\"merged-ratios\"") && dom.contains("<svg"));
}

#[test]
fn compare_across_hosts_prints_both_hosts() {
    let d = runs();
    // The same run as if measured on another machine (only the host's facts differ).
    let p = d.path().join("run-b/results.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    v["host"]["hostname"] = "other-host".into();
    v["host"]["cpu_model"] = "Other CPU 9000".into();
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let out = isobench(&["compare", "run-a", "run-b"], d.path());
    // 3: five runs per side cannot be significant (docs/ci.md); the comparison itself works.
    assert_eq!(out.status.code(), Some(3), "{out:?}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("the runs come from different hosts"), "{err}");
    assert!(err.contains("base  vm: "), "{err}");
    assert!(err.contains("new   other-host: Other CPU 9000, "), "{err}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("different hosts (vm vs other-host)"),
        "{stdout}"
    );
    // And the merged report of the two hosts says so.
    ok(&isobench(
        &["report", "run-a", "run-b", "--out", "m"],
        d.path(),
    ));
    let md = std::fs::read_to_string(d.path().join("m/summary.md")).unwrap();
    assert!(md.contains("different hosts"), "{md}");
    assert!(md.contains("other-host [class=b,kernel=debian12]"), "{md}");
}

fn history_lines(d: &Path, db: &str, extra: &[&str]) -> String {
    let mut args = vec!["history", "--history", db];
    args.extend_from_slice(extra);
    ok(&isobench(&args, d))
}

#[test]
fn history_import_export_round_trip_and_label_filter() {
    let d = runs();
    let (a, b) = (
        run_id(&d.path().join("run-a")),
        run_id(&d.path().join("run-b")),
    );
    let first = history_lines(
        d.path(),
        "one.sqlite",
        &["import", "run-a", "run-b/results.json"],
    );
    assert!(first.contains("2 run(s) added, 0 skipped"), "{first}");
    let again = history_lines(d.path(), "one.sqlite", &["import", "run-a", "run-b"]);
    assert!(again.contains("0 run(s) added, 2 skipped"), "{again}");

    let all = history_lines(d.path(), "one.sqlite", &[]);
    assert!(all.contains(&a) && all.contains(&b), "{all}");
    let only_b = history_lines(d.path(), "one.sqlite", &["--label", "class=b"]);
    assert!(only_b.contains(&b) && !only_b.contains(&a), "{only_b}");
    assert!(
        only_b.contains("labels class=b,kernel=debian12"),
        "{only_b}"
    );
    let both = history_lines(
        d.path(),
        "one.sqlite",
        &[
            "--label",
            "kernel=debian12",
            "--host",
            "vm",
            "--scenario",
            "multihost-noop",
        ],
    );
    assert!(both.contains(&a) && both.contains(&b), "{both}");
    let none = isobench(
        &["history", "--history", "one.sqlite", "--host", "nowhere"],
        d.path(),
    );
    assert_eq!(none.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&none.stderr).contains("no run in one.sqlite matches host nowhere")
    );

    // Export (filtered and whole), import into a second database twice: stored once.
    history_lines(
        d.path(),
        "one.sqlite",
        &["--label", "class=a", "export", "a.jsonl"],
    );
    assert_eq!(
        std::fs::read_to_string(d.path().join("a.jsonl"))
            .unwrap()
            .lines()
            .count(),
        1
    );
    history_lines(d.path(), "one.sqlite", &["export", "all.jsonl"]);
    let exported = std::fs::read_to_string(d.path().join("all.jsonl")).unwrap();
    assert_eq!(exported.lines().count(), 2);
    for _ in 0..2 {
        history_lines(d.path(), "two.sqlite", &["import", "all.jsonl", "a.jsonl"]);
    }
    let conn = rusqlite::Connection::open(d.path().join("two.sqlite")).unwrap();
    let runs: Vec<(String, String, String)> = conn
        .prepare("SELECT run_id, host, labels FROM runs ORDER BY id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(
        runs,
        [
            (
                a.clone(),
                "vm".to_string(),
                "class=a,kernel=debian12".to_string()
            ),
            (
                b.clone(),
                "vm".to_string(),
                "class=b,kernel=debian12".to_string()
            )
        ]
    );
    // The round trip keeps every sample.
    let count = |db: &str| -> i64 {
        rusqlite::Connection::open(d.path().join(db))
            .unwrap()
            .query_row("SELECT count(*) FROM samples", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(count("one.sqlite"), count("two.sqlite"));
    assert!(count("two.sqlite") >= 2 * 2 * 5 * 5);
    let re = ok(&isobench(
        &["history", "--history", "two.sqlite", "export", "-"],
        d.path(),
    ));
    assert_eq!(re, exported, "export → import → export is the same file");

    // A file that is not an export says what to give.
    std::fs::write(d.path().join("junk.jsonl"), "hello\n").unwrap();
    let e = isobench(
        &["history", "--history", "two.sqlite", "import", "junk.jsonl"],
        d.path(),
    );
    assert_eq!(e.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&e.stderr).contains("history export"));
}

#[test]
fn history_database_of_schema_1_migrates() {
    let d = tempfile::tempdir().unwrap();
    let db = d.path().join("old.sqlite");
    std::fs::copy(fixtures().join("history-v1.sqlite"), &db).unwrap();
    let version = |db: &Path| -> i64 {
        rusqlite::Connection::open(db)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap()
    };
    assert_eq!(version(&db), 1, "the fixture is a schema 1 database");
    let out = history_lines(d.path(), "old.sqlite", &[]);
    assert!(out.contains("host vm scenario multihost-noop"), "{out}");
    assert!(!out.contains("labels "), "an old run has no labels: {out}");
    assert_eq!(version(&db), 2);
    // The old run and a new labelled one live together; the filter finds only the new one.
    let runs = runs();
    let out = history_lines(
        d.path(),
        "old.sqlite",
        &["import", runs.path().join("run-a").to_str().unwrap()],
    );
    assert!(out.contains("1 run(s) added"), "{out}");
    let a = run_id(&runs.path().join("run-a"));
    let only = history_lines(d.path(), "old.sqlite", &["--label", "class=a"]);
    assert!(
        only.contains(&a) && only.lines().filter(|l| l.starts_with("  #")).count() == 1,
        "{only}"
    );
    let all = history_lines(d.path(), "old.sqlite", &[]);
    assert_eq!(
        all.lines().filter(|l| l.starts_with("  #")).count(),
        2,
        "{all}"
    );
    // The old run exports and reads back with no labels.
    history_lines(d.path(), "old.sqlite", &["export", "x.jsonl"]);
    let first = std::fs::read_to_string(d.path().join("x.jsonl")).unwrap();
    let v: serde_json::Value = serde_json::from_str(first.lines().next().unwrap()).unwrap();
    assert!(v["results"].get("labels").is_none());
    assert_eq!(v["results"]["host"]["hostname"], "vm");
}

/// A real run (bare, and chroot as root), labelled: the labels land in results.json and in the
/// history, and a bad label is refused before anything is created.
#[test]
fn live_run_carries_its_labels() {
    let d = tempfile::tempdir().unwrap();
    let root = nix::unistd::geteuid().is_root();
    let tiers = if root { "bare,chroot" } else { "bare" };
    let scenario = fixtures().join("noop.toml");
    let scenario = scenario.to_str().unwrap();
    let state = d.path().join("state");
    let state = state.to_str().unwrap();
    let bad = isobench(
        &[
            "run",
            scenario,
            "--label",
            "Host Class=x",
            "--out",
            "bad",
            "--state-dir",
            state,
            "-q",
        ],
        d.path(),
    );
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("give key=value"));
    assert!(!d.path().join("bad").exists() && !d.path().join("state").exists());

    ok(&isobench(
        &[
            "run",
            scenario,
            "--backends",
            tiers,
            "--label",
            "host_class=test",
            "--label",
            "live",
            "--out",
            "out",
            "--history",
            "h.sqlite",
            "--state-dir",
            state,
            "-q",
        ],
        d.path(),
    ));
    let v: serde_json::Value =
        serde_json::from_slice(&std::fs::read(d.path().join("out/results.json")).unwrap()).unwrap();
    assert_eq!(
        v["labels"],
        serde_json::json!({"host_class": "test", "label": "live"})
    );
    assert_eq!(v["schema_version"], 4);
    let h = history_lines(d.path(), "h.sqlite", &["--label", "live"]);
    assert!(h.contains("labels host_class=test,label=live"), "{h}");
}

fn check_jsonschema() -> Option<PathBuf> {
    let local = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/lint-venv/bin/check-jsonschema");
    isobench::host::facts::which("check-jsonschema").or_else(|| local.is_file().then_some(local))
}

/// docs/examples/isobench-matrix.yml is a valid GitHub Actions workflow (the schema GitHub
/// publishes, as vendored by check-jsonschema; ./dev installs it) and does what docs/ci.md says.
#[test]
fn ci_matrix_workflow_lints() {
    let wf = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/examples/isobench-matrix.yml");
    let text = std::fs::read_to_string(&wf).unwrap();
    for must in [
        "ISOBENCH_REQUIRE_KVM",
        "microvm",
        "upload-artifact",
        "download-artifact",
        "history --history merged/history.sqlite import",
        "isobench report",
        "--label",
    ] {
        assert!(text.contains(must), "the workflow lacks {must}");
    }
    let doc =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/ci.md")).unwrap();
    assert!(
        doc.contains(&text),
        "docs/ci.md must show docs/examples/isobench-matrix.yml verbatim"
    );
    let Some(lint) = check_jsonschema() else {
        return common::skip(
            "ci_matrix_workflow_lints",
            "check-jsonschema not installed (./dev setup installs it into target/lint-venv)",
            "ISOBENCH_REQUIRE_PRIVILEGED",
        );
    };
    let run = |file: &Path| {
        Command::new("timeout")
            .args(["--kill-after=5", "120"])
            .arg(&lint)
            .args(["--builtin-schema", "vendor.github-workflows"])
            .arg(file)
            .output()
            .expect("running check-jsonschema")
    };
    let out = run(&wf);
    assert!(
        out.status.success(),
        "the workflow does not validate:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // The linter really checks: a misspelt key fails.
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("bad.yml");
    std::fs::write(
        &bad,
        text.replacen(
            "runs-on: ${{ matrix.runner }}",
            "run-on: ${{ matrix.runner }}",
            1,
        ),
    )
    .unwrap();
    assert!(
        !run(&bad).status.success(),
        "a broken workflow passed the linter"
    );
}
