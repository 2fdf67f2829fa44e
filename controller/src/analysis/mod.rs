//! Canary analysis: compares canary with stable over the same stage window, gate by
//! gate, with anytime-valid bounds (`sequential`), and decides what the stage does.
//!
//! For each gate the *degradation* δ is defined so that δ > 0 means "worse than the
//! threshold allows":
//!
//! ```text
//! higher is worse, relative r:  δ = canary − (1 + r) · stable
//! higher is worse, absolute a:  δ = canary − stable − a
//! lower is worse,  relative r:  δ = (1 − r) · stable − canary
//! lower is worse,  absolute a:  δ = stable − canary − a
//! ```
//!
//! With each arm's mean inside its confidence sequence at α/2, δ lies in
//! `[lower, upper]` at every check with probability ≥ 1 − α. A gate is **breach**
//! when `lower > 0`, **pass** when `upper < 0` (the degradation is shown to be within
//! the threshold), **inconclusive** otherwise or with fewer than `MIN_SAMPLES` in an
//! arm, **not applicable** when neither arm has any (no tool calls, say). When
//! neither version reported a task at all, a plan with `require_telemetry` keeps the
//! gates measured from agent telemetry inconclusive instead; an evidence source that
//! cannot be trusted now (`Window::unavailable`) makes every gate inconclusive.
//! A relative gate whose allowed degradation `r · stable` falls below the gate's
//! `floor` (error rate 0.5 points, tool error, abandonment 1 point, guardrail 0.01
//! per request) uses the floor as an absolute threshold instead: on rates near zero
//! no canary-sized sample can show a relative change either way.
//! Two budgets (`Levels`): a breach is shown at the plan's `false_rollback` (1%)
//! split over analysed stages and enabled gates, so an A/A rollout breaches any
//! gate at any check of any stage with probability ≤ 1%; a pass at
//! `false_promotion` (5%) per gate, unsplit: a canary at a gate's threshold passes
//! that gate with probability ≤ 5%. With session replicates (`clustered`) the
//! bounds use the between-replicate variance; without, units are independent.
//!
//! Latency P95 is compared through exceedance: with L = stable's P95 × (1 + r), or
//! stable's P95 plus a ms, the canary breaches when the share of its requests slower
//! than L is shown to exceed 5%, and passes when it is shown to stay below 5%;
//! stable's P95 enters through its own bounds.
//!
//! Only compared traffic is compared (`Traffic::Compared`: placed by the cohort
//! hash at the rollout's weight), period by constant-weight period of the window;
//! forced, segment-routed and sessionless requests are shown apart (`outside`).

mod arms;
pub mod baseline;
pub mod clustered;
pub mod compare;
pub mod decide;
pub mod evidence;
pub mod judge;
mod latency;
pub mod planning;
mod report;
pub mod sequential;

use crate::analysis::evidence::Window;
use crate::rollout::gates::{Measure, NamedGate};
use crate::rollout::plan::RolloutPlan;
use arms::Stratum;
use compare::compare;
use evidence::SeriesKey;
use policy_canary::stats::{Counter, Traffic};

pub use decide::{decide, StageDecision};
pub use latency::{exceeding, quantile};
pub use report::{
    telemetry_missing, Analysis, AnalysisReport, ApartTraffic, Comparison, GateVerdict, PeriodView,
    SafetyCheck, TELEMETRY_MISSING,
};

/// The levels of a gate's two bounds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Levels {
    /// The lower bound's: a breach is wrong with at most this probability.
    pub breach: f64,
    /// The upper bound's: a pass of a canary at the threshold, at most this.
    pub pass: f64,
}

impl Levels {
    /// Without session replicates (units independent): the budget split evenly over
    /// stages and gates, and a pass at the plan's level.
    pub fn of(plan: &RolloutPlan) -> Levels {
        Levels {
            breach: gate_alpha(plan),
            pass: plan.false_promotion,
        }
    }

    /// With session replicates: the first analysed stage, where a regression
    /// should be caught with the fewest sessions exposed, gets half the
    /// false-rollback budget, the later stages share the other half; within a
    /// stage the gates share evenly. The sum over stages and gates is the budget.
    pub fn at_stage(plan: &RolloutPlan, stage: usize) -> Levels {
        let stages = analysed_stages(plan);
        let share = if stages <= 1 {
            1.0
        } else if stage == 0 {
            0.5
        } else {
            0.5 / (stages - 1) as f64
        };
        Levels {
            breach: plan.false_rollback * share / enabled_gates(plan) as f64,
            pass: plan.false_promotion,
        }
    }

