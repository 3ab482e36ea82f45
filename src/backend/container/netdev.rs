//! Network devices a run owns: names taken atomically, marked with the run's alias, deleted only
//! with that mark, and forwarding switched on per device (never host-wide).
//!
//! - Names are `isb` + a kind stem + a random lowercase tag (never derived from the run id, so
//!   two runs do not collide by construction) and fit IFNAMSIZ.
//! - A device is created with `ip link add` (RTM_NEWLINK with NLM_F_EXCL: fails with "File
//!   exists" if any device of that name exists, and then nothing was created); on "exists" the
//!   caller picks a new tag and tries again, a bounded number of times. Nothing is ever checked
//!   first and created after.
//! - Right after creation, before anything else, the device gets the alias
//!   `isobench:<run id>` (Linux ignores IFLA_IFALIAS in RTM_NEWLINK, checked on 6.x, so it is a
//!   second step); teardown and `isobench cleanup` delete a device only if it carries it.

use std::path::Path;
use std::process::{Command, Stdio};

/// How many fresh names a creation tries before giving up.
pub const NAME_ATTEMPTS: usize = 8;
/// Length of the random tag in a device name.
pub const TAG_LEN: usize = 8;

/// The alias every device of run `run_id` carries.
pub fn alias(run_id: &str) -> String {
    format!("isobench:{run_id}")
}

/// Test hook: the next tags [`random_tag`] returns on this thread (then random again), so a
/// test can occupy the name the code will try first.
#[doc(hidden)]
pub fn force_next_tags(tags: &[&str]) {
    FORCED_GLOBAL.with(|f| f.borrow_mut().extend(tags.iter().map(|t| (*t).to_string())));
}

thread_local! {
    static FORCED_GLOBAL: std::cell::RefCell<std::collections::VecDeque<String>> =
        const { std::cell::RefCell::new(std::collections::VecDeque::new()) };
}

/// A random tag of [`TAG_LEN`] lowercase letters and digits.
pub fn random_tag() -> String {
    if let Some(t) = FORCED_GLOBAL.with(|f| f.borrow_mut().pop_front()) {
        return t;
    }
    use rand::Rng;
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut rng = rand::thread_rng();
    (0..TAG_LEN)
        .map(|_| char::from(DIGITS[rng.gen_range(0..DIGITS.len())]))
        .collect()
}

/// Why `ip link add` failed.
#[derive(Debug)]
pub enum AddError {
    /// A device of one of the names exists: nothing was created, pick another name.
    Exists,
    /// Anything else (nothing was created either: RTM_NEWLINK is all or nothing).
    Failed(String),
}

fn run_ip(args: &[&str]) -> Result<(), String> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| format!("running `ip {}` (install iproute2): {e}", args.join(" ")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// `ip link add <args>`: one device (or a veth pair), created exclusively.
pub fn link_add(args: &[&str]) -> Result<(), AddError> {
    let mut v = vec!["link", "add"];
    v.extend_from_slice(args);
    run_ip(&v).map_err(|e| {
        if e.contains("File exists") {
            AddError::Exists
        } else {
            AddError::Failed(e)
        }
    })
}

/// Mark `name` as run `run_id`'s (call right after creating it).
pub fn set_alias(name: &str, run_id: &str) -> Result<(), String> {
    run_ip(&["link", "set", "dev", name, "alias", &alias(run_id)])
}

/// The alias of device `name` in this network namespace; None when there is no such device.
pub fn alias_of(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("ifalias"))
        .ok()
        .map(|s| s.trim_end_matches('\n').to_string())
}

/// Delete `name` if it carries run `run_id`'s alias. Ok(false) when no such device exists (a
/// veth end goes with its peer, a container's end with its namespace); an error, and nothing
/// deleted, when a device of that name is not marked as this run's.
pub fn delete_owned(name: &str, run_id: &str) -> Result<bool, String> {
    let Some(a) = alias_of(name) else {
        return Ok(false);
    };
    if a != alias(run_id) {
        return Err(format!(
            "network device {name} does not carry the alias {} (it has {a:?}): it is not this \
             run's, left alone",
            alias(run_id)
        ));
    }
    match run_ip(&["link", "del", "dev", name]) {
        Ok(()) => Ok(true),
        // Went away on its own in between (its peer or namespace went).
        Err(_) if alias_of(name).is_none() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Delete `name`, which this process has just created (its alias may not be set yet): for the
/// error path between creation and marking only.
pub fn delete_just_created(name: &str) -> Result<(), String> {
    run_ip(&["link", "del", "dev", name])
}

/// Switch IPv4 forwarding on for one device (`net.ipv4.conf.<dev>.forwarding`): IPv4 forwarding
/// is decided by the input device, so the run's own bridge and uplink suffice and nothing
/// host-wide changes (ip_forward, `all`, `default` stay as they are). The setting dies with the
/// device.
pub fn enable_forwarding(dev: &str) -> Result<(), String> {
    let p = Path::new("/proc/sys/net/ipv4/conf")
        .join(dev)
        .join("forwarding");
    std::fs::write(&p, "1").map_err(|e| {
        format!(
            "switching on forwarding for device {dev} ({}): {e} (run as root)",
            p.display()
        )
    })
}

/// A kernel facility that appears host-wide when first used (a module the kernel loads on
/// demand, e.g. nf_conntrack for masquerading), for the run's notes.
pub fn module_loaded(name: &str) -> bool {
    Path::new("/sys/module").join(name).exists()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tags_are_random_lowercase_and_forcible() {
        let a = random_tag();
        let b = random_tag();
        assert_eq!(a.len(), TAG_LEN);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()));
        assert_ne!(a, b);
        force_next_tags(&["fixed001", "fixed002"]);
        assert_eq!(random_tag(), "fixed001");
        assert_eq!(random_tag(), "fixed002");
        assert_ne!(random_tag(), "fixed002");
        assert_eq!(alias("r-1"), "isobench:r-1");
        assert_eq!(alias_of("../x"), None);
    }
}
