//! Helpers of the tests that drive backends in-process (process, runtime and VM tiers): the
//! budget, the `RunEnv` they run under, a census of what one test can leave under its temp
//! directory, and a metric lookup. Moved here from the test files that each had a copy.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use isobench::backend::{BackendOptions, RunEnv};
use isobench::model::budget::Budget;
use isobench::model::facts::HostFacts;
use isobench::protocol::AgentReport;
use isobench::state::ledger::StateDir;

/// A budget of the first `cpus` CPUs this process may run on and `memory_mib` of memory.
pub fn budget(cpus: usize, memory_mib: u64) -> Budget {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .take(cpus)
        .collect();
    Budget { cpus, memory_mib }
}

/// The environment a backend runs under in a test: the freshly built agent, a new run of `state`
/// named `run_id`, a cache under `tmp`, default options.
pub fn run_env(state: &StateDir, run_id: &str, tmp: &Path, budget: Budget) -> RunEnv {
    RunEnv {
        agent: PathBuf::from(env!("CARGO_BIN_EXE_isobench-agent")),
        state: Arc::new(state.begin_run(run_id).unwrap()),
        cache_dir: tmp.join("cache"),
        budget,
        options: BackendOptions::default(),
        host: HostFacts::detect(),
        cancel: Arc::new(AtomicBool::new(false)),
    }
}

/// The value of metric `name` in an agent report (panics, listing the metrics, when missing).
pub fn metric(r: &AgentReport, name: &str) -> f64 {
    r.metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} missing in {:?}", r.metrics))
        .value
}

/// What one in-process backend test must not leave behind: mounts under its temp directory,
/// `isobench-*` cgroups (depth <= 2), live children; with `net`, also `isbk*` links, `isobench_k`
/// nft tables and ip_forward.
#[derive(Debug, PartialEq)]
pub struct LocalCensus {
    pub mounts: Vec<String>,
    pub cgroups: BTreeSet<PathBuf>,
    pub links: Vec<String>,
    pub nft_tables: Vec<String>,
    pub ip_forward: String,
    pub children: Vec<i32>,
}

/// Take a [`LocalCensus`] for the test whose temp directory is `tmp`.
pub fn local_census(tmp: &Path, net: bool) -> LocalCensus {
    let mounts = mounts_under(tmp);
    let cgroups = isobench_cgroups(|_| true);
    let (mut links, mut nft_tables, mut ip_forward) = (vec![], vec![], String::new());
    if net {
        links = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with("isbk"))
            .collect();
        links.sort();
        nft_tables = super::sh("nft", &["list", "tables"])
            .lines()
            .filter(|l| l.contains("isobench_k"))
            .map(String::from)
            .collect();
        ip_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default();
    }
    LocalCensus {
        mounts,
        cgroups,
        links,
        nft_tables,
        ip_forward,
        children: children_of_self(),
    }
}

/// The mounts whose mountinfo line names `tmp`.
pub fn mounts_under(tmp: &Path) -> Vec<String> {
    let tmp = tmp.to_string_lossy().into_owned();
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.contains(&tmp))
        .map(String::from)
        .collect()
}

/// `isobench-*` cgroups whose name passes `keep`, in every hierarchy, two levels deep (a
/// runtime's cgroups sit below ours on a v1 host).
pub fn isobench_cgroups(keep: impl Fn(&str) -> bool) -> BTreeSet<PathBuf> {
    let mut cgroups = BTreeSet::new();
    let root = Path::new("/sys/fs/cgroup");
    let mut levels = vec![root.to_path_buf()];
    if let Ok(rd) = std::fs::read_dir(root) {
        levels.extend(rd.flatten().map(|e| e.path()));
    }
    for l in levels {
        if let Ok(rd) = std::fs::read_dir(&l) {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with("isobench-") && keep(&n) {
                    cgroups.insert(e.path());
                }
            }
        }
    }
    cgroups
}

/// Live children of this test process.
pub fn children_of_self() -> Vec<i32> {
    let me = std::process::id().to_string();
    let mut v = vec![];
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if !name.bytes().all(|b| b.is_ascii_digit()) {
            continue;
        }
        if let Ok(s) = std::fs::read_to_string(e.path().join("stat")) {
            if let Some(rest) = s.rfind(')').map(|i| &s[i + 2..]) {
                let f: Vec<&str> = rest.split_whitespace().collect();
                if f.get(1) == Some(&me.as_str()) {
                    v.push(name.parse().unwrap());
                }
            }
        }
    }
    v
}
