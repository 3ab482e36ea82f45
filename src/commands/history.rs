//! `isobench history`: per-metric trends of the stored runs, and a trend chart per metric.

use anyhow::bail;

use crate::cli::HistoryArgs;
use crate::exit_codes::ExitCode;
use crate::history::{self, History};
use crate::outln;

pub fn run(a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    if !a.history.is_file() {
        bail!("no history database at {}: `isobench run` stores every run there (unless --no-history); or give --history PATH", a.history.display());
    }
    let h = History::open(&a.history)?;
    let t = h.trends(a.metric.as_deref(), a.last)?;
    if t.runs.is_empty() {
        bail!(
            "{} holds no runs yet: run `isobench run` first",
            a.history.display()
        );
    }
    if t.trends.is_empty() {
        bail!(
            "no metric named {} in {}: `isobench history` without --metric lists them",
            a.metric.as_deref().unwrap_or("-"),
            a.history.display()
        );
    }
    crate::out!("{}", history::trends::table(&t));
    let dir = a
        .history
        .parent()
        .unwrap_or(std::path::Path::new("."))
        .join("trends");
    match history::trends::charts(&t, &dir) {
        Ok(files) => outln!(
            "trend charts: {} SVG file(s) in {}",
            files.len(),
            dir.display()
        ),
        Err(e) => eprintln!("warning: no trend charts: {e}"),
    }
    Ok(ExitCode::Success)
}
