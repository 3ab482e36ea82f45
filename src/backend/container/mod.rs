//! `container`: Linux namespaces + a cgroup + an overlay rootfs, built by isobench through `nix`
//! (no runc).
//!
//! Per launch: a cgroup with the budget's memory limit, CPU quota and `pids.max` (v2, or v1 on
//! v1/hybrid hosts), fresh overlay upper/work/merged directories under the run's scratch area
//! (lower = the run's read-only rootfs). By default the overlay is mounted as Docker's overlay2
//! mounts it (no `volatile`: fsync on the overlay reaches the disk, and the upper filesystem is
//! synced when the overlay goes), so the container's fs figures stand beside docker's and the
//! study's; `--set overlay=volatile` (Linux 5.10+) mounts it `volatile` as podman does for
//! transient containers (fsync and syncfs are no-ops), recorded as `overlay=volatile` in the
//! tier's settings. Then
//! `clone(VM|NEWNS|NEWPID|NEWUTS|NEWIPC|NEWNET)` through [`crate::backend::process`]. The child,
//! PID 1 of its pid namespace, moves itself into the cgroup, waits until the parent has set up
//! its network (if any), then runs [`syscalls::setup_container`] as the spawn's setup hook (cgroup ns, rprivate /, hostname, overlay, volume, pivot_root,
//! /proc, /dev, /tmp, cgroupfs, lo up), pins itself to the budget's CPUs, sets up stdio, marks
//! every other fd close-on-exec and execs the agent.
//!
//! Data paths: the fs workload runs on `/data` of the overlay rootfs (writes go to the upper
//! layer, as on Docker's image layers) or on `/volume`, a host directory under the run scratch
//! bind-mounted in the container's mount namespace only. The net workload gets a veth pair
//! (`direct`) or a bridge with NAT (`nat`), see [`net`].
//!
//! Timings (by [`crate::measure::launch::measure`], like every tier): launch = before the
//! per-launch directories, cgroup and overlay are made (after the ledger is written, which is
//! harness bookkeeping); ready = the READY line read; exit = the pidfd fired; released = the
//! cgroup, the devices and the directories are gone.
//!
//! Not protected against: a root agent is root on the host (no user namespace, no seccomp, no
//! capability drop, /proc not masked); the network is not filtered (see [`net`]).

pub mod launch;
pub mod net;
pub mod netlo;
pub mod syscalls;

use std::collections::BTreeMap;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use nix::unistd::Pid;

use crate::backend::launch::{check_idle, IDLE_READY_DEADLINE, PROCESS_DEADLINE};
use crate::backend::process::cpuset;
use crate::backend::resources::refuse_existing;
use crate::backend::{Backend, BackendError, IdleInstance, Outcome, RunEnv, ServerInstance};
use crate::host::cgroup::{self, CgroupManager};
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs;
use crate::model::availability::Availability;
use crate::model::budget::Budget;
use crate::model::facts::CgroupLayout;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;

use crate::measure::launch::{self as measure, AfterStart, RawOutcome};
use crate::netpeer::NetPeer;
use crate::protocol::Task;
use crate::state::ledger::{Resource, RunState};
use crate::workload::{DataPath, NetPath, Workload};
use launch::{IdleContainer, LaunchPlan};
use net::RunNet;
use syscalls::CgroupMount;

/// Namespaces the container needs (names as in /proc/self/ns).
pub const NAMESPACES: &[&str] = &["mnt", "pid", "uts", "ipc", "net", "cgroup"];
/// Hostname inside the container.
pub const HOSTNAME: &str = "isobench";
/// Directories of the rootfs that the launch mounts over or works in; none may be a symlink.
const ROOTFS_MOUNT_POINTS: &[&str] = &["proc", "sys", "dev", "tmp", "data", "volume"];

/// How the overlay is mounted, from the `overlay` setting (absent = `default`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OverlayMode {
    /// As Docker's overlay2: no `volatile`.
    Default,
    /// `volatile`: fsync and syncfs on the overlay do nothing (podman's transient containers).
    Volatile,
}

impl OverlayMode {
    /// Read the `overlay` setting (declared in the container's registry row); a value other
    /// than `default`/`volatile` is an error (the registry's check normally catches it first).
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Self, BackendError> {
        match settings.get("overlay").map(String::as_str) {
            None | Some("default") => Ok(OverlayMode::Default),
            Some("volatile") => Ok(OverlayMode::Volatile),
            Some(v) => Err(BackendError::Other(format!(
                "overlay={v}: use overlay=default (as Docker) or overlay=volatile"
            ))),
        }
    }

