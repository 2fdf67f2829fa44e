//! What the filter counts apart from its built-in telemetry: custom metrics, and
//! traffic outside the comparison (forced, segment-routed, sessionless).

use super::host::mock::MockHost;
use super::host::MapKind;
use super::tests::{run_stream, stat, CONFIG};
use super::*;

/// Custom metrics the route table names are counted per version and replicate
/// (sum in micro-units, reports, invalid ones); every `x-agent-metric-*` header
/// is stripped, named or not.
#[test]
fn custom_metrics_are_counted_and_stripped() {
    let config = CONFIG.replace(
        r#""canary_weight_bp": 10000,"#,
        r#""canary_weight_bp": 10000, "metrics": ["judge_score", "refund"],"#,
    );
    let host = MockHost::default()
        .with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")])
        .with_map(
            MapKind::ResponseHeaders,
            &[
                (":status", b"200"),
                ("x-agent-metric-judge_score", b"0.75"),
                ("x-agent-metric-refund", b"-3"),
                ("x-agent-metric-other", b"1"),
            ],
        )
        .with_map(
            MapKind::ResponseTrailers,
            &[("x-agent-metric-judge_score", b"0.5")],
        );
    let mut role = Role::configure(&host, Some(b"filter"), config.as_bytes()).unwrap();
    run_stream(&role, &host);
    for _ in 0..worker::FLUSH_EVERY_TICKS {
        role.on_tick(&host);
    }
    let response = host.maps.borrow()[&MapKind::ResponseHeaders].clone();
    let names: Vec<&str> = response.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec![":status"]);
    assert_eq!(
        host.header(MapKind::ResponseTrailers, "x-agent-metric-judge_score"),
        None
    );
    // The trailer's value replaced the header's, as for the built-in telemetry.
    assert_eq!(
        host.metric(&stat("v2", "custom_judge_score_micros")),
        Some(500_000)
    );
    assert_eq!(
        host.metric(&stat("v2", "custom_judge_score_reports")),
        Some(1)
    );
    assert_eq!(host.metric(&stat("v2", "custom_refund_invalid")), Some(1));
    assert_eq!(host.metric(&stat("v2", "custom_refund_reports")), None);
    let replicate = crate::cohort::assign(b"user-1", b"s1").replicate;
    let rep = |suffix: &str| stat("v2", &format!("replicate.{replicate}.{suffix}"));
    assert_eq!(
        host.metric(&rep("custom_judge_score_micros")),
        Some(500_000)
    );
    assert_eq!(host.metric(&rep("custom_judge_score_reports")), Some(1));
    assert!(!host.metric_names().iter().any(|n| n.contains("other")));
}

/// Forced, segment-routed and sessionless-to-stable requests are outside the
/// comparison: counted under `<target>.<class>`, in no replicate.
/// `session_replicates: false` keeps no replicate at all.
#[test]
fn replicates_count_only_randomised_requests() {
    let segmented = CONFIG.replace(
        r#""canary_weight_bp": 10000,"#,
        r#""canary_weight_bp": 10000, "segments": [{"header": "x-user-group", "value": "internal", "canary_weight_bp": 10000}],"#,
    );
    let counted_under = |headers: &[(&str, &[u8])]| -> Vec<String> {
        let host = MockHost::default().with_map(MapKind::RequestHeaders, headers);
        let mut role = Role::configure(&host, Some(b"filter"), segmented.as_bytes()).unwrap();
        run_stream(&role, &host);
        for _ in 0..worker::FLUSH_EVERY_TICKS {
            role.on_tick(&host);
        }
        let mut names: Vec<String> = host
            .metric_names()
            .into_iter()
            .filter(|n| n.ends_with(".rq_total") && !n.contains(".replicate."))
            .collect();
        names.sort();
        names
    };
    let total = |target: &str, version: &str| {
        vec![format!(
            "policy_canary.target.{target}.version.{version}.rq_total"
        )]
    };
    assert_eq!(
        counted_under(&[("x-session-id", b"user-1")]),
        total("support-agent", "v2")
    );
    assert_eq!(
        counted_under(&[("x-session-id", b"user-1"), ("x-user-group", b"internal")]),
        total("support-agent.segment", "v2")
    );
    assert_eq!(counted_under(&[]), total("support-agent.sessionless", "v1"));
    assert_eq!(
        counted_under(&[("x-session-id", b"user-1"), ("x-canary", b"false")]),
        total("support-agent.forced", "v1")
    );
    let replicated = |config: &str, headers: &[(&str, &[u8])]| -> bool {
        let host = MockHost::default().with_map(MapKind::RequestHeaders, headers);
        let mut role = Role::configure(&host, Some(b"filter"), config.as_bytes()).unwrap();
        run_stream(&role, &host);
        for _ in 0..worker::FLUSH_EVERY_TICKS {
            role.on_tick(&host);
        }
        let names = host.metric_names();
        names.iter().any(|n| n.contains(".replicate."))
    };
    assert!(replicated(CONFIG, &[("x-session-id", b"user-1")]));
    assert!(!replicated(CONFIG, &[]), "sessionless, to stable");
    assert!(!replicated(
        CONFIG,
        &[("x-session-id", b"user-1"), ("x-canary", b"true")]
    ));
    let random = CONFIG.replacen('{', r#"{"session": {"missing": "random"},"#, 1);
    assert!(
        replicated(&random, &[]),
        "sessionless, randomised one by one"
    );
    let off = CONFIG.replacen('{', r#"{"session_replicates": false,"#, 1);
    assert!(!replicated(&off, &[("x-session-id", b"user-1")]));
    assert!(!replicated(
        &segmented,
        &[("x-session-id", b"user-1"), ("x-user-group", b"internal")]
    ));
}

/// A worker's tally can be flushed by another thread on its behalf (the native
/// module's main thread does so): its streams' counts wait there, whole, and
/// leave once.
#[test]
fn a_tally_is_flushed_by_another_thread() {
    let host = MockHost::default()
        .with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")])
        .with_map(
            MapKind::ResponseHeaders,
            &[(":status", b"200"), ("x-agent-tokens", b"812")],
        );
    // Not stripped, so that each stream finds the telemetry the mock holds.
    let json = CONFIG.replace(
        r#""target": "support-agent","#,
        r#""target": "support-agent", "telemetry": {"strip": false},"#,
    );
    let config = crate::config::PluginConfig::from_json(json.as_bytes()).unwrap();
    let worker = std::rc::Rc::new(worker::Worker::new(config, &host));
    for _ in 0..3 {
        let mut stream = stream::Stream::new(Some(std::rc::Rc::clone(&worker)));
        stream.on_request_headers(&host);
        stream.on_response_headers(&host);
        stream.on_log(&host);
    }
    assert_eq!(host.metric(&stat("v2", "rq_total")), None);
    let tally = worker.shared_tally();
    let flushed = std::thread::spawn(move || {
        let main = MockHost::default();
        let counts = |main: &MockHost| {
            (
                main.metric(&stat("v2", "rq_total")),
                main.metric(&stat("v2", "tokens")),
            )
        };
        tally.lock().unwrap().flush(&main, "support-agent");
        let first = counts(&main);
        tally.lock().unwrap().flush(&main, "support-agent");
        (first, counts(&main))
    })
    .join()
    .unwrap();
    assert_eq!(flushed.0, (Some(3), Some(3 * 812)));
    assert_eq!(flushed.1, flushed.0, "a second flush adds nothing");
}
