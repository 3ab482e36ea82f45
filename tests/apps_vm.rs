//! Application servers inside the VM tiers (issue 12), end to end: `isobench run` with tiny
//! `redis` and `mysql` scenarios on `emulated` (QEMU TCG; `microvm` is the same code with KVM,
//! which needs a host with hardware virtualization). The agent, /init of the guest, starts
//! `redis-server` or `mariadbd` from the guest's initramfs on the guest's address (mysql's data
//! directory on the guest's virtio-blk disk, made before ready); `redis-benchmark` or `sysbench`
//! runs on the host against it over the tap. Real metrics are asserted, and a leak census
//! before and after: no QEMU, no tap, no file of the run left (initramfs, disk image). A server
//! that cannot start in the guest fails its round with the agent's own reason and leaves
//! nothing either. The mysql run also carries `[tier.emulated] app_scale`, which must be in its
//! results and its report.
//!
//! Needs root, QEMU, a cached guest kernel (`isobench fetch-kernel`) and
//! `apt-get install redis-server redis-tools` (`mariadb-server sysbench` for mysql); otherwise
//! `SKIPPED <test>: <why>`, or a failure with `ISOBENCH_REQUIRE_VM=1`. Each test boots one or
//! two guests under TCG (tens of seconds on a loaded 2-core machine); they run one at a time.

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use isobench::backend::vm::kernel;
use isobench::backend::BackendOptions;

/// TCG boots take a core each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

const REQUIRE: &str = "ISOBENCH_REQUIRE_VM";

const REDIS_BINS: [&str; 2] = ["/usr/bin/redis-server", "/usr/bin/redis-benchmark"];
const MYSQL_BINS: [&str; 2] = ["/usr/sbin/mariadbd", "/usr/bin/sysbench"];

/// Whether this host can run the test with `bins`; says why not (SKIPPED) otherwise.
fn can_run(test: &str, bins: &[&str]) -> bool {
    if !common::privileged(test) {
        return false;
    }
    for b in bins.iter().chain(&["/usr/bin/qemu-system-x86_64"]) {
        if !Path::new(b).is_file() {
            common::skip(
                test,
                &format!(
                    "{b} is missing (apt-get install redis-server redis-tools mariadb-server \
                     sysbench qemu-system-x86)"
                ),
                REQUIRE,
            );
            return false;
        }
    }
    if let Err(e) = kernel::locate(&BackendOptions::default().cache_dir, None) {
        common::skip(
            test,
            &format!("no guest kernel ({e}): run `isobench fetch-kernel`"),
            REQUIRE,
        );
        return false;
    }
    true
}

/// Run `workload` (TOML lines of a `redis` workload) on `emulated` with its own state and output
/// directories under `dir`; returns results.json and stderr.
fn run(dir: &Path, workload: &str) -> (serde_json::Value, String) {
    run_scenario(dir, &format!("[[workload]]\nkind = \"redis\"\n{workload}"))
}

