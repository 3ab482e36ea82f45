//! `docker`: the Docker Engine running the agent from an image imported from the rootfs
//! isobench builds (no registry).
//!
//! Image: imported from a reproducible tar of the rootfs (`tar --sort=name --mtime=@0`), so its
//! single layer's digest is known before `docker import`. The tag
//! `isobench/agent:<content hash of the rootfs files>` (label `org.isobench.cache=agent`) is
//! only a cache key: a cached image is reused only if its layer is exactly that tar and its
//! config sets nothing (no entrypoint, user, working directory or environment); otherwise a
//! fresh import is made and its id checked. Containers always run the image by id
//! (`sha256:...`) with `--pull=never`, so nothing is ever pulled. `isobench cleanup` removes
//! the cached images only when no live run may use them.
//!
//! Per launch: `docker run --name isobench-<run>-<n> --label org.isobench.run=<run>
//! --cidfile <scratch>/docker/launch-<n>-<k>/cid --pull=never` with the budget
//! (`--cpuset-cpus`, `--cpus`, `--memory`), the task in `-e ISOBENCH_TASK`, the agent's stdout
//! attached to the CLI's. The name is recorded in the ledger before `docker run`; docker takes
//! it atomically, and when it is in use ("Conflict. The container name ... is already in use")
//! the launch is retried as `isobench-<run>-<n>-r<k>`, leaving the other container alone. Data
//! paths: fs `rootfs` in the container's own `/data` (overlay2, the image's layers), fs `volume`
//! a bind-mounted host directory (`-v <scratch>/docker/volume:/volume`). Net: `direct` =
//! `--network host` (peer on 127.0.0.1), `nat` = the default bridge with NAT (peer on the
//! docker0 gateway address), as in Felter et al. 2015.
//!
//! Removal is by id only: the teardown of a launch removes the id its own `docker run` wrote to
//! the cidfile in the run's directory; `finish` removes the ids `docker ps` lists with this
//! run's label and name prefix; `isobench cleanup` ([`remove_recorded_container`]) removes a
//! ledger's container only after `docker container inspect` shows the run's label.
//!
//! Timings: plan (off the clock) = the name and the launch's directory recorded; launch = the
//! directory made and `docker run` spawned (create + start + attach); ready = READY read; exit =
//! the CLI exits; teardown = `docker rm --force <id>` of the exited container (what a user who
//! does not pass `--rm` pays; the daemon answers once the container, its layer and its cgroup
//! are gone) and the launch's directory removed; reading the cidfile is on the clock too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Instant;

use super::{check_run_id, fnv1a_hex, run_checked, stderr_tail, version_line, with_stderr};
use crate::backend::launch::cli::{cli_spec, put_task, start_cli};
use crate::backend::launch::{
    check_idle, loopback_peer, loopback_server_task, server_app, stays_until_stdin_closes,
    IDLE_READY_DEADLINE, IDLE_STOP_DEADLINE, PROCESS_DEADLINE,
};
use crate::backend::process::cpuset;
use crate::backend::process::{Process, Spec};
use crate::backend::{Backend, BackendError, IdleInstance, Outcome, RunEnv, ServerInstance};
use crate::host::fs::safe_remove_tree;
use crate::host::rootfs;
use crate::host::rootfs::AGENT_IN_ROOTFS;
use crate::measure::launch::{self, Launch, Started};
use crate::model::availability::Availability;
use crate::model::budget::Budget;
use crate::model::tier::Tier;
use crate::netpeer::NetPeer;
use crate::protocol::Task;
use crate::state::ledger::{Resource, RunState};
use crate::workload::{DataPath, NetPath, Workload};

/// The repository of isobench's cached agent images.
pub const IMAGE_REPO: &str = "isobench/agent";
/// Label on every image isobench imports (what `isobench cleanup` removes).
pub const IMAGE_LABEL: &str = "org.isobench.cache=agent";
/// Label key naming the run on every container.
pub const RUN_LABEL: &str = "org.isobench.run";
/// Names tried per launch when docker says a name is in use (someone else's container).
pub const NAME_ATTEMPTS: u32 = 8;

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
        let start = if crate::host::facts::which("dockerd").is_some() {
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
    /// The docker CLI (absolute path).
    docker: PathBuf,
    budget: Budget,
    cancel: Arc<AtomicBool>,
    base: PathBuf,
    volume: PathBuf,
    image: AgentImage,
    /// Peer for `--network host` (127.0.0.1) and for the bridge (docker0's gateway address).
    direct_addr: SocketAddr,
    /// The bridge peer's address, or why it is not running.
    nat_addr: Result<SocketAddr, String>,
    /// The peers themselves (taken by `finish`).
    peers: Vec<NetPeer>,
    /// The rootfs the image is made from, and the files in it (the image's cache key).
    rootfs: PathBuf,
    files: Vec<PathBuf>,
}

/// What the launches of an application server run with: the image holding the agent and the
/// application's programs, and the port publish of the bridge (nat) path.
#[derive(Debug, Clone)]
struct Serve {
    image_id: String,
    /// `<docker0 gateway>:<host port>:<container port>` (`-p`), nat only.
    publish: Option<String>,
}

pub struct Docker {
    p: Prepared,
    /// `finish` ran (it is idempotent).
    finished: bool,
    launches: u64,
    /// The name attempt of the launch being planned (a name in use is retried under another).
    attempt: u32,
    /// The CLI's stderr of the last attempt, when it said anything.
    last_stderr: String,
    /// The image of each application served so far (built on its first start, cached like
    /// the agent's image).
    app_images: BTreeMap<&'static str, AgentImage>,
    /// Set while `start_server` launches a server.
    serve: Option<Serve>,
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

/// What the agent image of a run is: the cache tag and the id every container runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentImage {
    /// `isobench/agent:<hash>`: a cache key only, never run.
    pub tag: String,
    /// `sha256:<64 hex>`: what `docker run` is given.
    pub id: String,
}

/// Is `s` a full image id (`sha256:` and 64 lowercase hex digits)?
pub fn valid_image_id(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(is_hex64)
}

