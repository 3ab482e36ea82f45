//! The tiers of the virtualization spectrum, named exactly as users type them.

use std::fmt;
use std::str::FromStr;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

/// One isolation tier. Order is the spectrum order, lightest first. The names users type, the
/// lists in `--help` and in error messages, and the descriptions all come from this enum
/// (clap's `ValueEnum`: kebab-case names, `help` per value); what a tier can do and how it is
/// built is its row in `backend::registry`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
#[value(rename_all = "kebab-case")]
pub enum Tier {
    /// The agent as a plain child process.
    #[value(help = "plain child process")]
    Bare,
    /// The agent chrooted into a hand-prepared minimal rootfs.
    #[value(help = "chroot into a hand-prepared rootfs")]
    Chroot,
    /// Linux namespaces + cgroup + overlay rootfs, built by isobench through `nix`.
    #[value(help = "namespaces + cgroup + overlay rootfs (pivot_root)")]
    Container,
    /// An OCI bundle of the same rootfs, run by `runc run`.
    #[value(help = "OCI bundle run by runc")]
    Runc,
    /// The same OCI bundle run by `crun`.
    #[value(help = "OCI bundle run by crun")]
    Crun,
    /// The Docker Engine, with an image imported from the same rootfs.
    #[value(help = "Docker Engine, image imported from the rootfs")]
    Docker,
    /// An LXC container from the same rootfs.
    #[value(help = "LXC container from the rootfs")]
    Lxc,
    /// gVisor (`runsc`): a user-space kernel between containers and VMs.
    #[value(help = "gVisor runsc: user-space kernel")]
    Gvisor,
    /// A KVM microVM (QEMU `-M microvm -accel kvm`).
    #[value(help = "QEMU microvm with hardware KVM")]
    Microvm,
    /// The microVM through Firecracker instead of QEMU (not driven yet: reported, never run).
    #[value(help = "Firecracker microVM (KVM); not driven yet")]
    Firecracker,
    /// The microVM through Cloud Hypervisor instead of QEMU (not driven yet: reported, never run).
    #[value(help = "Cloud Hypervisor microVM (KVM); not driven yet")]
    CloudHypervisor,
    /// The same guest under QEMU's TCG software emulation (no hardware assistance).
    #[value(help = "QEMU microvm under TCG software emulation")]
    Emulated,
    /// A scripted fake for unit tests of the runner (`backend/fake.rs`): test builds only.
    #[cfg(test)]
    #[value(hide = true, help = "test-only scripted fake tier")]
    Fake,
}

impl Tier {
    /// Every tier, in spectrum order (the enum's order).
    pub fn all() -> &'static [Tier] {
        Tier::value_variants()
    }

    /// The name users type (`cloud-hypervisor`); the same as clap's and serde's (tested).
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
            #[cfg(test)]
            Tier::Fake => "fake",
        }
    }

    /// One line on what the tier is (its `--help` text).
    pub fn describe(self) -> String {
        self.to_possible_value()
            .and_then(|v| v.get_help().map(ToString::to_string))
            .unwrap_or_default()
    }

    /// Every tier name, comma-separated (for help and error messages).
    pub fn names() -> String {
        Tier::all()
            .iter()
            .map(|t| t.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// True for tiers whose agent runs under a guest kernel.
    pub fn is_vm(self) -> bool {
        match self {
            Tier::Microvm | Tier::Firecracker | Tier::CloudHypervisor | Tier::Emulated => true,
            Tier::Bare
            | Tier::Chroot
            | Tier::Container
            | Tier::Runc
            | Tier::Crun
            | Tier::Docker
            | Tier::Lxc
            | Tier::Gvisor => false,
            #[cfg(test)]
            Tier::Fake => false,
        }
    }

    /// The tier's colour in charts (colour-blind-safe palette).
    pub fn rgb(self) -> (u8, u8, u8) {
        match self {
            Tier::Bare => (0x55, 0x55, 0x55),
            Tier::Chroot => (0xE6, 0x9F, 0x00),
            Tier::Container => (0x00, 0x72, 0xB2),
            Tier::Microvm => (0x00, 0x9E, 0x73),
            Tier::Emulated => (0xD5, 0x5E, 0x00),
            Tier::Runc => (0x56, 0xB4, 0xE9),
            Tier::Crun => (0x33, 0x22, 0x88),
            Tier::Docker => (0xCC, 0x79, 0xA7),
            Tier::Lxc => (0x99, 0x99, 0x33),
            Tier::Gvisor => (0x88, 0x22, 0x55),
            Tier::Firecracker => (0x44, 0xAA, 0x99),
            Tier::CloudHypervisor => (0x11, 0x77, 0x33),
            #[cfg(test)]
            Tier::Fake => (0x00, 0x00, 0x00),
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
#[error("unknown tier '{0}': use one of {names}", names = Tier::names())]
pub struct UnknownTier(pub String);

impl FromStr for Tier {
    type Err = UnknownTier;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        <Tier as ValueEnum>::from_str(s, false).map_err(|_| UnknownTier(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_roundtrip() {
        for &t in Tier::all() {
            assert_eq!(t.as_str().parse::<Tier>().unwrap(), t);
            assert_eq!(t.to_possible_value().unwrap().get_name(), t.as_str());
            assert!(!t.describe().is_empty(), "{t} has no help line");
            // serde and clap spell every tier the same way.
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert_eq!(Tier::CloudHypervisor.as_str(), "cloud-hypervisor");
    }

    #[test]
    fn list_rejects_unknown() {
        assert_eq!(
            Tier::parse_list("bare, container,bare").unwrap(),
            vec![Tier::Bare, Tier::Container]
        );
        let e = Tier::parse_list("bare,vmware").unwrap_err().to_string();
        assert!(e.contains("'vmware'"), "{e}");
        for &t in Tier::all() {
            assert!(e.contains(t.as_str()), "{e} does not list {t}");
        }
        assert_eq!(
            Tier::parse_list("cloud-hypervisor").unwrap(),
            vec![Tier::CloudHypervisor]
        );
    }
}
