//! Judges: at each analysis interval the control loop asks one for a stage decision.
//! `EvidenceJudge` compares canary with stable over the stage window that an
//! evidence source (`evidence::envoy_admin`) fills; `TimeOnlyJudge` serves a
//! controller with no evidence source.

use crate::analysis::analyse;
use crate::analysis::decide::{decide, StageDecision};
use crate::analysis::evidence::Window;
use crate::analysis::AnalysisReport;
use crate::rollout::plan::InconclusiveAction;
use crate::rollout::Phase;
use crate::store::RolloutRow;
use crate::units::Now;
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
    fn check(&self, rollout: &RolloutRow, now: Now) -> Judgement;

    /// The comparison behind the decisions, for people.
    fn report(&self, _rollout: &RolloutRow) -> Option<AnalysisReport> {
        None
    }
}

/// Without metrics: a stage moves on once its minimum duration has passed and it
/// needs no minimum request count; a stage that can never be judged waits until
/// `max_stage_duration`, then follows `on_inconclusive`.
pub struct TimeOnlyJudge;

impl Judge for TimeOnlyJudge {
    fn check(&self, rollout: &RolloutRow, now: Now) -> Judgement {
        let plan = &rollout.plan;
        let Some(stage) = plan.stages.get(rollout.state.stage) else {
            return Judgement {
                decision: StageDecision::Hold,
                details: serde_json::Value::Null,
            };
        };
        let elapsed = now.wall_ms - rollout.state.stage_started_ms;
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
    /// Starts with the stage (`window.started_ms` is the stage's start).
    pub window: Window,
    consecutive_failures: u32,
    /// Since when (steady clock) the evidence has been unavailable, at the
    /// judge's checks.
    evidence_lost_since: Option<u64>,
}

impl Tracked {
    fn new(row: &RolloutRow) -> Tracked {
        Tracked {
            stage: row.state.stage,
            window: Window::new(row.state.stage_started_ms),
            consecutive_failures: 0,
            evidence_lost_since: None,
        }
    }

