//! Changes to rollouts: start, the actions people and the control loop take, and
//! `apply`, which stores a new state, rewrites the target's route table at a new
//! revision and audits it, all inside one transaction.

use super::{conflict, not_found, Controller, Error, Result};
use crate::access::Who;
use crate::notify::Event;
use crate::rollout::permit::{needs_admin, unbound_clusters, Authority};
use crate::rollout::plan::RolloutPlan;
use crate::rollout::{
    route_for, stable_after, stable_only, transition, Action, AuditAction, Phase, RolloutState,
    Transition,
};
use crate::store::{self, NewAudit, RolloutRow};
use crate::units::now_ms;
use crate::units::Weight;
use crate::view::RolloutView;
use policy_canary::digest::hex;
use policy_canary::error::err;
use std::collections::BTreeSet;

impl Controller {
    /// Registers the plan's rollout and starts it, in one transaction.
    /// An `operate` caller's plan must stay within its limits (`rollout::permit`);
    /// an admin's binds the clusters it names to the target.
    pub fn start_rollout(
        &self,
        plan_text: &str,
        who: &Who,
        authority: Authority,
    ) -> Result<RolloutView> {
        let plan = RolloutPlan::parse(plan_text)?;
        let mut conn = self.db();
        let now = now_ms();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (field, backend) in [
            ("stable.version", &plan.stable),
            ("canary.version", &plan.canary),
        ] {
            if store::get_policy(&tx, &backend.version)?.is_none() {
                return Err(err(
                    field,
                    format!(
                        "unknown policy version `{}`: register it first (canaryctl policy add)",
                        backend.version
                    ),
                )
                .into());
            }
        }
        let bound: BTreeSet<String> = store::bound_clusters(&tx, &plan.target)?
            .into_iter()
            .map(|b| b.cluster)
            .collect();
        let newly_bound = match authority {
            Authority::Operate(limits) => {
                let reasons = needs_admin(&plan, &bound, &limits);
                if !reasons.is_empty() {
                    return Err(Error::Forbidden(format!(
                        "this plan needs an `admin` token: {}",
                        reasons.join("; ")
                    )));
                }
                Vec::new()
            }
            Authority::Admin => unbound_clusters(&plan, &bound),
        };
        if let Some(active) = store::active_rollout(&tx, &plan.target)? {
            return Err(conflict(
                format!(
                    "target {} already has an active rollout #{} ({}); pause, promote, roll back or abort it first",
                    plan.target, active.id, active.state
                ),
                Some(active.state.phase.to_string()),
            ));
        }
        let known_target = store::get_target(&tx, &plan.target)?;
        if let Some(target) = &known_target {
            if target.stable != plan.stable {
                return Err(err(
                    "stable",
                    format!(
                        "the target's stable policy is {} on {}; a plan must start from it",
                        target.stable.version, target.stable.cluster
                    ),
                )
                .into());
            }
        }
        let salt = match &plan.salt {
            Some(salt) if store::salt_used(&tx, salt)? => {
                return Err(err(
                    "salt",
                    "already used by another rollout; a new rollout needs a new salt",
                )
                .into())
            }
            Some(salt) => salt.clone(),
            None => loop {
                let salt = random_salt()?;
                if !store::salt_used(&tx, &salt)? {
                    break salt;
                }
            },
        };
        let pending = RolloutState::new(now);
        let id = store::insert_rollout(&tx, &plan, &salt, &pending, now)?;
        let row = RolloutRow {
            id,
            target: plan.target.clone(),
            plan,
            salt,
            state: pending,
            created_ms: now,
            updated_ms: now,
        };
        let started = match transition(&pending, &row.plan, Action::Start, now) {
            Ok(Transition::Changed(state)) => state,
            _ => return Err(Error::Internal("a new rollout could not start".into())),
        };
        // A target's first rollout fixes its stable policy and cluster: say so.
        let mut reason = match known_target {
            Some(_) => "rollout started".to_string(),
            None => format!(
                "rollout started; first rollout of {}: its stable policy is now {} on cluster {}",
                row.target, row.plan.stable.version, row.plan.stable.cluster
            ),
        };
        for cluster in &newly_bound {
            store::bind_cluster(&tx, &row.target, cluster, &who.principal, now)?;
        }
        if !newly_bound.is_empty() {
            reason.push_str(&format!(
                "; cluster(s) {} bound to {} by this admin's plan",
                newly_bound.join(", "),
                row.target
            ));
        }
        let change = Change {
            action: AuditAction::Start,
            who,
            reason: &reason,
            details: None,
        };
        let event = apply(&tx, &row, started, &change, now)?;
        tx.commit()?;
        self.publish(&conn)?;
        self.notifier.send(event);
        let row = store::get_rollout(&conn, id)?.ok_or_else(|| not_found(id))?;
        self.view(&conn, row, now)
    }

    /// Applies a person's action to a rollout, only if the rollout is where the
    /// caller saw it (`guard.expected_stage`), and once per `guard.idempotency_key`:
    /// a retried request answers with the rollout as it is and changes nothing.
    pub fn act(
        &self,
        id: i64,
        action: Action,
        who: &Who,
        reason: &str,
        guard: &Guard,
    ) -> Result<RolloutView> {
        self.act_with(id, action, who, reason, None, guard)
    }

