//! The one way sandbox processes are created.
//!
//! `clone(CLONE_VM | CLONE_PIDFD | SIGCHLD [| namespace flags])` on a separate child stack, as
//! posix_spawn does: no copy of the harness's page tables, so the cost of a launch does not
//! depend on how much memory the harness holds (a `fork` through `Command::pre_exec` costs
//! about +5 ms at 256 MiB of harness RSS).
//!
//! Because the child shares the harness's memory until it execs, it runs only
//! async-signal-safe, allocation-free code on data built before clone, and the parent keeps
//! every buffer alive until the close-on-exec error pipe reports the exec (end of file) or a
//! failure (step + errno). The parent blocks every signal in the spawning thread around clone
//! (so no harness handler can run on the child's stack); the child resets every handled signal
//! to its default action and restores the original mask just before `execve`.
//!
//! Unlike `CLONE_VFORK`, the parent runs while the child waits: a `between` hook can act on the
//! child (the container moves a veth into its network namespace) before releasing it through a
//! sync pipe. The child's steps, in order: signals reset, die with the parent, new session,
//! join cgroups, wait for the parent, the setup hook (the container's namespaces and mounts),
//! chroot, CPU affinity, stdio, every other fd close-on-exec, mask restored, execve.
//!
//! Caveat of sharing memory: the child runs on the harness thread's TLS, so its failing
//! syscalls may overwrite that thread's `errno` while the parent waits; the parent reads no
//! `errno` until the child has exec'd or died, except in a `between` hook, whose messages could
//! name a wrong errno in that (failure-only) case.

use std::ffi::{CString, OsString};
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sched::CloneFlags;
use nix::sys::signal::{kill, Signal};
use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;

use super::BackendError;

/// Where one of the child's standard streams comes from.
#[derive(Debug)]
pub enum Stdio {
    /// /dev/null.
    Null,
    /// A new pipe; the parent's end is in [`Process`].
    Pipe,
    /// This fd (e.g. a serial console socket).
    Fd(OwnedFd),
}

/// What to start. Spawning borrows it: an `Stdio::Fd` stays the caller's.
#[derive(Debug)]
pub struct Spec {
    /// Absolute path, no PATH search (inside the chroot / new root when those are set).
    pub program: PathBuf,
    /// argv[1..]; argv[0] is `program`.
    pub args: Vec<OsString>,
    /// The whole environment: nothing is inherited from the harness.
    pub env: Vec<(OsString, OsString)>,
    pub stdin: Stdio,
    pub stdout: Stdio,
    pub stderr: Stdio,
    /// `sched_setaffinity` in the child.
    pub cpus: Option<Vec<usize>>,
    /// PR_SET_PDEATHSIG(SIGKILL), then a check that the harness is still alive (closes the race
    /// with a harness that died before the signal was armed).
    pub die_with_parent: bool,
    /// `setsid` in the child.
    pub new_session: bool,
    /// `chroot` + `chdir("/")` before exec (the chroot tier).
    pub chroot: Option<PathBuf>,
    /// Files the child writes "0" to before exec (`cgroup.procs` / `tasks`: it joins them).
    pub cgroup_procs: Vec<PathBuf>,
}

impl Spec {
    /// A spec for `program` with nothing set: stdio to /dev/null, empty environment.
    pub fn new(program: impl Into<PathBuf>) -> Self {
        Spec {
            program: program.into(),
            args: vec![],
            env: vec![],
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
            cpus: None,
            die_with_parent: true,
            new_session: false,
            chroot: None,
            cgroup_procs: vec![],
        }
    }
}

/// A failure inside a setup hook: (hook-defined step number, errno).
pub type SetupError = (u32, Errno);

