//! The VM tiers: one [`Vm`] backend, parameterized by accelerator.
//!
//! - `microvm`: `qemu-system-x86_64 -M microvm -accel kvm -cpu host` (needs hardware KVM);
//! - `emulated`: the same guest with `-accel tcg` (software emulation).
//!
//! The guest is Debian's stock kernel (see [`kernel`]) booted straight into an initramfs that
//! isobench writes itself (see [`initramfs`]) whose `/init` is the agent. The task travels on the
//! kernel command line (`ISOBENCH_TASK=hex:...`, which the kernel hands to /init's environment);
//! the agent's READY and RESULT lines come back on the serial console (QEMU's stdout).
//!
//! Per launch: `plan` (off the clock) fits the workload, makes the run's disk or tap on first
//! need and records the launch's directory; launch = the directory made and QEMU spawned, ready
//! when READY appears on the console, exit when QEMU exits (pidfd), teardown = exit -> the
//! launch's directory removed; ledger releases are written after that, as for every tier. A
//! measured QEMU runs in its own session, dies with the harness (PR_SET_PDEATHSIG) and is
//! killed on the deadline or on cancel; like every tier's measured process it is not recorded
//! by pid (that would put a ledger fsync between launch and ready). Idle instances, which live
//! long, are recorded by (pid, start time) after spawn (see [`launch`]).
//!
//! The agent's peak memory (`agent_peak_rss_kib`) is what the guest agent reports from its own
//! address space; the host passes it through and never fills it from QEMU's process.
//!
//! Data paths, made on first need and kept for the run: the fs workload (`fs` and `fs_volume`
//! alike) runs on a virtio-blk disk backed by a raw ext4 image in the run's scratch ([`disk`]);
//! the net workload (`net` and `net_nat` alike) reaches the host's [`NetPeer`] through a tap
//! device and virtio-net ([`tap`]). Workloads are fitted to the guest's RAM, and under emulation
//! scaled down by time budget ([`scale`]). Idle instances for the density measurement boot
//! without disk or tap, any number at once ([`idle`]). Application servers (issue 12) boot an
//! initramfs that also carries the server's programs, on the run's tap, and serve until asked
//! to stop ([`server`]).
//!
//! `finish` stops live idle instances, then the peer and the tap, then removes the image and
//! the work directory (RELIABILITY rule 2's order). Not protected against: the guest's network
//! traffic is not filtered.

pub mod disk;
pub mod idle;
pub mod initramfs;
pub mod kernel;
pub mod launch;
pub mod qemu;
pub mod scale;
pub mod server;
pub mod tap;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use self::idle::{wait_ready, Registry};
use self::kernel::{GuestKernel, KernelError};
use self::launch::{qemu_said, Launch as Launch_};
use self::qemu::{Accel, Drive, LaunchSpec, Qemu, VmmKind};
use self::scale::Fit;
use crate::backend::launch::cli::{cli_spec, start_cli};
use crate::backend::process::Spec;
use crate::backend::{
    Backend, BackendError, BackendOptions, IdleInstance, Outcome, RunEnv, ServerInstance,
};
use crate::host::net::subnet;
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::facts::KvmKind;
use crate::model::tier::Tier;

use crate::measure::launch::{measure, Launch, Started};
use crate::netpeer::NetPeer;
use crate::protocol::{Task, TASK_ENV};
use crate::state::ledger::{Resource, RunState};
use crate::workload::Workload;

/// Longest a TCG launch may take (boot to userspace is several seconds, workloads are slow).
pub const TCG_DEADLINE: Duration = Duration::from_secs(120);
/// Longest a KVM launch may take.
pub const KVM_DEADLINE: Duration = Duration::from_secs(30);
/// Below this the guest cannot hold the kernel and a small initramfs.
pub const MIN_MEMORY_MIB: u64 = 128;
/// Guest RAM for the kernel image and its allocations, besides twice the initramfs.
pub const KERNEL_HEADROOM_MIB: u64 = 160;
/// x86 COMMAND_LINE_SIZE, terminating NUL included.
pub const MAX_CMDLINE: usize = 2048;

fn accel_of(tier: Tier) -> Accel {
    if tier == Tier::Microvm {
        Accel::Kvm
    } else {
        Accel::Tcg
    }
}

/// Can the VM `tier` run here? Looks only at the host facts, the options and the kernel cache.
pub fn availability(tier: Tier, host: &HostFacts, opts: &BackendOptions) -> Availability {
    let kernel = kernel::locate(&opts.cache_dir, opts.kernel.as_deref());
    decide(tier, host, opts, kernel.as_ref())
}

