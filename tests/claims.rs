//! The five claims judged on a real results file: `tests/fixtures/claims/run.json` is what
//! `isobench run` wrote on the development machine (no KVM, no Docker daemon) for every workload
//! the claims need, 5 measured launches per tier, trimmed to the metrics the claims read
//! (tests/fixtures/claims/README.md says how). Each claim is shown supported, contradicted and
//! inconclusive; the variants are derived here by the named transformations below (relabel a
//! tier, scale a tier's samples, copy one tier's samples onto another, drop a workload, edit
//! one observed isolation fact), never by typed-in numbers. Each test asserts the verdict and
//! the evidence that decided it.

use std::path::Path;

use isobench::model::results::Results;
use isobench::model::tier::Tier;
use isobench::report::claims::{judge, Check, ClaimVerdict, Verdict};

/// The real run (summaries are left out of the file and computed here from the samples).
fn fixture() -> Results {
    let mut r = Results::load(
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/claims/run.json"),
    )
    .expect("the claims fixture loads");
    r.summarize();
    r
}

fn claim(r: &Results, id: u8) -> ClaimVerdict {
    judge(r).into_iter().find(|c| c.id == id).unwrap()
}

fn part(c: &ClaimVerdict, name: &str) -> Verdict {
    c.parts
        .iter()
        .find(|(p, _)| *p == name)
        .unwrap_or_else(|| panic!("no part {name}: {c:#?}"))
        .1
}

/// The check whose `what` contains every one of `needles`.
fn check<'a>(c: &'a ClaimVerdict, needles: &[&str]) -> &'a Check {
    c.checks
        .iter()
        .find(|k| needles.iter().all(|n| k.what.contains(n)))
        .unwrap_or_else(|| panic!("no check {needles:?}: {c:#?}"))
}

// ------------------------------------------------------------------ transformations

/// Relabel the real emulated guest as a microvm that ran with hardware KVM: what a host with
/// KVM would have run in its place (the numbers stay TCG's).
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

/// Replace every sample of `tier` on `workload` by that metric's median over the tier's
/// samples: the same tier at its own real median, without run-to-run noise.
fn at_median(mut r: Results, tier: Tier, workload: &str) -> Results {
    r.summarize();
    let medians: Vec<(String, f64)> = r
        .summaries
        .iter()
        .filter(|m| m.tier == tier && m.workload == workload)
        .map(|m| (m.metric.clone(), m.stats.median))
        .collect();
    for s in r
        .samples
        .iter_mut()
        .filter(|s| s.tier == tier && s.workload == workload)
    {
        if let Some((_, med)) = medians.iter().find(|(m, _)| *m == s.metric) {
            s.value = *med;
        }
    }
    r.summarize();
    r
}

/// Multiply `tier`'s samples of `workload` (the metrics in `pick`) by `k`, whatever their
/// direction (a slope and both ends of its interval alike).
fn scale(mut r: Results, tier: Tier, workload: &str, pick: &[&str], k: f64) -> Results {
    for s in r
        .samples
        .iter_mut()
        .filter(|s| s.tier == tier && s.workload == workload && pick.contains(&s.metric.as_str()))
    {
        s.value *= k;
    }
    r.summarize();
    r
}

/// Replace `to`'s samples of `workload` by `from`'s (same rounds, same values): a tier that
/// costs exactly what `from` costs there.
fn copy_samples(mut r: Results, from: Tier, to: Tier, workload: &str) -> Results {
    r.samples
        .retain(|s| !(s.tier == to && s.workload == workload));
    let copies: Vec<_> = r
        .samples
        .iter()
        .filter(|s| s.tier == from && s.workload == workload)
        .cloned()
        .map(|mut s| {
            s.tier = to;
            s
        })
        .collect();
    r.samples.extend(copies);
    r.summarize();
    r
}

/// Drop every sample of `workload` (as if the scenario had not listed it).
fn drop_workload(mut r: Results, workload: &str) -> Results {
    r.samples.retain(|s| s.workload != workload);
    r.summarize();
    r
}

/// Every workload claim 1 reads.
const CLAIM1_WORKLOADS: [&str; 8] = [
    "noop",
    "cpu",
    "memory",
    "fs",
    "fs_volume",
    "net",
    "net_nat",
    "density",
];

/// A container that costs exactly what bare costs, without run-to-run noise: bare's real
/// samples copied onto the container, then both at their real medians. (At n = 5 on this busy
/// 2-core machine the real spread is ±20-50% on most metrics, wider than the ±5% band, so no
/// real pair of tiers can be shown "within 5%" at this n; this isolates the rule.)
fn container_as_bare() -> Results {
    let mut r = fixture();
    for wl in CLAIM1_WORKLOADS {
        r = copy_samples(r, Tier::Bare, Tier::Container, wl);
        r = at_median(r, Tier::Bare, wl);
        r = at_median(r, Tier::Container, wl);
    }
    r
}

