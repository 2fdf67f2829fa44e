//! The dashboard at `/`: one server-rendered page (targets, the rollout in focus with
//! its stage progress, weight over time, the side-by-side analysis and the audit
//! timeline) plus a small script that refreshes it and sends pause / resume /
//! promote / rollback with the API token. No asset comes from anywhere but the
//! controller, and the Content-Security-Policy says so.

mod render;

use crate::analysis::AnalysisReport;
use crate::api::auth::Principal;
use crate::api::{blocking, parse_id, AppState, ENVOY_STALE_AFTER};
use crate::controller::{Controller, Error, Result, DEFAULT_AUDIT_PAGE};
use crate::fleet::EnvoyList;
use crate::store::{AuditEntry, TargetRow};
use crate::units::now_ms;
use crate::view::RolloutView;
use axum::extract::{Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Extension;
use serde::Deserialize;

pub const SCRIPT: &str = include_str!("dashboard.js");
pub const STYLE: &str = include_str!("dashboard.css");
/// Scripts, styles and requests only from the controller itself.
pub const CONTENT_SECURITY_POLICY: &str =
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Everything one page shows, read in one go.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    pub now_ms: i64,
    pub targets: Vec<TargetRow>,
    /// Which Envoys follow which revision.
    pub envoys: EnvoyList,
    pub rollouts: Vec<RolloutView>,
    /// The rollout in focus: the one asked for, else an active one, else the latest.
    pub focus: Option<RolloutView>,
    pub analysis: Option<AnalysisReport>,
    pub audit: Vec<AuditEntry>,
    /// Shown to a caller without a token: the page's frame, no data.
    pub locked: bool,
}

impl Snapshot {
    pub fn read(controller: &Controller, rollout: Option<i64>) -> Result<Snapshot> {
        let targets = controller.targets()?;
        let envoys =
            controller
                .fleet()
                .status(controller.routes().revision, now_ms(), ENVOY_STALE_AFTER);
        let rollouts = controller.rollouts(false)?;
        let focus_id = rollout.or_else(|| {
            rollouts
                .iter()
                .rev()
                .find(|r| r.is_active())
                .or(rollouts.last())
                .map(|r| r.id)
        });
        let (focus, analysis, audit) = match focus_id {
            Some(id) => {
                // The list holds every rollout; asking again only finds a missing id.
                let view = match rollouts.iter().find(|r| r.id == id) {
                    Some(view) => view.clone(),
                    None => controller.rollout(id)?,
                };
                let audit = controller.audit(Some(id), None, 0, DEFAULT_AUDIT_PAGE)?;
                let analysis = controller.analysis(id)?.analysis;
                (Some(view), analysis, audit)
            }
            None => (None, None, Vec::new()),
        };
        Ok(Snapshot {
            now_ms: now_ms(),
            targets,
            envoys,
            rollouts,
            focus,
            analysis,
            audit,
            locked: false,
        })
    }
}

#[derive(Deserialize)]
pub(in crate::api) struct DashboardQuery {
    rollout: Option<String>,
    part: Option<String>,
}

/// The dashboard page, or with `part=main` the part its script refreshes. Without
/// a token (a browser's first load) it is the page's frame, and its script asks
/// again with the token the person enters.
pub(in crate::api) async fn page(
    State(state): State<AppState>,
    Query(q): Query<DashboardQuery>,
    principal: Option<Extension<Principal>>,
) -> Result<Response, Error> {
    let rollout = match q.rollout.as_deref().filter(|r| !r.is_empty()) {
        Some(id) => Some(parse_id(id)?),
        None => None,
    };
    let snapshot = if principal.is_some() {
        let c = state.controller.clone();
        blocking(move || Snapshot::read(&c, rollout)).await?
    } else {
        Snapshot {
            locked: true,
            ..Snapshot::default()
        }
    };
    let html = if q.part.as_deref() == Some("main") {
        render::main(&snapshot).into_string()
    } else {
        render::page(&snapshot).into_string()
    };
    Ok(asset("text/html; charset=utf-8", html))
}

pub(in crate::api) async fn script() -> Response {
    asset("text/javascript; charset=utf-8", SCRIPT)
}

pub(in crate::api) async fn style() -> Response {
    asset("text/css; charset=utf-8", STYLE)
}

fn asset(content_type: &'static str, body: impl Into<axum::body::Body>) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
            (header::CACHE_CONTROL, "no-store"),
            (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        ],
        body.into(),
    )
        .into_response()
}
