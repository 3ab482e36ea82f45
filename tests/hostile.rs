//! The red-team suite of issue 9: isobench tried as a hostile or just unlucky user would, as
//! root, through the real binary. SIGKILL at several moments then `cleanup`; SIGINT, SIGTERM and
//! SIGHUP; two concurrent NAT runs; a crash then a rerun with the same `--out`; hand-made hostile
//! ledgers with canaries; bad input; a closed stdout; an untrusted state directory. Every test
//! ends with a leak census (tests/common) equal to the one taken before it.
//!
//! Each test uses its own throw-away state dir (`ISOBENCH_STATE_DIR`) and out dir. The suite is
//! meant to run with `--test-threads=1` (CI does); a mutex serialises it anyway. What the suite
//! checks and what isobench does not protect against: docs/safety.md.
//!
//! Without root each test prints `SKIPPED <test>: needs root`; with
//! `ISOBENCH_REQUIRE_PRIVILEGED=1` it fails instead.

mod common;

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use common::{assert_census_settles, census, poll, privileged, start_time, Guard};
use nix::sys::signal::Signal;
use serde_json::{json, Value};

/// Record a violation instead of stopping at the first one.
macro_rules! check {
    ($p:expr, $cond:expr, $($fmt:tt)+) => {
        if !$cond {
            $p.push(format!($($fmt)+));
        }
    };
}

/// As `check!`, for equality.
macro_rules! check_eq {
    ($p:expr, $a:expr, $b:expr, $($fmt:tt)+) => {
        if $a != $b {
            $p.push(format!($($fmt)+));
        }
    };
}

/// One privileged test at a time (they share the host's devices, cgroups and the census).
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// Bound on a run the test lets finish.
const RUN_TIMEOUT: Duration = Duration::from_secs(90);
/// Bound on waiting for a moment of a run (a ledger entry, a first result).
const MOMENT_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on `isobench cleanup` and on commands that must refuse their input.
const SHORT_TIMEOUT: Duration = Duration::from_secs(30);

/// A test's throw-away directories: the state root, a work dir (cwd of isobench, parent of out
/// dirs and scenario files).
struct Dirs {
    _tmp: Option<tempfile::TempDir>,
    state: PathBuf,
    work: PathBuf,
}

impl Dirs {
    fn new() -> Dirs {
        let tmp = tempfile::Builder::new()
            .prefix("hostile-")
            .tempdir()
            .unwrap();
        // The state dir must be root-owned 0700 and not a symlink: canonicalise /tmp.
        let base = tmp.path().canonicalize().unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        let state = base.join("state");
        let work = base.join("work");
        std::fs::create_dir(&state).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(&work).unwrap();
        Dirs {
            _tmp: Some(tmp),
            state,
            work,
        }
    }

    /// Fresh state and work dirs inside this test's base, for one case of a test.
    fn case(&self, name: &str) -> Dirs {
        let base = self.base().join(name);
        let state = base.join("state");
        let work = base.join("work");
        std::fs::create_dir_all(&state).unwrap();
        std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700)).unwrap();
        std::fs::create_dir(&work).unwrap();
        Dirs {
            _tmp: None,
            state,
            work,
        }
    }

    fn base(&self) -> &Path {
        self.state.parent().unwrap()
    }

    fn roots(&self) -> [&Path; 1] {
        [self.base()]
    }

    /// `isobench <args>` with this test's state dir, in its work dir, without history.
    fn isobench(&self) -> Command {
        isobench_with_state(&self.state, &self.work)
    }

    /// `isobench run <scenario> --backends <tiers> [-n N] --out <work>/<out> -q --no-history`.
    fn run_cmd(&self, scenario: &Path, tiers: &str, n: Option<u32>, out: &str) -> Command {
        let mut c = self.isobench();
        c.arg("run")
            .arg(scenario)
            .args(["--backends", tiers])
            .arg("--out")
            .arg(self.work.join(out))
            .args(["-q", "--no-history"]);
        if let Some(n) = n {
            c.args(["-n", &n.to_string()]);
        }
        c
    }

    /// A NAT net scenario on the container tier: short, bounded launches.
    fn nat_scenario(&self, runs: u32) -> PathBuf {
        let p = self.work.join("nat.toml");
        std::fs::write(
            &p,
            format!(
                r#"name = "hostile-nat"
description = "red-team: the container's bridge + NAT path"

[defaults]
runs = {runs}
warmup = 0

[budget]
cpus = 1
memory_mib = 256

[[workload]]
kind = "net"
path = "nat"
stream_duration_ms = 100
stream_max_mib = 16
rr_transactions = 50
time_budget_ms = 1000
connect_timeout_ms = 2000
"#
            ),
        )
        .unwrap();
        p
    }

    /// Every ledger under `<state>/runs/*/ledger.json`, parsed (unreadable ones skipped).
    fn ledgers(&self) -> Vec<(PathBuf, Value)> {
        ledgers_in(&self.state)
    }
}

fn isobench_with_state(state: &Path, cwd: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_isobench"));
    c.current_dir(cwd)
        .env("ISOBENCH_STATE_DIR", state)
        .env_remove("ISOBENCH_AGENT")
        .stdin(Stdio::null());
    c
}

fn startup_scenario() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/startup.toml")
}

fn ledgers_in(state: &Path) -> Vec<(PathBuf, Value)> {
    let mut v = vec![];
    if let Ok(rd) = std::fs::read_dir(state.join("runs")) {
        for e in rd.flatten() {
            let p = e.path().join("ledger.json");
            if let Some(l) = std::fs::read(&p)
                .ok()
                .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
            {
                v.push((p, l));
            }
        }
    }
    v
}

/// True if some ledger lists a resource of `kind`.
fn ledger_lists(d: &Dirs, kind: &str) -> bool {
    d.ledgers().iter().any(|(_, l)| {
        l["resources"]
            .as_array()
            .is_some_and(|rs| rs.iter().any(|r| r["kind"] == kind))
    })
}

