//! The state directory: a ledger of every resource a run creates, written before the resource
//! is created, so that `isobench cleanup` can remove what a killed harness left behind (and only
//! that: RELIABILITY rule 1, delete only what you recorded creating).
//!
//! Layout: `<root>/runs/<run-id>/ledger.json`, `<root>/runs/<run-id>/lock` and
//! `<root>/runs/<run-id>/scratch/` (the run's rootfs copies, overlay upper dirs, VM disks).
//! `<root>` is `$ISOBENCH_STATE_DIR`, `/var/lib/isobench` for root, or
//! `$XDG_STATE_HOME/isobench` (`~/.local/state/isobench`) for other users ([`default_root`]).
//!
//! A run owns its state (RELIABILITY rule 13): its id is unique (`YYYYmmdd-HHMMSS-<8 hex>`),
//! its directory is created exclusively (an existing one is never adopted: a new id is drawn),
//! and it holds `flock(LOCK_EX)` on `lock` for its whole life; the ledger names its owner by
//! pid and start time. `cleanup` leaves a run alone while either says it is alive.

use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::{Deserialize, Serialize};

use crate::host::fs::write_atomic_mode;
use crate::host::proc::process_start_time;

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
    /// A sysctl under /proc/sys/net the run changed: `restore` is the value to put back, `set`
    /// the value the run wrote. Cleanup restores only while the current value still equals
    /// `set` (someone else changed it otherwise) and never when `set` is empty (old ledgers).
    Sysctl {
        path: PathBuf,
        restore: String,
        #[serde(default)]
        set: String,
    },
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

/// The ledger's file name inside a run directory.
pub const LEDGER_FILE: &str = "ledger.json";
/// The lock file inside a run directory, held with `flock(LOCK_EX)` by the run's owner.
pub const LOCK_FILE: &str = "lock";
/// A ledger larger than this is not read (it would not be isobench's).
const LEDGER_MAX_BYTES: u64 = 16 << 20;

/// The default state root: `$ISOBENCH_STATE_DIR`, else `/var/lib/isobench` for root, else
/// `$XDG_STATE_HOME/isobench` or `~/.local/state/isobench` (never a predictable /tmp path).
pub fn default_root() -> PathBuf {
    let home = || {
        nix::unistd::User::from_uid(nix::unistd::geteuid())
            .ok()
            .flatten()
            .map(|u| u.dir)
    };
    default_root_for(
        |k| std::env::var_os(k),
        nix::unistd::geteuid().is_root(),
        home,
    )
}

/// [`default_root`] given the environment, whether we are root, and the password database's
/// home directory.
fn default_root_for(
    env: impl Fn(&str) -> Option<std::ffi::OsString>,
    root: bool,
    passwd_home: impl FnOnce() -> Option<PathBuf>,
) -> PathBuf {
    if let Some(p) = env("ISOBENCH_STATE_DIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if root {
        return PathBuf::from("/var/lib/isobench");
    }
    let abs = |v: Option<std::ffi::OsString>| v.map(PathBuf::from).filter(|p| p.is_absolute());
    if let Some(x) = abs(env("XDG_STATE_HOME")) {
        return x.join("isobench");
    }
    match abs(env("HOME")).or_else(passwd_home) {
        Some(h) => h.join(".local/state/isobench"),
        // No home at all: the system path (opening it fails with a clear error if not ours).
        None => PathBuf::from("/var/lib/isobench"),
    }
}

/// A fresh run id: `YYYYmmdd-HHMMSS-<8 lowercase hex>` (letters, digits and `-` only).
pub fn new_run_id() -> String {
    format!(
        "{}-{:08x}",
        chrono::Local::now().format("%Y%m%d-%H%M%S"),
        rand::random::<u32>()
    )
}

/// Could `s` be a run id (and so a run directory's name)? Letters, digits, `-`; at most 64.
pub fn valid_run_id(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 64
        && !s.starts_with('-')
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
}

