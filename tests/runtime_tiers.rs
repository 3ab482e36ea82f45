//! Privileged tests of the runtime tiers (docker, runc, gvisor; lxc where it runs; crun's
//! reason on a hybrid cgroup host): startup, one workload of each family with tiny parameters,
//! the isolation probe from inside, and a leak census (runtime containers, cgroups, mounts,
//! processes) before and after.
//!
//! A tier whose package is missing prints `SKIPPED <test>: <reason>` and fails under
//! `ISOBENCH_REQUIRE_PRIVILEGED=1`. When only dockerd is not running, the docker test starts
//! one itself (`dockerd` on the default socket) and stops it afterwards.

mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::sh;
use common::tiers::{budget, metric, run_env};
use isobench::backend::{registry, Backend, BackendOptions, Outcome, RunEnv};
use isobench::model::availability::Availability;
use isobench::model::facts::HostFacts;
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::cleanup;
use isobench::state::ledger::{Ledger, Resource, StateDir};
use isobench::workload::{
    CpuParams, DataPath, FsParams, MemoryParams, NetParams, NetPath, Workload,
};

static SERIAL: Mutex<()> = Mutex::new(());

fn skip(test: &str, reason: &str) {
    common::skip(test, reason, "ISOBENCH_REQUIRE_PRIVILEGED");
}

/// Is `tier` usable? Prints the skip line and returns false otherwise.
fn usable(test: &str, tier: Tier) -> bool {
    if !nix::unistd::geteuid().is_root() {
        skip(test, "needs root");
        return false;
    }
    match registry::availability(tier, &HostFacts::detect(), &BackendOptions::default()) {
        Availability::Available { .. } => true,
        Availability::Unavailable { reason, fix } => {
            skip(test, &format!("{reason} ({fix})"));
            false
        }
    }
}

/// What a test must not leave behind.
#[derive(Debug, PartialEq)]
struct Census {
    mounts: Vec<String>,
    cgroups: BTreeSet<PathBuf>,
    docker: Vec<String>,
    runc_default: Vec<String>,
    runsc_default: Vec<String>,
    processes: Vec<String>,
}

/// Everything that belongs to this test's run (other sessions may run isobench concurrently):
/// mounts under `tmp`, cgroups and containers named with `run`, processes whose command line
/// names `tmp` or whose cgroup names `run`.
fn census(tmp: &Path, run: &str) -> Census {
    let t = tmp.to_string_lossy().into_owned();
    let mounts = common::tiers::mounts_under(tmp);
    let cgroups = common::tiers::isobench_cgroups(|n| n.contains(run));
    let docker = if Path::new("/var/run/docker.sock").exists() {
        sh(
            "docker",
            &[
                "ps",
                "-a",
                "--filter",
                &format!("name=isobench-{run}"),
                "--format",
                "{{.Names}}",
            ],
        )
        .lines()
        .map(String::from)
        .collect()
    } else {
        vec![]
    };
    let isob = |s: String| -> Vec<String> {
        s.lines()
            .filter(|l| l.contains(run))
            .map(String::from)
            .collect()
    };
    let mut processes: Vec<String> = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Ok(c) = std::fs::read(e.path().join("cmdline")) {
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            let cg = std::fs::read_to_string(e.path().join("cgroup")).unwrap_or_default();
            if c.contains(&t) || cg.contains(run) {
                processes.push(c);
            }
        }
    }
    processes.sort();
    Census {
        mounts,
        cgroups,
        docker,
        runc_default: isob(sh("runc", &["list"])),
        runsc_default: isob(sh("runsc", &["list"])),
        processes,
    }
}

/// Prepare `tier`, run `body`, finish (even on panic), then: ledger empty, census unchanged,
/// scratch empty.
fn with_backend(tier: Tier, body: impl FnOnce(&mut dyn Backend, &RunEnv)) {
    let tmp = tempfile::tempdir().unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    // The run id is the state's own (unique, made by begin_run), as in a real run.
    let env = run_env(&sd, &format!("rt-{tier}"), tmp.path(), budget(2, 512));
    let run = env.state.id.clone();
    let before = census(tmp.path(), &run);
    let mut made: Option<Box<dyn Backend>> = None;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let b = made.insert(registry::make(tier, &env).unwrap());
        assert!(!b.versions().is_empty(), "{tier}: versions() is empty");
        body(&mut **b, &env);
    }));
    let fin = made.as_mut().map_or(Ok(()), |b| b.finish());
    if res.is_err() || fin.is_err() {
        let ledger = Ledger {
            run_id: env.state.id.clone(),
            owner: None,
            resources: env.state.resources(),
        };
        eprintln!(
            "cleanup after failure: {:?}",
            cleanup::cleanup_run(&env.state.dir, &ledger)
        );
    }
    if let Err(e) = res {
        resume_unwind(e);
    }
    fin.unwrap();
    assert_eq!(
        env.state.resources(),
        vec![],
        "{tier}: ledger still lists resources"
    );
    assert_eq!(
        census(tmp.path(), &run),
        before,
        "{tier}: leak census differs"
    );
    let left: Vec<_> = std::fs::read_dir(env.state.scratch()).unwrap().collect();
    assert!(left.is_empty(), "{tier}: scratch not empty: {left:?}");
    isobench::host::fs::safe_remove_tree(&env.state.dir).expect("run dir removable");
}

