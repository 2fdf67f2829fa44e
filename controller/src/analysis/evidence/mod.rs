//! Evidence: the filter's per-version counts, accumulated as deltas over the
//! current stage window. One module per source: `envoy_admin` reads every Envoy's
//! `/stats/prometheus`; `prometheus` asks a Prometheus server (or Thanos, Mimir,
//! VictoriaMetrics) for the whole fleet's increases since the stage started.
//!
//! Counter resets (an Envoy restart) count the new value as the delta; a source
//! that cannot be reached adds nothing (less evidence, never a pass).
//!
//! A window keeps every series by traffic class (`Traffic`: compared, forced,
//! segment, sessionless) and version, split into constant-weight periods: the
//! analysis compares the arms period by period (`docs/analysis.md`, "A fair
//! comparison"). A window can be saved and restored whole (`Snapshot`), so that a
//! controller restart continues the stage's analysis instead of starting a new one.

pub mod envoy_admin;
pub mod prometheus;

use policy_canary::replicate::{ReplicateCounter, Slot, REPLICATES};
use policy_canary::stats::{Counter, Traffic};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The series name (after `policy_canary_`) of the session replicates' counts, with
/// labels `replicate` and `counter` (`stats_tags` of the shipped Envoy configs).
pub const REPLICATE_SERIES: &str = "replicate";

/// Where a replicate series' value goes in `Sample::replicates`: (replicate, slot
/// index). `None` for a replicate out of range or a counter the filter does not keep.
pub fn replicate_slot(replicate: &str, counter: &str) -> Option<(usize, usize)> {
    let r: usize = replicate.parse().ok()?;
    let slot = Slot::from_suffix(counter)?;
    (r < REPLICATES).then_some((r, slot.index()))
}

/// One version's replicate counts: `REPLICATES` rows of `Slot::COUNT` values.
pub type ReplicateRows = Vec<[f64; Slot::COUNT]>;

/// How much a counter grew from `before` to `now`; a counter that went down was
/// reset (its Envoy restarted), so its new value counts whole.
pub fn increase(before: f64, now: f64) -> f64 {
    if now >= before {
        now - before
    } else {
        now
    }
}

/// Cumulative values of one version as one Envoy reports them (or, in a window,
/// the deltas added up).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Sample {
    /// Counters by suffix (`rq_total`, `tasks_completed`, …).
    pub counters: BTreeMap<String, f64>,
    /// Latency histogram: cumulative count per upper bound (ms), `+Inf` last.
    #[serde(with = "histogram_json")]
    pub latency: Vec<(f64, f64)>,
    /// Session replicates' counts (`policy_canary::replicate`): empty when the
    /// filter reports none, else `REPLICATES` rows by `Slot::index`.
    pub replicates: ReplicateRows,
}

impl Sample {
    /// A counter of the filter's (`stats::Counter`).
    pub fn count(&self, counter: Counter) -> f64 {
        self.get(counter.suffix())
    }

    /// A counter by its series suffix (`rq_total`).
    pub fn get(&self, suffix: &str) -> f64 {
        self.counters.get(suffix).copied().unwrap_or(0.0)
    }

    /// Replicate `r`'s count in one slot, 0 when absent.
    pub fn replicate(&self, r: usize, slot: Slot) -> f64 {
        self.replicates.get(r).map_or(0.0, |row| row[slot.index()])
    }

    /// Sets replicate `r`'s count in the slot at `index`.
    pub fn set_replicate(&mut self, r: usize, index: usize, value: f64) {
        if let Some(v) = self
            .rows_mut()
            .get_mut(r)
            .and_then(|row| row.get_mut(index))
        {
            *v = value;
        }
    }

    /// The replicate rows, made (all zero) the first time a count arrives.
    fn rows_mut(&mut self) -> &mut ReplicateRows {
        if self.replicates.is_empty() {
            self.replicates = vec![[0.0; Slot::COUNT]; REPLICATES];
        }
        &mut self.replicates
    }

    /// Whether any replicate counted a request: the filter splits by session.
    pub fn has_replicates(&self) -> bool {
        let total = Slot::Counter(ReplicateCounter::RqTotal).index();
        self.replicates.iter().any(|row| row[total] > 0.0)
    }

