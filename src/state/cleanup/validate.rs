//! Recovery trusts nothing it reads back (RELIABILITY rule 14): every ledger entry is checked
//! against what isobench could have made before anything is killed, unmounted, executed or
//! deleted. An entry that fails is refused (reported with the reason and left alone).
//!
//! What isobench makes, and so what passes:
//! - dir / file / mount: an absolute path without `..`, inside the run's own directory (its
//!   parent canonicalised, a final symlink not followed);
//! - cgroup: a directory on a cgroup file system (v1 or v2), below a top-level `isobench-...`
//!   directory of that hierarchy's mount (found in /proc/self/mountinfo, canonicalised so
//!   co-mounted v1 controllers such as `cpu,cpuacct` are one hierarchy);
//! - process: pid + start time still match, and it is in one of the run's validated cgroups or
//!   carries `ISOBENCH_RUN_ID=<run id>` in its environment ([`process_owned`]);
//! - oci_container: runtime `runc`, `crun` or `runsc` as resolved in [`TRUSTED_PATH`] (root-owned,
//!   not group/world-writable), state root inside the run directory, id `isobench-<run id>-...`;
//! - lxc_container: lxcpath inside the run directory, name `isobench-<run id>-...`;
//! - link: `isb...` (at most 15 bytes) whose alias is `isobench:<run id>`;
//! - nft_table: `isobench_...` whose comment is `isobench run <run id>`;
//! - iptables_rule: `filter FORWARD`, carrying `-m comment --comment` with the run id;
//! - sysctl: under /proc/sys/net/ (restored only while it still holds the value the run set).

use std::os::unix::fs::MetadataExt;
use std::path::{Component, Path, PathBuf};

use crate::state::ledger::{valid_run_id, Resource};

/// Directories an OCI runtime is resolved in, in order (never the caller's PATH).
pub const TRUSTED_PATH: &[&str] = &[
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];
/// The OCI runtimes isobench drives.
pub const OCI_RUNTIMES: &[&str] = &["runc", "crun", "runsc"];
pub use crate::host::proc::RUN_ID_ENV;

const CGROUP_SUPER_MAGIC: i64 = 0x0027_e0eb;
const CGROUP2_SUPER_MAGIC: i64 = 0x6367_7270;

/// Why an entry was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal(pub String);

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

fn refuse<T>(why: impl Into<String>) -> Result<T, Refusal> {
    Err(Refusal(why.into()))
}

/// What cleanup may do with a validated entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Act on this (paths canonical, the runtime binary the trusted one).
    Act(Resource),
    /// Already gone: nothing to do, release it.
    Gone,
}

/// What a run may have made: its id, its directory, the cgroup hierarchies of the host.
#[derive(Debug, Clone)]
pub struct RunContext {
    pub run_id: String,
    /// The run directory, canonical.
    pub run_dir: PathBuf,
    /// Mount points of cgroup file systems (v1 and v2), from /proc/self/mountinfo.
    pub cgroup_mounts: Vec<PathBuf>,
}

impl RunContext {
    /// The context of run `run_id` in `run_dir`: the directory must be a real one named after
    /// the id (a ledger naming another run is refused whole).
    pub fn new(run_dir: &Path, run_id: &str) -> Result<Self, Refusal> {
        if !valid_run_id(run_id) {
            return refuse(format!(
                "the ledger's run id {run_id:?} is not an isobench run id"
            ));
        }
        if run_dir.file_name().and_then(|n| n.to_str()) != Some(run_id) {
            return refuse(format!(
                "the ledger's run id {run_id} does not match its directory {}",
                run_dir.display()
            ));
        }
        let md = std::fs::symlink_metadata(run_dir)
            .map_err(|e| Refusal(format!("{}: {e}", run_dir.display())))?;
        if !md.is_dir() {
            return refuse(format!("{} is not a directory", run_dir.display()));
        }
        let run_dir = std::fs::canonicalize(run_dir)
            .map_err(|e| Refusal(format!("{}: {e}", run_dir.display())))?;
        let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Ok(RunContext {
            run_id: run_id.to_string(),
            run_dir,
            cgroup_mounts: cgroup_mounts(&info),
        })
    }

