//! `runc`, `crun`, `gvisor` and `lxc`: the rootfs isobench builds, run by a container runtime's
//! CLI from a per-launch bundle that isobench writes (an OCI `config.json` for runc, crun and
//! runsc; an LXC config for `lxc-execute`).
//!
//! Per run: `<scratch>/<tier>/` holds the rootfs (built once), the runtime's state root
//! (`--root` / `-P`, so isobench never touches containers it did not make), the host directory
//! of the fs `volume` path, and one `launch-<n>/` bundle per launch. Containers are named
//! `isobench-<run>-<tier>-<n>` and recorded in the ledger before they are created; their cgroups
//! live under `isobench-<tier>-<run>/` in every mounted hierarchy, a parent isobench records and
//! creates itself, exclusively: one that exists already (another run's, a user's) is refused,
//! never adopted, so teardown only ever removes what this run made.
//!
//! Per launch: namespaces pid, ipc, uts, mount, cgroup and network; the budget as resources
//! (memory limit, CPU quota, cpuset, and [`PIDS_MAX`] as the pids limit where a pids controller
//! is mounted); rootfs writable, no terminal. Data paths: fs `rootfs` in
//! the bundle rootfs' `/data` (a host directory: these runtimes use no overlay), fs `volume` a
//! bind mount of a host directory at `/volume`. Net: the runtimes have no NAT path of their own,
//! so both net paths share the host's network namespace (no network namespace in config.json;
//! runsc `--network=host`; LXC `none`) and talk to a peer on 127.0.0.1, as `bare` does.
//!
//! Timings: plan (off the clock) = the container's name, the bundle's bytes, the bundle and the
//! container recorded; launch = the bundle directory and its config are written and the CLI is
//! spawned; ready = READY read from its stdout; exit = the CLI exits (`run` deletes the
//! container on exit); teardown = until the runtime's state for the container (deleted with
//! `delete --force` if the CLI left any), the container's cgroup in every hierarchy (LXC 5
//! leaves `<name>/lxc.pivot`; an empty cgroup also proves no process is left) and the bundle
//! are gone.
//!
//! Not protected against: as with `container`, the agent is root on the host (no user
//! namespace); with a shared network namespace it reaches every host address.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use serde_json::{json, Value};

use super::{check_run_id, gvisor, lxc, stderr_tail, version_line, with_stderr};
use crate::backend::launch::cli::{cli_spec, put_task, start_cli};
use crate::backend::launch::{
    check_idle, loopback_peer, loopback_server_task, stays_until_stdin_closes, IDLE_READY_DEADLINE,
    IDLE_STOP_DEADLINE, PROCESS_DEADLINE,
};
use crate::backend::process::{self, cpuset, Process, Spec};
use crate::backend::resources::{remove_lxc_container, remove_oci_container};
use crate::backend::{Backend, BackendError, IdleInstance, Outcome, RunEnv, ServerInstance};
use crate::host::cgroup::{
    budget_memory_bytes, cpu_list, cpu_quota_us, create_exclusive, rmdir_retry, subtree_dirs,
    Hierarchies, PIDS_MAX,
};
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs;
use crate::host::rootfs::AGENT_IN_ROOTFS;
use crate::model::availability::Availability;
use crate::model::budget::Budget;
use crate::model::facts::CgroupLayout;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;

use crate::measure::launch::{self, Launch, Started};
use crate::netpeer::NetPeer;
use crate::protocol::Task;
use crate::state::ledger::{Resource, RunState};
use crate::workload::{DataPath, Workload};

/// Where the fs workload writes inside the bundle rootfs, and where the volume is mounted.
pub const DATA_DIR: &str = "/data";
pub const VOLUME_DIR: &str = "/volume";

/// crun 1.8's refusal on a hybrid cgroup host, verbatim.
pub const CRUN_HYBRID: &str =
    "cgroups in hybrid mode not supported, drop all controllers from cgroupv2";

/// Tier-specific checks once the binary is on PATH and isobench is root.
pub fn availability(tier: Tier, bin: &Path, host: &HostFacts) -> Availability {
    if tier == Tier::Crun && host.cgroup_layout == CgroupLayout::Hybrid {
        return Availability::unavailable(
            format!("crun refuses this host's hybrid cgroup layout (v1 controllers + an empty v2 at /sys/fs/cgroup/unified): \"{CRUN_HYBRID}\""),
            "boot with a pure cgroup v2 layout (systemd.unified_cgroup_hierarchy=1) or a pure v1 one; runc runs the same bundle here",
        );
    }
    if host.cgroup_layout == CgroupLayout::None {
        return Availability::unavailable(
            "no cgroup filesystem is mounted",
            "mount cgroup2 at /sys/fs/cgroup (mount -t cgroup2 none /sys/fs/cgroup)",
        );
    }
    if tier == Tier::Lxc && crate::host::facts::which("lxc-stop").is_none() {
        return Availability::unavailable("lxc-stop is missing", "apt-get install lxc");
    }
    let what = match tier {
        Tier::Runc => "OCI bundle via runc run",
        Tier::Crun => "OCI bundle via crun run",
        Tier::Gvisor => "OCI bundle via runsc run (gVisor, ptrace platform)",
        _ => "lxc-execute of the rootfs",
    };
    Availability::Available {
        detail: format!("{what} ({})", bin.display()),
    }
}

