//! `history export` / `history import`: runs moved between history databases as JSON lines, one
//! run a line (`{"isobench_history": 1, "recorded_at", "git_commit", "git_branch", "results"}`,
//! `results` being the run as results.json holds it, samples included), so the runs of many
//! machines (CI artifacts) merge into one database. A run is known by its run id and host:
//! importing one already stored skips it, so an import can be repeated. Import also takes a
//! results.json or a run folder. Format: docs/compare.md.

use std::io::{BufRead, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{GitInfo, History, HistoryError, RunFilter};
use crate::model::results::{Results, SCHEMA_VERSION};

/// Version of the line format (the `isobench_history` field).
pub const FORMAT: u32 = 1;

/// One exported run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExportedRun {
    pub isobench_history: u32,
    pub recorded_at: String,
    pub git_commit: Option<String>,
    pub git_branch: Option<String>,
    pub results: Results,
}

#[derive(Debug, thiserror::Error)]
pub enum PortableError {
    #[error(transparent)]
    History(#[from] HistoryError),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} line {line}: {message} (give a file written by `isobench history export`, a results.json or a run folder)")]
    Format {
        path: PathBuf,
        line: usize,
        message: String,
    },
}

/// What an import did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Imported {
    pub added: usize,
    /// Already stored (same run id and host).
    pub skipped: usize,
}

impl History {
    /// Write every run `filter` keeps (oldest first) to `out`; returns how many.
    pub fn export(&self, filter: &RunFilter, out: &mut dyn Write) -> Result<usize, PortableError> {
        let rows = self.runs_where(filter, usize::MAX)?;
        let io = |source| PortableError::Io {
            path: self.path.clone(),
            source,
        };
        for row in &rows {
            let line = ExportedRun {
                isobench_history: FORMAT,
                recorded_at: row.recorded_at.clone(),
                git_commit: row.git_commit.clone(),
                git_branch: row.git_branch.clone(),
                results: self.load(row.id)?,
            };
            serde_json::to_writer(&mut *out, &line).map_err(|e| io(e.into()))?;
            out.write_all(b"\n").map_err(io)?;
        }
        out.flush().map_err(io)?;
        Ok(rows.len())
    }

    /// Store one exported run unless a run of the same id and host is already there.
    pub fn import_run(&mut self, e: &ExportedRun) -> Result<bool, HistoryError> {
        if self
            .find(&e.results.run_id, &e.results.host.hostname)?
            .is_some()
        {
            return Ok(false);
        }
        let mut r = e.results.clone();
        if r.summaries.is_empty() {
            r.summarize();
        }
        let git = GitInfo {
            commit: e.git_commit.clone(),
            branch: e.git_branch.clone(),
        };
        self.insert(&r, &git, &e.recorded_at)?;
        Ok(true)
    }

    /// Import an export file, a results.json or a run folder.
    pub fn import_path(&mut self, path: &Path) -> Result<Imported, PortableError> {
        let mut done = Imported::default();
        for e in read_runs(path)? {
            if self.import_run(&e)? {
                done.added += 1;
            } else {
                done.skipped += 1;
            }
        }
        Ok(done)
    }
}

