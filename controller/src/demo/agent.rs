//! `canaryctl agent`: a demo agent backend. It applies the policy version Envoy
//! names in `x-agent-policy`, fetches that bundle from the registry, and simulates
//! an agent whose outcome, cost, tokens, tool calls, guardrail triggers and latency
//! depend on the bundle and the request class (`x-request-class`). It reports them
//! in the telemetry headers, or in trailers when the answer is streamed
//! (`x-stream: 1`).
//!
//! How a policy behaves comes from its bundle's `metadata.demo` (see
//! `envoy/policies/`); unknown fields there are ignored, missing ones default.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// How a policy performs for one request class.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(default)]
pub struct Behaviour {
    /// Share of tasks completed; the rest split into failed / abandoned / escalated.
    pub completion: f64,
    pub abandonment: f64,
    pub escalation: f64,
    pub cost_micros: f64,
    pub tokens: f64,
    pub tool_calls: f64,
    pub tool_error_rate: f64,
    pub guardrail_rate: f64,
    pub latency_ms: f64,
    pub error_rate: f64,
    /// What a judge scores this policy's answers on average (0..1).
    pub judge_score: f64,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            completion: 0.85,
            abandonment: 0.05,
            escalation: 0.03,
            cost_micros: 2_000.0,
            tokens: 800.0,
            tool_calls: 2.0,
            tool_error_rate: 0.05,
            guardrail_rate: 0.02,
            latency_ms: 120.0,
            error_rate: 0.0,
            judge_score: 0.8,
        }
    }
}

/// `metadata.demo` of a bundle: a default behaviour and per-class changes.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(default)]
pub struct DemoProfile {
    pub default: Option<Behaviour>,
    pub classes: HashMap<String, Behaviour>,
}

impl DemoProfile {
    pub fn from_bundle(bundle: &serde_json::Value) -> DemoProfile {
        serde_json::from_value(bundle["metadata"]["demo"].clone()).unwrap_or_default()
    }

    pub fn behaviour(&self, class: &str) -> Behaviour {
        self.classes
            .get(class)
            .copied()
            .or(self.default)
            .unwrap_or_default()
    }
}

/// One simulated answer.
#[derive(Debug, Clone, PartialEq)]
pub struct SimulatedAnswer {
    pub status: u16,
    pub outcome: &'static str,
    pub cost_micros: u64,
    pub tokens: u64,
    pub tool_calls: u64,
    pub tool_errors: u64,
    pub guardrail_triggers: u64,
    pub latency_ms: u64,
}

/// Draws one answer from `behaviour` with uniform numbers from `next` (pure, testable).
pub fn simulate(behaviour: &Behaviour, mut next: impl FnMut() -> f64) -> SimulatedAnswer {
    let status = if next() < behaviour.error_rate {
        500
    } else {
        200
    };
    let r = next();
    let b = behaviour;
    let outcome = if r < b.completion {
        "completed"
    } else if r < b.completion + b.abandonment {
        "abandoned"
    } else if r < b.completion + b.abandonment + b.escalation {
        "escalated"
    } else {
        "failed"
    };
    let spread = |mean: f64, u: f64| (mean * (0.5 + u)).max(0.0).round() as u64;
    let tool_calls = spread(b.tool_calls, next());
    let tool_errors = (0..tool_calls)
        .filter(|_| next() < b.tool_error_rate)
        .count() as u64;
    SimulatedAnswer {
        status,
        outcome,
        cost_micros: spread(b.cost_micros, next()),
        tokens: spread(b.tokens, next()),
        tool_calls,
        tool_errors,
        guardrail_triggers: u64::from(next() < b.guardrail_rate),
        latency_ms: spread(b.latency_ms, next()),
    }
}

#[derive(Clone)]
pub struct AgentState {
    registry: String,
    /// A token with the `policies:read` scope, for the registry.
    registry_token: Option<String>,
    client: reqwest::Client,
    profiles: Arc<Mutex<HashMap<String, DemoProfile>>>,
    rng: Arc<Mutex<u64>>,
    /// Multiplies simulated latency (0 = answer at once).
    time_scale: f64,
    /// Judges a sample of the answers and posts the scores later, if set.
    judge: Option<Arc<crate::demo::judge::Judge>>,
}

impl AgentState {
    pub fn new(
        registry: &str,
        registry_token: Option<String>,
        seed: u64,
        time_scale: f64,
    ) -> AgentState {
        AgentState {
            registry: registry.trim_end_matches('/').to_string(),
            registry_token,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
            profiles: Arc::default(),
            rng: Arc::new(Mutex::new(seed | 1)),
            time_scale,
            judge: None,
        }
    }

    /// Also act as a (simulated) LLM judge; the judge's poster is returned to be
    /// spawned.
    pub fn with_judge(mut self, judge: Arc<crate::demo::judge::Judge>) -> AgentState {
        self.judge = Some(judge);
        self
    }

    fn uniform(&self) -> f64 {
        let mut x = self.rng.lock().unwrap_or_else(|p| p.into_inner());
        *x ^= *x << 13;
        *x ^= *x >> 7;
        *x ^= *x << 17;
        (*x >> 11) as f64 / (1u64 << 53) as f64
    }