/// One launch's shape, decided from its tier and task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchShape {
    pub share_host_net: bool,
    pub volume: bool,
    /// Make io_uring's system calls fail with ENOSYS (an OCI seccomp rule): gVisor serving an
    /// application (see [`gvisor`]: its io_uring is partial).
    pub no_io_uring: bool,
}

impl LaunchShape {
    pub fn of(tier: Tier, task: &Task) -> Self {
        let server = task.workload.server_app().is_some();
        LaunchShape {
            // The runtimes have no network path of their own: `net` and an application
            // server share the host's network namespace (loopback).
            share_host_net: matches!(task.workload, Workload::Net(_)) || server,
            volume: super::data_path(&task.workload) == Some(DataPath::Volume),
            no_io_uring: tier == Tier::Gvisor && server,
        }
    }
}

/// The OCI runtime spec (config.json) of one launch.
pub fn oci_config(
    rootfs: &Path,
    task_json: &str,
    budget: &Budget,
    cgroups_path: &str,
    pids_limit: Option<u64>,
    shape: LaunchShape,
    volume: &Path,
) -> Value {
    let caps = json!([
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FSETID",
        "CAP_FOWNER",
        "CAP_MKNOD",
        "CAP_NET_RAW",
        "CAP_SETGID",
        "CAP_SETUID",
        "CAP_SETFCAP",
        "CAP_SETPCAP",
        "CAP_NET_BIND_SERVICE",
        "CAP_SYS_CHROOT",
        "CAP_KILL",
        "CAP_AUDIT_WRITE"
    ]);
    let mut namespaces = vec![
        json!({"type": "pid"}),
        json!({"type": "ipc"}),
        json!({"type": "uts"}),
        json!({"type": "mount"}),
        json!({"type": "cgroup"}),
    ];
    if !shape.share_host_net {
        namespaces.push(json!({"type": "network"}));
    }
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/dev/pts", "type": "devpts", "source": "devpts",
               "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620"]}),
        json!({"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
               "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777"]}),
    ];
    // sysfs cannot be mounted fresh without an own network namespace.
    if !shape.share_host_net {
        mounts.push(
            json!({"destination": "/sys", "type": "sysfs", "source": "sysfs",
                           "options": ["nosuid", "noexec", "nodev", "ro"]}),
        );
        mounts.push(
            json!({"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
                           "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}),
        );
    }
    if shape.volume {
        mounts.push(json!({"destination": VOLUME_DIR, "type": "bind",
                           "source": volume.to_string_lossy(),
                           "options": ["rbind", "rw", "nosuid", "nodev"]}));
    }
    let (quota, period) = cpu_quota_us(budget.cpus.len());
    let mut cpu = json!({"cpus": cpu_list(&budget.cpus)});
    if quota > 0 {
        cpu["quota"] = json!(quota);
        cpu["period"] = json!(period);
    }
    let mut resources = json!({
        "devices": [{"allow": false, "access": "rwm"}],
        "memory": {"limit": budget_memory_bytes(budget)},
        "cpu": cpu
    });
    if let Some(limit) = pids_limit {
        resources["pids"] = json!({ "limit": limit });
    }
    let mut linux = json!({
        "resources": resources,
        "cgroupsPath": cgroups_path,
        "namespaces": namespaces,
        "maskedPaths": [
            "/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
            "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/sys/firmware",
            "/proc/scsi"
        ],
        "readonlyPaths": [
            "/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"
        ]
    });
    if shape.no_io_uring {
        linux["seccomp"] = gvisor::seccomp_without_io_uring();
    }
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": [AGENT_IN_ROOTFS],
            "env": ["PATH=/bin", format!("{}={task_json}", crate::protocol::TASK_ENV)],
            "cwd": "/",
            "capabilities": {
                "bounding": caps, "effective": caps, "permitted": caps, "ambient": caps
            },
            "noNewPrivileges": true
        },
        "root": {"path": rootfs.to_string_lossy(), "readonly": false},
        "hostname": "isobench",
        "mounts": mounts,
        "linux": linux
    })
}

