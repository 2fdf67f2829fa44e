use super::*;
use crate::rollout::plan::RolloutPlan;
use crate::rollout::{Phase, RolloutState};
use policy_canary::evidence::{encode, plan, Reporter};
use policy_canary::replicate::ReplicateCounter;

const DOCUMENT: &[u8] = br#"{"revision": 3, "routes": {"t": {"revision": 3, "salt": "s", "canary_weight_bp": 500, "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"}, "segments": [], "metrics": ["judge"]}}}"#;

/// A report as the filter writes it: every stat of the plan at `base` plus its index.
fn report(envoy: &str, instance: u64, started_ms: u64, base: u64) -> Report {
    let plans = plan(DOCUMENT);
    let values: Vec<Vec<u64>> = plans
        .iter()
        .map(|p| (0..p.stats().count() as u64).map(|i| base + i).collect())
        .collect();
    let text = encode(
        &Reporter {
            envoy,
            instance,
            started_ms,
        },
        &plans,
        &values,
    );
    Report::parse(text.as_bytes()).unwrap()
}

fn row() -> RolloutRow {
    let plan = RolloutPlan::parse(
        "target: t\nstable: {version: v1, cluster: a}\ncanary: {version: v2, cluster: b}\nstages: [{weight: 5%, min_duration: 1h}, {weight: 100%}]\n",
    )
    .unwrap();
    RolloutRow {
        id: 1,
        target: "t".into(),
        plan,
        salt: "s".into(),
        state: RolloutState {
            phase: Phase::Progressing,
            stage: 0,
            stage_started_ms: 10_000,
        },
        created_ms: 0,
        updated_ms: 0,
    }
}

#[test]
fn a_report_reads_back_as_the_filter_counted() {
    let r = report("gw-1", 7, 5, 1);
    assert_eq!((r.envoy.as_str(), r.instance.as_str()), ("gw-1", "7"));
    let scrape = r.scrape("t");
    assert_eq!(scrape.series.len(), 8);
    let stable = scrape.version("v1").unwrap();
    // rq_total is the plan's first stat: 1 + 0.
    assert_eq!(stable.get("rq_total"), 1.0);
    assert_eq!(stable.get("custom_judge_invalid"), 23.0);
    // Replicate 1's rq_total is stat 23 + 31 (23 counters, 31 slots a row).
    let first_replicate = 23;
    assert_eq!(
        stable.replicate(1, Slot::Counter(ReplicateCounter::RqTotal)),
        (1 + first_replicate + Slot::COUNT) as f64
    );
    assert_eq!(
        stable.named_replicate(0, "custom_judge_micros"),
        (1 + 23 + 32 * 31) as f64
    );
    // The latency histogram: the replicates' buckets added up, cumulative.
    assert_eq!(stable.latency.len(), LATENCY_BUCKETS);
    assert_eq!(stable.latency.last().unwrap().0, f64::INFINITY);
    let first_bucket: f64 = (0..REPLICATES)
        .map(|r| stable.replicate(r, Slot::Latency(0)))
        .sum();
    assert_eq!(stable.latency[0].1, first_bucket);
    assert!(stable.latency.windows(2).all(|w| w[0].1 <= w[1].1));
    let forced = &scrape.series[&SeriesKey::new(Traffic::Forced, "v2")];
    assert!(forced.replicates.is_empty() && forced.latency.is_empty());
    assert!(r.scrape("other").series.is_empty());
}

