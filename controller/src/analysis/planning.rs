//! How long a plan's stages take to decide (`canaryctl plan check`), and how long
//! an open gate still needs while a rollout runs (`eta_seconds`).
//!
//! For each stage and enabled gate: the canary units (requests, tasks, tool calls)
//! needed before the gate's bounds (the same boundary, levels and Student's t at 31
//! degrees of freedom as the analysis) show a canary equal to stable within the
//! threshold (pass), and show one at 1.6× the threshold beyond it (breach), at
//! the given traffic. Stable's behaviour is assumed (`Baseline`, overridable).

use super::clustered::MIN_GROUPS;
use super::sequential::{clustered_margin, T_STAR_BREACH, T_STAR_PASS};
use super::{Comparison, GateVerdict, Levels};
use crate::rollout::gates::{Measure, Metric, NamedGate, Threshold};
use crate::rollout::plan::RolloutPlan;
use policy_canary::replicate::REPLICATES;
use serde::Serialize;

pub use super::baseline::Baseline;

/// One gate at one stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct GateCheck {
    /// The gate's name.
    pub metric: String,
    /// Canary units to pass a canary equal to stable (`None`: never, at any size).
    pub pass_units: Option<f64>,
    pub pass_seconds: Option<f64>,
    /// Canary units to breach a canary at 1.6× the threshold.
    pub breach_units: Option<f64>,
    pub breach_seconds: Option<f64>,
    /// Why this gate cannot decide within the stage's maximum, and what would.
    pub problem: Option<String>,
}

/// One stage.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StageCheck {
    pub stage: usize,
    pub weight_bp: u16,
    /// Canary requests per second at this weight.
    pub canary_rate: f64,
    pub expected_sessions: Option<f64>,
    /// With `--sessions`: the canary's effective replicates, median over draws
    /// of its sessions' traffic shares (`effective_replicates`).
    pub effective_replicates: Option<f64>,
    pub gates: Vec<GateCheck>,
    /// When an equal canary would advance: the slowest pass, at least min_duration.
    pub seconds_to_advance: Option<f64>,
    pub problems: Vec<String>,
}

/// The whole plan.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PlanCheck {
    pub rate: f64,
    pub sessions: Option<f64>,
    pub stages: Vec<StageCheck>,
    /// An equal canary's time to promotion, if every stage can decide.
    pub seconds_to_promotion: Option<f64>,
}

impl PlanCheck {
    pub fn ok(&self) -> bool {
        self.stages.iter().all(|s| s.problems.is_empty())
    }
}

/// Per-unit variance and the allowed degradation d of a gate under the baseline,
/// and the true degradation of an equal canary (δ = −d for a mean) and of one at
/// 1.6× the threshold.
struct GateModel {
    unit_variance: f64,
    equal: f64,
    bad: f64,
}

