//! Recovery: remove what a killed or failed run left behind, and only that.
//!
//! For every run whose owner (pid + start time) is gone, in RELIABILITY rule 2's order: kill the
//! processes of its recorded cgroups and its recorded processes (verified by start time, never
//! by name) and wait for them, unmount its recorded mounts and any mount below its directory
//! (deepest first, plain umount: never lazy-unmount-then-delete), remove its cgroups (deepest
//! first), delete its recorded network devices, then remove its files with
//! [`safe_remove_tree`], which never crosses into another mount and never follows a symlink.
//!
//! What this does not protect against: a process that escaped its cgroup and was never recorded,
//! or a mount made in another mount namespace (those die with their namespace).

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, UnlinkatFlags};
use serde::Serialize;

use crate::cgroup;
use crate::state::{process_start_time, Ledger, Resource, StateDir};

/// How long cleanup waits for killed processes to go away.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// What cleanup did for one run directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunCleanup {
    pub run_dir: PathBuf,
    /// Why the run was left alone (its owner is alive, its ledger is unreadable).
    pub skipped: Option<String>,
    pub killed: Vec<i32>,
    pub unmounted: Vec<PathBuf>,
    pub cgroups_removed: Vec<PathBuf>,
    pub links_removed: Vec<String>,
    /// Runtime containers removed (runc/crun/runsc ids, LXC and Docker names).
    pub containers_removed: Vec<String>,
    /// nftables tables removed, as `family name`.
    pub nft_tables_removed: Vec<String>,
    /// iptables rules deleted, as `table chain rule`.
    pub iptables_rules_removed: Vec<String>,
    /// Sysctls put back to the value they had before the run.
    pub sysctls_restored: Vec<PathBuf>,
    pub dir_removed: bool,
    /// Every step that failed, saying what to do.
    pub errors: Vec<String>,
}

/// What `cleanup` did, per run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub runs: Vec<RunCleanup>,
}

impl CleanupReport {
    pub fn is_clean(&self) -> bool {
        self.runs.iter().all(|r| r.errors.is_empty())
    }
}

/// Clean every run in `state` whose owner is no longer alive.
pub fn cleanup(state: &StateDir) -> CleanupReport {
    let mut report = CleanupReport::default();
    for (dir, ledger) in state.ledgers() {
        let r = match ledger {
            Err(e) => RunCleanup {
                run_dir: dir.clone(),
                skipped: Some(format!(
                    "ledger unreadable ({e}): inspect {} by hand; nothing was touched",
                    dir.join("ledger.json").display()
                )),
                ..Default::default()
            },
            Ok(l) => match l
                .owner
                .as_ref()
                .filter(|o| owner_alive(o.pid, o.start_time))
            {
                Some(o) => RunCleanup {
                    run_dir: dir.clone(),
                    skipped: Some(format!("owner pid {} is still running", o.pid)),
                    ..Default::default()
                },
                None => cleanup_run(&dir, &l),
            },
        };
        report.runs.push(r);
    }
    report
}

fn owner_alive(pid: i32, start_time: u64) -> bool {
    process_start_time(pid) == Some(start_time) && !is_zombie(pid)
}

fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            let rest = s.get(s.rfind(')')? + 2..)?;
            rest.chars().next()
        })
        .is_some_and(|c| c == 'Z' || c == 'X')
}