    fn name_prefix(&self) -> String {
        format!("isobench-{}-", self.run_id)
    }
}

/// Mount points of cgroup and cgroup2 file systems in a mountinfo text.
pub fn cgroup_mounts(mountinfo: &str) -> Vec<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            let fstype = post.split(' ').next()?;
            (fstype == "cgroup" || fstype == "cgroup2")
                .then(|| {
                    pre.split(' ')
                        .nth(4)
                        .map(crate::host::fs::unescape_mount_path)
                })
                .flatten()
        })
        .collect()
}

/// Check one ledger entry; see the module documentation for what passes.
pub fn validate(entry: &Resource, cx: &RunContext) -> Result<Verdict, Refusal> {
    match entry {
        Resource::Dir { path } => Ok(inside_run_dir(path, cx)?
            .map_or(Verdict::Gone, |path| Verdict::Act(Resource::Dir { path }))),
        Resource::File { path } => Ok(inside_run_dir(path, cx)?
            .map_or(Verdict::Gone, |path| Verdict::Act(Resource::File { path }))),
        Resource::Mount { path } => Ok(inside_run_dir(path, cx)?
            .map_or(Verdict::Gone, |path| Verdict::Act(Resource::Mount { path }))),
        Resource::Cgroup { path } => Ok(owned_cgroup(path, cx)?.map_or(Verdict::Gone, |path| {
            Verdict::Act(Resource::Cgroup { path })
        })),
        Resource::Process { pid, start_time } => {
            if *pid <= 1 {
                return refuse(format!("pid {pid} is not one isobench starts"));
            }
            // A pid whose start time differs is another process now: ours is gone.
            if crate::host::proc::process_start_time(*pid) != Some(*start_time) {
                return Ok(Verdict::Gone);
            }
            Ok(Verdict::Act(entry.clone()))
        }
        Resource::OciContainer { runtime, root, id } => {
            container_name(id, cx)?;
            let runtime = trusted_runtime(runtime)?;
            Ok(match inside_run_dir(root, cx)? {
                None => Verdict::Gone,
                Some(root) => Verdict::Act(Resource::OciContainer {
                    runtime,
                    root,
                    id: id.clone(),
                }),
            })
        }
        Resource::LxcContainer { lxcpath, name } => {
            container_name(name, cx)?;
            Ok(match inside_run_dir(lxcpath, cx)? {
                None => Verdict::Gone,
                Some(lxcpath) => Verdict::Act(Resource::LxcContainer {
                    lxcpath,
                    name: name.clone(),
                }),
            })
        }
        Resource::Link { name } => {
            link_name(name)?;
            let sys = Path::new("/sys/class/net").join(name);
            if std::fs::symlink_metadata(&sys).is_err() {
                return Ok(Verdict::Gone);
            }
            let alias = std::fs::read_to_string(sys.join("ifalias")).ok();
            let address = std::fs::read_to_string(sys.join("address")).ok();
            link_alias(name, alias.as_deref(), address.as_deref(), &cx.run_id)?;
            Ok(Verdict::Act(entry.clone()))
        }
        Resource::NftTable { family, name } => {
            nft_table_name(family, name)?;
            match nft_table_listing(family, name)? {
                None => Ok(Verdict::Gone),
                Some(listing) => {
                    nft_comment(&listing, name, &cx.run_id)?;
                    Ok(Verdict::Act(entry.clone()))
                }
            }
        }
        Resource::IptablesRule { table, chain, rule } => {
            iptables_rule(table, chain, rule, &cx.run_id)?;
            Ok(Verdict::Act(entry.clone()))
        }
        Resource::Sysctl { path, .. } => {
            sysctl_path(path)?;
            Ok(Verdict::Act(entry.clone()))
        }
        // Checked by its own remover (the Docker tier's engineer owns this arm).
        Resource::DockerContainer { .. } => Ok(Verdict::Act(entry.clone())),
    }
}

