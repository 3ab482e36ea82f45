//! Workload definitions and their parameters, shared by the scenario file, the host and the agent.
//! The implementations live in the agent (`src/agent/workloads/`); this module only says what to
//! run.
//!
//! Every workload is bounded twice: by size (a fixed amount of work, the same in every tier) and
//! by time (`time_budget_ms`), so a slow tier (an emulated VM) does less work instead of running
//! for an hour. The agent reports how much it did next to how fast it did it.

use serde::{Deserialize, Serialize};

/// One workload with its parameters. Parameters have defaults so a scenario can say just
/// `kind = "cpu"`; an unknown parameter is an error, so a typo in a scenario file is caught.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", from = "WorkloadRepr")]
pub enum Workload {
    /// Start, report, exit: startup cost only.
    #[default]
    Noop,
    /// Deterministic integer hashing, on one thread and on every allowed CPU.
    Cpu(CpuParams),
    /// STREAM-style copy/triad bandwidth and dependent pointer-chase latency.
    Memory(MemoryParams),
    /// Sequential and random I/O, metadata ops and fsync latency in one directory.
    Fs(FsParams),
    /// TCP stream throughput and request/response latency against the host's `NetPeer`.
    Net(NetParams),
    /// Signal ready, then sit idle until stdin closes (or `max_s`): one instance of a density
    /// measurement. Not listed in scenarios directly; `density` uses it.
    Idle(IdleParams),
    /// Host-side: what one more idle sandbox of the tier costs the host's memory. The runner
    /// starts each of `counts` idle agents at once, reads their memory, and fits the slope.
    Density(DensityParams),
    /// Host-side application: Debian's `redis-server` inside the tier (started by the agent),
    /// `redis-benchmark` on the host against it over the tier's network path (issue 12).
    Redis(RedisParams),
    /// Host-side application: Debian's `mariadbd` inside the tier (started by the agent, its
    /// data directory on the tier's data path), `sysbench oltp_read_only` on the host against
    /// it over the tier's network path (issue 12).
    Mysql(MysqlParams),
}

impl Workload {
    /// The name results are grouped by: the kind, plus the data path when it is not the default
    /// (`fs_volume`, `net_nat`), so each path is reported separately.
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Noop => "noop",
            Workload::Cpu(_) => "cpu",
            Workload::Memory(_) => "memory",
            Workload::Fs(p) => match p.path {
                DataPath::Rootfs => "fs",
                DataPath::Volume => "fs_volume",
            },
            Workload::Net(p) => match p.path {
                NetPath::Direct => "net",
                NetPath::Nat => "net_nat",
            },
            Workload::Idle(_) => "idle",
            Workload::Density(_) => "density",
            Workload::Redis(p) => match p.path {
                NetPath::Direct => "redis",
                NetPath::Nat => "redis_nat",
            },
            Workload::Mysql(p) => match p.data {
                DataPath::Rootfs => "mysql",
                DataPath::Volume => "mysql_volume",
            },
        }
    }
}

/// What a tier must carry for an application server workload (redis, mysql).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServerApp {
    /// "redis", "mysql".
    pub name: &'static str,
    /// Host programs copied with their ldd closure into the tier (e.g. [server_bin]); bare
    /// runs them in place.
    pub programs: Vec<String>,
    /// The port the server listens on inside the tier (a tier with a network namespace of its
    /// own uses it; a tier on the host's network picks a free one with `with_endpoint`).
    pub port: u16,
}

/// The port Redis listens on by default.
pub const REDIS_PORT: u16 = 6379;
/// The port MariaDB listens on by default.
pub const MYSQL_PORT: u16 = 3306;

impl Workload {
    /// `Some` for workloads that run a server inside the tier and are driven from the host.
    pub fn server_app(&self) -> Option<ServerApp> {
        match self {
            Workload::Redis(p) => Some(ServerApp {
                name: "redis",
                programs: vec![p.server_bin.clone()],
                port: REDIS_PORT,
            }),
            Workload::Mysql(p) => Some(ServerApp {
                name: "mysql",
                programs: vec![p.server_bin.clone()],
                port: MYSQL_PORT,
            }),
            _ => None,
        }
    }

