//! Controller mode: a real `canaryctl serve`, a real Envoy running the filter and
//! the sync service (envoy/envoy.yaml), and test backends. The tests of following
//! the controller through outages, bad answers and restored backups also run
//! against the native module, which syncs filter-side (its only controller mode).

use policy_canary_e2e::*;
use serde_json::Value;
use std::time::{Duration, Instant};

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");
const TARGET: &str = "support-agent";

struct Stack {
    envoy: Envoy,
    controller: Controller,
    client: Client,
    _stable: Backend,
    _canary: Backend,
}

fn stack(controller_args: &[&str]) -> Stack {
    stack_on(Build::Wasm, controller_args)
}

/// The shipped configs' sync settings.
const SYNC: &str = r#""sync": {"cluster": "canary_controller", "wait_ms": 25000}"#;

/// The config following the controller on `port` in `build`, its sync settings
/// replaced by `sync`.
fn following(build: Build, ports: (u16, u16, u16), token: &str, sync: &str) -> String {
    following_config_for(build, ports, token, "edge-1", |text| {
        assert!(text.contains(SYNC), "{text}");
        text.replace(SYNC, sync)
    })
}

fn stack_on(build: Build, controller_args: &[&str]) -> Stack {
    let controller = Controller::start(controller_args).with_policies(&["v2.3.1", "v2.4.0"]);
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy = Envoy::start(
        &following(
            build,
            (stable.port, canary.port, controller.port),
            &controller.routes_token(),
            SYNC,
        ),
        2,
    );
    let client = Client::new(envoy.port);
    Stack {
        envoy,
        controller,
        client,
        _stable: stable,
        _canary: canary,
    }
}

fn plan(stages: &str, extra: &str) -> String {
    format!(
        "target: {TARGET}\nstable: {{version: v2.3.1, cluster: agent_stable}}\ncanary: {{version: v2.4.0, cluster: agent_canary}}\nanalysis_interval: 100ms\nstages: {stages}\n{extra}"
    )
}

/// Waits until every session routes as the formula says for `weight` under `salt`.
fn wait_for_split(client: &Client, sessions: &[String], salt: &str, weight: u16) {
    wait_for(
        &format!("Envoy routing at {weight} bp"),
        Duration::from_secs(10),
        || {
            sessions
                .iter()
                .all(|s| {
                    let expected = if expected_canary(s, salt, weight) {
                        "canary"
                    } else {
                        "stable"
                    };
                    client.session(s).backend == expected
                })
                .then_some(())
        },
    );
}

fn sessions(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("cm-{i}")).collect()
}

#[test]
fn manual_control_takes_effect_through_envoy() {
    let s = stack(&[]);
    let sessions = sessions(400);
    // Before any rollout: the plugin configuration's fallback, all stable.
    assert!(sessions
        .iter()
        .take(50)
        .all(|x| s.client.session(x).backend == "stable"));

    let started = s.controller.post_ok(
        "/v1/rollouts",
        &plan("[{weight: 5%, min_duration: 1h}, {weight: 25%, min_duration: 1h}, {weight: 50%, min_duration: 1h}, {weight: 100%}]", ""),
    );
    let (id, salt) = (
        started["id"].as_i64().unwrap(),
        started["salt"].as_str().unwrap().to_string(),
    );
    wait_for_split(&s.client, &sessions, &salt, 500);
    // The backend is told the policy version.
    let canary_session = sessions
        .iter()
        .find(|x| expected_canary(x, &salt, 500))
        .unwrap();
    assert_eq!(
        s.client.session(canary_session).received["x-agent-policy"],
        "v2.4.0"
    );

    s.controller
        .post_ok(&format!("/v1/rollouts/{id}/promote"), "");
    wait_for_split(&s.client, &sessions, &salt, 2_500);
    s.controller.post_ok(
        &format!("/v1/rollouts/{id}/pause"),
        r#"{"reason": "checking"}"#,
    );
    std::thread::sleep(Duration::from_millis(300));
    wait_for_split(&s.client, &sessions, &salt, 2_500);
    s.controller
        .post_ok(&format!("/v1/rollouts/{id}/resume"), "");
    s.controller
        .post_ok(&format!("/v1/rollouts/{id}/promote"), "");
    wait_for_split(&s.client, &sessions, &salt, 5_000);
    s.controller.post_ok(
        &format!("/v1/rollouts/{id}/rollback"),
        r#"{"reason": "refunds broke"}"#,
    );
    wait_for_split(&s.client, &sessions, &salt, 0);
    let reply = s.client.session(canary_session);
    assert_eq!(
        (
            reply.backend.as_str(),
            reply.received["x-agent-policy"].as_str()
        ),
        ("stable", "v2.3.1")
    );
    // Forcing the canary with no canary in the table is ignored.
    assert_eq!(s.client.get("/", &[("x-canary", "true")]).backend, "stable");
    assert_eq!(s.envoy.wasm_failures(), Vec::<String>::new());
}

