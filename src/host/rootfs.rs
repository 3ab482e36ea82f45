//! The minimal rootfs isobench prepares itself, the way a chroot jail is prepared by hand:
//! the agent binary, the shared libraries `ldd` says it needs, and empty mount points.
//! The same file list goes into the VM initramfs, so the agent is byte-identical everywhere.

use std::path::{Path, PathBuf};

/// Where the agent lives inside every rootfs and initramfs.
pub const AGENT_IN_ROOTFS: &str = "/bin/isobench-agent";
/// Empty directories every rootfs gets (mount points and scratch).
pub const ROOTFS_DIRS: &[&str] = &["bin", "proc", "sys", "dev", "tmp", "etc", "data", "run"];

#[derive(Debug, thiserror::Error)]
pub enum RootfsError {
    #[error("running ldd on {bin}: {source} (install libc-bin)")]
    Ldd {
        bin: PathBuf,
        source: std::io::Error,
    },
    #[error("{what} {path}: {source}")]
    Io {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The files a rootfs needs: (host path, path inside the rootfs).
pub fn agent_closure(agent: &Path) -> Result<Vec<(PathBuf, PathBuf)>, RootfsError> {
    let mut files = vec![(agent.to_path_buf(), PathBuf::from(AGENT_IN_ROOTFS))];
    for lib in shared_libs(agent)? {
        files.push((lib.clone(), lib));
    }
    Ok(files)
}

/// The shared libraries of `bin` (absolute paths, the dynamic loader included), as `ldd` lists
/// them. A static binary has none.
pub fn shared_libs(bin: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    let out = std::process::Command::new("ldd")
        .arg(bin)
        .output()
        .map_err(|source| RootfsError::Ldd {
            bin: bin.into(),
            source,
        })?;
    Ok(parse_ldd(&String::from_utf8_lossy(&out.stdout)))
}

/// Parse `ldd` output: "libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)" and
/// "/lib64/ld-linux-x86-64.so.2 (0x...)"; the vDSO has no file and is skipped.
pub fn parse_ldd(s: &str) -> Vec<PathBuf> {
    let mut v = vec![];
    for line in s.lines() {
        let line = line.trim();
        let path = match line.split_once("=>") {
            Some((_, rhs)) => rhs.split_whitespace().next(),
            None => line.split_whitespace().next(),
        };
        if let Some(p) = path.filter(|p| p.starts_with('/')) {
            let p = PathBuf::from(p);
            if !v.contains(&p) {
                v.push(p);
            }
        }
    }
    v
}

/// Build the rootfs at `dest` (which must not exist yet): directories, the agent, its libraries.
/// Files are copied (never hard-linked or bind-mounted), so nothing in the rootfs is a writable
/// host binary (RELIABILITY rule 6).
pub fn build(agent: &Path, dest: &Path) -> Result<Vec<PathBuf>, RootfsError> {
    use std::os::unix::fs::PermissionsExt;
    fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> RootfsError {
        let path = path.to_path_buf();
        move |source| RootfsError::Io { what, path, source }
    }
    std::fs::create_dir(dest).map_err(io("creating rootfs", dest))?;
    for d in ROOTFS_DIRS {
        std::fs::create_dir(dest.join(d)).map_err(io("creating", &dest.join(d)))?;
    }
    std::fs::set_permissions(dest.join("tmp"), std::fs::Permissions::from_mode(0o1777))
        .map_err(io("chmod", &dest.join("tmp")))?;
    let mut copied = vec![];
    for (src, inside) in agent_closure(agent)? {
        let target = dest.join(inside.strip_prefix("/").unwrap_or(&inside));
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(io("creating", parent))?;
        }
        std::fs::copy(&src, &target).map_err(io("copying", &src))?;
        std::fs::set_permissions(&target, std::fs::Permissions::from_mode(0o555))
            .map_err(io("chmod", &target))?;
        copied.push(inside);
    }
    std::fs::write(dest.join("etc/hostname"), "isobench\n")
        .map_err(io("writing", &dest.join("etc/hostname")))?;
    // A dynamic loader cache, as every distribution image has: without it ld.so probes a dozen
    // hwcaps and tls directories per library on each start, a cost of this minimal rootfs and
    // not of the tier (the bare tier uses the host's cache). `-X`: no symlinks are made.
    match std::process::Command::new("ldconfig")
        .args(["-X", "-r"])
        .arg(dest)
        .stdin(std::process::Stdio::null())
        .output()
    {
        Ok(o) if o.status.success() => {}
        Ok(o) => tracing::warn!(
            "ldconfig -r {} failed ({}): the rootfs has no loader cache, so the agent starts \
             slower there",
            dest.display(),
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => tracing::warn!(
            "ldconfig not found ({e}): the rootfs has no loader cache; install libc-bin"
        ),
    }
    Ok(copied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ldd_output() {
        let s = "\tlinux-vdso.so.1 (0x00007ffd)\n\tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x1)\n\tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x2)\n\t/lib64/ld-linux-x86-64.so.2 (0x3)\n";
        assert_eq!(
            parse_ldd(s),
            vec![
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2")
            ]
        );
        assert!(parse_ldd("\tnot a dynamic executable\n").is_empty());
    }
}