fn positive(o: &Outcome, names: &[&str], label: &str) {
    assert_eq!(o.exit_code, Some(0), "{label}");
    for n in names {
        let v = metric(&o.report, n);
        assert!(v.is_finite() && v > 0.0, "{label}: {n} = {v}");
    }
}

fn cpu() -> Task {
    Task::new(Workload::Cpu(CpuParams {
        ops_per_thread: 2_000_000,
        threads: 1,
        time_budget_ms: 2_000,
    }))
}

fn memory() -> Task {
    Task::new(Workload::Memory(MemoryParams {
        array_mib: 8,
        repeats: 1,
        chase_mib: 8,
        chase_accesses: 100_000,
        time_budget_ms: 2_000,
    }))
}

fn fs(path: DataPath) -> Task {
    Task::new(Workload::Fs(FsParams {
        path,
        file_mib: 4,
        seq_block_kib: 256,
        rand_ops: 100,
        meta_files: 20,
        fsync_ops: 5,
        time_budget_ms: 3_000,
        ..FsParams::default()
    }))
}

fn net(path: NetPath) -> Task {
    Task::new(Workload::Net(NetParams {
        path,
        stream_duration_ms: 200,
        rr_transactions: 200,
        time_budget_ms: 2_000,
        ..NetParams::default()
    }))
}

fn host_hostname() -> String {
    nix::unistd::gethostname()
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// Once `run_once` has returned, nothing of the launch is left: no per-launch ledger entry, no
/// launch directory, no runtime state, no container cgroup, no docker container ("released"
/// means every resource gone, whatever the runtime did before its CLI exited).
fn assert_released(tier: Tier, env: &RunEnv) {
    let run = &env.state.id;
    for r in env.state.resources() {
        let per_launch = match &r {
            Resource::OciContainer { .. }
            | Resource::LxcContainer { .. }
            | Resource::DockerContainer { .. }
            | Resource::Process { .. } => true,
            Resource::Dir { path } | Resource::File { path } => path
                .file_name()
                .is_some_and(|n| n.to_string_lossy().starts_with("launch-")),
            _ => false,
        };
        assert!(!per_launch, "{tier}: the ledger still lists {r:?}");
    }
    let base = env.state.scratch().join(tier.as_str());
    for e in std::fs::read_dir(&base).unwrap().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        assert!(
            !n.starts_with("launch-"),
            "{tier}: {n} left in {}",
            base.display()
        );
    }
    if let Ok(rd) = std::fs::read_dir(base.join("state")) {
        let left: Vec<_> = rd.flatten().map(|e| e.file_name()).collect();
        assert!(left.is_empty(), "{tier}: runtime state left: {left:?}");
    }
    let parent = format!("isobench-{tier}-{run}");
    for h in std::fs::read_dir("/sys/fs/cgroup").unwrap().flatten() {
        let Ok(rd) = std::fs::read_dir(h.path().join(&parent)) else {
            continue;
        };
        let leaves: Vec<_> = rd
            .flatten()
            .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
            .map(|e| e.path())
            .collect();
        assert!(
            leaves.is_empty(),
            "{tier}: container cgroups left: {leaves:?}"
        );
    }
    if tier == Tier::Docker {
        let left = sh(
            "docker",
            &[
                "ps",
                "-a",
                "-q",
                "--filter",
                &format!("label=org.isobench.run={run}"),
            ],
        );
        assert!(left.trim().is_empty(), "docker containers left: {left}");
    }
}

