//! The container's setup sequence, written once and commented step by step, behind a small
//! `Syscall` seam (youki `crates/libcontainer/src/syscall/syscall.rs`) so that a recording fake
//! can check the order and flags without root.
//!
//! The sequence runs in the cloned child, which is already in fresh mount, pid, uts, ipc and
//! network namespaces and already placed in its cgroup. It must not allocate: every path and
//! option string is a `CStr` prepared by the parent before clone.

use std::ffi::{CStr, OsStr};
use std::fmt;
use std::os::unix::ffi::OsStrExt;

use nix::errno::Errno;
use nix::mount::{MntFlags, MsFlags};
use nix::sched::CloneFlags;

/// The system calls the setup sequence makes.
pub trait Syscall {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno>;
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> Result<(), Errno>;
    fn umount2(&self, target: &CStr, flags: MntFlags) -> Result<(), Errno>;
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno>;
    fn chdir(&self, path: &CStr) -> Result<(), Errno>;
    fn sethostname(&self, name: &CStr) -> Result<(), Errno>;
    /// mknod of a character device with permission bits `perm`.
    fn mknod_char(&self, path: &CStr, perm: u32, major: u32, minor: u32) -> Result<(), Errno>;
    /// Set the umask, returning the previous one.
    fn umask(&self, mask: u32) -> u32;
    fn loopback_up(&self) -> Result<(), Errno>;
}

/// The real system calls (nix, libc).
pub struct LinuxSyscall;

impl Syscall for LinuxSyscall {
    fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
        nix::sched::unshare(flags)
    }
    fn mount(
        &self,
        source: Option<&CStr>,
        target: &CStr,
        fstype: Option<&CStr>,
        flags: MsFlags,
        data: Option<&CStr>,
    ) -> Result<(), Errno> {
        nix::mount::mount(source, target, fstype, flags, data)
    }
    fn umount2(&self, target: &CStr, flags: MntFlags) -> Result<(), Errno> {
        nix::mount::umount2(target, flags)
    }
    fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
        nix::unistd::pivot_root(new_root, put_old)
    }
    fn chdir(&self, path: &CStr) -> Result<(), Errno> {
        nix::unistd::chdir(path)
    }
    fn sethostname(&self, name: &CStr) -> Result<(), Errno> {
        nix::unistd::sethostname(OsStr::from_bytes(name.to_bytes()))
    }
    fn mknod_char(&self, path: &CStr, perm: u32, major: u32, minor: u32) -> Result<(), Errno> {
        let mode = nix::sys::stat::Mode::from_bits_truncate(perm);
        nix::sys::stat::mknod(
            path,
            nix::sys::stat::SFlag::S_IFCHR,
            mode,
            libc::makedev(major, minor),
        )
    }
    fn umask(&self, mask: u32) -> u32 {
        nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(mask)).bits()
    }
    fn loopback_up(&self) -> Result<(), Errno> {
        super::netlo::loopback_up()
    }
}

/// Which cgroup filesystem to show read-only inside the container (so the agent can read its
/// own limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupMount {
    None,
    /// cgroup2 at /sys/fs/cgroup.
    V2,
    /// The v1 memory hierarchy at /sys/fs/cgroup/memory.
    V1Memory,
}

/// Everything the sequence needs, prepared before clone.
#[derive(Debug)]
pub struct MountPlan<'a> {
    /// Host path of the per-launch overlay mount point.
    pub merged: &'a CStr,
    /// "lowerdir=...,upperdir=...,workdir=...".
    pub overlay_options: &'a CStr,
    pub hostname: &'a CStr,
    pub cgroup: CgroupMount,
    /// A volume: (host directory, mount point inside the overlay as a host path), bind-mounted
    /// in the container's mount namespace only.
    pub volume: Option<(&'a CStr, &'a CStr)>,
}

