//! Metric gates of a plan: which canary-vs-stable differences roll a rollout back.
//!
//! A gate is data: a name, where its numbers come from (`Measure`: a built-in
//! ratio the filter counts, a custom metric the agent reports, or a delayed
//! signal posted to the controller) and how it is judged (`Gate`: threshold,
//! direction, floor). Defaults of the built-in gates (from the rollout guides the
//! project follows):
//!
//! | metric | rollback when canary vs stable |
//! |---|---|
//! | task completion rate | drops more than 5 points |
//! | HTTP error rate | rises more than 10% (relative) |
//! | tool call error rate | more than 3× |
//! | cost per task | more than +20% |
//! | latency P95 | more than +50% |
//! | guardrail trigger rate | more than 3× |
//! | abandonment rate | more than +10% (relative) |
//! | safety violations | any (zero tolerance, immediate) |
//!
//! and, off unless the plan names them: escalation rate (escalated / finished
//! tasks, +20%), tokens per task (+20%), turns per task (requests per finished
//! task, the conversation length, +20%).

use crate::units::Dur;
use policy_canary::check::{check_metric_name, MAX_CUSTOM_METRICS};
use policy_canary::error::{err, ConfigError};
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::collections::BTreeMap;
use std::fmt;

pub use super::threshold::Threshold;

/// A built-in measure: a ratio of the filter's own counts, or latency.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    CompletionRate,
    ErrorRate,
    ToolErrorRate,
    CostPerTask,
    LatencyP95,
    GuardrailRate,
    AbandonmentRate,
    EscalationRate,
    TokensPerTask,
    TurnsPerTask,
}

impl PartialEq<&str> for Metric {
    fn eq(&self, name: &&str) -> bool {
        self.name() == *name
    }
}

impl fmt::Display for Metric {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Metric {
    pub const ALL: [Metric; 10] = [
        Metric::CompletionRate,
        Metric::ErrorRate,
        Metric::ToolErrorRate,
        Metric::CostPerTask,
        Metric::LatencyP95,
        Metric::GuardrailRate,
        Metric::AbandonmentRate,
        Metric::EscalationRate,
        Metric::TokensPerTask,
        Metric::TurnsPerTask,
    ];

    /// The built-in metric of this name.
    pub fn from_name(name: &str) -> Option<Metric> {
        Metric::ALL.into_iter().find(|m| m.name() == name)
    }

    /// Measured from the agent's own telemetry (its quality report), not from HTTP.
    pub fn from_agent_telemetry(self) -> bool {
        !matches!(self, Metric::ErrorRate | Metric::LatencyP95)
    }

    pub fn name(self) -> &'static str {
        match self {
            Metric::CompletionRate => "completion_rate",
            Metric::ErrorRate => "error_rate",
            Metric::ToolErrorRate => "tool_error_rate",
            Metric::CostPerTask => "cost_per_task",
            Metric::LatencyP95 => "latency_p95",
            Metric::GuardrailRate => "guardrail_rate",
            Metric::AbandonmentRate => "abandonment_rate",
            Metric::EscalationRate => "escalation_rate",
            Metric::TokensPerTask => "tokens_per_task",
            Metric::TurnsPerTask => "turns_per_task",
        }
    }

