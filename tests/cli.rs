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
    assert_eq!(
        r["schema_version"],
        isobench::model::results::SCHEMA_VERSION
    );
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
    // 5 runs: the median's interval is [min, max], labelled with its 93.75% coverage.
    assert_eq!(sum["ci_coverage"].as_f64(), Some(0.9375));
    assert!(sum["ci_missing"].is_null());
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
        "tier,workload,metric,unit,better,round,value,position,previous_tier,kind"
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

// ---- Issue 9: signals, closed stdout, bounded input, --out ----------------------------------

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A child that is killed and reaped if the test fails before it ends.
struct Guard(Option<std::process::Child>);

impl Guard {
    fn pid(&self) -> nix::unistd::Pid {
        nix::unistd::Pid::from_raw(i32::try_from(self.0.as_ref().unwrap().id()).unwrap())
    }

    /// Wait for the exit, for at most `limit` (a hang bound, not a timing assertion).
    fn wait(&mut self, limit: Duration) -> std::process::Output {
        let t0 = Instant::now();
        loop {
            let c = self.0.as_mut().unwrap();
            if c.try_wait().unwrap().is_some() {
                return self.0.take().unwrap().wait_with_output().unwrap();
            }
            assert!(
                t0.elapsed() < limit,
                "isobench did not end within {limit:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut c) = self.0.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn wait_for_file(p: &Path, g: &mut Guard) {
    let t0 = Instant::now();
    while !p.is_file() {
        if let Some(st) = g.0.as_mut().unwrap().try_wait().unwrap() {
            panic!("isobench ended ({st}) before writing {}", p.display());
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "no {}",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A long bare run (bounded: 100000 launches) in a throw-away state directory.
fn long_bare_run(dir: &Path) -> (Guard, PathBuf, PathBuf) {
    let out = dir.join("run");
    let state = dir.join("state");
    let child = isobench()
        .args(["run", "scenarios/startup.toml", "--backends", "bare"])
        .args(["-n", "100000", "--quiet", "--no-history", "--out"])
        .arg(&out)
        .env("ISOBENCH_STATE_DIR", &state)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    (Guard(Some(child)), out, state)
}

fn run_dirs(state: &Path) -> Vec<PathBuf> {
    match std::fs::read_dir(state.join("runs")) {
        Ok(rd) => rd.map(|e| e.unwrap().path()).collect(),
        Err(_) => vec![],
    }
}

/// Wait until the run has its run directory (its ledger), so there is something to tear down.
fn wait_for_run_dir(state: &Path) {
    let t0 = Instant::now();
    while run_dirs(state).is_empty() {
        assert!(t0.elapsed() < Duration::from_secs(60), "no run directory");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn results_of(out: &Path) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(out.join("results.json")).unwrap()).unwrap()
}

/// SIGHUP (an ssh session dropping) and SIGQUIT end a run as SIGTERM does: results kept and
/// marked interrupted, teardown done (no run directory left), exit 128 + the signal.
#[test]
fn hangup_and_quit_keep_results_and_tear_down() {
    use nix::sys::signal::Signal;
    for (sig, code) in [(Signal::SIGHUP, 129), (Signal::SIGQUIT, 131)] {
        let dir = tempfile::tempdir().unwrap();
        let (mut g, out, state) = long_bare_run(dir.path());
        wait_for_file(&out.join("results.json"), &mut g);
        wait_for_run_dir(&state);
        nix::sys::signal::kill(g.pid(), sig).unwrap();
        let o = g.wait(Duration::from_secs(120));
        assert_eq!(o.status.code(), Some(code), "{sig}: {}", stderr_of(&o));
        assert!(stderr_of(&o).contains("interrupted"), "{}", stderr_of(&o));
        let r = results_of(&out);
        assert_eq!(r["interrupted"], true, "{sig}");
        assert!(r["finished_at"].is_string());
        assert_eq!(run_dirs(&state), Vec::<PathBuf>::new(), "{sig}: state left");
    }
}

/// A second signal while the run stops still ends the process with the results kept; whatever
/// a hurried exit leaves is in the ledger.
#[test]
fn second_signal_ends_the_run() {
    use nix::sys::signal::Signal;
    let dir = tempfile::tempdir().unwrap();
    let (mut g, out, state) = long_bare_run(dir.path());
    wait_for_file(&out.join("results.json"), &mut g);
    wait_for_run_dir(&state);
    nix::sys::signal::kill(g.pid(), Signal::SIGINT).unwrap();
    nix::sys::signal::kill(g.pid(), Signal::SIGINT).unwrap();
    let o = g.wait(Duration::from_secs(60));
    assert_eq!(o.status.code(), Some(130), "{}", stderr_of(&o));
    assert_eq!(results_of(&out)["interrupted"], true);
    // Teardown finished (no run directory), or a hurried exit left its ledger for `isobench
    // cleanup` and said so. (`isobench cleanup` itself is not run here: it also prunes the
    // Docker image cache of the whole host.)
    for d in run_dirs(&state) {
        assert!(
            d.join("ledger.json").is_file(),
            "{} without ledger",
            d.display()
        );
        assert!(
            stderr_of(&o).contains("isobench cleanup"),
            "{}",
            stderr_of(&o)
        );
    }
}

/// Run `args` with a stdout whose reader is already closed: the first write gets EPIPE.
fn with_closed_stdout(args: &[&std::ffi::OsStr]) -> std::process::Output {
    let (r, w) = nix::unistd::pipe().unwrap();
    drop(r);
    let w = std::fs::File::from(w);
    isobench()
        .args(args)
        .stdout(w)
        .stderr(std::process::Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn closed_stdout_ends_quietly() {
    let dir = tempfile::tempdir().unwrap();
    let history = dir.path().join("h.sqlite");
    let mut runs = vec![];
    for name in ["a", "b"] {
        let out = dir.path().join(name);
        let o = isobench()
            .args([
                "run",
                "scenarios/startup.toml",
                "--backends",
                "bare",
                "-n",
                "3",
            ])
            .args(["--quiet", "--history"])
            .arg(&history)
            .arg("--out")
            .arg(&out)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", stderr_of(&o));
        runs.push(out);
    }
    let os = |s: &str| std::ffi::OsString::from(s);
    let cases: Vec<Vec<std::ffi::OsString>> = vec![
        vec![os("doctor")],
        vec![os("doctor"), os("--json")],
        vec![
            os("compare"),
            runs[0].clone().into(),
            runs[1].clone().into(),
        ],
        vec![
            os("compare"),
            runs[0].clone().into(),
            runs[1].clone().into(),
            os("--format"),
            os("markdown"),
        ],
        vec![os("history"), os("--history"), history.clone().into()],
        vec![os("report"), runs[0].clone().into()],
    ];
    for args in cases {
        let a: Vec<&std::ffi::OsStr> = args.iter().map(|s| s.as_os_str()).collect();
        let o = with_closed_stdout(&a);
        let e = stderr_of(&o);
        assert_eq!(o.status.code(), Some(0), "{args:?}: {e}");
        assert!(!e.contains("panicked"), "{args:?}: {e}");
    }
}

/// A bad input exits 2 with one line naming the file or flag and the fix, and creates nothing:
/// neither the --out directory nor the state directory.
#[test]
fn bad_inputs_are_refused_before_anything_is_created() {
    const OK: &str = "name = 'x'\n[defaults]\nruns = 1\nwarmup = 0\n[[workload]]\nkind = 'noop'\n";
    let w = |body: &str| format!("name = 'x'\n[[workload]]\n{body}\n");
    // (scenario text, extra args, what the message must name)
    let cases: Vec<(String, Vec<&str>, &str)> = vec![
        (OK.into(), vec!["-n", "4294967295"], "100000"),
        (OK.into(), vec!["-n", "100001"], "-n 100001"),
        (OK.into(), vec!["-n", "0"], "-n 0"),
        ("name='x'\n[defaults]\nruns = 4294967295\n[[workload]]\nkind='noop'\n".into(), vec![], "runs"),
        ("name='x'\n[defaults]\nwarmup = 1000000\n[[workload]]\nkind='noop'\n".into(), vec![], "warmup"),
        ("name='x'\n[tier.bare]\ntime_budget_s = 1e12\n[[workload]]\nkind='noop'\n".into(), vec![], "time_budget_s"),
        ("name='x'\n[budget]\nmemory_mib = 1048576\n[[workload]]\nkind='noop'\n".into(), vec![], "MemAvailable"),
        ("name='x'\n[budget]\nmemory_mib = 1099511627776\n[[workload]]\nkind='noop'\n".into(), vec![], "memory_mib"),
        ("name='x'\n[budget]\ncpus = 4096\n[[workload]]\nkind='noop'\n".into(), vec![], "cpus"),
        ("name='x'\n[budget]\ncpu = 1\n[[workload]]\nkind='noop'\n".into(), vec![], "cpu"),
        ("name='x'\nnmae = 'y'\n[[workload]]\nkind='noop'\n".into(), vec![], "nmae"),
        ("name='x'\n[compare]\nalpah = 0.1\n[[workload]]\nkind='noop'\n".into(), vec![], "alpah"),
        (w("kind = 'cpu'\nthreds = 2"), vec![], "threds"),
        (w("kind = 'cpu'\nthreads = 100000"), vec![], "threads"),
        (w("kind = 'cpu'\ntime_budget_ms = 0"), vec![], "time_budget_ms"),
        (w("kind = 'fs'\nfile_mib = 0"), vec![], "file_mib"),
        (w("kind = 'fs'\nfile_mib = 1000000"), vec![], "free"),
        (w("kind = 'fs'\nseq_block_kib = 6"), vec![], "seq_block_kib"),
        (w("kind = 'fs'\ndir = '/etc'"), vec![], "`dir`"),
        (w("kind = 'net'\npeer = '127.0.0.1:1'"), vec![], "`peer`"),
        (w("kind = 'net'\nstream_duration_ms = 100000000"), vec![], "stream_duration_ms"),
        (w("kind = 'net'\nconnect_timeout_ms = 0"), vec![], "connect_timeout_ms"),
        (w("kind = 'memory'\narray_mib = 1000"), vec![], "array_mib"),
        (w("kind = 'memory'\nchase_mib = 600"), vec![], "chase_mib"),
        (w("kind = 'density'\ninstances = 5000"), vec![], "instances"),
        (
            "name='x'\n[budget]\nmemory_mib = 1024\n[[workload]]\nkind='density'\ncounts = [0, 1000]\n".into(),
            vec!["--backends", "emulated"],
            "instances",
        ),
        (OK.into(), vec!["--backends", "bare,vmware"], "vmware"),
        (OK.into(), vec!["--set", "novalue"], "key=value"),
        // --set is typed per backend: an unknown key or a bad value names the valid keys.
        (OK.into(), vec!["--set", "disk_mbb=5"], "disk_mbb"),
        (OK.into(), vec!["--backends", "emulated", "--set", "disk_mbb=5"], "disk_mib="),
        (OK.into(), vec!["--backends", "emulated", "--set", "disk_mib=5"], "256"),
        (OK.into(), vec!["--backends", "microvm", "--set", "disk_aio=posix"], "io_uring"),
        // ... and so are a scenario's [settings].
        ("name='x'\n[settings]\ndisk_mbb = 5\n[[workload]]\nkind='noop'\n".into(), vec!["--backends", "emulated"], "disk_mbb"),
    ];
    for (text, extra, needle) in &cases {
        let dir = tempfile::tempdir().unwrap();
        let scenario = dir.path().join("s.toml");
        std::fs::write(&scenario, text).unwrap();
        let (out_dir, state) = (dir.path().join("out"), dir.path().join("state"));
        let mut cmd = isobench();
        cmd.arg("run").arg(&scenario);
        if !extra.contains(&"--backends") {
            cmd.args(["--backends", "bare"]);
        }
        let o = cmd
            .args(extra)
            .arg("--out")
            .arg(&out_dir)
            .arg("--state-dir")
            .arg(&state)
            .output()
            .unwrap();
        let e = stderr_of(&o);
        assert_eq!(o.status.code(), Some(2), "{text:?} {extra:?}: {e}");
        assert_eq!(e.trim().lines().count(), 1, "{text:?} {extra:?}: {e}");
        assert!(
            e.starts_with("error: ") && e.contains(needle),
            "{needle}: {e}"
        );
        assert!(
            !out_dir.exists() && !state.exists(),
            "{text:?} {extra:?} created files"
        );
    }
    // A scenario file is a short text: a huge one is refused without reading it all.
    let dir = tempfile::tempdir().unwrap();
    let big = dir.path().join("big.toml");
    std::fs::write(&big, vec![b'#'; 2 << 20]).unwrap();
    let o = isobench()
        .arg("run")
        .arg(&big)
        .args(["--backends", "bare", "--state-dir"])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr_of(&o).contains("longer than"), "{}", stderr_of(&o));
    assert!(!dir.path().join("state").exists());
}

fn bare_run_into(out: &Path, state: &Path, extra: &[&str]) -> std::process::Output {
    isobench()
        .args([
            "run",
            "scenarios/startup.toml",
            "--backends",
            "bare",
            "-n",
            "2",
        ])
        .args(["--quiet", "--no-history", "--state-dir"])
        .arg(state)
        .arg("--out")
        .arg(out)
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn out_must_be_new_empty_or_a_run_directory() {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    // A user's directory is left alone...
    let user = dir.path().join("site");
    std::fs::create_dir(&user).unwrap();
    std::fs::write(user.join("index.html"), "mine").unwrap();
    let o = bare_run_into(&user, &state, &[]);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr_of(&o);
    assert!(
        e.contains("not an isobench run directory") && e.contains("--force-out"),
        "{e}"
    );
    assert_eq!(
        std::fs::read_to_string(user.join("index.html")).unwrap(),
        "mine"
    );
    assert_eq!(std::fs::read_dir(&user).unwrap().count(), 1);
    assert!(!state.exists());
    // ...unless --force-out says so.
    let o = bare_run_into(&user, &state, &["--force-out"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert_eq!(results_of(&user)["interrupted"], false);

    // An empty directory and an earlier run's directory are fine.
    let empty = dir.path().join("empty");
    std::fs::create_dir(&empty).unwrap();
    for _ in 0..2 {
        let o = bare_run_into(&empty, &state, &[]);
        assert!(o.status.success(), "{}", stderr_of(&o));
    }

    // Symlinks, '..' and '.' are refused.
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(&empty, &link).unwrap();
    let sub = dir.path().join("sub");
    std::fs::create_dir(&sub).unwrap();
    for (bad, needle) in [
        (link.clone(), "symbolic link"),
        (sub.join(".."), "'..'"),
        (sub.join("../escape"), "'..'"),
        (sub.join("."), "'.'"),
    ] {
        let o = bare_run_into(&bad, &dir.path().join("state2"), &[]);
        assert_eq!(o.status.code(), Some(2), "{}", bad.display());
        assert!(stderr_of(&o).contains(needle), "{}", stderr_of(&o));
        assert!(!dir.path().join("state2").exists());
    }
    assert!(!dir.path().join("escape").exists());
}

/// The default output directory never reuses an existing one: a suffix is added.
#[test]
fn default_out_never_collides() {
    let dir = tempfile::tempdir().unwrap();
    let host = nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned();
    // Occupy the default names of the next minute, each with a user's file.
    let now = chrono::Local::now();
    let reports = dir.path().join("reports");
    std::fs::create_dir(&reports).unwrap();
    for s in -2..60 {
        let stamp = (now + chrono::Duration::seconds(s)).format("%Y%m%d-%H%M%S");
        let d = reports.join(format!("{stamp}-{host}"));
        std::fs::create_dir(&d).unwrap();
        std::fs::write(d.join("keep"), "user").unwrap();
    }
    let o = isobench()
        .current_dir(dir.path())
        .arg("run")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/startup.toml"))
        .args([
            "--backends",
            "bare",
            "-n",
            "2",
            "--no-history",
            "--state-dir",
        ])
        .arg(dir.path().join("state"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr_of(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let results = stdout
        .lines()
        .find_map(|l| l.strip_prefix("results: "))
        .unwrap_or_else(|| panic!("no results line: {stdout}"));
    let run = Path::new(results).parent().unwrap();
    assert!(
        run.file_name().unwrap().to_string_lossy().ends_with("-2"),
        "{results}"
    );
    for e in std::fs::read_dir(&reports).unwrap() {
        let p = e.unwrap().path();
        if p.join("keep").exists() {
            assert!(!p.join("results.json").exists(), "{} reused", p.display());
        }
    }
}

/// `--backends` help and the unknown-tier error list every tier, from the enum; the default
/// set leaves out the tiers isobench does not drive.
#[test]
fn tier_lists_come_from_the_enum() {
    let out = isobench().args(["run", "--help"]).output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    let e = stderr_of(
        &isobench()
            .args(["run", "--backends", "vmware"])
            .output()
            .unwrap(),
    );
    for t in isobench::model::tier::Tier::all() {
        assert!(help.contains(t.as_str()), "{t} missing from --help: {help}");
        assert!(e.contains(t.as_str()), "{t} missing from the error: {e}");
    }
    let default = help
        .split("[default: the scenario's `tiers`, else ")
        .nth(1)
        .and_then(|s| s.split(']').next())
        .unwrap_or_default()
        .split_whitespace()
        .collect::<String>();
    assert!(
        default.contains("bare") && default.contains("emulated"),
        "{help}"
    );
    assert!(
        !default.contains("firecracker") && !default.contains("cloud-hypervisor"),
        "{help}"
    );
}

// ---- Issue 13: the first run answers the question ------------------------------------------

/// `completions SHELL` and `man [SUBCOMMAND]` come from the clap definition: every subcommand
/// and flag is in them, and bash accepts the script.
#[test]
fn completions_and_man_are_generated_from_the_cli() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let o = isobench().args(["completions", shell]).output().unwrap();
        assert!(o.status.success(), "{shell}: {}", stderr_of(&o));
        let s = String::from_utf8_lossy(&o.stdout);
        for word in [
            "run",
            "report",
            "compare",
            "completions",
            "table",
            "backends",
        ] {
            assert!(s.contains(word), "{shell} completions lack {word}");
        }
    }
    let bash = isobench().args(["completions", "bash"]).output().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let script = dir.path().join("isobench.bash");
    std::fs::write(&script, &bash.stdout).unwrap();
    let syntax = Command::new("bash")
        .arg("-n")
        .arg(&script)
        .output()
        .unwrap();
    assert!(syntax.status.success(), "{}", stderr_of(&syntax));
    let bad = isobench().args(["completions", "tcsh"]).output().unwrap();
    assert_eq!(bad.status.code(), Some(2));

    let man = isobench().arg("man").output().unwrap();
    assert!(man.status.success(), "{}", stderr_of(&man));
    let page = String::from_utf8_lossy(&man.stdout);
    assert!(page.starts_with(".ie") || page.starts_with(".TH"), "{page}");
    assert!(
        page.contains(".TH isobench") && page.contains("completions"),
        "{page}"
    );
    let run = isobench().args(["man", "run"]).output().unwrap();
    assert!(run.status.success(), "{}", stderr_of(&run));
    let page = String::from_utf8_lossy(&run.stdout);
    assert!(
        page.contains("isobench\\-run") && page.contains("table"),
        "{page}"
    );
    let nope = isobench().args(["man", "nope"]).output().unwrap();
    assert_eq!(nope.status.code(), Some(2));
    let e = stderr_of(&nope);
    assert!(e.contains("no such subcommand") && e.contains("run"), "{e}");
    assert_eq!(e.trim().lines().count(), 1, "{e}");
}

/// A run ends with one line per claim, then where the files are; the metric table only with
/// --table. `report --open` without a browser says so, prints the path and exits 0; with
/// `$BROWSER` it starts that browser on the page.
#[test]
fn run_ends_with_the_claims_and_report_opens_where_it_can() {
    let dir = tempfile::tempdir().unwrap();
    let out_dir = dir.path().join("run");
    let run = |extra: &[&str]| {
        isobench()
            .args(["run", "scenarios/startup.toml", "--backends", "bare"])
            .args(["-n", "5", "--no-history", "--force-out", "--out"])
            .arg(&out_dir)
            .arg("--state-dir")
            .arg(dir.path().join("state"))
            .args(extra)
            .output()
            .unwrap()
    };
    let o = run(&[]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let lines: Vec<&str> = stdout.lines().collect();
    let at = lines
        .iter()
        .position(|l| l.starts_with("claims ("))
        .unwrap_or_else(|| panic!("no claims block: {stdout}"));
    for (k, id) in (1..=5).enumerate() {
        let l = lines[at + 1 + k];
        assert!(l.starts_with(&format!("  {id} ")), "claim {id}: {l}");
        assert!(
            ["supported", "contradicted", "inconclusive"]
                .iter()
                .any(|v| l.contains(v)),
            "{l}"
        );
    }
    // Only bare ran: claims 2 and 3 say what would decide them.
    assert!(lines[at + 2].contains("needs hardware KVM") && lines[at + 2].contains("microvm"));
    let tail: Vec<&str> = lines[at + 6..].iter().map(|l| &l[..8]).collect();
    assert_eq!(
        tail,
        ["results:", "samples:", "report: ", "summary:"],
        "{stdout}"
    );
    assert!(
        !stdout.contains("ratio to bare"),
        "the table is behind --table: {stdout}"
    );
    let md = std::fs::read_to_string(out_dir.join("summary.md")).unwrap();
    assert!(
        md.contains("### Every metric") && md.contains("launch_to_ready_ms"),
        "{md}"
    );
    let o = run(&["--table"]);
    assert!(o.status.success(), "{}", stderr_of(&o));
    assert!(String::from_utf8_lossy(&o.stdout).contains("ratio to bare"));

    let report = |browser: Option<&Path>| {
        let mut c = isobench();
        c.args(["report", "--open"]).arg(&out_dir);
        for v in ["DISPLAY", "WAYLAND_DISPLAY", "BROWSER"] {
            c.env_remove(v);
        }
        if let Some(b) = browser {
            c.env("BROWSER", b);
        }
        c.output().unwrap()
    };
    let o = report(None);
    assert!(o.status.success(), "{}", stderr_of(&o));
    let s = String::from_utf8_lossy(&o.stdout);
    let page = std::path::absolute(out_dir.join("index.html")).unwrap();
    assert!(
        s.contains("no browser here") && s.contains(&page.display().to_string()),
        "{s}"
    );
    // A stand-in browser that records the page it was given.
    let seen = dir.path().join("seen");
    let browser = dir.path().join("browser.sh");
    std::fs::write(
        &browser,
        format!(
            "#!/bin/sh\necho \"$1\" > {}.tmp && mv {0}.tmp {0}\n",
            seen.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(
        &browser,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )
    .unwrap();
    let o = report(Some(&browser));
    assert!(o.status.success(), "{}", stderr_of(&o));
    // The browser runs on its own; wait for it (bounded), not for a time.
    for _ in 0..200 {
        if seen.exists() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    assert_eq!(
        std::fs::read_to_string(&seen).unwrap().trim(),
        page.display().to_string()
    );
}
