//! Automatic analysis end to end: a real Envoy, `canaryctl serve --envoy-admin`, and
//! backends that report agent telemetry. Traffic is bounded in count and time.

use policy_canary_e2e::*;
use serde_json::Value;
use std::time::Duration;

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");

type Stack = AnalysisStack;

fn stack(stable: &[&str], canary: &[&str]) -> Stack {
    AnalysisStack::start(BACKEND, stable, canary, |config| config)
}

/// Sends sessions through Envoy until `done` says so (at most `max` requests or 90 s).
fn drive(s: &Stack, max: usize, done: impl FnMut() -> bool) -> usize {
    drive_sessions(
        &[Client::new(s.envoy.port)],
        max,
        Duration::from_secs(90),
        done,
    )
}

/// What `canaryctl rollout status ID` prints.
fn status(s: &Stack, id: i64) -> String {
    let out = std::process::Command::new(canaryctl_bin())
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", s.controller.port),
            "--token",
            &s.controller.token,
            "rollout",
            "status",
            &id.to_string(),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn rollout(s: &Stack, id: i64) -> Value {
    s.controller.get(&format!("/v1/rollouts/{id}"))
}

#[test]
fn a_worse_canary_is_rolled_back_by_itself() {
    let s = stack(&["completion=0.9"], &["completion=0.7"]);
    let id = s.controller.post_ok("/v1/rollouts", FAST_PLAN)["id"]
        .as_i64()
        .unwrap();
    drive(&s, 60_000, || rollout(&s, id)["phase"] == "rolled_back");
    // Afterwards every request goes to stable.
    let client = Client::new(s.envoy.port);
    wait_for("all traffic on stable", Duration::from_secs(5), || {
        (0..200)
            .all(|i| client.session(&format!("after-{i}")).backend == "stable")
            .then_some(())
    });
    let audit = s.controller.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(
        (last["action"].as_str(), last["actor"].as_str()),
        (Some("rollback"), Some("canaryctl"))
    );
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("completion_rate"),
        "the audit names the gate: {reason}"
    );
    // The comparison that caused it is kept with the entry.
    let completion = last["details"]["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "completion_rate")
        .unwrap()
        .clone();
    assert_eq!(completion["verdict"], "breach");
    assert!(completion["canary"].as_f64().unwrap() < completion["stable"].as_f64().unwrap());
    // The ended rollout's analysis is that decision's comparison.
    let analysis = s.controller.get(&format!("/v1/rollouts/{id}/analysis"))["analysis"].clone();
    assert_eq!(analysis["decided_ms"], last["at_ms"]);
    assert_eq!(analysis["comparisons"], last["details"]["comparisons"]);
}

#[test]
fn a_canary_as_good_as_stable_is_promoted_to_stable() {
    let s = stack(&["completion=0.9"], &["completion=0.9"]);
    // Looser completion gate so that "within threshold" is shown on test-sized traffic.
    let plan = format!("{FAST_PLAN}gates: {{completion_rate: {{threshold: 25 points}}}}\n");
    let id = s.controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    let mut checks = 0;
    drive(&s, 60_000, || {
        checks += 1;
        if checks % 50 == 0 {
            let a = s.controller.get(&format!("/v1/rollouts/{id}/analysis"));
            let open: Vec<String> = a["analysis"]["comparisons"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["verdict"] != "pass" && c["verdict"] != "not_applicable")
                .map(|c| {
                    format!(
                        "{}: {} s={} c={} n={}/{} δ∈{}",
                        c["metric"],
                        c["verdict"],
                        c["stable"],
                        c["canary"],
                        c["n_stable"],
                        c["n_canary"],
                        c["degradation"]
                    )
                })
                .collect();
            eprintln!("stage {} open gates: {open:?}", a["stage"]);
        }
        rollout(&s, id)["phase"] == "promoted"
    });
    assert_eq!(
        s.controller.audit_actions(id),
        ["start", "advance", "advance"]
    );
    let targets = s.controller.get("/v1/targets");
    assert_eq!(targets["targets"][0]["stable"]["version"], "v2.4.0");
}

#[test]
fn one_safety_violation_rolls_back_at_the_next_check() {
    let s = stack(&["completion=0.9"], &["completion=0.9", "safety_at=5"]);
    let id = s.controller.post_ok("/v1/rollouts", FAST_PLAN)["id"]
        .as_i64()
        .unwrap();
    let sent = drive(&s, 20_000, || rollout(&s, id)["phase"] == "rolled_back");
    assert!(sent < 5_000, "rolled back after {sent} requests");
    let audit = s.controller.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    assert!(last["reason"]
        .as_str()
        .unwrap()
        .contains("safety_violations"));
    let analysis = s.controller.get(&format!("/v1/rollouts/{id}/analysis"));
    assert!(analysis.get("analysis").is_some());
    // The CLI shows the comparison side by side.
    let text = status(&s, id);
    for expected in [
        "completion_rate",
        "latency_p95",
        "safety_violations",
        "n stable/canary",
        "verdict",
    ] {
        assert!(text.contains(expected), "status lacks {expected}:\n{text}");
    }
}

#[test]
fn a_plan_that_requires_telemetry_holds_a_stage_without_it() {
    // Backends that report no agent telemetry at all: only the HTTP gates could pass.
    let s = stack(&[], &[]);
    let plan = format!(
        "{FAST_PLAN}require_telemetry: true\nmax_stage_duration: 4s\non_inconclusive: pause\n"
    );
    let id = s.controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    drive(&s, 20_000, || rollout(&s, id)["phase"] == "paused");
    let r = rollout(&s, id);
    assert_eq!(
        (r["phase"].as_str(), r["stage"].as_u64()),
        (Some("paused"), Some(1)),
        "{r}"
    );
    let audit = s.controller.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("completion_rate") && reason.contains("abandonment_rate"),
        "the pause names the gates left open: {reason}"
    );
    assert_eq!(s.controller.audit_actions(id), ["start", "pause"]);
    // `rollout status` says why.
    let text = status(&s, id);
    assert!(
        text.contains("No agent telemetry from either version"),
        "{text}"
    );
}