fn is_hex64(s: &str) -> bool {
    s.len() == 64
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

/// The first object of `docker ... inspect` output (a JSON array), if any.
fn first_object(json: &str) -> Option<serde_json::Value> {
    let v: serde_json::Value = serde_json::from_str(json).ok()?;
    v.as_array()?.first().cloned()
}

/// Given `docker image inspect` output, the image's id if it is one isobench would have
/// imported from a tar whose digest is `layer`: exactly that one layer, isobench's cache label,
/// and a config that changes nothing about how the agent runs (no entrypoint, command, user,
/// working directory, environment or volumes). Anything else is not reused.
pub fn reusable_image(inspect_json: &str, layer: &str) -> Option<String> {
    let img = first_object(inspect_json)?;
    let id = img.get("Id")?.as_str()?;
    let layers: Vec<&str> = img
        .pointer("/RootFS/Layers")?
        .as_array()?
        .iter()
        .map(|l| l.as_str().unwrap_or(""))
        .collect();
    let cfg = img.get("Config")?;
    let unset = |k: &str| match cfg.get(k) {
        None | Some(serde_json::Value::Null) => true,
        Some(serde_json::Value::String(s)) => s.is_empty(),
        Some(serde_json::Value::Array(a)) => a.is_empty(),
        Some(serde_json::Value::Object(o)) => o.is_empty(),
        Some(_) => false,
    };
    let (key, value) = IMAGE_LABEL.split_once('=').expect("label is key=value");
    let labelled = cfg
        .pointer(&format!("/Labels/{key}"))
        .and_then(|v| v.as_str())
        == Some(value);
    let plain = [
        "Entrypoint",
        "Cmd",
        "User",
        "WorkingDir",
        "Env",
        "Volumes",
        "OnBuild",
    ]
    .iter()
    .all(|k| unset(k));
    (valid_image_id(id) && layers == [layer] && labelled && plain).then(|| id.to_string())
}

/// Write a reproducible tar of `rootfs` to `tar_path` (sorted names, mtime 0, uid/gid 0) and
/// return its digest `sha256:<hex>`: the DiffID `docker import` gives its one layer.
fn reproducible_tar(rootfs: &Path, tar_path: &Path) -> Result<String, BackendError> {
    run_checked(
        Command::new("tar")
            .arg("-C")
            .arg(rootfs)
            .args([
                "--sort=name",
                "--mtime=@0",
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "-cf",
            ])
            .arg(tar_path)
            .arg("."),
        "tar of the docker rootfs",
        "install GNU tar 1.28 or newer",
    )?;
    let sum = run_checked(
        Command::new("sha256sum").arg(tar_path),
        "sha256sum of the docker rootfs tar",
        "install coreutils",
    )?;
    let hex = sum.split_whitespace().next().unwrap_or("");
    if !is_hex64(hex) {
        return Err(BackendError::Other(format!(
            "sha256sum printed {sum:?}, not a digest: check coreutils' sha256sum"
        )));
    }
    Ok(format!("sha256:{hex}"))
}

/// `docker image inspect <what>` as JSON, or None when the daemon has no such image.
fn inspect_image(what: &str) -> Result<Option<String>, BackendError> {
    let out = Command::new("docker")
        .args(["image", "inspect", what])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackendError::io("running docker image inspect", e))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such image") {
        return Ok(None);
    }
    Err(BackendError::Other(format!(
        "docker image inspect {what} failed: {}; check `docker info` works",
        err.trim()
    )))
}

/// The agent image for `rootfs`: the cached one under `tag` if it is verifiably isobench's
/// import of these exact bytes, else a fresh `docker import` (which moves the tag) whose id is
/// checked the same way. `work` is a directory of the run's for the tar.
fn ensure_image(rootfs: &Path, tag: &str, work: &Path) -> Result<AgentImage, BackendError> {
    let tar_path = work.join("agent-image.tar");
    let layer = reproducible_tar(rootfs, &tar_path)?;
    let found = match inspect_image(tag)? {
        Some(json) => reusable_image(&json, &layer),
        None => None,
    };
    let id = match found {
        Some(id) => id,
        None => {
            let id = run_checked(
                Command::new("docker")
                    .args(["import", "--change", &format!("LABEL {IMAGE_LABEL}")])
                    .arg(&tar_path)
                    .arg(tag),
                "docker import of the agent image",
                "check `docker info` works and the disk has room",
            )?;
            let json = inspect_image(&id)?.unwrap_or_default();
            if !valid_image_id(&id) || reusable_image(&json, &layer).as_deref() != Some(&id) {
                return Err(BackendError::Other(format!(
                    "docker import printed {id:?}, which is not an image holding exactly the \
                     agent rootfs (layer {layer}): check the docker daemon and its storage driver"
                )));
            }
            id
        }
    };
    std::fs::remove_file(&tar_path)
        .map_err(|e| BackendError::io(format!("removing {}", tar_path.display()), e))?;
    Ok(AgentImage {
        tag: tag.to_string(),
        id,
    })
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

/// What [`remove_cached_images`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageCleanup {
    /// Images removed: `<tag> <id>`, or `<untagged> <id>` for an old import whose tag moved on.
    pub removed: Vec<String>,
    /// Images left, each with the reason.
    pub kept: Vec<String>,
}

/// isobench's cached images from `docker images --no-trunc --format '{{.ID}} {{.Repository}}:{{.Tag}}'`
/// (already filtered by [`IMAGE_LABEL`]): (id, tags in [`IMAGE_REPO`]), one entry per id, and
/// the ids also tagged outside isobench's repository (never removed: someone else named them).
pub fn cached_images(listing: &str) -> (Vec<(String, Vec<String>)>, Vec<String>) {
    let mut ours: Vec<(String, Vec<String>)> = vec![];
    let mut foreign: Vec<String> = vec![];
    for line in listing.lines() {
        let Some((id, name)) = line.trim().split_once(' ') else {
            continue;
        };
        if !valid_image_id(id) {
            continue;
        }
        let mine = name.starts_with(&format!("{IMAGE_REPO}:")) || name == "<none>:<none>";
        if !mine {
            if !foreign.iter().any(|f| f == id) {
                foreign.push(id.to_string());
            }
            continue;
        }
        let i = match ours.iter().position(|(x, _)| x == id) {
            Some(i) => i,
            None => {
                ours.push((id.to_string(), vec![]));
                ours.len() - 1
            }
        };
        if name != "<none>:<none>" {
            ours[i].1.push(name.to_string());
        }
    }
    (ours, foreign)
}