    /// The levels of a stage's analysis sequence `k`: 0 unless a controller
    /// restart lost the evidence of the ones before (`Window::sequence`). The
    /// first gets `FIRST_SEQUENCE_SHARE` of both budgets, sequence k ≥ 1 the rest
    /// halved k times, so that however many there are, together they spend each
    /// budget once.
    pub fn for_sequence(self, k: u32) -> Levels {
        let share = if k == 0 {
            FIRST_SEQUENCE_SHARE
        } else {
            (1.0 - FIRST_SEQUENCE_SHARE) * 0.5f64.powi(k.min(1_000) as i32)
        };
        Levels {
            breach: self.breach * share,
            pass: self.pass * share,
        }
    }
}

/// The share of a stage's budgets its first analysis sequence spends (the
/// others, after lost evidence, share the rest).
pub const FIRST_SEQUENCE_SHARE: f64 = 0.9;

/// Fewer samples than this in an arm: inconclusive (the bounds rely on the CLT).
pub const MIN_SAMPLES: f64 = 30.0;

fn analysed_stages(plan: &RolloutPlan) -> usize {
    plan.stages
        .iter()
        .filter(|s| s.weight.bp() < 10_000)
        .count()
        .max(1)
}

fn enabled_gates(plan: &RolloutPlan) -> usize {
    plan.gates.enabled().len().max(1)
}

/// The gates an analysis shows: every enabled one, and the built-in ones on by
/// default that the plan turned off (shown as disabled).
pub fn shown_gates(plan: &RolloutPlan) -> Vec<NamedGate> {
    plan.gates
        .all()
        .into_iter()
        .filter(|g| {
            g.gate.enabled || matches!(g.measure, Measure::Builtin(m) if m.default_gate().enabled)
        })
        .collect()
}

/// α for one gate at one stage, split evenly (without session replicates).
pub fn gate_alpha(plan: &RolloutPlan) -> f64 {
    plan.false_rollback / (analysed_stages(plan) * enabled_gates(plan)) as f64
}