struct Prepared {
    /// What a launch's teardown needs (an idle instance keeps a copy).
    ctx: Ctx,
    bin: PathBuf,
    layout: CgroupLayout,
    budget: Budget,
    cancel: Arc<AtomicBool>,
    base: PathBuf,
    rootfs: PathBuf,
    volume: PathBuf,
    /// `isobench-<tier>-<run>`: parent of every launch's cgroup, in every hierarchy.
    cgroup_rel: String,
    /// The cgroup directories (absolute) this run recorded and created, parents of the
    /// launches'.
    cgroup_dirs: Vec<PathBuf>,
    /// [`PIDS_MAX`] where a pids controller is mounted (runtimes fail on a limit they cannot
    /// set), else None.
    pids_limit: Option<u64>,
    /// The loopback peer's address, and the peer (taken by `finish`).
    peer_addr: std::net::SocketAddr,
    peer: Option<NetPeer>,
}

/// runc, crun, runsc or lxc-execute driving a bundle isobench writes.
pub struct Bundled {
    tier: Tier,
    p: Prepared,
    /// `finish` ran (it is idempotent).
    finished: bool,
    launches: u64,
    /// The runtime's stderr of the last launch, when it said anything (for error messages).
    last_stderr: String,
    /// Applications whose programs are in the bundle rootfs already.
    installed: BTreeSet<&'static str>,
}

/// The cgroup directories a runtime may create for `rel`: one per mounted hierarchy (v1
/// controllers, named hierarchies and the unified one on hybrid hosts; a co-mounted
/// `cpu,cpuacct` once), or one on v2.
pub fn cgroup_dirs_for(hier: &Hierarchies, layout: CgroupLayout, rel: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = match layout {
        CgroupLayout::V2 => hier.v2().map(|h| h.mount.join(rel)).into_iter().collect(),
        CgroupLayout::None => vec![],
        CgroupLayout::V1 | CgroupLayout::Hybrid => {
            hier.all.iter().map(|h| h.mount.join(rel)).collect()
        }
    };
    v.sort();
    v.dedup();
    v
}

fn prepare_in(tier: Tier, env: &RunEnv, base: &Path) -> Result<Prepared, BackendError> {
    std::fs::create_dir(base)
        .map_err(|e| BackendError::io(format!("creating {}", base.display()), e))?;
    let rootfs = base.join("rootfs");
    rootfs::build(&env.agent, &rootfs)
        .map_err(|e| BackendError::Other(format!("building the {tier} rootfs: {e}")))?;
    // Mount point of the volume (runtimes would otherwise create it in the shared rootfs).
    std::fs::create_dir(rootfs.join(VOLUME_DIR.trim_start_matches('/')))
        .map_err(|e| BackendError::io("creating /volume in the rootfs", e))?;
    let state_root = base.join("state");
    let volume = base.join("volume");
    for d in [&state_root, &volume] {
        std::fs::create_dir(d)
            .map_err(|e| BackendError::io(format!("creating {}", d.display()), e))?;
    }
    let (bin, _) = super::binary_of(tier).expect("a runtime tier");
    let bin = crate::host::facts::which(bin).ok_or_else(|| BackendError::Unavailable {
        tier,
        reason: format!("{bin} vanished from PATH"),
    })?;
    let layout = env.host.cgroup_layout;
    let hier = Hierarchies::detect();
    let cgroup_rel = format!("isobench-{tier}-{}", env.state.id);
    let cgroup_dirs = cgroup_dirs_for(&hier, layout, &cgroup_rel);
    let res: Vec<Resource> = cgroup_dirs
        .iter()
        .map(|p| Resource::Cgroup { path: p.clone() })
        .collect();
    env.state
        .record_all(&res)
        .map_err(|e| BackendError::io("recording the runtime's cgroups in the ledger", e))?;
    // The run's parents, made here and exclusively: the runtimes would adopt existing ones.
    if let Err(e) = create_exclusive(&cgroup_dirs) {
        let _ = env.state.release_all(&res);
        return Err(BackendError::Other(format!(
            "creating the {tier} run's cgroup parents: {e}"
        )));
    }
    // From here on a failure removes the parents made above (and only those).
    let rest =
        prepare_cpuset_parent(&hier, &cgroup_rel, &env.budget).and_then(|()| loopback_peer());
    let peer = match rest {
        Ok(peer) => peer,
        Err(e) => {
            if remove_cgroups(&cgroup_dirs).is_ok() {
                let _ = env.state.release_all(&res);
            }
            return Err(e);
        }
    };
    Ok(Prepared {
        ctx: Ctx {
            tier,
            bin: bin.clone(),
            state_root: state_root.clone(),
            cgroup_dirs: cgroup_dirs.clone(),
            state: env.state.clone(),
        },
        bin,
        layout,
        budget: env.budget.clone(),
        cancel: env.cancel.clone(),
        base: base.to_path_buf(),
        rootfs,
        volume,
        cgroup_rel,
        cgroup_dirs,
        pids_limit: hier.has_pids(layout).then_some(PIDS_MAX),
        peer_addr: peer.local_addr(),
        peer: Some(peer),
    })
}

