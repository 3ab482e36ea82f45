//! Run history: every run stored in one SQLite file (default `reports/history.sqlite`) with its
//! git commit, branch, date, host and scenario, its per-metric summaries and its raw samples.
//! `--baseline history` pools the samples of the last K runs of the same host and scenario.
//! Runs carry their `--label`s; `portable` moves runs between databases (export/import).
//! Schema: docs/compare.md.

pub mod portable;
pub mod trends;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use rusqlite::{params, Connection, OptionalExtension};

use crate::model::results::{labels_text, Results, Sample};
use crate::model::tier::Tier;
use crate::protocol::Better;

/// Where `run` stores history unless told otherwise.
pub const DEFAULT_PATH: &str = "reports/history.sqlite";
/// Runs pooled by `--baseline history`.
pub const DEFAULT_BASELINE_RUNS: usize = 5;
/// Bumped on every schema change (SQLite `user_version`); older versions listed in
/// [`History::open`] are migrated in place.
/// 2: `runs.labels` (the run's `--label`s, `k=v,k=v`; '' for runs stored before).
const SCHEMA: i64 = 2;

/// Tables of schema version 2 (every statement idempotent).
const TABLES: &str = "CREATE TABLE IF NOT EXISTS runs (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        run_id TEXT NOT NULL, recorded_at TEXT NOT NULL, started_at TEXT NOT NULL,
        git_commit TEXT, git_branch TEXT,
        host TEXT NOT NULL, cpu_model TEXT NOT NULL, kernel TEXT NOT NULL,
        scenario TEXT NOT NULL,
        meta_json TEXT NOT NULL,
        labels TEXT NOT NULL DEFAULT '');
     CREATE TABLE IF NOT EXISTS summaries (
        run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        tier TEXT NOT NULL, workload TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL,
        better TEXT NOT NULL, n INTEGER NOT NULL, median REAL NOT NULL,
        ci_low REAL NOT NULL, ci_high REAL NOT NULL, mean REAL NOT NULL, stddev REAL NOT NULL);
     CREATE TABLE IF NOT EXISTS samples (
        run INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
        tier TEXT NOT NULL, workload TEXT NOT NULL, metric TEXT NOT NULL, unit TEXT NOT NULL,
        better TEXT NOT NULL, round INTEGER NOT NULL, value REAL NOT NULL);
     CREATE INDEX IF NOT EXISTS runs_by_host ON runs(host, scenario, id);
     CREATE INDEX IF NOT EXISTS runs_by_run_id ON runs(run_id, host);
     CREATE INDEX IF NOT EXISTS samples_by_run ON samples(run);
     CREATE INDEX IF NOT EXISTS summaries_by_run ON summaries(run);";

/// Which runs `history` and `history export` look at: every given field must match.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunFilter {
    pub host: Option<String>,
    pub scenario: Option<String>,
    /// Each of these labels (key and value) must be on the run.
    pub labels: BTreeMap<String, String>,
}

impl RunFilter {
    fn keeps(&self, row: &RunRow) -> bool {
        self.labels
            .iter()
            .all(|(k, v)| row.labels.get(k) == Some(v))
    }

    /// What the filter selects, for messages ("" when it selects everything).
    pub fn describe(&self) -> String {
        let mut parts = vec![];
        if let Some(h) = &self.host {
            parts.push(format!("host {h}"));
        }
        if let Some(s) = &self.scenario {
            parts.push(format!("scenario {s}"));
        }
        if !self.labels.is_empty() {
            parts.push(format!("label {}", labels_text(&self.labels)));
        }
        parts.join(", ")
    }
}

/// The stored `k=v,k=v` text back as a map (pairs without `=` are ignored).
pub fn parse_stored_labels(text: &str) -> BTreeMap<String, String> {
    text.split(',')
        .filter_map(|p| p.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    #[error(
        "history database {path}: {source} (check the path is writable, or pass --no-history)"
    )]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("history database {path} has schema version {found}, this isobench writes {SCHEMA}: move the file away to start a new history")]
    Version { path: PathBuf, found: i64 },
    #[error("history database {path}: run {id} is damaged: {message} (delete that run or start a new history file)")]
    Damaged {
        path: PathBuf,
        id: i64,
        message: String,
    },
    #[error("creating {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Where the code came from, when it is a git checkout.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GitInfo {
    pub commit: Option<String>,
    pub branch: Option<String>,
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git")
        .args(args)
        .stderr(std::process::Stdio::null())
        .output()
        .ok()?;
    let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !s.is_empty()).then_some(s)
}

