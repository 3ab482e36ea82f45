//! One container launch: its per-launch resources (planned and recorded before the clock
//! starts), the cloned child up to exec, and the teardown. Shared by measured launches
//! (`run_once`) and idle instances (`start_idle`).
//!
//! Clock: `launch` is taken after the ledger write and before the first per-launch resource is
//! made, so launch -> ready covers the directories, the cgroup, the overlay, the namespaces and
//! the agent's start; the ledger's fsync is harness bookkeeping and stays off the clock.

use std::ffi::{CStr, CString};
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, CpuSet};
use nix::unistd::Pid;

use super::net::LaunchNet;
use super::syscalls::{setup_container, LinuxSyscall, MountPlan, Step};
use super::{Prepared, HOSTNAME};
use crate::backend::bare::{cpuset, IDLE_STOP_DEADLINE};
use crate::backend::child::{pidfd_open, Waiter};
use crate::backend::chroot::cloexec_from_3;
use crate::backend::{BackendError, IdleInstance};
use crate::host::cgroup::CgroupManager;
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs::AGENT_IN_ROOTFS;
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

/// A started container: the child is released and running.
pub struct Started {
    pub launch: Instant,
    pub waiter: Waiter,
    /// The agent's stdout.
    pub out_r: OwnedFd,
    /// The child's setup-failure channel (8 bytes: step, errno).
    pub err_r: OwnedFd,
    /// The agent's stdin (idle instances), closed to stop it.
    pub stdin_w: Option<OwnedFd>,
    /// The direct path's peer, stopped at teardown.
    pub peer: Option<NetPeer>,
}

/// Everything the child uses, prepared before clone (the child must not allocate).
struct ChildArgs<'a> {
    plan: MountPlan<'a>,
    agent: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    cpus: &'a CpuSet,
    /// Open for writing: `tasks` (v1) / `cgroup.procs` (v2) of each hierarchy.
    join: &'a [RawFd],
    /// A pidfd of the parent: readable once it has exited.
    parent: RawFd,
    sync_r: RawFd,
    err_w: RawFd,
    stdin_r: RawFd,
    stdout_w: RawFd,
    devnull: RawFd,
}

/// Tell the parent which step failed (8 bytes: step, errno) and exit.
fn child_fail(err_w: RawFd, step: Step, errno: Errno) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(step as u32).to_le_bytes());
    msg[4..].copy_from_slice(&(errno as i32).to_le_bytes());
    // SAFETY: write(2) of a stack buffer to an fd we own, then _exit: both async-signal-safe.
    unsafe {
        libc::write(err_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The cloned child. Runs on its own stack in a copy of the parent's memory; no allocation.
fn child_main(a: &ChildArgs<'_>) -> isize {
    // Die with the harness. If it already died, the sync read below sees end of file.
    // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
        child_fail(a.err_w, Step::Pdeathsig, Errno::last());
    }
    // The parent may have died before PDEATHSIG was armed: its pidfd says so.
    let mut pfd = libc::pollfd {
        fd: a.parent,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll(2) on one pollfd on our stack, timeout 0 (never blocks).
    if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
        // SAFETY: _exit is async-signal-safe.
        unsafe { libc::_exit(126) }
    }
    // Into the launch cgroup before anything else: "0" is the writer itself. On v1 the file is
    // `tasks`, and a thread moving itself skips the global threadgroup lock (and its RCU grace
    // period) that a parent's cgroup.procs write takes; this child has one thread, so the whole
    // process moves.
    for &fd in a.join {
        // SAFETY: write(2) of a static one-byte buffer to an fd opened by the parent.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            child_fail(a.err_w, Step::JoinCgroup, Errno::last());
        }
    }
    // Wait until the parent is done with us (one byte; EOF = parent gone). Without a network
    // device to move in, the parent wrote it before clone and this read does not block.
    let mut b = [0u8; 1];
    loop {
        // SAFETY: read(2) into a one-byte stack buffer.
        match unsafe { libc::read(a.sync_r, b.as_mut_ptr().cast(), 1) } {
            1 => break,
            -1 if Errno::last() == Errno::EINTR => continue,
            // SAFETY: _exit is async-signal-safe.
            _ => unsafe { libc::_exit(126) },
        }
    }
    if let Err((step, e)) = setup_container(&LinuxSyscall, &a.plan) {
        child_fail(a.err_w, step, e);
    }
    if let Err(e) = nix::sched::sched_setaffinity(Pid::from_raw(0), a.cpus) {
        child_fail(a.err_w, Step::Affinity, e);
    }
    // stdin: /dev/null of the host or the idle instance's pipe (opened before clone); stdout:
    // the pipe; stderr: /dev/null.
    for (from, to) in [(a.stdin_r, 0), (a.stdout_w, 1), (a.devnull, 2)] {
        // SAFETY: dup2 on fds we own; the new fd does not inherit close-on-exec.
        if unsafe { libc::dup2(from, to) } < 0 {
            child_fail(a.err_w, Step::Stdio, Errno::last());
        }
    }
    // Nothing but 0, 1, 2 may survive exec (RELIABILITY rule 5).
    if let Err(e) = cloexec_from_3() {
        child_fail(
            a.err_w,
            Step::CloseFds,
            Errno::from_raw(e.raw_os_error().unwrap_or(0)),
        );
    }
    // SAFETY: agent, argv and envp are NUL-terminated strings / NULL-terminated pointer arrays
    // built before clone and alive in this copy of the parent's memory.
    unsafe { libc::execve(a.agent.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr()) };
    child_fail(a.err_w, Step::Exec, Errno::last())
}

