//! The guest kernel cache: Debian's stock kernel, fetched the way a user would by hand.
//!
//! `fetch` runs, in a scratch directory under the cache: `apt-get download linux-image-amd64`,
//! reads that meta package's dependency to find the real `linux-image-<version>` package,
//! `apt-get download`s it, `dpkg-deb -x`es it and keeps in `<cache>/kernels/<version>/` only:
//!
//! - `vmlinuz` (the bzImage) and `config`;
//! - `vmlinux`: the uncompressed ELF (when the kernel has `CONFIG_PVH=y` and `xz` is installed),
//!   which QEMU's microvm boots through its PVH entry point without decompressing: under TCG
//!   the in-guest xz decompression of the bzImage alone costs several seconds;
//! - `modules/<name>.ko`: the modules the guest needs (virtio-mmio, virtio-blk, virtio-net,
//!   ext4) with their dependencies, read from each module's `.modinfo` `depends=` field (the
//!   package ships no `modules.dep`: depmod writes it at install time), in load order;
//! - `manifest.json` describing the above.
//!
//! `<cache>/kernels/current` names the version `locate` picks.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde::{Deserialize, Serialize};

use crate::host::fs::write_atomic;

/// Modules the guest loads (their dependencies are added). crc32c_generic is ext4's soft
/// dependency ("crypto-crc32c"): without modprobe in the guest it must be loaded explicitly.
pub const WANTED_MODULES: &[&str] = &[
    "virtio_mmio",
    "virtio_blk",
    "virtio_net",
    "crc32c_generic",
    "ext4",
];

/// The command that fills the cache, quoted in every "not cached" message.
pub const FETCH_COMMAND: &str = "isobench fetch-kernel";

#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    #[error("no guest kernel cached in {}: run `{FETCH_COMMAND}` (downloads Debian's linux-image-amd64 with apt-get), or pass --kernel PATH", .0.display())]
    NotCached(PathBuf),
    #[error("the cached guest kernel in {} is incomplete ({why}): run `{FETCH_COMMAND}` again", .dir.display())]
    Corrupt { dir: PathBuf, why: String },
    #[error("--kernel {}: no such file (give the path of a bzImage or a PVH vmlinux)", .0.display())]
    OverrideMissing(PathBuf),
    #[error("`{cmd}` failed: {detail} (check that apt sources are configured and the network is up; `apt-get update` may help)")]
    Command { cmd: String, detail: String },
    #[error("{what}: {detail}")]
    Package { what: String, detail: String },
    #[error("{what} {}: {source}", .path.display())]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> KernelError {
    let path = path.to_path_buf();
    move |source| KernelError::Io { what, path, source }
}

/// What is written to `manifest.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Kernel release, e.g. "6.1.0-56-amd64" (what `uname -r` prints in the guest).
    pub version: String,
    /// The Debian package and its version, e.g. "linux-image-6.1.0-56-amd64" "6.1.192-2".
    pub package: String,
    pub package_version: String,
    /// Module names in load order (files are `modules/<name>.ko`).
    pub modules: Vec<String>,
    /// Whether `vmlinux` (PVH-bootable ELF) was extracted.
    pub vmlinux: bool,
}

/// A module file, by name, in load order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModuleFile {
    pub name: String,
    pub path: PathBuf,
}

/// A guest kernel ready to boot.
#[derive(Debug, Clone, PartialEq)]
pub struct GuestKernel {
    /// Kernel release ("6.1.0-56-amd64"), or "unknown" for an override whose version cannot be read.
    pub version: String,
    /// The bzImage (the `--kernel` file for an override).
    pub vmlinuz: PathBuf,
    /// What QEMU is given with `-kernel`: the PVH vmlinux when cached, else the bzImage.
    pub image: PathBuf,
    /// Modules to put in the initramfs and load, in order.
    pub modules: Vec<ModuleFile>,
    /// Said in results and doctor output (e.g. why there are no modules).
    pub note: Option<String>,
    /// The cache directory it came from (None for an override without cached modules).
    pub dir: Option<PathBuf>,
}

impl GuestKernel {
    /// "vmlinux (PVH)" or "bzImage": how the kernel is booted.
    pub fn image_kind(&self) -> &'static str {
        if self.image != self.vmlinuz {
            "vmlinux (PVH entry)"
        } else {
            "bzImage"
        }
    }
}

