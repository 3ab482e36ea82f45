//! Shared helpers of the black-box privileged tests: the privileged-skip pattern, a leak census
//! of everything isobench can leave on a host, and a guard that kills and reaps every process a
//! test starts (even when an assertion fails). `tiers` holds what the tests that drive backends
//! in-process share (budget, `RunEnv`, a census of one test's temp directory).
//!
//! The census is global (it must not assume a clean host): tests take one before and compare the
//! one after with [`assert_census_settles`], which waits a few seconds for stragglers to go.

#![allow(dead_code)]

pub mod apps;
pub mod dockerd;
pub mod tiers;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// True when the test can run; otherwise prints `SKIPPED <test>: <why>` and fails if
/// `ISOBENCH_REQUIRE_PRIVILEGED=1`.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    println!("SKIPPED {test}: needs root");
    assert!(
        std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
        "{test} needs root and ISOBENCH_REQUIRE_PRIVILEGED=1 is set"
    );
    false
}

/// Say that `test` cannot run here and why (`SKIPPED <test>: <why>`); fail instead when the
/// environment variable `require_env` is 1 (`ISOBENCH_REQUIRE_PRIVILEGED`, `ISOBENCH_REQUIRE_VM`).
pub fn skip(test: &str, why: &str, require_env: &str) {
    println!("SKIPPED {test}: {why}");
    assert!(
        std::env::var(require_env).as_deref() != Ok("1"),
        "{test}: {why}, and {require_env}=1 is set"
    );
}

/// Everything isobench could leave behind, as sorted sets of lines.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Census {
    pub mounts: BTreeSet<String>,
    pub links: BTreeSet<String>,
    pub netns: BTreeSet<String>,
    pub nft_tables: BTreeSet<String>,
    pub iptables_forward: BTreeSet<String>,
    pub cgroups: BTreeSet<PathBuf>,
    pub processes: BTreeSet<String>,
    pub ip_forward: String,
}

/// Stdout of a command, empty if it cannot run.
pub fn sh(cmd: &str, args: &[&str]) -> String {
    Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default()
}

/// Field 22 of /proc/<pid>/stat (start time in clock ticks since boot).
pub fn start_time(pid: i32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    // `rest` starts at field 3 (state): field 22 is index 19.
    rest.split_whitespace().nth(19)?.parse().ok()
}

/// Parent pid (field 4 of /proc/<pid>/stat).
pub fn parent_of(pid: i32) -> Option<i32> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &s[s.rfind(')')? + 2..];
    rest.split_whitespace().nth(1)?.parse().ok()
}

/// True if `pid` runs and is not a zombie.
pub fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s
            .rfind(')')
            .and_then(|i| s[i + 2..].split_whitespace().next())
            .is_some_and(|st| st != "Z" && st != "X"),
        Err(_) => false,
    }
}

fn pids() -> Vec<i32> {
    std::fs::read_dir("/proc")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().and_then(|n| n.parse().ok()))
                .collect()
        })
        .unwrap_or_default()
}

/// This process and its ancestors (they mention isobench: the test binary, cargo).
fn self_and_ancestors() -> BTreeSet<i32> {
    let mut s = BTreeSet::new();
    let mut p = i32::try_from(std::process::id()).unwrap();
    while p > 1 && s.insert(p) {
        match parent_of(p) {
            Some(pp) => p = pp,
            None => break,
        }
    }
    s
}

/// Build tools of parallel sessions mention isobench too; they are not isobench's leftovers.
fn is_build_tool(cmdline: &str) -> bool {
    let argv0 = cmdline.split('\0').next().unwrap_or("");
    let base = argv0.rsplit('/').next().unwrap_or("");
    const TOOLS: &[&str] = &[
        "cargo",
        "rustc",
        "rustdoc",
        "clippy-driver",
        "cargo-clippy",
        "rustfmt",
        "cc",
        "ld",
        "collect2",
        "cc1",
        "as",
    ];
    TOOLS.contains(&base) || (argv0.contains("/target/") && argv0.contains("/deps/"))
}