    /// `self − earlier`, where a value that went down (a reset) counts whole.
    fn delta_since(&self, earlier: &Sample) -> Sample {
        let counters = self
            .counters
            .iter()
            .map(|(k, v)| (k.clone(), increase(earlier.get(k), *v)))
            .collect();
        let latency = self
            .latency
            .iter()
            .map(|(le, v)| {
                let before = earlier
                    .latency
                    .iter()
                    .find(|(e, _)| e == le)
                    .map_or(0.0, |(_, b)| *b);
                (*le, increase(before, *v))
            })
            .collect();
        let replicates = self
            .replicates
            .iter()
            .enumerate()
            .map(|(r, row)| {
                let before = earlier.replicates.get(r);
                let mut delta = [0.0; Slot::COUNT];
                for (i, v) in row.iter().enumerate() {
                    delta[i] = increase(before.map_or(0.0, |b| b[i]), *v);
                }
                delta
            })
            .collect();
        Sample {
            counters,
            latency,
            replicates,
        }
    }

    pub fn add(&mut self, other: &Sample) {
        for (k, v) in &other.counters {
            *self.counters.entry(k.clone()).or_default() += v;
        }
        for (le, v) in &other.latency {
            match self.latency.iter_mut().find(|(e, _)| e == le) {
                Some((_, mine)) => *mine += v,
                None => self.latency.push((*le, *v)),
            }
        }
        self.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
        if !other.replicates.is_empty() {
            for (mine, theirs) in self.rows_mut().iter_mut().zip(&other.replicates) {
                for (m, t) in mine.iter_mut().zip(theirs) {
                    *m += t;
                }
            }
        }
    }
}

/// Which series: the traffic class its stat target names, and the policy version.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SeriesKey {
    pub traffic: Traffic,
    pub version: String,
}

impl SeriesKey {
    pub fn new(traffic: Traffic, version: &str) -> SeriesKey {
        SeriesKey {
            traffic,
            version: version.to_string(),
        }
    }

    /// A version's compared traffic: the analysis' evidence.
    pub fn compared(version: &str) -> SeriesKey {
        SeriesKey::new(Traffic::Compared, version)
    }
}

/// The traffic class of a series whose `target` label is `label`, for `target`:
/// `<target>` is compared traffic, `<target>.forced` (and the other classes) apart.
pub fn traffic_of(label: &str, target: &str) -> Option<Traffic> {
    let rest = label.strip_prefix(target)?;
    if rest.is_empty() {
        return Some(Traffic::Compared);
    }
    Traffic::from_name(rest.strip_prefix('.')?).filter(|t| *t != Traffic::Compared)
}

/// One scrape of one Envoy for one target.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    pub series: HashMap<SeriesKey, Sample>,
    pub malformed_lines: u64,
    /// Envoy's `server.uptime` (s): lower than at the last scrape means a restart.
    pub uptime_s: Option<f64>,
}

impl Scrape {
    /// A version's compared traffic, if the scrape has any.
    pub fn version(&self, version: &str) -> Option<&Sample> {
        self.series.get(&SeriesKey::compared(version))
    }
}

/// Costs and tasks one collection pass added, per arm: the batches of the
/// batch-means variance of cost per task.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    pub stable_tasks: f64,
    pub stable_cost: f64,
    pub canary_tasks: f64,
    pub canary_cost: f64,
}

/// Part of a window over which the rollout's canary weight stayed the same. Both
/// arms are sampled from the same hours only within one (`docs/analysis.md`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Period {
    pub started_ms: i64,
    /// The canary weight in force (basis points); `None` until a source says.
    pub weight_bp: Option<u16>,
    pub totals: HashMap<SeriesKey, Sample>,
}

impl Period {
    pub fn new(started_ms: i64, weight_bp: Option<u16>) -> Period {
        Period {
            started_ms,
            weight_bp,
            totals: HashMap::new(),
        }
    }

    /// A series' counts in this period (empty when it has none).
    pub fn get(&self, key: &SeriesKey) -> Sample {
        self.totals.get(key).cloned().unwrap_or_default()
    }

    fn is_empty(&self) -> bool {
        self.totals.is_empty()
    }
}

