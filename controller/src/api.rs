//! The HTTP API (JSON). Reads are open; changes need `Authorization: Bearer <token>`.

use crate::controller::{Controller, Error};
use crate::rollout::Action;
use crate::units::Dur;
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, Path, Query, Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (plans and policies are a few KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Longest a `GET /v1/routes` long-poll may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

#[derive(Clone)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub token: Arc<str>,
    pub webhooks: crate::notify::Notifier,
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard))
        .route("/dashboard.js", get(dashboard_script))
        .route("/dashboard.css", get(dashboard_style))
        .route("/healthz", get(health))
        .route("/v1/routes", get(routes))
        .route("/v1/policies", get(list_policies).post(add_policy))
        .route("/v1/policies/{version}", get(show_policy))
        .route("/v1/targets", get(list_targets))
        .route("/v1/rollouts", get(list_rollouts).post(start_rollout))
        .route("/v1/rollouts/{id}", get(show_rollout))
        .route("/v1/rollouts/{id}/analysis", get(show_analysis))
        .route("/v1/rollouts/{id}/{action}", post(act))
        .route("/v1/audit", get(audit))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint", None) })
        .layer(middleware::from_fn_with_state(state.clone(), require_token))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .with_state(state)
}

fn error(status: StatusCode, message: &str, state: Option<String>) -> Response {
    let mut body = json!({"error": message});
    if let Some(state) = state {
        body["state"] = json!(state);
    }
    (status, Json(body)).into_response()
}

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let message = self.to_string();
        match self {
            Error::BadRequest(_) => error(StatusCode::BAD_REQUEST, &message, None),
            Error::NotFound(_) => error(StatusCode::NOT_FOUND, &message, None),
            Error::Conflict { state, .. } => error(StatusCode::CONFLICT, &message, state),
            Error::Storage(_) | Error::Internal(_) => {
                tracing::error!(%message, "request failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, &message, None)
            }
        }
    }
}

async fn require_token(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() == Method::GET || request.method() == Method::HEAD {
        return next.run(request).await;
    }
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        next.run(request).await
    } else {
        error(
            StatusCode::UNAUTHORIZED,
            "changes need `Authorization: Bearer <token>` (the token is in the state directory's `token` file, or CANARYCTL_TOKEN)",
            None,
        )
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("task failed: {e}")))?
}

fn text(body: &Bytes) -> Result<&str, Error> {
    std::str::from_utf8(body)
        .map_err(|_| Error::BadRequest(crate::plan::field_error("", "the body is not UTF-8 text")))
}

fn actor(headers: &HeaderMap, from_body: Option<&str>) -> String {
    from_body
        .or_else(|| headers.get("x-actor").and_then(|v| v.to_str().ok()))
        .filter(|a| !a.trim().is_empty())
        .map_or_else(|| "api".to_string(), |a| a.chars().take(128).collect())
}

async fn health(State(state): State<AppState>) -> Response {
    use std::sync::atomic::Ordering::Relaxed;
    let counts = &state.webhooks.counts;
    Json(json!({
        "status": "ok",
        "revision": state.controller.routes().revision,
        "webhooks": {
            "delivered": counts.delivered.load(Relaxed),
            "failed": counts.failed.load(Relaxed),
            "retries": counts.retries.load(Relaxed),
        },
    }))
    .into_response()
}

#[derive(Deserialize)]
struct DashboardQuery {
    rollout: Option<String>,
    part: Option<String>,
}

/// The dashboard page, or with `part=main` the part its script refreshes.
async fn dashboard(
    State(state): State<AppState>,
    Query(q): Query<DashboardQuery>,
) -> Result<Response, Error> {
    let rollout = match q.rollout.as_deref().filter(|r| !r.is_empty()) {
        Some(id) => Some(parse_id(id)?),
        None => None,
    };
    let c = state.controller.clone();
    let snapshot = blocking(move || crate::dashboard::Snapshot::read(&c, rollout)).await?;
    let html = if q.part.as_deref() == Some("main") {
        crate::dashboard::main(&snapshot)
    } else {
        crate::dashboard::page(&snapshot)
    };
    Ok(asset("text/html; charset=utf-8", html))
}

async fn dashboard_script() -> Response {
    asset("text/javascript; charset=utf-8", crate::dashboard::SCRIPT)
}

async fn dashboard_style() -> Response {
    asset("text/css; charset=utf-8", crate::dashboard::STYLE)
}

fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (
                header::CONTENT_SECURITY_POLICY,
                crate::dashboard::CONTENT_SECURITY_POLICY,
            ),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.into(),
    )
        .into_response()
}

#[derive(Deserialize)]
struct RoutesQuery {
    revision: Option<String>,
    wait: Option<String>,
}

