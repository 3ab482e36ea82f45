//! Application servers in a VM guest (issue 12): `Backend::prepare_server` and
//! `Backend::start_server` of the VM tiers (`emulated` under TCG, `microvm` under KVM: the same
//! code, only the accelerator differs).
//!
//! The guest is booted from its own initramfs: the base one plus the server's programs and
//! their `ldd` closure, copied by `host::rootfs::install_with_libs` into a staging tree as into
//! every other tier's rootfs, then archived ([`initramfs::build_with`]); made by
//! `prepare_server` before the first round (off every clock), or on the first server launch of
//! that app when it was not called, and kept for the run. Its /init (the agent) mounts, loads
//! the modules, brings up `eth0` on the run's tap (as for `net`), starts the server bound on the
//! guest's address and serves until asked to stop. The host reaches the server at the guest's
//! address over the tap and virtio-net, the VM's own network path.
//!
//! An application with a data directory (`mysql`) has it on the run's data disk (virtio-blk, a
//! raw ext4 image in the run's scratch, as the fs workload's; [`super::disk`]) for both of its
//! data paths: the guest's root is the initramfs in RAM, which is not a filesystem a database
//! would live on. The agent mounts the disk and makes the data directory (`mariadbd
//! --bootstrap`) before it signals ready, as in every other tier, so READY -> greeting is the
//! server's own start ([`IdleInstance::ready_at`]); the directory is removed by the agent when
//! the server stops, and the image with the run.
//!
//! `start_server` returns once the agent signalled READY and the server accepts a TCP
//! connection (a plain connect: any app), or fails with the agent's own error when the guest
//! ends first; the wait is bounded by the tier's deadline (`TCG_DEADLINE`, `KVM_DEADLINE`,
//! `--set deadline_s`) and by cancellation. Stopping ([`super::idle`]): end of file on the
//! guest's console, the agent stops the server (SIGTERM, then SIGKILL after 5 s), reports and
//! powers off; a guest that has not powered off within `SERVER_STOP_GRACE` is killed. The
//! launch directory is removed and released; the tap and the disk image stay for the run and go
//! in `finish`.
//!
//! Guest RAM: the tier's budget (`memory_mib`), which must hold the kernel, the archive (twice
//! while it is unpacked; the packed copy is freed after) and the server's data beside the
//! unpacked archive ([`server_headroom_mib`]: [`SERVER_HEADROOM_MIB`], or mysql's buffer pool
//! and [`MYSQL_OVERHEAD_MIB`]).

