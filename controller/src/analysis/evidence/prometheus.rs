//! Evidence source: a Prometheus server (or anything with its query API: Thanos,
//! Mimir, VictoriaMetrics) that scrapes every Envoy. At each pass the controller
//! recomputes each active rollout's whole stage window from the stage start, so a
//! controller restart loses nothing and Envoys that come and go are all counted.
//!
//! Counts are exact, not extrapolated: `increase()` extrapolates to the window's
//! edges, so per series the controller takes the last sample in the window
//! (`last_over_time`) minus the last sample before it (the value at the stage
//! start); a series whose counter was reset in between (`resets() > 0`, an Envoy
//! restart) is summed sample by sample, a reset counting its new value whole, as
//! the Envoy admin source does. Cost batches for the cost gate's variance come from
//! `increase()` over `step`-long slices (`query_range`), where extrapolation does
//! not bias the estimate. Unreachable, erroring or lagging Prometheus: the window
//! is marked unavailable and the stage is held, never passed.

use super::{
    increase, traffic_of, Batch, Period, ReplicateValue, Sample, SeriesKey, Window,
    REPLICATE_SERIES,
};
use crate::analysis::judge::EvidenceJudge;
use crate::envoy::admin::{HealthChange, SourceHealth};
use crate::metrics::{EvidenceSource, Metrics};
use crate::store::RolloutRow;
use policy_canary::stats::{Counter, Traffic, LATENCY_SUFFIX};
use serde_json::Value;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Where the series are and what their labels are called.
#[derive(Debug, Clone)]
pub struct PrometheusOptions {
    /// Base URL, e.g. `http://prometheus:9090` (the API is under `/api/v1`).
    pub url: String,
    pub target_label: String,
    pub version_label: String,
    /// Length of the slices the cost batches are measured over.
    pub step: Duration,
    /// Newer samples than this must exist, else the source is lagging.
    pub max_lag: Duration,
}

/// Series names: the filter's stats as Envoy's `/stats/prometheus` shows them.
const PREFIX: &str = "policy_canary_";

pub struct Prometheus {
    options: PrometheusOptions,
    http: reqwest::Client,
}

/// A series' labels, without `__name__`.
type Labels = BTreeMap<String, String>;
/// One series of an instant vector: its labels and value.
type Series = (Labels, f64);
/// One series of a matrix: its labels and points by time (ms).
type Points = (Labels, BTreeMap<i64, f64>);

impl Prometheus {
    pub fn new(options: PrometheusOptions) -> Prometheus {
        Prometheus {
            options,
            http: reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .unwrap_or_default(),
        }
    }

    /// The rollout's stage window, from `started_ms` (the window's start) to
    /// `now_ms`, one period per constant canary weight (`weight_periods`), every
    /// traffic class of the target.
    pub async fn window(
        &self,
        row: &RolloutRow,
        started_ms: i64,
        now_ms: i64,
    ) -> Result<Window, String> {
        let now = now_ms as f64 / 1000.0;
        let start = started_ms as f64 / 1000.0;
        // The target's own series and its classes apart (`<target>.forced`, …);
        // target names hold no regex metacharacters (`check_name`).
        let classes: Vec<&str> = Traffic::ALL
            .iter()
            .map(|t| t.name())
            .filter(|n| !n.is_empty())
            .collect();
        let selector = format!(
            "{{{}=~\"{}(\\\\.({}))?\"}}",
            self.options.target_label,
            escape(&row.target),
            classes.join("|")
        );
        self.check_lag(&selector, now).await?;
        let range = (now_ms - started_ms).max(1);
        let restarts = self.restarts(&selector, range, now).await;
        let mut periods = Vec::new();
        let bounds = row.plan.weight_periods(row.state.stage, started_ms, now_ms);
        for (i, (from_ms, weight)) in bounds.iter().enumerate() {
            let to_ms = bounds.get(i + 1).map_or(now_ms, |(next, _)| *next);
            let mut period = Period::new(*from_ms, Some(weight.bp()));
            period.totals = self
                .increases_between(row, &selector, (*from_ms, to_ms), &restarts)
                .await?;
            periods.push(period);
        }
        let compared = format!(
            "{{{}=\"{}\"}}",
            self.options.target_label,
            escape(&row.target)
        );
        let batches = self.batches(row, &compared, start, now).await?;
        Ok(Window::from_periods(started_ms, periods, batches))
    }