impl GitInfo {
    /// `git rev-parse HEAD` of the working directory; the branch from GitHub Actions' variables
    /// when set (CI checks out a detached HEAD), else from git.
    pub fn detect() -> Self {
        let env = |k: &str| std::env::var(k).ok().filter(|v| !v.is_empty());
        let branch = env("GITHUB_HEAD_REF")
            .or_else(|| env("GITHUB_REF_NAME"))
            .or_else(|| git(&["rev-parse", "--abbrev-ref", "HEAD"]).filter(|b| b != "HEAD"));
        GitInfo {
            commit: git(&["rev-parse", "HEAD"]),
            branch,
        }
    }
}

/// One stored run.
#[derive(Debug, Clone, PartialEq)]
pub struct RunRow {
    pub id: i64,
    pub run_id: String,
    pub recorded_at: String,
    pub started_at: String,
    pub git_commit: Option<String>,
    pub git_branch: Option<String>,
    pub host: String,
    pub scenario: String,
    /// The run's `--label`s (empty for runs stored before schema version 2).
    pub labels: BTreeMap<String, String>,
}

impl RunRow {
    /// Short label for tables and chart axes: commit prefix, else the run id.
    pub fn label(&self) -> String {
        match &self.git_commit {
            Some(c) => c.chars().take(8).collect(),
            None => self.run_id.clone(),
        }
    }
}

/// An open history database.
pub struct History {
    conn: Connection,
    path: PathBuf,
}

