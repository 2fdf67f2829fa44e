//! Session replicates: per-version counts split into `REPLICATES` groups of whole
//! sessions, so that the controller can measure how much sessions differ from each
//! other (a between-replicate variance) instead of treating every request as
//! independent.
//!
//! A session's replicate is the top five bits of the same sha256 its bucket comes
//! from. The bucket is the whole 256-bit digest mod 10000; the top bits change it by
//! a multiple of 2^251 mod 10000 plus a uniform remainder, so bucket and replicate are
//! independent up to a bias below 10^-70: every replicate holds a random share of
//! each cohort's sessions. Only compared traffic (`stats::Traffic::Compared`) has a
//! replicate: requests without a session count only where they are randomised one
//! by one (`missing: random`), each then its own unit with a replicate drawn at
//! random; forced, segment-routed and sessionless-to-stable requests are not in
//! the comparison and not in any replicate.
//!
//! Stat names: `policy_canary.target.<t>.version.<v>.replicate.<r>.<suffix>`; the
//! shipped Envoy configs' `stats_tags` turn them into
//! `policy_canary_replicate_<suffix>{target,policy_version,replicate}`.

use crate::stats::{ByVersion, StreamRecord};
use crate::telemetry::TaskOutcome;

/// Number of replicates: 31 degrees of freedom for each arm's variance.
pub const REPLICATES: usize = 32;

/// The counters kept per replicate: what the gates need, nothing more.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReplicateCounter {
    RqTotal,
    /// 5xx answers and streams that ended without a response: the error gate's count.
    RqErrors,
    TasksTotal,
    TasksCompleted,
    TasksAbandoned,
    CostMicros,
    ToolCalls,
    ToolErrors,
    GuardrailTriggers,
    TasksEscalated,
    Tokens,
}

impl ReplicateCounter {
    pub const ALL: [ReplicateCounter; 11] = [
        ReplicateCounter::RqTotal,
        ReplicateCounter::RqErrors,
        ReplicateCounter::TasksTotal,
        ReplicateCounter::TasksCompleted,
        ReplicateCounter::TasksAbandoned,
        ReplicateCounter::CostMicros,
        ReplicateCounter::ToolCalls,
        ReplicateCounter::ToolErrors,
        ReplicateCounter::GuardrailTriggers,
        ReplicateCounter::TasksEscalated,
        ReplicateCounter::Tokens,
    ];

    pub fn suffix(self) -> &'static str {
        match self {
            ReplicateCounter::RqTotal => "rq_total",
            ReplicateCounter::RqErrors => "rq_errors",
            ReplicateCounter::TasksTotal => "tasks_total",
            ReplicateCounter::TasksCompleted => "tasks_completed",
            ReplicateCounter::TasksAbandoned => "tasks_abandoned",
            ReplicateCounter::CostMicros => "cost_micros",
            ReplicateCounter::ToolCalls => "tool_calls",
            ReplicateCounter::ToolErrors => "tool_errors",
            ReplicateCounter::GuardrailTriggers => "guardrail_triggers",
            ReplicateCounter::TasksEscalated => "tasks_escalated",
            ReplicateCounter::Tokens => "tokens",
        }
    }
}

/// Upper bounds (ms) of the latency buckets kept per replicate: Envoy's default
/// histogram buckets, so that a replicate's exceedance is read as the aggregate's is.
pub const LATENCY_BOUNDS_MS: [f64; 19] = [
    0.5,
    1.0,
    5.0,
    10.0,
    25.0,
    50.0,
    100.0,
    250.0,
    500.0,
    1_000.0,
    2_500.0,
    5_000.0,
    10_000.0,
    30_000.0,
    60_000.0,
    300_000.0,
    600_000.0,
    1_800_000.0,
    3_600_000.0,
];

/// Latency buckets per replicate, `+Inf` last.
pub const LATENCY_BUCKETS: usize = LATENCY_BOUNDS_MS.len() + 1;

