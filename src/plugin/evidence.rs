//! The sync holder's evidence reports (`crate::evidence`): every
//! `sync.evidence_ms` (the first one at a random point of the first interval, so
//! that a fleet spreads out), it reads its Envoy's counters for the routes
//! document in shared data and posts them to the controller. A report that fails
//! is not retried: the next one carries the same counts and more.

use super::host::{Host, LogLevel, MetricKind};
use crate::evidence::{encode, plan, Reporter, SeriesPlan, INSTANCE_KEY};
use crate::sync::{SyncConfig, ENVOY_ID_HEADER, ROUTES_KEY};
use std::collections::HashMap;
use std::time::Duration;

/// Longest a report may take.
const REPORT_TIMEOUT: Duration = Duration::from_secs(10);
/// Metric ids kept; past it the cache starts again (ids stay valid in Envoy).
const MAX_IDS: usize = 16_384;

/// Where and how reports go: the sync's cluster and credentials.
pub struct Destination<'a> {
    pub config: &'a SyncConfig,
    pub envoy_id: &'a str,
    pub authorization: Option<&'a str>,
}

pub struct EvidenceReporter {
    interval_ms: u64,
    /// When the next report is due (steady ms); set at the first tick.
    next_ms: Option<u64>,
    /// The report out, and since when.
    in_flight: Option<(u32, u64)>,
    ids: HashMap<String, u32>,
    /// The last report failed (logged once until one succeeds).
    failing: bool,
    reports_ok: Option<u32>,
    reports_failed: Option<u32>,
}

impl EvidenceReporter {
    /// A reporter when the sync's configuration asks for reports.
    pub fn new(config: &SyncConfig, host: &impl Host) -> Option<EvidenceReporter> {
        if config.evidence_ms == 0 {
            return None;
        }
        let metric = |name: &str| {
            host.define_metric(
                MetricKind::Counter,
                &format!("policy_canary.sync.evidence_{name}"),
            )
            .ok()
        };
        Some(EvidenceReporter {
            interval_ms: config.evidence_ms,
            next_ms: None,
            in_flight: None,
            ids: HashMap::new(),
            failing: false,
            reports_ok: metric("reports_ok"),
            reports_failed: metric("reports_failed"),
        })
    }

    /// Whether a report is due at `now_ms` (steady); the first call only picks
    /// the first report's time.
    pub fn due(&mut self, host: &impl Host, now_ms: u64) -> bool {
        let next = *self.next_ms.get_or_insert_with(|| {
            let spread = host.now_ns().wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 11;
            now_ms + spread % self.interval_ms
        });
        let stuck = self.in_flight.is_some_and(|(_, since)| {
            now_ms.saturating_sub(since) > REPORT_TIMEOUT.as_millis() as u64 + 5_000
        });
        if stuck {
            self.in_flight = None;
        }
        self.in_flight.is_none() && now_ms >= next
    }

    /// Reads the counters and posts the report.
    pub fn report(&mut self, host: &impl Host, now_ms: u64, to: &Destination<'_>) {
        self.next_ms = Some(now_ms + self.interval_ms);
        let document = match host.shared_data(ROUTES_KEY) {
            Ok((Some(document), _)) => document,
            // No table yet: nothing to report on.
            _ => return,
        };
        let plans = plan(&document);
        let Some(values) = self.read(host, &plans) else {
            // A count that cannot be read would look like a reset: send nothing.
            self.failed(host, "a counter could not be read");
            return;
        };
        let (instance, started_ms) = instance(host);
        let body = encode(
            &Reporter {
                envoy: to.envoy_id,
                instance,
                started_ms,
            },
            &plans,
            &values,
        );
        let mut headers = vec![
            (":method", "POST"),
            (":path", to.config.evidence_path.as_str()),
            (":authority", to.config.authority.as_str()),
            ("content-type", "application/json"),
            (ENVOY_ID_HEADER, to.envoy_id),
        ];
        if let Some(authorization) = to.authorization {
            headers.push(("authorization", authorization));
        }
        match host.dispatch_http_call(
            &to.config.cluster,
            &headers,
            body.as_bytes(),
            REPORT_TIMEOUT,
        ) {
            Ok(token) => self.in_flight = Some((token, now_ms)),
            Err(_) => self.failed(host, "cannot call the controller cluster"),
        }
    }

    fn read(&mut self, host: &impl Host, plans: &[SeriesPlan]) -> Option<Vec<Vec<u64>>> {
        if self.ids.len() > MAX_IDS {
            self.ids.clear();
        }
        plans
            .iter()
            .map(|plan| {
                plan.stats()
                    .map(|stat| {
                        let id = match self.ids.get(stat) {
                            Some(id) => *id,
                            None => {
                                let id = host.define_metric(MetricKind::Counter, stat).ok()?;
                                self.ids.insert(stat.to_string(), id);
                                id
                            }
                        };
                        host.get_metric(id).ok()
                    })
                    .collect()
            })
            .collect()
    }

    /// Whether `token` is this reporter's call.
    pub fn owns(&self, token: u32) -> bool {
        self.in_flight.is_some_and(|(t, _)| t == token)
    }

    /// The answer to the report: `status` 0 when the call failed.
    pub fn answered(&mut self, host: &impl Host, status: u16) {
        self.in_flight = None;
        if (200..300).contains(&status) {
            if let Some(id) = self.reports_ok {
                let _ = host.increment_metric(id, 1);
            }
            if std::mem::replace(&mut self.failing, false) {
                host.log(
                    LogLevel::Info,
                    "policy_canary sync: the controller takes evidence reports again",
                );
            }
        } else {
            let why = match status {
                0 => "controller unreachable".to_string(),
                401 | 403 => format!(
                    "the controller answered {status}: the sync token needs the evidence:write scope"
                ),
                404 => "the controller answered 404: it does not collect evidence reports (canaryctl serve --evidence sync)".to_string(),
                status => format!("the controller answered {status}"),
            };
            self.failed(host, &why);
        }
    }

    fn failed(&mut self, host: &impl Host, why: &str) {
        if let Some(id) = self.reports_failed {
            let _ = host.increment_metric(id, 1);
        }
        if !std::mem::replace(&mut self.failing, true) {
            host.log(
                LogLevel::Warn,
                &format!("policy_canary sync: evidence report not taken: {why} (until one is, not logged again)"),
            );
        }
    }
}

/// This Envoy process's instance and when it began (ms), made by its first root.
pub fn instance(host: &impl Host) -> (u64, u64) {
    let stored = || -> Option<u64> {
        let (value, _) = host.shared_data(INSTANCE_KEY).ok()?;
        std::str::from_utf8(&value?).ok()?.parse().ok()
    };
    let instance = stored().unwrap_or_else(|| {
        let now = host.now_ns();
        let _ = host.set_shared_data(INSTANCE_KEY, now.to_string().as_bytes(), None);
        stored().unwrap_or(now)
    });
    (instance, instance / 1_000_000)
}
