//! `docker`: the Docker Engine running the agent from an image imported from the rootfs
//! isobench builds (no registry).
//!
//! Image: `isobench/agent:<content hash of the rootfs files>`, labelled
//! `org.isobench.cache=agent`, imported once (`docker import`) and reused by later runs as a
//! cache; `isobench cleanup` removes every image with that label.
//!
//! Per launch: `docker run --name isobench-<run>-<n> --label org.isobench.run=<run>` with the
//! budget (`--cpuset-cpus`, `--cpus`, `--memory`), the task in `-e ISOBENCH_TASK`, the agent's
//! stdout attached to the CLI's. Data paths: fs `rootfs` in the container's own `/data`
//! (overlay2, the image's layers), fs `volume` a bind-mounted host directory
//! (`-v <scratch>/docker/volume:/volume`). Net: `direct` = `--network host` (peer on
//! 127.0.0.1), `nat` = the default bridge with NAT (peer on the docker0 gateway address), as in
//! Felter et al. 2015.
//!
//! Timings: launch = before `docker run`; ready = READY read; exit = the CLI exits; teardown =
//! `docker rm --force` of the exited container (what a user who does not pass `--rm` pays).

use std::collections::BTreeMap;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;

use super::{check_run_id, fnv1a_hex, measure_cli, run_checked, version_line};
use crate::backend::bare::{cpuset, loopback_peer};
use crate::backend::{Availability, Backend, BackendError, Budget, Outcome, RunEnv};
use crate::cleanup::{remove_docker_container, safe_remove_tree};
use crate::netpeer::NetPeer;
use crate::protocol::Task;
use crate::rootfs::{self, AGENT_IN_ROOTFS};
use crate::state::{Resource, RunState};
use crate::tier::Tier;
use crate::workload::{DataPath, NetPath, Workload};

/// The repository of isobench's cached agent images.
pub const IMAGE_REPO: &str = "isobench/agent";
/// Label on every image isobench imports (what `isobench cleanup` removes).
pub const IMAGE_LABEL: &str = "org.isobench.cache=agent";
/// Label key naming the run on every container.
pub const RUN_LABEL: &str = "org.isobench.run";

/// The daemon socket the docker CLI talks to: `$DOCKER_HOST` (unix://) or the default.
pub fn daemon_socket() -> PathBuf {
    match std::env::var("DOCKER_HOST") {
        Ok(h) if h.starts_with("unix://") => PathBuf::from(h.trim_start_matches("unix://")),
        _ => PathBuf::from("/var/run/docker.sock"),
    }
}

pub fn availability(docker: &Path) -> Availability {
    if let Ok(h) = std::env::var("DOCKER_HOST") {
        if !h.starts_with("unix://") {
            return Availability::unavailable(
                format!("DOCKER_HOST={h} is not a local unix socket"),
                "unset DOCKER_HOST or point it at a local daemon (unix:///var/run/docker.sock)",
            );
        }
    }
    let sock = daemon_socket();
    if let Err(e) = UnixStream::connect(&sock) {
        let start = if crate::host::which("dockerd").is_some() {
            "start the daemon: `systemctl start docker`, or by hand `dockerd >/var/log/dockerd.log 2>&1 &`"
        } else {
            "apt-get install docker.io, then start the daemon (`systemctl start docker` or `dockerd &`)"
        };
        return Availability::unavailable(
            format!(
                "dockerd is not running (no daemon answers on {}: {e})",
                sock.display()
            ),
            start,
        );
    }
    Availability::Available {
        detail: format!(
            "Docker Engine via {} (daemon on {})",
            docker.display(),
            sock.display()
        ),
    }
}

struct Prepared {
    state: Arc<RunState>,
    budget: Budget,
    cancel: Arc<AtomicBool>,
    base: PathBuf,
    volume: PathBuf,
    image: String,
    /// Peer for `--network host` (127.0.0.1) and for the bridge (docker0's gateway address).
    direct_peer: NetPeer,
    nat_peer: Option<NetPeer>,
    nat_error: Option<String>,
}

#[derive(Default)]
pub struct Docker {
    prepared: Option<Prepared>,
    launches: u64,
}

