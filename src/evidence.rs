//! Evidence through the sync channel: what the sync holder of an Envoy reads of
//! its policy-canary counters, and the report it sends the controller
//! (`POST /v1/evidence`, `sync.evidence_ms`).
//!
//! Envoy's counters are Envoy-wide (every worker adds to one stat), so the one
//! root that syncs reads them all. Per target of the routes document it holds,
//! per version of the target's table (stable, canary), per traffic class: the
//! counters and the custom metrics' counts; for compared traffic also every
//! session replicate's slots and custom counts. Envoy's latency histogram cannot
//! be read from a VM: the replicates' latency buckets, added up, stand in for it.
//!
//! A report is cumulative (the counters as they stand), so a lost or repeated one
//! costs nothing: the controller takes each Envoy's deltas. It names the Envoy and
//! its instance (made once per Envoy process in shared data, so a restart is told
//! apart from a lease that moved to another worker), and when that instance began.
//!
//! ```json
//! {"envoy": "gw-1", "instance": "1765000000000000000", "started_ms": 1765000000000,
//!  "slots": ["rq_total", …],
//!  "series": [{"target": "support-agent", "traffic": "", "version": "v2.4.0",
//!              "counters": {"rq_total": 120, …},
//!              "replicates": [[31 counts], … 32 rows],
//!              "named": {"custom_judge_micros": [32 counts], …}}]}
//! ```
//! Zero counters are left out; replicate rows are whole, in `slots` order.

use crate::cohort::Traffic;
use crate::custom;
use crate::replicate::{replicate_stat_name, Slot, REPLICATES};
use crate::route::read_routes;
use crate::stats::{stat_name, stat_target, Counter};

/// Shared-data key of this Envoy process's instance: the time (ns) its first
/// root started, written once.
pub const INSTANCE_KEY: &str = "policy_canary/instance";

/// One series the report carries, and the stat names its values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeriesPlan {
    pub target: String,
    pub traffic: Traffic,
    pub version: String,
    /// Counter suffixes (`rq_total`, `custom_judge_micros`) and their stat names.
    pub counters: Vec<(String, String)>,
    /// Compared traffic: replicate `r`'s slot `i` at `r * Slot::COUNT + i`.
    pub replicates: Vec<String>,
    /// Compared traffic: each custom replicate count's suffix and its
    /// `REPLICATES` stat names.
    pub named: Vec<(String, Vec<String>)>,
}

impl SeriesPlan {
    /// Every stat name, in the order `SeriesValues` holds their values.
    pub fn stats(&self) -> impl Iterator<Item = &str> {
        self.counters
            .iter()
            .map(|(_, stat)| stat.as_str())
            .chain(self.replicates.iter().map(String::as_str))
            .chain(
                self.named
                    .iter()
                    .flat_map(|(_, stats)| stats.iter().map(String::as_str)),
            )
    }
}

/// The series of a routes document (invalid tables are left out): each target's
/// versions, by traffic class.
pub fn plan(document: &[u8]) -> Vec<SeriesPlan> {
    let mut plans = Vec::new();
    let _ = read_routes(document, |target, table| {
        let Ok(table) = table else {
            return;
        };
        let mut versions = vec![table.stable.version.clone()];
        if let Some(canary) = &table.canary {
            if canary.version != table.stable.version {
                versions.push(canary.version.clone());
            }
        }
        for version in &versions {
            for traffic in Traffic::ALL {
                plans.push(series_plan(target, traffic, version, &table.metrics));
            }
        }
    });
    plans
}

fn series_plan(target: &str, traffic: Traffic, version: &str, metrics: &[String]) -> SeriesPlan {
    let stat_target = stat_target(target, traffic);
    let counters: Vec<(String, String)> = Counter::ALL
        .iter()
        .map(|c| c.suffix().to_string())
        .chain(metrics.iter().flat_map(|name| {
            custom::FIELDS
                .iter()
                .map(move |field| custom::suffix(name, field))
        }))
        .map(|suffix| {
            let stat = stat_name(&stat_target, version, &suffix);
            (suffix, stat)
        })
        .collect();
    let compared = traffic == Traffic::Compared;
    let replicates = if compared {
        (0..REPLICATES as u8)
            .flat_map(|r| {
                (0..Slot::COUNT).map(move |i| replicate_stat_name(target, version, r, Slot::at(i)))
            })
            .collect()
    } else {
        Vec::new()
    };
    let named = if compared {
        metrics
            .iter()
            .flat_map(|name| {
                custom::FIELDS[..custom::REPLICATE_FIELDS]
                    .iter()
                    .map(move |field| custom::suffix(name, field))
            })
            .map(|suffix| {
                let stats = (0..REPLICATES)
                    .map(|r| stat_name(target, version, &format!("replicate.{r}.{suffix}")))
                    .collect();
                (suffix, stats)
            })
            .collect()
    } else {
        Vec::new()
    };
    SeriesPlan {
        target: target.to_string(),
        traffic,
        version: version.to_string(),
        counters,
        replicates,
        named,
    }
}

/// Who reports: the Envoy's name, its process instance and when that began.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reporter<'a> {
    pub envoy: &'a str,
    pub instance: u64,
    pub started_ms: u64,
}

