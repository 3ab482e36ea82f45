//! `isobench doctor`: what this host can run, and for what it cannot, why and the fix.

use serde::Serialize;

use crate::backend::registry;
use crate::backend::BackendOptions;
use crate::cli::CommonArgs;
use crate::exit_codes::ExitCode;
use crate::model::availability::Availability;
use crate::model::facts::HostFacts;
use crate::model::tier::Tier;

#[derive(Debug, Serialize)]
pub struct TierLine {
    pub tier: Tier,
    pub description: String,
    /// The settings it accepts (`--set key=TYPE`), from the registry.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub settings: Vec<String>,
    #[serde(flatten)]
    pub availability: Availability,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub host: HostFacts,
    pub tiers: Vec<TierLine>,
}

/// `isobench doctor [--json]`.
pub fn run(json: bool, common: &CommonArgs) -> anyhow::Result<ExitCode> {
    let opts = super::options::backend_options(common, &[], None, &[])?;
    let report = diagnose(HostFacts::detect(), &opts);
    if json {
        crate::outln!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        crate::out!("{}", render(&report));
    }
    Ok(ExitCode::Success)
}

pub fn diagnose(host: HostFacts, opts: &BackendOptions) -> Report {
    let tiers = Tier::all()
        .iter()
        .map(|&t| TierLine {
            tier: t,
            description: t.describe(),
            settings: registry::settings_help(t),
            availability: registry::availability(t, &host, opts),
        })
        .collect();
    Report { host, tiers }
}

/// Human-readable doctor output.
pub fn render(r: &Report) -> String {
    let h = &r.host;
    let mut s = String::new();
    s.push_str(&format!(
        "host      {} ({} cores, {:.1} GiB), {}\n",
        h.cpu_model,
        h.cores,
        h.memory_bytes as f64 / (1u64 << 30) as f64,
        h.os
    ));
    s.push_str(&format!(
        "kernel    {}{}\n",
        h.kernel,
        if h.virtualized {
            " (the host itself is a VM)"
        } else {
            ""
        }
    ));
    s.push_str(&format!(
        "root      {}\n",
        if h.is_root {
            "yes"
        } else {
            "no (only bare can run; use sudo)"
        }
    ));
    s.push_str(&format!(
        "cgroups   {}\n",
        crate::host::cgroup::doctor_line(
            h.cgroup_layout,
            &crate::host::cgroup::Hierarchies::detect()
        )
    ));
    s.push_str(&format!("kvm       {}\n", h.kvm.label()));
    s.push_str(&format!(
        "overlayfs {}\n",
        if h.overlayfs { "yes" } else { "no" }
    ));
    s.push_str(&format!(
        "qemu      {}\n\n",
        match (&h.qemu, &h.qemu_version) {
            (Some(p), Some(v)) => format!("{} ({v})", p.display()),
            (Some(p), None) => p.display().to_string(),
            _ => "not installed (apt-get install qemu-system-x86)".into(),
        }
    ));
    for t in &r.tiers {
        match &t.availability {
            Availability::Available { detail } => {
                s.push_str(&format!("  ok    {:<16} {detail}\n", t.tier.as_str()))
            }
            Availability::Unavailable { reason, fix } => s.push_str(&format!(
                "  no    {:<16} {reason}\n  {:<22} fix: {fix}\n",
                t.tier.as_str(),
                ""
            )),
        }
        for line in &t.settings {
            s.push_str(&format!("  {:<22} --set {line}\n", ""));
        }
    }
    s
}