/// Evidence of one rollout stage, from its start on.
#[derive(Debug, Clone, Default)]
pub struct Window {
    /// When the window's evidence starts (the stage's start, unless the evidence
    /// of an earlier window of the stage was lost).
    pub started_ms: i64,
    /// Which analysis of the stage this is: 0, unless a controller restart lost
    /// the evidence of the ones before (each then spends its own share of the
    /// budgets, `Levels::for_sequence`).
    pub sequence: u32,
    /// Constant-weight periods, oldest first; evidence goes into the last.
    periods: Vec<Period>,
    last: HashMap<String, HashMap<SeriesKey, Sample>>,
    /// Each Envoy's uptime at its last scrape.
    last_uptime: HashMap<String, f64>,
    pub batches: Vec<Batch>,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub malformed_lines: u64,
    /// Why there is no trustworthy evidence now (the source is down, erroring or
    /// lagging): the stage is held, never passed.
    pub unavailable: Option<String>,
    pass: HashMap<SeriesKey, Sample>,
}

impl Window {
    pub fn new(started_ms: i64) -> Window {
        Window {
            started_ms,
            ..Window::default()
        }
    }

    /// A window computed whole by a source that keeps history (Prometheus): each
    /// constant-weight period's increases, and the cost batches.
    pub fn from_periods(started_ms: i64, periods: Vec<Period>, batches: Vec<Batch>) -> Window {
        Window {
            started_ms,
            periods,
            batches,
            scrapes_ok: 1,
            ..Window::default()
        }
    }

    /// A window whose source cannot be trusted now.
    pub fn unavailable(started_ms: i64, reason: String) -> Window {
        Window {
            started_ms,
            scrapes_failed: 1,
            unavailable: Some(reason),
            ..Window::default()
        }
    }

    /// Starts a new stage window; the last values seen stay the baseline.
    pub fn restart(&mut self, started_ms: i64) {
        let last = std::mem::take(&mut self.last);
        let last_uptime = std::mem::take(&mut self.last_uptime);
        *self = Window::new(started_ms);
        self.last = last;
        self.last_uptime = last_uptime;
    }

    /// From `at_ms` on the canary weight is `weight_bp`: a change starts a new
    /// period (the first weight said names the first period's).
    pub fn set_weight(&mut self, at_ms: i64, weight_bp: u16) {
        match self.periods.last_mut() {
            Some(p) if p.weight_bp == Some(weight_bp) => {}
            Some(p) if p.weight_bp.is_none() => p.weight_bp = Some(weight_bp),
            Some(p) if p.is_empty() => {
                p.weight_bp = Some(weight_bp);
                p.started_ms = at_ms;
            }
            _ => self
                .periods
                .push(Period::new(at_ms.max(self.started_ms), Some(weight_bp))),
        }
    }

    fn current(&mut self) -> &mut Period {
        if self.periods.is_empty() {
            self.periods.push(Period::new(self.started_ms, None));
        }
        let last = self.periods.len() - 1;
        &mut self.periods[last]
    }

    /// The constant-weight periods, oldest first.
    pub fn periods(&self) -> &[Period] {
        &self.periods
    }

    /// Adds one Envoy's scrape: its deltas since the last scrape of that Envoy.
    /// The first scrape of an Envoy only sets its baseline.
    pub fn add(&mut self, envoy: &str, scrape: &Scrape) {
        self.scrapes_ok += 1;
        self.malformed_lines += scrape.malformed_lines;
        let first_time = !self.last.contains_key(envoy);
        // A restart resets every counter, even one that has grown past its old value
        // by the next scrape: the uptime says so, counter by counter cannot.
        let restarted = match (scrape.uptime_s, self.last_uptime.get(envoy)) {
            (Some(now), Some(before)) => now < *before,
            _ => false,
        };
        if let Some(uptime) = scrape.uptime_s {
            self.last_uptime.insert(envoy.to_string(), uptime);
        }
        let mut last = self.last.remove(envoy).unwrap_or_default();
        if restarted {
            last.clear();
        }
        for (key, sample) in &scrape.series {
            if !first_time {
                let before = last.get(key).cloned().unwrap_or_default();
                let delta = sample.delta_since(&before);
                self.current()
                    .totals
                    .entry(key.clone())
                    .or_default()
                    .add(&delta);
                self.pass.entry(key.clone()).or_default().add(&delta);
            }
            last.insert(key.clone(), sample.clone());
        }
        self.last.insert(envoy.to_string(), last);
    }

