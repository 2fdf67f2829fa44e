//! Per-version stats: names, and the per-worker counters a stream's end adds to.
//!
//! Stat names are `policy_canary.target.<target>.version.<version>.<suffix>`; with the
//! `stats_tags` in the shipped Envoy configs, Prometheus shows them as
//! `policy_canary_<suffix>{target="…",policy_version="…"}`.

pub use crate::cohort::Traffic;
use crate::telemetry::{TaskOutcome, TelemetryReport};

/// Every counter the filter keeps per version.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    RqTotal,
    RqForced,
    Rq2xx,
    Rq4xx,
    Rq5xx,
    RqReset,
    /// The stream ended without any response status (reset, or the client left).
    RqNoResponse,
    TasksTotal,
    TasksCompleted,
    TasksFailed,
    TasksAbandoned,
    TasksEscalated,
    CostMicros,
    Tokens,
    ToolCalls,
    ToolErrors,
    GuardrailTriggers,
    SafetyViolations,
    TelemetryMalformed,
    SessionlessRq,
}

impl Counter {
    pub const ALL: [Counter; 20] = [
        Counter::RqTotal,
        Counter::RqForced,
        Counter::Rq2xx,
        Counter::Rq4xx,
        Counter::Rq5xx,
        Counter::RqReset,
        Counter::RqNoResponse,
        Counter::TasksTotal,
        Counter::TasksCompleted,
        Counter::TasksFailed,
        Counter::TasksAbandoned,
        Counter::TasksEscalated,
        Counter::CostMicros,
        Counter::Tokens,
        Counter::ToolCalls,
        Counter::ToolErrors,
        Counter::GuardrailTriggers,
        Counter::SafetyViolations,
        Counter::TelemetryMalformed,
        Counter::SessionlessRq,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            Counter::RqTotal => "rq_total",
            Counter::RqForced => "rq_forced",
            Counter::Rq2xx => "rq_2xx",
            Counter::Rq4xx => "rq_4xx",
            Counter::Rq5xx => "rq_5xx",
            Counter::RqReset => "rq_reset",
            Counter::RqNoResponse => "rq_no_response",
            Counter::TasksTotal => "tasks_total",
            Counter::TasksCompleted => "tasks_completed",
            Counter::TasksFailed => "tasks_failed",
            Counter::TasksAbandoned => "tasks_abandoned",
            Counter::TasksEscalated => "tasks_escalated",
            Counter::CostMicros => "cost_micros",
            Counter::Tokens => "tokens",
            Counter::ToolCalls => "tool_calls",
            Counter::ToolErrors => "tool_errors",
            Counter::GuardrailTriggers => "guardrail_triggers",
            Counter::SafetyViolations => "safety_violations",
            Counter::TelemetryMalformed => "telemetry_malformed",
            Counter::SessionlessRq => "sessionless_rq",
        }
    }
}

/// Histogram of request latency in milliseconds.
pub const LATENCY_SUFFIX: &str = "rq_latency_ms";

/// How Envoy names the native module's stats in Prometheus: its labelled stats
/// live in the `wasmcustom` namespace (`metrics_namespace`), which Envoy drops
/// from a wasm filter's Prometheus names but keeps, with `envoy_`, for a dynamic
/// module's. Readers rename them to the wasm filter's `policy_canary_*`.
pub const NATIVE_PROMETHEUS_PREFIX: &str = "envoy_wasmcustom_policy_canary_";

/// Prometheus text with the native module's series under the wasm filter's names.
pub fn wasm_prometheus_names(text: &str) -> String {
    text.replace(NATIVE_PROMETHEUS_PREFIX, "policy_canary_")
}

/// The native module's one family for every custom metric
/// (`policy_canary_custom{target, policy_version, counter="custom_<name>_<field>"}`):
/// their names are known only at run time, after Envoy has frozen stat names.
/// The wasm filter's series of the same count is `policy_canary_custom_<name>_<field>`.
pub const NATIVE_CUSTOM_FAMILY: &str = "custom";

pub fn stat_name(target: &str, version: &str, suffix: &str) -> String {
    format!("policy_canary.target.{target}.version.{version}.{suffix}")
}

/// The stat target of a stream of `traffic`: `<target>` for compared streams,
/// `<target>.<class>` for the others.
pub fn stat_target(target: &str, traffic: Traffic) -> std::borrow::Cow<'_, str> {
    match traffic {
        Traffic::Compared => target.into(),
        other => format!("{target}.{}", other.name()).into(),
    }
}

