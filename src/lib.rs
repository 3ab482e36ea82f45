//! isobench: one identical workload under each tier of the virtualization spectrum, measured.

pub mod agent;
pub mod backend;
pub mod host;
pub mod protocol;
pub mod rootfs;
pub mod state;
pub mod tier;
pub mod workload;
