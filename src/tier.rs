//! The tiers of the virtualization spectrum, named exactly as users type them.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// One isolation tier. Order is the spectrum order, lightest first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// The agent as a plain child process.
    Bare,
    /// The agent chrooted into a hand-prepared minimal rootfs.
    Chroot,
    /// Linux namespaces + cgroup + overlay rootfs, built by isobench through `nix`.
    Container,
    /// A KVM microVM (QEMU `-M microvm -accel kvm`).
    Microvm,
    /// The same guest under QEMU's TCG software emulation (no hardware assistance).
    Emulated,
}

impl Tier {
    pub const ALL: [Tier; 5] = [
        Tier::Bare,
        Tier::Chroot,
        Tier::Container,
        Tier::Microvm,
        Tier::Emulated,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Bare => "bare",
            Tier::Chroot => "chroot",
            Tier::Container => "container",
            Tier::Microvm => "microvm",
            Tier::Emulated => "emulated",
        }
    }

    /// True for tiers whose agent runs under a guest kernel.
    pub fn is_vm(self) -> bool {
        matches!(self, Tier::Microvm | Tier::Emulated)
    }

    pub fn describe(self) -> &'static str {
        match self {
            Tier::Bare => "plain child process",
            Tier::Chroot => "chroot into a hand-prepared rootfs",
            Tier::Container => "namespaces + cgroup + overlay rootfs (pivot_root)",
            Tier::Microvm => "QEMU microvm with hardware KVM",
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
#[error("unknown tier '{0}': use one of bare, chroot, container, microvm, emulated")]
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
        let e = Tier::parse_list("bare,docker").unwrap_err();
        assert!(e.to_string().contains("'docker'"));
    }
}
