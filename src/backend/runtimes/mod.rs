//! The runtimes people use, as tiers: runc, crun, Docker, LXC, gVisor; and the alternate VMMs
//! of the microVM tier (Firecracker, Cloud Hypervisor). Each runs the same agent from the same
//! rootfs isobench builds ([`crate::rootfs::build`]), with the same budget, and is measured the
//! same way as every tier: `plan` off the clock (names, ledger records), launch = `start`
//! creates the launch's directory and spawns the runtime's CLI, ready = the agent's READY line
//! read from the CLI's stdout, exit = the CLI process exits, released = teardown is done: the
//! container, its cgroup, the runtime's state for it and the launch's directory are gone
//! (ledger releases are written after that instant, as for every tier). `runc run` deletes its
//! container before the CLI exits and `docker run` does not, so launch -> exit differs in what
//! it holds; launch -> released is the comparable figure.
//!
//! - [`oci`]: an OCI bundle (config.json written by isobench) run by `runc run`, `crun run` or
//!   `runsc run` ([`gvisor`] holds runsc's flags), and LXC through `lxc-execute` ([`lxc`]).
//! - [`docker`]: the Docker Engine, with an image imported from the rootfs.
//!
//! Every container is named `isobench-<run id>-...`, recorded in the run's ledger before it is
//! created and removed by the runtime's own delete on teardown and by `isobench cleanup`.

pub mod docker;
pub mod gvisor;
pub mod lxc;
pub mod oci;

use std::ffi::OsString;
use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use nix::unistd::Pid;

use super::bare::{child_common, cpuset};
use super::child::{into_report, read_agent, Waiter};
use crate::backend::{Availability, Backend, BackendError, BackendOptions, Outcome, Timings};
use crate::host::{which, HostFacts, KvmKind};
use crate::protocol::{Task, TASK_ENV};
use crate::state::{Resource, RunState};
use crate::tier::Tier;

/// The binary each runtime tier drives, and the Debian package that has it.
pub fn binary_of(tier: Tier) -> Option<(&'static str, &'static str)> {
    match tier {
        Tier::Runc => Some(("runc", "runc")),
        Tier::Crun => Some(("crun", "crun")),
        Tier::Docker => Some(("docker", "docker.io")),
        Tier::Lxc => Some(("lxc-execute", "lxc")),
        Tier::Gvisor => Some(("runsc", "runsc")),
        Tier::Firecracker => Some((
            "firecracker",
            "(no Debian package: a release binary from the Firecracker project)",
        )),
        Tier::CloudHypervisor => Some((
            "cloud-hypervisor",
            "(no Debian package: a release binary from the Cloud Hypervisor project)",
        )),
        _ => None,
    }
}

/// Can `tier` run here? The binary must be on PATH and isobench must be root; then each
/// runtime's own check (dockerd answering, crun on this cgroup layout, ...).
pub fn availability(tier: Tier, host: &HostFacts, _opts: &BackendOptions) -> Availability {
    let Some((bin, pkg)) = binary_of(tier) else {
        return Availability::unavailable("not a runtime tier", "use another tier");
    };
    let Some(path) = which(bin) else {
        let fix = if pkg.starts_with('(') {
            format!("put {bin} on PATH {pkg}")
        } else {
            format!("apt-get install {pkg}")
        };
        return Availability::unavailable(format!("{bin} is not installed (not on PATH)"), fix);
    };
    if !host.is_root {
        return Availability::unavailable(
            format!("{bin} needs root here (isobench drives rootful containers only)"),
            "run isobench as root (sudo)",
        );
    }
    match tier {
        Tier::Runc | Tier::Crun | Tier::Gvisor | Tier::Lxc => oci::availability(tier, &path, host),
        Tier::Docker => docker::availability(&path),
        Tier::Firecracker | Tier::CloudHypervisor => {
            if !matches!(host.kvm, KvmKind::Hardware { .. }) {
                return Availability::unavailable(
                    format!(
                        "{bin} needs hardware KVM; this host's KVM is {}",
                        host.kvm.label()
                    ),
                    "run on a host with hardware virtualization (vmx/svm)",
                );
            }
            Availability::unavailable(
                format!(
                    "{} found, but isobench does not drive {tier} yet (it needs its own guest \
                     kernel config and API socket driver)",
                    path.display()
                ),
                "use the microvm tier (QEMU microvm + KVM) for the microVM point of the spectrum",
            )
        }
        _ => Availability::unavailable("not a runtime tier", "use another tier"),
    }
}