/// Remove the images isobench imported (label [`IMAGE_LABEL`], repository [`IMAGE_REPO`] or
/// untagged), by id, unless a run may still use them: nothing is removed while
/// `any_live_run` (a run whose owner is alive), and an image any container was created from
/// (`docker ps -a --filter ancestor=<id>`) stays. An image also tagged under another name, or
/// tagged twice, stays too (`docker rmi` of an id with several names would need `--force`).
pub fn remove_cached_images(any_live_run: bool) -> Result<ImageCleanup, String> {
    let out = Command::new("docker")
        .args([
            "images",
            "--no-trunc",
            "--filter",
            &format!("label={IMAGE_LABEL}"),
            "--format",
            "{{.ID}} {{.Repository}}:{{.Tag}}",
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
    let (ours, foreign) = cached_images(&String::from_utf8_lossy(&out.stdout));
    let mut r = ImageCleanup::default();
    for (id, tags) in ours {
        let label = if tags.is_empty() {
            format!("<untagged> {id}")
        } else {
            format!("{} {id}", tags.join(", "))
        };
        if any_live_run {
            r.kept
                .push(format!("{label}: a live isobench run may use it"));
            continue;
        }
        if foreign.contains(&id) || tags.len() > 1 {
            r.kept.push(format!(
                "{label}: it has other names too; remove them with `docker rmi <name>`"
            ));
            continue;
        }
        let users = Command::new("docker")
            .args(["ps", "-a", "-q", "--filter", &format!("ancestor={id}")])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running docker ps: {e}"))?;
        if !users.status.success() {
            return Err(format!(
                "docker ps --filter ancestor={id} failed: {} (is dockerd running?)",
                String::from_utf8_lossy(&users.stderr).trim()
            ));
        }
        let users = String::from_utf8_lossy(&users.stdout);
        let users: Vec<&str> = users.split_whitespace().collect();
        if !users.is_empty() {
            r.kept.push(format!(
                "{label}: used by container(s) {}",
                users.join(", ")
            ));
            continue;
        }
        let o = Command::new("docker")
            .args(["rmi", &id])
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("running docker rmi {id}: {e}"))?;
        if !o.status.success() {
            return Err(format!(
                "docker rmi {id} failed: {}; remove the containers using it (`isobench cleanup`), then retry",
                String::from_utf8_lossy(&o.stderr).trim()
            ));
        }
        r.removed.push(label);
    }
    Ok(r)
}

/// Is `s` a full container id (64 lowercase hex digits)?
pub fn valid_container_id(s: &str) -> bool {
    is_hex64(s)
}

/// The name of attempt `attempt` (0-based) of launch `n`: `isobench-<run>-<n>`, then
/// `isobench-<run>-<n>-r<attempt>` when docker said the name was in use.
pub fn container_name(run_id: &str, n: u64, attempt: u32) -> String {
    if attempt == 0 {
        format!("isobench-{run_id}-{n}")
    } else {
        format!("isobench-{run_id}-{n}-r{attempt}")
    }
}

/// Did `docker run`/`create` refuse because the name is taken?
pub fn is_name_conflict(stderr: &str) -> bool {
    stderr.contains("Conflict. The container name")
        || stderr.contains("is already in use by container")
}

/// Does `name` have the shape of a container name run `run_id` makes?
fn is_run_container_name(name: &str, run_id: &str) -> bool {
    check_run_id(run_id).is_ok()
        && name.len() <= 128
        && name
            .strip_prefix(&format!("isobench-{run_id}-"))
            .is_some_and(|rest| {
                !rest.is_empty()
                    && rest
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
}

/// What `docker container inspect` says about a container: (full id, name without the leading
/// `/`, value of the [`RUN_LABEL`] label or None).
pub fn container_identity(inspect_json: &str) -> Option<(String, String, Option<String>)> {
    let c = first_object(inspect_json)?;
    let id = c.get("Id")?.as_str()?.to_string();
    let name = c.get("Name")?.as_str()?.trim_start_matches('/').to_string();
    let run = c
        .pointer("/Config/Labels")
        .and_then(|l| l.get(RUN_LABEL))
        .and_then(|v| v.as_str())
        .map(str::to_string);
    Some((id, name, run))
}

/// `docker rm --force <id>`. Ok(false) when docker no longer has it.
fn remove_by_id(id: &str) -> Result<bool, String> {
    if !valid_container_id(id) {
        return Err(format!(
            "{id:?} is not a full container id: refusing to pass it to docker rm"
        ));
    }
    let out = Command::new("docker")
        .args(["rm", "--force", id])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("running `docker rm --force {id}`: {e}; remove it by hand"))?;
    let err = String::from_utf8_lossy(&out.stderr);
    if err.contains("No such container") {
        Ok(false)
    } else if out.status.success() {
        Ok(true)
    } else {
        Err(format!(
            "`docker rm --force {id}` failed: {} (is dockerd running?); remove it by hand",
            err.trim()
        ))
    }
}

/// Remove a container a run's ledger names, by id, only if docker says it carries the label
/// `org.isobench.run=<run_id>`. `id` is the one recorded once known; without it the name is
/// looked up (its id is what gets removed). A container under that name or id with another
/// label or none is someone else's: it is left alone (Ok(false), with a warning). Ok(false)
/// also when docker has no such container. The arguments are checked first (a name of the
/// run's shape, a full id, a valid run id), so a hand-made ledger cannot aim docker elsewhere.
pub fn remove_recorded_container(
    name: &str,
    id: Option<&str>,
    run_id: &str,
) -> Result<bool, String> {
    if !is_run_container_name(name, run_id) {
        return Err(format!(
            "ledger names Docker container {name:?}, which is not a name run {run_id:?} makes \
             (isobench-{run_id}-...): left alone; edit the ledger by hand"
        ));
    }
    if let Some(id) = id {
        if !valid_container_id(id) {
            return Err(format!(
                "ledger gives Docker container {name} the id {id:?}, not a full container id: \
                 left alone; edit the ledger by hand"
            ));
        }
    }
    let what = id.unwrap_or(name);
    let out = Command::new("docker")
        .args(["container", "inspect", what])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            format!("running `docker container inspect {what}`: {e}; is docker installed?")
        })?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such container") {
            return Ok(false);
        }
        return Err(format!(
            "`docker container inspect {what}` failed: {} (is dockerd running?)",
            err.trim()
        ));
    }
    let Some((found, found_name, run)) = container_identity(&String::from_utf8_lossy(&out.stdout))
    else {
        return Err(format!(
            "`docker container inspect {what}` printed no container: check the docker CLI"
        ));
    };
    if run.as_deref() != Some(run_id) || id.is_some_and(|i| i != found) {
        tracing::warn!(
            container = %found_name,
            id = %found,
            label = ?run,
            "not removing a container this run does not own (its {RUN_LABEL} label is not {run_id})"
        );
        return Ok(false);
    }
    remove_by_id(&found)
}