/// The image name for a rootfs: `isobench/agent:<digest of its files' paths and bytes>`.
pub fn image_name(rootfs: &Path, files: &[PathBuf]) -> Result<String, BackendError> {
    let mut parts: Vec<Vec<u8>> = vec![];
    let mut files = files.to_vec();
    files.sort();
    for f in &files {
        let inside = rootfs.join(f.strip_prefix("/").unwrap_or(f));
        parts.push(f.to_string_lossy().as_bytes().to_vec());
        parts.push(
            std::fs::read(&inside)
                .map_err(|e| BackendError::io(format!("reading {}", inside.display()), e))?,
        );
    }
    let refs: Vec<&[u8]> = parts.iter().map(Vec::as_slice).collect();
    Ok(format!("{IMAGE_REPO}:{}", fnv1a_hex(&refs)))
}

/// Import `rootfs` as `image` unless the daemon has it already. Returns whether it imported.
fn ensure_image(rootfs: &Path, image: &str) -> Result<bool, BackendError> {
    let have = Command::new("docker")
        .args(["image", "inspect", "--format", "{{.Id}}", image])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| BackendError::io("running docker image inspect", e))?;
    if have.success() {
        return Ok(false);
    }
    let mut tar = Command::new("tar")
        .arg("-C")
        .arg(rootfs)
        .args(["--numeric-owner", "-c", "."])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .map_err(|e| BackendError::io("running tar (install tar)", e))?;
    let out = tar.stdout.take().expect("piped");
    let import = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("LABEL {IMAGE_LABEL}"),
            "-",
            image,
        ])
        .stdin(Stdio::from(out))
        .output();
    let tar_ok = tar.wait().map(|s| s.success()).unwrap_or(false);
    let import = import.map_err(|e| BackendError::io("running docker import", e))?;
    if !import.status.success() || !tar_ok {
        return Err(BackendError::Other(format!(
            "importing the agent image {image} failed: {}; check `docker info` works",
            String::from_utf8_lossy(&import.stderr).trim()
        )));
    }
    Ok(true)
}

/// The default bridge's gateway address (where a bridged container reaches the host).
fn bridge_gateway() -> Result<String, BackendError> {
    let gw = run_checked(
        Command::new("docker").args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{range .IPAM.Config}}{{.Gateway}}{{end}}",
        ]),
        "docker network inspect bridge",
        "start dockerd with its default bridge (no --bridge=none)",
    )?;
    if !gw.is_empty() {
        return Ok(gw);
    }
    // Docker 20.10 leaves the gateway out of the bridge's IPAM config: read the bridge
    // device's own address (docker0's, normally 172.17.0.1).
    let dev = run_checked(
        Command::new("docker").args([
            "network",
            "inspect",
            "bridge",
            "--format",
            "{{index .Options \"com.docker.network.bridge.name\"}}",
        ]),
        "docker network inspect bridge",
        "start dockerd with its default bridge (no --bridge=none)",
    )?;
    let dev = if dev.is_empty() {
        "docker0".to_string()
    } else {
        dev
    };
    let addr = run_checked(
        Command::new("ip").args(["-4", "-o", "addr", "show", "dev", &dev]),
        "ip addr show",
        "install iproute2",
    )?;
    addr.split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .and_then(|a| a.split('/').next())
        .map(str::to_string)
        .ok_or_else(|| {
            BackendError::Other(format!(
                "the default bridge {dev} has no IPv4 address: start dockerd without --bridge=none"
            ))
        })
}

