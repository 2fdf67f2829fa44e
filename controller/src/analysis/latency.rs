//! Latency P95, canary against stable, through exceedance: the share of the
//! canary's requests slower than stable's P95 × (1 + r), with stable's P95
//! itself bounded.

use super::arms::{arm, period_weights, ArmPeriods, Stratum, Units};
use super::compare::{finite, verdict};
use super::{Comparison, GateVerdict, Levels};
use crate::analysis::evidence::Sample;
use crate::analysis::sequential::{T_STAR_BREACH, T_STAR_PASS};
use crate::rollout::gates::{Direction, Gate, Threshold};
use policy_canary::replicate::{Slot, LATENCY_BOUNDS_MS, LATENCY_BUCKETS, REPLICATES};

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

/// One arm's latency histograms per period: in total and per replicate.
struct LatencyPeriods {
    totals: Vec<Vec<(f64, f64)>>,
    replicates: Vec<Vec<Vec<(f64, f64)>>>,
}

impl LatencyPeriods {
    fn of<'a>(samples: impl Iterator<Item = &'a Sample>) -> LatencyPeriods {
        let mut out = LatencyPeriods {
            totals: Vec::new(),
            replicates: Vec::new(),
        };
        for sample in samples {
            out.totals.push(sample.latency.clone());
            out.replicates.push(
                (0..REPLICATES)
                    .map(|r| replicate_latency(sample, r))
                    .collect(),
            );
        }
        out
    }

    /// The share of requests slower than `level`, as a ratio per period.
    fn slower_than(&self, level: f64, robust: bool) -> ArmPeriods {
        let count = |h: &Vec<(f64, f64)>| (exceeding(h, level), h.last().map_or(0.0, |b| b.1));
        ArmPeriods {
            totals: self.totals.iter().map(count).collect(),
            replicates: if robust {
                self.replicates
                    .iter()
                    .map(|period| period.iter().map(count).collect())
                    .collect()
            } else {
                Vec::new()
            },
        }
    }

    /// The highest finite bucket bound holding any request (where a search for a
    /// quantile can stop).
    fn highest_bound(&self) -> f64 {
        self.totals
            .iter()
            .flat_map(|h| {
                let mut previous = 0.0;
                h.iter().filter_map(move |(le, n)| {
                    let grew = *n > previous;
                    previous = *n;
                    (grew && le.is_finite()).then_some(*le)
                })
            })
            .fold(0.0, f64::max)
    }
}

/// The smallest `x` in `[lo, hi]` where `holds` (assumed false below, true above
/// it), by bisection; `None` if it does not hold at `hi`.
fn smallest(lo: f64, hi: f64, holds: impl Fn(f64) -> bool) -> Option<f64> {
    if !holds(hi) {
        return None;
    }
    let (mut lo, mut hi) = (lo, hi);
    if holds(lo) {
        return Some(lo);
    }
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if holds(mid) {
            hi = mid;
        } else {
            lo = mid;
        }
    }
    Some(hi)
}

/// Latency P95, through exceedance: with L = stable's P95 × (1 + r) (or + a ms),
/// the canary breaches when its share of requests slower than L is shown above
/// 5%, and passes when shown below. Stable's P95 is itself estimated: a breach
/// takes L from an upper bound on it and a pass from a lower bound (each bound
/// and the canary's at half the side's level), so that stable's own uncertainty
/// can make neither a false breach nor a false pass.
pub(super) fn latency(
    name: &str,
    gate: Gate,
    strata: &[Stratum],
    levels: Levels,
    robust: bool,
) -> Comparison {
    let pooled = |pick: fn(&Stratum) -> &Sample| {
        let mut total = Sample::default();
        for s in strata {
            total.add(pick(s));
        }
        total.latency
    };
    let (pooled_s, pooled_c) = (pooled(|s| &s.stable), pooled(|s| &s.canary));
    let n_s = pooled_s.last().map_or(0.0, |b| b.1);
    let n_c = pooled_c.last().map_or(0.0, |b| b.1);
    let latency_gate = Gate {
        direction: Direction::HigherIsWorse,
        ..gate
    };
    let mut comparison = Comparison::open(
        name,
        &latency_gate,
        quantile(&pooled_s, 0.95),
        quantile(&pooled_c, 0.95),
        (n_s, n_c),
    );
    if comparison.verdict == GateVerdict::Disabled {
        return comparison;
    }
    let stable = LatencyPeriods::of(strata.iter().map(|s| &s.stable));
    let canary = LatencyPeriods::of(strata.iter().map(|s| &s.canary));
    let weights = period_weights(
        &stable.slower_than(f64::INFINITY, false),
        &canary.slower_than(f64::INFINITY, false),
    );
    let share = |periods: &LatencyPeriods, level: f64| {
        arm(
            &periods.slower_than(level, robust),
            &weights,
            Units::Proportion,
            robust,
        )
    };
    let level_over = |p95: f64| match gate.threshold {
        Threshold::Relative(r) => p95 * (1.0 + r),
        Threshold::Absolute(a) => p95 + a,
    };
    let top = stable.highest_bound().max(canary.highest_bound());
    // Stable's P95 as the data put it: where its share of slower requests is 5%.
    let Some(p95_s) = smallest(0.0, top, |l| share(&stable, l).mean <= 0.05) else {
        return comparison;
    };
    let at_p95 = share(&stable, p95_s);
    let canary_at = share(&canary, level_over(p95_s));
    comparison.effective_replicates = at_p95
        .effective()
        .zip(canary_at.effective())
        .map(|(a, b)| [a, b]);
    if !at_p95.decidable() || !canary_at.decidable() {
        return comparison;
    }
    comparison.estimate = Some(canary_at.mean - 0.05);
    // Breach side: stable's P95 is at most `high` (at α/2), the canary's share
    // over high·(1 + r) is above 5% (at α/2). Without such a bound, no breach.
    let half_breach = levels.breach / 2.0;
    let high = smallest(0.0, top, |l| {
        share(&stable, l).bound(half_breach, T_STAR_BREACH).upper() <= 0.05
    });
    let lower = high.map_or(-f64::MAX, |high| {
        share(&canary, level_over(high))
            .bound(half_breach, T_STAR_BREACH)
            .lower()
            - 0.05
    });
    // Pass side: stable's P95 is at least `low` (at β/2), the canary's share over
    // low·(1 + r) is below 5% (at β/2).
    let half_pass = levels.pass / 2.0;
    let low = smallest(0.0, top, |l| {
        share(&stable, l).bound(half_pass, T_STAR_PASS).lower() < 0.05
    })
    .unwrap_or(top);
    let upper = share(&canary, level_over(low))
        .bound(half_pass, T_STAR_PASS)
        .upper()
        - 0.05;
    let (lower, upper) = finite(lower, upper);
    comparison.degradation = Some((lower, upper));
    comparison.verdict = verdict(lower, upper);
    comparison
}