/// The container's extensions of [`Spec`] (kept out of the simple path).
pub struct Hooks<'a> {
    /// Namespace flags added to clone.
    pub namespaces: CloneFlags,
    /// Runs in the child after the cgroups are joined and the parent released it, before
    /// chroot/affinity/stdio/exec. Must be async-signal-safe and must not allocate.
    pub setup: Option<&'a (dyn Fn() -> Result<(), SetupError> + Sync)>,
    /// Names a setup step number for the error message.
    pub describe_setup: fn(u32) -> String,
    /// Runs in the parent after clone, while the child waits on the sync pipe (before its
    /// setup hook). On error the child is killed and reaped.
    pub between: Option<&'a mut dyn FnMut(Pid) -> Result<(), BackendError>>,
}

impl Default for Hooks<'_> {
    fn default() -> Self {
        Hooks {
            namespaces: CloneFlags::empty(),
            setup: None,
            describe_setup: |n| format!("setup step {n}"),
            between: None,
        }
    }
}

/// A started process, waited on through its pidfd.
#[derive(Debug)]
pub struct Process {
    pub pid: Pid,
    pub pidfd: OwnedFd,
    pub stdin: Option<OwnedFd>,
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
    reaped: bool,
}

/// Child steps reported through the error pipe (numbers below `SETUP_BASE`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
enum Step {
    Signals = 1,
    Pdeathsig,
    ParentGone,
    Setsid,
    JoinCgroup,
    SyncWait,
    Chroot,
    Chdir,
    Affinity,
    Stdio,
    CloseFds,
    Exec,
}

const STEPS: [Step; 12] = [
    Step::Signals,
    Step::Pdeathsig,
    Step::ParentGone,
    Step::Setsid,
    Step::JoinCgroup,
    Step::SyncWait,
    Step::Chroot,
    Step::Chdir,
    Step::Affinity,
    Step::Stdio,
    Step::CloseFds,
    Step::Exec,
];

/// Setup-hook step numbers are reported as `SETUP_BASE + n`.
const SETUP_BASE: u32 = 1000;

impl Step {
    fn describe(self) -> &'static str {
        match self {
            Step::Signals => "resetting signal handlers",
            Step::Pdeathsig => "prctl(PR_SET_PDEATHSIG)",
            Step::ParentGone => "the harness exited before the child started",
            Step::Setsid => "setsid",
            Step::JoinCgroup => "joining the cgroup",
            Step::SyncWait => "waiting for the harness",
            Step::Chroot => "chroot",
            Step::Chdir => "chdir /",
            Step::Affinity => "sched_setaffinity to the budget's CPUs",
            Step::Stdio => "setting up stdin/stdout/stderr",
            Step::CloseFds => "marking inherited fds close-on-exec",
            Step::Exec => "execve",
        }
    }
}

/// Stack of the cloned child until exec (shallow, non-allocating code), plus a guard page.
const CHILD_STACK: usize = 256 * 1024;

/// The child's stack: an anonymous mapping with a PROT_NONE guard page at its low end, so an
/// overflow faults instead of writing into the harness's memory.
struct ChildStack {
    base: *mut libc::c_void,
    len: usize,
}

impl ChildStack {
    fn new() -> Result<Self, BackendError> {
        let page = 4096;
        let len = CHILD_STACK + page;
        // SAFETY: anonymous private mapping, no file, no fixed address.
        let base = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if base == libc::MAP_FAILED {
            return Err(BackendError::io(
                "mapping the child's stack",
                std::io::Error::last_os_error(),
            ));
        }
        let stack = ChildStack { base, len };
        // SAFETY: the first page of the mapping we just made.
        if unsafe { libc::mprotect(base, page, libc::PROT_NONE) } != 0 {
            return Err(BackendError::io(
                "guarding the child's stack",
                std::io::Error::last_os_error(),
            ));
        }
        Ok(stack)
    }

