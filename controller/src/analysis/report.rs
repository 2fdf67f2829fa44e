//! What an analysis reports: each gate's comparison side by side, the safety
//! check, the traffic outside the comparison, and the report people read.

use super::evidence::{Sample, SeriesKey};
use super::{clustered, planning, MIN_SAMPLES};
use crate::rollout::gates::{Direction, Gate, Threshold};
use crate::store::AuditEntry;
use policy_canary::stats::Counter;
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GateVerdict {
    Pass,
    Breach,
    Inconclusive,
    NotApplicable,
    Disabled,
}

impl GateVerdict {
    pub fn as_str(self) -> &'static str {
        match self {
            GateVerdict::Pass => "pass",
            GateVerdict::Breach => "breach",
            GateVerdict::Inconclusive => "inconclusive",
            GateVerdict::NotApplicable => "not_applicable",
            GateVerdict::Disabled => "disabled",
        }
    }
}

impl std::fmt::Display for GateVerdict {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One gate, side by side.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The gate's name: a built-in metric's (`completion_rate`) or the plan's own.
    pub metric: String,
    pub stable: Option<f64>,
    pub canary: Option<f64>,
    /// Canary vs stable in the gate's terms (`-19.0 points`, `+25.0%`).
    pub change: String,
    pub threshold: String,
    pub direction: Direction,
    pub n_stable: f64,
    pub n_canary: f64,
    /// The point estimate of the degradation δ (δ > 0: worse than allowed).
    pub estimate: Option<f64>,
    /// Anytime-valid bounds on δ.
    pub degradation: Option<(f64, f64)>,
    /// Effective replicates of stable and canary (`clustered`): fewer than
    /// `clustered::MIN_GROUPS` in an arm means a few sessions dominate it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effective_replicates: Option<[f64; 2]>,
    pub verdict: GateVerdict,
    /// While the rollout runs: about how many seconds more this open gate needs at
    /// the canary's rate so far (`planning::eta_seconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub eta_s: Option<f64>,
}

impl Comparison {
    /// Which arms a few sessions dominate: fewer effective replicates than a
    /// verdict needs, though the arm has units enough.
    pub fn dominated_arms(&self) -> Vec<&'static str> {
        let Some([stable, canary]) = self.effective_replicates else {
            return Vec::new();
        };
        let few =
            |effective: f64, n: f64| n >= MIN_SAMPLES && effective < clustered::MIN_GROUPS as f64;
        [
            ("stable", few(stable, self.n_stable)),
            ("canary", few(canary, self.n_canary)),
        ]
        .into_iter()
        .filter_map(|(arm, dominated)| dominated.then_some(arm))
        .collect()
    }

    /// A comparison with no verdict yet (inconclusive), or disabled.
    pub(super) fn open(
        metric: &str,
        gate: &Gate,
        stable: Option<f64>,
        canary: Option<f64>,
        (n_stable, n_canary): (f64, f64),
    ) -> Comparison {
        Comparison {
            metric: metric.to_string(),
            stable,
            canary,
            change: match (stable, canary) {
                (Some(s), Some(c)) => change(gate.threshold, s, c),
                _ => "n/a".into(),
            },
            threshold: gate.threshold.to_string(),
            direction: gate.direction,
            n_stable,
            n_canary,
            estimate: None,
            degradation: None,
            effective_replicates: None,
            eta_s: None,
            verdict: if gate.enabled {
                GateVerdict::Inconclusive
            } else {
                GateVerdict::Disabled
            },
        }
    }
}

/// Traffic outside the comparison (forced, segment-routed, sessionless to
/// stable), one version of one class: shown apart, never compared.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ApartTraffic {
    /// `forced`, `segment` or `sessionless`.
    pub traffic: String,
    pub version: String,
    pub requests: f64,
    /// 5xx answers and requests without a response.
    pub errors: f64,
    pub tasks: f64,
    pub tasks_completed: f64,
    pub cost_micros: f64,
    pub safety_violations: f64,
}

impl ApartTraffic {
    pub(super) fn of(key: &SeriesKey, sample: &Sample) -> ApartTraffic {
        ApartTraffic {
            traffic: key.traffic.name().to_string(),
            version: key.version.clone(),
            requests: sample.count(Counter::RqTotal),
            errors: sample.count(Counter::Rq5xx) + sample.count(Counter::RqNoResponse),
            tasks: sample.count(Counter::TasksTotal),
            tasks_completed: sample.count(Counter::TasksCompleted),
            cost_micros: sample.count(Counter::CostMicros),
            safety_violations: sample.count(Counter::SafetyViolations),
        }
    }
}

