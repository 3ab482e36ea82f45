//! The application workloads end to end (issue 12): `isobench run` with a tiny `redis` scenario
//! on bare, container (direct and NAT), runc, gVisor, LXC and Docker (host network and default
//! bridge), the server really running inside the tier and redis-benchmark on the host, with a
//! leak census before and after; a run interrupted mid-benchmark; and bad input, refused in one
//! line before anything is created.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn isobench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isobench"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

fn scenario(dir: &Path, workload: &str) -> std::path::PathBuf {
    let p = dir.join("apps.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"apps-test\"\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\nmemory_mib = 256\n[[workload]]\nkind = \"redis\"\n{workload}"
        ),
    )
    .unwrap();
    p
}

/// A scenario of two redis workloads with the same `params`: the direct path and the nat path.
fn scenario_both_paths(dir: &Path, params: &str) -> std::path::PathBuf {
    let p = dir.join("apps-both.toml");
    std::fs::write(
        &p,
        format!(
            "name = \"apps-test\"\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\nmemory_mib = 256\n\
             [[workload]]\nkind = \"redis\"\n{params}\n[[workload]]\nkind = \"redis\"\npath = \"nat\"\n{params}"
        ),
    )
    .unwrap();
    p
}

/// The redis binaries are here, else SKIPPED.
fn have_redis(test: &str) -> bool {
    for b in ["/usr/bin/redis-server", "/usr/bin/redis-benchmark"] {
        if !Path::new(b).is_file() {
            common::skip(
                test,
                &format!("{b} is missing (apt-get install redis-server redis-tools)"),
                "ISOBENCH_REQUIRE_PRIVILEGED",
            );
            return false;
        }
    }
    true
}

