//! Least privilege through the HTTP API, in-process: every route × every scope,
//! missing, wrong and revoked tokens, who the audit names, one error shape.

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

const ADMIN: &str = "bootstrap-admin-token";

struct Api {
    state: AppState,
    _dir: tempfile::TempDir,
}

struct Reply {
    status: StatusCode,
    body: Value,
    www_authenticate: bool,
}

impl Api {
    fn new(open_routes: bool) -> Api {
        let dir = tempfile::tempdir().unwrap();
        let controller =
            Controller::open(dir.path(), Notifier::none(), Box::new(TimeOnlyJudge)).unwrap();
        Api {
            state: AppState {
                controller,
                token: Arc::from(ADMIN),
                webhooks: Notifier::none(),
                limits: Default::default(),
                open_routes,
                evidence: None,
            },
            _dir: dir,
        }
    }

    async fn call(&self, method: &str, path: &str, body: &str, token: Option<&str>) -> Reply {
        let mut request = Request::builder().method(method).uri(path);
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let response = app(self.state.clone())
            .oneshot(request.body(Body::from(body.to_string())).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let www_authenticate = response.headers().contains_key("www-authenticate");
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            body: serde_json::from_slice(&bytes).unwrap_or(Value::Null),
            www_authenticate,
        }
    }

    async fn token(&self, name: &str, scopes: &[&str]) -> String {
        let reply = self
            .call(
                "POST",
                "/v1/tokens",
                &json!({"name": name, "scopes": scopes}).to_string(),
                Some(ADMIN),
            )
            .await;
        assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
        reply.body["token"].as_str().unwrap().to_string()
    }
}

impl Api {
    /// Binds `clusters` to support-agent with the admin token.
    async fn bind(&self, clusters: &[&str]) -> Value {
        let reply = self
            .call(
                "POST",
                "/v1/targets/support-agent/clusters",
                &json!({"clusters": clusters}).to_string(),
                Some(ADMIN),
            )
            .await;
        assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
        reply.body
    }
}

fn policy(version: &str) -> String {
    format!("version: {version}\nsystem_prompt: Secret prompt.\nmodel: m-1\ntemperature: 0.2\nmax_tokens: 512\ntools: [lookup]\n")
}

const PLAN: &str = "target: support-agent\nstable: {version: v1, cluster: agent_stable}\ncanary: {version: v2, cluster: agent_canary}\nstages: [{weight: 5%, min_duration: 1h}, {weight: 100%}]\n";

const SCOPES: [&str; 7] = [
    "routes:read",
    "policies:read",
    "read",
    "operate",
    "signals:write",
    "evidence:write",
    "admin",
];

/// What each scope grants (admin everything, operate also read).
fn grants(held: &str, needed: &str) -> bool {
    held == needed || held == "admin" || (held == "operate" && needed == "read")
}

