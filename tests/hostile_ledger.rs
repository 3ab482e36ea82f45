//! Privileged: `isobench cleanup` given a hand-made hostile ledger in a throw-away state
//! directory touches nothing outside what isobench made (issue 9). Every canary must survive;
//! the test removes them itself at the end.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

mod common;
use common::privileged;
use isobench::host::fs::write_atomic;
use isobench::host::proc::process_start_time;
use isobench::state::cleanup;
use isobench::state::ledger::{Ledger, Resource, StateDir};

fn sh(cmd: &str, args: &[&str]) -> bool {
    Command::new(cmd)
        .args(args)
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// Host objects the test makes, removed on drop (even when an assertion fails).
struct Canaries {
    children: Vec<Child>,
    nft: Vec<(String, String)>,
    links: Vec<String>,
}

impl Drop for Canaries {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        for (f, n) in &self.nft {
            sh("nft", &["delete", "table", f, n]);
        }
        for l in &self.links {
            sh("ip", &["link", "del", "dev", l]);
        }
    }
}

fn sleeper() -> Child {
    Command::new("sleep")
        .arg("1000")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn alive(c: &mut Child) -> bool {
    c.try_wait().unwrap().is_none()
}

#[test]
fn cleanup_of_a_hostile_ledger_touches_nothing_outside() {
    if !privileged("cleanup_of_a_hostile_ledger_touches_nothing_outside") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let tmp_path = std::fs::canonicalize(tmp.path()).unwrap();
    let sd = StateDir::open(tmp_path.join("state")).unwrap();
    let rs = sd.begin_run("hostile").unwrap();
    let id = rs.id.clone();
    let run_dir = rs.dir.clone();
    let tag = &id[id.len() - 6..];
    let mut can = Canaries {
        children: vec![],
        nft: vec![],
        links: vec![],
    };

    // 1. A canary directory outside the run directory, named directly, through `..`, and
    //    through a symlink inside the run directory.
    let canary = tmp_path.join("canary");
    std::fs::create_dir(&canary).unwrap();
    std::fs::write(canary.join("precious"), b"keep").unwrap();
    std::os::unix::fs::symlink(&canary, run_dir.join("scratch/esc")).unwrap();
    // 2. A plain directory dressed as a cgroup, its cgroup.procs naming a sleep child.
    let fake_cg = tmp_path.join("isobench-fake");
    std::fs::create_dir(&fake_cg).unwrap();
    let in_fake = sleeper();
    std::fs::write(fake_cg.join("cgroup.procs"), format!("{}\n", in_fake.id())).unwrap();
    can.children.push(in_fake);
    // 3. A sleep process without the ownership marker, recorded by pid and start time.
    let unmarked = sleeper();
    let upid = i32::try_from(unmarked.id()).unwrap();
    let ust = process_start_time(upid).unwrap();
    can.children.push(unmarked);
    // 4. A "runtime" that is a shell script creating a canary when run (named runc).
    let bin = tmp_path.join("bin");
    std::fs::create_dir(&bin).unwrap();
    let pwned = tmp_path.join("pwned");
    let script = bin.join("runc");
    std::fs::write(&script, format!("#!/bin/sh\ntouch {}\n", pwned.display())).unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let oci_root = run_dir.join("scratch/oci");
    let oci_id = format!("isobench-{id}-runc-1");
    std::fs::create_dir_all(oci_root.join(&oci_id)).unwrap();
    // 5. nftables: a table not named isobench_..., and one named so without the comment.
    let t_other = format!("canary_{tag}");
    let t_nocomment = format!("isobench_x{tag}");
    for t in [&t_other, &t_nocomment] {
        assert!(sh("nft", &["add", "table", "ip", t]), "nft add table {t}");
        can.nft.push(("ip".into(), t.clone()));
    }
    // 6. A link with isobench's prefix but without the alias (a veth pair: the host may lack
    //    the dummy module).
    let link = format!("isbcan{tag}");
    let peer = format!("{link}p");
    assert!(
        sh(
            "ip",
            &["link", "add", &link, "type", "veth", "peer", "name", &peer]
        ),
        "ip link add"
    );
    can.links.push(link.clone());
    // A valid entry too: removed, and released from the ledger.
    let ok_dir = run_dir.join("scratch/ok");
    std::fs::create_dir_all(ok_dir.join("a")).unwrap();

    let hostile = vec![
        Resource::Dir {
            path: canary.clone(),
        },
        Resource::Dir {
            path: run_dir.join("scratch/../../../../canary"),
        },
        Resource::File {
            path: run_dir.join("scratch/esc/precious"),
        },
        Resource::Mount {
            path: canary.clone(),
        },
        Resource::Cgroup {
            path: fake_cg.clone(),
        },
        Resource::Process {
            pid: upid,
            start_time: ust,
        },
        Resource::OciContainer {
            runtime: script.clone(),
            root: oci_root.clone(),
            id: oci_id.clone(),
        },
        Resource::NftTable {
            family: "ip".into(),
            name: t_other.clone(),
        },
        Resource::NftTable {
            family: "ip".into(),
            name: t_nocomment.clone(),
        },
        Resource::Link { name: link.clone() },
    ];
    let mut resources = hostile.clone();
    resources.push(Resource::Dir {
        path: ok_dir.clone(),
    });
    // The owner "dies": its lock goes with it, the ledger has no live owner.
    drop(rs);
    let ledger = Ledger {
        run_id: id.clone(),
        owner: None,
        resources,
    };
    write_atomic(
        &run_dir.join("ledger.json"),
        &serde_json::to_vec(&ledger).unwrap(),
    )
    .unwrap();

    let report = cleanup::cleanup(&sd);
    assert_eq!(report.runs.len(), 1, "{report:?}");
    let r = &report.runs[0];
    assert!(!report.is_clean());
    assert_eq!(r.refused.len(), hostile.len(), "{:#?}", r.refused);
    assert!(r.killed.is_empty(), "{r:?}");
    assert!(r.links_removed.is_empty() && r.nft_tables_removed.is_empty());
    assert!(r.containers_removed.is_empty() && r.cgroups_removed.is_empty());
    assert!(!r.dir_removed);

    // Everything outside survived.
    assert_eq!(std::fs::read(canary.join("precious")).unwrap(), b"keep");
    assert!(fake_cg.join("cgroup.procs").exists());
    assert!(
        alive(&mut can.children[0]),
        "the pid in a fake cgroup.procs was killed"
    );
    assert!(
        alive(&mut can.children[1]),
        "an unmarked process was killed"
    );
    assert!(
        !pwned.exists(),
        "a runtime named in the ledger was executed"
    );
    for t in [&t_other, &t_nocomment] {
        assert!(sh("nft", &["list", "table", "ip", t]), "table {t} deleted");
    }
    assert!(
        Path::new("/sys/class/net").join(&link).exists(),
        "link deleted"
    );

    // The valid entry is gone and released; the ledger keeps exactly the refused ones.
    assert!(!ok_dir.exists());
    let kept: Ledger =
        serde_json::from_slice(&std::fs::read(run_dir.join("ledger.json")).unwrap()).unwrap();
    assert_eq!(kept.resources, hostile);
    drop(can);
    let mut left: Vec<PathBuf> = std::fs::read_dir(run_dir.join("scratch"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    left.sort();
    assert_eq!(left, vec![run_dir.join("scratch/esc"), oci_root]);
}

/// A run killed between creating a device and setting its alias (two netlink requests: the
/// kernel ignores `alias` on `ip link add`) leaves a device without the alias; the MAC address
/// its creating request gave it still proves it is the run's, so cleanup removes it. A device of
/// the same shape whose MAC is not the run's mark stays (a name alone proves nothing).
#[test]
fn cleanup_removes_a_device_killed_before_its_alias_and_only_that() {
    if !privileged("cleanup_removes_a_device_killed_before_its_alias_and_only_that") {
        return;
    }
    use isobench::host::net::netdev;
    let tmp = tempfile::tempdir().unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let rs = sd.begin_run("unaliased").unwrap();
    let id = rs.id.clone();
    let run_dir = rs.dir.clone();
    let tag = netdev::random_tag();
    let ours = format!("isbk{tag}d");
    let foreign = format!("isbk{tag}n");
    let mut can = Canaries {
        children: vec![],
        nft: vec![],
        links: vec![],
    };
    // Ours: created with the run's mark MAC, as the NAT/direct paths create their devices, then
    // "killed" before the alias. Foreign: same prefix, no alias, some other MAC.
    let mac = netdev::mark_mac(&id, &ours);
    for (name, peer, addr) in [
        (&ours, format!("{ours}p"), mac.as_str()),
        (&foreign, format!("{foreign}p"), "02:00:00:00:00:01"),
    ] {
        assert!(
            sh(
                "ip",
                &[
                    "link", "add", "name", name, "address", addr, "type", "veth", "peer", "name",
                    &peer
                ]
            ),
            "ip link add {name}"
        );
        can.links.push(name.clone());
    }
    drop(rs);
    let ledger = Ledger {
        run_id: id.clone(),
        owner: None,
        resources: vec![
            Resource::Link { name: ours.clone() },
            Resource::Link {
                name: foreign.clone(),
            },
        ],
    };
    write_atomic(
        &run_dir.join("ledger.json"),
        &serde_json::to_vec(&ledger).unwrap(),
    )
    .unwrap();
    let report = cleanup::cleanup(&sd);
    let r = &report.runs[0];
    assert_eq!(r.links_removed, vec![ours.clone()], "{r:?}");
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert!(!Path::new("/sys/class/net").join(&ours).exists());
    assert!(
        Path::new("/sys/class/net").join(&foreign).exists(),
        "a device without the run's mark was deleted"
    );
}
