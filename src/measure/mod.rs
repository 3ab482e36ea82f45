//! Measurement: the runner (rounds, budgets, results after every round) and density.

pub mod density;
pub mod runner;
