//! Private address blocks reserved in the state directory, so that two runs (two harness
//! processes) never pick the same block, and blocks that overlap this host's addresses or routes
//! are never picked at all.
//!
//! Layout: `<state root>/net/.lock` (an `flock` held while picking) and one file per reserved
//! block, `<state root>/net/<a>.<b>.<c>.<d>_<prefix>`, created with `O_EXCL` and holding the
//! owning run's id. A block whose owning run is gone (no `<state root>/runs/<id>` directory: the
//! run finished, or `isobench cleanup` removed what a killed run left) is reclaimed by the next
//! pick; a crashed run's block stays reserved until then, since its devices may still hold the
//! addresses. A reservation is released (its file removed, if it still names the run) when the
//! run tears its network down.
//!
//! The starting point of the search is random, so concurrent runs spread over the range.

use std::io::Write;
use std::net::Ipv4Addr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg};

use crate::state::ledger::RunState;

/// Name of the directory under the state root.
pub const NET_DIR: &str = "net";

#[derive(Debug, thiserror::Error)]
pub enum SubnetError {
    #[error("{what} ({path}): {source}; check that the state directory is writable by root")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(
        "no free /{prefix} left in {range}/16 on this host: every candidate overlaps an address \
         or a route of this host or is reserved by another run; remove stale addresses there \
         (`ip -o addr`) or leftover runs (`isobench cleanup`)"
    )]
    Exhausted { range: Ipv4Addr, prefix: u8 },
}

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SubnetError {
    let path = path.to_path_buf();
    move |source| SubnetError::Io { what, path, source }
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

/// Do two networks overlap?
pub fn overlaps((a, alen): (Ipv4Addr, u8), (b, blen): (Ipv4Addr, u8)) -> bool {
    let m = mask(alen.min(blen));
    u32::from(a) & m == u32::from(b) & m
}

/// The first block of `/prefix` inside `range`/16, starting at `seed`, that overlaps none of
/// `used` (a default route, prefix 0, does not count). Pure.
pub fn pick_block(
    range: Ipv4Addr,
    prefix: u8,
    used: &[(Ipv4Addr, u8)],
    seed: u32,
) -> Option<Ipv4Addr> {
    let count = 1u32 << (prefix - 16);
    let base = u32::from(range) & mask(16);
    (0..count)
        .map(|i| Ipv4Addr::from(base + ((seed.wrapping_add(i) % count) << (32 - prefix))))
        .find(|&net| {
            !used
                .iter()
                .filter(|(_, len)| *len > 0)
                .any(|&u| overlaps((net, prefix), u))
        })
}

/// The state root of a run (`<root>/runs/<id>` → `<root>`).
pub fn state_root(state: &RunState) -> PathBuf {
    state
        .dir
        .parent()
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| state.dir.clone())
}

/// A block this run holds; [`Reservation::release`] gives it back.
#[derive(Debug)]
pub struct Reservation {
    pub net: Ipv4Addr,
    pub prefix: u8,
    file: PathBuf,
    run_id: String,
}

fn file_name(net: Ipv4Addr, prefix: u8) -> String {
    format!("{net}_{prefix}")
}

fn parse_file_name(name: &str) -> Option<(Ipv4Addr, u8)> {
    let (ip, len) = name.split_once('_')?;
    Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
}

/// A run id as isobench makes them: letters, digits, `-`, `_`, `.` (not `.` or `..`).
fn plausible_run_id(id: &str) -> bool {
    !id.is_empty()
        && id != "."
        && id != ".."
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

/// Open (creating it) `<root>/net` and take its lock.
fn lock(root: &Path) -> Result<(PathBuf, Flock<std::fs::File>), SubnetError> {
    let dir = root.join(NET_DIR);
    match std::fs::DirBuilder::new().mode(0o700).create(&dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(io("creating the subnet reservation directory", &dir)(e)),
    }
    let lock_path = dir.join(".lock");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&lock_path)
        .map_err(io("opening the subnet lock", &lock_path))?;
    let l = Flock::lock(f, FlockArg::LockExclusive)
        .map_err(|(_, e)| io("locking the subnet lock", &lock_path)(e.into()))?;
    Ok((dir, l))
}

