//! A small cgroup manager for the container tier (youki's `AnyCgroupManager` idea, cut down):
//! one enum with a pure cgroup v2 variant and a v1 variant that holds one directory per mounted
//! hierarchy ([`Hierarchies`], read from mountinfo: `cpu,cpuacct` co-mounted is one directory).
//! Hybrid hosts (v1 controllers plus an empty v2 at `/sys/fs/cgroup/unified`) are driven
//! through their v1 controllers, where the limits live.
//!
//! Every directory is recorded in the run's ledger before it is created (RELIABILITY rule 1),
//! created exclusively (a directory that exists is never adopted: only the hierarchy's root is
//! pre-existing, every level below it is isobench's own, named `isobench-...` at the top), and
//! removed children first, without force: a cgroup that still holds processes is killed and
//! waited for, never "forced" (rule 2).
//!
//! v2 `cgroup.subtree_control`: a controller is usable in a cgroup only when its parent enables
//! it. On levels isobench created it enables what it needs (memory, cpu, and cpuset, pids when
//! offered); on the hierarchy root, which is not isobench's, only memory and cpu (required) and
//! pids (for `pids.max`), never cpuset. What it had to enable there is written to
//! `<run dir>/cgroup-subtree-changes.json` and logged; it is never disabled again, because other
//! cgroups (systemd's slices, Docker's) may have started to rely on it meanwhile and disabling a
//! controller drops every sibling's limits of that kind.

mod hierarchy;

pub use hierarchy::{Hierarchies, Hierarchy};

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

use crate::model::budget::Budget;
use crate::model::facts::CgroupLayout;
use crate::state::ledger::{Resource, RunState};

/// Where cgroup filesystems are mounted on every host isobench supports.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 controllers isobench uses (the hierarchies carrying them, one per mount).
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids"];
/// CFS period used for the CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
/// `pids.max` of every cgroup isobench or a runtime makes for a container: the agent needs a
/// handful of tasks plus one thread per CPU (threads are bounded at parse time far below
/// this), so 4096 never limits a workload, yet a fork bomb inside the container stops there
/// instead of exhausting the host's pid space.
pub const PIDS_MAX: u64 = 4096;
/// Where the v2 controllers isobench enabled on a level it did not create are listed.
pub const SUBTREE_CHANGES_FILE: &str = "cgroup-subtree-changes.json";
/// How long `kill_all` waits for a cgroup to empty, and `remove` retries a busy rmdir.
const SETTLE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup filesystem is mounted at {CGROUP_ROOT}: mount cgroup2 there (or use a host with systemd)")]
    NoCgroupFs,
    #[error("{what} {path}: {source} (are you root, and is the cgroup filesystem writable?)")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("recording cgroup {path} in the run ledger: {source} (check the state directory is writable)")]
    Ledger {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cgroup v2 controller '{controller}' is not offered in {path}: enable it in the parent's cgroup.subtree_control (systemd: Delegate=yes)")]
    ControllerMissing { controller: String, path: PathBuf },
    #[error("cgroup {path} still holds processes {pids:?} after SIGKILL and {SETTLE:?}: find what keeps them alive (D state?) and kill it, then run `isobench cleanup`")]
    StillPopulated { path: PathBuf, pids: Vec<i32> },
    #[error("cgroup {path} already exists (another run's, a crashed run's or a user's): isobench never adopts a cgroup it did not create; run `isobench cleanup` if a crashed isobench run left it, otherwise remove it or run again")]
    Exists { path: PathBuf },
    #[error(
        "cgroup {path} stays busy: {source}; run `isobench cleanup` once its processes are gone"
    )]
    Busy {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError {
    let path = path.to_path_buf();
    move |source| CgroupError::Io { what, path, source }
}

/// One directory of a v1 cgroup: in the hierarchy mounted at `mount`, carrying `controllers`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct V1Dir {
    pub controllers: Vec<String>,
    pub mount: PathBuf,
    pub path: PathBuf,
}

impl V1Dir {
    fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// A controller isobench enabled in the `cgroup.subtree_control` of a level it did not create.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubtreeChange {
    pub level: PathBuf,
    pub controller: String,
}

/// One cgroup, in whichever hierarchy layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupManager {
    /// Unified hierarchy: one directory.
    V2 { path: PathBuf },
    /// Legacy hierarchies: one directory per mounted hierarchy isobench uses.
    V1 { dirs: Vec<V1Dir> },
}