/// The container id `docker run --cidfile` wrote, if it got that far.
fn read_cidfile(path: &Path) -> Option<String> {
    let s = std::fs::read_to_string(path).ok()?;
    let s = s.trim();
    valid_container_id(s).then(|| s.to_string())
}

fn prepare_in(env: &RunEnv, base: &Path) -> Result<Prepared, BackendError> {
    std::fs::create_dir(base)
        .map_err(|e| BackendError::io(format!("creating {}", base.display()), e))?;
    let rootfs = base.join("rootfs");
    let files = rootfs::build(&env.agent, &rootfs)
        .map_err(|e| BackendError::Other(format!("building the docker rootfs: {e}")))?;
    let mut all = files;
    all.push(PathBuf::from("/etc/hostname"));
    let image = ensure_image(&rootfs, &image_name(&rootfs, &all)?, base)?;
    let volume = base.join("volume");
    std::fs::create_dir(&volume)
        .map_err(|e| BackendError::io(format!("creating {}", volume.display()), e))?;
    let docker = crate::host::facts::which("docker").ok_or_else(|| BackendError::Unavailable {
        tier: Tier::Docker,
        reason: "docker vanished from PATH: apt-get install docker.io".into(),
    })?;
    let direct_peer = loopback_peer()?;
    let direct_addr = direct_peer.local_addr();
    let mut peers = vec![direct_peer];
    let nat_addr = match bridge_gateway().and_then(|gw| {
        NetPeer::start(format!("{gw}:0")).map_err(|e| BackendError::Other(e.to_string()))
    }) {
        Ok(p) => {
            let a = p.local_addr();
            peers.push(p);
            Ok(a)
        }
        Err(e) => Err(e.to_string()),
    };
    Ok(Prepared {
        state: env.state.clone(),
        docker,
        budget: env.budget.clone(),
        cancel: env.cancel.clone(),
        base: base.to_path_buf(),
        volume,
        image,
        direct_addr,
        nat_addr,
        peers,
        rootfs,
        files: all,
    })
}

/// The `docker run` arguments of one launch (after `docker`). `image_id` is the image's id
/// (`sha256:...`), never a name; `--pull=never` so docker cannot fetch anything; `cidfile`
/// (which must not exist yet) receives the container's id.
pub fn run_args(
    name: &str,
    run_id: &str,
    budget: &Budget,
    image_id: &str,
    task: &Task,
    volume: &Path,
    cidfile: &Path,
) -> Vec<String> {
    let mut a: Vec<String> = vec![
        "run".into(),
        "--name".into(),
        name.into(),
        "--label".into(),
        format!("{RUN_LABEL}={run_id}"),
        "--cidfile".into(),
        cidfile.display().to_string(),
        "--pull=never".into(),
        "--hostname".into(),
        "isobench".into(),
        "--cpuset-cpus".into(),
        crate::host::cgroup::cpu_list(&budget.cpus),
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
        // An application server: on the host's network (direct, as the study's "Docker
        // net=host") or the default bridge with its port published (nat, "Docker NAT").
        w if w.server_app().is_some() => a.extend([
            "--network".into(),
            match w.net_path() {
                NetPath::Direct => "host",
                NetPath::Nat => "bridge",
            }
            .into(),
        ]),
        // Nothing to reach: no network at all.
        _ => a.extend(["--network".into(), "none".into()]),
    }
    // fs's files and mysql's data directory on a volume: a bind-mounted host directory.
    if super::data_path(&task.workload) == Some(DataPath::Volume) {
        a.extend(["-v".into(), format!("{}:/volume", volume.display())]);
    }
    if stays_until_stdin_closes(task) {
        // The idle agent (and an application's) ends when its stdin closes: keep it attached
        // to the CLI's.
        a.push("--interactive".into());
    }
    a.push(image_id.into());
    a.push(AGENT_IN_ROOTFS.into());
    a
}

/// One attempt at a launch, planned: the container's name, its directory (cidfile and the
/// CLI's stderr), the `docker run` command, and what the ledger holds for it.
pub struct DockerPlan {
    name: String,
    dir: PathBuf,
    spec: Spec,
    /// The container's name (its id once known) and the directory, recorded in `plan`.
    resources: Vec<Resource>,
}

impl DockerPlan {
    fn cid(&self) -> PathBuf {
        self.dir.join("cid")
    }
    fn log(&self) -> PathBuf {
        self.dir.join("docker.stderr")
    }
}

impl Launch for Docker {
    type Plan = DockerPlan;
    type Running = ();

