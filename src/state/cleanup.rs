//! Recovery: remove what a killed or failed run left behind, and only that.
//!
//! For every run whose lock is free and whose owner (pid + start time) is gone, every ledger
//! entry is first checked against what isobench could have made ([`validate`]); a refused
//! entry is reported ("refused: <why>") and left alone, with the ledger kept for a human. Then,
//! in RELIABILITY rule 2's order: remove the runtimes' containers, kill the processes of its
//! validated cgroups and its validated processes (pid + start time, in one of its cgroups or
//! marked with its run id) and wait for them, unmount its recorded mounts and any mount below
//! its directory (deepest first, plain umount: never lazy-unmount-then-delete), remove its
//! cgroups (deepest first), delete its network devices, tables and rules, restore its sysctls,
//! then remove its files with [`safe_remove_tree`], which never crosses into another mount and
//! never follows a symlink. After each step the ledger is rewritten without what is gone, so an
//! interrupted cleanup resumes; the ledger and the lock go last.
//!
//! What this does not protect against: a process that escaped its cgroup and was never recorded,
//! or a mount made in another mount namespace (those die with their namespace).

pub mod validate;

use std::collections::BTreeSet;
use std::ffi::{CStr, CString, OsStr};
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::sys::signal::{kill, Signal};
use nix::sys::stat::Mode;
use nix::unistd::{Pid, UnlinkatFlags};
use serde::Serialize;

use crate::host::cgroup;
use crate::state::ledger::{
    flock, process_start_time, read_ledger, valid_run_id, write_ledger, Ledger, Resource, StateDir,
    LEDGER_FILE, LOCK_FILE,
};
use validate::{validate, RunContext, Verdict};

/// How long cleanup waits for killed processes to go away.
const KILL_SETTLE: Duration = Duration::from_secs(5);

/// What cleanup did for one run directory.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RunCleanup {
    pub run_dir: PathBuf,
    /// Why the run was left alone (its owner is alive, its ledger is unreadable).
    pub skipped: Option<String>,
    /// The run is alive (its lock is held or its owner runs): what it uses must stay, e.g.
    /// the cached Docker image.
    pub live: bool,
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
    /// Ledger entries refused as not isobench's (left alone, kept in the ledger), with why.
    pub refused: Vec<String>,
    /// Things left as they are on purpose (a sysctl someone else changed since), with why.
    pub notes: Vec<String>,
    pub dir_removed: bool,
    /// Every step that failed, saying what to do (refusals are repeated here).
    pub errors: Vec<String>,
}

/// What `cleanup` did, per run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct CleanupReport {
    pub runs: Vec<RunCleanup>,
}

impl CleanupReport {
    pub fn is_clean(&self) -> bool {
        self.runs
            .iter()
            .all(|r| r.errors.is_empty() && r.refused.is_empty())
    }
}

/// Clean every run in `state` whose lock is free and whose owner is no longer alive. A run in
/// progress, an unreadable ledger or a directory that is not a run is left alone, saying why.
pub fn cleanup(state: &StateDir) -> CleanupReport {
    CleanupReport {
        runs: state.run_dirs().iter().map(|d| cleanup_dir(d)).collect(),
    }
}

fn skipped(dir: &Path, why: String) -> RunCleanup {
    RunCleanup {
        run_dir: dir.to_path_buf(),
        skipped: Some(why),
        ..Default::default()
    }
}

/// Clean one entry of `runs/`, holding its lock meanwhile (a concurrent cleanup or a run that
/// takes the lock sees it busy).
fn cleanup_dir(dir: &Path) -> RunCleanup {
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
    let is_dir = std::fs::symlink_metadata(dir).is_ok_and(|m| m.is_dir());
    if !valid_run_id(name) || !is_dir {
        return skipped(
            dir,
            format!(
                "not a run directory: left alone; remove {} by hand if it is not needed",
                dir.display()
            ),
        );
    }
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(LOCK_FILE));
    let lock = match lock {
        Ok(f) if f.metadata().is_ok_and(|m| m.is_file()) => f,
        Ok(_) | Err(_) => {
            return skipped(
                dir,
                format!(
                    "its lock file {} cannot be opened: inspect it by hand; nothing was touched",
                    dir.join(LOCK_FILE).display()
                ),
            )
        }
    };
    match flock(&lock, libc::LOCK_EX | libc::LOCK_NB) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EWOULDBLOCK) => {
            return RunCleanup {
                live: true,
                ..skipped(
                    dir,
                    "the run is in progress (its lock is held): left alone".into(),
                )
            }
        }
        Err(e) => return skipped(dir, format!("locking it: {e}; nothing was touched")),
    }
    match read_ledger(dir) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => remove_unrecorded_run_dir(dir, &lock),
        Err(e) => skipped(
            dir,
            format!(
                "ledger unreadable ({e}): inspect {} by hand; nothing was touched",
                dir.join(LEDGER_FILE).display()
            ),
        ),
        Ok(l) => match l
            .owner
            .as_ref()
            .filter(|o| owner_alive(o.pid, o.start_time))
        {
            Some(o) => RunCleanup {
                live: true,
                ..skipped(dir, format!("owner pid {} is still running", o.pid))
            },
            None => cleanup_locked(dir, &l, &lock),
        },
    }
}

