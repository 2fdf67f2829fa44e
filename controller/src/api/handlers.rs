//! The JSON endpoints: health, route tables (long-poll), policies, targets,
//! rollouts and their actions, the audit log.

use super::auth::Principal;
use super::{blocking, document, parse_id, who, AppState, ENVOY_STALE_AFTER, MAX_WAIT};
use crate::access::{allows, Scope};
use crate::controller::{Error, Guard, DEFAULT_AUDIT_PAGE};
use crate::rollout::permit::Authority;
use crate::rollout::ManualAction;
use crate::units::now_ms;
use crate::units::Dur;
use crate::view::{AuditList, PolicyList, RolloutList, TargetList};
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use policy_canary::check::is_token;
use policy_canary::error::err;
use policy_canary::sync::ENVOY_ID_HEADER;
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

pub(super) async fn health(State(state): State<AppState>) -> Response {
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
pub(in crate::api) struct RoutesQuery {
    revision: Option<String>,
    epoch: Option<String>,
    wait: Option<String>,
}

/// The route tables; with `revision=N&wait=30s`, answers as soon as the revision
/// moves past N, or with the current tables when the wait ends; at once when
/// `epoch=E` names another controller generation than this one. A poll naming its
/// Envoy (`x-canary-envoy`) is recorded for `GET /v1/envoys`.
pub(super) async fn routes(
    State(state): State<AppState>,
    Query(q): Query<RoutesQuery>,
    connection: Option<Extension<std::sync::Arc<super::connection::Connection>>>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let known = whole_number("revision", q.revision.as_deref())?;
    // A poller that holds another generation's table gets this one at once.
    let other_generation = whole_number("epoch", q.epoch.as_deref())?
        .is_some_and(|epoch| epoch != state.controller.routes().epoch);
    let wait = match q.wait.as_deref().map(Dur::parse) {
        None => Duration::ZERO,
        Some(Ok(d)) => d.0.min(MAX_WAIT),
        Some(Err(e)) => return Err(Error::BadRequest(err("wait", e.to_string()))),
    };
    let envoy = headers
        .get(ENVOY_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let waits = known.is_some() && !other_generation && !wait.is_zero();
    // A connection in the slots kept for the API may not hold a long-poll.
    if waits && connection.as_ref().is_some_and(|c| c.reserved) {
        return Ok(busy(
            &state,
            "the controller's connections are full: the last ones are kept for the API",
        ));
    }
    let cap = waits.then_some(state.limits.max_waiting_polls);
    let Some(_open) = state
        .controller
        .fleet()
        .poll(envoy, known.unwrap_or(0), now_ms(), cap)
    else {
        let message = format!(
            "{} route long-polls are waiting already (--max-waiting-polls); retry later",
            state.limits.max_waiting_polls
        );
        return Ok(busy(&state, &message));
    };
    if let Some(known) = known.filter(|_| waits) {
        let mut rx = state.controller.subscribe();
        let _ = tokio::time::timeout(wait, rx.wait_for(|revision| *revision > known)).await;
    }
    Ok((
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        state.controller.routes_json(),
    )
        .into_response())
}

/// A refused long-poll: 503 with `Retry-After` (an Envoy comes back after it, at
/// random within as long again), and the connection closed (the slot is free).
fn busy(state: &AppState, message: &str) -> Response {
    state
        .controller
        .metrics()
        .polls_refused
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let mut response = super::error(StatusCode::SERVICE_UNAVAILABLE, message, None);
    let headers = response.headers_mut();
    headers.insert("retry-after", axum::http::HeaderValue::from_static("5"));
    headers.insert(
        axum::http::header::CONNECTION,
        axum::http::HeaderValue::from_static("close"),
    );
    response
}

/// A whole-number query parameter, if given.
fn whole_number(name: &str, value: Option<&str>) -> Result<Option<u64>, Error> {
    value
        .map(str::parse)
        .transpose()
        .map_err(|_| Error::BadRequest(err(name, "expected a whole number")))
}

/// The controller's own metrics (Prometheus text format).
pub(super) async fn metrics(State(state): State<AppState>) -> Result<Response, Error> {
    let c = state.controller.clone();
    let text = blocking(move || {
        let envoys = c
            .fleet()
            .status(c.routes().revision, now_ms(), ENVOY_STALE_AFTER);
        c.metrics_text(&envoys)
    })
    .await?;
    Ok((
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response())
}

/// Every Envoy that polls, with the revision it holds.
pub(super) async fn list_envoys(State(state): State<AppState>) -> Response {
    let current = state.controller.routes().revision;
    Json(
        state
            .controller
            .fleet()
            .status(current, now_ms(), ENVOY_STALE_AFTER),
    )
    .into_response()
}

pub(super) async fn list_policies(State(state): State<AppState>) -> Result<Response, Error> {
    let c = state.controller.clone();
    let policies = blocking(move || c.policies()).await?;
    Ok(Json(PolicyList { policies }).into_response())
}

pub(super) async fn show_policy(
    State(state): State<AppState>,
    Path(version): Path<String>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.policy(&version)).await?).into_response())
}

