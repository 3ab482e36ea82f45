//! The agent as PID 1 of a VM guest (`task.guest` is set): make the minimal userspace the
//! workload needs, then, after the report, power the guest off.
//!
//! Order: the console in canonical mode without echo; mount /proc, /sys, devtmpfs on /dev and a
//! tmpfs on /tmp; load the listed modules (the Debian kernel has virtio-mmio, virtio-blk,
//! virtio-net and ext4 as modules); bring `lo` up and configure `eth0` if asked; mount the ext4
//! disk if asked. Nothing here runs on the host: the guest kernel is the isolation boundary.
//!
//! The console (the serial port, the agent's stdin and stdout) is how the host stops a
//! long-lived guest cleanly (an application server, issue 12): it writes a newline and `^D` to
//! QEMU's stdin, which canonical mode turns into end of file for the agent's read of stdin, the
//! same signal as a closed stdin in the other tiers.

use std::ffi::CString;
use std::path::Path;

use nix::errno::Errno;
use nix::kmod::ModuleInitFlags;
use nix::mount::{mount, MsFlags};

use crate::protocol::GuestSetup;

/// [`setup`]'s outcome, once made: an application that prepares its data before ready (mysql's
/// data directory on the guest's disk) sets the guest up before ready; the agent's entry point
/// then finds it done.
static SETUP: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();

/// [`setup`], once per boot: a second call returns the first call's outcome.
pub fn setup_once(g: &GuestSetup) -> Result<(), String> {
    SETUP.get_or_init(|| setup(g)).clone()
}

/// Prepare the guest. Errors say which step failed; the agent reports them as its error.
pub fn setup(g: &GuestSetup) -> Result<(), String> {
    console_canonical();
    mount_fs(
        "proc",
        "/proc",
        "proc",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    mount_fs(
        "sysfs",
        "/sys",
        "sysfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
    )?;
    // The initramfs's /dev/console is already open as fds 0-2; devtmpfs brings the virtio disks.
    mount_fs("devtmpfs", "/dev", "devtmpfs", MsFlags::MS_NOSUID)?;
    mount_fs(
        "tmpfs",
        "/tmp",
        "tmpfs",
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV,
    )?;
    for m in &g.modules {
        load_module(m)?;
    }
    set_up("lo", None)?;
    if let Some(addr) = &g.net_addr {
        let (ip, prefix) = parse_cidr(addr)?;
        let ifname = wait_for_interface()?;
        set_up(&ifname, Some((ip, prefix)))?;
    }
    if let Some(dev) = &g.disk_device {
        let target = g.disk_mount.as_deref().unwrap_or("/mnt");
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
        wait_for(dev)?;
        mount(
            Some(dev.as_str()),
            target,
            Some("ext4"),
            MsFlags::empty(),
            None::<&str>,
        )
        .map_err(|e| format!("mounting {dev} (ext4) on {target}: {e}"))?;
    }
    Ok(())
}

/// Put the console (fd 0) in canonical mode (`^D` on an empty line is end of file) without
/// echo (what the host writes is not repeated into the console it reads). This is the kernel's
/// default but for the echo; set here so the stop does not depend on it. Best effort: fd 0 may
/// not be a terminal (then the host cannot stop the guest this way and kills QEMU instead).
fn console_canonical() {
    // SAFETY: termios is plain data; tcgetattr fills it or fails without touching memory
    // elsewhere; tcsetattr reads it.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(0, &mut t) == 0 {
            t.c_lflag |= libc::ICANON;
            t.c_lflag &= !(libc::ECHO | libc::ECHONL);
            let _ = libc::tcsetattr(0, libc::TCSANOW, &t);
        }
    }
}

fn mount_fs(src: &str, target: &str, fstype: &str, flags: MsFlags) -> Result<(), String> {
    if !Path::new(target).is_dir() {
        std::fs::create_dir_all(target).map_err(|e| format!("creating {target}: {e}"))?;
    }
    mount(Some(src), target, Some(fstype), flags, None::<&str>)
        .map_err(|e| format!("mounting {fstype} on {target}: {e}"))
}

/// Load one module file; an already loaded (or built-in) module is fine. `finit_module` lets the
/// kernel read the file itself: copying the image into the agent's heap first (`init_module`)
/// would leave the agent's peak memory hundreds of KiB above the same agent's on the host.
fn load_module(path: &str) -> Result<(), String> {
    let file = std::fs::File::open(path).map_err(|e| format!("opening module {path}: {e}"))?;
    match nix::kmod::finit_module(&file, &CString::default(), ModuleInitFlags::empty()) {
        Ok(()) | Err(Errno::EEXIST) => Ok(()),
        Err(e) => Err(format!(
            "loading module {path}: {e} (does it match the guest kernel's version?)"
        )),
    }
}