    /// Every series' exact increase from `from_ms` to `to_ms`, by traffic class
    /// and version.
    async fn increases_between(
        &self,
        row: &RolloutRow,
        selector: &str,
        (from_ms, to_ms): (i64, i64),
        restarts: &HashMap<String, Vec<i64>>,
    ) -> Result<HashMap<SeriesKey, Sample>, String> {
        let (start, end) = (from_ms as f64 / 1000.0, to_ms as f64 / 1000.0);
        // The range (end − start, in ms) holds exactly the samples after `start`;
        // the value at `start` is the last sample before it.
        let range = (to_ms - from_ms).max(1);
        let key_of = |labels: &Labels| -> Option<SeriesKey> {
            let traffic = traffic_of(labels.get(&self.options.target_label)?, &row.target)?;
            Some(SeriesKey::new(
                traffic,
                labels.get(&self.options.version_label)?,
            ))
        };
        let mut totals: HashMap<SeriesKey, Sample> = HashMap::new();
        // The filter's own counters, and the custom metrics the plan's gates read.
        let custom = row.plan.gates.reported_metrics();
        let mut suffixes: Vec<String> = Counter::ALL
            .iter()
            .map(|c| c.suffix().to_string())
            .collect();
        for name in &custom {
            for field in policy_canary::custom::FIELDS {
                suffixes.push(policy_canary::custom::suffix(name, field));
            }
        }
        for suffix in suffixes {
            let metric = format!("{PREFIX}{suffix}");
            for (labels, delta) in self
                .increases(&metric, selector, range, (start, end), restarts)
                .await?
            {
                if let Some(key) = key_of(&labels) {
                    *totals
                        .entry(key)
                        .or_default()
                        .counters
                        .entry(suffix.clone())
                        .or_default() += delta;
                }
            }
        }
        // Session replicates: one series name, the counter in a label.
        let replicates = format!("{PREFIX}{REPLICATE_SERIES}");
        for (labels, delta) in self
            .increases(&replicates, selector, range, (start, end), restarts)
            .await?
        {
            let slot = labels
                .get("replicate")
                .zip(labels.get("counter"))
                .and_then(|(r, c)| ReplicateValue::of(r, c));
            if let (Some(key), Some(slot)) = (key_of(&labels), slot) {
                slot.add_to(totals.entry(key).or_default(), delta);
            }
        }
        let buckets = format!("{PREFIX}{LATENCY_SUFFIX}_bucket");
        let mut latency: HashMap<SeriesKey, BTreeMap<String, f64>> = HashMap::new();
        for (labels, delta) in self
            .increases(&buckets, selector, range, (start, end), restarts)
            .await?
        {
            if let (Some(key), Some(le)) = (key_of(&labels), labels.get("le")) {
                *latency
                    .entry(key)
                    .or_default()
                    .entry(le.clone())
                    .or_default() += delta;
            }
        }
        for (key, by_le) in latency {
            let sample = totals.entry(key).or_default();
            for (le, count) in by_le {
                let bound = if le == "+Inf" {
                    f64::INFINITY
                } else {
                    le.parse().map_err(|_| format!("bucket bound `{le}`"))?
                };
                sample.latency.push((bound, count));
            }
            sample.latency.sort_by(|a, b| a.0.total_cmp(&b.0));
        }
        Ok(totals)
    }

