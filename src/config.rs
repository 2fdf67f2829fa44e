//! The filter's plugin configuration (its `route` is a `route::RouteTable`).
//!
//! Field names are part of the project's contract (see the README's configuration
//! reference). Unknown fields are errors, and every error names the field path.

use crate::check::{check_cookie_name, check_header, check_name};
use crate::error::{err, ConfigError};
use crate::reader::{Object, Reader};
use crate::route::RouteTable;
use crate::sync::SyncConfig;
use serde::Serialize;

/// What to do with a request that carries no session id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum MissingSession {
    /// Send it to stable.
    #[default]
    Stable,
    /// Draw a fresh bucket for it (not sticky).
    Random,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SessionConfig {
    pub header: String,
    pub cookie: Option<String>,
    pub missing: MissingSession,
}

impl Default for SessionConfig {
    fn default() -> Self {
        Self {
            header: "x-session-id".into(),
            cookie: None,
            missing: MissingSession::Stable,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ForceConfig {
    pub header: String,
    pub token_header: String,
    /// Hex sha256 of the token a caller must send in `token_header` to force.
    pub token_sha256: Option<String>,
}

impl Default for ForceConfig {
    fn default() -> Self {
        Self {
            header: "x-canary".into(),
            token_header: "x-canary-token".into(),
            token_sha256: None,
        }
    }
}

/// Names of the response headers (or trailers) carrying the agent's quality report.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TelemetryHeaders {
    pub outcome: String,
    pub cost_micros: String,
    pub tokens: String,
    pub tool_calls: String,
    pub tool_errors: String,
    pub guardrail_triggers: String,
    pub safety_violations: String,
    /// Custom metrics come as `<metric_prefix><name>` (the route table's `metrics`).
    pub metric_prefix: String,
}

impl Default for TelemetryHeaders {
    fn default() -> Self {
        Self {
            outcome: "x-agent-outcome".into(),
            cost_micros: "x-agent-cost-micros".into(),
            tokens: "x-agent-tokens".into(),
            tool_calls: "x-agent-tool-calls".into(),
            tool_errors: "x-agent-tool-errors".into(),
            guardrail_triggers: "x-agent-guardrail-triggers".into(),
            safety_violations: "x-agent-safety-violations".into(),
            metric_prefix: "x-agent-metric-".into(),
        }
    }
}

impl TelemetryHeaders {
    pub fn names(&self) -> [&str; 7] {
        [
            &self.outcome,
            &self.cost_micros,
            &self.tokens,
            &self.tool_calls,
            &self.tool_errors,
            &self.guardrail_triggers,
            &self.safety_violations,
        ]
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TelemetryConfig {
    /// Remove the telemetry headers and trailers from the response to the client.
    pub strip: bool,
    pub headers: TelemetryHeaders,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        Self {
            strip: true,
            headers: TelemetryHeaders::default(),
        }
    }
}

/// The filter's plugin configuration (JSON in Envoy's `configuration`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PluginConfig {
    pub target: String,
    pub session: SessionConfig,
    pub force: ForceConfig,
    pub cluster_header: String,
    pub version_header: String,
    pub bucket_header: String,
    pub telemetry: TelemetryConfig,
    pub served_by: ServedBy,
    /// Count per session replicate too (`replicate`), for the controller's
    /// session-robust analysis; `false` saves the series (the controller then
    /// treats requests as independent and says so).
    pub session_replicates: bool,
    pub route: RouteTable,
    /// Filter-side sync: with this block the filter follows the controller itself
    /// (one worker per Envoy polls, holding a lease in shared data), for Envoys that
    /// cannot load a bootstrap extension (Istio's WasmPlugin, Envoy Gateway).
    pub sync: Option<SyncConfig>,
}

/// How a finished stream's version is known.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ServedBy {
    /// The cluster Envoy chose (`xds.cluster_name`, one property read per stream):
    /// exact whatever the route does, e.g. runtime mode's weighted clusters.
    #[default]
    Cluster,
    /// The filter's own decision: for routes that follow the filter's cluster
    /// header (`cluster_header` routes, the mesh configs), where Envoy's cluster is
    /// the one the filter chose; saves the property read.
    Decision,
}

/// Headers only the filter may set; client-sent copies are always removed.
pub const INTERNAL_HEADERS: [&str; 3] = ["x-policy-cluster", "x-agent-policy", "x-canary-bucket"];

impl PluginConfig {
    /// Parses and validates a plugin configuration.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let reader = Reader::parse(bytes)?;
        let config = Self::read(&reader.root()?)?;
        config.validate()?;
        Ok(config)
    }

