use super::*;

fn ledger_of(rs: &crate::state::ledger::RunState, resources: Vec<Resource>) -> Ledger {
    Ledger {
        run_id: rs.id.clone(),
        owner: None,
        resources,
    }
}

#[test]
fn live_runs_are_skipped_dead_ones_cleaned_last_files_last() {
    let d = tempfile::tempdir().unwrap();
    let sd = StateDir::open(d.path().join("state")).unwrap();
    // In progress: lock held (and owner alive).
    let live = sd.begin_run("live").unwrap();
    // Dead: lock released, owner gone; a file in scratch recorded.
    let dead = sd.begin_run("dead").unwrap();
    let f = dead.scratch().join("data/f");
    std::fs::create_dir_all(f.parent().unwrap()).unwrap();
    std::fs::write(&f, b"x").unwrap();
    crate::state::ledger::write_ledger(
        &dead.dir,
        &ledger_of(
            &dead,
            vec![Resource::Dir {
                path: dead.scratch().join("data"),
            }],
        ),
    )
    .unwrap();
    let dead_dir = dead.dir.clone();
    drop(dead);
    let report = cleanup(&sd);
    let by = |dir: &Path| report.runs.iter().find(|r| r.run_dir == dir).unwrap();
    let l = by(&live.dir);
    assert!(
        l.skipped.as_deref().unwrap().contains("in progress"),
        "{l:?}"
    );
    assert!(live.dir.join(LEDGER_FILE).exists());
    let x = by(&dead_dir);
    assert!(x.errors.is_empty() && x.dir_removed, "{x:?}");
    assert!(!dead_dir.exists());
    // A ledger naming another run: refused whole, nothing touched.
    let other = sd.begin_run("other").unwrap();
    let victim = other.scratch().join("keep");
    std::fs::write(&victim, b"k").unwrap();
    let mut l = ledger_of(
        &other,
        vec![Resource::File {
            path: victim.clone(),
        }],
    );
    l.run_id = "20000101-000000-00000000".into();
    crate::state::ledger::write_ledger(&other.dir, &l).unwrap();
    let other_dir = other.dir.clone();
    drop(other);
    let report = cleanup(&sd);
    let o = report.runs.iter().find(|r| r.run_dir == other_dir).unwrap();
    assert!(!o.refused.is_empty() && !o.dir_removed, "{o:?}");
    assert!(victim.exists());
}

#[test]
fn run_dirs_without_a_ledger() {
    let d = tempfile::tempdir().unwrap();
    let sd = StateDir::open(d.path().join("state")).unwrap();
    // Lock held, no ledger (a run between mkdir and its first ledger write): left alone.
    let busy = sd.begin_run("busy").unwrap();
    std::fs::remove_file(busy.dir.join(LEDGER_FILE)).unwrap();
    // Lock free, no ledger, nothing else (an interrupted cleanup): finished.
    let done = sd.begin_run("done").unwrap();
    std::fs::remove_file(done.dir.join(LEDGER_FILE)).unwrap();
    let done_dir = done.dir.clone();
    drop(done);
    // Lock free, no ledger, unknown files: left for a human.
    let odd = sd.begin_run("odd").unwrap();
    std::fs::remove_file(odd.dir.join(LEDGER_FILE)).unwrap();
    std::fs::write(odd.scratch().join("what"), b"?").unwrap();
    let odd_dir = odd.dir.clone();
    drop(odd);
    // Not a run directory at all.
    std::fs::create_dir(sd.runs_dir().join("not a run")).unwrap();
    let report = cleanup(&sd);
    let by = |dir: &Path| report.runs.iter().find(|r| r.run_dir == dir).unwrap();
    assert!(by(&busy.dir).skipped.is_some());
    assert!(busy.dir.join(LOCK_FILE).exists());
    assert!(by(&done_dir).dir_removed && !done_dir.exists());
    assert!(by(&odd_dir).skipped.is_some());
    assert!(odd_dir.join("scratch/what").exists());
    assert!(by(&sd.runs_dir().join("not a run")).skipped.is_some());
    assert!(sd.runs_dir().join("not a run").exists());
}

#[test]
fn an_interrupted_cleanup_resumes_from_the_ledger() {
    let d = tempfile::tempdir().unwrap();
    let sd = StateDir::open(d.path().join("state")).unwrap();
    let rs = sd.begin_run("r").unwrap();
    let a = rs.scratch().join("a");
    std::fs::create_dir(&a).unwrap();
    // A valid entry that goes, and an entry refused (outside): the ledger keeps only it.
    let outside = d.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let refused = Resource::Dir {
        path: outside.clone(),
    };
    let l = ledger_of(
        &rs,
        vec![Resource::Dir { path: a.clone() }, refused.clone()],
    );
    crate::state::ledger::write_ledger(&rs.dir, &l).unwrap();
    let r = cleanup_run(&rs.dir, &l);
    assert_eq!(r.refused.len(), 1, "{r:?}");
    assert!(!a.exists() && outside.exists());
    let kept = crate::state::ledger::read_ledger(&rs.dir).unwrap();
    assert_eq!(kept.resources, vec![refused]);
    assert!(rs.dir.exists(), "the ledger is kept for a human");
    // Remove order: contents, then the ledger, then the lock and the directory.
    std::fs::write(rs.scratch().join("x"), b"").unwrap();
    remove_run_dir(&rs.dir).unwrap();
    assert!(!rs.dir.exists());
}
