//! The VM tiers for real: the emulated tier boots Debian's kernel under TCG with the agent as
//! /init; the microvm tier is refused (with the reason) on a host without hardware KVM, and
//! boots where there is one.
//!
//! The guest kernel is fetched into the shared cache ($ISOBENCH_CACHE_DIR or
//! /var/cache/isobench) when missing, which needs root and apt. A test that cannot run here says
//! `SKIPPED <test>: <why>`; `ISOBENCH_REQUIRE_VM=1` (emulated) and `ISOBENCH_REQUIRE_KVM=1`
//! (microvm) make it fail instead.

mod common;

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use common::skip;
use common::tiers::metric;
use isobench::backend::registry;
use isobench::backend::vm::kernel::{self, GuestKernel, KernelError};
use isobench::backend::vm::tap;
use isobench::backend::{Backend, BackendError, BackendOptions, RunEnv};
use isobench::host::net::netdev;
use isobench::model::availability::Availability;
use isobench::model::budget::Budget;
use isobench::model::facts::HostFacts;
use isobench::model::facts::KvmKind;
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::ledger::{Resource, StateDir};
use isobench::workload::{
    DataPath, FsParams, IdleParams, MemoryParams, NetParams, NetPath, Workload,
};

/// VM boots take a core each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

/// The cached guest kernel, fetched when missing (root only).
fn guest_kernel(test: &str, require_env: &str) -> Option<GuestKernel> {
    let cache = BackendOptions::default().cache_dir;
    match kernel::locate(&cache, None) {
        Ok(k) => Some(k),
        Err(KernelError::NotCached(_)) if nix::unistd::geteuid().is_root() => {
            println!("fetching the guest kernel into {}", cache.display());
            Some(kernel::fetch(&cache).expect("isobench fetch-kernel"))
        }
        Err(e) => {
            skip(test, &format!("no guest kernel ({e})"), require_env);
            None
        }
    }
}

/// qemu-system-x86_64 processes whose parent is this test process.
fn qemu_children() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(s) = std::fs::read_to_string(e.path().join("stat")) else {
            continue;
        };
        let (Some(open), Some(close)) = (s.find('('), s.rfind(')')) else {
            continue;
        };
        let comm = &s[open + 1..close];
        let ppid = s[close + 2..].split_whitespace().nth(1);
        if comm.starts_with("qemu-system") && ppid == Some(me.as_str()) {
            v.push(e.file_name().to_string_lossy().parse().unwrap_or(0));
        }
    }
    v
}

/// Every file and directory under `dir`.
fn tree(dir: &Path) -> Vec<PathBuf> {
    let mut out = vec![];
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            out.push(e.path());
            out.extend(tree(&e.path()));
        }
    }
    out
}

/// Network devices whose names isobench's VM tiers use (`isb...`).
fn isb_links() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with("isb"))
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// Prepare `tier` with `settings`, run `body`, finish (even on panic), then check that no
/// qemu, no tap, no ledger entry and no file in the run's scratch is left.
fn with_vm(tier: Tier, settings: &[(&str, &str)], body: impl FnOnce(&mut dyn Backend, &RunEnv)) {
    with_vm_mem(tier, settings, 512, body)
}

