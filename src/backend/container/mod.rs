//! `container`: Linux namespaces + a cgroup + an overlay rootfs, built by isobench through `nix`
//! (no runc).
//!
//! Per launch: a cgroup with the budget's memory limit and CPU quota (v2, or v1 on v1/hybrid
//! hosts), fresh overlay upper/work/merged directories under the run's scratch area (lower = the
//! run's read-only rootfs), then `clone(NEWNS|NEWPID|NEWUTS|NEWIPC|NEWNET)`. The child, PID 1 of
//! its pid namespace, waits until the parent has put it into the cgroup, then runs
//! [`syscalls::setup_container`] (cgroup ns, rprivate /, hostname, overlay, pivot_root, /proc,
//! /dev, /tmp, cgroupfs, lo up), pins itself to the budget's CPUs, sets up stdio, marks every other
//! fd close-on-exec and execs the agent.
//!
//! Timings: launch = just before clone; ready = the READY line read; exit = the pidfd fired;
//! teardown = exit until the cgroup and the per-launch directories are gone.
//!
//! Not protected against: a root agent is root on the host (no user namespace, no seccomp, no
//! capability drop, /proc not masked); the network namespace has only `lo`.

pub mod netlo;
pub mod syscalls;

use std::collections::BTreeMap;
use std::ffi::{CStr, CString};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sched::{CloneFlags, CpuSet};
use nix::unistd::Pid;

use super::bare::{cpuset, PROCESS_DEADLINE};
use super::child::{into_report, read_agent, StreamResult, Waiter};
use super::chroot::cloexec_from_3;
use super::{Availability, Backend, BackendError, Budget, Outcome, RunEnv, Timings};
use crate::cgroup::{self, CgroupManager};
use crate::cleanup::safe_remove_tree;
use crate::host::{CgroupLayout, HostFacts};
use crate::protocol::{Task, TASK_ENV};
use crate::rootfs::{self, AGENT_IN_ROOTFS};
use crate::state::{Resource, RunState};
use crate::tier::Tier;
use syscalls::{setup_container, CgroupMount, LinuxSyscall, MountPlan, Step};

/// Namespaces the container needs (names as in /proc/self/ns).
pub const NAMESPACES: &[&str] = &["mnt", "pid", "uts", "ipc", "net", "cgroup"];
/// Hostname inside the container.
pub const HOSTNAME: &str = "isobench";
/// Stack for the cloned child until it execs.
const CHILD_STACK: usize = 256 * 1024;

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

/// What one launch produced before the agent's report is interpreted (the signal tests need the
/// exit code even when the agent was stopped before reporting).
#[derive(Debug)]
pub struct RawOutcome {
    pub stream: StreamResult,
    pub exit_code: i32,
    /// None when the READY line never came.
    pub launch_to_ready: Option<std::time::Duration>,
    pub launch_to_exit: std::time::Duration,
    pub teardown: std::time::Duration,
    /// Peak memory of the launch's cgroup, bytes, when the kernel reports it.
    pub memory_peak_bytes: Option<u64>,
}

struct Prepared {
    state: Arc<RunState>,
    layout: CgroupLayout,
    budget: Budget,
    cancel: Arc<AtomicBool>,
    /// scratch/container: the rootfs and every launch's directories.
    base: PathBuf,
    lower: PathBuf,
    /// `isobench-<run id>`, relative to the cgroup root(s).
    cgroup_rel: PathBuf,
    parent: CgroupManager,
    cgroup_mount: CgroupMount,
}

#[derive(Default)]
pub struct Container {
    prepared: Option<Prepared>,
    launches: u64,
    stack: Vec<u8>,
}