// ------------------------------------------------------------------ claim 1

/// The real run: the NAT part is contradicted (request/response latency over the container's
/// bridge + masquerade is ~1.5x bare's, the direction the study found: x2), the startup part is
/// supported against the published VM boot, and the noisy parts are inconclusive.
#[test]
fn claim1_contradicted_on_the_real_run_by_nat_latency() {
    let c = claim(&fixture(), 1);
    assert_eq!(c.verdict, Verdict::Contradicted, "{c:#?}");
    assert_eq!(part(&c, "network (NAT)"), Verdict::Contradicted);
    let nat = check(&c, &["net_nat/rr_latency_p50_us", "container vs bare"]);
    assert_eq!(nat.verdict, Verdict::Contradicted);
    assert!(
        nat.evidence.starts_with("cost ×1.5") && nat.evidence.contains("Docker NAT RR latency ×2"),
        "{nat:#?}"
    );
    assert_eq!(part(&c, "startup vs a VM"), Verdict::Supported);
    let start = check(&c, &["published VM boot"]);
    assert!(
        start.evidence.contains("cloud-hypervisor boot p50 102 ms")
            || start
                .evidence
                .contains("cloud-hypervisor boot p50 102.0 ms"),
        "{start:#?}"
    );
    assert!(start.evidence.contains("not this machine"), "{start:#?}");
    // Judged on isobench's container: docker did not run here.
    assert!(
        c.notes.iter().any(|n| n.contains("docker did not run")),
        "{c:#?}"
    );
    // The emulated tier is never the VM the startup part compares with.
    assert!(c.notes.iter().any(|n| n.contains("TCG software emulation")));
}

#[test]
fn claim1_supported_when_the_container_costs_what_bare_costs() {
    let c = claim(&container_as_bare(), 1);
    assert_eq!(c.verdict, Verdict::Supported, "{c:#?}");
    assert_eq!(c.parts.len(), 7);
    assert!(c.parts.iter().all(|(_, v)| *v == Verdict::Supported));
    let nat = check(&c, &["net_nat/rr_latency_p50_us"]);
    assert!(
        nat.evidence.starts_with("cost ×1.00 [1.00, 1.00]"),
        "{nat:#?}"
    );
    let density = check(&c, &["memory_per_instance_mib", "container vs bare"]);
    assert!(
        density
            .evidence
            .contains("Firecracker's specified VMM overhead"),
        "{density:#?}"
    );
}