impl CgroupManager {
    /// The manager for `rel` in `hier` without touching the filesystem (pure path building).
    /// `layout` is the host's: v1 and hybrid hosts use their v1 hierarchies.
    pub fn at(hier: &Hierarchies, layout: CgroupLayout, rel: &Path) -> Result<Self, CgroupError> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match layout {
            CgroupLayout::V2 => {
                let h = hier.v2().ok_or(CgroupError::NoCgroupFs)?;
                Ok(CgroupManager::V2 {
                    path: h.mount.join(rel),
                })
            }
            CgroupLayout::V1 | CgroupLayout::Hybrid => {
                let dirs: Vec<V1Dir> = hier
                    .v1_used()
                    .into_iter()
                    .map(|h| V1Dir {
                        controllers: h.controllers.clone(),
                        mount: h.mount.clone(),
                        path: h.mount.join(rel),
                    })
                    .collect();
                if dirs.is_empty() {
                    Err(CgroupError::NoCgroupFs)
                } else {
                    Ok(CgroupManager::V1 { dirs })
                }
            }
            CgroupLayout::None => Err(CgroupError::NoCgroupFs),
        }
    }

    /// Create `rel` (every level of it, each new: none is adopted) with the budget's memory
    /// limit, CPU quota and [`PIDS_MAX`], recording every directory in `state` before creating
    /// it. The hierarchies are this host's (mountinfo).
    pub fn create(
        layout: CgroupLayout,
        rel: &Path,
        budget: &Budget,
        state: &RunState,
    ) -> Result<Self, CgroupError> {
        Self::create_in(&Hierarchies::detect(), layout, rel, budget, state)
    }

    /// [`CgroupManager::create`] in given hierarchies (tests use a fake tree).
    pub fn create_in(
        hier: &Hierarchies,
        layout: CgroupLayout,
        rel: &Path,
        budget: &Budget,
        state: &RunState,
    ) -> Result<Self, CgroupError> {
        let m = Self::at(hier, layout, rel)?;
        let mut created = vec![];
        match m.build(rel, budget, state, &mut created) {
            Ok(()) => Ok(m),
            Err(e) => {
                // Undo this call's directories (deepest first); what cannot be removed stays in
                // the ledger for `isobench cleanup`.
                for d in created.iter().rev() {
                    if rmdir_retry(d).is_ok() {
                        let _ = state.release(&Resource::Cgroup { path: d.clone() });
                    }
                }
                Err(e)
            }
        }
    }

    fn build(
        &self,
        rel: &Path,
        budget: &Budget,
        state: &RunState,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match self {
            CgroupManager::V2 { path } => {
                // The hierarchy root: the path minus `rel`.
                let mut level = path.clone();
                for _ in rel.components() {
                    level.pop();
                }
                let root = level.clone();
                for comp in rel.components() {
                    if level == root {
                        let changes = enable_v2_controllers(&level, false)?;
                        note_subtree_changes(state, &changes);
                    } else {
                        enable_v2_controllers(&level, true)?;
                    }
                    level.push(comp);
                    make_dir(&level, state, created)?;
                }
            }
            CgroupManager::V1 { dirs } => {
                for d in dirs {
                    let mut level = d.mount.clone();
                    for comp in rel.components() {
                        level.push(comp);
                        make_dir(&level, state, created)?;
                        if d.has("cpuset") {
                            init_v1_cpuset(&level, budget)?;
                        }
                    }
                }
            }
        }
        self.apply_limits(budget)
    }

    /// Write the budget's limits (and [`PIDS_MAX`]) into every directory of this cgroup.
    fn apply_limits(&self, budget: &Budget) -> Result<(), CgroupError> {
        match self {
            CgroupManager::V2 { path } => {
                write(
                    &path.join("memory.max"),
                    &budget_memory_bytes(budget).to_string(),
                )?;
                write(&path.join("cpu.max"), &cpu_max_line(budget.cpus.len()))?;
                if path.join("cpuset.cpus").exists() {
                    write(&path.join("cpuset.cpus"), &cpu_list(&budget.cpus))?;
                }
                // There when the parent enabled pids (offered by the kernel): else no bound,
                // which doctor reports.
                if parent_enables(path, "pids") {
                    write(&path.join("pids.max"), &PIDS_MAX.to_string())?;
                }
            }
            CgroupManager::V1 { dirs } => {
                for d in dirs {
                    if d.has("memory") {
                        write(
                            &d.path.join("memory.limit_in_bytes"),
                            &budget_memory_bytes(budget).to_string(),
                        )?;
                    }
                    if d.has("cpu") {
                        let (quota, period) = cpu_quota_us(budget.cpus.len());
                        write(&d.path.join("cpu.cfs_period_us"), &period.to_string())?;
                        write(&d.path.join("cpu.cfs_quota_us"), &quota.to_string())?;
                    }
                    if d.has("pids") {
                        write(&d.path.join("pids.max"), &PIDS_MAX.to_string())?;
                    }
                }
            }
        }
        Ok(())
    }

    /// Create this cgroup, whose parent exists, with the budget's limits, WITHOUT touching the
    /// ledger: the caller has recorded every directory of [`CgroupManager::dirs`] beforehand
    /// (per launch, in one ledger write kept off the launch clock). A directory that already
    /// exists is never adopted; on failure the directories this call made are removed again.
    pub fn create_recorded(&self, budget: &Budget) -> Result<(), CgroupError> {
        let mut made: Vec<&Path> = vec![];
        let res = (|| {
            for d in self.dirs() {
                // The parent is isobench's own run-level cgroup.
                if let (CgroupManager::V2 { .. }, Some(parent)) = (self, d.parent()) {
                    enable_v2_controllers(parent, true)?;
                }
                match std::fs::create_dir(d) {
                    Ok(()) => made.push(d),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(CgroupError::Exists { path: d.into() })
                    }
                    Err(e) => return Err(io("creating cgroup", d)(e)),
                }
            }
            if let CgroupManager::V1 { dirs } = self {
                for d in dirs.iter().filter(|d| d.has("cpuset")) {
                    init_v1_cpuset(&d.path, budget)?;
                }
            }
            self.apply_limits(budget)
        })();
        if res.is_err() {
            for d in made.iter().rev() {
                let _ = rmdir_retry(d);
            }
        }
        res
    }

    /// The files a task writes "0" into to move itself into this cgroup: v1 `tasks` (moving
    /// one thread, the caller itself, skips the global threadgroup lock and the RCU grace
    /// period that a `cgroup.procs` write costs; a single-threaded process moves whole), v2
    /// `cgroup.procs`.
    pub fn self_join_files(&self) -> Vec<PathBuf> {
        match self {
            CgroupManager::V2 { path } => vec![path.join("cgroup.procs")],
            CgroupManager::V1 { dirs } => dirs.iter().map(|d| d.path.join("tasks")).collect(),
        }
    }

    /// Every directory of this cgroup (one on v2, one per mounted hierarchy on v1).
    pub fn dirs(&self) -> Vec<&Path> {
        match self {
            CgroupManager::V2 { path } => vec![path.as_path()],
            CgroupManager::V1 { dirs } => dirs.iter().map(|d| d.path.as_path()).collect(),
        }
    }

    /// Move `pid` into this cgroup (every hierarchy).
    pub fn add_pid(&self, pid: Pid) -> Result<(), CgroupError> {
        for d in self.dirs() {
            write(&d.join("cgroup.procs"), &pid.as_raw().to_string())?;
        }
        Ok(())
    }

    /// The pids in this cgroup and every cgroup below it (union over the hierarchies).
    pub fn procs(&self) -> Result<Vec<i32>, CgroupError> {
        let mut pids = BTreeSet::new();
        for d in self.dirs() {
            for dir in subtree_dirs(d)? {
                match std::fs::read_to_string(dir.join("cgroup.procs")) {
                    Ok(s) => pids.extend(parse_pids(&s)),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(io("reading cgroup.procs in", &dir)(e)),
                }
            }
        }
        Ok(pids.into_iter().collect())
    }

    /// SIGKILL every process in the cgroup (and below), then wait until it is empty, bounded.
    pub fn kill_all(&self) -> Result<(), CgroupError> {
        let deadline = Instant::now() + SETTLE;
        let mut pause = Duration::from_micros(200);
        loop {
            let pids = self.procs()?;
            if pids.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(CgroupError::StillPopulated {
                    path: self.dirs()[0].to_path_buf(),
                    pids,
                });
            }
            for p in pids {
                // A pid listed in cgroup.procs is alive or a zombie in this cgroup: not recycled.
                let _ = kill(Pid::from_raw(p), Signal::SIGKILL);
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_millis(20));
        }
    }

    /// Remove the cgroup, children first, retrying briefly while the kernel still reports it
    /// busy (a just-reaped task can take a moment to leave). Never forces anything.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for d in self.dirs() {
            let mut all = subtree_dirs(d)?;
            // Deepest first.
            all.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
            for dir in all {
                rmdir_retry(&dir)?;
            }
        }
        Ok(())
    }

    /// Memory in use now, bytes (v2 memory.current, v1 memory.usage_in_bytes).
    pub fn memory_current_bytes(&self) -> Option<u64> {
        self.read_u64(&[
            ("memory.current", None),
            ("memory.usage_in_bytes", Some("memory")),
        ])
    }

    /// Peak memory, bytes (v2 memory.peak on Linux 5.19+, v1 memory.max_usage_in_bytes).
    pub fn memory_peak_bytes(&self) -> Option<u64> {
        self.read_u64(&[
            ("memory.peak", None),
            ("memory.max_usage_in_bytes", Some("memory")),
        ])
    }

    /// CPU time consumed, nanoseconds (v2 cpu.stat usage_usec, v1 cpuacct.usage).
    pub fn cpu_usage_ns(&self) -> Option<u64> {
        match self {
            CgroupManager::V2 { path } => std::fs::read_to_string(path.join("cpu.stat"))
                .ok()
                .and_then(|s| parse_keyed(&s, "usage_usec"))
                .and_then(|us| us.checked_mul(1000)),
            CgroupManager::V1 { .. } => self.read_u64(&[("cpuacct.usage", Some("cpuacct"))]),
        }
    }

    fn read_u64(&self, files: &[(&str, Option<&str>)]) -> Option<u64> {
        for (file, v1_controller) in files {
            let dir = match (self, v1_controller) {
                (CgroupManager::V2 { path }, None) => Some(path.as_path()),
                (CgroupManager::V1 { dirs }, Some(c)) => {
                    dirs.iter().find(|d| d.has(c)).map(|d| d.path.as_path())
                }
                _ => None,
            };
            if let Some(v) = dir
                .and_then(|d| std::fs::read_to_string(d.join(file)).ok())
                .and_then(|s| s.trim().parse().ok())
            {
                return Some(v);
            }
        }
        None
    }
}

