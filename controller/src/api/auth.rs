//! Who may do what: every endpoint but `/healthz` (and the dashboard's frame and
//! assets) needs `Authorization: Bearer <token>` with the scope `access` names.
//! Tokens are the bootstrap token (flag, environment or the state directory's
//! `token` file, generated on first start; scope `admin`) and the named tokens in
//! the store. Errors never echo a presented token.

use super::{error, AppState};
use crate::access::{allows, needed_scope, Scope, BOOTSTRAP_PRINCIPAL};
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use policy_canary::digest::{constant_time_eq, hex};
use std::path::Path;

/// The authenticated caller, for handlers (`Extension<Principal>`).
#[derive(Debug, Clone)]
pub struct Principal {
    /// The token's name (`admin` for the bootstrap token).
    pub name: String,
    pub scopes: Vec<Scope>,
}

/// Principal of route polls when `--open-routes` lets them in without a token.
pub const ANONYMOUS: &str = "anonymous";

pub(super) async fn authorize(
    State(state): State<AppState>,
    mut request: Request,
    next: Next,
) -> Response {
    let path = request.uri().path().to_string();
    let method = request.method().as_str().to_string();
    let Some(needed) = needed_scope(&method, &path) else {
        return next.run(request).await;
    };
    let presented = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(str::to_string);
    let Some(presented) = presented else {
        if needed == Scope::RoutesRead && state.open_routes {
            mark_authenticated(&request);
            request.extensions_mut().insert(Principal {
                name: ANONYMOUS.into(),
                scopes: vec![Scope::RoutesRead],
            });
            return next.run(request).await;
        }
        // The dashboard's first load: its frame, no data (`dashboard::page`).
        if path == "/" && method == "GET" {
            return next.run(request).await;
        }
        return unauthorized(&format!(
            "{method} {path} needs a token with the `{needed}` scope: send `Authorization: Bearer <token>`"
        ));
    };
    let principal = if constant_time_eq(presented.as_bytes(), state.token.as_bytes()) {
        Principal {
            name: BOOTSTRAP_PRINCIPAL.into(),
            scopes: vec![Scope::Admin],
        }
    } else if let Some(token) = state.controller.known_token(&presented) {
        Principal {
            name: token.name,
            scopes: token.scopes,
        }
    } else {
        let controller = state.controller.clone();
        match super::blocking(move || controller.authenticate(&presented)).await {
            Ok(Some(token)) => Principal {
                name: token.name,
                scopes: token.scopes,
            },
            Ok(None) => return unauthorized("unknown or revoked token"),
            Err(e) => {
                tracing::error!(error = %e, "looking up a token");
                return error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "cannot check the token now",
                    None,
                );
            }
        }
    };
    mark_authenticated(&request);
    if !allows(&principal.scopes, needed) {
        let held: Vec<&str> = principal.scopes.iter().map(|s| s.as_str()).collect();
        return error(
            StatusCode::FORBIDDEN,
            &format!(
                "token `{}` (scopes: {}) may not {method} {path}: that needs `{needed}`",
                principal.name,
                held.join(", ")
            ),
            None,
        );
    }
    request.extensions_mut().insert(principal);
    next.run(request).await
}

/// The request's connection has shown a valid token (or needs none to poll): it
/// no longer counts against its address's unauthenticated connections.
fn mark_authenticated(request: &Request) {
    if let Some(connection) = request
        .extensions()
        .get::<std::sync::Arc<super::connection::Connection>>()
    {
        connection.authenticated();
    }
}

fn unauthorized(message: &str) -> Response {
    let mut response = error(StatusCode::UNAUTHORIZED, message, None);
    response
        .headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    response
}

/// The token in `file`: `Ok(None)` when there is no such file, an error naming
/// the file and the cause when it cannot be read or holds no token.
pub fn read_token_file(file: &Path) -> anyhow::Result<Option<String>> {
    let text = match std::fs::read_to_string(file) {
        Ok(text) => text,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => anyhow::bail!("cannot read the token file {}: {e}", file.display()),
    };
    let token = text.trim();
    if token.is_empty() {
        anyhow::bail!("the token file {} is empty", file.display());
    }
    Ok(Some(token.to_string()))
}

/// The token from the flag or environment, else from the token file, else a new
/// one written to the token file with mode 0600.
pub fn resolve_token(token: Option<String>, file: &Path) -> anyhow::Result<String> {
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_string());
    }
    if let Some(token) = read_token_file(file)? {
        return Ok(token);
    }
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes).map_err(|e| anyhow::anyhow!("no randomness: {e}"))?;
    let token = hex(&bytes);
    if let Some(dir) = file.parent() {
        crate::store::create_private_dir(dir)
            .with_context(|| format!("creating {}", dir.display()))?;
    }
    write_private(file, &token).with_context(|| format!("writing {}", file.display()))?;
    tracing::info!(file = %file.display(), "generated an API token");
    Ok(token)
}

#[cfg(unix)]
fn write_private(file: &Path, token: &str) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(file)?;
    writeln!(f, "{token}")
}

#[cfg(not(unix))]
fn write_private(file: &Path, token: &str) -> std::io::Result<()> {
    std::fs::write(file, format!("{token}\n"))
}
