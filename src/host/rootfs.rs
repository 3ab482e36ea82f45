//! The minimal rootfs isobench prepares itself, the way a chroot jail is prepared by hand:
//! the agent binary and empty mount points. The agent is one static executable (see
//! .cargo/config.toml), so it needs no shared library, no loader and no loader cache, and the VM
//! initramfs holds the very same file: every tier loads exactly the same bytes.

use std::path::{Path, PathBuf};

/// Where the agent lives inside every rootfs and initramfs.
pub const AGENT_IN_ROOTFS: &str = "/bin/isobench-agent";
/// Empty directories every rootfs gets (mount points and scratch).
pub const ROOTFS_DIRS: &[&str] = &["bin", "proc", "sys", "dev", "tmp", "etc", "data", "run"];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error(
        "the agent {} is not a static executable ({why}): isobench copies only the agent into \
         rootfs and initramfs, so it must need no shared library. Build it with `cargo build \
         --release --bins` in the isobench repository (its .cargo/config.toml links the agent \
         statically; a RUSTC_WRAPPER in the environment overrides that: unset it), or point \
         ISOBENCH_AGENT at such a build",
        .path.display()
    )]
    NotStatic { path: PathBuf, why: String },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Refuse an agent that is not a static executable: one that asks for an ELF interpreter
/// (`PT_INTERP`, the dynamic loader) would not start in a rootfs that holds the agent alone.
pub fn require_static(agent: &Path) -> Result<(), RootfsError> {
    let bytes = std::fs::read(agent).map_err(|source| RootfsError::Io {
        what: "reading the agent",
        path: agent.into(),
        source,
    })?;
    elf_static(&bytes).map_err(|why| RootfsError::NotStatic {
        path: agent.into(),
        why,
    })
}

/// Ok when `b` is a 64-bit little-endian ELF executable without a `PT_INTERP` program header
/// (static, or static-pie); otherwise why not.
pub fn elf_static(b: &[u8]) -> Result<(), String> {
    const PT_INTERP: u32 = 3;
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8)
            .map(|s| u64::from_le_bytes(s.try_into().expect("8 bytes")))
    };
    if b.get(..4) != Some(b"\x7fELF".as_slice()) {
        return Err("not an ELF file".into());
    }
    // EI_CLASS 2 = 64-bit, EI_DATA 1 = little endian.
    if b.get(4) != Some(&2) || b.get(5) != Some(&1) {
        return Err("not a 64-bit little-endian ELF file".into());
    }
    let truncated = || "truncated ELF header".to_string();
    let phoff = usize::try_from(u64_at(0x20).ok_or_else(truncated)?).map_err(|_| truncated())?;
    let phentsize = usize::from(u16_at(0x36).ok_or_else(truncated)?);
    let phnum = usize::from(u16_at(0x38).ok_or_else(truncated)?);
    for i in 0..phnum {
        let at = phentsize
            .checked_mul(i)
            .and_then(|o| o.checked_add(phoff))
            .ok_or_else(truncated)?;
        if u32_at(at).ok_or_else(truncated)? == PT_INTERP {
            return Err("dynamically linked: it names an ELF interpreter".into());
        }
    }
    Ok(())
}

/// Build the rootfs at `dest` (which must not exist yet): directories, the agent, `/etc/hostname`.
/// Refuses (before creating anything) an agent that is not static. Returns the files copied in.
/// Files are copied (never hard-linked or bind-mounted), so nothing in the rootfs is a writable
/// host binary (RELIABILITY rule 6).
pub fn build(agent: &Path, dest: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
        let path = path.to_path_buf();
        move |source| RootfsError::Io { what, path, source }
    }
    require_static(agent)?;
    std::fs::create_dir(dest).map_err(io("creating rootfs", dest))?;
    for d in ROOTFS_DIRS {
        std::fs::create_dir(dest.join(d)).map_err(io("creating", &dest.join(d)))?;
    }
    std::fs::set_permissions(dest.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &dest.join("tmp")))?;
    copy_agent(agent, &dest.join(AGENT_IN_ROOTFS.trim_start_matches('/')))?;
    std::fs::write(dest.join("etc/hostname"), "isobench\n")
        .map_err(io("writing", &dest.join("etc/hostname")))?;
    Ok(vec![PathBuf::from(AGENT_IN_ROOTFS)])
}

