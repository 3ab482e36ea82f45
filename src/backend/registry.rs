//! The registry: ONE row per tier, in one exhaustive `match` (no `_ =>` arm), so that a tier
//! added to [`Tier`] is a compile error here until it has its row. A row gives everything the
//! rest of isobench asks about a tier: whether it is in the default set, whether it can run on
//! this host, how its backend is made, and the typed settings (`--set key=value`, a scenario's
//! `[settings]`, an A/B variant's `key=value`) it accepts.

use std::collections::BTreeMap;
use std::fmt;

use super::{Backend, BackendError, BackendOptions, RunEnv};
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;

// The tiers' modules: declared here, beside their rows, so that a new tier is its variant in
// `model/tier.rs`, its row and `mod` line here, and its own module (file or folder) — three
// files. `backend` re-exports them, so their paths stay `crate::backend::<tier>`.
#[path = "bare.rs"]
pub mod bare;
#[path = "chroot.rs"]
pub mod chroot;
#[path = "container/mod.rs"]
pub mod container;
#[path = "runtimes/mod.rs"]
pub mod runtimes;
#[path = "vm/mod.rs"]
pub mod vm;

/// The test-only fake tier (unit tests of the runner), declared here so that it is one row and
/// one file like any tier, and absent from every build users run.
#[cfg(test)]
#[path = "fake.rs"]
pub(crate) mod fake;

/// The type of a setting's value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingKind {
    /// A path to an existing file.
    File,
    /// A whole number in `min..=max`.
    UInt { min: u64, max: u64 },
    /// One of these words.
    Choice(&'static [&'static str]),
    /// Free text (up to 64 characters, no control characters).
    Text,
}

/// One setting a tier accepts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    pub key: &'static str,
    pub kind: SettingKind,
    pub help: &'static str,
}

impl Setting {
    /// Check a value; the error says what is expected.
    pub fn check(&self, value: &str) -> Result<(), String> {
        match self.kind {
            SettingKind::File => {
                if std::path::Path::new(value).is_file() {
                    Ok(())
                } else {
                    Err(format!(
                        "{value} is not a file: give the path of an existing file"
                    ))
                }
            }
            SettingKind::UInt { min, max } => match value.parse::<u64>() {
                Ok(n) if (min..=max).contains(&n) => Ok(()),
                _ => Err(format!("expected a whole number from {min} to {max}")),
            },
            SettingKind::Choice(words) => {
                if words.contains(&value) {
                    Ok(())
                } else {
                    Err(format!("use one of {}", words.join(", ")))
                }
            }
            SettingKind::Text => {
                if value.chars().count() <= 64 && !value.chars().any(char::is_control) {
                    Ok(())
                } else {
                    Err("expected up to 64 printable characters".into())
                }
            }
        }
    }

    /// `key=TYPE`, as help and errors show it.
    pub fn signature(&self) -> String {
        let ty = match self.kind {
            SettingKind::File => "PATH".to_string(),
            SettingKind::UInt { min, max } => format!("{min}..{max}"),
            SettingKind::Choice(words) => words.join("|"),
            SettingKind::Text => "TEXT".to_string(),
        };
        format!("{}={ty}", self.key)
    }
}

/// How a row prepares its tier's backend.
pub type Prepare = fn(Tier, &RunEnv) -> Result<Box<dyn Backend>, BackendError>;

/// What the registry knows about one tier.
#[derive(Clone, Copy)]
pub struct Row {
    pub tier: Tier,
    /// Run when neither `--backends` nor the scenario names tiers. Tiers isobench does not
    /// drive (placeholders that only report why) are not.
    pub default: bool,
    /// Can it run here? A pure function of the host facts and options.
    pub availability: fn(Tier, &HostFacts, &BackendOptions) -> Availability,
    /// Prepare the tier's backend: on success it is ready to launch (type state: there is no
    /// unprepared backend); on failure whatever preparation made is gone or in the ledger.
    pub prepare: Prepare,
    /// The settings it accepts.
    pub settings: &'static [Setting],
}

/// Settings every tier accepts (checked before the tier's own).
pub const COMMON_SETTINGS: &[Setting] = &[Setting {
    key: "label",
    kind: SettingKind::Text,
    help:
        "a name for this configuration, recorded with the run (e.g. the two sides of an A/A test)",
}];

