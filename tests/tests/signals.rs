//! Judging agents the way teams do, end to end with a real Envoy and controller:
//! a custom metric the agent reports, the escalation rate, and delayed signals
//! (an LLM judge's scores posted 30 s after the answers) through
//! `POST /v1/signals`. Traffic is bounded in count and time.

use policy_canary_e2e::*;
use serde_json::{json, Value};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");

const PLAN_HEAD: &str = "target: support-agent
stable: {version: v2.3.1, cluster: agent_stable}
canary: {version: v2.4.0, cluster: agent_canary}
analysis_interval: 500ms
failure_threshold: 2
stages: [{weight: 20%, min_duration: 1s, min_requests: 100}, {weight: 50%, min_duration: 1s, min_requests: 100}, {weight: 100%}]
";

fn phase(s: &AnalysisStack, id: i64) -> String {
    s.controller.get(&format!("/v1/rollouts/{id}"))["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

fn last_reason(s: &AnalysisStack, id: i64) -> String {
    let audit = s.controller.get(&format!("/v1/audit?rollout={id}"));
    audit["audit"].as_array().unwrap().last().unwrap()["reason"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Sends new sessions through Envoy until the rollout's phase is `until` (at most
/// `max` requests or 150 s; never `never`); `each` sees every answer.
fn drive(
    s: &AnalysisStack,
    id: i64,
    (until, never): (&str, &str),
    max: usize,
    mut each: impl FnMut(usize, &Reply),
) {
    let client = Client::new(s.envoy.port);
    let started = Instant::now();
    for i in 0..max {
        let reply = client.session(&format!("user-{i}"));
        assert_eq!(reply.status, 200);
        each(i, &reply);
        if i % 100 == 99 {
            let p = phase(s, id);
            assert_ne!(p, never, "{}", last_reason(s, id));
            if p == until {
                return;
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(150),
            "no decision after {i} requests"
        );
    }
    panic!("no decision after {max} requests");
}

/// A canary equal on every header metric but the agent's own `judge_score`
/// (0.6 against 0.8) is rolled back by that gate; the client never sees the
/// metric, and the route document tells Envoy which metrics to count. Against
/// both builds: the native module counts custom metrics in one family.
fn a_canary_worse_on_a_custom_metric_is_rolled_back_by_it(build: Build) {
    let s = AnalysisStack::start_on(
        build,
        BACKEND,
        &["completion=0.9", "metric=judge_score:0.8"],
        &["completion=0.9", "metric=judge_score:0.6"],
        |config| config,
    );
    let plan = format!(
        "{PLAN_HEAD}gates: {{judge_score: {{metric: judge_score, worse: lower, threshold: 0.05}}}}\n"
    );
    let id = s.controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    let routes = s.controller.get("/v1/routes");
    assert_eq!(
        routes["routes"]["support-agent"]["metrics"],
        json!(["judge_score"])
    );
    drive(&s, id, ("rolled_back", "promoted"), 40_000, |_, reply| {
        assert!(
            !reply.headers.contains_key("x-agent-metric-judge_score"),
            "{:?}",
            reply.headers
        );
    });
    let reason = last_reason(&s, id);
    assert!(reason.contains("judge_score"), "{reason}");
    assert!(
        s.envoy
            .policy_stat("support-agent", "v2.4.0", "custom_judge_score_reports")
            > 0
    );
}

/// Escalations: 25% of the canary's tasks against 5% of stable's, completion
/// equal; the derived gate the plan names rolls it back.
#[test]
fn a_canary_with_more_escalations_is_rolled_back_by_escalation_rate() {
    let s = AnalysisStack::start(
        BACKEND,
        &["completion=0.7", "escalation=0.05"],
        &["completion=0.7", "escalation=0.25"],
        |config| config,
    );
    let plan = format!("{PLAN_HEAD}gates: {{escalation_rate: {{threshold: \"+20%\"}}}}\n");
    let id = s.controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    drive(&s, id, ("rolled_back", "promoted"), 40_000, |_, _| {});
    let reason = last_reason(&s, id);
    assert!(reason.contains("escalation_rate"), "{reason}");
    assert!(!reason.contains("completion_rate"), "{reason}");
}

/// An answer seen through Envoy, to be judged later.
struct Answer {
    session: String,
    version: String,
    at_ms: u128,
}

fn now_ms() -> u128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis()
}

/// RFC 3339 of milliseconds since the epoch (UTC), written here independently of
/// the controller's own formatter (the test is its check).
fn rfc3339(ms: u128) -> String {
    let secs = (ms / 1000) as i64;
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
}

/// A judge that scores answers 30 s after they were given: CSAT 4.2 for stable,
/// `canary_score` for the canary (each ±0.5 by session), posted in batches with a
/// `signals:write` token, until the rollout is `until`.
fn judge_late(s: &AnalysisStack, id: i64, canary_score: f64, until: &str, never: &str) {
    let token = s.controller.create_token("judge", &["signals:write"]);
    // Every answer judged is routed by the rollout's table (else its arm is not
    // the one the cohort gives, and the controller refuses the score).
    follows_the_rollout(s);
    let mut pending: std::collections::VecDeque<Answer> = Default::default();
    let mut posted = 0usize;
    drive(s, id, (until, never), 400_000, |i, reply| {
        pending.push_back(Answer {
            session: format!("user-{i}"),
            version: reply.received["x-agent-policy"].clone(),
            at_ms: now_ms(),
        });
        // Keep the pace a judge keeps: a few requests between posts.
        std::thread::sleep(Duration::from_millis(2));
        if i % 50 != 0 {
            return;
        }
        let ripe = now_ms().saturating_sub(30_000);
        let mut batch = Vec::new();
        while pending.front().is_some_and(|a| a.at_ms <= ripe) && batch.len() < 1000 {
            let a = pending.pop_front().unwrap();
            let base = if a.version == "v2.4.0" {
                canary_score
            } else {
                4.2
            };
            let wobble = [0.5, -0.5][posted % 2];
            batch.push(json!({
                "id": format!("csat-{}", a.session), "target": "support-agent",
                "session": a.session, "version": a.version, "name": "csat",
                "value": base + wobble, "at": rfc3339(a.at_ms),
            }));
            posted += 1;
        }
        if !batch.is_empty() {
            let body = json!({ "signals": batch }).to_string();
            let (status, answer) = s.controller.post_as(&token, "/v1/signals", &body).unwrap();
            assert_eq!(status, 200, "{answer}");
            assert_eq!(answer["rejected"], json!([]), "{answer}");
        }
    });
    assert!(posted > 0);
}

/// Waits until the Envoy routes by the controller's current table.
fn follows_the_rollout(s: &AnalysisStack) {
    let revision = s.controller.get("/v1/routes")["revision"].clone();
    wait_for("the rollout's table", Duration::from_secs(10), || {
        let stats = s
            .envoy
            .admin_get("/stats?filter=policy_canary.sync.revision");
        stats.contains(&format!(": {revision}")).then_some(())
    });
}

const CSAT_PLAN: &str = "gates: {csat: {signal: csat, worse: lower, threshold: 0.3, delay: 30s}, completion_rate: {threshold: 25 points}}\n";

/// A canary equal on every header metric but judged worse (CSAT 3.2 against 4.2,
/// scores arriving 30 s late) is rolled back by the signal gate.
#[test]
fn late_signals_roll_back_a_canary_judged_worse() {
    let s = AnalysisStack::start(BACKEND, &["completion=0.9"], &["completion=0.9"], |c| c);
    let id = s
        .controller
        .post_ok("/v1/rollouts", &format!("{PLAN_HEAD}{CSAT_PLAN}"))["id"]
        .as_i64()
        .unwrap();
    judge_late(&s, id, 3.2, "rolled_back", "promoted");
    let reason = last_reason(&s, id);
    assert!(reason.contains("csat"), "{reason}");
}

/// The same judge, a canary judged as well as stable: promoted once the answers
/// of each stage are older than the gate's delay.
#[test]
fn late_signals_promote_an_identical_canary() {
    let s = AnalysisStack::start(BACKEND, &["completion=0.9"], &["completion=0.9"], |c| c);
    let id = s
        .controller
        .post_ok("/v1/rollouts", &format!("{PLAN_HEAD}{CSAT_PLAN}"))["id"]
        .as_i64()
        .unwrap();
    judge_late(&s, id, 4.2, "promoted", "rolled_back");
    assert_eq!(
        s.controller.audit_actions(id),
        ["start", "advance", "advance"]
    );
}

/// Bad signals get their reasons and change nothing; a signal sent twice counts
/// once; one stored before a 200 survives a kill -9 right after it; the scope is
/// `signals:write` and nothing else.
#[test]
fn signals_are_checked_counted_once_and_kept() {
    let mut s = AnalysisStack::start(BACKEND, &["completion=0.9"], &["completion=0.9"], |c| c);
    let id = s
        .controller
        .post_ok("/v1/rollouts", &format!("{PLAN_HEAD}{CSAT_PLAN}"))["id"]
        .as_i64()
        .unwrap();
    let token = s.controller.create_token("judge", &["signals:write"]);
    // The answer below must be routed by the rollout's table, not the one before.
    follows_the_rollout(&s);
    let client = Client::new(s.envoy.port);
    // A session in the stable arm: right after a start the controller also takes
    // the weight before it (0%, all stable) for answers within its propagation
    // grace, so only a stable session's contradicting signal is refused for sure.
    let rollout = s.controller.get(&format!("/v1/rollouts/{id}"));
    let salt = rollout["salt"].as_str().unwrap().to_string();
    let weight = rollout["weight_bp"].as_u64().unwrap() as u16;
    let session = (0..)
        .map(|i| format!("judged-{i}"))
        .find(|s| !expected_canary(s, &salt, weight))
        .unwrap();
    let answer = client.session(&session);
    let version = answer.received["x-agent-policy"].clone();
    let other = if version == "v2.4.0" {
        "v2.3.1"
    } else {
        "v2.4.0"
    };
    let at = rfc3339(now_ms());
    let signal = |id: &str, version: &str, value: Value, extra: &[(&str, Value)]| {
        let mut v = json!({"id": id, "target": "support-agent", "session": session,
            "version": version, "name": "csat", "value": value, "at": at});
        for (k, x) in extra {
            v[*k] = x.clone();
        }
        v
    };
    let post = |controller: &Controller, signals: Vec<Value>| {
        controller
            .post_as(
                &token,
                "/v1/signals",
                &json!({ "signals": signals }).to_string(),
            )
            .unwrap()
    };
    let (status, first) = post(
        &s.controller,
        vec![
            signal("ok-1", &version, json!(4.0), &[]),
            signal("ok-1", &version, json!(4.0), &[]),
            signal("bad-version", "v9.9.9", json!(4.0), &[]),
            signal("nan", &version, json!("NaN"), &[]),
            signal(
                "unknown-target",
                &version,
                json!(1),
                &[("target", json!("nobody"))],
            ),
            signal("contradicts", other, json!(1), &[]),
            signal(
                "too-early",
                &version,
                json!(1),
                &[("at", json!("2001-01-01T00:00:00Z"))],
            ),
            signal(
                "not-a-time",
                &version,
                json!(1),
                &[("at", json!("yesterday"))],
            ),
            signal("forced", other, json!(1), &[("traffic", json!("forced"))]),
        ],
    );
    assert_eq!(status, 200, "{first}");
    assert_eq!(
        (first["accepted"].as_u64(), first["duplicates"].as_u64()),
        (Some(2), Some(1)),
        "{first}"
    );
    let rejected: Vec<(u64, String)> = first["rejected"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["index"].as_u64().unwrap(),
                r["error"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let reason = |i: u64| {
        rejected
            .iter()
            .find(|(j, _)| *j == i)
            .map(|(_, e)| e.clone())
            .unwrap_or_default()
    };
    assert!(reason(2).contains("neither arm"), "{rejected:?}");
    assert!(reason(3).starts_with("value:"), "{rejected:?}");
    assert!(reason(4).contains("unknown target"), "{rejected:?}");
    assert!(reason(5).contains("was in"), "{rejected:?}");
    assert!(reason(6).contains("no rollout"), "{rejected:?}");
    assert!(reason(7).starts_with("at:"), "{rejected:?}");
    assert_eq!(rejected.len(), 6);
    // Sent again: counted once.
    let (_, again) = post(
        &s.controller,
        vec![signal("ok-1", &version, json!(4.0), &[])],
    );
    assert_eq!(
        (again["accepted"].as_u64(), again["duplicates"].as_u64()),
        (Some(0), Some(1))
    );
    // 1001 items: refused whole, nothing stored.
    let many: Vec<Value> = (0..1001)
        .map(|i| signal(&format!("many-{i}"), &version, json!(1), &[]))
        .collect();
    let (status, body) = post(&s.controller, many);
    assert_eq!(status, 400, "{body}");
    assert!(
        body["error"].as_str().unwrap().contains("at most 1000"),
        "{body}"
    );
    // Other scopes cannot post, the judge's token can do nothing else.
    let operate = s.controller.create_token("ops", &["operate"]);
    let body = json!({"signals": [signal("x", &version, json!(1), &[])]}).to_string();
    assert_eq!(
        s.controller
            .post_as(&operate, "/v1/signals", &body)
            .unwrap()
            .0,
        403
    );
    assert_eq!(
        http_get_with_token(s.controller.port, &token, "/v1/rollouts")
            .unwrap()
            .0,
        403
    );
    // Kill -9 right after a 200: the signal is there after the restart.
    let (status, stored) = post(
        &s.controller,
        vec![signal("before-kill", &version, json!(4.5), &[])],
    );
    assert_eq!((status, stored["accepted"].as_u64()), (200, Some(1)));
    s.controller.kill();
    s.controller.restart();
    let (_, after) = post(
        &s.controller,
        vec![
            signal("before-kill", &version, json!(4.5), &[]),
            signal("ok-1", &version, json!(4.0), &[]),
        ],
    );
    assert_eq!(
        (after["accepted"].as_u64(), after["duplicates"].as_u64()),
        (Some(0), Some(2)),
        "{after}"
    );
    // The analysis counts the compared ones: two (ok-1 and before-kill).
    let analysis = s.controller.get(&format!("/v1/rollouts/{id}/analysis"));
    let csat = analysis["analysis"]["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "csat")
        .unwrap()
        .clone();
    let n = csat["n_stable"].as_f64().unwrap() + csat["n_canary"].as_f64().unwrap();
    assert_eq!(n, 2.0, "{csat} {analysis}");
}

both_builds!(a_canary_worse_on_a_custom_metric_is_rolled_back_by_it);
