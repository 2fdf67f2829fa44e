//! Metric gates of a plan: which canary-vs-stable differences roll a rollout back.
//!
//! Defaults (from the rollout guides the project follows):
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

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// A compared metric.
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
    pub const ALL: [Metric; 7] = [
        Metric::CompletionRate,
        Metric::ErrorRate,
        Metric::ToolErrorRate,
        Metric::CostPerTask,
        Metric::LatencyP95,
        Metric::GuardrailRate,
        Metric::AbandonmentRate,
    ];

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
        };
        // Relative gates on rates near zero: no sample a canary gets can show "+10%
        // of 0.1%", so at least this much (absolute) degradation is allowed.
        let floor = match self {
            Metric::ErrorRate => 0.005,
            Metric::ToolErrorRate | Metric::AbandonmentRate => 0.01,
            Metric::GuardrailRate => 0.01,
            _ => 0.0,
        };
        Gate {
            enabled: true,
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

/// How far the canary may be worse than stable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// In the metric's own units (0.05 = 5 points of a rate).
    Absolute(f64),
    /// As a fraction of stable's value (0.2 = +20%, 2.0 = 3×).
    Relative(f64),
}

impl Threshold {
    /// `"5 points"`, `"5pp"`, `"+20%"`, `"20%"`, `"3x"`, `"0.05"` (absolute).
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let t = text.trim().trim_start_matches('+');
        let number = |s: &str| -> Result<f64, String> {
            let v: f64 = s.trim().parse().map_err(|_| {
                format!("`{text}` is not a threshold (write e.g. \"5 points\", \"+20%\" or \"3x\")")
            })?;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("threshold `{text}` must be a non-negative number"))
            }
        };
        if let Some(points) = t
            .strip_suffix("points")
            .or_else(|| t.strip_suffix("point"))
            .or_else(|| t.strip_suffix("pp"))
        {
            return Ok(Threshold::Absolute(number(points)? / 100.0));
        }
        if let Some(percent) = t.strip_suffix('%') {
            return Ok(Threshold::Relative(number(percent)? / 100.0));
        }
        if let Some(times) = t.strip_suffix(['x', '×']) {
            let times = number(times)?;
            if times < 1.0 {
                return Err(format!("threshold `{text}` must be at least 1x"));
            }
            return Ok(Threshold::Relative(times - 1.0));
        }
        number(t).map(Threshold::Absolute)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Threshold::Absolute(v) => write!(f, "{} points", trim(v * 100.0)),
            Threshold::Relative(v) if v >= 1.0 => write!(f, "{}x", trim(v + 1.0)),
            Threshold::Relative(v) => write!(f, "+{}%", trim(v * 100.0)),
        }
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Threshold;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a threshold such as \"5 points\", \"+20%\" or \"3x\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold, E> {
                Threshold::parse(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Threshold, E> {
                Threshold::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Threshold, E> {
                Threshold::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Threshold, E> {
                Threshold::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
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
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GateSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threshold: Option<Threshold>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub direction: Option<Direction>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub floor: Option<f64>,
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

/// The `gates` section of a plan.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Gates {
    pub completion_rate: GateSpec,
    pub error_rate: GateSpec,
    pub tool_error_rate: GateSpec,
    pub cost_per_task: GateSpec,
    pub latency_p95: GateSpec,
    pub guardrail_rate: GateSpec,
    pub abandonment_rate: GateSpec,
    pub safety_violations: SafetyGate,
}

impl Gates {
    pub fn spec(&self, metric: Metric) -> &GateSpec {
        match metric {
            Metric::CompletionRate => &self.completion_rate,
            Metric::ErrorRate => &self.error_rate,
            Metric::ToolErrorRate => &self.tool_error_rate,
            Metric::CostPerTask => &self.cost_per_task,
            Metric::LatencyP95 => &self.latency_p95,
            Metric::GuardrailRate => &self.guardrail_rate,
            Metric::AbandonmentRate => &self.abandonment_rate,
        }
    }

    /// The effective gate: the plan's changes over the metric's default.
    pub fn gate(&self, metric: Metric) -> Gate {
        let default = metric.default_gate();
        let spec = self.spec(metric);
        Gate {
            enabled: spec.enabled.unwrap_or(default.enabled),
            threshold: spec.threshold.unwrap_or(default.threshold),
            direction: spec.direction.unwrap_or(default.direction),
            floor: spec.floor.unwrap_or(default.floor).max(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_as_people_write_them() {
        let cases = [
            ("5 points", Threshold::Absolute(0.05)),
            ("5pp", Threshold::Absolute(0.05)),
            ("+20%", Threshold::Relative(0.2)),
            ("10%", Threshold::Relative(0.1)),
            ("3x", Threshold::Relative(2.0)),
            ("0.05", Threshold::Absolute(0.05)),
        ];
        for (text, expected) in cases {
            let got = Threshold::parse(text).unwrap();
            match (got, expected) {
                (Threshold::Absolute(a), Threshold::Absolute(b))
                | (Threshold::Relative(a), Threshold::Relative(b)) => {
                    assert!((a - b).abs() < 1e-12, "{text}")
                }
                _ => panic!("{text}: {got:?}"),
            }
        }
        for bad in ["-5%", "lots", "0.5x", "NaN"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Threshold::Relative(2.0).to_string(), "3x");
        assert_eq!(Threshold::Relative(0.2).to_string(), "+20%");
        assert_eq!(Threshold::Absolute(0.05).to_string(), "5 points");
    }

    #[test]
    fn plan_changes_override_defaults_field_by_field() {
        let gates: Gates = serde_json::from_str(
            r#"{"error_rate": {"threshold": "+25%"}, "latency_p95": {"enabled": false}}"#,
        )
        .unwrap();
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
        assert!(serde_json::from_str::<Gates>(r#"{"error_rte": {}}"#).is_err());
    }
}
