//! The report, end to end on deterministic synthetic results: files, images, page structure
//! (snapshots of section ids and headings, not numbers), claim verdicts, and the page as a person
//! sees it in headless Chromium.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use isobench::model::availability::Availability;
use isobench::model::budget::Budget;
use isobench::model::facts::CgroupLayout;
use isobench::model::facts::HostFacts;
use isobench::model::facts::KvmKind;
use isobench::model::results::{Results, Sample, TierRecord, TierStatus, SCHEMA_VERSION};
use isobench::model::scenario::{Scenario, DEFAULT_SCENARIO};
use isobench::model::tier::Tier;
use isobench::protocol::{Better, IsolationView};
use isobench::report::claims::{judge, Verdict};
use isobench::report::write_report;

/// A deterministic spread of ±`spread` around `base`, `n` values.
fn spread(base: f64, spread: f64, n: u32) -> Vec<f64> {
    (0..n)
        .map(|i| base * (1.0 + spread * (f64::from((i * 7) % 11) - 5.0) / 5.0))
        .collect()
}

struct Builder {
    r: Results,
}

impl Builder {
    fn new() -> Self {
        let host = HostFacts {
            hostname: "testhost".into(),
            cpu_model: "Synthetic CPU".into(),
            cores: 2,
            memory_bytes: 8 << 30,
            kernel: "6.1.0-test".into(),
            os: "Debian GNU/Linux 12".into(),
            virtualized: true,
            is_root: true,
            cgroup_layout: CgroupLayout::V2,
            kvm: KvmKind::Missing,
            overlayfs: true,
            namespaces: vec!["pid".into(), "net".into()],
            qemu: None,
            qemu_version: None,
        };
        let r = Results {
            schema_version: SCHEMA_VERSION,
            run_id: "synthetic".into(),
            started_at: "2025-01-01T00:00:00Z".into(),
            finished_at: Some("2025-01-01T00:10:00Z".into()),
            interrupted: false,
            host,
            versions: BTreeMap::from([("isobench".to_string(), "0.1.0".to_string())]),
            scenario: Scenario::parse(DEFAULT_SCENARIO, "default").unwrap(),
            budget: Budget {
                cpus: vec![0, 1],
                memory_mib: 512,
            },
            order: None,
            tiers: vec![],
            summaries: vec![],
            samples: vec![],
            labels: BTreeMap::new(),
        };
        Builder { r }
    }

    fn tier(mut self, tier: Tier, status: TierStatus, isolation: Option<IsolationView>) -> Self {
        let availability = if status == TierStatus::Skipped {
            Availability::unavailable(
                "/dev/kvm is missing",
                "run on a host with hardware virtualization",
            )
        } else {
            Availability::Available {
                detail: format!("synthetic {tier}"),
            }
        };
        let mut settings = BTreeMap::new();
        if tier == Tier::Emulated {
            settings.insert("accel".to_string(), "tcg".to_string());
        }
        self.r.tiers.push(TierRecord {
            tier,
            availability,
            status,
            plan: None,
            settings,
            versions: BTreeMap::new(),
            failures: vec![],
            launches: BTreeMap::new(),
            note: None,
            isolation,
        });
        self
    }

    fn metric(
        mut self,
        tier: Tier,
        workload: &str,
        metric: &str,
        unit: &str,
        better: Better,
        values: Vec<f64>,
    ) -> Self {
        // A launch order that cycles through three previous tiers.
        const PREVIOUS: [Tier; 3] = [Tier::Bare, Tier::Chroot, Tier::Container];
        for (round, value) in (0u32..).zip(values) {
            self.r.samples.push(Sample {
                tier,
                workload: workload.into(),
                metric: metric.into(),
                unit: unit.into(),
                better,
                round,
                value,
                position: Some(round % 3),
                previous_tier: Some(PREVIOUS[round as usize % 3]),
                kind: isobench::protocol::MetricKind::Measured,
            });
        }
        self
    }

