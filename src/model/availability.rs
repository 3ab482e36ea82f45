//! Whether a tier can run on this host, and if not, why and how to fix it.

use serde::{Deserialize, Serialize};

/// Whether a tier can run on this host, and if not, why and how to fix it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum Availability {
    Available {
        /// What it will run as (e.g. "QEMU 7.2 microvm, TCG (emulated)").
        detail: String,
    },
    Unavailable {
        reason: String,
        fix: String,
    },
}

impl Availability {
    pub fn is_available(&self) -> bool {
        matches!(self, Availability::Available { .. })
    }
    pub fn unavailable(reason: impl Into<String>, fix: impl Into<String>) -> Self {
        Availability::Unavailable {
            reason: reason.into(),
            fix: fix.into(),
        }
    }
}