#[test]
fn bad_reports_get_a_clear_error() {
    let good =
        r#"{"envoy": "gw", "instance": "1", "started_ms": 0, "slots": ["rq_total"], "series": []}"#;
    assert!(Report::parse(good.as_bytes()).is_ok());
    for (bad, expected) in [
        ("not json", "expected"),
        (r#"{"envoy": "gw"}"#, "missing field"),
        (&good.replace("\"gw\"", "\"two words\""), "envoy:"),
        (&good.replace("\"1\"", "\"x1\""), "instance:"),
        (
            &good.replace(
                "[]}",
                r#"[{"target": "t", "traffic": "vip", "version": "v"}]}"#,
            ),
            "unknown class `vip`",
        ),
        (
            &good.replace(
                "[]}",
                r#"[{"target": "t", "version": "v", "replicates": [[1, 2]]}]}"#,
            ),
            "replicates:",
        ),
        (
            &good.replace(
                "[]}",
                r#"[{"target": "t", "version": "v", "counters": {"rq_total": -1}}]}"#,
            ),
            "invalid value",
        ),
    ] {
        let message = Report::parse(bad.as_bytes()).unwrap_err();
        assert!(message.contains(expected), "{bad}: {message}");
    }
}

fn source() -> (Arc<SyncEvidence>, EvidenceJudge, RolloutRow) {
    let judge = EvidenceJudge::default();
    let source = SyncEvidence::new(judge.clone(), Arc::default(), 0);
    let row = row();
    *source.active.write().unwrap() = Arc::new(vec![row.clone()]);
    (source, judge, row)
}

fn total(judge: &EvidenceJudge, row: &RolloutRow) -> f64 {
    judge.with(row, |t| t.window.version("v1").get("rq_total"))
}

#[test]
fn deltas_per_envoy_and_a_restart_counts_whole() {
    let (source, judge, row) = source();
    // gw-1 began before the window (started 5 < 10,000): a baseline only.
    source.receive(&report("gw-1", 7, 5, 100), 20_000);
    assert_eq!(total(&judge, &row), 0.0);
    source.receive(&report("gw-1", 7, 5, 130), 30_000);
    assert_eq!(total(&judge, &row), 30.0);
    // The same report again (a retry): nothing more.
    source.receive(&report("gw-1", 7, 5, 130), 31_000);
    assert_eq!(total(&judge, &row), 30.0);
    // gw-2 began inside the window: all it counted is the window's.
    source.receive(&report("gw-2", 9, 15_000, 40), 32_000);
    assert_eq!(total(&judge, &row), 70.0);
    // gw-1 restarted (another instance) and has counted past its old value.
    source.receive(&report("gw-1", 8, 33_000, 500), 40_000);
    assert_eq!(total(&judge, &row), 570.0);
    // Replicates and custom counts follow the same deltas.
    let (replicated, judged) = judge.with(&row, |t| {
        let v1 = t.window.version("v1");
        (
            (0..REPLICATES)
                .map(|r| v1.replicate(r, Slot::Counter(ReplicateCounter::RqTotal)))
                .sum::<f64>(),
            v1.get("custom_judge_micros"),
        )
    });
    assert!(replicated > 0.0 && judged > 0.0);
    // A controller restart keeps the instance with the baselines.
    let snapshot = judge.with(&row, |t| t.window.snapshot());
    let restored = super::super::Window::restore(snapshot);
    let mut again = restored.clone();
    again.add("gw-1", &report("gw-1", 8, 33_000, 510).scrape("t"));
    assert_eq!(
        again.version("v1").get("rq_total") - restored.version("v1").get("rq_total"),
        10.0
    );
}

#[test]
fn an_envoy_that_follows_but_does_not_report_holds_the_stage() {
    let (source, _, _) = source();
    let following = vec!["gw-1".to_string(), "gw-2".to_string(), "gw-3".to_string()];
    // Within three intervals of the controller's start: nobody is missing yet.
    assert!(source.missing(&following, 20_000, 30_000).is_empty());
    source.receive(&report("gw-1", 7, 5, 1), 40_000);
    source.receive(&report("gw-2", 7, 5, 1), 50_000);
    let missing = source.missing(&following, 75_000, 30_000);
    assert_eq!(
        missing,
        vec![
            ("gw-1".to_string(), Some(40_000)),
            ("gw-3".to_string(), None)
        ]
    );
    let reason = missing_reason(&missing, 75_000);
    assert!(
        reason.starts_with("evidence missing from 2 Envoy(s) that follow the controller (gw-1: last report 35 s ago; gw-3: no report)"),
        "{reason}"
    );
    // An Envoy that no longer follows (gone) is not waited for.
    assert!(source
        .missing(&["gw-2".to_string()], 75_000, 30_000)
        .is_empty());
}
