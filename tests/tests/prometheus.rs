//! Evidence from Prometheus: a real Prometheus server (1 s scrapes) reads two real
//! Envoys that share the traffic, and `canaryctl serve --prometheus` takes the
//! whole fleet's counts from it. Traffic is bounded in count and time.

use policy_canary_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");

struct Fleet {
    envoys: Vec<Envoy>,
    admin_ports: Vec<u16>,
    configs: Vec<String>,
    controller: Controller,
    prometheus: PrometheusServer,
    _backends: (Backend, Backend),
}

fn fleet(stable: &[&str], canary: &[&str]) -> Fleet {
    fleet_on(Build::Wasm, stable, canary)
}

/// Two Envoys of `build` (the wasm filter in controller mode, the native module
/// with filter-side sync as `gw-0` and `gw-1`) scraped by a real Prometheus.
fn fleet_on(build: Build, stable: &[&str], canary: &[&str]) -> Fleet {
    let stable = Backend::start_with(BACKEND, "stable", stable);
    let canary = Backend::start_with(BACKEND, "canary", canary);
    let admin_ports = vec![free_port(), free_port()];
    let prometheus = PrometheusServer::start(&admin_ports);
    let controller = Controller::start(&[
        "--prometheus",
        &prometheus.url(),
        "--prometheus-interval",
        "300ms",
        "--prometheus-step",
        "2s",
        "--tick",
        "50ms",
    ])
    .with_policies(&["v2.3.1", "v2.4.0"]);
    let configs: Vec<String> = (0..admin_ports.len())
        .map(|i| {
            following_config(
                build,
                stable.port,
                canary.port,
                &controller,
                &format!("gw-{i}"),
            )
        })
        .collect();
    let envoys = admin_ports
        .iter()
        .zip(&configs)
        .map(|(port, config)| Envoy::start_with_admin(config, 1, *port))
        .collect();
    Fleet {
        envoys,
        admin_ports,
        configs,
        controller,
        prometheus,
        _backends: (stable, canary),
    }
}

fn send(envoy: &Envoy, sessions: std::ops::Range<usize>) -> (u64, u64) {
    send_sessions(envoy.port, sessions)
}

fn analysis(f: &Fleet, id: i64) -> Value {
    f.controller.get(&format!("/v1/rollouts/{id}/analysis"))["analysis"].clone()
}

/// Waits until Prometheus holds `count` requests counted by the Envoy on `admin_port`,
/// in its per-version counters and in its session replicates (a scrape can fall
/// between the two in one flush).
fn scraped(f: &Fleet, admin_port: u16, count: u64) {
    let instance = format!("instance=\"127.0.0.1:{admin_port}\"");
    let queries = [
        format!("sum(policy_canary_rq_total{{{instance}}})"),
        format!("sum(policy_canary_replicate{{{instance},counter=\"rq_total\"}})"),
    ];
    wait_for(
        &format!("Prometheus to scrape {count} requests from :{admin_port}"),
        Duration::from_secs(20),
        || {
            queries
                .iter()
                .all(|q| f.prometheus.value(q) == Some(count as f64))
                .then_some(())
        },
    );
}

#[test]
fn counts_equal_the_envoys_own_across_a_restart() {
    let mut f = fleet(&["completion=0.9"], &["completion=0.9"]);
    let plan = "target: support-agent\nstable: {version: v2.3.1, cluster: agent_stable}\ncanary: {version: v2.4.0, cluster: agent_canary}\nanalysis_interval: 500ms\nstages: [{weight: 50%, min_duration: 1h, min_requests: 1000000}, {weight: 100%}]\n";
    let id = f.controller.post_ok("/v1/rollouts", plan)["id"]
        .as_i64()
        .unwrap();
    let revision = f.controller.get("/v1/routes")["revision"].clone();
    // Both Envoys route by the rollout's table before the traffic starts.
    for envoy in &f.envoys {
        wait_for("the table on every Envoy", Duration::from_secs(10), || {
            let stats = envoy.admin_get("/stats?filter=policy_canary.sync.revision");
            stats.contains(&format!(": {revision}")).then_some(())
        });
    }
    let (mut stable, mut canary) = (0, 0);
    let mut add = |(s, c): (u64, u64)| {
        stable += s;
        canary += c;
    };
    add(send(&f.envoys[0], 0..300));
    add(send(&f.envoys[1], 300..600));
    // Envoy 2's counts are in Prometheus; then it restarts (its counters reset).
    scraped(&f, f.admin_ports[1], 300);
    let config = f.configs[1].clone();
    let port = f.admin_ports[1];
    drop(f.envoys.pop());
    f.envoys.push(Envoy::start_with_admin(&config, 1, port));
    wait_for(
        "the restarted Envoy to follow",
        Duration::from_secs(10),
        || {
            let stats = f.envoys[1].admin_get("/stats?filter=policy_canary.sync.revision");
            stats.contains(&format!(": {revision}")).then_some(())
        },
    );
    add(send(&f.envoys[1], 600..800));
    add(send(&f.envoys[0], 800..900));
    assert_eq!(stable + canary, 900);
    assert!(canary > 300 && stable > 300, "a 50% split: {canary} canary");
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut last = Value::Null;
    while Instant::now() < deadline {
        last = analysis(&f, id);
        let tasks = last["comparisons"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["metric"] == "completion_rate")
            .and_then(|c| c["n_canary"].as_f64());
        if last["stable_requests"].as_f64() == Some(stable as f64)
            && last["canary_requests"].as_f64() == Some(canary as f64)
            && tasks == Some(canary as f64)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        (
            last["stable_requests"].as_f64(),
            last["canary_requests"].as_f64()
        ),
        (Some(stable as f64), Some(canary as f64)),
        "the controller's counts are the Envoys' own: {last}"
    );
    assert_eq!(last.get("evidence_unavailable"), None);
    // Tasks counted too (every answer ends a task).
    let completion = last["comparisons"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["metric"] == "completion_rate")
        .unwrap()
        .clone();
    assert_eq!(completion["n_canary"].as_f64(), Some(canary as f64));
    // Prometheus gone: the stage is held, and status says why.
    f.prometheus.stop();
    let held = wait_for(
        "evidence marked unavailable",
        Duration::from_secs(20),
        || {
            let a = analysis(&f, id);
            a["evidence_unavailable"].as_str().map(str::to_string)
        },
    );
    assert!(held.contains("cannot reach Prometheus"), "{held}");
    let status = std::process::Command::new(canaryctl_bin())
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", f.controller.port),
            "--token",
            &f.controller.token,
            "rollout",
            "status",
            &id.to_string(),
        ])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&status.stdout);
    assert!(text.contains("EVIDENCE UNAVAILABLE, stage held"), "{text}");
    assert_eq!(
        f.controller.get(&format!("/v1/rollouts/{id}"))["phase"],
        "progressing"
    );
}

