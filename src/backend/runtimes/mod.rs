//! The runtimes people use, as tiers: runc, crun, Docker, LXC, gVisor; and the alternate VMMs
//! of the microVM tier (Firecracker, Cloud Hypervisor). Each runs the same agent from the same
//! rootfs isobench builds ([`crate::host::rootfs::build`]), with the same budget, and is measured the
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

use std::path::Path;
use std::process::{Command, Stdio};

use crate::backend::{Backend, BackendError, BackendOptions, RunEnv};
use crate::host::facts::which;
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::facts::KvmKind;
use crate::model::tier::Tier;
use crate::workload::{DataPath, Workload};

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

/// Prepare the backend of a runtime tier. The tiers isobench does not drive (Firecracker,
/// Cloud Hypervisor) have no backend: their preparation fails with the reason.
pub fn prepare(tier: Tier, env: &RunEnv) -> Result<Box<dyn Backend>, BackendError> {
    match tier {
        Tier::Runc | Tier::Crun | Tier::Gvisor | Tier::Lxc => {
            Ok(Box::new(oci::Bundled::prepare(tier, env)?))
        }
        Tier::Docker => Ok(Box::new(docker::Docker::prepare(env)?)),
        _ => {
            let reason = match availability(tier, &env.host, &env.options) {
                Availability::Unavailable { reason, fix } => format!("{reason}: {fix}"),
                Availability::Available { .. } => "not driven by this version of isobench".into(),
            };
            Err(BackendError::Unavailable { tier, reason })
        }
    }
}

/// The data path a workload asks of its tier: `fs`'s and `mysql`'s (its data directory), None
/// for workloads that keep no data.
pub fn data_path(w: &Workload) -> Option<DataPath> {
    match w {
        Workload::Fs(p) => Some(p.path),
        Workload::Mysql(p) => Some(p.data),
        _ => None,
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