    /// When each Envoy (by `instance`) restarted within the last `range` ms, as a
    /// time just before the first scrape of the new process: its
    /// `envoy_server_uptime` went down, or any of its `policy_canary_rq_total`
    /// series did. A restarted Envoy's counters all start again from zero, and a
    /// small one (a session replicate's) often grows past its old value before the
    /// next scrape, showing no decrease of its own. Without either series (or on an
    /// error) nothing more is known and each series' decreases alone tell resets.
    async fn restarts(&self, selector: &str, range: i64, now: f64) -> HashMap<String, Vec<i64>> {
        let mut out: HashMap<String, Vec<i64>> = HashMap::new();
        let queries = [
            format!("envoy_server_uptime[{range}ms]"),
            format!("{PREFIX}{}{selector}[{range}ms]", Counter::RqTotal.suffix()),
        ];
        for query in queries {
            let Ok(data) = self.query_at(&query, now).await else {
                continue;
            };
            for (labels, points) in parse_matrix(&data).unwrap_or_default() {
                let Some(instance) = labels.get("instance") else {
                    continue;
                };
                let mut previous: Option<f64> = None;
                for (&at_ms, &value) in &points {
                    if previous.is_some_and(|p| value < p) {
                        let restarts = out.entry(instance.clone()).or_default();
                        // Between this scrape and the one before it; every series
                        // of one scrape carries the same time.
                        if !restarts.contains(&(at_ms - 1)) {
                            restarts.push(at_ms - 1);
                        }
                    }
                    previous = Some(value);
                }
            }
        }
        out
    }

    /// Each series' exact increase of `metric` over the last `range` milliseconds,
    /// from its value at `start`; across a restart of its Envoy (`restarts`), the
    /// value after it counts whole.
    async fn increases(
        &self,
        metric: &str,
        selector: &str,
        range: i64,
        (start, now): (f64, f64),
        restarts: &HashMap<String, Vec<i64>>,
    ) -> Result<Vec<Series>, String> {
        let series = format!("{metric}{selector}");
        let last = self
            .instant(&format!("last_over_time({series}[{range}ms])"), now)
            .await?;
        if last.is_empty() {
            return Ok(Vec::new());
        }
        let before: HashMap<Labels, f64> =
            self.instant(&series, start).await?.into_iter().collect();
        let resets: HashMap<Labels, f64> = self
            .instant(&format!("resets({series}[{range}ms])"), now)
            .await?
            .into_iter()
            .collect();
        let mut out = Vec::with_capacity(last.len());
        for (labels, value) in last {
            let baseline = before.get(&labels).copied().unwrap_or(0.0);
            let restarted = labels
                .get("instance")
                .and_then(|i| restarts.get(i))
                .map_or(&[][..], Vec::as_slice);
            let reset = resets.get(&labels).copied().unwrap_or(0.0) > 0.0
                || value < baseline
                || !restarted.is_empty();
            let delta = if reset {
                let samples = self
                    .timed_samples(&format!("{metric}{}[{range}ms]", exact(&labels)), now)
                    .await?;
                sum_across_restarts(baseline, &samples, restarted)
            } else {
                value - baseline
            };
            out.push((labels, delta));
        }
        Ok(out)
    }

