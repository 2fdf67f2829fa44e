//! One arm of one gate: its stratified mean over the window's constant-weight
//! periods and its spread (between session replicates, or from independent
//! units), and the bound on the difference of two arms.

use super::clustered::{stratified, ReplicateRatio, MIN_GROUPS};
use super::MIN_SAMPLES;
pub use crate::analysis::evidence::Stratum;
use crate::analysis::sequential::{
    clustered_margin, margin, proportion_sigma, rate_sigma, ArmBound,
};

/// How an arm's spread is known.
#[derive(Debug, Clone, Copy)]
pub(super) enum Spread {
    /// Per-unit standard deviation, units taken as independent.
    Iid(f64),
    /// Between-replicate variance of the mean (`clustered`), with its degrees of
    /// freedom and effective replicates.
    Clustered {
        variance: f64,
        df: usize,
        effective: f64,
    },
    /// Not yet measurable (too few cost batches).
    Unknown,
}

/// One arm of one gate: its mean, units and spread.
#[derive(Debug, Clone, Copy)]
pub(super) struct Arm {
    pub(super) mean: f64,
    pub(super) n: f64,
    pub(super) spread: Spread,
}

impl Arm {
    pub(super) const EMPTY: Arm = Arm {
        mean: 0.0,
        n: 0.0,
        spread: Spread::Unknown,
    };

    /// The arm's bound at level `alpha`; `t_star` tunes where it is tightest.
    pub(super) fn bound(&self, alpha: f64, t_star: f64) -> ArmBound {
        let margin = match self.spread {
            Spread::Iid(sigma) => margin(self.n, sigma, alpha),
            Spread::Clustered { variance, df, .. } => {
                clustered_margin(self.n, variance, df, alpha, t_star)
            }
            Spread::Unknown => f64::INFINITY,
        };
        ArmBound {
            mean: self.mean,
            margin,
        }
    }

    /// Enough units (and effective replicates) for the bounds' approximations.
    pub(super) fn decidable(&self) -> bool {
        self.n >= MIN_SAMPLES
            && match self.spread {
                Spread::Iid(_) => true,
                Spread::Clustered { effective, .. } => effective >= MIN_GROUPS as f64,
                Spread::Unknown => false,
            }
    }

    pub(super) fn effective(&self) -> Option<f64> {
        match self.spread {
            Spread::Clustered { effective, .. } => Some(effective),
            _ => None,
        }
    }
}

/// A bound on δ = canary − k·stable from both arms' between-replicate variances:
/// standard error sqrt(V_c + k²·V_s), Welch–Satterthwaite degrees of freedom, and
/// the confidence sequence's boundary at `time` (the smaller arm's units; see
/// `docs/analysis.md`) turned into Student's t.
pub(super) struct DifferenceBound {
    pub(super) variance: f64,
    pub(super) df: usize,
    pub(super) time: f64,
}

impl DifferenceBound {
    pub(super) fn new(
        (v_s, df_s): (f64, usize),
        (v_c, df_c): (f64, usize),
        k: f64,
        time: f64,
    ) -> Self {
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
    pub(super) fn margin(&self, alpha: f64, t_star: f64) -> f64 {
        clustered_margin(self.time, self.variance, self.df, alpha, t_star)
    }
}

/// What the units of a ratio are, for their spread: without replicates the
/// per-unit standard deviation, with them what smoothing adds (so that a count of
/// zero in every replicate still leaves a margin of about 1/n).
#[derive(Debug, Clone, Copy)]
pub(super) enum Units {
    /// Events per unit, at most one (completions per task): p̃ = (x + 1)/(n + 2).
    Proportion,
    /// Events per unit, any number (guardrail triggers per request): Poisson.
    Rate,
    /// An amount per unit (cost per task); without replicates its per-unit
    /// standard deviation is the batch-means one, if known yet.
    Amount(Option<f64>),
}

impl Units {
    fn iid_sigma(self, y: f64, x: f64) -> Option<f64> {
        match self {
            Units::Proportion => Some(proportion_sigma(y.min(x), x)),
            Units::Rate => Some(rate_sigma(y, x)),
            Units::Amount(sigma) => sigma,
        }
    }