#[test]
fn a_rollout_moves_through_its_stages_by_itself() {
    let s = stack(&["--tick", "50ms"]);
    let started = s.controller.post_ok(
        "/v1/rollouts",
        // Long enough a first stage that a loaded machine still sees its split.
        &plan(
            "[{weight: 10%, min_duration: 4s}, {weight: 30%, min_duration: 600ms}, {weight: 100%}]",
            "",
        ),
    );
    let id = started["id"].as_i64().unwrap();
    let salt = started["salt"].as_str().unwrap().to_string();
    let sessions = sessions(200);
    wait_for_split(&s.client, &sessions, &salt, 1_000);
    let done = wait_for("promotion", Duration::from_secs(15), || {
        let v = s.controller.get(&format!("/v1/rollouts/{id}"));
        (v["phase"] == "promoted").then_some(v)
    });
    assert_eq!(done["weight"], "100%");
    // The canary is now the stable policy: every session goes to it.
    wait_for(
        "all traffic on the promoted policy",
        Duration::from_secs(10),
        || {
            sessions
                .iter()
                .all(|x| {
                    let r = s.client.session(x);
                    r.backend == "canary" && r.received["x-agent-policy"] == "v2.4.0"
                })
                .then_some(())
        },
    );
    assert_eq!(
        s.controller.audit_actions(id),
        ["start", "advance", "advance"]
    );
    let targets = s.controller.get("/v1/targets");
    assert_eq!(targets["targets"][0]["stable"]["version"], "v2.4.0");
}

