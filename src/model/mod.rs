//! The data layer: tiers, budgets, availability, scenarios (with their compare spec) and the
//! result files. Pure data and its validation; imports nothing above it (only the protocol
//! vocabulary, statistics and the leaf host utilities `host::fs` / `host::proc`).

pub mod availability;
pub mod budget;
pub mod facts;
pub mod results;
pub mod scenario;
pub mod tier;