    /// Off the clock: launch `launches` under the name of attempt `attempt`, its directory and
    /// name recorded before `docker run`.
    fn plan(&mut self, task: &Task) -> Result<DockerPlan, BackendError> {
        let (n, attempt) = (self.launches, self.attempt);
        let p = &self.p;
        let task = task_for(p, task)?;
        let run_id = p.state.id.as_str();
        let name = container_name(run_id, n, attempt);
        let dir = p.base.join(format!("launch-{n}-{attempt}"));
        crate::backend::resources::refuse_existing(&dir)?;
        let image_id = self.serve.as_ref().map_or(&p.image.id, |s| &s.image_id);
        let mut args = run_args(
            &name,
            run_id,
            &p.budget,
            image_id,
            &task,
            &p.volume,
            &dir.join("cid"),
        );
        if let Some(publish) = self.serve.as_ref().and_then(|s| s.publish.clone()) {
            // Options go before the image and the command (the last two arguments).
            let at = args.len() - 2;
            args.splice(at..at, ["--publish".to_string(), publish]);
        }
        let resources = vec![
            Resource::DockerContainer {
                name: name.clone(),
                id: None,
            },
            Resource::Dir { path: dir.clone() },
        ];
        p.state
            .record_all(&resources)
            .map_err(|e| BackendError::io("recording the container in the ledger", e))?;
        let mut spec = cli_spec(
            &p.docker,
            args.into_iter().map(Into::into).collect(),
            &p.budget.cpus,
        );
        put_task(&mut spec, &task);
        if stays_until_stdin_closes(&task) {
            spec.stdin = crate::backend::process::Stdio::Pipe;
        }
        Ok(DockerPlan {
            name,
            dir,
            spec,
            resources,
        })
    }

    /// On the clock: the launch's directory, then `docker run` (create + start + attach).
    fn start(&mut self, plan: &mut DockerPlan) -> Result<Started<()>, BackendError> {
        std::fs::create_dir(&plan.dir)
            .map_err(|e| BackendError::io(format!("creating {}", plan.dir.display()), e))?;
        let log = plan.log();
        start_cli(&mut plan.spec, &log)
    }

    /// On the clock, after the CLI exited: `docker rm --force <id>` of the id its own `docker
    /// run` wrote (what a user who does not pass `--rm` pays), then the launch's directory.
    fn teardown(&mut self, plan: DockerPlan, _running: Option<()>) -> Result<(), BackendError> {
        let (done, said) = teardown_launch(&self.p.state, plan);
        self.last_stderr = said;
        done
    }
}

/// Teardown of one launch: `docker rm --force <id>` of the id its own `docker run` wrote, then
/// the launch's directory; the ledger releases (deferred by the core while it measures). Also
/// returns what the CLI said on stderr.
fn teardown_launch(state: &Arc<RunState>, plan: DockerPlan) -> (Result<(), BackendError>, String) {
    let said = stderr_tail(&plan.log(), 600);
    let run_id = state.id.clone();
    let done = (|| {
        match read_cidfile(&plan.cid()) {
            // The id our own `docker run` wrote: this run created that container.
            Some(id) => {
                if let Err(e) = remove_by_id(&id) {
                    // Still there: keep its id in the ledger for `isobench cleanup`.
                    let known = Resource::DockerContainer {
                        name: plan.name.clone(),
                        id: Some(id.clone()),
                    };
                    let _ = state
                        .record(known)
                        .and_then(|()| state.release(&plan.resources[0]));
                    return Err(BackendError::Other(e));
                }
            }
            // No id: docker refused the name (someone else's container keeps it), or the CLI
            // died before writing the id; only a container carrying this run's label goes.
            None => {
                remove_recorded_container(&plan.name, None, &run_id)
                    .map_err(BackendError::Other)?;
            }
        }
        safe_remove_tree(&plan.dir)
            .map_err(|e| BackendError::io(format!("removing {}", plan.dir.display()), e))?;
        state
            .release_all(&plan.resources)
            .map_err(|e| BackendError::io("updating the run ledger", e))
    })();
    (done, said)
}

/// The host pid of a container's first process (`docker inspect`'s `.State.Pid`), if running.
fn container_pid(id: &str) -> Option<nix::unistd::Pid> {
    if !valid_container_id(id) {
        return None;
    }
    let out = Command::new("docker")
        .args(["container", "inspect", "--format", "{{.State.Pid}}", id])
        .stdin(Stdio::null())
        .output()
        .ok()?;
    let pid: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().ok()?;
    (out.status.success() && pid > 0).then(|| nix::unistd::Pid::from_raw(pid))
}

/// The parent of `pid` when it is the container's `containerd-shim*` (one per container).
fn shim_of(pid: nix::unistd::Pid) -> Option<nix::unistd::Pid> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let ppid: i32 = stat
        .rfind(')')
        .and_then(|i| stat[i + 2..].split_whitespace().nth(1))?
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{ppid}/comm")).ok()?;
    comm.trim()
        .starts_with("containerd-shim")
        .then(|| nix::unistd::Pid::from_raw(ppid))
}

/// An idle Docker container: `docker run --interactive` in the foreground, the agent in the
/// container waiting for end of file on the stdin the CLI forwards. Its host processes are the
/// container's own (its first process and everything below its `containerd-shim`, the shim
/// included), never the docker CLI's or the shared daemons'; its cgroup is the one
/// `/proc/<pid>/cgroup` names for the container's first process (`docker/<id>` with the
/// cgroupfs driver, `system.slice/docker-<id>.scope` with systemd; v1 memory hierarchy or v2).
struct DockerIdle {
    process: Option<Process>,
    stdin: Option<OwnedFd>,
    _stream: OwnedFd,
    state: Arc<RunState>,
    plan: Option<DockerPlan>,
    pid: nix::unistd::Pid,
    cgroup_dirs: Vec<PathBuf>,
}

impl IdleInstance for DockerIdle {
    fn host_pids(&self) -> Vec<nix::unistd::Pid> {
        match shim_of(self.pid) {
            Some(shim) => crate::host::proc::descendants(shim),
            // Gone (exited early: its PSS then cannot be read), or no shim above it.
            None => crate::host::proc::descendants(self.pid),
        }
    }

    fn cgroup_memory_bytes(&self) -> Option<u64> {
        crate::backend::cgroup_memory_in(&self.cgroup_dirs)
    }

    fn stop(mut self: Box<Self>) -> Result<(), BackendError> {
        // End of file on stdin ends the idle agent (the CLI forwards it) and the CLI with it; a
        // stuck one is killed at the deadline, and `docker rm --force` removes the container.
        drop(self.stdin.take());
        if let Some(mut p) = self.process.take() {
            let _ = p.wait(Instant::now() + IDLE_STOP_DEADLINE, &AtomicBool::new(false));
        }
        let Some(plan) = self.plan.take() else {
            return Ok(());
        };
        let (done, said) = teardown_launch(&self.state, plan);
        done.map_err(|e| with_stderr(e, "docker", &said))
    }
}

