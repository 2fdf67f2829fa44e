//! What the plugin needs from its host, as a small trait with the project's own
//! types: the wasm glue (`filter`) implements it over the proxy-wasm imports it
//! declares itself (every status returned, never unwrapped); tests use `MockHost`.

use crate::wire::HeaderMap;
use std::time::Duration;

/// A header map of the current stream or of an HTTP call's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MapKind {
    RequestHeaders,
    ResponseHeaders,
    ResponseTrailers,
    HttpCallResponseHeaders,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogLevel {
    Info,
    Warn,
    Error,
}

/// A host call that did not succeed (callers log what they were doing, once).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HostError;

pub type HostResult<T> = Result<T, HostError>;

pub trait Host {
    fn map(&self, map: MapKind) -> HostResult<HeaderMap<'_>>;
    /// Adds a header (beside any of the same name: callers remove those first).
    fn add_map_value(&self, map: MapKind, name: &str, value: &[u8]) -> HostResult<()>;
    fn remove_map_value(&self, map: MapKind, name: &str) -> HostResult<()>;
    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>>;
    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32>;
    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()>;
    fn record_metric(&self, id: u32, value: u64) -> HostResult<()>;
    /// A counter's or gauge's value, Envoy-wide (every worker adds to one stat).
    fn get_metric(&self, id: u32) -> HostResult<u64>;
    /// The value under `key` and its CAS.
    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)>;
    /// Writes `value` under `key` if its CAS is still `cas` (`None` or 0: unconditionally).
    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()>;
    /// Starts an HTTP call (`body` may be empty); its answer arrives as
    /// `on_http_call_response(token, …)`.
    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> HostResult<u32>;
    /// The body of the HTTP call being answered (at most `size` bytes).
    fn http_call_body(&self, size: usize) -> HostResult<Vec<u8>>;
    /// Nanoseconds since the epoch (0 when the host cannot tell).
    fn now_ns(&self) -> u64;
    /// Milliseconds since the epoch (0 when the host cannot tell).
    fn now_ms(&self) -> u64 {
        self.now_ns() / 1_000_000
    }
    fn log(&self, level: LogLevel, message: &str);
    /// An environment variable the VM was given (Envoy's `vm_config.environment_variables`).
    fn env(&self, name: &str) -> Option<String>;
}

/// Shared data kept in memory (a host without Envoy's own: the native module,
/// tests): each key's value and its CAS.
pub type SharedData = std::collections::BTreeMap<String, (Vec<u8>, u32)>;

/// The value under `key` and its CAS (`Host::shared_data`).
pub fn shared_get(data: &SharedData, key: &str) -> (Option<Vec<u8>>, Option<u32>) {
    match data.get(key) {
        Some((value, cas)) => (Some(value.clone()), Some(*cas)),
        None => (None, None),
    }
}

/// Writes under proxy-wasm's rules (`Host::set_shared_data`): a CAS other than 0
/// must be the key's current one; every write moves the key's CAS on.
pub fn shared_set(
    data: &mut SharedData,
    key: &str,
    value: &[u8],
    cas: Option<u32>,
) -> HostResult<()> {
    let current = data.get(key).map(|(_, cas)| *cas);
    if cas.is_some_and(|expected| expected != 0 && current != Some(expected)) {
        return Err(HostError);
    }
    let next = current.map_or(1, |cas| cas.wrapping_add(1).max(1));
    data.insert(key.to_string(), (value.to_vec(), next));
    Ok(())
}

/// An in-memory host for tests: maps, properties, metrics, shared data and log
/// lines, with chosen calls made to fail.
#[cfg(test)]
pub mod mock {
    use super::*;
    use std::cell::RefCell;
    use std::collections::{HashMap, HashSet};

    pub type Call = (String, Vec<(String, String)>);

    /// A header as the in-memory host keeps it.
    pub type Header = (String, Vec<u8>);

    #[derive(Default)]
    pub struct MockHost {
        pub maps: RefCell<HashMap<MapKind, Vec<Header>>>,
        pub properties: RefCell<HashMap<String, Vec<u8>>>,
        /// Metric names by id, and their values (counters and gauges add or set,
        /// histograms keep every sample).
        pub metrics: RefCell<Vec<(String, MetricKind, Vec<u64>)>>,
        pub shared: RefCell<SharedData>,
        /// HTTP calls dispatched: cluster and headers.
        pub calls: RefCell<Vec<Call>>,
        /// Their bodies, in the same order.
        pub call_bodies: RefCell<Vec<Vec<u8>>>,
        pub call_body: RefCell<Vec<u8>>,
        pub logs: RefCell<Vec<(LogLevel, String)>>,
        pub now: std::cell::Cell<u64>,
        readings: std::cell::Cell<u64>,
        pub env: RefCell<HashMap<String, String>>,
        /// Names of the calls that fail (`map`, `add_map_value`, `remove_map_value`,
        /// `property`, `define_metric`, `increment_metric`, `record_metric`,
        /// `get_metric`, `shared_data`, `set_shared_data`, `dispatch_http_call`, `http_call_body`).
        pub failing: RefCell<HashSet<&'static str>>,
    }