/// The first network interface other than loopback: the virtio-net device, which the kernel
/// names `eth0` (no udev renames it here). Waits up to 2 s for virtio-net to probe.
fn wait_for_interface() -> Result<String, String> {
    for _ in 0..200 {
        if let Some(name) = first_interface(Path::new("/sys/class/net")) {
            return Ok(name);
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let seen: Vec<String> = std::fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    Err(format!(
        "no network interface besides lo appeared within 2 s (saw {seen:?}): is virtio_net \
         loaded and the QEMU netdev attached?"
    ))
}

/// The non-loopback interface in a `/sys/class/net`-like directory, preferring `eth*`, in
/// name order.
pub fn first_interface(class_net: &Path) -> Option<String> {
    let mut names: Vec<String> = std::fs::read_dir(class_net)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort_by_key(|n| (!n.starts_with("eth"), n.clone()));
    names.into_iter().next()
}

/// Undo what [`setup`] mounted that holds data: unmount the disk so its filesystem is clean for
/// the next launch. Best effort: the guest powers off right after.
pub fn teardown(g: &GuestSetup) {
    if g.disk_device.is_some() {
        let target = g.disk_mount.as_deref().unwrap_or("/mnt");
        let _ = nix::mount::umount(target);
    }
}

/// Block devices appear asynchronously once virtio-blk probes: wait up to 2 s.
fn wait_for(dev: &str) -> Result<(), String> {
    for _ in 0..200 {
        if Path::new(dev).exists() {
            return Ok(());
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    Err(format!(
        "{dev} did not appear within 2 s (is virtio_blk loaded?)"
    ))
}

/// "10.213.0.2/30" -> (address, prefix length).
pub fn parse_cidr(s: &str) -> Result<(std::net::Ipv4Addr, u8), String> {
    let bad = || format!("guest address {s:?}: expected IPv4/prefix, e.g. 10.213.0.2/30");
    let (ip, prefix) = s.split_once('/').ok_or_else(bad)?;
    let ip = ip.parse().map_err(|_| bad())?;
    let prefix: u8 = prefix.parse().map_err(|_| bad())?;
    if prefix > 32 {
        return Err(bad());
    }
    Ok((ip, prefix))
}

/// Netmask of a prefix length.
pub fn netmask(prefix: u8) -> std::net::Ipv4Addr {
    let bits = u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0);
    std::net::Ipv4Addr::from(bits)
}

/// Bring an interface up, optionally with an IPv4 address, through the classic ioctls.
fn set_up(ifname: &str, addr: Option<(std::net::Ipv4Addr, u8)>) -> Result<(), String> {
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    // SAFETY: socket(2) with constant arguments; the returned fd is owned below.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(format!("socket for {ifname}: {}", Errno::last()));
    }
    // SAFETY: fd was just returned by socket(2) and nothing else owns it.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let ioctl = |req: libc::Ioctl, ifr: &mut libc::ifreq, what: &str| -> Result<(), String> {
        // SAFETY: ifr is a valid, initialised ifreq that outlives the call; the request numbers
        // used here read or write only an ifreq.
        if unsafe { libc::ioctl(sock.as_raw_fd(), req, ifr as *mut libc::ifreq) } < 0 {
            return Err(format!("{what} on {ifname}: {}", Errno::last()));
        }
        Ok(())
    };
    let mut ifr = ifreq(ifname)?;
    if let Some((ip, prefix)) = addr {
        ifr.ifr_ifru.ifru_addr = sockaddr_in(ip);
        ioctl(libc::SIOCSIFADDR, &mut ifr, "SIOCSIFADDR")?;
        ifr.ifr_ifru.ifru_netmask = sockaddr_in(netmask(prefix));
        ioctl(libc::SIOCSIFNETMASK, &mut ifr, "SIOCSIFNETMASK")?;
    }
    let mut ifr = ifreq(ifname)?;
    ioctl(libc::SIOCGIFFLAGS, &mut ifr, "SIOCGIFFLAGS")?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    let flags = unsafe { ifr.ifr_ifru.ifru_flags };
    // IFF_UP | IFF_RUNNING fit in the short the kernel uses for ifr_flags.
    ifr.ifr_ifru.ifru_flags = flags | (libc::IFF_UP | libc::IFF_RUNNING) as libc::c_short;
    ioctl(libc::SIOCSIFFLAGS, &mut ifr, "SIOCSIFFLAGS")
}

fn ifreq(name: &str) -> Result<libc::ifreq, String> {
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    if name.len() >= ifr.ifr_name.len() {
        return Err(format!("interface name {name:?} is too long"));
    }
    for (d, s) in ifr.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(ifr)
}

fn sockaddr_in(ip: std::net::Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(ip).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr have the same size (16 bytes) and sockaddr is plain data.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

/// End the guest: flush filesystems, then reboot. QEMU runs with `-no-reboot`, so the reboot
/// ends QEMU at once (and `reboot=t panic=-1` on the command line does the same if the agent
/// crashes instead).
pub fn power_off() -> ! {
    nix::unistd::sync();
    let _ = nix::sys::reboot::reboot(nix::sys::reboot::RebootMode::RB_AUTOBOOT);
    // reboot(2) only returns on error; exiting PID 1 panics the kernel, which reboots too.
    std::process::exit(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cidr_and_netmask() {
        assert_eq!(
            parse_cidr("10.213.0.2/30").unwrap(),
            ("10.213.0.2".parse().unwrap(), 30)
        );
        assert!(parse_cidr("10.213.0.2").unwrap_err().contains("expected"));
        assert!(parse_cidr("10.213.0.2/33").is_err());
        assert_eq!(netmask(30).to_string(), "255.255.255.252");
        assert_eq!(netmask(0).to_string(), "0.0.0.0");
        assert_eq!(netmask(32).to_string(), "255.255.255.255");
    }

    #[test]
    fn finds_the_virtio_interface() {
        let d = tempfile::tempdir().unwrap();
        assert_eq!(first_interface(d.path()), None);
        std::fs::create_dir(d.path().join("lo")).unwrap();
        assert_eq!(first_interface(d.path()), None);
        std::fs::create_dir(d.path().join("sit0")).unwrap();
        std::fs::create_dir(d.path().join("eth0")).unwrap();
        assert_eq!(first_interface(d.path()).as_deref(), Some("eth0"));
    }

    #[test]
    fn ifreq_names() {
        let r = ifreq("eth0").unwrap();
        assert_eq!(
            r.ifr_name[..5].iter().map(|&c| c as u8).collect::<Vec<_>>(),
            b"eth0\0"
        );
        assert!(ifreq("a-very-long-interface-name").is_err());
    }
}