fn envoy_keeps_routing_while_the_controller_is_gone(build: Build) {
    let mut s = stack_on(build, &[]);
    let started = s.controller.post_ok(
        "/v1/rollouts",
        &plan("[{weight: 25%, min_duration: 1h}, {weight: 100%}]", ""),
    );
    let (id, salt) = (
        started["id"].as_i64().unwrap(),
        started["salt"].as_str().unwrap().to_string(),
    );
    let revision = s.controller.get("/v1/routes")["revision"].as_u64().unwrap();
    let sessions = sessions(300);
    wait_for_split(&s.client, &sessions, &salt, 2_500);

    s.controller.kill();
    // Zero failed requests, same split, while polls fail.
    for session in &sessions {
        let reply = s.client.session(session);
        assert_eq!(reply.status, 200);
        assert_eq!(
            reply.backend,
            if expected_canary(session, &salt, 2_500) {
                "canary"
            } else {
                "stable"
            }
        );
    }
    wait_for("the sync failure stat", Duration::from_secs(10), || {
        let failed = s
            .envoy
            .counters("wasmcustom.policy_canary.sync.polls_failed");
        (failed.values().sum::<u64>() > 0).then_some(())
    });

    // Back on the same state: same stage, same salt, same revision.
    s.controller.restart();
    let routes = s.controller.get("/v1/routes");
    assert_eq!(routes["revision"].as_u64(), Some(revision));
    assert_eq!(
        routes["routes"][TARGET]["salt"].as_str(),
        Some(salt.as_str())
    );
    assert_eq!(
        routes["routes"][TARGET]["canary_weight_bp"].as_u64(),
        Some(2_500)
    );
    s.controller
        .post_ok(&format!("/v1/rollouts/{id}/rollback"), "");
    wait_for_split(&s.client, &sessions, &salt, 0);
    let log = s.envoy.log();
    assert!(
        log.contains("controller answering again"),
        "recovery is logged:\n{}",
        log.lines()
            .filter(|l| l.contains("wasm"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

#[test]
fn kill_9_between_changes_loses_nothing_acknowledged() {
    let mut c = Controller::start(&[]).with_policies(&["v1", "v2", "v3"]);
    let plan = |stable: &str, canary: &str| {
        format!("target: t\nstable: {{version: {stable}, cluster: a}}\ncanary: {{version: {canary}, cluster: b}}\nstages: [{{weight: 1%, min_duration: 1h}}, {{weight: 50%, min_duration: 1h}}, {{weight: 100%}}]\n")
    };
    let mut expected_actions = Vec::new();
    let first = c.post_ok("/v1/rollouts", &plan("v1", "v2"));
    expected_actions.push("start");
    let id = first["id"].as_i64().unwrap();
    let steps: [(&str, &str, &str); 5] = [
        ("pause", "paused", "pause"),
        ("resume", "progressing", "resume"),
        ("promote", "progressing", "promote"),
        ("pause", "paused", "pause"),
        ("rollback", "rolled_back", "rollback"),
    ];
    for (action, phase, audit) in steps {
        c.kill();
        c.restart();
        let acknowledged = c.post_ok(&format!("/v1/rollouts/{id}/{action}"), "");
        expected_actions.push(audit);
        c.kill(); // immediately after the answer
        c.restart();
        let now = c.get(&format!("/v1/rollouts/{id}"));
        assert_eq!(now["phase"], phase, "after {action}");
        assert_eq!(now["stage"], acknowledged["stage"]);
        assert_eq!(now["revision"], acknowledged["revision"]);
    }
    let second = c.post_ok("/v1/rollouts", &plan("v1", "v3"));
    expected_actions.push("start");
    c.kill();
    c.restart();
    assert_ne!(second["salt"], first["salt"]);
    assert_eq!(c.get("/v1/routes")["routes"]["t"]["salt"], second["salt"]);
    let audit = c.get("/v1/audit");
    let entries: Vec<&Value> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["rollout_id"].is_i64())
        .collect();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, expected_actions);
    let revisions: Vec<u64> = entries
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
}

/// A stand-in controller whose answers the test chooses.
mod fake {
    use std::io::{Read, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    #[derive(Clone, Debug)]
    pub enum Answer {
        Document(String),
        Status(u16),
        Garbage,
        Huge,
        Hang,
        /// This document, with a response header whose value is not UTF-8.
        OddHeader(String),
    }

    pub struct Fake {
        pub port: u16,
        pub answer: Arc<Mutex<Answer>>,
    }

    pub fn start(first: Answer) -> Fake {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let answer = Arc::new(Mutex::new(first));
        let shared = Arc::clone(&answer);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let answer = shared.lock().unwrap().clone();
                std::thread::spawn(move || {
                    let mut buf = [0u8; 4096];
                    let _ = stream.set_read_timeout(Some(Duration::from_secs(5)));
                    let _ = stream.read(&mut buf);
                    let odd = matches!(answer, Answer::OddHeader(_));
                    let (status, body) = match answer {
                        Answer::Document(doc) | Answer::OddHeader(doc) => (200, doc),
                        Answer::Status(s) => (s, "{\"error\": \"boom\"}".to_string()),
                        Answer::Garbage => (200, "<html>definitely not routes</html>".to_string()),
                        Answer::Huge => (
                            200,
                            format!(
                                "{{\"revision\": 99, \"routes\": {{}}, \"pad\": \"{}\"}}",
                                "x".repeat(2 << 20)
                            ),
                        ),
                        Answer::Hang => {
                            std::thread::sleep(Duration::from_secs(4));
                            return;
                        }
                    };
                    let odd_header: &[u8] = if odd { b"x-odd: caf\xe9 \xff\r\n" } else { b"" };
                    let head = format!(
                        "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n",
                        body.len()
                    );
                    let _ = stream.write_all(
                        &[head.as_bytes(), odd_header, b"\r\n", body.as_bytes()].concat(),
                    );
                });
            }
        });
        Fake { port, answer }
    }
}

