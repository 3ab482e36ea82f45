//! The `mysql` application workload end to end (issue 12): `isobench run` with a tiny scenario
//! on bare, container, runc, gVisor, LXC and Docker, data on the rootfs and on a volume
//! (mariadbd really runs inside the tier, sysbench on the host), with a leak census before and
//! after (no mariadbd, data directory, mount, veth, container or cgroup left); the report's
//! applications section with the study's ratios; and bad input, refused in one line before
//! anything is created.

mod common;

use std::path::{Path, PathBuf};

use common::apps::{
    assert_docker_settles, docker_leftovers, failures, mysql_data_dirs as data_dirs, processes,
    run, sample, tier_record,
};

const SERVER: &str = "/usr/sbin/mariadbd";
const CLIENT: &str = "/usr/bin/sysbench";

/// Tiny points: a 500-row table, threads 1 and 2, one second (or 200 transactions) each.
const TINY: &str =
    "threads = [1, 2]\ntable_rows = 500\npoint_s = 1\npoint_events = 200\npoint_timeout_s = 60\n";

fn scenario(dir: &Path, workloads: &[&str]) -> PathBuf {
    common::apps::scenario(dir, "mysql.toml", 512, "mysql", workloads)
}

/// The data on the tier's rootfs and on a volume, tiny.
fn both_data_paths(dir: &Path) -> PathBuf {
    scenario(
        dir,
        &[
            &format!("data = \"rootfs\"\n{TINY}"),
            &format!("data = \"volume\"\n{TINY}"),
        ],
    )
}

/// mariadbd processes on this host (pid list).
fn servers(ours: &Path) -> Vec<String> {
    processes("mariadbd", ours)
}

/// The server and the client are here, else SKIPPED.
fn have_mysql(test: &str) -> bool {
    for b in [SERVER, CLIENT] {
        if !Path::new(b).is_file() {
            common::skip(
                test,
                &format!("{b} is missing (apt-get install mariadb-server sysbench)"),
                "ISOBENCH_REQUIRE_PRIVILEGED",
            );
            return false;
        }
    }
    true
}

/// Real figures on `tier` for both data paths: tps at both thread counts, a latency
/// percentile, the server's start time.
fn assert_served(r: &serde_json::Value, tier: &str, stderr: &str) {
    for workload in ["mysql", "mysql_volume"] {
        for m in ["tps_t1", "tps_t2", "lat_p95_ms_t2", "server_start_ms"] {
            let v = sample(r, tier, workload, m)
                .unwrap_or_else(|| panic!("{tier} {workload} {m} missing: {stderr}"));
            assert!(v > 0.0, "{tier} {workload} {m} = {v}");
        }
    }
}

fn refused(workload: &str) -> (String, bool) {
    common::apps::refused(|dir| scenario(dir, &[workload]))
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
    if !common::privileged(test) || !have_mysql(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = servers(dir.path());
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    let (out, r) = run(
        &both_data_paths(dir.path()),
        "bare,container",
        &state,
        &out_dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    let ran = |tier: &str| tier_record(&r, tier)["status"] == "ran";
    assert!(ran("bare"), "bare did not run: {stderr}");
    let mut tiers = vec!["bare"];
    if ran("container") {
        tiers.push("container");
    } else {
        println!("SKIPPED {test} (container part): the container tier did not run here: {stderr}");
    }
    for tier in &tiers {
        assert_served(&r, tier, &stderr);
    }
    let failures = failures(&r);
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
    assert_eq!(servers(dir.path()), servers_before, "a mariadbd was left");
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
    let (_, r) = run(
        &scenario(
            dir.path(),
            &["threads = [1]\nstart_timeout_s = 2\nserver_bin = \"/bin/true\"\n"],
        ),
        "bare",
        &state,
        &out_dir,
    );
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

/// runc, gVisor and LXC, data on the bundle rootfs' /data and on a bind-mounted volume, the
/// server on the host's network (127.0.0.1): real tps; no mariadbd, data directory, mount,
/// container or cgroup left. A tier not installed here is skipped, one that cannot carry mysql
/// must say so (a note), never fail a launch.
#[test]
fn mysql_on_runc_gvisor_and_lxc_leaves_nothing() {
    let test = "mysql_on_runc_gvisor_and_lxc_leaves_nothing";
    if !common::privileged(test) || !have_mysql(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = servers(dir.path());
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    let (out, r) = run(
        &both_data_paths(dir.path()),
        "runc,gvisor,lxc",
        &state,
        &out_dir,
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    for tier in ["runc", "gvisor", "lxc"] {
        let rec = tier_record(&r, tier);
        if rec["status"] == "ran" {
            assert_served(&r, tier, &stderr);
        } else {
            println!("SKIPPED {test} ({tier} part): {}", rec["note"]);
        }
    }
    assert!(
        ["runc", "gvisor", "lxc"]
            .iter()
            .any(|t| tier_record(&r, t)["status"] == "ran"),
        "no runtime tier ran: {stderr}"
    );
    let failures = failures(&r);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(servers(dir.path()), servers_before, "a mariadbd was left");
    assert!(
        data_dirs(dir.path()).is_empty(),
        "a data directory was left: {:?}",
        data_dirs(dir.path())
    );
    common::assert_census_settles(test, &before, &[&state]);
}

/// Docker: the data directory on the container's own layer (overlay2: the study's "AUFS" row)
/// and on a `-v` volume, the server on the host network; the image with mariadbd made by
/// `prepare_server` before the first round. Nothing left (containers, DNAT rules included).
#[test]
fn mysql_on_docker_layers_and_volume_leaves_nothing() {
    let test = "mysql_on_docker_layers_and_volume_leaves_nothing";
    if !have_mysql(test) {
        return;
    }
    let Ok(_own) = common::dockerd::dockerd_if_needed(test, "/tmp/isobench-test-dockerd-mysql.log")
    else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let servers_before = servers(dir.path());
    let docker_before = docker_leftovers();
    let before = common::census(&[&state]);
    let out_dir = dir.path().join("out");
    let (out, r) = run(&both_data_paths(dir.path()), "docker", &state, &out_dir);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rec = tier_record(&r, "docker");
    assert_eq!(rec["status"], "ran", "{stderr}");
    assert_served(&r, "docker", &stderr);
    // The image the servers ran, recorded once prepare_server made it.
    assert!(
        rec.to_string().contains("image_id_mysql"),
        "no mysql image in the docker settings: {rec}"
    );
    let failures = failures(&r);
    assert!(failures.is_empty(), "{failures:?}");
    assert!(out.status.success(), "{stderr}");
    assert_eq!(servers(dir.path()), servers_before, "a mariadbd was left");
    assert!(
        data_dirs(dir.path()).is_empty(),
        "a data directory was left"
    );
    assert_docker_settles(&docker_before);
    common::assert_census_settles(test, &before, &[&state]);
}
