//! `isobench report DIR [--open]`: redraw the report of a finished (or interrupted) run.

use std::path::{Path, PathBuf};

use anyhow::Context;

use super::options::is_root;
use crate::exit_codes::ExitCode;
use crate::model::results::Results;
use crate::outln;

/// One run: its own report, as before; two or more: one merged report (src/report/multi.rs).
pub fn dispatch(run_dirs: &[PathBuf], out: Option<&Path>, open: bool) -> anyhow::Result<ExitCode> {
    match run_dirs {
        [one] if out.is_none() => run(one, open),
        [_] => anyhow::bail!("--out is for a merged report of two or more runs: give more run folders, or drop --out (one run's report goes into its own folder)"),
        many => {
            let out = out.unwrap_or(Path::new(crate::report::multi::DEFAULT_OUT));
            let files = crate::report::multi::write_merged_report(many, out)?;
            outln!("merged report of {} runs: {}", many.len(), files.index_html.display());
            outln!("summary: {}", files.summary_md.display());
            if open {
                outln!("open {} in a browser", files.index_html.display());
            }
            Ok(ExitCode::Success)
        }
    }
}

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