/// Where kernels live in the cache.
pub fn kernels_dir(cache_dir: &Path) -> PathBuf {
    cache_dir.join("kernels")
}

/// Find the guest kernel: the `--kernel` override, or the cached one.
pub fn locate(cache_dir: &Path, kernel: Option<&Path>) -> Result<GuestKernel, KernelError> {
    match kernel {
        None => {
            let current = kernels_dir(cache_dir).join("current");
            let version = std::fs::read_to_string(&current)
                .map_err(|_| KernelError::NotCached(cache_dir.to_path_buf()))?;
            load_cached(&kernels_dir(cache_dir).join(version.trim()))
        }
        Some(path) => {
            if !path.is_file() {
                return Err(KernelError::OverrideMissing(path.to_path_buf()));
            }
            let version = image_version(path).unwrap_or_else(|| "unknown".into());
            let dir = kernels_dir(cache_dir).join(&version);
            let cached = if version != "unknown" && dir.join("manifest.json").is_file() {
                load_cached(&dir).ok()
            } else {
                None
            };
            Ok(match cached {
                Some(k) => GuestKernel {
                    vmlinuz: path.to_path_buf(),
                    image: path.to_path_buf(),
                    note: Some(format!("--kernel with the cached modules of {version}")),
                    ..k
                },
                None => GuestKernel {
                    version: version.clone(),
                    vmlinuz: path.to_path_buf(),
                    image: path.to_path_buf(),
                    modules: vec![],
                    note: Some(format!(
                        "no cached modules for kernel {version}: the guest loads none, so virtio-mmio, \
                         virtio-blk, virtio-net and ext4 must be built into {}",
                        path.display()
                    )),
                    dir: None,
                },
            })
        }
    }
}

fn load_cached(dir: &Path) -> Result<GuestKernel, KernelError> {
    let corrupt = |why: String| KernelError::Corrupt {
        dir: dir.to_path_buf(),
        why,
    };
    let m: Manifest = std::fs::read(dir.join("manifest.json"))
        .map_err(|e| corrupt(format!("manifest.json: {e}")))
        .and_then(|b| {
            serde_json::from_slice(&b).map_err(|e| corrupt(format!("manifest.json: {e}")))
        })?;
    let vmlinuz = dir.join("vmlinuz");
    if !vmlinuz.is_file() {
        return Err(corrupt("vmlinuz is missing".into()));
    }
    let image = if m.vmlinux && dir.join("vmlinux").is_file() {
        dir.join("vmlinux")
    } else {
        vmlinuz.clone()
    };
    let mut modules = vec![];
    for name in &m.modules {
        let path = dir.join("modules").join(format!("{name}.ko"));
        if !path.is_file() {
            return Err(corrupt(format!("module {name} is missing")));
        }
        modules.push(ModuleFile {
            name: name.clone(),
            path,
        });
    }
    Ok(GuestKernel {
        version: m.version,
        vmlinuz,
        image,
        modules,
        note: None,
        dir: Some(dir.to_path_buf()),
    })
}

/// Kernel release of a bzImage (from its setup header) or of an uncompressed vmlinux (from its
/// "Linux version" banner).
pub fn image_version(path: &Path) -> Option<String> {
    let bytes = std::fs::read(path).ok()?;
    bzimage_version(&bytes).or_else(|| {
        let needle = b"Linux version ";
        let at = bytes.windows(needle.len()).position(|w| w == needle)? + needle.len();
        first_word(&bytes[at..])
    })
}

/// The boot protocol header: "HdrS" at 0x202, kernel_version pointer (relative to 0x200) at 0x20E.
pub fn bzimage_version(b: &[u8]) -> Option<String> {
    if b.get(0x202..0x206)? != b"HdrS" {
        return None;
    }
    let ptr = usize::from(u16::from_le_bytes([*b.get(0x20E)?, *b.get(0x20F)?]));
    first_word(b.get(ptr + 0x200..)?)
}

fn first_word(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0 || c == b' ')?;
    let s = std::str::from_utf8(&b[..end]).ok()?;
    (!s.is_empty()).then(|| s.to_string())
}

