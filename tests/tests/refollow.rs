//! After a controller restart (kill -9 or a clean stop) every Envoy holds the next
//! change within about a second: while the controller is gone the sync retries at
//! random within `max_reconnect_ms` (1 s), not on a growing backoff (which would
//! have reached several seconds after the 4 s outage).

use policy_canary_e2e::*;
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");

const PLAN: &str = "target: support-agent
stable: {version: v2.3.1, cluster: agent_stable}
canary: {version: v2.4.0, cluster: agent_canary}
stages: [{weight: 50%, min_duration: 1h}, {weight: 100%}]
";

/// Kills (or stops) the controller while Envoy follows a rollout, brings it back,
/// rolls the rollout back, and measures from the API's answer until Envoy routes
/// by it.
fn refollow(filter_side: bool, stop: fn(&mut Controller)) -> Duration {
    let mut controller = Controller::start(&[]).with_policies(&["v2.3.1", "v2.4.0"]);
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let config = if filter_side {
        filter_sync_config(stable.port, canary.port, &controller, "edge-1")
    } else {
        controller_mode_config(stable.port, canary.port, &controller)
    };
    let envoy = Envoy::start(&config, 2);
    let client = Client::new(envoy.port);
    let started = controller.post_ok("/v1/rollouts", PLAN);
    let (id, salt) = (
        started["id"].as_i64().unwrap(),
        started["salt"].as_str().unwrap().to_string(),
    );
    // A session in the canary at 50%.
    let session = (0..)
        .map(|i| format!("refollow-{i}"))
        .find(|s| expected_canary(s, &salt, 5_000))
        .unwrap();
    wait_for("Envoy on the rollout", Duration::from_secs(10), || {
        (client.session(&session).backend == "canary").then_some(())
    });
    stop(&mut controller);
    // Long enough for a growing backoff to reach its cap.
    std::thread::sleep(Duration::from_secs(4));
    controller.restart();
    controller.post_ok(&format!("/v1/rollouts/{id}/rollback"), "");
    let acknowledged = Instant::now();
    wait_for("Envoy on stable", Duration::from_secs(10), || {
        (client.session(&session).backend == "stable").then_some(())
    });
    acknowledged.elapsed()
}

fn sigkill(c: &mut Controller) {
    c.kill();
}

fn sigterm(c: &mut Controller) {
    c.stop();
}

#[test]
fn envoys_refollow_a_restarted_controller_within_a_second() {
    let mut times = Vec::new();
    for (filter_side, stop) in [
        (false, sigkill as fn(&mut Controller)),
        (false, sigterm),
        (true, sigkill),
    ] {
        let took = refollow(filter_side, stop);
        eprintln!("filter-side {filter_side}: {took:?}");
        times.push(took);
    }
    // The retry lands at most `max_reconnect_ms` after the failed one before it;
    // the sync's answer, the route change and this test's 20 ms poll come on top.
    let bound = Duration::from_millis(1_000 + 300);
    assert!(
        times.iter().all(|t| *t <= bound),
        "{times:?} (bound {bound:?})"
    );
}