/// A constant-weight period of the window, as the analysis saw it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PeriodView {
    pub started_ms: i64,
    pub weight_bp: Option<u16>,
    pub stable_requests: f64,
    pub canary_requests: f64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SafetyCheck {
    pub stable: f64,
    pub canary: f64,
    pub enabled: bool,
    pub verdict: GateVerdict,
}

/// Everything one check saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    pub stage: usize,
    pub window_started_ms: i64,
    /// The stage's analysis sequence (`Window::sequence`): above 0 only after a
    /// controller restart lost the window's evidence.
    #[serde(default)]
    pub sequence: u32,
    /// The window's constant-weight periods (compared per period).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub periods: Vec<PeriodView>,
    pub stable_requests: f64,
    pub canary_requests: f64,
    /// The breach level per gate (the false-rollback budget split).
    pub alpha: f64,
    /// The pass level per gate (the false-promotion budget).
    #[serde(default)]
    pub beta: f64,
    /// Both versions reported session replicates: every bound is session-robust.
    /// Otherwise units (requests, tasks) were taken as independent.
    #[serde(default)]
    pub session_robust: bool,
    pub comparisons: Vec<Comparison>,
    pub safety: SafetyCheck,
    /// Traffic outside the comparison, by class and version.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside: Vec<ApartTraffic>,
    /// Neither version reported a task in the window.
    pub telemetry_missing: bool,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub malformed_lines: u64,
    /// Why the evidence source cannot be trusted now (the stage is held).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub evidence_unavailable: Option<String>,
}

impl Analysis {
    /// The analysis an automatic decision kept in its audit entry, if it kept one.
    pub fn from_audit(entry: &AuditEntry) -> Option<Analysis> {
        serde_json::from_value(entry.details.clone()?).ok()
    }

    pub fn breaches(&self) -> Vec<&Comparison> {
        self.comparisons
            .iter()
            .filter(|c| c.verdict == GateVerdict::Breach)
            .collect()
    }

    /// Every enabled gate passed (or cannot apply).
    pub fn all_pass(&self) -> bool {
        self.comparisons.iter().all(|c| {
            matches!(
                c.verdict,
                GateVerdict::Pass | GateVerdict::NotApplicable | GateVerdict::Disabled
            )
        })
    }
}

/// What the judge saw: the current stage window's analysis while a rollout is
/// under way, or the one its last automatic decision kept once it has ended.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AnalysisReport {
    #[serde(flatten)]
    pub analysis: Analysis,
    /// Checks in a row that breached a gate (under way only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub consecutive_failures: Option<u32>,
    /// When the decision this analysis led to was made (ended rollouts only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub decided_ms: Option<i64>,
}

impl AnalysisReport {
    /// An active stage's report; with `now_ms` (the stage is running, not paused),
    /// each open gate's estimated time to decision.
    pub fn running(mut analysis: Analysis, consecutive_failures: u32, now_ms: Option<i64>) -> Self {
        if let Some(now_ms) = now_ms {
            let elapsed_s = (now_ms - analysis.window_started_ms) as f64 / 1000.0;
            for c in &mut analysis.comparisons {
                c.eta_s = planning::eta_seconds(c, elapsed_s);
            }
        }
        AnalysisReport {
            analysis,
            consecutive_failures: Some(consecutive_failures),
            decided_ms: None,
        }
    }

    /// Traffic flowed but neither version reported agent telemetry.
    pub fn telemetry_missing(&self) -> bool {
        self.analysis.telemetry_missing && self.analysis.canary_requests > 0.0
    }
}

/// Said (by `rollout status` and the dashboard) when traffic flowed but neither
/// version reported agent telemetry.
pub const TELEMETRY_MISSING: &str = "No agent telemetry from either version in this window: \
    the gates measured from it are not applicable, or inconclusive (holding the stage) \
    with `require_telemetry: true` in the plan.";

/// Whether an analysis (as JSON) saw requests but no agent telemetry.
pub fn telemetry_missing(analysis: &serde_json::Value) -> bool {
    analysis["telemetry_missing"] == true
        && analysis["canary_requests"].as_f64().unwrap_or(0.0) > 0.0
}

/// Canary against stable in the gate's own terms: points or percent.
fn change(threshold: Threshold, stable: f64, canary: f64) -> String {
    match threshold {
        Threshold::Absolute(_) => format!("{:+.1} points", (canary - stable) * 100.0),
        Threshold::Relative(_) if stable > 0.0 => {
            format!("{:+.1}%", (canary / stable - 1.0) * 100.0)
        }
        Threshold::Relative(_) => "n/a".into(),
    }
}
