//! Webhook notifications: a JSON POST per state change to every configured URL,
//! retried with backoff on a background task so the state machine never waits.

use crate::rollout::Phase;
use serde::Serialize;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;

/// The JSON body of a notification.
#[derive(Debug, Clone, Serialize)]
pub struct Event {
    /// `rollout.started`, `rollout.stage_changed`, `rollout.paused`, `rollout.resumed`,
    /// `rollout.promoted`, `rollout.rolled_back`, `rollout.aborted`, `rollout.weight_capped`.
    pub event: String,
    pub rollout_id: i64,
    pub target: String,
    pub from: String,
    pub to: String,
    pub phase: Phase,
    pub stage: usize,
    pub weight: String,
    pub stable_version: String,
    pub canary_version: String,
    /// The token that made the change (`canaryctl`: the control loop).
    pub principal: String,
    pub actor: String,
    pub reason: String,
    pub revision: u64,
    pub at_ms: i64,
}

#[derive(Debug, Default, Serialize)]
pub struct NotifyCounts {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
    pub retries: AtomicU64,
}

/// Sends events to webhooks in the background; cheap to clone.
#[derive(Clone)]
pub struct Notifier {
    tx: Option<mpsc::UnboundedSender<Event>>,
    pub counts: Arc<NotifyCounts>,
}

impl Notifier {
    /// No webhooks: events are dropped.
    pub fn none() -> Notifier {
        Notifier {
            tx: None,
            counts: Arc::default(),
        }
    }

    /// Starts the delivery task (needs a tokio runtime). `attempts` per URL, with
    /// exponential backoff from `first_backoff`.
    pub fn spawn(urls: Vec<String>, attempts: u32, first_backoff: Duration) -> Notifier {
        if urls.is_empty() {
            return Notifier::none();
        }
        let (tx, mut rx) = mpsc::unbounded_channel::<Event>();
        let counts: Arc<NotifyCounts> = Arc::default();
        let task_counts = Arc::clone(&counts);
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        tokio::spawn(async move {
            while let Some(event) = rx.recv().await {
                for (index, url) in urls.iter().enumerate() {
                    let webhook = Webhook { index, url };
                    deliver(
                        &client,
                        webhook,
                        &event,
                        attempts,
                        first_backoff,
                        &task_counts,
                    )
                    .await;
                }
            }
        });
        Notifier {
            tx: Some(tx),
            counts,
        }
    }

    pub fn send(&self, event: Event) {
        if let Some(tx) = &self.tx {
            let _ = tx.send(event);
        }
    }
}

/// A webhook: its URL is a secret (chat webhooks carry their token in it), so logs
/// name it by its position among the `--webhook` flags instead.
#[derive(Clone, Copy)]
struct Webhook<'a> {
    index: usize,
    url: &'a str,
}

async fn deliver(
    client: &reqwest::Client,
    webhook: Webhook<'_>,
    event: &Event,
    attempts: u32,
    first_backoff: Duration,
    counts: &NotifyCounts,
) {
    let mut backoff = first_backoff;
    for attempt in 1..=attempts.max(1) {
        let result = client.post(webhook.url).json(event).send().await;
        let error = match result {
            Ok(response) if response.status().is_success() => {
                counts.delivered.fetch_add(1, Ordering::Relaxed);
                return;
            }
            Ok(response) => format!("HTTP {}", response.status()),
            // reqwest's errors name the URL: never in a log line.
            Err(e) => e.without_url().to_string(),
        };
        let number = webhook.index + 1;
        if attempt == attempts.max(1) {
            counts.failed.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(webhook = number, event = %event.event, rollout = event.rollout_id, attempts, %error, "webhook delivery failed");
            return;
        }
        counts.retries.fetch_add(1, Ordering::Relaxed);
        tracing::debug!(webhook = number, attempt, %error, "webhook failed, retrying");
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(Duration::from_secs(60));
    }
}