/// The decision itself, pure: unit-tested for every KVM kind.
pub fn decide(
    tier: Tier,
    host: &HostFacts,
    opts: &BackendOptions,
    kernel: Result<&GuestKernel, &KernelError>,
) -> Availability {
    let accel = accel_of(tier);
    if accel == Accel::Kvm {
        if let Some(refusal) = kvm_refusal(&host.kvm) {
            return refusal;
        }
    }
    let (qemu, version) = match vmm_binary(host, opts) {
        Ok(q) => q,
        Err(a) => return a,
    };
    let k = match kernel {
        Ok(k) => k,
        Err(e) => return Availability::unavailable(e.to_string(), "run `isobench fetch-kernel`"),
    };
    let kvm = match (&host.kvm, accel) {
        (KvmKind::Hardware { module }, Accel::Kvm) => format!(", {module}"),
        _ => String::new(),
    };
    Availability::Available {
        detail: format!(
            "QEMU {} ({}) microvm, {}{kvm}, guest kernel {} ({})",
            version.as_deref().unwrap_or("?"),
            qemu.display(),
            accel.label(),
            k.version,
            k.image_kind()
        ),
    }
}

/// Why the KVM tier cannot run with this /dev/kvm (None when it is hardware KVM).
fn kvm_refusal(kvm: &KvmKind) -> Option<Availability> {
    Some(match kvm {
        KvmKind::Hardware { .. } => return None,
        KvmKind::ParavirtOnly { module } => Availability::unavailable(
            format!(
                "/dev/kvm is a paravirtual-only nested hypervisor ({module}, no vmx/svm): a stock \
                 guest kernel stops with 'KVM internal error / emulation failure'"
            ),
            "run on a host with hardware virtualization (vmx/svm), or use the emulated tier",
        ),
        KvmKind::Unusable { reason } => Availability::unavailable(
            format!("/dev/kvm is not usable: {reason}"),
            "run as root or add the user to group kvm, or use the emulated tier",
        ),
        KvmKind::Missing => Availability::unavailable(
            "/dev/kvm is missing: this host offers no KVM",
            "enable VT-x/AMD-V in the firmware (or nested virtualization on the outer \
             hypervisor) and load kvm_intel or kvm_amd, or use the emulated tier",
        ),
    })
}

/// The QEMU binary to use and its version, or why there is none.
fn vmm_binary(
    host: &HostFacts,
    opts: &BackendOptions,
) -> Result<(PathBuf, Option<String>), Availability> {
    let kind = VmmKind::parse(opts.settings.get("vmm").map(String::as_str))
        .map_err(|e| Availability::unavailable(e, "use --set vmm=qemu (the default)"))?;
    if !kind.implemented() {
        return Err(match kind.find() {
            None => Availability::unavailable(
                format!("not installed: {} not on PATH", kind.binary()),
                format!("install {} or use vmm=qemu (the default)", kind.name()),
            ),
            Some(p) => Availability::unavailable(
                format!(
                    "{} ({}) is installed but isobench drives only QEMU so far",
                    kind.name(),
                    p.display()
                ),
                "use vmm=qemu (the default)",
            ),
        });
    }
    match opts.settings.get("qemu") {
        Some(p) => {
            let p = PathBuf::from(p);
            if !p.is_file() {
                return Err(Availability::unavailable(
                    format!("qemu={} (from --set) is not a file", p.display()),
                    "give the path of qemu-system-x86_64, or drop --set qemu=",
                ));
            }
            let v = Qemu::version(&p);
            Ok((p, v))
        }
        None => match &host.qemu {
            Some(p) => Ok((p.clone(), host.qemu_version.clone())),
            None => Err(Availability::unavailable(
                "qemu-system-x86_64 is not installed (not on PATH)",
                "apt-get install qemu-system-x86",
            )),
        },
    }
}

/// Host TSC frequency in kHz, measured against the monotonic clock. Under TCG the guest's TSC
/// is the host's, and the microvm guest has no other clock to calibrate it (no HPET, and PIT
/// calibration fails under emulation), so it is given on the command line (`tsc_early_khz=`).
pub fn host_tsc_khz() -> Option<u64> {
    #[cfg(target_arch = "x86_64")]
    {
        // SAFETY: rdtsc has no memory effects; every x86_64 CPU has it.
        let t0 = unsafe { core::arch::x86_64::_rdtsc() };
        let i0 = Instant::now();
        std::thread::sleep(Duration::from_millis(50));
        // SAFETY: as above.
        let t1 = unsafe { core::arch::x86_64::_rdtsc() };
        let ns = i0.elapsed().as_nanos();
        let khz = u128::from(t1.checked_sub(t0)?) * 1_000_000 / ns.max(1);
        u64::try_from(khz).ok().filter(|&k| k > 0)
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        None
    }
}

/// The kernel command line without the task: console on the serial port, quiet (every console
/// byte is an emulated UART write), reboot by triple fault and at once on panic (QEMU has
/// `-no-reboot`, so both end it), for TCG the TSC frequency, and the host's transparent huge
/// page mode (Debian's guest kernel defaults to `always` where a host often runs `madvise`: the
/// guest's memory policy should be the host's, not a difference of the tier).
pub fn base_cmdline(accel: Accel, tsc_khz: Option<u64>) -> String {
    let mut s = String::from("console=ttyS0 quiet reboot=t panic=-1 tsc=reliable");
    if let (Accel::Tcg, Some(k)) = (accel, tsc_khz) {
        s.push_str(&format!(" tsc_early_khz={k}"));
    }
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled").ok();
    if let Some(mode) = thp.as_deref().and_then(thp_mode) {
        s.push_str(&format!(" transparent_hugepage={mode}"));
    }
    s
}

