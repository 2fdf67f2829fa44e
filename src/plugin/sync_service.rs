//! The sync service: long-polls the controller and stores the routes document in
//! shared data for every worker's filter. Fail static: a bad or missing answer
//! keeps the last good document.

use super::evidence::{Destination, EvidenceReporter};
use super::host::{Host, LogLevel, MapKind, MetricKind};
use crate::clock::SteadyClock;
use crate::route::{read_routes, DocumentVersion};
use crate::sync::{
    is_envoy_id, is_sync_token, AfterPoll, HealthChange, PollFailure, SyncConfig, SyncState,
    ENVOY_ID_HEADER, ROUTES_KEY,
};
use std::time::Duration;

/// Shared-data key of the name this Envoy gives itself when nothing names it.
const ENVOY_ID_KEY: &str = "policy_canary/envoy_id";

pub struct SyncService {
    config: SyncConfig,
    /// How this Envoy names itself in every poll (`x-canary-envoy`), when fixed.
    envoy_id: Option<String>,
    /// `Bearer <token>` for every poll, when the sync has a token.
    authorization: Option<String>,
    state: SyncState,
    /// Times polls and backoff (a wall-clock step must not suspend polling).
    clock: SteadyClock,
    in_flight: Option<u32>,
    metrics: SyncMetrics,
    /// Evidence reports, when `sync.evidence_ms` asks for them.
    evidence: Option<EvidenceReporter>,
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
        let token = config
            .token
            .clone()
            .or_else(|| host.env(&config.token_env).filter(|t| is_sync_token(t)));
        // The Envoy process's instance, as early as its first root starts.
        let _ = super::evidence::instance(host);
        SyncService {
            evidence: EvidenceReporter::new(&config, host),
            envoy_id: fixed_envoy_id(&config, host),
            authorization: token.map(|t| format!("Bearer {t}")),
            config,
            state: SyncState::seeded(host.now_ns()),
            clock: SteadyClock::default(),
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
        let now = self.clock.read(host.now_ms());
        if self.state.should_poll(&self.config, now) {
            self.poll(host, now);
        }
        if self.evidence.as_mut().is_some_and(|e| e.due(host, now)) {
            let envoy_id = self.envoy_id(host);
            let to = Destination {
                config: &self.config,
                envoy_id: &envoy_id,
                authorization: self.authorization.as_deref(),
            };
            if let Some(evidence) = self.evidence.as_mut() {
                evidence.report(host, now, &to);
            }
        }
    }