/// Startup, every workload family and the probe on one tier.
fn exercise(tier: Tier, nets: &[NetPath]) {
    with_backend(tier, |b, env| {
        let o = b.run_once(&Task::new(Workload::Noop)).unwrap();
        assert_released(tier, env);
        assert_eq!(o.exit_code, Some(0));
        assert!(
            o.timings.launch_to_ready < o.timings.launch_to_exit,
            "{tier}: ready {:?} !< exit {:?}",
            o.timings.launch_to_ready,
            o.timings.launch_to_exit
        );
        println!(
            "STARTUP {tier:<8} ready {:>7.1} ms  exit {:>7.1} ms  teardown {:>7.1} ms",
            o.timings.launch_to_ready.as_secs_f64() * 1e3,
            o.timings.launch_to_exit.as_secs_f64() * 1e3,
            o.timings.teardown.as_secs_f64() * 1e3
        );
        let p = b
            .run_once(&Task {
                probe: true,
                ..Task::new(Workload::Noop)
            })
            .unwrap();
        let v = p.report.isolation.expect("probe view");
        assert!(
            v.pid <= 2,
            "{tier}: agent pid {} (own pid namespace?)",
            v.pid
        );
        assert_eq!(v.hostname, "isobench", "{tier}: own hostname");
        assert_ne!(v.hostname, host_hostname());
        let host_kernel = sh("uname", &["-r"]).trim().to_string();
        if tier == Tier::Gvisor {
            assert_ne!(
                v.kernel_release, host_kernel,
                "gVisor reports its own kernel"
            );
        } else {
            assert_eq!(v.kernel_release, host_kernel);
        }
        let o = b.run_once(&cpu()).unwrap();
        positive(&o, &["single_ops_per_s"], &format!("{tier} cpu"));
        let o = b.run_once(&memory()).unwrap();
        positive(&o, &["copy_gb_per_s"], &format!("{tier} memory"));
        for path in [DataPath::Rootfs, DataPath::Volume] {
            let o = b.run_once(&fs(path)).unwrap();
            positive(
                &o,
                &["seq_write_mb_per_s", "seq_read_mb_per_s", "meta_ops_per_s"],
                &format!("{tier} fs {path:?}"),
            );
        }
        for &path in nets {
            let o = b.run_once(&net(path)).unwrap();
            positive(&o, &["stream_gbit_per_s"], &format!("{tier} net {path:?}"));
        }
        assert_released(tier, env);
    });
}

#[test]
fn runc_end_to_end() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if usable("runc_end_to_end", Tier::Runc) {
        exercise(Tier::Runc, &[NetPath::Direct]);
    }
}

#[test]
fn gvisor_end_to_end() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if usable("gvisor_end_to_end", Tier::Gvisor) {
        exercise(Tier::Gvisor, &[NetPath::Direct]);
    }
}

#[test]
fn lxc_end_to_end() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    if usable("lxc_end_to_end", Tier::Lxc) {
        exercise(Tier::Lxc, &[NetPath::Direct]);
    }
}

#[test]
fn runc_and_gvisor_density() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for (name, tier) in [
        ("runc_density", Tier::Runc),
        ("gvisor_density", Tier::Gvisor),
    ] {
        if !usable(name, tier) {
            continue;
        }
        with_backend(tier, |b, _| {
            let p = isobench::workload::DensityParams {
                counts: vec![0, 1, 2],
                settle_ms: 100,
                instances: None,
            };
            let m = isobench::measure::density::measure(b, &p).unwrap();
            let pss = m
                .iter()
                .find(|x| x.name == "memory_per_instance_mib")
                .expect("pss slope measured");
            let cg = m
                .iter()
                .find(|x| x.name == "cgroup_memory_per_instance_mib")
                .expect("the container's cgroup measured (its leaf)");
            if tier == Tier::Runc {
                assert!(cg.value > 0.0, "{tier}: cgroup slope {}", cg.value);
            }
            // The runtime CLI plus the container beneath it: more than nothing, less than a VM.
            assert!(
                pss.value > 0.5 && pss.value < 512.0,
                "{tier}: pss {}",
                pss.value
            );
        });
    }
}

/// Docker idle instances: the container's shim and processes (not the CLI's tree), its own
/// cgroup, a slope per instance; nothing left behind (the census of `with_backend`).
#[test]
fn docker_density() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(own) =
        common::dockerd::dockerd_if_needed("docker_density", "/tmp/isobench-test-dockerd.log")
    else {
        return;
    };
    with_backend(Tier::Docker, |b, _| {
        let idle = isobench::protocol::Task::new(isobench::workload::Workload::Idle(
            isobench::workload::IdleParams { max_s: 60 },
        ));
        let i = b.start_idle(&idle).unwrap();
        let pids = i.host_pids();
        let comms: Vec<String> = pids
            .iter()
            .map(|p| std::fs::read_to_string(format!("/proc/{p}/comm")).unwrap_or_default())
            .map(|c| c.trim().to_string())
            .collect();
        assert!(
            comms.iter().any(|c| c.starts_with("containerd-shim"))
                && comms.iter().any(|c| c.starts_with("isobench-agent")),
            "{comms:?}"
        );
        assert!(
            !comms.iter().any(|c| c == "docker"),
            "the CLI is not the instance: {comms:?}"
        );
        assert!(i.cgroup_memory_bytes().is_some_and(|m| m > 0));
        i.stop().unwrap();
        let p = isobench::workload::DensityParams {
            counts: vec![0, 1, 2],
            settle_ms: 100,
            instances: None,
        };
        let m = isobench::measure::density::measure(b, &p).unwrap();
        let get = |n: &str| m.iter().find(|x| x.name == n).map(|x| x.value);
        let pss = get("memory_per_instance_mib").expect("pss slope");
        assert!(pss > 0.5 && pss < 64.0, "docker pss slope {pss}");
        // The cgroup slope is fitted, not its sign asserted: with counts 0, 1, 2 it rests on two
        // points, and a cgroup is charged for the page cache it touches first, so the second
        // instance can be charged less than the first (the readings themselves are checked
        // above: each instance's own cgroup holds memory).
        assert!(get("cgroup_memory_per_instance_mib").is_some_and(f64::is_finite));
        assert_eq!(get("instances_exited_early"), Some(0.0));
    });
    drop(own);
}

