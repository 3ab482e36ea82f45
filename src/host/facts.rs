//! Facts about the host, read once: what it is (for results.json) and what it can do (for
//! doctor and the backends' availability checks).

use std::path::{Path, PathBuf};

use crate::host::proc::meminfo_kib;
use crate::model::facts::{CgroupLayout, HostFacts, KvmKind};

impl HostFacts {
    /// Read the facts from the running system.
    pub fn detect() -> Self {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let flags: Vec<&str> = cpuinfo
            .lines()
            .find(|l| l.starts_with("flags"))
            .and_then(|l| l.split(':').nth(1))
            .map(|f| f.split_whitespace().collect())
            .unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find(|l| l.starts_with("model name"))
            .and_then(|l| l.split(':').nth(1))
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let uts = nix::sys::utsname::uname().ok();
        let kernel = uts
            .as_ref()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default();
        let hostname = uts
            .as_ref()
            .map(|u| u.nodename().to_string_lossy().into_owned())
            .unwrap_or_default();
        let qemu = which("qemu-system-x86_64");
        let qemu_version = qemu.as_deref().and_then(qemu_version);
        HostFacts {
            hostname,
            cpu_model,
            cores: std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1),
            memory_bytes: meminfo_kib("MemTotal").unwrap_or(0) * 1024,
            kernel,
            os: os_release(),
            virtualized: flags.contains(&"hypervisor"),
            is_root: nix::unistd::geteuid().is_root(),
            cgroup_layout: detect_cgroup_layout(),
            kvm: kvm_kind(&flags, Path::new("/sys/module"), Path::new("/dev/kvm")),
            overlayfs: std::fs::read_to_string("/proc/filesystems")
                .map(|s| s.contains("overlay"))
                .unwrap_or(false)
                || Path::new("/sys/module/overlay").exists(),
            namespaces: std::fs::read_dir("/proc/self/ns")
                .map(|d| {
                    let mut v: Vec<String> = d
                        .filter_map(|e| e.ok())
                        .map(|e| e.file_name().to_string_lossy().into_owned())
                        .collect();
                    v.sort();
                    v
                })
                .unwrap_or_default(),
            qemu,
            qemu_version,
        }
    }
}

fn os_release() -> String {
    std::fs::read_to_string("/etc/os-release")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("PRETTY_NAME=")).map(|l| {
                l.trim_start_matches("PRETTY_NAME=")
                    .trim_matches('"')
                    .to_string()
            })
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Find an executable on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
                .unwrap_or(false)
        })
}

fn qemu_version(qemu: &Path) -> Option<String> {
    let out = std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()?;
    let s = String::from_utf8_lossy(&out.stdout);
    s.lines()
        .next()
        .map(|l| l.trim_start_matches("QEMU emulator version ").to_string())
}

/// The cgroup layout from /proc/self/mountinfo (what is really mounted, co-mounted controllers
/// included); from the files under /sys/fs/cgroup when mountinfo shows nothing.
fn detect_cgroup_layout() -> CgroupLayout {
    match crate::host::cgroup::Hierarchies::detect().layout() {
        CgroupLayout::None => cgroup_layout(Path::new(crate::host::cgroup::CGROUP_ROOT)),
        l => l,
    }
}

/// Decide the cgroup layout from the files under `root` (normally /sys/fs/cgroup): the
/// fallback when /proc/self/mountinfo cannot be read.
pub fn cgroup_layout(root: &Path) -> CgroupLayout {
    if root.join("cgroup.controllers").exists() {
        return CgroupLayout::V2;
    }
    let v1 = ["memory", "cpu", "cpuacct", "pids"]
        .iter()
        .any(|c| root.join(c).join("tasks").exists());
    let unified = root.join("unified").join("cgroup.controllers").exists();
    match (v1, unified) {
        (true, true) => CgroupLayout::Hybrid,
        (true, false) => CgroupLayout::V1,
        (false, true) => CgroupLayout::Hybrid,
        (false, false) => CgroupLayout::None,
    }
}

/// Tell hardware KVM from a paravirtual-only one. `flags` are the CPU flags from /proc/cpuinfo,
/// `modules` is /sys/module, `dev` is /dev/kvm.
pub fn kvm_kind(flags: &[&str], modules: &Path, dev: &Path) -> KvmKind {
    if !dev.exists() {
        return KvmKind::Missing;
    }
    if let Err(e) = std::fs::OpenOptions::new().read(true).write(true).open(dev) {
        return KvmKind::Unusable {
            reason: format!(
                "cannot open {}: {e} (run as root or add the user to group kvm)",
                dev.display()
            ),
        };
    }
    let loaded = |m: &str| modules.join(m).exists();
    let hw_flag = flags.iter().any(|f| *f == "vmx" || *f == "svm");
    for pv in ["kvm_pvm"] {
        if loaded(pv) && !hw_flag {
            return KvmKind::ParavirtOnly { module: pv.into() };
        }
    }
    if hw_flag {
        let module = ["kvm_intel", "kvm_amd"]
            .into_iter()
            .find(|m| loaded(m))
            .unwrap_or("kvm");
        return KvmKind::Hardware {
            module: module.into(),
        };
    }
    // /dev/kvm without vmx/svm and without a module we know: treat it as not hardware.
    let module = if loaded("kvm") {
        "kvm (no vmx/svm flag)"
    } else {
        "unknown"
    };
    KvmKind::ParavirtOnly {
        module: module.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kvm_detection_tells_hardware_from_pvm() {
        let d = tempfile::tempdir().unwrap();
        let modules = d.path().join("module");
        std::fs::create_dir_all(modules.join("kvm")).unwrap();
        let dev = d.path().join("kvm");
        assert_eq!(kvm_kind(&["sse"], &modules, &dev), KvmKind::Missing);
        std::fs::write(&dev, b"").unwrap();
        std::fs::create_dir_all(modules.join("kvm_pvm")).unwrap();
        assert_eq!(
            kvm_kind(&["sse", "hypervisor"], &modules, &dev),
            KvmKind::ParavirtOnly {
                module: "kvm_pvm".into()
            }
        );
        std::fs::create_dir_all(modules.join("kvm_intel")).unwrap();
        assert_eq!(
            kvm_kind(&["vmx"], &modules, &dev),
            KvmKind::Hardware {
                module: "kvm_intel".into()
            }
        );
    }

    #[test]
    fn cgroup_layouts() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(cgroup_layout(d.path()), CgroupLayout::None);
        std::fs::create_dir_all(d.path().join("memory")).unwrap();
        std::fs::write(d.path().join("memory/tasks"), b"").unwrap();
        assert_eq!(cgroup_layout(d.path()), CgroupLayout::V1);
        std::fs::create_dir_all(d.path().join("unified")).unwrap();
        std::fs::write(d.path().join("unified/cgroup.controllers"), b"").unwrap();
        assert_eq!(cgroup_layout(d.path()), CgroupLayout::Hybrid);
        std::fs::write(d.path().join("cgroup.controllers"), b"cpu memory").unwrap();
        assert_eq!(cgroup_layout(d.path()), CgroupLayout::V2);
    }
}