/// Sends sessions through both Envoys in turn until rollout `id` has ended (at
/// most `max` requests or 120 s); a rollout still under way fails the test with
/// what the controller saw.
fn drive(f: &Fleet, id: i64, max: usize) -> usize {
    let clients: Vec<Client> = f.envoys.iter().map(|e| Client::new(e.port)).collect();
    let ended = || phase(f, id) != "progressing";
    try_drive_sessions(&clients, max, Duration::from_secs(120), ended).unwrap_or_else(|sent| {
        panic!(
            "rollout {id} still under way after {sent} requests\nrollout: {}\nanalysis: {}",
            f.controller.get(&format!("/v1/rollouts/{id}")),
            analysis(f, id)
        )
    })
}

fn phase(f: &Fleet, id: i64) -> Value {
    f.controller.get(&format!("/v1/rollouts/{id}"))["phase"].clone()
}

/// `FAST_PLAN` judged on what the agents report, not on latency: the test
/// backends answer in well under a millisecond, where a loaded CI machine's
/// scheduling moves one backend's p95 across a histogram bucket boundary and the
/// latency gate then holds or rolls back an identical canary.
/// `more_gates` (`, name: {…}`) are added to the plan's gates.
fn plan_without_latency(more_gates: &str) -> String {
    format!("{FAST_PLAN}gates: {{latency_p95: {{enabled: false}}{more_gates}}}\n")
}

#[test]
fn a_regression_is_rolled_back_and_an_identical_canary_promoted() {
    let f = fleet(&["completion=0.9"], &["completion=0.7"]);
    let id = f
        .controller
        .post_ok("/v1/rollouts", &plan_without_latency(""))["id"]
        .as_i64()
        .unwrap();
    drive(&f, id, 60_000);
    let audit = f.controller.get(&format!("/v1/audit?rollout={id}"));
    assert_eq!(phase(&f, id), "rolled_back", "{audit}");
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "canaryctl");
    assert!(last["reason"].as_str().unwrap().contains("completion_rate"));
    drop(f);

    let f = fleet(&["completion=0.9"], &["completion=0.9"]);
    let id = f
        .controller
        .post_ok("/v1/rollouts", &plan_without_latency(""))["id"]
        .as_i64()
        .unwrap();
    drive(&f, id, 60_000);
    let audit = f.controller.get(&format!("/v1/audit?rollout={id}"));
    assert_eq!(
        f.controller.audit_actions(id),
        ["start", "advance", "advance"],
        "{audit}"
    );
}

/// The native module's custom metrics reach the analysis through Prometheus: the
/// shipped relabel rules give its one family (`policy_canary_custom{counter=…}`)
/// the wasm filter's names, and a canary worse on the agent's `judge_score` only
/// is rolled back by that gate.
#[test]
fn a_native_fleets_custom_metric_is_judged_through_prometheus() {
    let f = fleet_on(
        Build::Native,
        &["completion=0.9", "metric=judge_score:0.8"],
        &["completion=0.9", "metric=judge_score:0.6"],
    );
    let plan =
        plan_without_latency(", judge_score: {metric: judge_score, worse: lower, threshold: 0.05}");
    let id = f.controller.post_ok("/v1/rollouts", &plan)["id"]
        .as_i64()
        .unwrap();
    drive(&f, id, 60_000);
    assert_eq!(phase(&f, id), "rolled_back");
    let audit = f.controller.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    assert!(
        last["reason"].as_str().unwrap().contains("judge_score"),
        "{last}"
    );
    // Prometheus holds the wasm filter's series, and no native family is left.
    let reports = "sum(policy_canary_custom_judge_score_reports{policy_version=\"v2.4.0\"})";
    assert!(f.prometheus.value(reports).unwrap_or(0.0) > 0.0);
    assert_eq!(f.prometheus.value("count(policy_canary_custom)"), None);
    assert_eq!(
        f.prometheus
            .value("count({__name__=~\"policy_canary_custom_.+\", counter!=\"\"})"),
        None
    );
}