/// Copy the agent to `target` (a new file), read-only and executable. Every tier runs a copy
/// made here, `bare` included: the copies are written the same way, so the page cache holds
/// them the same way (on a recent kernel a file written in one go sits in large folios, which a
/// page fault maps whole), and the agent's resident memory does not depend on how the build
/// happened to write the original.
pub fn install_agent(agent: &Path, target: &Path) -> Result<(), RootfsError> {
    require_static(agent)?;
    copy_agent(agent, target)
}

/// The copy itself, for callers that checked the agent already ([`build`] does, before it
/// creates anything).
fn copy_agent(agent: &Path, target: &Path) -> Result<(), RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::copy(agent, target).map_err(|source| RootfsError::Io {
        what: "copying",
        path: agent.into(),
        source,
    })?;
    std::fs::set_permissions(target, std::fs::Permissions::from_mode(0o555)).map_err(|source| {
        RootfsError::Io {
            what: "chmod",
            path: target.into(),
            source,
        }
    })
}

/// The shared libraries `program` loads, with the loader: the absolute paths `ldd` prints
/// (`name => /path (addr)` and the loader's `/path (addr)`; the vDSO has no path).
pub fn ldd_closure(program: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let out = std::process::Command::new("ldd")
        .arg(program)
        .output()
        .map_err(|source| RootfsError::Io {
            what: "running ldd on",
            path: program.into(),
            source,
        })?;
    if !out.status.success() {
        return Err(RootfsError::Io {
            what: "ldd failed on",
            path: program.into(),
            source: std::io::Error::other(String::from_utf8_lossy(&out.stderr).trim().to_string()),
        });
    }
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// The absolute library paths of `ldd`'s output.
pub fn parse_ldd(text: &str) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            let path = l.split_once("=>").map_or(l, |(_, r)| r.trim());
            let path = path.split_whitespace().next()?;
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect();
    v.sort();
    v.dedup();
    v
}

