//! One container launch as a [`Launch`]: its per-launch resources (planned and recorded in
//! `plan`, off the clock), the child created by [`process::spawn_with`] with the namespaces and
//! the mount sequence ([`setup_container`]) as its setup hook, and the teardown. Shared by
//! measured launches (`run_once`, timed by [`crate::measure::launch::measure`]) and idle
//! instances (`start_idle`).
//!
//! The clock starts before the first per-launch resource is made, so launch -> ready covers the
//! directories, the cgroup, the overlay, the namespaces and the agent's start; the ledger's
//! fsyncs are harness bookkeeping and stay off the clock (records in `plan`, releases deferred).

use std::ffi::{CString, OsString};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use super::net::LaunchNet;
use super::syscalls::{setup_container, LinuxSyscall, MountPlan, Step};
use super::{Container, HOSTNAME};
use crate::backend::launch::{
    server_app, stays_until_stdin_closes, IDLE_READY_DEADLINE, IDLE_STOP_DEADLINE,
};
use crate::backend::process::{self, Hooks, Process, Spec};
use crate::backend::{BackendError, IdleInstance, ServerInstance};
use crate::host::cgroup::CgroupManager;
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs::AGENT_IN_ROOTFS;
use crate::measure::launch::{self as measure, Launch, Started};
use crate::netpeer::NetPeer;
use crate::protocol::{Task, TASK_ENV};
use crate::state::ledger::{Resource, RunState};
use crate::workload::{DataPath, Workload};

/// The fs workload's directory on the overlay rootfs (writes land in the upper layer).
pub const ROOTFS_DATA: &str = "/data";
/// Where the volume is mounted inside the container.
pub const VOLUME: &str = "/volume";

/// Every per-launch resource, named before anything is created.
#[derive(Debug, Clone)]
pub struct LaunchPlan {
    /// `<base>/launch-<n>`: upper, work, merged.
    pub dir: PathBuf,
    /// `<base>/volume-<n>`: the host directory behind /volume (fs workload on the volume path).
    pub volume: Option<PathBuf>,
    pub cg: CgroupManager,
    pub net: Option<LaunchNet>,
    /// The NAT path's peer (run-level); the direct path starts its own per launch.
    pub nat_peer: Option<SocketAddr>,
    /// The task as given (the data paths and peer are filled in at start; an application's
    /// endpoint in plan).
    pub task: Task,
    /// Where the host reaches the application server this launch serves, if any.
    pub server: Option<SocketAddr>,
}

impl LaunchPlan {
    /// What goes into the ledger (one write, before the clock).
    pub fn resources(&self) -> Vec<Resource> {
        let mut v = vec![Resource::Dir {
            path: self.dir.clone(),
        }];
        if let Some(d) = &self.volume {
            v.push(Resource::Dir { path: d.clone() });
        }
        v.extend(self.cg.dirs().into_iter().map(|d| Resource::Cgroup {
            path: d.to_path_buf(),
        }));
        if let Some(n) = &self.net {
            v.extend(n.resources());
        }
        v
    }

    /// Remove everything, in RELIABILITY rule 2's order: kill and wait until the cgroup is
    /// empty (the namespaces, and with them the overlay and volume mounts, die with their last
    /// process), remove the cgroup, then the network devices, then the files. Idempotent: what
    /// was never created is skipped. The caller forgets [`LaunchPlan::resources`] on success.
    pub fn teardown(&self) -> Result<(), BackendError> {
        self.cg
            .kill_all()
            .and_then(|()| self.cg.remove())
            .map_err(|e| BackendError::Other(format!("removing the launch cgroup: {e}")))?;
        if let Some(n) = &self.net {
            n.teardown()?;
        }
        for d in std::iter::once(&self.dir).chain(self.volume.as_ref()) {
            safe_remove_tree(d).map_err(|e| {
                BackendError::io(format!("removing the launch directory {}", d.display()), e)
            })?;
        }
        Ok(())
    }

    /// Tear down and forget; on failure the resources stay in the ledger for `isobench cleanup`.
    pub fn teardown_and_forget(&self, state: &RunState) -> Result<(), BackendError> {
        self.teardown()?;
        state
            .release_all(&self.resources())
            .map_err(|e| BackendError::io("updating the run ledger", e))
    }
}

/// What a started container holds until teardown.
pub struct Running {
    /// The direct path's peer (harness, not tier: dropped off the clock).
    pub peer: Option<NetPeer>,
}

