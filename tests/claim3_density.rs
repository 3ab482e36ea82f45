//! Claim 3 judged on the density slope, from a real results file: `tests/fixtures/density.json`
//! is what `isobench run` wrote on the development machine (no KVM) for the density workload
//! (counts 0, 1, 2, 4, 8 on bare, chroot, container, runc, docker; 0, 1, 2, 4 on the emulated
//! tier) and noop startup on container, docker and emulated: three runs of
//! `isobench run <scenario> --no-history`, merged (tiers and samples) into one file. The supported and contradicted cases
//! relabel that real emulated guest as a KVM microvm (what a host with KVM would have run)
//! and, for the contradiction, scale its slope below the container's.

use std::path::Path;

use isobench::model::results::Results;
use isobench::model::tier::Tier;
use isobench::report::claims::{judge, ClaimVerdict, Verdict};

/// The merged real runs (summaries left out of the file: computed here from the samples).
fn fixture() -> Results {
    let mut r =
        Results::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/density.json"))
            .expect("the density fixture loads");
    r.summarize();
    r
}

fn claim3(r: &Results) -> ClaimVerdict {
    judge(r).into_iter().find(|c| c.id == 3).unwrap()
}

/// The real emulated guest's rows, relabelled as a microvm that ran with KVM.
fn as_kvm_microvm(mut r: Results) -> Results {
    for t in r.tiers.iter_mut().filter(|t| t.tier == Tier::Emulated) {
        t.tier = Tier::Microvm;
        t.settings.insert("accel".into(), "kvm".into());
    }
    for s in r.samples.iter_mut().filter(|s| s.tier == Tier::Emulated) {
        s.tier = Tier::Microvm;
    }
    r.summarize();
    r
}

#[test]
fn inconclusive_on_the_real_run_without_kvm() {
    let c = claim3(&fixture());
    assert_eq!(c.verdict, Verdict::Inconclusive, "{c:#?}");
    assert!(c.checks.iter().all(|k| k.verdict == Verdict::Inconclusive));
    assert!(
        c.checks.iter().any(|k| k.evidence.contains("did not run")),
        "{c:#?}"
    );
    // The density metric exists and is read: memory is checked against docker and container.
    for ct in ["docker", "container"] {
        assert!(
            c.checks
                .iter()
                .any(|k| k.what.contains("memory_per_instance_mib") && k.what.contains(ct)),
            "{ct}: {c:#?}"
        );
    }
    // The emulated guest is context, labelled as software emulation, never as KVM.
    let note = c.notes.join(" ");
    assert!(
        note.contains("TCG software emulation") && note.contains("MiB/instance"),
        "{note}"
    );
    assert!(!note.contains("KVM guest costs") && !note.contains("emulated (KVM"));
}

#[test]
fn supported_when_a_kvm_guest_costs_more_than_the_containers() {
    let r = as_kvm_microvm(fixture());
    let c = claim3(&r);
    assert_eq!(c.verdict, Verdict::Supported, "{c:#?}");
    assert_eq!(
        c.checks.len(),
        3,
        "startup + memory vs docker and container"
    );
}

#[test]
fn contradicted_when_the_guest_costs_no_more_than_a_container() {
    let mut r = as_kvm_microvm(fixture());
    for s in r
        .samples
        .iter_mut()
        .filter(|s| s.tier == Tier::Microvm && s.metric.starts_with("memory_per_instance_"))
    {
        s.value *= 0.001;
    }
    r.summarize();
    let c = claim3(&r);
    assert_eq!(c.verdict, Verdict::Contradicted, "{c:#?}");
    assert!(c
        .checks
        .iter()
        .any(|k| k.verdict == Verdict::Contradicted && k.what.contains("memory_per_instance")));
}

#[test]
fn a_slope_without_an_interval_is_inconclusive() {
    let mut r = as_kvm_microvm(fixture());
    r.samples
        .retain(|s| !(s.tier == Tier::Container && s.metric.contains("_ci_")));
    r.summarize();
    let c = claim3(&r);
    let k = c
        .checks
        .iter()
        .find(|k| k.what.contains("memory_per_instance") && k.what.contains("× container"))
        .unwrap();
    assert_eq!(k.verdict, Verdict::Inconclusive, "{k:#?}");
}