/// The selected mode of a `/sys/kernel/mm/transparent_hugepage/enabled` text (the bracketed
/// word, e.g. `always [madvise] never` -> `madvise`).
pub fn thp_mode(text: &str) -> Option<&'static str> {
    let selected = text
        .split_whitespace()
        .find_map(|w| w.strip_prefix('[')?.strip_suffix(']'))?;
    ["always", "madvise", "never"]
        .into_iter()
        .find(|m| *m == selected)
}

/// The full command line with the task; refuses one the kernel would truncate.
pub fn cmdline(base: &str, task: &Task) -> Result<String, BackendError> {
    let s = format!("{base} {TASK_ENV}={}", task.to_hex());
    if s.len() >= MAX_CMDLINE {
        return Err(BackendError::Other(format!(
            "the kernel command line would be {} bytes, over the {MAX_CMDLINE}-byte limit: \
             shorten the task (fewer probe paths or modules)",
            s.len()
        )));
    }
    Ok(s)
}

/// Per-run settings of the data paths (validated in `prepare`, used on first need).
#[derive(Debug, Clone, Copy)]
struct DiskConfig {
    mib: u64,
    cache: &'static str,
    aio: &'static str,
}

/// The run's disk image, once the first fs launch has made it.
struct DiskImage {
    path: PathBuf,
    /// A launch that used it did not end cleanly: reformat before the next one.
    dirty: bool,
}

/// The run's tap device and the host's peer on it, once the first net launch has made them.
struct Net {
    tap: String,
    link: tap::Link,
    peer: NetPeer,
    /// The /30, reserved in the state directory for this run.
    reservation: subnet::Reservation,
}

/// What `prepare` sets up for a run.
struct Prepared {
    state: Arc<RunState>,
    cancel: Arc<AtomicBool>,
    qemu: Qemu,
    qemu_version: Option<String>,
    kernel: GuestKernel,
    /// The agent binary (what every initramfs carries as /init).
    agent: PathBuf,
    /// `<scratch>/<tier>`: the initramfs, the disk image and the per-launch directories.
    work: PathBuf,
    initrd: PathBuf,
    /// The application servers' initramfs, made on first need.
    apps: Vec<server::AppInitrd>,
    modules: Vec<String>,
    cpus: Vec<usize>,
    memory_mib: u64,
    base_cmdline: String,
    deadline: Duration,
    fit: Fit,
    disk_cfg: DiskConfig,
    disk: Option<DiskImage>,
    net: Option<Net>,
    idle: Registry,
}

/// A VM tier.
pub struct Vm {
    tier: Tier,
    accel: Accel,
    p: Prepared,
    /// `finish` ran (it is idempotent).
    finished: bool,
    launches: u64,
    /// What QEMU said on stderr in the last launch (for error messages).
    last_said: String,
    /// The last launch used the run's disk image.
    last_disk: bool,
}

