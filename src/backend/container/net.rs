//! The container's network paths for the `net` workload, built with iproute2 and nftables from
//! the host side (setup is not part of the measured throughput; `noop` and `idle` launches get
//! no network device at all, only `lo`).
//!
//! - `direct`: a veth pair per launch. The host end gets `.1` of a private /30 and a `NetPeer`
//!   bound to it; the other end is moved into the container's network namespace, renamed
//!   `eth0` and given `.2`.
//! - `nat`, the path Docker uses by default: a bridge owned by the run (`.1` of a private /24,
//!   the containers' default gateway), one veth per launch with its host end attached to the
//!   bridge; the peer lives in a separate, unnamed network namespace of the run (an "outside"
//!   host, held by an fd), reached over an uplink veth (/30), and the containers' traffic leaves
//!   through the uplink masqueraded by a rule in an nftables table the run owns
//!   (`ip isobench_k<tag>`, commented `isobench run <run id>`, every rule commented too).
//!   Forwarding is switched on for the run's bridge and uplink only
//!   (`net.ipv4.conf.<dev>.forwarding`: IPv4 forwarding is decided by the input device), never
//!   host-wide: `net.ipv4.ip_forward` is not touched.
//!
//! Names and marks (see [`crate::host::net::netdev`]): every device is `isbk` + a random 8-character tag +
//! a kind suffix (`br` bridge, `u0`/`u1` uplink, `d`/`n` a launch's host end, `c` its container
//! end: at most 14 bytes), created exclusively (on "File exists" another tag is tried; a device
//! that exists is never adopted nor deleted), recorded in the ledger before it is made, and
//! marked with the alias `isobench:<run id>` right after; teardown deletes only devices this
//! run created that carry that alias. The nftables table is created the same way (`create
//! table` fails if it exists) and deleted by handle only if its comment is the run's.
//!
//! Address blocks are reserved in the state directory under a lock (see [`crate::host::net::subnet`]), so
//! two concurrent runs never share one, and never overlap an address or route of this host:
//! 10.214.0.0/16 (direct: a /24 per run), 10.215.0.0/16 (bridge: a /24 per run),
//! 10.216.0.0/16 (uplink: a /30 per run); the VM tiers use 10.213.0.0/16.
//!
//! Where iptables' FORWARD chain would drop the forwarded traffic (Docker sets `-P FORWARD
//! DROP`), the run inserts two ACCEPT rules for its own bridge <-> uplink pair at the top of
//! that chain, commented with the run id, recorded, and deleted at the end of the run. Another
//! firewall that drops forwarded traffic (a custom nftables drop chain) breaks the `nat` path:
//! the agent then reports that it cannot connect.
//!
//! Host-wide effects that cannot be avoided: masquerading needs connection tracking; where
//! `nf_conntrack`/`nf_nat` are modules the kernel loads them on the first NAT run, and they stay
//! loaded (unloading could break another user of them). The run says so in its log and in
//! [`RunNet::host_changes`].
//!
//! Not protected against: the container's traffic is not filtered; on the `nat` path it can
//! reach what the host routes (the run's table only adds masquerading).

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use nix::sched::CloneFlags;
use nix::unistd::Pid;

use crate::backend::BackendError;
use crate::host::net::netdev::{self, AddError, NAME_ATTEMPTS};
use crate::host::net::subnet::{self, Reservation};
use crate::netpeer::NetPeer;
use crate::state::ledger::{Resource, RunState};

/// The direct path's range: each run takes a /24 of it, each launch a /30 of that.
pub const DIRECT_RANGE: Ipv4Addr = Ipv4Addr::new(10, 214, 0, 0);
/// The NAT path's bridge subnets: each run takes a /24.
pub const BRIDGE_RANGE: Ipv4Addr = Ipv4Addr::new(10, 215, 0, 0);
/// The NAT path's uplink to the peer's namespace: each run takes a /30.
pub const UPLINK_RANGE: Ipv4Addr = Ipv4Addr::new(10, 216, 0, 0);
/// Name of the container's interface inside its namespace.
pub const CONTAINER_IF: &str = "eth0";
/// Prefix of every container-tier device name.
pub const LINK_PREFIX: &str = "isbk";
/// Prefix of the run's nftables table.
pub const TABLE_PREFIX: &str = "isobench_k";

/// A device name: `isbk` + `tag` + `kind` (at most 15 bytes for an 8-byte tag).
pub fn link_name(tag: &str, kind: &str) -> String {
    format!("{LINK_PREFIX}{tag}{kind}")
}

/// The comment on the run's nftables table (its ownership mark).
pub fn table_comment(run_id: &str) -> String {
    format!("isobench run {run_id}")
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
    Ok(crate::host::net::subnet::parse_used(
        &ip_output(&["-o", "-4", "addr", "show"])?,
        &ip_output(&["-4", "route", "show", "table", "all"])?,
    ))
}

fn ledger_err(what: &'static str) -> impl FnOnce(std::io::Error) -> BackendError {
    move |e| BackendError::io(what, e)
}

fn link(name: &str) -> Resource {
    Resource::Link {
        name: name.to_string(),
    }
}

/// Create one device whose name comes fresh from `name()` on every attempt: recorded before,
/// forgotten again when the name was taken (nothing was created then), marked with the run's
/// alias right after creation. Returns the name it got.
fn create_fresh(
    state: &RunState,
    run_id: &str,
    mut name: impl FnMut() -> String,
    add: impl Fn(&str) -> Result<(), AddError>,
) -> Result<String, BackendError> {
    for _ in 0..NAME_ATTEMPTS {
        let n = name();
        state
            .record(link(&n))
            .map_err(ledger_err("recording a network device in the ledger"))?;
        match add(&n) {
            Ok(()) => {
                if let Err(e) = netdev::set_alias(&n, run_id) {
                    // Ours (just created), but not marked: remove it now.
                    if netdev::delete_just_created(&n).is_ok() {
                        let _ = state.release(&link(&n));
                    }
                    return Err(BackendError::Other(format!(
                        "marking {n} as isobench's: {e}"
                    )));
                }
                return Ok(n);
            }
            Err(AddError::Exists) => {
                tracing::info!("network device name {n} is taken; trying another");
                let _ = state.release(&link(&n));
            }
            Err(AddError::Failed(e)) => {
                let _ = state.release(&link(&n));
                return Err(BackendError::Other(e));
            }
        }
    }
    Err(names_taken())
}

