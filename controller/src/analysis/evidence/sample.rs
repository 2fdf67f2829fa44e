//! One version's counts as a source reports them, and the deltas between them.

use policy_canary::replicate::{ReplicateCounter, Slot, REPLICATES};
use policy_canary::stats::Counter;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a replicate series' value goes in `Sample::replicates`: (replicate, slot
/// index). `None` for a replicate out of range or a counter the filter does not keep.
pub fn replicate_slot(replicate: &str, counter: &str) -> Option<(usize, usize)> {
    let r: usize = replicate.parse().ok()?;
    let slot = Slot::from_suffix(counter)?;
    (r < REPLICATES).then_some((r, slot.index()))
}

/// A replicate series' value, by its counter: a fixed slot, or a custom metric's
/// named counter (`custom_<name>_micros`, `…_reports`).
pub enum ReplicateValue {
    Slot(usize, usize),
    Named(usize, String),
}

impl ReplicateValue {
    pub fn of(replicate: &str, counter: &str) -> Option<ReplicateValue> {
        if let Some((r, index)) = replicate_slot(replicate, counter) {
            return Some(ReplicateValue::Slot(r, index));
        }
        let r: usize = replicate.parse().ok().filter(|r| *r < REPLICATES)?;
        policy_canary::custom::parse_suffix(counter)?;
        Some(ReplicateValue::Named(r, counter.to_string()))
    }

    /// Adds `value` to what `sample` holds there.
    pub fn add_to(self, sample: &mut Sample, value: f64) {
        match self {
            ReplicateValue::Slot(r, index) => {
                let before = sample.replicate(r, Slot::at(index));
                sample.set_replicate(r, index, before + value);
            }
            ReplicateValue::Named(r, name) => {
                let before = sample.named_replicate(r, &name);
                sample.set_named_replicate(r, &name, before + value);
            }
        }
    }
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
    /// Replicate counts of named counters (custom metrics, signals): `REPLICATES`
    /// values each.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub named: BTreeMap<String, Vec<f64>>,
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

    /// Replicate `r`'s count of a named counter, 0 when absent.
    pub fn named_replicate(&self, r: usize, name: &str) -> f64 {
        self.named
            .get(name)
            .and_then(|values| values.get(r))
            .copied()
            .unwrap_or(0.0)
    }

    /// Sets replicate `r`'s count of a named counter.
    pub fn set_named_replicate(&mut self, r: usize, name: &str, value: f64) {
        if r < REPLICATES {
            let values = self
                .named
                .entry(name.to_string())
                .or_insert_with(|| vec![0.0; REPLICATES]);
            values[r] = value;
        }
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
    pub(super) fn delta_since(&self, earlier: &Sample) -> Sample {
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
        let named = self
            .named
            .iter()
            .map(|(name, values)| {
                let before = earlier.named.get(name);
                let delta = values
                    .iter()
                    .enumerate()
                    .map(|(r, v)| {
                        increase(before.and_then(|b| b.get(r)).copied().unwrap_or(0.0), *v)
                    })
                    .collect();
                (name.clone(), delta)
            })
            .collect();
        Sample {
            counters,
            latency,
            replicates,
            named,
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
        for (name, values) in &other.named {
            let mine = self
                .named
                .entry(name.clone())
                .or_insert_with(|| vec![0.0; REPLICATES]);
            for (m, t) in mine.iter_mut().zip(values) {
                *m += t;
            }
        }
    }
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