    pub fn failed(&mut self) {
        self.scrapes_failed += 1;
    }

    /// Ends a collection pass over every Envoy, recording one cost batch.
    pub fn end_pass(&mut self, stable: &str, canary: &str) {
        let pass = std::mem::take(&mut self.pass);
        let get = |v: &str, c: Counter| {
            pass.get(&SeriesKey::compared(v))
                .map_or(0.0, |s| s.count(c))
        };
        let batch = Batch {
            stable_tasks: get(stable, Counter::TasksTotal),
            stable_cost: get(stable, Counter::CostMicros),
            canary_tasks: get(canary, Counter::TasksTotal),
            canary_cost: get(canary, Counter::CostMicros),
        };
        if batch.stable_tasks > 0.0 || batch.canary_tasks > 0.0 {
            self.batches.push(batch);
        }
    }

    /// A series over the whole window (every period).
    pub fn series(&self, key: &SeriesKey) -> Sample {
        let mut total = Sample::default();
        for period in &self.periods {
            if let Some(sample) = period.totals.get(key) {
                total.add(sample);
            }
        }
        total
    }

    /// A version's compared traffic over the whole window.
    pub fn version(&self, version: &str) -> Sample {
        self.series(&SeriesKey::compared(version))
    }

    /// Every series of a traffic class other than compared, by version, over the
    /// whole window.
    pub fn apart(&self) -> BTreeMap<SeriesKey, Sample> {
        let mut out: BTreeMap<SeriesKey, Sample> = BTreeMap::new();
        for period in &self.periods {
            for (key, sample) in &period.totals {
                if key.traffic != Traffic::Compared {
                    out.entry(key.clone()).or_default().add(sample);
                }
            }
        }
        out
    }

    /// Sets a series' counts in the current period (tests, simulations).
    pub fn insert(&mut self, key: SeriesKey, sample: Sample) {
        self.current().totals.insert(key, sample);
    }

    /// Everything a restarted controller needs to continue this window.
    pub fn snapshot(&self) -> Snapshot {
        let entries = |map: &HashMap<SeriesKey, Sample>| {
            let mut entries: Vec<SeriesEntry> = map
                .iter()
                .map(|(key, sample)| SeriesEntry {
                    traffic: key.traffic.name().to_string(),
                    version: key.version.clone(),
                    sample: sample.clone(),
                })
                .collect();
            entries.sort_by(|a, b| (&a.traffic, &a.version).cmp(&(&b.traffic, &b.version)));
            entries
        };
        Snapshot {
            started_ms: self.started_ms,
            sequence: self.sequence,
            periods: self
                .periods
                .iter()
                .map(|p| PeriodSnapshot {
                    started_ms: p.started_ms,
                    weight_bp: p.weight_bp,
                    series: entries(&p.totals),
                })
                .collect(),
            baselines: self
                .last
                .iter()
                .map(|(envoy, series)| BaselineSnapshot {
                    envoy: envoy.clone(),
                    uptime_s: self.last_uptime.get(envoy).copied(),
                    series: entries(series),
                })
                .collect(),
            batches: self.batches.clone(),
            scrapes_ok: self.scrapes_ok,
            scrapes_failed: self.scrapes_failed,
            malformed_lines: self.malformed_lines,
        }
    }

    /// The window a snapshot saved.
    pub fn restore(snapshot: Snapshot) -> Window {
        let map = |entries: Vec<SeriesEntry>| -> HashMap<SeriesKey, Sample> {
            entries
                .into_iter()
                .filter_map(|e| {
                    let traffic = Traffic::from_name(&e.traffic)?;
                    Some((SeriesKey::new(traffic, &e.version), e.sample))
                })
                .collect()
        };
        let mut last = HashMap::new();
        let mut last_uptime = HashMap::new();
        for b in snapshot.baselines {
            if let Some(uptime) = b.uptime_s {
                last_uptime.insert(b.envoy.clone(), uptime);
            }
            last.insert(b.envoy, map(b.series));
        }
        Window {
            started_ms: snapshot.started_ms,
            sequence: snapshot.sequence,
            periods: snapshot
                .periods
                .into_iter()
                .map(|p| Period {
                    started_ms: p.started_ms,
                    weight_bp: p.weight_bp,
                    totals: map(p.series),
                })
                .collect(),
            last,
            last_uptime,
            batches: snapshot.batches,
            scrapes_ok: snapshot.scrapes_ok,
            scrapes_failed: snapshot.scrapes_failed,
            malformed_lines: snapshot.malformed_lines,
            unavailable: None,
            pass: HashMap::new(),
        }
    }
}