    fn read(o: &Object<'_>) -> Result<Self, ConfigError> {
        o.only(&[
            "target",
            "session",
            "force",
            "cluster_header",
            "version_header",
            "bucket_header",
            "telemetry",
            "served_by",
            "session_replicates",
            "route",
            "sync",
        ])?;
        let session = match o.object("session")? {
            None => SessionConfig::default(),
            Some(s) => {
                s.only(&["header", "cookie", "missing"])?;
                let default = SessionConfig::default();
                SessionConfig {
                    header: s.string("header")?.unwrap_or(default.header),
                    cookie: s.string("cookie")?,
                    missing: match s.string("missing")?.as_deref() {
                        None | Some("stable") => MissingSession::Stable,
                        Some("random") => MissingSession::Random,
                        Some(other) => {
                            return Err(s.error(
                                "missing",
                                format!("unknown value `{other}`, expected `stable` or `random`"),
                            ))
                        }
                    },
                }
            }
        };
        let force = match o.object("force")? {
            None => ForceConfig::default(),
            Some(f) => {
                f.only(&["header", "token_header", "token_sha256"])?;
                let default = ForceConfig::default();
                ForceConfig {
                    header: f.string("header")?.unwrap_or(default.header),
                    token_header: f.string("token_header")?.unwrap_or(default.token_header),
                    token_sha256: f.string("token_sha256")?,
                }
            }
        };
        let telemetry = match o.object("telemetry")? {
            None => TelemetryConfig::default(),
            Some(t) => {
                t.only(&["strip", "headers"])?;
                let headers = match t.object("headers")? {
                    None => TelemetryHeaders::default(),
                    Some(h) => {
                        const FIELDS: [&str; 8] = [
                            "outcome",
                            "cost_micros",
                            "tokens",
                            "tool_calls",
                            "tool_errors",
                            "guardrail_triggers",
                            "safety_violations",
                            "metric_prefix",
                        ];
                        h.only(&FIELDS)?;
                        let d = TelemetryHeaders::default();
                        TelemetryHeaders {
                            outcome: h.string("outcome")?.unwrap_or(d.outcome),
                            cost_micros: h.string("cost_micros")?.unwrap_or(d.cost_micros),
                            tokens: h.string("tokens")?.unwrap_or(d.tokens),
                            tool_calls: h.string("tool_calls")?.unwrap_or(d.tool_calls),
                            tool_errors: h.string("tool_errors")?.unwrap_or(d.tool_errors),
                            guardrail_triggers: h
                                .string("guardrail_triggers")?
                                .unwrap_or(d.guardrail_triggers),
                            safety_violations: h
                                .string("safety_violations")?
                                .unwrap_or(d.safety_violations),
                            metric_prefix: h.string("metric_prefix")?.unwrap_or(d.metric_prefix),
                        }
                    }
                };
                TelemetryConfig {
                    strip: t.bool("strip")?.unwrap_or(true),
                    headers,
                }
            }
        };
        Ok(PluginConfig {
            target: o.required_string("target")?,
            session,
            force,
            cluster_header: o
                .string("cluster_header")?
                .unwrap_or_else(|| "x-policy-cluster".into()),
            version_header: o
                .string("version_header")?
                .unwrap_or_else(|| "x-agent-policy".into()),
            bucket_header: o
                .string("bucket_header")?
                .unwrap_or_else(|| "x-canary-bucket".into()),
            telemetry,
            served_by: match o.string("served_by")?.as_deref() {
                None | Some("cluster") => ServedBy::Cluster,
                Some("decision") => ServedBy::Decision,
                Some(other) => {
                    return Err(err(
                        "served_by",
                        format!("`{other}` is not one of: cluster, decision"),
                    ))
                }
            },
            session_replicates: o.bool("session_replicates")?.unwrap_or(true),
            route: RouteTable::read(&o.required_object("route")?)?,
            sync: o
                .object("sync")?
                .map(|s| SyncConfig::read(&s))
                .transpose()?,
        })
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("target", &self.target)?;
        check_header("session.header", &self.session.header)?;
        if let Some(cookie) = &self.session.cookie {
            check_cookie_name("session.cookie", cookie)?;
        }
        check_header("force.header", &self.force.header)?;
        check_header("force.token_header", &self.force.token_header)?;
        if let Some(hash) = &self.force.token_sha256 {
            if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(err(
                    "force.token_sha256",
                    "must be the 64 hex digits of a sha256 digest",
                ));
            }
        }
        check_header("cluster_header", &self.cluster_header)?;
        check_header("version_header", &self.version_header)?;
        check_header("bucket_header", &self.bucket_header)?;
        let t = &self.telemetry.headers;
        for (field, name) in [
            ("outcome", &t.outcome),
            ("cost_micros", &t.cost_micros),
            ("tokens", &t.tokens),
            ("tool_calls", &t.tool_calls),
            ("tool_errors", &t.tool_errors),
            ("guardrail_triggers", &t.guardrail_triggers),
            ("safety_violations", &t.safety_violations),
            ("metric_prefix", &t.metric_prefix),
        ] {
            check_header(&format!("telemetry.headers.{field}"), name)?;
        }
        // Headers the filter writes must not be ones it reads from the client.
        let written = [
            ("cluster_header", &self.cluster_header),
            ("version_header", &self.version_header),
            ("bucket_header", &self.bucket_header),
        ];
        for (i, (field, name)) in written.iter().enumerate() {
            let read = [
                &self.session.header,
                &self.force.header,
                &self.force.token_header,
            ];
            if read.contains(name) || written[..i].iter().any(|(_, other)| other == name) {
                return Err(err(
                    *field,
                    format!("header `{name}` is already used by another field"),
                ));
            }
        }
        self.route.validate("route.")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::route::RoutesDocument;
    use std::collections::BTreeMap;

