//! `isobench history`: per-metric trends of the stored runs (filtered by host, scenario and
//! label), a trend chart per metric, and `history export|import` to merge the runs of many hosts.

use anyhow::{bail, Context};

use crate::cli::{HistoryAction, HistoryArgs};
use crate::exit_codes::ExitCode;
use crate::history::{self, History, RunFilter};
use crate::model::results::parse_labels;
use crate::outln;

pub fn run(a: &HistoryArgs) -> anyhow::Result<ExitCode> {
    let filter = RunFilter {
        host: a.host.clone(),
        scenario: a.scenario.clone(),
        labels: parse_labels(&a.labels).map_err(anyhow::Error::msg)?,
    };
    match &a.action {
        Some(HistoryAction::Import { files }) => return import(a, files),
        Some(HistoryAction::Export { file }) => return export(a, &filter, file),
        None => {}
    }
    if !a.history.is_file() {
        bail!("no history database at {}: `isobench run` stores every run there (unless --no-history); or give --history PATH", a.history.display());
    }
    let h = History::open(&a.history)?;
    let t = h.trends_where(&filter, a.metric.as_deref(), a.last)?;
    if t.runs.is_empty() {
        if filter != RunFilter::default() {
            bail!(
                "no run in {} matches {}: `isobench history` without filters lists every run",
                a.history.display(),
                filter.describe()
            );
        }
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

fn export(a: &HistoryArgs, filter: &RunFilter, file: &std::path::Path) -> anyhow::Result<ExitCode> {
    if !a.history.is_file() {
        bail!(
            "no history database at {}: give --history PATH",
            a.history.display()
        );
    }
    let h = History::open(&a.history)?;
    let n = if file.as_os_str() == "-" {
        h.export(filter, &mut std::io::stdout().lock())?
    } else {
        // Written whole, then renamed: a failed export never leaves half a file.
        let mut buf = vec![];
        let n = h.export(filter, &mut buf)?;
        crate::host::fs::write_atomic(file, &buf)
            .with_context(|| format!("writing {}", file.display()))?;
        n
    };
    if n == 0 {
        eprintln!("warning: no run to export (filters: {})", filter.describe());
    }
    if file.as_os_str() != "-" {
        outln!("exported {n} run(s) to {}", file.display());
    }
    Ok(ExitCode::Success)
}

fn import(a: &HistoryArgs, files: &[std::path::PathBuf]) -> anyhow::Result<ExitCode> {
    let mut h = History::open(&a.history)?;
    let (mut added, mut skipped) = (0, 0);
    for f in files {
        let done = h.import_path(f)?;
        outln!(
            "{}: {} run(s) added, {} already stored",
            f.display(),
            done.added,
            done.skipped
        );
        added += done.added;
        skipped += done.skipped;
    }
    outln!(
        "history {}: {added} run(s) added, {skipped} skipped",
        a.history.display()
    );
    Ok(ExitCode::Success)
}
