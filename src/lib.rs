//! isobench: one identical workload under each tier of the virtualization spectrum, measured.

pub mod ab;
pub mod agent;
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
pub mod protocol;
pub mod report;
pub mod state;
pub mod stats;
pub mod workload;
