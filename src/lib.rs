//! isobench: one identical workload under each tier of the virtualization spectrum, measured.

pub mod ab;
pub mod backend;
pub mod bounds;
pub mod cgroup;
pub mod cleanup;
pub mod cli;
pub mod compare;
pub mod density;
pub mod doctor;
pub mod exit_codes;
pub mod history;
pub mod host;
pub mod interrupt;
pub mod netpeer;
pub mod outdir;
pub mod output;
pub mod report;
pub mod results;
pub mod rootfs;
pub mod runner;
pub mod scenario;
pub mod state;
pub mod stats;
pub mod tier;

// The agent's protocol lives in its own crate (crates/protocol), shared with the agent; the host
// reaches it under the paths it always used.
pub use isobench_protocol as protocol;
pub use isobench_protocol::workload;
