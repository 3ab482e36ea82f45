//! `isobench report DIR [--open]`: redraw the report of a finished (or interrupted) run.

use std::path::Path;

use anyhow::Context;

use super::options::is_root;
use crate::exit_codes::ExitCode;
use crate::model::results::Results;
use crate::outln;

pub fn run(run_dir: &Path, open: bool) -> anyhow::Result<ExitCode> {
    let results = Results::load(run_dir)?;
    let files = crate::report::write_report(run_dir, &results)
        .with_context(|| format!("writing the report into {}", run_dir.display()))?;
    outln!("report: {}", files.index_html.display());
    outln!("summary: {}", files.summary_md.display());
    if open {
        let display =
            std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
        let browser = ["xdg-open", "chromium"]
            .into_iter()
            .filter(|_| display)
            .find_map(|b| crate::host::facts::which(b).map(|p| (b, p)));
        match browser {
            Some((name, path)) => {
                let mut cmd = std::process::Command::new(path);
                if name == "chromium" && is_root() {
                    cmd.arg("--no-sandbox");
                }
                cmd.arg(&files.index_html).spawn().with_context(|| format!("starting {name}"))?;
            }
            None => outln!("no browser found (no xdg-open or chromium on a graphical display): open {} yourself", files.index_html.display()),
        }
    }
    Ok(ExitCode::Success)
}