/// Check that `p` is a real directory (not a symlink) owned by the effective uid and not
/// writable by group or others; the error says how to fix it.
pub fn check_private_dir(p: &Path) -> io::Result<()> {
    let md = std::fs::symlink_metadata(p)?;
    if md.file_type().is_symlink() {
        return Err(io::Error::other(format!(
            "state directory {} is a symlink: point --state-dir (or ISOBENCH_STATE_DIR) at the real directory",
            p.display()
        )));
    }
    if !md.is_dir() {
        return Err(io::Error::other(format!(
            "state directory {} is not a directory: remove it or choose another --state-dir",
            p.display()
        )));
    }
    let me = nix::unistd::geteuid().as_raw();
    if md.uid() != me {
        return Err(io::Error::other(format!(
            "state directory {} is owned by uid {}, not by you (uid {me}): `chown {me} {}` if it is yours, or choose another --state-dir",
            p.display(),
            md.uid(),
            p.display()
        )));
    }
    if md.mode() & 0o022 != 0 {
        return Err(io::Error::other(format!(
            "state directory {} is writable by group or others (mode {:o}): `chmod 700 {}`",
            p.display(),
            md.mode() & 0o7777,
            p.display()
        )));
    }
    Ok(())
}

/// Make `p` with mode 0700 unless it exists; then check it with [`check_private_dir`].
fn ensure_private_dir(p: &Path) -> io::Result<()> {
    match std::fs::DirBuilder::new().mode(0o700).create(p) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    check_private_dir(p)
}

/// The state directory root, validated and canonical.
#[derive(Debug, Clone)]
pub struct StateDir {
    pub root: PathBuf,
}

impl StateDir {
    /// See [`default_root`].
    pub fn default_root() -> PathBuf {
        default_root()
    }

    /// Open (creating it with mode 0700 if missing) the state root `root` and its `runs/`.
    /// Refused: a symlink, a non-directory, one owned by another uid or writable by group or
    /// others. Nothing is created below a root that fails these checks.
    pub fn open(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = std::path::absolute(root.into())?;
        if let Some(parent) = root.parent() {
            std::fs::create_dir_all(parent).map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!(
                        "creating {}: {e}; create it or choose another --state-dir",
                        parent.display()
                    ),
                )
            })?;
        }
        ensure_private_dir(&root)?;
        let root = std::fs::canonicalize(&root)?;
        // The last component was checked not to be a symlink; check again what it resolved to.
        check_private_dir(&root)?;
        ensure_private_dir(&root.join("runs"))?;
        Ok(StateDir { root })
    }

    pub fn runs_dir(&self) -> PathBuf {
        self.root.join("runs")
    }

    /// Start a run: draw a fresh id, create its directory exclusively (on "exists" draw
    /// another; never adopt), take its lock for the run's life and write a ledger owned by
    /// this process. `label` only names the run in the log (the id never derives from it).
    pub fn begin_run(&self, label: &str) -> io::Result<RunState> {
        for _ in 0..32 {
            let id = new_run_id();
            let dir = self.runs_dir().join(&id);
            match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
                Err(e) => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("creating run directory {}: {e}", dir.display()),
                    ))
                }
            }
            match Self::own_run(&id, &dir) {
                Ok(Some(rs)) => {
                    tracing::info!(run_id = %id, label, "run started");
                    return Ok(rs);
                }
                // A cleanup removed the fresh directory under us: draw another id.
                Ok(None) => continue,
                Err(e) => {
                    // Remove only what this call made (the directory is ours: created above).
                    let _ = std::fs::remove_file(dir.join(LEDGER_FILE));
                    let _ = std::fs::remove_dir(dir.join("scratch"));
                    let _ = std::fs::remove_file(dir.join(LOCK_FILE));
                    let _ = std::fs::remove_dir(&dir);
                    return Err(e);
                }
            }
        }
        Err(io::Error::other(format!(
            "could not create a fresh run directory in {} after 32 tries: check what keeps creating entries there",
            self.runs_dir().display()
        )))
    }

    /// Lock the freshly created `dir` and write its ledger. `None` when the directory was
    /// removed (by a concurrent cleanup) before the lock was taken.
    fn own_run(id: &str, dir: &Path) -> io::Result<Option<RunState>> {
        let lock = match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(dir.join(LOCK_FILE))
        {
            Ok(f) => f,
            Err(e)
                if e.kind() == io::ErrorKind::NotFound
                    || e.kind() == io::ErrorKind::AlreadyExists =>
            {
                return Ok(None)
            }
            Err(e) => return Err(e),
        };
        flock(&lock, libc::LOCK_EX)?;
        if lock.metadata()?.nlink() == 0 {
            return Ok(None);
        }
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir.join("scratch"))?;
        let pid = i32::try_from(std::process::id()).expect("pid fits i32");
        let ledger = Ledger {
            run_id: id.to_string(),
            owner: process_start_time(pid).map(|start_time| Owner { pid, start_time }),
            resources: vec![],
        };
        let rs = RunState {
            id: id.to_string(),
            dir: dir.to_path_buf(),
            ledger: Mutex::new(ledger),
            unsynced: std::sync::atomic::AtomicBool::new(false),
            deferred: std::sync::atomic::AtomicUsize::new(0),
            _lock: lock,
        };
        rs.save()?;
        Ok(Some(rs))
    }

    /// Every directory in `runs/` (whatever it holds; cleanup decides what it is).
    pub fn run_dirs(&self) -> Vec<PathBuf> {
        let mut out: Vec<PathBuf> = std::fs::read_dir(self.runs_dir())
            .map(|rd| rd.flatten().map(|e| e.path()).collect())
            .unwrap_or_default();
        out.sort();
        out
    }

    /// Every ledger in the state directory, with its run directory.
    pub fn ledgers(&self) -> Vec<(PathBuf, io::Result<Ledger>)> {
        self.run_dirs()
            .into_iter()
            .map(|dir| {
                let l = read_ledger(&dir);
                (dir, l)
            })
            .collect()
    }
}