impl Vm {
    /// Prepare a VM tier: validate everything before any side effect, then the run's work
    /// directory (recorded, then made) and the initramfs in it. On failure the directory is
    /// removed (or stays in the ledger for `isobench cleanup`).
    pub fn prepare(tier: Tier, env: &RunEnv) -> Result<Self, BackendError> {
        if !tier.is_vm() {
            return Err(BackendError::Other(format!(
                "internal error: the VM backend asked for the non-VM tier {tier}; report this bug"
            )));
        }
        let accel = accel_of(tier);
        // Validate everything before any side effect.
        let opts = BackendOptions {
            cache_dir: env.cache_dir.clone(),
            ..env.options.clone()
        };
        let kernel = kernel::locate(&opts.cache_dir, opts.kernel.as_deref());
        if let Availability::Unavailable { reason, fix } =
            decide(tier, &env.host, &opts, kernel.as_ref())
        {
            return Err(BackendError::Unavailable {
                tier,
                reason: format!("{reason}; {fix}"),
            });
        }
        let kernel = kernel.map_err(other)?;
        let (qemu, qemu_version) = vmm_binary(&env.host, &opts).map_err(|a| match a {
            Availability::Unavailable { reason, fix } => BackendError::Unavailable {
                tier,
                reason: format!("{reason}; {fix}"),
            },
            Availability::Available { .. } => unreachable!("vmm_binary errs only unavailable"),
        })?;
        if env.budget.cpus.is_empty() {
            return Err(BackendError::Other(
                "the budget has no CPUs: give the VM at least one (--cpus)".into(),
            ));
        }
        // The guest holds the initramfs twice while unpacking it ("Initramfs unpacking failed:
        // write error" otherwise), plus the kernel.
        let initrd_mib = initramfs::estimated_size(&env.agent, &kernel)
            .map_err(other)?
            .div_ceil(1 << 20);
        let need = (2 * initrd_mib + KERNEL_HEADROOM_MIB).max(MIN_MEMORY_MIB);
        if env.budget.memory_mib < need {
            return Err(BackendError::Other(format!(
                "{} MiB is too little for the guest: the initramfs (agent + libraries + modules) is \
                 {initrd_mib} MiB and is unpacked in guest RAM; give at least {need} MiB \
                 (memory_mib), or use a smaller (release, stripped) agent build",
                env.budget.memory_mib
            )));
        }
        // What the workload may use: RAM minus the unpacked initramfs and the kernel.
        let workload_mib = env
            .budget
            .memory_mib
            .saturating_sub(initrd_mib + KERNEL_HEADROOM_MIB)
            .max(scale::MIN_WORKLOAD_MIB);
        let default_deadline = match accel {
            Accel::Tcg => TCG_DEADLINE,
            Accel::Kvm => KVM_DEADLINE,
        };
        let deadline = Duration::from_secs(setting_u64(
            &opts,
            "deadline_s",
            default_deadline.as_secs(),
            1,
        )?);
        let phase_ms = match accel {
            Accel::Tcg => Some(setting_u64(
                &opts,
                "phase_budget_ms",
                scale::DEFAULT_EMULATED_PHASE_MS,
                100,
            )?),
            Accel::Kvm => None,
        };
        let disk_mib = setting_u64(
            &opts,
            "disk_mib",
            disk::DEFAULT_DISK_MIB,
            disk::MIN_DISK_MIB,
        )?;
        let aio = match opts.settings.get("disk_aio").map(String::as_str) {
            None => disk::pick_aio(&qemu),
            Some("threads") => "threads",
            Some("io_uring") => "io_uring",
            Some("native") => "native",
            Some(v) => {
                return Err(BackendError::Other(format!(
                    "--set disk_aio={v}: use threads, io_uring or native"
                )))
            }
        };
        let scratch = env.state.scratch();
        let cache = if disk::supports_direct(&scratch) {
            "none"
        } else {
            tracing::warn!(
                "{} does not support O_DIRECT: the VM disk uses the host page cache \
                 (cache=writeback), so its cold reads are not cold on the host",
                scratch.display()
            );
            "writeback"
        };
        if aio == "native" && cache != "none" {
            return Err(BackendError::Other(format!(
                "--set disk_aio=native needs O_DIRECT, which {} does not support: use \
                 disk_aio=threads or a state directory on a disk filesystem",
                scratch.display()
            )));
        }
        let tsc_khz = match accel {
            Accel::Tcg => host_tsc_khz(),
            Accel::Kvm => None,
        };

        let work = scratch.join(tier.as_str());
        let (initrd, modules) = crate::backend::prepare_run_dir(env, &work, || {
            std::fs::create_dir(&work)
                .map_err(|e| BackendError::io(format!("creating {}", work.display()), e))?;
            let initrd = work.join(initramfs::cache_name(&env.agent, &kernel).map_err(other)?);
            let modules = initramfs::build(&env.agent, &kernel, &initrd)
                .map_err(|e| BackendError::Other(format!("building the initramfs: {e}")))?;
            Ok((initrd, modules))
        })?;
        Ok(Vm {
            tier,
            accel,
            p: Prepared {
                state: env.state.clone(),
                cancel: env.cancel.clone(),
                qemu: Qemu { binary: qemu },
                qemu_version,
                kernel,
                agent: env.agent.clone(),
                work,
                initrd,
                apps: vec![],
                modules,
                cpus: env.budget.cpus.clone(),
                memory_mib: env.budget.memory_mib,
                base_cmdline: base_cmdline(accel, tsc_khz),
                deadline,
                fit: Fit {
                    phase_ms,
                    workload_mib,
                },
                disk_cfg: DiskConfig {
                    mib: disk_mib,
                    cache,
                    aio,
                },
                disk: None,
                net: None,
                idle: Registry::default(),
            },
            finished: false,
            launches: 0,
            last_said: String::new(),
            last_disk: false,
        })
    }
}

fn record(state: &RunState, r: &Resource) -> Result<(), BackendError> {
    state
        .record(r.clone())
        .map_err(|e| BackendError::io("writing the run ledger", e))
}

fn release(state: &RunState, r: &Resource) -> Result<(), BackendError> {
    state
        .release(r)
        .map_err(|e| BackendError::io("writing the run ledger", e))
}

/// Remove a directory isobench made (plain files only, never across a mount) and forget it.
fn remove_dir(state: &RunState, dir: &Path) -> Result<(), BackendError> {
    if dir.exists() {
        kernel::remove_plain_tree(dir).map_err(|e| BackendError::Other(e.to_string()))?;
    }
    release(state, &Resource::Dir { path: dir.into() })
}

/// A whole-number setting above `min`, or `default` when not given.
fn setting_u64(
    opts: &BackendOptions,
    key: &str,
    default: u64,
    min: u64,
) -> Result<u64, BackendError> {
    match opts.settings.get(key) {
        None => Ok(default),
        Some(v) => match v.parse::<u64>() {
            Ok(n) if n >= min => Ok(n),
            _ => Err(BackendError::Other(format!(
                "--set {key}={v}: expected a whole number of at least {min}, e.g. {key}={default}"
            ))),
        },
    }
}

fn other(e: impl std::fmt::Display) -> BackendError {
    BackendError::Other(e.to_string())
}

impl Prepared {
    /// A launch ended uncleanly with the run's disk attached: reformat it before the next use.
    fn mark_disk_dirty(&mut self) {
        if let Some(d) = self.disk.as_mut() {
            d.dirty = true;
        }
    }