/// Clean one run unconditionally (its owner is known to be done with it, e.g. the harness
/// itself after a failed run has finished its backends).
pub fn cleanup_run(run_dir: &Path, ledger: &Ledger) -> RunCleanup {
    let mut r = RunCleanup {
        run_dir: run_dir.to_path_buf(),
        ..Default::default()
    };
    let cgroups: Vec<PathBuf> = ledger
        .resources
        .iter()
        .filter_map(|x| match x {
            Resource::Cgroup { path } => Some(path.clone()),
            _ => None,
        })
        .collect();

    // 0. Containers of the external runtimes: their own delete kills the container's
    //    processes and removes the cgroups, mounts and state the runtime made.
    for x in &ledger.resources {
        let done = match x {
            Resource::OciContainer { runtime, root, id } => remove_oci_container(runtime, root, id),
            Resource::LxcContainer { lxcpath, name } => remove_lxc_container(lxcpath, name),
            Resource::DockerContainer { name, id } => {
                crate::backend::runtimes::docker::remove_recorded_container(
                    name,
                    id.as_deref(),
                    &ledger.run_id,
                )
            }
            _ => continue,
        };
        match done {
            Ok(true) => r.containers_removed.push(match x {
                Resource::OciContainer { id, .. } => id.clone(),
                Resource::LxcContainer { name, .. } | Resource::DockerContainer { name, .. } => {
                    name.clone()
                }
                _ => unreachable!("filtered above"),
            }),
            Ok(false) => {}
            Err(e) => r.errors.push(e),
        }
    }

    // 1. Kill: cgroup members and recorded processes (pid + start time), then wait.
    let mut victims: Vec<(i32, u64)> = vec![];
    for cg in &cgroups {
        for dir in cgroup::subtree_dirs(cg).unwrap_or_default() {
            if let Ok(s) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in cgroup::parse_pids(&s) {
                    if let Some(st) = process_start_time(pid) {
                        victims.push((pid, st));
                    }
                }
            }
        }
    }
    for x in &ledger.resources {
        if let Resource::Process { pid, start_time } = x {
            victims.push((*pid, *start_time));
        }
    }
    victims.sort_unstable();
    victims.dedup();
    for &(pid, st) in &victims {
        if owner_alive(pid, st) && kill(Pid::from_raw(pid), Signal::SIGKILL).is_ok() {
            r.killed.push(pid);
        }
    }
    let deadline = Instant::now() + KILL_SETTLE;
    while victims.iter().any(|&(p, st)| owner_alive(p, st)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    for &(p, st) in &victims {
        if owner_alive(p, st) {
            r.errors.push(format!(
                "process {p} survived SIGKILL (uninterruptible sleep?): find what holds it, then run `isobench cleanup` again"
            ));
        }
    }

    // 2. Unmount: recorded mounts and every mount below the run's directories, deepest first.
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut roots = vec![run_dir.to_path_buf()];
    let mut recorded = vec![];
    for x in &ledger.resources {
        match x {
            Resource::Mount { path } => recorded.push(path.clone()),
            Resource::Dir { path } => roots.push(path.clone()),
            _ => {}
        }
    }
    // Everything mounted below the run's directories (each layer of a stacked mount counts;
    // a directory inside another is covered by the outer one)...
    roots.sort();
    roots.dedup();
    let mut mounts: Vec<PathBuf> = vec![];
    for root in roots
        .iter()
        .filter(|r| !roots.iter().any(|o| o != *r && r.starts_with(o)))
    {
        mounts.extend(mounts_under(&info, root));
    }
    // ...plus recorded mount points elsewhere that are still mounted.
    let all = mounts_under(&info, Path::new("/"));
    for m in recorded {
        if !mounts.contains(&m) && all.contains(&m) {
            mounts.push(m);
        }
    }
    for m in order_for_unmount(mounts) {
        match nix::mount::umount2(&m, nix::mount::MntFlags::empty()) {
            Ok(()) => r.unmounted.push(m),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {} // not (or no longer) a mount point
            Err(e) => r.errors.push(format!(
                "unmounting {}: {e}; find the holder (fuser -vm {}) and run `isobench cleanup` again",
                m.display(),
                m.display()
            )),
        }
    }

    // 3. Cgroups, deepest first (children created per launch included).
    let mut all: BTreeSet<PathBuf> = BTreeSet::new();
    for cg in &cgroups {
        all.extend(cgroup::subtree_dirs(cg).unwrap_or_default());
    }
    let mut all: Vec<PathBuf> = all.into_iter().collect();
    all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    for cg in all {
        match cgroup::rmdir_retry(&cg) {
            Ok(()) => r.cgroups_removed.push(cg),
            Err(e) => r.errors.push(e.to_string()),
        }
    }

    // 4. Network devices the run created (never one it did not record).
    for x in &ledger.resources {
        if let Resource::Link { name } = x {
            match remove_link(name) {
                Ok(true) => r.links_removed.push(name.clone()),
                Ok(false) => {}
                Err(e) => r.errors.push(e),
            }
        }
    }

    // 4b. NAT rules: the run owns whole tables, so deleting the table removes every rule.
    for x in &ledger.resources {
        if let Resource::NftTable { family, name } = x {
            match remove_nft_table(family, name) {
                Ok(true) => r.nft_tables_removed.push(format!("{family} {name}")),
                Ok(false) => {}
                Err(e) => r.errors.push(e),
            }
        }
    }
    for x in &ledger.resources {
        if let Resource::IptablesRule { table, chain, rule } = x {
            match remove_iptables_rule(table, chain, rule) {
                Ok(true) => r
                    .iptables_rules_removed
                    .push(format!("{table} {chain} {}", rule.join(" "))),
                Ok(false) => {}
                Err(e) => r.errors.push(e),
            }
        }
    }
    // 4c. Sysctls the run switched (ip_forward), back to what they were.
    for x in &ledger.resources {
        if let Resource::Sysctl { path, restore } = x {
            match restore_sysctl(path, restore) {
                Ok(()) => r.sysctls_restored.push(path.clone()),
                Err(e) => r.errors.push(e),
            }
        }
    }

    // 5. Files, only once everything above is gone (the ledger stays for a retry otherwise).
    if r.errors.is_empty() {
        for x in &ledger.resources {
            if let Resource::Dir { path } | Resource::File { path } = x {
                if let Err(e) = safe_remove_tree(path) {
                    r.errors.push(format!("removing {}: {e}", path.display()));
                }
            }
        }
    }
    if r.errors.is_empty() {
        match safe_remove_tree(run_dir) {
            Ok(()) => r.dir_removed = true,
            Err(e) => r
                .errors
                .push(format!("removing {}: {e}", run_dir.display())),
        }
    }
    r
}