fn cstring(p: &Path) -> Result<CString, BackendError> {
    CString::new(p.as_os_str().as_bytes()).map_err(|_| {
        BackendError::Other(format!(
            "{} contains a NUL byte: use another state directory",
            p.display()
        ))
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), BackendError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| BackendError::sys("creating a pipe", e))
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
        Workload::Net(p) => {
            p.peer = peer
                .ok_or_else(|| BackendError::Other("the launch has no net peer".into()))?
                .to_string();
        }
        _ => {}
    }
    Ok(t)
}

/// Create the launch's resources, clone the child into fresh namespaces, configure its network
/// and release it. On error the caller tears `plan` down (it is idempotent).
pub(crate) fn start(
    p: &Prepared,
    plan: &LaunchPlan,
    task: &Task,
    stack: &mut [u8],
    idle: bool,
    after_start: impl FnOnce(Pid),
) -> Result<Started, BackendError> {
    // The clock starts before the first per-launch resource (the ledger is already written).
    let launch = Instant::now();
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
    let join_files: Vec<std::fs::File> = plan
        .cg
        .self_join_files()
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map_err(|e| BackendError::io(format!("opening {}", f.display()), e))
        })
        .collect::<Result<_, _>>()?;
    let join: Vec<RawFd> = join_files.iter().map(AsRawFd::as_raw_fd).collect();

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
    let peer_addr = peer.as_ref().map(NetPeer::local_addr).or(plan.nat_peer);
    let task = task_for_launch(task, peer_addr)?;

    // Everything the child needs, before clone.
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
    let agent = CString::new(AGENT_IN_ROOTFS).expect("no NUL");
    let task_json = serde_json::to_string(&task).expect("task serialises");
    let env_task = CString::new(format!("{TASK_ENV}={task_json}"))
        .map_err(|_| BackendError::Other("the task contains a NUL byte".into()))?;
    let env_path = CString::new("PATH=/bin").expect("no NUL");
    let argv = [agent.as_ptr(), std::ptr::null()];
    let envp = [env_task.as_ptr(), env_path.as_ptr(), std::ptr::null()];
    let cpus = cpuset(&p.budget.cpus)?;
    let devnull = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map_err(|e| BackendError::io("opening /dev/null", e))?;
    let stdin = if idle { Some(pipe()?) } else { None };
    let (out_r, out_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let parent = pidfd_open(nix::unistd::getpid())?;
    let mut sync_w = Some(sync_w);
    if plan.net.is_none() {
        // Nothing to do between clone and the child's setup: release it in advance (saves a
        // wake-up round trip on every launch).
        release_child(sync_w.take())?;
    }
    let args = ChildArgs {
        plan: MountPlan {
            merged: &merged_c,
            overlay_options: &overlay,
            hostname: &hostname,
            cgroup: p.cgroup_mount,
            volume: volume_c.as_ref().map(|(s, t)| (s.as_c_str(), t.as_c_str())),
        },
        agent: &agent,
        argv: &argv,
        envp: &envp,
        cpus: &cpus,
        join: &join,
        parent: parent.as_raw_fd(),
        sync_r: sync_r.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        stdin_r: stdin
            .as_ref()
            .map_or(devnull.as_raw_fd(), |(r, _)| r.as_raw_fd()),
        stdout_w: out_w.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
    };
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;

    // SAFETY: without CLONE_VM the child runs `child_main` in a copy of our memory on `stack`;
    // `child_main` makes only async-signal-safe syscalls on data prepared above (no allocation,
    // no locks), and it either execs or _exits, never returning into Rust code of the parent.
    let pid = unsafe {
        nix::sched::clone(
            Box::new(|| child_main(&args)),
            stack,
            flags,
            Some(libc::SIGCHLD),
        )
    }
    .map_err(|e| BackendError::sys("clone with new namespaces (are you root?)", e))?;
    drop((out_w, sync_r, err_w, join_files));
    let stdin_w = stdin.map(|(r, w)| {
        drop(r);
        w
    });

    let waiter = match Waiter::new(pid) {
        Ok(w) => w,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
    };
    if let Some(net) = &plan.net {
        if let Err(e) = net.configure_container_side(pid) {
            waiter.kill_and_reap();
            return Err(e);
        }
    }
    if let Err(e) = release_child(sync_w.take()) {
        waiter.kill_and_reap();
        return Err(e);
    }
    drop(parent);
    after_start(pid);
    Ok(Started {
        launch,
        waiter,
        out_r,
        err_r,
        stdin_w,
        peer,
    })
}

