//! `gvisor`: the OCI bundle of [`super::oci`] run by `runsc run`, gVisor's user-space kernel
//! (the Sentry) between the agent and the host kernel.
//!
//! runsc's network: gVisor's own netstack needs a network namespace prepared by someone else
//! (Docker does that); isobench runs `--network=none` (the sandbox has its own loopback only)
//! for every workload but `net`, and `--network=host` (hostinet: socket calls go to the host
//! kernel's stack, peer on 127.0.0.1) for `net`, both of its paths, and for an application
//! server (`redis`: the server on 127.0.0.1, driven from the host). The platform is runsc's
//! default (ptrace in Debian 12's runsc), recorded in the settings.
//!
//! io_uring: Debian 12's runsc (release 20221219) implements io_uring only in part: a program
//! that finds it gets a ring whose waits fail (`mariadbd`: "io_uring_wait_cqe() returned -1",
//! then abort). For an application server the sandbox refuses io_uring's three system calls
//! (an OCI seccomp rule, loaded inside the Sentry with `--oci-seccomp`), as a kernel built
//! without io_uring does, so the server takes its own fallback (mariadbd: libaio, which the
//! Sentry implements). Other workloads do not use io_uring and run without the filter, as
//! before.

use std::ffi::OsString;
use std::path::Path;

use serde_json::{json, Value};

/// io_uring's system calls, refused inside the sandbox of an application server.
pub const IO_URING_SYSCALLS: [&str; 3] = ["io_uring_setup", "io_uring_enter", "io_uring_register"];

/// runsc's global flags (before the subcommand) for one launch: the host's network or none,
/// and the config's seccomp section loaded when it refuses io_uring.
pub fn global_flags(share_host_net: bool, no_io_uring: bool) -> Vec<&'static str> {
    let mut f = vec![if share_host_net {
        "--network=host"
    } else {
        "--network=none"
    }];
    if no_io_uring {
        // Without it runsc ignores config.json's seccomp section.
        f.push("--oci-seccomp");
    }
    f
}

/// The OCI seccomp section that makes io_uring's system calls fail (ENOSYS asked; mariadbd
/// reported EPERM under this runsc: either way its io_uring setup fails and it falls back) and
/// allows everything else.
pub fn seccomp_without_io_uring() -> Value {
    json!({
        "defaultAction": "SCMP_ACT_ALLOW",
        "architectures": ["SCMP_ARCH_X86_64"],
        "syscalls": [{
            "names": IO_URING_SYSCALLS,
            "action": "SCMP_ACT_ERRNO",
            "errnoRet": libc::ENOSYS
        }]
    })
}

/// The `runsc run` arguments for bundle `bundle`, container `id`, state under `root`.
pub fn run_args(
    root: &Path,
    bundle: &Path,
    id: &str,
    share_host_net: bool,
    no_io_uring: bool,
) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--root".into(), root.into()];
    a.extend(
        global_flags(share_host_net, no_io_uring)
            .into_iter()
            .map(OsString::from),
    );
    a.extend(["run".into(), "--bundle".into(), bundle.into(), id.into()]);
    a
}

/// What `settings()` says about runsc.
pub fn settings() -> Vec<(&'static str, &'static str)> {
    vec![
        ("platform", "runsc default (ptrace)"),
        (
            "net_path",
            "net and application servers: --network=host (hostinet, host stack, on \
             127.0.0.1) for both paths; other workloads: --network=none (own loopback)",
        ),
        ("kernel", "gVisor Sentry (user-space kernel)"),
        (
            "io_uring",
            "application servers: refused (ENOSYS, OCI seccomp with --oci-seccomp; this runsc's \
             io_uring is partial); other workloads: no filter",
        ),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flag_follows_the_workload() {
        assert_eq!(global_flags(true, false), vec!["--network=host"]);
        assert_eq!(global_flags(false, false), vec!["--network=none"]);
        assert_eq!(
            global_flags(true, true),
            vec!["--network=host", "--oci-seccomp"]
        );
        let s = seccomp_without_io_uring();
        assert_eq!(s["defaultAction"], "SCMP_ACT_ALLOW");
        assert_eq!(s["syscalls"][0]["names"][0], "io_uring_setup");
        let c = run_args(
            Path::new("/s"),
            Path::new("/b"),
            "isobench-r-1",
            false,
            false,
        );
        let args: Vec<String> = c.iter().map(|a| a.to_string_lossy().into_owned()).collect();
        assert_eq!(
            args,
            [
                "--root",
                "/s",
                "--network=none",
                "run",
                "--bundle",
                "/b",
                "isobench-r-1"
            ]
        );
    }
}