/// [`with_vm`] with a given guest RAM budget.
fn with_vm_mem(
    tier: Tier,
    settings: &[(&str, &str)],
    memory_mib: u64,
    body: impl FnOnce(&mut dyn Backend, &RunEnv),
) {
    let tmp = tempfile::tempdir().unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let state = Arc::new(
        sd.begin_run(&format!("t-{tier}-{}", std::process::id()))
            .unwrap(),
    );
    let mut options = BackendOptions::default();
    for (k, v) in settings {
        options.settings.insert(k.to_string(), v.to_string());
    }
    let env = RunEnv {
        agent: PathBuf::from(env!("CARGO_BIN_EXE_isobench-agent")),
        state: state.clone(),
        cache_dir: options.cache_dir.clone(),
        budget: Budget {
            cpus: vec![0],
            memory_mib,
        },
        options,
        host: HostFacts::detect(),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let links_before = isb_links();
    let mut made: Option<Box<dyn Backend>> = None;
    let res = catch_unwind(AssertUnwindSafe(|| {
        let b = made.insert(registry::make(tier, &env).unwrap());
        body(b.as_mut(), &env);
    }));
    let fin = made.as_mut().map_or(Ok(()), |b| b.finish());
    assert!(
        qemu_children().is_empty(),
        "qemu left running: {:?}",
        qemu_children()
    );
    assert!(
        state.resources().is_empty(),
        "ledger not empty: {:?}",
        state.resources()
    );
    let left = tree(&state.scratch());
    assert!(left.is_empty(), "files left in the run's scratch: {left:?}");
    let links: Vec<String> = isb_links()
        .into_iter()
        .filter(|l| !links_before.contains(l))
        .collect();
    assert!(links.is_empty(), "tap devices left: {links:?}");
    if let Err(p) = res {
        resume_unwind(p);
    }
    fin.unwrap();
}

/// Boot `tier` `runs` times with a probing noop task and check what the guest saw.
fn boot(tier: Tier, k: &GuestKernel, runs: usize) {
    with_vm(tier, &[], |b, env| {
        println!("{tier} settings: {:?}", b.settings());
        let accel = if tier == Tier::Emulated { "tcg" } else { "kvm" };
        assert_eq!(
            b.settings()["accel"],
            accel,
            "{tier} never runs under another accelerator"
        );
        println!("{tier} versions: {:?}", b.versions());
        for i in 0..runs {
            let mut task = Task::new(Workload::Noop);
            task.probe = true;
            let o = b.run_once(&task).unwrap();
            println!(
                "{tier} run {i}: launch->ready {:?}, launch->exit {:?}, teardown {:?}, exit code {:?}",
                o.timings.launch_to_ready, o.timings.launch_to_exit, o.timings.teardown, o.exit_code
            );
            let view = o.report.isolation.expect("probe requested");
            assert_eq!(
                view.kernel_release, k.version,
                "the agent runs under the guest kernel"
            );
            assert_ne!(view.kernel_release, env.host.kernel, "not the host kernel");
            assert_eq!(view.pid, 1, "the agent is the guest's /init");
            // The agent's own peak, measured in the guest: a few MiB, never QEMU's size.
            let kib = o
                .report
                .peak_rss_kib
                .expect("the guest agent reports agent_peak_rss_kib");
            assert!(
                (256..=32 * 1024).contains(&kib),
                "{tier}: agent_peak_rss_kib {kib} is not the agent's (a few MiB)"
            );
            assert!(o.timings.launch_to_ready <= o.timings.launch_to_exit);
            assert!(
                qemu_children().is_empty(),
                "qemu left running after a launch"
            );
            assert_eq!(
                env.state.resources().len(),
                1,
                "between launches only the prepared work dir is recorded: {:?}",
                env.state.resources()
            );
        }
    });
}

/// A launch that hits its deadline, and one that is cancelled, kill qemu and remove the launch.
#[test]
fn emulated_deadline_and_cancel_leave_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_deadline_and_cancel_leave_nothing";
    if HostFacts::detect().qemu.is_none() {
        return skip(
            test,
            "qemu-system-x86_64 not installed",
            "ISOBENCH_REQUIRE_VM",
        );
    }
    if guest_kernel(test, "ISOBENCH_REQUIRE_VM").is_none() {
        return;
    }
    with_vm(Tier::Emulated, &[("deadline_s", "1")], |b, _| {
        let t0 = std::time::Instant::now();
        match b.run_once(&Task::new(Workload::Noop)) {
            Err(BackendError::Timeout(d, _)) => assert_eq!(d.as_secs(), 1),
            other => panic!("expected a timeout, got {:?}", other.map(|o| o.timings)),
        }
        assert!(
            t0.elapsed().as_secs() < 5,
            "the deadline was not enforced promptly"
        );
    });
    with_vm(Tier::Emulated, &[], |b, env| {
        let cancel = env.cancel.clone();
        let flip = std::thread::spawn(move || {
            std::thread::sleep(std::time::Duration::from_millis(1500));
            cancel.store(true, std::sync::atomic::Ordering::Relaxed);
        });
        let t0 = std::time::Instant::now();
        let r = b.run_once(&Task::new(Workload::Noop));
        flip.join().unwrap();
        assert!(
            matches!(r, Err(BackendError::Interrupted)),
            "expected interrupted, got {:?}",
            r.map(|o| o.timings)
        );
        assert!(
            t0.elapsed().as_secs() < 5,
            "cancel was not acted on promptly"
        );
    });
}