    /// The same workload, told to bind `bind`:`port` (the tier's address as the tier sees it).
    pub fn with_endpoint(&self, bind: &str, port: u16) -> Workload {
        match self {
            Workload::Redis(p) => Workload::Redis(RedisParams {
                bind: bind.to_string(),
                port,
                ..p.clone()
            }),
            Workload::Mysql(p) => Workload::Mysql(MysqlParams {
                bind: bind.to_string(),
                port,
                ..p.clone()
            }),
            w => w.clone(),
        }
    }

    /// The network path a workload asks of its tier (`direct` for workloads without one).
    pub fn net_path(&self) -> NetPath {
        match self {
            Workload::Net(p) => p.path,
            Workload::Redis(p) => p.path,
            _ => NetPath::Direct,
        }
    }
}

/// Where the fs workload writes, as the tier sees it. `bare` and `chroot` use a host directory
/// for both; `container` has its overlay rootfs (as Docker's image layers) and a bind-mounted
/// volume; the VM tiers a virtio-blk disk backed by an ext4 image file on the same host
/// filesystem.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DataPath {
    #[default]
    Rootfs,
    Volume,
}

/// How the agent reaches the host's peer. `direct`: loopback for bare/chroot, a veth pair for
/// the container, a tap device with virtio-net for VMs. `nat`: the path Docker uses by default,
/// a bridge with NAT (the same as `direct` where a tier has no NAT path: bare, chroot, VMs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NetPath {
    #[default]
    Direct,
    Nat,
}

/// `idle`: the agent of one density instance.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IdleParams {
    /// Exit after this long even if stdin never closes (bounded: no instance outlives a run).
    pub max_s: u64,
}

impl Default for IdleParams {
    fn default() -> Self {
        IdleParams { max_s: 300 }
    }
}

/// `density`: memory per idle instance of a tier, as a slope. For each count in `counts` the
/// host starts that many idle instances at once, waits `settle_ms`, reads the memory of their
/// host processes (PSS) and cgroups, and stops them; the per-instance cost is the slope of the
/// least-squares line memory = a + b * count (docs/results.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DensityParams {
    /// Instance counts measured, each from a fresh start (at least two distinct counts; 0 is
    /// allowed and costs nothing to measure).
    pub counts: Vec<u32>,
    /// Wait after the last instance of a count is ready before reading host memory, ms.
    pub settle_ms: u64,
    /// Before issue 11 density took one count, `instances`. Still parsed so that older
    /// results files load; a scenario that gives it is refused with the replacement.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instances: Option<u32>,
}

impl DensityParams {
    /// The default counts: 0, 1, 2, 4, 8.
    pub const DEFAULT_COUNTS: [u32; 5] = [0, 1, 2, 4, 8];

    /// The largest count (how many instances run at once at most).
    pub fn max_count(&self) -> u32 {
        self.counts.iter().copied().max().unwrap_or(0)
    }

    /// The counts a slope can be fitted to: 2 to `max_len` of them, each at most `max`, at
    /// least two distinct; and not the old `instances` (refused with its replacement).
    pub fn check_counts(&self, max: u32, max_len: usize) -> Result<(), String> {
        let eg = "e.g. counts = [0, 1, 2, 4, 8]";
        if let Some(n) = self.instances {
            return Err(format!(
                "instances = {n}: density is now a slope over several counts; replace it with counts = [0, 1, 2, 4, {}] (any 2 to {max_len} counts, at least two distinct)",
                n.max(8)
            ));
        }
        if self.counts.is_empty() || self.counts.len() > max_len {
            return Err(format!(
                "counts has {} entries: give 2 to {max_len} instance counts, {eg}",
                self.counts.len()
            ));
        }
        if let Some(c) = self.counts.iter().find(|&&c| c > max) {
            return Err(format!(
                "counts entry = {c} is out of bounds: give 0 to {max}"
            ));
        }
        let mut distinct = self.counts.clone();
        distinct.sort_unstable();
        distinct.dedup();
        if distinct.len() < 2 {
            return Err(format!(
                "counts = {:?}: a slope needs at least two distinct counts, {eg}",
                self.counts
            ));
        }
        Ok(())
    }
}

