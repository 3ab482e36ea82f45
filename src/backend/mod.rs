//! Isolation backends: one module per tier, all behind [`Backend`].
//!
//! A backend is made for one run by its tier's `prepare(env)` (rootfs, initramfs, cgroup
//! parents: every resource recorded in the run's ledger before it is created), which returns the
//! prepared value (type state: there is no unprepared backend to misuse), then asked to
//! `run_once` many times, and finally `finish`ed. `run_once` goes through the one launch timer,
//! [`crate::measure::launch::measure`]; every sandbox process is created by [`process`].

pub mod child;
pub mod launch;
pub mod process;
pub mod registry;
pub mod resources;

// Each tier's module is declared in the registry, beside its row: adding a tier touches
// `model/tier.rs`, `backend/registry.rs` and the tier's own module, nothing here.
pub use registry::{bare, chroot, container, runtimes, vm};

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::model::budget::Budget;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;
use crate::protocol::{AgentReport, Task};
use crate::state::ledger::RunState;

/// Errors of a backend, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("{tier} is unavailable: {reason}")]
    Unavailable { tier: Tier, reason: String },
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: {source}")]
    Sys {
        what: String,
        #[source]
        source: nix::Error,
    },
    #[error("the agent did not report within {0:?} (output tail: {1})")]
    Timeout(Duration, String),
    #[error("the agent failed: {0}")]
    Agent(String),
    #[error("interrupted")]
    Interrupted,
    /// The tier cannot run this workload at all (not a failure of one launch).
    #[error("{0}")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

impl BackendError {
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        BackendError::Io {
            what: what.into(),
            source,
        }
    }
    pub fn sys(what: impl Into<String>, source: nix::Error) -> Self {
        BackendError::Sys {
            what: what.into(),
            source,
        }
    }
}

/// Options that select how a backend runs (from CLI and scenario).
#[derive(Debug, Clone)]
pub struct BackendOptions {
    /// Guest kernel for VM tiers (`--kernel`); None = the cached Debian kernel.
    pub kernel: Option<PathBuf>,
    /// Cache kept across runs (guest kernels): $ISOBENCH_CACHE_DIR or /var/cache/isobench.
    pub cache_dir: PathBuf,
    /// Extra backend settings (`key=value`), e.g. `qemu=/usr/bin/qemu-system-x86_64`.
    pub settings: BTreeMap<String, String>,
}

impl Default for BackendOptions {
    fn default() -> Self {
        BackendOptions {
            kernel: None,
            cache_dir: std::env::var_os("ISOBENCH_CACHE_DIR")
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/var/cache/isobench")),
            settings: BTreeMap::new(),
        }
    }
}

/// Everything a backend needs from the run.
#[derive(Clone)]
pub struct RunEnv {
    /// The agent binary (byte-identical in every tier).
    pub agent: PathBuf,
    /// The run's ledger of created resources, and its scratch directory.
    pub state: Arc<RunState>,
    /// Cache for artefacts kept across runs (guest kernel, ...).
    pub cache_dir: PathBuf,
    pub budget: Budget,
    pub options: BackendOptions,
    pub host: HostFacts,
    /// Set on Ctrl-C; backends stop waiting and tear down.
    pub cancel: Arc<AtomicBool>,
}

/// Host-clock timings of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Timings {
    pub launch_to_ready: Duration,
    pub launch_to_exit: Duration,
    /// exit -> released.
    pub teardown: Duration,
    /// launch -> every per-launch resource released (comparable across tiers whatever a
    /// runtime does before its CLI exits).
    pub launch_to_released: Duration,
}

/// What one launch produced.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub timings: Timings,
    pub report: AgentReport,
    /// Exit code of the agent (or of the VMM for VM tiers).
    pub exit_code: Option<i32>,
}

