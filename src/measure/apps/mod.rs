//! Application workloads (issue 12): the real server runs inside the tier, the host drives it
//! through the tier's own network path with the application's own benchmark client, pinned to
//! CPUs outside the tier's budget. So far: [`redis`], [`mysql`].

pub mod mysql;
pub mod redis;

/// The CPUs this process may run on that are not in `budget`: where the benchmark client runs,
/// so it does not compete with the tier for its CPUs. Empty when the budget takes them all.
pub fn client_cpus(budget: &[usize]) -> Vec<usize> {
    let Ok(set) = nix::sched::sched_getaffinity(nix::unistd::Pid::from_raw(0)) else {
        return vec![];
    };
    (0..nix::sched::CpuSet::count())
        .filter(|&i| set.is_set(i).unwrap_or(false) && !budget.contains(&i))
        .collect()
}

/// A benchmark client running on the host, its stdout and stderr read by two threads.
pub struct Client {
    pub child: std::process::Child,
    pub stdout: std::thread::JoinHandle<String>,
    pub stderr: std::thread::JoinHandle<String>,
}

/// Start `bin args` pinned to `cpus` (none: unpinned), dying with the harness
/// (PR_SET_PDEATHSIG), stdin closed, stdout and stderr read in the background. A client that
/// cannot start is one line naming `install`, the command that installs it.
pub fn spawn_client(
    app: &str,
    bin: &str,
    args: &[String],
    cpus: &[usize],
    install: &str,
) -> Result<Client, crate::backend::BackendError> {
    use std::io::Read;
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cpus = cpus.to_vec();
    // SAFETY: between fork and exec only sched_setaffinity and prctl (async-signal-safe; the
    // CpuSet is built on the stack from a vector made before the fork).
    unsafe {
        cmd.pre_exec(move || {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            if !cpus.is_empty() {
                let mut set = nix::sched::CpuSet::new();
                for &c in &cpus {
                    let _ = set.set(c);
                }
                nix::sched::sched_setaffinity(nix::unistd::Pid::from_raw(0), &set)
                    .map_err(std::io::Error::from)?;
            }
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| {
        crate::backend::BackendError::Other(format!(
            "{app}: cannot run {bin}: {e}; install it with `{install}`"
        ))
    })?;
    let mut stdout = child.stdout.take().expect("piped");
    let mut stderr = child.stderr.take().expect("piped");
    let stdout = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stdout.read_to_string(&mut s);
        s
    });
    let stderr = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });
    Ok(Client {
        child,
        stdout,
        stderr,
    })
}
