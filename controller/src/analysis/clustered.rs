//! Session-robust variance: each arm's estimate is a ratio of sums (errors over
//! requests, cost over tasks, …) whose units come in sessions. The filter splits
//! every count into 32 replicates of whole sessions (`policy_canary::replicate`),
//! assigned independently of the cohort, so each replicate holds a random group of
//! the arm's sessions. The random-groups (linearisation) variance of the ratio
//! R = ΣY/ΣX over the g non-empty replicates,
//!
//! ```text
//! V = g/(g − 1) · Σⱼ (Yⱼ − R·Xⱼ)² / (ΣX)²
//! ```
//!
//! counts whatever sessions share (a power user's cost level, a workflow's failure
//! propensity, its share of the traffic) instead of assuming requests independent.
//! Its degrees of freedom are those of the *effective* replicates, (ΣX)²/ΣX²
//! minus one: a replicate holding most of an arm's units (one dominant session)
//! counts as about one, however many others hold a little. The bound's normal
//! quantile is replaced by Student's t at the same tail (`student_z`).

/// Fewer effective replicates than this in an arm: no verdict from it (the
/// variance would rest on fewer than 7 degrees of freedom).
pub const MIN_GROUPS: usize = 8;

/// One arm's ratio estimate over replicates.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ReplicateRatio {
    pub mean: f64,
    /// Variance of `mean` (not per unit).
    pub variance: f64,
    /// ΣX: the units (requests, tasks, tool calls).
    pub n: f64,
    /// Non-empty replicates.
    pub groups: usize,
    /// Effective replicates, (ΣX)² / ΣX² over the replicates' shares of the
    /// estimate: 32 when they hold equal shares, near 1 when one session holds
    /// most of the arm.
    pub effective: f64,
}

impl ReplicateRatio {
    /// Degrees of freedom of `variance`: one fewer than the effective replicates
    /// (never more than the non-empty replicates give).
    pub fn df(&self) -> usize {
        let effective = self.effective.floor().max(1.0) as usize;
        effective.min(self.groups).saturating_sub(1)
    }
}

/// The ratio ΣY/ΣX of per-replicate pairs (Y, X) and its between-replicate variance.
/// `None` when no replicate has units.
pub fn ratio(pairs: impl IntoIterator<Item = (f64, f64)>) -> Option<ReplicateRatio> {
    let pairs: Vec<(f64, f64)> = pairs.into_iter().collect();
    stratified(&[(1.0, &pairs)])
}

/// The stratified ratio Σₚ wₚ·Rₚ over periods p (weights summing to 1, each with
/// its per-replicate pairs (Y, X) and ratio Rₚ = ΣY/ΣX), and its variance between
/// replicates. A replicate holds the same sessions in every period, so its
/// residual is taken over all of them at once,
///
/// ```text
/// eⱼ = Σₚ wₚ (Yₚⱼ − Rₚ·Xₚⱼ) / Xₚ,   V = g/(g − 1) · Σⱼ eⱼ²
/// ```
///
/// which is the random-groups variance when there is one period. The effective
/// replicates come from each replicate's share aⱼ = Σₚ wₚ·Xₚⱼ / Xₚ of the
/// estimate: 1 / Σⱼ aⱼ² (Kish's effective sample size of the replicates).
/// Periods without units or weight are left out. `None` when nothing is left.
pub fn stratified(periods: &[(f64, &[(f64, f64)])]) -> Option<ReplicateRatio> {
    /// A period used: its weight, pairs, ratio and units.
    struct Used<'a> {
        w: f64,
        pairs: &'a [(f64, f64)],
        r: f64,
        x: f64,
    }
    let used: Vec<Used<'_>> = periods
        .iter()
        .filter_map(|&(w, pairs)| {
            let x: f64 = pairs.iter().map(|(_, x)| x.max(0.0)).sum();
            let y: f64 = pairs.iter().filter(|(_, x)| *x > 0.0).map(|(y, _)| y).sum();
            (w > 0.0 && x > 0.0).then_some(Used {
                w,
                pairs,
                r: y / x,
                x,
            })
        })
        .collect();
    let total_weight: f64 = used.iter().map(|u| u.w).sum();
    if used.is_empty() || total_weight <= 0.0 {
        return None;
    }
    let replicates = used.iter().map(|u| u.pairs.len()).max().unwrap_or(0);
    let mut residuals = vec![0.0; replicates];
    let mut shares = vec![0.0; replicates];
    let mut mean = 0.0;
    let mut n = 0.0;
    for &Used { w, pairs, r, x } in &used {
        let w = w / total_weight;
        mean += w * r;
        n += x;
        for (j, &(y_j, x_j)) in pairs.iter().enumerate() {
            if x_j > 0.0 {
                residuals[j] += w * (y_j - r * x_j) / x;
                shares[j] += w * x_j / x;
            }
        }
    }
    let groups = shares.iter().filter(|a| **a > 0.0).count();
    let sum_sq_shares: f64 = shares.iter().map(|a| a * a).sum();
    let effective = if sum_sq_shares > 0.0 {
        1.0 / sum_sq_shares
    } else {
        0.0
    };
    let variance = if groups > 1 {
        let g = groups as f64;
        g / (g - 1.0) * residuals.iter().map(|e| e * e).sum::<f64>()
    } else {
        f64::INFINITY
    };
    Some(ReplicateRatio {
        mean,
        variance,
        n,
        groups,
        effective,
    })
}