/// Copy extra host executables into the rootfs at `dest` at their own paths, each with its
/// `ldd` closure (the libraries at the paths the loader finds them, the loader itself), the
/// same way for every tier that has a rootfs (issue 12: the application servers). Files are
/// copied read-only, never linked (RELIABILITY rule 6); a file already there is left alone.
/// Refuses a path that does not resolve to a regular file or names `..`. Returns the paths
/// copied, as the rootfs sees them.
pub fn install_with_libs(dest: &Path, programs: &[PathBuf]) -> Result<Vec<PathBuf>, RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files = vec![];
    for p in programs {
        files.push(p.clone());
        files.extend(ldd_closure(p)?);
    }
    let mut copied = vec![];
    for f in files {
        let bad = || RootfsError::Io {
            what: "refusing to copy into a rootfs",
            path: f.clone(),
            source: std::io::Error::other("not an absolute path to a regular file"),
        };
        if !f.is_absolute()
            || f.components()
                .any(|c| matches!(c, std::path::Component::ParentDir))
        {
            return Err(bad());
        }
        let real = std::fs::canonicalize(&f).map_err(|_| bad())?;
        if !real.is_file() {
            return Err(bad());
        }
        let target = dest.join(f.strip_prefix("/").expect("absolute"));
        if std::fs::symlink_metadata(&target).is_ok() {
            continue;
        }
        // A parent that is a symlink in the rootfs (none of isobench's) would lead outside it.
        let parent = target.parent().expect("a file has a parent");
        std::fs::create_dir_all(parent).map_err(|source| RootfsError::Io {
            what: "creating",
            path: parent.into(),
            source,
        })?;
        std::fs::copy(&real, &target).map_err(|source| RootfsError::Io {
            what: "copying",
            path: real.clone(),
            source,
        })?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o555)).map_err(
            |source| RootfsError::Io {
                what: "chmod",
                path: target.clone(),
                source,
            },
        )?;
        copied.push(f);
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 header with `types` as its program headers.
    fn elf(types: &[u32]) -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[0x20..0x28].copy_from_slice(&64u64.to_le_bytes());
        b[0x36..0x38].copy_from_slice(&56u16.to_le_bytes());
        b[0x38..0x3a].copy_from_slice(&u16::try_from(types.len()).unwrap().to_le_bytes());
        for t in types {
            let mut ph = vec![0u8; 56];
            ph[..4].copy_from_slice(&t.to_le_bytes());
            b.extend(ph);
        }
        b
    }

    #[test]
    fn ldd_output_gives_absolute_paths() {
        let text = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibm.so.6 => /lib/x86_64-linux-gnu/libm.so.6 (0x7f)\n\t/lib64/ld-linux-x86-64.so.2 (0x7f)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x7f)\n";
        assert_eq!(
            parse_ldd(text),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib/x86_64-linux-gnu/libm.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
    }

    #[test]
    fn installs_a_dynamic_program_with_its_closure() {
        let prog = PathBuf::from("/bin/true");
        if !prog.is_file()
            || std::process::Command::new("ldd")
                .arg("--version")
                .output()
                .is_err()
        {
            println!("SKIPPED installs_a_dynamic_program_with_its_closure: no /bin/true or ldd");
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let copied = install_with_libs(d.path(), std::slice::from_ref(&prog)).unwrap();
        assert!(copied.contains(&prog));
        for f in &copied {
            let t = d.path().join(f.strip_prefix("/").unwrap());
            assert!(t.is_file(), "{} missing", t.display());
        }
        // The loader comes along (every dynamic program names one).
        assert!(
            copied
                .iter()
                .any(|f| f.to_string_lossy().contains("ld-linux")),
            "{copied:?}"
        );
        // A second install copies nothing; a relative or missing path is refused.
        assert!(install_with_libs(d.path(), &[prog]).unwrap().is_empty());
        assert!(install_with_libs(d.path(), &[PathBuf::from("/nonexistent/x")]).is_err());
    }

    #[test]
    fn static_elf_passes_dynamic_and_junk_do_not() {
        // PT_LOAD, PT_DYNAMIC (a static-pie has one), PT_GNU_STACK.
        assert_eq!(elf_static(&elf(&[1, 2, 0x6474_e551])), Ok(()));
        let e = elf_static(&elf(&[6, 3, 1, 2])).unwrap_err();
        assert!(e.contains("dynamically linked"), "{e}");
        assert!(elf_static(b"#!/bin/sh\n")
            .unwrap_err()
            .contains("not an ELF"));
        let mut short = elf(&[1, 3]);
        short.truncate(100);
        assert!(elf_static(&short).unwrap_err().contains("truncated"));
        let mut b32 = elf(&[]);
        b32[4] = 1;
        assert!(elf_static(&b32).unwrap_err().contains("64-bit"));
    }

    #[test]
    fn refuses_a_dynamic_agent_before_creating_anything() {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, elf(&[6, 3, 1])).unwrap();
        let dest = d.path().join("rootfs");
        let e = build(&agent, &dest).unwrap_err().to_string();
        assert!(e.contains("not a static executable"), "{e}");
        assert!(e.contains("cargo build --release --bins"), "{e}");
        assert!(!dest.exists());
    }

    #[test]
    fn builds_a_rootfs_with_the_agent_alone() {
        let d = tempfile::tempdir().unwrap();
        let agent = d.path().join("agent");
        std::fs::write(&agent, elf(&[1])).unwrap();
        let dest = d.path().join("rootfs");
        assert_eq!(
            build(&agent, &dest).unwrap(),
            vec![PathBuf::from(AGENT_IN_ROOTFS)]
        );
        assert_eq!(
            std::fs::read(dest.join("bin/isobench-agent")).unwrap(),
            std::fs::read(&agent).unwrap()
        );
        let mut top: Vec<String> = std::fs::read_dir(&dest)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        top.sort();
        let mut want: Vec<String> = ROOTFS_DIRS.iter().map(|s| s.to_string()).collect();
        want.sort();
        assert_eq!(top, want);
        assert_eq!(std::fs::read_dir(dest.join("bin")).unwrap().count(), 1);
    }
}
