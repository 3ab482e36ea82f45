use super::*;
use std::os::unix::fs::MetadataExt;

#[test]
fn mountinfo_parsing() {
    let info = "27 1 254:0 / / rw,relatime - ext4 /dev/vda rw\n\
                90 27 0:50 / /var/lib/isobench/runs/r1/scratch/a\\040b rw - tmpfs tmpfs rw\n\
                91 90 0:51 / /var/lib/isobench/runs/r1/scratch/a\\040b/proc rw - proc proc rw\n\
                92 27 0:52 / /var/lib/isobench/runs/r10 rw - tmpfs tmpfs rw\n";
    let under = mounts_under(info, Path::new("/var/lib/isobench/runs/r1"));
    assert_eq!(
        under,
        vec![
            PathBuf::from("/var/lib/isobench/runs/r1/scratch/a b"),
            PathBuf::from("/var/lib/isobench/runs/r1/scratch/a b/proc"),
        ]
    );
    let ordered = order_for_unmount(under);
    assert_eq!(
        ordered[0],
        PathBuf::from("/var/lib/isobench/runs/r1/scratch/a b/proc")
    );
    assert_eq!(unescape_mount_path("a\\134b\\011"), PathBuf::from("a\\b\t"));
}

#[test]
fn removes_tree_but_not_symlink_targets() {
    let d = tempfile::tempdir().unwrap();
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    std::fs::write(outside.join("precious"), b"keep").unwrap();
    let tree = d.path().join("tree");
    std::fs::create_dir_all(tree.join("a/b/c")).unwrap();
    std::fs::write(tree.join("a/b/c/f"), b"x").unwrap();
    std::os::unix::fs::symlink(&outside, tree.join("a/link-dir")).unwrap();
    std::os::unix::fs::symlink(outside.join("precious"), tree.join("link-file")).unwrap();
    safe_remove_tree(&tree).unwrap();
    assert!(!tree.exists());
    assert_eq!(std::fs::read(outside.join("precious")).unwrap(), b"keep");
    // Missing is fine; a symlink given as the top is removed, not followed.
    safe_remove_tree(&tree).unwrap();
    let top_link = d.path().join("top-link");
    std::os::unix::fs::symlink(&outside, &top_link).unwrap();
    safe_remove_tree(&top_link).unwrap();
    assert!(outside.join("precious").exists());
}