/// Remove every image isobench imported (label [`IMAGE_LABEL`]). Returns their names.
pub fn remove_cached_images() -> Result<Vec<String>, String> {
    let out = Command::new("docker")
        .args([
            "images",
            "--filter",
            &format!("label={IMAGE_LABEL}"),
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running docker images: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "docker images failed: {} (is dockerd running?)",
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    let names: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with(&format!("{IMAGE_REPO}:")))
        .map(str::to_string)
        .collect();
    let mut removed = vec![];
    for n in names {
        let o = Command::new("docker")
            .args(["rmi", &n])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running docker rmi {n}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "docker rmi {n} failed: {}; remove the containers using it (`isobench cleanup`), then retry",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        removed.push(n);
    }
    Ok(removed)
}

fn prepare_in(env: &RunEnv, base: &Path) -> Result<Prepared, BackendError> {
    std::fs::create_dir(base)
        .map_err(|e| BackendError::io(format!("creating {}", base.display()), e))?;
    let rootfs = base.join("rootfs");
    let files = rootfs::build(&env.agent, &rootfs)
        .map_err(|e| BackendError::Other(format!("building the docker rootfs: {e}")))?;
    let mut all = files.clone();
    all.push(PathBuf::from("/etc/hostname"));
    let image = image_name(&rootfs, &all)?;
    ensure_image(&rootfs, &image)?;
    let volume = base.join("volume");
    std::fs::create_dir(&volume)
        .map_err(|e| BackendError::io(format!("creating {}", volume.display()), e))?;
    let direct_peer = loopback_peer()?;
    let (nat_peer, nat_error) = match bridge_gateway().and_then(|gw| {
        NetPeer::start(format!("{gw}:0")).map_err(|e| BackendError::Other(e.to_string()))
    }) {
        Ok(p) => (Some(p), None),
        Err(e) => (None, Some(e.to_string())),
    };
    Ok(Prepared {
        state: env.state.clone(),
        budget: env.budget.clone(),
        cancel: env.cancel.clone(),
        base: base.to_path_buf(),
        volume,
        image,
        direct_peer,
        nat_peer,
        nat_error,
    })
}

/// The `docker run` arguments of one launch (after `docker`).
pub fn run_args(
    name: &str,
    run_id: &str,
    budget: &Budget,
    image: &str,
    task: &Task,
    volume: &Path,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--name".into(),
        name.into(),
        "--label".into(),
        format!("{RUN_LABEL}={run_id}"),
        "--hostname".into(),
        "isobench".into(),
        "--cpuset-cpus".into(),
        crate::cgroup::cpu_list(&budget.cpus),
        "--cpus".into(),
        budget.cpus.len().to_string(),
        "--memory".into(),
        format!("{}m", budget.memory_mib),
        "-e".into(),
        crate::protocol::TASK_ENV.into(),
    ];
    match &task.workload {
        Workload::Net(p) if p.path == NetPath::Direct => {
            a.extend(["--network".into(), "host".into()])
        }
        Workload::Net(_) => a.extend(["--network".into(), "bridge".into()]),
        // Nothing to reach: no network at all.
        _ => a.extend(["--network".into(), "none".into()]),
    }
    if let Workload::Fs(p) = &task.workload {
        if p.path == DataPath::Volume {
            a.extend(["-v".into(), format!("{}:/volume", volume.display())]);
        }
    }
    a.push(image.into());
    a.push(AGENT_IN_ROOTFS.into());
    a
}

impl Backend for Docker {
    fn tier(&self) -> Tier {
        Tier::Docker
    }

    fn prepare(&mut self, env: &RunEnv) -> Result<(), BackendError> {
        if let Availability::Unavailable { reason, fix } =
            super::availability(Tier::Docker, &env.host, &env.options)
        {
            return Err(BackendError::Unavailable {
                tier: Tier::Docker,
                reason: format!("{reason}: {fix}"),
            });
        }
        check_run_id(&env.state.id)?;
        cpuset(&env.budget.cpus)?;
        let base = env.state.scratch().join("docker");
        self.prepared = Some(crate::backend::prepare_run_dir(env, &base, || {
            prepare_in(env, &base)
        })?);
        Ok(())
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        self.launches += 1;
        let n = self.launches;
        let p = self.prepared.as_ref().ok_or_else(|| {
            BackendError::Other("docker backend used before prepare(): call prepare first".into())
        })?;
        let mut task = task.clone();
        match &mut task.workload {
            Workload::Fs(f) => {
                f.dir = match f.path {
                    DataPath::Rootfs => "/data".into(),
                    DataPath::Volume => "/volume".into(),
                }
            }
            Workload::Net(net) => {
                let peer = match net.path {
                    NetPath::Direct => &p.direct_peer,
                    NetPath::Nat => p.nat_peer.as_ref().ok_or_else(|| {
                        BackendError::Other(format!(
                            "the bridge (NAT) peer is not running: {}",
                            p.nat_error.as_deref().unwrap_or("unknown reason")
                        ))
                    })?,
                };
                net.peer = peer.local_addr().to_string();
            }
            _ => {}
        }
        let name = format!("isobench-{}-{n}", p.state.id);
        let res = Resource::DockerContainer { name: name.clone() };
        p.state
            .record(res.clone())
            .map_err(|e| BackendError::io("recording the container in the ledger", e))?;
        let mut cmd = Command::new("docker");
        cmd.args(run_args(
            &name,
            &p.state.id,
            &p.budget,
            &p.image,
            &task,
            &p.volume,
        ));
        let log = p.base.join(format!("launch-{n}.stderr"));
        let log_res = Resource::File { path: log.clone() };
        let _ = p.state.record(log_res.clone());
        let teardown = || -> Result<(), BackendError> {
            remove_docker_container(&name).map_err(BackendError::Other)?;
            p.state
                .release(&res)
                .map_err(|e| BackendError::io("updating the run ledger", e))
        };
        let out = measure_cli(cmd, &task, &p.budget.cpus, &p.cancel, &log, teardown);
        if out.is_ok() && safe_remove_tree(&log).is_ok() {
            let _ = p.state.release(&log_res);
        }
        out
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        let Some(p) = self.prepared.take() else {
            return Ok(());
        };
        p.direct_peer.stop();
        if let Some(n) = p.nat_peer {
            n.stop();
        }
        // Every container of this run, by its label (a launch that failed midway included).
        let ids = run_checked(
            Command::new("docker").args([
                "ps",
                "-aq",
                "--filter",
                &format!("label={RUN_LABEL}={}", p.state.id),
            ]),
            "docker ps",
            "check that dockerd is running, then run `isobench cleanup`",
        )?;
        for id in ids.lines().map(str::trim).filter(|l| !l.is_empty()) {
            run_checked(
                Command::new("docker").args(["rm", "--force", id]),
                "docker rm --force",
                "remove the container by hand",
            )?;
        }
        let gone: Vec<Resource> = p
            .state
            .resources()
            .into_iter()
            .filter(|r| match r {
                Resource::DockerContainer { name } => {
                    name.starts_with(&format!("isobench-{}-", p.state.id))
                }
                Resource::Dir { path } | Resource::File { path } => path.starts_with(&p.base),
                _ => false,
            })
            .collect();
        safe_remove_tree(&p.base)
            .map_err(|e| BackendError::io(format!("removing {}", p.base.display()), e))?;
        p.state
            .release_all(&gone)
            .map_err(|e| BackendError::io("updating the run ledger", e))
    }

