//! Envoy runtime mode (envoy/envoy-runtime.yaml): weights live in Envoy's runtime,
//! moved with `POST /runtime_modify`; the filter only supplies the sticky bucket.

use policy_canary_e2e::*;
use std::collections::HashSet;
use std::time::Duration;

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");
const SALT: &str = "rollout-2026-11-22";
const TARGET: &str = "support-agent";

fn set_weights(envoy: &Envoy, canary: u16) {
    let (status, body) = envoy.admin_post(&format!(
        "/runtime_modify?policy_canary.support-agent.agent_canary={canary}&policy_canary.support-agent.agent_stable={}",
        10_000 - canary
    ));
    assert_eq!(status, 200, "runtime_modify: {body}");
}

fn runtime_weights_move_the_split_live_and_stay_sticky(build: Build) {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy = Envoy::start(
        &build.config(&shipped_config(
            "envoy-runtime.yaml",
            stable.port,
            canary.port,
        )),
        2,
    );
    let client = Client::new(envoy.port);
    let sessions: Vec<String> = (0..2000).map(|i| format!("rt-{i}")).collect();

    // Runtime defaults from the config: canary 0, stable 10000.
    let mut sent_stable = 0u64;
    let mut sent_canary = 0u64;
    let mut previous: HashSet<&String> = HashSet::new();
    for weight in [0u16, 500, 2500] {
        if weight > 0 {
            set_weights(&envoy, weight);
        }
        let mut now = HashSet::new();
        for session in &sessions {
            let reply = client.session(session);
            let expected = expected_canary(session, SALT, weight);
            assert_eq!(
                reply.backend,
                if expected { "canary" } else { "stable" },
                "session {session} at {weight} bp"
            );
            // The route, not the filter, tells the backend its policy version.
            let version = if expected { "v2.4.0" } else { "v2.3.1" };
            assert_eq!(reply.received_all["x-agent-policy"], vec![version]);
            if expected {
                now.insert(session);
                sent_canary += 1;
            } else {
                sent_stable += 1;
            }
        }
        assert!(
            previous.is_subset(&now),
            "sticky and monotonic at {weight} bp"
        );
        previous = now;
    }

    // Forcing uses the header-match routes.
    let forced = client.get(
        "/",
        &[("x-session-id", "rt-stable-forced"), ("x-canary", "1")],
    );
    assert_eq!(forced.backend, "canary");
    assert_eq!(forced.received_all["x-agent-policy"], vec!["v2.4.0"]);
    // Forced requests are counted apart (`<target>.forced`), out of the evidence.
    // Sessionless requests carry the last bucket, which stays on stable; they are
    // counted apart too (`<target>.sessionless`).
    for _ in 0..20 {
        assert_eq!(client.get("/", &[]).backend, "stable");
    }

    // Stats follow the cluster Envoy chose, not the filter's own weight (0 here).
    wait_for("per-version stats", Duration::from_secs(5), || {
        let stable = envoy.policy_stat(TARGET, "v2.3.1", "rq_total");
        let canary = envoy.policy_stat(TARGET, "v2.4.0", "rq_total");
        (stable == sent_stable && canary == sent_canary).then_some(())
    });
    let sessionless = format!("{TARGET}.sessionless");
    wait_for(
        "the sessionless requests counted apart",
        Duration::from_secs(5),
        || (envoy.policy_stat(&sessionless, "v2.3.1", "rq_total") == 20).then_some(()),
    );
    let forced_target = format!("{TARGET}.forced");
    wait_for(
        "the forced request counted apart",
        Duration::from_secs(5),
        || (envoy.policy_stat(&forced_target, "v2.4.0", "rq_total") == 1).then_some(()),
    );
    assert_eq!(envoy.policy_stat(&forced_target, "v2.4.0", "rq_forced"), 1);
    assert_eq!(envoy.policy_stat(TARGET, "v2.4.0", "rq_forced"), 0);
    assert_eq!(envoy.wasm_failures(), Vec::<String>::new());
}

both_builds!(runtime_weights_move_the_split_live_and_stay_sticky,);