/// What the filter saw of one stream, gathered by the end of it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamRecord {
    pub traffic: Traffic,
    /// No session id was found (whatever its traffic class).
    pub sessionless: bool,
    /// `:status` of the response headers, if any reached the filter.
    pub status: Option<u16>,
    /// Envoy answered for an upstream that reset before responding.
    pub upstream_reset: bool,
    pub report: TelemetryReport,
}

/// One version's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CounterSet([u64; Counter::ALL.len()]);

impl CounterSet {
    pub fn get(&self, counter: Counter) -> u64 {
        self.0[counter as usize]
    }

    pub fn add(&mut self, counter: Counter, value: u64) {
        let slot = &mut self.0[counter as usize];
        *slot = slot.saturating_add(value);
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&v| v == 0)
    }

    /// Adds one finished stream.
    pub fn record(&mut self, stream: &StreamRecord) {
        self.add(Counter::RqTotal, 1);
        if stream.traffic == Traffic::Forced {
            self.add(Counter::RqForced, 1);
        }
        if stream.sessionless {
            self.add(Counter::SessionlessRq, 1);
        }
        match stream.status {
            Some(200..=299) => self.add(Counter::Rq2xx, 1),
            Some(400..=499) => self.add(Counter::Rq4xx, 1),
            Some(500..=599) => self.add(Counter::Rq5xx, 1),
            _ => {}
        }
        if stream.status.is_none() || stream.upstream_reset {
            self.add(Counter::RqReset, 1);
        }
        if stream.status.is_none() {
            self.add(Counter::RqNoResponse, 1);
        }
        let report = &stream.report;
        if let Some(outcome) = report.outcome {
            self.add(Counter::TasksTotal, 1);
            self.add(
                match outcome {
                    TaskOutcome::Completed => Counter::TasksCompleted,
                    TaskOutcome::Failed => Counter::TasksFailed,
                    TaskOutcome::Abandoned => Counter::TasksAbandoned,
                    TaskOutcome::Escalated => Counter::TasksEscalated,
                },
                1,
            );
        }
        for (counter, value) in [
            (Counter::CostMicros, report.cost_micros),
            (Counter::Tokens, report.tokens),
            (Counter::ToolCalls, report.tool_calls),
            (Counter::ToolErrors, report.tool_errors),
            (Counter::GuardrailTriggers, report.guardrail_triggers),
            (Counter::SafetyViolations, report.safety_violations),
        ] {
            self.add(counter, value.unwrap_or(0));
        }
        self.add(Counter::TelemetryMalformed, u64::from(report.malformed));
    }
}

/// One `T` per (version, traffic class). Versions are few (stable, canary, and briefly the
/// previous ones after a route change), so a short list beats hashing on every request.
#[derive(Debug)]
pub struct ByVersion<T> {
    entries: Vec<((String, Traffic), T)>,
}

impl<T> Default for ByVersion<T> {
    fn default() -> Self {
        Self {
            entries: Vec::new(),
        }
    }
}

impl<T: Default> ByVersion<T> {
    /// The entry for `version` and `traffic`, made empty the first time.
    pub fn get_mut(&mut self, version: &str, traffic: Traffic) -> &mut T {
        let index = match self
            .entries
            .iter()
            .position(|((v, t), _)| v == version && *t == traffic)
        {
            Some(index) => index,
            None => {
                self.entries
                    .push(((version.to_string(), traffic), T::default()));
                self.entries.len() - 1
            }
        };
        &mut self.entries[index].1
    }
}

impl<T> ByVersion<T> {
    /// Calls `f` with every entry's version, traffic class and value.
    pub fn for_each_mut(&mut self, mut f: impl FnMut(&str, Traffic, &mut T)) {
        for ((version, traffic), value) in &mut self.entries {
            f(version, *traffic, value);
        }
    }

    /// Past 8 entries, forgets those `empty` says hold nothing (versions gone from
    /// the table once their counts are out).
    pub fn forget_if_many(&mut self, empty: impl Fn(&T) -> bool) {
        if self.entries.len() > 8 {
            self.entries.retain(|(_, value)| !empty(value));
        }
    }

    pub fn all(&self, f: impl Fn(&T) -> bool) -> bool {
        self.entries.iter().all(|(_, value)| f(value))
    }
}

/// Counts not yet flushed to Envoy, by version and traffic class.
#[derive(Debug, Default)]
pub struct PendingCounts {
    versions: ByVersion<CounterSet>,
}

impl PendingCounts {
    pub fn counters_mut(&mut self, version: &str, traffic: Traffic) -> &mut CounterSet {
        self.versions.get_mut(version, traffic)
    }

