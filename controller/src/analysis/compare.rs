//! One gate, canary against stable: means with their anytime-valid bounds, and
//! latency P95 through exceedance of stable's P95.

use super::{Comparison, GateVerdict, MIN_LATENCY_SAMPLES, MIN_SAMPLES};
use crate::analysis::evidence::{Batch, Sample, Window};
use crate::analysis::sequential::{
    batch_sigma, difference, margin, proportion_sigma, rate_sigma, ArmBound,
};
use crate::rollout::gates::{Direction, Gate, Metric, Threshold};
use policy_canary::stats::Counter;
#[derive(Debug, Clone, Copy)]
struct Arm {
    mean: f64,
    sigma: Option<f64>,
    n: f64,
}

fn proportion(x: f64, n: f64) -> Arm {
    Arm {
        mean: if n > 0.0 { x.min(n) / n } else { 0.0 },
        sigma: Some(proportion_sigma(x.min(n), n)),
        n,
    }
}

fn rate(x: f64, n: f64) -> Arm {
    Arm {
        mean: if n > 0.0 { x / n } else { 0.0 },
        sigma: Some(rate_sigma(x, n)),
        n,
    }
}

pub(super) fn compare(
    metric: Metric,
    gate: Gate,
    stable: &Sample,
    canary: &Sample,
    window: &Window,
    alpha: f64,
) -> Comparison {
    let arms = |f: &dyn Fn(&Sample) -> Arm| (f(stable), f(canary));
    let (s, c) = match metric {
        Metric::CompletionRate => arms(&|v| {
            proportion(
                v.count(Counter::TasksCompleted),
                v.count(Counter::TasksTotal),
            )
        }),
        // A request with no response at all (reset) failed as surely as a 5xx.
        Metric::ErrorRate => arms(&|v| {
            proportion(
                v.count(Counter::Rq5xx) + v.count(Counter::RqNoResponse),
                v.count(Counter::RqTotal),
            )
        }),
        Metric::ToolErrorRate => {
            arms(&|v| proportion(v.count(Counter::ToolErrors), v.count(Counter::ToolCalls)))
        }
        Metric::AbandonmentRate => arms(&|v| {
            proportion(
                v.count(Counter::TasksAbandoned),
                v.count(Counter::TasksTotal),
            )
        }),
        Metric::GuardrailRate => arms(&|v| {
            rate(
                v.count(Counter::GuardrailTriggers),
                v.count(Counter::RqTotal),
            )
        }),
        Metric::CostPerTask => {
            let per_task = |cost: f64, tasks: f64| if tasks > 0.0 { cost / tasks } else { 0.0 };
            let sigma = |pick: fn(&Batch) -> (f64, f64)| {
                let batches: Vec<(f64, f64)> = window
                    .batches
                    .iter()
                    .map(pick)
                    .map(|(tasks, cost)| (tasks, per_task(cost, tasks)))
                    .collect();
                batch_sigma(&batches)
            };
            (
                Arm {
                    mean: per_task(
                        stable.count(Counter::CostMicros),
                        stable.count(Counter::TasksTotal),
                    ),
                    sigma: sigma(|b| (b.stable_tasks, b.stable_cost)),
                    n: stable.count(Counter::TasksTotal),
                },
                Arm {
                    mean: per_task(
                        canary.count(Counter::CostMicros),
                        canary.count(Counter::TasksTotal),
                    ),
                    sigma: sigma(|b| (b.canary_tasks, b.canary_cost)),
                    n: canary.count(Counter::TasksTotal),
                },
            )
        }
        Metric::LatencyP95 => return latency(gate, stable, canary, alpha),
    };
    let mut comparison = Comparison::open(
        metric,
        &gate,
        (s.n > 0.0).then_some(s.mean),
        (c.n > 0.0).then_some(c.mean),
        (s.n, c.n),
    );
    if comparison.verdict == GateVerdict::Disabled {
        return comparison;
    }
    if s.n == 0.0 && c.n == 0.0 {
        comparison.verdict = GateVerdict::NotApplicable;
        return comparison;
    }
    let (k_rel, offset) = match gate.threshold {
        // Below the floor, a relative gate allows the floor's absolute degradation.
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
    let (Some(sigma_s), Some(sigma_c)) = (s.sigma, c.sigma) else {
        return comparison;
    };
    if s.n < MIN_SAMPLES || c.n < MIN_SAMPLES {
        return comparison;
    }
    let half = alpha / 2.0;
    let stable_bound = ArmBound::new(s.mean, s.n, sigma_s, half);
    let canary_bound = ArmBound::new(c.mean, c.n, sigma_c, half);
    let (lower, upper) = match gate.direction {
        Direction::HigherIsWorse => difference(canary_bound, stable_bound, 1.0 + k_rel, offset),
        // δ = (1 − r)·stable − canary − a = (−canary) − (−(1 − r))·stable − a
        Direction::LowerIsWorse => difference(
            ArmBound {
                mean: -canary_bound.mean,
                margin: canary_bound.margin,
            },
            stable_bound,
            -(1.0 - k_rel),
            offset,
        ),
    };
    comparison.degradation = Some((lower, upper));
    comparison.verdict = verdict(lower, upper);
    comparison
}

fn verdict(lower: f64, upper: f64) -> GateVerdict {
    if lower > 0.0 {
        GateVerdict::Breach
    } else if upper < 0.0 {
        GateVerdict::Pass
    } else {
        GateVerdict::Inconclusive
    }
}

pub(super) fn change(threshold: Threshold, stable: f64, canary: f64) -> String {
    match threshold {
        Threshold::Absolute(_) => format!("{:+.1} points", (canary - stable) * 100.0),
        Threshold::Relative(_) if stable > 0.0 => {
            format!("{:+.1}%", (canary / stable - 1.0) * 100.0)
        }
        Threshold::Relative(_) => "n/a".into(),
    }
}

/// The value below which a `q` share of a histogram's samples fall (linear inside a bucket).
pub fn quantile(buckets: &[(f64, f64)], q: f64) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let width = count - previous.1;
            let fraction = if width > 0.0 {
                (rank - previous.1) / width
            } else {
                1.0
            };
            return Some(previous.0 + fraction * (le - previous.0));
        }
        previous = (le, count);
    }
    Some(previous.0)
}

