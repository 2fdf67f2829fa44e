//! Judges: at each analysis interval the control loop asks one for a stage decision.
//! `EvidenceJudge` compares canary with stable over the stage window that an
//! evidence source (`evidence::envoy_admin`) fills; `TimeOnlyJudge` serves a
//! controller with no evidence source.

use crate::analysis::analyse;
use crate::analysis::decide::{decide, StageDecision};
use crate::analysis::evidence::Window;
use crate::analysis::AnalysisReport;
use crate::store::RolloutRow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// A stage decision with the evidence behind it (kept in the audit log).
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub decision: StageDecision,
    pub details: serde_json::Value,
}

/// Decides, at each analysis interval, whether a progressing rollout moves on.
pub trait Judge: Send + Sync {
    fn check(&self, rollout: &RolloutRow, now_ms: i64) -> Judgement;

    /// The comparison behind the decisions, for people.
    fn report(&self, _rollout: &RolloutRow, _now_ms: i64) -> Option<AnalysisReport> {
        None
    }
}

/// Without metrics: a stage moves on once its minimum duration has passed and it
/// needs no minimum request count; a stage that can never be judged waits until
/// `max_stage_duration`, then follows `on_inconclusive`.
pub struct TimeOnlyJudge;

impl Judge for TimeOnlyJudge {
    fn check(&self, rollout: &RolloutRow, now_ms: i64) -> Judgement {
        let plan = &rollout.plan;
        let Some(stage) = plan.stages.get(rollout.state.stage) else {
            return Judgement {
                decision: StageDecision::Hold,
                details: serde_json::Value::Null,
            };
        };
        let elapsed = now_ms - rollout.state.stage_started_ms;
        let details =
            serde_json::json!({"elapsed_ms": elapsed, "min_duration": stage.min_duration});
        let decision = if elapsed >= stage.min_duration.millis() && stage.min_requests == 0 {
            StageDecision::Advance(format!(
                "stage {} held for {}",
                rollout.state.stage + 1,
                stage.min_duration
            ))
        } else if elapsed >= plan.max_stage_duration.millis() {
            StageDecision::Inconclusive(format!(
                "no decision after the stage's maximum duration {}: data stayed insufficient",
                plan.max_stage_duration
            ))
        } else {
            StageDecision::Hold
        };
        Judgement { decision, details }
    }
}

/// One rollout's stage window and its run of failed checks.
#[derive(Debug)]
pub struct Tracked {
    stage: usize,
    stage_started_ms: i64,
    pub window: Window,
    consecutive_failures: u32,
}

impl Tracked {
    fn new(row: &RolloutRow) -> Tracked {
        Tracked {
            stage: row.state.stage,
            stage_started_ms: row.state.stage_started_ms,
            window: Window::new(row.state.stage_started_ms),
            consecutive_failures: 0,
        }
    }

    /// A new stage (or a resumed one) starts a new window over the same baselines.
    fn follow(&mut self, row: &RolloutRow) {
        if self.stage != row.state.stage || self.stage_started_ms != row.state.stage_started_ms {
            self.stage = row.state.stage;
            self.stage_started_ms = row.state.stage_started_ms;
            self.window.restart(row.state.stage_started_ms);
            self.consecutive_failures = 0;
        }
    }
}

/// Evidence per rollout, shared by the evidence source that fills the windows and
/// the checks that read them.
#[derive(Clone, Default)]
pub struct EvidenceJudge {
    tracked: Arc<Mutex<HashMap<i64, Tracked>>>,
}

impl EvidenceJudge {
    /// Runs `f` on the rollout's tracked window (started when first seen).
    pub fn with<T>(&self, row: &RolloutRow, f: impl FnOnce(&mut Tracked) -> T) -> T {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tracked.entry(row.id).or_insert_with(|| Tracked::new(row));
        entry.follow(row);
        f(entry)
    }

    /// Drops the windows of rollouts that are no longer active.
    pub fn forget_all_but(&self, active: &[i64]) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        tracked.retain(|id, _| active.contains(id));
    }
}

impl Judge for EvidenceJudge {
    fn check(&self, row: &RolloutRow, now_ms: i64) -> Judgement {
        self.with(row, |t| {
            let analysis = analyse(&row.plan, row.state.stage, &t.window);
            let elapsed = now_ms - row.state.stage_started_ms;
            if let Some(reason) = &analysis.evidence_unavailable {
                // No evidence is never a pass: hold, until the stage's maximum duration.
                let decision = if elapsed >= row.plan.max_stage_duration.millis() {
                    StageDecision::Inconclusive(format!(
                        "no evidence for the stage's maximum duration {}: {reason}",
                        row.plan.max_stage_duration
                    ))
                } else {
                    StageDecision::Hold
                };
                let details = serde_json::to_value(&analysis).unwrap_or_default();
                return Judgement { decision, details };
            }
            let (decision, failures) = decide(
                &row.plan,
                row.state.stage,
                elapsed,
                &analysis,
                t.consecutive_failures,
            );
            t.consecutive_failures = failures;
            let details = serde_json::to_value(&analysis).unwrap_or_default();
            Judgement { decision, details }
        })
    }

    fn report(&self, row: &RolloutRow, _now_ms: i64) -> Option<AnalysisReport> {
        self.with(row, |t| {
            Some(AnalysisReport {
                analysis: analyse(&row.plan, row.state.stage, &t.window),
                consecutive_failures: Some(t.consecutive_failures),
                decided_ms: None,
            })
        })
    }
}
