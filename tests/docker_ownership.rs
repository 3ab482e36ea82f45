//! Privileged tests of the docker tier's ownership rules (issue 9): a container name someone
//! else holds is never taken over or removed, and `cleanup` removes a ledger's container only
//! when docker shows the run's label on it.
//!
//! Needs root and docker.io. When only dockerd is not running, the test starts one itself (on
//! the default socket) and stops it afterwards, like `tests/runtime_tiers.rs`. Otherwise it
//! prints `SKIPPED <test>: <reason>` and fails under `ISOBENCH_REQUIRE_PRIVILEGED=1`.

mod common;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};

use isobench::backend::registry;
use isobench::backend::runtimes::docker::{self, RUN_LABEL};
use isobench::backend::{BackendOptions, RunEnv};
use isobench::model::budget::Budget;
use isobench::model::facts::HostFacts;
use isobench::model::tier::Tier;
use isobench::protocol::Task;
use isobench::state::cleanup;
use isobench::state::ledger::{Ledger, Resource, StateDir};
use isobench::workload::Workload;

static SERIAL: Mutex<()> = Mutex::new(());

/// `docker args...`: trimmed stdout on success.
fn docker_out(args: &[&str]) -> Option<String> {
    let o = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .ok()?;
    o.status
        .success()
        .then(|| String::from_utf8_lossy(&o.stdout).trim().to_string())
}

/// Containers the test made for "someone else", removed by id on drop (also on a panic).
#[derive(Default)]
struct Foreign {
    ids: Vec<String>,
    image: Option<String>,
}

impl Foreign {
    /// An empty image of the test's own (no isobench cache label), for containers that never
    /// start.
    fn image(&mut self) -> String {
        if let Some(i) = &self.image {
            return i.clone();
        }
        let tmp = tempfile::tempdir().unwrap();
        let tar = tmp.path().join("empty.tar");
        let ok = Command::new("tar")
            .arg("-cf")
            .arg(&tar)
            .args(["-T", "/dev/null"])
            .status()
            .unwrap()
            .success();
        assert!(ok, "tar of an empty image");
        let id = docker_out(&[
            "import",
            "--change",
            "LABEL org.isobench.test=ownership",
            tar.to_str().unwrap(),
        ])
        .expect("docker import of an empty image");
        assert!(docker::valid_image_id(&id), "{id}");
        self.image = Some(id.clone());
        id
    }

    /// `docker create --name name [--label label] <image> /none`: its id.
    fn create(&mut self, image: &str, name: &str, label: Option<&str>) -> String {
        let mut args = vec!["create", "--pull=never", "--name", name];
        if let Some(l) = label {
            args.extend(["--label", l]);
        }
        args.extend([image, "/none"]);
        let id = docker_out(&args).unwrap_or_else(|| panic!("docker create {name}"));
        assert!(docker::valid_container_id(&id), "{id}");
        self.ids.push(id.clone());
        id
    }
}

impl Drop for Foreign {
    fn drop(&mut self) {
        for id in &self.ids {
            let _ = docker_out(&["rm", "--force", id]);
        }
        if let Some(i) = &self.image {
            let _ = docker_out(&["rmi", i]);
        }
    }
}

fn exists(id: &str) -> bool {
    docker_out(&["container", "inspect", "--format", "{{.Id}}", id]).as_deref() == Some(id)
}

/// Names of the containers docker has whose name contains `run`.
fn containers_of(run: &str) -> Vec<String> {
    let mut v: Vec<String> = docker_out(&[
        "ps",
        "-a",
        "--filter",
        &format!("name=isobench-{run}-"),
        "--format",
        "{{.Names}}",
    ])
    .unwrap_or_default()
    .lines()
    .map(String::from)
    .collect();
    v.sort();
    v
}

fn budget() -> Budget {
    let set = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)).unwrap();
    let cpus: Vec<usize> = (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false))
        .take(1)
        .collect();
    Budget {
        cpus,
        memory_mib: 256,
    }
}