/// The settings of the VM tiers (microvm, emulated).
const VM_SETTINGS: &[Setting] = &[
    Setting {
        key: "vmm",
        kind: SettingKind::Choice(&["qemu", "firecracker", "cloud-hypervisor"]),
        help: "the VMM (only qemu is driven; the others report why not)",
    },
    Setting {
        key: "qemu",
        kind: SettingKind::File,
        help: "the qemu-system-x86_64 binary to use instead of the one on PATH",
    },
    Setting {
        key: "deadline_s",
        kind: SettingKind::UInt {
            min: 1,
            max: 86_400,
        },
        help: "seconds one launch may take before it is killed",
    },
    Setting {
        key: "disk_mib",
        kind: SettingKind::UInt {
            min: vm::disk::MIN_DISK_MIB,
            max: crate::model::scenario::bounds::MAX_SIZE_MIB,
        },
        help: "size of the guest's scratch disk for fs workloads, MiB",
    },
    Setting {
        key: "disk_aio",
        kind: SettingKind::Choice(&["threads", "io_uring", "native"]),
        help: "QEMU's aio backend for the disk (default: io_uring where it works)",
    },
];

/// The emulated tier: the VM settings plus the per-phase budget of scaled workloads.
const EMULATED_SETTINGS: &[Setting] = &[
    VM_SETTINGS[0],
    VM_SETTINGS[1],
    VM_SETTINGS[2],
    VM_SETTINGS[3],
    VM_SETTINGS[4],
    Setting {
        key: "phase_budget_ms",
        kind: SettingKind::UInt {
            min: 100,
            max: crate::model::scenario::bounds::MAX_PHASE_MS,
        },
        help: "wall time each scaled workload phase aims for under emulation, ms",
    },
];

fn vm_availability(tier: Tier, host: &HostFacts, opts: &BackendOptions) -> Availability {
    vm::availability(tier, host, opts)
}

fn vm_prepare(tier: Tier, env: &RunEnv) -> Result<Box<dyn Backend>, BackendError> {
    Ok(Box::new(vm::Vm::prepare(tier, env)?))
}

/// The row of `tier`. Exhaustive: a new tier does not build until it has a row.
pub fn row(tier: Tier) -> Row {
    match tier {
        Tier::Bare => Row {
            tier,
            default: true,
            availability: |_, host, _| bare::availability(host),
            prepare: |_, env| Ok(Box::new(bare::Bare::prepare(env)?)),
            settings: &[],
        },
        Tier::Chroot => Row {
            tier,
            default: true,
            availability: |_, host, _| chroot::availability(host),
            prepare: |_, env| Ok(Box::new(chroot::Chroot::prepare(env)?)),
            settings: &[],
        },
        Tier::Container => Row {
            tier,
            default: true,
            availability: |_, host, _| container::availability(host),
            prepare: |_, env| Ok(Box::new(container::Container::prepare(env)?)),
            // Read by container::OverlayMode::from_settings.
            settings: &[Setting {
                key: "overlay",
                kind: SettingKind::Choice(&["default", "volatile"]),
                help: "overlay mount: default = as Docker's overlay2 (fsync reaches the disk); \
                       volatile = fsync and syncfs are no-ops (Linux 5.10+; not Docker's \
                       default, recorded as overlay=volatile in the results)",
            }],
        },
        Tier::Runc | Tier::Crun | Tier::Docker | Tier::Lxc | Tier::Gvisor => Row {
            tier,
            default: true,
            availability: runtimes::availability,
            prepare: runtimes::prepare,
            settings: &[],
        },
        // Placeholders: doctor and an explicit --backends report why they do not run.
        Tier::Firecracker | Tier::CloudHypervisor => Row {
            tier,
            default: false,
            availability: runtimes::availability,
            prepare: runtimes::prepare,
            settings: &[],
        },
        Tier::Microvm => Row {
            tier,
            default: true,
            availability: vm_availability,
            prepare: vm_prepare,
            settings: VM_SETTINGS,
        },
        Tier::Emulated => Row {
            tier,
            default: true,
            availability: vm_availability,
            prepare: vm_prepare,
            settings: EMULATED_SETTINGS,
        },
        // Test builds only: never in the default set, in help, doctor or a user's run.
        #[cfg(test)]
        Tier::Fake => Row {
            tier,
            default: false,
            availability: |_, _, _| Availability::Available {
                detail: "scripted fake (tests)".into(),
            },
            prepare: |_, env| Ok(Box::new(fake::Fake::prepare(env)?)),
            settings: fake::SETTINGS,
        },
    }
}

/// Can `tier` run here?
pub fn availability(tier: Tier, host: &HostFacts, opts: &BackendOptions) -> Availability {
    (row(tier).availability)(tier, host, opts)
}

/// Prepare the backend of `tier` for this run.
pub fn make(tier: Tier, env: &RunEnv) -> Result<Box<dyn Backend>, BackendError> {
    (row(tier).prepare)(tier, env)
}

