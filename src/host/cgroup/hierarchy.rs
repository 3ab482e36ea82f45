//! Which cgroup hierarchies the host mounts, read from `/proc/self/mountinfo` (mount point and,
//! for v1, the controllers in the super options), never guessed from directory names: on most
//! v1 and hybrid hosts `cpu` and `cpuacct` are one hierarchy mounted at `cpu,cpuacct`, with the
//! two names as symlinks to it, and a cgroup made "per controller name" there would be made
//! twice in one directory.

use std::path::{Path, PathBuf};

use crate::model::facts::CgroupLayout;

use super::{CGROUP_ROOT, V1_CONTROLLERS};

/// One mounted cgroup hierarchy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hierarchy {
    /// Where it is mounted (first mount of its superblock under the cgroup root).
    pub mount: PathBuf,
    /// v1: the controllers of its super options (`cpu`, `cpuacct`, `name=systemd`, ...);
    /// v2: empty (read `cgroup.controllers` for what it offers).
    pub controllers: Vec<String>,
    pub v2: bool,
}

impl Hierarchy {
    /// Does this v1 hierarchy carry `controller`?
    pub fn has(&self, controller: &str) -> bool {
        self.controllers.iter().any(|c| c == controller)
    }
}

/// Every cgroup hierarchy mounted under the cgroup root, one entry per distinct mount.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hierarchies {
    /// The cgroup root they were read under (normally [`CGROUP_ROOT`]).
    pub root: PathBuf,
    pub all: Vec<Hierarchy>,
}

impl Hierarchies {
    /// The hierarchies of this host (`/proc/self/mountinfo`, under [`CGROUP_ROOT`]). An
    /// unreadable mountinfo yields none (the layout is then `none`).
    pub fn detect() -> Self {
        let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        Self::parse(&text, Path::new(CGROUP_ROOT))
    }

    /// The cgroup and cgroup2 mounts of a mountinfo text at or below `root`; a hierarchy
    /// mounted twice (same device) counts once, at its first mount point.
    pub fn parse(mountinfo: &str, root: &Path) -> Self {
        let mut all: Vec<Hierarchy> = vec![];
        let mut devs: Vec<String> = vec![];
        for line in mountinfo.lines() {
            let Some((pre, post)) = line.split_once(" - ") else {
                continue;
            };
            let pre: Vec<&str> = pre.split(' ').collect();
            let post: Vec<&str> = post.split(' ').collect();
            let (Some(dev), Some(mount), Some(fstype), Some(opts)) =
                (pre.get(2), pre.get(4), post.first(), post.get(2))
            else {
                continue;
            };
            let v2 = match *fstype {
                "cgroup2" => true,
                "cgroup" => false,
                _ => continue,
            };
            let mount = PathBuf::from(unescape(mount));
            if !mount.starts_with(root) || devs.iter().any(|d| d == dev) {
                continue;
            }
            let controllers = if v2 {
                vec![]
            } else {
                opts.split(',')
                    .filter(|o| {
                        !matches!(
                            *o,
                            "rw" | "ro"
                                | "noprefix"
                                | "clone_children"
                                | "xattr"
                                | "cpuset_v2_mode"
                        ) && !o.starts_with("release_agent=")
                    })
                    .map(String::from)
                    .collect()
            };
            devs.push(dev.to_string());
            all.push(Hierarchy {
                mount,
                controllers,
                v2,
            });
        }
        Hierarchies {
            root: root.to_path_buf(),
            all,
        }
    }

    /// The v2 hierarchy, if one is mounted.
    pub fn v2(&self) -> Option<&Hierarchy> {
        self.all.iter().find(|h| h.v2)
    }

    /// The v1 hierarchy that carries `controller`.
    pub fn v1(&self, controller: &str) -> Option<&Hierarchy> {
        self.all.iter().find(|h| !h.v2 && h.has(controller))
    }

    /// The layout: `v2` when cgroup2 is mounted at the root itself, `hybrid` when v1 controllers
    /// and a cgroup2 mount coexist (or cgroup2 sits below the root alone), `v1`, or `none`.
    pub fn layout(&self) -> CgroupLayout {
        if self.all.iter().any(|h| h.v2 && h.mount == self.root) {
            return CgroupLayout::V2;
        }
        let v1 = self
            .all
            .iter()
            .any(|h| !h.v2 && V1_CONTROLLERS.iter().any(|c| h.has(c)));
        match (v1, self.v2().is_some()) {
            (true, true) | (false, true) => CgroupLayout::Hybrid,
            (true, false) => CgroupLayout::V1,
            (false, false) => CgroupLayout::None,
        }
    }

    /// The v1 hierarchies isobench's own cgroups go into: those carrying one of
    /// [`V1_CONTROLLERS`], one per mount (so `cpu,cpuacct` is one directory).
    pub fn v1_used(&self) -> Vec<&Hierarchy> {
        self.all
            .iter()
            .filter(|h| !h.v2 && V1_CONTROLLERS.iter().any(|c| h.has(c)))
            .collect()
    }

