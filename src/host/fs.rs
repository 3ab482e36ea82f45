//! File-system utilities every layer may use: atomic writes (never through a planted
//! symlink) and removal of a tree that never leaves its file system (no symlink followed, no
//! mount point entered), with the mountinfo parsing it needs. Leaf module: std, libc and nix only.

use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use nix::unistd::UnlinkatFlags;

/// Write a file atomically, mode 0644: see [`write_atomic_mode`].
pub fn write_atomic(path: &Path, data: &[u8]) -> io::Result<()> {
    write_atomic_mode(path, data, 0o644)
}

/// Write a file atomically: a temporary with an unpredictable name in the same directory,
/// opened `O_CREAT|O_EXCL|O_NOFOLLOW|O_CLOEXEC` (a planted file or symlink is never written
/// through), written, fsynced, renamed over `path` (a symlink at `path` is replaced, not
/// followed), then the directory is fsynced.
pub fn write_atomic_mode(path: &Path, data: &[u8], mode: u32) -> io::Result<()> {
    let stem = path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("file")
        .to_string();
    let pid = std::process::id();
    let names =
        std::iter::repeat_with(move || format!(".{stem}.{pid}.{:016x}.tmp", rand::random::<u64>()));
    write_atomic_with(path, data, mode, names)
}

/// [`write_atomic_mode`] with the temporary names to try given (tests plant symlinks there).
pub fn write_atomic_with(
    path: &Path,
    data: &[u8],
    mode: u32,
    names: impl IntoIterator<Item = String>,
) -> io::Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let mut tries = 0;
    for name in names {
        tries += 1;
        if tries > 64 {
            break;
        }
        let tmp = dir.join(&name);
        let mut f = match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&tmp)
        {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        };
        let written = f
            .write_all(data)
            .and_then(|()| f.sync_all())
            .and_then(|()| std::fs::rename(&tmp, path));
        drop(f);
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        return File::open(dir).and_then(|d| d.sync_all());
    }
    Err(io::Error::new(
        io::ErrorKind::AlreadyExists,
        format!(
            "no free temporary name next to {}: remove stray .*.tmp files there",
            path.display()
        ),
    ))
}

/// Undo /proc/self/mountinfo's octal escapes (`\040` space, `\011` tab, `\012` newline,
/// `\134` backslash).
pub fn unescape_mount_path(s: &str) -> PathBuf {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = oct
                    .iter()
                    .fold(0u32, |acc, c| acc * 8 + u32::from(c - b'0'));
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    PathBuf::from(OsStr::from_bytes(&out))
}

/// Mount points (5th field of mountinfo) at or below `dir`, in mountinfo order.
pub fn mounts_under(mountinfo: &str, dir: &Path) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount_path)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Order mount points for unmounting: deepest first; among equal depth, later (stacked on top)
/// first. Duplicates stay (a stacked mount needs one umount per layer).
pub fn order_for_unmount(mut mounts: Vec<PathBuf>) -> Vec<PathBuf> {
    mounts.reverse();
    mounts.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    mounts
}

/// Identity of a filesystem object as far as mount boundaries are concerned.
#[derive(Debug, Clone, Copy)]
struct Node {
    dev: u64,
    ino: u64,
    mnt_id: Option<u64>,
    mount_root: bool,
    is_dir: bool,
}

impl Node {
    /// The node as a kernel without `STATX_MNT_ID` / `STATX_ATTR_MOUNT_ROOT` reports it.
    fn without_mount_ids(self) -> Node {
        Node {
            mnt_id: None,
            mount_root: false,
            ..self
        }
    }

    /// Is `child` on another filesystem or mount than `self` (or the root of a mount)?
    fn crossed_by(&self, child: &Node) -> bool {
        child.dev != self.dev
            || child.mount_root
            || matches!((self.mnt_id, child.mnt_id), (Some(a), Some(b)) if a != b)
    }
}