/// One isolation tier's implementation, prepared (each tier's `prepare(env)` makes it).
pub trait Backend {
    fn tier(&self) -> Tier;
    /// Launch the agent once, wait for its report and exit, tear the sandbox down.
    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError>;
    /// Release run-level resources. Idempotent; called on success, failure and Ctrl-C.
    fn finish(&mut self) -> Result<(), BackendError>;
    /// Version of what runs underneath (host kernel, QEMU + guest kernel, ...).
    fn versions(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// How the tier ran (accelerator, VMM, rootfs kind, ...), recorded in results.json.
    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::new()
    }
    /// Start one idle instance (the agent running `Workload::Idle`) and return once it has
    /// signalled ready, leaving it running: the density measurement starts K of these at once.
    /// Every resource is recorded in the ledger like a normal launch.
    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        let _ = task;
        Err(BackendError::Unsupported(format!(
            "{} cannot start idle instances yet: density is not measured on this tier",
            self.tier()
        )))
    }
    /// Start the tier serving an application (`redis`, issue 12): the agent running the
    /// workload's server, returned once the agent has signalled ready (the caller then waits
    /// for the server itself), with the address the host reaches the server at over the tier's
    /// own network path. Stopped like an idle instance. A tier that cannot carry it says so.
    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        let _ = task;
        Err(BackendError::Unsupported(format!(
            "not yet carried by {} (issue 12)",
            self.tier()
        )))
    }
    /// Make what `start_server` needs for this application and keeps for the run (an image, an
    /// initramfs), so that it is off the server-start clock. The runner calls it once per tier
    /// and application workload, after `prepare` and before the first round; `start_server`
    /// must still work (and make it then) when it was not called. Nothing to make: Ok.
    fn prepare_server(&mut self, task: &Task) -> Result<(), BackendError> {
        let _ = task;
        Ok(())
    }
}

/// A tier serving an application: the running instance and where the host reaches it.
pub struct ServerInstance {
    pub instance: Box<dyn IdleInstance>,
    pub addr: std::net::SocketAddr,
}

/// A running idle sandbox, for the density measurement (`crate::measure::density`).
pub trait IdleInstance {
    /// Every host process that belongs to this instance and to no other, read at the time of
    /// the call, for PSS accounting: the agent; the runtime CLI and what runs beneath it; a
    /// Docker container's shim and processes (never the docker CLI's, never the shared
    /// daemons); the VMM. Empty, or naming a process that has exited, once the instance has
    /// ended early: the density measurement then leaves it out and counts it.
    fn host_pids(&self) -> Vec<nix::unistd::Pid>;
    /// Memory charged to the instance's own cgroup now, bytes, where it has one (v2
    /// `memory.current`, v1 `memory.usage_in_bytes`).
    fn cgroup_memory_bytes(&self) -> Option<u64> {
        None
    }
    /// When a server instance signalled ready, where that is not when `start_server` returned
    /// (a VM waits for its server to accept before returning): an application's start clock
    /// runs from here. `None`: the return of `start_server`.
    fn ready_at(&self) -> Option<std::time::Instant> {
        None
    }
    /// Stop the instance and release everything it holds (timed by nobody; must be complete).
    fn stop(self: Box<Self>) -> Result<(), BackendError>;
}

/// Memory charged to a cgroup, bytes: the first of `dirs` (one per hierarchy) that has
/// `memory.current` (v2) or `memory.usage_in_bytes` (v1's memory hierarchy).
pub fn cgroup_memory_in(dirs: &[PathBuf]) -> Option<u64> {
    dirs.iter().find_map(|d| {
        ["memory.current", "memory.usage_in_bytes"]
            .iter()
            .find_map(|f| std::fs::read_to_string(d.join(f)).ok()?.trim().parse().ok())
    })
}

/// The cgroup directories of `pid` that can report memory, from `/proc/PID/cgroup` (paths as
/// this harness's cgroup namespace sees them): the v1 memory hierarchy's and the v2 one's,
/// under the mounts `hier` lists. Empty when the process is gone.
pub fn cgroup_dirs_of_pid(
    pid: nix::unistd::Pid,
    hier: &crate::host::cgroup::Hierarchies,
) -> Vec<PathBuf> {
    let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else {
        return vec![];
    };
    cgroup_dirs_of(&text, hier)
}