/// How many of a histogram's samples exceed `level` (linear inside a bucket).
pub fn exceeding(buckets: &[(f64, f64)], level: f64) -> f64 {
    let total = buckets.last().map_or(0.0, |b| b.1);
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if le >= level {
            let below = if le.is_infinite() {
                previous.1
            } else {
                let width = le - previous.0;
                let fraction = if width > 0.0 {
                    (level - previous.0) / width
                } else {
                    1.0
                };
                previous.1 + fraction.clamp(0.0, 1.0) * (count - previous.1)
            };
            return (total - below).max(0.0);
        }
        previous = (le, count);
    }
    0.0
}

fn latency(gate: Gate, stable: &Sample, canary: &Sample, alpha: f64) -> Comparison {
    let n_s = stable.latency.last().map_or(0.0, |b| b.1);
    let n_c = canary.latency.last().map_or(0.0, |b| b.1);
    let p95_s = quantile(&stable.latency, 0.95);
    let p95_c = quantile(&canary.latency, 0.95);
    let latency_gate = Gate {
        direction: Direction::HigherIsWorse,
        ..gate
    };
    let mut comparison =
        Comparison::open(Metric::LatencyP95, &latency_gate, p95_s, p95_c, (n_s, n_c));
    if comparison.verdict == GateVerdict::Disabled {
        return comparison;
    }
    let Some(p95_s) = p95_s else {
        return comparison;
    };
    if n_s < MIN_LATENCY_SAMPLES || n_c < MIN_SAMPLES {
        return comparison;
    }
    let level = match gate.threshold {
        Threshold::Relative(r) => p95_s * (1.0 + r),
        Threshold::Absolute(a) => p95_s + a,
    };
    let slow = exceeding(&canary.latency, level);
    let share = slow / n_c;
    comparison.estimate = Some(share - 0.05);
    let m = margin(n_c, proportion_sigma(slow, n_c), alpha);
    let (lower, upper) = (share - m - 0.05, share + m - 0.05);
    comparison.degradation = Some((lower, upper));
    comparison.verdict = verdict(lower, upper);
    comparison
}
