//! The clusters a target may route to: read (`read`), bound and unbound (`admin`).

use super::auth::Principal;
use super::{blocking, who, AppState};
use crate::controller::Error;
use crate::store::ClusterBinding;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use policy_canary::error::err;
use serde::{Deserialize, Serialize};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bind {
    clusters: Vec<String>,
    actor: Option<String>,
}

#[derive(Serialize)]
struct Bindings {
    target: String,
    clusters: Vec<ClusterBinding>,
}

pub(super) async fn list(
    State(state): State<AppState>,
    Path(target): Path<String>,
) -> Result<Response, Error> {
    let c = state.controller.clone();
    let name = target.clone();
    let clusters = blocking(move || c.clusters(&name)).await?;
    Ok(Json(Bindings { target, clusters }).into_response())
}

pub(super) async fn bind(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path(target): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, Error> {
    let request: Bind = serde_json::from_slice(&body).map_err(|e| {
        Error::BadRequest(err(
            "",
            format!("expected {{\"clusters\": [\"name\", ...]}}: {e}"),
        ))
    })?;
    let who = who(&principal, &headers, request.actor.as_deref());
    let c = state.controller.clone();
    let name = target.clone();
    let clusters = blocking(move || c.bind_clusters(&name, &request.clusters, &who)).await?;
    Ok(Json(Bindings { target, clusters }).into_response())
}

pub(super) async fn unbind(
    State(state): State<AppState>,
    Extension(principal): Extension<Principal>,
    Path((target, cluster)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, Error> {
    let who = who(&principal, &headers, None);
    let c = state.controller.clone();
    let name = target.clone();
    let clusters = blocking(move || c.unbind_clusters(&name, &[cluster], &who)).await?;
    Ok(Json(Bindings { target, clusters }).into_response())
}