/// True once `<out>/results.json` exists and lists at least one sample (a completed round).
fn has_results(out: &Path) -> bool {
    std::fs::read(out.join("results.json"))
        .ok()
        .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        .is_some_and(|r| r["samples"].as_array().is_some_and(|s| !s.is_empty()))
}

/// `isobench cleanup` in `d`'s state dir, bounded; returns (exit code, stdout, stderr).
fn cleanup(d: &Dirs, guard: &mut Guard) -> (i32, String, String) {
    let mut c = d.isobench();
    c.arg("cleanup")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let i = guard.spawn(&mut c);
    guard.output_bounded(i, SHORT_TIMEOUT)
}

fn no_panic(what: &str, stderr: &str) {
    assert!(!stderr.contains("panicked"), "{what} panicked:\n{stderr}");
}

/// A safety net for failing tests: on drop (after the test's assertions, its children already
/// killed), runs `isobench cleanup` if a ledger is still in the test's state dir.
struct FinalCleanup<'a>(&'a Dirs);

impl Drop for FinalCleanup<'_> {
    fn drop(&mut self) {
        if !self.0.ledgers().is_empty() {
            let mut g = Guard::default();
            let mut c = self.0.isobench();
            c.arg("cleanup").stdout(Stdio::null()).stderr(Stdio::null());
            let i = g.spawn(&mut c);
            let _ = g.output_within(i, SHORT_TIMEOUT);
        }
    }
}

/// When in a run to SIGKILL the harness.
#[derive(Debug, Clone, Copy)]
enum Moment {
    /// As soon as a ledger lists a resource of this kind (after prepare).
    Listed(&'static str),
    /// Once a round has completed (results.json written): mid-run.
    MidRun,
}

/// Start a run, SIGKILL the harness (the harness only, as a crash would) at `moment`, run
/// `isobench cleanup`, and check the census.
fn kill_then_cleanup(test: &str, mut run: Command, out: &Path, d: &Dirs, moment: Moment) {
    let before = census(&d.roots());
    {
        let _net = FinalCleanup(d);
        let mut g = Guard::default();
        run.stdout(Stdio::null()).stderr(Stdio::null());
        let i = g.spawn(&mut run);
        let reached = poll(MOMENT_TIMEOUT, || {
            let ok = match moment {
                Moment::Listed(kind) => ledger_lists(d, kind),
                Moment::MidRun => has_results(out),
            };
            if ok {
                return Some(true);
            }
            // The run ended before the moment: say so rather than waiting.
            g.child(i).try_wait().unwrap().map(|_| false)
        });
        assert_eq!(
            reached,
            Some(true),
            "{test}: the run never reached {moment:?} (or ended first)"
        );
        g.signal(i, Signal::SIGKILL);
        g.wait_bounded(i, SHORT_TIMEOUT);
        assert!(
            !d.ledgers().is_empty(),
            "{test}: a killed run must leave its ledger for cleanup"
        );
        let (code, stdout, stderr) = cleanup(d, &mut g);
        no_panic("cleanup", &stderr);
        // The exit code also reflects host-wide steps (cached Docker images another session
        // may be using); what matters here is this run's state and the census.
        println!("{test}: cleanup exit {code}:\n{stdout}{stderr}");
        assert!(
            d.ledgers().is_empty(),
            "{test}: cleanup left ledgers behind:\n{stdout}\n{stderr}"
        );
    }
    assert_census_settles(&format!("{test} ({moment:?})"), &before, &d.roots());
}

/// Finding: crash recovery (SIGKILL at several moments) of the container tier.
#[test]
fn sigkill_container_run_then_cleanup_leaves_nothing() {
    let test = "sigkill_container_run_then_cleanup_leaves_nothing";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    for moment in [Moment::Listed("cgroup"), Moment::MidRun] {
        let d = Dirs::new();
        let run = d.run_cmd(&startup_scenario(), "container", Some(2000), "out");
        kill_then_cleanup(test, run, &d.work.join("out"), &d, moment);
    }
}

/// Finding: crash recovery of the NAT path (bridge, veth, nft table, forwarding sysctl).
#[test]
fn sigkill_nat_run_then_cleanup_leaves_nothing() {
    let test = "sigkill_nat_run_then_cleanup_leaves_nothing";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    for moment in [
        Moment::Listed("link"),
        Moment::Listed("nft_table"),
        Moment::MidRun,
    ] {
        let d = Dirs::new();
        let sc = d.nat_scenario(200);
        let run = d.run_cmd(&sc, "container", None, "out");
        kill_then_cleanup(test, run, &d.work.join("out"), &d, moment);
    }
}

/// Finding "Signals": SIGINT, SIGTERM and SIGHUP (an ssh session dropping) end a run with
/// teardown, `interrupted: true` in results.json and a non-zero exit, without `cleanup`.
#[test]
fn signals_end_a_run_with_teardown_and_interrupted_mark() {
    let test = "signals_end_a_run_with_teardown_and_interrupted_mark";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    for sig in [Signal::SIGINT, Signal::SIGTERM, Signal::SIGHUP] {
        let d = Dirs::new();
        let before = census(&d.roots());
        let out = d.work.join("out");
        {
            let _net = FinalCleanup(&d);
            let mut g = Guard::default();
            let mut run = d.run_cmd(&startup_scenario(), "container", Some(5000), "out");
            run.stdout(Stdio::null()).stderr(Stdio::piped());
            let i = g.spawn(&mut run);
            let reached = poll(MOMENT_TIMEOUT, || {
                if has_results(&out) {
                    return Some(true);
                }
                g.child(i).try_wait().unwrap().map(|_| false)
            });
            assert_eq!(
                reached,
                Some(true),
                "{test}: no round completed before {sig}"
            );
            g.signal(i, sig);
            let (code, _, stderr) = g.output_bounded(i, RUN_TIMEOUT);
            no_panic(&format!("run on {sig}"), &stderr);
            assert_ne!(code, 0, "{test}: {sig} must end the run non-zero");
            assert_ne!(
                code, -1,
                "{test}: {sig} killed the harness (no handler, no teardown):\n{stderr}"
            );
            if sig == Signal::SIGINT {
                assert_eq!(code, 130, "{test}: SIGINT exits 130:\n{stderr}");
            }
            let r: Value =
                serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap())
                    .unwrap_or_else(|e| panic!("{test}: results.json after {sig}: {e}"));
            assert_eq!(
                r["interrupted"],
                json!(true),
                "{test}: results after {sig} must say interrupted"
            );
            assert!(
                d.ledgers().is_empty(),
                "{test}: the run's teardown on {sig} left its ledger: {:?}",
                d.ledgers()
            );
        }
        assert_census_settles(&format!("{test} ({sig})"), &before, &d.roots());
    }
}