/// On v1 hosts a new cpuset cgroup starts with no CPUs and no memory nodes, and runsc does not
/// fill in the parents it creates (runc does): give the run's cpuset parent (made by
/// `prepare_in`) the budget's CPUs and the hierarchy root's memory nodes.
fn prepare_cpuset_parent(
    hier: &Hierarchies,
    rel: &str,
    budget: &Budget,
) -> Result<(), BackendError> {
    let Some(root) = hier.v1("cpuset").map(|h| h.mount.clone()) else {
        return Ok(());
    };
    let dir = root.join(rel);
    let io = |what: &str, e| BackendError::io(format!("{what} {}", dir.display()), e);
    let mems = std::fs::read_to_string(root.join("cpuset.mems")).map_err(|e| io("reading", e))?;
    std::fs::write(dir.join("cpuset.cpus"), cpu_list(&budget.cpus))
        .map_err(|e| io("writing cpuset.cpus of", e))?;
    std::fs::write(dir.join("cpuset.mems"), mems.trim())
        .map_err(|e| io("writing cpuset.mems of", e))
}

/// Remove the run's cgroup parents (whatever the runtimes left below them, deepest first).
fn remove_cgroups(dirs: &[PathBuf]) -> Result<(), BackendError> {
    let mut all = vec![];
    for d in dirs {
        all.extend(subtree_dirs(d).unwrap_or_default());
    }
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for d in all {
        rmdir_retry(&d).map_err(|e| BackendError::Other(format!("{e}")))?;
    }
    Ok(())
}

impl Bundled {
    /// Prepare runc, crun, runsc or LXC: the run's directory (rootfs, runtime state, volume)
    /// and cgroup parents, each recorded before it is made and removed again if a later step
    /// fails (what cannot be removed stays in the ledger).
    pub fn prepare(tier: Tier, env: &RunEnv) -> Result<Self, BackendError> {
        if !matches!(tier, Tier::Runc | Tier::Crun | Tier::Gvisor | Tier::Lxc) {
            return Err(BackendError::Other(format!(
                "internal error: the OCI backend asked for {tier}; report this bug"
            )));
        }
        if let Availability::Unavailable { reason, fix } =
            super::availability(tier, &env.host, &env.options)
        {
            return Err(BackendError::Unavailable {
                tier,
                reason: format!("{reason}: {fix}"),
            });
        }
        check_run_id(&env.state.id)?;
        cpuset(&env.budget.cpus)?;
        let base = env.state.scratch().join(tier.as_str());
        // prepare_in removes the cgroup parents it made if it fails after making them.
        let p = crate::backend::prepare_run_dir(env, &base, || prepare_in(tier, env, &base))?;
        Ok(Bundled {
            tier,
            p,
            finished: false,
            launches: 0,
            last_stderr: String::new(),
            installed: BTreeSet::new(),
        })
    }

    /// Copy the programs of `task`'s application with their libraries into the run's bundle
    /// rootfs (every launch of the run shares it), once per application.
    fn install_app(&mut self, task: &Task) -> Result<(), BackendError> {
        let app = crate::backend::launch::server_app(task)?;
        if self.installed.contains(app.name) {
            return Ok(());
        }
        let programs: Vec<PathBuf> = app.programs.iter().map(PathBuf::from).collect();
        rootfs::install_with_libs(&self.p.rootfs, &programs).map_err(|e| {
            BackendError::Other(format!(
                "installing the {} server into the {} rootfs: {e}",
                app.name, self.tier
            ))
        })?;
        self.installed.insert(app.name);
        Ok(())
    }
}