    /// The run's data disk for one launch: the image made on first need, the guest told where
    /// to mount it, and the drive QEMU attaches.
    fn attach_disk(&mut self, g: &mut crate::protocol::GuestSetup) -> Result<Drive, BackendError> {
        let path = self.ensure_disk()?;
        g.disk_device = Some(disk::GUEST_DEVICE.into());
        g.disk_mount = Some(disk::GUEST_MOUNT.into());
        Ok(Drive {
            path,
            cache: self.disk_cfg.cache,
            aio: self.disk_cfg.aio,
        })
    }

    /// The run's disk image, made (or remade, when a launch left it dirty) on first need.
    fn ensure_disk(&mut self) -> Result<PathBuf, BackendError> {
        match &mut self.disk {
            Some(d) if !d.dirty => return Ok(d.path.clone()),
            Some(d) => {
                tracing::info!("reformatting {} after an unclean launch", d.path.display());
                disk::format(&d.path, self.disk_cfg.mib).map_err(other)?;
                d.dirty = false;
                return Ok(d.path.clone());
            }
            None => {}
        }
        let path = self.work.join("disk.ext4");
        record(&self.state, &Resource::File { path: path.clone() })?;
        if let Err(e) = disk::format(&path, self.disk_cfg.mib) {
            let _ = std::fs::remove_file(&path);
            let _ = release(&self.state, &Resource::File { path });
            return Err(other(e));
        }
        self.disk = Some(DiskImage {
            path: path.clone(),
            dirty: false,
        });
        Ok(path)
    }

    /// The run's tap and peer, made on first need: the name recorded before the device is
    /// created, never adopted.
    fn ensure_net(&mut self, tier: Tier) -> Result<&Net, BackendError> {
        if self.net.is_none() {
            let used = tap::used_networks().map_err(other)?;
            let reservation = subnet::reserve(
                &subnet::state_root(&self.state),
                &self.state.id,
                tap::RANGE,
                tap::LINK_PREFIX,
                &used,
            )
            .map_err(other)?;
            let link = tap::Link::of(reservation.net);
            // Only a device this call created (and marked) is ever removed.
            let name = match tap::create_fresh(&self.state, tier, &link) {
                Ok(n) => n,
                Err(e) => {
                    let _ = reservation.release();
                    return Err(other(e));
                }
            };
            let res = Resource::Link { name: name.clone() };
            let peer = match NetPeer::start(SocketAddr::from((link.host, 0))) {
                Ok(p) => p,
                Err(e) => {
                    if tap::delete(&name, &self.state.id).is_ok() {
                        let _ = release(&self.state, &res);
                    }
                    let _ = reservation.release();
                    return Err(other(e));
                }
            };
            tracing::info!(
                "tap {name}: host {} (peer {}), guest {}",
                link.host_cidr(),
                peer.local_addr(),
                link.guest_cidr()
            );
            self.net = Some(Net {
                tap: name,
                link,
                peer,
                reservation,
            });
        }
        Ok(self.net.as_ref().expect("just made"))
    }

    /// The spec for a launch of `task` (which already carries its guest setup).
    fn spec(&self, accel: Accel, task: &Task) -> Result<LaunchSpec, BackendError> {
        Ok(LaunchSpec {
            accel,
            kernel: self.kernel.image.clone(),
            initrd: self.initrd.clone(),
            cmdline: cmdline(&self.base_cmdline, task)?,
            memory_mib: self.memory_mib,
            vcpus: self.cpus.len(),
            disk: None,
            tap: None,
        })
    }

    /// The QEMU process of a launch of `spec`: its own session, on the budget's CPUs, marked
    /// with the run id (what `isobench cleanup` checks before it kills a recorded process).
    fn process(&self, spec: &LaunchSpec) -> Spec {
        let args = Qemu::args(spec).into_iter().map(Into::into).collect();
        let mut p = cli_spec(&self.qemu.binary, args, &self.cpus);
        p.env.push((
            crate::host::proc::RUN_ID_ENV.into(),
            self.state.id.clone().into(),
        ));
        p.new_session = true;
        p
    }
}

/// One measured launch, planned: its directory (QEMU's stderr) and the QEMU command.
pub struct VmPlan {
    dir: PathBuf,
    process: Spec,
    /// The launch uses the run's disk image (marked dirty if the launch fails).
    disk: bool,
}

impl VmPlan {
    fn log(&self) -> PathBuf {
        self.dir.join("qemu.stderr")
    }
}

impl Launch for Vm {
    type Plan = VmPlan;
    type Running = ();