fn names_taken() -> BackendError {
    BackendError::Other(format!(
        "{NAME_ATTEMPTS} fresh random names for a network device were all taken: something on \
         this host is creating isbk* devices; find it (`ip -br link`) or run `isobench cleanup`"
    ))
}

/// Devices the run created for launches and has not deleted yet (shared with the launch
/// plans, so the end of the run finds what a failed teardown left).
type Registry = Arc<Mutex<BTreeSet<String>>>;

/// The per-launch part of a network path, planned before the launch clock starts.
#[derive(Debug, Clone)]
pub struct LaunchNet {
    run_id: String,
    /// Suffix of the host end: "d" (direct) or "n" (nat).
    kind: &'static str,
    /// (host end, container end): chosen when planned, replaced at creation if the names are
    /// taken by then.
    names: Arc<Mutex<(String, String)>>,
    /// This launch created the pair (only then does teardown delete anything).
    created: Arc<AtomicBool>,
    registry: Registry,
    /// The container's address with prefix, e.g. "10.214.3.6/30".
    pub cont_cidr: String,
    /// Default gateway inside the container (nat only).
    pub gateway: Option<Ipv4Addr>,
    /// The host end's address with prefix (direct only).
    pub host_cidr: Option<String>,
    /// The run's bridge the host end joins (nat only).
    pub bridge: Option<String>,
    /// A port published through the NAT path (an application server's, as `docker run -p`).
    pub publish: Option<Publish>,
}

/// A port published on the NAT path: a DNAT rule in the run's nftables table (chain `output`,
/// for connections the host itself makes, as Docker's OUTPUT rule for its published ports)
/// sending `host`:`host_port` (the bridge's address, the host's side) to `to` (the container).
/// The rule lives in the run's table (recorded in the ledger), so the table's removal at the
/// end of the run, or by `isobench cleanup`, removes it too; the launch's teardown deletes it
/// by handle before the table goes.
#[derive(Debug, Clone)]
pub struct Publish {
    pub table: String,
    pub host: SocketAddr,
    pub to: SocketAddr,
    /// The rule's handle once added.
    handle: Arc<Mutex<Option<u64>>>,
}

impl Publish {
    /// The `nft add rule` arguments of the publish (pure).
    pub fn rule_args(&self, run_id: &str) -> Vec<String> {
        let mut a: Vec<String> = [
            "--echo",
            "--handle",
            "add",
            "rule",
            "ip",
            &self.table,
            "output",
        ]
        .iter()
        .map(|s| (*s).to_string())
        .collect();
        a.extend(
            format!(
                "ip daddr {} tcp dport {} dnat to {}",
                self.host.ip(),
                self.host.port(),
                self.to
            )
            .split(' ')
            .map(str::to_string),
        );
        a.push("comment".into());
        a.push(format!("\"{}\"", table_comment(run_id)));
        a
    }

    fn add(&self, run_id: &str) -> Result<(), BackendError> {
        let args = self.rule_args(run_id);
        let out = Command::new("nft")
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| BackendError::io("running `nft` (apt-get install nftables)", e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        let handle = text.lines().find_map(|l| {
            l.rsplit_once("# handle ")
                .and_then(|(_, h)| h.trim().parse().ok())
        });
        match (out.status.success(), handle) {
            (true, Some(h)) => {
                *self.handle.lock().expect("handle lock") = Some(h);
                Ok(())
            }
            (true, None) => Err(BackendError::Other(format!(
                "`nft {}` printed no rule handle ({text:?}): nftables 0.9.3 or newer is needed",
                args.join(" ")
            ))),
            (false, _) => Err(BackendError::Other(format!(
                "publishing {} -> {}: `nft {}` failed: {}",
                self.host,
                self.to,
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ))),
        }
    }

    /// Delete the rule if this launch added it. A table already gone took the rule with it.
    fn remove(&self) -> Result<(), BackendError> {
        let Some(h) = *self.handle.lock().expect("handle lock") else {
            return Ok(());
        };
        let hs = h.to_string();
        match nft(
            &["delete", "rule", "ip", &self.table, "output", "handle", &hs],
            None,
        ) {
            Ok(()) => {}
            Err(e) if e.to_string().contains("No such file or directory") => {}
            Err(e) => return Err(e),
        }
        *self.handle.lock().expect("handle lock") = None;
        Ok(())
    }
}

fn pair_names(kind: &str) -> (String, String) {
    let tag = netdev::random_tag();
    (link_name(&tag, kind), link_name(&tag, "c"))
}

impl LaunchNet {
    /// Host end (direct: carries the peer's address; nat: a bridge port).
    pub fn host_if(&self) -> String {
        self.names.lock().expect("names lock").0.clone()
    }

    /// The end moved into the container and renamed eth0.
    pub fn cont_if(&self) -> String {
        self.names.lock().expect("names lock").1.clone()
    }

    pub fn resources(&self) -> Vec<Resource> {
        let (h, c) = self.names.lock().expect("names lock").clone();
        vec![link(&h), link(&c)]
    }