/// A run directory without a ledger: one whose cleanup was interrupted after the ledger went,
/// or whose owner died before writing it. Only a lock and an empty `scratch/` can be there
/// then; anything else is left for a human.
fn remove_unrecorded_run_dir(dir: &Path, _lock: &File) -> RunCleanup {
    let mut r = RunCleanup {
        run_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let entries: Vec<_> = std::fs::read_dir(dir)
        .map(|rd| rd.flatten().map(|e| e.file_name()).collect())
        .unwrap_or_default();
    let expected = entries.iter().all(|n| n == LOCK_FILE || n == "scratch");
    let scratch_empty = std::fs::read_dir(dir.join("scratch"))
        .map(|mut rd| rd.next().is_none())
        .unwrap_or(true);
    if !expected || !scratch_empty {
        r.skipped = Some(format!(
            "no ledger, but files are left in {}: nothing recorded what they are; inspect and remove them by hand",
            dir.display()
        ));
        return r;
    }
    let done = match std::fs::remove_dir(dir.join("scratch")) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => std::fs::remove_file(dir.join(LOCK_FILE)).and_then(|()| std::fs::remove_dir(dir)),
    };
    match done {
        Ok(()) => r.dir_removed = true,
        Err(e) => r.errors.push(format!("removing {}: {e}", dir.display())),
    }
    r
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
    cleanup_validated(run_dir, ledger)
}

fn cleanup_locked(run_dir: &Path, ledger: &Ledger, _lock: &File) -> RunCleanup {
    cleanup_validated(run_dir, ledger)
}

/// The ledger entries still to do, rewritten to disk after every step (resumable cleanup).
struct Pending<'a> {
    run_dir: &'a Path,
    ledger: Ledger,
}

impl Pending<'_> {
    fn release(&mut self, done: &[Resource], r: &mut RunCleanup) {
        if done.is_empty() {
            return;
        }
        self.ledger.resources.retain(|x| !done.contains(x));
        let path = self.run_dir.join(LEDGER_FILE);
        if std::fs::symlink_metadata(&path).is_ok_and(|m| m.is_file()) {
            if let Err(e) = write_ledger(self.run_dir, &self.ledger) {
                r.errors.push(format!(
                    "rewriting {}: {e}; run `isobench cleanup` again",
                    path.display()
                ));
            }
        }
    }
}

fn refuse(r: &mut RunCleanup, x: &Resource, why: impl std::fmt::Display) {
    let msg = format!("refused: {x:?}: {why}; left alone and kept in the ledger");
    tracing::warn!("{msg}");
    r.refused.push(msg.clone());
    r.errors.push(msg);
}

