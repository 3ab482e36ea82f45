//! The `mysql` application workload end to end (issue 12): `isobench run` with a tiny scenario
//! on bare and container, data on the rootfs and on a volume (mariadbd really runs inside the
//! tier, sysbench on the host), with a leak census before and after (no mariadbd, data
//! directory, mount, veth or cgroup left); the report's applications section with the study's
//! ratios; and bad input, refused in one line before anything is created.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const SERVER: &str = "/usr/sbin/mariadbd";
const CLIENT: &str = "/usr/bin/sysbench";

fn isobench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isobench"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn scenario(dir: &Path, workloads: &[&str]) -> PathBuf {
    let p = dir.join("mysql.toml");
    let mut s = String::from("name = \"mysql-test\"\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\nmemory_mib = 512\n");
    for w in workloads {
        s.push_str("[[workload]]\nkind = \"mysql\"\n");
        s.push_str(w);
    }
    std::fs::write(&p, s).unwrap();
    p
}

/// mariadbd processes on this host (pid list).
fn servers() -> Vec<String> {
    common::sh("pgrep", &["-x", "mariadbd"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Directories named like the agent's data directory anywhere under `root`.
fn data_dirs(root: &Path) -> Vec<PathBuf> {
    let mut found = vec![];
    let mut todo = vec![root.to_path_buf()];
    while let Some(d) = todo.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir() && !t.is_symlink()) {
                if e.file_name() == "isobench-mysql" {
                    found.push(e.path());
                }
                todo.push(e.path());
            }
        }
    }
    found
}

