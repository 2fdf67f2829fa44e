//! The rollout state machine, as pure functions: `transition` applies an action,
//! `route_for` says what traffic a state sends where. The loop and the API around
//! them only gather inputs and persist outputs.

use crate::rollout::plan::RolloutPlan;
use policy_canary::route::{PolicyBackend, RouteTable, Segment};
use serde::{Deserialize, Serialize};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    Pending,
    Progressing,
    Paused,
    Promoted,
    RolledBack,
    Aborted,
}

impl Phase {
    pub const ALL: [Phase; 6] = [
        Phase::Pending,
        Phase::Progressing,
        Phase::Paused,
        Phase::Promoted,
        Phase::RolledBack,
        Phase::Aborted,
    ];

    /// Active rollouts hold their target; at most one per target.
    pub fn is_active(self) -> bool {
        matches!(self, Phase::Pending | Phase::Progressing | Phase::Paused)
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Progressing => "progressing",
            Phase::Paused => "paused",
            Phase::Promoted => "promoted",
            Phase::RolledBack => "rolled_back",
            Phase::Aborted => "aborted",
        }
    }

    pub fn parse(text: &str) -> Option<Phase> {
        Phase::ALL.into_iter().find(|p| p.as_str() == text)
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a rollout stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutState {
    pub phase: Phase,
    /// Index into the plan's stages.
    pub stage: usize,
    /// When the current stage (or the resumed stage) began, ms since the epoch.
    pub stage_started_ms: i64,
}

impl RolloutState {
    pub fn new(now_ms: i64) -> Self {
        RolloutState {
            phase: Phase::Pending,
            stage: 0,
            stage_started_ms: now_ms,
        }
    }
}

impl fmt::Display for RolloutState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.phase {
            Phase::Progressing | Phase::Paused => {
                write!(f, "{} (stage {})", self.phase, self.stage + 1)
            }
            phase => write!(f, "{phase}"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    Start,
    Pause,
    Resume,
    /// To the next stage, or to the end (the canary becomes stable).
    Promote {
        to_end: bool,
    },
    /// The automatic move to the next stage: only from `progressing`.
    Advance,
    Rollback,
    Abort,
}

impl Action {
    /// The action's name as the audit log records it.
    pub fn name(self) -> &'static str {
        AuditAction::from(self).as_str()
    }
}

/// What a person can ask of a rollout: the API's `POST /v1/rollouts/{id}/{action}`,
/// the CLI's `rollout <action>` and the dashboard's buttons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ManualAction {
    Pause,
    Resume,
    Promote,
    Rollback,
    Abort,
}

impl ManualAction {
    pub const ALL: [ManualAction; 5] = [
        ManualAction::Pause,
        ManualAction::Resume,
        ManualAction::Promote,
        ManualAction::Rollback,
        ManualAction::Abort,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ManualAction::Pause => "pause",
            ManualAction::Resume => "resume",
            ManualAction::Promote => "promote",
            ManualAction::Rollback => "rollback",
            ManualAction::Abort => "abort",
        }
    }

    pub fn parse(text: &str) -> Option<ManualAction> {
        ManualAction::ALL.into_iter().find(|a| a.as_str() == text)
    }

    /// The state machine's action; `to_end` matters only for a promotion.
    pub fn action(self, to_end: bool) -> Action {
        match self {
            ManualAction::Pause => Action::Pause,
            ManualAction::Resume => Action::Resume,
            ManualAction::Promote => Action::Promote { to_end },
            ManualAction::Rollback => Action::Rollback,
            ManualAction::Abort => Action::Abort,
        }
    }

    /// Whether a rollout in `phase` accepts this action (the dashboard's buttons).
    pub fn allowed_in(self, phase: Phase) -> bool {
        match self {
            ManualAction::Pause => phase == Phase::Progressing,
            ManualAction::Resume => phase == Phase::Paused,
            ManualAction::Promote | ManualAction::Rollback | ManualAction::Abort => {
                phase.is_active()
            }
        }
    }
}

