//! Privileged tests of the chroot and container tiers: they really chroot, clone namespaces,
//! mount overlays and create cgroups, then check from inside (the agent's probe) and take a leak
//! census (mounts, cgroup dirs, processes, run directory) after each test.
//!
//! Without root each test prints `SKIPPED <test>: needs root`; with
//! `ISOBENCH_REQUIRE_PRIVILEGED=1` it fails instead.

mod common;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use common::privileged;
use common::tiers::{budget, local_census, run_env};
use isobench::backend::container::Container;
use isobench::backend::registry;
use isobench::backend::{Backend, RunEnv};
use isobench::host::cgroup::{CgroupManager, Hierarchies};
use isobench::host::fs::write_atomic;
use isobench::host::proc::process_start_time;
use isobench::model::facts::HostFacts;
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::cleanup;
use isobench::state::ledger::{Ledger, Owner, Resource, StateDir};
use isobench::workload::Workload;

/// Privileged tests share host-global state (cgroup roots, the census): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Prepare a backend with `prepare`, run `body`, finish (even on panic), then check that
/// nothing leaked.
fn with_backend<B: Backend + ?Sized>(
    tier: Tier,
    prepare: impl FnOnce(&RunEnv) -> Box<B>,
    body: impl FnOnce(&mut B, &RunEnv),
) {
    let tmp = tempfile::tempdir().unwrap();
    let before = local_census(tmp.path(), false);
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let env = run_env(
        &sd,
        &format!("t-{}-{}", tier, std::process::id()),
        tmp.path(),
        budget(2, 512),
    );
    let mut made: Option<Box<B>> = None;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let b = made.insert(prepare(&env));
        body(b, &env);
    }));
    let fin = made.as_mut().map_or(Ok(()), |b| b.finish());
    if res.is_err() {
        // Safety net so a failed test does not leave the host dirty.
        let ledger = Ledger {
            run_id: env.state.id.clone(),
            owner: None,
            resources: env.state.resources(),
        };
        let c = cleanup::cleanup_run(&env.state.dir, &ledger);
        eprintln!("cleanup after failure: {c:?}");
    }
    if let Err(e) = res {
        resume_unwind(e);
    }
    fin.unwrap();
    // Leak census: every resource released, nothing mounted, no cgroup, no child process.
    assert_eq!(
        env.state.resources(),
        vec![],
        "ledger still lists resources"
    );
    let after = local_census(tmp.path(), false);
    assert_eq!(before, after, "leak census differs");
    let left: Vec<_> = std::fs::read_dir(env.state.scratch()).unwrap().collect();
    assert!(left.is_empty(), "scratch not empty: {left:?}");
    isobench::host::fs::safe_remove_tree(&env.state.dir).expect("run dir removable");
}

fn container(env: &RunEnv) -> Box<Container> {
    Box::new(Container::prepare(env).unwrap())
}

fn make(tier: Tier, env: &RunEnv) -> Box<dyn Backend> {
    registry::make(tier, env).unwrap()
}