impl Backend for Bundled {
    fn tier(&self) -> Tier {
        self.tier
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let state = self.p.ctx.state.clone();
        let cancel = self.p.cancel.clone();
        self.last_stderr.clear();
        let deadline = Instant::now() + PROCESS_DEADLINE;
        launch::measure(self, task, deadline, &cancel, &state).map_err(|e| {
            let what = self.tier.to_string();
            with_stderr(e, &what, &self.last_stderr)
        })
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        check_idle(task)?;
        let p = &self.p;
        let ctx = p.ctx.clone();
        let cancel = p.cancel.clone();
        self.last_stderr.clear();
        let (plan, started) = launch::start_idle(self, task, IDLE_READY_DEADLINE, &cancel)
            .map_err(|e| with_stderr(e, &ctx.tier.to_string(), &self.last_stderr))?;
        let Started {
            mut process,
            stream,
            ..
        } = started;
        Ok(Box::new(RuntimeIdle {
            stdin: process.stdin.take(),
            process: Some(process),
            _stream: stream,
            ctx,
            plan: Some(plan),
        }))
    }

    /// An application server: its programs (the host's `redis-server`, ...) copied with their
    /// libraries into the bundle rootfs (as the container tier's; by `prepare_server`, off the
    /// clock, or here if it was not called), served on 127.0.0.1 of the host's network
    /// namespace, which these launches share (runsc: `--network=host`); its data directory (mysql)
    /// on the bundle rootfs' /data or the volume.
    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        if task.workload.net_path() == crate::workload::NetPath::Nat {
            return Err(BackendError::Unsupported(format!(
                "{} has no NAT path of its own here (the tier shares the host's network): its nat path would be its direct one",
                self.tier
            )));
        }
        let (t, addr) = loopback_server_task(task)?;
        self.install_app(&t)?;
        let instance = self.start_idle(&t)?;
        Ok(ServerInstance { instance, addr })
    }

    /// The server's programs and their ldd closure into the run's bundle rootfs, once per run.
    fn prepare_server(&mut self, task: &Task) -> Result<(), BackendError> {
        self.install_app(task)
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        let p = &mut self.p;
        if let Some(peer) = p.peer.take() {
            peer.stop();
        }
        // Any container a failed launch left (the ledger still names it).
        let mut errors = vec![];
        for r in p.ctx.state.resources() {
            let done = match &r {
                Resource::OciContainer { runtime, root, id } if root == &p.ctx.state_root => {
                    remove_oci_container(runtime, root, id)
                }
                Resource::LxcContainer { lxcpath, name } if lxcpath == &p.ctx.state_root => {
                    remove_lxc_container(lxcpath, name)
                }
                _ => continue,
            };
            match done {
                Ok(_) => {
                    let _ = p.ctx.state.release(&r);
                }
                Err(e) => errors.push(e),
            }
        }
        if !errors.is_empty() {
            return Err(BackendError::Other(format!(
                "{}; then run `isobench cleanup`",
                errors.join("; ")
            )));
        }
        remove_cgroups(&p.cgroup_dirs)?;
        let res: Vec<Resource> = p
            .cgroup_dirs
            .iter()
            .map(|path| Resource::Cgroup { path: path.clone() })
            .collect();
        p.ctx
            .state
            .release_all(&res)
            .map_err(|e| BackendError::io("updating the run ledger", e))?;
        safe_remove_tree(&p.base)
            .map_err(|e| BackendError::io(format!("removing {}", p.base.display()), e))?;
        let under: Vec<Resource> = p
            .ctx
            .state
            .resources()
            .into_iter()
            .filter(|r| matches!(r, Resource::Dir { path } | Resource::File { path } if path.starts_with(&p.base)))
            .collect();
        p.ctx
            .state
            .release_all(&under)
            .map_err(|e| BackendError::io("updating the run ledger", e))
    }

    fn versions(&self) -> BTreeMap<String, String> {
        let Some((bin, _)) = super::binary_of(self.tier) else {
            return BTreeMap::new();
        };
        let v = version_line(&self.p.bin, &["--version"]).unwrap_or_else(|| "unknown".into());
        BTreeMap::from([(bin.to_string(), v)])
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::from([
            (
                "namespaces".into(),
                "pid,ipc,uts,mount,cgroup,net (net: host's for the net workload)".to_string(),
            ),
            (
                "rootfs".into(),
                "minimal rootfs (static agent), plain directory, writable".into(),
            ),
            (
                "fs_path".into(),
                format!("rootfs: {DATA_DIR} of the bundle rootfs (host filesystem, no overlay); volume: bind mount at {VOLUME_DIR}"),
            ),
            (
                "net_path".into(),
                "host network namespace, peer on 127.0.0.1 (both paths: no NAT of its own); application servers on 127.0.0.1 too"
                    .into(),
            ),
        ]);
        if self.tier == Tier::Gvisor {
            for (k, v) in gvisor::settings() {
                s.insert(k.into(), v.into());
            }
        }
        if self.tier == Tier::Lxc {
            s.insert(
                "init".into(),
                "lxc-execute: init.lxc is PID 1, the agent PID 2".into(),
            );
        }
        let p = &self.p;
        s.insert("cpus".into(), format!("{:?}", p.budget.cpus));
        s.insert("memory_mib".into(), p.budget.memory_mib.to_string());
        s.insert("cgroup".into(), format!("{:?}", p.layout).to_lowercase());
        s
    }
}