/// Everything the child uses, prepared before clone (the child must not allocate).
struct ChildArgs<'a> {
    plan: MountPlan<'a>,
    agent: &'a CStr,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    cpus: &'a CpuSet,
    sync_r: RawFd,
    err_w: RawFd,
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
    // Wait until the parent has moved us into the cgroup (one byte; EOF = parent gone).
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
    // stdin and stderr: /dev/null of the host (opened before clone); stdout: the pipe.
    for (from, to) in [(a.devnull, 0), (a.stdout_w, 1), (a.devnull, 2)] {
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

impl Container {
    /// Launch once and return the raw stream and exit code. `after_start` runs in the parent
    /// right after the child is released (tests use it to signal the container's PID 1).
    pub fn run_raw(
        &mut self,
        task: &Task,
        after_start: impl FnOnce(Pid),
    ) -> Result<RawOutcome, BackendError> {
        self.launches += 1;
        let n = self.launches;
        if self.stack.len() != CHILD_STACK {
            self.stack = vec![0u8; CHILD_STACK];
        }
        let p = self.prepared.as_ref().ok_or_else(|| {
            BackendError::Other(
                "container backend used before prepare(): call prepare first".into(),
            )
        })?;
        let dir = p.base.join(format!("launch-{n}"));
        let dir_res = Resource::Dir { path: dir.clone() };
        p.state
            .record(dir_res.clone())
            .map_err(|e| BackendError::io("recording a launch directory in the ledger", e))?;
        let mut cg: Option<CgroupManager> = None;
        let result = launch(p, task, &dir, n, &mut cg, &mut self.stack, after_start);
        // On success `launch` has torn down (timed); on failure tear down here.
        let torn_down = match &result {
            Ok(_) => Ok(()),
            Err(_) => teardown(cg.as_ref(), &dir),
        };
        // Forget the resources only once they are gone; otherwise `isobench cleanup` finds them.
        if result.is_ok() || torn_down.is_ok() {
            if let Some(cg) = &cg {
                for d in cg.dirs() {
                    let _ = p.state.release(&Resource::Cgroup { path: d.into() });
                }
            }
            let _ = p.state.release(&dir_res);
        }
        match (result, torn_down) {
            (Ok(o), _) => Ok(o),
            (Err(e), Ok(())) => Err(e),
            (Err(e), Err(t)) => Err(BackendError::Other(format!(
                "{e}; tearing the launch down also failed: {t} (run `isobench cleanup`)"
            ))),
        }
    }
}

/// Remove the launch's cgroup (kill, wait empty, rmdir) and directories. Idempotent.
fn teardown(cg: Option<&CgroupManager>, dir: &Path) -> Result<(), BackendError> {
    if let Some(cg) = cg {
        cg.kill_all()
            .and_then(|()| cg.remove())
            .map_err(|e| BackendError::Other(format!("removing the launch cgroup: {e}")))?;
    }
    safe_remove_tree(dir).map_err(|e| {
        BackendError::io(
            format!("removing the launch directory {}", dir.display()),
            e,
        )
    })
}

fn launch(
    p: &Prepared,
    task: &Task,
    dir: &Path,
    n: u64,
    cg_slot: &mut Option<CgroupManager>,
    stack: &mut [u8],
    after_start: impl FnOnce(Pid),
) -> Result<RawOutcome, BackendError> {
    let (upper, work, merged) = (dir.join("upper"), dir.join("work"), dir.join("merged"));
    for d in [dir, &upper, &work, &merged] {
        std::fs::create_dir(d)
            .map_err(|e| BackendError::io(format!("creating {}", d.display()), e))?;
    }
    let cg = CgroupManager::create(
        p.layout,
        &p.cgroup_rel.join(format!("launch-{n}")),
        &p.budget,
        &p.state,
    )
    .map_err(|e| BackendError::Other(format!("creating the launch cgroup: {e}")))?;
    let cg = cg_slot.insert(cg);

    // Everything the child needs, before clone.
    let merged_c = cstring(&merged)?;
    let overlay = cstring(Path::new(&format!(
        "lowerdir={},upperdir={},workdir={}",
        p.lower.display(),
        upper.display(),
        work.display()
    )))?;
    let hostname = CString::new(HOSTNAME).expect("no NUL");
    let agent = CString::new(AGENT_IN_ROOTFS).expect("no NUL");
    let task_json = serde_json::to_string(task).expect("task serialises");
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
    let (out_r, out_w) = pipe()?;
    let (sync_r, sync_w) = pipe()?;
    let (err_r, err_w) = pipe()?;
    let args = ChildArgs {
        plan: MountPlan {
            merged: &merged_c,
            overlay_options: &overlay,
            hostname: &hostname,
            cgroup: p.cgroup_mount,
        },
        agent: &agent,
        argv: &argv,
        envp: &envp,
        cpus: &cpus,
        sync_r: sync_r.as_raw_fd(),
        err_w: err_w.as_raw_fd(),
        stdout_w: out_w.as_raw_fd(),
        devnull: devnull.as_raw_fd(),
    };
    let flags = CloneFlags::CLONE_NEWNS
        | CloneFlags::CLONE_NEWPID
        | CloneFlags::CLONE_NEWUTS
        | CloneFlags::CLONE_NEWIPC
        | CloneFlags::CLONE_NEWNET;

    let launch = Instant::now();
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
    drop((out_w, sync_r, err_w));

    let waiter = match Waiter::new(pid) {
        Ok(w) => w,
        Err(e) => {
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(pid, None);
            return Err(e);
        }
    };
    // Into the cgroup before the child does anything, then release it.
    if let Err(e) = cg.add_pid(pid) {
        waiter.kill_and_reap();
        return Err(BackendError::Other(format!(
            "moving the container into its cgroup: {e}"
        )));
    }
    if let Err(e) = nix::unistd::write(&sync_w, &[1u8]) {
        waiter.kill_and_reap();
        return Err(BackendError::sys("releasing the container child", e));
    }
    drop(sync_w);
    after_start(pid);

    let deadline = launch + PROCESS_DEADLINE;
    let stream = match read_agent(out_r.as_fd(), deadline, &p.cancel) {
        Ok(s) => s,
        Err(e) => {
            waiter.kill_and_reap();
            return Err(e);
        }
    };
    let (exited, code) = waiter.wait(deadline, &p.cancel)?;
    drop(out_r);
    if let Some((step, errno)) = read_setup_error(&err_r) {
        return Err(BackendError::Other(format!(
            "container setup failed at {step}: {errno} ({}); check `isobench doctor` and the kernel log",
            errno.desc()
        )));
    }
    let memory_peak_bytes = cg.memory_peak_bytes();
    teardown(Some(cg), dir)?;
    let released = Instant::now();
    Ok(RawOutcome {
        launch_to_ready: stream.ready_at.map(|r| r.saturating_duration_since(launch)),
        stream,
        exit_code: code,
        launch_to_exit: exited - launch,
        teardown: released - exited,
        memory_peak_bytes,
    })
}

/// The child's setup failure message, if it wrote one before exiting.
fn read_setup_error(err_r: &OwnedFd) -> Option<(Step, Errno)> {
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

/// A directory this backend is about to create must not exist: one it did not create is never
/// adopted (and so never removed by its rollback).
pub(crate) fn refuse_existing(p: &Path) -> Result<(), BackendError> {
    if std::fs::symlink_metadata(p).is_ok() {
        return Err(BackendError::Other(format!(
            "{} already exists (left by an earlier run with the same id?): run `isobench cleanup` or use a new run id",
            p.display()
        )));
    }
    Ok(())
}

/// Refuse a rootfs whose /proc, /sys, /dev or /tmp is a symlink (RELIABILITY rule 7).
fn check_rootfs(lower: &Path) -> Result<(), BackendError> {
    for d in ["proc", "sys", "dev", "tmp"] {
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
fn prepare_in(env: &RunEnv, base: &Path) -> Result<Prepared, BackendError> {
    std::fs::create_dir(base)
        .map_err(|e| BackendError::io(format!("creating {}", base.display()), e))?;
    let lower = base.join("rootfs");
    rootfs::build(&env.agent, &lower)
        .map_err(|e| BackendError::Other(format!("building the container rootfs: {e}")))?;
    check_rootfs(&lower)?;
    let v1 = cgroup::v1_present(Path::new(cgroup::CGROUP_ROOT));
    let (cgroup_mount, mount_dir) = match env.host.cgroup_layout {
        CgroupLayout::V2 => (CgroupMount::V2, Some("sys/fs/cgroup")),
        _ if v1.contains(&"memory") => (CgroupMount::V1Memory, Some("sys/fs/cgroup/memory")),
        _ => (CgroupMount::None, None),
    };
    if let Some(d) = mount_dir {
        std::fs::create_dir_all(lower.join(d))
            .map_err(|e| BackendError::io(format!("creating {d} in the rootfs"), e))?;
    }
    let cgroup_rel = PathBuf::from(format!("isobench-{}", env.state.id));
    // Last: on failure it removes what it created itself.
    let parent =
        CgroupManager::create(env.host.cgroup_layout, &cgroup_rel, &env.budget, &env.state)
            .map_err(|e| BackendError::Other(format!("creating the run's cgroup: {e}")))?;
    Ok(Prepared {
        state: env.state.clone(),
        layout: env.host.cgroup_layout,
        budget: env.budget.clone(),
        cancel: env.cancel.clone(),
        base: base.to_path_buf(),
        lower,
        cgroup_rel,
        parent,
        cgroup_mount,
    })
}

impl Backend for Container {
    fn tier(&self) -> Tier {
        Tier::Container
    }

    fn prepare(&mut self, env: &RunEnv) -> Result<(), BackendError> {
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
        let base = env.state.scratch().join("container");
        check_overlay_path(&base)?;
        refuse_existing(&base)?;
        env.state
            .record(Resource::Dir { path: base.clone() })
            .map_err(|e| BackendError::io("recording the container directory in the ledger", e))?;
        match prepare_in(env, &base) {
            Ok(p) => {
                self.prepared = Some(p);
                Ok(())
            }
            Err(e) => {
                // Leave nothing behind; what cannot be removed stays in the ledger.
                if safe_remove_tree(&base).is_ok() {
                    let _ = env.state.release(&Resource::Dir { path: base });
                }
                Err(e)
            }
        }
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let raw = self.run_raw(task, |_| {})?;
        let report = into_report(&raw.stream, raw.exit_code)?;
        let launch_to_ready = raw
            .launch_to_ready
            .ok_or_else(|| BackendError::Agent("the agent never signalled ready".into()))?;
        Ok(Outcome {
            timings: Timings {
                launch_to_ready,
                launch_to_exit: raw.launch_to_exit,
                teardown: raw.teardown,
            },
            report,
            exit_code: Some(raw.exit_code),
        })
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        let Some(p) = &self.prepared else {
            return Ok(());
        };
        // Kill and remove the run's cgroup with any launch cgroup left below it, then the files.
        p.parent
            .kill_all()
            .and_then(|()| p.parent.remove())
            .map_err(|e| BackendError::Other(format!("removing the run's cgroup: {e}")))?;
        safe_remove_tree(&p.base)
            .map_err(|e| BackendError::io(format!("removing {}", p.base.display()), e))?;
        let dirs = p.parent.dirs();
        for r in p.state.resources() {
            let gone = match &r {
                Resource::Cgroup { path } => dirs.iter().any(|d| path.starts_with(d)),
                Resource::Dir { path } => path.starts_with(&p.base),
                _ => false,
            };
            if gone {
                p.state
                    .release(&r)
                    .map_err(|e| BackendError::io("updating the run ledger", e))?;
            }
        }
        self.prepared = None;
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::from([(
            "namespaces".into(),
            "mnt,pid,uts,ipc,net,cgroup".to_string(),
        )]);
        if let Some(p) = &self.prepared {
            s.insert("cgroup".into(), format!("{:?}", p.layout).to_lowercase());
            s.insert("cpus".into(), format!("{:?}", p.budget.cpus));
            s.insert("memory_mib".into(), p.budget.memory_mib.to_string());
            s.insert("rootfs".into(), "overlay over a minimal rootfs".into());
        }
        s
    }
}
