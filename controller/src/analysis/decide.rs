//! What a stage does after a check: hold, advance, roll back, or (past its maximum
//! duration) follow the plan's `on_inconclusive`.

use super::{Analysis, GateVerdict};
use crate::rollout::plan::{InconclusiveAction, RolloutPlan};
use crate::rollout::Action;

/// What the stage does after a check.
#[derive(Debug, Clone, PartialEq)]
pub enum StageDecision {
    Hold,
    Advance(String),
    Rollback(String),
    /// Stop and wait for a person.
    Pause(String),
    Inconclusive(String),
}

/// Decides a stage from one check's analysis; returns the decision and the updated
/// count of consecutive breaching checks.
pub fn decide(
    plan: &RolloutPlan,
    stage: usize,
    elapsed_ms: i64,
    analysis: &Analysis,
    consecutive_failures: u32,
) -> (StageDecision, u32) {
    if analysis.safety.verdict == GateVerdict::Breach {
        return (
            StageDecision::Rollback(format!(
                "safety_violations: {} on the canary (zero tolerance)",
                analysis.safety.canary
            )),
            consecutive_failures + 1,
        );
    }
    let breaches = analysis.breaches();
    if !breaches.is_empty() {
        let failures = consecutive_failures + 1;
        let names: Vec<String> = breaches
            .iter()
            .map(|c| format!("{} {} (threshold {})", c.metric, c.change, c.threshold))
            .collect();
        if failures >= plan.failure_threshold {
            return (
                StageDecision::Rollback(format!(
                    "gate breached in {failures} consecutive checks: {}",
                    names.join(", ")
                )),
                failures,
            );
        }
        return (StageDecision::Hold, failures);
    }
    let Some(spec) = plan.stages.get(stage) else {
        return (StageDecision::Hold, 0);
    };
    let waited = elapsed_ms >= spec.min_duration.millis();
    let enough = analysis.canary_requests >= spec.min_requests as f64;
    if waited && enough && analysis.all_pass() {
        return (
            StageDecision::Advance(format!(
                "stage {} passed every gate with {} canary requests",
                stage + 1,
                analysis.canary_requests
            )),
            0,
        );
    }
    if elapsed_ms >= plan.max_stage_duration.millis() {
        let open: Vec<&str> = analysis
            .comparisons
            .iter()
            .filter(|c| c.verdict == GateVerdict::Inconclusive)
            .map(|c| c.metric.as_str())
            .collect();
        return (
            StageDecision::Inconclusive(format!(
                "no decision after {}: {} canary requests of {} needed, inconclusive: {}",
                plan.max_stage_duration,
                analysis.canary_requests,
                spec.min_requests,
                if open.is_empty() {
                    "none".to_string()
                } else {
                    open.join(", ")
                }
            )),
            0,
        );
    }
    (StageDecision::Hold, 0)
}

impl StageDecision {
    /// `hold`, `advance`, `rollback` or `inconclusive` (the controller's metrics).
    pub fn kind(&self) -> &'static str {
        match self {
            StageDecision::Hold => "hold",
            StageDecision::Advance(_) => "advance",
            StageDecision::Rollback(_) => "rollback",
            StageDecision::Pause(_) => "pause",
            StageDecision::Inconclusive(_) => "inconclusive",
        }
    }

    /// The rollout action this decision asks of the control loop, with its reason;
    /// an undecided stage past its maximum duration follows `on_inconclusive`.
    pub fn action(&self, on_inconclusive: InconclusiveAction) -> Option<(Action, &str)> {
        match self {
            StageDecision::Hold => None,
            StageDecision::Advance(reason) => Some((Action::Advance, reason)),
            StageDecision::Rollback(reason) => Some((Action::Rollback, reason)),
            StageDecision::Pause(reason) => Some((Action::Pause, reason)),
            StageDecision::Inconclusive(reason) => Some(match on_inconclusive {
                InconclusiveAction::Pause => (Action::Pause, reason),
                InconclusiveAction::Rollback => (Action::Rollback, reason),
            }),
        }
    }
}