#[test]
fn docker_end_to_end() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(own) =
        common::dockerd::dockerd_if_needed("docker_end_to_end", "/tmp/isobench-test-dockerd.log")
    else {
        return;
    };
    exercise(Tier::Docker, &[NetPath::Direct, NetPath::Nat]);
    // The image cache is isobench's and goes with `isobench cleanup`.
    let removed = isobench::backend::runtimes::docker::remove_cached_images(false)
        .unwrap()
        .removed;
    assert!(
        removed
            .iter()
            .all(|r| r.starts_with("isobench/agent:") || r.starts_with("<untagged> sha256:")),
        "{removed:?}"
    );
    drop(own);
}

#[test]
fn crun_says_why_on_a_hybrid_host() {
    let host = HostFacts::detect();
    let a = registry::availability(Tier::Crun, &host, &BackendOptions::default());
    if host.cgroup_layout == isobench::model::facts::CgroupLayout::Hybrid
        && isobench::host::facts::which("crun").is_some()
        && host.is_root
    {
        match a {
            Availability::Unavailable { reason, .. } => {
                assert!(reason.contains("hybrid"), "{reason}")
            }
            a => panic!("crun on a hybrid host must be unavailable: {a:?}"),
        }
    } else {
        println!("crun here: {a:?}");
    }
}

#[test]
fn vmm_tiers_say_why() {
    let host = HostFacts::detect();
    for t in [Tier::Firecracker, Tier::CloudHypervisor] {
        let a = registry::availability(t, &host, &BackendOptions::default());
        assert!(!a.is_available(), "{t} is not driven: {a:?}");
    }
}

/// The runtimes' run-level cgroup parent (`isobench-<tier>-<run>`) that already exists in one
/// hierarchy (another run's, a user's) is refused, never adopted: prepare fails saying so, the
/// foreign directory stays, the parents prepare made elsewhere are gone, the ledger holds no
/// cgroup. Issue 9: "runtime cgroup parents are adopted if they already exist".
#[test]
fn runtime_cgroup_parents_are_never_adopted() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for tier in [Tier::Runc, Tier::Gvisor, Tier::Lxc] {
        if !usable("runtime_cgroup_parents_are_never_adopted", tier) {
            continue;
        }
        let tmp = tempfile::tempdir().unwrap();
        let sd = StateDir::open(tmp.path().join("state")).unwrap();
        let env = run_env(&sd, &format!("adopt-{tier}"), tmp.path(), budget(2, 512));
        let run = env.state.id.clone();
        let before = census(tmp.path(), &run);
        let parents = isobench::backend::runtimes::oci::cgroup_dirs_for(
            &isobench::host::cgroup::Hierarchies::detect(),
            env.host.cgroup_layout,
            &format!("isobench-{tier}-{}", env.state.id),
        );
        assert!(!parents.is_empty());
        let foreign = parents.last().unwrap().clone();
        std::fs::create_dir(&foreign).unwrap();
        let res = registry::make(tier, &env);
        let foreign_left = foreign.is_dir();
        let others: Vec<&PathBuf> = parents
            .iter()
            .filter(|d| **d != foreign && d.exists())
            .collect();
        let _ = std::fs::remove_dir(&foreign);
        let msg = match res {
            Ok(mut b) => {
                let _ = b.finish();
                panic!("{tier}: an existing cgroup parent was adopted");
            }
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("already exists") && msg.contains("never adopts"),
            "{tier}: {msg}"
        );
        assert!(foreign_left, "{tier}: the foreign cgroup was removed");
        assert!(others.is_empty(), "{tier}: left behind {others:?}");
        assert_eq!(env.state.resources(), vec![], "{tier}: ledger not empty");
        assert_eq!(census(tmp.path(), &run), before, "{tier}: census differs");
        isobench::host::fs::safe_remove_tree(&env.state.dir).expect("run dir removable");
    }
}