fn routes_doc(revision: u64, weight: u16) -> String {
    format!(
        r#"{{"revision": {revision}, "routes": {{"{TARGET}": {{"revision": {revision}, "salt": "fake-salt", "canary_weight_bp": {weight},
        "stable": {{"version": "v2.3.1", "cluster": "agent_stable"}}, "canary": {{"version": "v2.4.0", "cluster": "agent_canary"}}}}}}}}"#
    )
}

fn bad_controller_answers_keep_the_last_table(build: Build) {
    let fake = fake::start(fake::Answer::Document(routes_doc(5, 3_000)));
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let config = following(
        build,
        (stable.port, canary.port, fake.port),
        "fake-token",
        r#""sync": {"cluster": "canary_controller", "wait_ms": 300, "timeout_ms": 1000, "max_backoff_ms": 200}"#,
    );
    let envoy = Envoy::start(&config, 2);
    let client = Client::new(envoy.port);
    let sessions = sessions(200);
    wait_for_split(&client, &sessions, "fake-salt", 3_000);

    let stat = |name: &str| -> u64 {
        envoy
            .counters(&format!("wasmcustom.policy_canary.sync.{name}"))
            .values()
            .sum()
    };
    let cases = [
        (fake::Answer::Status(500), "polls_failed"),
        (fake::Answer::Garbage, "documents_rejected"),
        (
            fake::Answer::Document(routes_doc(2, 10_000)),
            "documents_rejected",
        ), // older revision
        (fake::Answer::Huge, "documents_rejected"),
        (fake::Answer::Hang, "polls_failed"),
        // A header value that is not UTF-8 must not kill the sync service (the SDK's
        // `get_map` would panic on it): the same document, read as usual.
        (fake::Answer::OddHeader(routes_doc(5, 3_000)), "polls_ok"),
    ];
    for (answer, counter) in cases {
        let before = stat(counter);
        *fake.answer.lock().unwrap() = answer.clone();
        wait_for(
            &format!("{counter} to move for {answer:?}"),
            Duration::from_secs(15),
            || (stat(counter) > before).then_some(()),
        );
        // Every request still routes by the last good table.
        for session in &sessions {
            let reply = client.session(session);
            assert_eq!(reply.status, 200);
            assert_eq!(
                reply.backend,
                if expected_canary(session, "fake-salt", 3_000) {
                    "canary"
                } else {
                    "stable"
                },
                "{answer:?}"
            );
        }
    }
    // A good, newer document is taken again.
    *fake.answer.lock().unwrap() = fake::Answer::Document(routes_doc(6, 500));
    wait_for_split(&client, &sessions, "fake-salt", 500);
    let log = envoy.log();
    assert!(
        log.contains("keeping route revision 5 (fail static)"),
        "failures are logged:\n{}",
        log.lines()
            .filter(|l| l.contains("wasm"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Logged once per change of state, not once per poll.
    let lines = log
        .lines()
        .filter(|l| l.contains("controller answered HTTP 500"))
        .count();
    assert_eq!(lines, 1, "one log line for a run of 500s");
    assert!(!log.contains("panic"), "no panic");
}

#[test]
fn webhooks_report_every_change_and_retry() {
    use std::io::{Read, Write};
    use std::sync::{Arc, Mutex};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let received: Arc<Mutex<Vec<Value>>> = Arc::default();
    let hits = Arc::new(std::sync::atomic::AtomicU32::new(0));
    {
        let (received, hits) = (Arc::clone(&received), Arc::clone(&hits));
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let mut data = Vec::new();
                let mut buf = [0u8; 8192];
                let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
                // Read headers and the body (content-length).
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    data.extend_from_slice(&buf[..n]);
                    let text = String::from_utf8_lossy(&data);
                    if let Some((head, body)) = text.split_once("\r\n\r\n") {
                        let len = head
                            .lines()
                            .find_map(|l| {
                                l.to_ascii_lowercase()
                                    .strip_prefix("content-length: ")
                                    .and_then(|v| v.trim().parse::<usize>().ok())
                            })
                            .unwrap_or(0);
                        if body.len() >= len {
                            break;
                        }
                    }
                }
                // The first delivery fails: the notifier must retry.
                let n = hits.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                if n == 0 {
                    let _ = stream.write_all(
                        b"HTTP/1.1 503 No\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                    );
                    continue;
                }
                let text = String::from_utf8_lossy(&data).to_string();
                if let Some((_, body)) = text.split_once("\r\n\r\n") {
                    if let Ok(v) = serde_json::from_str(body) {
                        received.lock().unwrap().push(v);
                    }
                }
                let _ = stream.write_all(
                    b"HTTP/1.1 204 OK\r\ncontent-length: 0\r\nconnection: close\r\n\r\n",
                );
            }
        });
    }
    let url = format!("http://127.0.0.1:{port}/hook");
    let c = Controller::start(&["--webhook", &url]).with_policies(&["v1", "v2"]);
    let started = c.post_ok("/v1/rollouts", "target: t\nstable: {version: v1, cluster: a}\ncanary: {version: v2, cluster: b}\nstages: [{weight: 1%, min_duration: 1h}, {weight: 5%, min_duration: 1h}, {weight: 100%}]\n");
    let id = started["id"].as_i64().unwrap();
    for action in ["pause", "resume", "promote", "rollback"] {
        let began = Instant::now();
        c.post_ok(&format!("/v1/rollouts/{id}/{action}"), "");
        assert!(
            began.elapsed() < Duration::from_secs(2),
            "the state machine does not wait for webhooks"
        );
    }
    let events = wait_for("five webhook events", Duration::from_secs(20), || {
        let got = received.lock().unwrap().clone();
        (got.len() >= 5).then_some(got)
    });
    let names: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(
        names,
        [
            "rollout.started",
            "rollout.paused",
            "rollout.resumed",
            "rollout.stage_changed",
            "rollout.rolled_back"
        ]
    );
    assert_eq!(events[4]["to"], "rolled_back");
    assert_eq!(events[3]["weight"], "5%");
    let health = c.get("/healthz");
    assert!(health["webhooks"]["retries"].as_u64().unwrap() >= 1);
    assert_eq!(health["webhooks"]["delivered"].as_u64(), Some(5));
}