    /// Cost batches: tasks and cost per `step` slice since the stage start, summed
    /// over the fleet, for the stable and the canary version.
    async fn batches(
        &self,
        row: &RolloutRow,
        selector: &str,
        start: f64,
        now: f64,
    ) -> Result<Vec<Batch>, String> {
        let step = self.options.step.as_secs().max(1);
        if now - start < step as f64 {
            return Ok(Vec::new());
        }
        let version = &self.options.version_label;
        let per_slice = |counter: Counter| {
            format!(
                "sum by ({version}) (increase({PREFIX}{}{selector}[{step}s]))",
                counter.suffix()
            )
        };
        let from = start + step as f64;
        let tasks = self
            .range(&per_slice(Counter::TasksTotal), from, now, step)
            .await?;
        let cost = self
            .range(&per_slice(Counter::CostMicros), from, now, step)
            .await?;
        let at = |m: &HashMap<String, BTreeMap<i64, f64>>, v: &str, t: i64| {
            m.get(v).and_then(|s| s.get(&t)).copied().unwrap_or(0.0)
        };
        let (stable, canary) = (&row.plan.stable.version, &row.plan.canary.version);
        let times: std::collections::BTreeSet<i64> = tasks
            .values()
            .flat_map(|points| points.keys().copied())
            .collect();
        Ok(times
            .into_iter()
            .map(|t| Batch {
                stable_tasks: at(&tasks, stable, t),
                stable_cost: at(&cost, stable, t),
                canary_tasks: at(&tasks, canary, t),
                canary_cost: at(&cost, canary, t),
            })
            .filter(|b| b.stable_tasks > 0.0 || b.canary_tasks > 0.0)
            .collect())
    }

    /// Fails when the newest scraped sample of the rollout's series is too old.
    async fn check_lag(&self, selector: &str, now: f64) -> Result<(), String> {
        let newest = self
            .instant(
                &format!(
                    "max(timestamp({PREFIX}{}{selector}))",
                    Counter::RqTotal.suffix()
                ),
                now,
            )
            .await?;
        if let Some((_, at)) = newest.first() {
            let lag = now - at;
            if lag > self.options.max_lag.as_secs_f64() {
                return Err(format!(
                    "Prometheus is lagging: its newest sample is {lag:.0}s old (more than {}s)",
                    self.options.max_lag.as_secs()
                ));
            }
        }
        Ok(())
    }

    async fn get(&self, path: &str, params: &[(&str, String)]) -> Result<Value, String> {
        let url = format!("{}{path}", self.options.url.trim_end_matches('/'));
        let response = self
            .http
            .get(&url)
            .query(params)
            .send()
            .await
            .map_err(|e| format!("cannot reach Prometheus at {url}: {e}"))?;
        let status = response.status();
        let body: Value = response
            .json()
            .await
            .map_err(|e| format!("Prometheus answered {status} with no JSON: {e}"))?;
        if body["status"] != "success" {
            return Err(format!(
                "Prometheus answered {status}: {}",
                body["error"].as_str().unwrap_or("no error message")
            ));
        }
        Ok(body["data"].clone())
    }

    /// The data of an instant query at `time`.
    async fn query_at(&self, query: &str, time: f64) -> Result<Value, String> {
        self.get(
            "/api/v1/query",
            &[("query", query.to_string()), ("time", format!("{time:.3}"))],
        )
        .await
    }

    /// An instant query answered with a vector.
    async fn instant(&self, query: &str, time: f64) -> Result<Vec<Series>, String> {
        parse_vector(&self.query_at(query, time).await?)
    }

    /// An instant query of a range selector: the first series' raw samples, (ms, value).
    async fn timed_samples(&self, query: &str, time: f64) -> Result<Vec<(i64, f64)>, String> {
        let matrix = parse_matrix(&self.query_at(query, time).await?)?;
        Ok(matrix
            .into_iter()
            .next()
            .map(|(_, points)| points.into_iter().collect())
            .unwrap_or_default())
    }

    /// A range query, by the version label: value per (whole-second) time.
    async fn range(
        &self,
        query: &str,
        start: f64,
        end: f64,
        step: u64,
    ) -> Result<HashMap<String, BTreeMap<i64, f64>>, String> {
        let data = self
            .get(
                "/api/v1/query_range",
                &[
                    ("query", query.to_string()),
                    ("start", format!("{start:.3}")),
                    ("end", format!("{end:.3}")),
                    ("step", format!("{step}s")),
                ],
            )
            .await?;
        Ok(parse_matrix(&data)?
            .into_iter()
            .filter_map(|(labels, points)| {
                Some((labels.get(&self.options.version_label)?.clone(), points))
            })
            .collect())
    }
}