/// `path` absolute, without `..`, strictly inside the run directory once its parent is
/// canonicalised (a final symlink is not followed). `None` when its parent no longer exists.
pub fn inside_run_dir(path: &Path, cx: &RunContext) -> Result<Option<PathBuf>, Refusal> {
    lexically_inside(path, &cx.run_dir)?;
    let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
        return refuse(format!("{} has no parent", path.display()));
    };
    let parent = match std::fs::canonicalize(parent) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return refuse(format!("resolving {}: {e}", parent.display())),
    };
    if !parent.starts_with(&cx.run_dir) {
        return refuse(format!(
            "{} resolves to {}, outside the run directory {}",
            path.display(),
            parent.join(name).display(),
            cx.run_dir.display()
        ));
    }
    Ok(Some(parent.join(name)))
}

/// The lexical part of [`inside_run_dir`].
pub fn lexically_inside(path: &Path, run_dir: &Path) -> Result<(), Refusal> {
    if !path.is_absolute() {
        return refuse(format!("{} is not an absolute path", path.display()));
    }
    if path
        .components()
        .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        return refuse(format!("{} contains `..` or `.`", path.display()));
    }
    if !path.starts_with(run_dir) || path == run_dir {
        return refuse(format!(
            "{} is not inside the run directory {}",
            path.display(),
            run_dir.display()
        ));
    }
    Ok(())
}

/// A cgroup isobench made: canonical path on a cgroup file system below a top-level
/// `isobench-...` directory of its hierarchy. `None` when it no longer exists.
pub fn owned_cgroup(path: &Path, cx: &RunContext) -> Result<Option<PathBuf>, Refusal> {
    if !path.is_absolute() || path.components().any(|c| c == Component::ParentDir) {
        return refuse(format!(
            "cgroup {} is not an absolute path without `..`",
            path.display()
        ));
    }
    let canon = match std::fs::canonicalize(path) {
        Ok(p) => p,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return refuse(format!("resolving cgroup {}: {e}", path.display())),
    };
    let fs = nix::sys::statfs::statfs(&canon)
        .map_err(|e| Refusal(format!("statfs {}: {e}", canon.display())))?;
    let magic = fs.filesystem_type().0;
    if magic != CGROUP_SUPER_MAGIC && magic != CGROUP2_SUPER_MAGIC {
        return refuse(format!(
            "{} is not on a cgroup file system (magic {magic:#x})",
            canon.display()
        ));
    }
    cgroup_under_isobench_top(&canon, &cx.cgroup_mounts)?;
    Ok(Some(canon))
}

/// Pure part of [`owned_cgroup`]: `canon` lies below a top-level directory named
/// `isobench-...` of the deepest cgroup mount that contains it.
pub fn cgroup_under_isobench_top(canon: &Path, mounts: &[PathBuf]) -> Result<(), Refusal> {
    let Some(mount) = mounts
        .iter()
        .filter(|m| canon.starts_with(m))
        .max_by_key(|m| m.components().count())
    else {
        return refuse(format!(
            "{} is not below a cgroup mount point",
            canon.display()
        ));
    };
    let rel = canon.strip_prefix(mount).expect("filtered on starts_with");
    match rel.components().next() {
        Some(Component::Normal(top)) if top.to_string_lossy().starts_with("isobench-") => Ok(()),
        _ => refuse(format!(
            "cgroup {} is not below a top-level isobench-... directory of {}",
            canon.display(),
            mount.display()
        )),
    }
}

