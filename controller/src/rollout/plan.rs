//! Rollout plans: what to roll out, in which stages, under which rules.

use crate::document::parse_document;
use crate::rollout::gates::Gates;
use crate::units::{Dur, Weight};
use policy_canary::check::{
    check_header, check_name, check_salt, check_segment_count, check_segment_value, check_version,
};
use policy_canary::error::{err, ConfigError};
use policy_canary::route::PolicyBackend;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InconclusiveAction {
    /// Stop and wait for a person.
    #[default]
    Pause,
    /// Send everything back to stable.
    Rollback,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    pub weight: Weight,
    #[serde(default)]
    pub min_duration: Dur,
    #[serde(default)]
    pub min_requests: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SegmentRule {
    pub header: String,
    pub value: String,
    pub weight: Weight,
}

/// Between `start` and `end` (UTC, `HH:MM`, wrapping past midnight when end < start)
/// the canary weight is at most `max_weight`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TimeWindow {
    pub start: String,
    pub end: String,
    pub max_weight: Weight,
}

impl TimeWindow {
    fn minutes(text: &str) -> Option<u32> {
        let (h, m) = text.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        (h < 24 && m < 60).then_some(h * 60 + m)
    }

    /// Whether the window holds at `now_ms` (milliseconds since the epoch, UTC).
    pub fn contains(&self, now_ms: i64) -> bool {
        let (Some(start), Some(end)) = (Self::minutes(&self.start), Self::minutes(&self.end))
        else {
            return false;
        };
        let minute = (now_ms.rem_euclid(86_400_000) / 60_000) as u32;
        if start <= end {
            (start..end).contains(&minute)
        } else {
            minute >= start || minute < end
        }
    }
}

/// A rollout plan, as written by a person (YAML or JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutPlan {
    pub target: String,
    pub stable: PolicyBackend,
    pub canary: PolicyBackend,
    #[serde(default = "default_stages")]
    pub stages: Vec<Stage>,
    /// Changes to the default metric gates.
    #[serde(default)]
    pub gates: Gates,
    #[serde(default = "default_interval")]
    pub analysis_interval: Dur,
    /// Consecutive failed checks before an automatic rollback.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// After this long in one stage without a decision, `on_inconclusive` applies.
    #[serde(default = "default_max_stage")]
    pub max_stage_duration: Dur,
    #[serde(default)]
    pub on_inconclusive: InconclusiveAction,
    /// How long a stage may go without trustworthy evidence (every source down,
    /// erroring or lagging) before `on_evidence_loss` applies.
    #[serde(default = "default_evidence_timeout")]
    pub evidence_timeout: Dur,
    /// What to do then; default: roll back past the first stage, pause in it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_evidence_loss: Option<InconclusiveAction>,
    /// When neither version reports agent telemetry in a stage window, the gates
    /// measured from it are inconclusive instead of not applicable: a stage cannot
    /// pass on the HTTP gates alone (say, when a proxy strips the telemetry headers).
    #[serde(default)]
    pub require_telemetry: bool,
    /// Probability of rolling back a canary no worse than stable, per rollout
    /// (split over stages and gates).
    #[serde(default = "default_false_rollback")]
    pub false_rollback: f64,
    /// Probability of passing a canary exactly at a gate's threshold, per gate.
    #[serde(default = "default_false_promotion")]
    pub false_promotion: f64,
    #[serde(default)]
    pub segments: Vec<SegmentRule>,
    #[serde(default)]
    pub windows: Vec<TimeWindow>,
    /// Generated when absent; a salt is never reused by another rollout.
    #[serde(default)]
    pub salt: Option<String>,
}

fn default_stages() -> Vec<Stage> {
    [
        Weight(100),
        Weight(500),
        Weight(2_500),
        Weight(5_000),
        Weight::FULL,
    ]
    .into_iter()
    .map(|weight| Stage {
        weight,
        min_duration: Dur::secs(600),
        min_requests: if weight == Weight::FULL { 0 } else { 500 },
    })
    .collect()
}
/// Default probability of a false automatic rollback per rollout, split over stages
/// and gates (`false_rollback`).
pub const FALSE_ROLLBACK_BUDGET: f64 = 0.01;
/// Default probability that a canary exactly at a gate's threshold passes that gate
/// (`false_promotion`), per gate and stage: no split, since a bad canary must pass
/// the very gate it breaks.
pub const FALSE_PROMOTION_BUDGET: f64 = 0.05;

