//! Measurement: the one launch timer ([`launch`]).

pub mod launch;
