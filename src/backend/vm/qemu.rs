//! The VMM seam and its QEMU implementation: how a launch becomes a command line.
//!
//! Only QEMU is driven today. Firecracker and Cloud Hypervisor are named so that a scenario
//! asking for them (`--set vmm=firecracker`) gets a precise "not installed" / "not supported"
//! answer, and so that adding one means implementing [`Vmm`] and nothing else.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::host::facts::which;

/// Which accelerator runs the guest's instructions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    /// Hardware virtualization through /dev/kvm.
    Kvm,
    /// QEMU's Tiny Code Generator: software emulation, no hardware assistance.
    Tcg,
}

impl Accel {
    pub fn as_str(self) -> &'static str {
        match self {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Accel::Kvm => "KVM (hardware virtualization)",
            Accel::Tcg => "TCG (software emulation, no hardware assistance)",
        }
    }
}

/// The VMMs isobench knows by name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmKind {
    Qemu,
    Firecracker,
    CloudHypervisor,
}

impl VmmKind {
    /// From the `vmm` setting (default qemu).
    pub fn parse(s: Option<&str>) -> Result<Self, String> {
        match s.unwrap_or("qemu") {
            "qemu" => Ok(VmmKind::Qemu),
            "firecracker" => Ok(VmmKind::Firecracker),
            "cloud-hypervisor" | "cloud_hypervisor" | "ch" => Ok(VmmKind::CloudHypervisor),
            other => Err(format!(
                "unknown vmm '{other}': use qemu, firecracker or cloud-hypervisor"
            )),
        }
    }
    pub fn binary(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu-system-x86_64",
            VmmKind::Firecracker => "firecracker",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
    pub fn name(self) -> &'static str {
        match self {
            VmmKind::Qemu => "qemu",
            VmmKind::Firecracker => "firecracker",
            VmmKind::CloudHypervisor => "cloud-hypervisor",
        }
    }
    /// Whether isobench can drive it (only QEMU so far).
    pub fn implemented(self) -> bool {
        self == VmmKind::Qemu
    }
    /// Where its binary is, if on PATH.
    pub fn find(self) -> Option<PathBuf> {
        which(self.binary())
    }
}

/// Everything one launch needs, independent of the VMM.
#[derive(Debug, Clone, PartialEq)]
pub struct LaunchSpec {
    pub accel: Accel,
    /// `-kernel`: PVH vmlinux or bzImage.
    pub kernel: PathBuf,
    pub initrd: PathBuf,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: usize,
    /// A raw disk image attached as virtio-blk (`/dev/vda` in the guest).
    pub disk: Option<Drive>,
    /// A tap device (already created, owned by isobench) attached as virtio-net.
    pub tap: Option<String>,
}

/// How the host side of the virtio-blk disk is opened.
#[derive(Debug, Clone, PartialEq)]
pub struct Drive {
    pub path: PathBuf,
    /// QEMU `cache=`: `none` (O_DIRECT on the host: no host page cache) where the host
    /// filesystem allows it.
    pub cache: &'static str,
    /// QEMU `aio=`: `io_uring` where the kernel and QEMU have it, else `threads`.
    pub aio: &'static str,
}

/// Escape a value for QEMU's `key=value,...` option syntax (a comma is doubled).
pub fn opt_escape(s: &str) -> String {
    s.replace(',', ",,")
}

/// A VMM that can boot a [`LaunchSpec`] with the guest console on its stdout.
pub trait Vmm {
    fn kind(&self) -> VmmKind;
    fn binary(&self) -> &Path;
    /// Machine description recorded in results ("microvm,...").
    fn machine(&self) -> &str;
    /// The command for one launch (stdio is set by the caller).
    fn command(&self, spec: &LaunchSpec) -> Command;
}

/// QEMU's microvm machine: no firmware option ROMs, the legacy 16550 serial as console. PIT,
/// PIC and RTC stay on: under TCG the kernel finds no clock reference without the PIT
/// ("Unable to calibrate against PIT", then hangs), and with `rtc=off` the rtc_cmos probe costs
/// 1.5 s. ACPI stays on so the virtio-mmio devices are described to the guest.
pub const MICROVM: &str = "microvm,x-option-roms=off,isa-serial=on";

/// QEMU (`qemu-system-x86_64`).
#[derive(Debug, Clone)]
pub struct Qemu {
    pub binary: PathBuf,
}