/// Processes whose cmdline or environment mentions isobench: `pid comm cmdline`. Excludes this
/// test and its ancestors, build tools, and processes bound to another state directory than
/// `state_roots` (other sessions' runs).
fn isobench_processes(state_roots: &[&Path]) -> BTreeSet<String> {
    let skip = self_and_ancestors();
    let mut out = BTreeSet::new();
    for pid in pids() {
        if skip.contains(&pid) || !alive(pid) {
            continue;
        }
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        let environ = std::fs::read(format!("/proc/{pid}/environ"))
            .map(|b| String::from_utf8_lossy(&b).into_owned())
            .unwrap_or_default();
        if !cmdline.contains("isobench") && !environ.contains("isobench") {
            continue;
        }
        if is_build_tool(&cmdline) {
            continue;
        }
        let foreign_state = environ.split('\0').any(|kv| {
            kv.strip_prefix("ISOBENCH_STATE_DIR=")
                .is_some_and(|v| !state_roots.iter().any(|r| Path::new(v).starts_with(r)))
        });
        if foreign_state {
            continue;
        }
        out.insert(format!("{pid} {}", cmdline.replace('\0', " ").trim()));
    }
    out
}

/// Network namespaces: named ones and the distinct ones isobench processes are in.
fn netns(state_roots: &[&Path]) -> BTreeSet<String> {
    let mut s: BTreeSet<String> = sh("ip", &["netns", "list"])
        .lines()
        .map(|l| format!("named {l}"))
        .collect();
    let host = std::fs::read_link("/proc/1/ns/net").ok();
    for p in isobench_processes(state_roots) {
        let pid = p.split(' ').next().unwrap_or("");
        if let Ok(ns) = std::fs::read_link(format!("/proc/{pid}/ns/net")) {
            if Some(&ns) != host.as_ref() {
                s.insert(format!("process-ns {}", ns.display()));
            }
        }
    }
    s
}

/// `isobench-*` directories at depth <= 2 under every cgroup hierarchy in /sys/fs/cgroup.
fn cgroups() -> BTreeSet<PathBuf> {
    let mut out = BTreeSet::new();
    let root = Path::new("/sys/fs/cgroup");
    // Depth 1: the hierarchies (v1 controllers, `unified`) or, on pure v2, the cgroups.
    let mut level = vec![root.to_path_buf()];
    for _depth in 0..3 {
        let mut next = vec![];
        for d in &level {
            let Ok(rd) = std::fs::read_dir(d) else {
                continue;
            };
            for e in rd.flatten() {
                let Ok(ft) = e.file_type() else { continue };
                if !ft.is_dir() {
                    continue;
                }
                if e.file_name().to_string_lossy().starts_with("isobench-") {
                    out.insert(e.path());
                }
                next.push(e.path());
            }
        }
        level = next;
    }
    out
}

/// Take the census. `state_roots` are the test's temp dirs: mounts mentioning them count too.
pub fn census(state_roots: &[&Path]) -> Census {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter(|l| {
            l.contains("isobench")
                || state_roots
                    .iter()
                    .any(|r| l.contains(&*r.to_string_lossy()))
        })
        // Mount ids and peer groups stay in: a remount is a change too.
        .map(String::from)
        .collect();
    let links = sh("ip", &["-br", "link"])
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .map(String::from)
        .collect();
    let nft_tables = sh("nft", &["list", "tables"])
        .lines()
        .map(String::from)
        .collect();
    let iptables_forward = sh("iptables", &["-S", "FORWARD"])
        .lines()
        .filter(|l| l.contains("isobench"))
        .map(String::from)
        .collect();
    Census {
        mounts,
        links,
        netns: netns(state_roots),
        nft_tables,
        iptables_forward,
        cgroups: cgroups(),
        processes: isobench_processes(state_roots),
        ip_forward: std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward")
            .unwrap_or_default()
            .trim()
            .to_string(),
    }
}

