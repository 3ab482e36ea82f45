//! The CPU and memory budget every tier gets.

use serde::{Deserialize, Serialize};

/// The CPU and memory every tier gets, so that a difference is the tier's cost.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    /// Host CPUs the sandbox may use (bare/chroot are pinned to them; container cpuset/quota;
    /// VMs get this many vCPUs).
    pub cpus: Vec<usize>,
    /// Memory limit (container cgroup limit, VM RAM).
    pub memory_mib: u64,
}
