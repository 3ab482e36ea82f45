//! Measurement: the one launch timer (launch), the schedule of a run (plan), the runner
//! (rounds, budgets, results after every round), density and the application workloads (apps).

pub mod apps;
pub mod density;
pub mod launch;
pub mod plan;
pub mod runner;