/// Label values inside PromQL double quotes.
fn escape(value: &str) -> String {
    value.replace('\\', "\\\\").replace('"', "\\\"")
}

/// A selector matching exactly these labels.
fn exact(labels: &Labels) -> String {
    let matchers: Vec<String> = labels
        .iter()
        .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
        .collect();
    format!("{{{}}}", matchers.join(","))
}

/// The increase of a counter read as `samples` after `baseline`: every step up
/// counts, a step down (a reset) counts the new value whole.
pub fn sum_of_steps(baseline: f64, samples: &[f64]) -> f64 {
    let mut previous = baseline;
    let mut total = 0.0;
    for &value in samples {
        total += increase(previous, value);
        previous = value;
    }
    total
}

/// `sum_of_steps` over timed samples (ms, value) where the counter's process also
/// restarted at `restarts` (ms): a sample after a restart that no sample saw yet
/// counts whole, even when it is above the value before.
pub fn sum_across_restarts(baseline: f64, samples: &[(i64, f64)], restarts: &[i64]) -> f64 {
    let mut previous = baseline;
    let mut previous_at = i64::MIN;
    let mut total = 0.0;
    for &(at, value) in samples {
        let restarted = restarts.iter().any(|r| *r > previous_at && *r <= at);
        total += if restarted {
            value
        } else {
            increase(previous, value)
        };
        previous = value;
        previous_at = at;
    }
    total
}

fn labels_of(metric: &Value) -> Labels {
    metric
        .as_object()
        .into_iter()
        .flatten()
        .filter(|(k, _)| k.as_str() != "__name__")
        .filter_map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
        .collect()
}

fn number(point: &Value) -> Result<(f64, f64), String> {
    let time = point[0].as_f64().ok_or("a sample without a time")?;
    let value: f64 = point[1]
        .as_str()
        .and_then(|v| v.parse().ok())
        .ok_or("a sample without a number")?;
    Ok((time, value))
}

/// `{"resultType": "vector", "result": [{"metric": {...}, "value": [t, "v"]}]}`.
pub fn parse_vector(data: &Value) -> Result<Vec<Series>, String> {
    if data["resultType"] != "vector" {
        return Err(format!("expected a vector, got {}", data["resultType"]));
    }
    data["result"]
        .as_array()
        .ok_or("a vector without results")?
        .iter()
        .map(|s| {
            let (_, value) = number(&s["value"])?;
            Ok((labels_of(&s["metric"]), value))
        })
        .filter(|r: &Result<Series, String>| r.as_ref().map_or(true, |(_, v)| v.is_finite()))
        .collect()
}

/// `{"resultType": "matrix", "result": [{"metric": {...}, "values": [[t, "v"], ...]}]}`,
/// each series' points by whole millisecond time.
pub fn parse_matrix(data: &Value) -> Result<Vec<Points>, String> {
    if data["resultType"] != "matrix" {
        return Err(format!("expected a matrix, got {}", data["resultType"]));
    }
    data["result"]
        .as_array()
        .ok_or("a matrix without results")?
        .iter()
        .map(|s| {
            let mut points = BTreeMap::new();
            for point in s["values"].as_array().ok_or("a series without values")? {
                let (time, value) = number(point)?;
                if value.is_finite() {
                    points.insert((time * 1000.0).round() as i64, value);
                }
            }
            Ok((labels_of(&s["metric"]), points))
        })
        .collect()
}