    /// Can a cgroup here get a `pids.max`? v2: the root offers `pids`; v1: a pids hierarchy.
    pub fn has_pids(&self, layout: CgroupLayout) -> bool {
        match layout {
            CgroupLayout::V2 => self.v2().is_some_and(|h| {
                std::fs::read_to_string(h.mount.join("cgroup.controllers"))
                    .is_ok_and(|s| s.split_whitespace().any(|c| c == "pids"))
            }),
            CgroupLayout::V1 | CgroupLayout::Hybrid => self.v1("pids").is_some(),
            CgroupLayout::None => false,
        }
    }
}

/// Undo mountinfo's octal escapes (`\040` for a space, `\011`, `\012`, `\134`).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = b[i + 1..i + 4]
                .iter()
                .fold(0u16, |acc, c| acc * 8 + u16::from(c - b'0'));
            if let Ok(v) = u8::try_from(v) {
                out.push(v);
                i += 4;
                continue;
            }
            out.push(b[i]);
            i += 1;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// This host's mountinfo (Debian 12, hybrid, every controller on its own).
    pub const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    /// A systemd v1 host: `cpu,cpuacct` and `net_cls,net_prio` co-mounted (the names `cpu`,
    /// `cpuacct` are symlinks, which mountinfo never lists).
    pub fn comounted(root: &str) -> String {
        format!(
            "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / {root} ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
31 30 0:27 / {root}/systemd rw,nosuid,nodev,noexec,relatime shared:10 - cgroup cgroup rw,xattr,name=systemd
34 30 0:30 / {root}/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
35 30 0:31 / {root}/memory rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,memory
36 30 0:32 / {root}/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,net_cls,net_prio
37 30 0:33 / {root}/pids rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,pids
"
        )
    }

    pub const PURE_V2: &str = "\
25 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
30 25 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:9 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
";

    #[test]
    fn hybrid_host() {
        let h = Hierarchies::parse(HYBRID, Path::new("/sys/fs/cgroup"));
        assert_eq!(h.layout(), CgroupLayout::Hybrid);
        let used: Vec<&Path> = h.v1_used().iter().map(|h| h.mount.as_path()).collect();
        assert_eq!(
            used,
            ["cpu", "cpuacct", "memory", "pids"]
                .map(|c| Path::new("/sys/fs/cgroup").join(c))
                .iter()
                .map(PathBuf::as_path)
                .collect::<Vec<_>>()
        );
        assert_eq!(h.v2().unwrap().mount, Path::new("/sys/fs/cgroup/unified"));
        assert!(h.has_pids(CgroupLayout::Hybrid));
        // The tmpfs at the root is no hierarchy; the named one is listed but not "used".
        assert_eq!(h.all.len(), 7);
        assert!(h.all.iter().any(|x| x.has("name=systemd")));
    }

    #[test]
    fn comounted_v1_is_one_hierarchy() {
        let h = Hierarchies::parse(&comounted("/sys/fs/cgroup"), Path::new("/sys/fs/cgroup"));
        assert_eq!(h.layout(), CgroupLayout::V1);
        let cpu = h.v1("cpu").unwrap();
        assert_eq!(cpu, h.v1("cpuacct").unwrap());
        assert_eq!(cpu.mount, Path::new("/sys/fs/cgroup/cpu,cpuacct"));
        assert_eq!(cpu.controllers, ["cpu", "cpuacct"]);
        assert_eq!(h.v1_used().len(), 3, "cpu,cpuacct + memory + pids");
        // xattr is a mount option, not a controller.
        assert_eq!(h.all[0].controllers, ["name=systemd"]);
    }

    #[test]
    fn pure_v2_and_none() {
        let root = Path::new("/sys/fs/cgroup");
        let h = Hierarchies::parse(PURE_V2, root);
        assert_eq!(h.layout(), CgroupLayout::V2);
        assert!(h.v1_used().is_empty());
        assert_eq!(h.v2().unwrap().mount, root);
        let none = Hierarchies::parse("25 1 8:1 / / rw - ext4 /dev/sda1 rw\n", root);
        assert_eq!(none.layout(), CgroupLayout::None);
        assert!(!none.has_pids(CgroupLayout::V1));
    }

    #[test]
    fn bind_mounts_and_escapes() {
        // The same hierarchy bind-mounted a second time counts once; mounts outside the root
        // are ignored; escaped spaces are undone.
        let text = "\
1 0 0:40 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory
2 0 0:40 / /sys/fs/cgroup/memory2 rw - cgroup cgroup rw,memory
3 0 0:41 / /mnt/pids rw - cgroup cgroup rw,pids
4 0 0:42 / /sys/fs/cgroup/a\\040b rw - cgroup cgroup rw,cpu
";
        let h = Hierarchies::parse(text, Path::new("/sys/fs/cgroup"));
        assert_eq!(h.all.len(), 2);
        assert_eq!(h.all[1].mount, Path::new("/sys/fs/cgroup/a b"));
        assert!(h.v1("pids").is_none());
    }
}
