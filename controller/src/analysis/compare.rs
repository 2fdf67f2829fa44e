//! One gate, canary against stable: each arm's mean with its anytime-valid bound,
//! period by period (`Window::periods`: the canary weight is constant within
//! one), and latency P95 through exceedance of stable's P95, whose own
//! uncertainty enters the bound.

use super::arms::{arm, period_weights, Arm, ArmPeriods, DifferenceBound, Spread, Stratum, Units};
use super::latency::latency;
use super::{Comparison, GateVerdict, Levels};
use crate::analysis::evidence::{Batch, Sample, Window, SIGNAL_COUNT, SIGNAL_SUM};
use crate::analysis::sequential::{
    batch_sigma, difference, ArmBound, T_STAR, T_STAR_BREACH, T_STAR_PASS,
};
use crate::rollout::gates::{Direction, Gate, Measure, Metric, NamedGate, Threshold};
use policy_canary::custom;
use policy_canary::replicate::{ReplicateCounter, Slot, REPLICATES};

/// A counter of one replicate: a fixed slot, or a named one (custom metrics,
/// signals).
#[derive(Debug, Clone)]
enum Term {
    Slot(ReplicateCounter),
    Named(String),
}

impl Term {
    fn of(&self, sample: &Sample, r: usize) -> f64 {
        match self {
            Term::Slot(c) => sample.replicate(r, Slot::Counter(*c)),
            Term::Named(name) => sample.named_replicate(r, name),
        }
    }
}

/// A gate's ratio: which counters make Y (scaled down by `scale`) and X, per
/// version and per replicate.
struct RatioOf {
    y: Vec<String>,
    x: String,
    replicate: (Term, Term),
    scale: f64,
    units: Units,
}

impl RatioOf {
    fn builtin(metric: Metric) -> RatioOf {
        use ReplicateCounter as R;
        let (y, x, replicate, units): (&[&str], _, _, _) = match metric {
            Metric::CompletionRate => (
                &["tasks_completed"],
                "tasks_total",
                (R::TasksCompleted, R::TasksTotal),
                Units::Proportion,
            ),
            Metric::ErrorRate => (
                &["rq_5xx", "rq_no_response"],
                "rq_total",
                (R::RqErrors, R::RqTotal),
                Units::Proportion,
            ),
            Metric::ToolErrorRate => (
                &["tool_errors"],
                "tool_calls",
                (R::ToolErrors, R::ToolCalls),
                Units::Proportion,
            ),
            Metric::AbandonmentRate => (
                &["tasks_abandoned"],
                "tasks_total",
                (R::TasksAbandoned, R::TasksTotal),
                Units::Proportion,
            ),
            Metric::EscalationRate => (
                &["tasks_escalated"],
                "tasks_total",
                (R::TasksEscalated, R::TasksTotal),
                Units::Proportion,
            ),
            Metric::GuardrailRate => (
                &["guardrail_triggers"],
                "rq_total",
                (R::GuardrailTriggers, R::RqTotal),
                Units::Rate,
            ),
            Metric::TokensPerTask => (
                &["tokens"],
                "tasks_total",
                (R::Tokens, R::TasksTotal),
                Units::Amount(None),
            ),
            // Requests per finished task: the conversation's length.
            Metric::TurnsPerTask => (
                &["rq_total"],
                "tasks_total",
                (R::RqTotal, R::TasksTotal),
                Units::Amount(None),
            ),
            // (Latency is compared by `latency`.)
            Metric::CostPerTask | Metric::LatencyP95 => (
                &["cost_micros"],
                "tasks_total",
                (R::CostMicros, R::TasksTotal),
                Units::Amount(None),
            ),
        };
        RatioOf {
            y: y.iter().map(|s| s.to_string()).collect(),
            x: x.to_string(),
            replicate: (Term::Slot(replicate.0), Term::Slot(replicate.1)),
            scale: 1.0,
            units,
        }
    }

    /// The mean per report of a custom metric (counted in micro-units).
    fn reported(name: &str) -> RatioOf {
        let (micros, reports) = (
            custom::suffix(name, "micros"),
            custom::suffix(name, "reports"),
        );
        RatioOf {
            y: vec![micros.clone()],
            x: reports.clone(),
            replicate: (Term::Named(micros), Term::Named(reports)),
            scale: 1e6,
            units: Units::Amount(None),
        }
    }

    /// The mean per signal (`evidence::signal_strata`).
    fn signal() -> RatioOf {
        RatioOf {
            y: vec![SIGNAL_SUM.to_string()],
            x: SIGNAL_COUNT.to_string(),
            replicate: (
                Term::Named(SIGNAL_SUM.to_string()),
                Term::Named(SIGNAL_COUNT.to_string()),
            ),
            scale: 1.0,
            units: Units::Amount(None),
        }
    }