    /// A new stage (or a resumed one) starts a new window over the same baselines.
    fn follow(&mut self, row: &RolloutRow) {
        if self.stage != row.state.stage || self.window.started_ms != row.state.stage_started_ms {
            self.stage = row.state.stage;
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

    /// The active rollouts, as `list` reads them from the store (off the async
    /// workers); the windows of every other rollout are dropped.
    pub async fn active<E: Send + 'static>(
        &self,
        list: impl FnOnce() -> Result<Vec<RolloutRow>, E> + Send + 'static,
    ) -> Vec<RolloutRow> {
        let rows = tokio::task::spawn_blocking(list)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        tracked.retain(|id, _| rows.iter().any(|r| r.id == *id));
        rows
    }
}

impl Judge for EvidenceJudge {
    fn check(&self, row: &RolloutRow, now: Now) -> Judgement {
        self.with(row, |t| {
            let analysis = analyse(&row.plan, row.state.stage, &t.window);
            let elapsed = now.wall_ms - row.state.stage_started_ms;
            if let Some(reason) = &analysis.evidence_unavailable {
                // No evidence is never a pass: hold; after `evidence_timeout` without
                // any, the plan's `on_evidence_loss` (unmonitored, a canary may be
                // harming users, safety included).
                let since = *t.evidence_lost_since.get_or_insert(now.steady_ms);
                let lost_for = now.steady_since(since);
                let timeout = u64::try_from(row.plan.evidence_timeout.millis()).unwrap_or(0);
                let decision = if lost_for >= timeout {
                    let why = format!(
                        "no evidence for {} (evidence_timeout {}): {reason}",
                        crate::units::Dur(std::time::Duration::from_millis(lost_for)),
                        row.plan.evidence_timeout
                    );
                    match row.plan.evidence_loss_action(row.state.stage) {
                        InconclusiveAction::Pause => StageDecision::Pause(why),
                        InconclusiveAction::Rollback => StageDecision::Rollback(why),
                    }
                } else if elapsed >= row.plan.max_stage_duration.millis() {
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
            t.evidence_lost_since = None;
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

    fn report(&self, row: &RolloutRow) -> Option<AnalysisReport> {
        self.with(row, |t| {
            // Time to decision only while the stage runs (not while it is paused).
            let now_ms = (row.state.phase == Phase::Progressing).then(crate::units::now_ms);
            Some(AnalysisReport::running(
                analyse(&row.plan, row.state.stage, &t.window),
                t.consecutive_failures,
                now_ms,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::GateVerdict;
    use crate::rollout::plan::RolloutPlan;
    use crate::rollout::{Phase, RolloutState};

    fn row(min_requests: u64) -> RolloutRow {
        let plan = RolloutPlan::parse(&format!(
            "target: t\nstable: {{version: v1, cluster: a}}\ncanary: {{version: v2, cluster: b}}\n\
             max_stage_duration: 1h\nstages: [{{weight: 5%, min_duration: 0s, min_requests: {min_requests}}}, {{weight: 100%}}]\n"
        ))
        .unwrap();
        RolloutRow {
            id: 1,
            target: "t".into(),
            plan,
            salt: "s".into(),
            state: RolloutState {
                phase: Phase::Progressing,
                stage: 0,
                stage_started_ms: 0,
            },
            created_ms: 0,
            updated_ms: 0,
        }
    }

    /// Unavailable evidence holds the stage, whatever the stage asks for.
    #[test]
    fn no_evidence_holds_the_stage_and_proves_no_gate() {
        let judge = EvidenceJudge::default();
        let row = row(0);
        judge.with(&row, |t| {
            t.window = Window::unavailable(0, "cannot reach Prometheus at http://p".into())
        });
        let judgement = judge.check(&row, Now::at(60_000));
        assert_eq!(judgement.decision, StageDecision::Hold);
        let report = judge.report(&row).unwrap();
        assert!(report
            .analysis
            .comparisons
            .iter()
            .all(|c| c.verdict == GateVerdict::Inconclusive));
        assert_eq!(report.analysis.safety.verdict, GateVerdict::Inconclusive);
        assert!(report.analysis.evidence_unavailable.is_some());
        // A wall-clock leap is not time without evidence (the steady clock is).
        let leap = Now {
            wall_ms: 60_000 + 120_000,
            steady_ms: 61_000,
        };
        assert_eq!(judge.check(&row, leap).decision, StageDecision::Hold);
        // Unmonitored for the plan's evidence_timeout (2 minutes): in the first
        // stage it pauses, past it it rolls back (audited and notified by the loop).
        let late = judge.check(&row, Now::at(60_000 + 120_000));
        assert!(
            matches!(&late.decision, StageDecision::Pause(r) if r.contains("no evidence for 2m")),
            "{:?}",
            late.decision
        );
        let mut later_stage = row.clone();
        later_stage.state.stage = 1;
        let judge = EvidenceJudge::default();
        judge.with(&later_stage, |t| {
            t.window = Window::unavailable(0, "no Envoy admin answered (2 tried)".into())
        });
        assert_eq!(
            judge.check(&later_stage, Now::at(1_000)).decision,
            StageDecision::Hold
        );
        assert!(matches!(
            judge.check(&later_stage, Now::at(1_000 + 120_000)).decision,
            StageDecision::Rollback(r) if r.contains("no Envoy admin answered")
        ));
        let judge = EvidenceJudge::default();
        judge.with(&row, |t| t.window = Window::unavailable(0, "down".into()));
        let _ = judge.check(&row, Now::at(60_000));
        // Evidence back: the analysis no longer says it is missing.
        judge.with(&row, |t| t.window = Window::new(0));
        let report = judge.report(&row).unwrap();
        assert_eq!(report.analysis.evidence_unavailable, None);
    }
}