/// Findings "Two runs with the same id break each other" and "Names made by check-then-create"
/// (two NAT runs picking the same names or subnet): two concurrent NAT runs both succeed, or one
/// fails cleanly; nothing is left behind.
#[test]
fn two_concurrent_nat_runs_do_not_break_each_other() {
    let test = "two_concurrent_nat_runs_do_not_break_each_other";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    let d = Dirs::new();
    let before = census(&d.roots());
    // Different --out names, then the same basename in two parents (the run id must not be
    // derived from --out: the two runs would share one run directory).
    for pair in [["out-a", "out-b"], ["a/out", "b/out"]] {
        let sc = d.nat_scenario(20);
        let _net = FinalCleanup(&d);
        let mut g = Guard::default();
        let mut ids = vec![];
        for out in pair {
            if let Some(parent) = d.work.join(out).parent() {
                std::fs::create_dir_all(parent).unwrap();
            }
            let mut c = d.run_cmd(&sc, "container", None, out);
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            let i = g.spawn(&mut c);
            if ids.is_empty() {
                // Start the second run while the first holds its NAT path: the runs overlap.
                poll(MOMENT_TIMEOUT, || {
                    (ledger_lists(&d, "link") || g.child(i).try_wait().unwrap().is_some())
                        .then_some(())
                });
            }
            ids.push((out, i));
        }
        let mut problems: Vec<String> = vec![];
        let mut ok = 0;
        for (out, i) in ids {
            let (code, _, stderr) = g.output_bounded(i, RUN_TIMEOUT);
            check!(
                problems,
                !stderr.contains("panicked"),
                "{out} panicked: {stderr}"
            );
            if code == 0 {
                ok += 1;
                let r: Value = serde_json::from_slice(
                    &std::fs::read(d.work.join(out).join("results.json")).unwrap(),
                )
                .unwrap();
                check_eq!(
                    problems,
                    r["interrupted"],
                    json!(false),
                    "{out} says interrupted"
                );
                for t in r["tiers"].as_array().unwrap() {
                    check_eq!(
                        problems,
                        t["failures"].as_array().map_or(0, Vec::len),
                        0,
                        "{out} succeeded but recorded failures: {t}"
                    );
                }
            } else {
                // Failing cleanly: a message that says what failed.
                check!(
                    problems,
                    stderr.contains("error"),
                    "{out} failed (exit {code}) without saying why: {stderr}"
                );
            }
        }
        check!(problems, ok >= 1, "neither concurrent NAT run succeeded");
        // Each run has its own id, of the shared form (not derived from --out).
        let run_ids: Vec<String> = pair
            .iter()
            .filter_map(|out| std::fs::read(d.work.join(out).join("results.json")).ok())
            .filter_map(|b| serde_json::from_slice::<Value>(&b).ok())
            .map(|r| r["run_id"].as_str().unwrap_or("").to_string())
            .collect();
        for id in &run_ids {
            check!(
                problems,
                is_run_id(id),
                "run id {id:?} is not YYYYmmdd-HHMMSS-<8 lowercase hex>"
            );
        }
        if let [a, b] = run_ids.as_slice() {
            check!(problems, a != b, "both runs have the run id {a:?}");
        }
        check!(
            problems,
            d.ledgers().is_empty(),
            "finished runs left ledgers: {:?}",
            d.ledgers()
        );
        assert!(
            problems.is_empty(),
            "{test}: two concurrent NAT runs, --out {pair:?}:\n{}",
            problems.join("\n")
        );
    }
    assert_census_settles(test, &before, &d.roots());
}

