//! `chroot`: the agent chrooted into a hand-prepared minimal rootfs (the agent and its shared
//! libraries), pinned to the budget's CPUs.
//!
//! Not a security boundary: a root process can leave a chroot. It isolates the file view only;
//! pids, network, hostname and mounts are the host's.
//!
//! Data paths: the fs workload works in the jail's `/data`, a plain directory of the rootfs copy
//! on the host filesystem (both `DataPath`s); the net workload talks to a `NetPeer` on
//! 127.0.0.1 (both `NetPath`s: the jail shares the host's network).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::launch::{loopback_peer, AgentIdle, AgentLaunch, PROCESS_DEADLINE};
use super::{Backend, BackendError, IdleInstance, Outcome, RunEnv};
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
        detail: "chroot into a minimal rootfs (agent + ldd libraries)".into(),
    }
}

/// The prepared chroot tier.
pub struct Chroot {
    /// The agent, chrooted into `rootfs`, cwd "/", every inherited fd close-on-exec (the one
    /// process spawn does all three before exec).
    agent: AgentLaunch,
    /// The run's rootfs copy (None once finished).
    rootfs: Option<PathBuf>,
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
        super::process::cpuset(&env.budget.cpus)?;
        let dir = env.state.scratch().join("rootfs");
        super::resources::refuse_existing(&dir)?;
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
        let peer = loopback_peer().map_err(undo)?;
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

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
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
            ("rootfs".into(), "minimal (agent + ldd libraries)".into()),
            (
                "fs_path".into(),
                "/data in the jail (a directory of the rootfs copy, host filesystem)".into(),
            ),
            ("net_path".into(), "loopback (127.0.0.1)".into()),
        ])
    }
}
