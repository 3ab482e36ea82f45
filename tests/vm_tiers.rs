//! The VM tiers for real: the emulated tier boots Debian's kernel under TCG with the agent as
//! /init; the microvm tier is refused (with the reason) on a host without hardware KVM, and
//! boots where there is one.
//!
//! The guest kernel is fetched into the shared cache ($ISOBENCH_CACHE_DIR or
//! /var/cache/isobench) when missing, which needs root and apt. A test that cannot run here says
//! `SKIPPED <test>: <why>`; `ISOBENCH_REQUIRE_VM=1` (emulated) and `ISOBENCH_REQUIRE_KVM=1`
//! (microvm) make it fail instead.

use std::panic::{catch_unwind, resume_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use isobench::backend::vm::kernel::{self, GuestKernel, KernelError};
use isobench::backend::{
    self, Availability, Backend, BackendError, BackendOptions, Budget, RunEnv,
};
use isobench::host::{HostFacts, KvmKind};
use isobench::protocol::Task;
use isobench::state::StateDir;
use isobench::tier::Tier;
use isobench::workload::Workload;

/// VM boots take a core each: one at a time.
static SERIAL: Mutex<()> = Mutex::new(());

fn skip(test: &str, why: &str, require_env: &str) {
    println!("SKIPPED {test}: {why}");
    assert!(
        std::env::var(require_env).as_deref() != Ok("1"),
        "{test}: {why}, and {require_env}=1 is set"
    );
}

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

/// Prepare `tier` with `settings`, run `body`, finish (even on panic), then check that no
/// qemu, no ledger entry and no file in the run's scratch is left.
fn with_vm(tier: Tier, settings: &[(&str, &str)], body: impl FnOnce(&mut dyn Backend, &RunEnv)) {
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
            memory_mib: 512,
        },
        options,
        host: HostFacts::detect(),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let mut b = backend::make(tier);
    let res = catch_unwind(AssertUnwindSafe(|| {
        b.prepare(&env).unwrap();
        body(b.as_mut(), &env);
    }));
    let fin = b.finish();
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
    if let Err(p) = res {
        resume_unwind(p);
    }
    fin.unwrap();
}

/// Boot `tier` `runs` times with a probing noop task and check what the guest saw.
fn boot(tier: Tier, k: &GuestKernel, runs: usize) {
    with_vm(tier, &[], |b, env| {
        println!("{tier} settings: {:?}", b.settings());
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
    match backend::availability(Tier::Emulated, &host, &opts) {
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
    let a = backend::availability(Tier::Microvm, &host, &opts);
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
        let mut b = backend::make(Tier::Microvm);
        match b.prepare(&env) {
            Err(BackendError::Unavailable { tier, reason }) => {
                assert_eq!(tier, Tier::Microvm);
                assert!(reason.contains("/dev/kvm"), "{reason}");
            }
            other => panic!("prepare must refuse: {:?}", other.err()),
        }
        b.finish().unwrap();
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