/// Delete network device `name` if it exists (a veth takes its peer with it). Ok(false) when it
/// is already gone, including when it vanished on its own meanwhile (a dying network namespace
/// removes its veth pairs asynchronously).
pub fn remove_link(name: &str) -> Result<bool, String> {
    if name.is_empty() || name.len() > 15 || name.contains('/') || name.starts_with('.') {
        return Err(format!(
            "ledger names an invalid network device {name:?}: edit the ledger by hand"
        ));
    }
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(false);
    }
    let out = std::process::Command::new("ip")
        .args(["link", "del", "dev", name])
        .output()
        .map_err(|e| format!("running `ip link del {name}`: {e} (install iproute2)"))?;
    if out.status.success() {
        Ok(true)
    } else if !Path::new("/sys/class/net").join(name).exists() {
        Ok(false)
    } else {
        Err(format!(
            "`ip link del {name}` failed: {}; remove it by hand",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Is `s` a container id or name isobench makes (`isobench-<run>-...`: letters, digits, `-`,
/// `_`, `.`)? Anything else in a ledger is refused rather than passed to a runtime.
pub fn valid_container_name(s: &str) -> bool {
    s.starts_with("isobench-")
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<std::process::Output, String> {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running `{what}`: {e}; remove the container by hand"))
}

/// Delete OCI container `id` under state root `root` with `runtime` if the runtime still knows
/// it. Ok(false) when it is already gone (or the state root is).
pub fn remove_oci_container(runtime: &Path, root: &Path, id: &str) -> Result<bool, String> {
    if !valid_container_name(id) {
        return Err(format!(
            "ledger names an invalid container id {id:?}: edit the ledger by hand"
        ));
    }
    if !root.is_dir() {
        return Ok(false);
    }
    let known = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(id))
        })
        .unwrap_or(false);
    if !known {
        return Ok(false);
    }
    let what = format!(
        "{} --root {} delete --force {id}",
        runtime.display(),
        root.display()
    );
    let out = run_tool(
        std::process::Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id]),
        &what,
    )?;
    if out.status.success() {
        Ok(true)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("does not exist") || err.contains("not found") || err.contains("No such") {
            Ok(false)
        } else {
            Err(format!(
                "`{what}` failed: {}; remove it by hand",
                err.trim()
            ))
        }
    }
}

/// Stop LXC container `name` under `lxcpath` if it is still running.
pub fn remove_lxc_container(lxcpath: &Path, name: &str) -> Result<bool, String> {
    if !valid_container_name(name) {
        return Err(format!(
            "ledger names an invalid LXC container {name:?}: edit the ledger by hand"
        ));
    }
    if !lxcpath.is_dir() {
        return Ok(false);
    }
    let what = format!("lxc-stop --kill -P {} -n {name}", lxcpath.display());
    let out = run_tool(
        std::process::Command::new("lxc-stop")
            .arg("--kill")
            .arg("-P")
            .arg(lxcpath)
            .args(["-n", name]),
        &what,
    )?;
    // lxc-stop fails with "is not running" when the container already ended.
    Ok(out.status.success())
}