    /// The default gate of this metric.
    pub fn default_gate(self) -> Gate {
        let (threshold, direction) = match self {
            Metric::CompletionRate => (Threshold::Absolute(0.05), Direction::LowerIsWorse),
            Metric::ErrorRate => (Threshold::Relative(0.10), Direction::HigherIsWorse),
            Metric::ToolErrorRate => (Threshold::Relative(2.0), Direction::HigherIsWorse),
            Metric::CostPerTask => (Threshold::Relative(0.20), Direction::HigherIsWorse),
            Metric::LatencyP95 => (Threshold::Relative(0.50), Direction::HigherIsWorse),
            Metric::GuardrailRate => (Threshold::Relative(2.0), Direction::HigherIsWorse),
            Metric::AbandonmentRate => (Threshold::Relative(0.10), Direction::HigherIsWorse),
            Metric::EscalationRate | Metric::TokensPerTask | Metric::TurnsPerTask => {
                (Threshold::Relative(0.20), Direction::HigherIsWorse)
            }
        };
        // Relative gates on rates near zero: no sample a canary gets can show "+10%
        // of 0.1%", so at least this much (absolute) degradation is allowed.
        let floor = match self {
            Metric::ErrorRate => 0.005,
            Metric::ToolErrorRate | Metric::AbandonmentRate | Metric::EscalationRate => 0.01,
            Metric::GuardrailRate => 0.01,
            _ => 0.0,
        };
        Gate {
            // The derived gates are off unless a plan names them.
            enabled: !matches!(
                self,
                Metric::EscalationRate | Metric::TokensPerTask | Metric::TurnsPerTask
            ),
            threshold,
            direction,
            floor,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Direction {
    HigherIsWorse,
    LowerIsWorse,
}

/// A plan's `worse: lower | higher`: which way a gate's metric gets worse.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Worse {
    Lower,
    Higher,
}

impl From<Worse> for Direction {
    fn from(worse: Worse) -> Direction {
        match worse {
            Worse::Lower => Direction::LowerIsWorse,
            Worse::Higher => Direction::HigherIsWorse,
        }
    }
}

/// Where a gate's numbers come from.
#[derive(Debug, Clone, PartialEq)]
pub enum Measure {
    /// One of the filter's own ratios (or latency).
    Builtin(Metric),
    /// The mean of what the agent reports as `x-agent-metric-<name>`.
    Reported(String),
    /// The mean of the signals of this name posted to `POST /v1/signals`; a pass
    /// counts only answers older than `delay`.
    Signal { name: String, delay: Dur },
}

/// A gate of a plan: its name, what it measures and how it judges.
#[derive(Debug, Clone, PartialEq)]
pub struct NamedGate {
    pub name: String,
    pub measure: Measure,
    pub gate: Gate,
}

/// One metric's effective gate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Gate {
    pub enabled: bool,
    pub threshold: Threshold,
    pub direction: Direction,
    /// Smallest allowed degradation of a relative gate, in the metric's units.
    pub floor: f64,
}

/// A plan's changes to one gate; what it leaves out keeps the metric's default.
/// A gate that is not built in also says where its numbers come from (`metric`
/// or `signal`), which way is worse and its threshold.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    /// `lower` or `higher`: the same as `direction`, as people say it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub worse: Option<Worse>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
    /// A custom metric the agent reports (`x-agent-metric-<metric>`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metric: Option<String>,
    /// A signal posted to `POST /v1/signals` under this name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// How late a signal gate's signals arrive: it passes only over answers older.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub delay: Option<Dur>,
}

impl GateSpec {
    fn direction(&self) -> Option<Direction> {
        self.direction.or(self.worse.map(Direction::from))
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SafetyGate {
    /// Any canary safety violation rolls back at once.
    pub enabled: bool,
}

impl Default for SafetyGate {
    fn default() -> Self {
        SafetyGate { enabled: true }
    }
}

/// The `gates` section of a plan: changes to the built-in gates, the plan's own
/// gates, and the safety gate.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Gates {
    specs: BTreeMap<String, GateSpec>,
    pub safety_violations: SafetyGate,
}

impl Gates {
    /// The plan's changes to a gate (empty when it has none).
    pub fn spec(&self, name: &str) -> GateSpec {
        self.specs.get(name).cloned().unwrap_or_default()
    }

    /// The plan's changes to a gate, to edit (made empty the first time).
    pub fn spec_mut(&mut self, name: &str) -> &mut GateSpec {
        self.specs.entry(name.to_string()).or_default()
    }

    /// The effective gate of a built-in metric: the plan's changes over its
    /// default (a derived gate the plan names is on unless it says otherwise).
    pub fn gate(&self, metric: Metric) -> Gate {
        let default = metric.default_gate();
        let named = self.specs.get(metric.name());
        let spec = named.cloned().unwrap_or_default();
        Gate {
            enabled: spec.enabled.unwrap_or(default.enabled || named.is_some()),
            threshold: spec.threshold.unwrap_or(default.threshold),
            direction: spec.direction().unwrap_or(default.direction),
            floor: spec.floor.unwrap_or(default.floor).max(0.0),
        }
    }

    /// Every gate, built-in ones first (in `Metric::ALL` order), then the plan's
    /// own by name. Enabled or not.
    pub fn all(&self) -> Vec<NamedGate> {
        let builtin = Metric::ALL.into_iter().map(|m| NamedGate {
            name: m.name().to_string(),
            measure: Measure::Builtin(m),
            gate: self.gate(m),
        });
        let own = self.specs.iter().filter_map(|(name, spec)| {
            if Metric::from_name(name).is_some() {
                return None;
            }
            let measure = match (&spec.metric, &spec.signal) {
                (Some(metric), _) => Measure::Reported(metric.clone()),
                (None, Some(signal)) => Measure::Signal {
                    name: signal.clone(),
                    delay: spec.delay.unwrap_or_default(),
                },
                (None, None) => return None,
            };
            Some(NamedGate {
                name: name.clone(),
                measure,
                gate: Gate {
                    enabled: spec.enabled.unwrap_or(true),
                    threshold: spec.threshold.unwrap_or(Threshold::Absolute(0.0)),
                    direction: spec.direction().unwrap_or(Direction::HigherIsWorse),
                    floor: spec.floor.unwrap_or(0.0).max(0.0),
                },
            })
        });
        builtin.chain(own).collect()
    }

