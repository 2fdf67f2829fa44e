//! Evidence reports from the sync service: the Envoy-wide counts the workers
//! flushed, read back and posted; an unreadable counter sends nothing; the
//! controller's refusals are counted and said once.

use super::host::mock::MockHost;
use super::host::{LogLevel, MapKind};
use super::tests::{filter, header_of, routes, run_stream};
use super::*;
use crate::evidence::INSTANCE_KEY;
use crate::sync::ROUTES_KEY;

const REPORTING: &str = r#"{"sync": {"cluster": "controller", "wait_ms": 1000, "evidence_ms": 5000, "token": "pct_sync", "envoy_id": "edge-1"}}"#;

/// Ticks the service every 100 ms for `ms`.
fn run_for(sync: &mut Role, host: &MockHost, ms: u64) {
    for _ in 0..ms / 100 {
        host.now.set(host.now.get() + 100);
        sync.on_tick(host);
    }
}

fn reports(host: &MockHost) -> Vec<(usize, serde_json::Value)> {
    host.calls
        .borrow()
        .iter()
        .enumerate()
        .filter(|(_, call)| header_of(call, ":method").as_deref() == Some("POST"))
        .map(|(i, _)| {
            let body = host.call_bodies.borrow()[i].clone();
            (i, serde_json::from_slice(&body).expect("a JSON report"))
        })
        .collect()
}

fn answer_report(sync: &mut Role, host: &MockHost, call: usize, status: &[u8]) {
    host.maps.borrow_mut().insert(
        MapKind::HttpCallResponseHeaders,
        vec![(":status".into(), status.to_vec())],
    );
    sync.on_http_call_response(host, call as u32 + 1, 0);
}

#[test]
fn reports_the_counts_every_worker_flushed() {
    let host = MockHost::default().with_map(MapKind::RequestHeaders, &[("x-session-id", b"u-1")]);
    host.now.set(1_000_000);
    let mut sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), REPORTING.as_bytes()).unwrap();
    // The table is in shared data; two workers serve and flush.
    host.shared
        .borrow_mut()
        .insert(ROUTES_KEY.into(), (routes(3, 10_000), 1));
    for _ in 0..2 {
        let mut worker = filter(&host);
        for _ in 0..3 {
            run_stream(&worker, &host);
        }
        for _ in 0..worker::FLUSH_EVERY_TICKS {
            worker.on_tick(&host);
        }
    }
    let instance: u64 = String::from_utf8(host.shared.borrow()[INSTANCE_KEY].0.clone())
        .unwrap()
        .parse()
        .unwrap();
    // Within the first interval, at a random point of it; then every 5 s.
    run_for(&mut sync, &host, 5_000);
    let first = reports(&host);
    assert_eq!(first.len(), 1, "one report in the first interval");
    let (call, report) = &first[0];
    let calls = host.calls.borrow().clone();
    assert_eq!(
        header_of(&calls[*call], ":path").as_deref(),
        Some("/v1/evidence")
    );
    assert_eq!(
        header_of(&calls[*call], "authorization").as_deref(),
        Some("Bearer pct_sync")
    );
    assert_eq!(report["envoy"], "edge-1");
    assert_eq!(report["instance"], instance.to_string());
    assert_eq!(report["started_ms"], instance / 1_000_000);
    let series = report["series"].as_array().unwrap();
    assert_eq!(series.len(), 8, "two versions, four traffic classes");
    // Weight 100%: every stream on the canary, six of them.
    let canary = series
        .iter()
        .find(|s| s["version"] == "v2" && s["traffic"] == "")
        .unwrap();
    let expected = host.metric(&super::tests::stat("v2", "rq_total"));
    assert_eq!(expected, Some(6));
    assert_eq!(canary["counters"]["rq_total"], 6);
    let replicated: u64 = canary["replicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row[0].as_u64().unwrap())
        .sum();
    assert_eq!(replicated, 6, "replicates add up to the total");
    answer_report(&mut sync, &host, *call, b"200");
    assert_eq!(
        host.metric("policy_canary.sync.evidence_reports_ok"),
        Some(1)
    );
    run_for(&mut sync, &host, 5_000);
    assert_eq!(reports(&host).len(), 2);
}

#[test]
fn an_unreadable_counter_sends_nothing_and_refusals_are_said_once() {
    let host = MockHost::default();
    host.now.set(1_000_000);
    let mut sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), REPORTING.as_bytes()).unwrap();
    host.shared
        .borrow_mut()
        .insert(ROUTES_KEY.into(), (routes(3, 10_000), 1));
    host.failing.borrow_mut().insert("get_metric");
    run_for(&mut sync, &host, 5_000);
    assert!(
        reports(&host).is_empty(),
        "a zero read would look like a reset"
    );
    assert_eq!(
        host.metric("policy_canary.sync.evidence_reports_failed"),
        Some(1)
    );
    host.failing.borrow_mut().clear();
    run_for(&mut sync, &host, 5_000);
    let sent = reports(&host);
    assert_eq!(sent.len(), 1);
    answer_report(&mut sync, &host, sent[0].0, b"404");
    run_for(&mut sync, &host, 5_000);
    let sent = reports(&host);
    answer_report(&mut sync, &host, sent[1].0, b"403");
    let warnings: Vec<String> = host
        .logs
        .borrow()
        .iter()
        .filter(|(level, _)| *level == LogLevel::Warn)
        .map(|(_, m)| m.clone())
        .collect();
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("could not be read"), "{warnings:?}");
    assert_eq!(
        host.metric("policy_canary.sync.evidence_reports_failed"),
        Some(3)
    );
    // Without `evidence_ms`, no reports.
    let quiet = MockHost::default();
    let mut sync = Role::configure(
        &quiet,
        Some(SYNC_ROOT_ID.as_bytes()),
        br#"{"sync": {"cluster": "controller", "wait_ms": 1000}}"#,
    )
    .unwrap();
    quiet
        .shared
        .borrow_mut()
        .insert(ROUTES_KEY.into(), (routes(3, 10_000), 1));
    run_for(&mut sync, &quiet, 20_000);
    assert!(reports(&quiet).is_empty());
}