#[test]
fn emulated_boots_the_guest_kernel() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_boots_the_guest_kernel";
    let host = HostFacts::detect();
    if host.qemu.is_none() {
        return skip(
            test,
            "qemu-system-x86_64 not installed",
            "ISOBENCH_REQUIRE_VM",
        );
    }
    let Some(k) = guest_kernel(test, "ISOBENCH_REQUIRE_VM") else {
        return;
    };
    let opts = BackendOptions::default();
    match registry::availability(Tier::Emulated, &host, &opts) {
        Availability::Available { detail } => {
            assert!(
                detail.contains("TCG") && !detail.contains("KVM"),
                "{detail}"
            );
        }
        other => panic!("emulated should be available: {other:?}"),
    }
    boot(Tier::Emulated, &k, 3);
}

#[test]
fn microvm_is_refused_without_hardware_kvm() {
    let host = HostFacts::detect();
    let opts = BackendOptions::default();
    let a = registry::availability(Tier::Microvm, &host, &opts);
    println!("this host's KVM: {}; microvm: {a:?}", host.kvm.label());
    match &host.kvm {
        KvmKind::Hardware { .. } => {
            // Refusal cannot be observed here; the kernel/qemu checks still apply.
            if let Availability::Unavailable { reason, .. } = &a {
                assert!(!reason.contains("/dev/kvm"), "{reason}");
            }
        }
        KvmKind::ParavirtOnly { module } => {
            let Availability::Unavailable { reason, fix } = &a else {
                panic!("microvm must be refused on a paravirtual-only KVM host: {a:?}");
            };
            assert!(
                reason.contains("paravirtual-only") && reason.contains(module),
                "{reason}"
            );
            assert!(
                reason.contains("KVM internal error / emulation failure"),
                "{reason}"
            );
            assert!(fix.contains("vmx/svm") && fix.contains("emulated"), "{fix}");
        }
        KvmKind::Missing | KvmKind::Unusable { .. } => {
            let Availability::Unavailable { reason, .. } = &a else {
                panic!("microvm must be refused without usable KVM: {a:?}");
            };
            assert!(reason.contains("/dev/kvm"), "{reason}");
        }
    }
    if !matches!(host.kvm, KvmKind::Hardware { .. }) {
        // prepare refuses too, before creating anything.
        let tmp = tempfile::tempdir().unwrap();
        let sd = StateDir::open(tmp.path()).unwrap();
        let state = Arc::new(sd.begin_run("refuse").unwrap());
        let env = RunEnv {
            agent: PathBuf::from(env!("CARGO_BIN_EXE_isobench-agent")),
            state: state.clone(),
            cache_dir: opts.cache_dir.clone(),
            budget: Budget {
                cpus: vec![0],
                memory_mib: 512,
            },
            options: opts,
            host,
            cancel: Arc::new(AtomicBool::new(false)),
        };
        match registry::make(Tier::Microvm, &env).map(drop) {
            Err(BackendError::Unavailable { tier, reason }) => {
                assert_eq!(tier, Tier::Microvm);
                assert!(reason.contains("/dev/kvm"), "{reason}");
            }
            other => panic!("prepare must refuse: {:?}", other.err()),
        }
        assert!(state.resources().is_empty());
        assert!(tree(&state.scratch()).is_empty());
    }
}

#[test]
fn microvm_boots_with_kvm() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "microvm_boots_with_kvm";
    let host = HostFacts::detect();
    if !matches!(host.kvm, KvmKind::Hardware { .. }) {
        return skip(
            test,
            &format!("needs hardware KVM (this host: {})", host.kvm.label()),
            "ISOBENCH_REQUIRE_KVM",
        );
    }
    if host.qemu.is_none() {
        return skip(
            test,
            "qemu-system-x86_64 not installed",
            "ISOBENCH_REQUIRE_KVM",
        );
    }
    let Some(k) = guest_kernel(test, "ISOBENCH_REQUIRE_KVM") else {
        return;
    };
    boot(Tier::Microvm, &k, 3);
}

/// Whether the emulated tier can boot here; says why not otherwise.
fn emulated_ready(test: &str) -> bool {
    if HostFacts::detect().qemu.is_none() {
        skip(
            test,
            "qemu-system-x86_64 not installed",
            "ISOBENCH_REQUIRE_VM",
        );
        return false;
    }
    if !nix::unistd::geteuid().is_root() {
        skip(test, "needs root (tap devices)", "ISOBENCH_REQUIRE_VM");
        return false;
    }
    guest_kernel(test, "ISOBENCH_REQUIRE_VM").is_some()
}