/// Finding "A rerun after a crash loses the first run's ledger": SIGKILL a NAT run, run the same
/// command (same --out) again, then `cleanup`: the first ledger survives the rerun, and cleanup
/// removes the crashed run's bridge, veth and nft table.
#[test]
fn crash_then_rerun_same_out_keeps_first_ledger() {
    let test = "crash_then_rerun_same_out_keeps_first_ledger";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    let d = Dirs::new();
    let before = census(&d.roots());
    {
        let _net = FinalCleanup(&d);
        let mut g = Guard::default();
        let sc = d.nat_scenario(200);
        let mut run = d.run_cmd(&sc, "container", None, "out");
        run.stdout(Stdio::null()).stderr(Stdio::null());
        let i = g.spawn(&mut run);
        let reached = poll(MOMENT_TIMEOUT, || {
            if ledger_lists(&d, "nft_table") && ledger_lists(&d, "link") {
                return Some(true);
            }
            g.child(i).try_wait().unwrap().map(|_| false)
        });
        assert_eq!(
            reached,
            Some(true),
            "{test}: the NAT run never set up its path"
        );
        // Let the first launch's devices come up, then crash.
        poll(Duration::from_secs(10), || {
            has_results(&d.work.join("out")).then_some(())
        });
        g.signal(i, Signal::SIGKILL);
        g.wait_bounded(i, SHORT_TIMEOUT);
        let first = d.ledgers();
        assert_eq!(first.len(), 1, "{test}: one crashed ledger: {first:?}");
        let (first_path, first_ledger) = first[0].clone();
        let links: Vec<String> = first_ledger["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "link")
            .filter_map(|r| r["name"].as_str().map(String::from))
            .collect();
        let tables: Vec<(String, String)> = first_ledger["resources"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["kind"] == "nft_table")
            .map(|r| {
                (
                    r["family"].as_str().unwrap_or("").to_string(),
                    r["name"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect();

        // If isobench loses track of them (the finding), the test still leaves the host as it
        // found it: whatever the crashed run's ledger named is removed by hand at the end.
        let _leftovers = Leftovers(first_ledger.clone());
        let mut problems: Vec<String> = vec![];

        // The same command again, before any cleanup.
        let mut again = d.run_cmd(&sc, "container", Some(2), "out");
        again.stdout(Stdio::piped()).stderr(Stdio::piped());
        let j = g.spawn(&mut again);
        let (code, _, stderr) = g.output_bounded(j, RUN_TIMEOUT);
        check!(
            problems,
            !stderr.contains("panicked"),
            "the rerun panicked: {stderr}"
        );
        check!(
            problems,
            code == 0 || stderr.contains("error"),
            "the rerun failed (exit {code}) without saying why: {stderr}"
        );
        match std::fs::read(&first_path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Value>(&b).ok())
        {
            None => problems.push(format!(
                "the rerun destroyed the crashed run's ledger {first_path:?}"
            )),
            Some(kept) => {
                check_eq!(
                    problems,
                    kept["run_id"],
                    first_ledger["run_id"],
                    "the rerun overwrote the crashed run's ledger"
                );
                for r in first_ledger["resources"].as_array().unwrap() {
                    check!(
                        problems,
                        kept["resources"].as_array().is_some_and(|k| k.contains(r)),
                        "the rerun dropped {r} from the crashed run's ledger"
                    );
                }
            }
        }

        let (code, stdout, stderr) = cleanup(&d, &mut g);
        check!(
            problems,
            !stderr.contains("panicked"),
            "cleanup panicked: {stderr}"
        );
        // The exit code also reflects host-wide steps (cached Docker images another session
        // may be using); what matters here is this run's state and the census.
        println!("{test}: cleanup exit {code}:\n{stdout}{stderr}");
        for l in &links {
            check!(
                problems,
                !Path::new("/sys/class/net").join(l).exists(),
                "cleanup left the crashed run's link {l}"
            );
        }
        for (fam, name) in &tables {
            check!(
                problems,
                !nft_table_exists(fam, name),
                "cleanup left the crashed run's table {fam} {name}"
            );
        }
        check!(
            problems,
            d.ledgers().is_empty(),
            "ledgers left after cleanup: {:?}",
            d.ledgers()
        );
        assert!(
            problems.is_empty(),
            "{test}: a crash then a rerun with the same --out:\n{}",
            problems.join("\n")
        );
    }
    assert_census_settles(test, &before, &d.roots());
}

/// Removes by hand what a crashed run's ledger (read by the test right after the crash) names
/// and is still there, in teardown order, so a failing test does not leave the host changed.
/// Only names and paths from this test's own run are touched.
struct Leftovers(Value);

impl Drop for Leftovers {
    fn drop(&mut self) {
        let Some(rs) = self.0["resources"].as_array() else {
            return;
        };
        let s = |r: &Value, k: &str| r[k].as_str().unwrap_or("").to_string();
        for r in rs.iter().filter(|r| r["kind"] == "iptables_rule") {
            let rule: Vec<String> = r["rule"]
                .as_array()
                .map(|a| {
                    a.iter()
                        .filter_map(|x| x.as_str().map(String::from))
                        .collect()
                })
                .unwrap_or_default();
            let _ = Command::new("iptables")
                .args(["-t", &s(r, "table"), "-D", &s(r, "chain")])
                .args(&rule)
                .stderr(Stdio::null())
                .status();
        }
        for r in rs.iter().filter(|r| r["kind"] == "nft_table") {
            if nft_table_exists(&s(r, "family"), &s(r, "name")) {
                let _ = Command::new("nft")
                    .args(["delete", "table", &s(r, "family"), &s(r, "name")])
                    .status();
            }
        }
        for r in rs.iter().filter(|r| r["kind"] == "link") {
            let name = s(r, "name");
            if name.starts_with("isb") && Path::new("/sys/class/net").join(&name).exists() {
                let _ = Command::new("ip").args(["link", "del", &name]).status();
            }
        }
        let mut cgs: Vec<PathBuf> = rs
            .iter()
            .filter(|r| r["kind"] == "cgroup")
            .map(|r| PathBuf::from(s(r, "path")))
            .filter(|p| {
                p.starts_with("/sys/fs/cgroup") && p.to_string_lossy().contains("isobench-")
            })
            .collect();
        // Deepest first.
        cgs.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
        for p in cgs {
            let _ = std::fs::remove_dir(&p);
        }
    }
}

/// Undoes by hand what the hostile-ledger test set up, even when an assertion failed: first
/// unmounts (so the temp dirs' removal never crosses into a bind mount), then kills the sleeps,
/// deletes the tables and the link.
#[derive(Default)]
struct HandCleanup {
    mounts: Vec<PathBuf>,
    nft_tables: Vec<String>,
    links: Vec<String>,
}

impl Drop for HandCleanup {
    fn drop(&mut self) {
        for m in self.mounts.iter().rev() {
            while is_mount_point(m) {
                if nix::mount::umount(m.as_path()).is_err() {
                    break;
                }
            }
        }
        for t in &self.nft_tables {
            let _ = Command::new("nft")
                .args(["delete", "table", "ip", t])
                .stderr(Stdio::null())
                .status();
        }
        for l in &self.links {
            let _ = Command::new("ip")
                .args(["link", "del", l])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// True if `p` is a mount point of this mount namespace (by mountinfo, field 5).
fn is_mount_point(p: &Path) -> bool {
    let p = p.to_string_lossy();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .any(|l| l.split(' ').nth(4) == Some(&*p))
}

/// `YYYYmmdd-HHMMSS-<8 lowercase hex>`: the run id form all runs share.
fn is_run_id(id: &str) -> bool {
    let b = id.as_bytes();
    b.len() == 24
        && b[..8].iter().all(u8::is_ascii_digit)
        && b[8] == b'-'
        && b[9..15].iter().all(u8::is_ascii_digit)
        && b[15] == b'-'
        && b[16..]
            .iter()
            .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(c))
}

fn rand_hex() -> String {
    format!("{:08x}", rand::random::<u32>())
}

fn nft_table_exists(family: &str, name: &str) -> bool {
    Command::new("nft")
        .args(["list", "table", family, name])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Finding "`cleanup` does whatever a ledger says": hand-made ledgers naming what isobench did
/// not make. `cleanup` must leave every canary, process, table and link alone and run no
/// runtime binary from a ledger.
#[test]
fn cleanup_refuses_hostile_ledgers() {
    let test = "cleanup_refuses_hostile_ledgers";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    let d = Dirs::new();
    let outside = tempfile::Builder::new()
        .prefix("hostile-canary-")
        .tempdir()
        .unwrap();
    let out = outside.path().canonicalize().unwrap();
    let roots = [d.base(), out.as_path()];
    let before = census(&roots);
    let mut g = Guard::default();
    let mut hand = HandCleanup::default();
    let id = format!("20260101-000000-{}", rand_hex());
    let run = d.state.join("runs").join(&id);
    std::fs::create_dir_all(run.join("scratch")).unwrap();

    // Canaries outside the run dir, and ways to reach them from inside it.
    let canary_dir = out.join("canary_dir");
    std::fs::create_dir(&canary_dir).unwrap();
    std::fs::write(canary_dir.join("keep"), "canary").unwrap();
    let canary_file = out.join("canary_file");
    std::fs::write(&canary_file, "canary").unwrap();
    std::os::unix::fs::symlink(&canary_dir, run.join("scratch/symlink")).unwrap();
    std::fs::hard_link(&canary_file, run.join("scratch/hardlink")).unwrap();
    let bind_src = out.join("bind_src");
    std::fs::create_dir(&bind_src).unwrap();
    std::fs::write(bind_src.join("keep"), "canary").unwrap();
    let bind_in_run = run.join("scratch/bind");
    std::fs::create_dir(&bind_in_run).unwrap();
    nix::mount::mount(
        Some(&bind_src),
        &bind_in_run,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    hand.mounts.push(bind_in_run.clone());
    // A host mount outside the run dir, named as a `mount` entry.
    let outside_mnt = out.join("outside_mnt");
    std::fs::create_dir(&outside_mnt).unwrap();
    nix::mount::mount(
        Some(&bind_src),
        &outside_mnt,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    hand.mounts.push(outside_mnt.clone());

    // A plain directory posing as a cgroup, listing a sleep's pid in its `cgroup.procs`.
    let fake_cg = out.join("fakecg");
    std::fs::create_dir_all(fake_cg.join("child")).unwrap();
    let sleep_cg = g.spawn(Command::new("sleep").arg("300"));
    let sleep_cg_pid = g.pid(sleep_cg);
    std::fs::write(fake_cg.join("cgroup.procs"), format!("{sleep_cg_pid}\n")).unwrap();
    // A process without any isobench marker, by pid and its correct start time.
    let sleep_p = g.spawn(Command::new("sleep").arg("300"));
    let sleep_p_pid = g.pid(sleep_p);
    let sleep_p_start = start_time(sleep_p_pid).unwrap();
    // A "runtime" that would leave a trace if run.
    let script = out.join("fake-runc");
    let ran = out.join("script_ran");
    std::fs::write(
        &script,
        format!("#!/bin/sh\ntouch '{}'\n", ran.to_string_lossy()),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    // nft tables and a link not isobench's (by name, or by missing ownership mark).
    let canary_table = format!("canary_{}", rand_hex());
    let unmarked_table = format!("isobench_{}", rand_hex());
    for t in [&canary_table, &unmarked_table] {
        hand.nft_tables.push(t.clone());
        let st = Command::new("nft")
            .args(["add", "table", "ip", t])
            .status()
            .unwrap();
        assert!(st.success(), "nft add table ip {t}");
    }
    // A veth pair (the kind the container tier makes) with isobench's prefix, no alias.
    let link = format!("isb{}", rand_hex());
    let peer = format!("isb{}", rand_hex());
    hand.links.push(link.clone());
    let st = Command::new("ip")
        .args(["link", "add", &link, "type", "veth", "peer", "name", &peer])
        .status()
        .unwrap();
    assert!(
        st.success(),
        "ip link add {link} type veth peer name {peer}"
    );
    // A file posing as a sysctl: never written.
    let fake_sysctl = out.join("fake_sysctl");
    std::fs::write(&fake_sysctl, "keep\n").unwrap();

    // The canary dir again, reached by climbing out of the run dir with `..`.
    let escape = run
        .join("../../../..")
        .join(out.file_name().unwrap())
        .join("canary_dir");
    assert!(
        escape.join("keep").is_file(),
        "{test}: {escape:?} must reach the canary"
    );
    let ledger = json!({
        "run_id": id,
        "owner": null,
        "resources": [
            {"kind": "dir", "path": canary_dir},
            {"kind": "dir", "path": run.join("scratch/symlink")},
            {"kind": "dir", "path": escape},
            {"kind": "file", "path": canary_file},
            {"kind": "file", "path": run.join("scratch/hardlink")},
            {"kind": "dir", "path": bind_in_run},
            {"kind": "mount", "path": outside_mnt},
            {"kind": "cgroup", "path": fake_cg.join("child")},
            {"kind": "cgroup", "path": fake_cg},
            {"kind": "process", "pid": sleep_p_pid, "start_time": sleep_p_start},
            {"kind": "oci_container", "runtime": script, "root": run.join("scratch/oci"), "id": "isobench-x"},
            {"kind": "nft_table", "family": "ip", "name": canary_table},
            {"kind": "nft_table", "family": "ip", "name": unmarked_table},
            {"kind": "link", "name": link},
            {"kind": "link", "name": peer},
            {"kind": "sysctl", "path": fake_sysctl, "restore": "clobbered", "set": ""},
            {"kind": "dir", "path": run.join("scratch")},
        ]
    });
    std::fs::write(
        run.join("ledger.json"),
        serde_json::to_vec_pretty(&ledger).unwrap(),
    )
    .unwrap();

    // A run whose owner is alive (this test): cleanup must skip it whole.
    let live_id = format!("20260101-000001-{}", rand_hex());
    let live_run = d.state.join("runs").join(&live_id);
    std::fs::create_dir_all(live_run.join("scratch")).unwrap();
    std::fs::write(live_run.join("scratch/keep"), "live").unwrap();
    let me = i32::try_from(std::process::id()).unwrap();
    let live_ledger = json!({
        "run_id": live_id,
        "owner": {"pid": me, "start_time": start_time(me).unwrap()},
        "resources": [{"kind": "dir", "path": live_run.join("scratch")}]
    });
    std::fs::write(
        live_run.join("ledger.json"),
        serde_json::to_vec(&live_ledger).unwrap(),
    )
    .unwrap();

    // A run directory that is a symlink to someone else's directory.
    let victim = out.join("victim_run");
    std::fs::create_dir(&victim).unwrap();
    std::fs::write(victim.join("precious"), "canary").unwrap();
    let sym_id = format!("20260101-000002-{}", rand_hex());
    std::fs::write(
        victim.join("ledger.json"),
        serde_json::to_vec(&json!({
            "run_id": sym_id, "owner": null,
            "resources": [{"kind": "dir", "path": d.state.join("runs").join(&sym_id)}]
        }))
        .unwrap(),
    )
    .unwrap();
    std::os::unix::fs::symlink(&victim, d.state.join("runs").join(&sym_id)).unwrap();

    let (_code, stdout, stderr) = cleanup(&d, &mut g);
    no_panic("cleanup", &stderr);
    let mut problems: Vec<String> = vec![];

    check!(
        problems,
        canary_dir.join("keep").is_file(),
        "deleted the canary dir"
    );
    check_eq!(
        problems,
        std::fs::read_to_string(&canary_file).ok().as_deref(),
        Some("canary"),
        "canary file deleted or changed"
    );
    check!(
        problems,
        bind_src.join("keep").is_file(),
        "deleted through a bind mount"
    );
    check!(
        problems,
        is_mount_point(&outside_mnt),
        "unmounted a mount outside the run dir"
    );
    check!(
        problems,
        fake_cg.join("child").is_dir() && fake_cg.is_dir(),
        "rmdir'ed a directory that is not a cgroup"
    );
    check!(
        problems,
        common::alive(sleep_cg_pid),
        "killed a pid from a fake cgroup.procs"
    );
    check!(
        problems,
        common::alive(sleep_p_pid),
        "killed a process without an isobench marker"
    );
    check!(
        problems,
        !ran.exists(),
        "executed a runtime named in a ledger"
    );
    check!(
        problems,
        nft_table_exists("ip", &canary_table),
        "deleted nft table ip {canary_table}"
    );
    check!(
        problems,
        nft_table_exists("ip", &unmarked_table),
        "deleted nft table ip {unmarked_table} without isobench's comment"
    );
    check!(
        problems,
        Path::new("/sys/class/net").join(&link).exists(),
        "deleted link {link} without the alias isobench:<id>"
    );
    check!(
        problems,
        Path::new("/sys/class/net").join(&peer).exists(),
        "deleted link {peer} without the alias isobench:<id>"
    );
    check_eq!(
        problems,
        std::fs::read_to_string(&fake_sysctl).ok().as_deref(),
        Some("keep\n"),
        "wrote a 'sysctl' outside /proc/sys"
    );
    check!(
        problems,
        live_run.join("ledger.json").is_file() && live_run.join("scratch/keep").is_file(),
        "cleaned up a run whose owner is alive"
    );
    check!(
        problems,
        victim.join("precious").is_file(),
        "followed a symlinked run directory"
    );

    assert!(
        problems.is_empty(),
        "{test}: cleanup acted on a hostile ledger:\n{}\ncleanup said:\n{stdout}\n{stderr}",
        problems.join("\n")
    );
    // By hand: the guard kills the sleeps, `hand` unmounts and deletes tables and the link.
    drop(g);
    drop(hand);
    assert_census_settles(test, &before, &roots);
}

/// Finding "Bounds" and "Files" (bad `--out`): every bad input is refused before any side
/// effect: non-zero exit (2) with one `error:` line, no state dir entries, no out dir.
#[test]
fn bad_input_is_refused_before_any_side_effect() {
    // Needs no root: bare runs only.
    let test = "bad_input_is_refused_before_any_side_effect";
    let _s = serial();
    let d = Dirs::new();
    let before = census(&d.roots());
    let mem_total_mib: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap()
        / 1024;
    let noop = |extra: &str| {
        format!("name = 'bad'\n[budget]\ncpus = 1\nmemory_mib = 256\n{extra}\n[[workload]]\nkind = 'noop'\n")
    };
    let fs = |fields: &str| {
        format!(
            "name = 'bad'\n[defaults]\nruns = 1\nwarmup = 0\n[budget]\ncpus = 1\nmemory_mib = 256\n\
             [[workload]]\nkind = 'fs'\npath = 'volume'\nrand_ops = 10\nmeta_files = 10\n\
             fsync_ops = 2\ntime_budget_ms = 500\n{fields}\n"
        )
    };
    // (what, scenario text or None for startup.toml, extra args, out dir name)
    let cases: Vec<(&str, Option<String>, Vec<String>)> = vec![
        (
            "-n 4294967295",
            None,
            vec!["-n".into(), "4294967295".into()],
        ),
        (
            "runs = 4294967295",
            Some(noop("[defaults]\nruns = 4294967295")),
            vec![],
        ),
        (
            "budget memory larger than the machine",
            Some(format!(
                "name = 'bad'\n[budget]\ncpus = 1\nmemory_mib = {}\n[[workload]]\nkind = 'noop'\n",
                mem_total_mib * 64
            )),
            vec![],
        ),
        (
            "file_mib larger than free disk",
            Some(fs("file_mib = 1000000000")),
            vec![],
        ),
        ("file_mib = 0", Some(fs("file_mib = 0")), vec![]),
        (
            "a dir field in a workload",
            Some(fs("file_mib = 1\ndir = '/etc'")),
            vec![],
        ),
    ];
    let mut problems = vec![];
    for (k, (what, scenario, extra)) in cases.into_iter().enumerate() {
        let c = d.case(&format!("case{k}"));
        let sc = match scenario {
            Some(text) => {
                let p = c.work.join("bad.toml");
                std::fs::write(&p, text).unwrap();
                p
            }
            None => startup_scenario(),
        };
        let mut cmd = c.run_cmd(&sc, "bare", None, "out");
        cmd.args(&extra);
        problems.extend(refused(what, &c, cmd, &c.work.join("out")));
    }

    // --out an existing non-empty directory of the user's: refused, left unchanged.
    let c = d.case("user-out");
    let user = c.work.join("site");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("index.html"), "<p>mine</p>").unwrap();
    let cmd = c.run_cmd(&startup_scenario(), "bare", Some(1), "site");
    problems.extend(refused(
        "--out a user's non-empty directory",
        &c,
        cmd,
        &c.work.join("nope"),
    ));
    if std::fs::read_to_string(user.join("index.html"))
        .ok()
        .as_deref()
        != Some("<p>mine</p>")
    {
        problems.push("--out a user's directory: the user's index.html was overwritten".into());
    }
    let entries = std::fs::read_dir(&user).unwrap().count();
    if entries != 1 {
        problems.push(format!(
            "--out a user's directory: {} files appeared in it",
            entries - 1
        ));
    }

    // --out ending in `..`: refused, neither the named dir nor results in its parent.
    let c = d.case("dotdot-out");
    let cmd = c.run_cmd(&startup_scenario(), "bare", Some(1), "fresh/..");
    problems.extend(refused(
        "--out ending in ..",
        &c,
        cmd,
        &c.work.join("fresh"),
    ));
    if c.work.join("results.json").exists() {
        problems.push("--out fresh/.. wrote results.json into its parent".into());
    }
    assert!(
        problems.is_empty(),
        "{test}: bad input not refused cleanly:\n{}",
        problems.join("\n")
    );
    assert_census_settles(test, &before, &d.roots());
}

/// Run `c` (bounded) and check it was refused with one line, creating nothing; what went wrong.
fn refused(what: &str, d: &Dirs, mut c: Command, out: &Path) -> Vec<String> {
    let mut g = Guard::default();
    c.stdout(Stdio::null()).stderr(Stdio::piped());
    let i = g.spawn(&mut c);
    let Some((code, _, stderr)) = g.output_within(i, Duration::from_secs(20)) else {
        return vec![format!(
            "{what}: accepted (still running after 20 s, killed)"
        )];
    };
    let mut p = vec![];
    let first = stderr.trim().lines().next().unwrap_or("").to_string();
    if stderr.contains("panicked") {
        p.push(format!("{what}: panicked: {stderr}"));
    }
    if code == 0 || code == -1 {
        p.push(format!("{what}: accepted (exit {code}) {first}"));
        // Whatever the accepted run made is not this check's business any more.
        return p;
    }
    if code != 2 && !first.starts_with("error:") {
        p.push(format!(
            "{what}: exit {code}, want 2 or one `error:` line: {first}"
        ));
    }
    if stderr.trim().lines().count() != 1 {
        p.push(format!("{what}: want one line on stderr, got: {stderr}"));
    }
    let state_entries: Vec<_> = std::fs::read_dir(d.state.join("runs"))
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    if !state_entries.is_empty() {
        p.push(format!("{what}: created run state {state_entries:?}"));
    }
    if out.exists() {
        p.push(format!("{what}: created {out:?} before refusing"));
    }
    p
}

/// Finding "`isobench compare … | head` and `isobench doctor | head` panic on a closed stdout":
/// with stdout a pipe whose reader is gone, both end quietly with exit 0.
#[test]
fn closed_stdout_ends_quietly() {
    // Needs no root: bare runs only.
    let test = "closed_stdout_ends_quietly";
    let _s = serial();
    let d = Dirs::new();
    let before = census(&d.roots());
    {
        let mut g = Guard::default();
        for out in ["a", "b"] {
            let mut c = d.run_cmd(&startup_scenario(), "bare", Some(3), out);
            c.stdout(Stdio::null()).stderr(Stdio::piped());
            let i = g.spawn(&mut c);
            let (code, _, stderr) = g.output_bounded(i, RUN_TIMEOUT);
            assert_eq!(code, 0, "{test}: bare run {out}:\n{stderr}");
        }
        let a = d.work.join("a").to_string_lossy().into_owned();
        let b = d.work.join("b").to_string_lossy().into_owned();
        for args in [vec!["doctor"], vec!["compare", a.as_str(), b.as_str()]] {
            // A pipe whose read end is closed before the command writes: like `| head -c1`
            // after head has exited, without the race.
            let (r, w) = nix::unistd::pipe().unwrap();
            drop(r);
            let mut c = d.isobench();
            c.args(&args).stdout(Stdio::from(w)).stderr(Stdio::piped());
            let i = g.spawn(&mut c);
            let (code, _, stderr) = g.output_bounded(i, SHORT_TIMEOUT);
            no_panic(&args.join(" "), &stderr);
            assert_eq!(
                code,
                0,
                "{test}: `isobench {}` on a closed stdout:\n{stderr}",
                args.join(" ")
            );

            // And the real thing: `| head -c1`.
            let mut c = d.isobench();
            c.args(&args).stdout(Stdio::piped()).stderr(Stdio::piped());
            let i = g.spawn(&mut c);
            {
                use std::io::Read;
                let mut one = [0u8; 1];
                let mut so = g.child(i).stdout.take().unwrap();
                let _ = so.read(&mut one);
            }
            let (code, _, stderr) = g.output_bounded(i, SHORT_TIMEOUT);
            no_panic(&format!("{} | head -c1", args.join(" ")), &stderr);
            // The output may fit in the pipe before the reader goes: then the command ends as
            // it would on a terminal, and `compare` of two 3-launch runs exits 3 (too few runs
            // for any metric to be flagged: docs/compare.md), which is not a crash.
            let normal = if args[0] == "compare" { [0, 3] } else { [0, 0] };
            assert!(
                normal.contains(&code),
                "{test}: `isobench {} | head -c1` exited {code}:\n{stderr}",
                args.join(" ")
            );
        }
    }
    assert_census_settles(test, &before, &d.roots());
}

/// Finding "For a non-root user the state directory is a predictable `/tmp/isobench-<uid>` with
/// no owner check": a state dir that is a symlink, world-writable, or owned by another uid is
/// refused with a message; nothing in it (a planted ledger) is touched, no out dir is made.
#[test]
fn untrusted_state_dir_is_refused() {
    let test = "untrusted_state_dir_is_refused";
    if !privileged(test) {
        return;
    }
    let _s = serial();
    let d = Dirs::new();
    let before = census(&d.roots());
    let base = d.base().to_path_buf();
    // Each case: a directory holding a planted ledger whose own scratch dir holds a canary.
    let plant = |dir: &Path| -> PathBuf {
        let id = format!("20260101-000003-{}", rand_hex());
        let run = dir.join("runs").join(&id);
        std::fs::create_dir_all(run.join("scratch")).unwrap();
        std::fs::write(run.join("scratch/keep"), "canary").unwrap();
        std::fs::write(
            run.join("ledger.json"),
            serde_json::to_vec(&json!({
                "run_id": id, "owner": null,
                "resources": [{"kind": "dir", "path": run.join("scratch")}]
            }))
            .unwrap(),
        )
        .unwrap();
        run.join("scratch/keep")
    };

    let real = base.join("real");
    std::fs::create_dir(&real).unwrap();
    std::fs::set_permissions(&real, std::fs::Permissions::from_mode(0o700)).unwrap();
    let real_canary = plant(&real);
    let symlinked = base.join("symlinked");
    std::os::unix::fs::symlink(&real, &symlinked).unwrap();

    let ww = base.join("world-writable");
    std::fs::create_dir(&ww).unwrap();
    let ww_canary = plant(&ww);
    std::fs::set_permissions(&ww, std::fs::Permissions::from_mode(0o777)).unwrap();

    let other = base.join("other-uid");
    std::fs::create_dir(&other).unwrap();
    let other_canary = plant(&other);
    std::fs::set_permissions(&other, std::fs::Permissions::from_mode(0o700)).unwrap();
    nix::unistd::chown(
        &other,
        Some(nix::unistd::Uid::from_raw(65534)),
        Some(nix::unistd::Gid::from_raw(65534)),
    )
    .unwrap();

    let mut g = Guard::default();
    let mut problems: Vec<String> = vec![];
    for (what, state, canary) in [
        ("a symlink", &symlinked, &real_canary),
        ("world-writable", &ww, &ww_canary),
        ("owned by uid 65534", &other, &other_canary),
    ] {
        let meta_before = std::fs::symlink_metadata(state).unwrap();
        let out = d.work.join("out");
        let mut run = isobench_with_state(state, &d.work);
        run.args(["run"])
            .arg(startup_scenario())
            .args([
                "--backends",
                "bare",
                "-n",
                "1",
                "-q",
                "--no-history",
                "--out",
            ])
            .arg(&out);
        let mut clean = isobench_with_state(state, &d.work);
        clean.arg("cleanup");
        for (cmd, mut c) in [("run", run), ("cleanup", clean)] {
            c.stdout(Stdio::piped()).stderr(Stdio::piped());
            let i = g.spawn(&mut c);
            let (code, _, stderr) = g.output_bounded(i, SHORT_TIMEOUT);
            let first = stderr.trim().lines().next().unwrap_or("");
            check!(
                problems,
                !stderr.contains("panicked"),
                "`{cmd}` with a state dir that is {what} panicked: {stderr}"
            );
            check!(
                problems,
                code != 0 && code != -1,
                "`{cmd}` accepted a state dir that is {what} (exit {code})"
            );
            check!(
                problems,
                code == 0 || stderr.contains(&*state.to_string_lossy()) || stderr.contains("state"),
                "`{cmd}` with a state dir that is {what} must say why: {first}"
            );
            check!(
                problems,
                canary.is_file(),
                "`{cmd}` touched a planted run in a state dir that is {what}"
            );
            check!(
                problems,
                !out.exists(),
                "`{cmd}` with a state dir that is {what} created --out"
            );
            // An accepted run's output is not the next command's business.
            let _ = std::fs::remove_dir_all(&out);
        }
        let meta_after = std::fs::symlink_metadata(state).unwrap();
        check_eq!(
            problems,
            (meta_before.mode(), meta_before.uid(), meta_before.gid()),
            (meta_after.mode(), meta_after.uid(), meta_after.gid()),
            "the state dir that is {what} had its mode or owner changed"
        );
    }
    assert!(
        problems.is_empty(),
        "{test}: untrusted state dirs not refused:\n{}",
        problems.join("\n")
    );
    drop(g);
    assert_census_settles(test, &before, &d.roots());
}
