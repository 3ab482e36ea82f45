//! `chroot`: the agent chrooted into a hand-prepared minimal rootfs (the static agent and the
//! usual directories, with `/proc` mounted as hand-built jails have it), pinned to the budget's
//! CPUs.
//!
//! Not a security boundary: a root process can leave a chroot. It isolates the file view only;
//! pids, network, hostname and mounts are the host's. The jail's `/proc` (mounted once per run,
//! recorded in the ledger, nosuid/nodev/noexec) is the host's pid namespace seen from inside: it
//! is what lets the agent read its own peak memory (`VmHWM`) like every other tier, and what
//! shows the probe that processes stay shared.
//!
//! Data paths: the fs workload works in the jail's `/data`, a plain directory of the rootfs copy
//! on the host filesystem (both `DataPath`s); the net workload talks to a `NetPeer` on
//! 127.0.0.1 (both `NetPath`s: the jail shares the host's network).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::launch::{
    loopback_peer, start_loopback_server, AgentIdle, AgentLaunch, PROCESS_DEADLINE,
};
use crate::backend::{Backend, BackendError, IdleInstance, Outcome, RunEnv, ServerInstance};
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs;
use crate::host::rootfs::AGENT_IN_ROOTFS;
use crate::measure::launch;
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;
use crate::netpeer::NetPeer;
use crate::protocol::Task;
use crate::state::ledger::{Resource, RunState};

pub fn availability(host: &HostFacts) -> Availability {
    if !host.is_root {
        return Availability::unavailable(
            "chroot(2) needs CAP_SYS_CHROOT",
            "run isobench as root (sudo)",
        );
    }
    Availability::Available {
        detail: "chroot into a minimal rootfs (static agent, /proc mounted)".into(),
    }
}

/// The prepared chroot tier.
pub struct Chroot {
    /// The agent, chrooted into `rootfs`, cwd "/", every inherited fd close-on-exec (the one
    /// process spawn does all three before exec).
    agent: AgentLaunch,
    /// The run's rootfs copy (None once finished).
    rootfs: Option<PathBuf>,
    /// The jail's /proc mount point (None once unmounted).
    proc: Option<PathBuf>,
    state: Arc<RunState>,
    cancel: Arc<AtomicBool>,
    /// The net workload's peer on 127.0.0.1.
    peer: Option<NetPeer>,
}

/// The fs workload's directory inside the jail (a directory of the rootfs copy).
pub const DATA_IN_JAIL: &str = "/data";

impl Chroot {
    /// Build the jail's rootfs (recorded first) and start the loopback peer.
    pub fn prepare(env: &RunEnv) -> Result<Self, BackendError> {
        if let Availability::Unavailable { reason, fix } = availability(&env.host) {
            return Err(BackendError::Unavailable {
                tier: Tier::Chroot,
                reason: format!("{reason}: {fix}"),
            });
        }
        crate::backend::process::cpuset(&env.budget.cpus)?;
        let dir = env.state.scratch().join("rootfs");
        crate::backend::resources::refuse_existing(&dir)?;
        let res = Resource::Dir { path: dir.clone() };
        env.state
            .record(res.clone())
            .map_err(|e| BackendError::io("recording the chroot rootfs in the ledger", e))?;
        let undo = |e: BackendError| {
            if safe_remove_tree(&dir).is_ok() {
                let _ = env.state.release(&res);
            }
            e
        };
        rootfs::build(&env.agent, &dir).map_err(|e| {
            undo(BackendError::Other(format!(
                "building the chroot rootfs: {e}"
            )))
        })?;
        // rootfs::build makes /data a plain directory; refuse anything else (rule 7).
        let data = dir.join(DATA_IN_JAIL.trim_start_matches('/'));
        if !std::fs::symlink_metadata(&data).is_ok_and(|m| m.file_type().is_dir()) {
            return Err(undo(BackendError::Other(format!(
                "{} is not a plain directory: rebuild the rootfs",
                data.display()
            ))));
        }
        let proc = mount_proc(&env.state, &dir).map_err(undo)?;
        let peer = match loopback_peer() {
            Ok(p) => p,
            Err(e) => {
                let _ = unmount_proc(&env.state, &proc);
                return Err(undo(e));
            }
        };
        Ok(Chroot {
            agent: AgentLaunch {
                program: PathBuf::from(AGENT_IN_ROOTFS),
                chroot: Some(dir.clone()),
                path_env: "/bin",
                cpus: env.budget.cpus.clone(),
                fs_dir: DATA_IN_JAIL.into(),
                peer: peer.local_addr(),
            },
            rootfs: Some(dir),
            proc: Some(proc),
            state: env.state.clone(),
            cancel: env.cancel.clone(),
            peer: Some(peer),
        })
    }
}

