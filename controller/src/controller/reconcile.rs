//! The control loop: at each rollout's analysis interval the judge decides, and
//! route tables follow the plan's time windows.

use super::change::{apply, Change};
use super::{Controller, Error, Guard, Result};
use crate::access::Who;
use crate::rollout::{route_for, AuditAction, Phase};
use crate::store;
use crate::units::{Now, Weight};

impl Controller {
    /// One pass of the control loop: analysis at each rollout's interval, and
    /// route tables kept in step with time windows.
    /// Intervals run on the steady clock: a wall-clock step neither suspends the
    /// analysis nor fires it early.
    pub fn reconcile(&self, now: Now) -> Result<()> {
        let active = store::list_rollouts(&self.db(), true)?;
        for row in active {
            let due = {
                let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
                // First seen: as if last checked when its stage started.
                let in_stage = u64::try_from(now.wall_ms - row.state.stage_started_ms).unwrap_or(0);
                let previous = *last
                    .entry(row.id)
                    .or_insert(now.steady_ms.saturating_sub(in_stage));
                let interval = u64::try_from(row.plan.analysis_interval.millis()).unwrap_or(0);
                let due = now.steady_since(previous) >= interval;
                if due {
                    last.insert(row.id, now.steady_ms);
                }
                due
            };
            if due && row.state.phase == Phase::Progressing {
                let judgement = self.judge.check(&row, now);
                self.metrics.decided(judgement.decision.kind());
                if let Some((action, reason)) = judgement.decision.action(row.plan.on_inconclusive)
                {
                    let details = Some(judgement.details);
                    // Applied only to the stage the judgement was made on.
                    let guard = Guard {
                        expected_stage: Some(row.state.stage + 1),
                        expected_stage_started_ms: Some(row.state.stage_started_ms),
                        idempotency_key: None,
                    };
                    match self.act_with(row.id, action, &Who::controller(), reason, details, &guard)
                    {
                        Ok(_) | Err(Error::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            }
            self.follow_windows(row.id, now.wall_ms)?;
        }
        if let Ok(mut last) = self.last_check.lock() {
            if last.len() > 1024 {
                last.clear();
            }
        }
        Ok(())
    }

    /// Rewrites a rollout's route table when a time window starts or ends.
    fn follow_windows(&self, id: i64, now: i64) -> Result<()> {
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(row) = store::get_rollout(&tx, id)? else {
            return Ok(());
        };
        let Some(target) = store::get_target(&tx, &row.target)? else {
            return Ok(());
        };
        let Some(wanted) = route_for(&row.plan, &row.state, &row.salt, target.route.revision, now)
        else {
            return Ok(());
        };
        if wanted == target.route {
            return Ok(());
        }
        let change = Change {
            action: AuditAction::TimeWindow,
            who: &Who::controller(),
            reason: &format!(
                "time window: canary weight {} -> {}",
                Weight(target.route.canary_weight_bp),
                Weight(wanted.canary_weight_bp)
            ),
            details: None,
        };
        let event = apply(&tx, &row, row.state, &change, now)?;
        tx.commit()?;
        self.publish(&conn)?;
        self.notifier.send(event);
        Ok(())
    }
}
