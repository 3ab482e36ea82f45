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
use std::ffi::CString;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::bare::{child_common, cpuset, loopback_peer, measure_command, process_task, spawn_idle};
use super::{Backend, BackendError, IdleInstance, Outcome, RunEnv};
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs::{self, AGENT_IN_ROOTFS};
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

#[derive(Default)]
pub struct Chroot {
    rootfs: PathBuf,
    state: Option<Arc<RunState>>,
    cpus: Vec<usize>,
    cancel: Arc<AtomicBool>,
    /// The net workload's peer on 127.0.0.1.
    peer: Option<NetPeer>,
}

/// The fs workload's directory inside the jail (a directory of the rootfs copy).
pub const DATA_IN_JAIL: &str = "/data";

/// Mark every fd above stderr close-on-exec (one syscall; Linux 5.11+), falling back to a loop
/// of fcntl on older kernels. Async-signal-safe, no allocation.
pub fn cloexec_from_3() -> std::io::Result<()> {
    // SAFETY: close_range with CLOSE_RANGE_CLOEXEC only changes fd flags; integer arguments.
    let rc = unsafe { libc::close_range(3, libc::c_uint::MAX, libc::CLOSE_RANGE_CLOEXEC as i32) };
    if rc == 0 {
        return Ok(());
    }
    for fd in 3..4096 {
        // SAFETY: fcntl(F_SETFD) on a possibly-closed fd only fails with EBADF.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    Ok(())
}

impl Backend for Chroot {
    fn tier(&self) -> Tier {
        Tier::Chroot
    }

    fn prepare(&mut self, env: &RunEnv) -> Result<(), BackendError> {
        if let Availability::Unavailable { reason, fix } = availability(&env.host) {
            return Err(BackendError::Unavailable {
                tier: Tier::Chroot,
                reason: format!("{reason}: {fix}"),
            });
        }
        let dir = env.state.scratch().join("rootfs");
        super::resources::refuse_existing(&dir)?;
        env.state
            .record(Resource::Dir { path: dir.clone() })
            .map_err(|e| BackendError::io("recording the chroot rootfs in the ledger", e))?;
        if let Err(e) = rootfs::build(&env.agent, &dir) {
            if safe_remove_tree(&dir).is_ok() {
                let _ = env.state.release(&Resource::Dir { path: dir });
            }
            return Err(BackendError::Other(format!(
                "building the chroot rootfs: {e}"
            )));
        }
        self.rootfs = dir;
        self.state = Some(env.state.clone());
        self.cpus = env.budget.cpus.clone();
        self.cancel = env.cancel.clone();
        // rootfs::build makes /data a plain directory; refuse anything else (rule 7).
        let data = self.rootfs.join(DATA_IN_JAIL.trim_start_matches('/'));
        if !std::fs::symlink_metadata(&data).is_ok_and(|m| m.file_type().is_dir()) {
            let _ = self.finish();
            return Err(BackendError::Other(format!(
                "{} is not a plain directory: rebuild the rootfs",
                data.display()
            )));
        }
        match loopback_peer() {
            Ok(p) => self.peer = Some(p),
            Err(e) => {
                let _ = self.finish();
                return Err(e);
            }
        }
        Ok(())
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let task = process_task(
            task,
            DATA_IN_JAIL,
            self.peer.as_ref().map(NetPeer::local_addr),
        )?;
        measure_command(self.command()?, &task, &self.cancel, || Ok(()))
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        let cmd = self.command()?;
        Ok(Box::new(spawn_idle(cmd, task, &self.cancel)?))
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        if let Some(state) = self.state.take() {
            safe_remove_tree(&self.rootfs).map_err(|e| {
                BackendError::io(
                    format!("removing the chroot rootfs {}", self.rootfs.display()),
                    e,
                )
            })?;
            state
                .release(&Resource::Dir {
                    path: self.rootfs.clone(),
                })
                .map_err(|e| BackendError::io("updating the run ledger", e))?;
        }
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([
            ("cpus".into(), format!("{:?}", self.cpus)),
            ("rootfs".into(), "minimal (agent + ldd libraries)".into()),
            (
                "fs_path".into(),
                "/data in the jail (a directory of the rootfs copy, host filesystem)".into(),
            ),
            ("net_path".into(), "loopback (127.0.0.1)".into()),
        ])
    }
}

impl Chroot {
    /// The agent's command: pinned, chrooted, cwd "/", every inherited fd close-on-exec.
    fn command(&self) -> Result<Command, BackendError> {
        if self.state.is_none() {
            return Err(BackendError::Other(
                "chroot backend used before prepare(): call prepare first".into(),
            ));
        }
        let set = cpuset(&self.cpus)?;
        let root = CString::new(self.rootfs.as_os_str().as_bytes())
            .map_err(|_| BackendError::Other("rootfs path contains a NUL byte".into()))?;
        let mut cmd = Command::new(AGENT_IN_ROOTFS);
        cmd.env_clear().env("PATH", "/bin");
        // SAFETY: the closure runs in the forked child before exec and only makes
        // async-signal-safe syscalls (prctl, sched_setaffinity, chroot, chdir, close_range) on
        // data prepared before the fork; it allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                child_common(&set)?;
                // Enter the jail, then make sure the working directory is inside it
                // (RELIABILITY rule 5): chroot alone leaves cwd on the host.
                nix::unistd::chroot(root.as_c_str())?;
                nix::unistd::chdir(c"/")?;
                // No inherited fd may reach into the sandbox (a host directory fd would undo
                // the chroot).
                cloexec_from_3()
            });
        }
        // Exec resolves /bin/isobench-agent after pre_exec, i.e. inside the jail.
        Ok(cmd)
    }
}