    /// noop launch_to_exit_ms samples of `tier`, each launched after the tier given with it.
    fn after(mut self, tier: Tier, launches: &[(Option<Tier>, f64)]) -> Self {
        for (round, &(previous_tier, value)) in (0u32..).zip(launches) {
            self.r.samples.push(Sample {
                tier,
                workload: "noop".into(),
                metric: "launch_to_exit_ms".into(),
                unit: "ms".into(),
                better: Better::Lower,
                round,
                value,
                position: Some(0),
                previous_tier,
                kind: isobench::protocol::MetricKind::Measured,
            });
        }
        self
    }

    fn done(mut self) -> Results {
        self.r.summarize();
        self.r
    }
}

fn view(
    pid: i32,
    ns_id: u32,
    interfaces: &[&str],
    hostname: &str,
    kernel: &str,
    limit: Option<u64>,
    paths: Vec<(String, bool)>,
) -> IsolationView {
    let namespaces = ["pid", "net", "mnt", "uts", "ipc", "user", "cgroup"]
        .iter()
        .map(|k| {
            // The user namespace stays the host's in every tier here.
            let id = if *k == "user" { 1 } else { ns_id };
            ((*k).to_string(), format!("{k}:[40265318{id:02}]"))
        })
        .collect();
    IsolationView {
        pid,
        ppid: if pid == 1 { 0 } else { 100 },
        uid: 0,
        gid: 0,
        hostname: hostname.into(),
        kernel_release: kernel.into(),
        interfaces: interfaces.iter().map(|s| s.to_string()).collect(),
        visible_processes: Some(if pid == 1 { 1 } else { 120 }),
        mounts: Some(if ns_id == 1 { 30 } else { 8 }),
        namespaces,
        cgroup: Some("0::/".into()),
        memory_limit_bytes: limit,
        cpus_allowed: 2,
        extra_fds: vec![],
        cwd: "/".into(),
        root_entries: vec!["bin".into(), "proc".into()],
        visible_paths: paths,
    }
}

/// Every tier (microvm skipped: no KVM), noop + cpu + memory + fs + net, isolation views for
/// bare, chroot, container and emulated.
fn synthetic() -> Results {
    let marker = vec![("/var/lib/isobench/host-marker".to_string(), false)];
    let mut b = Builder::new()
        .tier(
            Tier::Bare,
            TierStatus::Ran,
            Some(view(
                4242,
                1,
                &["lo", "eth0"],
                "testhost",
                "6.1.0-test",
                None,
                vec![],
            )),
        )
        .tier(
            Tier::Chroot,
            TierStatus::Ran,
            Some(view(
                4243,
                1,
                &["lo", "eth0"],
                "testhost",
                "6.1.0-test",
                None,
                marker,
            )),
        )
        .tier(
            Tier::Container,
            TierStatus::Ran,
            Some(view(
                1,
                2,
                &["lo"],
                "isobench",
                "6.1.0-test",
                Some(512 << 20),
                vec![],
            )),
        )
        .tier(Tier::Microvm, TierStatus::Skipped, None)
        .tier(
            Tier::Emulated,
            TierStatus::Ran,
            Some(view(
                1,
                3,
                &["lo", "eth0"],
                "isobench-guest",
                "6.1.0-guest",
                Some(512 << 20),
                vec![],
            )),
        );
    // (tier, startup ms, slowdown of compute, slowdown of io)
    for (t, ready, cpu, io) in [
        (Tier::Bare, 1.2, 1.0, 1.0),
        (Tier::Chroot, 1.6, 1.0, 1.0),
        (Tier::Container, 9.0, 1.0, 1.05),
        (Tier::Emulated, 950.0, 12.0, 6.0),
    ] {
        b = b
            .metric(
                t,
                "noop",
                "launch_to_ready_ms",
                "ms",
                Better::Lower,
                spread(ready, 0.15, 20),
            )
            .metric(
                t,
                "noop",
                "launch_to_exit_ms",
                "ms",
                Better::Lower,
                spread(ready * 1.4, 0.15, 20),
            )
            .metric(
                t,
                "noop",
                "teardown_ms",
                "ms",
                Better::Lower,
                spread(ready * 0.3, 0.2, 20),
            )
            .metric(
                t,
                "noop",
                "agent_peak_rss_kib",
                "KiB",
                Better::Lower,
                vec![2048.0; 20],
            )
            .metric(
                t,
                "cpu",
                "single_ops_per_s",
                "ops/s",
                Better::Higher,
                spread(5.0e7 / cpu, 0.01, 10),
            )
            .metric(
                t,
                "cpu",
                "multi_ops_per_s",
                "ops/s",
                Better::Higher,
                spread(9.8e7 / cpu, 0.01, 10),
            )
            .metric(
                t,
                "cpu",
                "multi_threads",
                "threads",
                Better::Higher,
                vec![2.0; 10],
            )
            .metric(
                t,
                "cpu",
                "launch_to_exit_ms",
                "ms",
                Better::Lower,
                spread(2000.0 * cpu, 0.02, 10),
            )
            .metric(
                t,
                "memory",
                "copy_gb_per_s",
                "GB/s",
                Better::Higher,
                spread(12.0 / cpu, 0.01, 10),
            )
            .metric(
                t,
                "memory",
                "triad_gb_per_s",
                "GB/s",
                Better::Higher,
                spread(13.0 / cpu, 0.01, 10),
            )
            .metric(
                t,
                "memory",
                "latency_ns",
                "ns",
                Better::Lower,
                spread(90.0 * cpu, 0.01, 10),
            )
            .metric(
                t,
                "fs",
                "seq_write_mb_per_s",
                "MB/s",
                Better::Higher,
                spread(900.0 / io, 0.05, 10),
            )
            .metric(
                t,
                "fs",
                "seq_read_mb_per_s",
                "MB/s",
                Better::Higher,
                spread(1500.0 / io, 0.05, 10),
            )
            .metric(
                t,
                "fs",
                "rand_read_iops",
                "ops/s",
                Better::Higher,
                spread(40000.0 / io, 0.05, 10),
            )
            .metric(
                t,
                "fs",
                "fsync_p50_us",
                "us",
                Better::Lower,
                spread(800.0 * io, 0.05, 10),
            )
            .metric(
                t,
                "net",
                "stream_gbit_per_s",
                "Gbit/s",
                Better::Higher,
                spread(20.0 / io, 0.05, 10),
            )
            .metric(
                t,
                "net",
                "rr_latency_p50_us",
                "us",
                Better::Lower,
                spread(30.0 * io, 0.05, 10),
            );
    }
    b.done()
}