/// Whoever can force the canary cannot steer the gates: thousands of forced
/// requests, all failing their task, neither fill the stage's evidence nor roll it
/// back; they are counted apart, under `<target>.forced`.
#[test]
fn forced_requests_change_no_gate() {
    let s = stack(&["completion=0.9"], &["completion=0.1"]);
    let id = s.controller.post_ok("/v1/rollouts", FAST_PLAN)["id"]
        .as_i64()
        .unwrap();
    let client = Client::new(s.envoy.port);
    let forced = |session: &str| {
        client.get(
            "/chat",
            &[
                ("x-session-id", session),
                ("x-canary", "true"),
                ("x-canary-token", "demo-force-token"),
            ],
        )
    };
    wait_for(
        "the rollout's table in Envoy",
        Duration::from_secs(10),
        || (forced("forcer-first").backend == "canary").then_some(()),
    );
    // The shipped controller-mode config asks for the force token.
    let untrusted = client.get("/", &[("x-session-id", "forcer-x"), ("x-canary", "true")]);
    assert!(!untrusted.received.contains_key("x-canary"));
    for i in 1..2_000 {
        assert_eq!(forced(&format!("forcer-{i}")).backend, "canary");
    }
    wait_for(
        "the forced requests counted apart",
        Duration::from_secs(10),
        || {
            let n = s
                .envoy
                .policy_stat("support-agent.forced", "v2.4.0", "rq_total");
            (n >= 2_000).then_some(())
        },
    );
    // Several analysis intervals later: no evidence from them, no decision.
    std::thread::sleep(Duration::from_millis(2_000));
    let analysis = s.controller.get(&format!("/v1/rollouts/{id}/analysis"))["analysis"].clone();
    // Only the few unforced requests above count (the probes sent before the
    // table arrived, the untrusted one): none of the 2,000 forced.
    let counted = analysis["canary_requests"].as_f64().unwrap()
        + analysis["stable_requests"].as_f64().unwrap();
    assert!(counted < 20.0, "{analysis}");
    assert!(
        analysis["comparisons"]
            .as_array()
            .unwrap()
            .iter()
            .all(|c| c["verdict"] != "breach"),
        "{analysis}"
    );
    assert_eq!(rollout(&s, id)["phase"], "progressing");
    assert_eq!(s.controller.audit_actions(id), ["start"]);
}