    async fn profile(&self, version: &str) -> Result<DemoProfile, String> {
        if let Some(p) = self
            .profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(version)
        {
            return Ok(p.clone());
        }
        let url = format!("{}/v1/policies/{version}", self.registry);
        let mut request = self.client.get(&url);
        if let Some(token) = &self.registry_token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .map_err(|e| format!("registry unreachable: {e}"))?;
        if !response.status().is_success() {
            return Err(format!(
                "registry answered {} for policy {version}",
                response.status()
            ));
        }
        let record: serde_json::Value = response
            .json()
            .await
            .map_err(|e| format!("bad registry answer: {e}"))?;
        let profile = DemoProfile::from_bundle(&record["bundle"]);
        self.profiles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(version.to_string(), profile.clone());
        Ok(profile)
    }
}

pub fn app(state: AgentState) -> axum::Router {
    axum::Router::new().fallback(answer).with_state(state)
}

fn text(status: StatusCode, message: String) -> Response {
    (status, message).into_response()
}

async fn answer(State(state): State<AgentState>, headers: HeaderMap) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };
    let Some(version) = header("x-agent-policy") else {
        return text(
            StatusCode::BAD_REQUEST,
            "no x-agent-policy header: route through the policy-canary filter".into(),
        );
    };
    let class = header("x-request-class").unwrap_or_else(|| "general".into());
    let profile = match state.profile(&version).await {
        Ok(profile) => profile,
        Err(e) => return text(StatusCode::BAD_GATEWAY, e),
    };
    let behaviour = profile.behaviour(&class);
    let outcome = simulate(&behaviour, || state.uniform());
    if let Some(judge) = &state.judge {
        let session = header("x-session-id").unwrap_or_default();
        let u = [state.uniform(), state.uniform(), state.uniform()];
        judge.judge(
            &session,
            &version,
            behaviour.judge_score,
            u,
            crate::units::now_ms(),
        );
    }
    let delay = (outcome.latency_ms as f64 * state.time_scale).min(30_000.0);
    if delay >= 1.0 {
        tokio::time::sleep(Duration::from_millis(delay as u64)).await;
    }
    let telemetry = [
        ("x-agent-outcome", outcome.outcome.to_string()),
        ("x-agent-cost-micros", outcome.cost_micros.to_string()),
        ("x-agent-tokens", outcome.tokens.to_string()),
        ("x-agent-tool-calls", outcome.tool_calls.to_string()),
        ("x-agent-tool-errors", outcome.tool_errors.to_string()),
        (
            "x-agent-guardrail-triggers",
            outcome.guardrail_triggers.to_string(),
        ),
        ("x-agent-safety-violations", "0".to_string()),
    ];
    let body = serde_json::json!({
        "policy": version,
        "class": class,
        "outcome": outcome.outcome,
        "answer": format!("[{version}] simulated answer for a {class} request"),
    })
    .to_string();
    let status = StatusCode::from_u16(outcome.status).unwrap_or(StatusCode::OK);
    let mut map = HeaderMap::new();
    for (name, value) in telemetry {
        if let Ok(value) = HeaderValue::from_str(&value) {
            map.insert(name, value);
        }
    }
    if header("x-stream").as_deref() == Some("1") {
        // A streamed answer knows its totals at the end: telemetry in trailers.
        let frames = vec![
            Ok::<_, std::convert::Infallible>(http_body::Frame::data(axum::body::Bytes::from(
                body,
            ))),
            Ok(http_body::Frame::trailers(map)),
        ];
        let stream = http_body_util::StreamBody::new(ReadyStream(frames.into_iter()));
        return (status, Body::new(stream)).into_response();
    }
    let mut response = (status, [("content-type", "application/json")], body).into_response();
    response.headers_mut().extend(map);
    response
}

/// A stream over frames that are all ready now.
struct ReadyStream<T>(std::vec::IntoIter<T>);

impl<T: Unpin> futures_core::Stream for ReadyStream<T> {
    type Item = T;
    fn poll_next(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<T>> {
        std::task::Poll::Ready(self.0.next())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_come_from_the_bundle_metadata() {
        let bundle = serde_json::json!({"metadata": {"demo": {
            "default": {"completion": 0.9},
            "classes": {"refund": {"completion": 0.3}}
        }}});
        let profile = DemoProfile::from_bundle(&bundle);
        assert_eq!(profile.behaviour("refund").completion, 0.3);
        assert_eq!(profile.behaviour("order_status").completion, 0.9);
        assert_eq!(
            DemoProfile::from_bundle(&serde_json::json!({})).behaviour("x"),
            Behaviour::default()
        );
        let garbage = serde_json::json!({"metadata": {"demo": "not an object"}});
        assert_eq!(
            DemoProfile::from_bundle(&garbage).behaviour("x"),
            Behaviour::default()
        );
    }

    #[test]
    fn simulated_outcomes_follow_the_behaviour() {
        let mut x = 12_345u64;
        let mut next = || {
            x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
            (x >> 11) as f64 / (1u64 << 53) as f64
        };
        let b = Behaviour {
            completion: 0.3,
            ..Behaviour::default()
        };
        let completed = (0..10_000)
            .filter(|_| simulate(&b, &mut next).outcome == "completed")
            .count();
        assert!((2_700..3_300).contains(&completed), "{completed}");
        let o = simulate(
            &Behaviour {
                error_rate: 1.0,
                ..Behaviour::default()
            },
            &mut next,
        );
        assert_eq!(o.status, 500);
        assert!(o.tool_errors <= o.tool_calls);
    }
}