/// The tiers run when none are named: every tier isobench drives.
pub fn default_tiers() -> Vec<Tier> {
    Tier::all()
        .iter()
        .copied()
        .filter(|&t| row(t).default)
        .collect()
}

/// A setting no selected tier accepts, or a bad value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SettingsError(pub String);

impl fmt::Display for SettingsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for SettingsError {}

/// Check `settings` against the tiers that will run: every key must be a setting of at least
/// one of them, and its value must fit every such tier's type. `origin` says where they came
/// from (`--set`, `[settings] of scenario x.toml`, `--a`). The error names the valid keys.
pub fn check_settings(
    tiers: &[Tier],
    settings: &BTreeMap<String, String>,
    origin: &str,
) -> Result<(), SettingsError> {
    for (key, value) in settings {
        let specs: Vec<(Tier, Setting)> = tiers
            .iter()
            .filter_map(|&t| {
                COMMON_SETTINGS
                    .iter()
                    .chain(row(t).settings)
                    .find(|s| s.key == key)
                    .map(|s| (t, *s))
            })
            .collect();
        if specs.is_empty() {
            return Err(SettingsError(format!(
                "{origin} {key}={value}: {}",
                valid_keys(tiers)
            )));
        }
        for (tier, s) in specs {
            s.check(value)
                .map_err(|why| SettingsError(format!("{origin} {key}={value} ({tier}): {why}")))?;
        }
    }
    Ok(())
}

/// "valid keys for emulated: vmm=..., ...", or that the tiers take none.
fn valid_keys(tiers: &[Tier]) -> String {
    let common: Vec<String> = COMMON_SETTINGS.iter().map(Setting::signature).collect();
    let per_tier: Vec<String> = tiers
        .iter()
        .filter(|&&t| !row(t).settings.is_empty())
        .map(|&t| {
            let keys: Vec<String> = row(t).settings.iter().map(Setting::signature).collect();
            format!("{t} takes {}", keys.join(", "))
        })
        .collect();
    let names: Vec<&str> = tiers.iter().map(|t| t.as_str()).collect();
    if per_tier.is_empty() {
        format!(
            "unknown setting: {} take(s) only {} (see `isobench doctor` for each tier's settings)",
            names.join(", "),
            common.join(", ")
        )
    } else {
        format!(
            "unknown setting: every tier takes {}; {}",
            common.join(", "),
            per_tier.join("; ")
        )
    }
}

/// Every tier's settings, one line each, for doctor and help.
pub fn settings_help(tier: Tier) -> Vec<String> {
    row(tier)
        .settings
        .iter()
        .map(|s| format!("{}  {}", s.signature(), s.help))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(kv: &[(&str, &str)]) -> BTreeMap<String, String> {
        kv.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn every_tier_has_a_row_of_its_own() {
        for &t in Tier::all() {
            assert_eq!(row(t).tier, t);
        }
        let d = default_tiers();
        assert!(d.contains(&Tier::Bare) && d.contains(&Tier::Emulated));
        assert!(!d.contains(&Tier::Firecracker) && !d.contains(&Tier::CloudHypervisor));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_valid_keys() {
        let e = check_settings(&[Tier::Emulated], &set(&[("disk_mbb", "5")]), "--set")
            .unwrap_err()
            .to_string();
        assert!(e.contains("disk_mbb") && e.contains("disk_mib="), "{e}");
        let e = check_settings(&[Tier::Emulated], &set(&[("disk_mib", "5")]), "--set")
            .unwrap_err()
            .to_string();
        assert!(e.contains("256"), "{e}");
        let e = check_settings(&[Tier::Bare], &set(&[("disk_mib", "512")]), "--set")
            .unwrap_err()
            .to_string();
        assert!(e.contains("take(s) only label=TEXT"), "{e}");
        check_settings(&[Tier::Bare], &set(&[("label", "side a")]), "--a").unwrap();
        let e = check_settings(&[Tier::Microvm], &set(&[("disk_aio", "posix")]), "--set")
            .unwrap_err()
            .to_string();
        assert!(e.contains("io_uring"), "{e}");
        // phase_budget_ms is the emulated tier's only.
        assert!(
            check_settings(&[Tier::Microvm], &set(&[("phase_budget_ms", "500")]), "x").is_err()
        );
        check_settings(
            &[Tier::Bare, Tier::Emulated],
            &set(&[
                ("disk_mib", "512"),
                ("phase_budget_ms", "500"),
                ("vmm", "qemu"),
            ]),
            "--set",
        )
        .unwrap();
    }
}