    /// Before clone: create the pair in the host's namespace (exclusively: on "exists", new
    /// names, recorded before they are tried), mark it, configure the host end. The caller has
    /// recorded [`LaunchNet::resources`].
    pub fn create_host_side(&self, state: &RunState) -> Result<(), BackendError> {
        let mut attempts = 0;
        loop {
            let (h, c) = self.names.lock().expect("names lock").clone();
            let (mh, mc) = (
                netdev::mark_mac(&self.run_id, &h),
                netdev::mark_mac(&self.run_id, &c),
            );
            match netdev::link_add(&[
                "name", &h, "address", &mh, "type", "veth", "peer", "name", &c, "address", &mc,
            ]) {
                Ok(()) => break,
                Err(AddError::Exists) if attempts + 1 < NAME_ATTEMPTS => {
                    attempts += 1;
                    tracing::info!("network device name {h} or {c} is taken; trying others");
                    let (nh, nc) = pair_names(self.kind);
                    state
                        .record_all(&[link(&nh), link(&nc)])
                        .map_err(ledger_err("recording network devices in the ledger"))?;
                    let _ = state.release_all(&[link(&h), link(&c)]);
                    *self.names.lock().expect("names lock") = (nh, nc);
                }
                Err(AddError::Exists) => return Err(names_taken()),
                Err(AddError::Failed(e)) => return Err(BackendError::Other(e)),
            }
        }
        let (h, c) = self.names.lock().expect("names lock").clone();
        for n in [&h, &c] {
            if let Err(e) = netdev::set_alias(n, &self.run_id) {
                // Deleting one end deletes the pair, which this call has just created.
                let _ = netdev::delete_just_created(&h);
                return Err(BackendError::Other(format!(
                    "marking {n} as isobench's: {e}"
                )));
            }
        }
        self.created.store(true, Ordering::SeqCst);
        self.registry
            .lock()
            .expect("registry lock")
            .insert(h.clone());
        let mut cmds = String::new();
        if let Some(cidr) = &self.host_cidr {
            cmds += &format!("addr add {cidr} dev {h}\n");
        }
        if let Some(b) = &self.bridge {
            cmds += &format!("link set {h} master {b}\n");
        }
        cmds += &format!("link set {h} up\n");
        ip_batch(None, &cmds)?;
        match &self.publish {
            Some(p) => p.add(&self.run_id),
            None => Ok(()),
        }
    }

