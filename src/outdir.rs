//! Where a run's result files go (`--out`), checked before anything is created: a new path, an
//! empty directory, or an earlier isobench run directory; never a symlink, never a path that
//! climbs with `..`, never a user's non-empty directory (unless `--force-out`). The default name
//! never collides with an existing directory.

use std::path::{Path, PathBuf};

/// Why an `--out` path is refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum OutDirError {
    #[error("--out is empty: give a directory path, e.g. --out reports/my-run")]
    Empty,
    #[error("--out {0}: the path climbs with '..' or ends in '.': give the directory's own path without '.' or '..' components")]
    Climbs(PathBuf),
    #[error(
        "--out {0} is a symbolic link: give the real directory path (the link is not followed)"
    )]
    Symlink(PathBuf),
    #[error("--out {0} exists and is not a directory: choose a new --out")]
    NotDirectory(PathBuf),
    #[error("--out {0} is not empty and not an isobench run directory: choose a new --out, or pass --force-out to overwrite")]
    NotEmpty(PathBuf),
    #[error("--out {path}: cannot inspect it ({message}): choose another --out")]
    Unreadable { path: PathBuf, message: String },
    #[error("no free directory name next to {0} (tried 1000 suffixes): give --out")]
    NoFreeName(PathBuf),
}

/// Largest results.json read to tell whether a directory is a run directory.
const MAX_RESULTS_PROBE_BYTES: u64 = 64 << 20;

/// Check an explicit `--out`; returns the path to use. `force` accepts a non-empty directory
/// that is not a run directory (its files of the same names are overwritten).
pub fn check(out: &Path, force: bool) -> Result<PathBuf, OutDirError> {
    check_with(out, force, is_run_dir)
}

/// As [`check`] for `isobench ab`, whose runs go to `<out>/a` and `<out>/b`: an earlier A/B
/// directory is one where either is a run directory.
pub fn check_ab(out: &Path, force: bool) -> Result<PathBuf, OutDirError> {
    check_with(out, force, |d| {
        is_run_dir(&d.join("a")) || is_run_dir(&d.join("b"))
    })
}

fn check_with(
    out: &Path,
    force: bool,
    is_ours: impl Fn(&Path) -> bool,
) -> Result<PathBuf, OutDirError> {
    check_path_shape(out)?;
    let meta = match std::fs::symlink_metadata(out) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out.to_path_buf()),
        Err(e) => {
            return Err(OutDirError::Unreadable {
                path: out.into(),
                message: e.to_string(),
            })
        }
    };
    if meta.file_type().is_symlink() {
        return Err(OutDirError::Symlink(out.into()));
    }
    if !meta.is_dir() {
        return Err(OutDirError::NotDirectory(out.into()));
    }
    let mut entries = std::fs::read_dir(out).map_err(|e| OutDirError::Unreadable {
        path: out.into(),
        message: e.to_string(),
    })?;
    if entries.next().is_none() || force || is_ours(out) {
        return Ok(out.to_path_buf());
    }
    Err(OutDirError::NotEmpty(out.into()))
}

/// Refuse an empty path, any `..` component and a last component `.` (looked at on the path as
/// written: `Path::components` drops inner and trailing `.`).
fn check_path_shape(out: &Path) -> Result<(), OutDirError> {
    use std::os::unix::ffi::OsStrExt;
    let bytes = out.as_os_str().as_bytes();
    if bytes.is_empty() {
        return Err(OutDirError::Empty);
    }
    let parts: Vec<&[u8]> = bytes
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty())
        .collect();
    let climbs = parts.iter().any(|p| *p == b"..");
    let ends_in_dot = parts.last().map_or(true, |p| *p == b".");
    if climbs || ends_in_dot {
        return Err(OutDirError::Climbs(out.into()));
    }
    Ok(())
}

