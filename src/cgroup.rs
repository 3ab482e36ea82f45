//! A small cgroup manager for the container tier (youki's `AnyCgroupManager` idea, cut down):
//! one enum with a pure cgroup v2 variant and a v1 variant that holds one directory per
//! controller hierarchy. Hybrid hosts (v1 controllers plus an empty v2 at
//! `/sys/fs/cgroup/unified`) are driven through their v1 controllers, where the limits live.
//!
//! Every directory is recorded in the run's ledger before it is created (RELIABILITY rule 1) and
//! removed children first, without force: a cgroup that still holds processes is killed and
//! waited for, never "forced" (rule 2).

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;

use crate::backend::Budget;
use crate::host::CgroupLayout;
use crate::state::{Resource, RunState};

/// Where cgroup filesystems are mounted on every host isobench supports.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";
/// The v1 hierarchies isobench uses (those that exist on the host).
pub const V1_CONTROLLERS: &[&str] = &["memory", "cpu", "cpuacct", "pids"];
/// CFS period used for the CPU quota, in microseconds.
pub const CPU_PERIOD_US: u64 = 100_000;
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
    #[error("cgroup {path} already exists (left by an earlier run?): run `isobench cleanup`, or rmdir it once it holds no processes")]
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

/// One cgroup, in whichever hierarchy layout the host has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CgroupManager {
    /// Unified hierarchy: one directory.
    V2 { path: PathBuf },
    /// Legacy hierarchies: (controller, directory) per mounted controller.
    V1 { paths: Vec<(String, PathBuf)> },
}