/// `doctor`'s cgroup line (after "cgroups   "): the layout, the hierarchies isobench uses
/// (a co-mounted one as `cpu,cpuacct`), whether containers get a `pids.max`, and on v2 which
/// controllers isobench would enable in the root's subtree_control (and leave enabled).
pub fn doctor_line(layout: CgroupLayout, hier: &Hierarchies) -> String {
    let mut s = format!("{layout:?}").to_lowercase();
    match layout {
        CgroupLayout::None => return s,
        CgroupLayout::V2 => {
            if let Some(h) = hier.v2() {
                let read = |f: &str| std::fs::read_to_string(h.mount.join(f)).unwrap_or_default();
                match controllers_to_enable_at(
                    &read("cgroup.controllers"),
                    &read("cgroup.subtree_control"),
                    false,
                ) {
                    Ok(v) if v.is_empty() => {}
                    Ok(v) => s.push_str(&format!(
                        "; the container tier enables {} in {}/cgroup.subtree_control (not isobench's) and leaves it enabled",
                        v.iter().map(|c| format!("+{c}")).collect::<Vec<_>>().join(" "),
                        h.mount.display()
                    )),
                    Err(c) => s.push_str(&format!(
                        "; controller {c} is not offered at {}: the container tier cannot set its limits",
                        h.mount.display()
                    )),
                }
            }
        }
        CgroupLayout::V1 | CgroupLayout::Hybrid => {
            let names: Vec<String> = hier
                .v1_used()
                .iter()
                .map(|h| h.controllers.join(","))
                .collect();
            s.push_str(&format!(" (v1 hierarchies used: {})", names.join(" ")));
        }
    }
    if !hier.has_pids(layout) {
        s.push_str(
            "; no pids controller: containers get no pids.max (mount the pids controller to bound them)",
        );
    }
    s
}

