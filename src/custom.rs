//! Custom metrics the agent reports (`x-agent-metric-<name>: <number>`), counted
//! per version and traffic class as a sum (micro-units), a number of reports and a
//! number of invalid reports, and per session replicate (compared traffic only)
//! as a sum and a number of reports: a mean per report, session-robust like the
//! built-in gates. The names come from the route table (`RouteTable::metrics`).
//!
//! Stat suffixes: `custom_<name>_micros`, `custom_<name>_reports`,
//! `custom_<name>_invalid`, and per replicate `replicate.<r>.custom_<name>_micros`
//! and `…_reports`.

use crate::replicate::REPLICATES;
use crate::stats::{ByVersion, Traffic};
use crate::telemetry::CustomReport;

/// The counts kept per version, in suffix order.
pub const FIELDS: [&str; 3] = ["micros", "reports", "invalid"];
/// The counts kept per replicate: the first two of `FIELDS`.
pub const REPLICATE_FIELDS: usize = 2;

/// The stat suffix of one custom metric's count.
pub fn suffix(name: &str, field: &str) -> String {
    format!("custom_{name}_{field}")
}

/// The metric name and field of a suffix `custom_<name>_<field>`, if it is one.
pub fn parse_suffix(suffix: &str) -> Option<(&str, &str)> {
    let rest = suffix.strip_prefix("custom_")?;
    let (name, field) = rest.rsplit_once('_')?;
    (!name.is_empty() && FIELDS.contains(&field)).then_some((name, field))
}

/// One version's custom metric counts, by name (a few names at most).
#[derive(Debug, Default)]
pub struct CustomCounts {
    entries: Vec<(String, [u64; 3])>,
}

impl CustomCounts {
    fn entry(&mut self, name: &str) -> &mut [u64; 3] {
        let index = match self.entries.iter().position(|(n, _)| n == name) {
            Some(index) => index,
            None => {
                self.entries.push((name.to_string(), [0; 3]));
                self.entries.len() - 1
            }
        };
        &mut self.entries[index].1
    }

    /// Adds one response's report; `metrics` names its indices.
    pub fn record(&mut self, metrics: &[String], report: &CustomReport) {
        for (i, name) in metrics.iter().enumerate() {
            let (value, invalid) = (
                report.values.get(i).copied().flatten(),
                report.invalid.get(i).copied().unwrap_or(false),
            );
            if value.is_none() && !invalid {
                continue;
            }
            let counts = self.entry(name);
            match value {
                Some(micros) => {
                    counts[0] = counts[0].saturating_add(micros);
                    counts[1] = counts[1].saturating_add(1);
                }
                None => counts[2] = counts[2].saturating_add(1),
            }
        }
    }

    pub fn is_zero(&self) -> bool {
        self.entries.iter().all(|(_, c)| c.iter().all(|v| *v == 0))
    }

    /// Hands every non-zero count (name, field, value) to `flush`, which returns
    /// how much went out; the rest stays.
    pub fn flush(&mut self, mut flush: impl FnMut(&str, &str, u64) -> u64) {
        for (name, counts) in &mut self.entries {
            for (value, field) in counts.iter_mut().zip(FIELDS) {
                if *value > 0 {
                    *value -= flush(name, field, *value).min(*value);
                }
            }
        }
        self.entries.retain(|(_, c)| c.iter().any(|v| *v > 0));
    }
}

/// One version's custom metric counts per replicate, by name.
#[derive(Debug, Default)]
pub struct CustomReplicates {
    entries: Vec<(String, Box<[[u64; REPLICATE_FIELDS]; REPLICATES]>)>,
}

