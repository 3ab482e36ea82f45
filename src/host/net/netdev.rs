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
//!   second step); teardown and `isobench cleanup` delete a device only if it carries it. The
//!   creating request itself sets the device's MAC to [`mark_mac`] of the run id and name, so a
//!   run killed between the two steps leaves a device that is still provably the run's.

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

/// The MAC address run `run_id` gives device `name` in the very request that creates it: the
/// second ownership mark. The kernel ignores an alias on `ip link add`, so the alias needs a
/// second request; a crash between the two leaves a device whose creation-time MAC still proves
/// it is this run's. Locally administered unicast (`02:` + 40 bits of a 64-bit FNV-1a hash of
/// `isobench:<run id>:<name>`).
pub fn mark_mac(run_id: &str, name: &str) -> String {
    let h = format!("isobench:{run_id}:{name}")
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        });
    let b = h.to_be_bytes();
    format!(
        "02:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
        b[0], b[1], b[2], b[3], b[4]
    )
}

/// The MAC address of device `name` in this network namespace.
pub fn address_of(name: &str) -> Option<String> {
    if name.is_empty() || name.contains('/') || name == "." || name == ".." {
        return None;
    }
    std::fs::read_to_string(Path::new("/sys/class/net").join(name).join("address"))
        .ok()
        .map(|s| s.trim().to_ascii_lowercase())
}

/// Is device `name` (alias `alias`, address `address`) run `run_id`'s? Its alias is the run's,
/// or it has no alias yet (killed between creation and marking) and the MAC its creation gave
/// it. Pure; Err says why not.
pub fn check_owned(
    name: &str,
    alias_now: Option<&str>,
    address: Option<&str>,
    run_id: &str,
) -> Result<(), String> {
    let want = alias(run_id);
    match alias_now.map(str::trim_end) {
        Some(a) if a == want => Ok(()),
        None | Some("") if address.map(str::trim) == Some(mark_mac(run_id, name).as_str()) => {
            Ok(())
        }
        a => Err(format!(
            "network device {name} has alias {:?}, not {want:?}, and not the run's creation \
             MAC: not this run's",
            a.unwrap_or("")
        )),
    }
}

/// Delete `name` if it carries run `run_id`'s mark ([`check_owned`]). Ok(false) when no such
/// device exists (a veth end goes with its peer, a container's end with its namespace); an
/// error, and nothing deleted, when a device of that name is not marked as this run's.
pub fn delete_owned(name: &str, run_id: &str) -> Result<bool, String> {
    let Some(a) = alias_of(name) else {
        return Ok(false);
    };
    check_owned(name, Some(&a), address_of(name).as_deref(), run_id)
        .map_err(|e| format!("{e}; left alone"))?;
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
        let m = mark_mac("r-1", "isbkabcdefghbr");
        assert!(m.starts_with("02:") && m.len() == 17, "{m}");
        assert_ne!(m, mark_mac("r-2", "isbkabcdefghbr"));
        assert_ne!(m, mark_mac("r-1", "isbkabcdefghu0"));
        assert!(check_owned("isbkabcdefghbr", Some("isobench:r-1\n"), None, "r-1").is_ok());
        assert!(check_owned("isbkabcdefghbr", Some(""), Some(&m), "r-1").is_ok());
        assert!(check_owned("isbkabcdefghbr", None, Some(&m), "r-1").is_ok());
        assert!(check_owned("isbkabcdefghbr", Some(""), Some("02:00:00:00:00:01"), "r-1").is_err());
        assert!(check_owned("isbkabcdefghbr", Some(""), Some(&m), "r-2").is_err());
        // An alias of someone else's is never overridden by the MAC.
        assert!(check_owned("isbkabcdefghbr", Some("mine"), Some(&m), "r-1").is_err());
        assert_eq!(alias_of("../x"), None);
    }
}