/// The fs workload on the emulated tier runs on the virtio-blk disk (an ext4 image on the
/// host), for both data paths, with O_DIRECT, and the image is gone afterwards.
#[test]
fn emulated_fs_on_virtio_blk() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_fs_on_virtio_blk";
    if !emulated_ready(test) {
        return;
    }
    with_vm(Tier::Emulated, &[], |b, env| {
        let s = b.settings();
        assert!(
            s["workload_scaling"].starts_with("emulated: workloads scaled down by time budget"),
            "{s:?}"
        );
        assert!(s["fs_data_path"].contains("virtio-blk"), "{s:?}");
        for path in [DataPath::Rootfs, DataPath::Volume] {
            let mut task = Task::new(Workload::Fs(FsParams {
                dir: "/not-used-in-a-vm".into(),
                path,
                file_mib: 8,
                seq_block_kib: 256,
                rand_ops: 200,
                meta_files: 100,
                fsync_ops: 10,
                direct: true,
                time_budget_ms: 3_000,
            }));
            // lost+found exists only at the root of the ext4 filesystem mkfs made.
            task.probe = true;
            task.probe_paths = vec!["/dev/vda".into(), "/data/lost+found".into()];
            let t0 = std::time::Instant::now();
            let o = b.run_once(&task).unwrap();
            println!(
                "emulated {path:?}: {:.1} s, metrics {:?}",
                t0.elapsed().as_secs_f64(),
                o.report
                    .metrics
                    .iter()
                    .map(|m| format!("{}={:.1}", m.name, m.value))
                    .collect::<Vec<_>>()
            );
            let view = o.report.isolation.as_ref().expect("probe requested");
            assert_eq!(
                view.visible_paths,
                vec![
                    ("/dev/vda".to_string(), true),
                    ("/data/lost+found".to_string(), true)
                ]
            );
            assert_eq!(metric(&o.report, "direct_io"), 1.0, "O_DIRECT on the disk");
            for m in &o.report.metrics {
                assert!(m.value.is_finite() && m.value >= 0.0, "{m:?}");
            }
            for m in [
                "seq_write_mb_per_s",
                "seq_read_mb_per_s",
                "rand_read_iops",
                "rand_write_iops",
            ] {
                assert!(metric(&o.report, m) > 0.0, "{m}");
            }
            let res = env.state.resources();
            assert!(
                res.iter()
                    .any(|r| matches!(r, Resource::File { path } if path.ends_with("disk.ext4"))),
                "the image is in the ledger: {res:?}"
            );
            assert_eq!(res.len(), 2, "work dir and image only: {res:?}");
        }
    });
}

/// The net workload on the emulated tier reaches the host's peer through the tap.
#[test]
fn emulated_net_through_tap() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_net_through_tap";
    if !emulated_ready(test) {
        return;
    }
    with_vm(Tier::Emulated, &[], |b, env| {
        let task = Task::new(Workload::Net(NetParams {
            path: NetPath::Direct,
            stream_duration_ms: 1_000,
            stream_max_mib: 64,
            rr_transactions: 300,
            time_budget_ms: 3_000,
            ..NetParams::default()
        }));
        let t0 = std::time::Instant::now();
        let o = b.run_once(&task).unwrap();
        println!(
            "emulated net: {:.1} s, metrics {:?}",
            t0.elapsed().as_secs_f64(),
            o.report
                .metrics
                .iter()
                .map(|m| format!("{}={:.2}", m.name, m.value))
                .collect::<Vec<_>>()
        );
        let links: Vec<String> = env
            .state
            .resources()
            .into_iter()
            .filter_map(|r| match r {
                Resource::Link { name } => Some(name),
                _ => None,
            })
            .collect();
        assert_eq!(links.len(), 1, "one tap recorded");
        assert!(
            isb_links().contains(&links[0]),
            "the tap exists during the run"
        );
        let m: Vec<(&str, f64)> = o
            .report
            .metrics
            .iter()
            .map(|m| (m.name.as_str(), m.value))
            .collect();
        assert!(!m.is_empty());
        for (name, v) in &m {
            assert!(v.is_finite() && *v >= 0.0, "{name}={v}");
            if name.contains("gbit_per_s") || name.contains("latency") || name.contains("_us") {
                assert!(*v > 0.0, "{name}={v}");
            }
        }
    });
}

