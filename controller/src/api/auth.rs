//! Who may do what: changes need `Authorization: Bearer <token>`; the token comes
//! from the flag or environment, else the state directory's `token` file
//! (generated on first start).

use super::{error, AppState};
use anyhow::Context;
use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::Response;
use policy_canary::digest::{constant_time_eq, hex};
use std::path::Path;

pub(super) async fn require_token(
    State(state): State<AppState>,
    request: Request,
    next: Next,
) -> Response {
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

/// The token in `file`, if it can be read; `Err` when it is there but empty.
pub fn read_token_file(file: &Path) -> Option<anyhow::Result<String>> {
    let text = std::fs::read_to_string(file).ok()?;
    let token = text.trim().to_string();
    Some(if token.is_empty() {
        Err(anyhow::anyhow!(
            "the token file {} is empty",
            file.display()
        ))
    } else {
        Ok(token)
    })
}

/// The token from the flag or environment, else from the token file, else a new
/// one written to the token file with mode 0600.
pub fn resolve_token(token: Option<String>, file: &Path) -> anyhow::Result<String> {
    if let Some(token) = token.filter(|t| !t.trim().is_empty()) {
        return Ok(token.trim().to_string());
    }
    if let Some(token) = read_token_file(file) {
        return token;
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
