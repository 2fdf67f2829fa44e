//! proxy-wasm glue (wasm32 only): reads headers and properties through
//! `proxy_wasm::hostcalls` (which return `Result`, unlike the trait helpers that
//! unwrap), hands them to the pure core and applies what it decides.

use crate::cohort::Cohort;
use crate::config::{PluginConfig, RouteTable};
use crate::routing::{route_request, served_cohort, Decision, Header, HeaderEdit};
use crate::stats::{stat_name, Counter, PendingCounts, StreamRecord, LATENCY_SUFFIX};
use crate::sync::{
    AfterPoll, Follow, HealthChange, SyncConfig, SyncState, TableFollower, ROUTES_KEY,
};
use crate::telemetry::is_telemetry_header;
use proxy_wasm::hostcalls;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, BufferType, ContextType, LogLevel, MapType, MetricType};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::time::{Duration, UNIX_EPOCH};

/// Filter roots look for a new route table from the sync service on this tick.
const FOLLOW_PERIOD: Duration = Duration::from_millis(50);
/// Counts live in wasm memory per worker and reach Envoy every this many ticks (250 ms).
const FLUSH_EVERY_TICKS: u32 = 5;
/// The sync service checks whether to poll (after a backoff) on this tick.
const SYNC_PERIOD: Duration = Duration::from_millis(100);
/// `root_id` of the sync service (an `envoy.bootstrap.wasm` singleton).
const SYNC_ROOT_ID: &str = "policy_canary_sync";

