//! A dockerd for the docker tests: the one the host runs, or one started (and stopped) by the
//! test when the docker tier is unavailable only because no daemon answers.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use isobench::backend::registry;
use isobench::backend::BackendOptions;
use isobench::model::availability::Availability;
use isobench::model::facts::HostFacts;
use isobench::model::tier::Tier;

/// A dockerd this test started, stopped (SIGTERM, then waited for) on drop.
pub struct OwnDockerd(std::process::Child);

impl Drop for OwnDockerd {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(i32::try_from(self.0.id()).unwrap());
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.0.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn daemon_answers() -> bool {
    Command::new("docker")
        .args(["info", "--format", "{{.ServerVersion}}"])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .is_ok_and(|o| o.status.success() && !String::from_utf8_lossy(&o.stdout).trim().is_empty())
}

/// Ok(None): a daemon already answers; Ok(Some): this test started one (stopped on drop);
/// Err: the docker tests cannot run here (printed as SKIPPED with the reason, and a failure
/// under `ISOBENCH_REQUIRE_PRIVILEGED=1`). `log` names dockerd's log file.
pub fn dockerd_if_needed(test: &str, log: &str) -> Result<Option<OwnDockerd>, ()> {
    if !super::privileged(test) {
        return Err(());
    }
    let host = HostFacts::detect();
    match registry::availability(Tier::Docker, &host, &BackendOptions::default()) {
        Availability::Available { .. } => Ok(None),
        Availability::Unavailable { reason, fix } => {
            if !reason.contains("dockerd is not running")
                || isobench::host::facts::which("dockerd").is_none()
            {
                println!("SKIPPED {test}: {reason} ({fix})");
                assert!(
                    std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                    "{test}: {reason} (ISOBENCH_REQUIRE_PRIVILEGED=1)"
                );
                return Err(());
            }
            let file = std::fs::File::create(log).unwrap();
            let child = Command::new("dockerd")
                .stdin(Stdio::null())
                .stdout(file.try_clone().unwrap())
                .stderr(file)
                .spawn()
                .expect("starting dockerd");
            let own = OwnDockerd(child);
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                if registry::availability(Tier::Docker, &host, &BackendOptions::default())
                    .is_available()
                    && daemon_answers()
                {
                    return Ok(Some(own));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            panic!("dockerd did not come up in 30 s: see {log}");
        }
    }
}