/// Where a data path is inside a container: its own `/data` (overlay2, the image's layers
/// below) or the bind-mounted volume.
fn data_dir(path: DataPath) -> &'static str {
    match path {
        DataPath::Rootfs => "/data",
        DataPath::Volume => "/volume",
    }
}

/// The task as a docker container sees it: its data paths and the peer of its network path.
fn task_for(p: &Prepared, task: &Task) -> Result<Task, BackendError> {
    let mut task = task.clone();
    match &mut task.workload {
        Workload::Fs(f) => f.dir = data_dir(f.path).into(),
        // The data directory on the container's own layer (overlay2) or on the volume.
        Workload::Mysql(m) => m.dir = data_dir(m.data).into(),
        Workload::Net(net) => {
            let peer = match net.path {
                NetPath::Direct => p.direct_addr,
                NetPath::Nat => p.nat_addr.clone().map_err(|why| {
                    BackendError::Other(format!("the bridge (NAT) peer is not running: {why}"))
                })?,
            };
            net.peer = peer.to_string();
        }
        _ => {}
    }
    Ok(task)
}

impl Docker {
    /// Prepare the Docker tier: the run's directory (rootfs, volume), the agent image (cached
    /// across runs, verified) and the peers. On failure the directory is removed (or stays in
    /// the ledger for `isobench cleanup`).
    pub fn prepare(env: &RunEnv) -> Result<Self, BackendError> {
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
        let p = crate::backend::prepare_run_dir(env, &base, || prepare_in(env, &base))?;
        Ok(Docker {
            p,
            finished: false,
            launches: 0,
            attempt: 0,
            last_stderr: String::new(),
            app_images: BTreeMap::new(),
            serve: None,
        })
    }
}

impl Docker {
    /// The image of application `app`: the run's rootfs with its programs installed, imported
    /// (or found cached) once per run.
    fn app_image(&mut self, app: &crate::workload::ServerApp) -> Result<String, BackendError> {
        if let Some(img) = self.app_images.get(app.name) {
            return Ok(img.id.clone());
        }
        let p = &self.p;
        let programs: Vec<PathBuf> = app.programs.iter().map(PathBuf::from).collect();
        let copied = rootfs::install_with_libs(&p.rootfs, &programs).map_err(|e| {
            BackendError::Other(format!(
                "installing the {} server into the docker rootfs: {e}",
                app.name
            ))
        })?;
        let mut files = p.files.clone();
        files.extend(copied);
        let img = ensure_image(&p.rootfs, &image_name(&p.rootfs, &files)?, &p.base)?;
        let id = img.id.clone();
        self.app_images.insert(app.name, img);
        Ok(id)
    }
}

impl Backend for Docker {
    fn tier(&self) -> Tier {
        Tier::Docker
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        self.launches += 1;
        let n = self.launches;
        let p = &self.p;
        let (state, cancel) = (p.state.clone(), p.cancel.clone());
        for attempt in 0..NAME_ATTEMPTS {
            self.attempt = attempt;
            self.last_stderr.clear();
            let deadline = Instant::now() + PROCESS_DEADLINE;
            match launch::measure(self, task, deadline, &cancel, &state) {
                Ok(o) => return Ok(o),
                Err(_) if is_name_conflict(&self.last_stderr) => {
                    tracing::warn!(
                        container = %container_name(&state.id, n, attempt),
                        "docker says the name is in use by another container; leaving it alone and trying another name"
                    );
                }
                Err(e) => return Err(with_stderr(e, "docker", &self.last_stderr)),
            }
        }
        Err(BackendError::Other(format!(
            "docker said the names {} to {} were all in use by other containers: those are \
             not this run's and are left alone; remove or rename them, or rerun (a new run id \
             gives new names)",
            container_name(&state.id, n, 0),
            container_name(&state.id, n, NAME_ATTEMPTS - 1)
        )))
    }

    fn start_idle(&mut self, task: &Task) -> Result<Box<dyn IdleInstance>, BackendError> {
        check_idle(task)?;
        self.launches += 1;
        self.attempt = 0;
        self.last_stderr.clear();
        let cancel = self.p.cancel.clone();
        let (plan, started) = launch::start_idle(self, task, IDLE_READY_DEADLINE, &cancel)
            .map_err(|e| with_stderr(e, "docker", &self.last_stderr))?;
        let Started {
            mut process,
            stream,
            ..
        } = started;
        let stdin = process.stdin.take();
        // Ready: `docker run` wrote the id before it started the container.
        let pid = read_cidfile(&plan.cid()).and_then(|id| container_pid(&id));
        let cgroup_dirs = pid
            .map(|p| {
                crate::backend::cgroup_dirs_of_pid(p, &crate::host::cgroup::Hierarchies::detect())
            })
            .unwrap_or_default();
        let idle = DockerIdle {
            process: Some(process),
            stdin,
            _stream: stream,
            state: self.p.state.clone(),
            plan: Some(plan),
            pid: pid.unwrap_or(nix::unistd::Pid::from_raw(0)),
            cgroup_dirs,
        };
        if pid.is_none() {
            let stopped = Box::new(idle).stop();
            return Err(BackendError::Other(format!(
                "docker reported the idle container ready but `docker container inspect` gave no pid for it{}; check `docker info`",
                stopped.err().map(|e| format!(" (and stopping it failed: {e})")).unwrap_or_default()
            )));
        }
        Ok(Box::new(idle))
    }