fn cleanup_validated(run_dir: &Path, ledger: &Ledger) -> RunCleanup {
    let mut r = RunCleanup {
        run_dir: run_dir.to_path_buf(),
        ..Default::default()
    };
    let cx = match RunContext::new(run_dir, &ledger.run_id) {
        Ok(cx) => cx,
        Err(e) => {
            r.skipped = Some(format!(
                "refused: {e}; inspect {} by hand; nothing was touched",
                run_dir.join(LEDGER_FILE).display()
            ));
            r.refused.push(e.0.clone());
            r.errors.push(format!("refused: {e}"));
            return r;
        }
    };
    let mut pending = Pending {
        run_dir,
        ledger: ledger.clone(),
    };
    // Validate everything before acting on anything.
    let mut checked: Vec<(Resource, Resource)> = vec![];
    let mut gone: Vec<Resource> = vec![];
    for x in &ledger.resources {
        match validate(x, &cx) {
            Ok(Verdict::Act(c)) => checked.push((x.clone(), c)),
            Ok(Verdict::Gone) => gone.push(x.clone()),
            Err(e) => refuse(&mut r, x, e),
        }
    }
    pending.release(&gone, &mut r);

    // 0. Containers of the external runtimes: their own delete kills the container's
    //    processes and removes the cgroups, mounts and state the runtime made.
    let mut done = vec![];
    for (orig, x) in &checked {
        let res = match x {
            Resource::OciContainer { runtime, root, id } => {
                remove_oci_container(runtime, root, id).map(|removed| (removed, id.clone()))
            }
            Resource::LxcContainer { lxcpath, name } => {
                remove_lxc_container(lxcpath, name).map(|removed| (removed, name.clone()))
            }
            Resource::DockerContainer { name, id } => {
                crate::backend::runtimes::docker::remove_recorded_container(
                    name,
                    id.as_deref(),
                    &ledger.run_id,
                )
                .map(|removed| (removed, name.clone()))
            }
            _ => continue,
        };
        match res {
            Ok((removed, name)) => {
                if removed {
                    r.containers_removed.push(name);
                }
                done.push(orig.clone());
            }
            Err(e) => r.errors.push(e),
        }
    }
    pending.release(&done, &mut r);

    // 1. Kill: members of validated cgroups, and recorded processes that are in one of them
    //    or carry this run's marker (pid + start time), then wait.
    let cgroups: Vec<PathBuf> = checked
        .iter()
        .filter_map(|(_, x)| match x {
            Resource::Cgroup { path } => Some(path.clone()),
            _ => None,
        })
        .collect();
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
    let in_cgroups: Vec<i32> = victims.iter().map(|v| v.0).collect();
    let mut procs = vec![];
    for (orig, x) in &checked {
        if let Resource::Process { pid, start_time } = x {
            let environ = std::fs::read(format!("/proc/{pid}/environ")).ok();
            match validate::process_owned(*pid, &in_cgroups, environ.as_deref(), &cx.run_id) {
                Ok(()) => {
                    victims.push((*pid, *start_time));
                    procs.push(orig.clone());
                }
                Err(e) => refuse(&mut r, orig, e),
            }
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
    let mut survived = false;
    for &(p, st) in &victims {
        if owner_alive(p, st) {
            survived = true;
            r.errors.push(format!(
                "process {p} survived SIGKILL (uninterruptible sleep?): find what holds it, then run `isobench cleanup` again"
            ));
        }
    }
    if !survived {
        pending.release(&procs, &mut r);
    }

    // 2. Unmount: recorded mounts and every mount below the run's directories, deepest first
    //    (all inside the run directory: validated above).
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut mounts = mounts_under(&info, &cx.run_dir);
    let all = mounts_under(&info, Path::new("/"));
    let mut mount_entries = vec![];
    for (orig, x) in &checked {
        if let Resource::Mount { path } = x {
            if !mounts.contains(path) && all.contains(path) {
                mounts.push(path.clone());
            }
            mount_entries.push(orig.clone());
        }
    }
    let errors_before = r.errors.len();
    for m in order_for_unmount(mounts) {
        match nix::mount::umount2(&m, nix::mount::MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => r.unmounted.push(m),
            Err(Errno::EINVAL) | Err(Errno::ENOENT) => {} // not (or no longer) a mount point
            Err(e) => r.errors.push(format!(
                "unmounting {}: {e}; find the holder (fuser -vm {}) and run `isobench cleanup` again",
                m.display(),
                m.display()
            )),
        }
    }
    if r.errors.len() == errors_before {
        pending.release(&mount_entries, &mut r);
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
    let done: Vec<Resource> = checked
        .iter()
        .filter(|(_, x)| matches!(x, Resource::Cgroup { path } if !path.exists()))
        .map(|(o, _)| o.clone())
        .collect();
    pending.release(&done, &mut r);

    // 4. Network devices, tables and rules the run created (validated: prefix and mark).
    let mut done = vec![];
    for (orig, x) in &checked {
        let res = match x {
            Resource::Link { name } => remove_link(name).map(|removed| {
                if removed {
                    r.links_removed.push(name.clone());
                }
            }),
            // By handle, and only if the comment still says this run (checked again here).
            Resource::NftTable { family, name } => {
                crate::backend::container::net::delete_owned_table(family, name, &ledger.run_id)
                    .map_err(|e| e.to_string())
                    .map(|removed| {
                        if removed {
                            r.nft_tables_removed.push(format!("{family} {name}"));
                        }
                    })
            }
            Resource::IptablesRule { table, chain, rule } => {
                remove_iptables_rule(table, chain, rule).map(|removed| {
                    if removed {
                        r.iptables_rules_removed
                            .push(format!("{table} {chain} {}", rule.join(" ")));
                    }
                })
            }
            // 4c. Sysctls: back to what they were, only while they hold what the run set.
            Resource::Sysctl { path, restore, set } => {
                let current = std::fs::read_to_string(path).unwrap_or_default();
                match validate::sysctl_restore(&current, restore, set) {
                    Ok(v) => {
                        restore_sysctl(path, v).map(|()| r.sysctls_restored.push(path.clone()))
                    }
                    Err(why) => {
                        r.notes.push(format!("sysctl {}: {why}", path.display()));
                        Ok(())
                    }
                }
            }
            _ => continue,
        };
        match res {
            Ok(()) => done.push(orig.clone()),
            Err(e) => r.errors.push(e),
        }
    }
    pending.release(&done, &mut r);

    // 5. Files, only once everything above is gone (the ledger stays for a retry otherwise;
    //    refused entries are not this run's and do not hold anything of it).
    let failed = |r: &RunCleanup| r.errors.len() > r.refused.len();
    if !failed(&r) {
        let mut done = vec![];
        for (orig, x) in &checked {
            if let Resource::Dir { path } | Resource::File { path } = x {
                match safe_remove_tree(path) {
                    Ok(()) => done.push(orig.clone()),
                    Err(e) => r.errors.push(format!("removing {}: {e}", path.display())),
                }
            }
        }
        pending.release(&done, &mut r);
    }
    // 6. The run directory: everything but the ledger and the lock, then the ledger, then the
    //    lock and the directory. Refused entries keep the ledger (and so the directory).
    if !failed(&r) && r.refused.is_empty() {
        match remove_run_dir(&cx.run_dir) {
            Ok(()) => r.dir_removed = true,
            Err(e) => r
                .errors
                .push(format!("removing {}: {e}", run_dir.display())),
        }
    }
    r
}

/// Remove a run directory so that an interruption at any point leaves a ledger to resume from
/// until only the lock is left: the contents first, then `ledger.json`, then `lock`, then the
/// directory itself.
fn remove_run_dir(dir: &Path) -> io::Result<()> {
    let md = match std::fs::symlink_metadata(dir) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    if !md.is_dir() {
        return Err(io::Error::other(format!(
            "{} is not a directory: inspect it by hand",
            dir.display()
        )));
    }
    for e in std::fs::read_dir(dir)? {
        let e = e?;
        let name = e.file_name();
        if name == LEDGER_FILE || name == LOCK_FILE {
            continue;
        }
        safe_remove_tree(&dir.join(&name))?;
    }
    for last in [LEDGER_FILE, LOCK_FILE] {
        match std::fs::remove_file(dir.join(last)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
    }
    std::fs::remove_dir(dir)
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

    /// Privileged: with the mountinfo fallback (kernels without STATX_MNT_ID), a bind mount of
    /// a directory of the same file system (same st_dev) inside the tree is still refused.
    #[test]
    fn mountinfo_fallback_refuses_a_same_fs_bind_mount() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED mountinfo_fallback_refuses_a_same_fs_bind_mount: needs root");
            assert!(
                std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "mountinfo_fallback_refuses_a_same_fs_bind_mount needs root"
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
        let bind = |target: &Path| {
            nix::mount::mount(
                Some(&data),
                target,
                None::<&str>,
                nix::mount::MsFlags::MS_BIND,
                None::<&str>,
            )
            .unwrap()
        };
        bind(&mnt);
        let res = safe_remove_tree_with(&tree, MountCheck::Mountinfo);
        let precious = std::fs::read(data.join("precious")).ok();
        let other_gone = !tree.join("sub/other").exists();
        let umount = nix::mount::umount2(&mnt, nix::mount::MntFlags::empty());
        let err = res.expect_err("must refuse a mount point inside the tree");
        assert!(err.to_string().contains("sub/mnt"), "{err}");
        assert_eq!(precious.as_deref(), Some(&b"keep"[..]));
        assert!(other_gone, "the rest of the tree is removed");
        umount.unwrap();
        // The mount given as the top, through a non-canonical path: refused too.
        bind(&mnt);
        let res = safe_remove_tree_with(&tree.join("sub/../sub/mnt"), MountCheck::Mountinfo);
        nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).unwrap();
        assert!(res.is_err());
        assert!(data.join("precious").exists());
        safe_remove_tree_with(&tree, MountCheck::Mountinfo).unwrap();
        assert!(!tree.exists());
        assert!(data.join("precious").exists());
    }

    fn ledger_of(rs: &crate::state::ledger::RunState, resources: Vec<Resource>) -> Ledger {
        Ledger {
            run_id: rs.id.clone(),
            owner: None,
            resources,
        }
    }

    #[test]
    fn live_runs_are_skipped_dead_ones_cleaned_last_files_last() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path().join("state")).unwrap();
        // In progress: lock held (and owner alive).
        let live = sd.begin_run("live").unwrap();
        // Dead: lock released, owner gone; a file in scratch recorded.
        let dead = sd.begin_run("dead").unwrap();
        let f = dead.scratch().join("data/f");
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(&f, b"x").unwrap();
        crate::state::ledger::write_ledger(
            &dead.dir,
            &ledger_of(
                &dead,
                vec![Resource::Dir {
                    path: dead.scratch().join("data"),
                }],
            ),
        )
        .unwrap();
        let dead_dir = dead.dir.clone();
        drop(dead);
        let report = cleanup(&sd);
        let by = |dir: &Path| report.runs.iter().find(|r| r.run_dir == dir).unwrap();
        let l = by(&live.dir);
        assert!(
            l.skipped.as_deref().unwrap().contains("in progress"),
            "{l:?}"
        );
        assert!(live.dir.join(LEDGER_FILE).exists());
        let x = by(&dead_dir);
        assert!(x.errors.is_empty() && x.dir_removed, "{x:?}");
        assert!(!dead_dir.exists());
        // A ledger naming another run: refused whole, nothing touched.
        let other = sd.begin_run("other").unwrap();
        let victim = other.scratch().join("keep");
        std::fs::write(&victim, b"k").unwrap();
        let mut l = ledger_of(
            &other,
            vec![Resource::File {
                path: victim.clone(),
            }],
        );
        l.run_id = "20000101-000000-00000000".into();
        crate::state::ledger::write_ledger(&other.dir, &l).unwrap();
        let other_dir = other.dir.clone();
        drop(other);
        let report = cleanup(&sd);
        let o = report.runs.iter().find(|r| r.run_dir == other_dir).unwrap();
        assert!(!o.refused.is_empty() && !o.dir_removed, "{o:?}");
        assert!(victim.exists());
    }

    #[test]
    fn run_dirs_without_a_ledger() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path().join("state")).unwrap();
        // Lock held, no ledger (a run between mkdir and its first ledger write): left alone.
        let busy = sd.begin_run("busy").unwrap();
        std::fs::remove_file(busy.dir.join(LEDGER_FILE)).unwrap();
        // Lock free, no ledger, nothing else (an interrupted cleanup): finished.
        let done = sd.begin_run("done").unwrap();
        std::fs::remove_file(done.dir.join(LEDGER_FILE)).unwrap();
        let done_dir = done.dir.clone();
        drop(done);
        // Lock free, no ledger, unknown files: left for a human.
        let odd = sd.begin_run("odd").unwrap();
        std::fs::remove_file(odd.dir.join(LEDGER_FILE)).unwrap();
        std::fs::write(odd.scratch().join("what"), b"?").unwrap();
        let odd_dir = odd.dir.clone();
        drop(odd);
        // Not a run directory at all.
        std::fs::create_dir(sd.runs_dir().join("not a run")).unwrap();
        let report = cleanup(&sd);
        let by = |dir: &Path| report.runs.iter().find(|r| r.run_dir == dir).unwrap();
        assert!(by(&busy.dir).skipped.is_some());
        assert!(busy.dir.join(LOCK_FILE).exists());
        assert!(by(&done_dir).dir_removed && !done_dir.exists());
        assert!(by(&odd_dir).skipped.is_some());
        assert!(odd_dir.join("scratch/what").exists());
        assert!(by(&sd.runs_dir().join("not a run")).skipped.is_some());
        assert!(sd.runs_dir().join("not a run").exists());
    }

    #[test]
    fn an_interrupted_cleanup_resumes_from_the_ledger() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        let a = rs.scratch().join("a");
        std::fs::create_dir(&a).unwrap();
        // A valid entry that goes, and an entry refused (outside): the ledger keeps only it.
        let outside = d.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let refused = Resource::Dir {
            path: outside.clone(),
        };
        let l = ledger_of(
            &rs,
            vec![Resource::Dir { path: a.clone() }, refused.clone()],
        );
        crate::state::ledger::write_ledger(&rs.dir, &l).unwrap();
        let r = cleanup_run(&rs.dir, &l);
        assert_eq!(r.refused.len(), 1, "{r:?}");
        assert!(!a.exists() && outside.exists());
        let kept = crate::state::ledger::read_ledger(&rs.dir).unwrap();
        assert_eq!(kept.resources, vec![refused]);
        assert!(rs.dir.exists(), "the ledger is kept for a human");
        // Remove order: contents, then the ledger, then the lock and the directory.
        std::fs::write(rs.scratch().join("x"), b"").unwrap();
        remove_run_dir(&rs.dir).unwrap();
        assert!(!rs.dir.exists());
    }
}