/// One launch, planned: its names, the bundle files to write, the runtime command, and what
/// the ledger holds for it.
pub struct OciPlan {
    id: String,
    /// `<base>/launch-<n>/`: config.json (or lxc.conf) and the runtime's stderr.
    bundle: PathBuf,
    files: Vec<(PathBuf, Vec<u8>)>,
    spec: Spec,
    /// The bundle directory and the container, recorded in `plan`.
    resources: Vec<Resource>,
}

impl OciPlan {
    fn log(&self) -> PathBuf {
        self.bundle.join("runtime.stderr")
    }
}

/// What a launch's teardown needs: the runtime, its state root, the run's cgroup parents.
#[derive(Clone)]
struct Ctx {
    tier: Tier,
    bin: PathBuf,
    state_root: PathBuf,
    cgroup_dirs: Vec<PathBuf>,
    state: Arc<RunState>,
}

impl Launch for Bundled {
    type Plan = OciPlan;
    type Running = ();

    /// Off the clock: the container's name, the bundle's contents, the command; the bundle
    /// directory and the container recorded in the ledger (durably) before either exists.
    fn plan(&mut self, task: &Task) -> Result<OciPlan, BackendError> {
        self.launches += 1;
        let n = self.launches;
        let tier = self.tier;
        let p = &self.p;
        let id = format!("isobench-{}-{tier}-{n}", p.ctx.state.id);
        let shape = LaunchShape::of(tier, task);
        let mut task = task.clone();
        match &mut task.workload {
            Workload::Fs(f) => f.dir = if shape.volume { VOLUME_DIR } else { DATA_DIR }.to_string(),
            Workload::Net(net) => net.peer = p.peer_addr.to_string(),
            // The data directory on the bundle rootfs' /data or on the volume, as fs does.
            Workload::Mysql(m) => {
                m.dir = if shape.volume { VOLUME_DIR } else { DATA_DIR }.to_string()
            }
            _ => {}
        }
        let task_json = serde_json::to_string(&task).expect("task serialises");
        let bundle = p.base.join(format!("launch-{n}"));
        crate::backend::resources::refuse_existing(&bundle)?;
        let cgroup_leaf = format!("{}/{id}", p.cgroup_rel);
        let (files, args) = if tier == Tier::Lxc {
            let conf = bundle.join("lxc.conf");
            let text = lxc::config(&lxc::LxcLaunch {
                rootfs: &p.rootfs,
                task_json: &task_json,
                budget: &p.budget,
                layout: p.layout,
                share_host_net: shape.share_host_net,
                volume: shape.volume.then_some(p.volume.as_path()),
                cgroup_dir: &cgroup_leaf,
                pids_max: p.pids_limit,
            });
            let args = lxc::run_args(&p.ctx.state_root, &id, &conf, &bundle.join("lxc.log"));
            (vec![(conf, text.into_bytes())], args)
        } else {
            let cfg = oci_config(
                &p.rootfs,
                &task_json,
                &p.budget,
                &format!("/{cgroup_leaf}"),
                p.pids_limit,
                shape,
                &p.volume,
            );
            let json = serde_json::to_vec_pretty(&cfg).expect("json");
            let args = if tier == Tier::Gvisor {
                gvisor::run_args(
                    &p.ctx.state_root,
                    &bundle,
                    &id,
                    shape.share_host_net,
                    shape.no_io_uring,
                )
            } else {
                [
                    "--root".as_ref(),
                    p.ctx.state_root.as_os_str(),
                    "run".as_ref(),
                ]
                .into_iter()
                .chain(["--bundle".as_ref(), bundle.as_os_str(), id.as_ref()])
                .map(OsString::from)
                .collect()
            };
            (vec![(bundle.join("config.json"), json)], args)
        };
        let container = if tier == Tier::Lxc {
            Resource::LxcContainer {
                lxcpath: p.ctx.state_root.clone(),
                name: id.clone(),
            }
        } else {
            Resource::OciContainer {
                runtime: p.bin.clone(),
                root: p.ctx.state_root.clone(),
                id: id.clone(),
            }
        };
        let resources = vec![
            Resource::Dir {
                path: bundle.clone(),
            },
            container,
        ];
        p.ctx
            .state
            .record_all(&resources)
            .map_err(|e| BackendError::io("recording the launch in the ledger", e))?;
        let mut spec = cli_spec(&p.bin, args, &p.budget.cpus);
        put_task(&mut spec, &task);
        if stays_until_stdin_closes(&task) {
            // The idle agent (and an application's) ends when its stdin closes (the runtimes
            // pass stdin through).
            spec.stdin = process::Stdio::Pipe;
        }
        Ok(OciPlan {
            id,
            bundle,
            files,
            spec,
            resources,
        })
    }