impl fmt::Display for ManualAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What an audit entry records: a rollout action, a time window moving the
/// weight, or a policy registration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuditAction {
    Start,
    Pause,
    Resume,
    Promote,
    PromoteToEnd,
    Advance,
    Rollback,
    Abort,
    TimeWindow,
    PolicyRegistered,
    TokenCreated,
    TokenRevoked,
    ClusterBound,
    ClusterUnbound,
}

impl AuditAction {
    pub const ALL: [AuditAction; 14] = [
        AuditAction::Start,
        AuditAction::Pause,
        AuditAction::Resume,
        AuditAction::Promote,
        AuditAction::PromoteToEnd,
        AuditAction::Advance,
        AuditAction::Rollback,
        AuditAction::Abort,
        AuditAction::TimeWindow,
        AuditAction::PolicyRegistered,
        AuditAction::TokenCreated,
        AuditAction::TokenRevoked,
        AuditAction::ClusterBound,
        AuditAction::ClusterUnbound,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Start => "start",
            AuditAction::Pause => "pause",
            AuditAction::Resume => "resume",
            AuditAction::Promote => "promote",
            AuditAction::PromoteToEnd => "promote_to_end",
            AuditAction::Advance => "advance",
            AuditAction::Rollback => "rollback",
            AuditAction::Abort => "abort",
            AuditAction::TimeWindow => "time_window",
            AuditAction::PolicyRegistered => "policy_registered",
            AuditAction::TokenCreated => "token_created",
            AuditAction::TokenRevoked => "token_revoked",
            AuditAction::ClusterBound => "cluster_bound",
            AuditAction::ClusterUnbound => "cluster_unbound",
        }
    }

    pub fn parse(text: &str) -> Option<AuditAction> {
        AuditAction::ALL.into_iter().find(|a| a.as_str() == text)
    }
}

impl fmt::Display for AuditAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<Action> for AuditAction {
    fn from(action: Action) -> AuditAction {
        match action {
            Action::Start => AuditAction::Start,
            Action::Pause => AuditAction::Pause,
            Action::Resume => AuditAction::Resume,
            Action::Promote { to_end: false } => AuditAction::Promote,
            Action::Promote { to_end: true } => AuditAction::PromoteToEnd,
            Action::Advance => AuditAction::Advance,
            Action::Rollback => AuditAction::Rollback,
            Action::Abort => AuditAction::Abort,
        }
    }
}

/// An action that the current phase does not allow.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Illegal {
    pub action: Action,
    pub phase: Phase,
}

impl fmt::Display for Illegal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "cannot {} a rollout that is {}",
            self.action.name().replace('_', " "),
            self.phase
        )
    }
}

/// The result of a legal action: the new state, or no change (a repeated rollback).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    Changed(RolloutState),
    Unchanged,
}

/// Applies `action` to `state` under `plan` at `now_ms`.
pub fn transition(
    state: &RolloutState,
    plan: &RolloutPlan,
    action: Action,
    now_ms: i64,
) -> Result<Transition, Illegal> {
    use Phase::*;
    let illegal = Err(Illegal {
        action,
        phase: state.phase,
    });
    let at = |phase: Phase, stage: usize| {
        Ok(Transition::Changed(RolloutState {
            phase,
            stage,
            stage_started_ms: now_ms,
        }))
    };
    // The stage after `stage`, or promotion when there is none or it is 100%.
    let next = |stage: usize, to_end: bool| {
        let next = stage + 1;
        if to_end || next >= plan.stages.len() || plan.is_final_weight(next) {
            at(Promoted, stage)
        } else {
            at(Progressing, next)
        }
    };
    match (state.phase, action) {
        (Pending, Action::Start) if plan.is_final_weight(0) => at(Promoted, 0),
        (Pending, Action::Start) => at(Progressing, 0),
        (Progressing, Action::Pause) => Ok(Transition::Changed(RolloutState {
            phase: Paused,
            ..*state
        })),
        // The stage's clock restarts: its minimum duration counts from the resume.
        (Paused, Action::Resume) => at(Progressing, state.stage),
        (Progressing | Paused, Action::Promote { to_end }) => next(state.stage, to_end),
        (Progressing, Action::Advance) => next(state.stage, false),
        (Pending | Progressing | Paused, Action::Rollback) => at(RolledBack, state.stage),
        (RolledBack, Action::Rollback) => Ok(Transition::Unchanged),
        (Pending | Progressing | Paused, Action::Abort) => at(Aborted, state.stage),
        _ => illegal,
    }
}