    /// Off the clock: the workload fitted to the guest, the run's disk or tap made on first
    /// need, the command line, and the launch's directory recorded in the ledger.
    fn plan(&mut self, task: &Task) -> Result<VmPlan, BackendError> {
        self.launches += 1;
        let n = self.launches;
        let (tier, accel) = (self.tier, self.accel);
        let p = &mut self.p;
        let mut task = task.clone();
        let notes = p.fit.apply(&mut task.workload);
        if !notes.is_empty() {
            tracing::info!(
                "{tier}: {} fitted: {}",
                task.workload.name(),
                notes.join(", ")
            );
        }
        let mut g = task.guest.take().unwrap_or_default();
        g.modules = p.modules.clone();
        let (mut drive, mut tap_name) = (None, None);
        // Both data paths of a VM are the virtio-blk disk; both net paths the tap.
        match &mut task.workload {
            Workload::Fs(f) => {
                disk::check_fits(f.file_mib, p.disk_cfg.mib).map_err(other)?;
                drive = Some(p.attach_disk(&mut g)?);
                f.dir = disk::GUEST_MOUNT.into();
            }
            Workload::Net(np) => {
                let net = p.ensure_net(tier)?;
                np.peer = net.peer.local_addr().to_string();
                g.net_addr = Some(net.link.guest_cidr());
                tap_name = Some(net.tap.clone());
            }
            Workload::Idle(_) | Workload::Density(_) => {
                return Err(BackendError::Other(format!(
                    "{} is not a measured launch: the density measurement uses start_idle",
                    task.workload.name()
                )))
            }
            w if w.server_app().is_some() => {
                return Err(BackendError::Other(format!(
                    "{} is not a measured launch: the host serves it with start_server",
                    w.name()
                )))
            }
            _ => {}
        }
        task.guest = Some(g);
        let mut spec = p.spec(accel, &task)?;
        let disk = drive.is_some();
        spec.disk = drive;
        spec.tap = tap_name;
        let dir = p.work.join(format!("launch-{n}"));
        kernel_dir_refuse(&dir)?;
        record(&p.state, &Resource::Dir { path: dir.clone() })?;
        Ok(VmPlan {
            dir,
            process: p.process(&spec),
            disk,
        })
    }

    /// On the clock: the launch's directory, then QEMU.
    fn start(&mut self, plan: &mut VmPlan) -> Result<Started<()>, BackendError> {
        std::fs::create_dir(&plan.dir)
            .map_err(|e| BackendError::io(format!("creating {}", plan.dir.display()), e))?;
        let log = plan.log();
        start_cli(&mut plan.process, &log)
            .map_err(|e| BackendError::Other(format!("{e} (is it executable? --set qemu=PATH)")))
    }

    /// On the clock, after QEMU exited: the launch's directory (QEMU's stderr, kept in memory
    /// for an error message). The run's disk image and tap stay for the run, as the runtimes'
    /// bridge and image do.
    fn teardown(&mut self, plan: VmPlan, _running: Option<()>) -> Result<(), BackendError> {
        self.last_said = qemu_said(&plan.log());
        self.last_disk = plan.disk;
        if plan.dir.exists() {
            kernel::remove_plain_tree(&plan.dir).map_err(other)?;
        }
        let p = &self.p;
        // Deferred by the core until after the released instant.
        release(&p.state, &Resource::Dir { path: plan.dir })
    }
}

/// Refuse a launch directory that exists (one this launch did not make is never adopted).
fn kernel_dir_refuse(dir: &Path) -> Result<(), BackendError> {
    crate::backend::resources::refuse_existing(dir)
}

