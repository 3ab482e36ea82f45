//! The tiers of the virtualization spectrum, named exactly as users type them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One isolation tier. Order is the spectrum order, lightest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Tier {
    /// The agent as a plain child process.
    Bare,
    /// The agent chrooted into a hand-prepared minimal rootfs.
    Chroot,
    /// Linux namespaces + cgroup + overlay rootfs, built by isobench through `nix`.
    Container,
    /// An OCI bundle of the same rootfs, run by `runc run`.
    Runc,
    /// The same OCI bundle run by `crun`.
    Crun,
    /// The Docker Engine, with an image imported from the same rootfs.
    Docker,
    /// An LXC container from the same rootfs.
    Lxc,
    /// gVisor (`runsc`): a user-space kernel between containers and VMs.
    Gvisor,
    /// A KVM microVM (QEMU `-M microvm -accel kvm`).
    Microvm,
    /// The microVM through Firecracker instead of QEMU.
    Firecracker,
    /// The microVM through Cloud Hypervisor instead of QEMU.
    CloudHypervisor,
    /// The same guest under QEMU's TCG software emulation (no hardware assistance).
    Emulated,
}

impl Tier {
    /// The tiers isobench builds itself (the rest are runtimes people use).
    pub const BUILT_IN: [Tier; 5] = [
        Tier::Bare,
        Tier::Chroot,
        Tier::Container,
        Tier::Microvm,
        Tier::Emulated,
    ];

    pub const ALL: [Tier; 12] = [
        Tier::Bare,
        Tier::Chroot,
        Tier::Container,
        Tier::Runc,
        Tier::Crun,
        Tier::Docker,
        Tier::Lxc,
        Tier::Gvisor,
        Tier::Microvm,
        Tier::Firecracker,
        Tier::CloudHypervisor,
        Tier::Emulated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Bare => "bare",
            Tier::Chroot => "chroot",
            Tier::Container => "container",
            Tier::Runc => "runc",
            Tier::Crun => "crun",
            Tier::Docker => "docker",
            Tier::Lxc => "lxc",
            Tier::Gvisor => "gvisor",
            Tier::Microvm => "microvm",
            Tier::Firecracker => "firecracker",
            Tier::CloudHypervisor => "cloud-hypervisor",
            Tier::Emulated => "emulated",
        }
    }

    /// True for tiers whose agent runs under a guest kernel.
    pub fn is_vm(self) -> bool {
        matches!(
            self,
            Tier::Microvm | Tier::Firecracker | Tier::CloudHypervisor | Tier::Emulated
        )
    }

    pub fn describe(self) -> &'static str {
        match self {
            Tier::Bare => "plain child process",
            Tier::Chroot => "chroot into a hand-prepared rootfs",
            Tier::Container => "namespaces + cgroup + overlay rootfs (pivot_root)",
            Tier::Runc => "OCI bundle run by runc",
            Tier::Crun => "OCI bundle run by crun",
            Tier::Docker => "Docker Engine, image imported from the rootfs",
            Tier::Lxc => "LXC container from the rootfs",
            Tier::Gvisor => "gVisor runsc: user-space kernel",
            Tier::Microvm => "QEMU microvm with hardware KVM",
            Tier::Firecracker => "Firecracker microVM (KVM)",
            Tier::CloudHypervisor => "Cloud Hypervisor microVM (KVM)",
            Tier::Emulated => "QEMU microvm under TCG software emulation",
        }
    }

    /// Parse a comma-separated list ("bare,container"), rejecting unknown names and duplicates.
    pub fn parse_list(s: &str) -> Result<Vec<Tier>, UnknownTier> {
        let mut out = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let t: Tier = part.parse()?;
            if !out.contains(&t) {
                out.push(t);
            }
        }
        Ok(out)
    }
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown tier '{0}': use one of bare, chroot, container, runc, crun, docker, lxc, gvisor, microvm, firecracker, cloud-hypervisor, emulated")]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Tier::ALL
            .iter()
            .copied()
            .find(|t| t.as_str() == s)
            .ok_or_else(|| UnknownTier(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for t in Tier::ALL {
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), t);
        }
    }

    #[test]
    fn list_rejects_unknown() {
        assert_eq!(
            Tier::parse_list("bare, container,bare").unwrap(),
            vec![Tier::Bare, Tier::Container]
        );
        let e = Tier::parse_list("bare,vmware").unwrap_err();
        assert!(e.to_string().contains("'vmware'"));
        assert_eq!(
            Tier::parse_list("cloud-hypervisor").unwrap(),
            vec![Tier::CloudHypervisor]
        );
    }
}
