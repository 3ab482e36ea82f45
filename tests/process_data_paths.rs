//! Privileged tests of the process tiers' data paths and idle instances: the fs workload on
//! bare, chroot, the container's overlay rootfs and its volume; the net workload over loopback,
//! the container's veth pair and its bridge + NAT path; idle instances started side by side.
//! Each test takes a leak census (mounts, cgroups, network devices, nftables tables,
//! ip_forward, child processes) before and after.
//!
//! Without root each test prints `SKIPPED <test>: needs root`; with
//! `ISOBENCH_REQUIRE_PRIVILEGED=1` it fails instead.

mod common;

use std::collections::BTreeSet;
use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::Path;
use std::sync::Mutex;

use common::tiers::{budget, local_census, metric, run_env};
use common::{privileged, sh};
use isobench::backend::registry;
use isobench::backend::{Backend, Outcome, RunEnv};
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::cleanup;
use isobench::state::ledger::{Ledger, StateDir};
use isobench::workload::{DataPath, FsParams, IdleParams, NetParams, NetPath, Workload};

/// Privileged tests share host-global state (cgroup roots, devices, the census): one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// Prepare the backend of `tier`, run `body`, finish (even on panic), then check that nothing
/// leaked: ledger empty, census unchanged, scratch empty.
fn with_backend(tier: Tier, body: impl FnOnce(&mut dyn Backend, &RunEnv)) {
    let tmp = tempfile::tempdir().unwrap();
    let before = local_census(tmp.path(), true);
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let env = run_env(
        &sd,
        &format!("dp-{tier}-{}", std::process::id()),
        tmp.path(),
        budget(2, 512),
    );
    let mut made: Option<Box<dyn Backend>> = None;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let b = made.insert(registry::make(tier, &env).unwrap());
        body(&mut **b, &env);
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
    assert_eq!(
        env.state.resources(),
        vec![],
        "ledger still lists resources"
    );
    assert_eq!(
        local_census(tmp.path(), true),
        before,
        "leak census differs"
    );
    let left: Vec<_> = std::fs::read_dir(env.state.scratch()).unwrap().collect();
    assert!(left.is_empty(), "scratch not empty: {left:?}");
    isobench::host::fs::safe_remove_tree(&env.state.dir).expect("run dir removable");
}

fn tiny_fs(path: DataPath) -> Task {
    Task {
        probe: true,
        ..Task::new(Workload::Fs(FsParams {
            path,
            file_mib: 4,
            seq_block_kib: 256,
            rand_ops: 200,
            meta_files: 50,
            fsync_ops: 10,
            time_budget_ms: 3_000,
            ..FsParams::default()
        }))
    }
}

fn check_fs(o: &Outcome, label: &str) {
    assert_eq!(o.exit_code, Some(0), "{label}");
    for m in [
        "seq_write_mb_per_s",
        "seq_read_mb_per_s",
        "rand_read_iops",
        "rand_write_iops",
        "meta_ops_per_s",
        "fsync_p50_us",
    ] {
        let v = metric(&o.report, m);
        assert!(v.is_finite() && v > 0.0, "{label}: {m} = {v}");
    }
    println!(
        "FS {label:<18} seq_write {:>8.1} MB/s  seq_read {:>8.1} MB/s  rand_read {:>8.0} IOPS  \
         rand_write {:>8.0} IOPS  direct_io {}",
        metric(&o.report, "seq_write_mb_per_s"),
        metric(&o.report, "seq_read_mb_per_s"),
        metric(&o.report, "rand_read_iops"),
        metric(&o.report, "rand_write_iops"),
        metric(&o.report, "direct_io"),
    );
}