/// Two idle VMs at once (density): both run, each its own QEMU; one is stopped by its handle,
/// the other by `finish`; nothing is left.
#[test]
fn emulated_idle_instances() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_idle_instances";
    if !emulated_ready(test) {
        return;
    }
    with_vm(Tier::Emulated, &[], |b, env| {
        let task = Task::new(Workload::Idle(IdleParams { max_s: 120 }));
        let t0 = std::time::Instant::now();
        let one = b.start_idle(&task).unwrap();
        let two = b.start_idle(&task).unwrap();
        println!("2 idle VMs ready in {:.1} s", t0.elapsed().as_secs_f64());
        let pids: Vec<i32> = one
            .host_pids()
            .into_iter()
            .chain(two.host_pids())
            .map(|p| p.as_raw())
            .collect();
        let mut running = qemu_children();
        running.sort_unstable();
        let mut want = pids.clone();
        want.sort_unstable();
        assert_eq!(running, want, "one qemu per instance");
        let procs = env
            .state
            .resources()
            .into_iter()
            .filter(|r| matches!(r, Resource::Process { .. }))
            .count();
        assert_eq!(procs, 2, "both recorded");
        one.stop().unwrap();
        assert_eq!(qemu_children(), vec![pids[1]], "only the second is left");
        // The second is stopped by finish; its handle's stop is then a no-op.
        b.finish().unwrap();
        assert!(qemu_children().is_empty());
        two.stop().unwrap();
    });
}

/// A tap of the name the run draws first already exists (someone else's): it is neither
/// adopted, nor recorded, nor removed; the run takes another name and the launch works.
#[test]
fn emulated_never_adopts_an_existing_tap() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_never_adopts_an_existing_tap";
    if !emulated_ready(test) {
        return;
    }
    with_vm(Tier::Emulated, &[], |b, env| {
        let tag = format!("t{:07x}", std::process::id() & 0xff_ffff);
        netdev::force_next_tags(&[&tag]);
        let taken = format!("isbe{tag}");
        let ip = |args: &[&str]| {
            let st = std::process::Command::new("ip")
                .args(args)
                .status()
                .unwrap();
            assert!(st.success(), "ip {args:?}");
        };
        ip(&["tuntap", "add", "dev", &taken, "mode", "tap"]);
        let r = b.run_once(&Task::new(Workload::Net(NetParams::default())));
        let exists = tap::exists(&taken);
        let alias = netdev::alias_of(&taken);
        let ledger = env.state.resources();
        ip(&["link", "del", "dev", &taken]);
        let o = r.unwrap();
        assert_eq!(o.exit_code, Some(0));
        assert!(exists, "the existing device was removed");
        assert_eq!(alias.as_deref(), Some(""), "the existing device was marked");
        assert!(
            !ledger
                .iter()
                .any(|r| matches!(r, Resource::Link { name } if *name == taken)),
            "a device it did not create stays out of the ledger: {ledger:?}"
        );
        let own: Vec<_> = ledger
            .iter()
            .filter_map(|r| match r {
                Resource::Link { name } => Some(name.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(own.len(), 1, "{own:?}");
        assert_eq!(
            netdev::alias_of(&own[0]),
            Some(format!("isobench:{}", env.state.id))
        );
    });
}

/// With a small guest, the memory workload's defaults do not fit: they are shrunk, and it runs
/// instead of running the guest out of memory.
#[test]
fn emulated_memory_fits_a_small_guest() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let test = "emulated_memory_fits_a_small_guest";
    if !emulated_ready(test) {
        return;
    }
    with_vm_mem(
        Tier::Emulated,
        &[("phase_budget_ms", "1500")],
        320,
        |b, _| {
            let s = b.settings();
            println!("{}", s["workload_scaling"]);
            assert!(
                s["workload_scaling"].contains("memory workload fitted to"),
                "{s:?}"
            );
            let t0 = std::time::Instant::now();
            let o = b
                .run_once(&Task::new(Workload::Memory(MemoryParams::default())))
                .unwrap();
            println!(
                "emulated memory (320 MiB guest): {:.1} s, metrics {:?}",
                t0.elapsed().as_secs_f64(),
                o.report
                    .metrics
                    .iter()
                    .map(|m| format!("{}={:.2}", m.name, m.value))
                    .collect::<Vec<_>>()
            );
            for m in ["copy_gb_per_s", "triad_gb_per_s", "latency_ns"] {
                let v = metric(&o.report, m);
                assert!(v.is_finite() && v > 0.0, "{m}={v}");
            }
        },
    );
}
