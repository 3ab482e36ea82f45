use super::synthetic::{draw, metric, results};
use super::*;

fn opts() -> CompareOptions {
    CompareOptions {
        resamples: 200,
        ..Default::default()
    }
}

#[test]
fn a_run_against_itself_is_unchanged() {
    let r = results("h", draw(1, 12, 30, None));
    let c = compare(&r, "a", &r, "a", &opts());
    assert_eq!(c.metrics.len(), 12);
    assert!(
        c.metrics.iter().all(|m| m.verdict == Verdict::Unchanged),
        "{c:#?}"
    );
    assert!(c.warnings.is_empty(), "{:?}", c.warnings);
}

#[test]
fn planted_slowdown_is_flagged_on_that_metric_only() {
    for k in [0, 7] {
        let base = results("h", draw(10, 24, 40, None));
        let new = results("h", draw(11, 24, 40, Some((k, 1.3))));
        let c = compare(&base, "b", &new, "n", &opts());
        let bad: Vec<String> = c.regressed().map(|m| m.metric.clone()).collect();
        assert_eq!(
            bad,
            vec![metric(k).1],
            "{}",
            render::render(&c, render::Format::Table)
        );
    }
}

#[test]
fn improvement_is_not_a_regression() {
    let base = results("h", draw(20, 6, 40, Some((2, 1.3))));
    let new = results("h", draw(21, 6, 40, None));
    let c = compare(&base, "b", &new, "n", &opts());
    assert_eq!(c.count(Verdict::Regressed), 0);
    assert_eq!(
        c.metrics
            .iter()
            .filter(|m| m.verdict == Verdict::Improved)
            .map(|m| m.metric.clone())
            .collect::<Vec<_>>(),
        vec![metric(2).1]
    );
}

#[test]
fn small_significant_change_within_threshold_is_unchanged() {
    // 3% slower on 2000 samples: significant, but within the 10% latency threshold.
    let base = results("h", draw(30, 1, 2000, None));
    let new = results("h", draw(31, 1, 2000, Some((0, 1.03))));
    let c = compare(
        &base,
        "b",
        &new,
        "n",
        &CompareOptions {
            resamples: 0,
            ..Default::default()
        },
    );
    let m = &c.metrics[0];
    assert!(m.p_adjusted.unwrap() <= 0.01, "{m:?}");
    assert_eq!(m.verdict, Verdict::Unchanged);
    assert!(
        m.note.as_deref().unwrap().contains("within threshold"),
        "{m:?}"
    );
}

#[test]
fn too_few_samples_or_one_sided_is_inconclusive() {
    let base = results("h", draw(40, 3, 4, None));
    let mut new = results("h", draw(41, 4, 4, None));
    let c = compare(&base, "b", &new, "n", &opts());
    assert!(c.metrics.iter().all(|m| m.verdict == Verdict::Inconclusive));
    assert_eq!(c.metrics.len(), 4);
    assert!(
        c.metrics[3]
            .note
            .as_deref()
            .unwrap()
            .contains("only in the new run")
            || c.metrics
                .iter()
                .any(|m| m.note.as_deref() == Some("only in the new run"))
    );
    new.samples.clear();
    let c = compare(&base, "b", &new, "n", &opts());
    assert!(c
        .metrics
        .iter()
        .all(|m| m.note.as_deref() == Some("only in the base run")));
}

#[test]
fn different_hosts_and_kernels_warn_in_every_format() {
    let base = results("alpha", draw(50, 3, 10, None));
    let mut new = results("beta", draw(51, 3, 10, None));
    new.host.kernel = "9.9.9-other".into();
    let c = compare(&base, "b", &new, "n", &opts());
    assert_eq!(c.warnings.len(), 2, "{:?}", c.warnings);
    for f in [
        render::Format::Table,
        render::Format::Markdown,
        render::Format::Json,
    ] {
        let s = render::render(&c, f);
        assert!(
            s.contains("different hosts") && s.contains("different host kernels"),
            "{f:?}: {s}"
        );
    }
}

#[test]
fn outputs_have_the_documented_structure() {
    let base = results("h", draw(60, 4, 20, None));
    let new = results("h", draw(61, 4, 20, Some((1, 1.5))));
    let c = compare(&base, "b", &new, "n", &opts());
    let md = render::render(&c, render::Format::Markdown);
    assert!(md.starts_with("## isobench compare: ❌ regression"), "{md}");
    assert!(md.contains("| tier | workload | metric |"));
    assert_eq!(
        md.lines()
            .filter(|l| l.starts_with("| ") && !l.starts_with("| tier"))
            .count(),
        4
    );
    let v: serde_json::Value =
        serde_json::from_str(&render::render(&c, render::Format::Json)).unwrap();
    assert_eq!(
        v["summary"]["regressed_metrics"],
        serde_json::json!([format!("chroot/noop/{}", metric(1).1)])
    );
    assert_eq!(v["correction"], "holm");
    assert_eq!(v["metrics"].as_array().unwrap().len(), 4);
    let t = render::render(&c, render::Format::Table);
    assert!(
        t.contains("1 regressed, 0 improved, 3 unchanged, 0 inconclusive"),
        "{t}"
    );
}