#[test]
fn the_runtime_driver_sets_envoy_weights_and_reapplies_them() {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy_config = shipped_config("envoy-runtime.yaml", stable.port, canary.port);
    // The admin port must stay the same across an Envoy restart: fix it.
    let admin_port = free_port();
    let mut envoy = Envoy::start_with_admin(&envoy_config, 2, admin_port);
    let admin = format!("http://127.0.0.1:{admin_port}");
    let c = Controller::start(&["--envoy-admin", &admin, "--runtime-weights"])
        .with_policies(&["v2.3.1", "v2.4.0"]);
    let started = c.post_ok(
        "/v1/rollouts",
        "target: support-agent\nstable: {version: v2.3.1, cluster: agent_stable}\ncanary: {version: v2.4.0, cluster: agent_canary}\nsalt: rollout-2026-11-22\nstages: [{weight: 5%, min_duration: 1h}, {weight: 25%, min_duration: 1h}, {weight: 100%}]\n",
    );
    let id = started["id"].as_i64().unwrap();
    let sessions = sessions(300);
    let client = Client::new(envoy.port);
    // The runtime config's salt is the plan's: Envoy's weights and the filter's buckets agree.
    wait_for_split(&client, &sessions, "rollout-2026-11-22", 500);
    c.post_ok(&format!("/v1/rollouts/{id}/promote"), "");
    wait_for_split(&client, &sessions, "rollout-2026-11-22", 2_500);

    // A restarted Envoy forgets runtime overrides; the driver puts them back.
    drop(envoy);
    envoy = Envoy::start_with_admin(&envoy_config, 2, admin_port);
    let client = Client::new(envoy.port);
    wait_for_split(&client, &sessions, "rollout-2026-11-22", 2_500);
    let runtime: Value = serde_json::from_str(&envoy.admin_get("/runtime")).unwrap();
    assert_eq!(
        runtime["entries"]["policy_canary.support-agent.agent_canary"]["final_value"],
        "2500"
    );

    // While the rollout runs, forcing reaches the canary; once it is rolled back the
    // canary is gone, and forcing must not reach it any more.
    let force = || client.get("/", &[("x-session-id", "forcer"), ("x-canary", "true")]);
    assert_eq!(force().backend, "canary");
    c.post_ok(&format!("/v1/rollouts/{id}/rollback"), "");
    wait_for_split(&client, &sessions, "rollout-2026-11-22", 0);
    wait_for(
        "forcing to follow the rollback",
        Duration::from_secs(10),
        || (force().backend == "stable").then_some(()),
    );
}