/// The route tables; with `revision=N&wait=30s`, answers as soon as the revision
/// moves past N, or with the current tables when the wait ends.
async fn routes(State(state): State<AppState>, Query(q): Query<RoutesQuery>) -> Response {
    let known: Option<u64> = match q.revision.as_deref().map(str::parse) {
        None => None,
        Some(Ok(n)) => Some(n),
        Some(Err(_)) => {
            return error(
                StatusCode::BAD_REQUEST,
                "revision: expected a whole number",
                None,
            )
        }
    };
    let wait = match q.wait.as_deref().map(Dur::parse) {
        None => Duration::ZERO,
        Some(Ok(d)) => d.0.min(MAX_WAIT),
        Some(Err(e)) => return error(StatusCode::BAD_REQUEST, &format!("wait: {e}"), None),
    };
    if let Some(known) = known {
        let mut rx = state.controller.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|revision| *revision > known)).await;
    }
    Json(state.controller.routes().as_ref().clone()).into_response()
}

async fn list_policies(State(state): State<AppState>) -> Result<Response, Error> {
    let c = state.controller.clone();
    let policies = blocking(move || c.policies()).await?;
    Ok(Json(json!({"policies": policies})).into_response())
}

async fn show_policy(
    State(state): State<AppState>,
    Path(version): Path<String>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.policy(&version)).await?).into_response())
}

async fn add_policy(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let text = match text(&body) {
        Ok(text) => text.to_string(),
        Err(e) => return e.into_response(),
    };
    let actor = actor(&headers, None);
    let c = state.controller.clone();
    match blocking(move || c.add_policy(&text, &actor)).await {
        Ok((record, true)) => (StatusCode::CREATED, Json(record)).into_response(),
        Ok((record, false)) => (StatusCode::OK, Json(record)).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn list_targets(State(state): State<AppState>) -> Result<Response, Error> {
    let c = state.controller.clone();
    let targets = blocking(move || c.targets()).await?;
    Ok(Json(json!({"targets": targets})).into_response())
}

#[derive(Deserialize)]
struct RolloutsQuery {
    active: Option<bool>,
}

async fn list_rollouts(
    State(state): State<AppState>,
    Query(q): Query<RolloutsQuery>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    let rollouts = blocking(move || c.rollouts(q.active.unwrap_or(false))).await?;
    Ok(Json(json!({"rollouts": rollouts})).into_response())
}

async fn show_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.rollout(id)).await?).into_response())
}

async fn show_analysis(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.analysis(id)).await?).into_response())
}

fn parse_id(id: &str) -> Result<i64, Error> {
    id.parse()
        .map_err(|_| Error::NotFound(format!("no rollout `{id}` (rollout ids are numbers)")))
}

async fn start_rollout(State(state): State<AppState>, headers: HeaderMap, body: Bytes) -> Response {
    let text = match text(&body) {
        Ok(text) => text.to_string(),
        Err(e) => return e.into_response(),
    };
    let actor = actor(&headers, None);
    let c = state.controller.clone();
    match blocking(move || c.start_rollout(&text, &actor)).await {
        Ok(view) => (StatusCode::CREATED, Json(view)).into_response(),
        Err(e) => e.into_response(),
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ActionBody {
    actor: Option<String>,
    reason: Option<String>,
    to_end: Option<bool>,
}

#[derive(Deserialize)]
struct ActionQuery {
    to_end: Option<bool>,
}

async fn act(
    State(state): State<AppState>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ActionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| {
            Error::BadRequest(crate::plan::field_error("", format!("bad JSON body: {e}")))
        })?
    };
    let to_end = body.to_end.or(q.to_end).unwrap_or(false);
    let action = match action.as_str() {
        "pause" => Action::Pause,
        "resume" => Action::Resume,
        "promote" => Action::Promote { to_end },
        "rollback" => Action::Rollback,
        "abort" => Action::Abort,
        other => {
            return Err(Error::NotFound(format!(
                "no action `{other}` (pause, resume, promote, rollback, abort)"
            )))
        }
    };
    let actor = actor(&headers, body.actor.as_deref());
    let reason = body
        .reason
        .unwrap_or_else(|| format!("manual {}", action.name().replace('_', " ")));
    let c = state.controller.clone();
    let view = blocking(move || c.act(id, action, &actor, &reason)).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
struct AuditQuery {
    rollout: Option<i64>,
    target: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    let entries = blocking(move || {
        c.audit(
            q.rollout,
            q.target.as_deref(),
            q.after.unwrap_or(0),
            q.limit.unwrap_or(1000),
        )
    })
    .await?;
    Ok(Json(json!({"audit": entries})).into_response())
}
