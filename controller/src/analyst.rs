//! The analysis wired to Envoy: a collector task scrapes every Envoy admin into
//! each active rollout's stage window; at each analysis interval the controller asks
//! `EnvoyAnalyst::check` for a verdict.

use crate::analysis::{analyse, decide};
use crate::controller::{verdict_for, Analyst, Controller, Verdict};
use crate::evidence::{parse_prometheus, Window};
use crate::store::RolloutRow;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

#[derive(Debug)]
struct Tracked {
    stage: usize,
    stage_started_ms: i64,
    window: Window,
    consecutive_failures: u32,
}

impl Tracked {
    fn new(row: &RolloutRow) -> Tracked {
        Tracked {
            stage: row.state.stage,
            stage_started_ms: row.state.stage_started_ms,
            window: Window::new(row.state.stage_started_ms),
            consecutive_failures: 0,
        }
    }

    /// A new stage (or a resumed one) starts a new window over the same baselines.
    fn follow(&mut self, row: &RolloutRow) {
        if self.stage != row.state.stage || self.stage_started_ms != row.state.stage_started_ms {
            self.stage = row.state.stage;
            self.stage_started_ms = row.state.stage_started_ms;
            self.window.restart(row.state.stage_started_ms);
            self.consecutive_failures = 0;
        }
    }
}

/// Evidence per rollout, shared by the collector and the checks.
#[derive(Clone, Default)]
pub struct EnvoyAnalyst {
    tracked: Arc<Mutex<HashMap<i64, Tracked>>>,
}

impl EnvoyAnalyst {
    fn with<T>(&self, row: &RolloutRow, f: impl FnOnce(&mut Tracked) -> T) -> T {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tracked.entry(row.id).or_insert_with(|| Tracked::new(row));
        entry.follow(row);
        f(entry)
    }

    fn forget_all_but(&self, active: &[i64]) {
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        tracked.retain(|id, _| active.contains(id));
    }
}

impl Analyst for EnvoyAnalyst {
    fn check(&self, row: &RolloutRow, now_ms: i64) -> Verdict {
        self.with(row, |t| {
            let analysis = analyse(&row.plan, row.state.stage, &t.window);
            let elapsed = now_ms - row.state.stage_started_ms;
            let (decision, failures) = decide(
                &row.plan,
                row.state.stage,
                elapsed,
                &analysis,
                t.consecutive_failures,
            );
            t.consecutive_failures = failures;
            let details = serde_json::to_value(&analysis).unwrap_or_default();
            verdict_for(&row.plan, decision, details)
        })
    }

    fn report(&self, row: &RolloutRow, _now_ms: i64) -> Option<serde_json::Value> {
        self.with(row, |t| {
            let analysis = analyse(&row.plan, row.state.stage, &t.window);
            let mut value = serde_json::to_value(&analysis).ok()?;
            value["consecutive_failures"] = t.consecutive_failures.into();
            Some(value)
        })
    }
}

/// Scrapes every Envoy admin for every active rollout, every `interval`.
pub async fn collect(
    controller: Arc<Controller>,
    analyst: EnvoyAnalyst,
    admins: Vec<String>,
    interval: Duration,
) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    let mut failing: HashMap<String, bool> = HashMap::new();
    loop {
        let c = Arc::clone(&controller);
        let rows = tokio::task::spawn_blocking(move || c.rollout_rows(true))
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        analyst.forget_all_but(&rows.iter().map(|r| r.id).collect::<Vec<_>>());
        let mut texts = Vec::new();
        if !rows.is_empty() {
            for admin in &admins {
                let url = format!(
                    "{}/stats/prometheus?usedonly&filter=policy_canary",
                    admin.trim_end_matches('/')
                );
                let text = match client.get(&url).send().await {
                    Ok(r) if r.status().is_success() => r.text().await.ok(),
                    _ => None,
                };
                let was_failing = failing
                    .insert(admin.clone(), text.is_none())
                    .unwrap_or(false);
                if text.is_none() && !was_failing {
                    tracing::warn!(
                        admin,
                        "cannot read Envoy stats: its share of the evidence is missing"
                    );
                } else if text.is_some() && was_failing {
                    tracing::info!(admin, "reading Envoy stats again");
                }
                texts.push((admin.clone(), text));
            }
        }
        for row in &rows {
            analyst.with(row, |t| {
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