impl Default for DensityParams {
    fn default() -> Self {
        DensityParams {
            counts: Self::DEFAULT_COUNTS.to_vec(),
            settle_ms: 1000,
            instances: None,
        }
    }
}

/// What a workload deserialises through. Serde ignores extra fields after the tag of a unit
/// variant even under `deny_unknown_fields`, so `noop` goes through an empty struct that rejects
/// them; every other variant is the same as in [`Workload`].
#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
enum WorkloadRepr {
    Noop(NoParams),
    Cpu(CpuParams),
    Memory(MemoryParams),
    Fs(FsParams),
    Net(NetParams),
    Idle(IdleParams),
    Density(DensityParams),
    Redis(RedisParams),
    Mysql(MysqlParams),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NoParams {}

impl From<WorkloadRepr> for Workload {
    fn from(r: WorkloadRepr) -> Self {
        match r {
            WorkloadRepr::Noop(NoParams {}) => Workload::Noop,
            WorkloadRepr::Cpu(p) => Workload::Cpu(p),
            WorkloadRepr::Memory(p) => Workload::Memory(p),
            WorkloadRepr::Fs(p) => Workload::Fs(p),
            WorkloadRepr::Net(p) => Workload::Net(p),
            WorkloadRepr::Idle(p) => Workload::Idle(p),
            WorkloadRepr::Density(p) => Workload::Density(p),
            WorkloadRepr::Redis(p) => Workload::Redis(p),
            WorkloadRepr::Mysql(p) => Workload::Mysql(p),
        }
    }
}

/// `redis`: the study's Redis run (Felter et al. 2015, Fig. 8/9). The host starts the tier with
/// the agent serving `redis-server` (this struct is also the agent's task: the host fills in
/// `bind`, `port` and `server_bin` as the tier sees them), then runs `redis-benchmark` on a CPU
/// outside the tier's budget for every connection count, each point bounded by `requests` and
/// by `point_timeout_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RedisParams {
    /// Client connections, one benchmark point each (the study: 1 to 120).
    pub connections: Vec<u32>,
    /// Requests per operation and point (`redis-benchmark -n`).
    pub requests: u64,
    /// Value size, bytes (`-d`; the study: 50).
    pub value_bytes: u32,
    /// Random key space (`-r`; the study: 100,000 keys).
    pub keyspace: u64,
    /// Wall-clock cap of one point (both operations); the benchmark is killed then.
    pub point_timeout_s: u64,
    /// Longest wait from the tier's start to the server accepting a connection.
    pub start_timeout_s: u64,
    /// Which network path of the tier (`nat`: through the tier's NAT and a published port,
    /// as `docker run -p`; the same as `direct` where a tier has no NAT path).
    pub path: NetPath,
    /// The server binary on the host (copied with its libraries into every rootfs).
    pub server_bin: String,
    /// The benchmark client on the host.
    pub client_bin: String,
    /// Assigned by the host: the address the server binds, as the tier sees it.
    pub bind: String,
    /// Assigned by the host: the server's port.
    pub port: u16,
    /// The agent stops the server after this long even if stdin never closes.
    pub max_s: u64,
}

impl Default for RedisParams {
    fn default() -> Self {
        RedisParams {
            connections: vec![1, 4, 10, 30, 50, 100, 120],
            requests: 100_000,
            value_bytes: 50,
            keyspace: 100_000,
            point_timeout_s: 60,
            start_timeout_s: 20,
            path: NetPath::Direct,
            server_bin: "/usr/bin/redis-server".into(),
            client_bin: "/usr/bin/redis-benchmark".into(),
            bind: String::new(),
            port: 0,
            max_s: 3_600,
        }
    }
}