    fn periods<'a>(&self, samples: impl Iterator<Item = &'a Sample>) -> ArmPeriods {
        let mut out = ArmPeriods {
            totals: Vec::new(),
            replicates: Vec::new(),
        };
        for sample in samples {
            let y: f64 = self.y.iter().map(|c| sample.get(c)).sum();
            out.totals.push((y / self.scale, sample.get(&self.x)));
            out.replicates.push(
                (0..REPLICATES)
                    .map(|r| {
                        (
                            self.replicate.0.of(sample, r) / self.scale,
                            self.replicate.1.of(sample, r),
                        )
                    })
                    .collect(),
            );
        }
        out
    }

    /// Both arms over `strata`; the cost gate without replicates takes its
    /// per-unit spread from the window's batches.
    fn arms(
        &self,
        strata: &[Stratum],
        window: &Window,
        metric: Option<Metric>,
        robust: bool,
    ) -> Arms {
        let stable_periods = self.periods(strata.iter().map(|s| &s.stable));
        let canary_periods = self.periods(strata.iter().map(|s| &s.canary));
        let weights = period_weights(&stable_periods, &canary_periods);
        let (stable_units, canary_units) = if metric == Some(Metric::CostPerTask) && !robust {
            let sigma = |pick: fn(&Batch) -> (f64, f64)| {
                let batches: Vec<(f64, f64)> = window
                    .batches
                    .iter()
                    .map(pick)
                    .map(|(tasks, cost)| (tasks, if tasks > 0.0 { cost / tasks } else { 0.0 }))
                    .collect();
                batch_sigma(&batches)
            };
            (
                Units::Amount(sigma(|b| (b.stable_tasks, b.stable_cost))),
                Units::Amount(sigma(|b| (b.canary_tasks, b.canary_cost))),
            )
        } else {
            (self.units, self.units)
        };
        Arms {
            stable: arm(&stable_periods, &weights, stable_units, robust),
            canary: arm(&canary_periods, &weights, canary_units, robust),
            units: (stable_periods.units(), canary_periods.units()),
        }
    }
}

/// Both arms of a gate, and every unit each had (whether compared or not).
struct Arms {
    stable: Arm,
    canary: Arm,
    units: (f64, f64),
}

/// Compares one gate over the window's periods (`strata`). With `robust` (both
/// versions report session replicates) every arm's spread is the
/// between-replicate variance; otherwise units are taken as independent. A
/// signal gate breaches on every signal so far and passes only on the answers
/// older than its delay (`Window::signals`).
pub(super) fn compare(
    named: &NamedGate,
    strata: &[Stratum],
    window: &Window,
    levels: Levels,
    robust: bool,
) -> Comparison {
    let gate = named.gate;
    let side = match named.measure {
        Measure::Builtin(_) => Side::Builtin,
        _ => Side::Own,
    };
    let (breach_side, pass_side) = match &named.measure {
        Measure::Builtin(Metric::LatencyP95) => {
            return latency(&named.name, gate, strata, levels, robust)
        }
        Measure::Builtin(metric) => {
            let arms = RatioOf::builtin(*metric).arms(strata, window, Some(*metric), robust);
            (arms, None)
        }
        Measure::Reported(name) => (
            RatioOf::reported(name).arms(strata, window, None, robust),
            None,
        ),
        Measure::Signal { name, .. } => {
            let evidence = window.signals.get(name).cloned().unwrap_or_default();
            let ratio = RatioOf::signal();
            // Every signal names its session, so its replicate is always known.
            (
                ratio.arms(&evidence.all, window, None, true),
                Some(ratio.arms(&evidence.matured, window, None, true)),
            )
        }
    };
    let mut comparison = judge(&named.name, gate, &breach_side, levels, side);
    if let Some(pass_side) = pass_side {
        // The pass bound over the answers old enough for their signals to be in.
        let pass = judge(&named.name, gate, &pass_side, levels, side);
        let lower = comparison.degradation.map(|(lower, _)| lower);
        let upper = pass.degradation.map(|(_, upper)| upper);
        comparison.degradation = lower.map(|l| (l, upper.unwrap_or(f64::MAX)));
        comparison.verdict = match (comparison.verdict, lower, upper) {
            (GateVerdict::Disabled | GateVerdict::NotApplicable, ..) => comparison.verdict,
            (_, Some(l), _) if l > 0.0 => GateVerdict::Breach,
            (_, _, Some(u)) if u < 0.0 => GateVerdict::Pass,
            (_, Some(_), _) | (_, _, Some(_)) => GateVerdict::Inconclusive,
            (verdict, None, None) => verdict,
        };
    }
    comparison
}

