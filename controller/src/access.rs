//! Who may do what: API token scopes, which scope each endpoint needs, who acted
//! (for the audit), and the shape of token secrets. Pure; `api::auth` applies it
//! and `store` keeps the tokens (as sha256).

use policy_canary::check::is_token;
use serde::{Deserialize, Serialize};
use std::fmt;

/// What a token may do. `admin` implies every scope, `operate` implies `read`;
/// `routes:read` and `policies:read` are implied by `admin` only (a dashboard or
/// CI token does not read confidential bundles).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Scope {
    /// `GET /v1/routes`: what Envoys poll.
    #[serde(rename = "routes:read")]
    RoutesRead,
    /// `GET /v1/policies[/…]`: what agent backends fetch (bundles are confidential).
    #[serde(rename = "policies:read")]
    PoliciesRead,
    /// Rollouts, status, analysis, targets, Envoys, audit, metrics, the dashboard.
    #[serde(rename = "read")]
    Read,
    /// Start, pause, resume, promote, roll back.
    #[serde(rename = "operate")]
    Operate,
    /// `POST /v1/signals`: what a judge or a feedback service posts, nothing else.
    #[serde(rename = "signals:write")]
    SignalsWrite,
    /// `POST /v1/evidence`: an Envoy's counts through the sync channel (its
    /// token also holds `routes:read`).
    #[serde(rename = "evidence:write")]
    EvidenceWrite,
    /// Register policies, manage tokens; everything.
    #[serde(rename = "admin")]
    Admin,
}

impl Scope {
    pub const ALL: [Scope; 7] = [
        Scope::RoutesRead,
        Scope::PoliciesRead,
        Scope::Read,
        Scope::Operate,
        Scope::SignalsWrite,
        Scope::EvidenceWrite,
        Scope::Admin,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Scope::RoutesRead => "routes:read",
            Scope::PoliciesRead => "policies:read",
            Scope::Read => "read",
            Scope::Operate => "operate",
            Scope::SignalsWrite => "signals:write",
            Scope::EvidenceWrite => "evidence:write",
            Scope::Admin => "admin",
        }
    }

    pub fn parse(text: &str) -> Result<Scope, String> {
        Scope::ALL
            .into_iter()
            .find(|s| s.as_str() == text.trim())
            .ok_or_else(|| {
                format!(
                    "unknown scope `{text}` (one of: {})",
                    Scope::ALL.map(Scope::as_str).join(", ")
                )
            })
    }

    /// Whether holding `self` grants `needed`.
    pub fn grants(self, needed: Scope) -> bool {
        self == needed || self == Scope::Admin || (self == Scope::Operate && needed == Scope::Read)
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether any of `held` grants `needed`.
pub fn allows(held: &[Scope], needed: Scope) -> bool {
    held.iter().any(|s| s.grants(needed))
}

/// The scope a request needs, or `None` for an open endpoint (`/healthz`).
pub fn needed_scope(method: &str, path: &str) -> Option<Scope> {
    let reads = matches!(method, "GET" | "HEAD");
    let scope = match path {
        // The dashboard's assets hold no data.
        "/healthz" | "/dashboard.js" | "/dashboard.css" => return None,
        "/v1/routes" => Scope::RoutesRead,
        // Listed records carry their bundles.
        "/v1/policies" if reads => Scope::PoliciesRead,
        "/v1/policies" => Scope::Admin,
        p if p.starts_with("/v1/policies/") && reads => Scope::PoliciesRead,
        p if p == "/v1/tokens" || p.starts_with("/v1/tokens/") => Scope::Admin,
        "/v1/signals" if !reads => Scope::SignalsWrite,
        "/v1/evidence" if !reads => Scope::EvidenceWrite,
        _ if reads => Scope::Read,
        "/v1/rollouts" => Scope::Operate,
        p if p.starts_with("/v1/rollouts/") => Scope::Operate,
        _ => Scope::Admin,
    };
    Some(scope)
}

/// Who made a change: the authenticated token's name (`principal`) and what the
/// client said about itself (`actor`, free text, e.g. `--actor` or "dashboard").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Who {
    pub principal: String,
    pub actor: String,
}