/// A parameter within `lo..=hi`, or the one-line message naming it.
fn bounded(name: &str, v: u64, lo: u64, hi: u64) -> Result<(), String> {
    if v < lo || v > hi {
        Err(format!("{name} = {v} is out of bounds: give {lo} to {hi}"))
    } else {
        Ok(())
    }
}

/// A sweep of client counts (Redis connections, MySQL threads): 1 to 64 entries, each 1 to
/// `max`; the message names the field and gives `example`.
fn check_sweep(
    name: &str,
    values: &[u32],
    max: u32,
    what: &str,
    unit: &str,
    example: &str,
) -> Result<(), String> {
    if values.is_empty() || values.len() > 64 {
        return Err(format!(
            "{name} has {} entries: give 1 to 64 {what}, e.g. {name} = {example}",
            values.len()
        ));
    }
    if let Some(v) = values.iter().find(|&&v| v == 0 || v > max) {
        return Err(format!(
            "{name} entry = {v} is out of bounds: give 1 to {max} {unit}"
        ));
    }
    Ok(())
}

/// What installs the Redis binaries on Debian.
pub const REDIS_INSTALL: &str = "apt-get install redis-server redis-tools";

impl RedisParams {
    /// Bounds of the parameters (no I/O): a one-line message naming the field.
    pub fn check(&self) -> Result<(), String> {
        check_sweep(
            "connections",
            &self.connections,
            10_000,
            "connection counts",
            "client connections",
            "[1, 4, 10, 30, 50, 100, 120]",
        )?;
        bounded("requests", self.requests, 1, 100_000_000)?;
        bounded("value_bytes", u64::from(self.value_bytes), 1, 1 << 20)?;
        bounded("keyspace", self.keyspace, 1, 1_000_000_000)?;
        bounded("point_timeout_s", self.point_timeout_s, 1, 3_600)?;
        bounded("start_timeout_s", self.start_timeout_s, 1, 600)?;
        bounded("max_s", self.max_s, 1, 86_400)?;
        Ok(())
    }

    /// The host's binaries exist and are executable files: else a one-line error with the
    /// command that installs them.
    pub fn check_binaries(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        for (what, p) in [
            ("server_bin", &self.server_bin),
            ("client_bin", &self.client_bin),
        ] {
            let ok = std::fs::metadata(p)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !ok {
                return Err(format!(
                    "redis: {what} = {p} is not an executable file: install it with `{REDIS_INSTALL}` (or point {what} at one)"
                ));
            }
        }
        Ok(())
    }
}

/// `mysql`: the study's MySQL run (Felter et al. 2015, Fig. 10/11), scaled to a small machine.
/// The host starts the tier with the agent serving `mariadbd` (this struct is also the agent's
/// task: the host fills in `bind`, `port` and `dir` as the tier sees them); the agent makes a
/// fresh data directory under `dir` before it signals ready (off the server's start clock), the
/// host creates the sysbench table (`sysbench oltp_read_only prepare`, off the clock too), then
/// runs `sysbench oltp_read_only run` on CPUs outside the tier's budget for every thread count,
/// each point bounded by `point_s`, `point_events` and `point_timeout_s`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MysqlParams {
    /// Client threads, one benchmark point each (the study: 10 to 290).
    pub threads: Vec<u32>,
    /// Rows of the one sysbench table (the study: 2,000,000).
    pub table_rows: u64,
    /// Length of one point (`sysbench --time`), seconds.
    pub point_s: u64,
    /// Transaction cap of one point (`sysbench --events`).
    pub point_events: u64,
    /// Wall-clock cap of one point; sysbench is killed then and the point is an error.
    pub point_timeout_s: u64,
    /// Wall-clock cap of creating the table (`sysbench prepare`).
    pub prepare_timeout_s: u64,
    /// Longest wait for the server to accept a connection (also caps the data directory's
    /// initialization inside the tier).
    pub start_timeout_s: u64,
    /// InnoDB buffer pool, MiB (the table must fit: the study's run is read-only from memory).
    pub buffer_pool_mib: u64,
    /// Which data path of the tier holds the data directory: `rootfs` (the container's overlay,
    /// the study's "AUFS" row) or `volume` (a bind-mounted host directory, its "volume" row).
    pub data: DataPath,
    /// The server binary on the host (copied with its libraries into every rootfs).
    pub server_bin: String,
    /// The benchmark client on the host.
    pub client_bin: String,
    /// Assigned by the host: the address the server binds, as the tier sees it.
    pub bind: String,
    /// Assigned by the host: the server's port.
    pub port: u16,
    /// Assigned by the host: the tier's data path; the agent makes its data directory in it.
    pub dir: String,
    /// The agent stops the server after this long even if stdin never closes.
    pub max_s: u64,
}

