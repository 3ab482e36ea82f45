//! The state directory: a ledger of every resource a run creates, written before the resource
//! is created, so that `isobench cleanup` can remove what a killed harness left behind (and only
//! that: RELIABILITY rule 1, delete only what you recorded creating).
//!
//! Layout: `<root>/runs/<run-id>/ledger.json` and `<root>/runs/<run-id>/scratch/` (the run's
//! rootfs copies, overlay upper dirs, VM disks). `<root>` is `$ISOBENCH_STATE_DIR` or
//! `/var/lib/isobench`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

/// One resource the harness created.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Resource {
    /// A directory tree the harness made (removed without crossing mount points).
    Dir { path: PathBuf },
    /// A file the harness made (a VM's disk image).
    File { path: PathBuf },
    /// A cgroup directory (its processes are killed, then it is removed, children first).
    Cgroup { path: PathBuf },
    /// A mount point in the host's mount namespace.
    Mount { path: PathBuf },
    /// A network device (veth, tap, bridge) by name.
    Link { name: String },
    /// A process, identified by pid and start time (clock ticks since boot) so a recycled pid is
    /// never killed.
    Process { pid: i32, start_time: u64 },
    /// An nftables table the run created and owns whole (its NAT rules live in it), removed
    /// with `nft delete table <family> <name>`.
    NftTable { family: String, name: String },
    /// A rule the run inserted into a chain it does not own (`iptables -t <table> -I <chain>
    /// <rule>`), e.g. an ACCEPT for its own devices ahead of a FORWARD chain that drops (Docker
    /// sets `-P FORWARD DROP`); removed with `-D` and the same rule.
    IptablesRule {
        table: String,
        chain: String,
        rule: Vec<String>,
    },
    /// A sysctl under /proc/sys the run changed, with the value to put back (e.g. ip_forward
    /// switched on for the container's NAT path).
    Sysctl { path: PathBuf, restore: String },
    /// A container of an OCI runtime (runc, crun, runsc) kept under a state root the run owns,
    /// removed with `<runtime> --root <root> delete --force <id>`.
    OciContainer {
        runtime: PathBuf,
        root: PathBuf,
        id: String,
    },
    /// An LXC container under an lxcpath the run owns, stopped with
    /// `lxc-stop --kill -P <lxcpath> -n <name>`.
    LxcContainer { lxcpath: PathBuf, name: String },
    /// A Docker container named `isobench-<run id>-...` and labelled `org.isobench.run=<run id>`:
    /// the name is recorded before `docker run`, the id once known; removed by id
    /// (`docker rm --force <id>`) only after `docker container inspect` shows the run's label.
    DockerContainer {
        name: String,
        #[serde(default)]
        id: Option<String>,
    },
}

/// Who owns a run: the harness process, by pid and start time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Owner {
    pub pid: i32,
    pub start_time: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Ledger {
    pub run_id: String,
    pub owner: Option<Owner>,
    pub resources: Vec<Resource>,
}

/// The state directory root.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    pub fn default_root() -> PathBuf {
        std::env::var_os("ISOBENCH_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/var/lib/isobench"))
    }

    pub fn open(root: impl Into<PathBuf>) -> std::io::Result<Self> {
        let root = root.into();
        std::fs::create_dir_all(root.join("runs"))?;
        Ok(StateDir { root })
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Start a run: make its directory and a ledger owned by this process.
    pub fn begin_run(&self, run_id: &str) -> std::io::Result<RunState> {
        let dir = self.runs_dir().join(run_id);
        std::fs::create_dir_all(dir.join("scratch"))?;
        let pid = i32::try_from(std::process::id()).expect("pid fits i32");
        let ledger = Ledger {
            run_id: run_id.to_string(),
            owner: process_start_time(pid).map(|start_time| Owner { pid, start_time }),
            resources: vec![],
        };
        let rs = RunState {
            id: run_id.to_string(),
            dir,
            ledger: Mutex::new(ledger),
        };
        rs.save()?;
        Ok(rs)
    }

    /// Every ledger in the state directory, with its run directory.
    pub fn ledgers(&self) -> Vec<(PathBuf, std::io::Result<Ledger>)> {
        let mut out = vec![];
        if let Ok(rd) = std::fs::read_dir(self.runs_dir()) {
            for e in rd.flatten() {
                let dir = e.path();
                let l = std::fs::read(dir.join("ledger.json")).and_then(|b| {
                    serde_json::from_slice(&b)
                        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))
                });
                out.push((dir, l));
            }
        }
        out
    }
}