/// The Student-t quantile with `df` degrees of freedom at the upper tail the standard
/// normal has at `z` (z ≥ 0): a normal bound made honest for an estimated variance.
pub fn student_z(z: f64, df: usize) -> f64 {
    if df == 0 {
        return f64::INFINITY;
    }
    if !z.is_finite() || z <= 0.0 {
        return z;
    }
    let p = normal_upper(z);
    // Newton's method on the t tail from the normal quantile (t ≥ z always).
    let mut t = z;
    for _ in 0..60 {
        let f = t_upper(t, df) - p;
        let step = f / t_density(t, df);
        let next = (t + step).max(t * 0.5 + z * 0.5).max(z);
        if (next - t).abs() < 1e-10 * t {
            return next;
        }
        t = next;
    }
    t
}

/// P(Z > z) for a standard normal Z, by `erfc` (relative error below 1.2e-7).
pub fn normal_upper(z: f64) -> f64 {
    0.5 * erfc(z / std::f64::consts::SQRT_2)
}

/// Complementary error function (Numerical Recipes' Chebyshev fit).
fn erfc(x: f64) -> f64 {
    let z = x.abs();
    let t = 1.0 / (1.0 + 0.5 * z);
    let poly = -z * z - 1.265_512_23
        + t * (1.000_023_68
            + t * (0.374_091_96
                + t * (0.096_784_18
                    + t * (-0.186_288_06
                        + t * (0.278_868_07
                            + t * (-1.135_203_98
                                + t * (1.488_515_87 + t * (-0.822_152_23 + t * 0.170_872_77))))))));
    let r = t * poly.exp();
    if x >= 0.0 {
        r
    } else {
        2.0 - r
    }
}

/// P(T > t) for Student's t with integer `df`, t ≥ 0, by the closed forms for
/// integer degrees of freedom (Abramowitz & Stegun 26.7.3–4).
pub fn t_upper(t: f64, df: usize) -> f64 {
    let nu = df as f64;
    let theta = (t / nu.sqrt()).atan();
    let (s, c) = theta.sin_cos();
    let c2 = c * c;
    // A(t|ν) = P(|T| < t).
    let a = if df % 2 == 1 {
        let mut term = c;
        let mut sum = if df > 1 { c } else { 0.0 };
        let mut k = 3.0;
        while k <= nu - 1.0 {
            term *= c2 * (k - 1.0) / k;
            sum += term;
            k += 2.0;
        }
        2.0 / std::f64::consts::PI * (theta + s * sum)
    } else {
        let mut term = 1.0;
        let mut sum = 1.0;
        let mut k = 2.0;
        while k <= nu - 2.0 {
            term *= c2 * (k - 1.0) / k;
            sum += term;
            k += 2.0;
        }
        s * sum
    };
    ((1.0 - a) / 2.0).max(0.0)
}

fn t_density(t: f64, df: usize) -> f64 {
    let nu = df as f64;
    let log_c =
        ln_gamma((nu + 1.0) / 2.0) - ln_gamma(nu / 2.0) - 0.5 * (nu * std::f64::consts::PI).ln();
    (log_c - (nu + 1.0) / 2.0 * (1.0 + t * t / nu).ln()).exp()
}