/// Write the one byte that lets the child go on (no-op once written).
fn release_child(sync_w: Option<OwnedFd>) -> Result<(), BackendError> {
    match sync_w {
        Some(w) => nix::unistd::write(&w, &[1u8])
            .map(drop)
            .map_err(|e| BackendError::sys("releasing the container child", e)),
        None => Ok(()),
    }
}

/// The child's setup failure message, if it wrote one before exiting.
pub fn read_setup_error(err_r: &OwnedFd) -> Option<(Step, Errno)> {
    let mut msg = [0u8; 8];
    let n = loop {
        match nix::unistd::read(err_r.as_raw_fd(), &mut msg) {
            Err(Errno::EINTR) => continue,
            r => break r.ok()?,
        }
    };
    if n != 8 {
        return None;
    }
    let step = u32::from_le_bytes(msg[..4].try_into().ok()?);
    let errno = i32::from_le_bytes(msg[4..].try_into().ok()?);
    Some((Step::from_u32(step)?, Errno::from_raw(errno)))
}

/// The error for a child that failed during setup.
pub fn setup_error(step: Step, errno: Errno) -> BackendError {
    BackendError::Other(format!(
        "container setup failed at {step}: {errno} ({}); check `isobench doctor` and the kernel log",
        errno.desc()
    ))
}

/// An idle container: its agent waits for end of file on stdin.
pub struct IdleContainer {
    pub plan: LaunchPlan,
    pub state: Arc<RunState>,
    pub started: Started,
}

impl IdleInstance for IdleContainer {
    fn host_pids(&self) -> Vec<Pid> {
        vec![self.started.waiter.pid()]
    }

    fn cgroup_memory_bytes(&self) -> Option<u64> {
        self.plan.cg.memory_current_bytes()
    }

    fn stop(self: Box<Self>) -> Result<(), BackendError> {
        let IdleContainer {
            plan,
            state,
            started,
        } = *self;
        let Started {
            waiter,
            out_r,
            err_r,
            stdin_w,
            peer,
            ..
        } = started;
        drop(stdin_w);
        // A stuck agent is killed at the deadline (and the cgroup is killed below anyway).
        let waited = waiter.wait(Instant::now() + IDLE_STOP_DEADLINE, &AtomicBool::new(false));
        drop((out_r, err_r, peer));
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