    /// The enabled gates.
    pub fn enabled(&self) -> Vec<NamedGate> {
        self.all().into_iter().filter(|g| g.gate.enabled).collect()
    }

    /// The custom metrics the enabled gates read, each once: what the filter must
    /// count (the route table's `metrics`).
    pub fn reported_metrics(&self) -> Vec<String> {
        let mut names: Vec<String> = self
            .enabled()
            .into_iter()
            .filter_map(|g| match g.measure {
                Measure::Reported(name) => Some(name),
                _ => None,
            })
            .collect();
        names.sort();
        names.dedup();
        names
    }

    /// Checks what serde cannot: a plan's own gate says where its numbers come
    /// from, which way is worse and its threshold; a built-in one does not name a
    /// source; at most `MAX_CUSTOM_METRICS` custom metrics.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (name, spec) in &self.specs {
            let path = |field: &str| format!("gates.{name}.{field}");
            if spec.direction.is_some() && spec.worse.is_some() {
                return Err(err(path("worse"), "give `worse` or `direction`, not both"));
            }
            if let Some(floor) = spec.floor {
                if !(floor.is_finite() && floor >= 0.0) {
                    return Err(err(
                        path("floor"),
                        format!("must be a non-negative number, got {floor}"),
                    ));
                }
            }
            if Metric::from_name(name).is_some() {
                for (field, set) in [
                    ("metric", spec.metric.is_some()),
                    ("signal", spec.signal.is_some()),
                    ("delay", spec.delay.is_some()),
                ] {
                    if set {
                        return Err(err(
                            path(field),
                            format!("`{name}` is built in: the filter counts it; remove `{field}`"),
                        ));
                    }
                }
                continue;
            }
            check_metric_name(&format!("gates.{name}"), name)?;
            match (&spec.metric, &spec.signal) {
                (None, None) => {
                    return Err(err(
                        format!("gates.{name}"),
                        format!(
                            "`{name}` is not a built-in gate ({}): say where its numbers come \
                             from, `metric: NAME` (the agent's x-agent-metric-NAME) or \
                             `signal: NAME` (POST /v1/signals)",
                            Metric::ALL.map(Metric::name).join(", ")
                        ),
                    ))
                }
                (Some(_), Some(_)) => {
                    return Err(err(
                        path("signal"),
                        "a gate reads a `metric` or a `signal`, not both",
                    ))
                }
                (Some(metric), None) => {
                    check_metric_name(&path("metric"), metric)?;
                    if spec.delay.is_some() {
                        return Err(err(
                            path("delay"),
                            "only a signal gate waits: the agent reports its metric with the answer",
                        ));
                    }
                }
                (None, Some(signal)) => {
                    check_metric_name(&path("signal"), signal)?;
                    if spec.delay.is_none() {
                        return Err(err(
                            path("delay"),
                            "a signal gate says how late its signals arrive (e.g. `delay: 2m`): \
                             it passes only over answers older than that",
                        ));
                    }
                }
            }
            if spec.direction().is_none() {
                return Err(err(path("worse"), "needed: `lower` or `higher`"));
            }
            if spec.threshold.is_none() {
                return Err(err(
                    path("threshold"),
                    "needed: an absolute number (0.05) or a relative change (\"+10%\")",
                ));
            }
        }
        let metrics = self.reported_metrics();
        if metrics.len() > MAX_CUSTOM_METRICS {
            return Err(err(
                "gates",
                format!(
                    "at most {MAX_CUSTOM_METRICS} custom metrics per target, got {}: {}",
                    metrics.len(),
                    metrics.join(", ")
                ),
            ));
        }
        Ok(())
    }
}

impl Serialize for Gates {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut map = s.serialize_map(Some(self.specs.len() + 1))?;
        for (name, spec) in &self.specs {
            map.serialize_entry(name, spec)?;
        }
        map.serialize_entry("safety_violations", &self.safety_violations)?;
        map.end()
    }
}