/// A window as the store keeps it (JSON): its periods' totals and, per Envoy, the
/// values the next deltas are taken from, saved together so that they agree.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    pub started_ms: i64,
    pub sequence: u32,
    periods: Vec<PeriodSnapshot>,
    baselines: Vec<BaselineSnapshot>,
    batches: Vec<Batch>,
    scrapes_ok: u64,
    scrapes_failed: u64,
    malformed_lines: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct PeriodSnapshot {
    started_ms: i64,
    weight_bp: Option<u16>,
    series: Vec<SeriesEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct BaselineSnapshot {
    envoy: String,
    uptime_s: Option<f64>,
    series: Vec<SeriesEntry>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct SeriesEntry {
    /// `Traffic::name`: empty for compared traffic.
    traffic: String,
    version: String,
    sample: Sample,
}

/// A histogram in JSON: the `+Inf` bound, which JSON cannot carry, as `null`.
mod histogram_json {
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub fn serialize<S: Serializer>(buckets: &[(f64, f64)], s: S) -> Result<S::Ok, S::Error> {
        buckets
            .iter()
            .map(|(le, n)| (le.is_finite().then_some(*le), *n))
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(f64, f64)>, D::Error> {
        let buckets: Vec<(Option<f64>, f64)> = Vec::deserialize(d)?;
        Ok(buckets
            .into_iter()
            .map(|(le, n)| (le.unwrap_or(f64::INFINITY), n))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::evidence::envoy_admin::parse_prometheus;

    #[test]
    fn windows_add_deltas_and_survive_resets_and_gaps() {
        let scrape = |total: f64| {
            parse_prometheus(
                &format!(r#"policy_canary_rq_total{{target="t",policy_version="v2"}} {total}"#),
                "t",
            )
        };
        let mut w = Window::new(0);
        w.add("a", &scrape(100.0)); // baseline only
        w.add("a", &scrape(150.0)); // +50
        w.failed(); // Envoy b unreachable: nothing
        w.add("a", &scrape(20.0)); // restarted: +20
        w.add("b", &scrape(1_000.0)); // first sight of b: baseline
        w.add("b", &scrape(1_010.0)); // +10
        assert_eq!(w.version("v2").get("rq_total"), 80.0);
        assert_eq!((w.scrapes_ok, w.scrapes_failed), (5, 1));
        w.restart(5);
        assert_eq!(w.version("v2").get("rq_total"), 0.0);
        w.add("a", &scrape(25.0));
        assert_eq!(
            w.version("v2").get("rq_total"),
            5.0,
            "the baseline survives a stage change"
        );
    }

    /// An Envoy restarted between two scrapes whose counter has already grown past
    /// its old value: the uptime tells, and the new value counts whole.
    #[test]
    fn a_restart_is_told_by_the_uptime() {
        let scrape = |total: f64, uptime: f64| {
            parse_prometheus(
                &format!(
                    "envoy_server_uptime{{}} {uptime}\npolicy_canary_rq_total{{target=\"t\",policy_version=\"v2\"}} {total}\n"
                ),
                "t",
            )
        };
        assert_eq!(scrape(1.0, 42.0).uptime_s, Some(42.0));
        let mut w = Window::new(0);
        w.add("a", &scrape(100.0, 50.0)); // baseline
        w.add("a", &scrape(120.0, 51.0)); // +20
        w.add("a", &scrape(150.0, 3.0)); // restarted 3 s ago: +150, not +30
        assert_eq!(w.version("v2").get("rq_total"), 170.0);
    }
}