pub(super) async fn add_policy(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let text = document(&body)?;
    let who = who(&principal, &headers, None);
    let c = state.controller.clone();
    let (record, created) = blocking(move || c.add_policy(&text, &who)).await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(record)).into_response())
}

/// `POST /v1/signals`: delayed signals, stored before the answer (a kill -9 after
/// it loses none).
pub(super) async fn post_signals(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    let answer = blocking(move || c.post_signals(&body)).await?;
    Ok(Json(answer).into_response())
}

pub(super) async fn list_targets(State(state): State<AppState>) -> Result<Response, Error> {
    let c = state.controller.clone();
    let targets = blocking(move || c.targets()).await?;
    Ok(Json(TargetList { targets }).into_response())
}

#[derive(Deserialize)]
pub(in crate::api) struct RolloutsQuery {
    active: Option<bool>,
}

pub(super) async fn list_rollouts(
    State(state): State<AppState>,
    Query(q): Query<RolloutsQuery>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    let rollouts = blocking(move || c.rollouts(q.active.unwrap_or(false))).await?;
    Ok(Json(RolloutList { rollouts }).into_response())
}

pub(super) async fn show_rollout(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.rollout(id)).await?).into_response())
}

pub(super) async fn show_analysis(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.analysis(id)).await?).into_response())
}

/// `GET /v1/rollouts/{id}/evidence`: the counts behind the analysis.
pub(super) async fn show_evidence(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let c = state.controller.clone();
    Ok(Json(blocking(move || c.evidence(id)).await?).into_response())
}

pub(super) async fn start_rollout(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let text = document(&body)?;
    let who = who(&principal, &headers, None);
    let authority = if allows(&principal.scopes, Scope::Admin) {
        Authority::Admin
    } else {
        Authority::Operate(state.limits.operate)
    };
    let c = state.controller.clone();
    let view = blocking(move || c.start_rollout(&text, &who, authority)).await?;
    Ok((StatusCode::CREATED, Json(view)).into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(in crate::api) struct ActionBody {
    actor: Option<String>,
    reason: Option<String>,
    to_end: Option<bool>,
    /// Apply only if the rollout is still at this (1-based) stage.
    expected_stage: Option<usize>,
}

#[derive(Deserialize)]
pub(in crate::api) struct ActionQuery {
    to_end: Option<bool>,
}

pub(super) async fn act(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((id, action)): Path<(String, String)>,
    Query(q): Query<ActionQuery>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let id = parse_id(&id)?;
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| Error::BadRequest(err("", format!("bad JSON body: {e}"))))?
    };
    let to_end = body.to_end.or(q.to_end).unwrap_or(false);
    let Some(manual) = ManualAction::parse(&action) else {
        let known: Vec<&str> = ManualAction::ALL.iter().map(|a| a.as_str()).collect();
        return Err(Error::NotFound(format!(
            "no action `{action}` ({})",
            known.join(", ")
        )));
    };
    let action = manual.action(to_end);
    let who = who(&principal, &headers, body.actor.as_deref());
    let reason = body
        .reason
        .unwrap_or_else(|| format!("manual {}", action.name().replace('_', " ")));
    let idempotency_key = match headers.get("idempotency-key") {
        None => None,
        Some(value) => match value.to_str() {
            Ok(key) if is_token(key, 128, |b| b.is_ascii_graphic()) => Some(key.to_string()),
            _ => {
                return Err(Error::BadRequest(err(
                    "Idempotency-Key",
                    "must be 1-128 visible ASCII characters",
                )))
            }
        },
    };
    let guard = Guard {
        expected_stage: body.expected_stage,
        expected_stage_started_ms: None,
        idempotency_key,
    };
    let c = state.controller.clone();
    let view = blocking(move || c.act(id, action, &who, &reason, &guard)).await?;
    Ok(Json(view).into_response())
}

#[derive(Deserialize)]
pub(in crate::api) struct AuditQuery {
    rollout: Option<i64>,
    target: Option<String>,
    after: Option<i64>,
    limit: Option<i64>,
}

pub(super) async fn audit(
    State(state): State<AppState>,
    Query(q): Query<AuditQuery>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    let entries = blocking(move || {
        c.audit(
            q.rollout,
            q.target.as_deref(),
            q.after.unwrap_or(0),
            q.limit.unwrap_or(DEFAULT_AUDIT_PAGE),
        )
    })
    .await?;
    Ok(Json(AuditList { audit: entries }).into_response())
}
