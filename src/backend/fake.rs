//! The fake tier (`fake`), for unit tests of the runner: a deterministic tier that goes through
//! the registry and the one launch timer like every real tier, with scripted behaviour.
//!
//! Test-only (`#[cfg(test)]`, declared from `backend/registry.rs`): it does not exist in the
//! isobench users run, so no help, doctor line, default set or results file can show it.
//!
//! Each launch is a real process created through [`process::spawn`]: `/bin/sh -c` printing the
//! agent's READY line and a result line (metric `fake_value`), and a per-launch directory in the
//! run's scratch, recorded in the ledger before it is made and released by `teardown`. What it
//! does is set through its typed settings (`--set`, a scenario's `[settings]`), checked by the
//! registry like any tier's. Launches are numbered from 1 and counted across the whole run,
//! the runner's unrecorded probe launch included.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::backend::process::{self, Spec};
use crate::backend::registry::{Setting, SettingKind};
use crate::backend::{prepare_run_dir, Backend, BackendError, Outcome, RunEnv};
use crate::measure::launch::{self, Launch, Started};
use crate::model::tier::Tier;
use crate::protocol::{AgentReport, Better, IsolationView, Metric, Task, READY_LINE};
use crate::state::ledger::{Resource, RunState};

const fn uint(key: &'static str, min: u64, max: u64, help: &'static str) -> Setting {
    Setting {
        key,
        kind: SettingKind::UInt { min, max },
        help,
    }
}

/// The fake's settings.
pub const SETTINGS: &[Setting] = &[
    Setting {
        key: "fail_prepare",
        kind: SettingKind::Choice(&["yes", "no"]),
        help: "prepare fails (after making its run directory, which it then removes)",
    },
    uint(
        "fail_from",
        1,
        1_000_000,
        "launch N and every later launch fail (no result line, exit 1)",
    ),
    uint("fail_every", 1, 1_000_000, "every Nth launch fails"),
    uint(
        "hang_from",
        1,
        1_000_000,
        "launch N and every later launch hang until the deadline",
    ),
    uint(
        "interrupt_at",
        1,
        1_000_000,
        "launch N raises the run's cancel flag (as Ctrl-C does) and hangs until the timer sees it",
    ),
    uint(
        "deadline_ms",
        1,
        600_000,
        "how long one launch may take (default 30000)",
    ),
    uint(
        "sleep_ms",
        0,
        60_000,
        "the process sleeps this long before it reports",
    ),
    uint(
        "value",
        0,
        1_000_000_000,
        "the value of the reported metric fake_value (default: the launch's number)",
    ),
    Setting {
        key: "watch",
        kind: SettingKind::Text,
        help: "a file copied to <file>.launch-<N> before launch N (off the clock), when it exists",
    },
];

/// What the fake does, from its settings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Script {
    pub fail_prepare: bool,
    pub fail_from: Option<u64>,
    pub fail_every: Option<u64>,
    pub hang_from: Option<u64>,
    pub interrupt_at: Option<u64>,
    pub deadline: Option<Duration>,
    pub sleep_ms: u64,
    pub value: Option<u64>,
    pub watch: Option<PathBuf>,
}

impl Script {
    /// Read the fake's keys from `settings` (others are other tiers' or common ones).
    pub fn from_settings(settings: &BTreeMap<String, String>) -> Result<Script, BackendError> {
        let num = |k: &str| -> Result<Option<u64>, BackendError> {
            settings
                .get(k)
                .map(|v| {
                    v.parse::<u64>().map_err(|_| {
                        BackendError::Other(format!("fake: {k}={v}: expected a whole number"))
                    })
                })
                .transpose()
        };
        Ok(Script {
            fail_prepare: settings.get("fail_prepare").is_some_and(|v| v == "yes"),
            fail_from: num("fail_from")?,
            fail_every: num("fail_every")?,
            hang_from: num("hang_from")?,
            interrupt_at: num("interrupt_at")?,
            deadline: num("deadline_ms")?.map(Duration::from_millis),
            sleep_ms: num("sleep_ms")?.unwrap_or(0),
            value: num("value")?,
            watch: settings.get("watch").map(PathBuf::from),
        })
    }