/// A directory isobench wrote a run into: `results.json` is a regular file (not a link) whose
/// JSON has `schema_version` and `run_id`.
pub fn is_run_dir(dir: &Path) -> bool {
    use std::io::Read;
    let p = dir.join("results.json");
    let Ok(meta) = std::fs::symlink_metadata(&p) else {
        return false;
    };
    if !meta.is_file() || meta.len() > MAX_RESULTS_PROBE_BYTES {
        return false;
    }
    let mut bytes = vec![];
    let read = std::fs::File::open(&p)
        .and_then(|f| f.take(MAX_RESULTS_PROBE_BYTES).read_to_end(&mut bytes));
    if read.is_err() {
        return false;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        schema_version: serde_json::Value,
        run_id: serde_json::Value,
    }
    serde_json::from_slice::<Probe>(&bytes)
        .is_ok_and(|p| !p.schema_version.is_null() && p.run_id.is_string())
}

/// The default output directory `<parent>/<stem>`, or `<stem>-2`, `-3`, ... when a file or
/// directory (or a dangling link) of that name exists. `stem` is made safe for a file name.
pub fn default_path(parent: &Path, stem: &str) -> Result<PathBuf, OutDirError> {
    let stem: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let stem = stem.trim_start_matches('.');
    let stem = if stem.is_empty() { "run" } else { stem };
    for i in 1..=1000u32 {
        let name = if i == 1 {
            stem.to_string()
        } else {
            format!("{stem}-{i}")
        };
        let p = parent.join(name);
        if std::fs::symlink_metadata(&p).is_err() {
            return Ok(p);
        }
    }
    Err(OutDirError::NoFreeName(parent.join(stem)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shapes() {
        for bad in ["", ".", "..", "a/..", "a/../b", "a/.", "a/./", "../x", "/"] {
            assert!(check(Path::new(bad), true).is_err(), "{bad:?} accepted");
        }
        let d = tempfile::tempdir().unwrap();
        let new = d.path().join("new/run");
        assert_eq!(check(&new, false).unwrap(), new);
        // An inner '.' is harmless.
        let inner = d.path().join("./x");
        assert!(check(&inner, false).is_ok());
    }

    #[test]
    fn existing_directories() {
        let d = tempfile::tempdir().unwrap();
        let empty = d.path().join("empty");
        std::fs::create_dir(&empty).unwrap();
        assert!(check(&empty, false).is_ok());

        let user = d.path().join("user");
        std::fs::create_dir(&user).unwrap();
        std::fs::write(user.join("index.html"), "mine").unwrap();
        let e = check(&user, false).unwrap_err();
        assert_eq!(e, OutDirError::NotEmpty(user.clone()));
        assert!(e.to_string().contains("--force-out"), "{e}");
        assert!(check(&user, true).is_ok());

        // A results.json that is not isobench's does not make a run directory.
        std::fs::write(user.join("results.json"), r#"{"schema_version": 1}"#).unwrap();
        assert!(check(&user, false).is_err());
        std::fs::write(
            user.join("results.json"),
            r#"{"schema_version": 1, "run_id": "x"}"#,
        )
        .unwrap();
        assert!(check(&user, false).is_ok());

        let file = d.path().join("file");
        std::fs::write(&file, "x").unwrap();
        assert_eq!(
            check(&file, true).unwrap_err(),
            OutDirError::NotDirectory(file)
        );

        let link = d.path().join("link");
        std::os::unix::fs::symlink(&empty, &link).unwrap();
        assert_eq!(check(&link, true).unwrap_err(), OutDirError::Symlink(link));
    }

    #[test]
    fn default_never_collides() {
        let d = tempfile::tempdir().unwrap();
        let a = default_path(d.path(), "20260101-000000-host").unwrap();
        assert_eq!(a, d.path().join("20260101-000000-host"));
        std::fs::create_dir(&a).unwrap();
        let b = default_path(d.path(), "20260101-000000-host").unwrap();
        assert_eq!(b, d.path().join("20260101-000000-host-2"));
        std::os::unix::fs::symlink("/nonexistent", &b).unwrap();
        let c = default_path(d.path(), "20260101-000000-host").unwrap();
        assert_eq!(c, d.path().join("20260101-000000-host-3"));
        assert_eq!(
            default_path(d.path(), "../h/ost").unwrap(),
            d.path().join("_h_ost")
        );
    }
}
