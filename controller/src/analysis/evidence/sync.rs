//! Evidence source: the Envoys' own counts through the sync channel
//! (`canaryctl serve --evidence sync`). The sync holder of every Envoy reads its
//! policy-canary counters and posts them (`POST /v1/evidence`, the format in
//! `policy_canary::evidence`), cumulative, every `sync.evidence_ms`; each report
//! adds its deltas since that Envoy's last one to the windows of the active
//! rollouts of its targets. Neither Prometheus nor the replicate series in it
//! are needed.
//!
//! Exact like the Prometheus source: a report names its Envoy process, so a
//! restart counts the new counts whole; an Envoy that still follows the
//! controller (its long-poll is open) but has not reported for three intervals
//! makes every window unavailable (the stage is held), not smaller. An Envoy
//! that neither polls nor reports is gone: what it reported stays counted.

use super::{Instance, Sample, Scrape, SeriesKey};
use crate::analysis::judge::EvidenceJudge;
use crate::metrics::{EvidenceSource, Metrics};
use crate::store::RolloutRow;
use policy_canary::replicate::{Slot, LATENCY_BOUNDS_MS, LATENCY_BUCKETS, REPLICATES};
use policy_canary::stats::Traffic;
use policy_canary::sync::is_envoy_id;
use serde::Deserialize;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

/// Most series one report may carry (targets × versions × traffic classes).
const MAX_SERIES: usize = 4_096;

/// One Envoy's report, as posted.
#[derive(Debug, Clone, Deserialize)]
pub struct Report {
    pub envoy: String,
    /// The Envoy process (decimal), from its shared data.
    pub instance: String,
    pub started_ms: i64,
    /// The replicate slots' names, in the order of each replicate row.
    pub slots: Vec<String>,
    pub series: Vec<ReportSeries>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ReportSeries {
    pub target: String,
    /// `Traffic::name` (empty: compared).
    #[serde(default)]
    pub traffic: String,
    pub version: String,
    #[serde(default)]
    pub counters: BTreeMap<String, u64>,
    #[serde(default)]
    pub replicates: Vec<Vec<u64>>,
    #[serde(default)]
    pub named: BTreeMap<String, Vec<u64>>,
}

impl Report {
    /// A report from its JSON, checked: a clear error for what cannot be counted.
    pub fn parse(bytes: &[u8]) -> Result<Report, String> {
        let report: Report = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        if !is_envoy_id(&report.envoy) {
            return Err("envoy: 1-128 visible ASCII characters".into());
        }
        if report.instance.is_empty() || !report.instance.bytes().all(|b| b.is_ascii_digit()) {
            return Err("instance: a whole number".into());
        }
        if report.series.len() > MAX_SERIES {
            return Err(format!("series: at most {MAX_SERIES}"));
        }
        for (i, s) in report.series.iter().enumerate() {
            if Traffic::from_name(&s.traffic).is_none() {
                return Err(format!(
                    "series[{i}].traffic: unknown class `{}`",
                    s.traffic
                ));
            }
            if s.replicates.len() > REPLICATES
                || s.replicates
                    .iter()
                    .any(|row| row.len() != report.slots.len())
            {
                return Err(format!(
                    "series[{i}].replicates: at most {REPLICATES} rows of one count per slot"
                ));
            }
            if s.named.values().any(|row| row.len() > REPLICATES) {
                return Err(format!(
                    "series[{i}].named: at most {REPLICATES} counts each"
                ));
            }
        }
        Ok(report)
    }

    /// Whether the report has series of `target`.
    pub fn has(&self, target: &str) -> bool {
        self.series.iter().any(|s| s.target == target)
    }

    /// `target`'s series as a scrape of this Envoy.
    pub fn scrape(&self, target: &str) -> Scrape {
        let slots: Vec<Option<usize>> = self
            .slots
            .iter()
            .map(|name| Slot::from_suffix(name).map(Slot::index))
            .collect();
        let mut scrape = Scrape {
            instance: Some(Instance {
                id: self.instance.clone(),
                started_ms: self.started_ms,
            }),
            ..Scrape::default()
        };
        for s in self.series.iter().filter(|s| s.target == target) {
            let Some(traffic) = Traffic::from_name(&s.traffic) else {
                continue;
            };
            let sample = scrape
                .series
                .entry(SeriesKey::new(traffic, &s.version))
                .or_default();
            *sample = series_sample(s, &slots);
        }
        scrape
    }
}

fn series_sample(s: &ReportSeries, slots: &[Option<usize>]) -> Sample {
    let mut sample = Sample {
        counters: s
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), *v as f64))
            .collect(),
        ..Sample::default()
    };
    for (r, row) in s.replicates.iter().enumerate() {
        for (value, slot) in row.iter().zip(slots) {
            if let Some(index) = slot {
                sample.set_replicate(r, *index, *value as f64);
            }
        }
    }
    for (name, row) in &s.named {
        for (r, value) in row.iter().enumerate() {
            sample.set_named_replicate(r, name, *value as f64);
        }
    }
    // Envoy's histogram cannot be read from a VM: the replicates' latency
    // buckets (the same bounds), added up, are the version's.
    if !sample.replicates.is_empty() {
        let mut cumulative = 0.0;
        for i in 0..LATENCY_BUCKETS {
            cumulative += (0..REPLICATES)
                .map(|r| sample.replicate(r, Slot::Latency(i)))
                .sum::<f64>();
            let le = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY);
            sample.latency.push((le, cumulative));
        }
    }
    sample
}