/// Is `s` a name nft accepts for a table or family (letters, digits, `_`, `-`)?
pub fn valid_nft_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        && s.as_bytes()[0].is_ascii_alphabetic()
}

/// Delete nftables table `family name` if it exists. Ok(false) when it is already gone.
pub fn remove_nft_table(family: &str, name: &str) -> Result<bool, String> {
    if !valid_nft_name(family) || !valid_nft_name(name) {
        return Err(format!(
            "ledger names an invalid nftables table {family:?} {name:?}: edit the ledger by hand"
        ));
    }
    let nft = |args: &[&str]| {
        std::process::Command::new("nft")
            .args(args)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running `nft {}`: {e} (install nftables)", args.join(" ")))
    };
    if !nft(&["list", "table", family, name])?.status.success() {
        return Ok(false);
    }
    let out = nft(&["delete", "table", family, name])?;
    if out.status.success() {
        Ok(true)
    } else {
        Err(format!(
            "`nft delete table {family} {name}` failed: {}; remove it by hand",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Delete `iptables -t table -D chain rule...` if that rule is there. Ok(false) when it is not.
pub fn remove_iptables_rule(table: &str, chain: &str, rule: &[String]) -> Result<bool, String> {
    if !valid_nft_name(table) || !valid_nft_name(chain) {
        return Err(format!(
            "ledger names an invalid iptables chain {table:?} {chain:?}: edit the ledger by hand"
        ));
    }
    let run = |op: &str| {
        std::process::Command::new("iptables")
            .args(["-w", "-t", table, op, chain])
            .args(rule)
            .stdin(std::process::Stdio::null())
            .output()
            .map_err(|e| format!("running `iptables {op} {chain}`: {e} (install iptables)"))
    };
    if !run("-C")?.status.success() {
        return Ok(false);
    }
    let out = run("-D")?;
    if out.status.success() {
        Ok(true)
    } else {
        Err(format!(
            "`iptables -t {table} -D {chain} {}` failed: {}; remove it by hand",
            rule.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Put a sysctl under /proc/sys back to `value`.
pub fn restore_sysctl(path: &Path, value: &str) -> Result<(), String> {
    if !path.starts_with("/proc/sys/") || path.components().any(|c| c.as_os_str() == "..") {
        return Err(format!(
            "ledger names {} as a sysctl, which is not under /proc/sys: edit the ledger by hand",
            path.display()
        ));
    }
    std::fs::write(path, value).map_err(|e| {
        format!(
            "restoring {} to {value:?}: {e}; set it by hand (sysctl -w)",
            path.display()
        )
    })
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

/// Remove `path` and everything below it without ever leaving its filesystem: no symlink is
/// followed (a symlink is removed, its target is not touched) and no mount point is entered
/// (compared by device and mount id). A mount found inside is reported and left in place, with
/// everything above it; the error names it. A missing `path` is not an error.
///
/// Unlike `std::fs::remove_dir_all`, this is safe against a tree that still holds a bind mount
/// of host data (RELIABILITY rule 3).
pub fn safe_remove_tree(path: &Path) -> io::Result<()> {
    let c = cpath(path)?;
    let top = match node_at(libc::AT_FDCWD, &c) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !top.is_dir {
        if top.mount_root {
            return Err(refusal(&[path.to_path_buf()]));
        }
        return nix::unistd::unlinkat(None, c.as_c_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(io::Error::from);
    }
    // The top itself must not be a mount point (its parent is on the same mount).
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        let pn = node_at(libc::AT_FDCWD, &cpath(parent)?)?;
        if pn.crossed_by(&top) {
            return Err(refusal(&[path.to_path_buf()]));
        }
    }
    let fd = open_dir_at(libc::AT_FDCWD, &c)?;
    let mut refused = vec![];
    remove_contents(&fd, path, &top, &mut refused)?;
    drop(fd);
    match nix::unistd::unlinkat(None, c.as_c_str(), UnlinkatFlags::RemoveDir) {
        Ok(()) if refused.is_empty() => Ok(()),
        Ok(()) => Err(refusal(&refused)),
        Err(Errno::ENOTEMPTY) if !refused.is_empty() => Err(refusal(&refused)),
        Err(e) => Err(e.into()),
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
    root: &Node,
    refused: &mut Vec<PathBuf>,
) -> io::Result<()> {
    for name in list_dir(fd)? {
        let child_path = path.join(OsStr::from_bytes(name.as_bytes()));
        let node = match node_at(fd.as_raw_fd(), &name) {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
            Err(e) => return Err(e),
        };
        if root.crossed_by(&node) {
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
            remove_contents(&sub, &child_path, root, refused)?;
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
mod tests {
    use super::*;

    #[test]
    fn mountinfo_parsing() {
        let info = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                    90 27 0:50 / /var/lib/isobench/runs/r1/scratch/a\\040b rw - tmpfs tmpfs rw\n\
                    91 90 0:51 / /var/lib/isobench/runs/r1/scratch/a\\040b/proc rw - proc proc rw\n\
                    92 27 0:52 / /var/lib/isobench/runs/r10 rw - tmpfs tmpfs rw\n";
        let under = mounts_under(info, Path::new("/var/lib/isobench/runs/r1"));
        assert_eq!(
            under,
            vec![
                PathBuf::from("/var/lib/isobench/runs/r1/scratch/a b"),
                PathBuf::from("/var/lib/isobench/runs/r1/scratch/a b/proc"),
            ]
        );
        let ordered = order_for_unmount(under);
        assert_eq!(
            ordered[0],
            PathBuf::from("/var/lib/isobench/runs/r1/scratch/a b/proc")
        );
        assert_eq!(unescape_mount_path("a\\134b\\011"), PathBuf::from("a\\b\t"));
    }

    #[test]
    fn removes_tree_but_not_symlink_targets() {
        let d = tempfile::tempdir().unwrap();
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::fs::write(outside.join("precious"), b"keep").unwrap();
        let tree = d.path().join("tree");
        std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
        std::fs::write(tree.join("a/b/c/f"), b"x").unwrap();
        std::os::unix::fs::symlink(&outside, tree.join("a/link-dir")).unwrap();
        std::os::unix::fs::symlink(outside.join("precious"), tree.join("link-file")).unwrap();
        safe_remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
        // Missing is fine; a symlink given as the top is removed, not followed.
        safe_remove_tree(&tree).unwrap();
        let top_link = d.path().join("top-link");
        std::os::unix::fs::symlink(&outside, &top_link).unwrap();
        safe_remove_tree(&top_link).unwrap();
        assert!(outside.join("precious").exists());
    }

    /// Privileged: a bind mount inside the tree is refused, its data survives.
    #[test]
    fn refuses_to_cross_a_bind_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED refuses_to_cross_a_bind_mount: needs root");
            assert!(
                std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "refuses_to_cross_a_bind_mount needs root"
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let data = d.path().join("data");
        std::fs::create_dir(&data).unwrap();
        std::fs::write(data.join("precious"), b"keep").unwrap();
        let tree = d.path().join("tree");
        let mnt = tree.join("sub/mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        std::fs::write(tree.join("sub/other"), b"x").unwrap();
        nix::mount::mount(
            Some(&data),
            &mnt,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let res = safe_remove_tree(&tree);
        let precious_ok = std::fs::read(data.join("precious")).ok();
        let umount = nix::mount::umount2(&mnt, nix::mount::MntFlags::empty());
        let err = res.expect_err("must refuse a mount point inside the tree");
        assert!(err.to_string().contains("mount point"), "{err}");
        assert_eq!(precious_ok.as_deref(), Some(&b"keep"[..]));
        umount.unwrap();
        // A bind mount given as the top is refused as well.
        nix::mount::mount(
            Some(&data),
            &mnt,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap();
        let res = safe_remove_tree(&mnt);
        nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).unwrap();
        assert!(res.is_err());
        assert!(data.join("precious").exists());
        // Once unmounted the tree goes.
        safe_remove_tree(&tree).unwrap();
        assert!(!tree.exists());
        assert!(data.join("precious").exists());
    }
}