#[test]
fn fs_workload_on_every_process_data_path() {
    if !privileged("fs_workload_on_every_process_data_path") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for tier in [Tier::Bare, Tier::Chroot] {
        with_backend(tier, |b, _| {
            let o = b.run_once(&tiny_fs(DataPath::Rootfs)).unwrap();
            check_fs(&o, &tier.to_string());
        });
    }
    with_backend(Tier::Container, |b, _| {
        let rootfs = b.run_once(&tiny_fs(DataPath::Rootfs)).unwrap();
        check_fs(&rootfs, "container rootfs");
        let volume = b.run_once(&tiny_fs(DataPath::Volume)).unwrap();
        check_fs(&volume, "container volume");
        // The volume is one more mount in the container's namespace, and only there.
        let mounts = |o: &Outcome| o.report.isolation.as_ref().unwrap().mounts.unwrap();
        assert_eq!(mounts(&volume), mounts(&rootfs) + 1);
    });
}

fn tiny_net(path: NetPath) -> Task {
    Task {
        probe: true,
        ..Task::new(Workload::Net(NetParams {
            path,
            stream_duration_ms: 300,
            stream_max_mib: 256,
            stream_block_kib: 64,
            rr_transactions: 300,
            time_budget_ms: 2_000,
            connect_timeout_ms: 3_000,
            ..NetParams::default()
        }))
    }
}

fn check_net(o: &Outcome, label: &str) {
    assert_eq!(o.exit_code, Some(0), "{label}");
    for m in [
        "stream_gbit_per_s",
        "rr_latency_p50_us",
        "rr_latency_p99_us",
        "rr_transactions_per_s",
    ] {
        let v = metric(&o.report, m);
        assert!(v.is_finite() && v > 0.0, "{label}: {m} = {v}");
    }
    println!(
        "NET {label:<16} stream {:>7.2} Gbit/s  rr p50 {:>7.1} us  p99 {:>7.1} us",
        metric(&o.report, "stream_gbit_per_s"),
        metric(&o.report, "rr_latency_p50_us"),
        metric(&o.report, "rr_latency_p99_us"),
    );
}

#[test]
fn net_workload_on_loopback_veth_and_nat() {
    if !privileged("net_workload_on_loopback_veth_and_nat") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    with_backend(Tier::Bare, |b, _| {
        check_net(&b.run_once(&tiny_net(NetPath::Direct)).unwrap(), "bare");
        check_net(&b.run_once(&tiny_net(NetPath::Nat)).unwrap(), "bare (nat)");
    });
    let ip_forward_before = local_census(Path::new("/nonexistent"), true).ip_forward;
    with_backend(Tier::Container, |b, env| {
        let direct = b.run_once(&tiny_net(NetPath::Direct)).unwrap();
        check_net(&direct, "container direct");
        let v = direct.report.isolation.as_ref().unwrap();
        assert_eq!(v.interfaces, vec!["eth0".to_string(), "lo".to_string()]);
        // The per-launch pair is gone with the launch.
        assert!(local_census(Path::new("/nonexistent"), true)
            .links
            .is_empty());
        for _ in 0..2 {
            let nat = b.run_once(&tiny_net(NetPath::Nat)).unwrap();
            check_net(&nat, "container nat");
        }
        // The run-level NAT path stays for the run: bridge, uplink, the run's table, and
        // forwarding on the run's own bridge and uplink only: ip_forward is left as it was (the
        // traffic above went through with it, whatever it is; 0 on the CI host).
        let c = local_census(Path::new("/nonexistent"), true);
        assert_eq!(c.links.len(), 2, "bridge + uplink: {:?}", c.links);
        assert_eq!(c.nft_tables.len(), 1, "{:?}", c.nft_tables);
        assert_eq!(c.ip_forward, ip_forward_before, "ip_forward changed");
        for l in &c.links {
            let fwd = std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{l}/forwarding"));
            assert_eq!(fwd.unwrap().trim(), "1", "forwarding on {l}");
            let alias = std::fs::read_to_string(format!("/sys/class/net/{l}/ifalias")).unwrap();
            assert_eq!(alias.trim(), format!("isobench:{}", env.state.id), "{l}");
        }
        let rules = sh("nft", &["list", "ruleset"]);
        assert!(rules.contains("masquerade"), "{rules}");
        let mark = format!("isobench run {}", env.state.id);
        assert!(rules.contains(&mark), "{rules}");
    });
}