/// What differs between two censuses, one line per item (`+` appeared, `-` vanished).
pub fn diff(before: &Census, after: &Census) -> Vec<String> {
    fn sets<T: Ord + std::fmt::Debug>(
        what: &str,
        a: &BTreeSet<T>,
        b: &BTreeSet<T>,
        out: &mut Vec<String>,
    ) {
        for x in b.difference(a) {
            out.push(format!("+ {what}: {x:?}"));
        }
        for x in a.difference(b) {
            out.push(format!("- {what}: {x:?}"));
        }
    }
    let mut out = vec![];
    sets("mount", &before.mounts, &after.mounts, &mut out);
    sets("link", &before.links, &after.links, &mut out);
    sets("netns", &before.netns, &after.netns, &mut out);
    sets("nft table", &before.nft_tables, &after.nft_tables, &mut out);
    sets(
        "iptables FORWARD",
        &before.iptables_forward,
        &after.iptables_forward,
        &mut out,
    );
    sets("cgroup", &before.cgroups, &after.cgroups, &mut out);
    sets("process", &before.processes, &after.processes, &mut out);
    if before.ip_forward != after.ip_forward {
        out.push(format!(
            "ip_forward {} -> {}",
            before.ip_forward, after.ip_forward
        ));
    }
    out
}

/// Assert that the census comes back equal to `before` (waiting up to 10 s for stragglers).
pub fn assert_census_settles(test: &str, before: &Census, state_roots: &[&Path]) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let after = census(state_roots);
        let d = diff(before, &after);
        if d.is_empty() {
            return;
        }
        if Instant::now() > deadline {
            panic!("{test}: the host is not as before:\n{}", d.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Owns processes a test started: on drop, SIGKILLs each one's process group and the process,
/// then reaps it. Tests start children with [`Command::process_group(0)`] so the group is theirs.
#[derive(Default)]
pub struct Guard {
    children: Vec<Child>,
}

impl Guard {
    /// Start `cmd` in a new process group, owned by the guard; returns its index.
    pub fn spawn(&mut self, cmd: &mut Command) -> usize {
        use std::os::unix::process::CommandExt;
        let child = cmd
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {cmd:?}: {e}"));
        self.children.push(child);
        self.children.len() - 1
    }

    pub fn pid(&self, i: usize) -> i32 {
        i32::try_from(self.children[i].id()).unwrap()
    }

    pub fn child(&mut self, i: usize) -> &mut Child {
        &mut self.children[i]
    }

    /// Send `sig` to child `i` (the process only, not its group).
    pub fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(self.pid(i)), sig);
    }

    /// Wait for child `i` for at most `timeout`; on timeout SIGKILL it and panic.
    pub fn wait_bounded(&mut self, i: usize, timeout: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(st) = self.children[i].try_wait().unwrap() {
                return st;
            }
            if Instant::now() > deadline {
                self.kill_all();
                panic!("child {} did not finish within {timeout:?}", self.pid(i));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Wait for child `i` with output captured (stdout/stderr must be piped), bounded; on
    /// timeout SIGKILL it and panic.
    pub fn output_bounded(&mut self, i: usize, timeout: Duration) -> (i32, String, String) {
        let pid = self.pid(i);
        self.output_within(i, timeout)
            .unwrap_or_else(|| panic!("child {pid} did not finish within {timeout:?}"))
    }

    /// As [`Guard::output_bounded`], but on timeout kill the child's group and return None.
    /// The exit code is -1 when a signal ended the child.
    pub fn output_within(&mut self, i: usize, timeout: Duration) -> Option<(i32, String, String)> {
        use std::io::Read;
        let mut out = self.children[i].stdout.take();
        let mut err = self.children[i].stderr.take();
        let t_out = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(o) = out.as_mut() {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let t_err = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(e) = err.as_mut() {
                let _ = e.read_to_string(&mut s);
            }
            s
        });
        let deadline = Instant::now() + timeout;
        let st = loop {
            if let Some(st) = self.children[i].try_wait().unwrap() {
                break Some(st);
            }
            if Instant::now() > deadline {
                break None;
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let Some(st) = st else {
            self.kill_all();
            return None;
        };
        let code = st.code().unwrap_or(-1);
        Some((code, t_out.join().unwrap(), t_err.join().unwrap()))
    }

    pub fn kill_all(&mut self) {
        for c in &mut self.children {
            if let Ok(None) = c.try_wait() {
                let pid = i32::try_from(c.id()).unwrap();
                let _ = nix::sys::signal::killpg(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Poll `f` every 20 ms until it returns Some, at most `timeout`.
pub fn poll<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(x) = f() {
            return Some(x);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