/// May cleanup kill `pid`? Only if it is in one of the run's validated cgroups
/// (`cgroup_pids`) or its environment (`environ`, NUL-separated) carries the run's marker.
pub fn process_owned(
    pid: i32,
    cgroup_pids: &[i32],
    environ: Option<&[u8]>,
    run_id: &str,
) -> Result<(), Refusal> {
    if cgroup_pids.contains(&pid) {
        return Ok(());
    }
    let marker = format!("{RUN_ID_ENV}={run_id}");
    if environ.is_some_and(|e| e.split(|&b| b == 0).any(|v| v == marker.as_bytes())) {
        return Ok(());
    }
    refuse(format!(
        "process {pid} is neither in one of the run's cgroups nor marked {marker}"
    ))
}

fn container_name(name: &str, cx: &RunContext) -> Result<(), Refusal> {
    if crate::backend::resources::valid_container_name(name) && name.starts_with(&cx.name_prefix())
    {
        Ok(())
    } else {
        refuse(format!(
            "container {name:?} is not named {}...",
            cx.name_prefix()
        ))
    }
}

/// The runtime binary a ledger names, if it is one of [`OCI_RUNTIMES`] as found in
/// [`TRUSTED_PATH`] (root-owned, not writable by group or others): its canonical path.
pub fn trusted_runtime(ledger_path: &Path) -> Result<PathBuf, Refusal> {
    let name = ledger_path
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("");
    if !OCI_RUNTIMES.contains(&name) {
        return refuse(format!(
            "runtime {} is not one of {}",
            ledger_path.display(),
            OCI_RUNTIMES.join(", ")
        ));
    }
    let Some(found) = TRUSTED_PATH
        .iter()
        .map(|d| Path::new(d).join(name))
        .find(|p| p.exists())
    else {
        return refuse(format!(
            "{name} is not installed in {}",
            TRUSTED_PATH.join(":")
        ));
    };
    let trusted = std::fs::canonicalize(&found)
        .map_err(|e| Refusal(format!("resolving {}: {e}", found.display())))?;
    let md =
        std::fs::metadata(&trusted).map_err(|e| Refusal(format!("{}: {e}", trusted.display())))?;
    if !md.is_file() || md.uid() != 0 || md.mode() & 0o022 != 0 {
        return refuse(format!(
            "{} is not a root-owned file closed to group and others",
            trusted.display()
        ));
    }
    match std::fs::canonicalize(ledger_path) {
        Ok(p) if p == trusted => Ok(trusted),
        _ => refuse(format!(
            "runtime {} is not the trusted {}",
            ledger_path.display(),
            trusted.display()
        )),
    }
}

/// `isb...`, at most 15 bytes, letters, digits, `-`, `_`, `.`.
pub fn link_name(name: &str) -> Result<(), Refusal> {
    if name.starts_with("isb")
        && name.len() <= 15
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        Ok(())
    } else {
        refuse(format!("network device {name:?} is not named isb..."))
    }
}

/// The device's alias (`ifalias`, `None` when unreadable) must be `isobench:<run id>`, or, when
/// it has none (a run killed between creating the device and marking it), its MAC address must
/// be the one the run gave it in the creating request (`netdev::mark_mac`).
pub fn link_alias(
    name: &str,
    alias: Option<&str>,
    address: Option<&str>,
    run_id: &str,
) -> Result<(), Refusal> {
    let address = address.map(|a| a.trim().to_ascii_lowercase());
    crate::host::net::netdev::check_owned(name, alias, address.as_deref(), run_id).map_err(Refusal)
}

fn nft_table_name(family: &str, name: &str) -> Result<(), Refusal> {
    let families = ["ip", "ip6", "inet", "arp", "bridge", "netdev"];
    if families.contains(&family)
        && name.starts_with("isobench_")
        && crate::host::net::valid_nft_name(name)
    {
        Ok(())
    } else {
        refuse(format!(
            "nftables table {family} {name:?} is not isobench_..."
        ))
    }
}