    /// The word recorded in the tier's settings.
    pub fn as_str(self) -> &'static str {
        match self {
            OverlayMode::Default => "default",
            OverlayMode::Volatile => "volatile",
        }
    }
}

pub fn availability(host: &HostFacts) -> Availability {
    if !host.is_root {
        return Availability::unavailable(
            "namespaces, cgroups and mounts need root",
            "run isobench as root (sudo)",
        );
    }
    let missing: Vec<&str> = NAMESPACES
        .iter()
        .copied()
        .filter(|n| !host.namespaces.iter().any(|h| h == n))
        .collect();
    if !missing.is_empty() {
        return Availability::unavailable(
            format!("the kernel lacks namespaces: {}", missing.join(", ")),
            "use a kernel built with CONFIG_NAMESPACES (PID_NS, NET_NS, UTS_NS, IPC_NS, CGROUPS)",
        );
    }
    if !host.overlayfs {
        return Availability::unavailable(
            "overlayfs is not available",
            "load it with `modprobe overlay` (CONFIG_OVERLAY_FS)",
        );
    }
    let cg = match host.cgroup_layout {
        CgroupLayout::V2 => "cgroup v2",
        CgroupLayout::V1 => "cgroup v1",
        CgroupLayout::Hybrid => "cgroup v1 (hybrid host)",
        CgroupLayout::None => {
            return Availability::unavailable(
                "no cgroup filesystem is mounted",
                "mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
            )
        }
    };
    Availability::Available {
        detail: format!("namespaces (mnt, pid, uts, ipc, net, cgroup) + {cg} + overlayfs"),
    }
}

pub(crate) struct Prepared {
    state: Arc<RunState>,
    layout: CgroupLayout,
    /// The cgroup hierarchies mounted here (per-launch cgroup paths are built from them).
    hier: cgroup::Hierarchies,
    budget: Budget,
    cancel: Arc<AtomicBool>,
    /// scratch/container: the rootfs and every launch's directories.
    base: PathBuf,
    lower: PathBuf,
    /// `isobench-<run id>`, relative to the cgroup root(s).
    cgroup_rel: PathBuf,
    parent: CgroupManager,
    cgroup_mount: CgroupMount,
    /// Mount the overlay with `volatile` (Linux 5.10+; only when `overlay=volatile` is set).
    volatile: bool,
}

/// The prepared container tier.
pub struct Container {
    p: Prepared,
    net: Option<RunNet>,
    launches: u64,
    /// The last launch's direct-path peer, dropped at the next plan (off the clock).
    spent_peer: Option<NetPeer>,
    finished: bool,
}

/// Does this kernel release (`uname -r`) have overlayfs' `volatile` option (5.10+)?
pub fn kernel_has_volatile(release: &str) -> bool {
    let mut it = release
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse::<u32>().unwrap_or(0));
    let (major, minor) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (major, minor) >= (5, 10)
}