    impl MockHost {
        pub fn with_map(self, map: MapKind, headers: &[(&str, &[u8])]) -> Self {
            self.maps.borrow_mut().insert(
                map,
                headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_vec()))
                    .collect(),
            );
            self
        }

        pub fn with_property(self, path: &[&str], value: &[u8]) -> Self {
            self.properties
                .borrow_mut()
                .insert(path.join("\0"), value.to_vec());
            self
        }

        pub fn failing(self, call: &'static str) -> Self {
            self.failing.borrow_mut().insert(call);
            self
        }

        fn check(&self, call: &'static str) -> HostResult<()> {
            if self.failing.borrow().contains(call) {
                Err(HostError)
            } else {
                Ok(())
            }
        }

        /// A header's value in `map`, if present.
        pub fn header(&self, map: MapKind, name: &str) -> Option<Vec<u8>> {
            self.maps
                .borrow()
                .get(&map)?
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.clone())
        }

        /// The total of a counter (or the last value of a gauge), by name.
        pub fn metric(&self, name: &str) -> Option<u64> {
            self.metrics
                .borrow()
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, kind, values)| match kind {
                    MetricKind::Gauge => values.last().copied().unwrap_or(0),
                    _ => values.iter().sum(),
                })
        }

        /// Every metric defined so far.
        pub fn metric_names(&self) -> Vec<String> {
            self.metrics
                .borrow()
                .iter()
                .map(|(n, _, _)| n.clone())
                .collect()
        }

        pub fn histogram(&self, name: &str) -> Vec<u64> {
            self.metrics
                .borrow()
                .iter()
                .find(|(n, _, _)| n == name)
                .map(|(_, _, v)| v.clone())
                .unwrap_or_default()
        }
    }

    impl Host for MockHost {
        fn map(&self, map: MapKind) -> HostResult<HeaderMap<'_>> {
            self.check("map")?;
            Ok(self
                .maps
                .borrow()
                .get(&map)
                .map_or_else(HeaderMap::default, |pairs| HeaderMap::from_pairs(pairs)))
        }

        fn add_map_value(&self, map: MapKind, name: &str, value: &[u8]) -> HostResult<()> {
            self.check("add_map_value")?;
            let mut maps = self.maps.borrow_mut();
            maps.entry(map)
                .or_default()
                .push((name.to_string(), value.to_vec()));
            Ok(())
        }

        fn remove_map_value(&self, map: MapKind, name: &str) -> HostResult<()> {
            self.check("remove_map_value")?;
            if let Some(headers) = self.maps.borrow_mut().get_mut(&map) {
                headers.retain(|(n, _)| n != name);
            }
            Ok(())
        }

        fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
            self.check("property")?;
            Ok(self.properties.borrow().get(&path.join("\0")).cloned())
        }

        fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
            self.check("define_metric")?;
            let mut metrics = self.metrics.borrow_mut();
            if let Some(id) = metrics.iter().position(|(n, _, _)| n == name) {
                return Ok(id as u32);
            }
            metrics.push((name.to_string(), kind, Vec::new()));
            Ok((metrics.len() - 1) as u32)
        }

        fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
            self.check("increment_metric")?;
            let mut metrics = self.metrics.borrow_mut();
            let metric = metrics.get_mut(id as usize).ok_or(HostError)?;
            metric.2.push(by as u64);
            Ok(())
        }

        fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
            self.check("record_metric")?;
            let mut metrics = self.metrics.borrow_mut();
            let metric = metrics.get_mut(id as usize).ok_or(HostError)?;
            metric.2.push(value);
            Ok(())
        }

        fn get_metric(&self, id: u32) -> HostResult<u64> {
            self.check("get_metric")?;
            let metrics = self.metrics.borrow();
            let (_, kind, values) = metrics.get(id as usize).ok_or(HostError)?;
            match kind {
                MetricKind::Counter => Ok(values.iter().sum()),
                MetricKind::Gauge => Ok(values.last().copied().unwrap_or(0)),
                MetricKind::Histogram => Err(HostError),
            }
        }

        fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
            self.check("shared_data")?;
            Ok(shared_get(&self.shared.borrow(), key))
        }

        fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
            self.check("set_shared_data")?;
            shared_set(&mut self.shared.borrow_mut(), key, value, cas)
        }

        fn dispatch_http_call(
            &self,
            cluster: &str,
            headers: &[(&str, &str)],
            body: &[u8],
            _timeout: Duration,
        ) -> HostResult<u32> {
            self.check("dispatch_http_call")?;
            self.call_bodies.borrow_mut().push(body.to_vec());
            let mut calls = self.calls.borrow_mut();
            calls.push((
                cluster.to_string(),
                headers
                    .iter()
                    .map(|(n, v)| (n.to_string(), v.to_string()))
                    .collect(),
            ));
            Ok(calls.len() as u32)
        }

        fn http_call_body(&self, size: usize) -> HostResult<Vec<u8>> {
            self.check("http_call_body")?;
            let body = self.call_body.borrow();
            Ok(body[..size.min(body.len())].to_vec())
        }

        /// The mock's clock (`now`, in ms) plus a count of the readings, so that
        /// two roots configured at the same millisecond still differ.
        fn now_ns(&self) -> u64 {
            let readings = self.readings.get() + 1;
            self.readings.set(readings);
            self.now.get() * 1_000_000 + readings
        }

        fn log(&self, level: LogLevel, message: &str) {
            self.logs.borrow_mut().push((level, message.to_string()));
        }

        fn env(&self, name: &str) -> Option<String> {
            self.env.borrow().get(name).cloned()
        }
    }
}