/// `nft -j list table <family> <name>`; `None` when the table does not exist.
/// `nft -a list table family name` (text: nft 1.0.6's JSON output leaves table comments out).
fn nft_table_listing(family: &str, name: &str) -> Result<Option<String>, Refusal> {
    let out = std::process::Command::new("nft")
        .args(["-a", "list", "table", family, name])
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| {
            Refusal(format!(
                "running `nft -a list table`: {e} (install nftables)"
            ))
        })?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such file or directory") {
        Ok(None)
    } else {
        refuse(format!(
            "`nft list table {family} {name}` failed: {}",
            err.trim()
        ))
    }
}

/// The table in `nft -a list table` output must carry the comment `isobench run <run id>`.
pub fn nft_comment(listing: &str, name: &str, run_id: &str) -> Result<(), Refusal> {
    let want = crate::backend::container::net::table_comment(run_id);
    let Some((_, comment)) = crate::backend::container::net::parse_table_listing(listing) else {
        return refuse(format!(
            "cannot read nft's listing of table {name}: left alone"
        ));
    };
    match comment {
        Some(c) if c == want => Ok(()),
        c => refuse(format!(
            "nftables table {name} has comment {:?}, not {want:?}: not this run's",
            c.unwrap_or_default()
        )),
    }
}

/// `filter FORWARD`, with `-m comment --comment <...run id...>` in the rule.
pub fn iptables_rule(
    table: &str,
    chain: &str,
    rule: &[String],
    run_id: &str,
) -> Result<(), Refusal> {
    if table != "filter" || chain != "FORWARD" {
        return refuse(format!(
            "iptables rule in {table} {chain}: isobench only adds to filter FORWARD"
        ));
    }
    let commented = rule
        .windows(4)
        .any(|w| w[0] == "-m" && w[1] == "comment" && w[2] == "--comment" && w[3].contains(run_id));
    if commented {
        Ok(())
    } else {
        refuse(format!(
            "iptables rule `{}` does not carry a comment with run id {run_id}",
            rule.join(" ")
        ))
    }
}

/// Under /proc/sys/net/, without `..`.
pub fn sysctl_path(path: &Path) -> Result<(), Refusal> {
    if path.starts_with("/proc/sys/net/")
        && path.components().count() > 4
        && !path
            .components()
            .any(|c| matches!(c, Component::ParentDir | Component::CurDir))
    {
        Ok(())
    } else {
        refuse(format!(
            "sysctl {} is not under /proc/sys/net/",
            path.display()
        ))
    }
}

