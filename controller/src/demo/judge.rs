//! The demo agent as an LLM judge (a simulated one: there is no model here). It
//! scores a sample of its own answers, each around the `judge_score` its policy's
//! `metadata.demo` says, and posts the scores to the controller's
//! `POST /v1/signals` 20–60 s later, as a judge or a feedback service would:
//! in batches, with a `signals:write` token, retrying with backoff until the
//! controller has them (a signal's `id` makes a retry count once).

use crate::units::Dur;
use serde_json::{json, Value};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;
use std::time::Duration;

/// Where and how the judge posts.
#[derive(Debug, Clone)]
pub struct JudgeConfig {
    /// The controller's base URL.
    pub url: String,
    /// A token with the `signals:write` scope.
    pub token: String,
    pub target: String,
    /// The signal's name (the plan's gate reads `signal: <name>`).
    pub signal: String,
    /// Share of answers judged.
    pub sample: f64,
    /// How late a score arrives: uniformly between these.
    pub delay: (Dur, Dur),
}

/// Scores waiting for their time, and the poster.
pub struct Judge {
    config: JudgeConfig,
    /// (due, signal) of scores not yet accepted by the controller.
    queue: Mutex<Vec<(i64, Value)>>,
    next_id: AtomicU64,
    /// Distinguishes this judge's ids from another agent's.
    id_prefix: String,
    client: reqwest::Client,
}

/// Most scores kept waiting (the oldest are dropped past it).
const MAX_QUEUED: usize = 100_000;

impl Judge {
    pub fn new(config: JudgeConfig, id_prefix: String) -> Judge {
        Judge {
            config,
            queue: Mutex::default(),
            next_id: AtomicU64::new(0),
            id_prefix,
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// Scores one answer (`u`: three uniform numbers) given now to `session` by
    /// `version`, whose policy is judged `mean` on average; `None` when the
    /// answer is not in the sample.
    pub fn judge(&self, session: &str, version: &str, mean: f64, u: [f64; 3], now_ms: i64) {
        if u[0] >= self.config.sample || session.is_empty() {
            return;
        }
        let score = (mean + (u[1] - 0.5) * 0.3).clamp(0.0, 1.0);
        let (low, high) = (self.config.delay.0.millis(), self.config.delay.1.millis());
        let due = now_ms + low + ((high - low).max(0) as f64 * u[2]) as i64;
        let id = self.next_id.fetch_add(1, Relaxed);
        let signal = json!({
            "id": format!("judge-{}-{id}", self.id_prefix),
            "target": self.config.target,
            "session": session,
            "version": version,
            "name": self.config.signal,
            "value": (score * 1000.0).round() / 1000.0,
            "at": crate::format::utc_ms(now_ms),
        });
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        if queue.len() >= MAX_QUEUED {
            queue.remove(0);
        }
        queue.push((due, signal));
    }

    /// The scores due by `now_ms`, at most 1000, taken from the queue.
    fn due(&self, now_ms: i64) -> Vec<(i64, Value)> {
        let mut queue = self.queue.lock().unwrap_or_else(|p| p.into_inner());
        let mut due = Vec::new();
        let mut i = 0;
        while i < queue.len() && due.len() < 1000 {
            if queue[i].0 <= now_ms {
                due.push(queue.swap_remove(i));
            } else {
                i += 1;
            }
        }
        due
    }

    /// Posts due scores every second; a batch the controller did not take goes
    /// back into the queue and the judge backs off (1 s doubling to 30 s).
    pub async fn run(self: std::sync::Arc<Self>) {
        let url = format!("{}/v1/signals", self.config.url.trim_end_matches('/'));
        let mut backoff = Duration::from_secs(1);
        loop {
            tokio::time::sleep(backoff).await;
            let batch = self.due(crate::units::now_ms());
            if batch.is_empty() {
                continue;
            }
            let body = json!({ "signals": batch.iter().map(|(_, s)| s).collect::<Vec<_>>() });
            let result = self
                .client
                .post(&url)
                .bearer_auth(&self.config.token)
                .json(&body)
                .send()
                .await;
            match result {
                Ok(response) if response.status().is_success() => {
                    backoff = Duration::from_secs(1);
                    if let Ok(answer) = response.json::<Value>().await {
                        let rejected = answer["rejected"].as_array().map_or(0, Vec::len);
                        if rejected > 0 {
                            tracing::warn!(rejected, first = %answer["rejected"][0], "the controller refused some judge scores");
                        }
                    }
                }
                other => {
                    let why = match other {
                        Ok(response) => format!("answered {}", response.status()),
                        Err(e) => e.to_string(),
                    };
                    tracing::warn!(%why, scores = batch.len(), "cannot post judge scores; retrying");
                    self.queue
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .extend(batch);
                    backoff = (backoff * 2).min(Duration::from_secs(30));
                }
            }
        }
    }
}

/// `20s..60s`: the judge's lag range.
pub fn parse_delay(text: &str) -> Result<(Dur, Dur), String> {
    let (low, high) = text
        .split_once("..")
        .ok_or_else(|| format!("`{text}`: expected MIN..MAX, e.g. 20s..60s"))?;
    let (low, high) = (Dur::parse(low)?, Dur::parse(high)?);
    if low > high {
        return Err(format!("`{text}`: the minimum is above the maximum"));
    }
    Ok((low, high))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn judge(sample: f64) -> Judge {
        Judge::new(
            JudgeConfig {
                url: "http://127.0.0.1:1".into(),
                token: "t".into(),
                target: "support-agent".into(),
                signal: "judge_score".into(),
                sample,
                delay: parse_delay("20s..60s").unwrap(),
            },
            "7".into(),
        )
    }

    #[test]
    fn scores_a_sample_and_holds_each_until_its_time() {
        let j = judge(0.5);
        j.judge("user-1", "v1", 0.8, [0.9, 0.5, 0.0], 1_000);
        assert!(j.due(i64::MAX).is_empty(), "outside the sample");
        j.judge("user-1", "v1", 0.8, [0.1, 0.5, 0.0], 1_000);
        j.judge("user-2", "v2", 0.8, [0.1, 1.0, 1.0], 1_000);
        assert!(j.due(20_999).is_empty());
        let first = j.due(21_000);
        assert_eq!(first.len(), 1);
        assert_eq!(first[0].1["value"], 0.8);
        assert_eq!(first[0].1["at"], "1970-01-01T00:00:01.000Z");
        let second = j.due(61_000);
        assert_eq!(second[0].1["value"], 0.95);
        assert_eq!(second[0].1["id"], "judge-7-1");
        assert!(parse_delay("60s..20s").is_err() && parse_delay("20s").is_err());
    }
}
