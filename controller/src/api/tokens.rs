//! Token management (scope `admin`): create (the secret is answered once), list,
//! revoke.

use super::auth::Principal;
use super::{blocking, who, AppState};
use crate::access::Scope;
use crate::controller::Error;
use crate::view::TokenList;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use policy_canary::error::err;
use serde::Deserialize;
use serde_json::json;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NewToken {
    name: String,
    scopes: Vec<String>,
    actor: Option<String>,
}

pub(super) async fn create_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let request: NewToken = serde_json::from_slice(&body).map_err(|e| {
        Error::BadRequest(err(
            "",
            format!("expected {{\"name\": ..., \"scopes\": [...]}}: {e}"),
        ))
    })?;
    let scopes = request
        .scopes
        .iter()
        .map(|s| Scope::parse(s))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::BadRequest(err("scopes", e)))?;
    let who = who(&principal, &headers, request.actor.as_deref());
    let c = state.controller.clone();
    let (record, secret) = blocking(move || c.create_token(&request.name, &scopes, &who)).await?;
    let mut body = serde_json::to_value(&record).unwrap_or_default();
    body["token"] = json!(secret);
    Ok((StatusCode::CREATED, Json(body)).into_response())
}

pub(super) async fn list_tokens(State(state): State<AppState>) -> Result<Response, Error> {
    let c = state.controller.clone();
    let tokens = blocking(move || c.tokens()).await?;
    Ok(Json(TokenList { tokens }).into_response())
}

pub(super) async fn revoke_token(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let who = who(&principal, &headers, None);
    let c = state.controller.clone();
    let record = blocking(move || c.revoke_token(&name, &who)).await?;
    Ok(Json(record).into_response())
}