#[test]
fn docker_name_in_use_is_left_alone_and_another_name_taken() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(own) = common::dockerd::dockerd_if_needed(
        "docker_name_in_use_is_left_alone_and_another_name_taken",
        "/tmp/isobench-test-dockerd-ownership.log",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    // The run id is the state's own (unique, made by begin_run), as in a real run.
    let state = Arc::new(sd.begin_run("dko").unwrap());
    let run = state.id.clone();
    let before = containers_of(&run);
    let env = RunEnv {
        agent: PathBuf::from(env!("CARGO_BIN_EXE_isobench-agent")),
        state,
        cache_dir: tmp.path().join("cache"),
        budget: budget(),
        options: BackendOptions::default(),
        host: HostFacts::detect(),
        cancel: Arc::new(AtomicBool::new(false)),
    };
    let mut foreign = Foreign::default();
    let mut b = registry::make(Tier::Docker, &env).unwrap();
    let image_id = b.settings()["image_id"].clone();
    assert!(docker::valid_image_id(&image_id), "{image_id}");
    // The names the next two launches would use, held by someone else: one with another
    // run's label (made from isobench's own image), one with no label at all.
    let other_run = foreign.create(
        &image_id,
        &docker::container_name(&run, 1, 0),
        Some(&format!("{RUN_LABEL}=someone-else")),
    );
    let image = foreign.image();
    let unlabelled = foreign.create(&image, &docker::container_name(&run, 2, 0), None);

    // While a live run may use it, or a container was made from it, the image stays.
    let kept = docker::remove_cached_images(true).unwrap();
    assert!(kept.removed.is_empty(), "{kept:?}");
    assert!(kept.kept.iter().any(|k| k.contains(&image_id)), "{kept:?}");
    let kept = docker::remove_cached_images(false).unwrap();
    assert!(
        kept.kept
            .iter()
            .any(|k| k.contains(&image_id) && k.contains("used by container")),
        "{kept:?}"
    );
    assert!(
        !kept.removed.iter().any(|r| r.contains(&image_id)),
        "{kept:?}"
    );

    for _ in 0..2 {
        let o = b.run_once(&Task::new(Workload::Noop)).unwrap();
        assert_eq!(o.exit_code, Some(0));
    }
    b.finish().unwrap();
    assert!(exists(&other_run), "the other run's container was removed");
    assert!(exists(&unlabelled), "the unlabelled container was removed");
    assert_eq!(
        env.state.resources(),
        vec![],
        "ledger still lists resources"
    );
    // Only the two foreign containers are left under the run's names.
    let mut expect = before.clone();
    expect.extend([
        docker::container_name(&run, 1, 0),
        docker::container_name(&run, 2, 0),
    ]);
    expect.sort();
    assert_eq!(containers_of(&run), expect);
    assert_eq!(
        docker_out(&["ps", "-aq", "--filter", &format!("label={RUN_LABEL}={run}")]).unwrap(),
        "",
        "a container of this run is left"
    );
    drop(foreign);
    assert_eq!(containers_of(&run), before);
    isobench::host::fs::safe_remove_tree(&env.state.dir).expect("run dir removable");
    drop(own);
}

#[test]
fn cleanup_removes_only_containers_labelled_with_the_run() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let Ok(own) = common::dockerd::dockerd_if_needed(
        "cleanup_removes_only_containers_labelled_with_the_run",
        "/tmp/isobench-test-dockerd-ownership.log",
    ) else {
        return;
    };
    let tmp = tempfile::tempdir().unwrap();
    let sd = StateDir::open(tmp.path().join("state")).unwrap();
    let rs = sd.begin_run("dkc").unwrap();
    let run = rs.id.clone();
    let before = containers_of(&run);
    let mut made = Foreign::default();
    let image = made.image();
    let n1 = docker::container_name(&run, 1, 0);
    let n2 = docker::container_name(&run, 2, 0);
    let n3 = docker::container_name(&run, 3, 0);
    let n4 = docker::container_name(&run, 4, 0);
    // Someone else's containers under the run's names: another label, no label.
    let other_run = made.create(&image, &n1, Some(&format!("{RUN_LABEL}=someone-else")));
    let unlabelled = made.create(&image, &n2, None);
    // The run's own: found by name (id never recorded) and by recorded id.
    let mine_by_name = made.create(&image, &n3, Some(&format!("{RUN_LABEL}={run}")));
    let mine_by_id = made.create(&image, &n4, Some(&format!("{RUN_LABEL}={run}")));
    let resources = vec![
        Resource::DockerContainer {
            name: n1.clone(),
            id: None,
        },
        // A recorded id that is not the run's container: refused too.
        Resource::DockerContainer {
            name: n2.clone(),
            id: Some(unlabelled.clone()),
        },
        Resource::DockerContainer {
            name: n3.clone(),
            id: None,
        },
        Resource::DockerContainer {
            name: n4.clone(),
            id: Some(mine_by_id.clone()),
        },
        // Another run's name prefix: refused before docker is asked.
        Resource::DockerContainer {
            name: format!("isobench-someone-else-{}", std::process::id()),
            id: None,
        },
    ];
    rs.record_all(&resources).unwrap();
    let ledger = Ledger {
        run_id: run.clone(),
        owner: None,
        resources,
    };
    let r = cleanup::cleanup_run(&rs.dir, &ledger);
    assert!(exists(&other_run), "another run's container was removed");
    assert!(exists(&unlabelled), "an unlabelled container was removed");
    assert!(
        !exists(&mine_by_name),
        "the run's container (by name) stayed"
    );
    assert!(!exists(&mine_by_id), "the run's container (by id) stayed");
    let mut removed = r.containers_removed.clone();
    removed.sort();
    assert_eq!(removed, vec![n3.clone(), n4.clone()], "{r:?}");
    assert!(
        r.errors.iter().any(|e| e.contains("isobench-someone-else")),
        "the foreign-prefix entry is reported: {r:?}"
    );
    let mut expect = before.clone();
    expect.extend([n1, n2]);
    expect.sort();
    assert_eq!(containers_of(&run), expect);
    drop(made);
    assert_eq!(containers_of(&run), before);
    let _ = isobench::host::fs::safe_remove_tree(&rs.dir);
    drop(own);
}
