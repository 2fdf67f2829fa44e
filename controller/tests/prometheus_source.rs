//! The Prometheus evidence source against a fake query API on loopback: exact
//! increases, resets, and every way Prometheus can fail (down, erroring, lagging,
//! answering garbage) is an error that names it, never a window.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use canaryctl::analysis::evidence::prometheus::{Prometheus, PrometheusOptions};
use canaryctl::rollout::plan::RolloutPlan;
use canaryctl::rollout::{Phase, RolloutState};
use canaryctl::store::RolloutRow;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

const STAGE_START_MS: i64 = 1_700_000_000_000;
const NOW_MS: i64 = STAGE_START_MS + 60_000;

#[derive(Clone, Copy, PartialEq)]
enum Scenario {
    Healthy,
    Reset,
    Lagging,
    Erroring,
    Garbage,
}

fn vector(series: &[(&str, f64)]) -> Value {
    let result: Vec<Value> = series
        .iter()
        .map(|(version, value)| {
            json!({"metric": {"instance": "a", "policy_version": version, "target": "t"},
                   "value": [NOW_MS as f64 / 1000.0, value.to_string()]})
        })
        .collect();
    json!({"status": "success", "data": {"resultType": "vector", "result": result}})
}

async fn query(
    State(scenario): State<Arc<Scenario>>,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let query = q.get("query").cloned().unwrap_or_default();
    let time: f64 = q.get("time").and_then(|t| t.parse().ok()).unwrap_or(0.0);
    let scenario = *scenario;
    match scenario {
        Scenario::Erroring => return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({"status": "error", "error": "query processing would load too many samples"}),
            ),
        )
            .into_response(),
        Scenario::Garbage => return "<html>not prometheus</html>".into_response(),
        _ => {}
    }
    if query.starts_with("max(timestamp(") {
        let age = if scenario == Scenario::Lagging {
            600.0
        } else {
            1.0
        };
        return Json(json!({"status": "success", "data": {"resultType": "vector",
            "result": [{"metric": {}, "value": [time, (time - age).to_string()]}]}}))
        .into_response();
    }
    let rq_total = query.contains("policy_canary_rq_total");
    if !rq_total {
        return Json(vector(&[])).into_response();
    }
    let body = if query.starts_with("last_over_time(") {
        vector(&[("v1", 300.0), ("v2", 50.0)])
    } else if query.starts_with("resets(") {
        let v2_resets = if scenario == Scenario::Reset {
            1.0
        } else {
            0.0
        };
        vector(&[("v1", 0.0), ("v2", v2_resets)])
    } else if query.contains("ms]") && !query.contains("policy_version=") {
        // The per-Envoy restart check (`<rq_total>[range]` over every series): no
        // Envoy restarted; the reset scenario is one series' own.
        json!({"status": "success", "data": {"resultType": "matrix", "result": []}})
    } else if query.contains("ms]") {
        // The raw samples of the series that was reset: 30, then 5 (restart), then 50.
        let t = NOW_MS as f64 / 1000.0;
        json!({"status": "success", "data": {"resultType": "matrix", "result": [
            {"metric": {"instance": "a", "policy_version": "v2", "target": "t"},
             "values": [[t - 50.0, "30"], [t - 30.0, "5"], [t - 10.0, "50"]]}]}})
    } else {
        // The value at the stage start.
        assert!(
            (time - STAGE_START_MS as f64 / 1000.0).abs() < 0.01,
            "{time}"
        );
        vector(&[("v1", 100.0), ("v2", 20.0)])
    };
    Json(body).into_response()
}

async fn fake(scenario: Scenario) -> String {
    let app = Router::new()
        .route("/api/v1/query", get(query))
        .route(
            "/api/v1/query_range",
            get(|| async {
                Json(json!({"status": "success", "data": {"resultType": "matrix", "result": []}}))
            }),
        )
        .with_state(Arc::new(scenario));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    format!("http://{address}")
}

fn source(url: String) -> Prometheus {
    Prometheus::new(PrometheusOptions {
        url,
        target_label: "target".into(),
        version_label: "policy_version".into(),
        step: Duration::from_secs(30),
        max_lag: Duration::from_secs(60),
    })
}

fn row() -> RolloutRow {
    let plan = RolloutPlan::parse(
        "target: t\nstable: {version: v1, cluster: a}\ncanary: {version: v2, cluster: b}\n",
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
            stage_started_ms: STAGE_START_MS,
        },
        created_ms: STAGE_START_MS,
        updated_ms: STAGE_START_MS,
    }
}

#[tokio::test]
async fn increases_are_exact_from_the_value_at_the_stage_start() {
    let window = source(fake(Scenario::Healthy).await)
        .window(&row(), STAGE_START_MS, NOW_MS)
        .await
        .unwrap();
    assert_eq!(window.version("v1").get("rq_total"), 200.0);
    assert_eq!(window.version("v2").get("rq_total"), 30.0);
    assert_eq!(window.unavailable, None);
}

#[tokio::test]
async fn a_reset_series_is_summed_sample_by_sample() {
    let window = source(fake(Scenario::Reset).await)
        .window(&row(), STAGE_START_MS, NOW_MS)
        .await
        .unwrap();
    // From 20 at the start: +10 (30), +5 (restarted at 5), +45 (50).
    assert_eq!(window.version("v2").get("rq_total"), 60.0);
    assert_eq!(window.version("v1").get("rq_total"), 200.0);
}

#[tokio::test]
async fn every_failure_is_named_and_gives_no_window() {
    for (scenario, expected) in [
        (Scenario::Lagging, "lagging"),
        (Scenario::Erroring, "too many samples"),
        (Scenario::Garbage, "no JSON"),
    ] {
        let error = source(fake(scenario).await)
            .window(&row(), STAGE_START_MS, NOW_MS)
            .await
            .unwrap_err();
        assert!(error.contains(expected), "{error}");
    }
    // Nothing listens there.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        listener.local_addr().unwrap()
    };
    let error = source(format!("http://{closed}"))
        .window(&row(), STAGE_START_MS, NOW_MS)
        .await
        .unwrap_err();
    assert!(error.contains("cannot reach Prometheus"), "{error}");
}
