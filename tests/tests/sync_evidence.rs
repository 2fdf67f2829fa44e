//! Evidence through the sync channel: two real Envoys (two workers each), one
//! with the singleton sync service and one with filter-side sync, report their
//! own counts to `canaryctl serve --evidence sync`,
//! and a real Prometheus scrapes the same Envoys. The controller's counts equal
//! the Envoys' own and Prometheus's, series by series and replicate by
//! replicate, across an Envoy restart; an Envoy that follows the controller but
//! cannot report holds the stage. Traffic is bounded in count and time.

use policy_canary::replicate::{ReplicateCounter, Slot, REPLICATES};
use policy_canary_e2e::*;
use serde_json::Value;
use std::collections::HashMap;
use std::time::Duration;

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");
const STABLE: &str = "v2.3.1";
const CANARY: &str = "v2.4.0";

/// A shipped config reporting evidence every `every_ms`: gw-0 runs the
/// singleton sync service (envoy.yaml, wasm), the others filter-side sync
/// (envoy-filter-sync.yaml) in `build`.
fn config(ports: (u16, u16, u16), token: &str, envoy: &str, every_ms: u64, build: Build) -> String {
    let (stable, canary, controller) = ports;
    let text = if envoy == "gw-0" {
        let text = controller_mode_config_for(stable, canary, controller, token);
        let env = "{host_env_keys: [HOSTNAME], key_values: {";
        assert!(text.contains(env));
        text.replace(env, &format!("{{key_values: {{HOSTNAME: {envoy}, "))
    } else {
        filter_sync_config_for(stable, canary, controller, token, envoy)
    };
    let sync = r#""sync": {"cluster": "canary_controller", "wait_ms": 25000}"#;
    assert!(text.contains(sync));
    let text = text.replace(
        sync,
        &format!(
            r#""sync": {{"cluster": "canary_controller", "wait_ms": 25000, "evidence_ms": {every_ms}}}"#
        ),
    );
    if envoy == "gw-0" {
        text
    } else {
        build.config(&text)
    }
}

fn send(envoy: &Envoy, sessions: std::ops::Range<usize>) -> (u64, u64) {
    send_sessions(envoy.port, sessions)
}

/// The controller's window: a compared series' counters and its replicates'
/// `rq_total`.
struct Counted {
    counters: HashMap<String, f64>,
    replicates: Vec<f64>,
}

fn counted(evidence: &Value, version: &str) -> Counted {
    let series = evidence["series"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|s| s["traffic"] == "compared" && s["version"] == version);
    let Some(series) = series else {
        return Counted {
            counters: HashMap::new(),
            replicates: vec![0.0; REPLICATES],
        };
    };
    let total = Slot::Counter(ReplicateCounter::RqTotal).index();
    Counted {
        counters: series["counters"]
            .as_object()
            .unwrap()
            .iter()
            .map(|(k, v)| (k.clone(), v.as_f64().unwrap()))
            .collect(),
        replicates: (0..REPLICATES)
            .map(|r| series["replicates"][r][total].as_f64().unwrap_or(0.0))
            .collect(),
    }
}

/// Prometheus' view: per version, a counter's sum over both Envoys (`instance`
/// filters them), and per replicate `rq_total`.
fn prometheus_counts(
    prometheus: &PrometheusServer,
    instance: &str,
) -> HashMap<(String, String), f64> {
    let mut out = HashMap::new();
    let selector = format!("target=\"support-agent\"{instance}");
    for counter in [
        "rq_total",
        "tasks_total",
        "tasks_completed",
        "cost_micros",
        "tokens",
    ] {
        let query = format!("sum by (policy_version) (policy_canary_{counter}{{{selector}}})");
        for (labels, value) in prometheus.vector(&query).unwrap_or_default() {
            out.insert(
                (labels["policy_version"].clone(), counter.to_string()),
                value,
            );
        }
    }
    let query = format!(
        "sum by (policy_version, replicate) (policy_canary_replicate{{{selector},counter=\"rq_total\"}})"
    );
    for (labels, value) in prometheus.vector(&query).unwrap_or_default() {
        let key = format!("replicate {}", labels["replicate"]);
        out.insert((labels["policy_version"].clone(), key), value);
    }
    out
}

