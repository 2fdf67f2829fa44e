//! proxy-wasm glue (wasm32 only): reads headers and properties through
//! `proxy_wasm::hostcalls` (which return `Result`, unlike the trait helpers that
//! unwrap), hands them to the pure core and applies what it decides.

use crate::cohort::Cohort;
use crate::config::{PluginConfig, RouteTable};
use crate::routing::{route_request, served_cohort, Decision, Header, HeaderEdit};
use crate::stats::{stat_name, Counter, PendingCounts, StreamRecord, LATENCY_SUFFIX};
use crate::telemetry::is_telemetry_header;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Counts live in wasm memory per worker and reach Envoy on this tick.
const FLUSH_PERIOD: Duration = Duration::from_millis(250);

proxy_wasm::main! {{
    // Also installs a panic hook that logs the panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(FilterRoot::default()));
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// What a worker's root context shares with its streams. A worker VM runs on one
/// thread, so `Rc` and `RefCell` suffice.
struct Worker {
    config: PluginConfig,
    table: Rc<RouteTable>,
    pending: RefCell<PendingCounts>,
    metrics: RefCell<MetricIds>,
    rng: Cell<u64>,
    host_error_logged: Cell<bool>,
}

impl Worker {
    /// xorshift64*: buckets for sessionless requests under `missing: random`.
    fn random_bucket(&self) -> u16 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 32) as u16
    }

    /// Logs the first failed host call of this worker; later ones are only dropped.
    fn host_error(&self, what: &str) {
        if !self.host_error_logged.replace(true) {
            log(
                LogLevel::Warn,
                &format!("policy_canary: host call failed: {what} (further failures not logged)"),
            );
        }
    }

    fn flush(&self) {
        let mut metrics = self.metrics.borrow_mut();
        let target = &self.config.target;
        self.pending.borrow_mut().flush(|version, counter, value| {
            let Some(id) = metrics.counter(target, version, counter) else {
                return 0;
            };
            let amount = value.min(i64::MAX as u64);
            match hostcalls::increment_metric(id, amount as i64) {
                Ok(()) => amount,
                Err(_) => 0,
            }
        });
    }
}

/// Envoy metric ids, defined the first time a version needs them.
#[derive(Default)]
struct MetricIds {
    /// Few versions per worker: a short list beats hashing on every request.
    versions: Vec<(String, VersionMetrics)>,
}

#[derive(Default)]
struct VersionMetrics {
    counters: [Option<u32>; Counter::ALL.len()],
    latency: Option<u32>,
}

impl MetricIds {
    fn entry(&mut self, version: &str) -> &mut VersionMetrics {
        let index = match self.versions.iter().position(|(v, _)| v == version) {
            Some(index) => index,
            None => {
                self.versions
                    .push((version.to_string(), VersionMetrics::default()));
                self.versions.len() - 1
            }
        };
        &mut self.versions[index].1
    }

    fn counter(&mut self, target: &str, version: &str, counter: Counter) -> Option<u32> {
        let slot = &mut self.entry(version).counters[counter as usize];
        define(slot, MetricType::Counter, target, version, counter.suffix())
    }

    fn latency(&mut self, target: &str, version: &str) -> Option<u32> {
        let slot = &mut self.entry(version).latency;
        define(slot, MetricType::Histogram, target, version, LATENCY_SUFFIX)
    }
}

fn define(
    slot: &mut Option<u32>,
    kind: MetricType,
    target: &str,
    version: &str,
    suffix: &str,
) -> Option<u32> {
    if slot.is_none() {
        *slot = hostcalls::define_metric(kind, &stat_name(target, version, suffix)).ok();
    }
    *slot
}

#[derive(Default)]
struct FilterRoot {
    worker: Option<Rc<Worker>>,
}

impl Context for FilterRoot {}