    pub(super) fn act_with(
        &self,
        id: i64,
        action: Action,
        who: &Who,
        reason: &str,
        details: Option<serde_json::Value>,
        guard: &Guard,
    ) -> Result<RolloutView> {
        let mut conn = self.db();
        let now = now_ms();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let row = store::get_rollout(&tx, id)?.ok_or_else(|| not_found(id))?;
        if let Some(key) = &guard.idempotency_key {
            match store::idempotent_request(&tx, key)? {
                Some((rollout, done)) if rollout == id && done == action.name() => {
                    drop(tx);
                    return self.view(&conn, row, now);
                }
                Some(_) => {
                    return Err(conflict(
                        "this idempotency key was used for another request",
                        None,
                    ))
                }
                None => {}
            }
        }
        // Compare-and-set: act only on the state the caller (a person, or the
        // control loop's judgement) saw, in this same transaction.
        let moved = guard
            .expected_stage
            .is_some_and(|stage| stage != row.state.stage + 1)
            || guard
                .expected_stage_started_ms
                .is_some_and(|started| started != row.state.stage_started_ms);
        if moved {
            return Err(conflict(
                format!(
                    "rollout #{id} moved meanwhile: it is {} now; look again and retry",
                    row.state
                ),
                Some(row.state.phase.to_string()),
            ));
        }
        match transition(&row.state, &row.plan, action, now) {
            Err(illegal) => {
                return Err(conflict(
                    illegal.to_string(),
                    Some(illegal.phase.to_string()),
                ))
            }
            Ok(Transition::Unchanged) => {
                drop(tx);
                return self.view(&conn, row, now);
            }
            Ok(Transition::Changed(next)) => {
                let change = Change {
                    action: action.into(),
                    who,
                    reason,
                    details,
                };
                let event = apply(&tx, &row, next, &change, now)?;
                if let Some(key) = &guard.idempotency_key {
                    store::insert_idempotency(&tx, key, id, action.name(), now)?;
                }
                tx.commit()?;
                self.publish(&conn)?;
                self.notifier.send(event);
            }
        }
        let row = store::get_rollout(&conn, id)?.ok_or_else(|| not_found(id))?;
        self.view(&conn, row, now)
    }
}

fn random_salt() -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(format!("ro-{}", hex(&bytes)))
}

/// What an action must find to apply: the stage it was decided at, and a key
/// that makes a retry harmless.
#[derive(Debug, Clone, Default)]
pub struct Guard {
    /// 1-based stage number the caller saw.
    pub expected_stage: Option<usize>,
    /// When that stage started (the control loop's judgements carry it).
    pub expected_stage_started_ms: Option<i64>,
    pub idempotency_key: Option<String>,
}

pub(super) struct Change<'a> {
    pub(super) action: AuditAction,
    pub(super) who: &'a Who,
    pub(super) reason: &'a str,
    pub(super) details: Option<serde_json::Value>,
}

/// Inside `tx`: stores `next`, rewrites the target's route table at a new revision
/// and audits the change. Returns the notification to send after the commit.
pub(super) fn apply(
    tx: &rusqlite::Transaction<'_>,
    row: &RolloutRow,
    next: RolloutState,
    change: &Change<'_>,
    now: i64,
) -> Result<Event> {
    store::update_rollout_state(tx, row.id, &next, now)?;
    let revision = store::bump_revision(tx)?;
    let (stable, table) = match route_for(&row.plan, &next, &row.salt, revision, now) {
        Some(table) => (row.plan.stable.clone(), table),
        None => {
            let stable = stable_after(&row.plan, next.phase).clone();
            let table = stable_only(&stable, &row.salt, revision);
            (stable, table)
        }
    };
    store::upsert_target(tx, &row.target, &stable, &table, now)?;
    let from = if change.action == AuditAction::Start {
        Phase::Pending.to_string()
    } else {
        row.state.to_string()
    };
    let entry = store::insert_audit(
        tx,
        &NewAudit {
            principal: change.who.principal.clone(),
            actor: change.who.actor.clone(),
            action: change.action,
            reason: change.reason.to_string(),
            target: Some(row.target.clone()),
            rollout_id: Some(row.id),
            from: Some(from.clone()),
            to: Some(next.to_string()),
            // The share on the rollout's canary version: all of it once promoted.
            canary_weight_bp: Some(if next.phase == Phase::Promoted {
                Weight::FULL.bp()
            } else {
                table.canary_weight_bp
            }),
            details: change.details.clone(),
        },
        revision,
        now,
    )?;
    Ok(Event {
        event: event_name(change.action, row.state.phase, next.phase).to_string(),
        rollout_id: row.id,
        target: row.target.clone(),
        from,
        to: next.to_string(),
        phase: next.phase,
        stage: next.stage + 1,
        weight: Weight(table.canary_weight_bp).to_string(),
        stable_version: table.stable.version.clone(),
        canary_version: row.plan.canary.version.clone(),
        principal: change.who.principal.clone(),
        actor: entry.actor,
        reason: entry.reason,
        revision,
        at_ms: now,
    })
}

fn event_name(action: AuditAction, from: Phase, to: Phase) -> &'static str {
    match (action, to) {
        (AuditAction::Start, Phase::Progressing) => "rollout.started",
        (_, Phase::Promoted) => "rollout.promoted",
        (_, Phase::RolledBack) => "rollout.rolled_back",
        (_, Phase::Aborted) => "rollout.aborted",
        (_, Phase::Paused) if from != Phase::Paused => "rollout.paused",
        (AuditAction::Resume, _) => "rollout.resumed",
        (AuditAction::TimeWindow, _) => "rollout.weight_capped",
        _ => "rollout.stage_changed",
    }
}
