//! Workload definitions and their parameters, shared by the scenario file, the host and the agent.
//! The implementations live in the agent (`src/agent/`); this module only says what to run.

use serde::{Deserialize, Serialize};

/// One workload with its parameters. Parameters have defaults so a scenario can say just
/// `kind = "cpu"`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Workload {
    /// Start, report, exit: startup cost only.
    #[default]
    Noop,
}

impl Workload {
    pub fn name(&self) -> &'static str {
        match self {
            Workload::Noop => "noop",
        }
    }
}
