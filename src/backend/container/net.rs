//! The container's network paths for the `net` workload, built with iproute2 and nftables from
//! the host side (setup is not part of the measured throughput; `noop` and `idle` launches get
//! no network device at all, only `lo`).
//!
//! - `direct`: a veth pair per launch. The host end gets `.1` of a private /30 and a `NetPeer`
//!   bound to it; the other end is moved into the container's network namespace, renamed
//!   `eth0` and given `.2`.
//! - `nat`, the path Docker uses by default: a bridge owned by the run (`.1` of a private /24,
//!   the containers' default gateway), one veth per launch with its host end attached to the
//!   bridge; the peer lives in a separate network namespace of the run (an "outside" host),
//!   reached over an uplink veth (/30), and the containers' traffic leaves through the uplink
//!   masqueraded by a rule in an nftables table the run owns (`ip isobench_k<hash>`, every rule
//!   commented with the run id). ip_forward is switched on only if it is off, recorded, and put
//!   back at the end of the run.
//!
//! Every device name is the run's (`isbk` + 5 hex digits of the run id + a kind letter +
//! the launch number in base 36: at most 15 bytes), recorded in the ledger before it is made,
//! and never adopted: a device that already exists fails the launch. The private ranges are
//! 10.214.0.0/16 (direct), 10.215.0.0/16 (bridge) and 10.216.0.0/16 (uplink), the VM tiers use
//! 10.213.0.0/16; each run takes a block that overlaps no address or route of this host.
//!
//! Where iptables' FORWARD chain would drop the forwarded traffic (Docker sets `-P FORWARD
//! DROP`), the run inserts two ACCEPT rules for its own bridge <-> uplink pair at the top of
//! that chain, commented with the run id, recorded, and deleted at the end of the run. Another
//! firewall that drops forwarded traffic (a custom nftables drop chain) breaks the `nat` path:
//! the agent then reports that it cannot connect.
//!
//! Not protected against: the container's traffic is not filtered; on the `nat` path it can
//! reach what the host routes (the run's table only adds masquerading).

use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::backend::BackendError;
use crate::cleanup::remove_link;
use crate::netpeer::NetPeer;
use crate::state::{Resource, RunState};

/// The direct path's range: each run takes a /24 of it, each launch a /30 of that.
pub const DIRECT_RANGE: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 0);
/// The NAT path's bridge subnets: each run takes a /24.
pub const BRIDGE_RANGE: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 0);
/// The NAT path's uplink to the peer's namespace: each run takes a /30.
pub const UPLINK_RANGE: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 0);
/// The sysctl the NAT path needs.
pub const IP_FORWARD: &str = "/proc/sys/net/ipv4/ip_forward";
/// Name of the container's interface inside its namespace.
pub const CONTAINER_IF: &str = "eth0";

/// FNV-1a: the same on every build, so a reader can recompute a run's names.
fn fnv1a(s: &str) -> u32 {
    s.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    })
}

/// The run's name stem: `isbk` + 5 hex digits of the run id.
pub fn stem(run_id: &str) -> String {
    format!("isbk{:05x}", fnv1a(run_id) & 0xF_FFFF)
}

/// A device name: stem + kind letter + `n` in base 36 (at most 15 bytes for n < 36^5).
pub fn link_name(stem: &str, kind: char, n: u64) -> String {
    const DIGITS: &[u8; 36] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    let mut n = n % 36u64.pow(5);
    let mut digits = vec![];
    loop {
        digits.push(char::from(DIGITS[usize::try_from(n % 36).expect("< 36")]));
        n /= 36;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    format!("{stem}{kind}{}", digits.into_iter().collect::<String>())
}

fn mask(prefix: u8) -> u32 {
    u32::MAX.checked_shl(32 - u32::from(prefix)).unwrap_or(0)
}

fn overlaps((a, alen): (Ipv4Addr, u8), (b, blen): (Ipv4Addr, u8)) -> bool {
    let m = mask(alen.min(blen));
    u32::from(a) & m == u32::from(b) & m
}

/// The first block of `/prefix` inside `range`/16, starting at `seed`, that overlaps none of
/// `used` (a default route, prefix 0, does not count).
pub fn pick_block(
    range: Ipv4Addr,
    prefix: u8,
    used: &[(Ipv4Addr, u8)],
    seed: u32,
) -> Option<Ipv4Addr> {
    let count = 1u32 << (prefix - 16);
    let base = u32::from(range) & mask(16);
    (0..count)
        .map(|i| Ipv4Addr::from(base + ((seed.wrapping_add(i) % count) << (32 - prefix))))
        .find(|&net| {
            !used
                .iter()
                .filter(|(_, len)| *len > 0)
                .any(|&u| overlaps((net, prefix), u))
        })
}

fn add(a: Ipv4Addr, n: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(a).wrapping_add(n))
}

