//! `isobench cleanup [--images]`: remove what killed runs left behind (and, when asked, the
//! docker tier's cached images).

use anyhow::Context;

use super::options::state_root;
use crate::cli::CommonArgs;
use crate::exit_codes::ExitCode;
use crate::outln;
use crate::state::cleanup::CleanupReport;
use crate::state::ledger::StateDir;

pub fn run(images: bool, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let root = state_root(common);
    let state = StateDir::open(&root)
        .with_context(|| format!("opening state directory {}", root.display()))?;
    let report = crate::state::cleanup::cleanup(&state);
    // The docker tier's image cache (isobench/agent:<hash>, labelled as isobench's) goes
    // too, when a daemon answers and no live run may use it (see docs/runtimes.md).
    let images =
        if images
            && std::os::unix::net::UnixStream::connect(
                crate::backend::runtimes::docker::daemon_socket(),
            )
            .is_ok()
        {
            crate::backend::runtimes::docker::remove_cached_images(any_live_run(&report))
        } else {
            Ok(Default::default())
        };
    match &images {
        Ok(r) => {
            if !r.removed.is_empty() {
                outln!("removed cached docker image(s): {}", r.removed.join(", "));
            }
            for k in &r.kept {
                outln!("kept cached docker image {k}");
            }
        }
        Err(e) => outln!("cached docker images left: {e}"),
    }
    if report.runs.is_empty() {
        outln!("nothing to clean in {}", root.display());
    }
    for r in &report.runs {
        match &r.skipped {
            Some(why) => outln!("left {}: {why}", r.run_dir.display()),
            None => outln!(
                "cleaned {}: killed {} process(es), unmounted {}, removed {} cgroup(s) and {} link(s){}",
                r.run_dir.display(),
                r.killed.len(),
                r.unmounted.len(),
                r.cgroups_removed.len(),
                r.links_removed.len(),
                if r.errors.is_empty() { String::new() } else { format!("; errors: {}", r.errors.join("; ")) }
            ),
        }
    }
    Ok(if report.is_clean() && images.is_ok() {
        ExitCode::Success
    } else {
        ExitCode::Failure
    })
}

/// Did cleanup leave a run because its owner is still running (so its cached images stay)?
fn any_live_run(report: &CleanupReport) -> bool {
    report.runs.iter().any(|r| r.live)
}