/// statx relative to `dirfd`, never following a final symlink.
fn node_at(dirfd: RawFd, name: &CStr) -> io::Result<Node> {
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut sx: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `name` is a valid NUL-terminated string and `sx` a writable statx for the call.
    let rc = unsafe {
        libc::statx(
            dirfd,
            name.as_ptr(),
            libc::AT_SYMLINK_NOFOLLOW | libc::AT_NO_AUTOMOUNT,
            libc::STATX_TYPE | libc::STATX_INO | libc::STATX_MNT_ID,
            &mut sx,
        )
    };
    if rc != 0 {
        return Err(io::Error::last_os_error());
    }
    let mount_root_known =
        sx.stx_attributes_mask & u64::from(libc::STATX_ATTR_MOUNT_ROOT.unsigned_abs()) != 0;
    Ok(Node {
        dev: libc::makedev(sx.stx_dev_major, sx.stx_dev_minor),
        ino: sx.stx_ino,
        mnt_id: (sx.stx_mask & libc::STATX_MNT_ID != 0).then_some(sx.stx_mnt_id),
        mount_root: mount_root_known
            && sx.stx_attributes & u64::from(libc::STATX_ATTR_MOUNT_ROOT.unsigned_abs()) != 0,
        is_dir: u32::from(sx.stx_mode) & libc::S_IFMT == libc::S_IFDIR,
    })
}

fn cpath(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains a NUL byte"))
}

/// How [`safe_remove_tree`] recognises a mount point.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountCheck {
    /// Device, `STATX_ATTR_MOUNT_ROOT` and mount id (`STATX_MNT_ID`, Linux >= 5.8); where
    /// statx does not return a mount id, [`MountCheck::Mountinfo`].
    Auto,
    /// Device, plus the mount points listed in /proc/self/mountinfo below the tree, collected
    /// before descending (what kernels without `STATX_MNT_ID` get; never "no mount here").
    Mountinfo,
}

/// Remove `path` and everything below it without ever leaving its filesystem: no symlink is
/// followed (a symlink is removed, its target is not touched) and no mount point is entered
/// (compared by device and mount id, or by /proc/self/mountinfo where the kernel has no mount
/// ids). A mount found inside is reported and left in place, with everything above it; the
/// error names it. A missing `path` is not an error.
///
/// Unlike `std::fs::remove_dir_all`, this is safe against a tree that still holds a bind mount
/// of host data (RELIABILITY rule 3).
pub fn safe_remove_tree(path: &Path) -> io::Result<()> {
    safe_remove_tree_with(path, MountCheck::Auto)
}

/// [`safe_remove_tree`] with the mount check chosen (tests force the mountinfo fallback).
pub fn safe_remove_tree_with(path: &Path, check: MountCheck) -> io::Result<()> {
    let c = cpath(path)?;
    let mut top = match node_at(libc::AT_FDCWD, &c) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let fallback = check == MountCheck::Mountinfo || top.mnt_id.is_none();
    // With the fallback, the tree's path as mountinfo spells it (parent canonical, the last
    // component not followed), and every mount point at or below it.
    let (path, mounts) = if fallback {
        top = top.without_mount_ids();
        let name = path.file_name().ok_or_else(|| {
            io::Error::new(io::ErrorKind::InvalidInput, "path has no final component")
        })?;
        let parent = match path.parent().filter(|p| !p.as_os_str().is_empty()) {
            Some(p) => std::fs::canonicalize(p)?,
            None => std::env::current_dir()?,
        };
        let canon = parent.join(name);
        let info = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("reading /proc/self/mountinfo to find mount points (statx has no mount ids here): {e}; mount /proc"),
            )
        })?;
        let mounts = mounts_under(&info, &canon);
        (canon, Some(mounts))
    } else {
        (path.to_path_buf(), None)
    };
    let path = path.as_path();
    let guard = Guard { root: top, mounts };
    if guard.is_listed(path) {
        return Err(refusal(&[path.to_path_buf()]));
    }
    if !top.is_dir {
        if top.mount_root {
            return Err(refusal(&[path.to_path_buf()]));
        }
        return nix::unistd::unlinkat(None, c.as_c_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(io::Error::from);
    }
    // The top itself must not be a mount point (its parent is on the same mount).
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let mut pn = node_at(libc::AT_FDCWD, &cpath(parent)?)?;
        if fallback {
            pn = pn.without_mount_ids();
        }
        if pn.crossed_by(&top) {
            return Err(refusal(&[path.to_path_buf()]));
        }
    }
    let fd = open_dir_at(libc::AT_FDCWD, &c)?;
    let mut refused = vec![];
    remove_contents(&fd, path, &guard, &mut refused)?;
    drop(fd);
    match nix::unistd::unlinkat(None, c.as_c_str(), UnlinkatFlags::RemoveDir) {
        Ok(()) if refused.is_empty() => Ok(()),
        Ok(()) => Err(refusal(&refused)),
        Err(Errno::ENOTEMPTY) if !refused.is_empty() => Err(refusal(&refused)),
        Err(e) => Err(e.into()),
    }
}