/// Whether to put a sysctl back: only while it still holds what the run `set` (never when the
/// ledger does not say). `Err` says why it is left as it is.
pub fn sysctl_restore<'a>(current: &str, restore: &'a str, set: &str) -> Result<&'a str, String> {
    if set.is_empty() {
        return Err(format!(
            "the ledger does not say which value the run wrote; left as is (restore {restore:?} by hand if it is still the run's)"
        ));
    }
    if current.trim() != set.trim() {
        return Err(format!(
            "it now holds {:?}, not the {set:?} the run wrote: someone else changed it; left as is",
            current.trim()
        ));
    }
    Ok(restore)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cx(dir: &Path) -> RunContext {
        RunContext {
            run_id: "20260101-000000-0badcafe".into(),
            run_dir: dir.to_path_buf(),
            cgroup_mounts: vec![
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct"),
                PathBuf::from("/sys/fs/cgroup/memory"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ],
        }
    }

    #[test]
    fn paths_stay_inside_the_run_dir() {
        let d = tempfile::tempdir().unwrap();
        let base = std::fs::canonicalize(d.path()).unwrap();
        let run = base.join("runs/20260101-000000-0badcafe");
        std::fs::create_dir_all(run.join("scratch")).unwrap();
        let outside = base.join("canary");
        std::fs::create_dir(&outside).unwrap();
        let c = cx(&run);
        let ok = run.join("scratch/x");
        assert_eq!(inside_run_dir(&ok, &c), Ok(Some(ok.clone())));
        // Hostile: outside, relative, `..`, the run dir itself, a sibling with a common prefix.
        for bad in [
            outside.clone(),
            PathBuf::from("scratch/x"),
            run.join("scratch/../../../canary"),
            run.clone(),
            base.join("runs/20260101-000000-0badcafe2/x"),
            PathBuf::from("/etc"),
        ] {
            assert!(inside_run_dir(&bad, &c).is_err(), "{}", bad.display());
        }
        // A symlinked parent that leads outside is refused; a final symlink is not followed.
        std::os::unix::fs::symlink(&outside, run.join("scratch/esc")).unwrap();
        let e = inside_run_dir(&run.join("scratch/esc/victim"), &c).unwrap_err();
        assert!(e.0.contains("outside the run directory"), "{e}");
        assert_eq!(
            inside_run_dir(&run.join("scratch/esc"), &c),
            Ok(Some(run.join("scratch/esc")))
        );
        // A parent that no longer exists: nothing to remove.
        assert_eq!(inside_run_dir(&run.join("gone/x"), &c), Ok(None));
        for (r, act) in [
            (
                Resource::Dir {
                    path: outside.clone(),
                },
                false,
            ),
            (
                Resource::File {
                    path: outside.join("f"),
                },
                false,
            ),
            (
                Resource::Mount {
                    path: outside.clone(),
                },
                false,
            ),
            (Resource::Dir { path: ok.clone() }, true),
        ] {
            assert_eq!(validate(&r, &c).is_ok(), act, "{r:?}");
        }
    }

    #[test]
    fn cgroups_only_below_an_isobench_top_dir_of_a_cgroup_mount() {
        let m = cx(Path::new("/r")).cgroup_mounts;
        let ok = [
            "/sys/fs/cgroup/cpu,cpuacct/isobench-runc-x/isobench-x-runc-1",
            "/sys/fs/cgroup/memory/isobench-container-1",
            "/sys/fs/cgroup/unified/isobench-a/b/c",
        ];
        for p in ok {
            assert_eq!(cgroup_under_isobench_top(Path::new(p), &m), Ok(()), "{p}");
        }
        let bad = [
            "/sys/fs/cgroup/memory",
            "/sys/fs/cgroup/memory/user.slice/isobench-x",
            "/sys/fs/cgroup/memory/notisobench-x",
            "/sys/fs/cgroup/cpu/isobench-x",
            "/tmp/isobench-x",
            "/etc",
        ];
        for p in bad {
            assert!(cgroup_under_isobench_top(Path::new(p), &m).is_err(), "{p}");
        }
        // A plain directory that merely looks like a cgroup is refused by its file system.
        let d = tempfile::tempdir().unwrap();
        let fake = d.path().join("isobench-fake");
        std::fs::create_dir(&fake).unwrap();
        std::fs::write(fake.join("cgroup.procs"), b"1\n").unwrap();
        let mut c = cx(d.path());
        c.cgroup_mounts.push(d.path().to_path_buf());
        let e = owned_cgroup(&fake, &c).unwrap_err();
        assert!(e.0.contains("not on a cgroup file system"), "{e}");
        assert!(owned_cgroup(Path::new("isobench-x"), &c).is_err());
        assert_eq!(owned_cgroup(&d.path().join("gone"), &c), Ok(None));
    }

    #[test]
    fn cgroup_mounts_from_mountinfo() {
        let info = "30 25 0:26 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n\
                    31 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n\
                    32 25 0:28 / /tmp/x rw - tmpfs tmpfs rw\n";
        assert_eq!(
            cgroup_mounts(info),
            vec![
                PathBuf::from("/sys/fs/cgroup/unified"),
                PathBuf::from("/sys/fs/cgroup/cpu,cpuacct")
            ]
        );
    }

    #[test]
    fn processes_need_a_cgroup_or_the_marker() {
        let id = "20260101-000000-0badcafe";
        assert!(process_owned(7, &[7, 8], None, id).is_ok());
        let env = b"PATH=/bin\0ISOBENCH_RUN_ID=20260101-000000-0badcafe\0";
        assert!(process_owned(9, &[], Some(env), id).is_ok());
        // Another run's marker, a marker as a prefix, no marker: refused.
        let other = b"ISOBENCH_RUN_ID=20260101-000000-0badcafe2\0";
        assert!(process_owned(9, &[7], Some(other), id).is_err());
        assert!(process_owned(9, &[7], Some(b"HOME=/\0"), id).is_err());
        assert!(process_owned(9, &[], None, id).is_err());
        let c = cx(Path::new("/r"));
        assert!(validate(
            &Resource::Process {
                pid: 1,
                start_time: 1
            },
            &c
        )
        .is_err());
        // A pid whose start time differs is gone, never acted on.
        let me = i32::try_from(std::process::id()).unwrap();
        let st = crate::host::proc::process_start_time(me).unwrap();
        assert_eq!(
            validate(
                &Resource::Process {
                    pid: me,
                    start_time: st + 1
                },
                &c
            ),
            Ok(Verdict::Gone)
        );
    }

    #[test]
    fn runtimes_only_from_the_fixed_list_in_the_trusted_path() {
        let d = tempfile::tempdir().unwrap();
        let c = cx(&std::fs::canonicalize(d.path()).unwrap());
        let fake = d.path().join("runc");
        std::fs::write(&fake, b"#!/bin/sh\ntouch /tmp/pwned\n").unwrap();
        assert!(trusted_runtime(&fake).is_err());
        assert!(trusted_runtime(Path::new("/bin/sh")).is_err());
        assert!(trusted_runtime(Path::new("runc")).is_err());
        let oci = |runtime: &Path, root: PathBuf, id: &str| Resource::OciContainer {
            runtime: runtime.to_path_buf(),
            root,
            id: id.into(),
        };
        let root = c.run_dir.join("scratch/oci");
        let good_id = "isobench-20260101-000000-0badcafe-runc-1";
        assert!(validate(&oci(&fake, root.clone(), good_id), &c).is_err());
        if let Some(real) = TRUSTED_PATH
            .iter()
            .map(|p| Path::new(p).join("runc"))
            .find(|p| p.exists())
        {
            assert!(validate(&oci(&real, root.clone(), good_id), &c).is_ok());
            let other_run = "isobench-20260101-000000-00000000-runc-1";
            assert!(validate(&oci(&real, root.clone(), other_run), &c).is_err());
            assert!(validate(&oci(&real, PathBuf::from("/run/runc"), good_id), &c).is_err());
        }
        let lxc = |lxcpath: PathBuf, name: &str| Resource::LxcContainer {
            lxcpath,
            name: name.into(),
        };
        assert!(validate(&lxc(root.clone(), good_id), &c).is_ok());
        assert!(validate(&lxc(PathBuf::from("/var/lib/lxc"), good_id), &c).is_err());
        assert!(validate(&lxc(root, "isobench-other-1"), &c).is_err());
    }

    #[test]
    fn links_and_tables_need_prefix_and_mark() {
        let id = "20260101-000000-0badcafe";
        assert!(link_name("isbk1br").is_ok());
        for bad in ["eth0", "isbk1234567890123", "isb/../x", "docker0"] {
            assert!(link_name(bad).is_err(), "{bad}");
        }
        assert!(link_alias(
            "isbk1br",
            Some("isobench:20260101-000000-0badcafe\n"),
            None,
            id
        )
        .is_ok());
        assert!(link_alias("isbk1br", Some(""), None, id).is_err());
        assert!(link_alias("isbk1br", None, None, id).is_err());
        assert!(link_alias(
            "isbk1br",
            Some("isobench:20260101-000000-00000000"),
            None,
            id
        )
        .is_err());
        // Killed between creation and alias: the creation-time MAC proves it, nothing else does.
        let mac = crate::host::net::netdev::mark_mac(id, "isbk1br");
        assert!(link_alias(
            "isbk1br",
            Some("\n"),
            Some(&format!("{}\n", mac.to_uppercase())),
            id
        )
        .is_ok());
        assert!(link_alias("isbk1br", Some(""), Some("02:00:00:00:00:01\n"), id).is_err());
        assert!(link_alias("isbk2br", Some(""), Some(&mac), id).is_err());
        assert!(nft_table_name("ip", "isobench_k1").is_ok());
        assert!(nft_table_name("ip", "canary_1").is_err());
        assert!(nft_table_name("evil", "isobench_k1").is_err());
        // What `nft -a list table` prints (nft 1.0.6).
        let listing = |comment: &str| {
            format!(
                "table ip isobench_k1 {{ # handle 3\n{comment}\tchain postrouting {{ # handle 1\n\t}}\n}}\n"
            )
        };
        let ok = listing("\tcomment \"isobench run 20260101-000000-0badcafe\"\n");
        assert!(nft_comment(&ok, "isobench_k1", id).is_ok());
        assert!(nft_comment(&listing(""), "isobench_k1", id).is_err());
        let other = listing("\tcomment \"isobench run 20260101-000000-00000000\"\n");
        assert!(nft_comment(&other, "isobench_k1", id).is_err());
        assert!(nft_comment("garbage", "isobench_k1", id).is_err());
    }

    #[test]
    fn iptables_rules_and_sysctls() {
        let id = "20260101-000000-0badcafe";
        let rule = |c: &str| -> Vec<String> {
            [
                "-i",
                "isbk1br",
                "-m",
                "comment",
                "--comment",
                c,
                "-j",
                "ACCEPT",
            ]
            .iter()
            .map(|s| s.to_string())
            .collect()
        };
        let ours = rule("isobench run 20260101-000000-0badcafe");
        assert!(iptables_rule("filter", "FORWARD", &ours, id).is_ok());
        assert!(iptables_rule("nat", "FORWARD", &ours, id).is_err());
        assert!(iptables_rule("filter", "INPUT", &ours, id).is_err());
        assert!(iptables_rule("filter", "FORWARD", &rule("someone"), id).is_err());
        let plain: Vec<String> = vec!["-j".into(), "ACCEPT".into()];
        assert!(iptables_rule("filter", "FORWARD", &plain, id).is_err());
        assert!(sysctl_path(Path::new("/proc/sys/net/ipv4/conf/isbk1br/forwarding")).is_ok());
        for bad in [
            "/proc/sys/kernel/core_pattern",
            "/proc/sys/net/../kernel/core_pattern",
            "/proc/sys/net",
            "/etc/passwd",
        ] {
            assert!(sysctl_path(Path::new(bad)).is_err(), "{bad}");
        }
        assert_eq!(sysctl_restore("1\n", "0", "1"), Ok("0"));
        assert!(sysctl_restore("0\n", "0", "1").is_err(), "changed since");
        assert!(sysctl_restore("1\n", "0", "").is_err(), "old ledger");
    }

    #[test]
    fn context_refuses_a_ledger_of_another_directory() {
        let d = tempfile::tempdir().unwrap();
        let run = d.path().join("20260101-000000-0badcafe");
        std::fs::create_dir(&run).unwrap();
        assert!(RunContext::new(&run, "20260101-000000-0badcafe").is_ok());
        assert!(RunContext::new(&run, "20260101-000000-00000000").is_err());
        assert!(RunContext::new(&run, "../x").is_err());
        let link = d.path().join("20260101-000000-11111111");
        std::os::unix::fs::symlink(&run, &link).unwrap();
        assert!(RunContext::new(&link, "20260101-000000-11111111").is_err());
    }
}