fn png_size(path: &Path) -> (u32, u32) {
    let bytes = std::fs::read(path).unwrap();
    assert!(
        bytes.len() > 2000,
        "{} is only {} bytes",
        path.display(),
        bytes.len()
    );
    assert_eq!(
        &bytes[..8],
        b"\x89PNG\r\n\x1a\n",
        "{} is not a PNG",
        path.display()
    );
    assert_eq!(&bytes[12..16], b"IHDR");
    let be = |i: usize| u32::from_be_bytes([bytes[i], bytes[i + 1], bytes[i + 2], bytes[i + 3]]);
    (be(16), be(20))
}

/// Every `<tag ...>` start position's attribute `attr` value, in order.
fn attr_values(html: &str, needle: &str) -> Vec<String> {
    html.match_indices(needle)
        .map(|(i, _)| {
            html[i + needle.len()..]
                .split('"')
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

fn headings(html: &str) -> Vec<String> {
    html.match_indices("<h2>")
        .map(|(i, _)| {
            html[i + 4..]
                .split("</h2>")
                .next()
                .unwrap_or("")
                .to_string()
        })
        .collect()
}

#[test]
fn report_files_and_structure() {
    let r = synthetic();
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(dir.path(), &r).unwrap();
    assert!(files.index_html.is_file() && files.summary_md.is_file());
    assert!(files.charts.len() >= 10, "charts: {:?}", files.charts);
    for stem in [
        "spectrum",
        "startup-launch_to_ready_ms",
        "startup-launch_to_exit_ms",
        "cpu",
        "memory",
        "fs",
        "net",
    ] {
        let (w, h) = png_size(&dir.path().join(format!("charts/{stem}.png")));
        assert!(
            (600..=2000).contains(&w) && (300..=4000).contains(&h),
            "{stem}.png is {w}x{h}"
        );
        let svg = std::fs::read_to_string(dir.path().join(format!("charts/{stem}.svg"))).unwrap();
        assert!(
            svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
            "{stem}.svg is not an SVG document"
        );
        assert!(svg.contains("<text"), "{stem}.svg has no labels");
    }

    let html = std::fs::read_to_string(&files.index_html).unwrap();
    assert!(
        !html.contains("<script") && !html.contains("<link") && !html.contains(" src="),
        "the page must not fetch anything"
    );
    assert!(html.matches("<svg").count() >= 7);
    let ids = attr_values(&html, "<section id=\"");
    for id in [
        "host",
        "honesty",
        "tiers",
        "spectrum",
        "family-startup",
        "family-cpu",
        "family-memory",
        "family-fs",
        "family-net",
        "claims",
        "felter",
        "firecracker",
        "isolation",
        "raw-data",
    ] {
        assert!(
            ids.iter().any(|x| x == id),
            "section {id} missing from {ids:?}"
        );
    }
    assert!(html.contains("href=\"results.json\"") && html.contains("href=\"samples.csv\""));
    assert!(
        html.contains("secondary"),
        "Felter's confidence must be shown"
    );
    assert!(html.contains("not a bare-metal") || html.contains("itself a virtual machine"));
    insta::assert_snapshot!(
        "html_sections",
        format!(
            "ids: {}\nheadings:\n{}",
            ids.join(", "),
            headings(&html).join("\n")
        )
    );

    let md = std::fs::read_to_string(&files.summary_md).unwrap();
    let lines: Vec<&str> = md.lines().collect();
    let structure: Vec<String> = lines
        .iter()
        .enumerate()
        .filter(|(i, l)| {
            l.starts_with('#')
                || (l.starts_with('|') && lines.get(i + 1).is_some_and(|n| n.starts_with("|---")))
        })
        .map(|(_, l)| l.to_string())
        .collect();
    assert!(
        md.contains("> ⚠️"),
        "honesty warnings belong in the summary"
    );
    insta::assert_snapshot!("summary_md_structure", structure.join("\n"));

    // To look at the synthetic report: ISOBENCH_KEEP_REPORT=/some/dir cargo test --test report
    if let Some(keep) = std::env::var_os("ISOBENCH_KEEP_REPORT") {
        let keep = Path::new(&keep);
        r.write(keep).unwrap();
        write_report(keep, &r).unwrap();
    }
}

fn claim(r: &Results, id: u8) -> Verdict {
    judge(r).into_iter().find(|c| c.id == id).unwrap().verdict
}

/// Bare and container with the given container factors on compute (cost) and its noise.
fn claim1_case(container_cost: f64, noise: f64) -> Results {
    let mut b = Builder::new().tier(Tier::Bare, TierStatus::Ran, None).tier(
        Tier::Container,
        TierStatus::Ran,
        None,
    );
    for (t, cost, n) in [
        (Tier::Bare, 1.0, 0.005),
        (Tier::Container, container_cost, noise),
    ] {
        let ready = if t == Tier::Bare { 1.0 } else { 8.0 };
        b = b
            .metric(
                t,
                "noop",
                "launch_to_ready_ms",
                "ms",
                Better::Lower,
                spread(ready, 0.1, 30),
            )
            .metric(
                t,
                "noop",
                "agent_peak_rss_kib",
                "KiB",
                Better::Lower,
                vec![2048.0; 30],
            )
            .metric(
                t,
                "cpu",
                "single_ops_per_s",
                "ops/s",
                Better::Higher,
                spread(5.0e7 / cost, n, 30),
            )
            .metric(
                t,
                "cpu",
                "multi_ops_per_s",
                "ops/s",
                Better::Higher,
                spread(9.0e7 / cost, n, 30),
            )
            .metric(
                t,
                "memory",
                "copy_gb_per_s",
                "GB/s",
                Better::Higher,
                spread(12.0 / cost, n, 30),
            )
            .metric(
                t,
                "memory",
                "triad_gb_per_s",
                "GB/s",
                Better::Higher,
                spread(13.0 / cost, n, 30),
            )
            .metric(
                t,
                "memory",
                "latency_ns",
                "ns",
                Better::Lower,
                spread(90.0 * cost, n, 30),
            );
    }
    b.done()
}

/// The parts measured here (cpu, memory, startup against the published VM boot) are supported;
/// the filesystem and network parts were not measured, so the claim stays inconclusive and
/// names the workloads that would decide it (supported on real runs: tests/claims.rs).
#[test]
fn claim1_parts_supported_when_container_matches_bare() {
    let c = judge(&claim1_case(1.0, 0.005)).remove(0);
    let part = |n: &str| c.parts.iter().find(|(p, _)| *p == n).unwrap().1;
    for p in ["cpu", "memory", "startup vs a VM"] {
        assert_eq!(part(p), Verdict::Supported, "{p}: {c:#?}");
    }
    assert_eq!(part("filesystem (volume)"), Verdict::Inconclusive);
    assert_eq!(c.verdict, Verdict::Inconclusive);
    assert!(c
        .checks
        .iter()
        .any(|k| k.evidence.contains("kind = \"fs\", path = \"volume\"")));
}

#[test]
fn claim1_contradicted_when_container_is_clearly_slower() {
    assert_eq!(claim(&claim1_case(1.4, 0.005), 1), Verdict::Contradicted);
}

#[test]
fn claim1_inconclusive_when_the_interval_straddles_the_threshold() {
    let r = claim1_case(1.05, 0.15);
    let c = judge(&r).remove(0);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{:#?}", c.checks);
    assert!(c.checks.iter().all(|k| k.verdict != Verdict::Contradicted));
}

#[test]
fn claim1_inconclusive_when_a_metric_is_not_measured() {
    let mut r = claim1_case(1.0, 0.005);
    r.samples.retain(|s| s.workload != "memory");
    r.summarize();
    let c = judge(&r).remove(0);
    assert_eq!(c.verdict, Verdict::Inconclusive);
    assert!(c
        .checks
        .iter()
        .any(|k| k.evidence.starts_with("not measured")));
}

/// Below `CLAIM_MIN_N` samples on one side every check comparing it is inconclusive and says
/// why, even where the numbers would contradict the claim; at the minimum it is judged again.
#[test]
fn claim1_inconclusive_below_the_minimum_n() {
    use isobench::report::claims::CLAIM_MIN_N;
    let mut r = claim1_case(1.4, 0.005);
    r.samples.retain(|s| s.tier != Tier::Bare || s.round < 3);
    r.summarize();
    let c = judge(&r).remove(0);
    assert_eq!(c.verdict, Verdict::Inconclusive, "{:#?}", c.checks);
    // (The startup part compares the container with a published VM boot, not with bare; the
    // filesystem and network parts are not measured in this case.)
    for k in c.checks.iter().filter(|k| {
        !k.what.contains("published VM boot") && !k.evidence.starts_with("not measured")
    }) {
        assert_eq!(k.verdict, Verdict::Inconclusive, "{k:#?}");
        assert!(
            k.evidence.starts_with(&format!(
                "bare has 3 samples; claims need >= {CLAIM_MIN_N} per tier"
            )),
            "{k:#?}"
        );
    }
    let mut r = claim1_case(1.4, 0.005);
    r.samples
        .retain(|s| s.tier != Tier::Bare || s.round < CLAIM_MIN_N as u32);
    r.summarize();
    assert_eq!(claim(&r, 1), Verdict::Contradicted);
}

#[test]
fn claim2_inconclusive_when_only_emulated_ran() {
    let r = synthetic();
    let c = judge(&r).into_iter().find(|c| c.id == 2).unwrap();
    assert_eq!(c.verdict, Verdict::Inconclusive);
    assert!(c.checks.iter().all(|k| k.verdict == Verdict::Inconclusive));
    // The emulated numbers are still shown as context.
    assert!(
        c.checks
            .iter()
            .any(|k| k.what.contains("emulated vs container") && k.evidence.contains("cost ×")),
        "{:#?}",
        c.checks
    );
}

/// Claim 2 as the study found it under KVM: memory the same, filesystem and network much
/// slower. One verdict per subsystem shows the split; the claim (all three far faster) is
/// contradicted by memory.
#[test]
fn claim2_gives_one_verdict_per_subsystem() {
    let mut b = Builder::new()
        .tier(Tier::Bare, TierStatus::Ran, None)
        .tier(Tier::Container, TierStatus::Ran, None)
        .tier(Tier::Microvm, TierStatus::Ran, None);
    let metrics: [(&str, &str, &str, Better, f64); 10] = [
        ("memory", "copy_gb_per_s", "GB/s", Better::Higher, 12.0),
        ("memory", "triad_gb_per_s", "GB/s", Better::Higher, 13.0),
        ("memory", "latency_ns", "ns", Better::Lower, 90.0),
        ("fs", "seq_write_mb_per_s", "MB/s", Better::Higher, 800.0),
        ("fs", "seq_read_mb_per_s", "MB/s", Better::Higher, 900.0),
        ("fs", "rand_read_iops", "IOPS", Better::Higher, 10000.0),
        ("fs", "rand_write_iops", "IOPS", Better::Higher, 12000.0),
        ("fs", "fsync_p50_us", "µs", Better::Lower, 4000.0),
        ("net", "stream_gbit_per_s", "Gbit/s", Better::Higher, 6.0),
        ("net", "rr_latency_p50_us", "µs", Better::Lower, 14.0),
    ];
    for (wl, metric, unit, better, v) in metrics {
        // The VM costs nothing on memory and x3 on the filesystem and the network.
        let cost = if wl == "memory" { 1.0 } else { 3.0 };
        let vm = match better {
            Better::Higher => v / cost,
            Better::Lower => v * cost,
        };
        for (tier, value) in [(Tier::Bare, v), (Tier::Container, v), (Tier::Microvm, vm)] {
            b = b.metric(tier, wl, metric, unit, better, spread(value, 0.01, 30));
        }
    }
    let r = b.done();
    let c = judge(&r).remove(1);
    assert_eq!(c.id, 2);
    assert_eq!(
        c.parts,
        vec![
            ("memory", Verdict::Contradicted),
            ("filesystem", Verdict::Supported),
            ("network", Verdict::Supported),
        ],
        "{:#?}",
        c.checks
    );
    assert_eq!(c.verdict, Verdict::Contradicted);
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(dir.path(), &r).unwrap();
    let md = std::fs::read_to_string(&files.summary_md).unwrap();
    assert!(
        md.contains("memory: contradicted · filesystem: supported · network: supported"),
        "{md}"
    );
    let html = std::fs::read_to_string(&files.index_html).unwrap();
    assert!(
        html.contains("filesystem: "),
        "claim 2's parts are missing from index.html"
    );
}

#[test]
fn isolation_claims_judged_on_the_observed_views() {
    let r = synthetic();
    assert_eq!(claim(&r, 4), Verdict::Supported, "{:#?}", judge(&r)[3]);
    assert_eq!(claim(&r, 5), Verdict::Supported, "{:#?}", judge(&r)[4]);
    // A chroot that saw the host marker contradicts "the path outside is invisible".
    let mut leaky = r.clone();
    let chroot = leaky
        .tiers
        .iter_mut()
        .find(|t| t.tier == Tier::Chroot)
        .unwrap();
    chroot.isolation.as_mut().unwrap().visible_paths[0].1 = true;
    assert_eq!(claim(&leaky, 4), Verdict::Contradicted);
    // A jail whose user namespace cannot be observed: "users stay shared" is not shown by a
    // matching uid alone, so the check (and the claim) is inconclusive, not supported.
    let mut unobserved = r.clone();
    let chroot = unobserved
        .tiers
        .iter_mut()
        .find(|t| t.tier == Tier::Chroot)
        .unwrap();
    chroot.isolation.as_mut().unwrap().namespaces.remove("user");
    let verdicts = judge(&unobserved);
    let users = verdicts[3]
        .checks
        .iter()
        .find(|c| c.what == "users shared")
        .unwrap();
    assert_eq!(users.verdict, Verdict::Inconclusive, "{users:?}");
    assert!(users.evidence.contains("not observable"), "{users:?}");
    assert_eq!(claim(&unobserved, 4), Verdict::Inconclusive);
    // No container view: inconclusive, not supported.
    let mut blind = r;
    blind.tiers.retain(|t| t.tier != Tier::Container);
    assert_eq!(claim(&blind, 5), Verdict::Inconclusive);
}

/// What the run found comes first: index.html opens with the verdicts (each with what decided
/// it) and the spectrum, then host, warnings and tiers; summary.md opens with the claims. Every
/// chart says in a sentence what it shows; the tiers' "how it ran" folds away.
#[test]
fn claims_come_first_in_the_page_and_the_summary() {
    let dir = tempfile::tempdir().unwrap();
    let r = synthetic();
    let files = write_report(dir.path(), &r).unwrap();
    let html = std::fs::read_to_string(&files.index_html).unwrap();
    let ids = attr_values(&html, "<section id=\"");
    let at = |id: &str| {
        ids.iter()
            .position(|x| x == id)
            .unwrap_or_else(|| panic!("{id}: {ids:?}"))
    };
    assert_eq!(at("findings"), 0, "{ids:?}");
    assert!(
        at("findings") < at("spectrum") && at("spectrum") < at("host"),
        "{ids:?}"
    );
    assert!(
        at("host") < at("honesty") && at("honesty") < at("tiers"),
        "{ids:?}"
    );
    let findings = &html[html.find("id=\"findings-table\"").unwrap()..];
    let findings = &findings[..findings.find("</table>").unwrap()];
    assert_eq!(findings.matches("<tr><td>").count(), 5, "{findings}");
    for c in isobench::report::claims::judge(&r) {
        let h = isobench::report::headline(&c);
        assert!(findings.contains(&format!("v-{}", h.verdict.label())));
        assert!(
            !h.figure.is_empty(),
            "claim {} has no deciding figure",
            c.id
        );
    }
    // The synthetic run has no hardware KVM: claims 2 and 3 say what would decide them.
    assert!(
        findings
            .matches("needs hardware KVM (vmx/svm), which the microvm tier supplies")
            .count()
            >= 2,
        "{findings}"
    );
    let tiers = &html[html.find("<section id=\"tiers\"").unwrap()..];
    let tiers = &tiers[..tiers.find("</section>").unwrap()];
    assert_eq!(
        tiers.matches("<details>").count(),
        r.tiers.len(),
        "one folded 'how it ran' per tier"
    );
    let figures = html.matches("<figure").count();
    assert!(figures >= 7);
    assert_eq!(html.matches("<figcaption>").count(), figures);
    // Every caption: a bold title, then a sentence.
    for cap in html.split("<figcaption>").skip(1) {
        let sentence = cap.split("</b> ").nth(1).unwrap_or_default();
        assert!(
            sentence
                .split(" <a href")
                .next()
                .unwrap_or_default()
                .ends_with('.'),
            "{cap}"
        );
    }

    let md = std::fs::read_to_string(&files.summary_md).unwrap();
    let first = md.lines().find(|l| l.starts_with("### ")).unwrap();
    assert!(first.contains("claims"), "{first}");
    assert!(md.find("| # | claim |").unwrap() < md.find("**Host:**").unwrap());
    assert!(md.contains("### Every metric"));
}

fn chromium() -> Option<std::path::PathBuf> {
    ["chromium", "chromium-browser"]
        .iter()
        .find_map(|b| isobench::host::facts::which(b))
}

#[test]
fn report_renders_in_chromium() {
    let Some(browser) = chromium() else {
        println!(
            "SKIPPED report_renders_in_chromium: chromium not installed (apt-get install chromium)"
        );
        assert!(
            std::env::var("ISOBENCH_REQUIRE_PRIVILEGED").as_deref() != Ok("1"),
            "ISOBENCH_REQUIRE_PRIVILEGED=1 but chromium is not installed"
        );
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(dir.path(), &synthetic()).unwrap();
    let url = format!("file://{}", files.index_html.display());
    let shot = dir.path().join("screenshot.png");
    let run = |extra: &[String]| {
        let profile = tempfile::tempdir().unwrap();
        let out = Command::new("timeout")
            .args(["--kill-after=5", "90"])
            .arg(&browser)
            .args([
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--disable-quic",
                "--no-first-run",
                "--disable-background-networking",
                "--disable-component-update",
                "--disable-sync",
                "--disable-dev-shm-usage",
                "--enable-logging=stderr",
                "--v=0",
            ])
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .args(extra)
            .arg(&url)
            .output()
            .expect("running chromium");
        assert!(
            out.status.success(),
            "chromium failed: {}\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
        (
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (_, log) = run(&[
        format!("--screenshot={}", shot.display()),
        "--window-size=1280,2400".into(),
        "--hide-scrollbars".into(),
    ]);
    let (w, h) = png_size(&shot);
    assert_eq!((w, h), (1280, 2400));
    assert!(
        std::fs::metadata(&shot).unwrap().len() > 50_000,
        "the screenshot is nearly empty"
    );
    let (dom, log2) = run(&["--dump-dom".into()]);
    for l in log.lines().chain(log2.lines()) {
        assert!(
            !l.contains(":CONSOLE(") && !l.contains("ERR_FILE_NOT_FOUND"),
            "console message or failed load: {l}"
        );
    }
    assert!(dom.matches("<svg").count() >= 7, "the DOM lacks the charts");
    assert!(dom.contains("id=\"claims-table\"") && dom.contains("id=\"isolation-table\""));
    // What the run found opens the rendered page, before the host.
    let (f, h) = (dom.find("id=\"findings-table\""), dom.find("id=\"host\""));
    assert!(f.is_some() && f < h, "findings must come before the host");
    for v in ["supported", "inconclusive"] {
        assert!(dom.contains(&format!("v-{v}")), "no {v} verdict rendered");
    }
    if let Ok(keep) = std::env::var("ISOBENCH_KEEP_SCREENSHOT") {
        std::fs::copy(&shot, keep).unwrap();
    }
}

/// The summary and the page say, per tier, whether the previous tier explains its variance.
#[test]
fn report_says_whether_the_previous_tier_explains_the_variance() {
    let b = Builder::new()
        .tier(Tier::Bare, TierStatus::Ran, None)
        .tier(Tier::Chroot, TierStatus::Ran, None)
        .tier(Tier::Container, TierStatus::Ran, None);
    // container: 2 ms after bare, 1 ms after chroot (a planted carry-over); chroot: the same
    // after either; bare: two launches after each tier only (too few).
    let jitter = |i: u32| f64::from(i % 5) * 0.01;
    let planted: Vec<(Option<Tier>, f64)> = (0..16)
        .map(|i| {
            if i % 2 == 0 {
                (Some(Tier::Bare), 2.0 + jitter(i))
            } else {
                (Some(Tier::Chroot), 1.0 + jitter(i))
            }
        })
        .collect();
    let flat: Vec<(Option<Tier>, f64)> = (0..16)
        .map(|i| {
            let prev = if i % 2 == 0 {
                Tier::Bare
            } else {
                Tier::Container
            };
            (Some(prev), 1.0 + f64::from((i * 7) % 16) * 0.01)
        })
        .collect();
    let few = [
        (None, 1.0),
        (Some(Tier::Chroot), 1.1),
        (Some(Tier::Chroot), 1.2),
        (Some(Tier::Container), 1.0),
        (Some(Tier::Container), 1.3),
    ];
    let r = b
        .after(Tier::Container, &planted)
        .after(Tier::Chroot, &flat)
        .after(Tier::Bare, &few)
        .done();
    let dir = tempfile::tempdir().unwrap();
    let files = write_report(dir.path(), &r).unwrap();
    let md = std::fs::read_to_string(&files.summary_md).unwrap();
    let html = std::fs::read_to_string(&files.index_html).unwrap();
    for text in [&md, &html] {
        assert!(
            text.contains("previous tier explains")
                && text.contains("of container&#39;s launch→exit variance")
                || text.contains("of container's launch→exit variance"),
            "{text}"
        );
        assert!(
            text.contains("chroot launch→exit: no detectable carry-over"),
            "{text}"
        );
        assert!(text.contains("bare launch→exit: too few samples"), "{text}");
    }
    assert!(html.contains("id=\"carry-over\""));

    // Results from before the launch order was recorded say so, and nothing more.
    let mut old = r.clone();
    old.order = None;
    for s in &mut old.samples {
        s.position = None;
        s.previous_tier = None;
    }
    write_report(dir.path(), &old).unwrap();
    let md = std::fs::read_to_string(&files.summary_md).unwrap();
    assert!(md.contains("did not record the launch order"), "{md}");
    assert!(!md.contains("no detectable carry-over"), "{md}");
}