    /// Hands every non-zero count (version, traffic, counter, value) to `flush`,
    /// which returns how much of it went out; the rest stays pending, so a failed
    /// flush is retried on the next call.
    pub fn flush(&mut self, mut flush: impl FnMut(&str, Traffic, Counter, u64) -> u64) {
        for ((version, traffic), counters) in &mut self.versions.entries {
            for counter in Counter::ALL {
                let value = counters.get(counter);
                if value > 0 {
                    let sent = flush(version, *traffic, counter, value).min(value);
                    counters.0[counter as usize] = value - sent;
                }
            }
        }
        self.versions.forget_if_many(CounterSet::is_zero);
    }

    pub fn is_empty(&self) -> bool {
        self.versions.all(CounterSet::is_zero)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_suffixes() {
        assert_eq!(
            stat_name("support-agent", "v2.4.0", Counter::RqTotal.suffix()),
            "policy_canary.target.support-agent.version.v2.4.0.rq_total"
        );
        let suffixes: Vec<&str> = Counter::ALL.iter().map(|c| c.suffix()).collect();
        assert_eq!(suffixes.len(), 20);
        for (i, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, i, "ALL is in declaration order");
        }
    }

    #[test]
    fn record_classes_and_telemetry() {
        let mut set = CounterSet::default();
        set.record(&StreamRecord {
            status: Some(200),
            traffic: Traffic::Forced,
            ..Default::default()
        });
        set.record(&StreamRecord {
            status: Some(404),
            sessionless: true,
            ..Default::default()
        });
        set.record(&StreamRecord {
            status: Some(503),
            upstream_reset: true,
            ..Default::default()
        });
        set.record(&StreamRecord {
            status: None,
            ..Default::default()
        });
        set.record(&StreamRecord {
            status: Some(200),
            report: TelemetryReport {
                outcome: Some(TaskOutcome::Abandoned),
                cost_micros: Some(7),
                tokens: Some(100),
                tool_calls: Some(2),
                tool_errors: Some(1),
                guardrail_triggers: Some(1),
                safety_violations: Some(1),
                malformed: 2,
                custom: Default::default(),
            },
            ..Default::default()
        });
        let expect = [
            (Counter::RqTotal, 5),
            (Counter::RqForced, 1),
            (Counter::Rq2xx, 2),
            (Counter::Rq4xx, 1),
            (Counter::Rq5xx, 1),
            (Counter::RqReset, 2),
            (Counter::SessionlessRq, 1),
            (Counter::TasksTotal, 1),
            (Counter::TasksAbandoned, 1),
            (Counter::TasksCompleted, 0),
            (Counter::CostMicros, 7),
            (Counter::Tokens, 100),
            (Counter::ToolCalls, 2),
            (Counter::ToolErrors, 1),
            (Counter::GuardrailTriggers, 1),
            (Counter::SafetyViolations, 1),
            (Counter::TelemetryMalformed, 2),
        ];
        for (counter, value) in expect {
            assert_eq!(set.get(counter), value, "{counter:?}");
        }
    }

    #[test]
    fn failed_flush_is_retried() {
        let mut pending = PendingCounts::default();
        pending
            .counters_mut("v1", Traffic::Compared)
            .add(Counter::RqTotal, 3);
        pending
            .counters_mut("v2", Traffic::Compared)
            .add(Counter::Tokens, 9);
        let mut seen = Vec::new();
        pending.flush(|v, _, c, n| {
            seen.push((v.to_string(), c, n));
            if v == "v1" {
                n
            } else {
                4
            }
        });
        assert_eq!(seen.len(), 2);
        assert!(!pending.is_empty());
        let mut again = Vec::new();
        pending.flush(|v, _, c, n| {
            again.push((v.to_string(), c, n));
            n
        });
        assert_eq!(again, vec![("v2".to_string(), Counter::Tokens, 5)]);
        assert!(pending.is_empty());
    }

    #[test]
    fn traffic_outside_the_comparison_is_counted_apart() {
        let mut pending = PendingCounts::default();
        for (n, traffic) in Traffic::ALL.into_iter().enumerate() {
            pending
                .counters_mut("v2", traffic)
                .add(Counter::RqTotal, n as u64 + 1);
        }
        let mut seen = Vec::new();
        pending.flush(|v, traffic, c, n| {
            seen.push((stat_name(&stat_target("t", traffic), v, c.suffix()), n));
            n
        });
        seen.sort();
        let expected = [
            ("policy_canary.target.t.forced.version.v2.rq_total", 2),
            ("policy_canary.target.t.segment.version.v2.rq_total", 3),
            ("policy_canary.target.t.sessionless.version.v2.rq_total", 4),
            ("policy_canary.target.t.version.v2.rq_total", 1),
        ];
        assert_eq!(
            seen,
            expected
                .iter()
                .map(|(name, n)| (name.to_string(), *n))
                .collect::<Vec<_>>()
        );
    }
}