/// Is the run in `dir` in progress: its lock held, or its ledger's owner (pid + start time)
/// alive? Creates nothing (a directory without a lock file is judged by its ledger alone).
pub fn run_in_progress(dir: &Path) -> bool {
    let lock = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(LOCK_FILE));
    if let Ok(f) = lock {
        if let Err(e) = flock(&f, libc::LOCK_SH | libc::LOCK_NB) {
            return e.raw_os_error() == Some(libc::EWOULDBLOCK);
        }
    }
    read_ledger(dir)
        .ok()
        .and_then(|l| l.owner)
        .is_some_and(|o| process_start_time(o.pid) == Some(o.start_time))
}

/// Read `<dir>/ledger.json` without following a symlink and with a size bound.
pub fn read_ledger(dir: &Path) -> io::Result<Ledger> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(dir.join(LEDGER_FILE))?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the ledger is not a regular file",
        ));
    }
    let mut b = vec![];
    f.take(LEDGER_MAX_BYTES + 1).read_to_end(&mut b)?;
    if b.len() as u64 > LEDGER_MAX_BYTES {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "the ledger is larger than 16 MiB",
        ));
    }
    serde_json::from_slice(&b).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// `flock(op)` on `f`, retried on EINTR.
pub fn flock(f: &File, op: libc::c_int) -> io::Result<()> {
    loop {
        // SAFETY: flock on a valid open fd with a plain integer operation; no memory involved.
        let rc = unsafe { libc::flock(f.as_raw_fd(), op) };
        if rc == 0 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The ledger of one run.
#[derive(Debug)]
pub struct RunState {
    pub id: String,
    /// `<root>/runs/<id>`; `scratch/` inside it is the run's working area.
    pub dir: PathBuf,
    ledger: Mutex<Ledger>,
    /// True while the last ledger write failed (the file may lack what memory holds): the next
    /// record or release writes even if it changes nothing.
    unsynced: std::sync::atomic::AtomicBool,
    /// Held by a [`ReleaseDeferral`]: `release` updates memory only and marks the ledger
    /// unsynced; the guard's drop writes once. Nested guards count.
    deferred: std::sync::atomic::AtomicUsize,
    /// `<dir>/lock`, held with `flock(LOCK_EX)` for as long as this value lives.
    _lock: File,
}

impl RunState {
    /// The run's scratch area (same filesystem as the state root).
    pub fn scratch(&self) -> PathBuf {
        self.dir.join("scratch")
    }

    /// Record `r` before creating it.
    pub fn record(&self, r: Resource) -> io::Result<()> {
        self.record_all(std::slice::from_ref(&r))
    }

    /// Record several resources before creating them, in one ledger write (one fsync). When
    /// every one is already recorded (e.g. a cgroup level the launch plan listed before the
    /// clock) and the file is in sync, nothing is written: no fsync lands in a measured launch.
    pub fn record_all(&self, rs: &[Resource]) -> io::Result<()> {
        let mut l = self.ledger.lock().expect("ledger lock");
        let before = l.resources.len();
        for r in rs {
            if !l.resources.contains(r) {
                l.resources.push(r.clone());
            }
        }
        self.sync(&l, l.resources.len() != before)
    }

    /// Write the ledger if it changed or the last write failed.
    fn sync(&self, l: &Ledger, changed: bool) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        if !changed && !self.unsynced.load(Ordering::Relaxed) {
            return Ok(());
        }
        let res = write_ledger(&self.dir, l);
        self.unsynced.store(res.is_err(), Ordering::Relaxed);
        res
    }

    /// Forget `r` after it has been removed.
    pub fn release(&self, r: &Resource) -> io::Result<()> {
        self.release_all(std::slice::from_ref(r))
    }

    /// Forget several removed resources in one ledger write (deferred to the end of a
    /// [`ReleaseDeferral`] while one is held).
    pub fn release_all(&self, rs: &[Resource]) -> io::Result<()> {
        use std::sync::atomic::Ordering;
        let mut l = self.ledger.lock().expect("ledger lock");
        let before = l.resources.len();
        l.resources.retain(|x| !rs.contains(x));
        if l.resources.len() != before && self.deferred.load(Ordering::SeqCst) > 0 {
            // Memory is ahead of the file; the guard's flush writes it. A crash before then
            // leaves already-removed resources in the ledger, which cleanup skips as gone.
            self.unsynced.store(true, Ordering::Relaxed);
            return Ok(());
        }
        self.sync(&l, l.resources.len() != before)
    }

    /// Defer the ledger writes of `release`s until the guard drops (or [`ReleaseDeferral::flush`]):
    /// the measurement core holds one over a launch so that no fsync lands on the clock.
    /// `record` is never deferred (record-before-create is a safety rule).
    pub fn defer_releases(&self) -> ReleaseDeferral<'_> {
        self.deferred
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        ReleaseDeferral {
            state: self,
            done: false,
        }
    }

    /// Write the ledger if memory is ahead of the file (a deferred release, a failed write).
    pub fn flush(&self) -> io::Result<()> {
        let l = self.ledger.lock().expect("ledger lock");
        self.sync(&l, false)
    }

    pub fn resources(&self) -> Vec<Resource> {
        self.ledger.lock().expect("ledger lock").resources.clone()
    }

    fn save(&self) -> io::Result<()> {
        let l = self.ledger.lock().expect("ledger lock");
        write_ledger(&self.dir, &l)
    }
}