fn model(named: &NamedGate, base: &Baseline) -> Result<GateModel, String> {
    let gate = &named.gate;
    let allowed = |mean: f64| match gate.threshold {
        Threshold::Relative(r) if r * mean.abs() < gate.floor => gate.floor,
        Threshold::Relative(r) => r * mean.abs(),
        Threshold::Absolute(a) => a,
    };
    // A mean-type gate: per-unit variance, and stable's mean the threshold applies to.
    let mean_gate = |unit_variance: f64, mean: f64| {
        let d = allowed(mean);
        GateModel {
            unit_variance,
            equal: -d,
            bad: 0.6 * d,
        }
    };
    let proportion = |p: f64| mean_gate(p * (1.0 - p), p);
    let metric = match &named.measure {
        Measure::Builtin(metric) => *metric,
        Measure::Reported(_) | Measure::Signal { .. } => {
            let (mean, sd) = base.custom.get(&named.name).copied().ok_or_else(|| {
                format!(
                    "gate `{}` is the plan's own: give its mean and standard deviation per \
                     report or signal with --base {}=MEAN[:SD]",
                    named.name, named.name
                )
            })?;
            return Ok(mean_gate(sd * sd, mean));
        }
    };
    Ok(match metric {
        Metric::CompletionRate => proportion(base.completion_rate),
        Metric::ErrorRate => proportion(base.error_rate),
        Metric::ToolErrorRate => proportion(base.tool_error_rate),
        Metric::AbandonmentRate => proportion(base.abandonment_rate),
        Metric::EscalationRate => proportion(base.escalation_rate),
        // Poisson per request.
        Metric::GuardrailRate => mean_gate(base.guardrail_rate, base.guardrail_rate),
        // In units of the mean.
        Metric::CostPerTask => mean_gate(base.cost_cv * base.cost_cv, 1.0),
        Metric::TokensPerTask => mean_gate(base.tokens_cv * base.tokens_cv, 1.0),
        Metric::TurnsPerTask => mean_gate(base.turns_cv * base.turns_cv, 1.0),
        Metric::LatencyP95 => {
            // Log-normal latency: the share of requests above stable's P95 × (1 + r)
            // (or + a, taken at the median's scale) compared with 5%.
            let s = base.latency_log_sigma;
            let z95 = 1.644_854;
            let factor = |r: f64| (1.0 + r).ln() / s;
            let r = match gate.threshold {
                Threshold::Relative(r) => r,
                Threshold::Absolute(_) => 0.5,
            };
            let share = |shift: f64| super::clustered::normal_upper(z95 + shift);
            GateModel {
                unit_variance: 0.05 * 0.95,
                equal: share(factor(r)) - 0.05,
                // The canary's P95 at 1 + 1.6 r times stable's.
                bad: share(factor(r) - factor(1.6 * r)) - 0.05,
            }
        }
    })
}

/// The smallest canary units n at which `margin(n) < gap`, searched by doubling
/// and bisection; `None` when even 10^9 units are not enough.
fn units_needed(gap: f64, margin_at: impl Fn(f64) -> f64) -> Option<f64> {
    if gap <= 0.0 {
        return None;
    }
    let mut high = 30.0;
    while margin_at(high) >= gap {
        high *= 2.0;
        if high > 1e9 {
            return None;
        }
    }
    let mut low = high / 2.0;
    for _ in 0..40 {
        let mid = (low + high) / 2.0;
        if margin_at(mid) < gap {
            high = mid;
        } else {
            low = mid;
        }
    }
    Some(high.max(30.0).ceil())
}

/// How many effective replicates (`clustered::ReplicateRatio::effective`) an arm
/// of `sessions` sessions has when their shares of its traffic are Pareto(α) and
/// each session sits in a random replicate: over 201 draws (fixed seed, so that a
/// plan check says the same every time), the median and the share of draws below
/// the `MIN_GROUPS` a verdict needs (the arm dominated by a few sessions).
pub fn effective_replicates(sessions: f64, alpha: f64) -> (f64, f64) {
    let n = sessions.round().clamp(0.0, 5_000.0) as usize;
    if n == 0 {
        return (0.0, 1.0);
    }
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut uniform = || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let mut draws: Vec<f64> = (0..201)
        .map(|_| {
            let mut replicates = [0.0f64; REPLICATES];
            for _ in 0..n {
                let share = (1.0 - uniform()).max(1e-12).powf(-1.0 / alpha);
                let r = ((uniform() * REPLICATES as f64) as usize).min(REPLICATES - 1);
                replicates[r] += share;
            }
            let total: f64 = replicates.iter().sum();
            let squares: f64 = replicates.iter().map(|x| x * x).sum();
            total * total / squares
        })
        .collect();
    draws.sort_by(f64::total_cmp);
    let dominated = draws.iter().filter(|e| **e < MIN_GROUPS as f64).count();
    (
        draws[draws.len() / 2],
        dominated as f64 / draws.len() as f64,
    )
}

/// A stage is flagged when a few sessions would dominate its canary in at least
/// this share of rollouts.
pub const DOMINATED_FLAG: f64 = 0.25;

