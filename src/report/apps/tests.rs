//! Unit tests of the applications' section: the study's figures, the ratios and their cells.
use super::*;
use crate::model::results::Sample;
use crate::protocol::Better;

#[test]
fn study_ratios_come_from_the_authors_data() {
    let m = study_ratios("mysql");
    let get = |l: &str| m.iter().find(|(k, _)| k.starts_with(l)).unwrap().1;
    assert_eq!(get("Docker net=host, volume"), 0.982);
    assert_eq!(get("Docker NAT, layered"), 0.855);
    assert_eq!(get("KVM"), 0.422);
    let r = study_ratios("redis");
    let nat = r.iter().find(|(k, _)| k == "Docker NAT").unwrap().1;
    // (83.0 / 107.3 + 83.3 / 112.9) / 2
    assert!((nat - 0.7556).abs() < 0.001, "{nat}");
    assert!(study_ratios("nginx").is_empty());
}

/// Samples of `metric` for `tier`, one per round, from `values`.
fn launches(tier: Tier, workload: &str, metric: &str, values: &[f64]) -> Vec<Sample> {
    values
        .iter()
        .enumerate()
        .map(|(round, &value)| Sample {
            tier,
            workload: workload.into(),
            metric: metric.into(),
            unit: "tps".into(),
            better: Better::Higher,
            round: round as u32,
            value,
            position: None,
            previous_tier: None,
            kind: Default::default(),
        })
        .collect()
}

#[test]
fn mysql_peak_is_each_launchs_best_point_and_has_an_interval() {
    // Bare peaks at 4 threads (100), the container at 2 (80): peak over peak is 0.8,
    // although no single thread count gives it.
    let mut s = vec![];
    s.extend(launches(Tier::Bare, "mysql", "tps_t2", &[90.0; 6]));
    s.extend(launches(
        Tier::Bare,
        "mysql",
        "tps_t4",
        &[100.0, 101.0, 99.0, 100.0, 102.0, 98.0],
    ));
    s.extend(launches(
        Tier::Container,
        "mysql",
        "tps_t2",
        &[80.0, 81.0, 79.0, 80.0, 82.0, 78.0],
    ));
    s.extend(launches(Tier::Container, "mysql", "tps_t4", &[60.0; 6]));
    let mut r = crate::compare::synthetic::results("h", s);
    r.summarize();
    let p = peak_ratio(&r, Tier::Container, "mysql", "tps_t").unwrap();
    assert!((p.ratio - 0.8).abs() < 1e-9, "{p:?}");
    let (lo, hi) = p.ci().expect("6 launches a side: an interval");
    assert!(lo <= 0.8 && hi >= 0.8 && lo > 0.7 && hi < 0.9, "{p:?}");
    assert!(ratio_cell(&Some(p)).starts_with("0.80 ["));
}

#[test]
fn redis_ratio_is_at_the_highest_common_point_and_says_when_it_has_no_interval() {
    let mut s = vec![];
    s.extend(launches(Tier::Bare, "redis", "set_rps_c1", &[10.0; 3]));
    s.extend(launches(Tier::Bare, "redis", "set_rps_c120", &[200.0; 3]));
    s.extend(launches(Tier::Bare, "redis", "set_rps_c200", &[300.0; 3]));
    s.extend(launches(Tier::Gvisor, "redis", "set_rps_c1", &[5.0; 3]));
    s.extend(launches(Tier::Gvisor, "redis", "set_rps_c120", &[100.0; 3]));
    let mut r = crate::compare::synthetic::results("h", s);
    r.summarize();
    let p = point_ratio(&r, Tier::Gvisor, "redis", "set_rps_c").unwrap();
    assert_eq!(p.ratio, 0.5);
    assert!(p.ci().is_none());
    assert_eq!(ratio_cell(&Some(p)), "0.50 (no interval)");
    assert_eq!(ratio_cell(&None), "–");
}