/// The reports' destination: the active rollouts' windows, and when each Envoy
/// last reported.
pub struct SyncEvidence {
    judge: EvidenceJudge,
    active: RwLock<Arc<Vec<RolloutRow>>>,
    last_report_ms: Mutex<HashMap<String, i64>>,
    /// When this controller began taking reports: no Envoy is missing before
    /// three intervals from then.
    since_ms: i64,
    metrics: Arc<Metrics>,
}

/// What a report did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Received {
    /// Active rollouts whose windows it added to.
    pub windows: usize,
}

impl SyncEvidence {
    pub fn new(judge: EvidenceJudge, metrics: Arc<Metrics>, now_ms: i64) -> Arc<SyncEvidence> {
        Arc::new(SyncEvidence {
            judge,
            active: RwLock::default(),
            last_report_ms: Mutex::default(),
            since_ms: now_ms,
            metrics,
        })
    }

    /// Adds a report to every active rollout's window of its targets.
    pub fn receive(&self, report: &Report, now_ms: i64) -> Received {
        self.metrics.evidence_reports.fetch_add(1, Relaxed);
        self.last_report_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(report.envoy.clone(), now_ms);
        let rows = Arc::clone(&self.active.read().unwrap_or_else(|p| p.into_inner()));
        let mut windows = 0;
        for row in rows.iter().filter(|row| report.has(&row.target)) {
            let scrape = report.scrape(&row.target);
            self.judge.with(row, |t| {
                t.window.set_weight(
                    now_ms,
                    row.plan.effective_weight(row.state.stage, now_ms).bp(),
                );
                t.window.add(&report.envoy, &scrape);
            });
            windows += 1;
        }
        Received { windows }
    }

    /// Counts a report that could not be read.
    pub fn rejected(&self) {
        self.metrics.evidence_reports_rejected.fetch_add(1, Relaxed);
        self.metrics.evidence_read(EvidenceSource::Sync, false);
    }

    /// Every `interval` (the Envoys' `sync.evidence_ms`): the active rollouts
    /// (`active_rollouts`, a blocking store read), a cost batch closed in each
    /// window, and every window unavailable while an Envoy that follows the
    /// controller (`following`) has not reported for three intervals.
    pub async fn run<E: Send + 'static>(
        self: Arc<Self>,
        active_rollouts: impl Fn() -> Result<Vec<RolloutRow>, E> + Clone + Send + Sync + 'static,
        following: impl Fn() -> Vec<String> + Send + 'static,
        interval: Duration,
    ) {
        let stale_ms = i64::try_from(interval.as_millis() * 3).unwrap_or(i64::MAX);
        loop {
            let rows = self.judge.active(active_rollouts.clone()).await;
            *self.active.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(rows.clone());
            let now = crate::units::now_ms();
            let missing = self.missing(&following(), now, stale_ms);
            self.metrics
                .evidence_envoys_missing
                .store(missing.len() as u64, Relaxed);
            self.metrics
                .evidence_read(EvidenceSource::Sync, missing.is_empty());
            for row in &rows {
                self.judge.with(row, |t| {
                    t.window
                        .set_weight(now, row.plan.effective_weight(row.state.stage, now).bp());
                    t.window.unavailable = if !missing.is_empty() {
                        Some(missing_reason(&missing, now))
                    } else if t.window.envoys().next().is_none() {
                        Some("no Envoy has reported evidence yet (sync.evidence_ms)".into())
                    } else {
                        None
                    };
                    t.window
                        .end_pass(&row.plan.stable.version, &row.plan.canary.version);
                });
            }
            tokio::time::sleep(interval).await;
        }
    }

    /// The Envoys in `following` without a report for `stale_ms`, and when each
    /// last reported.
    fn missing(&self, following: &[String], now: i64, stale_ms: i64) -> Vec<(String, Option<i64>)> {
        if now - self.since_ms <= stale_ms {
            return Vec::new();
        }
        let last = self
            .last_report_ms
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let mut missing: Vec<(String, Option<i64>)> = following
            .iter()
            .filter_map(|envoy| {
                let at = last.get(envoy).copied();
                (now - at.unwrap_or(self.since_ms) > stale_ms).then(|| (envoy.clone(), at))
            })
            .collect();
        missing.sort();
        missing
    }
}

fn missing_reason(missing: &[(String, Option<i64>)], now: i64) -> String {
    let named: Vec<String> = missing
        .iter()
        .take(3)
        .map(|(envoy, at)| match at {
            Some(at) => format!("{envoy}: last report {} s ago", (now - at) / 1000),
            None => format!("{envoy}: no report"),
        })
        .collect();
    let more = missing.len().saturating_sub(named.len());
    format!(
        "evidence missing from {} Envoy(s) that follow the controller ({}{}): each needs sync.evidence_ms and a token with evidence:write",
        missing.len(),
        named.join("; "),
        if more > 0 { format!("; {more} more") } else { String::new() }
    )
}

#[cfg(test)]
#[path = "sync_tests.rs"]
mod tests;
