//! The application workloads end to end (issue 12): `isobench run` with a tiny `redis` scenario
//! on bare, container (direct and NAT), runc, gVisor, LXC and Docker (host network and default
//! bridge), the server really running inside the tier and redis-benchmark on the host, with a
//! leak census before and after; a run interrupted mid-benchmark; bad input, refused in one
//! line before anything is created; and `Backend::prepare_server` (redis and mysql, docker and
//! runc, in-process): what a server start needs exists before the first start, which then uses
//! it.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::apps::{
    assert_docker_settles, docker_leftovers, isobench, processes, run, sample, tier_record,
};
use common::tiers::{budget, run_env};
use isobench::backend::{registry, Backend};
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::ledger::StateDir;
use isobench::workload::{MysqlParams, RedisParams, Workload};

/// A scenario of one redis workload.
fn scenario(dir: &Path, workload: &str) -> std::path::PathBuf {
    common::apps::scenario(dir, "apps.toml", 256, "redis", &[workload])
}

/// A scenario of two redis workloads with the same `params`: the direct path and the nat path.
fn scenario_both_paths(dir: &Path, params: &str) -> std::path::PathBuf {
    common::apps::scenario(
        dir,
        "apps-both.toml",
        256,
        "redis",
        &[params, &format!("path = \"nat\"\n{params}")],
    )
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

/// redis-server processes on this host (pid list).
fn redis_servers(ours: &Path) -> Vec<String> {
    processes("redis-server", ours)
}

fn refused(workload: &str) -> (String, bool) {
    common::apps::refused(|dir| scenario(dir, workload))
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
    let servers_before = redis_servers(dir.path());
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
    assert_eq!(
        redis_servers(dir.path()),
        servers_before,
        "a redis-server was left"
    );
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
    let servers_before = redis_servers(dir.path());
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
    assert_eq!(
        redis_servers(dir.path()),
        servers_before,
        "a redis-server was left"
    );
    assert_docker_settles(&docker_before);
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
    let servers_before = redis_servers(dir.path());
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
    assert_eq!(
        redis_servers(dir.path()),
        servers_before,
        "a redis-server was left"
    );
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
    let (_, r) = run(
        &scenario(
            dir.path(),
            "connections = [1]\nrequests = 10\nstart_timeout_s = 1\nserver_bin = \"/bin/true\"\n",
        ),
        "bare",
        &state,
        &out_dir,
    );
    let failures = r["tiers"][0]["failures"].to_string();
    assert!(
        failures.contains("did not accept connections") && failures.contains("start_timeout_s = 1"),
        "{failures}"
    );
    common::assert_census_settles(test, &before, &[&state]);
}

/// The two application tasks `prepare_server` is tried with (mysql: one thread, the default
/// buffer pool, within the 512 MiB budget).
fn app_tasks() -> [Task; 2] {
    [
        Task::new(Workload::Redis(RedisParams::default())),
        Task::new(Workload::Mysql(MysqlParams {
            threads: vec![1],
            ..MysqlParams::default()
        })),
    ]
}

/// Both servers' binaries are here, else SKIPPED.
fn have_servers(test: &str) -> bool {
    for b in ["/usr/bin/redis-server", "/usr/sbin/mariadbd"] {
        if !Path::new(b).is_file() {
            common::skip(
                test,
                &format!("{b} is missing (apt-get install redis-server mariadb-server)"),
                "ISOBENCH_REQUIRE_PRIVILEGED",
            );
            return false;
        }
    }
    true
}

/// Prepare `tier` in-process under a fresh state directory, run `body`, finish it (also after
/// a failed assertion), then: the ledger is empty and the host is as before.
fn with_backend(test: &str, tier: Tier, body: impl FnOnce(&mut dyn Backend, &str, &Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let before = common::census(&[tmp.path()]);
    let env = run_env(&sd, "apps-prep", tmp.path(), budget(1, 512));
    let mut b = registry::make(tier, &env).unwrap_or_else(|e| panic!("{test}: {e}"));
    let res = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        body(&mut *b, &env.state.id, &env.state.scratch())
    }));
    let fin = b.finish();
    if let Err(e) = res {
        std::panic::resume_unwind(e);
    }
    fin.unwrap();
    assert_eq!(
        env.state.resources(),
        vec![],
        "{test}: the ledger is not empty"
    );
    common::assert_census_settles(test, &before, &[tmp.path()]);
}

