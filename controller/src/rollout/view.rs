//! The one typed view of a rollout that the API serves and the dashboard and the
//! CLI read: its state and stages (`RolloutView`), its analysis
//! (`RolloutAnalysis`) and, for a page, its audit entries.

use crate::rollout::plan::RolloutPlan;
use crate::rollout::Phase;
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
    pub stable: policy_canary::config::PolicyBackend,
    pub canary: policy_canary::config::PolicyBackend,
    pub revision: u64,
    pub created_ms: i64,
    pub updated_ms: i64,
    pub plan: RolloutPlan,
}
