//! How rollouts, weights, numbers and times are written for people: shared by the
//! CLI and the dashboard so that both say the same thing the same way.

use crate::analysis::Analysis;
use crate::store::AuditEntry;

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

/// An open gate's estimated time to decision, as ` (about 12m more)`.
pub fn eta(seconds: Option<f64>) -> String {
    seconds.map_or(String::new(), |s| {
        format!(" (about {} more)", crate::analysis::planning::duration(s))
    })
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