/// The route table a rollout in `state` asks for. `None` when the rollout no longer
/// holds the target: then the target's own stable policy routes alone.
pub fn route_for(
    plan: &RolloutPlan,
    state: &RolloutState,
    salt: &str,
    revision: u64,
    now_ms: i64,
) -> Option<RouteTable> {
    let weight = match state.phase {
        Phase::Pending => 0,
        Phase::Progressing | Phase::Paused => plan.effective_weight(state.stage, now_ms).bp(),
        Phase::Promoted | Phase::RolledBack | Phase::Aborted => return None,
    };
    Some(RouteTable {
        revision,
        salt: salt.to_string(),
        canary_weight_bp: weight,
        stable: plan.stable.clone(),
        canary: Some(plan.canary.clone()),
        segments: plan
            .segments
            .iter()
            .map(|s| Segment {
                header: s.header.clone(),
                value: s.value.clone(),
                canary_weight_bp: s.weight.bp(),
            })
            .collect(),
        metrics: plan.gates.reported_metrics(),
    })
}

/// The table of a target with no active rollout: its stable policy only.
pub fn stable_only(stable: &PolicyBackend, salt: &str, revision: u64) -> RouteTable {
    RouteTable {
        revision,
        salt: salt.to_string(),
        canary_weight_bp: 0,
        stable: stable.clone(),
        canary: None,
        segments: Vec::new(),
        metrics: Vec::new(),
    }
}