/// The blocks reserved by live runs; files of runs that are gone are removed (reclaimed).
/// Called with the lock held.
fn reserved(root: &Path, dir: &Path) -> Result<Vec<(Ipv4Addr, u8)>, SubnetError> {
    let mut v = vec![];
    let rd = std::fs::read_dir(dir).map_err(io("listing reserved subnets", dir))?;
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(block) = parse_file_name(&name) else {
            continue;
        };
        let owner = std::fs::read_to_string(e.path()).unwrap_or_default();
        let owner = owner.trim();
        // Reclaim only what is provably stale: a well-formed id whose run directory is gone.
        if plausible_run_id(owner) && !root.join("runs").join(owner).exists() {
            let _ = std::fs::remove_file(e.path());
            continue;
        }
        v.push(block);
    }
    Ok(v)
}

/// Reserve a `/prefix` in `range`/16 for `run_id`: under the lock, the first block from a
/// random start that overlaps neither `host_used` nor another live run's reservation.
pub fn reserve(
    root: &Path,
    run_id: &str,
    range: Ipv4Addr,
    prefix: u8,
    host_used: &[(Ipv4Addr, u8)],
) -> Result<Reservation, SubnetError> {
    reserve_from(root, run_id, range, prefix, host_used, rand::random())
}

/// [`reserve`] with a given starting point (tests).
pub fn reserve_from(
    root: &Path,
    run_id: &str,
    range: Ipv4Addr,
    prefix: u8,
    host_used: &[(Ipv4Addr, u8)],
    seed: u32,
) -> Result<Reservation, SubnetError> {
    let (dir, _lock) = lock(root)?;
    let mut used = host_used.to_vec();
    used.extend(reserved(root, &dir)?);
    loop {
        let net = pick_block(range, prefix, &used, seed)
            .ok_or(SubnetError::Exhausted { range, prefix })?;
        let file = dir.join(file_name(net, prefix));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&file)
        {
            Ok(mut f) => {
                f.write_all(format!("{run_id}\n").as_bytes())
                    .and_then(|()| f.sync_all())
                    .map_err(io("writing a subnet reservation", &file))?;
                return Ok(Reservation {
                    net,
                    prefix,
                    file,
                    run_id: run_id.to_string(),
                });
            }
            // A file of that name that is not a parsable reservation (or a race with a
            // process that ignores the lock): never reuse it, try the next block.
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => used.push((net, prefix)),
            Err(e) => return Err(io("creating a subnet reservation", &file)(e)),
        }
    }
}

impl Reservation {
    /// Give the block back: remove the file if it still names this run. Idempotent.
    pub fn release(&self) -> Result<(), SubnetError> {
        let Some(root) = self.file.parent().and_then(Path::parent) else {
            return Ok(());
        };
        let (_dir, _lock) = lock(root)?;
        match std::fs::read_to_string(&self.file) {
            Ok(s) if s.trim() == self.run_id => std::fs::remove_file(&self.file)
                .map_err(io("removing a subnet reservation", &self.file)),
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io("reading a subnet reservation", &self.file)(e)),
        }
    }

    /// `net/prefix`.
    pub fn cidr(&self) -> String {
        format!("{}/{}", self.net, self.prefix)
    }
}