/// Copies a state directory (the controller stopped, so SQLite's files are whole).
fn copy_dir(from: &std::path::Path, to: &std::path::Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
    }
}

/// A controller restored from an older backup serves lower revisions than the
/// Envoys hold: they follow it all the same (a new generation), so a rollback on
/// the restored controller reaches every worker.
fn a_controller_restored_from_an_older_backup_is_followed(build: Build) {
    let mut s = stack_on(build, &[]);
    let probe_plan = plan(
        "[{weight: 1%, min_duration: 1h}, {weight: 5%, min_duration: 1h}, {weight: 25%, min_duration: 1h}, {weight: 100%}]",
        "segments: [{header: x-probe, value: \"1\", weight: 100%}]\n",
    );
    let probe = |client: &Client| {
        client
            .get("/chat", &[("x-session-id", "probe"), ("x-probe", "1")])
            .backend
    };
    let id = s.controller.post_ok("/v1/rollouts", &probe_plan)["id"]
        .as_i64()
        .unwrap();
    wait_for("the probe on the canary", Duration::from_secs(10), || {
        (probe(&s.client) == "canary").then_some(())
    });
    // The backup: the state as it is now.
    s.controller.kill();
    let backup = TempDir::new("backup");
    copy_dir(&s.controller.state_dir, backup.path());
    s.controller.restart();
    // More changes: the Envoys now hold a higher revision than the backup's.
    for action in ["pause", "resume", "promote", "promote"] {
        s.controller
            .post_ok(&format!("/v1/rollouts/{id}/{action}"), "");
    }
    let high = s.controller.get("/v1/routes")["revision"].as_u64().unwrap();
    wait_for(
        "the Envoy at the high revision",
        Duration::from_secs(10),
        || {
            let stats = s
                .envoy
                .admin_get("/stats?filter=policy_canary.sync.revision");
            stats.contains(&format!(": {high}")).then_some(())
        },
    );
    // Restore the backup and roll back there: a lower revision than the Envoy holds.
    s.controller.kill();
    std::fs::remove_dir_all(&s.controller.state_dir).unwrap();
    copy_dir(backup.path(), &s.controller.state_dir);
    s.controller.restart();
    s.controller
        .post_ok(&format!("/v1/rollouts/{id}/rollback"), "");
    let restored = s.controller.get("/v1/routes")["revision"].as_u64().unwrap();
    assert!(restored < high, "restored revision {restored} vs {high}");
    let rolled_back = Instant::now();
    wait_for(
        "every worker to follow the restored controller",
        Duration::from_secs(10),
        || {
            (0..20)
                .all(|_| probe(&Client::new(s.envoy.port)) == "stable")
                .then_some(())
        },
    );
    eprintln!(
        "followed the restored controller in {:?}",
        rolled_back.elapsed()
    );
    // The only wasm lines beyond info are the sync's own notes on the restarts.
    let failures: Vec<String> = s
        .envoy
        .wasm_failures()
        .into_iter()
        .filter(|l| !l.contains("controller answering again after"))
        .collect();
    assert_eq!(failures, Vec::<String>::new());
}