/// The direct path's /30 of launch `n` in the run's /24: (host end, container end).
pub fn direct_pair(block: Ipv4Addr, n: u64) -> (Ipv4Addr, Ipv4Addr) {
    let slot = u32::try_from(n % 64).expect("< 64");
    let net = add(block, slot * 4);
    (add(net, 1), add(net, 2))
}

/// The container's address of launch `n` on the run's bridge /24 (.2 to .254; .1 is the
/// bridge).
pub fn bridge_addr(subnet: Ipv4Addr, n: u64) -> Ipv4Addr {
    add(subnet, 2 + u32::try_from(n % 253).expect("< 253"))
}

/// Run `ip -batch -` with `cmds`, in the host's network namespace or, with `netns`, in the one
/// at that path (via nsenter). Stops at the first failing command.
fn ip_batch(netns: Option<&Path>, cmds: &str) -> Result<(), BackendError> {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net={}", ns.display())).arg("ip");
            c
        }
        None => Command::new("ip"),
    };
    cmd.args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        BackendError::io(
            "running `ip -batch` (install iproute2; nsenter comes with util-linux)",
            e,
        )
    })?;
    {
        use std::io::Write;
        let mut stdin = child.stdin.take().expect("stdin was piped");
        stdin
            .write_all(cmds.as_bytes())
            .map_err(|e| BackendError::io("writing to `ip -batch`", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BackendError::io("waiting for `ip -batch`", e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(BackendError::Other(format!(
        "`ip` failed{}: {} (commands: {})",
        netns
            .map(|n| format!(" in network namespace {}", n.display()))
            .unwrap_or_default(),
        String::from_utf8_lossy(&out.stderr).trim(),
        cmds.trim().replace('\n', "; ")
    )))
}

fn ip_output(args: &[&str]) -> Result<String, BackendError> {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            BackendError::io(
                format!("running `ip {}` (install iproute2)", args.join(" ")),
                e,
            )
        })?;
    if !out.status.success() {
        return Err(BackendError::Other(format!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// This host's IPv4 networks (addresses and routes in every table).
fn used_networks() -> Result<Vec<(Ipv4Addr, u8)>, BackendError> {
    Ok(crate::backend::vm::tap::parse_used(
        &ip_output(&["-o", "-4", "addr", "show"])?,
        &ip_output(&["-4", "route", "show", "table", "all"])?,
    ))
}

fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Refuse a device name that exists (never adopted), then record it: call before creating.
fn claim(state: &RunState, names: &[&str]) -> Result<(), BackendError> {
    for n in names {
        if link_exists(n) {
            return Err(BackendError::Other(format!(
                "a network device named {n} already exists: isobench never adopts a device it \
                 did not create; if it is a leftover of a killed run, run `isobench cleanup`"
            )));
        }
    }
    let rs: Vec<Resource> = names
        .iter()
        .map(|n| Resource::Link {
            name: (*n).to_string(),
        })
        .collect();
    state
        .record_all(&rs)
        .map_err(|e| BackendError::io("recording network devices in the ledger", e))
}

/// Delete recorded devices that still exist, then forget them. Errors keep them recorded.
fn remove_links(state: &RunState, names: &[String]) -> Result<(), BackendError> {
    let mut errors = vec![];
    let mut gone = vec![];
    for n in names {
        match remove_link(n) {
            Ok(_) => gone.push(Resource::Link { name: n.clone() }),
            Err(e) => errors.push(e),
        }
    }
    let _ = state.release_all(&gone);
    if errors.is_empty() {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "{} (then run `isobench cleanup`)",
            errors.join("; ")
        )))
    }
}

/// The per-launch part of a network path, planned before the launch clock starts.
#[derive(Debug, Clone)]
pub struct LaunchNet {
    /// Host end (direct: carries the peer's address; nat: a bridge port).
    pub host_if: String,
    /// The end moved into the container and renamed eth0.
    pub cont_if: String,
    /// The container's address with prefix, e.g. "10.214.3.6/30".
    pub cont_cidr: String,
    /// Default gateway inside the container (nat only).
    pub gateway: Option<Ipv4Addr>,
    /// The host end's address with prefix (direct only).
    pub host_cidr: Option<String>,
    /// The run's bridge the host end joins (nat only).
    pub bridge: Option<String>,
}

impl LaunchNet {
    pub fn links(&self) -> [&str; 2] {
        [&self.host_if, &self.cont_if]
    }

    pub fn resources(&self) -> Vec<Resource> {
        self.links()
            .iter()
            .map(|n| Resource::Link {
                name: (*n).to_string(),
            })
            .collect()
    }

    /// Before clone: refuse existing names, create the pair in the host's namespace, configure
    /// the host end. The caller has recorded [`LaunchNet::resources`].
    pub fn create_host_side(&self) -> Result<(), BackendError> {
        self.check_free()?;
        let mut cmds = format!(
            "link add {} type veth peer name {}\n",
            self.host_if, self.cont_if
        );
        if let Some(c) = &self.host_cidr {
            cmds += &format!("addr add {c} dev {}\n", self.host_if);
        }
        if let Some(b) = &self.bridge {
            cmds += &format!("link set {} master {b}\n", self.host_if);
        }
        cmds += &format!("link set {} up\n", self.host_if);
        ip_batch(None, &cmds)
    }

    /// After clone, before the child is released: move the container end into the child's
    /// network namespace and configure it there (eth0, address, up, default route on nat).
    pub fn configure_container_side(&self, pid: Pid) -> Result<(), BackendError> {
        ip_batch(
            None,
            &format!("link set {} netns {}\n", self.cont_if, pid.as_raw()),
        )?;
        let mut cmds = format!(
            "link set {c} name {CONTAINER_IF}\naddr add {cidr} dev {CONTAINER_IF}\nlink set {CONTAINER_IF} up\n",
            c = self.cont_if,
            cidr = self.cont_cidr,
        );
        if let Some(g) = self.gateway {
            cmds += &format!("route add default via {g}\n");
        }
        ip_batch(
            Some(&PathBuf::from(format!("/proc/{}/ns/net", pid.as_raw()))),
            &cmds,
        )
    }

    /// Refuse names that exist (never adopted): call before recording them.
    pub fn check_free(&self) -> Result<(), BackendError> {
        for n in self.links() {
            if link_exists(n) {
                return Err(BackendError::Other(format!(
                    "a network device named {n} already exists: isobench never adopts a device \
                     it did not create; run `isobench cleanup` if a killed run left it"
                )));
            }
        }
        Ok(())
    }

    /// Remove what is left of the pair (a dying namespace takes it with it, asynchronously).
    /// The caller forgets [`LaunchNet::resources`] once this succeeded.
    pub fn teardown(&self) -> Result<(), BackendError> {
        let errors: Vec<String> = self
            .links()
            .iter()
            .filter_map(|n| remove_link(n).err())
            .collect();
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Other(errors.join("; ")))
        }
    }
}