fn default_false_rollback() -> f64 {
    FALSE_ROLLBACK_BUDGET
}
fn default_false_promotion() -> f64 {
    FALSE_PROMOTION_BUDGET
}
fn default_interval() -> Dur {
    Dur::secs(30)
}
fn default_failure_threshold() -> u32 {
    2
}
fn default_evidence_timeout() -> Dur {
    Dur::secs(120)
}
fn default_max_stage() -> Dur {
    Dur::secs(4 * 3600)
}

impl RolloutPlan {
    pub fn parse(text: &str) -> Result<RolloutPlan, ConfigError> {
        let plan: RolloutPlan = parse_document(text)?;
        plan.validate()?;
        Ok(plan)
    }

    /// Checks everything that needs no store (policy versions are checked against
    /// the registry when the rollout starts).
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_name("target", &self.target)?;
        for (prefix, backend) in [("stable", &self.stable), ("canary", &self.canary)] {
            check_version(&format!("{prefix}.version"), &backend.version)?;
            check_name(&format!("{prefix}.cluster"), &backend.cluster)?;
        }
        if self.stable.version == self.canary.version {
            return Err(err("canary.version", "must differ from stable.version"));
        }
        if self.stable.cluster == self.canary.cluster {
            return Err(err(
                "canary.cluster",
                format!(
                    "must differ from stable.cluster `{}`: the canary needs its own backend",
                    self.stable.cluster
                ),
            ));
        }
        if self.stages.is_empty() {
            return Err(err("stages", "at least one stage is needed"));
        }
        for (i, stage) in self.stages.iter().enumerate() {
            if stage.weight.bp() == 0 {
                return Err(err(format!("stages[{i}].weight"), "must be above 0%"));
            }
            if i > 0 && stage.weight <= self.stages[i - 1].weight {
                return Err(err(
                    format!("stages[{i}].weight"),
                    format!(
                        "weights must increase: {} follows {}",
                        stage.weight,
                        self.stages[i - 1].weight
                    ),
                ));
            }
        }
        if self.analysis_interval.0.is_zero() {
            return Err(err("analysis_interval", "must be above 0"));
        }
        if self.failure_threshold == 0 {
            return Err(err("failure_threshold", "must be at least 1"));
        }
        for (field, value) in [
            ("false_rollback", self.false_rollback),
            ("false_promotion", self.false_promotion),
        ] {
            if !(value > 0.0 && value <= 0.2) {
                return Err(err(
                    field,
                    format!("must be a probability above 0 and at most 0.2, got {value}"),
                ));
            }
        }
        check_segment_count("segments", self.segments.len())?;
        for (i, segment) in self.segments.iter().enumerate() {
            check_header(&format!("segments[{i}].header"), &segment.header)?;
            check_segment_value(&format!("segments[{i}].value"), &segment.value)?;
        }
        for (i, window) in self.windows.iter().enumerate() {
            for (field, value) in [("start", &window.start), ("end", &window.end)] {
                if TimeWindow::minutes(value).is_none() {
                    return Err(err(
                        format!("windows[{i}].{field}"),
                        format!("`{value}` is not a UTC time of day (HH:MM)"),
                    ));
                }
            }
        }
        self.gates.validate()?;
        if let Some(salt) = &self.salt {
            if salt.is_empty() {
                return Err(err("salt", "must not be empty"));
            }
            check_salt("salt", salt)?;
        }
        Ok(())
    }

    /// The canary weight of `stage` at `now_ms`, capped by any active time window.
    pub fn effective_weight(&self, stage: usize, now_ms: i64) -> Weight {
        let weight = self.stages.get(stage).map_or(Weight(0), |s| s.weight);
        self.windows
            .iter()
            .filter(|w| w.contains(now_ms))
            .map(|w| w.max_weight)
            .fold(weight, Weight::min)
    }

    /// The canary weights of `stage` from `from_ms` to `to_ms`, as (start, weight)
    /// of each constant-weight period, oldest first: time windows start and end
    /// on whole minutes, so the weight can change only there.
    pub fn weight_periods(&self, stage: usize, from_ms: i64, to_ms: i64) -> Vec<(i64, Weight)> {
        let mut periods = vec![(from_ms, self.effective_weight(stage, from_ms))];
        let mut at = from_ms;
        // Every window boundary after `at`, as the next such minute of the day.
        let boundaries: Vec<i64> = self
            .windows
            .iter()
            .flat_map(|w| [TimeWindow::minutes(&w.start), TimeWindow::minutes(&w.end)])
            .flatten()
            .map(|minute| i64::from(minute) * 60_000)
            .collect();
        while !boundaries.is_empty() && periods.len() < 10_000 {
            let next = boundaries
                .iter()
                .map(|offset| {
                    let day = at.div_euclid(86_400_000) * 86_400_000;
                    let candidate = day + offset;
                    if candidate > at {
                        candidate
                    } else {
                        candidate + 86_400_000
                    }
                })
                .min()
                .unwrap_or(i64::MAX);
            if next > to_ms {
                break;
            }
            at = next;
            let weight = self.effective_weight(stage, at);
            if periods.last().is_some_and(|(_, w)| *w != weight) {
                periods.push((at, weight));
            }
        }
        periods
    }

    /// What a stage does once its evidence has been missing for `evidence_timeout`.
    pub fn evidence_loss_action(&self, stage: usize) -> InconclusiveAction {
        self.on_evidence_loss.unwrap_or(if stage == 0 {
            InconclusiveAction::Pause
        } else {
            InconclusiveAction::Rollback
        })
    }

    /// Whether entering `stage` completes the rollout: a 100% stage.
    pub fn is_final_weight(&self, stage: usize) -> bool {
        self.stages
            .get(stage)
            .is_some_and(|s| s.weight == Weight::FULL)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every example plan and policy in `envoy/` is one the controller accepts.
    #[test]
    fn shipped_plans_and_policies_parse() {
        let envoy = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../envoy");
        let mut plans = 0;
        for entry in std::fs::read_dir(envoy.join("plans")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            RolloutPlan::parse(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            plans += 1;
        }
        let mut policies = 0;
        for entry in std::fs::read_dir(envoy.join("policies")).unwrap() {
            let path = entry.unwrap().path();
            let text = std::fs::read_to_string(&path).unwrap();
            crate::registry::PolicyBundle::parse(&text)
                .unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            policies += 1;
        }
        assert!(
            plans >= 4 && policies >= 3,
            "{plans} plans, {policies} policies"
        );
    }

    const PLAN: &str = r#"
target: support-agent
stable: {version: v2.3.1, cluster: agent_stable}
canary: {version: v2.4.0, cluster: agent_canary}
stages:
  - {weight: 1%, min_duration: 10m, min_requests: 500}
  - {weight: 5%, min_duration: 10m}
  - {weight: 100%}
segments:
  - {header: x-user-group, value: internal, weight: 100%}
windows:
  - {start: "02:00", end: "06:00", max_weight: 50%}
  - {start: "22:00", end: "01:00", max_weight: 2%}
gates:
  completion_rate: {threshold: 3 points}
  cost_per_task: {enabled: false}
"#;

    fn error_of(text: &str) -> String {
        RolloutPlan::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn parses_yaml_and_json_with_defaults() {
        let plan = RolloutPlan::parse(PLAN).unwrap();
        assert_eq!(plan.stages.len(), 3);
        assert_eq!(plan.stages[0].weight, Weight(100));
        assert_eq!(plan.failure_threshold, 2);
        assert_eq!(plan.on_inconclusive, InconclusiveAction::Pause);
        let completion = plan
            .gates
            .gate(crate::rollout::gates::Metric::CompletionRate);
        assert_eq!(
            completion.threshold,
            crate::rollout::gates::Threshold::Absolute(0.03)
        );
        assert!(
            !plan
                .gates
                .gate(crate::rollout::gates::Metric::CostPerTask)
                .enabled
        );
        let json = serde_json::to_string(&plan).unwrap();
        assert_eq!(RolloutPlan::parse(&json).unwrap(), plan);
        let minimal = RolloutPlan::parse(
            r#"{"target": "t", "stable": {"version": "a", "cluster": "c1"}, "canary": {"version": "b", "cluster": "c2"}}"#,
        )
        .unwrap();
        let weights: Vec<u16> = minimal.stages.iter().map(|s| s.weight.bp()).collect();
        assert_eq!(weights, vec![100, 500, 2_500, 5_000, 10_000]);
    }

    #[test]
    fn bad_plans_name_the_field() {
        let cases = [
            (
                PLAN.replace("min_requests: 500", "min_request: 500"),
                "stages[0].min_request: unknown field `min_request`",
            ),
            (
                PLAN.replace("weight: 5%", "weight: 0.5%"),
                "stages[1].weight: weights must increase: 0.5% follows 1%",
            ),
            (
                PLAN.replace("- {weight: 100%}", "- {weight: 150%}"),
                "stages[2].weight: weight must be at most 100%",
            ),
            (
                PLAN.replace(
                    "min_duration: 10m, min_requests",
                    "min_duration: -5m, min_requests",
                ),
                "stages[0].min_duration: duration `-5m` is negative",
            ),
            (
                PLAN.replace("v2.4.0", "v2.3.1"),
                "canary.version: must differ",
            ),
            (
                PLAN.replace("agent_canary", "agent canary"),
                "canary.cluster:",
            ),
            (
                PLAN.replace("agent_canary", "agent_stable"),
                "canary.cluster: must differ from stable.cluster `agent_stable`",
            ),
            (PLAN.replace("\"02:00\"", "\"25:00\""), "windows[0].start:"),
            (
                PLAN.replace("target: support-agent", "target: support.agent"),
                "target:",
            ),
            (
                PLAN.replace("x-user-group", "X-User"),
                "segments[0].header:",
            ),
            (PLAN.replace("stages:", "stagez:"), "unknown field `stagez`"),
            (
                PLAN.replace("threshold: 3 points", "threshold: lots"),
                "gates.completion_rate.threshold: `lots` is not a threshold",
            ),
            (
                PLAN.replace("cost_per_task:", "cost_per_tsk:"),
                "gates.cost_per_tsk: `cost_per_tsk` is not a built-in gate (completion_rate,",
            ),
            ("[1, 2]".to_string(), "invalid type"),
            ("{".to_string(), "not valid JSON"),
            ("target: [".to_string(), "not valid YAML"),
        ];
        for (text, expected) in cases {
            let message = error_of(&text);
            assert!(
                message.contains(expected),
                "got `{message}`, expected `{expected}`"
            );
        }
    }

    #[test]
    fn windows_cap_the_weight() {
        let plan = RolloutPlan::parse(PLAN).unwrap();
        let at = |h: i64, m: i64| 20_000 * 86_400_000 + (h * 60 + m) * 60_000;
        assert_eq!(plan.effective_weight(2, at(3, 0)), Weight(5_000));
        assert_eq!(plan.effective_weight(2, at(6, 0)), Weight(10_000));
        assert_eq!(plan.effective_weight(0, at(3, 0)), Weight(100));
        assert_eq!(
            plan.effective_weight(2, at(23, 30)),
            Weight(200),
            "wraps past midnight"
        );
        assert_eq!(plan.effective_weight(2, at(0, 59)), Weight(200));
        assert_eq!(plan.effective_weight(2, at(1, 0)), Weight(10_000));
        // The periods between two times: each change of weight starts one.
        assert_eq!(
            plan.weight_periods(2, at(1, 30), at(7, 0)),
            vec![
                (at(1, 30), Weight(10_000)),
                (at(2, 0), Weight(5_000)),
                (at(6, 0), Weight(10_000))
            ]
        );
        assert_eq!(
            plan.weight_periods(2, at(6, 30), at(7, 0)),
            vec![(at(6, 30), Weight(10_000))]
        );
        assert!(plan.is_final_weight(2) && !plan.is_final_weight(1));
    }
}