/// Each step, so a failure in the child can be reported to the parent as a number (the steps
/// around it, from dying with the parent to exec, are [`crate::backend::process`]'s).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub enum Step {
    UnshareCgroup = 1,
    MakePrivate,
    Hostname,
    MountOverlay,
    MountVolume,
    ChdirNewRoot,
    PivotRoot,
    UmountOldRoot,
    ChdirRoot,
    MountProc,
    MountDev,
    DevNodes,
    MountTmp,
    MountCgroup,
    LoopbackUp,
}

impl Step {
    pub const ALL: [Step; 15] = [
        Step::UnshareCgroup,
        Step::MakePrivate,
        Step::Hostname,
        Step::MountOverlay,
        Step::MountVolume,
        Step::ChdirNewRoot,
        Step::PivotRoot,
        Step::UmountOldRoot,
        Step::ChdirRoot,
        Step::MountProc,
        Step::MountDev,
        Step::DevNodes,
        Step::MountTmp,
        Step::MountCgroup,
        Step::LoopbackUp,
    ];

    pub fn from_u32(v: u32) -> Option<Step> {
        Step::ALL.into_iter().find(|s| *s as u32 == v)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Step::UnshareCgroup => "unshare(CLONE_NEWCGROUP)",
            Step::MakePrivate => "making / rprivate",
            Step::Hostname => "sethostname",
            Step::MountOverlay => "mounting the overlay rootfs",
            Step::MountVolume => "bind-mounting the volume",
            Step::ChdirNewRoot => "chdir into the new root",
            Step::PivotRoot => "pivot_root",
            Step::UmountOldRoot => "detaching the old root",
            Step::ChdirRoot => "chdir /",
            Step::MountProc => "mounting /proc",
            Step::MountDev => "mounting /dev",
            Step::DevNodes => "creating /dev nodes",
            Step::MountTmp => "mounting /tmp",
            Step::MountCgroup => "mounting the cgroup filesystem",
            Step::LoopbackUp => "bringing lo up",
        };
        f.write_str(s)
    }
}

/// Device nodes of the container's /dev: (path, major, minor).
const DEV_NODES: &[(&CStr, u32, u32)] = &[
    (c"/dev/null", 1, 3),
    (c"/dev/zero", 1, 5),
    (c"/dev/full", 1, 7),
    (c"/dev/random", 1, 8),
    (c"/dev/urandom", 1, 9),
];

