//! Facts about the host as results record them (detected by `host::facts`).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which cgroup hierarchy the host mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum CgroupLayout {
    /// Pure cgroup v2 at /sys/fs/cgroup.
    V2,
    /// v1 controllers only.
    V1,
    /// v1 controllers plus a v2 hierarchy at /sys/fs/cgroup/unified.
    Hybrid,
    /// No cgroup filesystem found.
    None,
}

/// What KVM is on this host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum KvmKind {
    /// /dev/kvm backed by hardware virtualization (vmx or svm): stock guests run.
    Hardware { module: String },
    /// /dev/kvm backed by a paravirtual-only hypervisor (e.g. nested `kvm_pvm`): a stock guest
    /// kernel stops with "KVM internal error / emulation failure".
    ParavirtOnly { module: String },
    /// /dev/kvm exists but cannot be opened.
    Unusable { reason: String },
    /// No /dev/kvm.
    Missing,
}

impl KvmKind {
    pub fn label(&self) -> String {
        match self {
            KvmKind::Hardware { module } => format!("hardware ({module})"),
            KvmKind::ParavirtOnly { module } => format!("paravirtual only ({module})"),
            KvmKind::Unusable { reason } => format!("unusable: {reason}"),
            KvmKind::Missing => "missing".into(),
        }
    }
}

/// Everything isobench needs to know about the host.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HostFacts {
    pub hostname: String,
    pub cpu_model: String,
    pub cores: usize,
    pub memory_bytes: u64,
    pub kernel: String,
    pub os: String,
    /// The host itself runs under a hypervisor (cpuinfo "hypervisor" flag).
    pub virtualized: bool,
    pub is_root: bool,
    pub cgroup_layout: CgroupLayout,
    pub kvm: KvmKind,
    pub overlayfs: bool,
    /// Namespaces this kernel offers (from /proc/self/ns).
    pub namespaces: Vec<String>,
    pub qemu: Option<PathBuf>,
    pub qemu_version: Option<String>,
}