    fn fails(&self, n: u64) -> bool {
        self.fail_from.is_some_and(|f| n >= f) || self.fail_every.is_some_and(|e| n % e == 0)
    }

    /// The shell script of launch `n` for `task`.
    fn shell(&self, n: u64, task: &Task) -> String {
        let mut s = format!("echo {READY_LINE}; ");
        if self.sleep_ms > 0 {
            s.push_str(&format!(
                "sleep {}.{:03}; ",
                self.sleep_ms / 1000,
                self.sleep_ms % 1000
            ));
        }
        if self.interrupt_at == Some(n) || self.hang_from.is_some_and(|h| n >= h) {
            s.push_str("exec sleep 3600");
        } else if self.fails(n) {
            s.push_str(&format!("echo 'fake launch {n} fails on purpose'; exit 1"));
        } else {
            let report = AgentReport {
                workload: task.workload.name().into(),
                metrics: vec![Metric::new(
                    "fake_value",
                    "1",
                    self.value.unwrap_or(n) as f64,
                    Better::Lower,
                )],
                isolation: task.probe.then(IsolationView::default),
                peak_rss_kib: None,
                peak_anon_kib: None,
                error: None,
            };
            s.push_str(&format!("echo {}", quote(&report.to_line())));
        }
        s
    }
}

/// Single-quote `s` for /bin/sh.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// One launch of the fake: plan names and records a per-launch directory, start makes it and
/// spawns the script, teardown removes it and releases it.
struct FakeLaunch {
    script: Script,
    state: Arc<RunState>,
    cancel: Arc<AtomicBool>,
    base: PathBuf,
    cpus: Vec<usize>,
    launches: u64,
}

/// The plan of one launch.
struct FakePlan {
    n: u64,
    dir: PathBuf,
    spec: Spec,
}

impl Launch for FakeLaunch {
    type Plan = FakePlan;
    type Running = ();

    fn plan(&mut self, task: &Task) -> Result<FakePlan, BackendError> {
        self.launches += 1;
        let n = self.launches;
        if let Some(w) = &self.script.watch {
            if w.is_file() {
                let mut to = w.clone().into_os_string();
                to.push(format!(".launch-{n}"));
                std::fs::copy(w, &to)
                    .map_err(|e| BackendError::io(format!("fake: copying {}", w.display()), e))?;
            }
        }
        let dir = self.base.join(format!("launch-{n}"));
        self.state
            .record(Resource::Dir { path: dir.clone() })
            .map_err(|e| BackendError::io("fake: recording the launch directory", e))?;
        let mut spec = Spec::new("/bin/sh");
        spec.args = vec!["-c".into(), self.script.shell(n, task).into()];
        spec.env = vec![(OsString::from("PATH"), OsString::from("/usr/bin:/bin"))];
        spec.stdout = process::Stdio::Pipe;
        spec.cpus = Some(self.cpus.clone());
        Ok(FakePlan { n, dir, spec })
    }

    fn start(&mut self, plan: &mut FakePlan) -> Result<Started<()>, BackendError> {
        std::fs::create_dir(&plan.dir)
            .map_err(|e| BackendError::io(format!("creating {}", plan.dir.display()), e))?;
        let mut process = process::spawn(&plan.spec)?;
        let stream = process.stdout.take().expect("stdout is piped");
        if self.script.interrupt_at == Some(plan.n) {
            self.cancel.store(true, Ordering::Relaxed);
        }
        Ok(Started {
            process,
            stream,
            running: (),
        })
    }