impl Backend for Vm {
    fn tier(&self) -> Tier {
        self.tier
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let p = &self.p;
        let (state, cancel, deadline) = (p.state.clone(), p.cancel.clone(), p.deadline);
        self.last_said.clear();
        self.last_disk = false;
        let accel = self.accel;
        let until = Instant::now() + deadline;
        let out = measure(self, task, until, &cancel, &state).map_err(|e| match e {
            BackendError::Timeout(_, tail) => BackendError::Timeout(
                deadline,
                format!(
                    "{tail}{} (the {} guest did not finish in time)",
                    self.last_said,
                    accel.as_str()
                ),
            ),
            BackendError::Agent(m) => BackendError::Agent(format!("{m}{}", self.last_said)),
            other => other,
        });
        if let (Err(_), true, Some(d)) = (&out, self.last_disk, self.p.disk.as_mut()) {
            d.dirty = true;
        }
        out
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        self.launches += 1;
        let n = self.launches;
        let p = &self.p;
        if !matches!(task.workload, Workload::Idle(_)) {
            return Err(BackendError::Other(format!(
                "start_idle runs the idle workload, not {}",
                task.workload.name()
            )));
        }
        let mut task = task.clone();
        let mut g = task.guest.take().unwrap_or_default();
        g.modules = p.modules.clone();
        task.guest = Some(g);
        // No disk and no tap: idle needs neither, and K instances must not share them.
        let spec = p.spec(self.accel, &task)?;
        let ready_by = Instant::now() + p.deadline;
        let mut process = p.process(&spec);
        let launch = Launch_::start(&p.state, &mut process, p.work.join(format!("idle-{n}")))?;
        let ready = match &launch.stdout {
            Some(out) => wait_ready(out.as_fd(), ready_by, &p.cancel),
            None => Err(BackendError::Other(
                "the guest console was not piped".into(),
            )),
        };
        if let Err(e) = ready {
            let said = launch.abort();
            return Err(match e {
                BackendError::Timeout(_, tail) => BackendError::Timeout(
                    p.deadline,
                    format!("{tail}{said} (the idle guest did not boot in time)"),
                ),
                BackendError::Agent(m) => BackendError::Agent(format!("{m}{said}")),
                other => other,
            });
        }
        Ok(Box::new(p.idle.add(n, launch)))
    }

    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        server::start(self, task)
    }

    fn prepare_server(&mut self, task: &Task) -> Result<(), BackendError> {
        server::prepare(self, task)
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        let p = &mut self.p;
        // RELIABILITY rule 2: processes, then network devices, then files. Every step is
        // tried; the first error is returned (the ledger keeps what was not released).
        let mut results = vec![p.idle.stop_all()];
        if let Some(net) = p.net.take() {
            net.peer.stop();
            let res = Resource::Link {
                name: net.tap.clone(),
            };
            results.push(
                tap::delete(&net.tap, &p.state.id)
                    .map_err(other)
                    .and_then(|_| release(&p.state, &res)),
            );
            results.push(net.reservation.release().map_err(other));
        }
        if let Some(d) = p.disk.take() {
            let res = Resource::File {
                path: d.path.clone(),
            };
            results.push(
                match std::fs::remove_file(&d.path) {
                    Ok(()) => Ok(()),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                    Err(e) => Err(BackendError::io(
                        format!("removing {}", d.path.display()),
                        e,
                    )),
                }
                .and_then(|()| release(&p.state, &res)),
            );
        }
        if results.iter().all(Result::is_ok) {
            results.push(remove_dir(&p.state, &p.work));
        }
        results.into_iter().collect()
    }

    fn versions(&self) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        {
            let p = &self.p;
            v.insert(
                "qemu".into(),
                p.qemu_version.clone().unwrap_or_else(|| "unknown".into()),
            );
            v.insert("guest_kernel".into(), p.kernel.version.clone());
        }
        v
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::from([
            ("accel".to_string(), self.accel.as_str().to_string()),
            ("vmm".to_string(), "qemu".to_string()),
            ("machine".to_string(), qemu::MICROVM.to_string()),
        ]);
        {
            let p = &self.p;
            s.insert("kernel_version".into(), p.kernel.version.clone());
            s.insert("kernel_image".into(), p.kernel.image_kind().into());
            s.insert("vcpus".into(), p.cpus.len().to_string());
            s.insert("host_cpus".into(), format!("{:?}", p.cpus));
            s.insert("memory_mib".into(), p.memory_mib.to_string());
            s.insert("kernel_cmdline".into(), p.base_cmdline.clone());
            s.insert("guest_modules".into(), p.modules.len().to_string());
            s.insert("deadline_s".into(), p.deadline.as_secs().to_string());
            s.insert("workload_scaling".into(), p.fit.describe());
            if let Some(ms) = p.fit.phase_ms {
                s.insert("phase_budget_ms".into(), ms.to_string());
            }
            s.insert(
                "fs_data_path".into(),
                format!(
                    "virtio-blk ({}) backed by a raw ext4 image of {} MiB in the run's scratch \
                     (cache={}, aio={}), mounted at {} (fs and fs_volume alike)",
                    disk::GUEST_DEVICE,
                    p.disk_cfg.mib,
                    p.disk_cfg.cache,
                    p.disk_cfg.aio,
                    disk::GUEST_MOUNT
                ),
            );
            s.insert(
                "app_data_path".into(),
                format!(
                    "an application's data directory (mysql, data = rootfs and volume alike) on \
                     the same virtio-blk disk at {}: the guest's root is its initramfs in RAM",
                    disk::GUEST_MOUNT
                ),
            );
            s.insert(
                "net_path".into(),
                format!(
                    "tap + virtio-net without vhost, a private /{} in {}/{} (net and net_nat \
                     alike); guest traffic is not filtered",
                    tap::LINK_PREFIX,
                    tap::RANGE,
                    tap::RANGE_PREFIX
                ),
            );
            if let Some(n) = &p.kernel.note {
                s.insert("kernel_note".into(), n.clone());
            }
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::facts::CgroupLayout;
    use crate::protocol::GuestSetup;

    fn host(kvm: KvmKind, qemu: bool) -> HostFacts {
        HostFacts {
            hostname: "h".into(),
            cpu_model: "cpu".into(),
            cores: 2,
            memory_bytes: 1 << 30,
            kernel: "6.1".into(),
            os: "Debian".into(),
            virtualized: true,
            is_root: true,
            cgroup_layout: CgroupLayout::V2,
            kvm,
            overlayfs: true,
            namespaces: vec![],
            qemu: qemu.then(|| PathBuf::from("/usr/bin/qemu-system-x86_64")),
            qemu_version: qemu.then(|| "7.2.22".to_string()),
        }
    }

    fn kernel() -> GuestKernel {
        GuestKernel {
            version: "6.1.0-56-amd64".into(),
            vmlinuz: "/c/vmlinuz".into(),
            image: "/c/vmlinux".into(),
            modules: vec![],
            note: None,
            dir: None,
        }
    }

    fn reason(a: &Availability) -> (String, String) {
        match a {
            Availability::Unavailable { reason, fix } => (reason.clone(), fix.clone()),
            Availability::Available { detail } => panic!("unexpectedly available: {detail}"),
        }
    }

    #[test]
    fn microvm_for_every_kvm_kind() {
        let opts = BackendOptions::default();
        let k = kernel();
        let hw = KvmKind::Hardware {
            module: "kvm_intel".into(),
        };
        match decide(Tier::Microvm, &host(hw, true), &opts, Ok(&k)) {
            Availability::Available { detail } => {
                assert!(
                    detail.contains("KVM") && detail.contains("kvm_intel"),
                    "{detail}"
                );
                assert!(detail.contains("6.1.0-56-amd64"), "{detail}");
            }
            other => panic!("{other:?}"),
        }
        let pvm = KvmKind::ParavirtOnly {
            module: "kvm_pvm".into(),
        };
        let (r, f) = reason(&decide(Tier::Microvm, &host(pvm, true), &opts, Ok(&k)));
        assert!(
            r.contains("paravirtual-only") && r.contains("kvm_pvm"),
            "{r}"
        );
        assert!(r.contains("KVM internal error / emulation failure"), "{r}");
        assert!(f.contains("vmx/svm") && f.contains("emulated tier"), "{f}");
        let unusable = KvmKind::Unusable {
            reason: "cannot open /dev/kvm: Permission denied".into(),
        };
        let (r, f) = reason(&decide(Tier::Microvm, &host(unusable, true), &opts, Ok(&k)));
        assert!(r.contains("Permission denied"), "{r}");
        assert!(f.contains("group kvm"), "{f}");
        let (r, f) = reason(&decide(
            Tier::Microvm,
            &host(KvmKind::Missing, true),
            &opts,
            Ok(&k),
        ));
        assert!(r.contains("/dev/kvm is missing"), "{r}");
        assert!(
            f.contains("kvm_intel") && f.contains("emulated tier"),
            "{f}"
        );
    }

    #[test]
    fn emulated_ignores_kvm_and_never_says_kvm() {
        let opts = BackendOptions::default();
        let k = kernel();
        for kvm in [
            KvmKind::Hardware {
                module: "kvm_amd".into(),
            },
            KvmKind::ParavirtOnly {
                module: "kvm_pvm".into(),
            },
            KvmKind::Unusable { reason: "x".into() },
            KvmKind::Missing,
        ] {
            match decide(Tier::Emulated, &host(kvm.clone(), true), &opts, Ok(&k)) {
                Availability::Available { detail } => {
                    assert!(detail.contains("TCG"), "{detail}");
                    assert!(
                        !detail.contains("KVM") && !detail.contains("kvm"),
                        "{detail}"
                    );
                }
                other => panic!("{kvm:?}: {other:?}"),
            }
        }
    }

    #[test]
    fn missing_qemu_kernel_or_vmm() {
        let opts = BackendOptions::default();
        let k = kernel();
        let hw = KvmKind::Hardware {
            module: "kvm_intel".into(),
        };
        for tier in [Tier::Microvm, Tier::Emulated] {
            let (r, f) = reason(&decide(tier, &host(hw.clone(), false), &opts, Ok(&k)));
            assert!(r.contains("qemu-system-x86_64"), "{r}");
            assert_eq!(f, "apt-get install qemu-system-x86");
            let e = KernelError::NotCached("/var/cache/isobench".into());
            let (r, f) = reason(&decide(tier, &host(hw.clone(), true), &opts, Err(&e)));
            assert!(r.contains("no guest kernel cached"), "{r}");
            assert!(f.contains("isobench fetch-kernel"), "{f}");
        }
        let mut fc = BackendOptions::default();
        fc.settings.insert("vmm".into(), "firecracker".into());
        let (r, _) = reason(&decide(Tier::Emulated, &host(hw, true), &fc, Ok(&k)));
        if VmmKind::Firecracker.find().is_none() {
            assert_eq!(r, "not installed: firecracker not on PATH");
        } else {
            assert!(r.contains("drives only QEMU"), "{r}");
        }
    }

    #[test]
    fn command_line_carries_the_task_and_refuses_overflow() {
        let base = base_cmdline(Accel::Tcg, Some(2_596_128));
        assert!(base.contains("tsc_early_khz=2596128") && base.contains("reboot=t panic=-1"));
        assert!(!base_cmdline(Accel::Kvm, Some(1)).contains("tsc_early_khz"));
        assert_eq!(thp_mode("always [madvise] never\n"), Some("madvise"));
        assert_eq!(thp_mode("[always] madvise never"), Some("always"));
        assert_eq!(thp_mode("always madvise never"), None);
        assert_eq!(thp_mode("[bogus] never"), None);
        let mut t = Task {
            guest: Some(GuestSetup {
                modules: (0..12)
                    .map(|i| initramfs::module_path(&format!("mod{i}")))
                    .collect(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let c = cmdline(&base, &t).unwrap();
        let hex = c.split_once("ISOBENCH_TASK=").unwrap().1;
        assert_eq!(Task::decode(hex).unwrap(), t);
        t.probe_paths = vec!["x".repeat(1200)];
        assert!(cmdline(&base, &t).unwrap_err().to_string().contains("2048"));
    }
}