/// A tier isobench cannot drive: every call says why.
pub struct NotDriven(pub Tier);

impl Backend for NotDriven {
    fn tier(&self) -> Tier {
        self.0
    }
    fn prepare(&mut self, env: &crate::backend::RunEnv) -> Result<(), BackendError> {
        let reason = match availability(self.0, &env.host, &env.options) {
            Availability::Unavailable { reason, fix } => format!("{reason}: {fix}"),
            Availability::Available { .. } => "not driven by this version of isobench".into(),
        };
        Err(BackendError::Unavailable {
            tier: self.0,
            reason,
        })
    }
    fn run_once(&mut self, _task: &Task) -> Result<Outcome, BackendError> {
        Err(BackendError::Unavailable {
            tier: self.0,
            reason: "not driven by this version of isobench".into(),
        })
    }
    fn finish(&mut self) -> Result<(), BackendError> {
        Ok(())
    }
}

/// Make the backend of a runtime tier.
pub fn make(tier: Tier) -> Box<dyn Backend> {
    match tier {
        Tier::Runc | Tier::Crun | Tier::Gvisor | Tier::Lxc => Box::new(oci::Bundled::new(tier)),
        Tier::Docker => Box::new(docker::Docker::default()),
        _ => Box::new(NotDriven(tier)),
    }
}

/// Refuse a run id that cannot be part of a container name (`isobench-<run id>-...`).
pub fn check_run_id(id: &str) -> Result<(), BackendError> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(BackendError::Other(format!(
            "run id {id:?} may only hold letters, digits, '-', '_' and '.' (it names containers)"
        )));
    }
    Ok(())
}

/// The first line of `bin args...` (stdout, else stderr), for versions().
pub fn version_line(bin: &Path, args: &[&str]) -> Option<String> {
    let out = Command::new(bin)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let s = if out.stdout.is_empty() {
        out.stderr
    } else {
        out.stdout
    };
    String::from_utf8_lossy(&s)
        .lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .map(str::to_string)
}