/// Networks in `ip -o -4 addr show` and `ip -4 route show` output (pure, unit-tested).
pub fn parse_used(addrs: &str, routes: &str) -> Vec<(Ipv4Addr, u8)> {
    let cidr = |w: &str| -> Option<(Ipv4Addr, u8)> {
        let (ip, len) = w.split_once('/').unwrap_or((w, "32"));
        Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
    };
    let mut v = vec![];
    for l in addrs.lines() {
        let mut w = l.split_whitespace().skip_while(|x| *x != "inet").skip(1);
        if let Some(c) = w.next().and_then(cidr) {
            v.push(c);
        }
    }
    for l in routes.lines() {
        // The destination is the first word after an optional route type.
        let first = l.split_whitespace().find(|w| {
            !matches!(
                *w,
                "unicast"
                    | "unreachable"
                    | "blackhole"
                    | "prohibit"
                    | "local"
                    | "broadcast"
                    | "throw"
                    | "nat"
                    | "anycast"
                    | "multicast"
            )
        });
        if let Some(c) = first.filter(|w| *w != "default").and_then(cidr) {
            v.push(c);
        }
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    const RANGE: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 0);

    fn run_dir(root: &Path, id: &str) {
        std::fs::create_dir_all(root.join("runs").join(id)).unwrap();
    }

    #[test]
    fn blocks_avoid_used_networks() {
        let used = vec![
            (Ipv4Addr::new(10, 214, 0, 0), 24),
            (Ipv4Addr::new(0, 0, 0, 0), 0),
        ];
        let r = Ipv4Addr::new(10, 214, 0, 0);
        assert_eq!(
            pick_block(r, 24, &used, 0),
            Some(Ipv4Addr::new(10, 214, 1, 0))
        );
        assert_eq!(
            pick_block(r, 24, &[(Ipv4Addr::new(10, 0, 0, 0), 8)], 7),
            None
        );
        assert_eq!(
            pick_block(Ipv4Addr::new(10, 216, 0, 0), 30, &[], 1),
            Some(Ipv4Addr::new(10, 216, 0, 4))
        );
    }

    #[test]
    fn two_runs_get_different_blocks_and_skip_host_networks() {
        let d = tempfile::tempdir().unwrap();
        run_dir(d.path(), "run-a");
        run_dir(d.path(), "run-b");
        // The host uses 10.215.0.0/24: both runs start there and must skip it and each other.
        let host = [(Ipv4Addr::new(10, 215, 0, 7), 24)];
        let a = reserve_from(d.path(), "run-a", RANGE, 24, &host, 0).unwrap();
        let b = reserve_from(d.path(), "run-b", RANGE, 24, &host, 0).unwrap();
        assert_eq!(a.net, Ipv4Addr::new(10, 215, 1, 0));
        assert_eq!(b.net, Ipv4Addr::new(10, 215, 2, 0));
        assert_eq!(
            std::fs::read_to_string(d.path().join("net/10.215.1.0_24")).unwrap(),
            "run-a\n"
        );
        // Released: the next run may take it again.
        a.release().unwrap();
        a.release().unwrap();
        run_dir(d.path(), "run-c");
        let c = reserve_from(d.path(), "run-c", RANGE, 24, &host, 0).unwrap();
        assert_eq!(c.net, Ipv4Addr::new(10, 215, 1, 0));
        // A /30 inside a reserved /24 is not handed out either.
        run_dir(d.path(), "run-d");
        let r = reserve_from(d.path(), "run-d", RANGE, 30, &host, 256 / 4 * 2).unwrap();
        assert_eq!(r.net, Ipv4Addr::new(10, 215, 3, 0));
        // Releasing someone else's block (the file names another run) leaves it alone.
        std::fs::write(d.path().join("net/10.215.2.0_24"), "run-x\n").unwrap();
        b.release().unwrap();
        assert!(d.path().join("net/10.215.2.0_24").exists());
    }

    #[test]
    fn blocks_of_gone_runs_are_reclaimed_and_junk_is_not() {
        let d = tempfile::tempdir().unwrap();
        run_dir(d.path(), "old");
        let old = reserve_from(d.path(), "old", RANGE, 24, &[], 0).unwrap();
        assert_eq!(old.net, RANGE);
        // A file with an implausible owner is kept (and its block avoided).
        std::fs::write(d.path().join("net/10.215.1.0_24"), "../../etc\n").unwrap();
        run_dir(d.path(), "new");
        let busy = reserve_from(d.path(), "new", RANGE, 24, &[], 0).unwrap();
        assert_eq!(busy.net, Ipv4Addr::new(10, 215, 2, 0));
        // The old run's directory goes (cleanup removed it): its block is free again.
        std::fs::remove_dir(d.path().join("runs/old")).unwrap();
        let again = reserve_from(d.path(), "new", RANGE, 24, &[], 0).unwrap();
        assert_eq!(again.net, RANGE);
        assert!(d.path().join("net/10.215.1.0_24").exists());
        // Exhaustion says so.
        let e = reserve_from(d.path(), "new", RANGE, 24, &[(RANGE, 16)], 0).unwrap_err();
        assert!(e.to_string().contains("no free /24"), "{e}");
    }

    #[test]
    fn parses_ip_output() {
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                     4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n";
        let routes = "default via 192.0.2.1 dev eth0\n\
                      192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
                      local 10.213.4.1 dev isbe1 table local proto kernel scope host\n\
                      unreachable 10.99.0.0/16\n";
        assert_eq!(
            parse_used(addrs, routes),
            vec![
                (Ipv4Addr::new(127, 0, 0, 1), 8),
                (Ipv4Addr::new(192, 0, 2, 2), 24),
                (Ipv4Addr::new(192, 0, 2, 0), 24),
                (Ipv4Addr::new(10, 213, 4, 1), 32),
                (Ipv4Addr::new(10, 99, 0, 0), 16),
            ]
        );
    }
}