/// The ledger of one run.
#[derive(Debug)]
pub struct RunState {
    pub id: String,
    /// `<root>/runs/<id>`; `scratch/` inside it is the run's working area.
    pub dir: PathBuf,
    ledger: Mutex<Ledger>,
}

impl RunState {
    /// The run's scratch area (same filesystem as the state root).
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    /// Record `r` before creating it.
    pub fn record(&self, r: Resource) -> std::io::Result<()> {
        let mut l = self.ledger.lock().expect("ledger lock");
        if !l.resources.contains(&r) {
            l.resources.push(r);
        }
        write_atomic(
            &self.dir.join("ledger.json"),
            &serde_json::to_vec_pretty(&*l).expect("ledger serialises"),
        )
    }

    /// Record several resources before creating them, in one ledger write (one fsync).
    pub fn record_all(&self, rs: &[Resource]) -> std::io::Result<()> {
        let mut l = self.ledger.lock().expect("ledger lock");
        for r in rs {
            if !l.resources.contains(r) {
                l.resources.push(r.clone());
            }
        }
        write_atomic(
            &self.dir.join("ledger.json"),
            &serde_json::to_vec_pretty(&*l).expect("ledger serialises"),
        )
    }

    /// Forget `r` after it has been removed.
    pub fn release(&self, r: &Resource) -> std::io::Result<()> {
        self.release_all(std::slice::from_ref(r))
    }

    /// Forget several removed resources in one ledger write.
    pub fn release_all(&self, rs: &[Resource]) -> std::io::Result<()> {
        let mut l = self.ledger.lock().expect("ledger lock");
        l.resources.retain(|x| !rs.contains(x));
        write_atomic(
            &self.dir.join("ledger.json"),
            &serde_json::to_vec_pretty(&*l).expect("ledger serialises"),
        )
    }

    pub fn resources(&self) -> Vec<Resource> {
        self.ledger.lock().expect("ledger lock").resources.clone()
    }

    fn save(&self) -> std::io::Result<()> {
        let l = self.ledger.lock().expect("ledger lock");
        write_atomic(
            &self.dir.join("ledger.json"),
            &serde_json::to_vec_pretty(&*l).expect("ledger serialises"),
        )
    }
}

/// Write a file atomically: temp file in the same directory, fsync, rename.
pub fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let tmp = dir.join(format!(
        ".{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(data)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Start time of a process in clock ticks since boot (field 22 of /proc/PID/stat).
pub fn process_start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may contain spaces and parentheses: fields start after the last ')'.
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(19)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ledger_records_and_releases() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let rs = sd.begin_run("r1").unwrap();
        let r = Resource::Dir {
            path: rs.scratch().join("x"),
        };
        rs.record(r.clone()).unwrap();
        let ls = sd.ledgers();
        assert_eq!(ls.len(), 1);
        let l = ls[0].1.as_ref().unwrap();
        assert_eq!(l.resources, vec![r.clone()]);
        assert_eq!(l.owner.as_ref().unwrap().pid, std::process::id() as i32);
        rs.release(&r).unwrap();
        assert!(sd.ledgers()[0].1.as_ref().unwrap().resources.is_empty());
        let more = vec![
            r.clone(),
            Resource::Link {
                name: "isbk1d".into(),
            },
            Resource::NftTable {
                family: "ip".into(),
                name: "isobench_k1".into(),
            },
        ];
        rs.record_all(&more).unwrap();
        rs.record_all(&more).unwrap();
        assert_eq!(rs.resources(), more);
        rs.release_all(&more[..2]).unwrap();
        assert_eq!(sd.ledgers()[0].1.as_ref().unwrap().resources, more[2..]);
    }

    #[test]
    fn start_time_of_self() {
        assert!(process_start_time(std::process::id() as i32).is_some());
        assert!(process_start_time(i32::MAX).is_none());
    }
}
