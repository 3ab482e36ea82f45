//! isobench: one identical workload under each tier of the virtualization spectrum, measured.

pub mod ab;
pub mod backend;
pub mod cli;
pub mod commands;
pub mod compare;
pub mod exit_codes;
pub mod history;
pub mod host;
pub mod interrupt;
pub mod measure;
pub mod model;
pub mod netpeer;
pub mod outdir;
pub mod output;
pub mod report;
pub mod state;
pub mod stats;

// The agent's protocol lives in its own crate (crates/protocol), shared with the agent; the host
// reaches it under the paths it always used.
pub use isobench_protocol as protocol;
pub use isobench_protocol::workload;