/// Checks `plan` at `rate` requests per second (and `sessions` active sessions).
/// A plan's own gate needs its baseline (`Baseline::custom`); each custom metric
/// or signal is assumed to come once per request, and a signal gate's delay is
/// added to its times.
pub fn check_plan(
    plan: &RolloutPlan,
    rate: f64,
    sessions: Option<f64>,
    base: &Baseline,
) -> Result<PlanCheck, String> {
    let gates: Vec<(NamedGate, GateModel)> = plan
        .gates
        .enabled()
        .into_iter()
        .map(|g| model(&g, base).map(|m| (g, m)))
        .collect::<Result<_, _>>()?;
    let max_s = plan.max_stage_duration.millis() as f64 / 1000.0;
    let mut stages = Vec::new();
    let mut total = Some(0.0);
    for (i, stage) in plan.stages.iter().enumerate() {
        if plan.is_final_weight(i) {
            break;
        }
        let levels = Levels::at_stage(plan, i);
        let w = f64::from(stage.weight.bp()) / 10_000.0;
        let canary_rate = rate * w;
        let expected_sessions = sessions.map(|s| s * w);
        let mut problems = Vec::new();
        let effective = expected_sessions.map(|s| effective_replicates(s, base.session_pareto));
        // The variance's degrees of freedom: the median effective replicates' (31 at most).
        let df = effective.map_or(REPLICATES - 1, |(median, _)| {
            (median.floor() as usize).clamp(2, REPLICATES) - 1
        });
        if let (Some(expected), Some((median, dominated))) = (expected_sessions, effective) {
            if expected >= MIN_GROUPS as f64 && dominated >= DOMINATED_FLAG {
                let total = sessions.unwrap_or(1.0);
                let fine = |pct: f64| {
                    effective_replicates(total * pct / 100.0, base.session_pareto).1 <= 0.1
                };
                // The smallest whole percent at which at most 1 in 10 is dominated.
                let needed = if fine(100.0) {
                    let (mut low, mut high) = (0.0f64, 100.0f64);
                    while high - low > 1.0 {
                        let mid = ((low + high) / 2.0).round();
                        if fine(mid) {
                            high = mid;
                        } else {
                            low = mid;
                        }
                    }
                    format!("a weight of {high:.0}% or more brings that under 1 in 10")
                } else {
                    "more active sessions than there are would bring that under 1 in 10".into()
                };
                problems.push(format!(
                    "about {expected:.0} sessions in the canary, but with traffic shares as uneven \
                     as Pareto α {} (--base session_pareto) a few of them dominate it in {:.0}% of \
                     rollouts (median {median:.1} effective replicates, {MIN_GROUPS} needed for a \
                     verdict): {needed}",
                    base.session_pareto,
                    dominated * 100.0
                ));
            }
            if expected < MIN_GROUPS as f64 {
                problems.push(format!(
                    "about {expected:.0} sessions in the canary: the analysis needs sessions in at \
                     least {MIN_GROUPS} of its replicates to judge a gate (a session's requests \
                     are one unit of evidence); raise the weight to {:.1}% or more",
                    (2.0 * MIN_GROUPS as f64 / sessions.unwrap_or(1.0) * 100.0).min(100.0)
                ));
            }
        }
        let mut checks = Vec::new();
        for (named, m) in &gates {
            let metric = &named.name;
            let is_latency = named.measure == Measure::Builtin(Metric::LatencyP95);
            let delay_s = match &named.measure {
                Measure::Signal { delay, .. } => delay.millis() as f64 / 1000.0,
                _ => 0.0,
            };
            // Canary units n, stable units n (1 − w)/w; δ's margin at level a.
            // Stable's variance enters with k = 1 ± r ≈ 1; latency is the canary's
            // share alone.
            let margin_at = |alpha: f64, t_star: f64| {
                move |n: f64| {
                    let n_s = n * (1.0 - w) / w;
                    let variance = m.unit_variance / n
                        + if is_latency {
                            0.0
                        } else {
                            m.unit_variance / n_s
                        };
                    clustered_margin(n.min(n_s), variance, df, alpha, t_star)
                }
            };
            let pass_units = units_needed(-m.equal, margin_at(levels.pass, T_STAR_PASS));
            let breach_units = units_needed(m.bad, margin_at(levels.breach, T_STAR_BREACH));
            let seconds = |units: Option<f64>| units.map(|u| u / canary_rate.max(1e-9) + delay_s);
            let (pass_seconds, breach_seconds) = (seconds(pass_units), seconds(breach_units));
            let problem = match pass_seconds {
                Some(s) if s <= max_s => None,
                _ => {
                    let allowed_at_max = margin_at(levels.pass, T_STAR_PASS)(max_s * canary_rate);
                    let weight_needed = pass_units.map(|u| u / (rate * max_s) * 100.0);
                    Some(format!(
                        "{metric} cannot show an equal canary within its threshold in \
                         max_stage_duration ({}): it needs {}; a threshold (or floor) of at least \
                         {allowed_at_max:.4} in the metric's units{}, or a longer stage",
                        plan.max_stage_duration,
                        pass_seconds.map_or("more traffic than any stage gets".into(), duration),
                        weight_needed
                            .filter(|w| *w <= 100.0)
                            .map_or(String::new(), |w| format!(", a weight of {w:.1}%")),
                    ))
                }
            };
            if let Some(p) = &problem {
                problems.push(p.clone());
            }
            checks.push(GateCheck {
                metric: metric.clone(),
                pass_units,
                pass_seconds,
                breach_units,
                breach_seconds,
                problem,
            });
        }
        let min_s = stage.min_duration.millis() as f64 / 1000.0;
        let min_requests_s = stage.min_requests as f64 / canary_rate.max(1e-9);
        let seconds_to_advance = if problems.is_empty() {
            checks
                .iter()
                .map(|g| g.pass_seconds)
                .try_fold(min_s.max(min_requests_s), |acc, s| s.map(|s| acc.max(s)))
        } else {
            None
        };
        total = total.zip(seconds_to_advance).map(|(t, s)| t + s);
        stages.push(StageCheck {
            stage: i + 1,
            weight_bp: stage.weight.bp(),
            canary_rate,
            expected_sessions,
            effective_replicates: effective.map(|(median, _)| median),
            gates: checks,
            seconds_to_advance,
            problems,
        });
    }
    Ok(PlanCheck {
        rate,
        sessions,
        stages,
        seconds_to_promotion: total,
    })
}

