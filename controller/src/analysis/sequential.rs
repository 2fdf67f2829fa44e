//! Anytime-valid bounds for comparing canary with stable at every check.
//!
//! Checking a fixed-sample test at every analysis interval inflates its false-alarm
//! rate without limit. A *confidence sequence* instead holds at all sample sizes at
//! once: with probability at least 1 − α the true mean never leaves it, however
//! often it is looked at. We use the one-sided normal-mixture boundary (Robbins;
//! Howard, Ramdas, McAuliffe & Sekhon 2021, "Time-uniform, nonparametric,
//! nonasymptotic confidence sequences"; in its asymptotic, CLT form from
//! Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas 2021, "Time-uniform central limit
//! theory and asymptotic confidence sequences"):
//!
//! ```text
//! margin(t) = σ̂ · sqrt( 2 (t ρ² + 1) / (t² ρ²) · ln( sqrt(t ρ² + 1) / α ) )
//! P( ∃ t : μ̂_t − μ > margin(t) ) ≤ α          (and likewise below)
//! ρ² = ( −2 ln α + ln(−2 ln α + 1) ) / t*       (tightest near t* samples)
//! ```
//!
//! Assumptions: observations within an arm are independent and identically
//! distributed with finite variance, σ̂ is a consistent estimate of their standard
//! deviation, and t is large enough for the central limit theorem (verdicts need
//! a minimum sample size). Stages are separate experiments; the overall error is
//! bounded by a union (Bonferroni) bound over stages and gates.

/// The sample size at which the bound is tightest.
pub const T_STAR: f64 = 1_000.0;

/// The mixture parameter ρ² that makes the boundary tightest at `t_star` samples.
pub fn rho_squared(alpha: f64, t_star: f64) -> f64 {
    let l = -2.0 * alpha.ln();
    (l + (l + 1.0).ln()) / t_star
}

/// Half-width of a one-sided (1 − α) confidence sequence for a mean after `t`
/// observations with standard deviation `sigma`. Infinite when there are none.
pub fn margin(t: f64, sigma: f64, alpha: f64) -> f64 {
    tuned_margin(t, sigma, alpha, T_STAR)
}

/// Where the session-robust breach bound is tightest: early, where a large
/// regression shows within the first minute of a 1% stage (`make bench`).
pub const T_STAR_BREACH: f64 = 1_000.0;
/// Where the session-robust pass bound is tightest: the default plan's slowest
/// gates pass an equal canary at 5,000–10,000 canary units (`make bench`).
pub const T_STAR_PASS: f64 = 8_000.0;

/// `margin` with the mixture tuned to be tightest near `t_star` observations.
pub fn tuned_margin(t: f64, sigma: f64, alpha: f64, t_star: f64) -> f64 {
    if t <= 0.0 || !(alpha > 0.0 && alpha < 1.0) {
        return f64::INFINITY;
    }
    let r = rho_squared(alpha, t_star);
    let inner = 2.0 * (t * r + 1.0) / (t * t * r) * ((t * r + 1.0).sqrt() / alpha).ln();
    sigma * inner.max(0.0).sqrt()
}

