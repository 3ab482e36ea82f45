//! Tests of process creation (spawn, hooks, wait, kill).

use super::*;
use std::io::Read;

fn never() -> AtomicBool {
    AtomicBool::new(false)
}

fn soon() -> Instant {
    Instant::now() + Duration::from_secs(30)
}

/// Run `/bin/sh -c script` with stdout piped; its output and exit code.
fn sh(script: &str) -> (String, i32) {
    let mut spec = Spec::new("/bin/sh");
    spec.args = vec!["-c".into(), script.into()];
    spec.env = vec![("PATH".into(), "/usr/bin:/bin".into())];
    spec.stdout = Stdio::Pipe;
    let mut p = spawn(&spec).unwrap();
    let mut out = String::new();
    std::fs::File::from(p.stdout.take().unwrap())
        .read_to_string(&mut out)
        .unwrap();
    let (_, code) = p.wait(soon(), &never()).unwrap();
    (out, code)
}

#[test]
fn process_spawns_true_and_reports_the_exit_code() {
    let mut p = spawn(&Spec::new("/bin/true")).unwrap();
    assert!(p.pid.as_raw() > 0);
    let (_, code) = p.wait(soon(), &never()).unwrap();
    assert_eq!(code, 0);
    assert!(p.is_reaped());
    assert_eq!(sh("exit 7").1, 7);
}

#[test]
fn process_missing_program_is_a_clear_error() {
    let e = spawn(&Spec::new("/no/such/isobench-program"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/no/such/isobench-program"), "{e}");
    assert!(e.contains("execve") && e.contains("ENOENT"), "{e}");
    assert!(e.contains("does not exist"), "{e}");
    let e = spawn(&Spec::new("relative/prog")).unwrap_err().to_string();
    assert!(e.contains("absolute path"), "{e}");
}

#[test]
fn process_exec_failure_reports_the_errno() {
    // A directory cannot be executed: EACCES from execve.
    let e = spawn(&Spec::new("/tmp")).unwrap_err().to_string();
    assert!(e.contains("execve failed") && e.contains("EACCES"), "{e}");
    // A step before exec: chroot into a missing directory.
    let mut spec = Spec::new("/bin/true");
    spec.chroot = Some("/no/such/jail".into());
    let e = spawn(&spec).unwrap_err().to_string();
    assert!(
        e.contains("chroot failed") && (e.contains("ENOENT") || e.contains("EPERM")),
        "{e}"
    );
}

#[test]
fn process_environment_is_exactly_the_spec() {
    let mut spec = Spec::new("/usr/bin/env");
    spec.env = vec![("A".into(), "1".into()), ("B".into(), "two words".into())];
    spec.stdout = Stdio::Pipe;
    let mut p = spawn(&spec).unwrap();
    let mut out = String::new();
    std::fs::File::from(p.stdout.take().unwrap())
        .read_to_string(&mut out)
        .unwrap();
    p.wait(soon(), &never()).unwrap();
    assert_eq!(out, "A=1\nB=two words\n");
    let mut bad = Spec::new("/bin/true");
    bad.env = vec![("A=B".into(), "1".into())];
    assert!(spawn(&bad).unwrap_err().to_string().contains("'='"));
}

#[test]
fn process_fds_other_than_stdio_do_not_leak() {
    // An fd without close-on-exec, well above the others.
    let f = std::fs::File::open("/").unwrap();
    // SAFETY: F_DUPFD (no CLOEXEC) of an fd we own, to a number >= 100.
    let leaky = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD, 100) };
    assert!(leaky >= 100);
    // SAFETY: the fd was just made and nothing else owns it.
    let _leaky = unsafe { OwnedFd::from_raw_fd(leaky) };
    let (out, code) = sh("ls /proc/self/fd");
    assert_eq!(code, 0);
    let fds: Vec<i32> = out.split_whitespace().map(|s| s.parse().unwrap()).collect();
    // 0, 1, 2 and the directory `ls` itself opened.
    assert!(
        fds.iter().all(|&fd| fd <= 3),
        "leaked into the child: {fds:?}"
    );
    assert!(!fds.contains(&leaky));
}