impl Default for MysqlParams {
    fn default() -> Self {
        MysqlParams {
            threads: vec![1, 2, 4, 8, 16, 32],
            table_rows: 100_000,
            point_s: 10,
            point_events: 1_000_000,
            point_timeout_s: 60,
            prepare_timeout_s: 300,
            start_timeout_s: 60,
            buffer_pool_mib: 128,
            data: DataPath::Rootfs,
            server_bin: "/usr/sbin/mariadbd".into(),
            client_bin: "/usr/bin/sysbench".into(),
            bind: String::new(),
            port: 0,
            dir: String::new(),
            max_s: 3_600,
        }
    }
}

/// What installs the MySQL (MariaDB) server and the benchmark on Debian.
pub const MYSQL_INSTALL: &str = "apt-get install mariadb-server sysbench";

impl MysqlParams {
    /// Bounds of the parameters (no I/O): a one-line message naming the field.
    pub fn check(&self) -> Result<(), String> {
        check_sweep(
            "threads",
            &self.threads,
            1_000,
            "thread counts",
            "client threads",
            "[1, 2, 4, 8, 16, 32]",
        )?;
        bounded("table_rows", self.table_rows, 1, 100_000_000)?;
        bounded("point_s", self.point_s, 1, 3_600)?;
        bounded("point_events", self.point_events, 1, 100_000_000)?;
        bounded("point_timeout_s", self.point_timeout_s, 1, 7_200)?;
        if self.point_timeout_s <= self.point_s {
            return Err(format!(
                "point_timeout_s = {} must be above point_s = {}: it is the wall-clock kill of one point",
                self.point_timeout_s, self.point_s
            ));
        }
        bounded("prepare_timeout_s", self.prepare_timeout_s, 1, 7_200)?;
        bounded("start_timeout_s", self.start_timeout_s, 1, 600)?;
        bounded("buffer_pool_mib", self.buffer_pool_mib, 8, 65_536)?;
        bounded("max_s", self.max_s, 1, 86_400)?;
        Ok(())
    }

    /// The host's binaries exist and are executable files: else a one-line error with the
    /// command that installs them.
    pub fn check_binaries(&self) -> Result<(), String> {
        use std::os::unix::fs::PermissionsExt;
        for (what, p) in [
            ("server_bin", &self.server_bin),
            ("client_bin", &self.client_bin),
        ] {
            let ok = std::fs::metadata(p)
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
            if !ok {
                return Err(format!(
                    "mysql: {what} = {p} is not an executable file: install it with `{MYSQL_INSTALL}` (or point {what} at one)"
                ));
            }
        }
        Ok(())
    }
}

/// `cpu`: rounds of a 256-bit integer mixing function (one op = one round).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CpuParams {
    /// Rounds each thread runs (the same on one thread and on each of the N threads).
    pub ops_per_thread: u64,
    /// Threads for the multi-threaded phase; 0 = one per CPU the agent may run on.
    pub threads: usize,
    /// Cap on each phase (single, multi).
    pub time_budget_ms: u64,
}

impl Default for CpuParams {
    fn default() -> Self {
        CpuParams {
            ops_per_thread: 500_000_000,
            threads: 0,
            time_budget_ms: 10_000,
        }
    }
}