fn cstring(p: &Path) -> Result<CString, BackendError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        BackendError::Other(format!(
            "{} contains a NUL byte: use another state directory",
            p.display()
        ))
    })
}

/// The task as this launch runs it: the fs workload on /data (overlay rootfs) or /volume, the
/// net workload against `peer`.
fn task_for_launch(task: &Task, peer: Option<SocketAddr>) -> Result<Task, BackendError> {
    let mut t = task.clone();
    match &mut t.workload {
        Workload::Fs(p) => {
            p.dir = match p.path {
                DataPath::Rootfs => ROOTFS_DATA,
                DataPath::Volume => VOLUME,
            }
            .into();
        }
        Workload::Mysql(p) => {
            p.dir = match p.data {
                DataPath::Rootfs => ROOTFS_DATA,
                DataPath::Volume => VOLUME,
            }
            .into();
        }
        Workload::Net(p) => {
            p.peer = peer
                .ok_or_else(|| BackendError::Other("the launch has no net peer".into()))?
                .to_string();
        }
        _ => {}
    }
    Ok(t)
}

fn describe_step(n: u32) -> String {
    Step::from_u32(n).map_or_else(|| format!("container setup step {n}"), |s| s.to_string())
}

impl Launch for Container {
    type Plan = LaunchPlan;
    type Running = Running;

    fn plan(&mut self, task: &Task) -> Result<LaunchPlan, BackendError> {
        // The previous launch's peer goes here, off the clock.
        drop(self.spent_peer.take());
        self.plan_launch(task)
    }

    /// Create the launch's resources and the child in fresh namespaces (configuring its
    /// network between clone and its setup). On error, `teardown(plan, None)` removes them.
    fn start(&mut self, plan: &mut LaunchPlan) -> Result<Started<Running>, BackendError> {
        let p = &self.p;
        let (upper, work, merged) = (
            plan.dir.join("upper"),
            plan.dir.join("work"),
            plan.dir.join("merged"),
        );
        for d in [&plan.dir, &upper, &work, &merged]
            .into_iter()
            .chain(plan.volume.as_ref())
        {
            std::fs::create_dir(d)
                .map_err(|e| BackendError::io(format!("creating {}", d.display()), e))?;
        }
        plan.cg
            .create_recorded(&p.budget)
            .map_err(|e| BackendError::Other(format!("creating the launch cgroup: {e}")))?;

        // Network: the pair exists before clone so the direct path's peer can bind the host end.
        let mut peer = None;
        if let Some(net) = &plan.net {
            net.create_host_side(&p.state)?;
            if let Some(cidr) = &net.host_cidr {
                let host = cidr.split('/').next().unwrap_or_default();
                let np = NetPeer::start(format!("{host}:0"))
                    .map_err(|e| BackendError::Other(e.to_string()))?;
                peer = Some(np);
            }
        }
        let running = Running { peer };
        let peer_addr = running
            .peer
            .as_ref()
            .map(NetPeer::local_addr)
            .or(plan.nat_peer);
        let task = task_for_launch(&plan.task, peer_addr)?;

        // Everything the child's setup needs, before clone.
        let merged_c = cstring(&merged)?;
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}{}",
            p.lower.display(),
            upper.display(),
            work.display(),
            if p.volatile { ",volatile" } else { "" }
        );
        let overlay = cstring(Path::new(&opts))?;
        let volume_c = match &plan.volume {
            Some(v) => Some((
                cstring(v)?,
                cstring(&merged.join(VOLUME.trim_start_matches('/')))?,
            )),
            None => None,
        };
        let hostname = CString::new(HOSTNAME).expect("no NUL");
        let mount_plan = MountPlan {
            merged: &merged_c,
            overlay_options: &overlay,
            hostname: &hostname,
            cgroup: p.cgroup_mount,
            volume: volume_c.as_ref().map(|(s, t)| (s.as_c_str(), t.as_c_str())),
        };
        let setup = || setup_container(&LinuxSyscall, &mount_plan).map_err(|(s, e)| (s as u32, e));

        let mut spec = Spec::new(AGENT_IN_ROOTFS);
        spec.env = vec![
            (OsString::from("PATH"), OsString::from("/bin")),
            (
                OsString::from(TASK_ENV),
                OsString::from(serde_json::to_string(&task).expect("task serialises")),
            ),
        ];
        spec.stdout = process::Stdio::Pipe;
        if stays_until_stdin_closes(&task) {
            spec.stdin = process::Stdio::Pipe;
        }
        spec.cpus = Some(p.budget.cpus.clone());
        spec.die_with_parent = true;
        spec.cgroup_procs = plan.cg.self_join_files();

        let mut configure = |pid: Pid| match &plan.net {
            Some(net) => net.configure_container_side(pid),
            None => Ok(()),
        };
        let hooks = Hooks {
            namespaces: CloneFlags::CLONE_NEWNS
                | CloneFlags::CLONE_NEWPID
                | CloneFlags::CLONE_NEWUTS
                | CloneFlags::CLONE_NEWIPC
                | CloneFlags::CLONE_NEWNET,
            setup: Some(&setup),
            describe_setup: describe_step,
            // Without a network device to move in, the child goes on without waiting.
            between: if plan.net.is_some() {
                Some(&mut configure)
            } else {
                None
            },
        };
        let mut process = process::spawn_with(&spec, hooks).map_err(|e| match e {
            BackendError::Other(m) => BackendError::Other(format!(
                "container: {m}; check `isobench doctor` and the kernel log"
            )),
            e => e,
        })?;
        let stream = process.stdout.take().expect("stdout is piped");
        Ok(Started {
            process,
            stream,
            running,
        })
    }

    /// RELIABILITY rule 2's order (see [`LaunchPlan::teardown`]), then the ledger releases
    /// (deferred by the core while it measures).
    fn teardown(&mut self, plan: LaunchPlan, running: Option<Running>) -> Result<(), BackendError> {
        plan.teardown_and_forget(&self.p.state)?;
        self.spent_peer = running.and_then(|r| r.peer);
        Ok(())
    }
}