/// The memory budget in bytes.
pub fn budget_memory_bytes(budget: &Budget) -> u64 {
    budget.memory_mib.saturating_mul(1024 * 1024)
}

/// v1 (quota, period) in microseconds for `cpus` CPUs; quota -1 (unlimited) for zero CPUs.
pub fn cpu_quota_us(cpus: usize) -> (i64, u64) {
    let quota = u64::try_from(cpus)
        .ok()
        .and_then(|n| n.checked_mul(CPU_PERIOD_US))
        .and_then(|q| i64::try_from(q).ok())
        .filter(|&q| q > 0)
        .unwrap_or(-1);
    (quota, CPU_PERIOD_US)
}

/// v2 cpu.max line for `cpus` CPUs ("200000 100000", or "max 100000").
pub fn cpu_max_line(cpus: usize) -> String {
    match cpu_quota_us(cpus) {
        (q, p) if q > 0 => format!("{q} {p}"),
        (_, p) => format!("max {p}"),
    }
}

/// A cpuset list ("0-1,3") for CPU indices.
pub fn cpu_list(cpus: &[usize]) -> String {
    let mut v: Vec<usize> = cpus.to_vec();
    v.sort_unstable();
    v.dedup();
    let mut parts = vec![];
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        let mut end = start;
        while i + 1 < v.len() && v[i + 1] == end + 1 {
            i += 1;
            end = v[i];
        }
        parts.push(if start == end {
            start.to_string()
        } else {
            format!("{start}-{end}")
        });
        i += 1;
    }
    parts.join(",")
}

/// Pids from a cgroup.procs file.
pub fn parse_pids(s: &str) -> Vec<i32> {
    s.split_whitespace()
        .filter_map(|t| t.parse().ok())
        .collect()
}

/// A "key value" line's value (cpu.stat, memory.stat).
pub fn parse_keyed(s: &str, key: &str) -> Option<u64> {
    s.lines().find_map(|l| {
        let mut it = l.split_whitespace();
        (it.next() == Some(key))
            .then(|| it.next().and_then(|v| v.parse().ok()))
            .flatten()
    })
}

/// The controllers to enable below a level isobench created, given its cgroup.controllers and
/// cgroup.subtree_control contents: memory and cpu are required, cpuset and pids optional.
pub fn controllers_to_enable(
    available: &str,
    enabled: &str,
) -> Result<Vec<&'static str>, &'static str> {
    controllers_to_enable_at(available, enabled, true)
}

/// [`controllers_to_enable`] for a level isobench created (`owned`) or not: on a level that is
/// not isobench's, only what a limit needs (memory, cpu; pids when offered), never cpuset.
pub fn controllers_to_enable_at(
    available: &str,
    enabled: &str,
    owned: bool,
) -> Result<Vec<&'static str>, &'static str> {
    let avail: Vec<&str> = available.split_whitespace().collect();
    let on: Vec<&str> = enabled.split_whitespace().collect();
    let mut out = vec![];
    for (c, required, foreign_ok) in [
        ("memory", true, true),
        ("cpu", true, true),
        ("cpuset", false, false),
        ("pids", false, true),
    ] {
        if on.contains(&c) || !(owned || foreign_ok) {
            continue;
        }
        if avail.contains(&c) {
            out.push(c);
        } else if required {
            return Err(c);
        }
    }
    Ok(out)
}