/// What a comparison is of: a built-in ratio, or a plan's own metric or signal.
#[derive(Clone, Copy, PartialEq)]
enum Side {
    Builtin,
    Own,
}

/// One gate's comparison of two arms.
fn judge(name: &str, gate: Gate, arms: &Arms, levels: Levels, side: Side) -> Comparison {
    let (s, c) = (arms.stable, arms.canary);
    // The units each arm had (compared or not: a period only one arm has is not).
    let mut comparison = Comparison::open(
        name,
        &gate,
        (s.n > 0.0).then_some(s.mean),
        (c.n > 0.0).then_some(c.mean),
        arms.units,
    );
    comparison.effective_replicates = s.effective().zip(c.effective()).map(|(a, b)| [a, b]);
    if comparison.verdict == GateVerdict::Disabled {
        return comparison;
    }
    if arms.units == (0.0, 0.0) {
        // A built-in ratio neither version has (no tool calls) cannot apply; a
        // gate the plan named for its own metric or signal waits for them.
        comparison.verdict = if side == Side::Builtin {
            GateVerdict::NotApplicable
        } else {
            GateVerdict::Inconclusive
        };
        return comparison;
    }
    let (k_rel, offset) = match gate.threshold {
        Threshold::Relative(r) if r * s.mean < gate.floor => (0.0, gate.floor),
        Threshold::Relative(r) => (r, 0.0),
        Threshold::Absolute(a) => (0.0, a),
    };
    if s.n > 0.0 && c.n > 0.0 {
        comparison.estimate = Some(match gate.direction {
            Direction::HigherIsWorse => c.mean - (1.0 + k_rel) * s.mean - offset,
            Direction::LowerIsWorse => (1.0 - k_rel) * s.mean - c.mean - offset,
        });
    }
    if !s.decidable() || !c.decidable() {
        return comparison;
    }
    // δ = canary − k·stable − offset (higher is worse), or its mirror.
    let k = match gate.direction {
        Direction::HigherIsWorse => 1.0 + k_rel,
        Direction::LowerIsWorse => 1.0 - k_rel,
    };
    let estimate = comparison.estimate.unwrap_or(0.0);
    let (lower, upper) = match (s.spread, c.spread) {
        // Session replicates: one bound on δ itself, each side at its own level.
        (
            Spread::Clustered {
                variance: v_s,
                df: df_s,
                ..
            },
            Spread::Clustered {
                variance: v_c,
                df: df_c,
                ..
            },
        ) => {
            let bound = DifferenceBound::new((v_s, df_s), (v_c, df_c), k, s.n.min(c.n));
            (
                estimate - bound.margin(levels.breach, T_STAR_BREACH),
                estimate + bound.margin(levels.pass, T_STAR_PASS),
            )
        }
        // Units independent (no replicates): each arm bounded on its own, the two
        // combined (as before the replicates; a plan's levels still apply per side).
        _ => {
            let bounds_at = |alpha: f64| {
                let half = alpha / 2.0;
                let (stable_bound, canary_bound) = (s.bound(half, T_STAR), c.bound(half, T_STAR));
                match gate.direction {
                    Direction::HigherIsWorse => difference(canary_bound, stable_bound, k, offset),
                    Direction::LowerIsWorse => difference(
                        ArmBound {
                            mean: -canary_bound.mean,
                            margin: canary_bound.margin,
                        },
                        stable_bound,
                        -k,
                        offset,
                    ),
                }
            };
            (bounds_at(levels.breach).0, bounds_at(levels.pass).1)
        }
    };
    let (lower, upper) = finite(lower, upper);
    comparison.degradation = Some((lower, upper));
    comparison.verdict = verdict(lower, upper);
    comparison
}

/// Bounds as JSON can carry them: an infinite margin (too little to go on) becomes
/// the largest finite number, and a bound that is not a number proves nothing.
pub(super) fn finite(lower: f64, upper: f64) -> (f64, f64) {
    let clamp = |x: f64, otherwise: f64| {
        if x.is_nan() {
            otherwise
        } else {
            x.clamp(-f64::MAX, f64::MAX)
        }
    };
    (clamp(lower, -f64::MAX), clamp(upper, f64::MAX))
}

pub(super) fn verdict(lower: f64, upper: f64) -> GateVerdict {
    if lower > 0.0 {
        GateVerdict::Breach
    } else if upper < 0.0 {
        GateVerdict::Pass
    } else {
        GateVerdict::Inconclusive
    }
}