/// Download Debian's current kernel and cache what the guest needs. Returns the cached kernel.
pub fn fetch(cache_dir: &Path) -> Result<GuestKernel, KernelError> {
    let kdir = kernels_dir(cache_dir);
    std::fs::create_dir_all(&kdir).map_err(io("creating", &kdir))?;
    let work = kdir.join(format!(".fetch-{}", std::process::id()));
    if work.exists() {
        remove_plain_tree(&work)?;
    }
    std::fs::create_dir(&work).map_err(io("creating", &work))?;
    let res = fetch_into(&kdir, &work);
    let cleanup = remove_plain_tree(&work);
    let k = res?;
    cleanup?;
    Ok(k)
}

fn fetch_into(kdir: &Path, work: &Path) -> Result<GuestKernel, KernelError> {
    use std::os::unix::fs::PermissionsExt;
    // apt-get download drops to user _apt; on a root-only directory it warns ("unsandboxed")
    // and downloads as root, which is harmless.
    std::fs::set_permissions(work, std::fs::Permissions::from_mode(0o755))
        .map_err(io("chmod", work))?;
    let meta = download(work, "linux-image-amd64")?;
    let depends = run(Command::new("dpkg-deb").arg("-f").arg(&meta).arg("Depends"))?;
    let package = real_kernel_package(&depends).ok_or_else(|| KernelError::Package {
        what: "reading linux-image-amd64's dependency".into(),
        detail: format!("no linux-image-<version> package in Depends: {depends}"),
    })?;
    let deb = download(work, &package)?;
    let package_version = run(Command::new("dpkg-deb").arg("-f").arg(&deb).arg("Version"))?;
    let x = work.join("x");
    run(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&x))?;
    let version = package.trim_start_matches("linux-image-").to_string();

    let stage = kdir.join(format!(".stage-{}", std::process::id()));
    if stage.exists() {
        remove_plain_tree(&stage)?;
    }
    std::fs::create_dir_all(stage.join("modules")).map_err(io("creating", &stage))?;
    let boot = x.join("boot");
    let vmlinuz = boot.join(format!("vmlinuz-{version}"));
    let config = boot.join(format!("config-{version}"));
    std::fs::copy(&vmlinuz, stage.join("vmlinuz")).map_err(io("copying", &vmlinuz))?;
    std::fs::copy(&config, stage.join("config")).map_err(io("copying", &config))?;
    let config_text = std::fs::read_to_string(&config).map_err(io("reading", &config))?;
    let vmlinux = config_text.lines().any(|l| l == "CONFIG_PVH=y")
        && extract_vmlinux(&stage.join("vmlinuz"), &stage.join("vmlinux")).is_ok();

    let index = module_index(&x.join("lib/modules").join(&version))?;
    let order = resolve_modules(&index, WANTED_MODULES)?;
    for name in &order {
        let src = &index[name].path;
        let dst = stage.join("modules").join(format!("{name}.ko"));
        std::fs::copy(src, &dst).map_err(io("copying", src))?;
    }
    let manifest = Manifest {
        version: version.clone(),
        package,
        package_version,
        modules: order,
        vmlinux,
    };
    let mpath = stage.join("manifest.json");
    write_atomic(
        &mpath,
        &serde_json::to_vec_pretty(&manifest).expect("manifest serialises"),
    )
    .map_err(io("writing", &mpath))?;

    let dest = kdir.join(&version);
    if dest.exists() {
        remove_plain_tree(&dest)?;
    }
    std::fs::rename(&stage, &dest).map_err(io("moving into place", &dest))?;
    let current = kdir.join("current");
    write_atomic(&current, format!("{version}\n").as_bytes()).map_err(io("writing", &current))?;
    load_cached(&dest)
}

/// `apt-get download <pkg>` in `dir`; returns the .deb it wrote.
fn download(dir: &Path, pkg: &str) -> Result<PathBuf, KernelError> {
    run(Command::new("apt-get")
        .args(["download", "-q", pkg])
        .current_dir(dir))?;
    let prefix = format!("{pkg}_");
    std::fs::read_dir(dir)
        .map_err(io("listing", dir))?
        .flatten()
        .map(|e| e.path())
        .find(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
        })
        .ok_or_else(|| KernelError::Package {
            what: format!("apt-get download {pkg}"),
            detail: format!("no {prefix}*.deb appeared in {}", dir.display()),
        })
}