/// Run `body` (tier tables and workloads) on `emulated`, one launch each; see [`run`].
fn run_scenario(dir: &Path, body: &str) -> (serde_json::Value, String) {
    let scenario = dir.join("apps-vm.toml");
    std::fs::write(
        &scenario,
        format!(
            "name = \"apps-vm-test\"\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\n\
             memory_mib = 512\n{body}"
        ),
    )
    .unwrap();
    let out_dir = dir.join("out");
    let out = Command::new(env!("CARGO_BIN_EXE_isobench"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .arg("run")
        .arg(&scenario)
        .args(["--backends", "emulated", "--quiet", "--no-history"])
        .arg("--state-dir")
        .arg(dir.join("state"))
        .arg("--out")
        .arg(&out_dir)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let r = std::fs::read(out_dir.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no results.json: {out:?}"));
    (r, stderr)
}

/// Processes (QEMU above all) whose command line names the test's state directory.
fn processes_of(state: &Path) -> Vec<String> {
    let needle = state.to_string_lossy().into_owned();
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            if c.contains(&needle) {
                v.push(format!("{} {c}", e.file_name().to_string_lossy()));
            }
        }
    }
    v
}

/// Everything of the run is gone: no process naming its state directory, no run directory
/// (scratch, initramfs, launch directories) and no ledger entry left, and the host's census is
/// as before (taps included).
fn assert_nothing_left(test: &str, dir: &Path, before: &common::Census) {
    let state = dir.join("state");
    assert_eq!(processes_of(&state), Vec::<String>::new(), "processes left");
    let runs: Vec<_> = std::fs::read_dir(state.join("runs"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(runs.is_empty(), "run directories left: {runs:?}");
    common::assert_census_settles(test, before, &[&state]);
}

fn tier(r: &serde_json::Value) -> serde_json::Value {
    r["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == "emulated")
        .cloned()
        .unwrap_or_default()
}

#[test]
fn redis_in_an_emulated_guest_is_served_and_leaves_nothing() {
    let test = "redis_in_an_emulated_guest_is_served_and_leaves_nothing";
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !can_run(test, &REDIS_BINS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let before = common::census(&[&dir.path().join("state")]);
    let (r, stderr) = run(
        dir.path(),
        "connections = [2]\nrequests = 200\npoint_timeout_s = 120\n",
    );
    let t = tier(&r);
    assert_eq!(t["status"], "ran", "{t}\n{stderr}");
    assert!(
        t["failures"].as_array().is_none_or(|f| f.is_empty()),
        "the server must start, serve and stop cleanly: {t}"
    );
    assert_eq!(t["settings"]["accel"], "tcg", "{t}");
    let value = |metric: &str| -> Option<f64> {
        r["samples"].as_array().unwrap().iter().find_map(|s| {
            (s["tier"] == "emulated" && s["workload"] == "redis" && s["metric"] == metric)
                .then(|| s["value"].as_f64().unwrap())
        })
    };
    for m in ["set_rps_c2", "get_rps_c2"] {
        let v = value(m).unwrap_or_else(|| panic!("{m} missing: {stderr}"));
        assert!(v > 0.0, "{m} = {v}");
    }
    // redis-benchmark 7 prints percentiles in --csv.
    assert!(value("get_p99_ms_c2").is_some_and(|v| v > 0.0), "no p99");
    // Launch -> accepting includes the guest's boot: well above a host process's start.
    let start = value("server_start_ms").expect("server_start_ms");
    assert!(
        start > 100.0,
        "server_start_ms = {start}: the boot is missing"
    );
    assert_nothing_left(test, dir.path(), &before);
}

#[test]
fn a_server_that_cannot_start_in_the_guest_says_why_and_leaves_nothing() {
    let test = "a_server_that_cannot_start_in_the_guest_says_why_and_leaves_nothing";
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !can_run(test, &REDIS_BINS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let before = common::census(&[&dir.path().join("state")]);
    // `true` is copied into the guest with its libraries and exits at once: the agent reports
    // that the server exited before accepting, and the guest powers off.
    let (r, stderr) = run(
        dir.path(),
        "connections = [1]\nrequests = 10\nserver_bin = \"/bin/true\"\n",
    );
    let failures = tier(&r)["failures"].to_string();
    assert!(
        failures.contains("ended before the server accepted")
            && failures.contains("exited before accepting"),
        "{failures}\n{stderr}"
    );
    assert_nothing_left(test, dir.path(), &before);
}

#[test]
fn mysql_in_an_emulated_guest_is_served_from_its_disk_and_leaves_nothing() {
    let test = "mysql_in_an_emulated_guest_is_served_from_its_disk_and_leaves_nothing";
    let _one = SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    if !can_run(test, &MYSQL_BINS) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let before = common::census(&[&dir.path().join("state")]);
    // Both data paths (each on the guest's disk); points of 2 s scaled to the 1 s floor.
    let mysql = |data: &str| {
        format!(
            "[[workload]]\nkind = \"mysql\"\ndata = \"{data}\"\nthreads = [1]\n\
             table_rows = 1000\npoint_s = 2\npoint_timeout_s = 120\n"
        )
    };
    let (r, stderr) = run_scenario(
        dir.path(),
        &format!(
            "[tier.emulated]\napp_scale = 0.5\n{}{}",
            mysql("rootfs"),
            mysql("volume")
        ),
    );
    let t = tier(&r);
    assert_eq!(t["status"], "ran", "{t}\n{stderr}");
    assert!(
        t["failures"].as_array().is_none_or(|f| f.is_empty()),
        "the server must bootstrap, serve and stop cleanly: {t}\n{stderr}"
    );
    assert!(
        t["settings"]["app_data_path"]
            .as_str()
            .is_some_and(|s| s.contains("virtio-blk")),
        "{t}"
    );
    let value = |workload: &str, metric: &str| -> Option<f64> {
        r["samples"].as_array().unwrap().iter().find_map(|s| {
            (s["tier"] == "emulated" && s["workload"] == workload && s["metric"] == metric)
                .then(|| s["value"].as_f64().unwrap())
        })
    };
    for w in ["mysql", "mysql_volume"] {
        let tps = value(w, "tps_t1").unwrap_or_else(|| panic!("{w} tps_t1 missing: {stderr}"));
        assert!(tps > 0.0, "{w} tps_t1 = {tps}");
        // READY (guest booted, disk mounted, data directory bootstrapped) -> greeting: the
        // server's own start, which the boot is not part of.
        let start = value(w, "server_start_ms").expect("server_start_ms");
        let tier_start = value(w, "tier_start_ms").expect("tier_start_ms");
        assert!(
            start > 0.0 && tier_start > 0.0,
            "{w}: {start} / {tier_start}"
        );
    }
    // The scale is in the results (the tier's plan) and beside the tier in the report.
    assert_eq!(t["plan"]["app_scale"], 0.5, "{t}");
    let summary = std::fs::read_to_string(dir.path().join("out/summary.md")).unwrap();
    assert!(
        summary.contains("emulated (points scaled ×0.5)"),
        "the report must say the points were scaled: {summary}"
    );
    assert_nothing_left(test, dir.path(), &before);
}