/// The NAT path's run-level part: bridge, uplink, peer namespace and peer, nftables table,
/// ip_forward.
pub struct NatPath {
    bridge: String,
    subnet: Ipv4Addr,
    uplink: [String; 2],
    table: String,
    /// Rules inserted into iptables' filter FORWARD chain (recorded in the ledger).
    fw_rules: Vec<Vec<String>>,
    forward_restore: Option<String>,
    peer: Option<NetPeer>,
    /// Holds the peer's network namespace (it dies with the last reference: this fd, the
    /// peer's sockets).
    peer_ns: Option<OwnedFd>,
}

/// The container network of one run: which blocks it took, and the NAT path once built.
pub struct RunNet {
    stem: String,
    run_id: String,
    seed: u32,
    direct_block: Option<Ipv4Addr>,
    nat: Option<NatPath>,
}

impl RunNet {
    pub fn new(run_id: &str) -> Self {
        RunNet {
            stem: stem(run_id),
            run_id: run_id.to_string(),
            seed: fnv1a(run_id),
            direct_block: None,
            nat: None,
        }
    }

    pub fn stem(&self) -> &str {
        &self.stem
    }

    /// Plan launch `n`'s direct path (takes the run's /24 on first use).
    pub fn plan_direct(&mut self, n: u64) -> Result<LaunchNet, BackendError> {
        let block = match self.direct_block {
            Some(b) => b,
            None => {
                let b = pick_block(DIRECT_RANGE, 24, &used_networks()?, self.seed)
                    .ok_or_else(|| no_block("10.214.0.0/16"))?;
                *self.direct_block.get_or_insert(b)
            }
        };
        let (host, cont) = direct_pair(block, n);
        Ok(LaunchNet {
            host_if: link_name(&self.stem, 'd', n),
            cont_if: link_name(&self.stem, 'c', n),
            cont_cidr: format!("{cont}/30"),
            gateway: None,
            host_cidr: Some(format!("{host}/30")),
            bridge: None,
        })
    }