/// Run a command; its trimmed stdout, or an error with its stderr.
fn run(cmd: &mut Command) -> Result<String, KernelError> {
    let name = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|e| KernelError::Command {
        cmd: name.clone(),
        detail: e.to_string(),
    })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        return Err(KernelError::Command {
            cmd: name,
            detail: format!("{}: {}", out.status, err.trim()),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// From a Depends field ("linux-image-6.1.0-56-amd64 (= 6.1.192-2)"), the real kernel package.
pub fn real_kernel_package(depends: &str) -> Option<String> {
    depends
        .split([',', '|'])
        .map(|d| d.split_whitespace().next().unwrap_or(""))
        .find(|n| {
            n.starts_with("linux-image-")
                && n.as_bytes().get(12).is_some_and(u8::is_ascii_digit)
                && !n.ends_with("-unsigned")
        })
        .map(str::to_string)
}

/// Decompress the xz payload of a bzImage into an ELF vmlinux with the system `xz`.
fn extract_vmlinux(bzimage: &Path, dest: &Path) -> Result<(), KernelError> {
    use std::io::Write;
    let bytes = std::fs::read(bzimage).map_err(io("reading", bzimage))?;
    let magic = b"\xfd7zXZ\x00";
    let at = bytes
        .windows(magic.len())
        .position(|w| w == magic)
        .ok_or_else(|| KernelError::Package {
            what: "extracting vmlinux".into(),
            detail: "no xz payload in the bzImage".into(),
        })?;
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .map_err(|e| KernelError::Command {
            cmd: "xz -dc".into(),
            detail: format!("{e} (apt-get install xz-utils)"),
        })?;
    let mut stdin = child.stdin.take().expect("stdin piped");
    let payload = bytes[at..].to_vec();
    let feeder = std::thread::spawn(move || {
        // xz stops reading at the end of the stream; the trailing bytes are not xz data.
        let _ = stdin.write_all(&payload);
    });
    let out = child.wait_with_output().map_err(|e| KernelError::Command {
        cmd: "xz -dc".into(),
        detail: e.to_string(),
    })?;
    let _ = feeder.join();
    if !out.stdout.starts_with(b"\x7fELF") {
        return Err(KernelError::Package {
            what: "extracting vmlinux".into(),
            detail: "xz output is not an ELF image".into(),
        });
    }
    std::fs::write(dest, &out.stdout).map_err(io("writing", dest))
}

/// A module found in the package.
#[derive(Debug, Clone)]
pub struct ModuleInfo {
    pub path: PathBuf,
    pub depends: Vec<String>,
}

/// Every `.ko` under `dir`, by module name, with its `depends=`.
pub fn module_index(dir: &Path) -> Result<BTreeMap<String, ModuleInfo>, KernelError> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).map_err(io("listing", &d))?.flatten() {
            let p = e.path();
            let ft = e.file_type().map_err(io("stat", &p))?;
            if ft.is_dir() {
                stack.push(p);
            } else if p.extension().is_some_and(|x| x == "ko") {
                let bytes = std::fs::read(&p).map_err(io("reading", &p))?;
                let info = modinfo(&bytes);
                let name = info.get("name").cloned().unwrap_or_else(|| {
                    p.file_stem()
                        .map(|s| s.to_string_lossy().replace('-', "_"))
                        .unwrap_or_default()
                });
                let depends = info
                    .get("depends")
                    .map(|d| {
                        d.split(',')
                            .filter(|s| !s.is_empty())
                            .map(str::to_string)
                            .collect()
                    })
                    .unwrap_or_default();
                out.insert(name, ModuleInfo { path: p, depends });
            }
        }
    }
    Ok(out)
}

