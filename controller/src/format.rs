//! How rollouts, weights, numbers and times are written for people: shared by the
//! CLI and the dashboard so that both say the same thing the same way.

use crate::analysis::{Analysis, ApartTraffic, Comparison};
use crate::store::AuditEntry;
use crate::units::Weight;

/// A number as the dashboard and `canaryctl rollout status` show it.
pub fn number(value: Option<f64>) -> String {
    value.map_or("-".to_string(), |x| format!("{x:.4}"))
}

/// A count (sample sizes are sums of counters, kept as floats by the analysis).
pub fn count(value: f64) -> String {
    format!("{}", value.round() as i64)
}

/// The comparisons that breached their gate, one `metric change (stable x, canary y)`
/// each (the dashboard's timeline).
pub fn breached_gates(analysis: &Analysis) -> Vec<String> {
    analysis
        .breaches()
        .iter()
        .map(|c| {
            format!(
                "{} {} (stable {}, canary {})",
                c.metric,
                c.change,
                number(c.stable),
                number(c.canary)
            )
        })
        .collect()
}

/// `YYYY-MM-DDTHH:MM:SSZ` from milliseconds since the epoch.
/// Who made an audited change: what the client called itself, and the token it
/// held when that differs.
pub fn acted_by(e: &AuditEntry) -> String {
    match &e.principal {
        Some(principal) if *principal != e.actor => format!("{} (token {principal})", e.actor),
        _ => e.actor.clone(),
    }
}

/// What an analysis' bounds assume, in a line (status, watch, dashboard).
pub fn bounds_basis(session_robust: bool) -> &'static str {
    if session_robust {
        "session-robust (between-replicate variance of the filter's session replicates)"
    } else {
        "requests taken as independent (no session replicates reported)"
    }
}

/// Which arms of a gate a few sessions dominate, as a sentence (status, watch,
/// dashboard): no verdict can come from an arm with fewer effective replicates
/// than `clustered::MIN_GROUPS`.
pub fn dominated(c: &Comparison) -> Option<String> {
    let arms = c.dominated_arms();
    let [stable, canary] = c.effective_replicates?;
    (!arms.is_empty()).then(|| {
        format!(
            "{}: {} dominated by a few sessions ({:.1} / {:.1} effective replicates of stable / canary, {} needed)",
            c.metric,
            arms.join(" and "),
            stable,
            canary,
            crate::analysis::clustered::MIN_GROUPS
        )
    })
}

/// The window's constant-weight periods, when there is more than one, as a line:
/// `2 periods compared apart: 10% from 13:00:00Z, 25% from 14:00:00Z`.
pub fn periods(analysis: &Analysis) -> Option<String> {
    (analysis.periods.len() > 1).then(|| {
        let each: Vec<String> = analysis
            .periods
            .iter()
            .map(|p| {
                let weight = p.weight_bp.map_or("?".into(), |w| Weight(w).to_string());
                format!("{weight} from {}", utc(p.started_ms))
            })
            .collect();
        format!(
            "{} constant-weight periods, compared period by period: {}",
            analysis.periods.len(),
            each.join(", ")
        )
    })
}

/// Said when the stage's analysis is not its first (the evidence of the ones
/// before was lost with a controller restart).
pub fn sequence(analysis: &Analysis) -> Option<String> {
    (analysis.sequence > 0).then(|| {
        format!(
            "analysis {} of this stage: the evidence before it was lost, so it started afresh with a              smaller share of the error budgets",
            analysis.sequence + 1
        )
    })
}

/// One row of traffic outside the comparison: class, version, requests, error
/// rate, tasks, completion rate, cost per task.
pub fn apart_row(t: &ApartTraffic) -> [String; 7] {
    let share = |x: f64, n: f64| (n > 0.0).then(|| x / n);
    [
        t.traffic.clone(),
        t.version.clone(),
        count(t.requests),
        number(share(t.errors, t.requests)),
        count(t.tasks),
        number(share(t.tasks_completed, t.tasks)),
        share(t.cost_micros, t.tasks).map_or("-".into(), |c| format!("{c:.0}")),
    ]
}

/// The heading of `apart_row`'s columns.
pub const APART_COLUMNS: [&str; 7] = [
    "traffic",
    "version",
    "requests",
    "error rate",
    "tasks",
    "completion",
    "cost/task",
];

/// Why traffic is outside the comparison, in a line.
pub const APART_NOTE: &str = "Outside the comparison (not placed by the cohort hash at the     rollout's weight: forced, segment-routed, sessionless to stable), shown apart, never compared";

/// An open gate's estimated time to decision, as ` (about 12m more)`.
pub fn eta(seconds: Option<f64>) -> String {
    seconds.map_or(String::new(), |s| {
        format!(" (about {} more)", crate::analysis::planning::duration(s))
    })
}

/// `YYYY-MM-DDTHH:MM:SS.mmmZ` (RFC 3339 with milliseconds).
pub fn utc_ms(ms: i64) -> String {
    let text = utc(ms);
    format!("{}.{:03}Z", text.trim_end_matches('Z'), ms.rem_euclid(1000))
}

pub fn utc(ms: i64) -> String {
    let secs = ms.div_euclid(1000);
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utc_dates() {
        assert_eq!(utc(0), "1970-01-01T00:00:00Z");
        assert_eq!(utc(1_795_316_400_000), "2026-11-22T03:00:00Z");
        assert_eq!(utc(951_782_400_000), "2000-02-29T00:00:00Z");
    }
}