/// Run a helper command to completion; an error carries its stderr and `fix`.
pub fn run_checked(cmd: &mut Command, what: &str, fix: &str) -> Result<String, BackendError> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackendError::io(format!("running {what} ({fix})"), e))?;
    if !out.status.success() {
        return Err(BackendError::Other(format!(
            "{what} failed ({}): {}; {fix}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The last `n` characters of a runtime's stderr log, for error messages.
pub fn log_tail(log: &Path, n: usize) -> String {
    let s = std::fs::read_to_string(log).unwrap_or_default();
    let s = s.trim();
    let start = s.char_indices().rev().nth(n).map(|(i, _)| i).unwrap_or(0);
    if s.is_empty() {
        "<empty>".into()
    } else {
        s[start..].replace('\n', " | ")
    }
}

/// A process a launch starts (runtime CLI or VMM), described off the clock. Transitional: the
/// fields of the core's process spec, so the switch to it is a change of one call.
pub struct CliSpec {
    pub program: PathBuf,
    pub args: Vec<OsString>,
    /// The whole environment of the process.
    pub env: Vec<(OsString, OsString)>,
    /// The budget's CPUs (sched_setaffinity in the child).
    pub cpus: Vec<usize>,
    /// Own session (a terminal's Ctrl-C reaches the harness only, which tears down).
    pub new_session: bool,
    /// Pipe stdin (idle instances end when it closes) instead of /dev/null.
    pub stdin_pipe: bool,
}

impl CliSpec {
    /// `program args...` with the harness's environment, on `cpus`.
    pub fn new(program: &Path, args: Vec<OsString>, cpus: &[usize]) -> Self {
        CliSpec {
            program: program.to_path_buf(),
            args,
            env: std::env::vars_os().filter(|(k, _)| k != TASK_ENV).collect(),
            cpus: cpus.to_vec(),
            new_session: false,
            stdin_pipe: false,
        }
    }

    /// The task in the environment (`ISOBENCH_TASK`), as the runtimes pass it on.
    pub fn with_task(mut self, task: &Task) -> Self {
        self.env.push((
            TASK_ENV.into(),
            serde_json::to_string(task).expect("task serialises").into(),
        ));
        self
    }

    /// One more environment variable.
    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.env.push((key.into(), value.into()));
        self
    }
}

/// A started process: waited on through a pidfd, its stdout is where the agent's lines arrive.
pub struct Started {
    pub waiter: Waiter,
    pub stream: OwnedFd,
    pub stdin: Option<OwnedFd>,
}

/// Start `spec` with stderr to `stderr` (a file in the launch's directory). The process dies
/// with the harness and runs on the budget's CPUs.
pub fn spawn_cli(spec: &CliSpec, stderr: File) -> Result<Started, BackendError> {
    let set = cpuset(&spec.cpus)?;
    let mut cmd = Command::new(&spec.program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(if spec.stdin_pipe {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr));
    let session = spec.new_session;
    // SAFETY: the closure only calls setsid, prctl and sched_setaffinity (async-signal-safe)
    // and allocates nothing.
    unsafe {
        cmd.pre_exec(move || {
            if session {
                nix::unistd::setsid().map_err(std::io::Error::from)?;
            }
            child_common(&set)
        });
    }
    let mut child = cmd
        .spawn()
        .map_err(|e| BackendError::io(format!("starting {}", spec.program.display()), e))?;
    let stdout = child.stdout.take().expect("stdout was piped");
    let stdin = child.stdin.take();
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let waiter = match Waiter::new(pid) {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
    };
    Ok(Started {
        waiter,
        stream: stdout.into(),
        stdin: stdin.map(Into::into),
    })
}

/// One launch of a runtime or VM tier, split so that the timer owns the clock: `plan` off the
/// clock (names, ledger records), `start` on it (per-launch resources and the process),
/// `teardown` on it after exit (every per-launch resource released). Transitional: the shape
/// of the core's launch trait, which replaces it and [`measure`].
pub trait Launch {
    type Plan;
    fn plan(&mut self, task: &Task) -> Result<Self::Plan, BackendError>;
    /// On error, what was made stays named by the plan and `teardown` removes it.
    fn start(&mut self, plan: &mut Self::Plan) -> Result<Started, BackendError>;
    /// Returns the ledger entries to release: written after the released instant, so that no
    /// ledger fsync is on the clock.
    fn teardown(&mut self, plan: Self::Plan) -> Result<Vec<Resource>, BackendError>;
}

/// Plan, start, read the agent's lines, wait for exit, tear down (timed), then release the
/// ledger entries. One error path: whatever fails after `plan`, the process is killed and
/// reaped, teardown runs and its entries are released once it succeeded.
pub fn measure<L: Launch + ?Sized>(
    l: &mut L,
    task: &Task,
    within: Duration,
    cancel: &AtomicBool,
    state: &RunState,
) -> Result<Outcome, BackendError> {
    let mut plan = l.plan(task)?;
    let launch = Instant::now();
    let deadline = launch + within;
    let started = match l.start(&mut plan) {
        Ok(s) => s,
        Err(e) => return Err(end_failed(e, l.teardown(plan), state)),
    };
    let read = read_agent(started.stream.as_fd(), deadline, cancel);
    let waited = match &read {
        Ok(_) => started.waiter.wait(deadline, cancel),
        Err(_) => {
            started.waiter.kill_and_reap();
            Err(BackendError::Other("not waited".into()))
        }
    };
    drop(started);
    let torn = l.teardown(plan);
    let released = Instant::now();
    let (stream, (exited, code)) = match (read, waited) {
        (Ok(s), Ok(w)) => (s, w),
        (Err(e), _) | (Ok(_), Err(e)) => return Err(end_failed(e, torn, state)),
    };
    let gone = torn.map_err(|t| {
        BackendError::Other(format!(
            "tearing the launch down failed: {t} (run `isobench cleanup`)"
        ))
    })?;
    state
        .release_all(&gone)
        .map_err(|e| BackendError::io("updating the run ledger", e))?;
    let report = into_report(&stream, code)?;
    let ready = stream
        .ready_at
        .ok_or_else(|| BackendError::Agent("the agent never signalled ready".into()))?;
    Ok(Outcome {
        timings: Timings {
            launch_to_ready: ready - launch,
            launch_to_exit: exited - launch,
            teardown: released - exited,
        },
        report,
        exit_code: Some(code),
    })
}

fn end_failed(
    e: BackendError,
    torn: Result<Vec<Resource>, BackendError>,
    state: &RunState,
) -> BackendError {
    match torn {
        Ok(gone) => {
            let _ = state.release_all(&gone);
            e
        }
        Err(t) => BackendError::Other(format!(
            "{e}; tearing the launch down also failed: {t} (run `isobench cleanup`)"
        )),
    }
}

/// The last `n` characters of a launch's stderr file, read only if it holds anything (kept
/// by teardown for the error message, before the launch's directory goes).
pub fn stderr_tail(log: &Path, n: usize) -> String {
    match std::fs::metadata(log) {
        Ok(m) if m.len() > 0 => log_tail(log, n),
        _ => String::new(),
    }
}

/// Append a runtime's stderr to an error.
pub fn with_stderr(e: BackendError, what: &str, tail: &str) -> BackendError {
    if tail.is_empty() {
        return e;
    }
    match e {
        BackendError::Agent(m) => BackendError::Agent(format!("{m}; {what} stderr: {tail}")),
        BackendError::Timeout(d, m) => {
            BackendError::Timeout(d, format!("{m}; {what} stderr: {tail}"))
        }
        BackendError::Other(m) => BackendError::Other(format!("{m}; {what} stderr: {tail}")),
        e => e,
    }
}

/// A 64-bit FNV-1a digest, as hex: the content key of the cached Docker image (not a security
/// hash; it only tells one rootfs from another).
pub fn fnv1a_hex(chunks: &[&[u8]]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for c in chunks {
        for &b in *c {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // Separate chunks so ("ab","c") and ("a","bc") differ.
        h ^= 0xff;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_ids_are_checked() {
        assert!(check_run_id("20250101-abc_1.x").is_ok());
        assert!(check_run_id("").is_err());
        assert!(check_run_id("a/b").is_err());
        assert!(check_run_id("a b").is_err());
    }

    #[test]
    fn digest_separates_chunks() {
        assert_ne!(fnv1a_hex(&[b"ab", b"c"]), fnv1a_hex(&[b"a", b"bc"]));
        assert_eq!(fnv1a_hex(&[b"x"]).len(), 16);
        assert_eq!(fnv1a_hex(&[b"x"]), fnv1a_hex(&[b"x"]));
    }

    #[test]
    fn not_installed_names_the_package() {
        let host = HostFacts::detect();
        if which("firecracker").is_none() {
            match availability(Tier::Firecracker, &host, &BackendOptions::default()) {
                Availability::Unavailable { reason, fix } => {
                    assert!(reason.contains("not installed"), "{reason}");
                    assert!(fix.contains("PATH"), "{fix}");
                }
                a => panic!("firecracker without a binary must be unavailable: {a:?}"),
            }
        }
    }
}
