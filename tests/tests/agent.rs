//! The demo agent (`canaryctl agent`) behind a real Envoy in controller mode: it
//! applies the policy the filter names, and its telemetry (headers and, for streamed
//! answers, trailers) lands in the per-version stats.

use policy_canary_e2e::*;
use std::time::Duration;

#[test]
fn the_demo_agent_applies_each_policy_and_reports_telemetry() {
    let controller = Controller::start(&[]);
    for file in ["envoy/policies/v2.3.1.yaml", "envoy/policies/v2.4.0.yaml"] {
        controller.post_ok(
            "/v1/policies",
            &std::fs::read_to_string(repo_root().join(file)).unwrap(),
        );
    }
    let (_stable_agent, stable_port) = start_agent(&controller, 1, 0.0);
    let (_canary_agent, canary_port) = start_agent(&controller, 1, 0.0);
    let envoy = Envoy::start(
        &controller_mode_config(stable_port, canary_port, &controller),
        2,
    );
    controller.post_ok(
        "/v1/rollouts",
        "target: support-agent\nstable: {version: v2.3.1, cluster: agent_stable}\ncanary: {version: v2.4.0, cluster: agent_canary}\nstages: [{weight: 50%, min_duration: 1h}, {weight: 100%}]\n",
    );
    let client = Client::new(envoy.port);
    // Wait for the 50% table, then send a mix of classes, some streamed.
    wait_for(
        "the rollout's table in Envoy",
        Duration::from_secs(10),
        || {
            (0..40)
                .any(|i| {
                    let (_, body) = http_request(
                        envoy.port,
                        "GET",
                        "/",
                        &[("x-session-id", format!("w{i}").as_bytes())],
                    )
                    .unwrap();
                    body.contains("v2.4.0")
                })
                .then_some(())
        },
    );
    let mut sent = 0u64;
    for i in 0..400 {
        let class = if i % 4 == 0 { "refund" } else { "order_status" };
        let stream = if i % 3 == 0 { "1" } else { "0" };
        let session = format!("agent-{i}");
        let reply = client.get(
            "/",
            &[
                ("x-session-id", &session),
                ("x-request-class", class),
                ("x-stream", stream),
            ],
        );
        assert!(
            reply.status == 200 || reply.status == 500,
            "{}",
            reply.status
        );
        sent += 1;
        assert!(
            !reply.headers.contains_key("x-agent-outcome"),
            "telemetry is stripped"
        );
    }
    // Every answer carried a task outcome, in headers or trailers.
    let sum = |suffix: &str| -> u64 {
        ["v2.3.1", "v2.4.0"]
            .iter()
            .map(|v| envoy.policy_stat("support-agent", v, suffix))
            .sum()
    };
    let settled = (0..25).find_map(|_| {
        std::thread::sleep(Duration::from_millis(200));
        // The probes above are counted too: at least `sent`, and every one with a task outcome.
        (sum("rq_total") >= sent && sum("tasks_total") == sum("rq_total")).then_some(())
    });
    assert!(
        settled.is_some(),
        "rq_total {} (sent {sent}), tasks_total {}, malformed {}",
        sum("rq_total"),
        sum("tasks_total"),
        sum("telemetry_malformed")
    );
    for version in ["v2.3.1", "v2.4.0"] {
        assert!(envoy.policy_stat("support-agent", version, "cost_micros") > 0);
        assert!(envoy.policy_stat("support-agent", version, "tokens") > 0);
        assert!(envoy.policy_stat("support-agent", version, "tool_calls") > 0);
    }
    // `canaryctl traffic` sends exactly what it is asked through Envoy and says who answered.
    let out = std::process::Command::new(canaryctl_bin())
        .args([
            "--json",
            "traffic",
            "--rate",
            "400",
            "--requests",
            "60",
            "--sessions",
            "30",
        ])
        .args(["--url", &format!("http://127.0.0.1:{}/chat", envoy.port)])
        .args(["--duration", "20s"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let tally: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(tally["sent"], 60, "{tally}");
    assert_eq!(tally["failed"], 0, "{tally}");
    let answered: u64 = tally["by_policy"]
        .as_object()
        .unwrap()
        .values()
        .map(|n| n.as_u64().unwrap())
        .sum();
    assert_eq!(answered, 60, "{tally}");
    // The agent refuses requests that did not come through the filter.
    let (status, _) = http_get(stable_port, "/").unwrap();
    assert_eq!(status, 400);
}