    /// On the clock: the bundle directory and its files, then the runtime's CLI.
    fn start(&mut self, plan: &mut OciPlan) -> Result<Started<()>, BackendError> {
        std::fs::create_dir(&plan.bundle)
            .map_err(|e| BackendError::io(format!("creating {}", plan.bundle.display()), e))?;
        for (path, bytes) in &plan.files {
            std::fs::write(path, bytes)
                .map_err(|e| BackendError::io(format!("writing {}", path.display()), e))?;
        }
        let log = plan.log();
        start_cli(&mut plan.spec, &log)
    }

    /// On the clock, after the CLI exited: every resource of the launch released (the ledger
    /// releases are deferred by the core until after the released instant).
    fn teardown(&mut self, plan: OciPlan, _running: Option<()>) -> Result<(), BackendError> {
        let ctx = self.p.ctx.clone();
        let (gone, said) = teardown_launch(&ctx, plan);
        self.last_stderr = said;
        ctx.state
            .release_all(&gone?)
            .map_err(|e| BackendError::io("updating the run ledger", e))
    }
}

/// Does the runtime still hold state for container `id` under `root` (an entry named `id`, or
/// `id` followed by a separator: runsc's files; never `id` followed by more digits)?
fn has_state(root: &Path, id: &str) -> bool {
    std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten().any(|e| {
                let name = e.file_name();
                let name = name.to_string_lossy();
                name.strip_prefix(id)
                    .is_some_and(|rest| !rest.starts_with(|c: char| c.is_ascii_digit()))
            })
        })
        .unwrap_or(false)
}

/// Any process left in `dir` or below it (one hierarchy: on v1 every process is in each)?
fn cgroup_has_procs(dir: &Path) -> bool {
    subtree_dirs(dir).unwrap_or_default().iter().any(|d| {
        std::fs::read_to_string(d.join("cgroup.procs")).is_ok_and(|s| !s.trim().is_empty())
    })
}

/// Teardown of one launch, until nothing of it is left: the runtime's state for the container
/// (`run` deletes it on exit; `delete --force` if it did not, e.g. after a kill), its cgroup in
/// every hierarchy (LXC leaves `<name>/lxc.pivot` behind; a cgroup is removed only once empty,
/// so this also proves no process of the container is left), then the bundle. Returns the
/// ledger entries to release and what the runtime said on stderr.
fn teardown_launch(ctx: &Ctx, plan: OciPlan) -> (Result<Vec<Resource>, BackendError>, String) {
    let said = stderr_tail(&plan.log(), 600);
    let leaves: Vec<PathBuf> = ctx.cgroup_dirs.iter().map(|d| d.join(&plan.id)).collect();
    let stopped = if ctx.tier == Tier::Lxc {
        if leaves.first().is_some_and(|l| cgroup_has_procs(l)) {
            remove_lxc_container(&ctx.state_root, &plan.id).map(|_| ())
        } else {
            Ok(())
        }
    } else if has_state(&ctx.state_root, &plan.id) {
        remove_oci_container(&ctx.bin, &ctx.state_root, &plan.id).map(|_| ())
    } else {
        Ok(())
    };
    let res = stopped
        .map_err(BackendError::Other)
        .and_then(|()| remove_cgroups(&leaves))
        .and_then(|()| {
            if plan.bundle.exists() {
                safe_remove_tree(&plan.bundle)
                    .map_err(|e| BackendError::io(format!("removing {}", plan.bundle.display()), e))
            } else {
                Ok(())
            }
        })
        .map(|()| plan.resources);
    (res, said)
}

/// An idle container of a runtime tier: the runtime CLI in the foreground with the agent
/// beneath it. Its host processes are the CLI and every descendant (runc's container init, or
/// gVisor's sandbox and gofer), for PSS accounting; its cgroup is the launch's leaf.
struct RuntimeIdle {
    process: Option<Process>,
    stdin: Option<OwnedFd>,
    _stream: OwnedFd,
    ctx: Ctx,
    plan: Option<OciPlan>,
}

impl IdleInstance for RuntimeIdle {
    fn host_pids(&self) -> Vec<nix::unistd::Pid> {
        match &self.process {
            Some(p) => crate::host::proc::descendants(p.pid),
            None => vec![],
        }
    }

