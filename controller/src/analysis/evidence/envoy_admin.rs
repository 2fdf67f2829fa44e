//! Evidence source: every Envoy's admin `/stats/prometheus`, read on an interval
//! into each active rollout's stage window. An Envoy that cannot be read adds
//! nothing (less evidence, never a pass); malformed lines are counted and skipped.

use super::{traffic_of, ReplicateValue, Scrape, SeriesKey, REPLICATE_SERIES};
use crate::analysis::judge::EvidenceJudge;
use crate::envoy::admin::{AdminClient, HealthChange, SourceHealth};
use crate::metrics::{EvidenceSource, Metrics};
use crate::store::RolloutRow;
use policy_canary::custom;
use policy_canary::stats::NATIVE_CUSTOM_FAMILY;
use std::sync::Arc;
use std::time::Duration;

/// Scrapes every Envoy admin for every active rollout (as `active_rollouts` lists
/// them, from a blocking store read), every `interval`.
pub async fn collect<E: Send + 'static>(
    active_rollouts: impl Fn() -> Result<Vec<RolloutRow>, E> + Clone + Send + Sync + 'static,
    judge: EvidenceJudge,
    admins: Vec<String>,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let client = AdminClient::default();
    let mut health = SourceHealth::default();
    loop {
        let rows = judge.active(active_rollouts.clone()).await;
        let mut texts = Vec::new();
        if !rows.is_empty() {
            for admin in &admins {
                let text = client.policy_stats(admin).await.ok();
                metrics.evidence_read(EvidenceSource::EnvoyAdmin, text.is_some());
                match health.observe(admin, text.is_some()) {
                    Some(HealthChange::Failing) => tracing::warn!(
                        admin,
                        "cannot read Envoy stats: its share of the evidence is missing"
                    ),
                    Some(HealthChange::Recovered) => {
                        tracing::info!(admin, "reading Envoy stats again")
                    }
                    None => {}
                }
                texts.push((admin.clone(), text));
            }
        }
        // Some Envoys unreadable: less evidence. None readable: no evidence at all.
        let none_answered = !texts.is_empty() && texts.iter().all(|(_, text)| text.is_none());
        for row in &rows {
            judge.with(row, |t| {
                t.window.unavailable = none_answered
                    .then(|| format!("no Envoy admin answered ({} tried)", texts.len()));
                let now = crate::units::now_ms();
                t.window
                    .set_weight(now, row.plan.effective_weight(row.state.stage, now).bp());
                for (admin, text) in &texts {
                    match text {
                        Some(text) => t.window.add(admin, &parse_prometheus(text, &row.target)),
                        None => t.window.failed(),
                    }
                }
                t.window
                    .end_pass(&row.plan.stable.version, &row.plan.canary.version);
            });
        }
        tokio::time::sleep(interval).await;
    }
}

/// Reads the `policy_canary_*` series of `target` from Prometheus text.
pub fn parse_prometheus(text: &str, target: &str) -> Scrape {
    let mut scrape = Scrape::default();
    for line in text.lines() {
        let line = line.trim();
        if let Some(rest) = line.strip_prefix("envoy_server_uptime") {
            // `envoy_server_uptime{} 123` or `envoy_server_uptime 123`.
            scrape.uptime_s = rest
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .filter(|v: &f64| v.is_finite());
            continue;
        }
        if line.is_empty() || line.starts_with('#') || !line.starts_with("policy_canary_") {
            continue;
        }
        let Some((name, labels, value)) = split_series(line) else {
            scrape.malformed_lines += 1;
            continue;
        };
        let Some(labels) = parse_labels(labels) else {
            scrape.malformed_lines += 1;
            continue;
        };
        let label = |key: &str| {
            labels
                .iter()
                .find(|(k, _)| k == key)
                .map(|(_, v)| v.as_str())
        };
        let Some(traffic) = label("target").and_then(|t| traffic_of(t, target)) else {
            continue;
        };
        let Some(version) = label("policy_version") else {
            continue;
        };
        let suffix = &name["policy_canary_".len()..];
        let sample = scrape
            .series
            .entry(SeriesKey::new(traffic, version))
            .or_default();
        if suffix == REPLICATE_SERIES {
            match (label("replicate"), label("counter")) {
                (Some(replicate), Some(counter)) => match ReplicateValue::of(replicate, counter) {
                    Some(ReplicateValue::Slot(r, index)) => sample.set_replicate(r, index, value),
                    Some(ReplicateValue::Named(r, name)) => {
                        sample.set_named_replicate(r, &name, value)
                    }
                    None => scrape.malformed_lines += 1,
                },
                _ => scrape.malformed_lines += 1,
            }
            continue;
        }
        if suffix == NATIVE_CUSTOM_FAMILY {
            // The native module's custom metrics: the count's name is the label.
            match label("counter").filter(|c| custom::parse_suffix(c).is_some()) {
                Some(counter) => {
                    sample.counters.insert(counter.to_string(), value);
                }
                None => scrape.malformed_lines += 1,
            }
            continue;
        }
        if let Some(histogram) = suffix.strip_suffix("_bucket") {
            if histogram == "rq_latency_ms" {
                let le = match label("le") {
                    Some("+Inf") => f64::INFINITY,
                    Some(le) => match le.parse() {
                        Ok(le) => le,
                        Err(_) => {
                            scrape.malformed_lines += 1;
                            continue;
                        }
                    },
                    None => continue,
                };
                sample.latency.push((le, value));
            }
        } else if !suffix.ends_with("_sum") && !suffix.ends_with("_count") {
            sample.counters.insert(suffix.to_string(), value);
        }
    }
    for sample in scrape.series.values_mut() {
        sample.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
    }
    scrape
}