impl Qemu {
    /// The arguments for a launch (pure, so the exact command line is unit-tested).
    pub fn args(spec: &LaunchSpec) -> Vec<String> {
        let mut a: Vec<String> = vec!["-M".into(), MICROVM.into()];
        match spec.accel {
            Accel::Kvm => a.extend(["-accel", "kvm", "-cpu", "host"].map(String::from)),
            // "max": every CPU feature TCG can emulate, the closest to -cpu host it has.
            Accel::Tcg => a.extend(["-accel", "tcg", "-cpu", "max"].map(String::from)),
        }
        a.extend(
            [
                "-nodefaults",
                "-no-user-config",
                "-nographic",
                "-no-reboot",
                "-serial",
                "stdio",
            ]
            .map(String::from),
        );
        a.extend([
            "-m".into(),
            spec.memory_mib.to_string(),
            "-smp".into(),
            spec.vcpus.to_string(),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-initrd".into(),
            spec.initrd.display().to_string(),
            "-append".into(),
            spec.cmdline.clone(),
        ]);
        // microvm has no PCI: virtio devices sit on virtio-mmio transports ("-device" suffix),
        // described to the guest by ACPI.
        if let Some(d) = &spec.disk {
            a.extend([
                "-drive".into(),
                format!(
                    "file={},format=raw,if=none,id=d0,cache={},aio={}",
                    opt_escape(&d.path.display().to_string()),
                    d.cache,
                    d.aio
                ),
                "-device".into(),
                "virtio-blk-device,drive=d0".into(),
            ]);
        }
        if let Some(t) = &spec.tap {
            // No vhost: the data path is QEMU's own userspace virtio-net backend, the same with
            // and without /dev/vhost-net (which this kind of host often lacks).
            a.extend([
                "-netdev".into(),
                format!("tap,id=n0,ifname={},script=no,downscript=no", opt_escape(t)),
                "-device".into(),
                "virtio-net-device,netdev=n0".into(),
            ]);
        }
        a
    }

    /// `qemu-system-x86_64 --version`, first line without the banner ("7.2.22 (Debian ...)").
    pub fn version(binary: &Path) -> Option<String> {
        let out = Command::new(binary).arg("--version").output().ok()?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .next()
            .map(|l| l.trim_start_matches("QEMU emulator version ").to_string())
    }
}

impl Vmm for Qemu {
    fn kind(&self) -> VmmKind {
        VmmKind::Qemu
    }
    fn binary(&self) -> &Path {
        &self.binary
    }
    fn machine(&self) -> &str {
        MICROVM
    }
    fn command(&self, spec: &LaunchSpec) -> Command {
        let mut c = Command::new(&self.binary);
        c.args(Self::args(spec));
        c
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(accel: Accel) -> LaunchSpec {
        LaunchSpec {
            accel,
            kernel: "/c/vmlinux".into(),
            initrd: "/s/i.cpio".into(),
            cmdline: "console=ttyS0 quiet".into(),
            memory_mib: 256,
            vcpus: 1,
            disk: None,
            tap: None,
        }
    }

    #[test]
    fn disk_and_tap_devices() {
        let mut s = spec(Accel::Tcg);
        s.disk = Some(Drive {
            path: "/s/a,b/disk.ext4".into(),
            cache: "none",
            aio: "io_uring",
        });
        s.tap = Some("isbe0123abcd".into());
        let a = Qemu::args(&s).join(" ");
        assert!(
            a.ends_with(
                "-drive file=/s/a,,b/disk.ext4,format=raw,if=none,id=d0,cache=none,aio=io_uring \
                 -device virtio-blk-device,drive=d0 \
                 -netdev tap,id=n0,ifname=isbe0123abcd,script=no,downscript=no \
                 -device virtio-net-device,netdev=n0"
            ),
            "{a}"
        );
        assert!(!a.contains("vhost"), "{a}");
    }

    #[test]
    fn command_lines() {
        let kvm = Qemu::args(&spec(Accel::Kvm)).join(" ");
        assert_eq!(
            kvm,
            "-M microvm,x-option-roms=off,isa-serial=on -accel kvm -cpu host -nodefaults \
             -no-user-config -nographic -no-reboot -serial stdio -m 256 -smp 1 \
             -kernel /c/vmlinux -initrd /s/i.cpio -append console=ttyS0 quiet"
        );
        let tcg = Qemu::args(&spec(Accel::Tcg));
        let tcg = tcg.join(" ");
        assert!(tcg.contains("-accel tcg -cpu max"), "{tcg}");
        assert!(!tcg.contains("kvm"), "TCG is never labelled KVM: {tcg}");
    }

    #[test]
    fn vmm_names() {
        assert_eq!(VmmKind::parse(None).unwrap(), VmmKind::Qemu);
        assert_eq!(
            VmmKind::parse(Some("firecracker")).unwrap(),
            VmmKind::Firecracker
        );
        assert!(VmmKind::parse(Some("xen")).unwrap_err().contains("qemu"));
        assert!(VmmKind::Qemu.implemented() && !VmmKind::CloudHypervisor.implemented());
    }
}