    /// The initial stack pointer (stacks grow down on every Linux target we build for).
    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of our mapping, aligned to the page (hence to 16).
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for ChildStack {
    fn drop(&mut self) {
        // SAFETY: the mapping made in `new`; dropped only once the child has exec'd or died.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// Everything the child reads, built before clone and alive until it exec'd or died.
struct ChildArgs<'a> {
    program: &'a CString,
    argv: &'a [*const libc::c_char],
    envp: &'a [*const libc::c_char],
    /// (source, target) pairs for 0, 1, 2.
    stdio: [RawFd; 3],
    cpus: Option<&'a nix::sched::CpuSet>,
    /// pidfd of the harness, when the child must die with it.
    parent: Option<RawFd>,
    new_session: bool,
    join: &'a [RawFd],
    sync_r: Option<RawFd>,
    setup: Option<&'a (dyn Fn() -> Result<(), SetupError> + Sync)>,
    chroot: Option<&'a CString>,
    /// The mask to restore before exec.
    mask: &'a libc::sigset_t,
    err_w: RawFd,
}

/// Report (step, errno) to the parent and exit. Async-signal-safe.
fn fail(err_w: RawFd, step: u32, errno: i32) -> ! {
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&step.to_le_bytes());
    msg[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: write(2) of a stack buffer to our error pipe, then _exit: async-signal-safe.
    unsafe {
        libc::write(err_w, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

fn errno() -> i32 {
    Errno::last_raw()
}

/// The cloned child's entry point (C ABI for clone(2)).
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `ChildArgs` the parent keeps alive on its stack until we exec or die.
    let a = unsafe { &*(arg as *const ChildArgs<'_>) };
    child_main(a)
}

/// The child up to exec. No allocation, no locks: async-signal-safe syscalls only.
fn child_main(a: &ChildArgs<'_>) -> ! {
    let e = a.err_w;
    // Every handled signal back to its default action: a harness handler must never run here
    // (the mask, inherited fully blocked from the parent, is restored just before exec).
    for sig in 1..=64 {
        if sig == libc::SIGKILL || sig == libc::SIGSTOP {
            continue;
        }
        // SAFETY: sigaction with a zeroed struct we own; querying then resetting one signal.
        unsafe {
            let mut old: libc::sigaction = std::mem::zeroed();
            if libc::sigaction(sig, std::ptr::null(), &mut old) != 0 {
                continue; // signals the C library reserves
            }
            if old.sa_sigaction != libc::SIG_IGN && old.sa_sigaction != libc::SIG_DFL {
                let mut dfl: libc::sigaction = std::mem::zeroed();
                dfl.sa_sigaction = libc::SIG_DFL;
                if libc::sigaction(sig, &dfl, std::ptr::null_mut()) != 0 {
                    fail(e, Step::Signals as u32, errno());
                }
            }
        }
    }
    if let Some(parent) = a.parent {
        // SAFETY: prctl(PR_SET_PDEATHSIG) takes integer arguments only.
        if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) } != 0 {
            fail(e, Step::Pdeathsig as u32, errno());
        }
        // The harness may have died before the signal was armed: its pidfd says so.
        let mut pfd = libc::pollfd {
            fd: parent,
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: poll(2) on one pollfd on our stack, timeout 0 (never blocks).
        if unsafe { libc::poll(&mut pfd, 1, 0) } != 0 {
            fail(e, Step::ParentGone as u32, 0);
        }
    }
    // SAFETY: setsid takes no arguments.
    if a.new_session && unsafe { libc::setsid() } < 0 {
        fail(e, Step::Setsid as u32, errno());
    }
    // Into the cgroups first: "0" is the writer itself (on v1 `tasks`, a thread moving itself
    // skips the global threadgroup lock; this child has one thread, so the process moves).
    for &fd in a.join {
        // SAFETY: write(2) of a static one-byte buffer to an fd opened by the parent.
        if unsafe { libc::write(fd, b"0".as_ptr().cast(), 1) } != 1 {
            fail(e, Step::JoinCgroup as u32, errno());
        }
    }
    if let Some(sync) = a.sync_r {
        let mut b = [0u8; 1];
        loop {
            // SAFETY: read(2) into a one-byte stack buffer.
            match unsafe { libc::read(sync, b.as_mut_ptr().cast(), 1) } {
                1 => break,
                -1 if errno() == libc::EINTR => continue,
                _ => fail(e, Step::SyncWait as u32, errno()),
            }
        }
    }
    if let Some(setup) = a.setup {
        if let Err((step, err)) = setup() {
            fail(e, SETUP_BASE + step, err as i32);
        }
    }
    if let Some(root) = a.chroot {
        // SAFETY: chroot/chdir on NUL-terminated strings built before clone.
        if unsafe { libc::chroot(root.as_ptr()) } != 0 {
            fail(e, Step::Chroot as u32, errno());
        }
    }
    if a.chroot.is_some() || a.setup.is_some() {
        // The working directory inside the new root (RELIABILITY rule 5).
        // SAFETY: chdir on a static NUL-terminated string.
        if unsafe { libc::chdir(c"/".as_ptr()) } != 0 {
            fail(e, Step::Chdir as u32, errno());
        }
    }
    if let Some(set) = a.cpus {
        if let Err(err) = nix::sched::sched_setaffinity(Pid::from_raw(0), set) {
            fail(e, Step::Affinity as u32, err as i32);
        }
    }
    // stdio: first copy every source above 2 (a source may itself be 0, 1 or 2), then into
    // place; dup2 clears close-on-exec on the target.
    let mut tmp = [-1; 3];
    for (i, &src) in a.stdio.iter().enumerate() {
        // SAFETY: fcntl(F_DUPFD_CLOEXEC) on an fd the parent opened for us.
        tmp[i] = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 3) };
        if tmp[i] < 0 {
            fail(e, Step::Stdio as u32, errno());
        }
    }
    for (i, &t) in tmp.iter().enumerate() {
        // SAFETY: dup2 onto 0, 1, 2 from fds we own.
        if unsafe { libc::dup2(t, i as libc::c_int) } < 0 {
            fail(e, Step::Stdio as u32, errno());
        }
    }
    // Nothing but 0, 1, 2 survives exec (RELIABILITY rule 5); the error pipe closes at exec.
    if let Err(err) = cloexec_from_3() {
        fail(
            e,
            Step::CloseFds as u32,
            err.raw_os_error().unwrap_or(libc::EIO),
        );
    }
    // SAFETY: restoring the mask saved by the parent (a sigset on its stack, alive).
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, a.mask, std::ptr::null_mut()) };
    // SAFETY: program, argv and envp are NUL-terminated strings / NULL-terminated pointer
    // arrays built before clone and alive in the shared memory until we exec.
    unsafe { libc::execve(a.program.as_ptr(), a.argv.as_ptr(), a.envp.as_ptr()) };
    fail(e, Step::Exec as u32, errno())
}

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

fn cstr(what: &str, b: &[u8]) -> Result<CString, BackendError> {
    CString::new(b).map_err(|_| {
        BackendError::Other(format!(
            "{what} {:?} contains a NUL byte: remove it",
            String::from_utf8_lossy(b)
        ))
    })
}

fn pipe() -> Result<(OwnedFd, OwnedFd), BackendError> {
    nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(|e| BackendError::sys("creating a pipe", e))
}

/// A pidfd for `pid` (close-on-exec; readable once the process has exited).
pub fn pidfd_open(pid: Pid) -> Result<OwnedFd, BackendError> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new fd or -1; no memory is shared.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if fd < 0 {
        return Err(BackendError::io(
            "pidfd_open (needs Linux 5.3 or newer)",
            std::io::Error::last_os_error(),
        ));
    }
    let fd = i32::try_from(fd).map_err(|_| BackendError::Other("pidfd out of range".into()))?;
    // SAFETY: the syscall just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Build a CpuSet for a list of host CPU indices.
pub fn cpuset(cpus: &[usize]) -> Result<nix::sched::CpuSet, BackendError> {
    let mut set = nix::sched::CpuSet::new();
    for &c in cpus {
        set.set(c)
            .map_err(|e| BackendError::sys(format!("cpu {c} in the budget"), e))?;
    }
    Ok(set)
}

/// Start `spec` (no hooks).
pub fn spawn(spec: &Spec) -> Result<Process, BackendError> {
    spawn_with(spec, Hooks::default())
}

/// Start `spec` with the container's hooks. Returns once the child has exec'd (or with the
/// step and errno at which it failed, the child reaped).
pub fn spawn_with(spec: &Spec, mut hooks: Hooks<'_>) -> Result<Process, BackendError> {
    let name = spec.program.display().to_string();
    let ctx = |what: &str| format!("starting {name}: {what}");
    if !spec.program.is_absolute() {
        return Err(BackendError::Other(format!(
            "starting {name}: the program must be an absolute path (there is no PATH search)"
        )));
    }
    // Everything the child needs, before clone.
    let program = cstr("program path", spec.program.as_os_str().as_bytes())?;
    let mut argv_c = vec![program.clone()];
    for a in &spec.args {
        argv_c.push(cstr("argument", a.as_bytes())?);
    }
    let mut env_c = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            return Err(BackendError::Other(format!(
                "{}: environment name {k:?} is empty or contains '='",
                ctx("bad environment")
            )));
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        env_c.push(cstr("environment entry", &kv)?);
    }
    let argv: Vec<*const libc::c_char> = argv_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let envp: Vec<*const libc::c_char> = env_c
        .iter()
        .map(|c| c.as_ptr())
        .chain(std::iter::once(std::ptr::null()))
        .collect();
    let chroot = match &spec.chroot {
        Some(p) => Some(cstr("chroot path", p.as_os_str().as_bytes())?),
        None => None,
    };
    let cpus = match &spec.cpus {
        Some(c) => Some(cpuset(c)?),
        None => None,
    };
    let join_files: Vec<std::fs::File> = spec
        .cgroup_procs
        .iter()
        .map(|f| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(f)
                .map_err(|e| BackendError::io(ctx(&format!("opening {}", f.display())), e))
        })
        .collect::<Result<_, _>>()?;
    let join: Vec<RawFd> = join_files.iter().map(AsRawFd::as_raw_fd).collect();

    // Stdio: the child's ends (kept until after clone) and the parent's ends.
    let mut devnull: Option<OwnedFd> = None;
    let mut child_ends: Vec<OwnedFd> = vec![];
    let mut parent_ends: [Option<OwnedFd>; 3] = [None, None, None];
    let mut stdio = [-1; 3];
    for (i, s) in [&spec.stdin, &spec.stdout, &spec.stderr]
        .into_iter()
        .enumerate()
    {
        stdio[i] = match s {
            Stdio::Null => {
                if devnull.is_none() {
                    let f = std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(|e| BackendError::io(ctx("opening /dev/null"), e))?;
                    devnull = Some(f.into());
                }
                devnull.as_ref().expect("opened above").as_raw_fd()
            }
            Stdio::Pipe => {
                let (r, w) = pipe()?;
                let (mine, theirs) = if i == 0 { (w, r) } else { (r, w) };
                let fd = theirs.as_raw_fd();
                parent_ends[i] = Some(mine);
                child_ends.push(theirs);
                fd
            }
            // The caller keeps it (and closes it when the spec goes).
            Stdio::Fd(fd) => fd.as_raw_fd(),
        };
    }
    let (err_r, err_w) = pipe()?;
    let sync = if hooks.between.is_some() {
        Some(pipe()?)
    } else {
        None
    };
    let parent = if spec.die_with_parent {
        Some(pidfd_open(nix::unistd::getpid())?)
    } else {
        None
    };
    let stack = ChildStack::new()?;

    // Block every signal in this thread; the child inherits the full mask and restores `old`.
    // SAFETY: zeroed sigsets filled by sigfillset / pthread_sigmask.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset on our own set; pthread_sigmask with valid pointers.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let restore = |old: &libc::sigset_t| {
        // SAFETY: restoring the mask saved above.
        unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, old, std::ptr::null_mut()) };
    };
    let args = ChildArgs {
        program: &program,
        argv: &argv,
        envp: &envp,
        stdio,
        cpus: cpus.as_ref(),
        parent: parent.as_ref().map(AsRawFd::as_raw_fd),
        new_session: spec.new_session,
        join: &join,
        sync_r: sync.as_ref().map(|(r, _)| r.as_raw_fd()),
        setup: hooks.setup,
        chroot: chroot.as_ref(),
        mask: &old,
        err_w: err_w.as_raw_fd(),
    };
    let flags = libc::CLONE_VM | libc::CLONE_PIDFD | hooks.namespaces.bits() | libc::SIGCHLD;
    let mut pidfd_raw: libc::c_int = -1;
    // SAFETY: the child runs `child_entry` on `stack` (a guarded mapping of its own) in our
    // memory; it makes only async-signal-safe, non-allocating calls on `args`, which stays alive
    // (as does everything it points to) until the error pipe below reports exec or failure. With
    // CLONE_PIDFD the kernel stores the child's pidfd (close-on-exec) in `pidfd_raw`.
    let pid = unsafe {
        libc::clone(
            child_entry,
            stack.top(),
            flags,
            std::ptr::addr_of!(args) as *mut libc::c_void,
            &mut pidfd_raw as *mut libc::c_int,
        )
    };
    if pid < 0 {
        let e = std::io::Error::last_os_error();
        restore(&old);
        let hint = if hooks.namespaces.is_empty() {
            ""
        } else {
            " (new namespaces need root)"
        };
        return Err(BackendError::io(ctx(&format!("clone{hint}")), e));
    }
    let pid = Pid::from_raw(pid);
    // SAFETY: CLONE_PIDFD stored a new fd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd_raw) };
    let mut process = Process {
        pid,
        pidfd,
        stdin: None,
        stdout: None,
        stderr: None,
        reaped: false,
    };
    // The child holds its own copies; ours must close for end of file to mean "exec'd".
    drop(err_w);
    let sync_w = sync.map(|(r, w)| {
        drop(r);
        w
    });
    drop(child_ends);
    if let (Some(between), Some(w)) = (hooks.between.as_mut(), &sync_w) {
        let res = between(pid).and_then(|()| {
            nix::unistd::write(w, &[1u8])
                .map(drop)
                .map_err(|e| BackendError::sys(ctx("releasing the child"), e))
        });
        if let Err(e) = res {
            // The child is blocked on the sync pipe: kill it before anything it reads goes.
            process.kill_and_reap();
            restore(&old);
            return Err(e);
        }
    }
    drop(sync_w);
    // Wait for exec (end of file) or a failure report. Signals are blocked: no EINTR.
    let mut msg = [0u8; 8];
    let mut got = 0;
    while got < msg.len() {
        match nix::unistd::read(err_r.as_raw_fd(), &mut msg[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(Errno::EINTR) => continue,
            Err(_) => break,
        }
    }
    restore(&old);
    // The child has exec'd or died: from here on it touches none of our memory. (`args` is
    // used here so that it provably lives until this point.)
    std::hint::black_box(&args);
    drop(stack);
    if got == msg.len() {
        process.kill_and_reap();
        let step = u32::from_le_bytes(msg[..4].try_into().expect("4 bytes"));
        let err = Errno::from_raw(i32::from_le_bytes(msg[4..].try_into().expect("4 bytes")));
        let what = if step >= SETUP_BASE {
            (hooks.describe_setup)(step - SETUP_BASE)
        } else {
            STEPS
                .iter()
                .find(|s| **s as u32 == step)
                .map_or_else(|| format!("step {step}"), |s| s.describe().to_string())
        };
        let fix = match (step == Step::Exec as u32, err) {
            (true, Errno::ENOENT) => ": the program does not exist (check the path)",
            (true, Errno::EACCES) => ": the program is not executable (check its mode)",
            _ => "",
        };
        return Err(BackendError::Other(format!(
            "starting {name}: {what} failed: {err} ({}){fix}",
            err.desc()
        )));
    }
    let [i, o, e] = parent_ends;
    process.stdin = i;
    process.stdout = o;
    process.stderr = e;
    Ok(process)
}

