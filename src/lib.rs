//! isobench: one identical workload under each tier of the virtualization spectrum, measured.

pub mod ab;
pub mod agent;
pub mod backend;
pub mod cgroup;
pub mod cleanup;
pub mod cli;
pub mod compare;
pub mod density;
pub mod doctor;
pub mod exit_codes;
pub mod history;
pub mod host;
pub mod netpeer;
pub mod output;
pub mod protocol;
pub mod report;
pub mod results;
pub mod rootfs;
pub mod runner;
pub mod scenario;
pub mod state;
pub mod stats;
pub mod tier;
pub mod workload;