/// The server accepts a TCP connection at `addr` (within 60 s).
fn accepts(addr: std::net::SocketAddr) -> bool {
    common::poll(Duration::from_secs(60), || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()
    })
    .is_some()
}

#[test]
fn prepare_server_installs_the_server_into_the_runc_rootfs() {
    let test = "prepare_server_installs_the_server_into_the_runc_rootfs";
    if !common::privileged(test) || !have_servers(test) {
        return;
    }
    if let isobench::model::availability::Availability::Unavailable { reason, fix } =
        registry::availability(
            Tier::Runc,
            &isobench::model::facts::HostFacts::detect(),
            &isobench::backend::BackendOptions::default(),
        )
    {
        common::skip(
            test,
            &format!("{reason} ({fix})"),
            "ISOBENCH_REQUIRE_PRIVILEGED",
        );
        return;
    }
    with_backend(test, Tier::Runc, |b, _, scratch| {
        for task in app_tasks() {
            let app = task.workload.server_app().unwrap();
            let inside = scratch
                .join("runc/rootfs")
                .join(app.programs[0].trim_start_matches('/'));
            assert!(
                !inside.exists(),
                "{} before prepare_server",
                inside.display()
            );
            b.prepare_server(&task).unwrap();
            // Made off the clock: the server's program is in the bundle rootfs before any start.
            assert!(
                inside.is_file(),
                "{} missing after prepare_server",
                inside.display()
            );
            let s = b.start_server(&task).unwrap();
            assert!(
                accepts(s.addr),
                "{} on runc does not accept at {}",
                app.name,
                s.addr
            );
            s.instance.stop().unwrap();
        }
    });
}

#[test]
fn prepare_server_builds_the_docker_image_before_the_first_start() {
    let test = "prepare_server_builds_the_docker_image_before_the_first_start";
    if !have_servers(test) {
        return;
    }
    let Ok(_own) = common::dockerd::dockerd_if_needed(test, "/tmp/isobench-test-dockerd-prep.log")
    else {
        return;
    };
    let docker_before = docker_leftovers();
    with_backend(test, Tier::Docker, |b, run_id, _| {
        for task in app_tasks() {
            let app = task.workload.server_app().unwrap();
            let key = format!("image_id_{}", app.name);
            assert!(
                !b.settings().contains_key(&key),
                "{key} before prepare_server"
            );
            b.prepare_server(&task).unwrap();
            // The image exists once prepare_server returns, before any start.
            let id = b
                .settings()
                .get(&key)
                .cloned()
                .unwrap_or_else(|| panic!("no {key}"));
            assert!(
                Command::new("docker")
                    .args(["image", "inspect", &id])
                    .output()
                    .unwrap()
                    .status
                    .success(),
                "{id} does not exist after prepare_server"
            );
            let s = b.start_server(&task).unwrap();
            // The server's container runs exactly that image: start_server made none.
            let cid = common::sh(
                "docker",
                &[
                    "ps",
                    "-q",
                    "--no-trunc",
                    "--filter",
                    &format!("label=org.isobench.run={run_id}"),
                ],
            );
            let cid = cid.trim();
            let image = common::sh("docker", &["inspect", "--format", "{{.Image}}", cid]);
            assert_eq!(image.trim(), id, "{} ran another image", app.name);
            assert_eq!(b.settings().get(&key), Some(&id), "{key} was made again");
            assert!(
                accepts(s.addr),
                "{} on docker does not accept at {}",
                app.name,
                s.addr
            );
            s.instance.stop().unwrap();
        }
    });
    assert_docker_settles(&docker_before);
}