proxy_wasm::main! {{
    // Also installs a panic hook that logs the panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

fn log(level: LogLevel, message: &str) {
    let _ = hostcalls::log(level, message);
}

/// What a worker's root context shares with its streams. A worker VM runs on one
/// thread, so `Rc` and `RefCell` suffice.
struct Worker {
    config: PluginConfig,
    /// The table new requests are routed by: the configuration's until the sync
    /// service delivers a newer one for this target.
    table: RefCell<Rc<RouteTable>>,
    follower: RefCell<TableFollower>,
    ticks: Cell<u32>,
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

    /// Picks up a newer route table from shared data, parsing only a changed document.
    fn follow(&self) {
        let Ok((value, cas)) = hostcalls::get_shared_data(ROUTES_KEY) else {
            return;
        };
        let current = self.table.borrow().revision;
        let outcome =
            self.follower
                .borrow_mut()
                .follow(&self.config.target, current, value.as_deref(), cas);
        match outcome {
            Follow::Newer(table) => *self.table.borrow_mut() = Rc::new(table),
            Follow::Invalid(error) => log(
                LogLevel::Warn,
                &format!("policy_canary: ignoring the shared routes document: {error}"),
            ),
            Follow::Same | Follow::NothingForTarget => {}
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

/// One root context type for both roles; `on_configure` picks the role from the
/// plugin's `root_id`.
#[derive(Default)]
struct Root {
    role: Role,
}

#[derive(Default)]
enum Role {
    #[default]
    Unconfigured,
    Filter(Rc<Worker>),
    Sync(Box<SyncService>),
}

fn read_configuration() -> Option<Vec<u8>> {
    match hostcalls::get_buffer(BufferType::PluginConfiguration, 0, usize::MAX) {
        Ok(bytes) => Some(bytes.unwrap_or_default()),
        Err(status) => {
            log(
                LogLevel::Error,
                &format!("policy_canary: cannot read the plugin configuration: {status:?}"),
            );
            None
        }
    }
}

fn now_ms() -> u64 {
    hostcalls::get_current_time()
        .ok()
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_millis() as u64)
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        if let Role::Sync(sync) = &mut self.role {
            sync.on_response(token, body_size);
        }
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
        let Some(bytes) = read_configuration() else {
            return false;
        };
        let root_id = hostcalls::get_property(vec!["plugin_root_id"])
            .ok()
            .flatten();
        let role = if root_id.as_deref() == Some(SYNC_ROOT_ID.as_bytes()) {
            SyncService::configure(&bytes).map(|s| Role::Sync(Box::new(s)))
        } else {
            configure_filter(&bytes).map(Role::Filter)
        };
        let period = match role {
            Some(Role::Sync(_)) => SYNC_PERIOD,
            _ => FOLLOW_PERIOD,
        };
        let Some(role) = role else {
            return false;
        };
        if hostcalls::set_tick_period(period).is_err() {
            log(LogLevel::Error, "policy_canary: cannot set the tick period");
            return false;
        }
        self.role = role;
        true
    }

    fn on_tick(&mut self) {
        match &mut self.role {
            Role::Filter(worker) => {
                worker.follow();
                let ticks = worker.ticks.get().wrapping_add(1);
                worker.ticks.set(ticks);
                if ticks % FLUSH_EVERY_TICKS == 0 {
                    worker.flush();
                }
            }
            Role::Sync(sync) => sync.on_tick(),
            Role::Unconfigured => {}
        }
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so other roles hand out a pass-through stream.
        let worker = match &self.role {
            Role::Filter(worker) => Some(Rc::clone(worker)),
            _ => None,
        };
        Some(Box::new(PolicyStream {
            table: worker.as_ref().map(|w| Rc::clone(&w.table.borrow())),
            worker,
            decision: None,
            record: StreamRecord::default(),
        }))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

fn configure_filter(bytes: &[u8]) -> Option<Rc<Worker>> {
    let config = match PluginConfig::from_json(bytes) {
        Ok(config) => config,
        Err(error) => {
            log(
                LogLevel::Error,
                &format!("policy_canary: invalid plugin configuration: {error}"),
            );
            return None;
        }
    };
    let table = Rc::new(config.route.clone());
    let worker = Rc::new(Worker {
        config,
        table: RefCell::new(table),
        follower: RefCell::default(),
        ticks: Cell::new(0),
        pending: RefCell::default(),
        metrics: RefCell::default(),
        rng: Cell::new(now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
        host_error_logged: Cell::new(false),
    });
    // A table the sync service already holds applies at once.
    worker.follow();
    Some(worker)
}

/// The sync service: long-polls the controller and stores the routes document in
/// shared data for every worker's filter.
struct SyncService {
    config: SyncConfig,
    state: SyncState,
    in_flight: Option<u32>,
    metrics: SyncMetrics,
}

struct SyncMetrics {
    polls_ok: Option<u32>,
    polls_failed: Option<u32>,
    documents_rejected: Option<u32>,
    revision: Option<u32>,
}

impl SyncService {
    fn configure(bytes: &[u8]) -> Option<SyncService> {
        let config = match SyncConfig::from_json(bytes) {
            Ok(config) => config,
            Err(error) => {
                log(
                    LogLevel::Error,
                    &format!("policy_canary: invalid sync configuration: {error}"),
                );
                return None;
            }
        };
        let metric = |kind, name: &str| {
            hostcalls::define_metric(kind, &format!("policy_canary.sync.{name}")).ok()
        };
        Some(SyncService {
            config,
            state: SyncState::default(),
            in_flight: None,
            metrics: SyncMetrics {
                polls_ok: metric(MetricType::Counter, "polls_ok"),
                polls_failed: metric(MetricType::Counter, "polls_failed"),
                documents_rejected: metric(MetricType::Counter, "documents_rejected"),
                revision: metric(MetricType::Gauge, "revision"),
            },
        })
    }

    fn on_tick(&mut self) {
        let now = now_ms();
        if self.state.should_poll(&self.config, now) {
            self.poll(now);
        }
    }

    fn poll(&mut self, now: u64) {
        let path = self.state.poll_path(&self.config);
        let headers = vec![
            (":method", "GET"),
            (":path", path.as_str()),
            (":authority", self.config.authority.as_str()),
            ("accept", "application/json"),
        ];
        let timeout = Duration::from_millis(self.config.timeout_ms);
        match hostcalls::dispatch_http_call(&self.config.cluster, headers, None, vec![], timeout) {
            Ok(token) => {
                self.in_flight = Some(token);
                self.state.started(now);
            }
            Err(_) => self.finish(&AfterPoll::Keep(crate::sync::PollFailure::Dispatch), now),
        }
    }

    fn on_response(&mut self, token: u32, body_size: usize) {
        if self.in_flight != Some(token) {
            return;
        }
        self.in_flight = None;
        let status = hostcalls::get_map(MapType::HttpCallResponseHeaders)
            .ok()
            .and_then(|headers| {
                headers
                    .into_iter()
                    .find(|(name, _)| name == ":status")
                    .and_then(|(_, value)| value.parse().ok())
            })
            .unwrap_or(0u16);
        let body = if status == 200 && body_size <= self.config.max_body_bytes {
            hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, body_size)
                .ok()
                .flatten()
                .unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut outcome = self.state.judge(&self.config, status, body_size, &body);
        if let AfterPoll::Store { revision } = outcome {
            if hostcalls::set_shared_data(ROUTES_KEY, Some(&body), None).is_err() {
                outcome = AfterPoll::Keep(crate::sync::PollFailure::BadDocument(
                    "could not store it in shared data".into(),
                ));
            } else if let Some(id) = self.metrics.revision {
                let _ = hostcalls::record_metric(id, revision);
            }
        }
        let now = now_ms();
        self.finish(&outcome, now);
        // A good answer is followed by the next long-poll at once.
        if self.state.should_poll(&self.config, now) {
            self.poll(now);
        }
    }

    fn finish(&mut self, outcome: &AfterPoll, now: u64) {
        let counter = match outcome {
            AfterPoll::Keep(failure) if failure.is_rejection() => self.metrics.documents_rejected,
            AfterPoll::Keep(_) => self.metrics.polls_failed,
            _ => self.metrics.polls_ok,
        };
        if let Some(id) = counter {
            let _ = hostcalls::increment_metric(id, 1);
        }
        match self.state.finished(&self.config, outcome, now) {
            Some(HealthChange::Failing(failure)) => log(
                LogLevel::Warn,
                &format!(
                    "policy_canary sync: {failure}; keeping route revision {} (fail static)",
                    self.state.revision
                ),
            ),
            Some(HealthChange::Recovered { after_failures }) => log(
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