    /// What smoothing adds to the per-unit variance: p̃(1 − p̃) − p̂(1 − p̂) for a
    /// proportion, (x + 1)/(n + 1) − x/n for a rate, nothing for an amount.
    fn smoothing(self, y: f64, x: f64) -> f64 {
        match self {
            Units::Proportion => {
                let p = (y / x).clamp(0.0, 1.0);
                (proportion_sigma(y.min(x), x).powi(2) - p * (1.0 - p)).max(0.0)
            }
            Units::Rate => (rate_sigma(y, x).powi(2) - y / x).max(0.0),
            Units::Amount(_) => 0.0,
        }
    }

    fn ratio(self, y: f64, x: f64) -> f64 {
        match self {
            Units::Proportion => y.min(x) / x,
            _ => y / x,
        }
    }
}

/// One arm of a ratio in each period: its totals (Y, X) and, with replicates, its
/// per-replicate pairs.
pub(super) struct ArmPeriods {
    pub(super) totals: Vec<(f64, f64)>,
    pub(super) replicates: Vec<Vec<(f64, f64)>>,
}

impl ArmPeriods {
    pub(super) fn units(&self) -> f64 {
        self.totals.iter().map(|(_, x)| x).sum()
    }
}

/// The weight of each period in both arms' stratified means: its units in both
/// arms together, where both have some (a period one arm lacks compares nothing).
pub(super) fn period_weights(stable: &ArmPeriods, canary: &ArmPeriods) -> Vec<f64> {
    stable
        .totals
        .iter()
        .zip(&canary.totals)
        .map(|((_, x_s), (_, x_c))| {
            if *x_s > 0.0 && *x_c > 0.0 {
                x_s + x_c
            } else {
                0.0
            }
        })
        .collect()
}

/// An arm's stratified mean Σₚ wₚ·Rₚ and its spread: between replicates with
/// `robust`, else from independent units.
pub(super) fn arm(periods: &ArmPeriods, weights: &[f64], units: Units, robust: bool) -> Arm {
    let used: Vec<(f64, usize)> = weights
        .iter()
        .enumerate()
        .filter(|(p, w)| **w > 0.0 && periods.totals.get(*p).is_some_and(|(_, x)| *x > 0.0))
        .map(|(p, w)| (*w, p))
        .collect();
    let total_weight: f64 = used.iter().map(|(w, _)| w).sum();
    if used.is_empty() || total_weight <= 0.0 {
        return Arm::EMPTY;
    }
    let n: f64 = used.iter().map(|(_, p)| periods.totals[*p].1).sum();
    // Σₚ wₚ² · f(Yₚ, Xₚ) / Xₚ: what per-unit variances f add to the mean's.
    let per_unit = |f: &dyn Fn(f64, f64) -> Option<f64>| -> Option<f64> {
        used.iter()
            .map(|(w, p)| {
                let (y, x) = periods.totals[*p];
                Some((w / total_weight).powi(2) * f(y, x)? / x)
            })
            .sum()
    };
    if robust {
        let strata: Vec<(f64, &[(f64, f64)])> = used
            .iter()
            .map(|(w, p)| {
                (
                    *w,
                    periods.replicates.get(*p).map_or(&[][..], Vec::as_slice),
                )
            })
            .collect();
        let Some(r): Option<ReplicateRatio> = stratified(&strata) else {
            return Arm::EMPTY;
        };
        let smoothing = per_unit(&|y, x| Some(units.smoothing(y, x))).unwrap_or(0.0);
        return Arm {
            mean: r.mean,
            n: r.n,
            spread: Spread::Clustered {
                variance: r.variance + smoothing,
                df: r.df(),
                effective: r.effective,
            },
        };
    }
    let mean: f64 = used
        .iter()
        .map(|(w, p)| {
            let (y, x) = periods.totals[*p];
            w / total_weight * units.ratio(y, x)
        })
        .sum();
    let Some(variance) = per_unit(&|y, x| units.iid_sigma(y, x).map(|sigma| sigma * sigma)) else {
        return Arm {
            mean,
            n,
            spread: Spread::Unknown,
        };
    };
    // One per-unit σ for the whole arm: the one whose σ²/n is this variance.
    Arm {
        mean,
        n,
        spread: Spread::Iid((variance * n).sqrt()),
    }
}