impl CgroupManager {
    /// The manager for `rel` under `root` without touching the filesystem (pure path building).
    /// Hybrid hosts use their v1 controllers; `v1_present` lists the v1 hierarchies mounted.
    pub fn at(
        root: &Path,
        layout: CgroupLayout,
        v1_present: &[&str],
        rel: &Path,
    ) -> Result<Self, CgroupError> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match layout {
            CgroupLayout::V2 => Ok(CgroupManager::V2 {
                path: root.join(rel),
            }),
            CgroupLayout::V1 | CgroupLayout::Hybrid => {
                let paths: Vec<(String, PathBuf)> = V1_CONTROLLERS
                    .iter()
                    .filter(|c| v1_present.contains(c))
                    .map(|c| (c.to_string(), root.join(c).join(rel)))
                    .collect();
                if paths.is_empty() {
                    Err(CgroupError::NoCgroupFs)
                } else {
                    Ok(CgroupManager::V1 { paths })
                }
            }
            CgroupLayout::None => Err(CgroupError::NoCgroupFs),
        }
    }

    /// Open (without creating) `rel` on this host's layout.
    pub fn open(layout: CgroupLayout, rel: &Path) -> Result<Self, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        Self::at(root, layout, &v1_present(root), rel)
    }

    /// Create `rel` (and any missing ancestor) with the budget's memory limit and CPU quota,
    /// recording every directory in `state` before creating it.
    pub fn create(
        layout: CgroupLayout,
        rel: &Path,
        budget: &Budget,
        state: &RunState,
    ) -> Result<Self, CgroupError> {
        Self::create_in(Path::new(CGROUP_ROOT), layout, rel, budget, state)
    }

    /// [`CgroupManager::create`] under another root (tests use a fake tree).
    pub fn create_in(
        root: &Path,
        layout: CgroupLayout,
        rel: &Path,
        budget: &Budget,
        state: &RunState,
    ) -> Result<Self, CgroupError> {
        let m = Self::at(root, layout, &v1_present(root), rel)?;
        let mut created = vec![];
        match m.build(root, rel, budget, state, &mut created) {
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
        root: &Path,
        rel: &Path,
        budget: &Budget,
        state: &RunState,
        created: &mut Vec<PathBuf>,
    ) -> Result<(), CgroupError> {
        let rel = rel.strip_prefix("/").unwrap_or(rel);
        match self {
            CgroupManager::V2 { path } => {
                // Enable the controllers on every level above the new cgroup: a v2 controller
                // is only usable in a cgroup when its parent lists it in subtree_control.
                let mut level = root.to_path_buf();
                for comp in rel.components() {
                    enable_v2_controllers(&level)?;
                    level.push(comp);
                    make_dir(&level, &level == path, state, created)?;
                }
            }
            CgroupManager::V1 { paths } => {
                for (controller, path) in paths {
                    let mut level = root.join(controller);
                    for comp in rel.components() {
                        level.push(comp);
                        make_dir(&level, &level == path, state, created)?;
                    }
                }
            }
        }
        self.apply_limits(budget)
    }

    /// Write the budget's limits into every directory of this cgroup.
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
            }
            CgroupManager::V1 { paths } => {
                for (controller, path) in paths {
                    match controller.as_str() {
                        "memory" => write(
                            &path.join("memory.limit_in_bytes"),
                            &budget_memory_bytes(budget).to_string(),
                        )?,
                        "cpu" => {
                            let (quota, period) = cpu_quota_us(budget.cpus.len());
                            write(&path.join("cpu.cfs_period_us"), &period.to_string())?;
                            write(&path.join("cpu.cfs_quota_us"), &quota.to_string())?;
                        }
                        _ => {}
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
                if let (CgroupManager::V2 { .. }, Some(parent)) = (self, d.parent()) {
                    enable_v2_controllers(parent)?;
                }
                match std::fs::create_dir(d) {
                    Ok(()) => made.push(d),
                    Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                        return Err(CgroupError::Exists { path: d.into() })
                    }
                    Err(e) => return Err(io("creating cgroup", d)(e)),
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
            CgroupManager::V1 { paths } => paths.iter().map(|(_, p)| p.join("tasks")).collect(),
        }
    }

    /// Every directory of this cgroup (one on v2, one per controller on v1).
    pub fn dirs(&self) -> Vec<&Path> {
        match self {
            CgroupManager::V2 { path } => vec![path.as_path()],
            CgroupManager::V1 { paths } => paths.iter().map(|(_, p)| p.as_path()).collect(),
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
                (CgroupManager::V1 { paths }, Some(c)) => {
                    paths.iter().find(|(n, _)| n == c).map(|(_, p)| p.as_path())
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

/// The v1 hierarchies among [`V1_CONTROLLERS`] mounted under `root`.
pub fn v1_present(root: &Path) -> Vec<&'static str> {
    V1_CONTROLLERS
        .iter()
        .copied()
        .filter(|c| root.join(c).join("cgroup.procs").exists())
        .collect()
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

/// The controllers to enable below `level` given its cgroup.controllers and
/// cgroup.subtree_control contents: memory and cpu are required, cpuset and pids optional.
pub fn controllers_to_enable(
    available: &str,
    enabled: &str,
) -> Result<Vec<&'static str>, &'static str> {
    let avail: Vec<&str> = available.split_whitespace().collect();
    let on: Vec<&str> = enabled.split_whitespace().collect();
    let mut out = vec![];
    for (c, required) in [
        ("memory", true),
        ("cpu", true),
        ("cpuset", false),
        ("pids", false),
    ] {
        if on.contains(&c) {
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

fn enable_v2_controllers(level: &Path) -> Result<(), CgroupError> {
    let read =
        |f: &str| std::fs::read_to_string(level.join(f)).map_err(io("reading", &level.join(f)));
    let want = controllers_to_enable(
        &read("cgroup.controllers")?,
        &read("cgroup.subtree_control")?,
    )
    .map_err(|c| CgroupError::ControllerMissing {
        controller: c.into(),
        path: level.join("cgroup.controllers"),
    })?;
    for c in want {
        write(&level.join("cgroup.subtree_control"), &format!("+{c}"))?;
    }
    Ok(())
}

/// Make one level. An existing ancestor level is used as is; the cgroup itself (`leaf`) must be
/// new: one left by another run is never adopted.
fn make_dir(
    dir: &Path,
    leaf: bool,
    state: &RunState,
    created: &mut Vec<PathBuf>,
) -> Result<(), CgroupError> {
    if dir.is_dir() {
        if leaf {
            return Err(CgroupError::Exists {
                path: dir.to_path_buf(),
            });
        }
        return Ok(());
    }
    state
        .record(Resource::Cgroup {
            path: dir.to_path_buf(),
        })
        .map_err(|source| CgroupError::Ledger {
            path: dir.to_path_buf(),
            source,
        })?;
    if let Err(e) = std::fs::create_dir(dir) {
        let _ = state.release(&Resource::Cgroup {
            path: dir.to_path_buf(),
        });
        return Err(io("creating cgroup", dir)(e));
    }
    created.push(dir.to_path_buf());
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
    use crate::state::StateDir;

    #[test]
    fn paths_per_layout() {
        let root = Path::new("/sys/fs/cgroup");
        let rel = Path::new("isobench-r1/launch-3");
        assert_eq!(
            CgroupManager::at(root, CgroupLayout::V2, &[], rel).unwrap(),
            CgroupManager::V2 {
                path: "/sys/fs/cgroup/isobench-r1/launch-3".into()
            }
        );
        let m = CgroupManager::at(root, CgroupLayout::Hybrid, &["cpu", "memory"], rel).unwrap();
        assert_eq!(
            m.dirs(),
            vec![
                Path::new("/sys/fs/cgroup/memory/isobench-r1/launch-3"),
                Path::new("/sys/fs/cgroup/cpu/isobench-r1/launch-3")
            ]
        );
        assert!(CgroupManager::at(root, CgroupLayout::None, &[], rel).is_err());
        assert!(CgroupManager::at(root, CgroupLayout::V1, &[], rel).is_err());
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

    /// A fake v2 tree in a temp dir: create records every level and writes the limits.
    #[test]
    fn creates_fake_v2_tree_and_records_it() {
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("cg");
        std::fs::create_dir(&root).unwrap();
        std::fs::write(root.join("cgroup.controllers"), "cpu memory pids").unwrap();
        std::fs::write(root.join("cgroup.subtree_control"), "").unwrap();
        // The fake kernel: a new level offers what its parent enabled (here: pre-made files).
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let rs = sd.begin_run("r").unwrap();
        let budget = Budget {
            cpus: vec![0, 1],
            memory_mib: 64,
        };
        // Pre-create the first level's files so the second level can be enabled.
        std::fs::create_dir(root.join("isobench-r")).unwrap();
        std::fs::write(root.join("isobench-r/cgroup.controllers"), "cpu memory").unwrap();
        std::fs::write(root.join("isobench-r/cgroup.subtree_control"), "").unwrap();
        let m = CgroupManager::create_in(
            &root,
            CgroupLayout::V2,
            Path::new("isobench-r/launch-1"),
            &budget,
            &rs,
        )
        .unwrap();
        let leaf = root.join("isobench-r/launch-1");
        assert_eq!(m.dirs(), vec![leaf.as_path()]);
        assert_eq!(
            std::fs::read_to_string(leaf.join("memory.max")).unwrap(),
            "67108864"
        );
        assert_eq!(
            std::fs::read_to_string(leaf.join("cpu.max")).unwrap(),
            "200000 100000"
        );
        // The already existing level is not recorded (we did not create it); the new one is.
        assert_eq!(
            rs.resources(),
            vec![Resource::Cgroup { path: leaf.clone() }]
        );
        // A cgroup that already exists is never adopted.
        let again = CgroupManager::create_in(
            &root,
            CgroupLayout::V2,
            Path::new("isobench-r/launch-1"),
            &budget,
            &rs,
        );
        assert!(
            matches!(again, Err(CgroupError::Exists { .. })),
            "{again:?}"
        );
        // A failure half-way removes what the call created and forgets it in the ledger:
        // here the new level lacks the cgroup.controllers file the kernel would provide.
        let failed = CgroupManager::create_in(
            &root,
            CgroupLayout::V2,
            Path::new("isobench-q/launch-1"),
            &budget,
            &rs,
        );
        assert!(failed.is_err());
        assert!(!root.join("isobench-q").exists());
        assert_eq!(rs.resources(), vec![Resource::Cgroup { path: leaf }]);
    }
}
