//! The one typed view of a rollout that the API serves and the dashboard and the
//! CLI read: its state and stages (`RolloutView`), its analysis
//! (`RolloutAnalysis`, carrying the analysis' `AnalysisReport`), both together (`RolloutStatus`), and the
//! lists the API answers with.

use crate::analysis::AnalysisReport;
use crate::fleet::EnvoyList;
use crate::rollout::plan::{RolloutPlan, Stage};
use crate::rollout::Phase;
use crate::store::{AuditEntry, PolicyRecord, RolloutRow, TargetRow};
use crate::units::Weight;
use policy_canary::route::PolicyBackend;
use serde::{Deserialize, Serialize};

/// A rollout as the API shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
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
    pub stable: PolicyBackend,
    pub canary: PolicyBackend,
    pub revision: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub plan: RolloutPlan,
}

impl RolloutView {
    /// The view of a stored rollout at `now_ms`; `revision` is its target's route revision.
    pub fn new(row: RolloutRow, revision: u64, now_ms: i64) -> RolloutView {
        let weight = match row.state.phase {
            Phase::Progressing | Phase::Paused => {
                row.plan.effective_weight(row.state.stage, now_ms)
            }
            Phase::Promoted => Weight::FULL,
            Phase::Pending | Phase::RolledBack | Phase::Aborted => Weight(0),
        };
        let stage_weight = row
            .plan
            .stages
            .get(row.state.stage)
            .map_or(Weight(0), |s| s.weight);
        RolloutView {
            id: row.id,
            target: row.target,
            phase: row.state.phase,
            stage: row.state.stage + 1,
            stages: row.plan.stages.len(),
            weight: weight.to_string(),
            weight_bp: weight.bp(),
            stage_weight: stage_weight.to_string(),
            stage_started_ms: row.state.stage_started_ms,
            salt: row.salt,
            stable: row.plan.stable.clone(),
            canary: row.plan.canary.clone(),
            revision,
            created_ms: row.created_ms,
            updated_ms: row.updated_ms,
            plan: row.plan,
        }
    }

    /// Whether the rollout is still under way.
    pub fn is_active(&self) -> bool {
        self.phase.is_active()
    }

    /// The current stage of the plan (`stage` is 1-based).
    pub fn current_stage(&self) -> Option<&Stage> {
        self.plan.stages.get(self.stage.checked_sub(1)?)
    }
}

/// `GET /v1/rollouts/{id}/analysis`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutAnalysis {
    pub rollout_id: i64,
    pub phase: Phase,
    /// 1-based stage number.
    pub stage: usize,
    pub analysis: Option<AnalysisReport>,
}

/// A rollout with its analysis: what `rollout status` shows (and prints with `--json`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutStatus {
    #[serde(flatten)]
    pub rollout: RolloutView,
    pub analysis: Option<AnalysisReport>,
}

/// `GET /v1/rollouts`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RolloutList {
    pub rollouts: Vec<RolloutView>,
}

/// `GET /v1/policies`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyList {
    pub policies: Vec<PolicyRecord>,
}

/// `GET /v1/targets`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetList {
    pub targets: Vec<TargetRow>,
}

/// What `canaryctl targets` shows: each target's table, and which Envoys hold
/// which revision.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetsView {
    #[serde(flatten)]
    pub targets: TargetList,
    #[serde(flatten)]
    pub envoys: EnvoyList,
}

/// `GET /v1/audit`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditList {
    pub audit: Vec<AuditEntry>,
}

/// `GET /v1/tokens` (never the secrets: only their hashes are kept).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TokenList {
    pub tokens: Vec<crate::store::TokenRecord>,
}

/// Typed values from partial JSON, for tests: what the fixture leaves out gets a
/// neutral default.
#[cfg(test)]
pub(crate) mod fixtures {
    use super::*;
    use serde_json::json;

    pub(crate) fn report(value: serde_json::Value) -> AnalysisReport {
        let mut value = value;
        for (key, default) in [
            ("stage", json!(2)),
            ("window_started_ms", json!(1_000)),
            ("scrapes_ok", json!(10)),
            ("scrapes_failed", json!(0)),
            ("malformed_lines", json!(0)),
            ("telemetry_missing", json!(false)),
        ] {
            if value.get(key).is_none() {
                value[key] = default;
            }
        }
        if let Some(comparisons) = value["comparisons"].as_array_mut() {
            for c in comparisons {
                c["direction"] = json!("lower_is_worse");
                c["estimate"] = json!(null);
                c["degradation"] = json!(null);
            }
        }
        value["safety"]["enabled"] = json!(true);
        serde_json::from_value(value).unwrap()
    }

    pub(crate) fn audit(value: serde_json::Value) -> AuditEntry {
        let mut value = value;
        for key in ["target", "rollout_id", "details"] {
            if value.get(key).is_none() {
                value[key] = json!(null);
            }
        }
        serde_json::from_value(value).unwrap()
    }

    pub(crate) fn rollout(value: serde_json::Value) -> RolloutView {
        let mut value = value;
        let defaults = json!({"id": 1, "target": "t", "phase": "progressing", "stage": 1,
            "stages": 1, "weight": "0%", "weight_bp": 0, "stage_weight": "0%",
            "stage_started_ms": 0, "salt": "s", "revision": 1, "created_ms": 0, "updated_ms": 0,
            "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"}});
        for (key, default) in defaults.as_object().into_iter().flatten() {
            if value.get(key).is_none() {
                value[key] = default.clone();
            }
        }
        for key in ["target", "stable", "canary"] {
            if value["plan"].get(key).is_none() {
                value["plan"][key] = value[key].clone();
            }
        }
        serde_json::from_value(value).unwrap()
    }
}