/// Dependencies first, each module once, in the order `wanted` asks for them.
pub fn resolve_modules(
    index: &BTreeMap<String, ModuleInfo>,
    wanted: &[&str],
) -> Result<Vec<String>, KernelError> {
    fn visit(
        name: &str,
        index: &BTreeMap<String, ModuleInfo>,
        out: &mut Vec<String>,
        path: &mut Vec<String>,
    ) -> Result<(), KernelError> {
        if out.iter().any(|n| n == name) {
            return Ok(());
        }
        if path.iter().any(|n| n == name) {
            return Err(KernelError::Package {
                what: "resolving module dependencies".into(),
                detail: format!("dependency cycle through {name}"),
            });
        }
        let info = index.get(name).ok_or_else(|| KernelError::Package {
            what: "resolving module dependencies".into(),
            detail: format!("module {name} is not in the kernel package (is it built in?)"),
        })?;
        path.push(name.to_string());
        for d in &info.depends {
            visit(d, index, out, path)?;
        }
        path.pop();
        out.push(name.to_string());
        Ok(())
    }
    let mut out = vec![];
    for w in wanted {
        visit(w, index, &mut out, &mut vec![])?;
    }
    Ok(out)
}

/// The key=value strings of an ELF module's `.modinfo` section.
pub fn modinfo(elf: &[u8]) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    if let Some(sec) = elf_section(elf, ".modinfo") {
        for s in sec.split(|&b| b == 0).filter(|s| !s.is_empty()) {
            let s = String::from_utf8_lossy(s);
            if let Some((k, v)) = s.split_once('=') {
                out.entry(k.to_string()).or_insert_with(|| v.to_string());
            }
        }
    }
    out
}

/// The bytes of a named section of a little-endian ELF64 file.
fn elf_section<'a>(b: &'a [u8], want: &str) -> Option<&'a [u8]> {
    let u16at = |o: usize| Some(u16::from_le_bytes(b.get(o..o + 2)?.try_into().ok()?));
    let u32at = |o: usize| Some(u32::from_le_bytes(b.get(o..o + 4)?.try_into().ok()?));
    let u64at = |o: usize| {
        let v = u64::from_le_bytes(b.get(o..o + 8)?.try_into().ok()?);
        usize::try_from(v).ok()
    };
    if b.get(0..4)? != b"\x7fELF" || *b.get(4)? != 2 || *b.get(5)? != 1 {
        return None;
    }
    let shoff = u64at(0x28)?;
    let shentsize = usize::from(u16at(0x3A)?);
    let shnum = usize::from(u16at(0x3C)?);
    let shstrndx = usize::from(u16at(0x3E)?);
    let sh = |i: usize| -> Option<(usize, usize, usize)> {
        let o = shoff.checked_add(i.checked_mul(shentsize)?)?;
        let name = usize::try_from(u32at(o)?).ok()?;
        Some((name, u64at(o + 0x18)?, u64at(o + 0x20)?))
    };
    let (_, stroff, strsize) = sh(shstrndx)?;
    let strtab = b.get(stroff..stroff.checked_add(strsize)?)?;
    for i in 0..shnum {
        let (name, off, size) = sh(i)?;
        let n = strtab.get(name..)?;
        let n = &n[..n.iter().position(|&c| c == 0)?];
        if n == want.as_bytes() {
            return b.get(off..off.checked_add(size)?);
        }
    }
    None
}

