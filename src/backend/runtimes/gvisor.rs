//! `gvisor`: the OCI bundle of [`super::oci`] run by `runsc run`, gVisor's user-space kernel
//! (the Sentry) between the agent and the host kernel.
//!
//! runsc's network: gVisor's own netstack needs a network namespace prepared by someone else
//! (Docker does that); isobench runs `--network=none` (the sandbox has its own loopback only)
//! for every workload but `net`, and `--network=host` (hostinet: socket calls go to the host
//! kernel's stack, peer on 127.0.0.1) for `net`, both of its paths, and for an application
//! server (`redis`: the server on 127.0.0.1, driven from the host). The platform is runsc's
//! default (ptrace in Debian 12's runsc), recorded in the settings.

use std::ffi::OsString;
use std::path::Path;

/// runsc's global flags (before the subcommand) for one launch.
pub fn global_flags(share_host_net: bool) -> Vec<&'static str> {
    vec![if share_host_net {
        "--network=host"
    } else {
        "--network=none"
    }]
}

/// The `runsc run` arguments for bundle `bundle`, container `id`, state under `root`.
pub fn run_args(root: &Path, bundle: &Path, id: &str, host_net: bool) -> Vec<OsString> {
    let mut a: Vec<OsString> = vec!["--root".into(), root.into()];
    a.extend(global_flags(host_net).into_iter().map(OsString::from));
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
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flag_follows_the_workload() {
        assert_eq!(global_flags(true), vec!["--network=host"]);
        assert_eq!(global_flags(false), vec!["--network=none"]);
        let c = run_args(Path::new("/s"), Path::new("/b"), "isobench-r-1", false);
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