    /// The container's own cgroup (the leaf below the run's parent, in the memory hierarchy).
    fn cgroup_memory_bytes(&self) -> Option<u64> {
        let plan = self.plan.as_ref()?;
        let leaves: Vec<PathBuf> = self
            .ctx
            .cgroup_dirs
            .iter()
            .map(|d| d.join(&plan.id))
            .collect();
        crate::backend::cgroup_memory_in(&leaves)
    }

    fn stop(mut self: Box<Self>) -> Result<(), BackendError> {
        // End of file on stdin ends the idle workload; a stuck one is killed at the deadline
        // (wait kills and reaps it then; dropping a process kills and reaps it too).
        drop(self.stdin.take());
        if let Some(mut p) = self.process.take() {
            let _ = p.wait(Instant::now() + IDLE_STOP_DEADLINE, &AtomicBool::new(false));
        }
        let Some(plan) = self.plan.take() else {
            return Ok(());
        };
        let (gone, said) = teardown_launch(&self.ctx, plan);
        let gone = gone.map_err(|e| with_stderr(e, &self.ctx.tier.to_string(), &said))?;
        self.ctx
            .state
            .release_all(&gone)
            .map_err(|e| BackendError::io("updating the run ledger", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_has_namespaces_budget_and_mounts() {
        let b = Budget {
            cpus: vec![1],
            memory_mib: 256,
        };
        let shape = LaunchShape {
            share_host_net: false,
            volume: true,
            no_io_uring: false,
        };
        let c = oci_config(
            Path::new("/s/rootfs"),
            "{}",
            &b,
            "/isobench-runc-r/isobench-r-runc-1",
            Some(PIDS_MAX),
            shape,
            Path::new("/s/volume"),
        );
        let ns: Vec<&str> = c["linux"]["namespaces"]
            .as_array()
            .unwrap()
            .iter()
            .map(|n| n["type"].as_str().unwrap())
            .collect();
        assert_eq!(ns, ["pid", "ipc", "uts", "mount", "cgroup", "network"]);
        assert_eq!(
            c["linux"]["resources"]["memory"]["limit"],
            256 * 1024 * 1024
        );
        assert_eq!(c["linux"]["resources"]["cpu"]["cpus"], "1");
        assert_eq!(c["linux"]["resources"]["cpu"]["quota"], 100_000);
        assert_eq!(c["linux"]["resources"]["pids"]["limit"], 4096);
        assert_eq!(c["process"]["terminal"], false);
        assert_eq!(c["root"]["readonly"], false);
        assert!(c["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == VOLUME_DIR && m["source"] == "/s/volume"));
        let host = oci_config(
            Path::new("/s/rootfs"),
            "{}",
            &b,
            "/x",
            None,
            LaunchShape {
                share_host_net: true,
                volume: false,
                no_io_uring: true,
            },
            Path::new("/s/volume"),
        );
        let ns = host["linux"]["namespaces"].as_array().unwrap();
        // No pids controller mounted: no limit the runtime would fail to set.
        assert!(host["linux"]["resources"].get("pids").is_none());
        assert!(!ns.iter().any(|n| n["type"] == "network"));
        assert!(!host["mounts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|m| m["destination"] == "/sys"));
    }

    /// The runtimes' parents: one per mounted hierarchy (a co-mounted `cpu,cpuacct` once, the
    /// named and unified ones too on v1/hybrid), the v2 one alone on v2.
    #[test]
    fn runtime_cgroup_parents_one_per_mount() {
        let root = Path::new("/sys/fs/cgroup");
        let v1 = Hierarchies::parse(
            "\
30 25 0:26 / /sys/fs/cgroup ro - tmpfs tmpfs ro,mode=755
31 30 0:27 / /sys/fs/cgroup/systemd rw - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
36 30 0:38 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
",
            root,
        );
        let dirs = cgroup_dirs_for(&v1, CgroupLayout::Hybrid, "isobench-runc-r");
        let names: Vec<String> = dirs
            .iter()
            .map(|d| d.strip_prefix(root).unwrap().display().to_string())
            .collect();
        assert_eq!(
            names,
            [
                "cpu,cpuacct/isobench-runc-r",
                "memory/isobench-runc-r",
                "systemd/isobench-runc-r",
                "unified/isobench-runc-r"
            ]
        );
        let v2 = Hierarchies::parse("1 0 0:9 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n", root);
        assert_eq!(
            cgroup_dirs_for(&v2, CgroupLayout::V2, "isobench-runc-r"),
            vec![root.join("isobench-runc-r")]
        );
        assert!(cgroup_dirs_for(&v2, CgroupLayout::None, "x").is_empty());
    }
}