/// Suffix of latency bucket `i`: requests above the previous bound and at most this
/// one (not cumulative, unlike Prometheus' `le`). Spelt out: formatting a float would
/// pull float printing into the `.wasm`.
const LATENCY_SUFFIXES: [&str; LATENCY_BUCKETS] = [
    "latency_bucket_0_5",
    "latency_bucket_1",
    "latency_bucket_5",
    "latency_bucket_10",
    "latency_bucket_25",
    "latency_bucket_50",
    "latency_bucket_100",
    "latency_bucket_250",
    "latency_bucket_500",
    "latency_bucket_1000",
    "latency_bucket_2500",
    "latency_bucket_5000",
    "latency_bucket_10000",
    "latency_bucket_30000",
    "latency_bucket_60000",
    "latency_bucket_300000",
    "latency_bucket_600000",
    "latency_bucket_1800000",
    "latency_bucket_3600000",
    "latency_bucket_inf",
];

pub fn latency_suffix(i: usize) -> &'static str {
    LATENCY_SUFFIXES
        .get(i)
        .copied()
        .unwrap_or("latency_bucket_inf")
}

/// The upper bound of a latency suffix (`inf` for the last), if it is one.
pub fn latency_bound(suffix: &str) -> Option<f64> {
    let bound = suffix.strip_prefix("latency_bucket_")?;
    if bound == "inf" {
        return Some(f64::INFINITY);
    }
    bound.replace('_', ".").parse().ok()
}

fn latency_bucket(millis: u64) -> usize {
    // Whole milliseconds, compared doubled in integers (no float code in the
    // `.wasm`): bound 0.5 holds only 0, as in Envoy's histogram.
    const DOUBLED: [u64; LATENCY_BOUNDS_MS.len()] = {
        let mut doubled = [0u64; LATENCY_BOUNDS_MS.len()];
        let mut i = 0;
        while i < doubled.len() {
            doubled[i] = (LATENCY_BOUNDS_MS[i] * 2.0) as u64;
            i += 1;
        }
        doubled
    };
    let doubled_ms = millis.saturating_mul(2);
    DOUBLED
        .iter()
        .position(|bound| doubled_ms <= *bound)
        .unwrap_or(LATENCY_BOUNDS_MS.len())
}

/// Which slot of a replicate's counts: a counter or a latency bucket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    Counter(ReplicateCounter),
    Latency(usize),
}

impl Slot {
    pub const COUNT: usize = ReplicateCounter::ALL.len() + LATENCY_BUCKETS;

    /// A dense index over every slot, counters first.
    pub fn index(self) -> usize {
        match self {
            Slot::Counter(c) => c as usize,
            Slot::Latency(i) => ReplicateCounter::ALL.len() + i,
        }
    }

    /// The slot at a dense index.
    pub fn at(index: usize) -> Slot {
        match ReplicateCounter::ALL.get(index) {
            Some(c) => Slot::Counter(*c),
            None => Slot::Latency(index - ReplicateCounter::ALL.len()),
        }
    }

    /// The slot a stat suffix names, if any.
    pub fn from_suffix(suffix: &str) -> Option<Slot> {
        (0..Slot::COUNT)
            .map(Slot::at)
            .find(|slot| slot.suffix() == suffix)
    }

    /// The stat name suffix after `replicate.<r>.`.
    pub fn suffix(self) -> &'static str {
        match self {
            Slot::Counter(c) => c.suffix(),
            Slot::Latency(i) => latency_suffix(i),
        }
    }
}

/// One replicate's counts, by `Slot::index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReplicateCounts(pub [u64; Slot::COUNT]);

impl Default for ReplicateCounts {
    fn default() -> Self {
        ReplicateCounts([0; Slot::COUNT])
    }
}

impl ReplicateCounts {
    fn add(&mut self, slot: Slot, value: u64) {
        let count = &mut self.0[slot.index()];
        *count = count.saturating_add(value);
    }

    pub fn get(&self, slot: Slot) -> u64 {
        self.0[slot.index()]
    }