/// Webhook URLs carry secrets (chat webhooks hold their token in the path): a
/// failing webhook is logged by its position, never by its URL.
#[test]
fn webhook_urls_never_reach_the_log() {
    let closed = free_port();
    let secret = "T0KEN-in-the-path-4f9a";
    let url = format!("http://127.0.0.1:{closed}/hooks/{secret}");
    let c = Controller::start_logging(&["--webhook", &url]).with_policies(&["v1", "v2"]);
    c.post_ok(
        "/v1/rollouts",
        "target: t\nstable: {version: v1, cluster: a}\ncanary: {version: v2, cluster: b}\n",
    );
    wait_for(
        "the webhook to fail for good",
        Duration::from_secs(30),
        || (c.get("/healthz")["webhooks"]["failed"] == 1).then_some(()),
    );
    let log = c.log_text();
    assert!(log.contains("webhook delivery failed"), "{log}");
    assert!(log.contains("webhook=1"), "{log}");
    assert!(!log.contains(secret), "the webhook URL was logged:\n{log}");
}

/// Two controllers on one state directory would both decide and serve different
/// tables: the second refuses to start. The state is the owner's alone.
#[test]
fn a_second_controller_on_the_same_state_refuses_to_run() {
    let c = Controller::start(&[]);
    let second = std::process::Command::new(canaryctl_bin())
        .args(["serve", "--listen", &format!("127.0.0.1:{}", free_port())])
        .arg("--state-dir")
        .arg(&c.state_dir)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!second.status.success());
    let said = String::from_utf8_lossy(&second.stderr);
    assert!(
        said.contains("another canaryctl serves the state directory"),
        "{said}"
    );
    // The first one is unaffected.
    assert_eq!(c.get("/healthz")["status"], "ok");
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&c.state_dir), 0o700);
        assert_eq!(mode(&c.state_dir.join("canaryctl.db")), 0o600);
    }
}

/// With every evidence source unreachable a canary is unmonitored (safety
/// included): after the plan's evidence_timeout the stage pauses (first stage) or
/// rolls back (later ones), audited like any automatic decision.
#[test]
fn losing_all_evidence_stops_the_stage() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let c = Controller::start(&[
        "--envoy-admin",
        &dead,
        "--scrape-interval",
        "100ms",
        "--tick",
        "50ms",
    ])
    .with_policies(&["v1", "v2"]);
    let plan = "target: t\nstable: {version: v1, cluster: a}\ncanary: {version: v2, cluster: b}\nanalysis_interval: 200ms\nevidence_timeout: 1s\nstages: [{weight: 5%, min_duration: 1s}, {weight: 50%, min_duration: 1s}, {weight: 100%}]\n";
    let id = c.post_ok("/v1/rollouts", plan)["id"].as_i64().unwrap();
    wait_for(
        "the rollout paused for lack of evidence",
        Duration::from_secs(15),
        || (c.get(&format!("/v1/rollouts/{id}"))["phase"] == "paused").then_some(()),
    );
    let audit = c.get(&format!("/v1/audit?rollout={id}"));
    let last = audit["audit"].as_array().unwrap().last().unwrap().clone();
    assert_eq!(last["actor"], "canaryctl");
    let reason = last["reason"].as_str().unwrap();
    assert!(
        reason.contains("no evidence") && reason.contains("no Envoy admin answered"),
        "{reason}"
    );
    // Resumed in a later stage with the evidence still missing: rolled back.
    c.post_ok(&format!("/v1/rollouts/{id}/promote"), "");
    wait_for(
        "the rollout rolled back for lack of evidence",
        Duration::from_secs(15),
        || (c.get(&format!("/v1/rollouts/{id}"))["phase"] == "rolled_back").then_some(()),
    );
}

both_builds!(
    envoy_keeps_routing_while_the_controller_is_gone,
    bad_controller_answers_keep_the_last_table,
    a_controller_restored_from_an_older_backup_is_followed,
);
