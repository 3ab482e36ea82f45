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
                open_in_browser(&files.index_html)?;
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
        open_in_browser(&files.index_html)?;
    }
    Ok(ExitCode::Success)
}

/// The browser to open a page with: `$BROWSER` (its first `:`-separated entry; `%s` stands for
/// the page), else on a graphical display xdg-open, else chromium.
fn browser() -> Option<(String, Vec<String>)> {
    if let Some(b) = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty())
    {
        let first = b.split(':').next().unwrap_or_default().trim().to_string();
        let mut words = first.split_whitespace().map(String::from);
        let prog = words.next()?;
        return Some((prog, words.collect()));
    }
    let display =
        std::env::var_os("DISPLAY").is_some() || std::env::var_os("WAYLAND_DISPLAY").is_some();
    if !display {
        return None;
    }
    ["xdg-open", "chromium"].into_iter().find_map(|b| {
        crate::host::facts::which(b).map(|p| {
            let args = if b == "chromium" && is_root() {
                vec!["--no-sandbox".to_string()]
            } else {
                vec![]
            };
            (p.display().to_string(), args)
        })
    })
}

/// Start a browser on `page` and return (it keeps running on its own); without one, say how to
/// open the page. Either way the report is written, so neither is an error.
fn open_in_browser(page: &Path) -> anyhow::Result<()> {
    let page = std::path::absolute(page).unwrap_or_else(|_| PathBuf::from(page));
    let Some((prog, mut args)) = browser() else {
        outln!(
            "no browser here (no $BROWSER, and no graphical display for xdg-open or chromium): open {} yourself",
            page.display()
        );
        return Ok(());
    };
    let p = page.display().to_string();
    if args.iter().any(|a| a.contains("%s")) {
        args = args.iter().map(|a| a.replace("%s", &p)).collect();
    } else {
        args.push(p);
    }
    std::process::Command::new(&prog)
        .args(&args)
        .stdin(std::process::Stdio::null())
        .spawn()
        .with_context(|| {
            format!("starting the browser {prog} (set $BROWSER to one that is installed)")
        })?;
    outln!("opened {} with {prog}", page.display());
    Ok(())
}
