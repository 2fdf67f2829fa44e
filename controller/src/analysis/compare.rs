//! One gate, canary against stable: means with their anytime-valid bounds, and
//! latency P95 through exceedance of stable's P95.

use super::clustered::{ratio, MIN_GROUPS};
use super::{Comparison, GateVerdict, Levels, MIN_LATENCY_SAMPLES, MIN_SAMPLES};
use crate::analysis::evidence::{Batch, Sample, Window};
use crate::analysis::sequential::{
    batch_sigma, clustered_margin, difference, margin, proportion_sigma, rate_sigma, ArmBound,
    T_STAR, T_STAR_BREACH, T_STAR_PASS,
};
use crate::rollout::gates::{Direction, Gate, Metric, Threshold};
use policy_canary::replicate::{
    ReplicateCounter, Slot, LATENCY_BOUNDS_MS, LATENCY_BUCKETS, REPLICATES,
};
use policy_canary::stats::Counter;

/// How an arm's spread is known.
#[derive(Debug, Clone, Copy)]
enum Spread {
    /// Per-unit standard deviation, units taken as independent.
    Iid(f64),
    /// Between-replicate variance of the mean (`clustered`), with its degrees of freedom.
    Clustered { variance: f64, df: usize },
    /// Not yet measurable (too few cost batches).
    Unknown,
}

/// One arm of one gate: its mean, units and spread.
#[derive(Debug, Clone, Copy)]
struct Arm {
    mean: f64,
    n: f64,
    spread: Spread,
}

impl Arm {
    /// The arm's bound at level `alpha`; `t_star` tunes a clustered one.
    fn bound(&self, alpha: f64, t_star: f64) -> ArmBound {
        let margin = match self.spread {
            Spread::Iid(sigma) => margin(self.n, sigma, alpha),
            Spread::Clustered { variance, df } => {
                clustered_margin(self.n, variance, df, alpha, t_star)
            }
            Spread::Unknown => f64::INFINITY,
        };
        ArmBound {
            mean: self.mean,
            margin,
        }
    }

    /// Enough units (and replicates) for the bounds' approximations to hold.
    fn decidable(&self) -> bool {
        self.n >= MIN_SAMPLES
            && match self.spread {
                Spread::Iid(_) => true,
                Spread::Clustered { df, .. } => df + 1 >= MIN_GROUPS,
                Spread::Unknown => false,
            }
    }
}

/// A bound on δ = canary − k·stable from both arms' between-replicate variances:
/// standard error sqrt(V_c + k²·V_s), Welch–Satterthwaite degrees of freedom, and
/// the confidence sequence's boundary at `time` (the smaller arm's units; see
/// `docs/analysis.md`) turned into Student's t.
struct DifferenceBound {
    variance: f64,
    df: usize,
    time: f64,
}

impl DifferenceBound {
    fn new((v_s, df_s): (f64, usize), (v_c, df_c): (f64, usize), k: f64, time: f64) -> Self {
        let stable = k * k * v_s;
        let variance = v_c + stable;
        let denominator = v_c * v_c / df_c.max(1) as f64 + stable * stable / df_s.max(1) as f64;
        let welch = variance * variance / denominator;
        // Never fewer than the poorer estimate holds, never more than both together
        // (and the poorer one when the ratio cannot be formed: zero or tiny variances).
        let df = if welch.is_finite() {
            (welch.floor() as usize).clamp(df_s.min(df_c), df_s + df_c)
        } else {
            df_s.min(df_c)
        };
        DifferenceBound { variance, df, time }
    }

    /// The one-sided margin at level `alpha`, valid at every check.
    fn margin(&self, alpha: f64, t_star: f64) -> f64 {
        clustered_margin(self.time, self.variance, self.df, alpha, t_star)
    }
}

fn proportion(x: f64, n: f64) -> Arm {
    Arm {
        mean: if n > 0.0 { x.min(n) / n } else { 0.0 },
        spread: Spread::Iid(proportion_sigma(x.min(n), n)),
        n,
    }
}

