//! The VM tiers' network path: one tap device per run, with the host's end of a private /30 in
//! 10.213.0.0/16 on it, and virtio-net in the guest (no vhost).
//!
//! The device name is derived from the run (`isb` + tier letter + 8 hex digits), recorded in the
//! ledger before it is created, and created with `IFF_TUN_EXCL`, so an existing device of that
//! name is never adopted (RELIABILITY rule 9): creation fails instead. The /30 is the first one,
//! from a run-derived starting point, that overlaps no address and no route of this host.
//!
//! Not protected against: the guest's traffic is not filtered; it can reach whatever the host
//! routes for 10.213.x.x/30's guest address (the host does not forward unless ip_forward is on).

use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, OwnedFd};
use std::path::Path;
use std::process::Command;

use crate::tier::Tier;

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

/// FNV-1a: a hash that is the same on every build (the name must be recomputable by a reader).
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The tap's name for `run_id` and `tier`: `isb` + `e`/`m` + 8 hex digits (12 bytes, under
/// IFNAMSIZ).
pub fn name(run_id: &str, tier: Tier) -> String {
    let t = if tier == Tier::Microvm { 'm' } else { 'e' };
    format!("isb{t}{:08x}", fnv1a(&format!("{run_id}/{tier}")))
}

/// Where to start looking for a free /30 (spreads concurrent runs over the range).
pub fn seed(run_id: &str) -> u32 {
    fnv1a(run_id)
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn overlaps((a, alen): (Ipv4Addr, u8), (b, blen): (Ipv4Addr, u8)) -> bool {
    let m = mask(alen.min(blen));
    u32::from(a) & m == u32::from(b) & m
}

/// The first /30 of 10.213.0.0/16, starting at `seed`, that overlaps none of `used` (networks
/// of this host's addresses and routes; a default route is not "used").
pub fn pick(used: &[(Ipv4Addr, u8)], seed: u32) -> Option<Link> {
    let count = 1u32 << (LINK_PREFIX - RANGE_PREFIX);
    let base = u32::from(RANGE);
    (0..count)
        .map(|i| base + ((seed.wrapping_add(i) % count) << (32 - LINK_PREFIX)))
        .find(|&net| {
            !used
                .iter()
                .filter(|(_, len)| *len > 0)
                .any(|&u| overlaps((Ipv4Addr::from(net), LINK_PREFIX), u))
        })
        .map(|net| Link {
            host: Ipv4Addr::from(net + 1),
            guest: Ipv4Addr::from(net + 2),
        })
}

/// Networks in `ip -o -4 addr show` and `ip -4 route show` output (pure, unit-tested).
pub fn parse_used(addrs: &str, routes: &str) -> Vec<(Ipv4Addr, u8)> {
    let cidr = |w: &str| -> Option<(Ipv4Addr, u8)> {
        let (ip, len) = w.split_once('/').unwrap_or((w, "32"));
        Some((ip.parse().ok()?, len.parse().ok().filter(|l| *l <= 32)?))
    };
    let mut v = vec![];
    for l in addrs.lines() {
        let mut w = l.split_whitespace().skip_while(|x| *x != "inet").skip(1);
        if let Some(c) = w.next().and_then(cidr) {
            v.push(c);
        }
    }
    for l in routes.lines() {
        // The destination is the first word after an optional route type.
        let first = l.split_whitespace().find(|w| {
            !matches!(
                *w,
                "unicast"
                    | "unreachable"
                    | "blackhole"
                    | "prohibit"
                    | "local"
                    | "broadcast"
                    | "throw"
                    | "nat"
                    | "anycast"
                    | "multicast"
            )
        });
        if let Some(c) = first.filter(|w| *w != "default").and_then(cidr) {
            v.push(c);
        }
    }
    v
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
    Ok(parse_used(
        &ip(&["-o", "-4", "addr", "show"])?,
        &ip(&["-4", "route", "show", "table", "all"])?,
    ))
}

/// Does a network device of this name exist?
pub fn exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Create the persistent tap `name` (failing if any device of that name exists), put
/// `link.host/30` on it and bring it up. The caller has recorded it in the ledger.
pub fn create(name: &str, link: &Link) -> Result<(), TapError> {
    if exists(name) {
        return Err(TapError::Exists(name.into()));
    }
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
    // SAFETY: TUNSETPERSIST takes an integer argument.
    if unsafe { libc::ioctl(fd.as_raw_fd(), libc::TUNSETPERSIST, 1 as libc::c_ulong) } < 0 {
        // Closing the fd of a non-persistent tap removes it.
        return Err(ioctl_err("TUNSETPERSIST"));
    }
    drop(fd);
    ip(&["addr", "add", &link.host_cidr(), "dev", name])?;
    ip(&["link", "set", "dev", name, "up"])?;
    Ok(())
}

/// Remove the tap `name` (one this run recorded creating). Ok(false) when it is already gone.
pub fn delete(name: &str) -> Result<bool, TapError> {
    if !exists(name) {
        return Ok(false);
    }
    ip(&["link", "del", "dev", name])?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_short_stable_and_per_tier() {
        let e = name("20240101-120000-1234", Tier::Emulated);
        let m = name("20240101-120000-1234", Tier::Microvm);
        assert_eq!(e.len(), 12);
        assert!(e.starts_with("isbe") && m.starts_with("isbm"));
        assert_ne!(e[4..], m[4..]);
        assert_eq!(e, name("20240101-120000-1234", Tier::Emulated));
        assert_ne!(e, name("20240101-120000-1235", Tier::Emulated));
    }

    #[test]
    fn picks_a_free_slash_30_in_range() {
        let l = pick(&[], 0).unwrap();
        assert_eq!(l.host, Ipv4Addr::new(10, 213, 0, 1));
        assert_eq!(l.guest, Ipv4Addr::new(10, 213, 0, 2));
        assert_eq!(l.guest_cidr(), "10.213.0.2/30");
        // Wraps around and skips used networks.
        let l = pick(&[], (1 << 14) + 5).unwrap();
        assert_eq!(l.host, Ipv4Addr::new(10, 213, 0, 21));
        let used = [
            (Ipv4Addr::new(10, 213, 0, 1), 30),
            (Ipv4Addr::new(10, 213, 0, 6), 32),
        ];
        assert_eq!(pick(&used, 0).unwrap().host, Ipv4Addr::new(10, 213, 0, 9));
        // A default route (/0) does not count; a covering /16 does.
        assert!(pick(&[(Ipv4Addr::UNSPECIFIED, 0)], 0).is_some());
        assert!(pick(&[(Ipv4Addr::new(10, 213, 9, 9), 16)], 7).is_none());
        assert!(pick(&[(Ipv4Addr::new(10, 0, 0, 0), 8)], 7).is_none());
    }

    #[test]
    fn parses_ip_output() {
        let addrs = "1: lo    inet 127.0.0.1/8 scope host lo\\       valid_lft forever\n\
                     4: eth0    inet 192.0.2.2/24 brd 192.0.2.255 scope global eth0\n";
        let routes = "default via 192.0.2.1 dev eth0\n\
                      192.0.2.0/24 dev eth0 proto kernel scope link src 192.0.2.2\n\
                      local 10.213.4.1 dev isbe1 table local proto kernel scope host\n\
                      unreachable 10.99.0.0/16\n";
        assert_eq!(
            parse_used(addrs, routes),
            vec![
                (Ipv4Addr::new(127, 0, 0, 1), 8),
                (Ipv4Addr::new(192, 0, 2, 2), 24),
                (Ipv4Addr::new(192, 0, 2, 0), 24),
                (Ipv4Addr::new(10, 213, 4, 1), 32),
                (Ipv4Addr::new(10, 99, 0, 0), 16),
            ]
        );
    }
}