/// `memory`: STREAM copy/triad over three f64 arrays and a random pointer chase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MemoryParams {
    /// Size of each of the three STREAM arrays, MiB (keep it far above the LLC).
    pub array_mib: u64,
    /// STREAM repetitions; the best (fastest) one is reported, as STREAM does.
    pub repeats: u32,
    /// Pointer-chase buffer, MiB.
    pub chase_mib: u64,
    /// Dependent loads in the pointer chase.
    pub chase_accesses: u64,
    /// Cap on the bandwidth repetitions and, separately, on the chase.
    pub time_budget_ms: u64,
}

impl Default for MemoryParams {
    fn default() -> Self {
        MemoryParams {
            array_mib: 64,
            repeats: 5,
            chase_mib: 256,
            chase_accesses: 10_000_000,
            time_budget_ms: 10_000,
        }
    }
}

/// `fs`: sequential write/read, random 4 KiB read/write, metadata ops, fsync latency.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FsParams {
    /// Directory to work in (the host points it at the tier's data path). The agent creates one
    /// private subdirectory there and removes it, with everything in it, when done.
    pub dir: String,
    /// Which data path of the tier (the host sets `dir` from it).
    pub path: DataPath,
    /// Size of the sequential file, MiB.
    pub file_mib: u64,
    /// Block size for sequential I/O, KiB (a multiple of 4).
    pub seq_block_kib: u64,
    /// Random 4 KiB reads, and separately random 4 KiB writes.
    pub rand_ops: u64,
    /// Files created, stat'ed and unlinked in the metadata phase.
    pub meta_files: u64,
    /// Small write+fsync pairs in the fsync-latency phase.
    pub fsync_ops: u64,
    /// Try O_DIRECT; without it (or where it is refused) reads are made cold with
    /// posix_fadvise(DONTNEED) after fsync.
    pub direct: bool,
    /// Cap on each phase.
    pub time_budget_ms: u64,
}

impl Default for FsParams {
    fn default() -> Self {
        FsParams {
            dir: "/tmp".into(),
            path: DataPath::Rootfs,
            file_mib: 256,
            seq_block_kib: 1024,
            rand_ops: 20_000,
            meta_files: 2_000,
            fsync_ops: 200,
            direct: true,
            time_budget_ms: 10_000,
        }
    }
}

/// `net`: the agent is the client of the host's `isobench::netpeer::NetPeer`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetParams {
    /// The peer, `host:port`; filled in by the host for each tier.
    pub peer: String,
    /// Which network path of the tier (the host sets `peer` from it).
    pub path: NetPath,
    /// Length of the stream phase.
    pub stream_duration_ms: u64,
    /// Byte cap of the stream phase, MiB.
    pub stream_max_mib: u64,
    /// Size of each write in the stream phase, KiB.
    pub stream_block_kib: u64,
    /// Request/response transactions.
    pub rr_transactions: u64,
    pub rr_request_bytes: u32,
    pub rr_response_bytes: u32,
    /// Cap on the request/response phase.
    pub time_budget_ms: u64,
    /// Give up connecting after this long.
    pub connect_timeout_ms: u64,
}

impl Default for NetParams {
    fn default() -> Self {
        NetParams {
            peer: String::new(),
            path: NetPath::Direct,
            stream_duration_ms: 3_000,
            stream_max_mib: 16_384,
            stream_block_kib: 128,
            rr_transactions: 20_000,
            rr_request_bytes: 100,
            rr_response_bytes: 200,
            time_budget_ms: 10_000,
            connect_timeout_ms: 5_000,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Deserialize)]
    struct Scenario {
        workload: Workload,
    }