/// Remove a tree of plain files and directories that isobench wrote (cache staging dirs).
/// Never follows symlinks and never crosses into another mount, compared by mount id or, on
/// kernels without `STATX_MNT_ID`, by /proc/self/mountinfo (RELIABILITY rule 3): a mount point
/// inside is refused and left in place, with the error naming it.
pub fn remove_plain_tree(path: &Path) -> Result<(), KernelError> {
    crate::host::fs::safe_remove_tree(path).map_err(|e| KernelError::Package {
        what: format!("removing {}", path.display()),
        detail: e.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info(deps: &[&str]) -> ModuleInfo {
        ModuleInfo {
            path: PathBuf::new(),
            depends: deps.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn dependencies_come_first_once() {
        let idx = BTreeMap::from([
            ("virtio".to_string(), info(&[])),
            ("virtio_ring".to_string(), info(&[])),
            ("virtio_mmio".to_string(), info(&["virtio", "virtio_ring"])),
            ("failover".to_string(), info(&[])),
            ("net_failover".to_string(), info(&["failover"])),
            (
                "virtio_net".to_string(),
                info(&["virtio_ring", "virtio", "net_failover"]),
            ),
        ]);
        assert_eq!(
            resolve_modules(&idx, &["virtio_mmio", "virtio_net"]).unwrap(),
            vec![
                "virtio",
                "virtio_ring",
                "virtio_mmio",
                "failover",
                "net_failover",
                "virtio_net"
            ]
        );
        let e = resolve_modules(&idx, &["ext4"]).unwrap_err().to_string();
        assert!(e.contains("ext4") && e.contains("built in"), "{e}");
    }

    #[test]
    fn finds_the_real_package() {
        assert_eq!(
            real_kernel_package("linux-image-6.1.0-56-amd64 (= 6.1.192-2)").as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(
            real_kernel_package(
                "foo, linux-image-6.1.0-56-amd64-unsigned | linux-image-6.1.0-56-amd64"
            )
            .as_deref(),
            Some("linux-image-6.1.0-56-amd64")
        );
        assert_eq!(real_kernel_package("linux-image-amd64"), None);
    }

    #[test]
    fn reads_bzimage_version() {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20E..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        let s = b"6.1.0-56-amd64 (debian-kernel@lists.debian.org) #1 SMP\0";
        b[0x300..0x300 + s.len()].copy_from_slice(s);
        assert_eq!(bzimage_version(&b).as_deref(), Some("6.1.0-56-amd64"));
        assert_eq!(bzimage_version(&[0u8; 16]), None);
    }

    #[test]
    fn not_cached_says_what_to_run() {
        let d = tempfile::tempdir().unwrap();
        let e = locate(d.path(), None).unwrap_err().to_string();
        assert!(e.contains("isobench fetch-kernel"), "{e}");
        let e = locate(d.path(), Some(&d.path().join("nope")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--kernel") && e.contains("no such file"), "{e}");
    }

    #[test]
    fn override_without_cache_has_no_modules() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("bzImage");
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20E..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300..0x306].copy_from_slice(b"6.9.0 ");
        std::fs::write(&img, &b).unwrap();
        let k = locate(d.path(), Some(&img)).unwrap();
        assert_eq!(k.version, "6.9.0");
        assert!(k.modules.is_empty());
        assert!(k.note.unwrap().contains("built into"));
    }

    /// A minimal ELF64 with a .modinfo section, as the kernel build writes it.
    fn fake_module(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut b = vec![0u8; 64];
        b[0..4].copy_from_slice(b"\x7fELF");
        b[4] = 2; // 64-bit
        b[5] = 1; // little endian
        let mi_off = b.len();
        b.extend_from_slice(modinfo);
        let st_off = b.len();
        b.extend_from_slice(shstrtab);
        while b.len() % 8 != 0 {
            b.push(0);
        }
        let shoff = b.len();
        let mut sh = |name: u32, off: usize, size: usize| {
            let mut e = vec![0u8; 64];
            e[0..4].copy_from_slice(&name.to_le_bytes());
            e[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            e[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            b.extend_from_slice(&e);
        };
        sh(0, 0, 0);
        sh(1, st_off, shstrtab.len());
        sh(11, mi_off, modinfo.len());
        b[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        b[0x3A..0x3C].copy_from_slice(&64u16.to_le_bytes());
        b[0x3C..0x3E].copy_from_slice(&3u16.to_le_bytes());
        b[0x3E..0x40].copy_from_slice(&1u16.to_le_bytes());
        b
    }

    #[test]
    fn reads_modinfo_and_indexes_modules() {
        let d = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(d.path().join("kernel/drivers")).unwrap();
        std::fs::write(
            d.path().join("kernel/drivers/virtio_mmio.ko"),
            fake_module(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_mmio\0"),
        )
        .unwrap();
        std::fs::write(
            d.path().join("kernel/virtio.ko"),
            fake_module(b"depends=\0name=virtio\0"),
        )
        .unwrap();
        let m = modinfo(&fake_module(b"depends=a,b\0name=x\0"));
        assert_eq!(m["depends"], "a,b");
        assert_eq!(m["name"], "x");
        assert!(modinfo(b"not an elf").is_empty());
        let idx = module_index(d.path()).unwrap();
        assert_eq!(idx["virtio_mmio"].depends, vec!["virtio", "virtio_ring"]);
        assert!(idx["virtio"].depends.is_empty());
        // virtio_ring is missing from this package: resolution says so.
        let e = resolve_modules(&idx, &["virtio_mmio"]).unwrap_err();
        assert!(e.to_string().contains("virtio_ring"));
    }
}