/// A hold on a run's ledger releases, from [`RunState::defer_releases`].
#[must_use = "the deferral ends when the guard drops"]
pub struct ReleaseDeferral<'a> {
    state: &'a RunState,
    done: bool,
}

impl ReleaseDeferral<'_> {
    /// End the deferral and write the ledger once if a release changed it.
    pub fn flush(mut self) -> io::Result<()> {
        self.end()
    }

    fn end(&mut self) -> io::Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        let left = self
            .state
            .deferred
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
        if left == 1 {
            self.state.flush()
        } else {
            Ok(())
        }
    }
}

impl Drop for ReleaseDeferral<'_> {
    fn drop(&mut self) {
        if let Err(e) = self.end() {
            tracing::warn!("writing the run ledger after a launch: {e}");
        }
    }
}

/// Write `<dir>/ledger.json` atomically, mode 0600.
pub fn write_ledger(dir: &Path, l: &Ledger) -> io::Result<()> {
    write_atomic_mode(
        &dir.join(LEDGER_FILE),
        &serde_json::to_vec_pretty(l).expect("ledger serialises"),
        0o600,
    )
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
    fn releases_are_deferred_while_held_and_records_are_not() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let rs = sd.begin_run("defer").unwrap();
        let a = Resource::Dir {
            path: rs.scratch().join("a"),
        };
        let b = Resource::Dir {
            path: rs.scratch().join("b"),
        };
        rs.record(a.clone()).unwrap();
        let on_disk = || read_ledger(&rs.dir).unwrap().resources;
        {
            let hold = rs.defer_releases();
            let inner = rs.defer_releases();
            rs.release(&a).unwrap();
            assert!(rs.resources().is_empty(), "memory is updated at once");
            assert_eq!(on_disk(), vec![a.clone()], "the file waits for the guard");
            drop(inner);
            assert_eq!(on_disk(), vec![a.clone()], "the outer guard still holds");
            // A record is written at once (with the deferred release in it).
            rs.record(b.clone()).unwrap();
            assert_eq!(on_disk(), vec![b.clone()]);
            rs.release(&b).unwrap();
            assert_eq!(on_disk(), vec![b.clone()]);
            hold.flush().unwrap();
        }
        assert!(on_disk().is_empty());
        // Without a hold, a release writes at once again.
        rs.record(a.clone()).unwrap();
        rs.release(&a).unwrap();
        assert!(on_disk().is_empty());
    }

    #[test]
    fn runs_get_unique_ids_exclusive_dirs_and_a_held_lock() {
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path().join("state")).unwrap();
        let a = sd.begin_run("same-out").unwrap();
        let b = sd.begin_run("same-out").unwrap();
        assert_ne!(a.id, b.id);
        for rs in [&a, &b] {
            assert!(valid_run_id(&rs.id), "{}", rs.id);
            // YYYYmmdd-HHMMSS-<8 hex>
            let parts: Vec<&str> = rs.id.split('-').collect();
            assert_eq!(parts.len(), 3, "{}", rs.id);
            assert_eq!((parts[0].len(), parts[1].len(), parts[2].len()), (8, 6, 8));
            assert!(parts[2]
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c)));
            assert_eq!(rs.dir, sd.runs_dir().join(&rs.id));
            assert_eq!(read_ledger(&rs.dir).unwrap().run_id, rs.id);
        }
        // The lock is held while the RunState lives, free once it is dropped.
        let other = File::open(a.dir.join(LOCK_FILE)).unwrap();
        let busy = flock(&other, libc::LOCK_EX | libc::LOCK_NB).unwrap_err();
        assert_eq!(busy.raw_os_error(), Some(libc::EWOULDBLOCK));
        let dir = a.dir.clone();
        drop(a);
        flock(&other, libc::LOCK_EX | libc::LOCK_NB).unwrap();
        assert!(
            dir.join(LEDGER_FILE).exists(),
            "dropping never deletes state"
        );
    }

    #[test]
    fn state_root_is_private_and_canonical() {
        use std::os::unix::fs::PermissionsExt;
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("a/state");
        let sd = StateDir::open(&root).unwrap();
        assert_eq!(sd.root, std::fs::canonicalize(&root).unwrap());
        let mode = std::fs::metadata(&root).unwrap().mode() & 0o777;
        assert_eq!(mode, 0o700);
        assert_eq!(
            std::fs::metadata(root.join("runs")).unwrap().mode() & 0o777,
            0o700
        );
        // A symlink to a good root is refused (the real path must be given).
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&root, &link).unwrap();
        let e = StateDir::open(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        // World- or group-writable: refused with the chmod to run; nothing created inside.
        let open = d.path().join("open");
        std::fs::create_dir(&open).unwrap();
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = StateDir::open(&open).unwrap_err().to_string();
        assert!(e.contains("chmod 700"), "{e}");
        assert!(!open.join("runs").exists());
        std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o770)).unwrap();
        assert!(StateDir::open(&open).is_err());
        // A file is not a state directory.
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        assert!(StateDir::open(&f).is_err());
    }

    /// Privileged: a state root owned by another user is refused.
    #[test]
    fn state_root_of_another_owner_is_refused() {
        if !nix::unistd::geteuid().is_root() {
            eprintln!("SKIPPED state_root_of_another_owner_is_refused: needs root to chown");
            assert!(
                std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "state_root_of_another_owner_is_refused needs root"
            );
            return;
        }
        let d = tempfile::tempdir().unwrap();
        let root = d.path().join("theirs");
        std::fs::create_dir(&root).unwrap();
        std::os::unix::fs::chown(&root, Some(65534), Some(65534)).unwrap();
        let e = StateDir::open(&root).unwrap_err().to_string();
        assert!(e.contains("owned by uid 65534"), "{e}");
        assert!(!root.join("runs").exists());
    }

    #[test]
    fn default_root_is_never_a_shared_tmp_path() {
        use std::ffi::OsString;
        let env = |pairs: &'static [(&'static str, &'static str)]| {
            move |k: &str| {
                pairs
                    .iter()
                    .find(|(n, _)| *n == k)
                    .map(|(_, v)| OsString::from(v))
            }
        };
        let none = || None;
        let r = default_root_for(env(&[("ISOBENCH_STATE_DIR", "/x/s")]), false, none);
        assert_eq!(r, PathBuf::from("/x/s"));
        let r = default_root_for(env(&[("HOME", "/home/u")]), true, none);
        assert_eq!(r, PathBuf::from("/var/lib/isobench"));
        let r = default_root_for(
            env(&[("XDG_STATE_HOME", "/home/u/.st"), ("HOME", "/home/u")]),
            false,
            none,
        );
        assert_eq!(r, PathBuf::from("/home/u/.st/isobench"));
        let r = default_root_for(
            env(&[("XDG_STATE_HOME", "rel"), ("HOME", "/home/u")]),
            false,
            none,
        );
        assert_eq!(r, PathBuf::from("/home/u/.local/state/isobench"));
        let r = default_root_for(env(&[]), false, || Some(PathBuf::from("/home/p")));
        assert_eq!(r, PathBuf::from("/home/p/.local/state/isobench"));
    }
}