impl Backend for Chroot {
    fn tier(&self) -> Tier {
        Tier::Chroot
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        launch::measure(
            &mut self.agent,
            task,
            Instant::now() + PROCESS_DEADLINE,
            &self.cancel,
            &self.state,
        )
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        Ok(Box::new(AgentIdle::start(
            &mut self.agent,
            task,
            &self.cancel,
        )?))
    }

    /// The application's programs (the host's `redis-server`, ...) copied into the jail with
    /// their libraries, served on 127.0.0.1.
    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        if let (Some(root), Some(app)) = (&self.rootfs, task.workload.server_app()) {
            let programs: Vec<PathBuf> = app.programs.iter().map(PathBuf::from).collect();
            rootfs::install_with_libs(root, &programs).map_err(|e| {
                BackendError::Other(format!(
                    "installing the {} server into the jail: {e}",
                    app.name
                ))
            })?;
        }
        start_loopback_server(&mut self.agent, task, &self.cancel)
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        if let Some(proc) = self.proc.take() {
            unmount_proc(&self.state, &proc)?;
        }
        if let Some(dir) = self.rootfs.take() {
            safe_remove_tree(&dir).map_err(|e| {
                BackendError::io(format!("removing the chroot rootfs {}", dir.display()), e)
            })?;
            self.state
                .release(&Resource::Dir { path: dir })
                .map_err(|e| BackendError::io("updating the run ledger", e))?;
        }
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpus".into(), format!("{:?}", self.agent.cpus)),
            (
                "rootfs".into(),
                "minimal (static agent, /proc mounted)".into(),
            ),
            (
                "fs_path".into(),
                "/data in the jail (a directory of the rootfs copy, host filesystem)".into(),
            ),
            ("net_path".into(), "loopback (127.0.0.1)".into()),
        ])
    }
}

/// Mount a proc file system on the jail's `/proc` (recorded before it is mounted; a plain,
/// empty directory of the run's rootfs copy, refused otherwise).
fn mount_proc(state: &RunState, rootfs: &std::path::Path) -> Result<PathBuf, BackendError> {
    use nix::mount::{mount, MsFlags};
    let proc = rootfs.join("proc");
    let plain_empty_dir = std::fs::symlink_metadata(&proc).is_ok_and(|m| m.file_type().is_dir())
        && std::fs::read_dir(&proc).is_ok_and(|mut d| d.next().is_none());
    if !plain_empty_dir {
        return Err(BackendError::Other(format!(
            "{} is not an empty plain directory: rebuild the rootfs",
            proc.display()
        )));
    }
    let res = Resource::Mount { path: proc.clone() };
    state
        .record(res.clone())
        .map_err(|e| BackendError::io("recording the jail's /proc in the ledger", e))?;
    mount(
        Some("proc"),
        &proc,
        Some("proc"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        None::<&str>,
    )
    .map_err(|e| {
        let _ = state.release(&res);
        BackendError::sys(format!("mounting proc on {}", proc.display()), e)
    })?;
    Ok(proc)
}

/// Unmount the jail's `/proc` and forget it.
fn unmount_proc(state: &RunState, proc: &std::path::Path) -> Result<(), BackendError> {
    nix::mount::umount2(proc, nix::mount::MntFlags::MNT_DETACH)
        .map_err(|e| BackendError::sys(format!("unmounting {}", proc.display()), e))?;
    state
        .release(&Resource::Mount {
            path: proc.to_path_buf(),
        })
        .map_err(|e| BackendError::io("updating the run ledger", e))
}