/// How often a blocked wait looks at the cancel flag.
const CANCEL_POLL: Duration = Duration::from_millis(100);

impl Process {
    /// Wait for exit until `deadline`, through the pidfd. Returns the instant the pidfd fired
    /// and the exit code (128 + signal for a signal death). On the deadline or cancel: kill,
    /// reap, then `Timeout` / `Interrupted`.
    pub fn wait(
        &mut self,
        deadline: Instant,
        cancel: &AtomicBool,
    ) -> Result<(Instant, i32), BackendError> {
        if self.reaped {
            return Err(BackendError::Other(
                "internal error: waiting for a process already reaped; report this bug".into(),
            ));
        }
        loop {
            let now = Instant::now();
            if cancel.load(Ordering::Relaxed) {
                self.kill_and_reap();
                return Err(BackendError::Interrupted);
            }
            if now >= deadline {
                self.kill_and_reap();
                return Err(BackendError::Timeout(
                    Duration::ZERO,
                    "process did not exit".into(),
                ));
            }
            let wait = (deadline - now).min(CANCEL_POLL);
            let ms = u16::try_from(wait.as_millis()).unwrap_or(u16::MAX).max(1);
            let mut fds = [PollFd::new(self.pidfd.as_fd(), PollFlags::POLLIN)];
            match poll(&mut fds, PollTimeout::from(ms)) {
                Ok(0) | Err(Errno::EINTR) => continue,
                Ok(_) => break,
                Err(e) => return Err(BackendError::sys("poll on pidfd", e)),
            }
        }
        let at = Instant::now();
        let code = loop {
            match waitpid(self.pid, None) {
                Ok(WaitStatus::Exited(_, c)) => break c,
                Ok(WaitStatus::Signaled(_, s, _)) => break 128 + s as i32,
                Ok(_) | Err(Errno::EINTR) => continue,
                Err(e) => return Err(BackendError::sys("waitpid", e)),
            }
        };
        self.reaped = true;
        Ok((at, code))
    }

    /// SIGKILL and reap (bounded: gives up after about 2 s). Idempotent.
    pub fn kill_and_reap(&mut self) {
        if self.reaped {
            return;
        }
        let _ = kill(self.pid, Signal::SIGKILL);
        for _ in 0..200 {
            match waitpid(self.pid, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => std::thread::sleep(Duration::from_millis(10)),
                Err(Errno::EINTR) => continue,
                _ => {
                    self.reaped = true;
                    return;
                }
            }
        }
    }

    /// Whether the process has been waited for.
    pub fn is_reaped(&self) -> bool {
        self.reaped
    }
}

impl Drop for Process {
    /// A process nobody waited for dies with its handle (children die with the harness).
    fn drop(&mut self) {
        self.kill_and_reap();
    }
}

/// `program` resolved against `dirs` when it is not absolute (for host tools; sandbox programs
/// are given absolute).
pub fn resolve(program: &Path, dirs: &[&str]) -> Option<PathBuf> {
    if program.is_absolute() {
        return Some(program.to_path_buf());
    }
    dirs.iter()
        .map(|d| Path::new(d).join(program))
        .find(|p| p.is_file())
}

#[cfg(test)]
mod tests;