/// Without the volume workload the volume part cannot be judged, and says which workload
/// would decide it; with nothing contradicted the claim is inconclusive.
#[test]
fn claim1_inconclusive_without_the_volume_workload() {
    let c = claim(&drop_workload(container_as_bare(), "fs_volume"), 1);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{c:#?}");
    assert_eq!(part(&c, "filesystem (volume)"), Verdict::Inconclusive);
    assert_eq!(part(&c, "filesystem (layered rootfs)"), Verdict::Supported);
    let k = check(&c, &["fs_volume/rand_read_iops"]);
    assert!(
        k.evidence.starts_with(
            "not measured (container has no rand_read_iops, bare has no rand_read_iops)"
        ) && k
            .evidence
            .contains("[[workload]] kind = \"fs\", path = \"volume\""),
        "{k:#?}"
    );
}

// ------------------------------------------------------------------ claim 2

const CLAIM2_WORKLOADS: [&str; 3] = ["memory", "fs", "net"];

/// The real emulated guest as a KVM microvm, both it and the container at their real medians.
fn kvm_at_medians() -> Results {
    let mut r = as_kvm_microvm(fixture());
    for wl in CLAIM2_WORKLOADS {
        r = at_median(r, Tier::Microvm, wl);
        r = at_median(r, Tier::Container, wl);
    }
    r
}

#[test]
fn claim2_inconclusive_on_the_real_run_without_kvm() {
    let c = claim(&fixture(), 2);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{c:#?}");
    assert!(c.parts.iter().all(|(_, v)| *v == Verdict::Inconclusive));
    let k = check(&c, &["net/rr_latency_p50_us", "emulated vs container"]);
    assert!(
        k.evidence
            .starts_with("microvm (hardware KVM) did not run; cost ×"),
        "{k:#?}"
    );
    assert!(c.notes.iter().any(|n| n.contains("context only")));
}

#[test]
fn claim2_supported_when_the_guest_is_far_slower_in_every_subsystem() {
    let c = claim(&kvm_at_medians(), 2);
    assert_eq!(c.verdict, Verdict::Supported, "{c:#?}");
    assert_eq!(
        c.parts,
        vec![
            ("memory", Verdict::Supported),
            ("filesystem", Verdict::Supported),
            ("network", Verdict::Supported)
        ]
    );
    // The weakest real figure still decides: TCG's pointer chase at 1.76x the container's.
    let k = check(&c, &["memory/latency_ns", "microvm vs container"]);
    assert!(k.evidence.starts_with("cost ×1.76"), "{k:#?}");
}

/// Memory equal under the VM (the study's finding under KVM): the container's own memory
/// samples stand for the guest's; the memory part, and so the claim, is contradicted while the
/// other subsystems stay supported.
#[test]
fn claim2_contradicted_when_memory_is_equal_under_the_vm() {
    let r = copy_samples(kvm_at_medians(), Tier::Container, Tier::Microvm, "memory");
    let c = claim(&r, 2);
    assert_eq!(c.verdict, Verdict::Contradicted, "{c:#?}");
    assert_eq!(
        c.parts,
        vec![
            ("memory", Verdict::Contradicted),
            ("filesystem", Verdict::Supported),
            ("network", Verdict::Supported)
        ]
    );
    let k = check(&c, &["memory/copy_gb_per_s", "microvm vs container"]);
    assert!(k.evidence.starts_with("cost ×1.00 [1.00, 1.00]"), "{k:#?}");
}

// ------------------------------------------------------------------ claim 3

const DENSITY_MEMORY: [&str; 3] = [
    "memory_per_instance_mib",
    "memory_per_instance_ci_low_mib",
    "memory_per_instance_ci_high_mib",
];

#[test]
fn claim3_inconclusive_on_the_real_run_without_kvm() {
    let c = claim(&fixture(), 3);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{c:#?}");
    let k = check(&c, &["memory_per_instance_mib", "container"]);
    assert!(
        k.evidence
            .starts_with("microvm (hardware KVM) did not run; not measured (microvm did not run)"),
        "{k:#?}"
    );
    // The real guest's slope is shown as context, labelled as software emulation.
    let note = c.notes.join(" ");
    assert!(
        note.contains("TCG software emulation") && note.contains("memory per instance emulated")
    );
}

/// Claim 3 supported on a results file where density ran on a VM tier and a container: the
/// real TCG guest relabelled as a KVM microvm.
#[test]
fn claim3_supported_with_density_on_a_vm_tier_and_a_container() {
    let c = claim(&as_kvm_microvm(fixture()), 3);
    assert_eq!(c.verdict, Verdict::Supported, "{c:#?}");
    let k = check(
        &c,
        &["memory_per_instance_mib", "microvm ≥ 1.1 × container"],
    );
    assert_eq!(k.verdict, Verdict::Supported);
    assert!(
        k.evidence.starts_with("microvm 1") && k.evidence.contains("(5 rounds) vs container 0.0"),
        "{k:#?}"
    );
    let s = check(&c, &["noop/launch_to_ready_ms", "microvm vs container"]);
    assert_eq!(s.verdict, Verdict::Supported, "{s:#?}");
}

/// A guest that costs no more than a container: the microvm's slope (and its interval) scaled
/// to a ten-thousandth of the real guest's.
#[test]
fn claim3_contradicted_when_the_guest_costs_less_than_a_container() {
    let r = scale(
        as_kvm_microvm(fixture()),
        Tier::Microvm,
        "density",
        &DENSITY_MEMORY,
        1e-4,
    );
    let c = claim(&r, 3);
    assert_eq!(c.verdict, Verdict::Contradicted, "{c:#?}");
    let k = check(
        &c,
        &["memory_per_instance_mib", "microvm ≥ 1.1 × container"],
    );
    assert_eq!(k.verdict, Verdict::Contradicted);
    assert!(k.evidence.starts_with("microvm 0.01"), "{k:#?}");
}

// ------------------------------------------------------------------ claims 4 and 5

fn with_view(
    mut r: Results,
    tier: Tier,
    edit: impl FnOnce(&mut Option<isobench::protocol::IsolationView>),
) -> Results {
    let t = r.tiers.iter_mut().find(|t| t.tier == tier).unwrap();
    edit(&mut t.isolation);
    r
}

fn ns_of(r: &Results, tier: Tier, kind: &str) -> String {
    r.tiers
        .iter()
        .find(|t| t.tier == tier)
        .unwrap()
        .isolation
        .as_ref()
        .unwrap()
        .namespaces[kind]
        .clone()
}

#[test]
fn claim4_supported_on_the_real_run() {
    let c = claim(&fixture(), 4);
    assert_eq!(c.verdict, Verdict::Supported, "{c:#?}");
    let k = check(&c, &["users shared"]);
    assert_eq!(k.evidence, "uid 0 (bare: 0), user ns shared with bare");
    assert!(check(&c, &["processes shared"])
        .evidence
        .starts_with("pid ns shared with bare"));
}

/// A jail that got a pid namespace of its own (the container's, as observed) is not "processes
/// shared".
#[test]
fn claim4_contradicted_when_the_jail_has_its_own_pid_namespace() {
    let r = fixture();
    let own = ns_of(&r, Tier::Container, "pid");
    let r = with_view(r, Tier::Chroot, |v| {
        v.as_mut().unwrap().namespaces.insert("pid".into(), own);
    });
    let c = claim(&r, 4);
    assert_eq!(c.verdict, Verdict::Contradicted, "{c:#?}");
    let k = check(&c, &["processes shared"]);
    assert_eq!(k.verdict, Verdict::Contradicted);
    assert!(k.evidence.starts_with("pid ns own"), "{k:#?}");
}

/// Without the jail's user namespace id the users check cannot say "shared".
#[test]
fn claim4_inconclusive_when_the_user_namespace_is_unobservable() {
    let r = with_view(fixture(), Tier::Chroot, |v| {
        v.as_mut().unwrap().namespaces.remove("user");
    });
    let c = claim(&r, 4);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{c:#?}");
    let k = check(&c, &["users shared"]);
    assert_eq!(k.verdict, Verdict::Inconclusive);
    assert!(
        k.evidence.contains("user namespace is not observable"),
        "{k:#?}"
    );
}

#[test]
fn claim5_supported_on_the_real_run() {
    let c = claim(&fixture(), 5);
    assert_eq!(c.verdict, Verdict::Supported, "{c:#?}");
    assert_eq!(
        check(&c, &["cgroup limit in force"]).evidence,
        "memory limit 512 MiB, 1 CPUs allowed"
    );
    assert!(check(&c, &["own pid namespace"])
        .evidence
        .starts_with("pid ns own; pid 1"));
}

/// The container's cgroup is visible but no memory limit is: contradicted.
#[test]
fn claim5_contradicted_without_a_memory_limit() {
    let r = with_view(fixture(), Tier::Container, |v| {
        v.as_mut().unwrap().memory_limit_bytes = None;
    });
    let c = claim(&r, 5);
    assert_eq!(c.verdict, Verdict::Contradicted, "{c:#?}");
    let k = check(&c, &["cgroup limit in force"]);
    assert_eq!(k.evidence, "no memory limit visible; 1 CPUs allowed");
}

/// The container's view was not recorded (its probe failed): nothing to judge.
#[test]
fn claim5_inconclusive_when_the_container_was_not_observed() {
    let r = with_view(fixture(), Tier::Container, |v| *v = None);
    let c = claim(&r, 5);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{c:#?}");
    assert_eq!(
        check(&c, &["isolation view"]).evidence,
        "container was not observed (tier did not run or its probe failed)"
    );
}

// ------------------------------------------------------------------ the Felter table

/// Each Felter row says whether our ratio lies within the study's range and shows the study's
/// workload parameters beside ours, on the real run.
#[test]
fn felter_rows_say_within_the_study_range_with_both_parameters() {
    let p = isobench::report::published::compare(&fixture()).unwrap();
    let row = |b: &str| p.felter_rows.iter().find(|x| x.benchmark == b).unwrap();
    let rr = row("netperf_rr");
    assert!(rr.study_params.contains("-r 100,200"), "{rr:#?}");
    assert!(
        rr.our_params.starts_with("net_nat: ") && rr.our_params.contains("rr_transactions=2000"),
        "{rr:#?}"
    );
    // The study's NAT latency x1.94-2.09 (TCP, UDP) widened by 5%; ours x1.5 [1.19, 1.90]
    // reaches into it only at its top: at n = 5 that cannot be told apart.
    assert_eq!(
        rr.docker_within,
        "cannot tell: ours [1.19, 1.90] reaches outside study 1.937–2.091 ± 5% = [1.84, 2.20]"
    );
    assert!(rr
        .kvm_within
        .starts_with("cannot say: no microvm with hardware KVM ran"));
    let fio = row("fio");
    assert!(fio.our_params.starts_with("fs_volume: "), "{fio:#?}");
    assert!(
        !fio.our_params.contains("dir="),
        "host-filled fields are not parameters"
    );
    // Wider than the band at this n, and never "yes" then.
    assert!(
        fio.docker_within
            .starts_with("cannot tell: ours [0.52, 2.01]"),
        "{fio:#?}"
    );
}
