//! One gate, canary against stable: each arm's mean with its anytime-valid bound,
//! period by period (`Window::periods`: the canary weight is constant within
//! one), and latency P95 through exceedance of stable's P95, whose own
//! uncertainty enters the bound.

use super::arms::{arm, period_weights, ArmPeriods, DifferenceBound, Spread, Stratum, Units};
use super::latency::latency;
use super::{Comparison, GateVerdict, Levels};
use crate::analysis::evidence::{Batch, Sample, Window};
use crate::analysis::sequential::{
    batch_sigma, difference, ArmBound, T_STAR, T_STAR_BREACH, T_STAR_PASS,
};
use crate::rollout::gates::{Direction, Gate, Metric, Threshold};
use policy_canary::replicate::{ReplicateCounter, Slot, REPLICATES};
use policy_canary::stats::Counter;

/// A gate's ratio: which counters make Y and X, per version and per replicate.
struct RatioOf {
    y: &'static [Counter],
    x: Counter,
    replicate: (ReplicateCounter, ReplicateCounter),
    units: Units,
}

impl RatioOf {
    fn of(metric: Metric) -> RatioOf {
        use Counter as C;
        use ReplicateCounter as R;
        let (y, x, replicate, units): (&'static [Counter], _, _, _) = match metric {
            Metric::CompletionRate => (
                &[C::TasksCompleted],
                C::TasksTotal,
                (R::TasksCompleted, R::TasksTotal),
                Units::Proportion,
            ),
            Metric::ErrorRate => (
                &[C::Rq5xx, C::RqNoResponse],
                C::RqTotal,
                (R::RqErrors, R::RqTotal),
                Units::Proportion,
            ),
            Metric::ToolErrorRate => (
                &[C::ToolErrors],
                C::ToolCalls,
                (R::ToolErrors, R::ToolCalls),
                Units::Proportion,
            ),
            Metric::AbandonmentRate => (
                &[C::TasksAbandoned],
                C::TasksTotal,
                (R::TasksAbandoned, R::TasksTotal),
                Units::Proportion,
            ),
            Metric::GuardrailRate => (
                &[C::GuardrailTriggers],
                C::RqTotal,
                (R::GuardrailTriggers, R::RqTotal),
                Units::Rate,
            ),
            // (Latency is compared by `latency`.)
            Metric::CostPerTask | Metric::LatencyP95 => (
                &[C::CostMicros],
                C::TasksTotal,
                (R::CostMicros, R::TasksTotal),
                Units::Amount(None),
            ),
        };
        RatioOf {
            y,
            x,
            replicate,
            units,
        }
    }

    fn periods<'a>(&self, samples: impl Iterator<Item = &'a Sample>) -> ArmPeriods {
        let mut out = ArmPeriods {
            totals: Vec::new(),
            replicates: Vec::new(),
        };
        for sample in samples {
            let y: f64 = self.y.iter().map(|c| sample.count(*c)).sum();
            out.totals.push((y, sample.count(self.x)));
            out.replicates.push(
                (0..REPLICATES)
                    .map(|r| {
                        (
                            sample.replicate(r, Slot::Counter(self.replicate.0)),
                            sample.replicate(r, Slot::Counter(self.replicate.1)),
                        )
                    })
                    .collect(),
            );
        }
        out
    }
}

/// Compares one metric under `gate` over the window's periods (`strata`). With
/// `robust` (both versions report session replicates) every arm's spread is the
/// between-replicate variance; otherwise units are taken as independent.
pub(super) fn compare(
    metric: Metric,
    gate: Gate,
    strata: &[Stratum],
    window: &Window,
    levels: Levels,
    robust: bool,
) -> Comparison {
    if metric == Metric::LatencyP95 {
        return latency(gate, strata, levels, robust);
    }
    let ratio = RatioOf::of(metric);
    let stable_periods = ratio.periods(strata.iter().map(|s| &s.stable));
    let canary_periods = ratio.periods(strata.iter().map(|s| &s.canary));
    let weights = period_weights(&stable_periods, &canary_periods);
    let (stable_units, canary_units) = if metric == Metric::CostPerTask && !robust {
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
        (ratio.units, ratio.units)
    };
    let s = arm(&stable_periods, &weights, stable_units, robust);
    let c = arm(&canary_periods, &weights, canary_units, robust);
    let mut comparison = Comparison::open(
        metric,
        &gate,
        (s.n > 0.0).then_some(s.mean),
        (c.n > 0.0).then_some(c.mean),
        (s.n, c.n),
    );
    comparison.effective_replicates = s.effective().zip(c.effective()).map(|(a, b)| [a, b]);
    if comparison.verdict == GateVerdict::Disabled {
        return comparison;
    }
    if stable_periods.units() == 0.0 && canary_periods.units() == 0.0 {
        comparison.verdict = GateVerdict::NotApplicable;
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