    /// Plan launch `n`'s NAT path (builds the run's bridge, uplink, peer and table on first use).
    /// Returns the plan and the peer's address.
    pub fn plan_nat(
        &mut self,
        n: u64,
        state: &RunState,
    ) -> Result<(LaunchNet, SocketAddr), BackendError> {
        if self.nat.is_none() {
            let nat = self.build_nat(state)?;
            self.nat = Some(nat);
        }
        let nat = self.nat.as_ref().expect("just built");
        let peer = nat
            .peer
            .as_ref()
            .map(NetPeer::local_addr)
            .expect("the NAT peer runs while the path exists");
        Ok((
            LaunchNet {
                host_if: link_name(&self.stem, 'n', n),
                cont_if: link_name(&self.stem, 'c', n),
                cont_cidr: format!("{}/24", bridge_addr(nat.subnet, n)),
                gateway: Some(add(nat.subnet, 1)),
                host_cidr: None,
                bridge: Some(nat.bridge.clone()),
            },
            peer,
        ))
    }

    fn build_nat(&self, state: &RunState) -> Result<NatPath, BackendError> {
        let used = used_networks()?;
        let subnet = pick_block(BRIDGE_RANGE, 24, &used, self.seed)
            .ok_or_else(|| no_block("10.215.0.0/16"))?;
        let uplink_net = pick_block(UPLINK_RANGE, 30, &used, self.seed)
            .ok_or_else(|| no_block("10.216.0.0/16"))?;
        let mut nat = NatPath {
            bridge: format!("{}br", self.stem),
            subnet,
            uplink: [format!("{}u0", self.stem), format!("{}u1", self.stem)],
            table: format!("isobench_{}", &self.stem[3..]),
            fw_rules: vec![],
            forward_restore: None,
            peer: None,
            peer_ns: None,
        };
        match self.build_nat_in(state, &mut nat, uplink_net) {
            Ok(()) => Ok(nat),
            Err(e) => {
                if let Err(t) = nat.teardown(state) {
                    return Err(BackendError::Other(format!(
                        "{e}; undoing the NAT path also failed: {t}"
                    )));
                }
                Err(e)
            }
        }
    }