/// The target's stable policy once a rollout ends in `phase`: the canary after a
/// promotion, the plan's stable (the last known-good) otherwise.
pub fn stable_after(plan: &RolloutPlan, phase: Phase) -> &PolicyBackend {
    match phase {
        Phase::Promoted => &plan.canary,
        _ => &plan.stable,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn action_names_read_back() {
        for action in ManualAction::ALL {
            assert_eq!(ManualAction::parse(action.as_str()), Some(action));
            let json = serde_json::to_value(action).unwrap();
            assert_eq!(json, action.as_str());
        }
        for action in AuditAction::ALL {
            assert_eq!(AuditAction::parse(action.as_str()), Some(action));
            assert_eq!(serde_json::to_value(action).unwrap(), action.as_str());
        }
        assert_eq!(ManualAction::parse("launch"), None);
        assert_eq!(
            Action::Promote { to_end: true }.name(),
            AuditAction::PromoteToEnd.as_str()
        );
    }
    use crate::rollout::plan::RolloutPlan;

    fn plan() -> RolloutPlan {
        RolloutPlan::parse(
            r#"
target: t
stable: {version: v1, cluster: s}
canary: {version: v2, cluster: c}
stages: [{weight: 1%}, {weight: 5%}, {weight: 25%}, {weight: 100%}]
segments: [{header: x-g, value: internal, weight: 100%}]
"#,
        )
        .unwrap()
    }

    fn state(phase: Phase, stage: usize) -> RolloutState {
        RolloutState {
            phase,
            stage,
            stage_started_ms: 1,
        }
    }

    const ACTIONS: [Action; 8] = [
        Action::Start,
        Action::Pause,
        Action::Resume,
        Action::Promote { to_end: false },
        Action::Promote { to_end: true },
        Action::Advance,
        Action::Rollback,
        Action::Abort,
    ];

    /// Every phase × action, with the expected result.
    #[test]
    fn every_transition() {
        use Phase::*;
        let p = plan();
        let now = 99;
        let changed = |phase, stage| {
            Ok(Transition::Changed(RolloutState {
                phase,
                stage,
                stage_started_ms: now,
            }))
        };
        for phase in Phase::ALL {
            for action in ACTIONS {
                let from = state(phase, 1);
                let got = transition(&from, &p, action, now);
                let illegal = Err(Illegal { action, phase });
                let expected = match (phase, action) {
                    (Pending, Action::Start) => changed(Progressing, 0),
                    (Progressing, Action::Pause) => Ok(Transition::Changed(RolloutState {
                        phase: Paused,
                        ..from
                    })),
                    (Paused, Action::Resume) => changed(Progressing, 1),
                    (Progressing | Paused, Action::Promote { to_end: false }) => {
                        changed(Progressing, 2)
                    }
                    (Progressing | Paused, Action::Promote { to_end: true }) => {
                        changed(Promoted, 1)
                    }
                    (Progressing, Action::Advance) => changed(Progressing, 2),
                    (Pending | Progressing | Paused, Action::Rollback) => changed(RolledBack, 1),
                    (RolledBack, Action::Rollback) => Ok(Transition::Unchanged),
                    (Pending | Progressing | Paused, Action::Abort) => changed(Aborted, 1),
                    _ => illegal,
                };
                assert_eq!(got, expected, "{phase:?} + {action:?}");
            }
        }
    }

    #[test]
    fn the_last_stage_and_a_full_stage_promote() {
        let p = plan();
        // From stage 2 (25%) the next is 100%: promotion.
        let got = transition(&state(Phase::Progressing, 2), &p, Action::Advance, 5).unwrap();
        assert_eq!(
            got,
            Transition::Changed(RolloutState {
                phase: Phase::Promoted,
                stage: 2,
                stage_started_ms: 5
            })
        );
        let mut short = p.clone();
        short.stages.truncate(2);
        let got = transition(
            &state(Phase::Progressing, 1),
            &short,
            Action::Promote { to_end: false },
            5,
        )
        .unwrap();
        assert!(matches!(got, Transition::Changed(s) if s.phase == Phase::Promoted));
        let mut full = p.clone();
        full.stages.drain(..3);
        let got = transition(&RolloutState::new(0), &full, Action::Start, 5).unwrap();
        assert!(matches!(got, Transition::Changed(s) if s.phase == Phase::Promoted));
    }

    #[test]
    fn routes_per_phase() {
        let p = plan();
        let table = route_for(&p, &state(Phase::Progressing, 1), "salt", 7, 0).unwrap();
        assert_eq!(
            (table.canary_weight_bp, table.revision, table.salt.as_str()),
            (500, 7, "salt")
        );
        assert_eq!(table.segments[0].canary_weight_bp, 10_000);
        table.validate("").unwrap();
        let paused = route_for(&p, &state(Phase::Paused, 2), "salt", 8, 0).unwrap();
        assert_eq!(paused.canary_weight_bp, 2_500, "a pause holds the weight");
        assert_eq!(
            route_for(&p, &state(Phase::Pending, 0), "s", 1, 0)
                .unwrap()
                .canary_weight_bp,
            0
        );
        for phase in [Phase::Promoted, Phase::RolledBack, Phase::Aborted] {
            assert!(route_for(&p, &state(phase, 1), "s", 1, 0).is_none());
        }
        assert_eq!(stable_after(&p, Phase::Promoted).version, "v2");
        assert_eq!(stable_after(&p, Phase::RolledBack).version, "v1");
        assert_eq!(stable_after(&p, Phase::Aborted).version, "v1");
        stable_only(&p.stable, "", 3).validate("").unwrap();
    }
}