/// An estimate of one arm's mean with its anytime-valid margin.
/// The margin of a mean whose variance `variance` (of the mean itself) was
/// estimated between replicates with `df` degrees of freedom, over `n` units: the
/// same boundary as `margin`, in standard errors, turned into Student's t at the
/// same tail. The boundary's time is the units `n` (≥ the effective sample size, so
/// its slowly growing log term is, if anything, larger than needed).
/// `t_star` tunes where the boundary is tightest (`T_STAR_BREACH`, `T_STAR_PASS`):
/// each bound is valid whatever it is, as long as it is fixed in advance.
pub fn clustered_margin(n: f64, variance: f64, df: usize, alpha: f64, t_star: f64) -> f64 {
    if !(variance.is_finite() && variance >= 0.0) {
        return f64::INFINITY;
    }
    let z = tuned_margin(n, 1.0, alpha, t_star) * n.sqrt();
    variance.sqrt() * super::clustered::student_z(z, df)
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ArmBound {
    pub mean: f64,
    pub margin: f64,
}

impl ArmBound {
    pub fn new(mean: f64, n: f64, sigma: f64, alpha: f64) -> ArmBound {
        ArmBound {
            mean,
            margin: margin(n, sigma, alpha),
        }
    }

    pub fn lower(&self) -> f64 {
        self.mean - self.margin
    }

    pub fn upper(&self) -> f64 {
        self.mean + self.margin
    }
}

/// Bounds on `δ = canary − k · stable − offset` from the two arms' bounds (each at
/// α/2, so that both hold together with probability at least 1 − α).
pub fn difference(canary: ArmBound, stable: ArmBound, k: f64, offset: f64) -> (f64, f64) {
    let (a, b) = (k * stable.lower(), k * stable.upper());
    let lower = canary.lower() - a.max(b) - offset;
    let upper = canary.upper() - a.min(b) - offset;
    (lower, upper)
}

/// Laplace-smoothed standard deviation of a proportion (never zero).
pub fn proportion_sigma(successes: f64, n: f64) -> f64 {
    let p = (successes + 1.0) / (n + 2.0);
    (p * (1.0 - p)).sqrt()
}

/// Standard deviation of a per-request count under a Poisson assumption (never zero).
pub fn rate_sigma(events: f64, n: f64) -> f64 {
    ((events + 1.0) / (n + 1.0)).sqrt()
}

/// Batch-means estimate of the per-item standard deviation: batch `i` has `n_i`
/// items with mean `m_i`; `Σ n_i (m_i − m)² / (B − 1)` estimates the per-item
/// variance when items are independent. `None` with fewer than 5 batches.
pub fn batch_sigma(batches: &[(f64, f64)]) -> Option<f64> {
    let batches: Vec<(f64, f64)> = batches.iter().copied().filter(|(n, _)| *n > 0.0).collect();
    if batches.len() < 5 {
        return None;
    }
    let total: f64 = batches.iter().map(|(n, _)| n).sum();
    let mean = batches.iter().map(|(n, m)| n * m).sum::<f64>() / total;
    let ss: f64 = batches.iter().map(|(n, m)| n * (m - mean).powi(2)).sum();
    Some((ss / (batches.len() as f64 - 1.0)).sqrt())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values computed independently with Python's math module from the formula above.
    #[test]
    fn margins_match_independent_values() {
        let cases = [
            (
                1000.0,
                0.3,
                0.001,
                0.016511185200627804,
                0.03989940760767532,
            ),
            (50.0, 0.5, 0.01, 0.011533741340715224, 0.3634992723694947),
            (
                100_000.0,
                0.1,
                0.0003,
                0.019069728352016715,
                0.0015423916936417653,
            ),
        ];
        for (t, sigma, alpha, rho2, expected) in cases {
            assert!((rho_squared(alpha, T_STAR) - rho2).abs() < 1e-15);
            let got = margin(t, sigma, alpha);
            assert!(
                (got - expected).abs() / expected < 1e-12,
                "t={t}: {got} vs {expected}"
            );
        }
        assert!(margin(0.0, 1.0, 0.01).is_infinite());
        assert!(margin(10.0, 1.0, 0.0).is_infinite());
    }

    #[test]
    fn margins_shrink_with_data_and_grow_with_confidence() {
        assert!(margin(10_000.0, 0.3, 0.01) < margin(1_000.0, 0.3, 0.01));
        assert!(margin(1_000.0, 0.3, 0.001) > margin(1_000.0, 0.3, 0.01));
        // Wider than the fixed-sample z-interval: the price of looking at every check.
        let z = 2.326 * 0.3 / (1_000f64).sqrt();
        assert!(margin(1_000.0, 0.3, 0.01) > z);
    }

    #[test]
    fn difference_bounds() {
        let canary = ArmBound {
            mean: 0.72,
            margin: 0.05,
        };
        let stable = ArmBound {
            mean: 0.90,
            margin: 0.01,
        };
        // Lower is worse: δ = 1·stable − canary − 0.05 = (−canary) − (−1)·stable − 0.05.
        let (lo, hi) = difference(
            ArmBound {
                mean: -canary.mean,
                margin: canary.margin,
            },
            stable,
            -1.0,
            0.05,
        );
        // δ̂ = 0.90 − 0.72 − 0.05 = 0.13, minus/plus the margins 0.01 + 0.05.
        assert!((lo - 0.07).abs() < 1e-12, "{lo}");
        assert!((hi - 0.19).abs() < 1e-12, "{hi}");
        assert!(lo > 0.0, "a clear breach");
    }

    #[test]
    fn batch_means_recover_the_item_spread() {
        assert_eq!(batch_sigma(&[(10.0, 1.0); 4]), None);
        // Batches of 4 items whose means spread with sd 1/2: per-item sd ≈ 1.
        let batches: Vec<(f64, f64)> = [0.5, -0.5, 0.5, -0.5, 0.5, -0.5, 0.5, -0.5]
            .iter()
            .map(|m| (4.0, 10.0 + m))
            .collect();
        let sigma = batch_sigma(&batches).unwrap();
        assert!((sigma - (4.0f64 * 0.25 * 8.0 / 7.0).sqrt()).abs() < 1e-12);
        assert!(proportion_sigma(0.0, 100.0) > 0.0 && rate_sigma(0.0, 100.0) > 0.0);
    }
}