    fn build_nat_in(
        &self,
        state: &RunState,
        nat: &mut NatPath,
        uplink_net: Ipv4Addr,
    ) -> Result<(), BackendError> {
        // The "outside" host: a network namespace held by an fd of this process only (no
        // mount, nothing to leak: it dies with its last reference).
        let ns = new_netns()?;
        let ns_path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ));
        nat.peer_ns = Some(ns);
        let (up_host, up_peer) = (add(uplink_net, 1), add(uplink_net, 2));
        claim(state, &[&nat.bridge, &nat.uplink[0], &nat.uplink[1]])?;
        ip_batch(
            None,
            &format!(
                "link add {br} type bridge\naddr add {gw}/24 dev {br}\nlink set {br} up\n\
                 link add {u0} type veth peer name {u1} netns {ns}\n\
                 addr add {up_host}/30 dev {u0}\nlink set {u0} up\n",
                br = nat.bridge,
                gw = add(nat.subnet, 1),
                u0 = nat.uplink[0],
                u1 = nat.uplink[1],
                ns = ns_path.display(),
            ),
        )?;
        ip_batch(
            Some(&ns_path),
            &format!(
                "addr add {up_peer}/30 dev {u1}\nlink set {u1} up\nlink set lo up\n",
                u1 = nat.uplink[1]
            ),
        )?;
        // Masquerade the bridge subnet out of the uplink, in a table of our own.
        let fam = "ip";
        if nft(&["list", "table", fam, &nat.table], None).is_ok() {
            return Err(BackendError::Other(format!(
                "nftables table {fam} {} already exists: isobench never adopts rules it did not \
                 create; run `isobench cleanup` if a killed run left it",
                nat.table
            )));
        }
        state
            .record(Resource::NftTable {
                family: fam.into(),
                name: nat.table.clone(),
            })
            .map_err(|e| BackendError::io("recording the nftables table in the ledger", e))?;
        nft(
            &["-f", "-"],
            Some(&format!(
                "create table {fam} {t}\n\
                 add chain {fam} {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
                 add rule {fam} {t} postrouting ip saddr {sub}/24 oifname \"{u0}\" masquerade comment \"isobench run {id}\"\n",
                t = nat.table,
                sub = nat.subnet,
                u0 = nat.uplink[0],
                id = self.run_id,
            )),
        )?;
        // A FORWARD chain that drops (Docker's) would eat the forwarded traffic: let our own
        // bridge <-> uplink pair through, ahead of it.
        if iptables_forward_drops() {
            let comment = format!("isobench run {}", self.run_id);
            for (i, o) in [(&nat.bridge, &nat.uplink[0]), (&nat.uplink[0], &nat.bridge)] {
                let rule: Vec<String> = [
                    "-i",
                    i,
                    "-o",
                    o,
                    "-m",
                    "comment",
                    "--comment",
                    &comment,
                    "-j",
                    "ACCEPT",
                ]
                .iter()
                .map(|a| (*a).to_string())
                .collect();
                state
                    .record(Resource::IptablesRule {
                        table: "filter".into(),
                        chain: "FORWARD".into(),
                        rule: rule.clone(),
                    })
                    .map_err(|e| BackendError::io("recording an iptables rule in the ledger", e))?;
                nat.fw_rules.push(rule.clone());
                let mut args = vec!["-t", "filter", "-I", "FORWARD", "1"];
                args.extend(rule.iter().map(String::as_str));
                iptables(&args)?;
            }
        }
        // Forwarding, only if it is off; recorded so it is put back even after a crash.
        let fwd = std::fs::read_to_string(IP_FORWARD)
            .map_err(|e| BackendError::io(format!("reading {IP_FORWARD}"), e))?;
        if fwd.trim() == "0" {
            state
                .record(Resource::Sysctl {
                    path: IP_FORWARD.into(),
                    restore: "0".into(),
                    set: "1".into(),
                })
                .map_err(|e| BackendError::io("recording ip_forward in the ledger", e))?;
            nat.forward_restore = Some("0".into());
            std::fs::write(IP_FORWARD, "1").map_err(|e| {
                BackendError::io(format!("switching on {IP_FORWARD} (are you root?)"), e)
            })?;
        }
        // The peer, bound inside the outside namespace.
        let fd = nat.peer_ns.as_ref().expect("set above").as_raw_fd();
        let addr = SocketAddr::from((up_peer, 0));
        nat.peer = Some(in_netns(fd, move || {
            NetPeer::start(addr).map_err(|e| BackendError::Other(e.to_string()))
        })??);
        Ok(())
    }

    /// Tear the run-level NAT path down (devices, table, ip_forward, peer). Idempotent.
    pub fn finish(&mut self, state: &RunState) -> Result<(), BackendError> {
        match self.nat.take() {
            Some(mut nat) => nat.teardown(state),
            None => Ok(()),
        }
    }

    /// Whether the NAT path is built (tests, settings).
    pub fn has_nat(&self) -> bool {
        self.nat.is_some()
    }
}