impl CustomReplicates {
    /// Adds one compared response's valid reports in `replicate`.
    pub fn record(&mut self, metrics: &[String], report: &CustomReport, replicate: u8) {
        for (i, name) in metrics.iter().enumerate() {
            let Some(micros) = report.values.get(i).copied().flatten() else {
                continue;
            };
            let index = match self.entries.iter().position(|(n, _)| n == name) {
                Some(index) => index,
                None => {
                    self.entries
                        .push((name.clone(), Box::new([[0; REPLICATE_FIELDS]; REPLICATES])));
                    self.entries.len() - 1
                }
            };
            let counts = &mut self.entries[index].1[usize::from(replicate) % REPLICATES];
            counts[0] = counts[0].saturating_add(micros);
            counts[1] = counts[1].saturating_add(1);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.entries
            .iter()
            .all(|(_, r)| r.iter().all(|c| c.iter().all(|v| *v == 0)))
    }

    /// Hands every non-zero count (name, replicate, field, value) to `flush`.
    pub fn flush(&mut self, mut flush: impl FnMut(&str, u8, &str, u64) -> u64) {
        for (name, replicates) in &mut self.entries {
            for (r, counts) in replicates.iter_mut().enumerate() {
                for (value, field) in counts.iter_mut().zip(FIELDS) {
                    if *value > 0 {
                        *value -= flush(name, r as u8, field, *value).min(*value);
                    }
                }
            }
        }
        self.entries
            .retain(|(_, r)| r.iter().any(|c| c.iter().any(|v| *v > 0)));
    }
}

/// Custom metric counts not yet flushed to Envoy.
#[derive(Debug, Default)]
pub struct PendingCustom {
    pub versions: ByVersion<CustomCounts>,
    pub replicates: ByVersion<CustomReplicates>,
}

impl PendingCustom {
    /// Adds one finished stream's report: per version and traffic class, and per
    /// replicate when it is in the comparison.
    pub fn record(
        &mut self,
        version: &str,
        traffic: Traffic,
        replicate: Option<u8>,
        metrics: &[String],
        report: &CustomReport,
    ) {
        if report.is_empty() {
            return;
        }
        self.versions
            .get_mut(version, traffic)
            .record(metrics, report);
        if let Some(r) = replicate {
            self.replicates
                .get_mut(version, Traffic::Compared)
                .record(metrics, report, r);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(values: &[Option<u64>], invalid: &[bool]) -> CustomReport {
        let mut r = CustomReport::default();
        for (i, v) in values.iter().enumerate() {
            r.values[i] = *v;
        }
        for (i, v) in invalid.iter().enumerate() {
            r.invalid[i] = *v;
        }
        r
    }

    #[test]
    fn sums_reports_and_invalid_ones() {
        let metrics = ["judge".to_string(), "refund".to_string()];
        let mut pending = PendingCustom::default();
        pending.record(
            "v2",
            Traffic::Compared,
            Some(3),
            &metrics,
            &report(&[Some(500_000), None], &[false, true]),
        );
        pending.record(
            "v2",
            Traffic::Compared,
            Some(3),
            &metrics,
            &report(&[Some(250_000), Some(7_000_000)], &[]),
        );
        let mut seen = Vec::new();
        pending.versions.for_each_mut(|version, _, counts| {
            counts.flush(|name, field, value| {
                seen.push(format!("{version} {}={value}", suffix(name, field)));
                value
            })
        });
        seen.sort();
        assert_eq!(
            seen,
            [
                "v2 custom_judge_micros=750000",
                "v2 custom_judge_reports=2",
                "v2 custom_refund_invalid=1",
                "v2 custom_refund_micros=7000000",
                "v2 custom_refund_reports=1",
            ]
        );
        let mut replicated = Vec::new();
        pending.replicates.for_each_mut(|_, _, r| {
            r.flush(|name, replicate, field, value| {
                replicated.push((name.to_string(), replicate, field.to_string(), value));
                value
            })
        });
        assert!(replicated.contains(&("judge".into(), 3, "micros".into(), 750_000)));
        assert!(replicated.contains(&("refund".into(), 3, "reports".into(), 1)));
        // Nothing reported: nothing kept.
        pending.record(
            "v1",
            Traffic::Segment,
            None,
            &metrics,
            &CustomReport::default(),
        );
        assert!(pending.versions.all(CustomCounts::is_zero));
    }

    #[test]
    fn suffixes_round_trip() {
        assert_eq!(
            parse_suffix(&suffix("judge_score", "micros")),
            Some(("judge_score", "micros"))
        );
        assert_eq!(parse_suffix("custom_x_reports"), Some(("x", "reports")));
        assert_eq!(parse_suffix("custom__micros"), None);
        assert_eq!(parse_suffix("rq_total"), None);
        assert_eq!(parse_suffix("custom_x_other"), None);
    }
}