    fn poll(&mut self, host: &impl Host, now: u64) {
        let path = self.state.poll_path(&self.config);
        let envoy_id = self.envoy_id(host);
        let mut headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.authority.as_str()),
            ("accept", "application/json"),
            (ENVOY_ID_HEADER, envoy_id.as_str()),
        ];
        if let Some(authorization) = &self.authorization {
            headers.push(("authorization", authorization.as_str()));
        }
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match host.dispatch_http_call(&self.config.cluster, &headers, &[], timeout) {
            Ok(token) => {
                self.in_flight = Some(token);
                self.state.started(now);
            }
            Err(_) => self.finish(host, &AfterPoll::Keep(PollFailure::Dispatch), now),
        }
    }

    /// Polls from now on as if it had stored the document in shared data (a root
    /// taking over filter-side sync), so that its first poll waits for a change.
    pub fn resume_from_shared(&mut self, host: &impl Host) {
        if let Ok((Some(document), _)) = host.shared_data(ROUTES_KEY) {
            if let Ok(version) = read_routes(&document, |_, _| {}) {
                if version.replaces(&self.state.version()) {
                    self.state.revision = version.revision;
                    self.state.epoch = version.epoch;
                }
            }
        }
    }

    /// How this Envoy names itself to the controller.
    pub fn envoy_id(&self, host: &impl Host) -> String {
        self.envoy_id
            .clone()
            .unwrap_or_else(|| shared_envoy_id(host))
    }

    /// The answer to call `token`: `body_size` bytes of body, `:status` in the
    /// call's response headers (none when the call was reset). With `may_poll` a
    /// good answer is followed by the next long-poll at once.
    /// Without `may_poll` (a filter root that lost the lease while the poll was
    /// out) the answer is dropped: the root holding the lease now stores tables.
    pub fn on_response(&mut self, host: &impl Host, token: u32, body_size: usize, may_poll: bool) {
        if let Some(evidence) = self.evidence.as_mut().filter(|e| e.owns(token)) {
            let status = host
                .map(MapKind::HttpCallResponseHeaders)
                .ok()
                .and_then(|h| std::str::from_utf8(h.get(":status")?).ok()?.parse().ok())
                .unwrap_or(0);
            evidence.answered(host, status);
            return;
        }
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        if !may_poll {
            self.state.abandoned();
            return;
        }
        // Header values are bytes: a non-UTF-8 byte in any of them must not matter.
        let headers = host.map(MapKind::HttpCallResponseHeaders).ok();
        let number = |name: &str| -> Option<u64> {
            let value = headers.as_ref()?.get(name)?;
            std::str::from_utf8(value).ok()?.trim().parse().ok()
        };
        let status = number(":status")
            .and_then(|s| u16::try_from(s).ok())
            .unwrap_or(0);
        let retry_after = number("retry-after");
        let body = if status == 200 && body_size <= self.config.max_body_bytes {
            host.http_call_body(body_size).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut outcome = self
            .state
            .judge(&self.config, (status, retry_after), body_size, &body);
        if let AfterPoll::Store { version } = outcome {
            outcome = match store_if_newer(host, &body, version) {
                Stored::Yes => {
                    if let Some(id) = self.metrics.revision {
                        let _ = host.record_metric(id, version.revision);
                    }
                    outcome
                }
                // Shared data already holds a newer table (another root stored it):
                // keep it, and poll from there.
                Stored::Newer(held) => {
                    self.state.revision = held.revision;
                    self.state.epoch = held.epoch;
                    AfterPoll::Unchanged
                }
                Stored::Failed => AfterPoll::Keep(PollFailure::BadDocument(
                    "could not store it in shared data".into(),
                )),
            };
        }
        let now = self.clock.read(host.now_ms());
        self.finish(host, &outcome, now);
        if may_poll && self.state.should_poll(&self.config, now) {
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

/// What became of a table a poll brought.
enum Stored {
    Yes,
    /// Shared data holds this version or a newer one of the same generation.
    Newer(DocumentVersion),
    Failed,
}

/// Stores `document` (at `version`) in shared data unless what is there already
/// replaces it, by compare-and-set: a stale answer never overwrites a newer table.
fn store_if_newer(host: &impl Host, document: &[u8], version: DocumentVersion) -> Stored {
    for _ in 0..3 {
        let Ok((held, cas)) = host.shared_data(ROUTES_KEY) else {
            return Stored::Failed;
        };
        let held = held.and_then(|bytes| read_routes(&bytes, |_, _| {}).ok());
        if let Some(held) = held {
            if held != version && !version.replaces(&held) {
                return Stored::Newer(held);
            }
        }
        match host.set_shared_data(ROUTES_KEY, document, cas) {
            Ok(()) => return Stored::Yes,
            // Someone wrote in between: look again.
            Err(_) if cas.is_some() => continue,
            Err(_) => return Stored::Failed,
        }
    }
    Stored::Failed
}

/// The configured name, else the environment variable `envoy_id_env` names (the
/// pod's `HOSTNAME`, passed to the VM by `vm_config.environment_variables` or
/// Istio's `vmConfig.env`); fixed for the VM's life. `None` when neither is there
/// and the name lives in shared data instead.
fn fixed_envoy_id(config: &SyncConfig, host: &impl Host) -> Option<String> {
    config
        .envoy_id
        .clone()
        .or_else(|| host.env(&config.envoy_id_env))
        .filter(|id| is_envoy_id(id))
}

/// The name this Envoy's roots share when nothing names it: generated by the first
/// root that needs it. Read again at every poll, so that two roots generating at
/// once settle on the last write.
fn shared_envoy_id(host: &impl Host) -> String {
    let stored = || {
        host.shared_data(ENVOY_ID_KEY)
            .ok()
            .and_then(|(value, _)| String::from_utf8(value?).ok())
            .filter(|id| is_envoy_id(id))
    };
    if let Some(id) = stored() {
        return id;
    }
    let generated = format!("envoy-{:x}", host.now_ns());
    let _ = host.set_shared_data(ENVOY_ID_KEY, generated.as_bytes(), None);
    stored().unwrap_or(generated)
}
