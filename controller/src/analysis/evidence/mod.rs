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
mod sample;
pub mod sync;

pub use sample::{increase, replicate_slot, ReplicateRows, ReplicateValue, Sample};

use policy_canary::stats::{Counter, Traffic};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// The series name (after `policy_canary_`) of the session replicates' counts, with
/// labels `replicate` and `counter` (`stats_tags` of the shipped Envoy configs).
pub const REPLICATE_SERIES: &str = "replicate";

/// The counters a signal gate's evidence is kept under (`Window::signals`).
pub const SIGNAL_SUM: &str = "signal_sum";
pub const SIGNAL_COUNT: &str = "signal_count";

/// Both versions' compared traffic in one constant-weight period.
#[derive(Debug, Clone, Default)]
pub struct Stratum {
    pub stable: Sample,
    pub canary: Sample,
}

/// One signal's evidence, period by period (`Window::periods`): every signal so
/// far (a breach needs no wait) and only those of answers older than the gate's
/// delay (a pass must).
#[derive(Debug, Clone, Default)]
pub struct SignalStrata {
    pub all: Vec<Stratum>,
    pub matured: Vec<Stratum>,
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
    /// The Envoy process that reported (the sync channel): another one than at
    /// the last report means a restart.
    pub instance: Option<Instance>,
}

/// An Envoy process as its evidence reports name it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Instance {
    pub id: String,
    /// When it began (ms since the epoch, the Envoy's clock).
    pub started_ms: i64,
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
    /// Each Envoy's process instance at its last report (the sync channel).
    last_instance: HashMap<String, String>,
    pub batches: Vec<Batch>,
    pub scrapes_ok: u64,
    pub scrapes_failed: u64,
    pub malformed_lines: u64,
    /// Why there is no trustworthy evidence now (the source is down, erroring or
    /// lagging): the stage is held, never passed.
    pub unavailable: Option<String>,
    pass: HashMap<SeriesKey, Sample>,
    /// The signal gates' evidence by signal name, from the controller's store
    /// (set by the judge before each analysis; not saved: the store has it).
    pub signals: BTreeMap<String, SignalStrata>,
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
        let last_instance = std::mem::take(&mut self.last_instance);
        *self = Window::new(started_ms);
        self.last = last;
        self.last_uptime = last_uptime;
        self.last_instance = last_instance;
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
            Some(_) => self
                .periods
                .push(Period::new(at_ms.max(self.started_ms), Some(weight_bp))),
            // The first period starts with the window.
            None => self
                .periods
                .push(Period::new(self.started_ms, Some(weight_bp))),
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
    /// The first scrape of an Envoy only sets its baseline, unless it names an
    /// Envoy process that began inside the window (all it counted is the window's).
    pub fn add(&mut self, envoy: &str, scrape: &Scrape) {
        self.scrapes_ok += 1;
        self.malformed_lines += scrape.malformed_lines;
        let first_time = !self.last.contains_key(envoy);
        // A restart resets every counter, even one that has grown past its old value
        // by the next scrape: the uptime (or the process instance) says so, counter
        // by counter cannot.
        let restarted = match (scrape.uptime_s, self.last_uptime.get(envoy)) {
            (Some(now), Some(before)) => now < *before,
            _ => false,
        } || match (&scrape.instance, self.last_instance.get(envoy)) {
            (Some(now), Some(before)) => now.id != *before,
            _ => false,
        };
        let began_inside = scrape
            .instance
            .as_ref()
            .is_some_and(|i| i.started_ms >= self.started_ms);
        if let Some(uptime) = scrape.uptime_s {
            self.last_uptime.insert(envoy.to_string(), uptime);
        }
        if let Some(instance) = &scrape.instance {
            self.last_instance
                .insert(envoy.to_string(), instance.id.clone());
        }
        let mut last = self.last.remove(envoy).unwrap_or_default();
        if restarted {
            last.clear();
        }
        let counts = !first_time || began_inside;
        for (key, sample) in &scrape.series {
            if counts {
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

    /// The Envoys this window has counts from (or a baseline for).
    pub fn envoys(&self) -> impl Iterator<Item = &str> {
        self.last.keys().map(String::as_str)
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

    /// The counts behind the analysis, every series over the whole window.
    pub fn counts(&self) -> WindowCounts {
        let mut totals: BTreeMap<SeriesKey, Sample> = BTreeMap::new();
        for period in &self.periods {
            for (key, sample) in &period.totals {
                totals.entry(key.clone()).or_default().add(sample);
            }
        }
        WindowCounts {
            started_ms: self.started_ms,
            sequence: self.sequence,
            periods: self.periods.len(),
            envoys: self.last.len(),
            unavailable: self.unavailable.clone(),
            series: totals
                .into_iter()
                .map(|(key, sample)| SeriesCounts {
                    traffic: match key.traffic {
                        Traffic::Compared => "compared",
                        other => other.name(),
                    },
                    version: key.version,
                    sample,
                })
                .collect(),
        }
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
                    instance: self.last_instance.get(envoy).cloned(),
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
        let mut last_instance = HashMap::new();
        for b in snapshot.baselines {
            if let Some(uptime) = b.uptime_s {
                last_uptime.insert(b.envoy.clone(), uptime);
            }
            if let Some(instance) = b.instance {
                last_instance.insert(b.envoy.clone(), instance);
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
            last_instance,
            batches: snapshot.batches,
            scrapes_ok: snapshot.scrapes_ok,
            scrapes_failed: snapshot.scrapes_failed,
            malformed_lines: snapshot.malformed_lines,
            unavailable: None,
            pass: HashMap::new(),
            signals: BTreeMap::new(),
        }
    }
}

/// `GET /v1/rollouts/{id}/evidence`: what a stage's window holds.
#[derive(Debug, Clone, Serialize)]
pub struct WindowCounts {
    pub started_ms: i64,
    pub sequence: u32,
    /// Constant-weight periods.
    pub periods: usize,
    /// Envoys with counts (or a baseline) in the window (per Envoy sources).
    pub envoys: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unavailable: Option<String>,
    pub series: Vec<SeriesCounts>,
}

/// One series' counts over a window.
#[derive(Debug, Clone, Serialize)]
pub struct SeriesCounts {
    /// `compared`, `forced`, `segment` or `sessionless`.
    pub traffic: &'static str,
    pub version: String,
    #[serde(flatten)]
    pub sample: Sample,
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
    #[serde(default, skip_serializing_if = "Option::is_none")]
    instance: Option<String>,
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
