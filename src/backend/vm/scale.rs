//! How a workload is fitted to a VM tier before it is sent to the guest.
//!
//! - Memory: the guest holds its kernel and the unpacked initramfs in the same RAM the workload
//!   uses, so the STREAM arrays (three at once) and the pointer-chase buffer are shrunk to what
//!   is left rather than letting the guest run out of memory. The settings say so.
//! - Time (emulated only): under TCG every instruction is translated, so the same fixed amount
//!   of work would take minutes. Every phase's `time_budget_ms` (and the net stream's duration)
//!   is capped; the agent then does less work and reports how much next to how fast, so rates
//!   stay comparable while absolute amounts do not.

use crate::workload::Workload;

/// Phase cap under emulation unless `--set phase_budget_ms=` says otherwise.
pub const DEFAULT_EMULATED_PHASE_MS: u64 = 4_000;
/// Below this much guest RAM for the workload, the memory workload means nothing.
pub const MIN_WORKLOAD_MIB: u64 = 16;

/// What a VM tier's launches are fitted to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fit {
    /// Cap on every phase's time budget (emulated tier only).
    pub phase_ms: Option<u64>,
    /// Guest RAM left for the workload's buffers, MiB.
    pub workload_mib: u64,
}

impl Fit {
    /// The policy, as recorded in the tier's settings.
    pub fn describe(&self) -> String {
        let mem = format!(
            "memory workload fitted to {} MiB of guest RAM (3 x array_mib and chase_mib shrunk \
             to fit)",
            self.workload_mib
        );
        match self.phase_ms {
            Some(ms) => format!(
                "emulated: workloads scaled down by time budget (each phase capped at {ms} ms, \
                 net stream too); {mem}"
            ),
            None => mem,
        }
    }

    /// Fit `w` in place; returns what was changed, for the log (empty when nothing was).
    pub fn apply(&self, w: &mut Workload) -> Vec<String> {
        let mut notes = vec![];
        let mut cap = |name: &str, v: &mut u64| {
            if let Some(ms) = self.phase_ms.filter(|ms| *v > *ms) {
                notes.push(format!("{name} {v} -> {ms} ms"));
                *v = ms;
            }
        };
        match w {
            Workload::Cpu(p) => cap("time_budget_ms", &mut p.time_budget_ms),
            Workload::Memory(p) => {
                cap("time_budget_ms", &mut p.time_budget_ms);
                let max_array = (self.workload_mib / 3).max(1);
                if p.array_mib > max_array {
                    notes.push(format!(
                        "array_mib {} -> {max_array} (3 arrays in {} MiB of guest RAM)",
                        p.array_mib, self.workload_mib
                    ));
                    p.array_mib = max_array;
                }
                if p.chase_mib > self.workload_mib {
                    notes.push(format!(
                        "chase_mib {} -> {} (guest RAM)",
                        p.chase_mib, self.workload_mib
                    ));
                    p.chase_mib = self.workload_mib.max(1);
                }
            }
            Workload::Fs(p) => cap("time_budget_ms", &mut p.time_budget_ms),
            Workload::Net(p) => {
                cap("time_budget_ms", &mut p.time_budget_ms);
                cap("stream_duration_ms", &mut p.stream_duration_ms);
            }
            // Nothing to scale: noop, idle, density, and the application servers (sized by the
            // guest's RAM, driven by the host).
            _ => {}
        }
        notes
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::workload::{CpuParams, MemoryParams, NetParams};

    #[test]
    fn emulated_caps_every_phase() {
        let f = Fit {
            phase_ms: Some(4000),
            workload_mib: 300,
        };
        let mut w = Workload::Net(NetParams::default());
        let notes = f.apply(&mut w);
        let Workload::Net(p) = &w else { unreachable!() };
        assert_eq!((p.time_budget_ms, p.stream_duration_ms), (4000, 3000));
        assert_eq!(notes, ["time_budget_ms 10000 -> 4000 ms"]);
        let mut w = Workload::Cpu(CpuParams {
            time_budget_ms: 100,
            ..CpuParams::default()
        });
        assert!(f.apply(&mut w).is_empty(), "a smaller budget stays");
        assert!(f
            .describe()
            .starts_with("emulated: workloads scaled down by time budget"));
    }

    #[test]
    fn memory_is_shrunk_to_the_guest() {
        let f = Fit {
            phase_ms: None,
            workload_mib: 150,
        };
        let mut w = Workload::Memory(MemoryParams::default());
        let notes = f.apply(&mut w);
        let Workload::Memory(p) = &w else {
            unreachable!()
        };
        assert_eq!((p.array_mib, p.chase_mib), (50, 150));
        assert_eq!(p.time_budget_ms, MemoryParams::default().time_budget_ms);
        assert_eq!(notes.len(), 2, "{notes:?}");
        let roomy = Fit {
            phase_ms: None,
            workload_mib: 1000,
        };
        let mut w = Workload::Memory(MemoryParams::default());
        assert!(roomy.apply(&mut w).is_empty());
        assert!(!roomy.describe().contains("emulated"));
    }
}