    /// An application server from an image holding the agent and the application's programs
    /// with their libraries (the rootfs plus `rootfs::install_with_libs`, imported as the
    /// agent's image is). direct: `--network host`, the server on 127.0.0.1 at a free port;
    /// nat: the default bridge, the server on the container's port published on docker0's
    /// gateway address (`-p <gw>:<free port>:<port>`: Docker's DNAT rule, which also serves
    /// connections the host itself makes to that address).
    fn start_server(&mut self, task: &Task) -> Result<ServerInstance, BackendError> {
        let app = server_app(task)?;
        let image_id = self.app_image(&app)?;
        let (t, addr, publish) = match task.workload.net_path() {
            NetPath::Direct => {
                let (t, addr) = loopback_server_task(task)?;
                (t, addr, None)
            }
            NetPath::Nat => {
                let gw = match &self.p.nat_addr {
                    Ok(a) => a.ip(),
                    Err(why) => {
                        return Err(BackendError::Unsupported(format!(
                            "docker's default bridge is not usable here: {why}"
                        )))
                    }
                };
                let host_port = std::net::TcpListener::bind((gw, 0))
                    .and_then(|l| l.local_addr())
                    .map_err(|e| BackendError::io(format!("finding a free port on {gw}"), e))?
                    .port();
                let mut t = task.clone();
                t.workload = task.workload.with_endpoint("0.0.0.0", app.port);
                (
                    t,
                    SocketAddr::new(gw, host_port),
                    Some(format!("{gw}:{host_port}:{}", app.port)),
                )
            }
        };
        self.serve = Some(Serve { image_id, publish });
        let started = self.start_idle(&t);
        self.serve = None;
        Ok(ServerInstance {
            instance: started?,
            addr,
        })
    }