/// Enable what isobench needs in `level`'s cgroup.subtree_control (see the module doc for
/// `owned`); returns what it enabled.
fn enable_v2_controllers(level: &Path, owned: bool) -> Result<Vec<SubtreeChange>, CgroupError> {
    let read =
        |f: &str| std::fs::read_to_string(level.join(f)).map_err(io("reading", &level.join(f)));
    let want = controllers_to_enable_at(
        &read("cgroup.controllers")?,
        &read("cgroup.subtree_control")?,
        owned,
    )
    .map_err(|c| CgroupError::ControllerMissing {
        controller: c.into(),
        path: level.join("cgroup.controllers"),
    })?;
    let mut done = vec![];
    for c in want {
        write(&level.join("cgroup.subtree_control"), &format!("+{c}"))?;
        done.push(SubtreeChange {
            level: level.to_path_buf(),
            controller: c.to_string(),
        });
    }
    Ok(done)
}

/// Does the parent of `dir` list `controller` in its cgroup.subtree_control?
fn parent_enables(dir: &Path, controller: &str) -> bool {
    dir.parent()
        .and_then(|p| std::fs::read_to_string(p.join("cgroup.subtree_control")).ok())
        .is_some_and(|s| {
            s.split_whitespace()
                .any(|c| c.trim_start_matches('+') == controller)
        })
}

/// Add `changes` to the run's [`SUBTREE_CHANGES_FILE`] and log them. Best effort: the list is
/// informational (nothing is ever disabled again), a failure to write it is logged.
fn note_subtree_changes(state: &RunState, changes: &[SubtreeChange]) {
    if changes.is_empty() {
        return;
    }
    for c in changes {
        tracing::warn!(
            "enabled the cgroup v2 controller {} in {}/cgroup.subtree_control (not isobench's; left enabled)",
            c.controller,
            c.level.display()
        );
    }
    let path = state.dir.join(SUBTREE_CHANGES_FILE);
    let mut all = subtree_changes(&state.dir);
    all.extend(changes.iter().cloned());
    let json = serde_json::to_vec_pretty(&all).expect("changes serialise");
    if let Err(e) = crate::host::fs::write_atomic(&path, &json) {
        tracing::warn!("writing {}: {e}", path.display());
    }
}

/// The v2 controllers a run enabled on levels it did not create (its run directory's
/// [`SUBTREE_CHANGES_FILE`]; empty when there is none).
pub fn subtree_changes(run_dir: &Path) -> Vec<SubtreeChange> {
    std::fs::read(run_dir.join(SUBTREE_CHANGES_FILE))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// On v1 a new cpuset cgroup starts with no CPUs and no memory nodes, and no task can join it:
/// give a level in a hierarchy that carries cpuset (co-mounted with one isobench uses) the
/// budget's CPUs (its parent's when the budget names none) and its parent's memory nodes.
fn init_v1_cpuset(dir: &Path, budget: &Budget) -> Result<(), CgroupError> {
    let parent = dir.parent().unwrap_or(dir);
    let read = |f: &str| {
        std::fs::read_to_string(parent.join(f))
            .map(|s| s.trim().to_string())
            .map_err(io("reading", &parent.join(f)))
    };
    let cpus = if budget.cpus.is_empty() {
        read("cpuset.cpus")?
    } else {
        cpu_list(&budget.cpus)
    };
    write(&dir.join("cpuset.cpus"), &cpus)?;
    write(&dir.join("cpuset.mems"), &read("cpuset.mems")?)
}

/// Make one level, exclusively: record it, create it, and if it already exists forget the
/// record and refuse (another run's, or a user's: never adopted).
fn make_dir(dir: &Path, state: &RunState, created: &mut Vec<PathBuf>) -> Result<(), CgroupError> {
    let res = Resource::Cgroup {
        path: dir.to_path_buf(),
    };
    state
        .record(res.clone())
        .map_err(|source| CgroupError::Ledger {
            path: dir.to_path_buf(),
            source,
        })?;
    match std::fs::create_dir(dir) {
        Ok(()) => {
            created.push(dir.to_path_buf());
            Ok(())
        }
        Err(e) => {
            let _ = state.release(&res);
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                Err(CgroupError::Exists {
                    path: dir.to_path_buf(),
                })
            } else {
                Err(io("creating cgroup", dir)(e))
            }
        }
    }
}

/// Create each of `dirs` (recorded by the caller) exclusively: one that exists is refused,
/// never adopted. On failure the directories this call made are removed again (deepest
/// first) and the error returned; the caller forgets the records of those not made.
pub fn create_exclusive(dirs: &[PathBuf]) -> Result<(), CgroupError> {
    let mut made: Vec<&Path> = vec![];
    for d in dirs {
        match std::fs::create_dir(d) {
            Ok(()) => made.push(d),
            Err(e) => {
                for m in made.iter().rev() {
                    let _ = rmdir_retry(m);
                }
                return Err(if e.kind() == std::io::ErrorKind::AlreadyExists {
                    CgroupError::Exists { path: d.clone() }
                } else {
                    io("creating cgroup", d)(e)
                });
            }
        }
    }
    Ok(())
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    std::fs::write(path, value).map_err(io("writing", path))
}

