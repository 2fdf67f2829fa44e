//! The sync service: long-polls the controller and stores the routes document in
//! shared data for every worker's filter. Fail static: a bad or missing answer
//! keeps the last good document.

use super::host::{Host, LogLevel, MapKind, MetricKind};
use crate::sync::{AfterPoll, HealthChange, PollFailure, SyncConfig, SyncState, ROUTES_KEY};
use std::time::Duration;

pub struct SyncService {
    config: SyncConfig,
    state: SyncState,
    in_flight: Option<u32>,
    metrics: SyncMetrics,
}

struct SyncMetrics {
    polls_ok: Option<u32>,
    polls_failed: Option<u32>,
    documents_rejected: Option<u32>,
    revision: Option<u32>,
}

impl SyncService {
    pub fn new(config: SyncConfig, host: &impl Host) -> SyncService {
        let metric = |kind, name: &str| {
            host.define_metric(kind, &format!("policy_canary.sync.{name}"))
                .ok()
        };
        SyncService {
            config,
            state: SyncState::default(),
            in_flight: None,
            metrics: SyncMetrics {
                polls_ok: metric(MetricKind::Counter, "polls_ok"),
                polls_failed: metric(MetricKind::Counter, "polls_failed"),
                documents_rejected: metric(MetricKind::Counter, "documents_rejected"),
                revision: metric(MetricKind::Gauge, "revision"),
            },
        }
    }

    pub fn on_tick(&mut self, host: &impl Host) {
        let now = host.now_ms();
        if self.state.should_poll(&self.config, now) {
            self.poll(host, now);
        }
    }

    fn poll(&mut self, host: &impl Host, now: u64) {
        let path = self.state.poll_path(&self.config);
        let headers = [
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.authority.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match host.dispatch_http_call(&self.config.cluster, &headers, timeout) {
            Ok(token) => {
                self.in_flight = Some(token);
                self.state.started(now);
            }
            Err(_) => self.finish(host, &AfterPoll::Keep(PollFailure::Dispatch), now),
        }
    }

    /// The answer to call `token`: `body_size` bytes of body, `:status` in the
    /// call's response headers (none when the call was reset).
    pub fn on_response(&mut self, host: &impl Host, token: u32, body_size: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        // Header values are bytes: a non-UTF-8 byte in any of them must not matter.
        let status = host
            .map(MapKind::HttpCallResponseHeaders)
            .ok()
            .and_then(|headers| {
                let (_, value) = headers.into_iter().find(|(name, _)| name == ":status")?;
                std::str::from_utf8(&value).ok()?.parse().ok()
            })
            .unwrap_or(0u16);
        let body = if status == 200 && body_size <= self.config.max_body_bytes {
            host.http_call_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut outcome = self.state.judge(&self.config, status, body_size, &body);
        if let AfterPoll::Store { revision } = outcome {
            if host.set_shared_data(ROUTES_KEY, &body).is_err() {
                outcome = AfterPoll::Keep(PollFailure::BadDocument(
                    "could not store it in shared data".into(),
                ));
            } else if let Some(id) = self.metrics.revision {
                let _ = host.record_metric(id, revision);
            }
        }
        let now = host.now_ms();
        self.finish(host, &outcome, now);
        // A good answer is followed by the next long-poll at once.
        if self.state.should_poll(&self.config, now) {
            self.poll(host, now);
        }
    }

    fn finish(&mut self, host: &impl Host, outcome: &AfterPoll, now: u64) {
        let counter = match outcome {
            AfterPoll::Keep(failure) if failure.is_rejection() => self.metrics.documents_rejected,
            AfterPoll::Keep(_) => self.metrics.polls_failed,
            _ => self.metrics.polls_ok,
        };
        if let Some(id) = counter {
            let _ = host.increment_metric(id, 1);
        }
        match self.state.finished(&self.config, outcome, now) {
            Some(HealthChange::Failing(failure)) => host.log(
                LogLevel::Warn,
                &format!(
                    "policy_canary sync: {failure}; keeping route revision {} (fail static)",
                    self.state.revision
                ),
            ),
            Some(HealthChange::Recovered { after_failures }) => host.log(
                LogLevel::Info,
                &format!(
                    "policy_canary sync: controller answering again after {after_failures} failed polls; route revision {}",
                    self.state.revision
                ),
            ),
            None => {}
        }
    }
}