impl History {
    /// Open (creating if needed) the database at `path`.
    pub fn open(path: &Path) -> Result<History, HistoryError> {
        if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
            std::fs::create_dir_all(parent).map_err(|source| HistoryError::Create {
                path: parent.into(),
                source,
            })?;
        }
        let sql = |source| HistoryError::Sql {
            path: path.into(),
            source,
        };
        let conn = Connection::open(path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(10))
            .map_err(sql)?;
        let found: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        match found {
            // New file (or one never written): create the current tables.
            0 => conn
                .execute_batch(&format!("{TABLES} PRAGMA user_version = {SCHEMA};"))
                .map_err(sql)?,
            // Version 1 gains the labels column (every run stored before has none).
            1 => conn
                .execute_batch(&format!(
                    "BEGIN; ALTER TABLE runs ADD COLUMN labels TEXT NOT NULL DEFAULT ''; {TABLES} PRAGMA user_version = {SCHEMA}; COMMIT;"
                ))
                .map_err(sql)?,
            SCHEMA => {}
            _ => {
                return Err(HistoryError::Version {
                    path: path.into(),
                    found,
                })
            }
        }
        Ok(History {
            conn,
            path: path.into(),
        })
    }

    fn sql(&self, source: rusqlite::Error) -> HistoryError {
        HistoryError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Store a run; returns its row id.
    pub fn record(&mut self, r: &Results, git: &GitInfo) -> Result<i64, HistoryError> {
        let recorded_at = chrono::Local::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
        self.insert(r, git, &recorded_at)
    }

    /// Store a run as recorded at `recorded_at`; returns its row id.
    fn insert(
        &mut self,
        r: &Results,
        git: &GitInfo,
        recorded_at: &str,
    ) -> Result<i64, HistoryError> {
        let path = self.path.clone();
        let sql = |source| HistoryError::Sql {
            path: path.clone(),
            source,
        };
        // The run without its samples and summaries: those live in their own tables.
        let meta = Results {
            summaries: vec![],
            samples: vec![],
            ..r.clone()
        };
        let meta_json = serde_json::to_string(&meta).expect("results serialise");
        let tx = self.conn.transaction().map_err(sql)?;
        tx.execute(
            "INSERT INTO runs (run_id, recorded_at, started_at, git_commit, git_branch, host, cpu_model, kernel, scenario, meta_json, labels)
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
            params![r.run_id, recorded_at, r.started_at, git.commit, git.branch, r.host.hostname, r.host.cpu_model, r.host.kernel, r.scenario.name, meta_json, labels_text(&r.labels)],
        )
        .map_err(sql)?;
        let id = tx.last_insert_rowid();
        {
            let mut st = tx
                .prepare("INSERT INTO summaries (run, tier, workload, metric, unit, better, n, median, ci_low, ci_high, mean, stddev) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)")
                .map_err(sql)?;
            for m in &r.summaries {
                let s = &m.stats;
                let n = i64::try_from(s.n).unwrap_or(i64::MAX);
                st.execute(params![
                    id,
                    m.tier.as_str(),
                    m.workload,
                    m.metric,
                    m.unit,
                    better_str(m.better),
                    n,
                    s.median,
                    // The columns are NOT NULL: a summary without an interval (n < 5) stores
                    // its median in both, and readers draw no interval below that n.
                    s.ci_low.unwrap_or(s.median),
                    s.ci_high.unwrap_or(s.median),
                    s.mean,
                    s.stddev
                ])
                .map_err(sql)?;
            }
            let mut st = tx
                .prepare("INSERT INTO samples (run, tier, workload, metric, unit, better, round, value) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)")
                .map_err(sql)?;
            for s in &r.samples {
                st.execute(params![
                    id,
                    s.tier.as_str(),
                    s.workload,
                    s.metric,
                    s.unit,
                    better_str(s.better),
                    s.round,
                    s.value
                ])
                .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)?;
        Ok(id)
    }

    /// The last `limit` runs (oldest first), optionally only of one host and scenario.
    pub fn runs(
        &self,
        host: Option<&str>,
        scenario: Option<&str>,
        limit: usize,
    ) -> Result<Vec<RunRow>, HistoryError> {
        let filter = RunFilter {
            host: host.map(String::from),
            scenario: scenario.map(String::from),
            labels: BTreeMap::new(),
        };
        self.runs_where(&filter, limit)
    }

    /// The last `limit` runs (oldest first) that `filter` keeps.
    pub fn runs_where(
        &self,
        filter: &RunFilter,
        limit: usize,
    ) -> Result<Vec<RunRow>, HistoryError> {
        let mut st = self
            .conn
            .prepare(
                "SELECT id, run_id, recorded_at, started_at, git_commit, git_branch, host, scenario, labels FROM runs
                 WHERE (?1 IS NULL OR host = ?1) AND (?2 IS NULL OR scenario = ?2) ORDER BY id DESC",
            )
            .map_err(|e| self.sql(e))?;
        let rows = st
            .query_map(params![filter.host, filter.scenario], |r| {
                Ok(RunRow {
                    id: r.get(0)?,
                    run_id: r.get(1)?,
                    recorded_at: r.get(2)?,
                    started_at: r.get(3)?,
                    git_commit: r.get(4)?,
                    git_branch: r.get(5)?,
                    host: r.get(6)?,
                    scenario: r.get(7)?,
                    labels: parse_stored_labels(&r.get::<_, String>(8)?),
                })
            })
            .map_err(|e| self.sql(e))?;
        let mut out = vec![];
        for row in rows {
            let row = row.map_err(|e| self.sql(e))?;
            if filter.keeps(&row) {
                out.push(row);
                if out.len() >= limit {
                    break;
                }
            }
        }
        out.reverse();
        Ok(out)
    }

    /// The row id of the run `run_id` of `host`, when stored.
    pub fn find(&self, run_id: &str, host: &str) -> Result<Option<i64>, HistoryError> {
        self.conn
            .query_row(
                "SELECT id FROM runs WHERE run_id = ?1 AND host = ?2 ORDER BY id LIMIT 1",
                params![run_id, host],
                |r| r.get(0),
            )
            .optional()
            .map_err(|e| self.sql(e))
    }

    /// A stored run, rebuilt as `Results` (summaries recomputed from the samples).
    pub fn load(&self, id: i64) -> Result<Results, HistoryError> {
        let damaged = |message: String| HistoryError::Damaged {
            path: self.path.clone(),
            id,
            message,
        };
        let meta: Option<String> = self
            .conn
            .query_row("SELECT meta_json FROM runs WHERE id = ?1", [id], |r| {
                r.get(0)
            })
            .optional()
            .map_err(|e| self.sql(e))?;
        let meta = meta.ok_or_else(|| damaged("no such run".into()))?;
        let mut r: Results = serde_json::from_str(&meta).map_err(|e| damaged(e.to_string()))?;
        r.samples = self.samples(id)?;
        r.summarize();
        Ok(r)
    }

    fn samples(&self, id: i64) -> Result<Vec<Sample>, HistoryError> {
        let mut st = self
            .conn
            .prepare("SELECT tier, workload, metric, unit, better, round, value FROM samples WHERE run = ?1 ORDER BY rowid")
            .map_err(|e| self.sql(e))?;
        let raw = st
            .query_map([id], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get::<_, String>(4)?,
                    r.get(5)?,
                    r.get(6)?,
                ))
            })
            .and_then(|it| {
                it.collect::<Result<Vec<(String, String, String, String, String, u32, f64)>, _>>()
            })
            .map_err(|e| self.sql(e))?;
        raw.into_iter()
            .map(|(tier, workload, metric, unit, better, round, value)| {
                let tier: Tier = tier.parse().map_err(|e: crate::model::tier::UnknownTier| {
                    HistoryError::Damaged {
                        path: self.path.clone(),
                        id,
                        message: e.to_string(),
                    }
                })?;
                let better = parse_better(&better).ok_or_else(|| HistoryError::Damaged {
                    path: self.path.clone(),
                    id,
                    message: format!("better = {better}"),
                })?;
                Ok(Sample {
                    tier,
                    workload,
                    metric,
                    unit,
                    better,
                    round,
                    value,
                    position: None,
                    previous_tier: None,
                    kind: crate::protocol::MetricKind::Measured,
                })
            })
            .collect()
    }

    /// The samples of the last `k` runs of `host` and `scenario` (other than `exclude_run_id`)
    /// pooled into one `Results`, and the runs pooled. None when there is no such run.
    pub fn pooled_baseline(
        &self,
        host: &str,
        scenario: &str,
        k: usize,
        exclude_run_id: Option<&str>,
    ) -> Result<Option<(Results, Vec<RunRow>)>, HistoryError> {
        let mut rows = self.runs(Some(host), Some(scenario), k + 1)?;
        rows.retain(|r| Some(r.run_id.as_str()) != exclude_run_id);
        while rows.len() > k {
            rows.remove(0);
        }
        let Some(last) = rows.last() else {
            return Ok(None);
        };
        let mut pooled = self.load(last.id)?;
        for row in &rows[..rows.len() - 1] {
            pooled.samples.extend(self.samples(row.id)?);
        }
        pooled.run_id = format!(
            "history: last {} run(s), {} .. {}",
            rows.len(),
            rows[0].label(),
            last.label()
        );
        pooled.summarize();
        Ok(Some((pooled, rows)))
    }
}