impl Container {
    /// Name every per-launch resource and record them all in one ledger write, before the
    /// launch clock starts. Network paths are set up lazily: the NAT path's run-level part is
    /// built on the first `nat` launch.
    fn plan_launch(&mut self, task: &Task) -> Result<LaunchPlan, BackendError> {
        let p = &self.p;
        if self.finished {
            return Err(BackendError::Other(
                "internal error: the container backend was used after finish(); report this bug"
                    .into(),
            ));
        }
        self.launches += 1;
        let n = self.launches;
        let dir = p.base.join(format!("launch-{n}"));
        let volume = match &task.workload {
            Workload::Fs(f) if f.path == DataPath::Volume => {
                Some(p.base.join(format!("volume-{n}")))
            }
            Workload::Mysql(m) if m.data == DataPath::Volume => {
                Some(p.base.join(format!("volume-{n}")))
            }
            _ => None,
        };
        let cg = CgroupManager::at(&p.hier, p.layout, &p.cgroup_rel.join(format!("launch-{n}")))
            .map_err(|e| BackendError::Other(format!("planning the launch cgroup: {e}")))?;
        let run_net = self.net.get_or_insert_with(|| RunNet::new(&p.state.id));
        let app = task.workload.server_app();
        // An application's server is reached at its own address (direct) or at the port
        // published on the host's side of the bridge (nat, as `docker run -p`).
        let (net, nat_peer, published) = match (&task.workload, &app) {
            (Workload::Net(np), _) if np.path == NetPath::Direct => {
                (Some(run_net.plan_direct(n, &p.state)?), None, None)
            }
            (Workload::Net(_), _) => {
                let (net, peer) = run_net.plan_nat(n, &p.state)?;
                (Some(net), Some(peer), None)
            }
            (w, Some(_)) if w.net_path() == NetPath::Direct => {
                (Some(run_net.plan_direct(n, &p.state)?), None, None)
            }
            (_, Some(a)) => {
                let (net, host) = run_net.plan_nat_publish(n, &p.state, a.port)?;
                (Some(net), None, Some(host))
            }
            _ => (None, None, None),
        };
        let mut task = task.clone();
        let mut server = None;
        if let (Some(app), Some(net)) = (&app, &net) {
            // The server binds the container's own address (its network namespace's only one
            // besides lo), on the application's usual port.
            let ip: std::net::Ipv4Addr = net
                .cont_cidr
                .split('/')
                .next()
                .unwrap_or_default()
                .parse()
                .map_err(|_| {
                    BackendError::Other(format!(
                        "internal error: container address {} is not IPv4; report this bug",
                        net.cont_cidr
                    ))
                })?;
            task.workload = task.workload.with_endpoint(&ip.to_string(), app.port);
            server = Some(published.unwrap_or(std::net::SocketAddr::from((ip, app.port))));
        }
        for d in std::iter::once(&dir).chain(volume.as_ref()) {
            refuse_existing(d)?;
        }
        let plan = LaunchPlan {
            dir,
            volume,
            cg,
            net,
            nat_peer,
            task,
            server,
        };
        p.state
            .record_all(&plan.resources())
            .map_err(|e| BackendError::io("recording the launch's resources in the ledger", e))?;
        Ok(plan)
    }

    /// Launch once through the timer and return the raw stream and exit code. `after_start`
    /// runs in the parent once the agent is exec'd (tests use it to signal the container's
    /// PID 1).
    pub fn run_raw(
        &mut self,
        task: &Task,
        after_start: impl FnOnce(Pid),
    ) -> Result<RawOutcome, BackendError> {
        let state = self.p.state.clone();
        let cancel = self.p.cancel.clone();
        let mut l = AfterStart {
            inner: self,
            after_start: Some(Box::new(after_start)),
        };
        measure::measure_raw(
            &mut l,
            task,
            Instant::now() + PROCESS_DEADLINE,
            &cancel,
            &state,
        )
    }
}

/// Overlay options are comma-separated and colon-separated: refuse paths that would break them.
fn check_overlay_path(p: &Path) -> Result<(), BackendError> {
    let s = p.as_os_str().as_bytes();
    if s.iter().any(|b| matches!(b, b',' | b':' | b'\n' | b'\\')) {
        return Err(BackendError::Other(format!(
            "the state directory path {} contains ',', ':', '\\' or a newline, which overlayfs \
             options cannot carry: set ISOBENCH_STATE_DIR to a plain path",
            p.display()
        )));
    }
    Ok(())
}

/// Refuse a rootfs whose mount points (/proc, /sys, /dev, /tmp, /data, /volume) are not plain
/// directories: a symlink could point a mount at the host (RELIABILITY rule 7).
fn check_rootfs(lower: &Path) -> Result<(), BackendError> {
    for d in ROOTFS_MOUNT_POINTS {
        let p = lower.join(d);
        let m = std::fs::symlink_metadata(&p)
            .map_err(|e| BackendError::io(format!("inspecting {}", p.display()), e))?;
        if !m.file_type().is_dir() {
            return Err(BackendError::Other(format!(
                "{} is not a plain directory (a symlink could point mounts at the host): rebuild the rootfs",
                p.display()
            )));
        }
    }
    Ok(())
}

