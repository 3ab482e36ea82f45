//! Measurement: the schedule of a run (plan).

pub mod plan;