fn better_str(b: Better) -> &'static str {
    match b {
        Better::Higher => "higher",
        Better::Lower => "lower",
    }
}

fn parse_better(s: &str) -> Option<Better> {
    match s {
        "higher" => Some(Better::Higher),
        "lower" => Some(Better::Lower),
        _ => None,
    }
}

/// Store `r` in the history database at `path` with the working directory's git commit.
pub fn record(path: &Path, r: &Results) -> Result<i64, HistoryError> {
    History::open(path)?.record(r, &GitInfo::detect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compare::synthetic::{draw, results};

    #[test]
    fn record_load_and_pool() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/history.sqlite");
        let mut h = History::open(&path).unwrap();
        let git = GitInfo {
            commit: Some("0123456789abcdef".into()),
            branch: Some("main".into()),
        };
        let mut ids = vec![];
        for i in 0..7u64 {
            let mut r = results("h", draw(i, 3, 10, None));
            r.summarize();
            r.run_id = format!("run{i}");
            ids.push(h.record(&r, &git).unwrap());
        }
        let other = results("elsewhere", draw(99, 3, 10, None));
        h.record(&other, &GitInfo::default()).unwrap();

        let back = h.load(ids[2]).unwrap();
        let mut orig = results("h", draw(2, 3, 10, None));
        orig.summarize();
        assert_eq!(back.samples, orig.samples);
        assert_eq!(back.summaries, orig.summaries);
        assert_eq!(back.host, orig.host);

        let rows = h.runs(Some("h"), Some("synthetic"), 100).unwrap();
        assert_eq!(rows.len(), 7);
        assert_eq!(rows[0].label(), "01234567");
        let (pooled, used) = h
            .pooled_baseline("h", "synthetic", 5, Some("run6"))
            .unwrap()
            .unwrap();
        assert_eq!(
            used.iter().map(|r| r.run_id.as_str()).collect::<Vec<_>>(),
            ["run1", "run2", "run3", "run4", "run5"]
        );
        assert_eq!(pooled.samples.len(), 5 * 3 * 10);
        assert!(h
            .pooled_baseline("nobody", "synthetic", 5, None)
            .unwrap()
            .is_none());
        drop(h);
        // Reopening keeps everything.
        assert_eq!(
            History::open(&path)
                .unwrap()
                .runs(None, None, 100)
                .unwrap()
                .len(),
            8
        );
    }

    #[test]
    fn garbage_file_is_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.sqlite");
        std::fs::write(&path, b"this is not a database, just bytes ......................................................................").unwrap();
        let e = History::open(&path)
            .err()
            .expect("garbage is an error")
            .to_string();
        assert!(e.contains("h.sqlite"), "{e}");
    }
}