fn rate(x: f64, n: f64) -> Arm {
    Arm {
        mean: if n > 0.0 { x / n } else { 0.0 },
        spread: Spread::Iid(rate_sigma(x, n)),
        n,
    }
}

/// Per-unit variance added to a clustered one, from the count and the units (the
/// smoothing of a proportion or rate; none for cost).
type UnitVariance = fn(f64, f64) -> f64;

/// What smoothing adds to a proportion's per-unit variance: p̃(1 − p̃) − p̂(1 − p̂)
/// with p̃ = (x + 1)/(n + 2). Added to the between-replicate variance so that a
/// count of zero in every replicate still leaves a margin (≈ 1/n), without
/// inflating the variance elsewhere.
fn proportion_variance(x: f64, n: f64) -> f64 {
    let p = (x / n).clamp(0.0, 1.0);
    (proportion_sigma(x.min(n), n).powi(2) - p * (1.0 - p)).max(0.0)
}

/// The same for a rate per unit (Poisson): (x + 1)/(n + 1) − x/n.
fn rate_variance(x: f64, n: f64) -> f64 {
    (rate_sigma(x, n).powi(2) - x / n).max(0.0)
}

fn no_floor(_: f64, _: f64) -> f64 {
    0.0
}

/// An arm from per-replicate (Y, X) pairs: the ratio and its clustered variance.
fn replicated(pairs: impl IntoIterator<Item = (f64, f64)>, unit: UnitVariance) -> Arm {
    match ratio(pairs) {
        None => Arm {
            mean: 0.0,
            n: 0.0,
            spread: Spread::Unknown,
        },
        Some(r) => Arm {
            mean: r.mean,
            n: r.n,
            spread: Spread::Clustered {
                variance: r.variance + unit(r.mean * r.n, r.n) / r.n,
                df: r.groups - 1,
            },
        },
    }
}

/// A sample's per-replicate (Y, X) pairs of two of its replicate counters.
fn pairs(sample: &Sample, y: ReplicateCounter, x: ReplicateCounter) -> Vec<(f64, f64)> {
    (0..REPLICATES)
        .map(|r| {
            (
                sample.replicate(r, Slot::Counter(y)),
                sample.replicate(r, Slot::Counter(x)),
            )
        })
        .collect()
}

/// Both arms of a ratio gate, from the replicates.
fn replicated_arms(
    stable: &Sample,
    canary: &Sample,
    y: ReplicateCounter,
    x: ReplicateCounter,
    unit: UnitVariance,
) -> (Arm, Arm) {
    (
        replicated(pairs(stable, y, x), unit),
        replicated(pairs(canary, y, x), unit),
    )
}