/// [`cgroup_dirs_of_pid`] on the text of a `/proc/PID/cgroup`.
pub fn cgroup_dirs_of(proc_cgroup: &str, hier: &crate::host::cgroup::Hierarchies) -> Vec<PathBuf> {
    let mut out = vec![];
    for line in proc_cgroup.lines() {
        let mut f = line.splitn(3, ':');
        let (Some(_), Some(ctrl), Some(path)) = (f.next(), f.next(), f.next()) else {
            continue;
        };
        let rel = path.trim_start_matches('/');
        if rel.split('/').any(|c| c == "..") {
            continue;
        }
        let mount = if ctrl.is_empty() {
            hier.v2().map(|h| h.mount.clone())
        } else if ctrl.split(',').any(|c| c == "memory") {
            hier.v1("memory").map(|h| h.mount.clone())
        } else {
            None
        };
        if let Some(m) = mount {
            out.push(m.join(rel));
        }
    }
    // On hybrid hosts the unified hierarchy has no memory files: [`cgroup_memory_in`] skips it.
    out
}

/// Make a backend's run-level directory `base` and fill it: refuse a `base` that exists (one
/// it did not create is never adopted), record it in the ledger before creating anything, and
/// on failure remove what was made (what cannot be removed stays in the ledger for
/// `isobench cleanup`). `fill` does the backend's own preparation inside `base`. `base` must lie
/// inside the run's scratch area: `isobench cleanup` refuses a recorded path anywhere else.
pub(crate) fn prepare_run_dir<P>(
    env: &RunEnv,
    base: &std::path::Path,
    fill: impl FnOnce() -> Result<P, BackendError>,
) -> Result<P, BackendError> {
    let scratch = env.state.scratch();
    if !base.starts_with(&scratch)
        || base == scratch
        || base
            .components()
            .any(|c| matches!(c, std::path::Component::ParentDir))
    {
        return Err(BackendError::Other(format!(
            "internal error: a backend's run directory {} is not inside the run's scratch area {}; report this bug",
            base.display(),
            scratch.display()
        )));
    }
    resources::refuse_existing(base)?;
    let res = crate::state::ledger::Resource::Dir {
        path: base.to_path_buf(),
    };
    env.state
        .record(res.clone())
        .map_err(|e| BackendError::io(format!("recording {} in the ledger", base.display()), e))?;
    fill().inspect_err(|_| {
        if crate::host::fs::safe_remove_tree(base).is_ok() {
            let _ = env.state.release(&res);
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::host::cgroup::Hierarchies;
    use std::path::Path;

    #[test]
    fn cgroup_dirs_of_a_docker_container() {
        let mountinfo = "30 25 0:26 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n\
                         31 25 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n\
                         32 25 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n";
        let hybrid = Hierarchies::parse(mountinfo, Path::new("/sys/fs/cgroup"));
        let text = "12:memory:/docker/abc\n4:cpu,cpuacct:/docker/abc\n0::/docker/abc\n";
        assert_eq!(
            cgroup_dirs_of(text, &hybrid),
            vec![
                PathBuf::from("/sys/fs/cgroup/memory/docker/abc"),
                PathBuf::from("/sys/fs/cgroup/unified/docker/abc"),
            ]
        );
        let v2 = Hierarchies::parse(
            "30 25 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n",
            Path::new("/sys/fs/cgroup"),
        );
        assert_eq!(
            cgroup_dirs_of("0::/system.slice/docker-abc.scope\n", &v2),
            vec![PathBuf::from(
                "/sys/fs/cgroup/system.slice/docker-abc.scope"
            )]
        );
        assert!(cgroup_dirs_of("0::/../etc\n", &v2).is_empty());
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("memory.usage_in_bytes"), "4096\n").unwrap();
        assert_eq!(
            cgroup_memory_in(&[PathBuf::from("/nonexistent"), dir.path().to_path_buf()]),
            Some(4096)
        );
    }
}