/// Recomputes every active rollout's window from Prometheus, every `interval`.
pub async fn collect<E: Send + 'static>(
    active_rollouts: impl Fn() -> Result<Vec<RolloutRow>, E> + Clone + Send + Sync + 'static,
    judge: EvidenceJudge,
    prometheus: Prometheus,
    interval: Duration,
    metrics: Arc<Metrics>,
) {
    let mut health = SourceHealth::default();
    let source = prometheus.options.url.clone();
    loop {
        let rows = judge.active(active_rollouts.clone()).await;
        for row in &rows {
            let now = crate::units::now_ms();
            // The stage's window as the judge keeps it (its start survives
            // restarts and resumes), recomputed whole from Prometheus.
            let (started_ms, sequence) =
                judge.with(row, |t| (t.window.started_ms, t.window.sequence));
            let result = prometheus
                .window(row, started_ms, now)
                .await
                .map(|mut window| {
                    window.sequence = sequence;
                    window
                });
            metrics.evidence_read(EvidenceSource::Prometheus, result.is_ok());
            let window = match result {
                Ok(window) => {
                    if health.observe(&source, true) == Some(HealthChange::Recovered) {
                        tracing::info!(prometheus = %source, "evidence from Prometheus again");
                    }
                    window
                }
                Err(reason) => {
                    if health.observe(&source, false) == Some(HealthChange::Failing) {
                        tracing::warn!(prometheus = %source, %reason, "no evidence from Prometheus: stages are held");
                    }
                    let mut window = Window::unavailable(started_ms, reason);
                    window.sequence = sequence;
                    window
                }
            };
            judge.with(row, |t| t.window = window);
        }
        tokio::time::sleep(interval).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn steps_count_resets_whole() {
        assert_eq!(sum_of_steps(10.0, &[12.0, 15.0]), 5.0);
        assert_eq!(sum_of_steps(10.0, &[12.0, 3.0, 7.0]), 2.0 + 3.0 + 4.0);
        assert_eq!(sum_of_steps(0.0, &[]), 0.0);
        // A restart at 1500 ms that the values cannot show (3 → 5): 5 counts whole.
        let samples = [(1_000, 3.0), (2_000, 5.0), (3_000, 6.0)];
        assert_eq!(
            sum_across_restarts(1.0, &samples, &[1_500]),
            2.0 + 5.0 + 1.0
        );
        assert_eq!(sum_across_restarts(1.0, &samples, &[]), 2.0 + 2.0 + 1.0);
    }

    #[test]
    fn reads_vectors_and_matrices_and_refuses_other_shapes() {
        let vector = json!({"resultType": "vector", "result": [
            {"metric": {"__name__": "x", "policy_version": "v2"}, "value": [1.5, "42"]},
            {"metric": {"policy_version": "v3"}, "value": [1.5, "NaN"]}]});
        let series = parse_vector(&vector).unwrap();
        assert_eq!(series.len(), 1);
        assert_eq!(series[0].0["policy_version"], "v2");
        assert!(!series[0].0.contains_key("__name__"));
        assert_eq!(series[0].1, 42.0);
        let matrix = json!({"resultType": "matrix", "result": [
            {"metric": {"policy_version": "v2"}, "values": [[1.0, "1"], [2.0, "3"]]}]});
        let parsed = parse_matrix(&matrix).unwrap();
        assert_eq!(
            parsed[0].1.values().copied().collect::<Vec<_>>(),
            vec![1.0, 3.0]
        );
        for bad in [
            json!({"resultType": "scalar", "result": [1, "2"]}),
            json!({"resultType": "vector", "result": [{"metric": {}, "value": [1, "x"]}]}),
            json!({"resultType": "vector"}),
        ] {
            assert!(parse_vector(&bad).is_err(), "{bad}");
        }
        assert!(
            parse_matrix(&json!({"resultType": "matrix", "result": [{"metric": {}}]})).is_err()
        );
    }

    #[test]
    fn selectors_escape_label_values() {
        let labels = BTreeMap::from([
            ("instance".to_string(), "a\"b".to_string()),
            ("le".to_string(), "+Inf".to_string()),
        ]);
        assert_eq!(exact(&labels), r#"{instance="a\"b",le="+Inf"}"#);
    }
}
