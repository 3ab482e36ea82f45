//! The process of a launch that is a CLI (a runtime's, or the VMM): its spec, built off the
//! clock, and its start, on the clock.

use std::ffi::OsString;
use std::fs::File;
use std::path::Path;

use crate::backend::process::{self, Spec, Stdio};
use crate::backend::BackendError;
use crate::measure::launch::Started;
use crate::protocol::{Task, TASK_ENV};

/// The spec of a process a launch starts (runtime CLI or VMM), built off the clock:
/// `program args...` with the harness's environment, stdout piped (the agent's lines arrive
/// there), on `cpus`, dying with the harness.
pub fn cli_spec(program: &Path, args: Vec<OsString>, cpus: &[usize]) -> Spec {
    let mut s = Spec::new(program);
    s.args = args;
    s.env = std::env::vars_os().filter(|(k, _)| k != TASK_ENV).collect();
    s.stdout = Stdio::Pipe;
    s.cpus = Some(cpus.to_vec());
    s.die_with_parent = true;
    s
}

/// Put the task in a spec's environment (`ISOBENCH_TASK`), as the runtimes pass it on.
pub fn put_task(spec: &mut Spec, task: &Task) {
    spec.env.push((
        TASK_ENV.into(),
        serde_json::to_string(task).expect("task serialises").into(),
    ));
}

/// On the clock: open `log` for the process's stderr (kept for error messages) and spawn it.
pub fn start_cli(spec: &mut Spec, log: &Path) -> Result<Started<()>, BackendError> {
    let stderr = File::create(log)
        .map_err(|e| BackendError::io(format!("creating {}", log.display()), e))?;
    spec.stderr = Stdio::Fd(stderr.into());
    let spawned = process::spawn(spec);
    // The log's fd is the child's now (or nobody's): close the harness's copy.
    spec.stderr = Stdio::Null;
    let mut process = spawned?;
    let stream = process.stdout.take().expect("stdout is piped");
    Ok(Started {
        process,
        stream,
        running: (),
    })
}