    fn versions(&self) -> BTreeMap<String, String> {
        let mut v = BTreeMap::new();
        let docker = Path::new("docker");
        if let Some(s) = version_line(docker, &["version", "--format", "{{.Server.Version}}"]) {
            v.insert("dockerd".into(), s);
        }
        if let Some(s) = version_line(docker, &["--version"]) {
            v.insert("docker-cli".into(), s);
        }
        if let Some(s) = version_line(
            docker,
            &[
                "info",
                "--format",
                "{{.DefaultRuntime}} {{.Driver}} cgroup-v{{.CgroupVersion}}",
            ],
        ) {
            v.insert("docker-runtime".into(), s);
        }
        v
    }

    fn settings(&self) -> BTreeMap<String, String> {
        let mut s = BTreeMap::from([
            (
                "fs_path".into(),
                "rootfs: /data in the container (overlay2 image layers); volume: -v <scratch>:/volume".to_string(),
            ),
            (
                "net_path".into(),
                "direct: --network host (peer 127.0.0.1); nat: default bridge + NAT (peer on the docker0 gateway); other workloads: --network none".into(),
            ),
            ("teardown".into(), "docker rm --force after the CLI exits".into()),
        ]);
        if let Some(p) = &self.prepared {
            s.insert("image".into(), p.image.clone());
            s.insert("cpus".into(), format!("{:?}", p.budget.cpus));
            s.insert("memory_mib".into(), p.budget.memory_mib.to_string());
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::NetParams;

    #[test]
    fn run_args_follow_the_data_paths() {
        let b = Budget {
            cpus: vec![0],
            memory_mib: 512,
        };
        let net = Task::new(Workload::Net(NetParams {
            path: NetPath::Nat,
            ..Default::default()
        }));
        let a = run_args(
            "isobench-r-1",
            "r",
            &b,
            "isobench/agent:x",
            &net,
            Path::new("/v"),
        );
        let s = a.join(" ");
        assert!(s.starts_with("run --name isobench-r-1 --label org.isobench.run=r"));
        assert!(s.contains("--cpuset-cpus 0 --cpus 1 --memory 512m -e ISOBENCH_TASK"));
        assert!(s.contains("--network bridge"));
        assert!(s.ends_with("isobench/agent:x /bin/isobench-agent"));
        let noop = run_args(
            "n",
            "r",
            &b,
            "i",
            &Task::new(Workload::Noop),
            Path::new("/v"),
        );
        assert!(noop.join(" ").contains("--network none"));
    }
}