/// `isobench run` of `scenario` on `backends`; returns the exit status, stderr and results.
fn run(
    scenario: &Path,
    backends: &str,
    state: &Path,
    out_dir: &Path,
) -> (std::process::Output, serde_json::Value) {
    let out = isobench()
        .arg("run")
        .arg(scenario)
        .args([
            "--backends",
            backends,
            "--quiet",
            "--no-history",
            "--state-dir",
        ])
        .arg(state)
        .arg("--out")
        .arg(out_dir)
        .output()
        .unwrap();
    let r = std::fs::read(out_dir.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no results.json: {out:?}"));
    (out, r)
}

fn sample(r: &serde_json::Value, tier: &str, workload: &str, metric: &str) -> Option<f64> {
    r["samples"].as_array().unwrap().iter().find_map(|s| {
        (s["tier"] == tier && s["workload"] == workload && s["metric"] == metric)
            .then(|| s["value"].as_f64().unwrap())
    })
}

fn tier_record(r: &serde_json::Value, tier: &str) -> serde_json::Value {
    r["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == tier)
        .cloned()
        .unwrap_or_default()
}

/// Real figures for `workload` on `tier`: requests/s at both connection counts, a latency
/// percentile, the server's start time.
fn assert_served(r: &serde_json::Value, tier: &str, workload: &str, stderr: &str) {
    for m in ["set_rps_c1", "get_rps_c1", "set_rps_c4", "get_rps_c4"] {
        let v = sample(r, tier, workload, m)
            .unwrap_or_else(|| panic!("{tier} {workload} {m} missing: {stderr}"));
        assert!(v > 0.0, "{tier} {workload} {m} = {v}");
    }
    assert!(
        sample(r, tier, workload, "server_start_ms").is_some_and(|v| v > 0.0),
        "{tier} {workload}: no server_start_ms"
    );
    // redis-benchmark 7 prints percentiles in --csv.
    assert!(
        sample(r, tier, workload, "get_p99_ms_c4").is_some(),
        "{tier} {workload}: no p99"
    );
}

/// Docker's own NAT rules and isobench's containers (Docker keeps them outside the census).
fn docker_leftovers() -> (String, String) {
    (
        common::sh("iptables", &["-t", "nat", "-S"]),
        common::sh(
            "docker",
            &["ps", "-a", "-q", "--filter", "label=org.isobench.run"],
        ),
    )
}

/// redis-server processes on this host (pid list).
fn redis_servers() -> Vec<String> {
    common::sh("pgrep", &["-x", "redis-server"])
        .lines()
        .map(str::to_string)
        .collect()
}

fn refused(workload: &str) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = isobench()
        .arg("run")
        .arg(scenario(dir.path(), workload))
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
fn zero_connections_is_a_one_line_error() {
    let (e, left) = refused("connections = [1, 0]\n");
    assert!(e.contains("connections entry = 0"), "{e}");
    assert!(!left, "nothing may be created for a refused scenario");
}

#[test]
fn a_missing_server_names_the_package() {
    let (e, left) = refused("server_bin = \"/nonexistent/redis-server\"\n");
    assert!(
        e.contains("/nonexistent/redis-server")
            && e.contains("apt-get install redis-server redis-tools"),
        "{e}"
    );
    assert!(!left, "nothing may be created for a refused scenario");
    let (e, _) = refused("client_bin = \"/nonexistent/redis-benchmark\"\n");
    assert!(e.contains("client_bin"), "{e}");
}

#[test]
fn host_assigned_address_is_refused() {
    let (e, _) = refused("port = 6379\n");
    assert!(e.contains("`port` is assigned by the host"), "{e}");
}

#[test]
fn redis_on_every_container_tier_leaves_nothing() {
    let test = "redis_on_every_container_tier_leaves_nothing";
    if !common::privileged(test) || !have_redis(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = redis_servers();
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    let (out, r) = run(
        &scenario_both_paths(
            dir.path(),
            "connections = [1, 4]\nrequests = 300\npoint_timeout_s = 60\n",
        ),
        "bare,container,runc,gvisor,lxc",
        &state,
        &out_dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran = |tier: &str| tier_record(&r, tier)["status"] == "ran";
    assert!(ran("bare"), "bare did not run: {stderr}");
    assert_served(&r, "bare", "redis", &stderr);
    assert_served(&r, "bare", "redis_nat", &stderr);
    if ran("container") {
        assert_served(&r, "container", "redis", &stderr);
        // Through the run's bridge, a DNAT'd published port.
        assert_served(&r, "container", "redis_nat", &stderr);
    } else {
        println!("SKIPPED {test} (container part): the container tier did not run here: {stderr}");
    }
    for tier in ["runc", "gvisor", "lxc"] {
        let rec = tier_record(&r, tier);
        if rec["status"] == "ran" {
            assert_served(&r, tier, "redis", &stderr);
            // No NAT path of their own: said once, not a failed launch.
            assert!(sample(&r, tier, "redis_nat", "set_rps_c1").is_none());
            assert!(
                rec["note"]
                    .as_str()
                    .is_some_and(|n| n.contains("no NAT path of its own")),
                "{rec}"
            );
        } else {
            println!("SKIPPED {test} ({tier} part): {}", rec["note"]);
        }
        assert!(
            rec["failures"].as_array().is_none_or(|f| f.is_empty()),
            "{rec}"
        );
    }
    assert!(out.status.success(), "{stderr}");
    assert_eq!(redis_servers(), servers_before, "a redis-server was left");
    common::assert_census_settles(test, &before, &[&state]);
}

#[test]
fn redis_on_docker_host_and_bridge_leaves_nothing() {
    let test = "redis_on_docker_host_and_bridge_leaves_nothing";
    if !have_redis(test) {
        return;
    }
    let Ok(_own) = common::dockerd::dockerd_if_needed(test, "/tmp/isobench-test-dockerd-apps.log")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = redis_servers();
    let docker_before = docker_leftovers();
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    let (out, r) = run(
        &scenario_both_paths(
            dir.path(),
            "connections = [1, 4]\nrequests = 300\npoint_timeout_s = 60\n",
        ),
        "docker",
        &state,
        &out_dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(tier_record(&r, "docker")["status"], "ran", "{stderr}");
    // --network host, and the default bridge with a published port.
    assert_served(&r, "docker", "redis", &stderr);
    assert_served(&r, "docker", "redis_nat", &stderr);
    assert!(out.status.success(), "{stderr}");
    assert_eq!(redis_servers(), servers_before, "a redis-server was left");
    let deadline = Instant::now() + Duration::from_secs(10);
    while docker_leftovers() != docker_before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        docker_leftovers(),
        docker_before,
        "a container or a published port's DNAT rule was left"
    );
    common::assert_census_settles(test, &before, &[&state]);
}

/// Ctrl-C while redis-benchmark runs: the run stops (exit 130), the benchmark is killed, the
/// server, the container, its veth pair and the NAT path's table and DNAT rule are gone.
#[test]
fn an_interrupted_benchmark_leaves_nothing() {
    let test = "an_interrupted_benchmark_leaves_nothing";
    if !common::privileged(test) || !have_redis(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = redis_servers();
    let before = common::census(&[&state]);
    let p = dir.path().join("long.toml");
    // Far more requests than the test waits for: the benchmark is surely running at the signal.
    std::fs::write(
        &p,
        "name = \"apps-test\"\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\nmemory_mib = 256\n\
         [[workload]]\nkind = \"redis\"\npath = \"nat\"\nconnections = [1]\nrequests = 50000000\npoint_timeout_s = 300\n",
    )
    .unwrap();
    let mut g = common::Guard::default();
    let i = g.spawn(
        isobench()
            .arg("run")
            .arg(&p)
            .args([
                "--backends",
                "container",
                "--quiet",
                "--no-history",
                "--state-dir",
            ])
            .arg(&state)
            .arg("--out")
            .arg(dir.path().join("out"))
            .stdout(Stdio::null())
            .stderr(Stdio::piped()),
    );
    let pid = g.pid(i).to_string();
    let deadline = Instant::now() + Duration::from_secs(120);
    let bench = loop {
        let b = common::sh("pgrep", &["-P", &pid, "-x", "redis-benchmark"]);
        if let Some(b) = b.lines().next() {
            break b.trim().to_string();
        }
        if Instant::now() > deadline || g.child(i).try_wait().unwrap().is_some() {
            let (code, _, err) = g.output_bounded(i, Duration::from_secs(30));
            println!("SKIPPED {test}: the benchmark never started (exit {code}): {err}");
            assert!(
                std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{test}: {err}"
            );
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // Let it run a little, then Ctrl-C the harness alone (its own process group).
    std::thread::sleep(Duration::from_millis(500));
    g.signal(i, nix::sys::signal::Signal::SIGINT);
    let (code, _, err) = g.output_bounded(i, Duration::from_secs(60));
    assert_eq!(code, 130, "{err}");
    let gone = |pid: &str| !Path::new(&format!("/proc/{pid}")).exists();
    assert!(gone(&bench), "redis-benchmark {bench} outlived the run");
    assert_eq!(redis_servers(), servers_before, "a redis-server was left");
    common::assert_census_settles(test, &before, &[&state]);
}

#[test]
fn a_server_that_never_answers_fails_its_launch_and_leaves_nothing() {
    let test = "a_server_that_never_answers_fails_its_launch_and_leaves_nothing";
    if !common::privileged(test) {
        return;
    }
    if !Path::new("/usr/bin/redis-benchmark").is_file() {
        common::skip(
            test,
            "redis-benchmark is missing",
            "ISOBENCH_REQUIRE_PRIVILEGED",
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    // `true` exits at once: the server never accepts a connection.
    let out = isobench()
        .arg("run")
        .arg(scenario(
            dir.path(),
            "connections = [1]\nrequests = 10\nstart_timeout_s = 1\nserver_bin = \"/bin/true\"\n",
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
        failures.contains("did not accept connections") && failures.contains("start_timeout_s = 1"),
        "{failures}"
    );
    common::assert_census_settles(test, &before, &[&state]);
}
