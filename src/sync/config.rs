//! The sync's configuration: the `sync` block of the filter or of the singleton
//! sync service, and the names and tokens a poll carries.

use crate::check::{check_cluster, is_token};
use crate::error::{err, ConfigError};
use crate::reader::{Object, Reader};

/// The sync service's plugin configuration: `{"sync": {...}}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct SyncConfig {
    /// Envoy cluster of the controller.
    pub cluster: String,
    pub authority: String,
    pub path: String,
    /// How long the controller may hold a poll open, ms.
    pub wait_ms: u64,
    /// Timeout of one poll, ms (longer than `wait_ms`).
    pub timeout_ms: u64,
    pub max_body_bytes: usize,
    /// Longest pause between failed polls, ms (the controller answered an error).
    pub max_backoff_ms: u64,
    /// Longest pause between polls while the controller cannot be reached (a
    /// restart, say), ms: each wait is drawn at random up to it, so that an Envoy
    /// follows a controller that is back within about this, and a fleet does not
    /// come back all at once.
    pub max_reconnect_ms: u64,
    /// How this Envoy names itself to the controller; default: the environment
    /// variable `envoy_id_env`, else a name generated once per Envoy.
    pub envoy_id: Option<String>,
    /// The VM environment variable naming this Envoy (default `HOSTNAME`, the pod name).
    pub envoy_id_env: String,
    /// The controller token polls send (`Authorization: Bearer`, scope `routes:read`);
    /// default: the environment variable `token_env`, else none.
    pub token: Option<String>,
    /// The VM environment variable holding the token (default `POLICY_CANARY_TOKEN`).
    pub token_env: String,
    /// Evidence through the sync channel: every this many ms the sync holder sends
    /// its Envoy's policy-canary counts to the controller (`POST evidence_path`,
    /// scope `evidence:write`); 0 (the default): never.
    pub evidence_ms: u64,
    pub evidence_path: String,
}

/// Shortest interval between evidence reports, ms.
pub const MIN_EVIDENCE_MS: u64 = 1_000;

/// Longest controller token the filter sends.
pub const MAX_TOKEN_BYTES: usize = 256;

/// Whether `token` can go into an `Authorization` header: 1 to 256 visible ASCII
/// characters.
pub fn is_sync_token(token: &str) -> bool {
    is_token(token, MAX_TOKEN_BYTES, |b| b.is_ascii_graphic())
}

/// Request header naming the polling Envoy (its pod name), so that the controller
/// can show which Envoys follow which revision.
pub const ENVOY_ID_HEADER: &str = "x-canary-envoy";
/// Longest Envoy name the controller keeps.
pub const MAX_ENVOY_ID_BYTES: usize = 128;

/// Whether `id` can name an Envoy: 1 to `MAX_ENVOY_ID_BYTES` visible ASCII characters
/// (Istio's node ids hold `~`, `.` and `|`).
pub fn is_envoy_id(id: &str) -> bool {
    is_token(id, MAX_ENVOY_ID_BYTES, |b| b.is_ascii_graphic())
}

