//! `POST /v1/evidence`: an Envoy's counts through the sync channel
//! (`analysis::evidence::sync`), taken when the controller runs with
//! `--evidence sync`.

use super::{blocking, error, AppState};
use crate::analysis::evidence::sync::Report;
use crate::controller::Error;
use crate::units::now_ms;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use policy_canary::error::err;
use serde_json::json;

/// Largest report: a few dozen KiB per target an Envoy serves.
pub const MAX_EVIDENCE_BODY_BYTES: usize = 4 * 1024 * 1024;

pub(super) async fn post_evidence(
    State(state): State<AppState>,
    body: Bytes,
) -> Result<Response, Error> {
    let Some(source) = state.evidence.clone() else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            "this controller does not take evidence reports: start it with `canaryctl serve --evidence sync`",
            None,
        ));
    };
    let report = match Report::parse(&body) {
        Ok(report) => report,
        Err(message) => {
            source.rejected();
            return Err(Error::BadRequest(err("report", message)));
        }
    };
    let received = blocking(move || Ok(source.receive(&report, now_ms()))).await?;
    Ok(Json(json!({"windows": received.windows})).into_response())
}