/// The fallible part of `prepare`, after `base` is recorded.
fn prepare_in(env: &RunEnv, base: &Path, overlay: OverlayMode) -> Result<Prepared, BackendError> {
    std::fs::create_dir(base)
        .map_err(|e| BackendError::io(format!("creating {}", base.display()), e))?;
    let lower = base.join("rootfs");
    rootfs::build(&env.agent, &lower)
        .map_err(|e| BackendError::Other(format!("building the container rootfs: {e}")))?;
    // The volume's mount point (rootfs::build makes /data, the rootfs data path).
    std::fs::create_dir(lower.join("volume"))
        .map_err(|e| BackendError::io("creating /volume in the rootfs", e))?;
    check_rootfs(&lower)?;
    let hier = cgroup::Hierarchies::detect();
    // The v1 memory hierarchy can be mounted inside by the option "memory" only when it
    // carries memory alone (a co-mounted one would need all its controllers named).
    let memory_alone = hier
        .v1("memory")
        .is_some_and(|h| h.controllers == ["memory"] && h.mount.ends_with("memory"));
    let (cgroup_mount, mount_dir) = match env.host.cgroup_layout {
        CgroupLayout::V2 => (CgroupMount::V2, Some("sys/fs/cgroup")),
        _ if memory_alone => (CgroupMount::V1Memory, Some("sys/fs/cgroup/memory")),
        _ => (CgroupMount::None, None),
    };
    if let Some(d) = mount_dir {
        std::fs::create_dir_all(lower.join(d))
            .map_err(|e| BackendError::io(format!("creating {d} in the rootfs"), e))?;
    }
    let cgroup_rel = PathBuf::from(format!("isobench-{}", env.state.id));
    // Last: on failure it removes what it created itself.
    let parent = CgroupManager::create_in(
        &hier,
        env.host.cgroup_layout,
        &cgroup_rel,
        &env.budget,
        &env.state,
    )
    .map_err(|e| BackendError::Other(format!("creating the run's cgroup: {e}")))?;
    Ok(Prepared {
        state: env.state.clone(),
        layout: env.host.cgroup_layout,
        hier,
        volatile: overlay == OverlayMode::Volatile,
        budget: env.budget.clone(),
        cancel: env.cancel.clone(),
        base: base.to_path_buf(),
        lower,
        cgroup_rel,
        parent,
        cgroup_mount,
    })
}

impl Container {
    /// Prepare the container tier: the run directory with the rootfs, and the run's cgroup,
    /// each recorded before it is made.
    pub fn prepare(env: &RunEnv) -> Result<Self, BackendError> {
        if let Availability::Unavailable { reason, fix } = availability(&env.host) {
            return Err(BackendError::Unavailable {
                tier: Tier::Container,
                reason: format!("{reason}: {fix}"),
            });
        }
        let id = &env.state.id;
        if id.is_empty()
            || !id
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        {
            return Err(BackendError::Other(format!(
                "run id {id:?} may only hold letters, digits, '-', '_' and '.' (it names a cgroup)"
            )));
        }
        cpuset(&env.budget.cpus)?;
        let overlay = OverlayMode::from_settings(&env.options.settings)?;
        if overlay == OverlayMode::Volatile {
            let release = nix::sys::utsname::uname()
                .map(|u| u.release().to_string_lossy().into_owned())
                .unwrap_or_default();
            if !kernel_has_volatile(&release) {
                return Err(BackendError::Other(format!(
                    "overlay=volatile needs Linux 5.10 or later (this kernel is {release}): \
                     drop --set overlay=volatile to mount the overlay as Docker does"
                )));
            }
        }
        let base = env.state.scratch().join("container");
        check_overlay_path(&base)?;
        let p = crate::backend::prepare_run_dir(env, &base, || prepare_in(env, &base, overlay))?;
        Ok(Container {
            p,
            net: None,
            launches: 0,
            spent_peer: None,
            finished: false,
        })
    }
}

impl Backend for Container {
    fn tier(&self) -> Tier {
        Tier::Container
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let state = self.p.state.clone();
        let cancel = self.p.cancel.clone();
        measure::measure(
            self,
            task,
            Instant::now() + PROCESS_DEADLINE,
            &cancel,
            &state,
        )
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if self.finished {
            return Ok(());
        }
        drop(self.spent_peer.take());
        let p = &self.p;
        // Kill and remove the run's cgroup with any launch cgroup left below it (idle instances
        // not stopped), then the network (run-level NAT path, devices of launches that were
        // not torn down), then the files.
        p.parent
            .kill_all()
            .and_then(|()| p.parent.remove())
            .map_err(|e| BackendError::Other(format!("removing the run's cgroup: {e}")))?;
        if let Some(net) = &mut self.net {
            net.finish(&p.state)?;
        }
        safe_remove_tree(&p.base)
            .map_err(|e| BackendError::io(format!("removing {}", p.base.display()), e))?;
        let dirs = p.parent.dirs();
        let gone: Vec<Resource> = p
            .state
            .resources()
            .into_iter()
            .filter(|r| match r {
                Resource::Cgroup { path } => dirs.iter().any(|d| path.starts_with(d)),
                Resource::Dir { path } => path.starts_with(&p.base),
                _ => false,
            })
            .collect();
        p.state
            .release_all(&gone)
            .map_err(|e| BackendError::io("updating the run ledger", e))?;
        self.finished = true;
        self.net = None;
        Ok(())
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        check_idle(task)?;
        let cancel = self.p.cancel.clone();
        let (plan, started) = measure::start_idle(self, task, IDLE_READY_DEADLINE, &cancel)?;
        let mut process = started.process;
        let stdin = process.stdin.take();
        Ok(Box::new(IdleContainer {
            plan,
            state: self.p.state.clone(),
            process,
            stdin,
            stream: started.stream,
            running: started.running,
        }))
    }