    const MINIMAL: &str = r#"{
        "target": "support-agent",
        "route": {
            "salt": "s",
            "canary_weight_bp": 500,
            "stable": {"version": "v2.3.1", "cluster": "agent_stable"},
            "canary": {"version": "v2.4.0", "cluster": "agent_canary"}
        }
    }"#;

    const DESIGN_EXAMPLE: &str = r#"{
      "target": "support-agent",
      "session": {"header": "x-session-id", "cookie": null, "missing": "stable"},
      "force": {"header": "x-canary", "token_sha256": null},
      "cluster_header": "x-policy-cluster",
      "version_header": "x-agent-policy",
      "route": {
        "revision": 0,
        "salt": "rollout-2026-11-22",
        "canary_weight_bp": 500,
        "stable": {"version": "v2.3.1", "cluster": "agent_stable"},
        "canary": {"version": "v2.4.0", "cluster": "agent_canary"},
        "segments": []
      }
    }"#;

    fn error_of(json: &str) -> String {
        PluginConfig::from_json(json.as_bytes())
            .expect_err("config should be rejected")
            .to_string()
    }

    fn with(field_json: &str) -> String {
        // Replace the route with a variant; keeps each bad case to one line.
        format!(r#"{{"target": "support-agent", {field_json}}}"#)
    }

    #[test]
    fn design_example_parses_with_defaults() {
        let config = PluginConfig::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        assert_eq!(config.route.canary_weight_bp, 500);
        assert_eq!(config.bucket_header, "x-canary-bucket");
        assert_eq!(config.force.token_header, "x-canary-token");
        assert!(config.telemetry.strip);
        let minimal = PluginConfig::from_json(MINIMAL.as_bytes()).unwrap();
        assert_eq!(minimal.session, SessionConfig::default());
        assert_eq!(minimal.route.revision, 0);
    }

    #[test]
    fn route_table_round_trips_through_json() {
        let config = PluginConfig::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        let json = serde_json::to_vec(&config.route).unwrap();
        let back = RouteTable::from_json(&json).unwrap();
        assert_eq!(back, config.route);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let route = r#""route": {"salt": "s", "stable": {"version": "v1", "cluster": "a"}}"#;
        let cases = [
            (
                with(&format!(r#"{route}, "extra": 1"#)),
                "extra: unknown field, expected one of: target,",
            ),
            (
                with(r#""route": {"salt": "s", "stable": {"version": "v1", "clustr": "a"}}"#),
                "route.stable.clustr: unknown field, expected one of: version, cluster",
            ),
            (
                with(
                    r#""route": {"salt": "s", "canary_weight_bp": 10001, "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"}}"#,
                ),
                "route.canary_weight_bp: must be at most 10000",
            ),
            (
                with(
                    r#""route": {"salt": "s", "canary_weight_bp": 70000, "stable": {"version": "v1", "cluster": "a"}}"#,
                ),
                "route.canary_weight_bp: must be at most 10000 basis points (100%), got 70000",
            ),
            (
                with(
                    r#""route": {"salt": "s", "canary_weight_bp": -1, "stable": {"version": "v1", "cluster": "a"}}"#,
                ),
                "route.canary_weight_bp: must be an integer from 0 to 10000 basis points, got -1",
            ),
            (
                with(
                    r#""route": {"salt": "s", "canary_weight_bp": 5, "stable": {"version": "v1", "cluster": "a"}}"#,
                ),
                "route.canary_weight_bp: must be 0 when there is no canary",
            ),
            (
                with(
                    r#""route": {"salt": "s", "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v1", "cluster": "b"}}"#,
                ),
                "route.canary.version: must differ",
            ),
            (
                with(r#""route": {"salt": "s", "stable": {"version": "v 1", "cluster": "a"}}"#),
                "route.stable.version:",
            ),
            (
                with(r#""route": {"salt": "s", "stable": {"version": "v1", "cluster": ""}}"#),
                "route.stable.cluster:",
            ),
            (
                with(&format!(r#"{route}, "session": {{"header": "X-Session"}}"#)),
                "session.header: `X-Session` is not a lowercase header name",
            ),
            (
                with(&format!(r#"{route}, "session": {{"missing": "canary"}}"#)),
                "session.missing: unknown value `canary`, expected `stable` or `random`",
            ),
            (
                with(&format!(r#"{route}, "force": {{"token_sha256": "abc"}}"#)),
                "force.token_sha256: must be the 64 hex digits",
            ),
            (
                with(&format!(r#"{route}, "cluster_header": "x-session-id""#)),
                "cluster_header: header `x-session-id` is already used",
            ),
            (
                with(&format!(
                    r#"{route}, "telemetry": {{"headers": {{"tokens": ""}}}}"#
                )),
                "telemetry.headers.tokens:",
            ),
            (
                with(
                    r#""route": {"salt": "s", "stable": {"version": "v1", "cluster": "a"}, "segments": [{"header": "x-user", "value": "x", "canary_weight_bp": 20000}]}"#,
                ),
                "route.segments[0].canary_weight_bp: must be at most 10000",
            ),
            (r#"{"route": {}}"#.to_string(), "target: missing field"),
            (
                with(r#""route": {"stable": {"version": "v1", "cluster": "a"}}"#),
                "route.salt: missing field",
            ),
            (
                with(r#""route": {"salt": 5, "stable": {"version": "v1", "cluster": "a"}}"#),
                "route.salt: expected a string, got a number",
            ),
            (
                with(
                    r#""route": {"salt": "s", "canary_weight_bp": 2.5, "stable": {"version": "v1", "cluster": "a"}}"#,
                ),
                "route.canary_weight_bp: must be an integer",
            ),
            (
                with(
                    r#""route": {"salt": "s", "stable": {"version": "v1", "cluster": "a"}, "segments": [1]}"#,
                ),
                "route.segments[0]: expected an object, got a number",
            ),
            (
                with(
                    r#""route": {"salt": "s", "stable": {"version": "v1", "cluster": "a"}, "segments": {}}"#,
                ),
                "route.segments: expected an array, got an object",
            ),
            (
                with(&format!(r#"{route}, "telemetry": {{"strip": "yes"}}"#)),
                "telemetry.strip: expected true or false, got a string",
            ),
            (
                with(&format!(r#"{route}, "served_by": "envoy""#)),
                "served_by: `envoy` is not one of: cluster, decision",
            ),
            ("".to_string(), "not valid JSON: EOF"),
            ("[1,2]".to_string(), "expected a JSON object, got an array"),
            (
                format!("{MINIMAL} x"),
                "not valid JSON: trailing characters",
            ),
        ];
        for (json, expected) in cases {
            let message = error_of(&json);
            assert!(
                message.contains(expected),
                "for {json}\n  got: {message}\n  expected to contain: {expected}"
            );
        }
    }

    #[test]
    fn routes_document_round_trips_and_rejects_garbage() {
        let config = PluginConfig::from_json(DESIGN_EXAMPLE.as_bytes()).unwrap();
        let mut doc = RoutesDocument {
            epoch: 0,
            revision: 3,
            routes: BTreeMap::new(),
        };
        doc.routes
            .insert("support-agent".into(), config.route.clone());
        let json = serde_json::to_vec(&doc).unwrap();
        assert_eq!(RoutesDocument::from_json(&json).unwrap(), doc);
        for (bad, expected) in [
            (r#"{"routes": {}}"#, "revision: missing field"),
            (
                r#"{"revision": 1, "routes": {"a": 5}}"#,
                "routes.a: expected an object",
            ),
            (r#"{"revision": 1, "routes": {"a.b": {}}}"#, "routes.a.b:"),
            (
                r#"{"revision": 1, "routes": {"a": {"salt": "s"}}}"#,
                "routes.a.stable: missing field",
            ),
            (r#"{"revision": 1, "extra": 2}"#, "extra: unknown field"),
            (
                r#"{"revision": 1, "routes": {"a": {"revision": 9, "salt": "s", "stable": {"version": "v", "cluster": "c"}}}}"#,
                "routes.a.revision: 9 is newer",
            ),
            ("<html>", "not valid JSON"),
        ] {
            let message = RoutesDocument::from_json(bad.as_bytes())
                .unwrap_err()
                .to_string();
            assert!(message.contains(expected), "{bad}: got `{message}`");
        }
    }

    #[test]
    fn target_with_a_dot_is_refused() {
        let json = MINIMAL.replace("support-agent", "support.agent");
        assert!(error_of(&json).starts_with("target: "));
    }

    #[test]
    fn non_utf8_config_is_an_error_not_a_panic() {
        let message = PluginConfig::from_json(b"{\"target\": \"\xff\"}")
            .unwrap_err()
            .to_string();
        assert!(!message.is_empty());
    }
}