/// Compares the window's two versions under the plan's gates.
pub fn analyse(plan: &RolloutPlan, stage: usize, window: &Window) -> Analysis {
    let (stable_key, canary_key) = (
        SeriesKey::compared(&plan.stable.version),
        SeriesKey::compared(&plan.canary.version),
    );
    let strata: Vec<Stratum> = window
        .periods()
        .iter()
        .map(|p| Stratum {
            stable: p.get(&stable_key),
            canary: p.get(&canary_key),
        })
        .collect();
    let stable = window.series(&stable_key);
    let canary = window.series(&canary_key);
    let session_robust = stable.has_replicates() && canary.has_replicates();
    let levels = if session_robust {
        Levels::at_stage(plan, stage)
    } else {
        Levels::of(plan)
    }
    .for_sequence(window.sequence);
    let telemetry_missing =
        stable.count(Counter::TasksTotal) == 0.0 && canary.count(Counter::TasksTotal) == 0.0;
    let comparisons = shown_gates(plan)
        .iter()
        .map(|g| {
            let mut c = compare(g, &strata, window, levels, session_robust);
            let from_agent = match &g.measure {
                Measure::Builtin(m) => m.from_agent_telemetry(),
                Measure::Reported(_) => true,
                Measure::Signal { .. } => false,
            };
            let unproven = window.unavailable.is_some()
                || (plan.require_telemetry && telemetry_missing && from_agent);
            if unproven {
                c.verdict = match c.verdict {
                    GateVerdict::Disabled => GateVerdict::Disabled,
                    _ => GateVerdict::Inconclusive,
                };
            }
            c
        })
        .collect();
    let outside: Vec<ApartTraffic> = window
        .apart()
        .iter()
        .map(|(key, sample)| ApartTraffic::of(key, sample))
        .collect();
    // Zero tolerance holds for every user the canary served, segment-routed ones
    // too (forced requests aside: whoever can force must not roll back).
    let safety_enabled = plan.gates.safety_violations.enabled;
    let canary_violations = canary.count(Counter::SafetyViolations)
        + window
            .series(&SeriesKey::new(Traffic::Segment, &plan.canary.version))
            .count(Counter::SafetyViolations);
    Analysis {
        stage: stage + 1,
        window_started_ms: window.started_ms,
        sequence: window.sequence,
        periods: window
            .periods()
            .iter()
            .zip(&strata)
            .map(|(p, s)| PeriodView {
                started_ms: p.started_ms,
                weight_bp: p.weight_bp,
                stable_requests: s.stable.count(Counter::RqTotal),
                canary_requests: s.canary.count(Counter::RqTotal),
            })
            .collect(),
        stable_requests: stable.count(Counter::RqTotal),
        canary_requests: canary.count(Counter::RqTotal),
        alpha: levels.breach,
        beta: levels.pass,
        session_robust,
        comparisons,
        safety: SafetyCheck {
            stable: stable.count(Counter::SafetyViolations),
            canary: canary_violations,
            enabled: safety_enabled,
            verdict: match (safety_enabled, canary_violations > 0.0) {
                (false, _) => GateVerdict::Disabled,
                (true, true) => GateVerdict::Breach,
                // No evidence proves no violation.
                (true, false) if window.unavailable.is_some() => GateVerdict::Inconclusive,
                (true, false) => GateVerdict::Pass,
            },
        },
        outside,
        telemetry_missing,
        scrapes_ok: window.scrapes_ok,
        scrapes_failed: window.scrapes_failed,
        malformed_lines: window.malformed_lines,
        evidence_unavailable: window.unavailable.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::evidence::envoy_admin::parse_prometheus;
    use crate::analysis::evidence::Window;

    fn plan() -> RolloutPlan {
        RolloutPlan::parse(
            "target: t\nstable: {version: s, cluster: a}\ncanary: {version: c, cluster: b}\nfailure_threshold: 2\n\
             stages: [{weight: 5%, min_duration: 1m, min_requests: 100}, {weight: 100%}]\n",
        )
        .unwrap()
    }

    /// A window in which stable and canary served these counters, in ten equal passes.
    fn window(stable: &[(&str, f64)], canary: &[(&str, f64)]) -> Window {
        let text = |scale: f64| -> String {
            [("s", stable), ("c", canary)]
                .iter()
                .flat_map(|(version, values)| {
                    values.iter().map(move |(k, v)| {
                        format!(
                            "policy_canary_{k}{{target=\"t\",policy_version=\"{version}\"}} {}\n",
                            v * scale
                        )
                    })
                })
                .collect()
        };
        let mut w = Window::new(0);
        w.add("e", &parse_prometheus(&text(0.0), "t"));
        for i in 1..=10 {
            w.add("e", &parse_prometheus(&text(f64::from(i) / 10.0), "t"));
            w.end_pass("s", "c");
        }
        w
    }

    fn tasks(n: f64, completed: f64) -> Vec<(&'static str, f64)> {
        vec![
            ("rq_total", n),
            ("tasks_total", n),
            ("tasks_completed", completed),
            ("cost_micros", n * 1000.0),
        ]
    }

    fn verdict_of(a: &Analysis, metric: &str) -> GateVerdict {
        a.comparisons
            .iter()
            .find(|c| c.metric == metric)
            .unwrap()
            .verdict
    }

    /// Requests the canary never answered (resets) count as errors, like 5xx.
    #[test]
    fn requests_without_a_response_count_in_the_error_gate() {
        let mut stable = tasks(20_000.0, 18_000.0);
        stable.push(("rq_5xx", 100.0));
        let mut canary = tasks(2_000.0, 1_800.0);
        canary.push(("rq_no_response", 200.0));
        let a = analyse(&plan(), 0, &window(&stable, &canary));
        assert_eq!(verdict_of(&a, "error_rate"), GateVerdict::Breach);
    }

    #[test]
    fn a_clear_drop_in_completion_breaches() {
        let w = window(&tasks(20_000.0, 18_000.0), &tasks(1_000.0, 700.0));
        let a = analyse(&plan(), 0, &w);
        assert_eq!(verdict_of(&a, "completion_rate"), GateVerdict::Breach);
        let c = a
            .comparisons
            .iter()
            .find(|c| c.metric == "completion_rate")
            .unwrap();
        assert_eq!(c.change, "-20.0 points");
        let (decision, failures) = decide(&plan(), 0, 0, &a, 0);
        assert_eq!(
            (decision, failures),
            (StageDecision::Hold, 1),
            "one breaching check is not enough"
        );
        let (decision, _) = decide(&plan(), 0, 0, &a, 1);
        assert!(
            matches!(decision, StageDecision::Rollback(r) if r.contains("completion_rate -20.0 points"))
        );
    }

    #[test]
    fn an_equal_canary_passes_with_enough_data_and_not_before() {
        let small = window(&tasks(2_000.0, 1_800.0), &tasks(50.0, 45.0));
        let a = analyse(&plan(), 0, &small);
        assert_eq!(verdict_of(&a, "completion_rate"), GateVerdict::Inconclusive);
        assert_eq!(
            verdict_of(&a, "tool_error_rate"),
            GateVerdict::NotApplicable
        );
        assert_eq!(decide(&plan(), 0, 120_000, &a, 0).0, StageDecision::Hold);
        let big = window(&tasks(200_000.0, 180_000.0), &tasks(20_000.0, 18_000.0));
        let a = analyse(&plan(), 0, &big);
        assert_eq!(verdict_of(&a, "completion_rate"), GateVerdict::Pass);
        // Not before the stage's minimum duration.
        assert_eq!(decide(&plan(), 0, 30_000, &a, 0).0, StageDecision::Hold);
    }

    #[test]
    fn safety_is_zero_tolerance() {
        let mut canary = tasks(100.0, 90.0);
        canary.push(("safety_violations", 1.0));
        let a = analyse(&plan(), 0, &window(&tasks(1_000.0, 900.0), &canary));
        assert_eq!(a.safety.verdict, GateVerdict::Breach);
        assert!(
            matches!(decide(&plan(), 0, 0, &a, 0).0, StageDecision::Rollback(r) if r.contains("safety"))
        );
    }

    #[test]
    fn past_the_maximum_duration_an_open_stage_is_inconclusive() {
        let a = analyse(&plan(), 0, &window(&tasks(100.0, 90.0), &tasks(10.0, 9.0)));
        let max = plan().max_stage_duration.millis();
        assert!(matches!(
            decide(&plan(), 0, max, &a, 0).0,
            StageDecision::Inconclusive(_)
        ));
    }

    #[test]
    fn histogram_quantiles_and_exceedance() {
        let buckets = [
            (10.0, 50.0),
            (20.0, 90.0),
            (50.0, 100.0),
            (f64::INFINITY, 100.0),
        ];
        assert!((quantile(&buckets, 0.5).unwrap() - 10.0).abs() < 1e-9);
        assert!((quantile(&buckets, 0.95).unwrap() - 35.0).abs() < 1e-9);
        assert!((exceeding(&buckets, 35.0) - 5.0).abs() < 1e-9);
        assert!((exceeding(&buckets, 15.0) - 30.0).abs() < 1e-9);
        assert_eq!(quantile(&[], 0.5), None);
    }

    #[test]
    fn zero_rates_pass_with_the_floor() {
        let w = window(&tasks(50_000.0, 45_000.0), &tasks(5_000.0, 4_500.0));
        let a = analyse(&plan(), 0, &w);
        assert_eq!(verdict_of(&a, "error_rate"), GateVerdict::Pass);
        assert_eq!(verdict_of(&a, "guardrail_rate"), GateVerdict::Pass);
    }

    #[test]
    fn without_telemetry_a_stage_passes_on_http_gates_unless_the_plan_requires_it() {
        // Plenty of requests, identical error rates, no task reported by either version.
        let http_only = |n: f64| vec![("rq_total", n), ("rq_5xx", n * 0.001)];
        let w = window(&http_only(200_000.0), &http_only(20_000.0));
        let agent_gates = [
            "completion_rate",
            "tool_error_rate",
            "cost_per_task",
            "abandonment_rate",
        ];

        // (No latency histogram here.)
        let mut lenient = plan();
        lenient.gates.spec_mut("latency_p95").enabled = Some(false);
        let a = analyse(&lenient, 0, &w);
        assert!(a.telemetry_missing);
        for metric in agent_gates {
            assert_eq!(
                verdict_of(&a, metric),
                GateVerdict::NotApplicable,
                "{metric}"
            );
        }
        assert!(matches!(
            decide(&lenient, 0, 120_000, &a, 0).0,
            StageDecision::Advance(_)
        ));

        let mut strict = lenient.clone();
        strict.require_telemetry = true;
        let a = analyse(&strict, 0, &w);
        for metric in agent_gates.into_iter().chain(["guardrail_rate"]) {
            assert_eq!(
                verdict_of(&a, metric),
                GateVerdict::Inconclusive,
                "{metric}"
            );
        }
        assert_eq!(verdict_of(&a, "error_rate"), GateVerdict::Pass);
        assert_eq!(decide(&strict, 0, 120_000, &a, 0).0, StageDecision::Hold);
        let max = strict.max_stage_duration.millis();
        assert!(matches!(
            decide(&strict, 0, max, &a, 0).0,
            StageDecision::Inconclusive(r) if r.contains("completion_rate")
        ));

        // With telemetry the option changes nothing.
        let w = window(&tasks(200_000.0, 180_000.0), &tasks(20_000.0, 18_000.0));
        let a = analyse(&strict, 0, &w);
        assert!(!a.telemetry_missing);
        assert_eq!(verdict_of(&a, "completion_rate"), GateVerdict::Pass);
        assert_eq!(
            verdict_of(&a, "tool_error_rate"),
            GateVerdict::NotApplicable
        );
    }

    #[test]
    fn alpha_is_split_over_stages_and_gates() {
        let p = plan();
        assert!((gate_alpha(&p) - 0.01 / 7.0).abs() < 1e-15);
    }
}

#[cfg(test)]
mod robust_tests;

#[cfg(test)]
mod fairness_tests;

#[cfg(test)]
mod gates_tests;