/// What marks a mount boundary during one removal.
struct Guard {
    root: Node,
    /// Mount points at or below the tree (mountinfo fallback); `None` with mount ids.
    mounts: Option<Vec<PathBuf>>,
}

impl Guard {
    fn is_listed(&self, p: &Path) -> bool {
        self.mounts
            .as_ref()
            .is_some_and(|m| m.iter().any(|x| x == p))
    }

    fn crossed(&self, node: &Node, p: &Path) -> bool {
        self.is_listed(p)
            || if self.mounts.is_some() {
                self.root.crossed_by(&node.without_mount_ids())
            } else {
                self.root.crossed_by(node)
            }
    }
}

fn refusal(mounts: &[PathBuf]) -> io::Error {
    let list: Vec<String> = mounts.iter().map(|m| m.display().to_string()).collect();
    io::Error::other(format!(
        "refusing to remove across a mount point ({}): unmount it first (`isobench cleanup` does), then retry",
        list.join(", ")
    ))
}

/// Open a directory relative to `dirfd`, refusing symlinks.
fn open_dir_at(dirfd: RawFd, name: &CStr) -> io::Result<OwnedFd> {
    let flags = OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC;
    let fd = nix::fcntl::openat(Some(dirfd), name, flags, Mode::empty())?;
    // SAFETY: openat just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The names in the directory open at `fd` ("." and ".." excluded).
fn list_dir(fd: &OwnedFd) -> io::Result<Vec<CString>> {
    let dup = nix::fcntl::fcntl(fd.as_raw_fd(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(0))?;
    // SAFETY: `dup` is a fresh fd we own; fdopendir takes ownership of it on success.
    let dir = unsafe { libc::fdopendir(dup) };
    if dir.is_null() {
        let e = io::Error::last_os_error();
        let _ = nix::unistd::close(dup);
        return Err(e);
    }
    let mut names = vec![];
    let result = loop {
        Errno::clear();
        // SAFETY: `dir` is a valid DIR* until closedir below; the entry is copied at once.
        let ent = unsafe { libc::readdir64(dir) };
        if ent.is_null() {
            break match Errno::last_raw() {
                0 => Ok(()),
                e => Err(io::Error::from_raw_os_error(e)),
            };
        }
        // SAFETY: readdir64 returned a valid entry whose d_name is NUL-terminated.
        let name = unsafe { CStr::from_ptr((*ent).d_name.as_ptr()) };
        if name != c"." && name != c".." {
            names.push(name.to_owned());
        }
    };
    // SAFETY: `dir` came from fdopendir and is closed exactly once (this also closes `dup`).
    unsafe { libc::closedir(dir) };
    result.map(|()| names)
}

fn remove_contents(
    fd: &OwnedFd,
    path: &Path,
    guard: &Guard,
    refused: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for name in list_dir(fd)? {
        let child_path = path.join(OsStr::from_bytes(name.as_bytes()));
        let node = match node_at(fd.as_raw_fd(), &name) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if guard.crossed(&node, &child_path) {
            refused.push(child_path);
            continue;
        }
        if node.is_dir {
            let sub = open_dir_at(fd.as_raw_fd(), &name)?;
            // The directory opened must be the one inspected (no swap in between).
            let again = nix::sys::stat::fstat(sub.as_raw_fd())?;
            if again.st_ino != node.ino || again.st_dev != node.dev {
                return Err(io::Error::other(format!(
                    "{} changed while being removed: stop whatever writes there and retry",
                    child_path.display()
                )));
            }
            let before = refused.len();
            remove_contents(&sub, &child_path, guard, refused)?;
            drop(sub);
            match nix::unistd::unlinkat(
                Some(fd.as_raw_fd()),
                name.as_c_str(),
                UnlinkatFlags::RemoveDir,
            ) {
                Ok(()) => {}
                Err(Errno::ENOTEMPTY) if refused.len() > before => {}
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "removing directory {}: {e}",
                        child_path.display()
                    )))
                }
            }
        } else {
            nix::unistd::unlinkat(
                Some(fd.as_raw_fd()),
                name.as_c_str(),
                UnlinkatFlags::NoRemoveDir,
            )
            .map_err(|e| io::Error::other(format!("removing {}: {e}", child_path.display())))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
