//! The control plane's operations. Each change is one SQLite transaction that moves
//! the rollout, recomputes its target's route table, bumps the route revision and
//! appends to the audit log; only after the commit do long-polls wake and webhooks go.

use crate::analysis::StageDecision;
use crate::notify::{Event, Notifier};
use crate::plan::InconclusiveAction;
use crate::plan::{field_error, FieldError, RolloutPlan};
use crate::policy::{hex, PolicyBundle};
use crate::rollout::{
    self, route_for, stable_after, stable_only, Action, Illegal, Outcome, Phase, RolloutState,
};
use crate::store::{self, AuditEntry, NewAudit, PolicyRecord, RolloutRow, TargetRow};
use crate::units::Weight;
use policy_canary::config::{RouteTable, RoutesDocument};
use rusqlite::Connection;
use serde::Serialize;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(#[from] FieldError),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        state: Option<String>,
    },
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("internal: {0}")]
    Internal(String),
}

fn conflict(message: impl Into<String>, state: Option<String>) -> Error {
    Error::Conflict {
        message: message.into(),
        state,
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A rollout as the API shows it.
#[derive(Debug, Clone, Serialize)]
pub struct RolloutView {
    pub id: i64,
    pub target: String,
    pub phase: Phase,
    /// 1-based stage number, for people.
    pub stage: usize,
    pub stages: usize,
    /// The weight in force now (after time-window caps).
    pub weight: String,
    pub weight_bp: u16,
    /// The current stage's planned weight.
    pub stage_weight: String,
    pub stage_started_ms: i64,
    pub salt: String,
    pub stable: policy_canary::config::PolicyBackend,
    pub canary: policy_canary::config::PolicyBackend,
    pub revision: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub plan: RolloutPlan,
}

/// What the analysis decided for one rollout at one check.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Hold,
    Advance {
        reason: String,
        details: serde_json::Value,
    },
    Rollback {
        reason: String,
        details: serde_json::Value,
    },
    Pause {
        reason: String,
        details: serde_json::Value,
    },
}

/// Decides, at each analysis interval, whether a progressing rollout moves on.
pub trait Analyst: Send + Sync {
    fn check(&self, rollout: &RolloutRow, now_ms: i64) -> Verdict;

    /// The comparison behind the verdicts, for people.
    fn report(&self, _rollout: &RolloutRow, _now_ms: i64) -> Option<serde_json::Value> {
        None
    }
}

/// Turns a stage decision into the action the control loop applies; an
/// undecided stage past its maximum duration follows the plan's `on_inconclusive`.
pub fn verdict_for(
    plan: &RolloutPlan,
    decision: StageDecision,
    details: serde_json::Value,
) -> Verdict {
    match decision {
        StageDecision::Hold => Verdict::Hold,
        StageDecision::Advance(reason) => Verdict::Advance { reason, details },
        StageDecision::Rollback(reason) => Verdict::Rollback { reason, details },
        StageDecision::Inconclusive(reason) => match plan.on_inconclusive {
            InconclusiveAction::Pause => Verdict::Pause { reason, details },
            InconclusiveAction::Rollback => Verdict::Rollback { reason, details },
        },
    }
}

/// Without metrics: a stage moves on once its minimum duration has passed and it
/// needs no minimum request count; a stage that can never be judged waits until
/// `max_stage_duration`, then follows `on_inconclusive`.
pub struct TimeOnly;

impl Analyst for TimeOnly {
    fn check(&self, rollout: &RolloutRow, now_ms: i64) -> Verdict {
        let plan = &rollout.plan;
        let Some(stage) = plan.stages.get(rollout.state.stage) else {
            return Verdict::Hold;
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
        verdict_for(plan, decision, details)
    }
}

pub struct Controller {
    db: Mutex<Connection>,
    routes: RwLock<Arc<RoutesDocument>>,
    revision_tx: watch::Sender<u64>,
    notifier: Notifier,
    analyst: Box<dyn Analyst>,
    /// When each active rollout was last analysed.
    last_check: Mutex<HashMap<i64, i64>>,
}

pub const AUTO_ACTOR: &str = "canaryctl";

impl Controller {
    pub fn open(
        state_dir: &Path,
        notifier: Notifier,
        analyst: Box<dyn Analyst>,
    ) -> Result<Arc<Self>> {
        std::fs::create_dir_all(state_dir)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", state_dir.display())))?;
        let conn = store::open(&state_dir.join("canaryctl.db"))?;
        let routes = Arc::new(load_routes(&conn)?);
        let (revision_tx, _) = watch::channel(routes.revision);
        Ok(Arc::new(Controller {
            db: Mutex::new(conn),
            routes: RwLock::new(routes),
            revision_tx,
            notifier,
            analyst,
            last_check: Mutex::new(HashMap::new()),
        }))
    }

    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn routes(&self) -> Arc<RoutesDocument> {
        self.routes
            .read()
            .map(|r| Arc::clone(&r))
            .unwrap_or_else(|poisoned| Arc::clone(&poisoned.into_inner()))
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// Re-reads the route tables after a commit and wakes the long-polls.
    fn publish(&self, conn: &Connection) -> Result<()> {
        let doc = Arc::new(load_routes(conn)?);
        let revision = doc.revision;
        if let Ok(mut routes) = self.routes.write() {
            *routes = doc;
        }
        self.revision_tx.send_replace(revision);
        Ok(())
    }

    pub fn add_policy(&self, text: &str, actor: &str) -> Result<(PolicyRecord, bool)> {
        let bundle = PolicyBundle::parse(text)?;
        let sha = bundle.sha256();
        let mut conn = self.db();
        if let Some(existing) = store::get_policy(&conn, &bundle.version)? {
            if existing.sha256 == sha {
                return Ok((existing, false));
            }
            return Err(conflict(
                format!(
                    "policy {} is already registered with sha256 {}; this bundle has sha256 {sha}. \
                     Policies are immutable: register the change under a new version",
                    bundle.version, existing.sha256
                ),
                None,
            ));
        }
        let now = now_ms();
        let tx = conn.transaction()?;
        store::insert_policy(&tx, &bundle.version, &sha, &bundle.canonical_json(), now)?;
        let revision = store::revision(&tx)?;
        store::insert_audit(
            &tx,
            &NewAudit {
                actor: actor.to_string(),
                action: "policy_registered".into(),
                reason: format!("{}@sha256:{sha}", bundle.version),
                ..NewAudit::default()
            },
            revision,
            now,
        )?;
        tx.commit()?;
        let record = store::get_policy(&conn, &bundle.version)?
            .ok_or_else(|| Error::Internal("policy vanished after insert".into()))?;
        Ok((record, true))
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        Ok(store::list_policies(&self.db())?)
    }

    pub fn policy(&self, version: &str) -> Result<PolicyRecord> {
        store::get_policy(&self.db(), version)?
            .ok_or_else(|| Error::NotFound(format!("no policy version `{version}`")))
    }

    pub fn targets(&self) -> Result<Vec<TargetRow>> {
        Ok(store::list_targets(&self.db())?)
    }

    pub fn rollouts(&self, active_only: bool) -> Result<Vec<RolloutView>> {
        let conn = self.db();
        let now = now_ms();
        store::list_rollouts(&conn, active_only)?
            .into_iter()
            .map(|row| self.view(&conn, row, now))
            .collect()
    }

    pub fn rollout(&self, id: i64) -> Result<RolloutView> {
        let conn = self.db();
        let row = store::get_rollout(&conn, id)?.ok_or_else(|| not_found(id))?;
        self.view(&conn, row, now_ms())
    }

    pub fn rollout_rows(&self, active_only: bool) -> Result<Vec<RolloutRow>> {
        Ok(store::list_rollouts(&self.db(), active_only)?)
    }

    /// The analysis of a rollout: its current stage's while it is under way, when an
    /// analyst can give one; once it has ended, the comparison its last automatic
    /// decision kept in the audit log, marked with that decision's time.
    pub fn analysis(&self, id: i64) -> Result<serde_json::Value> {
        let row = self.rollout_row(id)?;
        let report = if row.state.phase.is_active() {
            self.analyst.report(&row, now_ms())
        } else {
            self.last_decision(id)?
        };
        Ok(serde_json::json!({
            "rollout_id": row.id,
            "phase": row.state.phase,
            "stage": row.state.stage + 1,
            "analysis": report,
        }))
    }

    fn last_decision(&self, id: i64) -> Result<Option<serde_json::Value>> {
        let audit = self.audit(Some(id), None, 0, 10_000)?;
        Ok(audit.iter().rev().find_map(|e| {
            let details = e.details.as_ref()?;
            details["comparisons"].is_array().then(|| {
                let mut analysis = details.clone();
                analysis["decided_ms"] = e.at_ms.into();
                analysis
            })
        }))
    }

    pub fn rollout_row(&self, id: i64) -> Result<RolloutRow> {
        store::get_rollout(&self.db(), id)?.ok_or_else(|| not_found(id))
    }

    pub fn audit(
        &self,
        rollout_id: Option<i64>,
        target: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        Ok(store::list_audit(
            &self.db(),
            rollout_id,
            target,
            after_id,
            limit.clamp(1, 10_000),
        )?)
    }

    fn view(&self, conn: &Connection, row: RolloutRow, now: i64) -> Result<RolloutView> {
        let revision = store::get_target(conn, &row.target)?.map_or(0, |t| t.route.revision);
        let weight = match row.state.phase {
            Phase::Progressing | Phase::Paused => row.plan.effective_weight(row.state.stage, now),
            Phase::Promoted => Weight::FULL,
            _ => Weight(0),
        };
        let stage_weight = row
            .plan
            .stages
            .get(row.state.stage)
            .map_or(Weight(0), |s| s.weight);
        Ok(RolloutView {
            id: row.id,
            target: row.target.clone(),
            phase: row.state.phase,
            stage: row.state.stage + 1,
            stages: row.plan.stages.len(),
            weight: weight.to_string(),
            weight_bp: weight.bp(),
            stage_weight: stage_weight.to_string(),
            stage_started_ms: row.state.stage_started_ms,
            salt: row.salt.clone(),
            stable: row.plan.stable.clone(),
            canary: row.plan.canary.clone(),
            revision,
            created_ms: row.created_ms,
            updated_ms: row.updated_ms,
            plan: row.plan,
        })
    }

    /// Registers the plan's rollout and starts it, in one transaction.
    pub fn start_rollout(&self, plan_text: &str, actor: &str) -> Result<RolloutView> {
        let plan = RolloutPlan::parse(plan_text)?;
        let mut conn = self.db();
        let now = now_ms();
        let tx = conn.transaction()?;
        for (field, backend) in [
            ("stable.version", &plan.stable),
            ("canary.version", &plan.canary),
        ] {
            if store::get_policy(&tx, &backend.version)?.is_none() {
                return Err(field_error(
                    field,
                    format!(
                        "unknown policy version `{}`: register it first (canaryctl policy add)",
                        backend.version
                    ),
                )
                .into());
            }
        }
        if let Some(active) = store::active_rollout(&tx, &plan.target)? {
            return Err(conflict(
                format!(
                    "target {} already has an active rollout #{} ({}); pause, promote, roll back or abort it first",
                    plan.target, active.id, active.state
                ),
                Some(active.state.phase.to_string()),
            ));
        }
        if let Some(target) = store::get_target(&tx, &plan.target)? {
            if target.stable != plan.stable {
                return Err(field_error(
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
                return Err(field_error(
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
        let started = match rollout::transition(&pending, &row.plan, Action::Start, now) {
            Ok(Outcome::Changed(state)) => state,
            _ => return Err(Error::Internal("a new rollout could not start".into())),
        };
        let change = Change {
            action: "start",
            actor,
            reason: "rollout started",
            details: None,
        };
        let event = apply(&tx, &row, started, &change, now)?;
        tx.commit()?;
        self.publish(&conn)?;
        self.notifier.send(event);
        let row = store::get_rollout(&conn, id)?.ok_or_else(|| not_found(id))?;
        self.view(&conn, row, now)
    }

    /// Applies a person's (or the analysis') action to a rollout.
    pub fn act(&self, id: i64, action: Action, actor: &str, reason: &str) -> Result<RolloutView> {
        self.act_with(id, action, actor, reason, None)
    }

    fn act_with(
        &self,
        id: i64,
        action: Action,
        actor: &str,
        reason: &str,
        details: Option<serde_json::Value>,
    ) -> Result<RolloutView> {
        let mut conn = self.db();
        let now = now_ms();
        let tx = conn.transaction()?;
        let row = store::get_rollout(&tx, id)?.ok_or_else(|| not_found(id))?;
        match rollout::transition(&row.state, &row.plan, action, now) {
            Err(Illegal { action, phase }) => {
                return Err(conflict(
                    Illegal { action, phase }.to_string(),
                    Some(phase.to_string()),
                ))
            }
            Ok(Outcome::Unchanged) => {
                drop(tx);
                return self.view(&conn, row, now);
            }
            Ok(Outcome::Changed(next)) => {
                let change = Change {
                    action: action.name(),
                    actor,
                    reason,
                    details,
                };
                let event = apply(&tx, &row, next, &change, now)?;
                tx.commit()?;
                self.publish(&conn)?;
                self.notifier.send(event);
            }
        }
        let row = store::get_rollout(&conn, id)?.ok_or_else(|| not_found(id))?;
        self.view(&conn, row, now)
    }

    /// One pass of the control loop: analysis at each rollout's interval, and
    /// route tables kept in step with time windows.
    pub fn reconcile(&self, now: i64) -> Result<()> {
        let active = store::list_rollouts(&self.db(), true)?;
        for row in active {
            let due = {
                let mut last = self.last_check.lock().unwrap_or_else(|p| p.into_inner());
                let previous = *last.entry(row.id).or_insert(row.state.stage_started_ms);
                let due = now - previous >= row.plan.analysis_interval.millis();
                if due {
                    last.insert(row.id, now);
                }
                due
            };
            if due && row.state.phase == Phase::Progressing {
                let verdict = self.analyst.check(&row, now);
                let outcome = match verdict {
                    Verdict::Hold => None,
                    Verdict::Advance { reason, details } => {
                        Some((Action::Advance, reason, details))
                    }
                    Verdict::Rollback { reason, details } => {
                        Some((Action::Rollback, reason, details))
                    }
                    Verdict::Pause { reason, details } => Some((Action::Pause, reason, details)),
                };
                if let Some((action, reason, details)) = outcome {
                    match self.act_with(row.id, action, AUTO_ACTOR, &reason, Some(details)) {
                        Ok(_) | Err(Error::Conflict { .. }) => {}
                        Err(e) => return Err(e),
                    }
                    continue;
                }
            }
            self.follow_windows(row.id, now)?;
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
        let tx = conn.transaction()?;
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
            action: "time_window",
            actor: AUTO_ACTOR,
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

    /// Every cluster a target's rollouts have used (for the runtime driver).
    pub fn known_clusters(&self) -> Result<HashMap<String, Vec<String>>> {
        let mut clusters: HashMap<String, Vec<String>> = HashMap::new();
        for row in store::list_rollouts(&self.db(), false)? {
            let entry = clusters.entry(row.target).or_default();
            for cluster in [row.plan.stable.cluster, row.plan.canary.cluster] {
                if !entry.contains(&cluster) {
                    entry.push(cluster);
                }
            }
        }
        Ok(clusters)
    }
}

fn not_found(id: i64) -> Error {
    Error::NotFound(format!("no rollout #{id}"))
}

fn random_salt() -> Result<String> {
    let mut bytes = [0u8; 12];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok(format!("ro-{}", hex(&bytes)))
}

struct Change<'a> {
    action: &'a str,
    actor: &'a str,
    reason: &'a str,
    details: Option<serde_json::Value>,
}

/// Inside `tx`: stores `next`, rewrites the target's route table at a new revision
/// and audits the change. Returns the notification to send after the commit.
fn apply(
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
    let from = if change.action == "start" {
        Phase::Pending.to_string()
    } else {
        row.state.to_string()
    };
    let entry = store::insert_audit(
        tx,
        &NewAudit {
            actor: change.actor.to_string(),
            action: change.action.to_string(),
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
        actor: entry.actor,
        reason: entry.reason,
        revision,
        at_ms: now,
    })
}

fn event_name(action: &str, from: Phase, to: Phase) -> &'static str {
    match (action, to) {
        ("start", Phase::Progressing) => "rollout.started",
        (_, Phase::Promoted) => "rollout.promoted",
        (_, Phase::RolledBack) => "rollout.rolled_back",
        (_, Phase::Aborted) => "rollout.aborted",
        (_, Phase::Paused) if from != Phase::Paused => "rollout.paused",
        ("resume", _) => "rollout.resumed",
        ("time_window", _) => "rollout.weight_capped",
        _ => "rollout.stage_changed",
    }
}

fn load_routes(conn: &Connection) -> Result<RoutesDocument> {
    let revision = store::revision(conn)?;
    let routes = store::list_targets(conn)?
        .into_iter()
        .map(|t| (t.name, t.route))
        .collect::<std::collections::BTreeMap<String, RouteTable>>();
    Ok(RoutesDocument { revision, routes })
}
