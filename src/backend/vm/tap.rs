//! The VM tiers' network path: one tap device per run, with the host's end of a private /30 in
//! 10.213.0.0/16 on it, and virtio-net in the guest (no vhost).
//!
//! The device name is `isb` + tier letter + a random 8-character tag (never derived from the
//! run id), recorded in the ledger before it is created, and created with `IFF_TUN_EXCL`, so an
//! existing device of that name is never adopted (RELIABILITY rule 9): on "exists" another tag
//! is tried, a bounded number of times. Right after creation, while the creating fd still holds
//! it (closing that fd would remove it), it gets the alias `isobench:<run id>`; it is deleted
//! only if it carries that alias. The /30 is reserved in the state directory under a lock (see
//! [`crate::host::net::subnet`]): no other run gets it, and it overlaps no address and
//! no route of this host.
//!
//! Not protected against: the guest's traffic is not filtered; it can reach whatever the host
//! routes for 10.213.x.x/30's guest address (the host does not forward unless forwarding is on
//! for the tap; isobench does not switch it on).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use crate::host::net::netdev::{self, NAME_ATTEMPTS};
use crate::model::tier::Tier;
use crate::state::ledger::{Resource, RunState};

/// Base of the private range the VM tiers use (container tiers use a different one).
pub const RANGE: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 0);
/// Prefix length of [`RANGE`].
pub const RANGE_PREFIX: u8 = 16;
/// Each run's link is a /30: network, host, guest, broadcast.
pub const LINK_PREFIX: u8 = 30;

#[derive(Debug, thiserror::Error)]
pub enum TapError {
    #[error(
        "a network device named {0} already exists: isobench never adopts a device it did not \
         create; if it is a leftover of a killed run, run `isobench cleanup` (or `ip link del {0}`)"
    )]
    Exists(String),
    #[error("opening /dev/net/tun: {0}; load the tun module (modprobe tun) and run as root")]
    Tun(std::io::Error),
    #[error("{what} on tap {name}: {source}")]
    Ioctl {
        what: &'static str,
        name: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {detail} (install iproute2 and run as root)")]
    Ip { args: String, detail: String },
    #[error(
        "no free /30 left in 10.213.0.0/16 on this host: every candidate overlaps an address or \
         a route; remove stale 10.213.x.x addresses (`ip -o addr`) or leftover runs \
         (`isobench cleanup`)"
    )]
    NoSubnet,
    #[error(
        "{NAME_ATTEMPTS} fresh random tap names were all taken: something on this host creates \
         isbe*/isbm* devices; find it (`ip -br link`) or run `isobench cleanup`"
    )]
    NamesTaken,
    #[error("{0} (run `isobench cleanup` if it persists)")]
    Owned(String),
    #[error("recording the tap in the ledger: {0}")]
    Ledger(std::io::Error),
}

/// The two ends of a run's /30.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Link {
    pub host: Ipv4Addr,
    pub guest: Ipv4Addr,
}

impl Link {
    /// `guest/30`, as [`crate::protocol::GuestSetup::net_addr`] wants it.
    pub fn guest_cidr(&self) -> String {
        format!("{}/{LINK_PREFIX}", self.guest)
    }
    pub fn host_cidr(&self) -> String {
        format!("{}/{LINK_PREFIX}", self.host)
    }
}

impl Link {
    /// The host and guest ends of the /30 at `net`.
    pub fn of(net: Ipv4Addr) -> Link {
        let n = u32::from(net) & !3;
        Link {
            host: Ipv4Addr::from(n + 1),
            guest: Ipv4Addr::from(n + 2),
        }
    }
}

/// A fresh tap name for `tier`: `isb` + `e`/`m` + a random 8-character tag (12 bytes, under
/// IFNAMSIZ).
pub fn name(tier: Tier) -> String {
    let t = if tier == Tier::Microvm { 'm' } else { 'e' };
    format!("isb{t}{}", netdev::random_tag())
}