fn split_series(line: &str) -> Option<(&str, &str, f64)> {
    let open = line.find('{')?;
    let close = line.rfind('}')?;
    if close < open {
        return None;
    }
    let value: f64 = line[close + 1..].split_whitespace().next()?.parse().ok()?;
    if !value.is_finite() || value < 0.0 {
        return None;
    }
    Some((&line[..open], &line[open + 1..close], value))
}

fn parse_labels(text: &str) -> Option<Vec<(String, String)>> {
    let mut labels = Vec::new();
    let mut rest = text.trim();
    while !rest.is_empty() {
        let eq = rest.find('=')?;
        let key = rest[..eq].trim().to_string();
        rest = rest[eq + 1..].strip_prefix('"')?;
        let mut value = String::new();
        let mut chars = rest.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                c => value.push(c),
            }
        };
        labels.push((key, value));
        rest = rest[end + 1..]
            .trim_start()
            .trim_start_matches(',')
            .trim_start();
    }
    Some(labels)
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# TYPE policy_canary_rq_total counter
policy_canary_rq_total{target="support-agent",policy_version="v2.3.1"} 900
policy_canary_rq_total{target="support-agent",policy_version="v2.4.0"} 100
policy_canary_tasks_completed{target="support-agent",policy_version="v2.4.0"} 70
policy_canary_rq_total{target="other",policy_version="v9"} 5
policy_canary_rq_total{target="support-agent.segment",policy_version="v2.4.0"} 30
policy_canary_rq_total{target="support-agent.forced",policy_version="v2.4.0"} 3
policy_canary_rq_total{target="support-agent.elsewhere",policy_version="v2.4.0"} 3
policy_canary_rq_total{target="support-agent-2",policy_version="v2.4.0"} 3
policy_canary_custom_judge_micros{target="support-agent",policy_version="v2.4.0"} 1500000
policy_canary_custom{target="support-agent",policy_version="v2.4.0",counter="custom_judge_reports"} 3
policy_canary_custom{target="support-agent",policy_version="v2.4.0",counter="rq_total"} 3
policy_canary_custom{target="support-agent",policy_version="v2.4.0"} 3
policy_canary_replicate{target="support-agent",policy_version="v2.4.0",replicate="4",counter="custom_judge_reports"} 2
policy_canary_replicate{target="support-agent",policy_version="v2.4.0",replicate="4",counter="tasks_escalated"} 1
policy_canary_rq_latency_ms_bucket{target="support-agent",policy_version="v2.4.0",le="5"} 40
policy_canary_rq_latency_ms_bucket{target="support-agent",policy_version="v2.4.0",le="+Inf"} 100
policy_canary_rq_latency_ms_sum{target="support-agent",policy_version="v2.4.0"} 1234
policy_canary_rq_total{target="support-agent",policy_version="v2.4.0" 7
policy_canary_rq_total{target="support-agent",policy_version="v2.4.0"} notanumber
envoy_cluster_upstream_rq{envoy_cluster_name="x"} 3
"#;

    #[test]
    fn parses_the_target_and_counts_garbage() {
        let scrape = parse_prometheus(TEXT, "support-agent");
        assert_eq!(scrape.series.len(), 4);
        let apart = |traffic| scrape.series[&SeriesKey::new(traffic, "v2.4.0")].get("rq_total");
        use policy_canary::stats::Traffic;
        assert_eq!(
            (apart(Traffic::Segment), apart(Traffic::Forced)),
            (30.0, 3.0)
        );
        let canary = scrape.version("v2.4.0").unwrap();
        assert_eq!(canary.get("custom_judge_micros"), 1_500_000.0);
        // The native module's family, its counter label naming the count.
        assert_eq!(canary.get("custom_judge_reports"), 3.0);
        assert_eq!(canary.named_replicate(4, "custom_judge_reports"), 2.0);
        use policy_canary::replicate::{ReplicateCounter, Slot};
        assert_eq!(
            canary.replicate(4, Slot::Counter(ReplicateCounter::TasksEscalated)),
            1.0
        );
        assert_eq!(canary.get("rq_total"), 100.0);
        assert_eq!(canary.get("tasks_completed"), 70.0);
        assert_eq!(canary.latency, vec![(5.0, 40.0), (f64::INFINITY, 100.0)]);
        assert!(!canary.counters.contains_key("rq_latency_ms_sum"));
        assert_eq!(scrape.malformed_lines, 4);
        assert_eq!(parse_labels(r#"a="x\"y",b="2""#).unwrap()[0].1, "x\"y");
    }
}