/// The runs in `path`: the lines of an export file, or the one run of a results.json / folder.
pub fn read_runs(path: &Path) -> Result<Vec<ExportedRun>, PortableError> {
    let single = |path: &Path| -> Result<Vec<ExportedRun>, PortableError> {
        let r = Results::load(path).map_err(|e| PortableError::Format {
            path: path.into(),
            line: 1,
            message: e.to_string(),
        })?;
        Ok(vec![ExportedRun {
            isobench_history: FORMAT,
            recorded_at: r
                .finished_at
                .clone()
                .unwrap_or_else(|| r.started_at.clone()),
            git_commit: None,
            git_branch: None,
            results: r,
        }])
    };
    if path.is_dir() {
        return single(path);
    }
    let io = |source| PortableError::Io {
        path: path.into(),
        source,
    };
    let file = std::fs::File::open(path).map_err(io)?;
    let mut out = vec![];
    for (i, line) in std::io::BufReader::new(file).lines().enumerate() {
        let line = line.map_err(io)?;
        if line.trim().is_empty() {
            continue;
        }
        // A pretty-printed results.json starts with a lone "{": read it as one run.
        if i == 0 && !line.contains("\"isobench_history\"") {
            return single(path);
        }
        let fail = |message: String| PortableError::Format {
            path: path.into(),
            line: i + 1,
            message,
        };
        let e: ExportedRun = serde_json::from_str(&line).map_err(|e| fail(e.to_string()))?;
        if e.isobench_history != FORMAT || e.results.schema_version > SCHEMA_VERSION {
            return Err(fail(format!(
                "format {} with results schema {}: this isobench reads format {FORMAT} up to schema {SCHEMA_VERSION}; import with a matching isobench",
                e.isobench_history, e.results.schema_version
            )));
        }
        out.push(e);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::synthetic::{draw, results};

    fn run(host: &str, seed: u64, label: &str) -> Results {
        let mut r = results(host, draw(seed, 2, 6, None));
        r.run_id = format!("run-{host}-{seed}");
        r.labels = [("class".to_string(), label.to_string())].into();
        r.summarize();
        r
    }

    /// Export, import into another database, import again: every run stored once, with its
    /// host, labels, git commit and samples.
    #[test]
    fn export_import_round_trip_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = History::open(&dir.path().join("a.sqlite")).unwrap();
        let git = GitInfo {
            commit: Some("abcdef0123".into()),
            branch: Some("main".into()),
        };
        a.record(&run("h1", 1, "small"), &git).unwrap();
        a.record(&run("h2", 2, "kvm"), &git).unwrap();
        let file = dir.path().join("runs.jsonl");
        let mut buf = vec![];
        assert_eq!(a.export(&RunFilter::default(), &mut buf).unwrap(), 2);
        std::fs::write(&file, &buf).unwrap();

        let mut b = History::open(&dir.path().join("b.sqlite")).unwrap();
        b.record(&run("h3", 3, "small"), &GitInfo::default())
            .unwrap();
        let first = b.import_path(&file).unwrap();
        assert_eq!(
            first,
            Imported {
                added: 2,
                skipped: 0
            }
        );
        let again = b.import_path(&file).unwrap();
        assert_eq!(
            again,
            Imported {
                added: 0,
                skipped: 2
            }
        );
        let rows = b.runs(None, None, 100).unwrap();
        assert_eq!(rows.len(), 3);
        let h2 = rows.iter().find(|r| r.host == "h2").unwrap();
        assert_eq!(h2.git_commit.as_deref(), Some("abcdef0123"));
        assert_eq!(h2.labels.get("class").map(String::as_str), Some("kvm"));
        let back = b.load(h2.id).unwrap();
        let orig = run("h2", 2, "kvm").samples;
        assert_eq!(back.samples.len(), orig.len());
        for (x, y) in back.samples.iter().zip(&orig) {
            assert_eq!((x.tier, &x.metric, x.round), (y.tier, &y.metric, y.round));
            // Exact: serde_json parses floats with `float_roundtrip` (Cargo.toml).
            assert_eq!(x.value.to_bits(), y.value.to_bits(), "{x:?} {y:?}");
        }

        let small = RunFilter {
            labels: [("class".to_string(), "small".to_string())].into(),
            ..Default::default()
        };
        let hosts: Vec<String> = b
            .runs_where(&small, 100)
            .unwrap()
            .into_iter()
            .map(|r| r.host)
            .collect();
        assert_eq!(hosts, ["h3", "h1"]);
    }

    #[test]
    fn garbage_line_says_which() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("x.jsonl");
        std::fs::write(&file, "{\"isobench_history\": 1, \"oops\": true}\n").unwrap();
        let e = read_runs(&file).unwrap_err().to_string();
        assert!(e.contains("line 1"), "{e}");
    }
}