fn ip(args: &[&str]) -> Result<String, TapError> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| TapError::Ip {
            args: args.join(" "),
            detail: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(TapError::Ip {
            args: args.join(" "),
            detail: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This host's IPv4 networks (addresses and routes), for [`pick`].
pub fn used_networks() -> Result<Vec<(Ipv4Addr, u8)>, TapError> {
    Ok(crate::host::net::subnet::parse_used(
        &ip(&["-o", "-4", "addr", "show"])?,
        &ip(&["-4", "route", "show", "table", "all"])?,
    ))
}

/// Does a network device of this name exist?
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Create the persistent tap `name` exclusively ([`TapError::Exists`] if any device of that
/// name exists: then nothing was created) and mark it as run `run_id`'s. The caller has
/// recorded it in the ledger.
pub fn create_marked(name: &str, run_id: &str) -> Result<(), TapError> {
    let tun = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(TapError::Tun)?;
    let fd: OwnedFd = tun.into();
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in ifr
        .ifr_name
        .iter_mut()
        .zip(name.bytes().take(libc::IFNAMSIZ - 1))
    {
        *d = s as libc::c_char;
    }
    // IFF_TUN_EXCL: fail with EBUSY instead of attaching to an existing device. The flags fit
    // the short the kernel reads.
    ifr.ifr_ifru.ifru_flags =
        (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_TUN_EXCL) as libc::c_short;
    let ioctl_err = |what: &'static str| TapError::Ioctl {
        what,
        name: name.into(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: TUNSETIFF reads and writes one ifreq, which outlives the call.
    if unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::TUNSETIFF,
            &mut ifr as *mut libc::ifreq,
        )
    } < 0
    {
        let e = ioctl_err("TUNSETIFF");
        return Err(match &e {
            TapError::Ioctl { source, .. } if source.raw_os_error() == Some(libc::EBUSY) => {
                TapError::Exists(name.into())
            }
            _ => e,
        });
    }
    // Marked while this fd holds it: on failure, closing the fd of a non-persistent tap
    // removes it.
    netdev::set_alias(name, run_id).map_err(TapError::Owned)?;
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        return Err(ioctl_err("TUNSETPERSIST"));
    }
    drop(fd);
    Ok(())
}

/// Create the run's tap for `tier` under a fresh name (recorded before each attempt, forgotten
/// when the name was taken), marked, with `link.host/30` on it and up. Returns its name.
pub fn create_fresh(state: &RunState, tier: Tier, link: &Link) -> Result<String, TapError> {
    let res = |n: &str| Resource::Link { name: n.into() };
    for _ in 0..NAME_ATTEMPTS {
        let n = name(tier);
        state.record(res(&n)).map_err(TapError::Ledger)?;
        match create_marked(&n, &state.id) {
            Ok(()) => {}
            Err(TapError::Exists(_)) => {
                tracing::info!("network device name {n} is taken; trying another");
                let _ = state.release(&res(&n));
                continue;
            }
            Err(e) => {
                let _ = state.release(&res(&n));
                return Err(e);
            }
        }
        let configured = ip(&["addr", "add", &link.host_cidr(), "dev", &n])
            .and_then(|_| ip(&["link", "set", "dev", &n, "up"]));
        if let Err(e) = configured {
            if delete(&n, &state.id).is_ok() {
                let _ = state.release(&res(&n));
            }
            return Err(e);
        }
        return Ok(n);
    }
    Err(TapError::NamesTaken)
}

/// Remove the tap `name` if it carries run `run_id`'s alias. Ok(false) when it is already
/// gone; an error, and nothing deleted, when a device of that name is not the run's.
pub fn delete(name: &str, run_id: &str) -> Result<bool, TapError> {
    netdev::delete_owned(name, run_id).map_err(TapError::Owned)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_random_and_per_tier() {
        let e = name(Tier::Emulated);
        let m = name(Tier::Microvm);
        assert_eq!(e.len(), 12);
        assert!(e.starts_with("isbe") && m.starts_with("isbm"));
        assert_ne!(e, name(Tier::Emulated));
        netdev::force_next_tags(&["fixed123"]);
        assert_eq!(name(Tier::Emulated), "isbefixed123");
    }

    #[test]
    fn link_ends_of_a_slash_30() {
        let l = Link::of(Ipv4Addr::new(10, 213, 0, 20));
        assert_eq!(l.host, Ipv4Addr::new(10, 213, 0, 21));
        assert_eq!(l.guest, Ipv4Addr::new(10, 213, 0, 22));
        assert_eq!(l.guest_cidr(), "10.213.0.22/30");
        assert_eq!(l.host_cidr(), "10.213.0.21/30");
    }
}