#[test]
fn idle_instances_run_side_by_side() {
    if !privileged("idle_instances_run_side_by_side") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let idle = Task::new(Workload::Idle(IdleParams { max_s: 60 }));
    for (tier, k) in [(Tier::Bare, 2), (Tier::Chroot, 2), (Tier::Container, 3)] {
        with_backend(tier, |b, _| {
            // An idle instance runs only the idle workload.
            assert!(b.start_idle(&Task::new(Workload::Noop)).is_err());
            let instances: Vec<_> = (0..k).map(|_| b.start_idle(&idle).unwrap()).collect();
            let pids: BTreeSet<i32> = instances
                .iter()
                .flat_map(|i| i.host_pids())
                .map(|p| p.as_raw())
                .collect();
            assert_eq!(pids.len(), k, "{tier}: distinct agents");
            for p in &pids {
                let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).unwrap();
                let state = stat.rsplit(')').next().unwrap().trim_start().chars().next();
                assert!(matches!(state, Some('S' | 'R')), "{tier}: {p} is {state:?}");
            }
            if tier == Tier::Container {
                for i in &instances {
                    let mem = i.cgroup_memory_bytes().expect("container cgroup memory");
                    assert!(mem > 0, "cgroup memory {mem}");
                }
            }
            // A normal launch still works while they idle.
            let o = b.run_once(&Task::new(Workload::Noop)).unwrap();
            assert_eq!(o.exit_code, Some(0));
            for i in instances {
                i.stop().unwrap();
            }
            for p in &pids {
                assert!(
                    !Path::new(&format!("/proc/{p}")).exists(),
                    "{p} still there"
                );
            }
        });
    }
}

/// A run killed after building its NAT path (bridge, uplink, nftables table, forwarding on its
/// own devices) is fully undone by `isobench cleanup`'s per-run step, from the ledger alone.
#[test]
fn cleanup_undoes_a_killed_nat_run() {
    if !privileged("cleanup_undoes_a_killed_nat_run") {
        return;
    }
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let tmp = tempfile::tempdir().unwrap();
    let before = local_census(tmp.path(), true);
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let env = run_env(
        &sd,
        &format!("dp-killed-{}", std::process::id()),
        tmp.path(),
        budget(2, 512),
    );
    let mut b = registry::make(Tier::Container, &env).unwrap();
    let run = catch_unwind(AssertUnwindSafe(|| {
        check_net(
            &b.run_once(&tiny_net(NetPath::Nat)).unwrap(),
            "container nat",
        );
    }));
    // The harness "dies": no finish(); the backend's in-process parts (peer, its namespace) go.
    drop(b);
    let ledger = Ledger {
        run_id: env.state.id.clone(),
        owner: None,
        resources: env.state.resources(),
    };
    let c = cleanup::cleanup_run(&env.state.dir, &ledger);
    if let Err(e) = run {
        resume_unwind(e);
    }
    assert!(c.errors.is_empty(), "{:?}", c.errors);
    // The bridge; the uplink pair went with the peer's namespace when the harness "died".
    assert!(c.links_removed.iter().any(|l| l.ends_with("br")), "{c:?}");
    let fw_rules = ledger
        .resources
        .iter()
        .filter(|r| matches!(r, isobench::state::ledger::Resource::IptablesRule { .. }))
        .count();
    assert_eq!(c.iptables_rules_removed.len(), fw_rules, "{c:?}");
    assert_eq!(c.nft_tables_removed.len(), 1, "{c:?}");
    assert!(c.dir_removed);
    assert_eq!(
        local_census(tmp.path(), true),
        before,
        "leak census differs"
    );
}