fn host_ns(kind: &str) -> String {
    std::fs::read_link(format!("/proc/self/ns/{kind}"))
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

fn probe_task(paths: Vec<String>) -> Task {
    Task {
        probe: true,
        probe_paths: paths,
        ..Task::new(Workload::Noop)
    }
}

#[test]
fn container_isolation_seen_from_inside() {
    if !privileged("container_isolation_seen_from_inside") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    with_backend(Tier::Container, container, |b, env| {
        let out = b
            .run_once(&probe_task(vec![
                "/bin/isobench-agent".into(),
                "/etc/passwd".into(),
            ]))
            .unwrap();
        assert_eq!(out.exit_code, Some(0));
        let v = out.report.isolation.expect("probe requested");
        assert_eq!(v.pid, 1, "the agent is PID 1 of its pid namespace");
        assert_eq!(v.hostname, "isobench");
        assert_eq!(v.interfaces, vec!["lo".to_string()]);
        assert_eq!(v.visible_processes, Some(1));
        for ns in ["pid", "mnt", "net", "uts", "ipc", "cgroup"] {
            assert_ne!(
                v.namespaces.get(ns),
                Some(&host_ns(ns)),
                "{ns} namespace shared"
            );
        }
        assert!(v.extra_fds.is_empty(), "leaked fds: {:?}", v.extra_fds);
        assert_eq!(v.cwd, "/");
        assert!(v.root_entries.contains(&"bin".to_string()));
        assert!(!v.root_entries.contains(&"home".to_string()));
        assert_eq!(
            v.visible_paths,
            vec![
                ("/bin/isobench-agent".to_string(), true),
                ("/etc/passwd".to_string(), false)
            ]
        );
        assert_eq!(v.cpus_allowed, env.budget.cpus.len());
        // The cgroup namespace roots the agent at its own cgroup; the limit is the budget's.
        let cg = v.cgroup.expect("/proc is mounted");
        assert!(
            cg.lines().all(|l| l.ends_with(":/")),
            "cgroup not namespaced: {cg}"
        );
        assert_eq!(v.memory_limit_bytes, Some(512 * 1024 * 1024));
    });
}

#[test]
fn container_exit_code_passes_through_and_launches_repeat() {
    if !privileged("container_exit_code_passes_through_and_launches_repeat") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    with_backend(Tier::Container, container, |b, _env| {
        for code in [7, 0, 42] {
            let t = Task {
                exit_code: Some(code),
                ..Task::new(Workload::Noop)
            };
            let out = b.run_once(&t).unwrap();
            assert_eq!(out.exit_code, Some(code));
            assert!(out.timings.launch_to_ready <= out.timings.launch_to_exit);
        }
    });
}

/// SIGTERM to the container's PID 1 ends it with 128 + 15: the agent installs handlers (PID 1
/// gets no default action, so without them the signal would be dropped and the exit code 0).
/// The agent is held mid-run by a result line larger than the pipe, which the host does not
/// read until after the signal. (Whether the line arrives whole depends on who runs first after
/// the signal: the kernel finishes a pipe write whose reader made room before the writer ran.)
#[test]
fn container_sigterm_to_pid1_gives_143() {
    if !privileged("container_sigterm_to_pid1_gives_143") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    with_backend(Tier::Container, container, |b, _env| {
        // About 100 KiB of task (under the 128 KiB limit of one environment string) makes a
        // result line well beyond the 64 KiB pipe buffer.
        let paths: Vec<String> = (0..1800)
            .map(|i| format!("/no/such/path/that/pads/the/result/line/beyond/a/pipe/{i:06}"))
            .collect();
        for (sig, code) in [
            (nix::sys::signal::Signal::SIGTERM, 143),
            (nix::sys::signal::Signal::SIGINT, 130),
        ] {
            let raw = b
                .run_raw(&probe_task(paths.clone()), |pid| {
                    // Let the agent start, install its handlers and block writing its report
                    // (write(2) on fd 1 is syscall 1 on x86_64; elsewhere just wait).
                    let t0 = std::time::Instant::now();
                    while t0.elapsed() < Duration::from_secs(10) {
                        let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall"))
                            .unwrap_or_default();
                        if (cfg!(target_arch = "x86_64") && sc.starts_with("1 0x1 "))
                            || (!cfg!(target_arch = "x86_64")
                                && t0.elapsed() > Duration::from_millis(500))
                        {
                            break;
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    nix::sys::signal::kill(pid, sig).unwrap();
                })
                .unwrap();
            assert_eq!(raw.exit_code, code, "{sig}");
            assert!(raw.stream.ready_at.is_some());
        }
    });
}

#[test]
fn chroot_hides_the_host() {
    if !privileged("chroot_hides_the_host") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("host-marker");
    std::fs::write(&marker, b"host").unwrap();
    // A host fd without close-on-exec must not reach the jail.
    let leaky = std::fs::File::open(marker_dir.path()).unwrap();
    let leaky_fd = std::os::fd::AsRawFd::as_raw_fd(&leaky);
    nix::fcntl::fcntl(
        leaky_fd,
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::empty()),
    )
    .unwrap();
    with_backend(
        Tier::Chroot,
        |e| make(Tier::Chroot, e),
        |b, env| {
            let m = marker.to_string_lossy().into_owned();
            let out = b
                .run_once(&probe_task(vec![m.clone(), "/bin/isobench-agent".into()]))
                .unwrap();
            let v = out.report.isolation.unwrap();
            assert_eq!(
                v.visible_paths,
                vec![(m, false), ("/bin/isobench-agent".to_string(), true)]
            );
            let mut jail: Vec<String> = std::fs::read_dir(env.state.scratch().join("rootfs"))
                .unwrap()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            jail.sort();
            assert_eq!(v.root_entries, jail);
            assert!(v.extra_fds.is_empty(), "leaked fds: {:?}", v.extra_fds);
            assert_eq!(v.cwd, "/");
            // The jail mounts /proc (so the agent can read its own VmHWM): what it shows is the
            // host's pid namespace, i.e. what chroot does not isolate.
            assert!(
                v.visible_processes.unwrap_or(0) > 1,
                "the jail's /proc shows the host's processes: {:?}",
                v.visible_processes
            );
            let t = Task {
                exit_code: Some(7),
                ..Task::new(Workload::Noop)
            };
            assert_eq!(b.run_once(&t).unwrap().exit_code, Some(7));
        },
    );
    drop(leaky);
}

/// A run whose owner is gone (pid alive but start time different = recycled pid) with a live
/// process in its cgroup, a mount in its scratch area and a bind mount of host data below it is
/// fully removed by `cleanup`, and the host data survives. A run whose owner lives is skipped.
#[test]
fn cleanup_removes_a_killed_run() {
    if !privileged("cleanup_removes_a_killed_run") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let before = local_census(tmp.path(), false);
    let host_data = tmp.path().join("host-data");
    std::fs::create_dir(&host_data).unwrap();
    std::fs::write(host_data.join("precious"), b"keep").unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let host = HostFacts::detect();
    let run_id = format!("dead-{}", std::process::id());
    let rs = sd.begin_run(&run_id).unwrap();
    let alive_run = sd.begin_run("alive").unwrap();

    // What a killed container run leaves: cgroups with a process, launch dirs, mounts.
    let cg = CgroupManager::create(
        host.cgroup_layout,
        Path::new(&format!("isobench-{run_id}/launch-1")),
        &budget(2, 512),
        &rs,
    )
    .unwrap();
    let mut sleeper = std::process::Command::new("sleep")
        .arg("1000")
        .spawn()
        .unwrap();
    let spid = i32::try_from(sleeper.id()).unwrap();
    rs.record(Resource::Process {
        pid: spid,
        start_time: process_start_time(spid).unwrap(),
    })
    .unwrap();
    cg.add_pid(nix::unistd::Pid::from_raw(spid)).unwrap();
    let reaper = std::thread::spawn(move || sleeper.wait().unwrap());
    let launch = rs.scratch().join("container/launch-1");
    rs.record(Resource::Dir {
        path: rs.scratch().join("container"),
    })
    .unwrap();
    for d in ["upper", "work", "merged", "bind"] {
        std::fs::create_dir_all(launch.join(d)).unwrap();
    }
    let merged = launch.join("merged");
    rs.record(Resource::Mount {
        path: merged.clone(),
    })
    .unwrap();
    nix::mount::mount(
        Some("tmpfs"),
        &merged,
        Some("tmpfs"),
        nix::mount::MsFlags::empty(),
        Some("size=1m"),
    )
    .unwrap();
    std::fs::write(merged.join("file"), b"x").unwrap();
    // Not recorded: found through /proc/self/mountinfo because it lies below the run dir.
    nix::mount::mount(
        Some(&host_data),
        &launch.join("bind"),
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();

    // The owner "dies": same pid, another start time.
    let ledger_path = rs.dir.join("ledger.json");
    let mut l: Ledger = serde_json::from_slice(&std::fs::read(&ledger_path).unwrap()).unwrap();
    let me = i32::try_from(std::process::id()).unwrap();
    l.owner = Some(Owner {
        pid: me,
        start_time: process_start_time(me).unwrap() + 1,
    });
    write_atomic(&ledger_path, &serde_json::to_vec(&l).unwrap()).unwrap();
    // ... and its lock goes with it.
    let dead_dir = rs.dir.clone();
    drop(rs);

    let report = cleanup::cleanup(&sd);
    let status = reaper.join().unwrap();
    let dead = report
        .runs
        .iter()
        .find(|r| r.run_dir == dead_dir)
        .expect("dead run reported");
    let alive = report
        .runs
        .iter()
        .find(|r| r.run_dir == alive_run.dir)
        .expect("live run reported");
    assert!(alive.skipped.is_some(), "{alive:?}");
    assert!(alive_run.dir.join("ledger.json").exists());
    assert!(dead.errors.is_empty(), "{:?}", dead.errors);
    assert!(dead.dir_removed, "{dead:?}");
    assert_eq!(dead.killed, vec![spid]);
    assert_eq!(status.code(), None, "sleep was killed by a signal");
    assert_eq!(dead.unmounted.len(), 2, "{:?}", dead.unmounted);
    assert!(!dead_dir.exists());
    for d in cg.dirs() {
        assert!(!d.exists(), "{} left", d.display());
    }
    assert_eq!(
        std::fs::read(host_data.join("precious")).unwrap(),
        b"keep",
        "host data behind a bind mount must survive"
    );
    assert_eq!(local_census(tmp.path(), false), before);
}

/// A run-level cgroup that already exists (another run's, a user's) is never adopted: prepare
/// fails saying so, the foreign directory is left as it was, what prepare made in the other
/// hierarchies is gone and nothing stays in the ledger. Issue 9: "runtime cgroup parents are
/// adopted if they already exist" (here the container tier's own parent).
#[test]
fn container_never_adopts_an_existing_run_cgroup() {
    if !privileged("container_never_adopts_an_existing_run_cgroup") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let before = local_census(tmp.path(), false);
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let env = run_env(
        &sd,
        &format!("adopt-{}", std::process::id()),
        tmp.path(),
        budget(2, 512),
    );
    let planned = CgroupManager::at(
        &Hierarchies::detect(),
        env.host.cgroup_layout,
        Path::new(&format!("isobench-{}", env.state.id)),
    )
    .unwrap();
    // The foreign one is the last hierarchy's, so prepare makes the others first.
    let foreign = planned.dirs().last().unwrap().to_path_buf();
    std::fs::create_dir(&foreign).unwrap();
    let err = Container::prepare(&env)
        .err()
        .expect("an existing run cgroup must be refused");
    let msg = err.to_string();
    let foreign_left = foreign.is_dir();
    let others_left: Vec<PathBuf> = planned
        .dirs()
        .iter()
        .filter(|d| **d != foreign && d.exists())
        .map(|d| d.to_path_buf())
        .collect();
    let _ = std::fs::remove_dir(&foreign);
    assert!(
        msg.contains("already exists") && msg.contains("never adopts"),
        "{msg}"
    );
    assert!(foreign_left, "the foreign cgroup was removed");
    assert!(others_left.is_empty(), "left behind: {others_left:?}");
    assert!(
        !env.state
            .resources()
            .iter()
            .any(|r| matches!(r, Resource::Cgroup { .. })),
        "{:?}",
        env.state.resources()
    );
    assert_eq!(local_census(tmp.path(), false), before);
    isobench::host::fs::safe_remove_tree(&env.state.dir).expect("run dir removable");
}

/// On this host's layout the container's cgroup carries pids.max = PIDS_MAX (v1: in the pids
/// hierarchy; v2: when the root offers pids), read back from inside the run's parent.
#[test]
fn container_cgroup_has_pids_max() {
    if !privileged("container_cgroup_has_pids_max") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    with_backend(Tier::Container, container, |c, env| {
        let hier = Hierarchies::detect();
        let layout = env.host.cgroup_layout;
        let run = CgroupManager::at(
            &hier,
            layout,
            Path::new(&format!("isobench-{}", env.state.id)),
        )
        .unwrap();
        let with_pids: Vec<PathBuf> = run
            .dirs()
            .iter()
            .map(|d| d.join("pids.max"))
            .filter(|f| f.exists())
            .collect();
        if hier.has_pids(layout) {
            assert_eq!(with_pids.len(), 1, "{with_pids:?}");
            assert_eq!(
                std::fs::read_to_string(&with_pids[0]).unwrap().trim(),
                isobench::host::cgroup::PIDS_MAX.to_string()
            );
        } else {
            println!("NOTE container_cgroup_has_pids_max: no pids controller here, none expected");
            assert!(with_pids.is_empty());
        }
        // A launch still works under the bound.
        let out = c.run_once(&Task::new(Workload::Noop)).unwrap();
        assert_eq!(out.exit_code, Some(0));
    });
}

/// Median launch->exit over 50 runs of bare, chroot and container (run with --ignored).
#[test]
#[ignore = "timing report, run with --ignored --nocapture"]
fn launch_timings_median() {
    if !privileged("launch_timings_median") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    fn median(mut v: Vec<Duration>) -> Duration {
        v.sort();
        v[v.len() / 2]
    }
    for tier in [Tier::Bare, Tier::Chroot, Tier::Container] {
        with_backend(
            tier,
            |e| make(tier, e),
            |b, _| {
                let t = Task::new(Workload::Noop);
                b.run_once(&t).unwrap(); // warm-up
                let (mut ready, mut exit, mut td) = (vec![], vec![], vec![]);
                for _ in 0..50 {
                    let o = b.run_once(&t).unwrap();
                    ready.push(o.timings.launch_to_ready);
                    exit.push(o.timings.launch_to_exit);
                    td.push(o.timings.teardown);
                }
                println!(
                "TIMING {tier:<10} median launch->ready {:>10.3?}  launch->exit {:>10.3?}  teardown {:>10.3?}",
                median(ready),
                median(exit),
                median(td)
            );
            },
        );
    }
}

/// The agent's peak memory (`VmHWM`, reset at execve) is its own: the noop agent reports about
/// the same on bare as in the container, however much the harness holds. (`ru_maxrss`, read
/// before, kept the harness's peak for a process created by vfork or fork.) The chroot jail has
/// no /proc, so there the metric is absent, never a figure from elsewhere.
#[test]
fn agent_peak_rss_is_the_agents_own() {
    if !privileged("agent_peak_rss_is_the_agents_own") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // Ballast in the harness: a peak inherited from it would be at least this large.
    let ballast = std::hint::black_box(vec![1u8; 64 << 20]);
    let mut peaks = vec![];
    for tier in [Tier::Bare, Tier::Chroot, Tier::Container] {
        with_backend(
            tier,
            |env| make(tier, env),
            |b, _| {
                // The median of a few launches: one launch varies by a few percent (page faults
                // around the binary's pages).
                let mut kib = vec![];
                for _ in 0..5 {
                    let o = b.run_once(&Task::new(Workload::Noop)).unwrap();
                    assert_eq!(o.exit_code, Some(0), "{tier}: {:?}", o.report.error);
                    kib.push(o.report.peak_rss_kib);
                }
                kib.sort_unstable();
                peaks.push((tier, kib[2]));
            },
        );
    }
    drop(ballast);
    println!("agent_peak_rss_kib per tier: {peaks:?}");
    let peak = |t: Tier| peaks.iter().find(|(x, _)| *x == t).and_then(|(_, k)| *k);
    let bare = peak(Tier::Bare).expect("bare: the agent reads its own /proc/self/status");
    let container = peak(Tier::Container).expect("container: the agent has a /proc");
    assert!(
        bare < 32 * 1024,
        "bare reports {bare} KiB: the harness's peak?"
    );
    // Same bytes, same work: the medians agree within 10% (the harness's peak would be 10x).
    let within = |a: u64, b: u64| a.abs_diff(b) * 100 <= a.max(b) * 10;
    assert!(
        within(bare, container),
        "bare {bare} KiB vs container {container} KiB differ by more than 10%"
    );
    match peak(Tier::Chroot) {
        None => println!(
            "note agent_peak_rss_is_the_agents_own: chroot reports no agent_peak_rss_kib (its \
             jail has no /proc); bare and container checked"
        ),
        Some(chroot) => assert!(
            within(bare, chroot),
            "bare {bare} KiB vs chroot {chroot} KiB differ by more than 10%"
        ),
    }
}
