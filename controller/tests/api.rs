//! The HTTP API, driven in-process through `tower::ServiceExt::oneshot`.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use axum::body::Body;
use axum::http::{Request, StatusCode};
use canaryctl::analysis::judge::TimeOnlyJudge;
use canaryctl::api::{app, AppState};
use canaryctl::controller::Controller;
use canaryctl::notify::Notifier;
use http_body_util::BodyExt;
use serde_json::{json, Value};
use std::sync::Arc;
use tower::ServiceExt;

const TOKEN: &str = "test-token";

struct Api {
    state: AppState,
    _dir: tempfile::TempDir,
}

fn api() -> Api {
    let dir = tempfile::tempdir().unwrap();
    let controller =
        Controller::open(dir.path(), Notifier::none(), Box::new(TimeOnlyJudge)).unwrap();
    Api {
        state: AppState {
            controller,
            token: Arc::from(TOKEN),
            webhooks: Notifier::none(),
            limits: Default::default(),
            open_routes: false,
            evidence: None,
        },
        _dir: dir,
    }
}

impl Api {
    async fn call(
        &self,
        method: &str,
        path: &str,
        body: &str,
        token: Option<&str>,
    ) -> (StatusCode, Value) {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app(self.state.clone())
            .oneshot(request.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    async fn get(&self, path: &str) -> Value {
        let (status, body) = self.call("GET", path, "", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
        body
    }

    async fn post(&self, path: &str, body: &str) -> (StatusCode, Value) {
        self.call("POST", path, body, Some(TOKEN)).await
    }

    async fn with_policies(self) -> Self {
        for version in ["v2.3.1", "v2.4.0"] {
            let (status, _) = self.post("/v1/policies", &policy(version, 0.2)).await;
            assert_eq!(status, StatusCode::CREATED);
        }
        self
    }
}

fn policy(version: &str, temperature: f64) -> String {
    format!(
        "version: {version}\nsystem_prompt: You help with orders.\nmodel: m-1\ntemperature: {temperature}\nmax_tokens: 512\ntools: [lookup]\n"
    )
}

const PLAN: &str = r#"
target: support-agent
stable: {version: v2.3.1, cluster: agent_stable}
canary: {version: v2.4.0, cluster: agent_canary}
stages:
  - {weight: 1%, min_duration: 1h}
  - {weight: 5%, min_duration: 1h}
  - {weight: 100%}
"#;

#[tokio::test]
async fn policies_are_immutable() {
    let api = api();
    let (status, created) = api.post("/v1/policies", &policy("v1", 0.2)).await;
    assert_eq!(status, StatusCode::CREATED);
    let sha = created["sha256"].as_str().unwrap().to_string();
    assert_eq!(created["id"], format!("v1@sha256:{sha}"));
    // The same content again: accepted, nothing new.
    let (status, again) = api.post("/v1/policies", &policy("v1", 0.2)).await;
    assert_eq!(
        (status, again["sha256"].as_str()),
        (StatusCode::OK, Some(sha.as_str()))
    );
    // Other content under the same version: refused with both hashes.
    let (status, body) = api.post("/v1/policies", &policy("v1", 0.9)).await;
    assert_eq!(status, StatusCode::CONFLICT);
    let message = body["error"].as_str().unwrap();
    assert!(
        message.contains(&sha) && message.matches("sha256").count() >= 2,
        "{message}"
    );
    let shown = api.get("/v1/policies/v1").await;
    assert_eq!(shown["bundle"]["temperature"], json!(0.2));
    let (status, _) = api.call("GET", "/v1/policies/nope", "", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn changes_need_the_token() {
    let api = api().with_policies().await;
    for token in [None, Some("wrong"), Some("")] {
        let (status, body) = api.call("POST", "/v1/rollouts", PLAN, token).await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    }
    assert_eq!(api.get("/v1/rollouts").await["rollouts"], json!([]));
    let (status, _) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED);
}

#[tokio::test]
async fn bad_plans_get_400_naming_the_field_and_change_nothing() {
    let api = api().with_policies().await;
    let before = api.get("/v1/routes").await;
    let cases = [
        (
            PLAN.replace(
                "min_duration: 1h}\n  - {weight: 5%",
                "min_duraton: 1h}\n  - {weight: 5%",
            ),
            "stages[0].min_duraton: unknown field",
        ),
        (
            PLAN.replace("weight: 5%", "weight: 0.5%"),
            "stages[1].weight: weights must increase",
        ),
        (
            PLAN.replace("weight: 100%", "weight: 120%"),
            "stages[2].weight: weight must be at most 100%",
        ),
        (
            PLAN.replace(
                "min_duration: 1h}\n  - {weight: 5%",
                "min_duration: -1h}\n  - {weight: 5%",
            ),
            "stages[0].min_duration: duration `-1h` is negative",
        ),
        (
            PLAN.replace("v2.4.0", "v9.9.9"),
            "canary.version: unknown policy version `v9.9.9`",
        ),
        ("{not json".to_string(), "not valid JSON"),
        ("\u{0}\u{1}".to_string(), "not valid"),
    ];
    for (plan, expected) in cases {
        let (status, body) = api.post("/v1/rollouts", &plan).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
        let message = body["error"].as_str().unwrap();
        assert!(
            message.contains(expected),
            "got `{message}`, expected `{expected}`"
        );
    }
    let (status, _) = api
        .post("/v1/rollouts", "a".repeat(300 * 1024).as_str())
        .await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let (status, _) = api.call("POST", "/v1/rollouts", "", Some(TOKEN)).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(api.get("/v1/routes").await, before, "nothing changed");
    assert_eq!(api.get("/v1/rollouts").await["rollouts"], json!([]));
}

#[tokio::test]
async fn manual_control_and_illegal_transitions() {
    let api = api().with_policies().await;
    let (status, started) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let id = started["id"].as_i64().unwrap();
    assert_eq!(
        (started["phase"].as_str(), started["weight_bp"].as_u64()),
        (Some("progressing"), Some(100))
    );
    let salt = started["salt"].as_str().unwrap().to_string();
    assert!(salt.starts_with("ro-"));

    // A second rollout for the same target: 409 with the current state.
    let (status, body) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(
        (status, body["state"].as_str()),
        (StatusCode::CONFLICT, Some("progressing"))
    );

    let act = |action: &'static str, body: &'static str| {
        let api = &api;
        async move { api.post(&format!("/v1/rollouts/{id}/{action}"), body).await }
    };
    let (status, v) = act(
        "pause",
        r#"{"actor": "alice", "reason": "checking tickets"}"#,
    )
    .await;
    assert_eq!(
        (status, v["phase"].as_str()),
        (StatusCode::OK, Some("paused"))
    );
    let (status, v) = act("pause", "").await;
    assert_eq!(
        (status, v["state"].as_str()),
        (StatusCode::CONFLICT, Some("paused"))
    );
    let (status, v) = act("resume", "").await;
    assert_eq!(
        (status, v["phase"].as_str()),
        (StatusCode::OK, Some("progressing"))
    );
    let (status, v) = act("promote", "").await;
    assert_eq!(
        (status, v["stage"].as_u64(), v["weight_bp"].as_u64()),
        (StatusCode::OK, Some(2), Some(500))
    );
    let routes = api.get("/v1/routes").await;
    assert_eq!(routes["routes"]["support-agent"]["canary_weight_bp"], 500);
    assert_eq!(routes["routes"]["support-agent"]["salt"], salt.as_str());

    let (status, v) = act("rollback", r#"{"reason": "refunds broke"}"#).await;
    assert_eq!(
        (status, v["phase"].as_str()),
        (StatusCode::OK, Some("rolled_back"))
    );
    let after = api.get("/v1/routes").await;
    let table = &after["routes"]["support-agent"];
    assert_eq!(
        (table["canary"].clone(), table["stable"]["version"].as_str()),
        (Value::Null, Some("v2.3.1"))
    );
    // Rollback is idempotent: no change, no new revision.
    let (status, _) = act("rollback", "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.get("/v1/routes").await["revision"], after["revision"]);
    for action in ["pause", "resume", "promote", "abort"] {
        let (status, v) = act(action, "").await;
        assert_eq!(
            (status, v["state"].as_str()),
            (StatusCode::CONFLICT, Some("rolled_back")),
            "{action}"
        );
    }
    let (status, _) = act("explode", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = act("pause", "{bad").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, _) = api.post("/v1/rollouts/999/pause", "").await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // The audit log: every change in order, with actor, reason, states and revision.
    let audit = api.get(&format!("/v1/audit?rollout={id}")).await;
    let entries = audit["audit"].as_array().unwrap();
    let actions: Vec<&str> = entries
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "pause", "resume", "promote", "rollback"]);
    assert_eq!(entries[1]["actor"], "alice");
    assert_eq!(entries[1]["reason"], "checking tickets");
    assert_eq!(entries[4]["reason"], "refunds broke");
    assert_eq!(entries[0]["from"], "pending");
    let revisions: Vec<u64> = entries
        .iter()
        .map(|e| e["revision"].as_u64().unwrap())
        .collect();
    assert!(
        revisions.windows(2).all(|w| w[0] < w[1]),
        "revisions increase: {revisions:?}"
    );

    // A new rollout of the same target starts from stable with a new salt.
    let (status, second) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED);
    assert_ne!(second["salt"], started["salt"]);
    let (status, v) = api
        .post(
            &format!("/v1/rollouts/{}/promote?to_end=true", second["id"]),
            "",
        )
        .await;
    assert_eq!(
        (status, v["phase"].as_str()),
        (StatusCode::OK, Some("promoted"))
    );
    let table = &api.get("/v1/routes").await["routes"]["support-agent"];
    assert_eq!(
        (
            table["stable"]["version"].as_str(),
            table["stable"]["cluster"].as_str()
        ),
        (Some("v2.4.0"), Some("agent_canary"))
    );
    // The next plan must start from the new stable.
    let (status, body) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(body["error"]
        .as_str()
        .unwrap()
        .starts_with("stable: the target's stable policy is v2.4.0"));
}

#[tokio::test]
async fn long_poll_answers_when_the_revision_moves() {
    let api = api().with_policies().await;
    let start = api.get("/v1/routes").await["revision"].as_u64().unwrap();
    let state = api.state.clone();
    let waiter = tokio::spawn(async move {
        let began = std::time::Instant::now();
        let response = app(state)
            .oneshot(
                Request::get(format!("/v1/routes?revision={start}&wait=20s"))
                    .header("authorization", format!("Bearer {TOKEN}"))
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        (
            began.elapsed(),
            serde_json::from_slice::<Value>(&bytes).unwrap(),
        )
    });
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    let (status, _) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED);
    let (elapsed, doc) = waiter.await.unwrap();
    assert!(doc["revision"].as_u64().unwrap() > start);
    assert!(
        elapsed < std::time::Duration::from_secs(5),
        "answered after {elapsed:?}"
    );
    // Unchanged revision: waits the given time, then answers with the same tables.
    let now = doc["revision"].as_u64().unwrap();
    let began = std::time::Instant::now();
    let same = api
        .get(&format!("/v1/routes?revision={now}&wait=300ms"))
        .await;
    assert!(began.elapsed() >= std::time::Duration::from_millis(250));
    assert_eq!(same["revision"].as_u64(), Some(now));
    // A poller holding another generation's table is answered at once.
    let epoch = same["epoch"]
        .as_u64()
        .expect("the document names its generation");
    assert_ne!(epoch, 0);
    let began = std::time::Instant::now();
    let other = api
        .get(&format!(
            "/v1/routes?revision={now}&epoch={}&wait=20s",
            epoch + 1
        ))
        .await;
    assert!(began.elapsed() < std::time::Duration::from_secs(5));
    assert_eq!(other["epoch"].as_u64(), Some(epoch));
    for bad in [
        "/v1/routes?revision=1&epoch=x",
        "/v1/routes?revision=x",
        "/v1/routes?revision=1&wait=-1s",
        "/v1/routes?revision=1&wait=soon",
    ] {
        let (status, _) = api.call("GET", bad, "", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_changes_are_serialised() {
    let api = Arc::new(api().with_policies().await);
    let (_, started) = api.post("/v1/rollouts", PLAN).await;
    let id = started["id"].as_i64().unwrap();
    let mut tasks = Vec::new();
    for i in 0..40 {
        let api = Arc::clone(&api);
        tasks.push(tokio::spawn(async move {
            let action = ["pause", "resume", "promote", "rollback"][i % 4];
            api.post(&format!("/v1/rollouts/{id}/{action}"), "").await.0
        }));
    }
    for task in tasks {
        let status = task.await.unwrap();
        assert!(
            status == StatusCode::OK || status == StatusCode::CONFLICT,
            "{status}"
        );
    }
    // Whatever the interleaving, the audit log is a valid chain of states.
    let audit = api.get(&format!("/v1/audit?rollout={id}")).await;
    let entries = audit["audit"].as_array().unwrap();
    for pair in entries.windows(2) {
        assert_eq!(pair[0]["to"], pair[1]["from"], "{pair:?}");
        assert!(pair[0]["revision"].as_u64() < pair[1]["revision"].as_u64());
    }
}

/// A GET with the raw answer: status, content type, CSP header and body text.
async fn page(api: &Api, path: &str) -> (StatusCode, String, String, String) {
    let response = app(api.state.clone())
        .oneshot(
            Request::get(path)
                .header("authorization", format!("Bearer {TOKEN}"))
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    let header = |name: &str| {
        response
            .headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    let (status, content_type, csp) = (
        response.status(),
        header("content-type"),
        header("content-security-policy"),
    );
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        content_type,
        csp,
        String::from_utf8_lossy(&bytes).into_owned(),
    )
}

#[tokio::test]
async fn the_dashboard_shows_the_rollout_and_loads_nothing_from_elsewhere() {
    let api = api().with_policies().await;
    let (status, content_type, csp, html) = page(&api, "/").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/html"));
    assert!(csp.contains("default-src 'none'") && csp.contains("script-src 'self'"));
    assert!(html.contains("No rollout yet"));

    let (status, started) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED, "{started}");
    let (_, _, _, html) = page(&api, "/").await;
    assert!(html.contains("<dd id=\"phase\" class=\"phase-progressing\">progressing</dd>"));
    assert!(html.contains(&format!(
        "<code>{}</code>",
        started["salt"].as_str().unwrap()
    )));
    assert!(html.contains("<b>start</b>"), "the audit timeline");
    // Every asset the page names is served by the controller itself.
    for (path, kind) in [
        ("/dashboard.js", "text/javascript"),
        ("/dashboard.css", "text/css"),
    ] {
        assert!(html.contains(&format!("\"{path}\"")));
        let (status, content_type, _, body) = page(&api, path).await;
        assert_eq!(status, StatusCode::OK);
        assert!(content_type.starts_with(kind), "{content_type}");
        assert!(!body.is_empty());
    }
    assert!(!html.contains("http://") && !html.contains("https://"));
    // The part the script refreshes, and a rollout picked by id.
    let (_, _, _, main) = page(&api, "/?part=main").await;
    assert!(main.starts_with("<main id=\"main\""));
    assert!(!main.contains("<html"));
    let (status, _, _, _) = page(&api, "/?rollout=1").await;
    assert_eq!(status, StatusCode::OK);
    // A bad id is a clear 404, not a crash.
    for bad in ["/?rollout=abc", "/?rollout=999"] {
        let (status, body) = api.call("GET", bad, "", Some(TOKEN)).await;
        assert_eq!(status, StatusCode::NOT_FOUND, "{bad}");
        assert!(
            body["error"].as_str().unwrap().contains("rollout"),
            "{body}"
        );
    }
}

/// `GET /v1/routes` as an Envoy sends it: naming itself, holding `revision`.
async fn poll_as(api: &Api, envoy: &str, revision: u64) {
    let response = app(api.state.clone())
        .oneshot(
            Request::get(format!("/v1/routes?revision={revision}&wait=0s"))
                .header("authorization", format!("Bearer {TOKEN}"))
                .header("x-canary-envoy", envoy)
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), StatusCode::OK);
}

#[tokio::test]
async fn each_polling_envoy_is_listed_with_the_revision_it_holds() {
    let api = api().with_policies().await;
    assert_eq!(api.get("/v1/envoys").await["envoys"], json!([]));
    let (status, _) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED);
    let current = api.get("/v1/routes").await["revision"].as_u64().unwrap();
    poll_as(&api, "edge-1", current).await;
    poll_as(&api, "edge-2", current - 1).await;
    poll_as(&api, "not an id", current).await;
    let listed = api.get("/v1/envoys").await;
    assert_eq!(listed["revision"].as_u64(), Some(current));
    let envoys = listed["envoys"].as_array().unwrap();
    assert_eq!(envoys.len(), 2, "{listed}");
    assert_eq!(envoys[0]["id"], "edge-1");
    assert_eq!(envoys[0]["in_sync"], true);
    assert_eq!(envoys[0]["open_polls"], 0, "the poll was answered");
    assert_eq!(envoys[1]["id"], "edge-2");
    assert_eq!(envoys[1]["in_sync"], false);
    // A rollback moves the revision: edge-1 is behind until it polls again.
    let id = api.get("/v1/rollouts").await["rollouts"][0]["id"]
        .as_i64()
        .unwrap();
    let (status, _) = api.post(&format!("/v1/rollouts/{id}/rollback"), "").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(api.get("/v1/envoys").await["envoys"][0]["in_sync"], false);
    let current = api.get("/v1/routes").await["revision"].as_u64().unwrap();
    poll_as(&api, "edge-1", current).await;
    assert_eq!(api.get("/v1/envoys").await["envoys"][0]["in_sync"], true);
}

/// `POST /v1/rollouts/{id}/{action}` with headers.
async fn act(api: &Api, path: &str, body: &str, headers: &[(&str, &str)]) -> (StatusCode, Value) {
    let mut request = Request::builder()
        .method("POST")
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"));
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = app(api.state.clone())
        .oneshot(request.body(Body::from(body.to_string())).unwrap())
        .await
        .unwrap();
    let status = response.status();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn actions_apply_once_and_only_to_the_stage_seen() {
    let api = api().with_policies().await;
    let (status, started) = api.post("/v1/rollouts", PLAN).await;
    assert_eq!(status, StatusCode::CREATED);
    let id = started["id"].as_i64().unwrap();
    let promote = format!("/v1/rollouts/{id}/promote");
    // A retried promotion (same key) promotes once.
    for _ in 0..2 {
        let (status, view) = act(&api, &promote, "", &[("idempotency-key", "k-1")]).await;
        assert_eq!(status, StatusCode::OK, "{view}");
        assert_eq!(view["stage"], 2);
    }
    let audit = api.get(&format!("/v1/audit?rollout={id}")).await;
    let actions: Vec<&str> = audit["audit"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["start", "promote"]);
    // The same key for another request is refused.
    let (status, body) = act(
        &api,
        &format!("/v1/rollouts/{id}/pause"),
        "",
        &[("idempotency-key", "k-1")],
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT, "{body}");
    // Acting on a stage the rollout has left is refused, and changes nothing.
    let (status, body) = act(&api, &promote, r#"{"expected_stage": 1}"#, &[]).await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert!(
        body["error"].as_str().unwrap().contains("moved meanwhile"),
        "{body}"
    );
    assert_eq!(api.get(&format!("/v1/rollouts/{id}")).await["stage"], 2);
    let (status, view) = act(&api, &promote, r#"{"expected_stage": 2}"#, &[]).await;
    assert_eq!(
        (status, view["phase"].as_str()),
        (StatusCode::OK, Some("promoted"))
    );
    let (status, _) = act(&api, &promote, "", &[("idempotency-key", "bad key")]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}