fn counts_through_the_sync_channel_equal_the_envoys_own_and_prometheus(build: Build) {
    let stable = Backend::start_with(BACKEND, "stable", &["completion=0.9"]);
    let canary = Backend::start_with(BACKEND, "canary", &["completion=0.9"]);
    let admin_ports = [free_port(), free_port()];
    let prometheus = PrometheusServer::start(&admin_ports);
    let controller = Controller::start(&[
        "--evidence",
        "sync",
        "--evidence-interval",
        "2s",
        "--tick",
        "50ms",
    ])
    .with_policies(&[STABLE, CANARY]);
    let token = controller.create_token("reporting-envoys", &["routes:read", "evidence:write"]);
    let ports = (stable.port, canary.port, controller.port);
    let configs: Vec<String> = (0..2)
        .map(|i| config(ports, &token, &format!("gw-{i}"), 1_000, build))
        .collect();
    let mut envoys: Vec<Envoy> = (0..2)
        .map(|i| Envoy::start_with_admin(&configs[i], 2, admin_ports[i]))
        .collect();
    let plan = format!("target: support-agent\nstable: {{version: {STABLE}, cluster: agent_stable}}\ncanary: {{version: {CANARY}, cluster: agent_canary}}\nanalysis_interval: 500ms\nstages: [{{weight: 50%, min_duration: 1h, min_requests: 1000000}}, {{weight: 100%}}]\n");
    let id = controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    let revision = controller.get("/v1/routes")["revision"].clone();
    let follows = |envoy: &Envoy| {
        wait_for("the rollout's table", Duration::from_secs(10), || {
            let stats = envoy.admin_get("/stats?filter=policy_canary.sync.revision");
            stats.contains(&format!(": {revision}")).then_some(())
        })
    };
    let evidence = || controller.get(&format!("/v1/rollouts/{id}/evidence"));
    envoys.iter().for_each(follows);
    // Both Envoys' baselines are in the stage's window before the traffic starts.
    wait_for("both Envoys in the window", Duration::from_secs(15), || {
        (evidence()["envoys"] == 2).then_some(())
    });
    let (mut sent_stable, mut sent_canary) = (0, 0);
    let mut add = |(s, c): (u64, u64)| {
        sent_stable += s;
        sent_canary += c;
    };
    add(send(&envoys[0], 0..300));
    add(send(&envoys[1], 300..450));
    let requests = |e: &Value| {
        counted(e, STABLE)
            .counters
            .get("rq_total")
            .copied()
            .unwrap_or(0.0)
            + counted(e, CANARY)
                .counters
                .get("rq_total")
                .copied()
                .unwrap_or(0.0)
    };
    // Envoy gw-1's counts have reached the controller and Prometheus; it restarts,
    // and then counts past its old values (only the new instance tells the reset).
    wait_for("450 requests reported", Duration::from_secs(15), || {
        (requests(&evidence()) == 450.0).then_some(())
    });
    let gw1 = format!(",instance=\"127.0.0.1:{}\"", admin_ports[1]);
    wait_for("Prometheus to scrape gw-1", Duration::from_secs(20), || {
        let q = format!("sum(policy_canary_rq_total{{target=\"support-agent\"{gw1}}})");
        let r = format!(
            "sum(policy_canary_replicate{{target=\"support-agent\",counter=\"rq_total\"{gw1}}})"
        );
        (prometheus.value(&q) == Some(150.0) && prometheus.value(&r) == Some(150.0)).then_some(())
    });
    let before_restart = prometheus_counts(&prometheus, &gw1);
    drop(envoys.pop());
    // Its first report comes at random within 5 s: most likely after all its new
    // requests, when only its instance says that its counters started again.
    let slower = config(ports, &token, "gw-1", 5_000, build);
    envoys.push(Envoy::start_with_admin(&slower, 2, admin_ports[1]));
    follows(&envoys[1]);
    add(send(&envoys[1], 450..700));
    add(send(&envoys[0], 700..800));
    assert_eq!(sent_stable + sent_canary, 800);
    assert!(
        sent_canary > 250 && sent_stable > 250,
        "a 50% split: {sent_canary} canary"
    );
    // The Envoys' own counts: what their backends answered.
    let last = wait_for("800 requests reported", Duration::from_secs(30), || {
        let e = evidence();
        (requests(&e) == 800.0).then_some(e)
    });
    let ours = [(STABLE, sent_stable), (CANARY, sent_canary)];
    for (version, sent) in ours {
        let c = counted(&last, version);
        assert_eq!(c.counters["rq_total"], sent as f64, "{version}: {last}");
        assert_eq!(
            c.counters["tasks_total"], sent as f64,
            "every answer ends a task"
        );
    }
    // Prometheus: gw-0 now, gw-1's last scrape before its restart and its counts since.
    wait_for(
        "Prometheus to scrape the rest",
        Duration::from_secs(20),
        || {
            let q = "sum(policy_canary_rq_total{target=\"support-agent\"})";
            let r = "sum(policy_canary_replicate{target=\"support-agent\",counter=\"rq_total\"})";
            (prometheus.value(q) == Some(650.0) && prometheus.value(r) == Some(650.0)).then_some(())
        },
    );
    let now = prometheus_counts(&prometheus, "");
    for (version, _) in ours {
        let c = counted(&last, version);
        let prom = |key: &str| {
            let key = (version.to_string(), key.to_string());
            now.get(&key).copied().unwrap_or(0.0) + before_restart.get(&key).copied().unwrap_or(0.0)
        };
        for counter in [
            "rq_total",
            "tasks_total",
            "tasks_completed",
            "cost_micros",
            "tokens",
        ] {
            assert_eq!(
                c.counters.get(counter).copied().unwrap_or(0.0),
                prom(counter),
                "{version} {counter}"
            );
        }
        for r in 0..REPLICATES {
            assert_eq!(
                c.replicates[r],
                prom(&format!("replicate {r}")),
                "{version} replicate {r}"
            );
        }
    }
    // Every Envoy that follows reports (gw-1 now every 5 s, within 3 intervals of 2 s).
    wait_for("the evidence available", Duration::from_secs(15), || {
        evidence()["unavailable"].is_null().then_some(())
    });

    // gw-0 comes back with a token that may poll but not report: it still follows
    // the controller, so every window is unavailable and the stage held.
    let routes_only = controller.routes_token();
    drop(envoys.remove(0));
    let config = config(ports, &routes_only, "gw-0", 1_000, build);
    envoys.insert(0, Envoy::start_with_admin(&config, 2, admin_ports[0]));
    let held = wait_for("the stage held", Duration::from_secs(20), || {
        let analysis = controller.get(&format!("/v1/rollouts/{id}/analysis"))["analysis"].clone();
        analysis["evidence_unavailable"]
            .as_str()
            .map(str::to_string)
    });
    assert!(held.contains("gw-0"), "{held}");
    assert!(held.contains("evidence:write"), "{held}");
    wait_for("gw-0 says why", Duration::from_secs(10), || {
        envoys[0]
            .log()
            .contains("the sync token needs the evidence:write scope")
            .then_some(())
    });
    assert_eq!(
        controller.get(&format!("/v1/rollouts/{id}"))["phase"],
        "progressing"
    );
}

// gw-1 (filter-side sync) as the wasm filter or the native module; gw-0 is the
// wasm singleton sync service either way.
both_builds!(counts_through_the_sync_channel_equal_the_envoys_own_and_prometheus,);