    /// The application's image (the agent's rootfs plus the server's programs and libraries),
    /// imported or found cached before the first round, so no server start waits for it.
    fn prepare_server(&mut self, task: &Task) -> Result<(), BackendError> {
        let app = server_app(task)?;
        self.app_image(&app).map(|_| ())
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if std::mem::replace(&mut self.finished, true) {
            return Ok(());
        }
        for peer in std::mem::take(&mut self.p.peers) {
            peer.stop();
        }
        let p = &self.p;
        // Every container of this run, by its label and name prefix (a launch that failed
        // midway included), removed by id.
        let prefix = format!("isobench-{}-", p.state.id);
        let listed = run_checked(
            Command::new("docker").args([
                "ps",
                "-a",
                "--no-trunc",
                "--filter",
                &format!("label={RUN_LABEL}={}", p.state.id),
                "--format",
                "{{.ID}} {{.Names}}",
            ]),
            "docker ps",
            "check that dockerd is running, then run `isobench cleanup`",
        )?;
        for (id, name) in listed.lines().filter_map(|l| l.trim().split_once(' ')) {
            if name.starts_with(&prefix) {
                remove_by_id(id).map_err(BackendError::Other)?;
            }
        }
        let gone: Vec<Resource> = p
            .state
            .resources()
            .into_iter()
            .filter(|r| match r {
                Resource::DockerContainer { name, .. } => name.starts_with(&prefix),
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
            ("teardown".into(), "docker rm --force <id> after the CLI exits".into()),
        ]);
        let p = &self.p;
        s.insert("image".into(), p.image.tag.clone());
        s.insert("image_id".into(), p.image.id.clone());
        // Each application's image (the agent's plus the server's programs), once made.
        for (app, img) in &self.app_images {
            s.insert(format!("image_id_{app}"), img.id.clone());
        }
        s.insert("cpus".into(), format!("{:?}", p.budget.cpus));
        s.insert("memory_mib".into(), p.budget.memory_mib.to_string());
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::NetParams;

    const ID: &str = "sha256:01c525768fd9a0d9eb658a0aa5ba3c14fbfaad988ab59bed2a34e7b143beb40a";
    const LAYER: &str = "sha256:7dcccfad8258d73aefb6a0a3f19d9a6c59a91cf14cdb2f56bf582ff93c0cfca3";
    const CID: &str = "d273e573bdc0aed0e172f9d1a6136f82ec8d46f2d5eb9e39b5b61e23c67d0b87";

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
            ID,
            &net,
            Path::new("/v"),
            Path::new("/s/launch-1-0.cid"),
        );
        let s = a.join(" ");
        assert!(s.starts_with(
            "run --name isobench-r-1 --label org.isobench.run=r --cidfile /s/launch-1-0.cid --pull=never "
        ));
        assert!(s.contains("--cpuset-cpus 0 --cpus 1 --memory 512m -e ISOBENCH_TASK"));
        assert!(s.contains("--network bridge"));
        assert!(s.ends_with(&format!("{ID} /bin/isobench-agent")));
        // The image is run by id, never by a name docker could resolve or pull.
        assert!(!s.contains("isobench/agent"), "{s}");
        assert_eq!(a.iter().filter(|x| x.starts_with("--pull")).count(), 1);
        let noop = run_args(
            "n",
            "r",
            &b,
            ID,
            &Task::new(Workload::Noop),
            Path::new("/v"),
            Path::new("/c"),
        );
        assert!(noop.join(" ").contains("--network none"));
        assert!(noop.contains(&"--pull=never".to_string()));
    }

    #[test]
    fn an_application_server_runs_on_the_host_network_or_the_bridge() {
        let b = Budget {
            cpus: vec![1],
            memory_mib: 256,
        };
        let args = |path| {
            let t = Task::new(Workload::Redis(crate::workload::RedisParams {
                path,
                ..Default::default()
            }));
            run_args("n", "r", &b, ID, &t, Path::new("/v"), Path::new("/c")).join(" ")
        };
        let direct = args(NetPath::Direct);
        assert!(direct.contains("--network host"), "{direct}");
        // The server stays until the host closes its stdin.
        assert!(direct.contains("--interactive"), "{direct}");
        assert!(args(NetPath::Nat).contains("--network bridge"));
    }

    #[test]
    fn names_retry_with_a_suffix_on_dockers_conflict() {
        assert_eq!(container_name("r1", 3, 0), "isobench-r1-3");
        assert_eq!(container_name("r1", 3, 2), "isobench-r1-3-r2");
        let names: Vec<String> = (0..NAME_ATTEMPTS)
            .map(|k| container_name("r1", 3, k))
            .collect();
        let mut uniq = names.clone();
        uniq.dedup();
        assert_eq!(uniq.len(), names.len(), "{names:?}");
        assert!(names.iter().all(|n| is_run_container_name(n, "r1")));
        // docker 20.10's words (exit 125, nothing created).
        assert!(is_name_conflict(
            "docker: Error response from daemon: Conflict. The container name \"/isobench-r1-3\" \
             is already in use by container \"d273e573\". You have to remove (or rename) that \
             container to be able to reuse that name."
        ));
        assert!(!is_name_conflict(
            "docker: Error response from daemon: No such image: sha256:x"
        ));
    }

    #[test]
    fn run_container_names_and_ids_are_checked() {
        assert!(is_run_container_name("isobench-r1-1", "r1"));
        assert!(is_run_container_name("isobench-r1-1-r3", "r1"));
        assert!(!is_run_container_name("isobench-r2-1", "r1"));
        assert!(!is_run_container_name("isobench-r1-", "r1"));
        assert!(!is_run_container_name("mydb", "r1"));
        assert!(!is_run_container_name("isobench-r1-1 --volumes", "r1"));
        assert!(!is_run_container_name("isobench-a/b-1", "a/b"));
        assert!(valid_container_id(CID));
        assert!(!valid_container_id(&CID[..12]));
        assert!(!valid_container_id(&CID.to_uppercase()));
        assert!(valid_image_id(ID));
        assert!(!valid_image_id("isobench/agent:abc"));
        assert!(!valid_image_id(&ID[7..]));
    }

    #[test]
    fn hand_made_ledger_entries_are_refused_before_docker_runs() {
        // Each of these fails on its arguments alone (no docker command is started).
        for (name, id, run) in [
            ("mydb", None, "r1"),
            ("isobench-other-1", None, "r1"),
            ("isobench-r1-1", Some("mydb"), "r1"),
            ("isobench-r1-1", Some(&CID[..12]), "r1"),
            ("isobench-..-1", None, "../x"),
            ("isobench--1", None, ""),
        ] {
            let e = remove_recorded_container(name, id, run).unwrap_err();
            assert!(
                e.contains("left alone") || e.contains("not a name"),
                "{name}: {e}"
            );
        }
    }

    #[test]
    fn inspect_output_gives_id_name_and_run_label() {
        let ours = format!(
            r#"[{{"Id":"{CID}","Name":"/isobench-r1-1","Config":{{"Labels":{{"org.isobench.run":"r1"}}}}}}]"#
        );
        assert_eq!(
            container_identity(&ours),
            Some((CID.into(), "isobench-r1-1".into(), Some("r1".into())))
        );
        let unlabelled =
            format!(r#"[{{"Id":"{CID}","Name":"/isobench-r1-1","Config":{{"Labels":null}}}}]"#);
        assert_eq!(container_identity(&unlabelled).unwrap().2, None);
        assert_eq!(container_identity("[]"), None);
        assert_eq!(container_identity("not json"), None);
    }

    fn image_json(layers: &str, labels: &str, extra: &str) -> String {
        format!(
            r#"[{{"Id":"{ID}","RootFS":{{"Type":"layers","Layers":{layers}}},"Config":{{"Labels":{labels},"Entrypoint":null,"Cmd":null,"User":"","WorkingDir":"","Env":null{extra}}}}}]"#
        )
    }

    #[test]
    fn a_cached_image_is_reused_only_if_it_is_exactly_the_agent_tar() {
        let label = r#"{"org.isobench.cache":"agent"}"#;
        let good = image_json(&format!(r#"["{LAYER}"]"#), label, "");
        assert_eq!(reusable_image(&good, LAYER).as_deref(), Some(ID));
        // Another tar (another agent build, or someone else's image under the tag).
        assert_eq!(reusable_image(&good, ID), None);
        // Extra layers on top of ours.
        let more = image_json(&format!(r#"["{LAYER}","{ID}"]"#), label, "");
        assert_eq!(reusable_image(&more, LAYER), None);
        // Not labelled as isobench's.
        let unlabelled = image_json(&format!(r#"["{LAYER}"]"#), "null", "");
        assert_eq!(reusable_image(&unlabelled, LAYER), None);
        // A config that would change how the agent runs.
        let plain = image_json(&format!(r#"["{LAYER}"]"#), label, "");
        for (field, set) in [
            (r#""Entrypoint":null"#, r#""Entrypoint":["/bin/sh","-c"]"#),
            (r#""User":"""#, r#""User":"1000""#),
            (r#""Env":null"#, r#""Env":["LD_PRELOAD=/x.so"]"#),
            (r#""WorkingDir":"""#, r#""WorkingDir":"/tmp""#),
        ] {
            assert!(plain.contains(field), "{field}");
            let j = plain.replace(field, set);
            assert!(first_object(&j).is_some(), "{j}");
            assert_eq!(reusable_image(&j, LAYER), None, "{set}");
        }
        assert_eq!(reusable_image("[]", LAYER), None);
    }

    #[test]
    fn cached_images_are_grouped_by_id_and_foreign_names_noticed() {
        let other = "sha256:1111111111111111111111111111111111111111111111111111111111111111";
        let listing = format!(
            "{ID} isobench/agent:abc\n{other} <none>:<none>\n{other} me/mine:latest\n\
             {ID} isobench/agent:def\nnot-an-id isobench/agent:x\n"
        );
        let (ours, foreign) = cached_images(&listing);
        assert_eq!(
            ours,
            vec![
                (
                    ID.to_string(),
                    vec![
                        "isobench/agent:abc".to_string(),
                        "isobench/agent:def".to_string()
                    ]
                ),
                (other.to_string(), vec![]),
            ]
        );
        assert_eq!(foreign, vec![other.to_string()]);
    }

    #[test]
    fn old_ledgers_without_a_container_id_still_parse() {
        let l: crate::state::ledger::Ledger = serde_json::from_str(
            r#"{"run_id":"r1","owner":null,"resources":[{"kind":"docker_container","name":"isobench-r1-1"}]}"#,
        )
        .unwrap();
        assert_eq!(
            l.resources,
            vec![Resource::DockerContainer {
                name: "isobench-r1-1".into(),
                id: None
            }]
        );
        let with_id = serde_json::to_string(&Resource::DockerContainer {
            name: "isobench-r1-1".into(),
            id: Some(CID.into()),
        })
        .unwrap();
        assert!(with_id.contains(&format!(r#""id":"{CID}""#)), "{with_id}");
    }
}