    /// The application's server (the host's `redis-server`, ...) in the rootfs, served on the
    /// container's veth.
    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        launch::start_server(self, task)
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::from([(
            "namespaces".into(),
            "mnt,pid,uts,ipc,net,cgroup".to_string(),
        )]);
        {
            let p = &self.p;
            s.insert("cgroup".into(), format!("{:?}", p.layout).to_lowercase());
            s.insert(
                "cgroup_join".into(),
                match p.layout {
                    CgroupLayout::V2 => "the child writes 0 to cgroup.procs",
                    _ => "the child writes 0 to tasks (a thread moving itself skips the global threadgroup lock)",
                }
                .into(),
            );
            s.insert("cpus".into(), format!("{:?}", p.budget.cpus));
            s.insert("memory_mib".into(), p.budget.memory_mib.to_string());
            s.insert("rootfs".into(), "overlay over a minimal rootfs".into());
            s.insert(
                "net_forwarding".into(),
                "nat: forwarding on the run's own bridge and uplink only \
                 (net.ipv4.conf.<dev>.forwarding); ip_forward is never changed"
                    .into(),
            );
            let mode = if p.volatile {
                OverlayMode::Volatile
            } else {
                OverlayMode::Default
            };
            s.insert("overlay".into(), mode.as_str().into());
            s.insert(
                "overlay_options".into(),
                match mode {
                    OverlayMode::Volatile => {
                        "volatile (set overlay=volatile; NOT Docker's default): fsync and syncfs \
                         on the overlay are no-ops and the upper filesystem is not synced at \
                         unmount, as podman does for transient containers"
                    }
                    OverlayMode::Default => {
                        "as Docker's overlay2 (no volatile): fsync on the overlay reaches the \
                         disk and the upper filesystem is synced at unmount"
                    }
                }
                .into(),
            );
            s.insert(
                "fs_path".into(),
                "rootfs: /data on the overlay (upper layer); volume: host directory bind-mounted at /volume".into(),
            );
            s.insert(
                "net_path".into(),
                "direct: veth pair per launch; nat: bridge + veth per launch, peer behind nftables masquerade".into(),
            );
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::registry::check_settings;

    fn set(v: &str) -> BTreeMap<String, String> {
        BTreeMap::from([("overlay".to_string(), v.to_string())])
    }

    #[test]
    fn overlay_defaults_to_dockers_mount_and_volatile_is_opt_in() {
        assert_eq!(
            OverlayMode::from_settings(&BTreeMap::new()).unwrap(),
            OverlayMode::Default
        );
        assert_eq!(
            OverlayMode::from_settings(&set("default")).unwrap(),
            OverlayMode::Default
        );
        assert_eq!(
            OverlayMode::from_settings(&set("volatile")).unwrap(),
            OverlayMode::Volatile
        );
        assert!(OverlayMode::from_settings(&set("fast")).is_err());
    }

    #[test]
    fn overlay_is_a_typed_setting_of_the_container_tier_only() {
        assert!(check_settings(&[Tier::Container], &set("volatile"), "--set").is_ok());
        assert!(check_settings(&[Tier::Container], &set("default"), "--set").is_ok());
        let bad = check_settings(&[Tier::Container], &set("yes"), "--set").unwrap_err();
        assert!(bad.0.contains("default, volatile"), "{}", bad.0);
        assert!(check_settings(&[Tier::Bare], &set("volatile"), "--set").is_err());
    }

    #[test]
    fn volatile_needs_linux_5_10() {
        assert!(kernel_has_volatile("6.1.0-57-amd64"));
        assert!(kernel_has_volatile("5.10.0"));
        assert!(!kernel_has_volatile("5.4.0-150-generic"));
        assert!(!kernel_has_volatile(""));
    }
}
