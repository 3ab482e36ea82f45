//! The command line as a user meets it: bad input gets one clear line and exit code 2; a bare
//! run writes both result files with the documented shape.

use std::process::Command;

fn isobench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isobench"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn stderr_of(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn unknown_tier_is_one_line_error() {
    let out = isobench()
        .args(["run", "--backends", "bare,vmware"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr_of(&out);
    assert!(
        e.contains("unknown tier 'vmware'") && e.contains("use one of"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

#[test]
fn malformed_scenario_is_one_line_error() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(
        &p,
        "name = 'bad'\n[defaults]\nrnus = 3\n[[workload]]\nkind = 'noop'\n",
    )
    .unwrap();
    let out = isobench().arg("run").arg(&p).output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let e = stderr_of(&out);
    assert!(
        e.contains("bad.toml") && e.contains("rnus") && e.contains("fix the scenario file"),
        "{e}"
    );
    assert_eq!(e.trim().lines().count(), 1, "{e}");

    let out = isobench()
        .args(["run", "/nonexistent/scenario.toml"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("cannot read scenario"));
}

#[test]
fn missing_kernel_file_is_an_error() {
    let out = isobench()
        .args([
            "run",
            "--backends",
            "bare",
            "--kernel",
            "/nonexistent/vmlinuz",
        ])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr_of(&out).contains("no such file"));
}

#[test]
fn doctor_json_lists_every_tier() {
    let out = isobench().args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tiers: Vec<&str> = v["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["tier"].as_str().unwrap())
        .collect();
    assert_eq!(
        tiers,
        [
            "bare",
            "chroot",
            "container",
            "runc",
            "crun",
            "docker",
            "lxc",
            "gvisor",
            "microvm",
            "firecracker",
            "cloud-hypervisor",
            "emulated"
        ]
    );
    assert_eq!(v["tiers"][0]["status"], "available");
    for t in v["tiers"].as_array().unwrap() {
        if t["status"] == "unavailable" {
            assert!(
                !t["reason"].as_str().unwrap().is_empty() && !t["fix"].as_str().unwrap().is_empty(),
                "{t}"
            );
        }
    }
    assert!(v["host"]["cgroup_layout"].is_string());
}

#[test]
fn bare_run_writes_results_and_samples() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let state = dir.path().join("state");
    let out = isobench()
        .args([
            "run",
            "scenarios/startup.toml",
            "--backends",
            "bare",
            "-n",
            "5",
            "--quiet",
            "--out",
        ])
        .arg(&out_dir)
        .arg("--state-dir")
        .arg(&state)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr_of(&out));
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap()).unwrap();
    assert_eq!(r["schema_version"], 1);
    assert_eq!(r["interrupted"], false);
    assert_eq!(r["tiers"][0]["tier"], "bare");
    assert_eq!(r["tiers"][0]["status"], "ran");
    let samples = r["samples"].as_array().unwrap();
    let exits: Vec<f64> = samples
        .iter()
        .filter(|s| s["metric"] == "launch_to_exit_ms")
        .map(|s| s["value"].as_f64().unwrap())
        .collect();
    assert_eq!(exits.len(), 5);
    assert!(exits.iter().all(|v| v.is_finite() && *v > 0.0));
    let sum = r["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metric"] == "launch_to_ready_ms")
        .unwrap()
        .clone();
    assert!(sum["ci_low"].as_f64().unwrap() <= sum["median"].as_f64().unwrap());
    assert!(sum["median"].as_f64().unwrap() <= sum["ci_high"].as_f64().unwrap());
    // The ready instant comes before the exit instant.
    let ready = sum["median"].as_f64().unwrap();
    let exit = r["summaries"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["metric"] == "launch_to_exit_ms")
        .unwrap()["median"]
        .as_f64()
        .unwrap();
    assert!(ready <= exit);
    let csv = std::fs::read_to_string(out_dir.join("samples.csv")).unwrap();
    assert_eq!(
        csv.lines().next().unwrap(),
        "tier,workload,metric,unit,better,round,value"
    );
    assert_eq!(csv.lines().count() - 1, samples.len());
    // The run's ledger directory is gone: nothing left behind.
    let runs: Vec<_> = std::fs::read_dir(state.join("runs")).unwrap().collect();
    assert!(runs.is_empty(), "state left behind: {runs:?}");
}

#[test]
fn agent_refuses_to_outlive_a_dead_parent() {
    // The bare tier spawns without a pre-exec hook; the agent arms PR_SET_PDEATHSIG itself and
    // exits at once when its parent is not the harness that launched it.
    let out = Command::new(env!("CARGO_BIN_EXE_isobench-agent"))
        .env("ISOBENCH_TASK", r#"{"workload":{"kind":"noop"}}"#)
        .env("ISOBENCH_PARENT", "1")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(125));
    let out = Command::new(env!("CARGO_BIN_EXE_isobench-agent"))
        .env("ISOBENCH_TASK", r#"{"workload":{"kind":"noop"}}"#)
        .env("ISOBENCH_PARENT", std::process::id().to_string())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ISOBENCH-RESULT"));
}