    /// Adds one finished stream (and its latency, when it was timed).
    pub fn record(&mut self, stream: &StreamRecord, latency_ms: Option<u64>) {
        use ReplicateCounter as C;
        self.add(Slot::Counter(C::RqTotal), 1);
        if stream.status.is_none_or(|s| s >= 500) {
            self.add(Slot::Counter(C::RqErrors), 1);
        }
        let report = &stream.report;
        if let Some(outcome) = report.outcome {
            self.add(Slot::Counter(C::TasksTotal), 1);
            match outcome {
                TaskOutcome::Completed => self.add(Slot::Counter(C::TasksCompleted), 1),
                TaskOutcome::Abandoned => self.add(Slot::Counter(C::TasksAbandoned), 1),
                TaskOutcome::Escalated => self.add(Slot::Counter(C::TasksEscalated), 1),
                TaskOutcome::Failed => {}
            }
        }
        for (counter, value) in [
            (C::CostMicros, report.cost_micros),
            (C::ToolCalls, report.tool_calls),
            (C::ToolErrors, report.tool_errors),
            (C::GuardrailTriggers, report.guardrail_triggers),
            (C::Tokens, report.tokens),
        ] {
            self.add(Slot::Counter(counter), value.unwrap_or(0));
        }
        if let Some(millis) = latency_ms {
            self.add(Slot::Latency(latency_bucket(millis)), 1);
        }
    }

    pub fn is_zero(&self) -> bool {
        self.0.iter().all(|&v| v == 0)
    }
}

/// One version's replicates, and which of them hold counts: a flush (one per
/// stream in the native module) visits only those, not all 32.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Replicates {
    counts: Box<[ReplicateCounts; REPLICATES]>,
    /// Bit `r` is set when replicate `r` may hold a non-zero count.
    touched: u32,
}

const _: () = assert!(REPLICATES <= u32::BITS as usize);

impl Default for Replicates {
    fn default() -> Self {
        Replicates {
            counts: Box::new([ReplicateCounts::default(); REPLICATES]),
            touched: 0,
        }
    }
}

impl Replicates {
    pub fn get_mut(&mut self, replicate: u8) -> &mut ReplicateCounts {
        let index = usize::from(replicate) % REPLICATES;
        self.touched |= 1 << index;
        &mut self.counts[index]
    }

    pub fn is_zero(&self) -> bool {
        self.touched == 0
    }

    /// Hands every non-zero count (replicate, slot, value) to `flush`, which returns
    /// how much of it went out; the rest stays.
    pub fn flush(&mut self, mut flush: impl FnMut(u8, Slot, u64) -> u64) {
        let mut touched = self.touched;
        while touched != 0 {
            let replicate = touched.trailing_zeros() as usize;
            touched &= touched - 1;
            let counts = &mut self.counts[replicate];
            for (index, value) in counts.0.iter_mut().enumerate() {
                if *value > 0 {
                    let sent = flush(replicate as u8, Slot::at(index), *value).min(*value);
                    *value -= sent;
                }
            }
            if counts.is_zero() {
                self.touched &= !(1 << replicate);
            }
        }
    }
}

/// Replicate counts not yet flushed to Envoy, by version (compared streams only).
#[derive(Debug, Default)]
pub struct PendingReplicates {
    versions: ByVersion<Replicates>,
}

impl PendingReplicates {
    pub fn counts_mut(&mut self, version: &str, replicate: u8) -> &mut ReplicateCounts {
        self.versions
            .get_mut(version, crate::stats::Traffic::Compared)
            .get_mut(replicate)
    }

    /// Hands every non-zero count (version, replicate, slot, value) to `flush`,
    /// which returns how much went out; the rest stays for the next flush.
    pub fn flush(&mut self, mut flush: impl FnMut(&str, u8, Slot, u64) -> u64) {
        self.versions.for_each_mut(|version, _, replicates| {
            replicates.flush(|replicate, slot, value| flush(version, replicate, slot, value))
        });
        self.versions.forget_if_many(Replicates::is_zero);
    }
}