fn refused(workload: &str) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = isobench()
        .arg("run")
        .arg(scenario(dir.path(), &[workload]))
        .args([
            "--backends",
            "bare",
            "--quiet",
            "--no-history",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--out")
        .arg(dir.path().join("out"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let e = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(e.lines().count(), 1, "{e}");
    (e, state.exists() || dir.path().join("out").exists())
}

#[test]
fn zero_threads_is_a_one_line_error() {
    let (e, left) = refused("threads = [1, 0]\n");
    assert!(e.contains("threads entry = 0"), "{e}");
    assert!(!left, "nothing may be created for a refused scenario");
}

#[test]
fn a_missing_server_names_the_packages() {
    let (e, left) = refused("server_bin = \"/nonexistent/mariadbd\"\n");
    assert!(
        e.contains("/nonexistent/mariadbd")
            && e.contains("apt-get install mariadb-server sysbench"),
        "{e}"
    );
    assert!(!left, "nothing may be created for a refused scenario");
    let (e, _) = refused("client_bin = \"/nonexistent/sysbench\"\n");
    assert!(e.contains("client_bin"), "{e}");
    let (e, _) = refused("dir = \"/tmp\"\n");
    assert!(e.contains("`dir`"), "{e}");
}

#[test]
fn mysql_on_bare_and_container_rootfs_and_volume_leaves_nothing() {
    let test = "mysql_on_bare_and_container_rootfs_and_volume_leaves_nothing";
    if !common::privileged(test) {
        return;
    }
    for b in [SERVER, CLIENT] {
        if !Path::new(b).is_file() {
            common::skip(
                test,
                &format!("{b} is missing (apt-get install mariadb-server sysbench)"),
                "ISOBENCH_REQUIRE_PRIVILEGED",
            );
            return;
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = servers();
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    let tiny = "threads = [1, 2]\ntable_rows = 500\npoint_s = 1\npoint_events = 200\npoint_timeout_s = 60\n";
    let out = isobench()
        .arg("run")
        .arg(scenario(
            dir.path(),
            &[
                &format!("data = \"rootfs\"\n{tiny}"),
                &format!("data = \"volume\"\n{tiny}"),
            ],
        ))
        .args([
            "--backends",
            "bare,container",
            "--quiet",
            "--no-history",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let r: serde_json::Value = serde_json::from_slice(
        &std::fs::read(out_dir.join("results.json")).unwrap_or_else(|e| panic!("{e}: {out:?}")),
    )
    .unwrap();
    let value = |tier: &str, workload: &str, metric: &str| -> Option<f64> {
        r["samples"].as_array().unwrap().iter().find_map(|s| {
            (s["tier"] == tier && s["workload"] == workload && s["metric"] == metric)
                .then(|| s["value"].as_f64().unwrap())
        })
    };
    let ran = |tier: &str| {
        r["tiers"]
            .as_array()
            .unwrap()
            .iter()
            .any(|t| t["tier"] == tier && t["status"] == "ran")
    };
    assert!(ran("bare"), "bare did not run: {stderr}");
    let mut tiers = vec!["bare"];
    if ran("container") {
        tiers.push("container");
    } else {
        println!("SKIPPED {test} (container part): the container tier did not run here: {stderr}");
    }
    for tier in &tiers {
        for workload in ["mysql", "mysql_volume"] {
            for m in ["tps_t1", "tps_t2", "lat_p95_ms_t2", "server_start_ms"] {
                let v = value(tier, workload, m)
                    .unwrap_or_else(|| panic!("{tier} {workload} {m} missing: {stderr}"));
                assert!(v > 0.0, "{tier} {workload} {m} = {v}");
            }
        }
    }
    let failures: Vec<String> = r["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["failures"].as_array().cloned().unwrap_or_default())
        .map(|f| f.to_string())
        .collect();
    assert!(failures.is_empty(), "{failures:?}");
    // The report's applications section, with the study's ratios from felter2015.toml.
    let html = std::fs::read_to_string(out_dir.join("index.html")).unwrap();
    assert!(html.contains("<section id=\"apps\">"), "no apps section");
    assert!(
        html.contains("Docker NAT, layered fs (AUFS) 0.855")
            && html.contains("Docker net=host, volume 0.982")
            && html.contains("KVM (qcow2) 0.422"),
        "the study's MySQL ratios are missing from the apps section"
    );
    assert!(html.contains("MySQL, data on a volume: tps vs threads"));
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(md.contains("### Applications beside the study"), "{md}");
    if tiers.contains(&"container") {
        assert!(md.contains("| container | "), "{md}");
    }
    assert_eq!(servers(), servers_before, "a mariadbd was left");
    assert!(
        data_dirs(dir.path()).is_empty(),
        "a data directory was left: {:?}",
        data_dirs(dir.path())
    );
    common::assert_census_settles(test, &before, &[&state]);
}

#[test]
fn a_server_that_never_accepts_fails_its_launch_and_leaves_nothing() {
    let test = "a_server_that_never_accepts_fails_its_launch_and_leaves_nothing";
    if !common::privileged(test) {
        return;
    }
    if !Path::new(CLIENT).is_file() {
        common::skip(test, "sysbench is missing", "ISOBENCH_REQUIRE_PRIVILEGED");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    // `true` initializes nothing and serves nothing: the data directory's initialization
    // "succeeds", the server exits at once and never accepts a connection.
    let out = isobench()
        .arg("run")
        .arg(scenario(
            dir.path(),
            &["threads = [1]\nstart_timeout_s = 2\nserver_bin = \"/bin/true\"\n"],
        ))
        .args([
            "--backends",
            "bare",
            "--quiet",
            "--no-history",
            "--state-dir",
        ])
        .arg(&state)
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let r: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out_dir.join("results.json")).unwrap())
            .unwrap_or_else(|e| panic!("{e}: {out:?}"));
    let failures = r["tiers"][0]["failures"].to_string();
    assert!(
        failures.contains("did not accept connections") && failures.contains("start_timeout_s = 2"),
        "{failures}"
    );
    assert!(
        data_dirs(dir.path()).is_empty(),
        "a data directory was left"
    );
    common::assert_census_settles(test, &before, &[&state]);
}