/// The setup sequence (firecracker jailer `chroot.rs` style). Returns the failing step.
pub fn setup_container<S: Syscall>(sys: &S, plan: &MountPlan<'_>) -> Result<(), (Step, Errno)> {
    let at = |step: Step| move |e: Errno| (step, e);
    let nosuid_nodev_noexec = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;

    // 1. A cgroup namespace rooted at the cgroup the parent just put us in: the agent sees "/"
    //    in /proc/self/cgroup and its own limits at the root of a cgroup mount.
    sys.unshare(CloneFlags::CLONE_NEWCGROUP)
        .map_err(at(Step::UnshareCgroup))?;

    // 2. Before any mount: make every mount in our (copied) namespace private, recursively, so
    //    nothing we mount or unmount propagates back to the host (RELIABILITY rule 4).
    sys.mount(
        None,
        c"/",
        None,
        MsFlags::MS_REC | MsFlags::MS_PRIVATE,
        None,
    )
    .map_err(at(Step::MakePrivate))?;

    // 3. Our own UTS namespace: the hostname is ours to set.
    sys.sethostname(plan.hostname).map_err(at(Step::Hostname))?;

    // 4. The per-launch root: overlay of the shared read-only rootfs (lower) and a fresh upper.
    //    It is a mount point, which pivot_root requires of the new root.
    sys.mount(
        Some(c"overlay"),
        plan.merged,
        Some(c"overlay"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(plan.overlay_options),
    )
    .map_err(at(Step::MountOverlay))?;

    // 4b. The volume: a host directory bind-mounted at /volume of the new root. The mount point
    //     is a directory of our own rootfs (checked not to be a symlink), and the mount lives
    //     only in this namespace, made private in step 2, so the host never sees it.
    if let Some((source, target)) = plan.volume {
        sys.mount(Some(source), target, None, MsFlags::MS_BIND, None)
            .map_err(at(Step::MountVolume))?;
    }

    // 5. pivot_root(".", ".") (pivot_root(2), as runc does): with the new root as cwd, the old
    //    root ends up mounted on top of it, so no put_old directory is needed inside the rootfs.
    sys.chdir(plan.merged).map_err(at(Step::ChdirNewRoot))?;
    sys.pivot_root(c".", c".").map_err(at(Step::PivotRoot))?;

    // 6. Detach the old root stacked on ".". MNT_DETACH is safe here: this is the container's
    //    own mount namespace, the host's mounts are untouched, and nothing is deleted through it.
    sys.umount2(c".", MntFlags::MNT_DETACH)
        .map_err(at(Step::UmountOldRoot))?;

    // 7. cwd at the new "/" (RELIABILITY rule 5); from here on every path resolves inside the
    //    new root, so a symlink in the rootfs cannot point a mount at the host (rule 7).
    sys.chdir(c"/").map_err(at(Step::ChdirRoot))?;

    // 8. /proc of our pid namespace (we are its PID 1).
    sys.mount(
        Some(c"proc"),
        c"/proc",
        Some(c"proc"),
        nosuid_nodev_noexec,
        None,
    )
    .map_err(at(Step::MountProc))?;

    // 9. A small tmpfs /dev with the usual character devices (mknod is cheaper than binds).
    sys.mount(
        Some(c"tmpfs"),
        c"/dev",
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NOEXEC,
        Some(c"mode=755,size=64k"),
    )
    .map_err(at(Step::MountDev))?;
    let old = sys.umask(0);
    for (path, major, minor) in DEV_NODES {
        if let Err(e) = sys.mknod_char(path, 0o666, *major, *minor) {
            sys.umask(old);
            return Err((Step::DevNodes, e));
        }
    }
    sys.umask(old);

    // 10. A private /tmp.
    sys.mount(
        Some(c"tmpfs"),
        c"/tmp",
        Some(c"tmpfs"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
        Some(c"mode=1777,size=64m"),
    )
    .map_err(at(Step::MountTmp))?;

    // 11. The cgroup filesystem, read-only, rooted at our cgroup by the cgroup namespace.
    let ro = nosuid_nodev_noexec | MsFlags::MS_RDONLY;
    match plan.cgroup {
        CgroupMount::None => Ok(()),
        CgroupMount::V2 => sys.mount(
            Some(c"cgroup2"),
            c"/sys/fs/cgroup",
            Some(c"cgroup2"),
            ro,
            None,
        ),
        CgroupMount::V1Memory => sys.mount(
            Some(c"cgroup"),
            c"/sys/fs/cgroup/memory",
            Some(c"cgroup"),
            ro,
            Some(c"memory"),
        ),
    }
    .map_err(at(Step::MountCgroup))?;

    // 12. The new network namespace has only `lo`, and it is down.
    sys.loopback_up().map_err(at(Step::LoopbackUp))?;
    Ok(())
}

#[cfg(test)]
pub mod fake {
    //! A recording fake of [`Syscall`] (youki `syscall/test.rs`).
    use super::*;
    use std::cell::RefCell;

    #[derive(Debug, Clone, PartialEq, Eq)]
    pub enum Call {
        Unshare(CloneFlags),
        Mount {
            source: Option<String>,
            target: String,
            fstype: Option<String>,
            flags: MsFlags,
            data: Option<String>,
        },
        Umount2(String, MntFlags),
        PivotRoot(String, String),
        Chdir(String),
        Sethostname(String),
        Mknod(String, u32, u32, u32),
        Umask(u32),
        LoopbackUp,
    }

    #[derive(Default)]
    pub struct Recorder {
        pub calls: RefCell<Vec<Call>>,
        /// Fail the n-th call (0-based) with EPERM.
        pub fail_at: Option<usize>,
    }

    fn s(c: &CStr) -> String {
        c.to_string_lossy().into_owned()
    }

    impl Recorder {
        fn push(&self, c: Call) -> Result<(), Errno> {
            let mut v = self.calls.borrow_mut();
            v.push(c);
            if self.fail_at == Some(v.len() - 1) {
                Err(Errno::EPERM)
            } else {
                Ok(())
            }
        }
    }

    impl Syscall for Recorder {
        fn unshare(&self, flags: CloneFlags) -> Result<(), Errno> {
            self.push(Call::Unshare(flags))
        }
        fn mount(
            &self,
            source: Option<&CStr>,
            target: &CStr,
            fstype: Option<&CStr>,
            flags: MsFlags,
            data: Option<&CStr>,
        ) -> Result<(), Errno> {
            self.push(Call::Mount {
                source: source.map(s),
                target: s(target),
                fstype: fstype.map(s),
                flags,
                data: data.map(s),
            })
        }
        fn umount2(&self, target: &CStr, flags: MntFlags) -> Result<(), Errno> {
            self.push(Call::Umount2(s(target), flags))
        }
        fn pivot_root(&self, new_root: &CStr, put_old: &CStr) -> Result<(), Errno> {
            self.push(Call::PivotRoot(s(new_root), s(put_old)))
        }
        fn chdir(&self, path: &CStr) -> Result<(), Errno> {
            self.push(Call::Chdir(s(path)))
        }
        fn sethostname(&self, name: &CStr) -> Result<(), Errno> {
            self.push(Call::Sethostname(s(name)))
        }
        fn mknod_char(&self, path: &CStr, perm: u32, major: u32, minor: u32) -> Result<(), Errno> {
            self.push(Call::Mknod(s(path), perm, major, minor))
        }
        fn umask(&self, mask: u32) -> u32 {
            let _ = self.push(Call::Umask(mask));
            0o022
        }
        fn loopback_up(&self) -> Result<(), Errno> {
            self.push(Call::LoopbackUp)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::fake::{Call, Recorder};
    use super::*;

    fn plan(cg: CgroupMount) -> MountPlan<'static> {
        MountPlan {
            merged: c"/state/runs/r/scratch/container/launch-1/merged",
            overlay_options: c"lowerdir=/l,upperdir=/u,workdir=/w",
            hostname: c"isobench",
            cgroup: cg,
            volume: None,
        }
    }

    fn mount_targets(calls: &[Call]) -> Vec<String> {
        calls
            .iter()
            .filter_map(|c| match c {
                Call::Mount { target, .. } => Some(target.clone()),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn sequence_order_and_flags() {
        let r = Recorder::default();
        setup_container(&r, &plan(CgroupMount::V1Memory)).unwrap();
        let calls = r.calls.borrow().clone();
        // The cgroup namespace first, then / made rprivate before any other mount.
        assert_eq!(calls[0], Call::Unshare(CloneFlags::CLONE_NEWCGROUP));
        assert_eq!(
            calls[1],
            Call::Mount {
                source: None,
                target: "/".into(),
                fstype: None,
                flags: MsFlags::MS_REC | MsFlags::MS_PRIVATE,
                data: None
            }
        );
        assert_eq!(calls[2], Call::Sethostname("isobench".into()));
        match &calls[3] {
            Call::Mount {
                target,
                fstype,
                flags,
                data,
                ..
            } => {
                assert!(target.ends_with("/merged"));
                assert_eq!(fstype.as_deref(), Some("overlay"));
                assert!(flags.contains(MsFlags::MS_NOSUID | MsFlags::MS_NODEV));
                assert!(data.as_deref().unwrap().starts_with("lowerdir="));
            }
            other => panic!("expected the overlay mount, got {other:?}"),
        }
        // pivot_root(".", ".") from inside the new root, then the old root detached, cwd "/".
        assert_eq!(
            &calls[4..8],
            &[
                Call::Chdir(plan(CgroupMount::None).merged.to_string_lossy().into()),
                Call::PivotRoot(".".into(), ".".into()),
                Call::Umount2(".".into(), MntFlags::MNT_DETACH),
                Call::Chdir("/".into()),
            ]
        );
        // Everything after pivot_root is mounted at paths inside the new root.
        assert_eq!(
            mount_targets(&calls[8..]),
            vec!["/proc", "/dev", "/tmp", "/sys/fs/cgroup/memory"]
        );
        let cg = calls
            .iter()
            .find(|c| matches!(c, Call::Mount { target, .. } if target == "/sys/fs/cgroup/memory"))
            .unwrap();
        assert!(matches!(cg, Call::Mount { flags, data, .. }
            if flags.contains(MsFlags::MS_RDONLY) && data.as_deref() == Some("memory")));
        let nodes: Vec<&Call> = calls
            .iter()
            .filter(|c| matches!(c, Call::Mknod(..)))
            .collect();
        assert_eq!(nodes.len(), 5);
        assert_eq!(nodes[0], &Call::Mknod("/dev/null".into(), 0o666, 1, 3));
        assert_eq!(calls.last(), Some(&Call::LoopbackUp));
        // The only detach is of the old root, after pivot_root.
        assert_eq!(
            calls
                .iter()
                .filter(|c| matches!(c, Call::Umount2(..)))
                .count(),
            1
        );
    }

    #[test]
    fn v2_cgroup_mount_and_none() {
        let r = Recorder::default();
        setup_container(&r, &plan(CgroupMount::V2)).unwrap();
        assert_eq!(
            mount_targets(&r.calls.borrow())[2..],
            ["/proc", "/dev", "/tmp", "/sys/fs/cgroup"]
        );
        let r = Recorder::default();
        setup_container(&r, &plan(CgroupMount::None)).unwrap();
        assert!(!mount_targets(&r.calls.borrow())
            .iter()
            .any(|t| t.contains("cgroup")));
    }

    #[test]
    fn volume_is_bound_after_the_overlay_and_before_pivot_root() {
        let r = Recorder::default();
        let p = MountPlan {
            volume: Some((c"/state/scratch/container/volume-1", c"/m/volume")),
            ..plan(CgroupMount::None)
        };
        setup_container(&r, &p).unwrap();
        let calls = r.calls.borrow().clone();
        let bind = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { flags, .. } if *flags == MsFlags::MS_BIND))
            .expect("volume bind mount");
        let overlay = calls
            .iter()
            .position(|c| matches!(c, Call::Mount { fstype: Some(t), .. } if t == "overlay"))
            .unwrap();
        let pivot = calls
            .iter()
            .position(|c| matches!(c, Call::PivotRoot(..)))
            .unwrap();
        assert!(overlay < bind && bind < pivot, "{calls:?}");
        assert_eq!(
            calls[bind],
            Call::Mount {
                source: Some("/state/scratch/container/volume-1".into()),
                target: "/m/volume".into(),
                fstype: None,
                flags: MsFlags::MS_BIND,
                data: None
            }
        );
    }

    #[test]
    fn failure_reports_the_step_and_stops() {
        let r = Recorder {
            fail_at: Some(5),
            ..Default::default()
        };
        let e = setup_container(&r, &plan(CgroupMount::None)).unwrap_err();
        assert_eq!(e, (Step::PivotRoot, Errno::EPERM));
        assert_eq!(r.calls.borrow().len(), 6);
        for s in Step::ALL {
            assert_eq!(Step::from_u32(s as u32), Some(s));
        }
        assert_eq!(Step::from_u32(0), None);
    }
}