impl SyncConfig {
    /// The sync service's own configuration: `{"sync": {...}}` and nothing else.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let reader = Reader::parse(bytes)?;
        let root = reader.root()?;
        root.only(&["sync"])?;
        Self::read(&root.required_object("sync")?)
    }

    /// A `sync` block: the service's, or the filter's own (filter-side sync).
    pub fn read(s: &Object<'_>) -> Result<Self, ConfigError> {
        s.only(&[
            "cluster",
            "authority",
            "path",
            "wait_ms",
            "timeout_ms",
            "max_body_bytes",
            "max_backoff_ms",
            "max_reconnect_ms",
            "envoy_id",
            "envoy_id_env",
            "token",
            "token_env",
            "evidence_ms",
            "evidence_path",
        ])?;
        let wait_ms = s.u64("wait_ms")?.unwrap_or(25_000);
        let config = SyncConfig {
            cluster: s.required_string("cluster")?,
            authority: s.string("authority")?.unwrap_or_else(|| "canaryctl".into()),
            path: s.string("path")?.unwrap_or_else(|| "/v1/routes".into()),
            wait_ms,
            timeout_ms: s.u64("timeout_ms")?.unwrap_or(wait_ms + 5_000),
            max_body_bytes: s.u64("max_body_bytes")?.unwrap_or(1 << 20) as usize,
            max_backoff_ms: s.u64("max_backoff_ms")?.unwrap_or(5_000),
            max_reconnect_ms: s.u64("max_reconnect_ms")?.unwrap_or(1_000),
            envoy_id: s.string("envoy_id")?,
            envoy_id_env: s
                .string("envoy_id_env")?
                .unwrap_or_else(|| "HOSTNAME".into()),
            token: s.string("token")?,
            token_env: s
                .string("token_env")?
                .unwrap_or_else(|| "POLICY_CANARY_TOKEN".into()),
            evidence_ms: s.u64("evidence_ms")?.unwrap_or(0),
            evidence_path: s
                .string("evidence_path")?
                .unwrap_or_else(|| "/v1/evidence".into()),
        };
        if config.token.as_deref().is_some_and(|t| !is_sync_token(t)) {
            // The value itself is a secret: never in the error.
            return Err(err(
                "sync.token",
                format!("must be 1-{MAX_TOKEN_BYTES} visible ASCII characters"),
            ));
        }
        check_cluster("sync.cluster", &config.cluster)?;
        if let Some(id) = &config.envoy_id {
            if !is_envoy_id(id) {
                return Err(err(
                    "sync.envoy_id",
                    format!("`{id}` must be 1-{MAX_ENVOY_ID_BYTES} visible ASCII characters"),
                ));
            }
        }
        for (field, path) in [
            ("sync.path", &config.path),
            ("sync.evidence_path", &config.evidence_path),
        ] {
            if !path.starts_with('/') || path.contains(['?', ' ']) {
                return Err(err(field, "must be an absolute path without a query"));
            }
        }
        if config.evidence_ms != 0 && config.evidence_ms < MIN_EVIDENCE_MS {
            return Err(err(
                "sync.evidence_ms",
                format!("must be 0 (no evidence reports) or at least {MIN_EVIDENCE_MS}"),
            ));
        }
        if config.timeout_ms <= config.wait_ms {
            return Err(err("sync.timeout_ms", "must be longer than sync.wait_ms"));
        }
        if config.max_body_bytes == 0 || config.max_backoff_ms == 0 || config.max_reconnect_ms == 0
        {
            return Err(err(
                "sync",
                "max_body_bytes, max_backoff_ms and max_reconnect_ms must be above 0",
            ));
        }
        Ok(config)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SyncConfig {
        SyncConfig::from_json(br#"{"sync": {"cluster": "canary_controller", "wait_ms": 1000}}"#)
            .unwrap()
    }

    #[test]
    fn mesh_cluster_names_and_envoy_ids_are_accepted() {
        for cluster in [
            "outbound|7070||canaryctl.policy-canary.svc.cluster.local",
            "httproute/policy-canary/canaryctl/rule/0",
        ] {
            let json = format!(r#"{{"sync": {{"cluster": "{cluster}"}}}}"#);
            assert_eq!(
                SyncConfig::from_json(json.as_bytes()).unwrap().cluster,
                cluster
            );
        }
        assert!(SyncConfig::from_json(br#"{"sync": {"cluster": "a b"}}"#).is_err());
        assert!(is_envoy_id(
            "router~10.0.0.1~gw-7d9.istio-system~cluster.local"
        ));
        assert!(!is_envoy_id(""));
        assert!(!is_envoy_id("two words"));
        assert!(!is_envoy_id(&"x".repeat(MAX_ENVOY_ID_BYTES + 1)));
        let named = SyncConfig::from_json(br#"{"sync": {"cluster": "c", "envoy_id": "edge-1"}}"#);
        assert_eq!(named.unwrap().envoy_id.as_deref(), Some("edge-1"));
        let message = SyncConfig::from_json(br#"{"sync": {"cluster": "c", "envoy_id": ""}}"#)
            .unwrap_err()
            .to_string();
        assert!(message.starts_with("sync.envoy_id:"), "{message}");
    }

    #[test]
    fn config_defaults_and_errors() {
        let c = config();
        assert_eq!(
            (c.timeout_ms, c.path.as_str(), c.authority.as_str()),
            (6_000, "/v1/routes", "canaryctl")
        );
        for (bad, expected) in [
            (r#"{"sync": {}}"#, "sync.cluster: missing field"),
            (
                r#"{"sync": {"cluster": "c", "wait_ms": 10, "timeout_ms": 5}}"#,
                "sync.timeout_ms:",
            ),
            (r#"{"sync": {"cluster": "c", "path": "v1"}}"#, "sync.path:"),
            (
                r#"{"sync": {"cluster": "c", "evidence_path": "x"}}"#,
                "sync.evidence_path:",
            ),
            (
                r#"{"sync": {"cluster": "c", "evidence_ms": 10}}"#,
                "sync.evidence_ms: must be 0",
            ),
            (
                r#"{"sync": {"cluster": "c", "extra": 1}}"#,
                "sync.extra: unknown field",
            ),
            (r#"{"target": "x"}"#, "target: unknown field"),
            (
                r#"{"sync": {"cluster": "c", "token": "two words"}}"#,
                "sync.token: must be 1-256 visible ASCII",
            ),
        ] {
            let message = SyncConfig::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{bad}: {message}");
        }
    }
}