/// ln Γ(x) for x > 0 (Lanczos, g = 7).
fn ln_gamma(x: f64) -> f64 {
    const C: [f64; 9] = [
        0.999_999_999_999_809_9,
        676.520_368_121_885_1,
        -1_259.139_216_722_402_8,
        771.323_428_777_653_1,
        -176.615_029_162_140_6,
        12.507_343_278_686_905,
        -0.138_571_095_265_720_12,
        9.984_369_578_019_572e-6,
        1.505_632_735_149_311_6e-7,
    ];
    if x < 0.5 {
        let pi = std::f64::consts::PI;
        return (pi / (pi * x).sin()).ln() - ln_gamma(1.0 - x);
    }
    let x = x - 1.0;
    let mut a = C[0];
    let t = x + 7.5;
    for (i, c) in C.iter().enumerate().skip(1) {
        a += c / (x + i as f64);
    }
    0.5 * (2.0 * std::f64::consts::PI).ln() + (x + 0.5) * t.ln() - t + a.ln()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_tables() {
        // Two-sided tables: t_{ν, 1−p} for one-sided p.
        let cases = [
            (1.959_964, 31, 2.039_513), // p = 0.025
            (1.959_964, 7, 2.364_624),  // p = 0.025
            (3.290_527, 9, 4.780_913),  // p = 0.0005
            (3.290_527, 31, 3.633_401), // p = 0.0005
            (2.575_829, 1, 63.656_74),  // p = 0.005
            (2.575_829, 2, 9.924_843),  // p = 0.005
            (3.890_592, 15, 5.239_358), // p = 0.00005
        ];
        for (z, df, want) in cases {
            let got = student_z(z, df);
            assert!(
                (got - want).abs() / want < 2e-4,
                "df {df}, z {z}: {got} vs {want}"
            );
        }
        assert!((normal_upper(1.959_964) - 0.025).abs() < 1e-7);
        assert_eq!(student_z(2.0, 0), f64::INFINITY);
    }

    #[test]
    fn ratio_variance_counts_the_groups_not_the_units() {
        // Two groups with the same ratio: no spread between them.
        let same = ratio([(10.0, 100.0), (20.0, 200.0), (0.0, 0.0)]).unwrap();
        assert_eq!((same.mean, same.variance, same.groups), (0.1, 0.0, 2));
        // Shares 1/3 and 2/3: 1 / (1/9 + 4/9) = 1.8 effective replicates.
        assert!((same.effective - 1.8).abs() < 1e-12);
        // One group all failures, one none: the spread is the groups', however many
        // units each holds.
        let apart = ratio([(100.0, 100.0), (0.0, 100.0)]).unwrap();
        assert!((apart.mean - 0.5).abs() < 1e-12);
        // g/(g−1) · Σ (y − R x)² / X² = 2 · (50² + 50²) / 200² = 0.25.
        assert!((apart.variance - 0.25).abs() < 1e-12);
        assert_eq!(ratio([(1.0, 0.0)]), None);
        assert_eq!(ratio([(1.0, 5.0)]).unwrap().variance, f64::INFINITY);
    }

    /// One session holding 95% of an arm's units: 32 non-empty replicates, but
    /// about one effective, and so no degrees of freedom to speak of.
    #[test]
    fn a_dominant_replicate_counts_as_about_one() {
        let mut pairs = vec![(900.0, 950.0)];
        pairs.extend((0..31).map(|_| (1.0, 50.0 / 31.0)));
        let r = ratio(pairs).unwrap();
        assert_eq!(r.groups, 32);
        assert!(r.effective < 1.2, "{}", r.effective);
        assert_eq!(r.df(), 0);
        let even = ratio((0..32).map(|_| (5.0, 10.0))).unwrap();
        assert!((even.effective - 32.0).abs() < 1e-9);
        assert_eq!(even.df(), 31);
    }

    /// Periods are weighted as given; a replicate's residuals add up over them.
    #[test]
    fn strata_weigh_their_ratios() {
        let a = [(10.0, 100.0), (30.0, 100.0)]; // R = 0.2
        let b = [(80.0, 100.0), (80.0, 100.0)]; // R = 0.8
        let r = stratified(&[(0.5, &a[..]), (0.5, &b[..])]).unwrap();
        assert!((r.mean - 0.5).abs() < 1e-12);
        assert_eq!(r.n, 400.0);
        // e = 0.5 · (∓10/200): ±0.025 per replicate; V = 2 · 2 · 0.025².
        assert!((r.variance - 0.0025).abs() < 1e-12);
        assert!((r.effective - 2.0).abs() < 1e-12);
        // A period without units leaves the others' weights.
        let none = [(0.0, 0.0), (0.0, 0.0)];
        let r = stratified(&[(0.5, &a[..]), (0.5, &none[..])]).unwrap();
        assert!((r.mean - 0.2).abs() < 1e-12);
        assert_eq!(stratified(&[(1.0, &none[..])]), None);
    }
}
