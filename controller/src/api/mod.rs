//! The HTTP API (JSON) and the dashboard. Every endpoint but `/healthz` needs
//! `Authorization: Bearer <token>` with the right scope (`auth`, `access`).
//! `handlers` holds the JSON endpoints, `tokens` token management, `dashboard` the
//! page at `/` and its assets. Every error is `{"error": "..."}`.

pub mod auth;
mod clusters;
pub mod connection;
pub mod dashboard;
mod evidence;
mod handlers;
mod tokens;

use crate::access::Who;
use crate::controller::{Controller, Error};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, StatusCode};
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use policy_canary::error::err;
use serde_json::json;
use std::sync::Arc;
use std::time::Duration;

/// Largest request body accepted (plans and policies are a few KiB).
pub const MAX_BODY_BYTES: usize = 256 * 1024;
/// Largest `POST /v1/signals` body: 1000 signals of about 1 KiB at most.
pub const MAX_SIGNALS_BODY_BYTES: usize = 1024 * 1024;
/// Longest a `GET /v1/routes` long-poll may wait.
pub const MAX_WAIT: Duration = Duration::from_secs(60);
/// An Envoy with no open poll and none for this long is shown as stale.
pub const ENVOY_STALE_AFTER: Duration = Duration::from_secs(75);

#[derive(Clone)]
pub struct AppState {
    pub controller: Arc<Controller>,
    pub token: Arc<str>,
    pub webhooks: crate::notify::Notifier,
    pub limits: Limits,
    /// Route polls need no token (`--open-routes`: the network is the boundary).
    pub open_routes: bool,
    /// Where Envoys' evidence reports go (`--evidence sync`); none: refused.
    pub evidence: Option<Arc<crate::analysis::evidence::sync::SyncEvidence>>,
}

/// What one request may take of the controller.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Route long-polls that may wait at once; more are refused with 503 (an
    /// Envoy backs off and keeps its table).
    pub max_waiting_polls: u64,
    /// Longest a request may take, its body included (a long-poll: its wait
    /// more).
    pub request_timeout: Duration,
    /// What an `operate` token's plan may do (more needs `admin`).
    pub operate: crate::rollout::permit::OperateLimits,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_waiting_polls: 12_000,
            request_timeout: Duration::from_secs(30),
            operate: Default::default(),
        }
    }
}

pub fn app(state: AppState) -> Router {
    Router::new()
        .route("/", get(dashboard::page))
        .route("/dashboard.js", get(dashboard::script))
        .route("/dashboard.css", get(dashboard::style))
        .route("/healthz", get(handlers::health))
        .route("/metrics", get(handlers::metrics))
        .route("/v1/routes", get(handlers::routes))
        .route(
            "/v1/policies",
            get(handlers::list_policies).post(handlers::add_policy),
        )
        .route("/v1/policies/{version}", get(handlers::show_policy))
        .route("/v1/targets", get(handlers::list_targets))
        .route(
            "/v1/targets/{target}/clusters",
            get(clusters::list).post(clusters::bind),
        )
        .route(
            "/v1/targets/{target}/clusters/{cluster}",
            axum::routing::delete(clusters::unbind),
        )
        .route("/v1/envoys", get(handlers::list_envoys))
        .route(
            "/v1/rollouts",
            get(handlers::list_rollouts).post(handlers::start_rollout),
        )
        .route("/v1/rollouts/{id}", get(handlers::show_rollout))
        .route("/v1/rollouts/{id}/analysis", get(handlers::show_analysis))
        .route("/v1/rollouts/{id}/evidence", get(handlers::show_evidence))
        .route("/v1/rollouts/{id}/{action}", post(handlers::act))
        .route("/v1/audit", get(handlers::audit))
        .route(
            "/v1/signals",
            post(handlers::post_signals).layer(DefaultBodyLimit::max(MAX_SIGNALS_BODY_BYTES)),
        )
        .route(
            "/v1/evidence",
            post(evidence::post_evidence)
                .layer(DefaultBodyLimit::max(evidence::MAX_EVIDENCE_BODY_BYTES)),
        )
        .route(
            "/v1/tokens",
            get(tokens::list_tokens).post(tokens::create_token),
        )
        .route("/v1/tokens/{name}/revoke", post(tokens::revoke_token))
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint", None) })
        .layer(middleware::from_fn_with_state(
            state.clone(),
            auth::authorize,
        ))
        .layer(middleware::from_fn_with_state(state.clone(), deadline))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(middleware::map_response(json_errors))
        .with_state(state)
}

/// Ends a request that outlives `request_timeout` (a body sent byte by byte, say)
/// with 408; a route long-poll gets its wait on top.
async fn deadline(
    State(state): State<AppState>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let mut limit = state.limits.request_timeout;
    if request.uri().path() == "/v1/routes" {
        limit += MAX_WAIT;
    }
    match tokio::time::timeout(limit, next.run(request)).await {
        Ok(response) => response,
        Err(_) => error(
            StatusCode::REQUEST_TIMEOUT,
            &format!("the request took longer than {}", crate::units::Dur(limit)),
            None,
        ),
    }
}

/// Errors that axum itself answers (a body over the limit, a malformed query or
/// path, a wrong method) come as plain text: given the API's one error shape.
async fn json_errors(response: Response) -> Response {
    let status = response.status();
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let (parts, body) = response.into_parts();
    let text = axum::body::to_bytes(body, 4096).await.unwrap_or_default();
    let text = String::from_utf8_lossy(&text).trim().to_string();
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut json = error(status, &message, None);
    for (name, value) in &parts.headers {
        if name != axum::http::header::CONTENT_TYPE && name != axum::http::header::CONTENT_LENGTH {
            json.headers_mut().insert(name.clone(), value.clone());
        }
    }
    json
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
            Error::Forbidden(_) => error(StatusCode::FORBIDDEN, &message, None),
            Error::Conflict { state, .. } => error(StatusCode::CONFLICT, &message, state),
            Error::Storage(_) | Error::Internal(_) => {
                tracing::error!(%message, "request failed");
                error(StatusCode::INTERNAL_SERVER_ERROR, &message, None)
            }
        }
    }
}

/// Runs blocking store work off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("task failed: {e}")))?
}

/// A plan or policy sent as the request body (YAML or JSON text).
fn document(body: &Bytes) -> Result<String, Error> {
    std::str::from_utf8(body)
        .map(str::to_string)
        .map_err(|_| Error::BadRequest(err("", "the body is not UTF-8 text")))
}

/// Who acts: the authenticated token, and what the client calls itself (the
/// body's `actor`, else `X-Actor`).
fn who(principal: &auth::Principal, headers: &HeaderMap, from_body: Option<&str>) -> Who {
    let claimed = from_body.or_else(|| headers.get("x-actor").and_then(|v| v.to_str().ok()));
    Who::new(&principal.name, claimed)
}

fn parse_id(id: &str) -> Result<i64, Error> {
    id.parse()
        .map_err(|_| Error::NotFound(format!("no rollout `{id}` (rollout ids are numbers)")))
}