    fn parse(toml_text: &str) -> Result<Workload, String> {
        toml::from_str::<Scenario>(toml_text)
            .map(|s| s.workload)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn kind_alone_gives_defaults() {
        assert_eq!(
            parse("[workload]\nkind = \"cpu\"\n").unwrap(),
            Workload::Cpu(CpuParams::default())
        );
        assert_eq!(
            parse("[workload]\nkind = \"memory\"\n").unwrap(),
            Workload::Memory(MemoryParams::default())
        );
        assert_eq!(
            parse("[workload]\nkind = \"fs\"\n").unwrap(),
            Workload::Fs(FsParams::default())
        );
        assert_eq!(
            parse("[workload]\nkind = \"net\"\n").unwrap(),
            Workload::Net(NetParams::default())
        );
        assert_eq!(
            parse("[workload]\nkind = \"noop\"\n").unwrap(),
            Workload::Noop
        );
    }

    #[test]
    fn given_params_override_defaults() {
        let w = parse("[workload]\nkind = \"fs\"\ndir = \"/data\"\nfile_mib = 8\n").unwrap();
        assert_eq!(
            w,
            Workload::Fs(FsParams {
                dir: "/data".into(),
                file_mib: 8,
                ..FsParams::default()
            })
        );
        assert_eq!(w.name(), "fs");
    }

    #[test]
    fn unknown_field_is_an_error() {
        let e = parse("[workload]\nkind = \"cpu\"\nops_per_thred = 5\n").unwrap_err();
        assert!(e.contains("ops_per_thred"), "{e}");
        assert!(parse("[workload]\nkind = \"noop\"\nfoo = 1\n").is_err());
        assert!(parse("[workload]\nkind = \"gpu\"\n").is_err());
    }

    #[test]
    fn server_app_and_endpoint() {
        let w = Workload::Redis(RedisParams::default());
        let app = w.server_app().unwrap();
        assert_eq!(app.name, "redis");
        assert_eq!(app.programs, ["/usr/bin/redis-server"]);
        assert_eq!(app.port, REDIS_PORT);
        match w.with_endpoint("10.0.0.2", 7000) {
            Workload::Redis(p) => assert_eq!((p.bind.as_str(), p.port), ("10.0.0.2", 7000)),
            o => panic!("{o:?}"),
        }
        assert!(Workload::Noop.server_app().is_none());
        assert_eq!(Workload::Noop.with_endpoint("x", 1), Workload::Noop);
    }

    #[test]
    fn mysql_parses_checks_and_names_its_data_path() {
        let w =
            parse("[workload]\nkind = \"mysql\"\ndata = \"volume\"\nthreads = [1, 4]\n").unwrap();
        assert_eq!(w.name(), "mysql_volume");
        let Workload::Mysql(p) = &w else {
            panic!("{w:?}")
        };
        assert_eq!(p.threads, [1, 4]);
        assert!(p.check().is_ok());
        let app = w.server_app().unwrap();
        assert_eq!((app.name, app.port), ("mysql", 3306));
        assert_eq!(app.programs, ["/usr/sbin/mariadbd"]);
        let Workload::Mysql(q) = w.with_endpoint("10.0.0.2", 3306) else {
            panic!()
        };
        assert_eq!((q.bind.as_str(), q.port), ("10.0.0.2", 3306));
        let zero = MysqlParams {
            threads: vec![1, 0],
            ..MysqlParams::default()
        };
        assert!(zero.check().unwrap_err().contains("threads entry = 0"));
        assert!(parse("[workload]\nkind = \"mysql\"\ndata = \"aufs\"\n").is_err());
        assert!(Workload::Cpu(CpuParams::default()).server_app().is_none());
        let bad = MysqlParams {
            server_bin: "/nonexistent/mariadbd".into(),
            ..MysqlParams::default()
        };
        assert!(bad
            .check_binaries()
            .unwrap_err()
            .contains("apt-get install mariadb-server sysbench"));
    }

    #[test]
    fn json_roundtrip_is_flat() {
        let w = Workload::Net(NetParams {
            peer: "10.0.0.1:7000".into(),
            ..NetParams::default()
        });
        let j = serde_json::to_value(&w).unwrap();
        assert_eq!(j["kind"], "net");
        assert_eq!(j["peer"], "10.0.0.1:7000");
        assert_eq!(serde_json::from_value::<Workload>(j).unwrap(), w);
    }
}
