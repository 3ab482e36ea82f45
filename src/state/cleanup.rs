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
use std::fs::File;
use std::io;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::Serialize;

use crate::backend::resources::{remove_lxc_container, remove_oci_container};
use crate::host::cgroup;
use crate::host::fs::{mounts_under, order_for_unmount, safe_remove_tree};
use crate::host::net::{remove_iptables_rule, remove_link};
use crate::host::proc::{process_start_time, restore_sysctl};
use crate::state::ledger::{
    flock, read_ledger, valid_run_id, write_ledger, Ledger, Resource, StateDir, LEDGER_FILE,
    LOCK_FILE,
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

#[cfg(test)]
mod tests;