impl RootContext for FilterRoot {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        let bytes = match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
            Ok(bytes) => bytes.unwrap_or_default(),
            Err(status) => {
                log(
                    LogLevel::Error,
                    &format!("policy_canary: cannot read the plugin configuration: {status:?}"),
                );
                return false;
            }
        };
        let config = match PluginConfig::from_json(&bytes) {
            Ok(config) => config,
            Err(error) => {
                log(
                    LogLevel::Error,
                    &format!("policy_canary: invalid plugin configuration: {error}"),
                );
                return false;
            }
        };
        let seed = hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64);
        let table = Rc::new(config.route.clone());
        self.worker = Some(Rc::new(Worker {
            config,
            table,
            pending: RefCell::default(),
            metrics: RefCell::default(),
            rng: Cell::new(seed | 1),
            host_error_logged: Cell::new(false),
        }));
        if hostcalls::set_tick_period(FLUSH_PERIOD).is_err() {
            log(
                LogLevel::Error,
                "policy_canary: cannot set the tick period; stats would never flush",
            );
            return false;
        }
        true
    }

    fn on_tick(&mut self) {
        if let Some(worker) = &self.worker {
            worker.flush();
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so an unconfigured root hands out a pass-through stream.
        Some(Box::new(PolicyStream {
            worker: self.worker.clone(),
            table: self.worker.as_ref().map(|w| Rc::clone(&w.table)),
            decision: None,
            record: StreamRecord::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PolicyStream {
    worker: Option<Rc<Worker>>,
    /// The table this request was routed by, kept for its end even if the table changes.
    table: Option<Rc<RouteTable>>,
    decision: Option<Decision>,
    record: StreamRecord,
}

impl PolicyStream {
    /// Reads telemetry from a response header or trailer map and strips it if configured.
    fn read_telemetry(&mut self, worker: &Worker, map: MapType, headers: Vec<Header>) {
        let telemetry = &worker.config.telemetry;
        self.record.report.read(&telemetry.headers, &headers);
        if !telemetry.strip {
            return;
        }
        let is_telemetry = |(name, _): &Header| is_telemetry_header(&telemetry.headers, name);
        let present = headers.iter().filter(|h| is_telemetry(h)).count();
        let result = match present {
            0 => Ok(()),
            // One host call either way; removing touches less of Envoy's map.
            1 => match headers.iter().find(|h| is_telemetry(h)) {
                Some((name, _)) => hostcalls::remove_map_value(map, name),
                None => Ok(()),
            },
            // Replacing the map once beats one host call per header.
            _ => {
                let kept: Vec<(&str, &[u8])> = headers
                    .iter()
                    .filter(|h| !is_telemetry(h))
                    .map(|(name, value)| (name.as_str(), value.as_slice()))
                    .collect();
                hostcalls::set_map_bytes(map, kept)
            }
        };
        if result.is_err() {
            worker.host_error("strip telemetry");
        }
    }
}

impl Context for PolicyStream {}

impl HttpContext for PolicyStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let (Some(worker), Some(table)) = (&self.worker, &self.table) else {
            return Action::Continue;
        };
        let headers = match hostcalls::get_map_bytes(MapType::HttpRequestHeaders) {
            Ok(headers) => headers,
            Err(_) => {
                worker.host_error("read request headers");
                Vec::new()
            }
        };
        let (decision, edits) =
            route_request(&worker.config, table, &headers, || worker.random_bucket());
        for edit in edits {
            let result = match &edit {
                HeaderEdit::Remove(name) => {
                    hostcalls::remove_map_value(MapType::HttpRequestHeaders, name)
                }
                HeaderEdit::Set(name, value) => {
                    hostcalls::set_map_value(MapType::HttpRequestHeaders, name, Some(value))
                }
            };
            if result.is_err() {
                worker.host_error("edit request headers");
            }
        }
        self.record.forced = decision.forced;
        self.record.sessionless = decision.sessionless;
        self.decision = Some(decision);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let headers = hostcalls::get_map_bytes(MapType::HttpResponseHeaders).unwrap_or_default();
        self.record.status = headers
            .iter()
            .find(|(name, _)| name == ":status")
            .and_then(|(_, value)| std::str::from_utf8(value).ok()?.parse().ok());
        self.read_telemetry(&worker, MapType::HttpResponseHeaders, headers);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        let Some(worker) = self.worker.clone() else {
            return Action::Continue;
        };
        let trailers = hostcalls::get_map_bytes(MapType::HttpResponseTrailers).unwrap_or_default();
        self.read_telemetry(&worker, MapType::HttpResponseTrailers, trailers);
        Action::Continue
    }

    fn on_log(&mut self) {
        let (Some(worker), Some(table), Some(decision)) =
            (&self.worker, &self.table, self.decision)
        else {
            return;
        };
        let cluster = hostcalls::get_property(vec!["xds", "cluster_name"])
            .ok()
            .flatten();
        let cohort: Cohort = served_cohort(table, decision.cohort, cluster.as_deref());
        let version = &table.backend(cohort).version;
        if self.record.status.is_some_and(|s| s >= 500) {
            // Envoy's own 5xx for an upstream that reset before answering.
            let details = hostcalls::get_property(vec!["response", "code_details"])
                .ok()
                .flatten();
            self.record.upstream_reset = details.is_some_and(|d| d.starts_with(b"upstream_reset"));
        }
        worker
            .pending
            .borrow_mut()
            .counters_mut(version)
            .record(&self.record);
        let duration = hostcalls::get_property(vec!["request", "duration"])
            .ok()
            .flatten();
        if let Some(nanos) = duration.and_then(|d| <[u8; 8]>::try_from(d.as_slice()).ok()) {
            let millis = u64::try_from(i64::from_le_bytes(nanos)).unwrap_or(0) / 1_000_000;
            let id = worker
                .metrics
                .borrow_mut()
                .latency(&worker.config.target, version);
            if let Some(id) = id {
                if hostcalls::record_metric(id, millis).is_err() {
                    worker.host_error("record latency");
                }
            }
        }
    }
}