    /// After clone, before the child is released: move the container end into the child's
    /// network namespace and configure it there (eth0, address, up, default route on nat).
    pub fn configure_container_side(&self, pid: Pid) -> Result<(), BackendError> {
        let c = self.cont_if();
        ip_batch(None, &format!("link set {c} netns {}\n", pid.as_raw()))?;
        let mut cmds = format!(
            "link set {c} name {CONTAINER_IF}\naddr add {cidr} dev {CONTAINER_IF}\nlink set {CONTAINER_IF} up\n",
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

    /// Remove what is left of the pair this launch created (deleting the host end deletes its
    /// peer; a dying namespace takes the pair with it, asynchronously), only if it carries the
    /// run's alias. The caller forgets [`LaunchNet::resources`] once this succeeded.
    pub fn teardown(&self) -> Result<(), BackendError> {
        if let Some(p) = &self.publish {
            p.remove()?;
        }
        if !self.created.load(Ordering::SeqCst) {
            return Ok(());
        }
        let h = self.host_if();
        netdev::delete_owned(&h, &self.run_id).map_err(BackendError::Other)?;
        self.registry.lock().expect("registry lock").remove(&h);
        self.created.store(false, Ordering::SeqCst);
        Ok(())
    }
}

/// The NAT path's run-level part: bridge, uplink, peer namespace and peer, nftables table.
pub struct NatPath {
    run_id: String,
    subnet: Reservation,
    uplink_net: Reservation,
    /// Devices created (and marked) so far: the bridge, the uplink's host end.
    bridge: Option<String>,
    uplink: Option<String>,
    /// The table, once created.
    table: Option<String>,
    /// Rules inserted into iptables' filter FORWARD chain (recorded in the ledger).
    fw_rules: Vec<Vec<String>>,
    peer: Option<NetPeer>,
    /// Holds the peer's network namespace (it dies with the last reference: this fd, the
    /// peer's sockets).
    peer_ns: Option<OwnedFd>,
    /// Host-wide effects this path had (for the run's notes).
    host_changes: Vec<String>,
}

/// The container network of one run: which blocks it took, and the NAT path once built.
pub struct RunNet {
    run_id: String,
    direct: Option<Reservation>,
    nat: Option<NatPath>,
    registry: Registry,
    host_changes: Vec<String>,
}

fn subnet_err(e: subnet::SubnetError) -> BackendError {
    BackendError::Other(e.to_string())
}

impl RunNet {
    pub fn new(run_id: &str) -> Self {
        RunNet {
            run_id: run_id.to_string(),
            direct: None,
            nat: None,
            registry: Registry::default(),
            host_changes: vec![],
        }
    }

    fn launch_net(&self, kind: &'static str) -> LaunchNet {
        LaunchNet {
            run_id: self.run_id.clone(),
            kind,
            names: Arc::new(Mutex::new(pair_names(kind))),
            created: Arc::new(AtomicBool::new(false)),
            registry: self.registry.clone(),
            cont_cidr: String::new(),
            gateway: None,
            host_cidr: None,
            bridge: None,
            publish: None,
        }
    }

    /// Plan launch `n`'s direct path (reserves the run's /24 on first use).
    pub fn plan_direct(&mut self, n: u64, state: &RunState) -> Result<LaunchNet, BackendError> {
        let block = match &self.direct {
            Some(r) => r.net,
            None => {
                let r = subnet::reserve(
                    &subnet::state_root(state),
                    &self.run_id,
                    DIRECT_RANGE,
                    24,
                    &used_networks()?,
                )
                .map_err(subnet_err)?;
                self.direct.get_or_insert(r).net
            }
        };
        let (host, cont) = direct_pair(block, n);
        Ok(LaunchNet {
            cont_cidr: format!("{cont}/30"),
            host_cidr: Some(format!("{host}/30")),
            ..self.launch_net("d")
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
            for c in &nat.host_changes {
                tracing::warn!("host-wide change: {c}");
            }
            self.host_changes.extend(nat.host_changes.iter().cloned());
            self.nat = Some(nat);
        }
        let nat = self.nat.as_ref().expect("just built");
        let peer = nat
            .peer
            .as_ref()
            .map(NetPeer::local_addr)
            .expect("the NAT peer runs while the path exists");
        let subnet = nat.subnet.net;
        Ok((
            LaunchNet {
                cont_cidr: format!("{}/24", bridge_addr(subnet, n)),
                gateway: Some(add(subnet, 1)),
                bridge: nat.bridge.clone(),
                ..self.launch_net("n")
            },
            peer,
        ))
    }

    /// Plan launch `n`'s NAT path with `port` of the container published on the host's side
    /// of the bridge (its gateway address, at a port free there now), as `docker run -p`.
    /// Returns the plan and the address the host connects to.
    pub fn plan_nat_publish(
        &mut self,
        n: u64,
        state: &RunState,
        port: u16,
    ) -> Result<(LaunchNet, SocketAddr), BackendError> {
        let (mut net, _peer) = self.plan_nat(n, state)?;
        let nat = self.nat.as_ref().expect("plan_nat built it");
        let table = nat.table.clone().ok_or_else(|| {
            BackendError::Other("internal error: the NAT path has no table; report this bug".into())
        })?;
        let gw = net.gateway.expect("the nat path has a gateway");
        let host_port = std::net::TcpListener::bind((gw, 0))
            .and_then(|l| l.local_addr())
            .map_err(|e| BackendError::io(format!("finding a free port on {gw}"), e))?
            .port();
        let cont: Ipv4Addr = net
            .cont_cidr
            .split('/')
            .next()
            .unwrap_or_default()
            .parse()
            .expect("planned address");
        let host = SocketAddr::from((gw, host_port));
        net.publish = Some(Publish {
            table,
            host,
            to: SocketAddr::from((cont, port)),
            handle: Arc::default(),
        });
        Ok((net, host))
    }

    fn build_nat(&self, state: &RunState) -> Result<NatPath, BackendError> {
        let used = used_networks()?;
        let root = subnet::state_root(state);
        let sub =
            subnet::reserve(&root, &self.run_id, BRIDGE_RANGE, 24, &used).map_err(subnet_err)?;
        let uplink_net = match subnet::reserve(&root, &self.run_id, UPLINK_RANGE, 30, &used) {
            Ok(r) => r,
            Err(e) => {
                let _ = sub.release();
                return Err(subnet_err(e));
            }
        };
        let mut nat = NatPath {
            run_id: self.run_id.clone(),
            subnet: sub,
            uplink_net,
            bridge: None,
            uplink: None,
            table: None,
            fw_rules: vec![],
            peer: None,
            peer_ns: None,
            host_changes: vec![],
        };
        match nat.build(state) {
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

    /// Tear the run's network down: the NAT path (devices, table, rules, peer), devices of
    /// launches whose teardown failed, and the reserved blocks. Idempotent.
    pub fn finish(&mut self, state: &RunState) -> Result<(), BackendError> {
        let mut errors = vec![];
        if let Some(mut nat) = self.nat.take() {
            if let Err(e) = nat.teardown(state) {
                errors.push(e.to_string());
            }
        }
        let left: Vec<String> = self
            .registry
            .lock()
            .expect("registry lock")
            .iter()
            .cloned()
            .collect();
        for h in left {
            match netdev::delete_owned(&h, &self.run_id) {
                Ok(_) => {
                    self.registry.lock().expect("registry lock").remove(&h);
                    // The container end has the same tag and went with the host end.
                    let c = format!("{}c", &h[..h.len() - 1]);
                    let _ = state.release_all(&[link(&h), link(&c)]);
                }
                Err(e) => errors.push(e),
            }
        }
        if let Some(r) = self.direct.take() {
            if let Err(e) = r.release() {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(BackendError::Other(format!(
                "tearing down the container network: {} (then run `isobench cleanup`)",
                errors.join("; ")
            )))
        }
    }

    /// Whether the NAT path is built (tests, settings).
    pub fn has_nat(&self) -> bool {
        self.nat.is_some()
    }

    /// Host-wide effects the run's network had (e.g. a kernel module loaded on demand), for
    /// the run's notes. Empty when it changed nothing outside its own devices and table.
    pub fn host_changes(&self) -> &[String] {
        &self.host_changes
    }

    /// The NAT path's bridge and table names and bridge subnet, once built (tests, logs).
    pub fn nat_names(&self) -> Option<(String, String, Ipv4Addr)> {
        let n = self.nat.as_ref()?;
        Some((n.bridge.clone()?, n.table.clone()?, n.subnet.net))
    }
}

impl NatPath {
    fn build(&mut self, state: &RunState) -> Result<(), BackendError> {
        // The "outside" host: a network namespace held by an fd of this process only (no
        // name, no mount, nothing to leak: it dies with its last reference).
        let ns = new_netns()?;
        let ns_path = PathBuf::from(format!(
            "/proc/{}/fd/{}",
            std::process::id(),
            ns.as_raw_fd()
        ));
        self.peer_ns = Some(ns);
        let id = self.run_id.clone();

        // The bridge, the containers' gateway; forwarding on it (traffic from the containers
        // comes in there).
        let br = create_fresh(
            state,
            &id,
            || link_name(&netdev::random_tag(), "br"),
            |n| {
                netdev::link_add(&[
                    "name",
                    n,
                    "address",
                    &netdev::mark_mac(&id, n),
                    "type",
                    "bridge",
                ])
            },
        )?;
        self.bridge = Some(br.clone());
        ip_batch(
            None,
            &format!(
                "addr add {gw}/24 dev {br}\nlink set {br} up\n",
                gw = add(self.subnet.net, 1)
            ),
        )?;
        netdev::enable_forwarding(&br).map_err(BackendError::Other)?;

        // The uplink: its host end here (forwarding on: replies come in there), its peer end
        // created directly inside the outside namespace (a fresh one: no name can clash there).
        let (up_host, up_peer) = (add(self.uplink_net.net, 1), add(self.uplink_net.net, 2));
        let u0 = create_fresh(
            state,
            &id,
            || link_name(&netdev::random_tag(), "u0"),
            |n| {
                let ns = ns_path.to_string_lossy();
                let u1 = format!("{}1", &n[..n.len() - 1]);
                let mac = netdev::mark_mac(&id, n);
                netdev::link_add(&[
                    "name", n, "address", &mac, "type", "veth", "peer", "name", &u1, "netns", &ns,
                ])
            },
        )?;
        let u1 = format!("{}1", &u0[..u0.len() - 1]);
        self.uplink = Some(u0.clone());
        ip_batch(
            None,
            &format!("addr add {up_host}/30 dev {u0}\nlink set {u0} up\n"),
        )?;
        netdev::enable_forwarding(&u0).map_err(BackendError::Other)?;
        ip_batch(
            Some(&ns_path),
            &format!("addr add {up_peer}/30 dev {u1}\nlink set {u1} up\nlink set lo up\n"),
        )?;

        // Masquerade the bridge subnet out of the uplink, in a table of our own, created
        // exclusively (`create table` fails if it exists; the file is one transaction).
        let conntrack_before = netdev::module_loaded("nf_conntrack");
        let fam = "ip";
        let mut attempts = 0;
        loop {
            let t = format!("{TABLE_PREFIX}{}", netdev::random_tag());
            let res = Resource::NftTable {
                family: fam.into(),
                name: t.clone(),
            };
            state
                .record(res.clone())
                .map_err(ledger_err("recording the nftables table in the ledger"))?;
            let r = nft(
                &["-f", "-"],
                Some(&format!(
                    "create table {fam} {t} {{ comment \"{c}\"; }}\n\
                     add chain {fam} {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}\n\
                     add rule {fam} {t} postrouting ip saddr {sub} oifname \"{u0}\" masquerade comment \"{c}\"\n\
                     add chain {fam} {t} output {{ type nat hook output priority -100; policy accept; }}\n",
                    c = table_comment(&id),
                    sub = self.subnet.cidr(),
                )),
            );
            match r {
                Ok(()) => {
                    self.table = Some(t);
                    break;
                }
                Err(e) => {
                    let _ = state.release(&res);
                    attempts += 1;
                    if !e.to_string().contains("File exists") {
                        return Err(e);
                    }
                    if attempts >= NAME_ATTEMPTS {
                        return Err(BackendError::Other(format!(
                            "{NAME_ATTEMPTS} fresh random nftables table names were all taken: \
                             something on this host creates isobench_k* tables; run `isobench \
                             cleanup` or look at `nft list tables`"
                        )));
                    }
                    tracing::info!("nftables table {t} exists; trying another name");
                }
            }
        }
        if !conntrack_before && netdev::module_loaded("nf_conntrack") {
            self.host_changes.push(
                "the kernel loaded nf_conntrack (and nf_nat) for the NAT path's masquerading; \
                 they stay loaded"
                    .into(),
            );
        }

        // A FORWARD chain that drops (Docker's) would eat the forwarded traffic: let our own
        // bridge <-> uplink pair through, ahead of it.
        if iptables_forward_drops() {
            let comment = table_comment(&id);
            for (i, o) in [(&br, &u0), (&u0, &br)] {
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
                    .map_err(ledger_err("recording an iptables rule in the ledger"))?;
                self.fw_rules.push(rule.clone());
                let mut args = vec!["-t", "filter", "-I", "FORWARD", "1"];
                args.extend(rule.iter().map(String::as_str));
                iptables(&args)?;
            }
        }

        // The peer, bound inside the outside namespace.
        let fd = self.peer_ns.as_ref().expect("set above").as_raw_fd();
        let addr = SocketAddr::from((up_peer, 0));
        self.peer = Some(in_netns(fd, move || {
            NetPeer::start(addr).map_err(|e| BackendError::Other(e.to_string()))
        })??);
        Ok(())
    }

    /// Undo what [`NatPath::build`] did, only what it did. Idempotent.
    fn teardown(&mut self, state: &RunState) -> Result<(), BackendError> {
        if let Some(p) = self.peer.take() {
            p.stop();
        }
        let mut errors: Vec<String> = vec![];
        for dev in [&mut self.uplink, &mut self.bridge] {
            if let Some(n) = dev.clone() {
                match netdev::delete_owned(&n, &self.run_id) {
                    Ok(_) => {
                        let _ = state.release(&link(&n));
                        *dev = None;
                    }
                    Err(e) => errors.push(e),
                }
            }
        }
        // The peer's namespace goes with its last reference (its veth end with it).
        self.peer_ns = None;
        for rule in std::mem::take(&mut self.fw_rules) {
            match crate::host::net::remove_iptables_rule("filter", "FORWARD", &rule) {
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
        if let Some(t) = self.table.clone() {
            match delete_owned_table("ip", &t, &self.run_id) {
                Ok(_) => {
                    let _ = state.release(&Resource::NftTable {
                        family: "ip".into(),
                        name: t,
                    });
                    self.table = None;
                }
                Err(e) => errors.push(e.to_string()),
            }
        }
        for r in [&self.subnet, &self.uplink_net] {
            if let Err(e) = r.release() {
                errors.push(e.to_string());
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

/// The handle and comment of table `family name`, from `nft -a list table` (pure).
pub fn parse_table_listing(listing: &str) -> Option<(u64, Option<String>)> {
    let mut lines = listing.lines();
    let first = lines.next()?;
    let handle = first.rsplit_once("# handle ")?.1.trim().parse().ok()?;
    let comment = lines.find_map(|l| {
        let l = l.trim();
        l.strip_prefix("comment \"")
            .and_then(|r| r.strip_suffix('"'))
            .map(String::from)
    });
    Some((handle, comment))
}

/// Delete table `family name` by its handle if its comment is run `run_id`'s. Ok(false) when
/// there is no such table; an error, and nothing deleted, when it is not marked as the run's.
pub fn delete_owned_table(family: &str, name: &str, run_id: &str) -> Result<bool, BackendError> {
    let out = Command::new("nft")
        .args(["-a", "list", "table", family, name])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BackendError::io("running `nft` (install nftables)", e))?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr);
        if err.contains("No such file or directory") {
            return Ok(false);
        }
        return Err(BackendError::Other(format!(
            "`nft -a list table {family} {name}` failed: {}",
            err.trim()
        )));
    }
    let listing = String::from_utf8_lossy(&out.stdout);
    let want = table_comment(run_id);
    match parse_table_listing(&listing) {
        Some((handle, Some(c))) if c == want => {
            nft(
                &["delete", "table", family, "handle", &handle.to_string()],
                None,
            )?;
            Ok(true)
        }
        _ => Err(BackendError::Other(format!(
            "nftables table {family} {name} does not carry the comment \"{want}\": it is not \
             this run's, left alone"
        ))),
    }
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
    fn names_fit_ifnamsiz_and_are_random() {
        let (h, c) = pair_names("d");
        assert!(h.starts_with(LINK_PREFIX) && h.ends_with('d'), "{h}");
        assert_eq!(&h[..h.len() - 1], &c[..c.len() - 1]);
        let tag = "z".repeat(netdev::TAG_LEN);
        for kind in ["br", "u0", "u1", "d", "n", "c"] {
            let l = link_name(&tag, kind);
            assert!(l.len() < libc::IFNAMSIZ, "{l}");
        }
        assert_ne!(pair_names("d").0, pair_names("d").0);
        assert!(format!("{TABLE_PREFIX}{tag}").len() < 64);
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

    #[test]
    fn publish_is_a_commented_dnat_in_the_runs_output_chain() {
        let p = Publish {
            table: "isobench_kabcd1234".into(),
            host: "10.215.3.1:40001".parse().unwrap(),
            to: "10.215.3.7:6379".parse().unwrap(),
            handle: Arc::default(),
        };
        let a = p.rule_args("r1").join(" ");
        assert_eq!(
            a,
            "--echo --handle add rule ip isobench_kabcd1234 output ip daddr 10.215.3.1 tcp dport 40001 dnat to 10.215.3.7:6379 comment \"isobench run r1\""
        );
        // Never added: nothing to remove, no nft call.
        assert!(p.remove().is_ok());
    }

    #[test]
    fn parses_nft_table_listing() {
        let l = "table ip isobench_kabc { # handle 7\n\tcomment \"isobench run r-1\"\n\
                 \tchain postrouting { # handle 1\n\t}\n}\n";
        assert_eq!(
            parse_table_listing(l),
            Some((7, Some("isobench run r-1".to_string())))
        );
        assert_eq!(
            parse_table_listing("table ip x { # handle 3\n}\n"),
            Some((3, None))
        );
        assert_eq!(parse_table_listing("table ip x {\n}\n"), None);
    }
}

/// Privileged: these create real devices and tables (root only), and check that nothing of
/// anyone else's is touched and nothing of theirs is left.
#[cfg(test)]
mod privileged_tests {
    use super::*;
    use crate::state::ledger::StateDir;

    fn privileged(test: &str) -> bool {
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

    fn sh(cmd: &str, args: &[&str]) -> (bool, String) {
        let o = Command::new(cmd).args(args).output().unwrap();
        (
            o.status.success(),
            String::from_utf8_lossy(&o.stdout).into_owned(),
        )
    }

    /// What must be the same after: every device and table that existed before still exists,
    /// none carries one of `ids`' marks, and the host-wide forwarding knobs are unchanged.
    #[derive(Debug, PartialEq)]
    struct Census {
        links: BTreeSet<String>,
        tables: BTreeSet<String>,
        ip_forward: String,
        all_forwarding: String,
        default_forwarding: String,
    }

    fn census() -> Census {
        let links = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        let tables = sh("nft", &["list", "tables"])
            .1
            .lines()
            .map(String::from)
            .collect();
        let rd = |p: &str| std::fs::read_to_string(p).unwrap();
        Census {
            links,
            tables,
            ip_forward: rd("/proc/sys/net/ipv4/ip_forward"),
            all_forwarding: rd("/proc/sys/net/ipv4/conf/all/forwarding"),
            default_forwarding: rd("/proc/sys/net/ipv4/conf/default/forwarding"),
        }
    }

    /// These tests share the host's devices and tables (and the census): one at a time.
    static SERIAL: Mutex<()> = Mutex::new(());

    /// `after` kept everything of `before` (other tests may add their own meanwhile; isobench
    /// devices and tables of concurrent runs on this host may come and go, so those are left
    /// out here: the taken-names test checks someone else's isb* devices explicitly), the
    /// knobs are the same, and nothing marked by `ids` is left.
    fn assert_clean(before: &Census, ids: &[&str]) {
        let after = census();
        for l in before.links.iter().filter(|l| !l.starts_with("isb")) {
            assert!(after.links.contains(l), "device {l} disappeared");
        }
        for t in before.tables.iter().filter(|t| !t.contains("isobench")) {
            assert!(after.tables.contains(t), "table {t} disappeared");
        }
        assert_eq!(after.ip_forward, before.ip_forward, "ip_forward changed");
        assert_eq!(after.all_forwarding, before.all_forwarding);
        assert_eq!(after.default_forwarding, before.default_forwarding);
        for l in &after.links {
            let a = netdev::alias_of(l).unwrap_or_default();
            assert!(
                !ids.iter().any(|id| a == netdev::alias(id)),
                "device {l} of {a} left behind"
            );
        }
        let rules = sh("nft", &["list", "ruleset"]).1;
        for id in ids {
            assert!(!rules.contains(&table_comment(id)), "{rules}");
        }
    }

    fn forwarding(dev: &str) -> String {
        std::fs::read_to_string(format!("/proc/sys/net/ipv4/conf/{dev}/forwarding"))
            .unwrap()
            .trim()
            .to_string()
    }

    fn run_id(name: &str) -> String {
        format!("{name}-{}-{}", std::process::id(), netdev::random_tag())
    }

    /// Two NAT runs at once (two run ids, one state directory, like two harness processes):
    /// different blocks, names and tables; forwarding per device only; all gone after.
    #[test]
    fn two_nat_runs_get_different_blocks_and_names() {
        if !privileged("two_nat_runs_get_different_blocks_and_names") {
            return;
        }
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = census();
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let (ida, idb) = (run_id("net-a"), run_id("net-b"));
        let (sa, sb) = (sd.begin_run(&ida).unwrap(), sd.begin_run(&idb).unwrap());
        // The run id is the state's (unique, made by begin_run), as in a real run.
        let (mut a, mut b) = (RunNet::new(&sa.id), RunNet::new(&sb.id));
        let ra = a.plan_nat(1, &sa);
        let rb = b.plan_nat(1, &sb);
        let names = (a.nat_names(), b.nat_names());
        let da = a.plan_direct(1, &sa).map(|n| n.host_cidr);
        let db = b.plan_direct(1, &sb).map(|n| n.host_cidr);
        let reservations = std::fs::read_dir(d.path().join(subnet::NET_DIR))
            .unwrap()
            .count();
        let fwd = names
            .0
            .as_ref()
            .map(|(br, _, _)| forwarding(br))
            .unwrap_or_default();
        let ledger_a = sa.resources();
        let (fa, fb) = (a.finish(&sa), b.finish(&sb));
        let (_, nat_a) = ra.unwrap();
        let (_, nat_b) = rb.unwrap();
        fa.unwrap();
        fb.unwrap();
        let ((bra, ta, na), (brb, tb, nb)) = (names.0.unwrap(), names.1.unwrap());
        assert_ne!(bra, brb);
        assert_ne!(ta, tb);
        assert_ne!(na, nb, "same bridge subnet");
        assert_ne!(nat_a, nat_b, "same peer address");
        assert_ne!(da.unwrap(), db.unwrap(), "same direct block");
        // Bridge + uplink + direct /24 for each run, plus the lock.
        assert_eq!(reservations, 7);
        assert_eq!(fwd, "1", "forwarding on the run's bridge");
        assert!(ledger_a.contains(&link(&bra)), "{ledger_a:?}");
        assert!(ledger_a.contains(&Resource::NftTable {
            family: "ip".into(),
            name: ta
        }));
        assert!(sa.resources().is_empty(), "{:?}", sa.resources());
        assert!(sb.resources().is_empty(), "{:?}", sb.resources());
        // Released: only the lock is left.
        assert_eq!(
            std::fs::read_dir(d.path().join(subnet::NET_DIR))
                .unwrap()
                .count(),
            1
        );
        assert_clean(&before, &[&ida, &idb]);
    }

    /// A device and a table of the names the run draws first already exist (someone else's):
    /// neither adopted, nor recorded, nor deleted; the run moves on to other names.
    #[test]
    fn taken_names_are_skipped_and_left_alone() {
        if !privileged("taken_names_are_skipped_and_left_alone") {
            return;
        }
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let before = census();
        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let id = run_id("net-clash");
        let st = sd.begin_run(&id).unwrap();
        let t = netdev::random_tag();
        let clash_tag = format!("{}q", &t[..7]);
        let taken_br = link_name(&clash_tag, "br");
        let taken_d = link_name(&clash_tag, "d");
        let taken_table = format!("{TABLE_PREFIX}{clash_tag}");
        let (ok, _) = sh("ip", &["link", "add", "name", &taken_br, "type", "bridge"]);
        assert!(ok);
        let (ok2, _) = sh("ip", &["link", "add", "name", &taken_d, "type", "bridge"]);
        let (ok3, _) = sh("nft", &["add", "table", "ip", &taken_table]);
        let mut net = RunNet::new(&st.id);
        // Draws: bridge (taken), bridge, uplink, table (taken), table; then the launch pair
        // (taken host end), the launch pair again.
        netdev::force_next_tags(&[&clash_tag, "okbr0001", "okup0001", &clash_tag, "oktb0001"]);
        let nat = net.plan_nat(1, &st).map(|_| net.nat_names());
        netdev::force_next_tags(&[&clash_tag, "okln0001"]);
        let launch = net.plan_direct(1, &st);
        let created = launch.as_ref().map(|l| l.create_host_side(&st));
        let names = launch.as_ref().map(|l| (l.host_if(), l.resources()));
        let torn = launch.as_ref().map(LaunchNet::teardown);
        let still = (
            netdev::alias_of(&taken_br).is_some(),
            netdev::alias_of(&taken_d).is_some(),
            sh("nft", &["list", "table", "ip", &taken_table]).0,
        );
        let ledger = st.resources();
        let fin = net.finish(&st);
        sh("ip", &["link", "del", "dev", &taken_br]);
        sh("ip", &["link", "del", "dev", &taken_d]);
        sh("nft", &["delete", "table", "ip", &taken_table]);
        assert!(ok2 && ok3);
        let (br, table, _) = nat.unwrap().unwrap();
        assert_eq!(br, link_name("okbr0001", "br"));
        assert_eq!(table, format!("{TABLE_PREFIX}oktb0001"));
        created.unwrap().unwrap();
        let (host_if, res) = names.unwrap();
        assert_eq!(host_if, link_name("okln0001", "d"));
        assert_eq!(res, vec![link(&host_if), link(&link_name("okln0001", "c"))]);
        torn.unwrap().unwrap();
        assert_eq!(
            still,
            (true, true, true),
            "someone else's device or table went"
        );
        for r in &ledger {
            let s = format!("{r:?}");
            assert!(!s.contains(&clash_tag), "recorded {s}");
        }
        fin.unwrap();
        assert_clean(&before, &[&id]);
    }

    /// Teardown refuses a device of a recorded name that does not carry the run's alias.
    #[test]
    fn unmarked_devices_are_never_deleted() {
        if !privileged("unmarked_devices_are_never_deleted") {
            return;
        }
        let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
        let name = link_name(&netdev::random_tag(), "x");
        assert!(sh("ip", &["link", "add", "name", &name, "type", "bridge"]).0);
        let r = netdev::delete_owned(&name, "some-run");
        let marked_other =
            netdev::set_alias(&name, "other-run").map(|()| netdev::delete_owned(&name, "some-run"));
        let exists = netdev::alias_of(&name).is_some();
        let table = format!("{TABLE_PREFIX}{}", netdev::random_tag());
        sh("nft", &["add", "table", "ip", &table]);
        let t = delete_owned_table("ip", &table, "some-run");
        let t_exists = sh("nft", &["list", "table", "ip", &table]).0;
        sh("ip", &["link", "del", "dev", &name]);
        sh("nft", &["delete", "table", "ip", &table]);
        assert!(r.unwrap_err().contains("not this run's"));
        assert!(marked_other.unwrap().is_err());
        assert!(exists);
        assert!(t.is_err() && t_exists);
        assert_eq!(netdev::delete_owned(&name, "some-run"), Ok(false));
    }
}

/// Privileged: the NAT path carries traffic with `ip_forward` off, run entirely inside a
/// throw-away network namespace (and a mount namespace with its own /sys), so switching
/// ip_forward off there changes nothing on the host.
#[cfg(test)]
mod forwarding_tests {
    use super::*;
    use crate::state::ledger::StateDir;
    use std::io::{Read, Write};

    #[test]
    fn nat_carries_traffic_with_ip_forward_off() {
        let test = "nat_carries_traffic_with_ip_forward_off";
        if !nix::unistd::geteuid().is_root() {
            println!("SKIPPED {test}: needs root");
            assert!(
                std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
                "{test} needs root and ISOBENCH_REQUIRE_PRIVILEGED=1 is set"
            );
            return;
        }
        let host_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        std::thread::spawn(in_private_namespaces).join().unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            host_forward
        );
    }

    fn in_private_namespaces() {
        use nix::mount::{mount, MsFlags};
        // This thread only: a network namespace of its own, and a mount namespace (private, so
        // nothing propagates) with a sysfs that shows that network namespace's devices.
        nix::sched::unshare(CloneFlags::CLONE_NEWNET | CloneFlags::CLONE_NEWNS).unwrap();
        mount(
            None::<&str>,
            "/",
            None::<&str>,
            MsFlags::MS_REC | MsFlags::MS_PRIVATE,
            None::<&str>,
        )
        .unwrap();
        mount(
            Some("sysfs"),
            "/sys",
            Some("sysfs"),
            MsFlags::empty(),
            None::<&str>,
        )
        .unwrap();
        // /proc/sys/net is the writing thread's network namespace's: this one's only.
        std::fs::write("/proc/sys/net/ipv4/ip_forward", "0").unwrap();
        assert_eq!(
            std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
            "0\n"
        );
        ip_batch(None, "link set lo up\n").unwrap();

        let d = tempfile::tempdir().unwrap();
        let sd = StateDir::open(d.path()).unwrap();
        let id = format!("fwd-off-{}", std::process::id());
        let st = sd.begin_run(&id).unwrap();
        let mut net = RunNet::new(&st.id);
        // The "container": a process in a network namespace of its own.
        let mut child = Command::new("unshare")
            .args(["-n", "sleep", "30"])
            .spawn()
            .unwrap();
        let result = (|| -> Result<u64, String> {
            let (launch, peer) = net.plan_nat(1, &st).map_err(|e| e.to_string())?;
            launch.create_host_side(&st).map_err(|e| e.to_string())?;
            // Let `unshare` make its namespace before the device moves there.
            std::thread::sleep(std::time::Duration::from_millis(300));
            let pid = Pid::from_raw(i32::try_from(child.id()).unwrap());
            let own = std::fs::read_link("/proc/thread-self/ns/net").map_err(|e| e.to_string())?;
            let theirs =
                std::fs::read_link(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
            if own == theirs {
                return Err("the container process has no network namespace of its own yet".into());
            }
            launch
                .configure_container_side(pid)
                .map_err(|e| e.to_string())?;
            let ns =
                std::fs::File::open(format!("/proc/{pid}/ns/net")).map_err(|e| e.to_string())?;
            let sent = in_netns(ns.as_raw_fd(), move || -> std::io::Result<u64> {
                let mut s =
                    std::net::TcpStream::connect_timeout(&peer, std::time::Duration::from_secs(5))?;
                s.set_read_timeout(Some(std::time::Duration::from_secs(5)))?;
                s.write_all(&[crate::netpeer::MODE_STREAM])?;
                s.write_all(&[7u8; 100_000])?;
                s.shutdown(std::net::Shutdown::Write)?;
                let mut n = [0u8; 8];
                s.read_exact(&mut n)?;
                Ok(u64::from_le_bytes(n))
            })
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("connecting to the peer through NAT: {e}"))?;
            drop(ns);
            let _ = child.kill();
            let _ = child.wait();
            launch.teardown().map_err(|e| e.to_string())?;
            Ok(sent)
        })();
        let _ = child.kill();
        let _ = child.wait();
        let forward_during = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();
        let fin = net.finish(&st);
        assert_eq!(result, Ok(100_000));
        fin.unwrap();
        assert_eq!(forward_during, "0\n", "ip_forward was switched on");
        assert!(st.resources().is_empty(), "{:?}", st.resources());
        let left: Vec<String> = std::fs::read_dir("/sys/class/net")
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(LINK_PREFIX))
            .collect();
        assert!(left.is_empty(), "{left:?}");
    }
}