/// The report of `plans` whose values, in `SeriesPlan::stats` order, are `values`.
pub fn encode(reporter: &Reporter<'_>, plans: &[SeriesPlan], values: &[Vec<u64>]) -> String {
    let mut out = String::with_capacity(1024 + plans.len() * 2048);
    out.push_str("{\"envoy\":");
    push_string(&mut out, reporter.envoy);
    out.push_str(&format!(
        ",\"instance\":\"{}\",\"started_ms\":{},\"slots\":[",
        reporter.instance, reporter.started_ms
    ));
    for i in 0..Slot::COUNT {
        if i > 0 {
            out.push(',');
        }
        push_string(&mut out, Slot::at(i).suffix());
    }
    out.push_str("],\"series\":[");
    for (n, (plan, values)) in plans.iter().zip(values).enumerate() {
        if n > 0 {
            out.push(',');
        }
        out.push_str("{\"target\":");
        push_string(&mut out, &plan.target);
        out.push_str(",\"traffic\":");
        push_string(&mut out, plan.traffic.name());
        out.push_str(",\"version\":");
        push_string(&mut out, &plan.version);
        out.push_str(",\"counters\":{");
        let mut first = true;
        for ((suffix, _), value) in plan.counters.iter().zip(values) {
            if *value == 0 {
                continue;
            }
            if !first {
                out.push(',');
            }
            first = false;
            push_string(&mut out, suffix);
            out.push_str(&format!(":{value}"));
        }
        out.push('}');
        let rest = values.get(plan.counters.len()..).unwrap_or_default();
        let (replicates, named) = rest.split_at(plan.replicates.len().min(rest.len()));
        if !plan.replicates.is_empty() {
            out.push_str(",\"replicates\":[");
            push_rows(&mut out, replicates, Slot::COUNT);
            out.push(']');
        }
        if !plan.named.is_empty() {
            out.push_str(",\"named\":{");
            for (i, ((suffix, _), row)) in
                plan.named.iter().zip(named.chunks(REPLICATES)).enumerate()
            {
                if i > 0 {
                    out.push(',');
                }
                push_string(&mut out, suffix);
                out.push(':');
                push_rows(&mut out, row, REPLICATES);
            }
            out.push('}');
        }
        out.push('}');
    }
    out.push_str("]}");
    out
}

/// `values` as JSON arrays of `width`.
fn push_rows(out: &mut String, values: &[u64], width: usize) {
    for (r, row) in values.chunks(width).enumerate() {
        if r > 0 {
            out.push(',');
        }
        out.push('[');
        for (i, v) in row.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&v.to_string());
        }
        out.push(']');
    }
}

/// A JSON string (names are visible ASCII; quotes and backslashes escaped).
fn push_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOCUMENT: &[u8] = br#"{"revision": 3, "routes": {"support-agent": {"revision": 3, "salt": "s", "canary_weight_bp": 500, "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"}, "segments": [], "metrics": ["judge"]}, "bad": {"revision": 9}}}"#;

    #[test]
    fn plans_every_version_and_class_of_each_valid_table() {
        let plans = plan(DOCUMENT);
        assert_eq!(plans.len(), 2 * Traffic::ALL.len());
        let compared = &plans[0];
        assert_eq!(
            (compared.version.as_str(), compared.traffic),
            ("v1", Traffic::Compared)
        );
        assert_eq!(compared.counters.len(), Counter::ALL.len() + 3);
        assert_eq!(
            compared.counters[0].1,
            "policy_canary.target.support-agent.version.v1.rq_total"
        );
        assert!(compared
            .counters
            .iter()
            .any(|(s, _)| s == "custom_judge_invalid"));
        assert_eq!(compared.replicates.len(), REPLICATES * Slot::COUNT);
        assert_eq!(
            compared.replicates[Slot::COUNT],
            "policy_canary.target.support-agent.version.v1.replicate.1.rq_total"
        );
        assert_eq!(compared.named.len(), 2);
        assert_eq!(
            compared.named[1].1[31],
            "policy_canary.target.support-agent.version.v1.replicate.31.custom_judge_reports"
        );
        let forced = &plans[1];
        assert_eq!(
            forced.counters[0].1,
            "policy_canary.target.support-agent.forced.version.v1.rq_total"
        );
        assert!(forced.replicates.is_empty() && forced.named.is_empty());
        assert!(plan(b"not json").is_empty());
    }

    #[test]
    fn encodes_counts_leaving_out_zero_counters() {
        let plans = plan(DOCUMENT);
        let values: Vec<Vec<u64>> = plans
            .iter()
            .map(|p| (0..p.stats().count() as u64).map(|i| i % 3).collect())
            .collect();
        let text = encode(
            &Reporter {
                envoy: "gw\"1",
                instance: 42,
                started_ms: 7,
            },
            &plans,
            &values,
        );
        assert!(
            text.starts_with(
                r#"{"envoy":"gw\"1","instance":"42","started_ms":7,"slots":["rq_total","#
            ),
            "{text}"
        );
        // rq_total is the first stat (0): left out; rq_forced (1) is there.
        assert!(
            text.contains(r#""counters":{"rq_forced":1,"rq_2xx":2,"rq_5xx":1"#),
            "{text}"
        );
        assert!(text.contains(r#""traffic":"forced","version":"v1""#));
        assert!(text.contains(r#""named":{"custom_judge_micros":["#));
        assert_eq!(text.matches("\"replicates\":").count(), 2);
    }
}