/// The stat name of one replicate's slot.
pub fn replicate_stat_name(target: &str, version: &str, replicate: u8, slot: Slot) -> String {
    crate::stats::stat_name(
        target,
        version,
        &format!("replicate.{replicate}.{}", slot.suffix()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cohort::assign;
    use crate::telemetry::TelemetryReport;

    #[test]
    fn suffixes_round_trip() {
        for i in 0..LATENCY_BUCKETS {
            let bound = latency_bound(latency_suffix(i)).unwrap();
            assert_eq!(
                bound,
                LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY)
            );
        }
        assert_eq!(latency_suffix(0), "latency_bucket_0_5");
        assert_eq!(latency_suffix(7), "latency_bucket_250");
        assert_eq!(latency_bound("rq_total"), None);
        assert_eq!(
            replicate_stat_name("t", "v2.4.0", 7, Slot::Counter(ReplicateCounter::RqTotal)),
            "policy_canary.target.t.version.v2.4.0.replicate.7.rq_total"
        );
        for index in 0..Slot::COUNT {
            assert_eq!(Slot::at(index).index(), index);
            assert_eq!(
                Slot::from_suffix(Slot::at(index).suffix()),
                Some(Slot::at(index))
            );
        }
        assert_eq!(Slot::from_suffix("rq_5xx"), None);
    }

    #[test]
    fn records_what_the_gates_need() {
        let mut counts = ReplicateCounts::default();
        counts.record(
            &StreamRecord {
                status: Some(200),
                report: TelemetryReport {
                    outcome: Some(TaskOutcome::Completed),
                    cost_micros: Some(1500),
                    tool_calls: Some(3),
                    tool_errors: Some(1),
                    guardrail_triggers: Some(2),
                    ..Default::default()
                },
                ..Default::default()
            },
            Some(300),
        );
        counts.record(
            &StreamRecord {
                status: Some(503),
                ..Default::default()
            },
            Some(0),
        );
        counts.record(&StreamRecord::default(), None);
        let get = |c: ReplicateCounter| counts.get(Slot::Counter(c));
        assert_eq!(get(ReplicateCounter::RqTotal), 3);
        assert_eq!(get(ReplicateCounter::RqErrors), 2);
        assert_eq!(get(ReplicateCounter::TasksTotal), 1);
        assert_eq!(get(ReplicateCounter::TasksCompleted), 1);
        assert_eq!(get(ReplicateCounter::CostMicros), 1500);
        assert_eq!(get(ReplicateCounter::ToolCalls), 3);
        assert_eq!(get(ReplicateCounter::ToolErrors), 1);
        assert_eq!(get(ReplicateCounter::GuardrailTriggers), 2);
        assert_eq!(counts.get(Slot::Latency(8)), 1, "300 ms is in (250, 500]");
        assert_eq!(
            counts.get(Slot::Latency(0)),
            1,
            "0 ms is in the first bucket"
        );
        let latencies: u64 = (0..LATENCY_BUCKETS)
            .map(|i| counts.get(Slot::Latency(i)))
            .sum();
        assert_eq!(latencies, 2);
    }

    #[test]
    fn failed_flush_stays_pending() {
        let mut r = Replicates::default();
        r.get_mut(3).record(&StreamRecord::default(), Some(10));
        let mut seen = Vec::new();
        r.flush(|rep, slot, n| {
            seen.push((rep, slot, n));
            0
        });
        assert_eq!(seen.len(), 3, "rq_total, rq_errors, one latency bucket");
        r.flush(|_, _, n| n);
        assert!(r.is_zero());
        // Only the replicates that hold counts are visited, every one of them.
        r.get_mut(0).record(&StreamRecord::default(), None);
        r.get_mut(31).record(&StreamRecord::default(), None);
        let _ = r.get_mut(7);
        let mut seen = Vec::new();
        r.flush(|rep, _, n| {
            seen.push(rep);
            n
        });
        assert_eq!(seen, vec![0, 0, 31, 31]);
        assert!(r.is_zero());
    }

    /// Replicates are uniform and independent of the cohort at every weight: each
    /// arm's sessions spread evenly over all of them (chi-square, 31 df).
    #[test]
    fn replicates_are_independent_of_the_bucket() {
        let salt = b"rollout-salt";
        for weight in [100u16, 500, 2500] {
            let mut canary = [0u32; REPLICATES];
            let mut stable = [0u32; REPLICATES];
            for i in 0..200_000u32 {
                let a = assign(format!("session-{i}").as_bytes(), salt);
                let cohort = if a.bucket < weight {
                    &mut canary
                } else {
                    &mut stable
                };
                cohort[usize::from(a.replicate)] += 1;
            }
            for counts in [canary, stable] {
                let total: u32 = counts.iter().sum();
                let expected = f64::from(total) / REPLICATES as f64;
                let chi2: f64 = counts
                    .iter()
                    .map(|&c| (f64::from(c) - expected).powi(2) / expected)
                    .sum();
                // P(χ²₃₁ > 61.1) = 0.001.
                assert!(chi2 < 61.1, "weight {weight}: χ² {chi2:.1} over {counts:?}");
            }
        }
    }
}