#[tokio::test]
async fn every_route_answers_every_scope_as_documented() {
    let api = Api::new(false);
    for version in ["v1", "v2"] {
        let reply = api
            .call("POST", "/v1/policies", &policy(version), Some(ADMIN))
            .await;
        assert_eq!(reply.status, StatusCode::CREATED);
    }
    assert_eq!(
        api.call("POST", "/v1/rollouts", PLAN, Some(ADMIN))
            .await
            .status,
        StatusCode::CREATED
    );
    let mut tokens = Vec::new();
    for scope in SCOPES {
        tokens.push((
            scope,
            api.token(&format!("t-{}", scope.replace(':', "-")), &[scope])
                .await,
        ));
    }
    let revoked = api.token("gone", &["admin"]).await;
    let reply = api
        .call("POST", "/v1/tokens/gone/revoke", "", Some(ADMIN))
        .await;
    assert_eq!(reply.status, StatusCode::OK);

    // (method, path, body, scope needed; None = open)
    let routes: Vec<(&str, String, String, Option<&str>)> = vec![
        ("GET", "/healthz".into(), String::new(), None),
        ("GET", "/dashboard.js".into(), String::new(), None),
        ("GET", "/metrics".into(), String::new(), Some("read")),
        ("GET", "/?part=main".into(), String::new(), Some("read")),
        (
            "GET",
            "/v1/routes".into(),
            String::new(),
            Some("routes:read"),
        ),
        (
            "GET",
            "/v1/policies".into(),
            String::new(),
            Some("policies:read"),
        ),
        (
            "GET",
            "/v1/policies/v2".into(),
            String::new(),
            Some("policies:read"),
        ),
        ("POST", "/v1/policies".into(), policy("v9"), Some("admin")),
        ("GET", "/v1/targets".into(), String::new(), Some("read")),
        (
            "GET",
            "/v1/targets/support-agent/clusters".into(),
            String::new(),
            Some("read"),
        ),
        (
            "POST",
            "/v1/targets/support-agent/clusters".into(),
            json!({"clusters": ["agent_extra"]}).to_string(),
            Some("admin"),
        ),
        (
            "DELETE",
            "/v1/targets/support-agent/clusters/agent_extra".into(),
            String::new(),
            Some("admin"),
        ),
        ("GET", "/v1/envoys".into(), String::new(), Some("read")),
        ("GET", "/v1/rollouts".into(), String::new(), Some("read")),
        ("GET", "/v1/rollouts/1".into(), String::new(), Some("read")),
        (
            "GET",
            "/v1/rollouts/1/analysis".into(),
            String::new(),
            Some("read"),
        ),
        ("GET", "/v1/audit".into(), String::new(), Some("read")),
        ("POST", "/v1/rollouts".into(), PLAN.into(), Some("operate")),
        (
            "POST",
            "/v1/rollouts/1/pause".into(),
            String::new(),
            Some("operate"),
        ),
        (
            "POST",
            "/v1/rollouts/1/resume".into(),
            String::new(),
            Some("operate"),
        ),
        (
            "POST",
            "/v1/evidence".into(),
            "{}".into(),
            Some("evidence:write"),
        ),
        (
            "GET",
            "/v1/rollouts/1/evidence".into(),
            String::new(),
            Some("read"),
        ),
        ("GET", "/v1/tokens".into(), String::new(), Some("admin")),
        (
            "POST",
            "/v1/tokens".into(),
            json!({"name": "made-again", "scopes": ["read"]}).to_string(),
            Some("admin"),
        ),
        (
            "POST",
            "/v1/tokens/nobody/revoke".into(),
            String::new(),
            Some("admin"),
        ),
    ];
    let denied = [StatusCode::UNAUTHORIZED, StatusCode::FORBIDDEN];
    for (method, path, body, needed) in &routes {
        for (scope, token) in &tokens {
            let reply = api.call(method, path, body, Some(token)).await;
            match needed {
                Some(needed) if !grants(scope, needed) => {
                    assert_eq!(
                        reply.status,
                        StatusCode::FORBIDDEN,
                        "{scope} {method} {path}: {}",
                        reply.body
                    );
                    let message = reply.body["error"].as_str().unwrap();
                    assert!(
                        message.contains(&format!("needs `{needed}`")) && message.contains("t-"),
                        "{message}"
                    );
                }
                _ => assert!(
                    !denied.contains(&reply.status),
                    "{scope} {method} {path}: {} {}",
                    reply.status,
                    reply.body
                ),
            }
        }
        for (what, token) in [
            ("no token", None),
            ("a wrong token", Some("pct_wrong")),
            ("a revoked token", Some(revoked.as_str())),
        ] {
            let reply = api.call(method, path, body, token).await;
            match needed {
                None => assert_eq!(reply.status, StatusCode::OK, "{what}: {method} {path}"),
                // A browser's first load gets the page's frame, no data.
                Some(_) if path.starts_with("/?") && token.is_none() => {
                    assert_eq!(reply.status, StatusCode::OK)
                }
                Some(_) => {
                    assert_eq!(
                        reply.status,
                        StatusCode::UNAUTHORIZED,
                        "{what}: {method} {path}"
                    );
                    assert!(
                        reply.www_authenticate && reply.body["error"].is_string(),
                        "{what}: {method} {path}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn the_audit_names_the_token_and_the_client_apart() {
    let api = Api::new(false);
    for version in ["v1", "v2"] {
        api.call("POST", "/v1/policies", &policy(version), Some(ADMIN))
            .await;
    }
    let operator = api.token("deploy-bot", &["operate"]).await;
    api.bind(&["agent_stable", "agent_canary"]).await;
    let reply = api
        .call("POST", "/v1/rollouts", PLAN, Some(&operator))
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_i64().unwrap();
    let reply = api
        .call(
            "POST",
            &format!("/v1/rollouts/{id}/pause"),
            r#"{"actor": "alice", "reason": "look"}"#,
            Some(&operator),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    let audit = api.call("GET", "/v1/audit", "", Some(ADMIN)).await.body;
    let entries = audit["audit"].as_array().unwrap();
    let who: Vec<(String, String, String)> = entries
        .iter()
        .map(|e| {
            (
                e["action"].as_str().unwrap().to_string(),
                e["principal"].as_str().unwrap_or("").to_string(),
                e["actor"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(
        who.contains(&("token_created".into(), "admin".into(), "admin".into())),
        "{who:?}"
    );
    assert!(
        who.contains(&("start".into(), "deploy-bot".into(), "deploy-bot".into())),
        "{who:?}"
    );
    assert!(
        who.contains(&("pause".into(), "deploy-bot".into(), "alice".into())),
        "{who:?}"
    );
    // A client's claim is kept as what it is, never as the principal.
    let text = audit.to_string();
    assert!(!text.contains(&operator), "a secret reached the audit log");
    let listed = api
        .call("GET", "/v1/tokens", "", Some(ADMIN))
        .await
        .body
        .to_string();
    assert!(!listed.contains(&operator) && listed.contains("deploy-bot"));
    // Revoked: refused from the next request on; its name stays taken.
    api.call("POST", "/v1/tokens/deploy-bot/revoke", "", Some(ADMIN))
        .await;
    let reply = api.call("GET", "/v1/rollouts", "", Some(&operator)).await;
    assert_eq!(reply.status, StatusCode::UNAUTHORIZED);
    let reply = api
        .call(
            "POST",
            "/v1/tokens",
            &json!({"name": "deploy-bot", "scopes": ["read"]}).to_string(),
            Some(ADMIN),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT);
    let reply = api
        .call("POST", "/v1/tokens/deploy-bot/revoke", "", Some(ADMIN))
        .await;
    assert_eq!(reply.status, StatusCode::CONFLICT, "{}", reply.body);
}

#[tokio::test]
async fn bad_token_requests_and_oversized_bodies_get_the_one_error_shape() {
    let api = Api::new(false);
    for (body, expected) in [
        (
            json!({"name": "x", "scopes": ["root"]}).to_string(),
            "unknown scope `root`",
        ),
        (
            json!({"name": "two words", "scopes": ["read"]}).to_string(),
            "name:",
        ),
        (
            json!({"name": "x", "scopes": []}).to_string(),
            "at least one scope",
        ),
        ("{not json".to_string(), "expected {\"name\""),
    ] {
        let reply = api.call("POST", "/v1/tokens", &body, Some(ADMIN)).await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
        let message = reply.body["error"].as_str().unwrap();
        assert!(message.contains(expected), "{message}");
    }
    let huge = "x".repeat(300 * 1024);
    let reply = api.call("POST", "/v1/policies", &huge, Some(ADMIN)).await;
    assert_eq!(reply.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(reply.body["error"].is_string(), "{}", reply.body);
    let reply = api
        .call("GET", "/v1/audit?limit=many", "", Some(ADMIN))
        .await;
    assert_eq!(reply.status, StatusCode::BAD_REQUEST);
    assert!(reply.body["error"].is_string(), "{}", reply.body);
}

#[tokio::test]
async fn open_routes_let_envoys_poll_without_a_token_and_nothing_else() {
    let api = Api::new(true);
    assert_eq!(
        api.call("GET", "/v1/routes", "", None).await.status,
        StatusCode::OK
    );
    assert_eq!(
        api.call("GET", "/v1/rollouts", "", None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        api.call("GET", "/v1/routes", "", Some("pct_wrong"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
}

/// An `operate` token starts rollouts only within what an admin allowed: the
/// clusters bound to the target, a first stage of at most 25%, the analysis on.
/// Each refusal is a 403 that names the scope that may allow it; the admin's
/// own plan works and binds its clusters.
#[tokio::test]
async fn an_operate_token_cannot_redirect_traffic() {
    let api = Api::new(false);
    for version in ["v1", "v2", "v3"] {
        api.call("POST", "/v1/policies", &policy(version), Some(ADMIN))
            .await;
    }
    let operator = api.token("ci", &["operate"]).await;
    let start = |plan: String| {
        let api = &api;
        let operator = operator.clone();
        async move {
            api.call("POST", "/v1/rollouts", &plan, Some(&operator))
                .await
        }
    };
    let plan = |canary_cluster: &str, extra: &str| {
        format!(
            "target: support-agent\nstable: {{version: v1, cluster: agent_stable}}\n\
             canary: {{version: v2, cluster: {canary_cluster}}}\n{extra}"
        )
    };
    // Nothing bound yet: the first rollout's clusters need an admin.
    let reply = start(plan("agent_canary", "")).await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN, "{}", reply.body);
    let message = reply.body["error"].as_str().unwrap();
    for part in [
        "cluster `agent_stable` is not bound to target support-agent",
        "cluster `agent_canary` is not bound",
        "`admin` scope",
        "canaryctl targets bind support-agent",
    ] {
        assert!(message.contains(part), "{message}");
    }
    // The operate token cannot bind them itself.
    let reply = api
        .call(
            "POST",
            "/v1/targets/support-agent/clusters",
            r#"{"clusters": ["payments_backend"]}"#,
            Some(&operator),
        )
        .await;
    assert_eq!(reply.status, StatusCode::FORBIDDEN);
    assert!(reply.body["error"]
        .as_str()
        .unwrap()
        .contains("needs `admin`"));

    let bound = api.bind(&["agent_stable", "agent_canary"]).await;
    let names: Vec<&str> = bound["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["cluster"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["agent_canary", "agent_stable"]);
    // Bound, but still past the bounds: any other cluster, a first stage above
    // 25%, no analysis.
    for (canary, extra, expected) in [
        (
            "payments_backend",
            "",
            "cluster `payments_backend` is not bound",
        ),
        (
            "agent_canary",
            "stages: [{weight: 100%}]",
            "the first stage sends 100%",
        ),
        (
            "agent_canary",
            "gates: {safety_violations: {enabled: false}}",
            "safety_violations",
        ),
    ] {
        let reply = start(plan(canary, extra)).await;
        assert_eq!(
            reply.status,
            StatusCode::FORBIDDEN,
            "{extra}: {}",
            reply.body
        );
        let message = reply.body["error"].as_str().unwrap();
        assert!(
            message.contains(expected) && message.contains("`admin`"),
            "{message}"
        );
    }
    let rollouts = api.call("GET", "/v1/rollouts", "", Some(ADMIN)).await.body;
    assert_eq!(rollouts["rollouts"].as_array().unwrap().len(), 0);

    // Within the bounds the operate token starts it.
    let reply = start(plan(
        "agent_canary",
        "stages: [{weight: 10%}, {weight: 100%}]",
    ))
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let id = reply.body["id"].as_i64().unwrap();
    api.call(
        "POST",
        &format!("/v1/rollouts/{id}/abort"),
        "",
        Some(&operator),
    )
    .await;

    // The admin path: an admin's plan may name a new cluster and binds it (audited).
    let reply = api
        .call(
            "POST",
            "/v1/rollouts",
            &plan("agent_blue", "stages: [{weight: 50%}, {weight: 100%}]")
                .replace("version: v2", "version: v3"),
            Some(ADMIN),
        )
        .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
    let listed = api
        .call(
            "GET",
            "/v1/targets/support-agent/clusters",
            "",
            Some(&operator),
        )
        .await;
    assert_eq!(listed.status, StatusCode::OK);
    assert!(
        listed.body.to_string().contains("agent_blue"),
        "{}",
        listed.body
    );
    let audit = api.call("GET", "/v1/audit", "", Some(ADMIN)).await.body;
    let text = audit.to_string();
    assert!(text.contains("cluster_bound"), "{text}");
    assert!(
        text.contains("cluster(s) agent_blue bound to support-agent by this admin's plan"),
        "{text}"
    );
    // Unbinding: admin only; an unbound cluster is 404.
    let unbind = "/v1/targets/support-agent/clusters/agent_blue";
    for (token, expected) in [
        (operator.as_str(), StatusCode::FORBIDDEN),
        (ADMIN, StatusCode::OK),
        (ADMIN, StatusCode::NOT_FOUND),
    ] {
        let reply = api.call("DELETE", unbind, "", Some(token)).await;
        assert_eq!(reply.status, expected, "{}", reply.body);
        if expected == StatusCode::OK {
            assert!(!reply.body.to_string().contains("agent_blue"));
        }
    }
    // Bad input: a clear 400.
    for body in [
        r#"{"clusters": []}"#,
        r#"{"clusters": ["a b"]}"#,
        "not json",
    ] {
        let reply = api
            .call(
                "POST",
                "/v1/targets/support-agent/clusters",
                body,
                Some(ADMIN),
            )
            .await;
        assert_eq!(reply.status, StatusCode::BAD_REQUEST, "{body}");
    }
}