impl<'de> Deserialize<'de> for Gates {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> de::Visitor<'de> for V {
            type Value = Gates;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a map of gate names to gates")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<Gates, A::Error> {
                let mut gates = Gates::default();
                while let Some(name) = map.next_key::<String>()? {
                    if name == "safety_violations" {
                        gates.safety_violations = map.next_value()?;
                    } else {
                        let spec: GateSpec = map.next_value()?;
                        gates.specs.insert(name, spec);
                    }
                }
                Ok(gates)
            }
        }
        d.deserialize_map(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_changes_override_defaults_field_by_field() {
        let gates: Gates = serde_json::from_str(
            r#"{"error_rate": {"threshold": "+25%"}, "latency_p95": {"enabled": false}}"#,
        )
        .unwrap();
        gates.validate().unwrap();
        let error = gates.gate(Metric::ErrorRate);
        assert_eq!(
            (error.threshold, error.direction),
            (Threshold::Relative(0.25), Direction::HigherIsWorse)
        );
        assert!(!gates.gate(Metric::LatencyP95).enabled);
        assert_eq!(
            gates.gate(Metric::CompletionRate),
            Metric::CompletionRate.default_gate()
        );
        assert!(gates.safety_violations.enabled);
        let unknown: Gates = serde_json::from_str(r#"{"error_rte": {}}"#).unwrap();
        assert!(unknown
            .validate()
            .unwrap_err()
            .to_string()
            .contains("not a built-in gate"));
        // The derived gates are off until named.
        assert!(!gates.gate(Metric::EscalationRate).enabled);
        let named: Gates = serde_json::from_str(r#"{"escalation_rate": {}}"#).unwrap();
        let escalation = named.gate(Metric::EscalationRate);
        assert!(escalation.enabled);
        assert_eq!(escalation.threshold, Threshold::Relative(0.2));
    }

    #[test]
    fn a_plans_own_gates_say_where_their_numbers_come_from() {
        let gates: Gates = serde_json::from_str(
            r#"{"judge_score": {"metric": "judge_score", "worse": "lower", "threshold": 0.05},
                "csat": {"signal": "csat", "worse": "lower", "threshold": 0.3, "delay": "2m"},
                "escalation_rate": {"threshold": "+20%"}}"#,
        )
        .unwrap();
        gates.validate().unwrap();
        let enabled = gates.enabled();
        let by_name = |n: &str| enabled.iter().find(|g| g.name == n).unwrap().clone();
        assert_eq!(
            by_name("judge_score").measure,
            Measure::Reported("judge_score".into())
        );
        assert_eq!(
            by_name("judge_score").gate.direction,
            Direction::LowerIsWorse
        );
        assert_eq!(
            by_name("csat").measure,
            Measure::Signal {
                name: "csat".into(),
                delay: Dur::secs(120)
            }
        );
        assert_eq!(gates.reported_metrics(), ["judge_score"]);
        // Round trip, as plans are stored.
        let text = serde_json::to_string(&gates).unwrap();
        assert_eq!(serde_json::from_str::<Gates>(&text).unwrap(), gates);
        for (json, expected) in [
            (
                r#"{"judge": {"worse": "lower", "threshold": 1}}"#,
                "gates.judge: `judge` is not a built-in gate",
            ),
            (
                r#"{"judge": {"metric": "j", "signal": "j", "worse": "lower", "threshold": 1}}"#,
                "gates.judge.signal:",
            ),
            (
                r#"{"judge": {"metric": "j", "threshold": 1}}"#,
                "gates.judge.worse: needed",
            ),
            (
                r#"{"judge": {"metric": "j", "worse": "lower"}}"#,
                "gates.judge.threshold: needed",
            ),
            (
                r#"{"judge": {"metric": "J-1", "worse": "lower", "threshold": 1}}"#,
                "gates.judge.metric:",
            ),
            (
                r#"{"csat": {"signal": "csat", "worse": "lower", "threshold": 1}}"#,
                "gates.csat.delay:",
            ),
            (
                r#"{"judge": {"metric": "j", "worse": "lower", "threshold": 1, "delay": "1m"}}"#,
                "gates.judge.delay:",
            ),
            (
                r#"{"error_rate": {"metric": "x"}}"#,
                "gates.error_rate.metric: `error_rate` is built in",
            ),
            (
                r#"{"error_rate": {"worse": "lower", "direction": "higher_is_worse"}}"#,
                "gates.error_rate.worse:",
            ),
            (
                r#"{"Judge!": {"metric": "j", "worse": "lower", "threshold": 1}}"#,
                "gates.Judge!:",
            ),
        ] {
            let gates: Gates = serde_json::from_str(json).unwrap();
            let message = gates.validate().unwrap_err().to_string();
            assert!(message.starts_with(expected), "{json}: {message}");
        }
        let many: String = (0..9)
            .map(|i| format!(r#""g{i}": {{"metric": "m{i}", "worse": "lower", "threshold": 1}}"#))
            .collect::<Vec<_>>()
            .join(",");
        let gates: Gates = serde_json::from_str(&format!("{{{many}}}")).unwrap();
        assert!(gates
            .validate()
            .unwrap_err()
            .to_string()
            .contains("at most 8 custom metrics"));
        assert!(serde_json::from_str::<Gates>(r#"{"judge": {"metrik": "j"}}"#).is_err());
    }
}