/// Privileged: a bind mount inside the tree is refused, its data survives.
#[test]
fn refuses_to_cross_a_bind_mount() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED refuses_to_cross_a_bind_mount: needs root");
        assert!(
            std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "refuses_to_cross_a_bind_mount needs root"
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("precious"), b"keep").unwrap();
    let tree = d.path().join("tree");
    let mnt = tree.join("sub/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(tree.join("sub/other"), b"x").unwrap();
    nix::mount::mount(
        Some(&data),
        &mnt,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let res = safe_remove_tree(&tree);
    let precious_ok = std::fs::read(data.join("precious")).ok();
    let umount = nix::mount::umount2(&mnt, nix::mount::MntFlags::empty());
    let err = res.expect_err("must refuse a mount point inside the tree");
    assert!(err.to_string().contains("mount point"), "{err}");
    assert_eq!(precious_ok.as_deref(), Some(&b"keep"[..]));
    umount.unwrap();
    // A bind mount given as the top is refused as well.
    nix::mount::mount(
        Some(&data),
        &mnt,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let res = safe_remove_tree(&mnt);
    nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).unwrap();
    assert!(res.is_err());
    assert!(data.join("precious").exists());
    // Once unmounted the tree goes.
    safe_remove_tree(&tree).unwrap();
    assert!(!tree.exists());
    assert!(data.join("precious").exists());
}

/// Privileged: with the mountinfo fallback (kernels without STATX_MNT_ID), a bind mount of
/// a directory of the same file system (same st_dev) inside the tree is still refused.
#[test]
fn mountinfo_fallback_refuses_a_same_fs_bind_mount() {
    if !nix::unistd::geteuid().is_root() {
        eprintln!("SKIPPED mountinfo_fallback_refuses_a_same_fs_bind_mount: needs root");
        assert!(
            std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "mountinfo_fallback_refuses_a_same_fs_bind_mount needs root"
        );
        return;
    }
    let d = tempfile::tempdir().unwrap();
    let data = d.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::write(data.join("precious"), b"keep").unwrap();
    let tree = d.path().join("tree");
    let mnt = tree.join("sub/mnt");
    std::fs::create_dir_all(&mnt).unwrap();
    std::fs::write(tree.join("sub/other"), b"x").unwrap();
    let bind = |target: &Path| {
        nix::mount::mount(
            Some(&data),
            target,
            None::<&str>,
            nix::mount::MsFlags::MS_BIND,
            None::<&str>,
        )
        .unwrap()
    };
    bind(&mnt);
    let res = safe_remove_tree_with(&tree, MountCheck::Mountinfo);
    let precious = std::fs::read(data.join("precious")).ok();
    let other_gone = !tree.join("sub/other").exists();
    let umount = nix::mount::umount2(&mnt, nix::mount::MntFlags::empty());
    let err = res.expect_err("must refuse a mount point inside the tree");
    assert!(err.to_string().contains("sub/mnt"), "{err}");
    assert_eq!(precious.as_deref(), Some(&b"keep"[..]));
    assert!(other_gone, "the rest of the tree is removed");
    umount.unwrap();
    // The mount given as the top, through a non-canonical path: refused too.
    bind(&mnt);
    let res = safe_remove_tree_with(&tree.join("sub/../sub/mnt"), MountCheck::Mountinfo);
    nix::mount::umount2(&mnt, nix::mount::MntFlags::empty()).unwrap();
    assert!(res.is_err());
    assert!(data.join("precious").exists());
    safe_remove_tree_with(&tree, MountCheck::Mountinfo).unwrap();
    assert!(!tree.exists());
    assert!(data.join("precious").exists());
}

#[test]
fn atomic_write_never_follows_a_planted_symlink() {
    let d = tempfile::tempdir().unwrap();
    let target = d.path().join("victim");
    std::fs::write(&target, b"precious").unwrap();
    let out = d.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let path = out.join("results.json");
    // The old fixed temporary name, and the first names this write will try.
    let planted = [
        ".results.json.tmp",
        ".results.json.1.a.tmp",
        ".results.json.1.b.tmp",
    ];
    for p in planted {
        std::os::unix::fs::symlink(&target, out.join(p)).unwrap();
    }
    let names = planted[1..]
        .iter()
        .map(|s| s.to_string())
        .chain([".results.json.1.c.tmp".to_string()]);
    write_atomic_with(&path, b"new", 0o644, names).unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"new");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    for p in planted {
        assert!(std::fs::symlink_metadata(out.join(p))
            .unwrap()
            .file_type()
            .is_symlink());
    }
    // The real function with its random names: the fixed old name is not used either.
    write_atomic(&path, b"newer").unwrap();
    assert_eq!(std::fs::read(&path).unwrap(), b"newer");
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    // A symlink at the destination is replaced, its target untouched.
    let dest = out.join("report.html");
    std::os::unix::fs::symlink(&target, &dest).unwrap();
    write_atomic(&dest, b"html").unwrap();
    assert!(std::fs::symlink_metadata(&dest).unwrap().is_file());
    assert_eq!(std::fs::read(&target).unwrap(), b"precious");
    // Only the planted entries and the two outputs remain: no temporary left behind.
    let mut left: Vec<String> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(left.len(), planted.len() + 2, "{left:?}");
    // Ledgers are private.
    write_atomic_mode(&out.join("l"), b"{}", 0o600).unwrap();
    assert_eq!(
        std::fs::metadata(out.join("l")).unwrap().mode() & 0o777,
        0o600
    );
}