#[test]
fn process_pidfd_wait_timeout_and_cancel_kill_and_reap() {
    let mut spec = Spec::new("/bin/sleep");
    spec.args = vec!["30".into()];
    let mut p = spawn(&spec).unwrap();
    let r = p.wait(Instant::now() + Duration::from_millis(200), &never());
    assert!(matches!(r, Err(BackendError::Timeout(..))), "{r:?}");
    assert!(p.is_reaped());
    let mut p = spawn(&spec).unwrap();
    let r = p.wait(soon(), &AtomicBool::new(true));
    assert!(matches!(r, Err(BackendError::Interrupted)), "{r:?}");
    assert!(p.is_reaped());
    // A signal death is 128 + signal.
    let mut p = spawn(&spec).unwrap();
    kill(p.pid, Signal::SIGTERM).unwrap();
    assert_eq!(p.wait(soon(), &never()).unwrap().1, 128 + 15);
    // Dropping an unwaited process kills and reaps it.
    let p = spawn(&spec).unwrap();
    let pid = p.pid;
    drop(p);
    assert_eq!(kill(pid, None), Err(Errno::ESRCH));
}

#[test]
fn process_parent_memory_is_not_corrupted_and_mask_is_restored() {
    // SAFETY: reading this thread's mask into a zeroed set.
    let mask = || unsafe {
        let mut m: libc::sigset_t = std::mem::zeroed();
        libc::pthread_sigmask(libc::SIG_SETMASK, std::ptr::null(), &mut m);
        (1..=64)
            .filter(|&s| libc::sigismember(&m, s) == 1)
            .collect::<Vec<_>>()
    };
    let before = mask();
    let data: Vec<u64> = (0..100_000u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9))
        .collect();
    let copy = data.clone();
    for i in 0..200 {
        let mut spec = Spec::new("/bin/true");
        spec.args = vec![format!("{i}").into()];
        spec.env = vec![("X".into(), format!("{i}").into())];
        spec.cpus = Some(vec![0]);
        let mut p = spawn(&spec).unwrap();
        assert_eq!(p.wait(soon(), &never()).unwrap().1, 0);
    }
    assert_eq!(data, copy);
    assert_eq!(mask(), before, "the spawning thread's signal mask changed");
    // The child starts with the harness's mask, not the all-blocked one used around clone.
    let (out, _) = sh("grep SigBlk /proc/self/status");
    assert!(
        out.contains("0000000000000000") || !before.is_empty(),
        "{out}"
    );
}

#[test]
fn process_between_hook_runs_before_the_child_goes_on() {
    let mut seen = None;
    let mut hook = |pid: Pid| {
        seen = Some(pid);
        Ok(())
    };
    let mut spec = Spec::new("/bin/true");
    spec.die_with_parent = true;
    let hooks = Hooks {
        between: Some(&mut hook),
        ..Hooks::default()
    };
    let mut p = spawn_with(&spec, hooks).unwrap();
    assert_eq!(seen, Some(p.pid));
    assert_eq!(p.wait(soon(), &never()).unwrap().1, 0);
    // A failing hook: the child is killed and reaped, the hook's error returned.
    let mut bad = |_: Pid| Err(BackendError::Other("hook says no".into()));
    let hooks = Hooks {
        between: Some(&mut bad),
        ..Hooks::default()
    };
    let e = spawn_with(&spec, hooks).unwrap_err().to_string();
    assert!(e.contains("hook says no"), "{e}");
    // A failing setup hook names its step.
    let setup = || Err((3, Errno::EPERM));
    let hooks = Hooks {
        setup: Some(&setup),
        describe_setup: |n| format!("mount number {n}"),
        ..Hooks::default()
    };
    let e = spawn_with(&spec, hooks).unwrap_err().to_string();
    assert!(
        e.contains("mount number 3 failed") && e.contains("EPERM"),
        "{e}"
    );
}