/// The container serving an application: its programs (the host's `redis-server`, ...) copied
/// with their libraries into the rootfs (the overlay's lower layer, between launches), served
/// on the container's veth (direct path: the host reaches the container's address) or
/// behind the run's NAT bridge (nat path: the host reaches a port published on the bridge's
/// address, see [`super::net::Publish`]).
pub(super) fn start_server(c: &mut Container, task: &Task) -> Result<ServerInstance, BackendError> {
    let app = server_app(task)?;
    let programs: Vec<PathBuf> = app.programs.iter().map(PathBuf::from).collect();
    crate::host::rootfs::install_with_libs(&c.p.lower, &programs).map_err(|e| {
        BackendError::Other(format!(
            "installing the {} server into the rootfs: {e}",
            app.name
        ))
    })?;
    let cancel = c.p.cancel.clone();
    let (plan, started) = measure::start_idle(c, task, IDLE_READY_DEADLINE, &cancel)?;
    let addr = plan.server;
    let mut process = started.process;
    let stdin = process.stdin.take();
    let instance = Box::new(IdleContainer {
        plan,
        state: c.p.state.clone(),
        process,
        stdin,
        stream: started.stream,
        running: started.running,
    });
    match addr {
        Some(addr) => Ok(ServerInstance { instance, addr }),
        None => {
            let _ = instance.stop();
            Err(BackendError::Other(format!(
                "internal error: the {} launch has no address; report this bug",
                app.name
            )))
        }
    }
}

/// An idle container: its agent waits for end of file on stdin.
pub struct IdleContainer {
    pub plan: LaunchPlan,
    pub state: Arc<RunState>,
    pub process: Process,
    pub stdin: Option<OwnedFd>,
    pub stream: OwnedFd,
    pub running: Running,
}

impl IdleInstance for IdleContainer {
    fn host_pids(&self) -> Vec<Pid> {
        vec![self.process.pid]
    }

    fn cgroup_memory_bytes(&self) -> Option<u64> {
        self.plan.cg.memory_current_bytes()
    }

    fn stop(self: Box<Self>) -> Result<(), BackendError> {
        let IdleContainer {
            plan,
            state,
            mut process,
            stdin,
            stream,
            running,
        } = *self;
        drop(stdin);
        // A stuck agent is killed at the deadline (and the cgroup is killed below anyway).
        let waited = process.wait(Instant::now() + IDLE_STOP_DEADLINE, &AtomicBool::new(false));
        drop((stream, running));
        let torn = plan.teardown_and_forget(&state);
        match (waited, torn) {
            (_, Err(t)) => Err(BackendError::Other(format!(
                "stopping an idle container: {t} (run `isobench cleanup`)"
            ))),
            (Ok(_) | Err(BackendError::Timeout(..)), Ok(())) => Ok(()),
            (Err(e), Ok(())) => Err(e),
        }
    }
}