/// Compares one metric under `gate`. With `robust` (both versions report session
/// replicates) every arm's spread is the between-replicate variance; otherwise
/// units are taken as independent.
pub(super) fn compare(
    metric: Metric,
    gate: Gate,
    (stable, canary): (&Sample, &Sample),
    window: &Window,
    levels: Levels,
    robust: bool,
) -> Comparison {
    use ReplicateCounter as R;
    if metric == Metric::LatencyP95 {
        return latency(gate, stable, canary, levels, robust);
    }
    let (s, c) = if robust {
        match metric {
            Metric::CompletionRate => replicated_arms(
                stable,
                canary,
                R::TasksCompleted,
                R::TasksTotal,
                proportion_variance,
            ),
            Metric::ErrorRate => {
                replicated_arms(stable, canary, R::RqErrors, R::RqTotal, proportion_variance)
            }
            Metric::ToolErrorRate => replicated_arms(
                stable,
                canary,
                R::ToolErrors,
                R::ToolCalls,
                proportion_variance,
            ),
            Metric::AbandonmentRate => replicated_arms(
                stable,
                canary,
                R::TasksAbandoned,
                R::TasksTotal,
                proportion_variance,
            ),
            Metric::GuardrailRate => replicated_arms(
                stable,
                canary,
                R::GuardrailTriggers,
                R::RqTotal,
                rate_variance,
            ),
            // (Latency was answered above.)
            Metric::CostPerTask | Metric::LatencyP95 => {
                replicated_arms(stable, canary, R::CostMicros, R::TasksTotal, no_floor)
            }
        }
    } else {
        independent_arms(metric, stable, canary, window)
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
            },
            Spread::Clustered {
                variance: v_c,
                df: df_c,
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
fn finite(lower: f64, upper: f64) -> (f64, f64) {
    let clamp = |x: f64, otherwise: f64| {
        if x.is_nan() {
            otherwise
        } else {
            x.clamp(-f64::MAX, f64::MAX)
        }
    };
    (clamp(lower, -f64::MAX), clamp(upper, f64::MAX))
}

/// Today's arms when no replicates are reported: units independent; cost per task
/// by batch means over collection passes.
fn independent_arms(
    metric: Metric,
    stable: &Sample,
    canary: &Sample,
    window: &Window,
) -> (Arm, Arm) {
    let arms = |f: &dyn Fn(&Sample) -> Arm| (f(stable), f(canary));
    match metric {
        Metric::CompletionRate => arms(&|v| {
            proportion(
                v.count(Counter::TasksCompleted),
                v.count(Counter::TasksTotal),
            )
        }),
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
        Metric::CostPerTask | Metric::LatencyP95 => {
            let per_task = |cost: f64, tasks: f64| if tasks > 0.0 { cost / tasks } else { 0.0 };
            let sigma = |pick: fn(&Batch) -> (f64, f64)| {
                let batches: Vec<(f64, f64)> = window
                    .batches
                    .iter()
                    .map(pick)
                    .map(|(tasks, cost)| (tasks, per_task(cost, tasks)))
                    .collect();
                batch_sigma(&batches).map_or(Spread::Unknown, Spread::Iid)
            };
            let arm = |v: &Sample, spread| Arm {
                mean: per_task(v.count(Counter::CostMicros), v.count(Counter::TasksTotal)),
                n: v.count(Counter::TasksTotal),
                spread,
            };
            (
                arm(stable, sigma(|b| (b.stable_tasks, b.stable_cost))),
                arm(canary, sigma(|b| (b.canary_tasks, b.canary_cost))),
            )
        }
    }
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

/// One replicate's latency histogram, cumulative like Prometheus' (`+Inf` last).
fn replicate_latency(sample: &Sample, r: usize) -> Vec<(f64, f64)> {
    let mut cumulative = 0.0;
    (0..LATENCY_BUCKETS)
        .map(|i| {
            cumulative += sample.replicate(r, Slot::Latency(i));
            (
                LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY),
                cumulative,
            )
        })
        .collect()
}

fn latency(
    gate: Gate,
    stable: &Sample,
    canary: &Sample,
    levels: Levels,
    robust: bool,
) -> Comparison {
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
    // The canary's share of requests slower than `level`, as a proportion.
    let arm = if robust {
        replicated(
            (0..REPLICATES).map(|r| {
                let buckets = replicate_latency(canary, r);
                let n = buckets.last().map_or(0.0, |b| b.1);
                (exceeding(&buckets, level), n)
            }),
            proportion_variance,
        )
    } else {
        let slow = exceeding(&canary.latency, level);
        proportion(slow, n_c)
    };
    if !arm.decidable() {
        return comparison;
    }
    comparison.estimate = Some(arm.mean - 0.05);
    let (lower, upper) = finite(
        arm.bound(levels.breach, T_STAR_BREACH).lower() - 0.05,
        arm.bound(levels.pass, T_STAR_PASS).upper() - 0.05,
    );
    comparison.degradation = Some((lower, upper));
    comparison.verdict = verdict(lower, upper);
    comparison
}