/// The controller's own name, as principal and actor of its automatic decisions.
pub const CONTROLLER: &str = "canaryctl";
/// The principal of the bootstrap token (the state directory's `token` file or
/// `--token`).
pub const BOOTSTRAP_PRINCIPAL: &str = "admin";

impl Who {
    /// The control loop.
    pub fn controller() -> Who {
        Who {
            principal: CONTROLLER.to_string(),
            actor: CONTROLLER.to_string(),
        }
    }

    /// `principal`, with the client's own free-text name if it gave one (else the
    /// principal's).
    pub fn new(principal: &str, actor: Option<&str>) -> Who {
        let actor = actor
            .map(str::trim)
            .filter(|a| !a.is_empty())
            .map_or_else(|| principal.to_string(), |a| a.chars().take(128).collect());
        Who {
            principal: principal.to_string(),
            actor,
        }
    }
}

/// Longest token name.
pub const MAX_TOKEN_NAME: usize = 64;

/// Whether `name` can name a token: 1..=64 of `a-z A-Z 0-9 . _ -`.
pub fn is_token_name(name: &str) -> bool {
    is_token(name, MAX_TOKEN_NAME, |b| {
        b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-')
    })
}

/// Prefix of the secrets `token create` makes (so that secret scanners find them).
pub const SECRET_PREFIX: &str = "pct_";

/// A new token secret from 32 random bytes.
pub fn new_secret() -> Result<String, String> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| format!("no randomness: {e}"))?;
    Ok(format!(
        "{SECRET_PREFIX}{}",
        policy_canary::digest::hex(&bytes)
    ))
}

/// What is stored of a secret.
pub fn secret_hash(secret: &str) -> String {
    policy_canary::digest::sha256_hex(secret.as_bytes())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_grant_what_they_say() {
        use Scope::*;
        for s in Scope::ALL {
            assert!(Admin.grants(s));
            assert_eq!(Scope::parse(s.as_str()), Ok(s));
        }
        assert!(Operate.grants(Read));
        assert!(!Operate.grants(PoliciesRead));
        assert!(!Read.grants(RoutesRead));
        assert!(!Read.grants(PoliciesRead));
        assert!(!RoutesRead.grants(Read));
        assert!(!Operate.grants(SignalsWrite) && !SignalsWrite.grants(Read));
        assert!(Admin.grants(SignalsWrite));
        assert!(Scope::parse("root").unwrap_err().contains("routes:read"));
        assert!(allows(&[RoutesRead, Read], Read));
        assert!(!allows(&[], Read));
    }

    #[test]
    fn every_endpoint_needs_its_scope() {
        use Scope::*;
        let cases = [
            ("GET", "/healthz", None),
            ("GET", "/dashboard.js", None),
            ("GET", "/v1/routes", Some(RoutesRead)),
            ("GET", "/v1/policies", Some(PoliciesRead)),
            ("POST", "/v1/policies/v1", Some(Admin)),
            ("POST", "/v1/policies", Some(Admin)),
            ("GET", "/v1/policies/v1", Some(PoliciesRead)),
            ("GET", "/v1/tokens", Some(Admin)),
            ("POST", "/v1/tokens/ci/revoke", Some(Admin)),
            ("GET", "/", Some(Read)),
            ("GET", "/metrics", Some(Read)),
            ("GET", "/v1/audit", Some(Read)),
            ("POST", "/v1/rollouts", Some(Operate)),
            ("POST", "/v1/rollouts/3/pause", Some(Operate)),
            ("POST", "/v1/signals", Some(SignalsWrite)),
            ("POST", "/v1/unknown", Some(Admin)),
        ];
        for (method, path, scope) in cases {
            assert_eq!(needed_scope(method, path), scope, "{method} {path}");
        }
    }

    #[test]
    fn who_acted() {
        assert_eq!(Who::new("ci", Some("  ")).actor, "ci");
        assert_eq!(Who::new("ci", Some("alice")).actor, "alice");
        assert!(is_token_name("ci-deploy.v2"));
        assert!(!is_token_name("two words") && !is_token_name(""));
        let secret = new_secret().unwrap();
        assert!(secret.starts_with(SECRET_PREFIX) && secret.len() == 68);
        assert_eq!(secret_hash(&secret).len(), 64);
    }
}
