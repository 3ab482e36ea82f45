//! Resources every backend shares (so no backend borrows another's helpers): the run-level
//! directory rule, and removal of the runtimes' containers (used by the runtimes on teardown
//! and by `isobench cleanup`).

use std::path::Path;

use super::BackendError;
use crate::host::fs::safe_remove_tree;
use crate::state::ledger::{Resource, RunState};

/// A directory this backend is about to create must not exist: one it did not create is never
/// adopted (and so never removed by its rollback).
pub(crate) fn refuse_existing(p: &Path) -> Result<(), BackendError> {
    if std::fs::symlink_metadata(p).is_ok() {
        return Err(BackendError::Other(format!(
            "{} already exists (left by an earlier run with the same id?): run `isobench cleanup` or use a new run id",
            p.display()
        )));
    }
    Ok(())
}

/// Is `s` a container id or name isobench makes (`isobench-<run>-...`: letters, digits, `-`,
/// `_`, `.`)? Anything else in a ledger is refused rather than passed to a runtime.
pub fn valid_container_name(s: &str) -> bool {
    s.starts_with("isobench-")
        && s.len() <= 128
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
}

fn run_tool(cmd: &mut std::process::Command, what: &str) -> Result<std::process::Output, String> {
    cmd.stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| format!("running `{what}`: {e}; remove the container by hand"))
}

/// Delete OCI container `id` under state root `root` with `runtime` if the runtime still knows
/// it. Ok(false) when it is already gone (or the state root is).
pub fn remove_oci_container(runtime: &Path, root: &Path, id: &str) -> Result<bool, String> {
    if !valid_container_name(id) {
        return Err(format!(
            "ledger names an invalid container id {id:?}: edit the ledger by hand"
        ));
    }
    if !root.is_dir() {
        return Ok(false);
    }
    let known = std::fs::read_dir(root)
        .map(|rd| {
            rd.flatten()
                .any(|e| e.file_name().to_string_lossy().starts_with(id))
        })
        .unwrap_or(false);
    if !known {
        return Ok(false);
    }
    let what = format!(
        "{} --root {} delete --force {id}",
        runtime.display(),
        root.display()
    );
    let out = run_tool(
        std::process::Command::new(runtime)
            .arg("--root")
            .arg(root)
            .args(["delete", "--force", id]),
        &what,
    )?;
    if out.status.success() {
        Ok(true)
    } else {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("does not exist") || err.contains("not found") || err.contains("No such") {
            Ok(false)
        } else {
            Err(format!(
                "`{what}` failed: {}; remove it by hand",
                err.trim()
            ))
        }
    }
}

/// Stop LXC container `name` under `lxcpath` if it is still running.
pub fn remove_lxc_container(lxcpath: &Path, name: &str) -> Result<bool, String> {
    if !valid_container_name(name) {
        return Err(format!(
            "ledger names an invalid LXC container {name:?}: edit the ledger by hand"
        ));
    }
    if !lxcpath.is_dir() {
        return Ok(false);
    }
    let what = format!("lxc-stop --kill -P {} -n {name}", lxcpath.display());
    let out = run_tool(
        std::process::Command::new("lxc-stop")
            .arg("--kill")
            .arg("-P")
            .arg(lxcpath)
            .args(["-n", name]),
        &what,
    )?;
    // lxc-stop fails with "is not running" when the container already ended.
    Ok(out.status.success())
}

/// Make a run-level data directory: refused if it exists, recorded, then created.
pub fn make_data_dir(state: &RunState, dir: &std::path::Path) -> Result<(), BackendError> {
    refuse_existing(dir)?;
    state
        .record(Resource::Dir { path: dir.into() })
        .map_err(|e| BackendError::io("recording the data directory in the ledger", e))?;
    std::fs::create_dir(dir).map_err(|e| {
        let _ = state.release(&Resource::Dir { path: dir.into() });
        BackendError::io(format!("creating {}", dir.display()), e)
    })
}

/// Remove a run-level data directory made by [`make_data_dir`] and forget it.
pub fn remove_data_dir(state: &RunState, dir: &std::path::Path) -> Result<(), BackendError> {
    safe_remove_tree(dir)
        .map_err(|e| BackendError::io(format!("removing {}", dir.display()), e))?;
    state
        .release(&Resource::Dir { path: dir.into() })
        .map_err(|e| BackendError::io("updating the run ledger", e))
}
