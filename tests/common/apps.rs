//! What the application tests (`tests/apps.rs`: redis, `tests/apps_mysql.rs`: mysql) share:
//! the isobench command, a tiny scenario file, a run and its results, sample and tier lookups,
//! the servers and Docker leftovers on the host, and a refused scenario. Each file had its own
//! copy before.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The isobench binary, run from the repository (scenario paths are relative to it).
pub fn isobench() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isobench"));
    c.current_dir(env!("CARGO_MANIFEST_DIR"));
    c
}

/// A scenario `<dir>/<file>`: one run, no warmup, one CPU, `memory_mib`, and one workload of
/// `kind` per entry of `workloads` (each the TOML lines after `kind`).
pub fn scenario(
    dir: &Path,
    file: &str,
    memory_mib: u64,
    kind: &str,
    workloads: &[&str],
) -> PathBuf {
    let p = dir.join(file);
    let mut s = format!(
        "name = \"apps-test\"\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\nmemory_mib = {memory_mib}\n"
    );
    for w in workloads {
        s.push_str(&format!("[[workload]]\nkind = \"{kind}\"\n{w}\n"));
    }
    std::fs::write(&p, s).unwrap();
    p
}

/// `isobench run` of `scenario` on `backends` (quiet, no history); its output and results.
pub fn run(
    scenario: &Path,
    backends: &str,
    state: &Path,
    out_dir: &Path,
) -> (Output, serde_json::Value) {
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

/// The first sample of `metric` for `tier` and `workload`.
pub fn sample(r: &serde_json::Value, tier: &str, workload: &str, metric: &str) -> Option<f64> {
    r["samples"].as_array().unwrap().iter().find_map(|s| {
        (s["tier"] == tier && s["workload"] == workload && s["metric"] == metric)
            .then(|| s["value"].as_f64().unwrap())
    })
}

/// The tier's record in results.json (Null when the tier is not there).
pub fn tier_record(r: &serde_json::Value, tier: &str) -> serde_json::Value {
    r["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["tier"] == tier)
        .cloned()
        .unwrap_or_default()
}

/// Every failure of every tier, as text.
pub fn failures(r: &serde_json::Value) -> Vec<String> {
    r["tiers"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|t| t["failures"].as_array().cloned().unwrap_or_default())
        .map(|f| f.to_string())
        .collect()
}

/// The pids of processes named exactly `name` on this host, but for those of another run on
/// the host: a command line naming a path under /tmp that is not under `ours` (another
/// session's bare or chroot server; a server inside a tier names the tier's own paths).
pub fn processes(name: &str, ours: &Path) -> Vec<String> {
    let ours = ours.to_string_lossy().into_owned();
    super::sh("pgrep", &["-x", name])
        .lines()
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{}/cmdline", pid.trim()))
                .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
                .unwrap_or_default();
            !cmd.split([' ', '='])
                .any(|w| w.starts_with("/tmp/") && !w.starts_with(&ours))
        })
        .map(str::to_string)
        .collect()
}

/// Docker's own NAT rules and isobench's containers (Docker keeps them outside the census).
pub fn docker_leftovers() -> (String, String) {
    (
        super::sh("iptables", &["-t", "nat", "-S"]),
        super::sh(
            "docker",
            &["ps", "-a", "-q", "--filter", "label=org.isobench.run"],
        ),
    )
}

/// Wait (up to 10 s: docker removes asynchronously) until Docker's leftovers are `before`.
pub fn assert_docker_settles(before: &(String, String)) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while docker_leftovers() != *before && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(
        docker_leftovers(),
        *before,
        "a container or a published port's DNAT rule was left"
    );
}

/// Directories named like the mysql agent's data directory anywhere under `root`.
pub fn mysql_data_dirs(root: &Path) -> Vec<PathBuf> {
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

/// Run the scenario `make` writes into a fresh directory on bare, which must be refused: exit
/// 2 and one line on stderr. Returns that line and whether anything was created (state, out).
pub fn refused(make: impl FnOnce(&Path) -> PathBuf) -> (String, bool) {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let out = isobench()
        .arg("run")
        .arg(make(dir.path()))
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