    fn teardown(&mut self, plan: FakePlan, _running: Option<()>) -> Result<(), BackendError> {
        match std::fs::remove_dir(&plan.dir) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                return Err(BackendError::io(
                    format!("removing {}", plan.dir.display()),
                    e,
                ))
            }
        }
        self.state
            .release(&Resource::Dir { path: plan.dir })
            .map_err(|e| BackendError::io("fake: releasing the launch directory", e))
    }
}

/// The prepared fake tier.
pub struct Fake {
    launch: FakeLaunch,
    /// The run directory (None once finished).
    base: Option<PathBuf>,
}

impl Fake {
    /// Prepare: read the script, make the run directory (recorded first); `fail_prepare` fails
    /// after making it, and `prepare_run_dir` removes it again.
    pub fn prepare(env: &RunEnv) -> Result<Self, BackendError> {
        let script = Script::from_settings(&env.options.settings)?;
        // A name of its own per arm: several fake arms share one run (as `ab`'s two arms of
        // one tier do), and `prepare_run_dir` refuses a directory that exists.
        let scratch = env.state.scratch();
        let base = (1..)
            .map(|k| scratch.join(format!("fake-{k}")))
            .find(|p| !p.exists())
            .expect("some name is free");
        prepare_run_dir(env, &base, || {
            if script.fail_prepare {
                return Err(BackendError::Other(
                    "fake: prepare fails on purpose (fail_prepare=yes)".into(),
                ));
            }
            std::fs::create_dir(&base)
                .map_err(|e| BackendError::io(format!("creating {}", base.display()), e))
        })?;
        Ok(Fake {
            launch: FakeLaunch {
                script,
                state: env.state.clone(),
                cancel: env.cancel.clone(),
                base: base.clone(),
                cpus: env.budget.cpus.clone(),
                launches: 0,
            },
            base: Some(base),
        })
    }
}

impl Backend for Fake {
    fn tier(&self) -> Tier {
        Tier::Fake
    }

    fn run_once(&mut self, task: &Task) -> Result<Outcome, BackendError> {
        let deadline = self
            .launch
            .script
            .deadline
            .unwrap_or(Duration::from_secs(30));
        let (cancel, state) = (self.launch.cancel.clone(), self.launch.state.clone());
        launch::measure(
            &mut self.launch,
            task,
            Instant::now() + deadline,
            &cancel,
            &state,
        )
    }

    fn finish(&mut self) -> Result<(), BackendError> {
        if let Some(base) = self.base.take() {
            crate::host::fs::safe_remove_tree(&base)
                .map_err(|e| BackendError::io(format!("removing {}", base.display()), e))?;
            self.launch
                .state
                .release(&Resource::Dir { path: base })
                .map_err(|e| BackendError::io("updating the run ledger", e))?;
        }
        Ok(())
    }

    fn settings(&self) -> BTreeMap<String, String> {
        BTreeMap::from([("script".into(), format!("{:?}", self.launch.script))])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(kv: &[(&str, &str)]) -> Script {
        let m = kv
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Script::from_settings(&m).unwrap()
    }

    #[test]
    fn script_from_settings() {
        let s = script(&[("fail_every", "3"), ("label", "x"), ("fail_prepare", "no")]);
        assert!(!s.fail_prepare);
        assert!(!s.fails(2) && s.fails(3) && s.fails(6));
        let s = script(&[("fail_from", "4")]);
        assert!(!s.fails(3) && s.fails(4) && s.fails(100));
        let e = Script::from_settings(&BTreeMap::from([("value".into(), "x".into())]))
            .unwrap_err()
            .to_string();
        assert!(e.contains("value=x"), "{e}");
    }

    #[test]
    fn every_setting_is_read() {
        for s in SETTINGS {
            let v = match s.kind {
                SettingKind::Choice(w) => w[0].to_string(),
                SettingKind::UInt { min, .. } => (min + 1).to_string(),
                _ => "/nonexistent".to_string(),
            };
            assert_ne!(
                script(&[(s.key, &v)]),
                Script::default(),
                "{} is not read",
                s.key
            );
        }
    }
}
