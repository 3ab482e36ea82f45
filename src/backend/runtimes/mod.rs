//! The runtimes people use, as tiers: runc, crun, Docker, LXC, gVisor; and the alternate VMMs
//! of the microVM tier (Firecracker, Cloud Hypervisor). Each runs the same agent from the same
//! rootfs isobench builds ([`crate::rootfs::build`]), with the same budget, and is measured the
//! same way: launch = just before the runtime's CLI is spawned, ready = the agent's READY line
//! read from the CLI's stdout, exit = the CLI process exits, teardown = exit until the
//! container, its bundle and the runtime's state for it are gone.
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

use std::fs::File;
use std::os::fd::AsFd;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use nix::unistd::Pid;

use super::bare::{child_common, cpuset, PROCESS_DEADLINE};
use super::child::{into_report, read_agent, Waiter};
use crate::backend::{Availability, Backend, BackendError, BackendOptions, Outcome, Timings};
use crate::host::{which, HostFacts, KvmKind};
use crate::protocol::{Task, TASK_ENV};
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

/// Spawn a runtime CLI (stdout piped, stderr to `stderr_log`), read the agent's lines from it,
/// wait for the CLI to exit, then run the timed `teardown`. The same measurement as the process
/// tiers' `measure_command`, keeping the runtime's stderr so a failure says why.
/// The CLI dies with the harness and runs on the budget's CPUs.
pub fn measure_cli(
    mut cmd: Command,
    task: &Task,
    cpus: &[usize],
    cancel: &AtomicBool,
    stderr_log: &Path,
    teardown: impl FnOnce() -> Result<(), BackendError>,
) -> Result<Outcome, BackendError> {
    let set = cpuset(cpus)?;
    let log = File::create(stderr_log)
        .map_err(|e| BackendError::io(format!("creating {}", stderr_log.display()), e))?;
    cmd.env(
        TASK_ENV,
        serde_json::to_string(task).expect("task serialises"),
    )
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::from(log));
    // SAFETY: the closure only calls prctl and sched_setaffinity (async-signal-safe).
    unsafe {
        cmd.pre_exec(move || child_common(&set));
    }
    let launch = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let _ = teardown();
            return Err(BackendError::io("starting the runtime CLI", e));
        }
    };
    let stdout = child.stdout.take().expect("stdout was piped");
    let pid = Pid::from_raw(i32::try_from(child.id()).expect("pid fits i32"));
    let waiter = match Waiter::new(pid) {
        Ok(w) => w,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            let _ = teardown();
            return Err(e);
        }
    };
    let deadline = launch + PROCESS_DEADLINE;
    let stream = match read_agent(stdout.as_fd(), deadline, cancel) {
        Ok(s) => s,
        Err(e) => {
            waiter.kill_and_reap();
            let _ = teardown();
            return Err(e);
        }
    };
    let (exited, code) = match waiter.wait(deadline, cancel) {
        Ok(x) => x,
        Err(e) => {
            let _ = teardown();
            return Err(e);
        }
    };
    drop(stdout);
    teardown()?;
    let released = Instant::now();
    let report = into_report(&stream, code).map_err(|e| {
        BackendError::Agent(format!(
            "{e}; runtime stderr: {}",
            log_tail(stderr_log, 600)
        ))
    })?;
    let ready = stream.ready_at.ok_or_else(|| {
        BackendError::Agent(format!(
            "the agent never signalled ready; runtime stderr: {}",
            log_tail(stderr_log, 600)
        ))
    })?;
    Ok(Outcome {
        timings: Timings {
            launch_to_ready: ready - launch,
            launch_to_exit: exited - launch,
            teardown: released - exited,
            launch_to_released: released - launch,
        },
        report,
        exit_code: Some(code),
    })
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