impl NatPath {
    fn teardown(&mut self, state: &RunState) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        let mut errors: Vec<String> = vec![];
        if let Err(e) = remove_links(
            state,
            &[
                self.uplink[0].clone(),
                self.uplink[1].clone(),
                self.bridge.clone(),
            ],
        ) {
            errors.push(e.to_string());
        }
        // The peer's namespace goes with its last reference (its veth end with it).
        self.peer_ns = None;
        let table = Resource::NftTable {
            family: "ip".into(),
            name: self.table.clone(),
        };
        if state.resources().contains(&table) {
            match crate::cleanup::remove_nft_table("ip", &self.table) {
                Ok(_) => {
                    let _ = state.release(&table);
                }
                Err(e) => errors.push(e),
            }
        }
        for rule in std::mem::take(&mut self.fw_rules) {
            match crate::cleanup::remove_iptables_rule("filter", "FORWARD", &rule) {
                Ok(_) => {
                    let _ = state.release(&Resource::IptablesRule {
                        table: "filter".into(),
                        chain: "FORWARD".into(),
                        rule,
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(v) = self.forward_restore.take() {
            match crate::cleanup::restore_sysctl(Path::new(IP_FORWARD), &v) {
                Ok(()) => {
                    let _ = state.release(&Resource::Sysctl {
                        path: IP_FORWARD.into(),
                        restore: v,
                        set: "1".into(),
                    });
                }
                Err(e) => errors.push(e),
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Other(format!(
                "tearing down the NAT path: {} (then run `isobench cleanup`)",
                errors.join("; ")
            )))
        }
    }
}

fn no_block(range: &str) -> BackendError {
    BackendError::Other(format!(
        "no free block left in {range} on this host: every candidate overlaps an address or a \
         route; remove stale addresses there (`ip -o addr`) or leftover runs (`isobench cleanup`)"
    ))
}

/// Would iptables' filter FORWARD chain drop traffic it has no rule for? False where iptables
/// is not installed or has no filter table (listing never creates one).
fn iptables_forward_drops() -> bool {
    let Ok(out) = Command::new("iptables")
        .args(["-w", "-t", "filter", "-S", "FORWARD"])
        .stdin(Stdio::null())
        .output()
    else {
        return false;
    };
    let s = String::from_utf8_lossy(&out.stdout);
    out.status.success()
        && s.lines()
            .any(|l| l == "-P FORWARD DROP" || l.ends_with("-j DROP") || l.contains("-j REJECT"))
}

fn iptables(args: &[&str]) -> Result<(), BackendError> {
    let out = Command::new("iptables")
        .arg("-w")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackendError::io("running `iptables`", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "`iptables {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

fn nft(args: &[&str], stdin: Option<&str>) -> Result<(), BackendError> {
    let mut cmd = Command::new("nft");
    cmd.args(args)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| {
        BackendError::io(
            "running `nft` (install nftables: apt-get install nftables)",
            e,
        )
    })?;
    if let Some(text) = stdin {
        use std::io::Write;
        let mut w = child.stdin.take().expect("stdin was piped");
        w.write_all(text.as_bytes())
            .map_err(|e| BackendError::io("writing to `nft -f -`", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| BackendError::io("waiting for `nft`", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(BackendError::Other(format!(
            "`nft {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// Run `f` on a short-lived thread that has joined the network namespace `fd` (a namespace is
/// per thread; sockets stay in the namespace they were made in).
fn in_netns<T: Send + 'static>(
    fd: i32,
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, BackendError> {
    std::thread::spawn(move || {
        // SAFETY: `fd` is a namespace fd owned by the caller, who keeps it open until this
        // thread is joined; the borrow does not outlive the call.
        let ns = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        nix::sched::setns(ns, CloneFlags::CLONE_NEWNET)
            .map_err(|e| BackendError::sys("joining the peer's network namespace", e))?;
        Ok(f())
    })
    .join()
    .map_err(|_| BackendError::Other("the network namespace thread panicked".into()))?
}

/// A new network namespace, held by the returned fd only.
fn new_netns() -> Result<OwnedFd, BackendError> {
    std::thread::spawn(|| -> Result<OwnedFd, BackendError> {
        nix::sched::unshare(CloneFlags::CLONE_NEWNET)
            .map_err(|e| BackendError::sys("creating a network namespace (are you root?)", e))?;
        let fd = nix::fcntl::open(
            "/proc/thread-self/ns/net",
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_CLOEXEC,
            nix::sys::stat::Mode::empty(),
        )
        .map_err(|e| BackendError::sys("opening the new network namespace", e))?;
        // SAFETY: open just returned this fd and nothing else owns it.
        Ok(unsafe { OwnedFd::from_raw_fd(fd) })
    })
    .join()
    .map_err(|_| BackendError::Other("the network namespace thread panicked".into()))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_ifnamsiz_and_differ() {
        let s = stem("2024-01-01T00-00-00-abcdef");
        assert_eq!(s.len(), 9);
        assert!(s.starts_with("isbk"));
        for n in [0u64, 1, 35, 36, 1295, 36u64.pow(5) - 1] {
            let l = link_name(&s, 'd', n);
            assert!(l.len() <= 15, "{l}");
        }
        assert_eq!(link_name("isbk00000", 'd', 36), "isbk00000d10");
        assert_ne!(link_name(&s, 'd', 1), link_name(&s, 'c', 1));
        assert_ne!(stem("run-a"), stem("run-b"));
    }

    #[test]
    fn blocks_avoid_used_networks() {
        let used = vec![
            (Ipv4Addr::new(10, 214, 0, 0), 24),
            (Ipv4Addr::new(0, 0, 0, 0), 0),
        ];
        let b = pick_block(DIRECT_RANGE, 24, &used, 0).unwrap();
        assert_eq!(b, Ipv4Addr::new(10, 214, 1, 0));
        // A /16 route over the whole range leaves nothing.
        assert_eq!(
            pick_block(DIRECT_RANGE, 24, &[(Ipv4Addr::new(10, 0, 0, 0), 8)], 7),
            None
        );
        let u = pick_block(UPLINK_RANGE, 30, &[], 1).unwrap();
        assert_eq!(u, Ipv4Addr::new(10, 216, 0, 4));
    }

    #[test]
    fn launch_addresses() {
        let b = Ipv4Addr::new(10, 214, 9, 0);
        assert_eq!(
            direct_pair(b, 0),
            (Ipv4Addr::new(10, 214, 9, 1), Ipv4Addr::new(10, 214, 9, 2))
        );
        assert_eq!(direct_pair(b, 65).0, Ipv4Addr::new(10, 214, 9, 5));
        let s = Ipv4Addr::new(10, 215, 3, 0);
        assert_eq!(bridge_addr(s, 0), Ipv4Addr::new(10, 215, 3, 2));
        assert_eq!(bridge_addr(s, 252), Ipv4Addr::new(10, 215, 3, 254));
        assert_eq!(bridge_addr(s, 253), Ipv4Addr::new(10, 215, 3, 2));
    }
}