use std::net::{SocketAddr, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::idle::{wait_ready, Console, VmIdle};
use super::launch::Launch;
use super::{disk, initramfs, other, record, remove_dir, Prepared, Vm, KERNEL_HEADROOM_MIB};
use crate::backend::process::Stdio;
use crate::backend::{BackendError, IdleInstance, ServerInstance};
use crate::protocol::Task;
use crate::state::ledger::Resource;
use crate::workload::{ServerApp, Workload};

/// Guest RAM kept for the server's own data beside the kernel and the unpacked archive: Redis
/// with the study's 100,000 keys of 50 bytes holds about 20 MiB.
pub const SERVER_HEADROOM_MIB: u64 = 96;
/// Guest RAM mariadbd needs beyond its buffer pool, MiB (as the scenario check assumes: RSS 138
/// MiB measured with a 128 MiB pool serving the 100,000-row table, the pool not full).
pub const MYSQL_OVERHEAD_MIB: u64 = 128;

/// Guest RAM the server of `w` needs for its data beside its unpacked programs, MiB.
pub fn server_headroom_mib(w: &Workload) -> u64 {
    match w {
        Workload::Mysql(p) => p.buffer_pool_mib + MYSQL_OVERHEAD_MIB,
        _ => SERVER_HEADROOM_MIB,
    }
}

/// The application's data directory field, when it has one (it goes on the guest's disk).
fn data_dir(w: &mut Workload) -> Option<&mut String> {
    match w {
        Workload::Mysql(p) => Some(&mut p.dir),
        _ => None,
    }
}

/// An app's initramfs, made on the run's first launch of it.
pub(super) struct AppInitrd {
    programs: Vec<String>,
    path: PathBuf,
    /// Size of what the guest unpacks, MiB (rounded up).
    mib: u64,
}

/// The file name of an app's archive beside the base one.
fn app_archive_name(base: &Path, app: &str) -> String {
    let stem = base
        .file_stem()
        .map_or_else(|| "initramfs".into(), |s| s.to_string_lossy().into_owned());
    format!("{stem}-{app}.cpio")
}

/// Guest RAM a server launch needs, MiB, for an archive of `archive_mib` and a server needing
/// `headroom_mib`: the kernel and the unpacked archive, plus whichever is larger of the packed
/// copy (freed once unpacked, before the server starts) and the server's data.
pub fn needed_mib(archive_mib: u64, headroom_mib: u64) -> u64 {
    KERNEL_HEADROOM_MIB + archive_mib + archive_mib.max(headroom_mib)
}

/// The one-line error when `memory_mib` cannot hold `w`'s server guest.
fn check_ram(
    memory_mib: u64,
    app: &str,
    archive_mib: u64,
    w: &Workload,
) -> Result<(), BackendError> {
    let headroom = server_headroom_mib(w);
    let need = needed_mib(archive_mib, headroom);
    if memory_mib < need {
        return Err(BackendError::Other(format!(
            "{app}: {memory_mib} MiB of guest RAM is too little for the server's guest: its \
             initramfs is {archive_mib} MiB (unpacked in RAM) and the server needs {headroom} MiB; \
             give at least {need} MiB ([budget] memory_mib){}",
            if matches!(w, Workload::Mysql(_)) {
                " or a smaller buffer_pool_mib"
            } else {
                ""
            }
        )));
    }
    Ok(())
}

impl Prepared {
    /// The initramfs carrying `app`'s programs: made on first need (staging tree recorded,
    /// filled, archived, removed), then kept in the run's work directory.
    fn app_initrd(&mut self, app: &ServerApp) -> Result<(PathBuf, u64), BackendError> {
        if let Some(a) = self.apps.iter().find(|a| a.programs == app.programs) {
            return Ok((a.path.clone(), a.mib));
        }
        let staging = self.work.join(format!("staging-{}", app.name));
        crate::backend::resources::refuse_existing(&staging)?;
        record(
            &self.state,
            &Resource::Dir {
                path: staging.clone(),
            },
        )?;
        let dest = self.work.join(app_archive_name(&self.initrd, app.name));
        let built = (|| {
            std::fs::create_dir(&staging)
                .map_err(|e| BackendError::io(format!("creating {}", staging.display()), e))?;
            let programs: Vec<PathBuf> = app.programs.iter().map(PathBuf::from).collect();
            crate::host::rootfs::install_with_libs(&staging, &programs).map_err(|e| {
                BackendError::Other(format!(
                    "{}: copying the server's programs into the guest's initramfs: {e}",
                    app.name
                ))
            })?;
            let extra = initramfs::tree_size(&staging).map_err(other)?;
            let base = initramfs::estimated_size(&self.agent, &self.kernel).map_err(other)?;
            let mib = (base + extra).div_ceil(1 << 20);
            initramfs::build_with(&self.agent, &self.kernel, Some(&staging), &dest).map_err(
                |e| BackendError::Other(format!("building the {} initramfs: {e}", app.name)),
            )?;
            Ok(mib)
        })();
        let removed = remove_dir(&self.state, &staging);
        let mib = match built {
            Ok(mib) => mib,
            Err(e) => {
                let _ = std::fs::remove_file(&dest);
                return Err(e);
            }
        };
        removed?;
        self.apps.push(AppInitrd {
            programs: app.programs.clone(),
            path: dest.clone(),
            mib,
        });
        Ok((dest, mib))
    }
}

/// A VM serving an application; stopped as an idle instance is, after a clean stop request.
pub struct VmServer {
    idle: VmIdle,
    /// When the agent's READY line was read (its data prepared, the server about to start).
    ready: Instant,
}

impl IdleInstance for VmServer {
    fn host_pids(&self) -> Vec<nix::unistd::Pid> {
        self.idle.host_pids()
    }

    fn ready_at(&self) -> Option<Instant> {
        Some(self.ready)
    }

    fn stop(self: Box<Self>) -> Result<(), BackendError> {
        Box::new(self.idle).stop()
    }
}

fn app_of(task: &Task) -> Result<ServerApp, BackendError> {
    task.workload.server_app().ok_or_else(|| {
        BackendError::Other(format!(
            "start_server runs an application workload, not `{}`",
            task.workload.name()
        ))
    })
}

/// `Backend::prepare_server` of a VM tier, off every clock: the app's initramfs (its RAM
/// checked against the budget), the run's data disk when the app keeps data, and the tap.
pub fn prepare(vm: &mut Vm, task: &Task) -> Result<(), BackendError> {
    let app = app_of(task)?;
    let p = &mut vm.p;
    let (_, mib) = p.app_initrd(&app)?;
    check_ram(p.memory_mib, app.name, mib, &task.workload)?;
    if data_dir(&mut task.workload.clone()).is_some() {
        p.ensure_disk()?;
    }
    p.ensure_net(vm.tier)?;
    Ok(())
}

/// `Backend::start_server` of a VM tier.
pub fn start(vm: &mut Vm, task: &Task) -> Result<ServerInstance, BackendError> {
    let app = app_of(task)?;
    let (tier, accel) = (vm.tier, vm.accel);
    let p = &mut vm.p;
    if p.idle.has_server() {
        return Err(BackendError::Other(format!(
            "{tier} already serves an application on this run's tap: stop it before starting \
             another"
        )));
    }
    // Made by `prepare_server` before the first round; here only when it was not called.
    let (initrd, mib) = p.app_initrd(&app)?;
    check_ram(p.memory_mib, app.name, mib, &task.workload)?;
    let mut t = task.clone();
    let mut g = t.guest.take().unwrap_or_default();
    // The data directory on the run's disk, whichever data path was asked: the guest's root is
    // its initramfs in RAM.
    let mut drive = None;
    if let Some(dir) = data_dir(&mut t.workload) {
        *dir = disk::GUEST_MOUNT.into();
        drive = Some(p.attach_disk(&mut g)?);
    }
    let net = p.ensure_net(tier)?;
    let (guest_cidr, tap) = (net.link.guest_cidr(), net.tap.clone());
    let addr = SocketAddr::from((net.link.guest, app.port));
    t.workload = t
        .workload
        .with_endpoint(&net.link.guest.to_string(), app.port);
    g.modules = p.modules.clone();
    g.net_addr = Some(guest_cidr);
    t.guest = Some(g);
    let mut spec = p.spec(accel, &t)?;
    spec.initrd = initrd;
    spec.tap = Some(tap);
    let uses_disk = drive.is_some();
    spec.disk = drive;
    vm.launches += 1;
    let n = vm.launches;
    let p = &vm.p;
    let mut process = p.process(&spec);
    process.stdin = Stdio::Pipe;
    // The tier's boot deadline plus what the app's own start may take in the guest.
    let deadline = p.deadline + app_start_bound(&t.workload);
    let until = Instant::now() + deadline;
    let mut launch = Launch::start(&p.state, &mut process, p.work.join(format!("server-{n}")))?;
    let ready = match &launch.stdout {
        Some(out) => wait_ready(out.as_fd(), until, &p.cancel),
        None => Err(BackendError::Other(
            "the guest console was not piped".into(),
        )),
    };
    let ready_at = Instant::now();
    if ready.is_err() && uses_disk {
        // A guest killed with its disk mounted: the next launch starts from a fresh filesystem.
        vm.p.mark_disk_dirty();
    }
    let p = &vm.p;
    let ask = match (ready, launch.take_stdin()) {
        (Ok(()), Some(ask)) => ask,
        (Ok(()), None) => {
            launch.abort();
            return Err(BackendError::Other(
                "internal error: the server guest's console input was not piped; report this bug"
                    .into(),
            ));
        }
        (Err(e), _) => {
            let said = launch.abort();
            return Err(match e {
                BackendError::Timeout(_, tail) => BackendError::Timeout(
                    deadline,
                    format!(
                        "{tail}{said} (the {} guest did not boot and prepare in time)",
                        app.name
                    ),
                ),
                BackendError::Agent(m) => BackendError::Agent(format!("{m}{said}")),
                other => other,
            });
        }
    };
    let (idle, console) = p.idle.add_server(n, launch, ask);
    let server = Box::new(VmServer {
        idle,
        ready: ready_at,
    });
    match wait_accepting(addr, &console, until, &p.cancel) {
        Ok(()) => Ok(ServerInstance {
            instance: server,
            addr,
        }),
        Err(e) => {
            // The stop's own error says less than why it is stopped.
            let _ = server.stop();
            if uses_disk {
                vm.p.mark_disk_dirty();
            }
            Err(match e {
                BackendError::Timeout(_, m) => BackendError::Timeout(deadline, m),
                e => e,
            })
        }
    }
}

/// What an app's start may add to the tier's boot deadline in the guest: its own
/// `start_timeout_s`, twice for mysql (the data directory's bootstrap, then the server).
fn app_start_bound(w: &Workload) -> Duration {
    match w {
        Workload::Redis(p) => Duration::from_secs(p.start_timeout_s),
        Workload::Mysql(p) => Duration::from_secs(2 * p.start_timeout_s),
        _ => Duration::ZERO,
    }
}

/// Until `addr` accepts a TCP connection: fails when the guest ends first (with the agent's
/// error), at `until`, or on cancel.
fn wait_accepting(
    addr: SocketAddr,
    console: &Console,
    until: Instant,
    cancel: &std::sync::atomic::AtomicBool,
) -> Result<(), BackendError> {
    loop {
        if cancel.load(Ordering::Relaxed) {
            return Err(BackendError::Interrupted);
        }
        if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if let Some(r) = console.report() {
            let why = match r {
                Ok(r) => r.error.unwrap_or_else(|| "no error".into()),
                Err(e) => format!("an unreadable report ({e})"),
            };
            return Err(BackendError::Agent(format!(
                "the guest's agent ended before the server accepted at {addr}: {why}"
            )));
        }
        if console.ended() {
            return Err(BackendError::Agent(format!(
                "the guest ended before the server accepted at {addr}; console tail: {}",
                console.tail(5)
            )));
        }
        if Instant::now() >= until {
            return Err(BackendError::Timeout(
                Duration::ZERO,
                format!(
                    "the server did not accept connections at {addr} within the tier's deadline \
                     (--set deadline_s=N); console tail: {}",
                    console.tail(5)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_name_and_memory() {
        assert_eq!(
            app_archive_name(
                Path::new("/s/emulated/initramfs-00ff-6.1.0-57-amd64.cpio"),
                "redis"
            ),
            "initramfs-00ff-6.1.0-57-amd64-redis.cpio"
        );
        // 25 MiB unpacked, the kernel, the server's data (above the packed copy).
        assert_eq!(
            needed_mib(25, SERVER_HEADROOM_MIB),
            25 + KERNEL_HEADROOM_MIB + SERVER_HEADROOM_MIB
        );
        // An archive bigger than the server's data: held twice while unpacked.
        assert_eq!(needed_mib(200, 96), 400 + KERNEL_HEADROOM_MIB);
        let mysql = Workload::Mysql(crate::workload::MysqlParams {
            buffer_pool_mib: 128,
            ..Default::default()
        });
        assert_eq!(server_headroom_mib(&mysql), 128 + MYSQL_OVERHEAD_MIB);
        // mariadbd's closure (~45 MiB) and a 128 MiB pool fit the apps scenario's 512 MiB.
        check_ram(512, "mysql", 45, &mysql).unwrap();
        let e = check_ram(256, "mysql", 45, &mysql).unwrap_err().to_string();
        assert!(
            e.contains("at least 461 MiB") && e.contains("buffer_pool_mib"),
            "{e}"
        );
        assert!(!e.contains('\n'), "{e}");
    }

    #[test]
    fn a_guest_that_ends_first_gives_the_agents_error() {
        let c = Console::default();
        // Nothing listens on port 1 of this documentation address; the console already holds
        // the agent's report.
        let (r, w) = nix::unistd::pipe().unwrap();
        let line = crate::protocol::AgentReport {
            workload: "redis".into(),
            error: Some("redis: cannot start /usr/bin/redis-server: No such file".into()),
            ..Default::default()
        }
        .to_line();
        nix::unistd::write(&w, format!("boot\r\n{line}\r\n").as_bytes()).unwrap();
        drop(w);
        let t = c.drain_for_test(std::fs::File::from(r));
        t.join().unwrap();
        let never = std::sync::atomic::AtomicBool::new(false);
        let e = wait_accepting(
            "127.0.0.1:1".parse().unwrap(),
            &c,
            Instant::now() + Duration::from_secs(5),
            &never,
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("ended before the server accepted") && e.contains("No such file"),
            "{e}"
        );
    }
}
