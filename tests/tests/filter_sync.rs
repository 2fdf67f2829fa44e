//! Filter-side sync: a real Envoy with only the HTTP filter (no bootstrap
//! extension, 4 workers) follows a real `canaryctl serve`, as an Istio gateway or
//! Envoy Gateway would: one open poll per Envoy, every worker routing by the table.

use policy_canary_e2e::*;
use serde_json::Value;
use std::time::Duration;

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");
const WORKERS: u32 = 4;

const PLAN: &str = "target: support-agent\nstable: {version: v2.3.1, cluster: agent_stable}\ncanary: {version: v2.4.0, cluster: agent_canary}\nstages: [{weight: 1%, min_duration: 1h}, {weight: 100%}]\nsegments: [{header: x-probe, value: \"1\", weight: 100%}]\n";

/// The Envoy named `edge-1` as the controller lists it, once it matches `ready`.
fn edge(controller: &Controller, ready: impl Fn(&Value) -> bool) -> Value {
    wait_for(
        "the controller to list edge-1",
        Duration::from_secs(10),
        || {
            let listed = controller.get("/v1/envoys");
            let edge = listed["envoys"]
                .as_array()?
                .iter()
                .find(|e| e["id"] == "edge-1")?
                .clone();
            ready(&edge).then_some(edge)
        },
    )
}

/// Sends probes, each on its own connection (spread over the workers), until
/// `count` in a row reach `backend`.
fn probes_reach(envoy: &Envoy, backend: &str, count: usize) {
    let port = envoy.port;
    wait_for(
        &format!("{count} probes in a row on {backend}"),
        Duration::from_secs(10),
        || {
            (0..count)
                .all(|_| {
                    Client::new(port)
                        .get("/chat", &[("x-session-id", "probe"), ("x-probe", "1")])
                        .backend
                        == backend
                })
                .then_some(())
        },
    );
}

/// Connections each worker accepted so far.
fn connections_per_worker(envoy: &Envoy) -> Vec<u64> {
    let stats = envoy.admin_get("/stats?filter=worker_.*downstream_cx_total");
    let mut per_worker = vec![0; WORKERS as usize];
    for line in stats.lines() {
        let Some((name, value)) = line.split_once(": ") else {
            continue;
        };
        if !name.starts_with("listener.127.0.0.1_") {
            continue;
        }
        let worker = name
            .split(".worker_")
            .nth(1)
            .and_then(|rest| rest.split('.').next())
            .and_then(|n| n.parse::<usize>().ok());
        if let (Some(worker), Ok(value)) = (worker, value.trim().parse::<u64>()) {
            if worker < per_worker.len() {
                per_worker[worker] += value;
            }
        }
    }
    per_worker
}

fn one_poller_per_envoy_and_every_worker_follows_the_controller(build: Build) {
    let controller = Controller::start(&[]).with_policies(&["v2.3.1", "v2.4.0"]);
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy = Envoy::start(
        &build.config(&filter_sync_config(
            stable.port,
            canary.port,
            &controller,
            "edge-1",
        )),
        WORKERS,
    );
    // Steady state: one long-poll open, named by the node id, at the current revision.
    let steady = edge(&controller, |e| {
        e["open_polls"] == 1 && e["in_sync"] == true
    });
    assert_eq!(steady["stale"], false);
    for _ in 0..5 {
        std::thread::sleep(Duration::from_millis(200));
        let e = edge(&controller, |_| true);
        assert_eq!(e["open_polls"], 1, "more than one root polls: {e}");
    }
    let before = connections_per_worker(&envoy);

    let started = controller.post_ok("/v1/rollouts", PLAN);
    probes_reach(&envoy, "canary", 40);
    let revision = controller.get("/v1/routes")["revision"].as_u64().unwrap();
    edge(&controller, |e| {
        e["revision"] == revision && e["open_polls"] == 1
    });

    let id = started["id"].as_i64().unwrap();
    controller.post_ok(&format!("/v1/rollouts/{id}/rollback"), "");
    probes_reach(&envoy, "stable", 40);
    let revision = controller.get("/v1/routes")["revision"].as_u64().unwrap();
    let after = edge(&controller, |e| {
        e["revision"] == revision && e["in_sync"] == true
    });
    assert_eq!(after["open_polls"], 1);
    // The sync's own stats, under the same names in both builds.
    wait_for("the sync's revision gauge", Duration::from_secs(5), || {
        let stats = envoy.admin_get("/stats?filter=policy_canary.sync");
        (stats.contains(&format!(
            "wasmcustom.policy_canary.sync.revision: {revision}"
        )) && stats.contains("wasmcustom.policy_canary.sync.polls_ok: "))
        .then_some(())
    });

    let served: Vec<u64> = connections_per_worker(&envoy)
        .iter()
        .zip(&before)
        .map(|(a, b)| a - b)
        .collect();
    assert!(
        served.iter().all(|n| *n > 0),
        "every worker should have served probes: {served:?}"
    );
    assert_eq!(envoy.wasm_failures(), Vec::<String>::new());
    let listed = controller.get("/v1/envoys");
    assert_eq!(listed["envoys"].as_array().unwrap().len(), 1, "{listed}");

    // The controller's own metrics say the same, and pass promtool's lint.
    let (status, metrics) = controller.get_raw("/metrics").unwrap();
    assert_eq!(status, 200);
    for line in [
        "canaryctl_envoys{state=\"in_sync\"} 1",
        "canaryctl_open_long_polls 1",
        "canaryctl_rollouts{phase=\"rolled_back\"} 1",
        "canaryctl_canary_weight_basis_points{target=\"support-agent\"} 0",
        &format!("canaryctl_envoy_route_revision{{envoy=\"edge-1\"}} {revision}"),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "no `{line}` in\n{metrics}"
        );
    }
    let mut promtool = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (make test installs Debian's prometheus)");
    use std::io::Write;
    promtool
        .stdin
        .take()
        .unwrap()
        .write_all(metrics.as_bytes())
        .unwrap();
    let checked = promtool.wait_with_output().unwrap();
    assert!(
        checked.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&checked.stdout),
        String::from_utf8_lossy(&checked.stderr)
    );
}

fn with_the_controller_gone_every_worker_keeps_the_last_table(build: Build) {
    let mut controller = Controller::start(&[]).with_policies(&["v2.3.1", "v2.4.0"]);
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy = Envoy::start(
        &build.config(&filter_sync_config(
            stable.port,
            canary.port,
            &controller,
            "edge-1",
        )),
        WORKERS,
    );
    controller.post_ok("/v1/rollouts", PLAN);
    probes_reach(&envoy, "canary", 20);
    controller.kill();
    // Polls fail now; the table in force stays, on every worker.
    std::thread::sleep(Duration::from_millis(1_500));
    probes_reach(&envoy, "canary", 40);
    assert_eq!(envoy.wasm_failures(), Vec::<String>::new());
}

every_build!(
    one_poller_per_envoy_and_every_worker_follows_the_controller,
    with_the_controller_gone_every_worker_keeps_the_last_table,
);
