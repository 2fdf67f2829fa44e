//! A fair comparison end to end: a real Envoy, `canaryctl serve --envoy-admin`,
//! and agent backends. Internal users sent to the canary by a segment are
//! counted apart (not compared), and a controller killed mid-stage continues the
//! stage's window. Traffic is bounded in count and time.

use policy_canary_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");

/// Internal users (`x-user-group: internal`) go to the canary at 100% from the
/// first stage; a 5-point completion gate.
const SEGMENT_PLAN: &str = "target: support-agent
stable: {version: v2.3.1, cluster: agent_stable}
canary: {version: v2.4.0, cluster: agent_canary}
analysis_interval: 500ms
failure_threshold: 2
stages: [{weight: 20%, min_duration: 1s, min_requests: 100}, {weight: 50%, min_duration: 1s, min_requests: 100}, {weight: 100%}]
segments: [{header: x-user-group, value: internal, weight: 100%}]
gates: {completion_rate: {threshold: 5 points}}
";

/// Starts `SEGMENT_PLAN` and sends one request per new session, every other one
/// an internal user's (the backends' `power_*` profile applies to sessions named
/// `power-…`), until the rollout's phase is `until` (at most 80,000 requests or
/// 120 s; never `never`). Returns the rollout's id.
fn roll_out_with_internal_users(s: &AnalysisStack, until: &str, never: &str) -> i64 {
    let id = s.controller.post_ok("/v1/rollouts", SEGMENT_PLAN)["id"]
        .as_i64()
        .unwrap();
    let client = Client::new(s.envoy.port);
    drive_with_internal_users(&client, 80_000, || {
        let p = phase(s, id);
        assert_ne!(
            p,
            never,
            "{}",
            s.controller.get(&format!("/v1/audit?rollout={id}"))
        );
        p == until
    });
    id
}

fn drive_with_internal_users(client: &Client, max: usize, mut done: impl FnMut() -> bool) {
    let started = Instant::now();
    for i in 0..max {
        let reply = if i % 2 == 0 {
            client.get(
                "/chat",
                &[
                    ("x-session-id", &format!("power-{i}")),
                    ("x-user-group", "internal"),
                ],
            )
        } else {
            client.session(&format!("user-{i}"))
        };
        assert_eq!(reply.status, 200);
        if i % 100 == 99 && done() {
            return;
        }
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "no decision after {i} requests"
        );
    }
    panic!("no decision after {max} requests");
}

fn phase(s: &AnalysisStack, id: i64) -> Value {
    s.controller.get(&format!("/v1/rollouts/{id}"))["phase"].clone()
}

/// An identical canary; internal users complete 0.75 of their tasks on it, the
/// others 0.85 on either version. Counted in the canary's arm (as before), the
/// internal users made up five sixths of the first stage's canary and rolled
/// it back; counted apart, the canary is promoted.
#[test]
fn internal_users_in_a_segment_do_not_roll_back_an_identical_canary() {
    let profile = ["completion=0.85", "power_completion=0.75"];
    let s = AnalysisStack::start(BACKEND, &profile, &profile, |config| config);
    let id = roll_out_with_internal_users(&s, "promoted", "rolled_back");
    assert_eq!(
        s.controller.audit_actions(id),
        ["start", "advance", "advance"]
    );
    // The last decision's analysis shows the internal users apart.
    let audit = s.controller.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    let outside = last["details"]["outside"].as_array().unwrap().clone();
    let segment = outside
        .iter()
        .find(|t| t["traffic"] == "segment" && t["version"] == "v2.4.0")
        .unwrap_or_else(|| panic!("{outside:?}"));
    let completion =
        segment["tasks_completed"].as_f64().unwrap() / segment["tasks"].as_f64().unwrap();
    assert!((completion - 0.75).abs() < 0.01, "{segment}");
    // Envoy counted them under `<target>.segment`.
    assert!(
        s.envoy
            .policy_stat("support-agent.segment", "v2.4.0", "rq_total")
            > 100
    );
}

/// The canary completes 15 points less for everyone but internal users, who
/// complete 0.99 of their tasks on it. Pooled into the canary's arm (as before)
/// they made it look better than stable; counted apart, the regression shows.
#[test]
fn good_internal_users_do_not_hide_a_regression() {
    let s = AnalysisStack::start(
        BACKEND,
        &["completion=0.85", "power_completion=0.99"],
        &["completion=0.70", "power_completion=0.99"],
        |config| config,
    );
    let id = roll_out_with_internal_users(&s, "rolled_back", "promoted");
    let audit = s.controller.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["reason"].as_str().unwrap().contains("completion_rate"),
        "{last}"
    );
}

/// A controller killed (SIGKILL) in the middle of a stage continues the stage's
/// window when it comes back: same start, no count lost, the same analysis
/// sequence (the budgets are spent once per stage).
#[test]
fn a_killed_controller_continues_the_stage_window() {
    let mut s = AnalysisStack::start(BACKEND, &["completion=0.9"], &["completion=0.9"], |c| c);
    // A stage that cannot end during the test.
    let plan = FAST_PLAN.replace(
        "min_duration: 1s, min_requests: 100}, {weight: 50%",
        "min_duration: 1h, min_requests: 100}, {weight: 50%",
    );
    let id = s.controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    let analysis = |s: &AnalysisStack| {
        s.controller.get(&format!("/v1/rollouts/{id}/analysis"))["analysis"].clone()
    };
    let client = Client::new(s.envoy.port);
    let requests = |a: &Value| {
        a["stable_requests"].as_f64().unwrap_or(0.0) + a["canary_requests"].as_f64().unwrap_or(0.0)
    };
    for i in 0..600 {
        client.session(&format!("before-{i}"));
    }
    let before = wait_for(
        "the requests in the window",
        Duration::from_secs(10),
        || {
            let a = analysis(&s);
            (requests(&a) >= 600.0).then_some(a)
        },
    );
    // Let a check save the window, then kill it without a chance to clean up.
    std::thread::sleep(Duration::from_millis(1_200));
    s.controller.kill();
    for i in 0..400 {
        client.session(&format!("while-down-{i}"));
    }
    s.controller.restart();
    let after = wait_for("the window continued", Duration::from_secs(10), || {
        let a = analysis(&s);
        (requests(&a) >= 1_000.0).then_some(a)
    });
    assert_eq!(after["window_started_ms"], before["window_started_ms"]);
    assert_eq!(after["sequence"], 0);
    assert_eq!(phase(&s, id), "progressing");
}