/// Seconds as `45s`, `12m`, `3.5h`.
pub fn duration(seconds: f64) -> String {
    if seconds < 90.0 {
        format!("{seconds:.0}s")
    } else if seconds < 5400.0 {
        format!("{:.0}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

/// While a rollout runs: roughly how long an inconclusive gate still needs at the
/// canary's observed rate (`elapsed_s` of the window so far), assuming its estimate
/// stays where it is and its margin shrinks as 1/√n. `None` when the gate has
/// decided, has no bounds yet, or sits on its threshold.
pub fn eta_seconds(comparison: &Comparison, elapsed_s: f64) -> Option<f64> {
    if comparison.verdict != GateVerdict::Inconclusive || elapsed_s <= 0.0 {
        return None;
    }
    let estimate = comparison.estimate?;
    let (lower, upper) = comparison.degradation?;
    let n = comparison.n_canary;
    if n <= 0.0 || estimate == 0.0 {
        return None;
    }
    // Towards a pass (upper below 0) or a breach (lower above 0).
    let (margin, gap) = if estimate < 0.0 {
        (upper - estimate, -estimate)
    } else {
        (estimate - lower, estimate)
    };
    if !(margin.is_finite() && margin > 0.0) {
        return None;
    }
    let needed = n * (margin / gap).powi(2);
    let eta = (needed - n) / (n / elapsed_s);
    eta.is_finite().then_some(eta.max(0.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> RolloutPlan {
        RolloutPlan::parse(&format!(
            "target: t\nstable: {{version: s, cluster: a}}\ncanary: {{version: c, cluster: b}}\n{extra}"
        ))
        .unwrap()
    }

    #[test]
    fn the_default_plan_decides_at_300_requests_per_second() {
        let check = check_plan(&plan(""), 300.0, None, &Baseline::default()).unwrap();
        assert!(check.ok(), "{check:#?}");
        assert_eq!(check.stages.len(), 4);
        let promotion = check.seconds_to_promotion.unwrap();
        assert!((2400.0..4.0 * 3600.0).contains(&promotion), "{promotion} s");
        for stage in &check.stages {
            for gate in &stage.gates {
                assert!(gate.breach_units.unwrap() > 30.0, "{gate:?}");
            }
        }
    }

    #[test]
    fn a_gate_that_cannot_decide_is_flagged_with_what_would() {
        // Abandonment +10% of a 5% base at 1% of 5 requests/s, with no floor.
        let p =
            plan("stages: [{weight: 1%}, {weight: 100%}]\ngates: {abandonment_rate: {floor: 0}}\n");
        let check = check_plan(&p, 5.0, None, &Baseline::default()).unwrap();
        assert!(!check.ok());
        let problem = check.stages[0]
            .problems
            .iter()
            .find(|p| p.starts_with("abandonment_rate"))
            .unwrap();
        assert!(problem.contains("threshold (or floor)"), "{problem}");
        assert_eq!(check.seconds_to_promotion, None);
        // Too few sessions in the canary.
        let check = check_plan(&plan(""), 300.0, Some(60.0), &Baseline::default()).unwrap();
        assert!(
            check.stages[0].problems[0].contains("sessions"),
            "{check:?}"
        );
        // Enough sessions, but a few dominate: 30 at 1% of 3000.
        let check = check_plan(&plan(""), 300.0, Some(3000.0), &Baseline::default()).unwrap();
        let stage = &check.stages[0];
        assert!(stage.effective_replicates.unwrap() < 16.0, "{stage:?}");
        assert!(
            stage.problems[0].contains("dominate") && stage.problems[0].contains("weight of"),
            "{stage:?}"
        );
        // Even shares: 30 sessions are enough.
        let mut even = Baseline::default();
        even.set("session_pareto=100").unwrap();
        let check = check_plan(&plan(""), 300.0, Some(3000.0), &even).unwrap();
        assert!(check.stages[0].effective_replicates.unwrap() > 8.0);
        assert!(check.stages[0].problems.is_empty(), "{check:?}");
    }

    #[test]
    fn effective_replicates_grow_with_sessions() {
        let (few, dominated_few) = effective_replicates(30.0, 1.5);
        let (many, dominated_many) = effective_replicates(3000.0, 1.5);
        assert!(few < many && many > 20.0, "{few} {many}");
        assert!(dominated_few > DOMINATED_FLAG && dominated_many < 0.05);
        assert_eq!(effective_replicates(0.0, 1.5), (0.0, 1.0));
    }

    #[test]
    fn eta_follows_the_margin() {
        let mut c = Comparison {
            metric: "error_rate".into(),
            stable: Some(0.02),
            canary: Some(0.02),
            change: String::new(),
            threshold: String::new(),
            direction: crate::rollout::gates::Direction::HigherIsWorse,
            n_stable: 10_000.0,
            n_canary: 1_000.0,
            estimate: Some(-0.005),
            degradation: Some((-0.015, 0.005)),
            effective_replicates: None,
            verdict: GateVerdict::Inconclusive,
            eta_s: None,
        };
        // Margin 0.01 must shrink to 0.005: 4× the units, 3000 more at 10/s.
        assert!((eta_seconds(&c, 100.0).unwrap() - 300.0).abs() < 1e-9);
        c.verdict = GateVerdict::Pass;
        assert_eq!(eta_seconds(&c, 100.0), None);
    }
}
