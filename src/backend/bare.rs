//! `bare`: the agent as a plain child process, pinned to the budget's CPUs.
//!
//! Data paths: the fs workload works in `<run scratch>/bare-data` (both `DataPath`s: a bare
//! process has only the host's directories), the net workload talks to a `NetPeer` on
//! 127.0.0.1 (both `NetPath`s: loopback is the whole network path of a host process).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use crate::backend::launch::{
    loopback_peer, start_loopback_server, AgentIdle, AgentLaunch, PROCESS_DEADLINE,
};
use crate::backend::process;
use crate::backend::resources::{make_data_dir, remove_data_dir};
use crate::backend::{Backend, BackendError, IdleInstance, Outcome, RunEnv, ServerInstance};
use crate::host::rootfs;
use crate::measure::launch;
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;
use crate::netpeer::NetPeer;
use crate::protocol::Task;
use crate::state::ledger::RunState;

pub use crate::backend::process::cpuset;

pub fn availability(_host: &HostFacts) -> Availability {
    Availability::Available {
        detail: "plain child process".into(),
    }
}

/// The prepared bare tier.
pub struct Bare {
    agent: AgentLaunch,
    state: Arc<RunState>,
    cancel: Arc<AtomicBool>,
    /// The fs workload's host directory, recorded in `state` (None once finished).
    data: Option<PathBuf>,
    /// The directory holding the agent's copy, recorded in `state` (None once finished).
    bin: Option<PathBuf>,
    /// The net workload's peer on 127.0.0.1.
    peer: Option<NetPeer>,
}

impl Bare {
    /// Prepare the bare tier: the agent's copy and its data directory (each recorded, then
    /// made) and its loopback peer. The agent runs from a copy written as every rootfs's copy
    /// is (see `rootfs::install_agent`), so all tiers load the same bytes the same way.
    pub fn prepare(env: &RunEnv) -> Result<Self, BackendError> {
        process::cpuset(&env.budget.cpus)?;
        let bin = env.state.scratch().join("bare-bin");
        let dir = env.state.scratch().join("bare-data");
        make_data_dir(&env.state, &bin)?;
        // Whatever fails below, the directories made so far go again.
        let undo = |e: BackendError, made: &[&PathBuf]| {
            for d in made {
                let _ = remove_data_dir(&env.state, d);
            }
            e
        };
        let program = bin.join("isobench-agent");
        rootfs::install_agent(&env.agent, &program).map_err(|e| {
            undo(
                BackendError::Other(format!("installing the agent: {e}")),
                &[&bin],
            )
        })?;
        make_data_dir(&env.state, &dir).map_err(|e| undo(e, &[&bin]))?;
        let peer = loopback_peer().map_err(|e| undo(e, &[&dir, &bin]))?;
        Ok(Bare {
            agent: AgentLaunch {
                program,
                chroot: None,
                path_env: "/usr/local/bin:/usr/bin:/bin",
                cpus: env.budget.cpus.clone(),
                fs_dir: dir.to_string_lossy().into_owned(),
                peer: peer.local_addr(),
            },
            state: env.state.clone(),
            cancel: env.cancel.clone(),
            data: Some(dir),
            bin: Some(bin),
            peer: Some(peer),
        })
    }
}

impl Backend for Bare {
    fn tier(&self) -> Tier {
        Tier::Bare
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

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        if let Some(dir) = self.data.take() {
            remove_data_dir(&self.state, &dir)?;
        }
        if let Some(dir) = self.bin.take() {
            remove_data_dir(&self.state, &dir)?;
        }
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpus".into(), format!("{:?}", self.agent.cpus)),
            ("fs_path".into(), "host directory (run scratch)".into()),
            ("net_path".into(), "loopback (127.0.0.1)".into()),
        ])
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        Ok(Box::new(AgentIdle::start(
            &mut self.agent,
            task,
            &self.cancel,
        )?))
    }

    /// The host's own `redis-server` on 127.0.0.1.
    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        start_loopback_server(&mut self.agent, task, &self.cancel)
    }
}