/// `dir` and every directory below it (cgroup directories hold only cgroup files and child
/// cgroups). Missing `dir` yields nothing.
pub fn subtree_dirs(dir: &Path) -> Result<Vec<PathBuf>, CgroupError> {
    let mut out = vec![];
    let mut todo = vec![dir.to_path_buf()];
    while let Some(d) = todo.pop() {
        let rd = match std::fs::read_dir(&d) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(io("listing cgroup", &d)(e)),
        };
        for e in rd.flatten() {
            if e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                todo.push(e.path());
            }
        }
        out.push(d);
    }
    Ok(out)
}

/// rmdir a cgroup directory; retry on EBUSY for a bounded time; missing is fine.
pub fn rmdir_retry(dir: &Path) -> Result<(), CgroupError> {
    let deadline = Instant::now() + SETTLE;
    let mut pause = Duration::from_micros(100);
    loop {
        match std::fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if e.raw_os_error() == Some(Errno::EBUSY as i32) => {
                if Instant::now() >= deadline {
                    return Err(CgroupError::Busy {
                        path: dir.to_path_buf(),
                        source: e,
                    });
                }
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(20));
            }
            Err(e) => return Err(io("removing cgroup", dir)(e)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::ledger::StateDir;

    #[test]
    fn paths_per_layout() {
        let root = Path::new("/sys/fs/cgroup");
        let rel = Path::new("isobench-r1/launch-3");
        let v2 = Hierarchies::parse(hierarchy::tests::PURE_V2, root);
        assert_eq!(
            CgroupManager::at(&v2, CgroupLayout::V2, rel).unwrap(),
            CgroupManager::V2 {
                path: "/sys/fs/cgroup/isobench-r1/launch-3".into()
            }
        );
        let hybrid = Hierarchies::parse(hierarchy::tests::HYBRID, root);
        let m = CgroupManager::at(&hybrid, CgroupLayout::Hybrid, rel).unwrap();
        assert_eq!(
            m.dirs(),
            ["cpu", "cpuacct", "memory", "pids"]
                .map(|c| root.join(c).join(rel))
                .iter()
                .map(PathBuf::as_path)
                .collect::<Vec<_>>()
        );
        let co = Hierarchies::parse(&hierarchy::tests::comounted("/sys/fs/cgroup"), root);
        let m = CgroupManager::at(&co, CgroupLayout::V1, rel).unwrap();
        assert_eq!(
            m.dirs(),
            ["cpu,cpuacct", "memory", "pids"]
                .map(|c| root.join(c).join(rel))
                .iter()
                .map(PathBuf::as_path)
                .collect::<Vec<_>>()
        );
        assert!(CgroupManager::at(&hybrid, CgroupLayout::None, rel).is_err());
        assert!(CgroupManager::at(&v2, CgroupLayout::V1, rel).is_err());
        assert!(CgroupManager::at(&Hierarchies::default(), CgroupLayout::V2, rel).is_err());
    }

    #[test]
    fn cpu_and_list_formats() {
        assert_eq!(cpu_max_line(2), "200000 100000");
        assert_eq!(cpu_max_line(0), "max 100000");
        assert_eq!(cpu_quota_us(1), (100_000, 100_000));
        assert_eq!(cpu_list(&[3, 0, 1, 5, 6, 7]), "0-1,3,5-7");
        assert_eq!(cpu_list(&[]), "");
    }

    #[test]
    fn parsers() {
        assert_eq!(parse_pids("12\n 7\n\n"), vec![12, 7]);
        let stat = "usage_usec 1234\nuser_usec 1000\nsystem_usec 234\n";
        assert_eq!(parse_keyed(stat, "usage_usec"), Some(1234));
        assert_eq!(parse_keyed(stat, "nr_periods"), None);
        assert_eq!(
            controllers_to_enable("cpuset cpu io memory pids", "cpu"),
            Ok(vec!["memory", "cpuset", "pids"])
        );
        assert_eq!(controllers_to_enable("cpu io", ""), Err("memory"));
    }

    fn budget() -> Budget {
        Budget {
            cpus: vec![0, 1],
            memory_mib: 64,
        }
    }

    /// A fake cgroup root: a directory per mount point of `mountinfo` (mimicking the kernel's
    /// cgroup.procs and, for cpuset, its cpus and mems), plus the `cpu`/`cpuacct` symlinks a
    /// systemd host makes to a co-mounted `cpu,cpuacct`.
    fn fake_tree(root: &Path, mountinfo: &str) -> Hierarchies {
        let hier = Hierarchies::parse(mountinfo, root);
        for h in &hier.all {
            std::fs::create_dir_all(&h.mount).unwrap();
            std::fs::write(h.mount.join("cgroup.procs"), "").unwrap();
            if h.has("cpuset") {
                std::fs::write(h.mount.join("cpuset.cpus"), "0-3").unwrap();
                std::fs::write(h.mount.join("cpuset.mems"), "0").unwrap();
            }
            if h.mount.ends_with("cpu,cpuacct") {
                std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpu")).unwrap();
                std::os::unix::fs::symlink("cpu,cpuacct", root.join("cpuacct")).unwrap();
            }
        }
        hier
    }

    fn read(p: &Path) -> String {
        std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
    }

    /// Co-mounted v1 (`cpu,cpuacct`, the systemd default): one directory per mount, each made
    /// once and recorded once, limits and readings in the hierarchy that carries them.
    #[test]
    fn comounted_v1_fake_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        let hier = fake_tree(&root, &hierarchy::tests::comounted(root.to_str().unwrap()));
        assert_eq!(hier.layout(), CgroupLayout::V1);
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        let rel = Path::new("isobench-r/launch-1");
        let m = CgroupManager::create_in(&hier, CgroupLayout::V1, rel, &budget(), &rs).unwrap();
        let cpu = root.join("cpu,cpuacct").join(rel);
        let mem = root.join("memory").join(rel);
        let pids = root.join("pids").join(rel);
        assert_eq!(m.dirs(), vec![cpu.as_path(), mem.as_path(), pids.as_path()]);
        assert_eq!(read(&cpu.join("cpu.cfs_quota_us")), "200000");
        assert_eq!(read(&cpu.join("cpu.cfs_period_us")), "100000");
        assert_eq!(read(&mem.join("memory.limit_in_bytes")), "67108864");
        assert_eq!(read(&pids.join("pids.max")), "4096");
        assert!(
            !mem.join("pids.max").exists(),
            "limits go to their own hierarchy"
        );
        // Every level recorded once, by its mount's real path (never through the symlinks).
        let recorded: Vec<PathBuf> = rs
            .resources()
            .into_iter()
            .map(|r| match r {
                Resource::Cgroup { path } => path,
                other => panic!("unexpected {other:?}"),
            })
            .collect();
        assert_eq!(recorded.len(), 6, "{recorded:?}");
        assert!(recorded
            .iter()
            .all(|p| !p.starts_with(root.join("cpu")) && !p.starts_with(root.join("cpuacct"))));
        // Readings: cpuacct.usage lives in the co-mounted directory.
        std::fs::write(cpu.join("cpuacct.usage"), "1234").unwrap();
        std::fs::write(mem.join("memory.usage_in_bytes"), "4096").unwrap();
        assert_eq!(m.cpu_usage_ns(), Some(1234));
        assert_eq!(m.memory_current_bytes(), Some(4096));
        // Joining: one tasks file per hierarchy.
        assert_eq!(m.self_join_files().len(), 3);
    }

    /// This host's layout (hybrid: each v1 controller on its own, empty v2 at unified): one
    /// directory per v1 controller hierarchy, nothing in the unified or named ones.
    #[test]
    fn hybrid_fake_tree() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        let text = hierarchy::tests::HYBRID.replace("/sys/fs/cgroup", root.to_str().unwrap());
        let hier = fake_tree(&root, &text);
        assert_eq!(hier.layout(), CgroupLayout::Hybrid);
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        let rel = Path::new("isobench-r");
        let m = CgroupManager::create_in(&hier, CgroupLayout::Hybrid, rel, &budget(), &rs).unwrap();
        assert_eq!(m.dirs().len(), 4);
        assert_eq!(
            read(&root.join("cpu/isobench-r/cpu.cfs_quota_us")),
            "200000"
        );
        assert_eq!(read(&root.join("pids/isobench-r/pids.max")), "4096");
        for other in ["unified", "systemd", "cpuset"] {
            assert!(!root.join(other).join(rel).exists(), "{other}");
        }
        assert_eq!(rs.resources().len(), 4);
    }

    /// A co-mount that includes cpuset gets the budget's CPUs and the parent's memory nodes
    /// on every level it creates (else no task could join).
    #[test]
    fn v1_cpuset_comount_is_initialised() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        let text = format!(
            "1 0 0:50 / {}/cpuset,memory rw - cgroup cgroup rw,cpuset,memory\n",
            root.display()
        );
        let hier = fake_tree(&root, &text);
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        let rel = Path::new("isobench-r/launch-1");
        CgroupManager::create_in(&hier, CgroupLayout::V1, rel, &budget(), &rs).unwrap();
        for level in ["isobench-r", "isobench-r/launch-1"] {
            let dir = root.join("cpuset,memory").join(level);
            assert_eq!(read(&dir.join("cpuset.cpus")), "0-1");
            assert_eq!(read(&dir.join("cpuset.mems")), "0");
        }
    }

    /// A fake v2 tree: every level is made new and recorded, the root (not isobench's) gets
    /// only what a limit needs in its subtree_control (listed in the run directory), the
    /// run-level cgroup everything, and the launch cgroup its limits and pids.max.
    #[test]
    fn v2_fake_tree_subtree_control_and_pids() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpuset cpu io memory pids").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "cpu").unwrap();
        let text = format!("1 0 0:60 / {} rw - cgroup2 cgroup2 rw\n", root.display());
        let hier = Hierarchies::parse(&text, &root);
        assert_eq!(hier.layout(), CgroupLayout::V2);
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        let run = CgroupManager::create_in(
            &hier,
            CgroupLayout::V2,
            Path::new("isobench-r"),
            &budget(),
            &rs,
        )
        .unwrap();
        let run_dir = root.join("isobench-r");
        assert_eq!(run.dirs(), vec![run_dir.as_path()]);
        // memory and pids enabled at the root (cpu already was), never cpuset; listed.
        let changes = subtree_changes(&rs.dir);
        let enabled: Vec<&str> = changes.iter().map(|c| c.controller.as_str()).collect();
        assert_eq!(enabled, ["memory", "pids"]);
        assert!(changes.iter().all(|c| c.level == root));
        assert_eq!(read(&run_dir.join("pids.max")), "4096");
        assert_eq!(read(&run_dir.join("memory.max")), "67108864");
        assert_eq!(read(&run_dir.join("cpu.max")), "200000 100000");
        // The fake kernel: the new level offers what its parent enabled.
        std::fs::write(run_dir.join("cgroup.controllers"), "cpuset cpu memory pids").unwrap();
        std::fs::write(run_dir.join("cgroup.subtree_control"), "").unwrap();
        let launch =
            CgroupManager::at(&hier, CgroupLayout::V2, Path::new("isobench-r/launch-1")).unwrap();
        launch.create_recorded(&budget()).unwrap();
        let leaf = run_dir.join("launch-1");
        assert_eq!(read(&leaf.join("pids.max")), "4096");
        assert_eq!(read(&leaf.join("cpu.max")), "200000 100000");
        // The run's own level got cpuset too (the fake file holds the last write).
        assert_eq!(read(&run_dir.join("cgroup.subtree_control")), "+pids");
        assert_eq!(
            subtree_changes(&rs.dir).len(),
            2,
            "own levels are not listed"
        );
        // An existing launch cgroup is never adopted.
        assert!(matches!(
            launch.create_recorded(&budget()),
            Err(CgroupError::Exists { .. })
        ));
        assert_eq!(
            rs.resources(),
            vec![Resource::Cgroup {
                path: run_dir.clone()
            }]
        );
    }

    /// No level is adopted: an existing run-level parent (another run's or a user's) is
    /// refused, left as it was, and nothing stays in the ledger; a half-made tree is undone.
    #[test]
    fn existing_levels_are_never_adopted() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        let hier = fake_tree(&root, &hierarchy::tests::comounted(root.to_str().unwrap()));
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        // Someone else's parent, in one hierarchy only (memory).
        let theirs = root.join("memory/isobench-x");
        std::fs::create_dir(&theirs).unwrap();
        std::fs::write(theirs.join("marker"), "theirs").unwrap();
        let r = CgroupManager::create_in(
            &hier,
            CgroupLayout::V1,
            Path::new("isobench-x/launch-1"),
            &budget(),
            &rs,
        );
        match r {
            Err(CgroupError::Exists { path }) => assert_eq!(path, theirs),
            other => panic!("expected Exists, got {other:?}"),
        }
        assert_eq!(read(&theirs.join("marker")), "theirs");
        assert!(!theirs.join("launch-1").exists());
        // What this call made in cpu,cpuacct before reaching memory is gone again.
        assert!(!root.join("cpu,cpuacct/isobench-x").exists());
        assert!(rs.resources().is_empty(), "{:?}", rs.resources());
        // create_exclusive (the runtimes' parents): same rule, rollback of its own.
        let mine = root.join("pids/isobench-y");
        let e = create_exclusive(&[mine.clone(), theirs.clone()]).unwrap_err();
        assert!(matches!(e, CgroupError::Exists { .. }), "{e}");
        assert!(!mine.exists());
        assert!(theirs.exists());
        create_exclusive(std::slice::from_ref(&mine)).unwrap();
        assert!(mine.is_dir());
    }

    #[test]
    fn foreign_levels_get_only_what_limits_need() {
        assert_eq!(
            controllers_to_enable_at("cpuset cpu io memory pids", "", false),
            Ok(vec!["memory", "cpu", "pids"])
        );
        assert_eq!(
            controllers_to_enable_at("cpuset cpu memory", "memory", false),
            Ok(vec!["cpu"])
        );
        assert_eq!(controllers_to_enable_at("cpu", "", false), Err("memory"));
        assert_eq!(
            controllers_to_enable_at("cpuset cpu memory pids", "", true),
            Ok(vec!["memory", "cpu", "cpuset", "pids"])
        );
    }

    #[test]
    fn doctor_lines() {
        let root = Path::new("/sys/fs/cgroup");
        let co = Hierarchies::parse(&hierarchy::tests::comounted("/sys/fs/cgroup"), root);
        assert_eq!(
            doctor_line(CgroupLayout::V1, &co),
            "v1 (v1 hierarchies used: cpu,cpuacct memory pids)"
        );
        let no_pids = Hierarchies::parse(
            "1 0 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n",
            root,
        );
        assert_eq!(
            doctor_line(CgroupLayout::V1, &no_pids),
            "v1 (v1 hierarchies used: memory); no pids controller: containers get no pids.max (mount the pids controller to bound them)"
        );
        // v2 root (fake) with pids offered, memory and pids not yet enabled.
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(d.path().join("cgroup.subtree_control"), "cpu").unwrap();
        let v2 = Hierarchies::parse(
            &format!("1 0 0:9 / {} rw - cgroup2 cgroup2 rw\n", d.path().display()),
            d.path(),
        );
        let line = doctor_line(CgroupLayout::V2, &v2);
        assert!(
            line.starts_with("v2; the container tier enables +memory +pids in "),
            "{line}"
        );
        assert!(!line.contains("no pids"), "{line}");
        assert_eq!(doctor_line(CgroupLayout::None, &v2), "none");
    }
}
