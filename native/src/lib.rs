//! policy-canary as an Envoy dynamic module (`libpolicy_canary.so`): the same
//! configuration, core and plugin (`policy_canary::plugin`) as the wasm filter,
//! bound to Envoy's native module ABI instead of proxy-wasm.
//!
//! Where the wasm filter has a VM per worker, the module has one `Worker` per
//! worker thread and configuration (thread-local: the plugin's state is `Rc`),
//! created on the thread's first stream, which also has it follow the shared
//! table (within `FOLLOW_PERIOD` of a stream arriving). A stream's counts go to
//! its worker's tally as it ends; every `FLUSH_EVERY_TICKS` ticks of a timer
//! thread the main thread moves each worker's tally into the module's
//! process-wide stats and hands them to Envoy (each labelled stat update costs
//! Envoy a lookup, so they go in sums). The tally's mutex is taken by its
//! worker's streams and that flush only.
//! Filter-side sync (`sync` in the configuration) runs on the main thread: a
//! `Worker` there holds the lease and polls the controller through
//! configuration-level HTTP callouts, ticked by a timer thread through Envoy's
//! main-thread scheduler; workers follow its tables through the module's shared
//! data, as wasm workers follow Envoy's.
//!
//! A route may pick its cluster by the module's cluster specifier instead of the
//! cluster header (`specifier`): the decision is then made while Envoy picks the
//! route, and the stream's filter takes it over.
//!
//! There is no VM to catch a fault: every hook runs under `guard`, which turns a
//! panic into a logged error and a pass-through answer, and the module refuses to
//! load into an Envoy that lacks a callback it declares (`abi::resolve`).

pub mod abi;
pub mod host;
pub mod names;
pub mod required_hooks;
pub mod specifier;

use abi::{EnvoyBuffer, EnvoyPtr, ModuleBuffer, ModulePtr};
use host::{CallAnswer, NativeHost, Stats};
use names::Family;
use policy_canary::config::PluginConfig;
use policy_canary::plugin::stream::Stream;
use policy_canary::plugin::worker::{Tally, Worker, FLUSH_EVERY_TICKS};
use policy_canary::plugin::FOLLOW_PERIOD;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Instant;

/// The `filter_name` this module serves.
pub const FILTER_NAME: &str = "policy_canary";

/// Runs a hook; a panic becomes a logged error and `fallback` (never unwinds into Envoy).
fn guard<T>(fallback: T, hook: impl FnOnce() -> T) -> T {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(hook)).unwrap_or_else(|_| {
        abi::log(
            abi::LOG_ERROR,
            "policy_canary: a hook failed (panic caught); the request passes through",
        );
        fallback
    })
}

/// One filter configuration, shared by Envoy's threads.
struct NativeConfig {
    id: u64,
    /// Envoy's configuration object (stats, callouts, the scheduler).
    envoy: usize,
    /// What workers route by: the configuration without its `sync` block.
    plugin: PluginConfig,
    stats: Stats,
    /// Every worker's tally, flushed into `stats` by the main thread.
    tallies: Mutex<Vec<Arc<Mutex<Tally>>>>,
    ticker: Option<Ticker>,
    /// Main-thread ticks so far.
    ticks: AtomicU32,
    /// A cluster specifier has routed a stream of this configuration: a stream
    /// with no decision of its own asks for one before routing by the header.
    specified: AtomicBool,
    /// Envoy is destroying it: specifiers look for another.
    retired: AtomicBool,
}

/// The timer that ticks the main thread: filter-side sync, and the stats the
/// workers added, handed to Envoy every `FLUSH_EVERY_TICKS` ticks.
struct Ticker {
    scheduler: usize,
    stop: Arc<AtomicBool>,
    thread: Mutex<Option<std::thread::JoinHandle<()>>>,
}

impl NativeConfig {
    fn host<'a>(
        &'a self,
        filter: Option<EnvoyPtr>,
        answer: Option<&'a CallAnswer>,
    ) -> NativeHost<'a> {
        NativeHost {
            config: self.envoy as EnvoyPtr,
            stats: &self.stats,
            filter,
            answer,
            route_dirty: std::cell::Cell::new(false),
        }
    }

    /// Moves what every worker counted into `stats` (main thread) and hands it
    /// to Envoy.
    fn flush(&self) {
        let host = self.host(None, None);
        let tallies = self.tallies.lock().unwrap_or_else(PoisonError::into_inner);
        for tally in tallies.iter() {
            let mut tally = tally.lock().unwrap_or_else(PoisonError::into_inner);
            tally.flush(&host, &self.plugin.target);
        }
        drop(tallies);
        self.stats.drain(self.envoy as EnvoyPtr);
    }
}

static NEXT_CONFIG: AtomicU64 = AtomicU64::new(1);

struct ThreadWorker {
    worker: Rc<Worker>,
    followed: Instant,
    /// Its configuration, to drop the worker once Envoy has destroyed it.
    config: Weak<NativeConfig>,
}

thread_local! {
    /// This worker thread's `Worker` per configuration.
    static WORKERS: RefCell<HashMap<u64, ThreadWorker>> = RefCell::new(HashMap::new());
    /// The configurations' generation `WORKERS` was last pruned at.
    static WORKERS_GENERATION: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    /// The main thread's sync `Worker` per configuration.
    static SYNC_WORKERS: RefCell<HashMap<u64, Worker>> = RefCell::new(HashMap::new());
}

/// One HTTP stream.
struct NativeStream {
    config: *const NativeConfig,
    stream: Stream,
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const std::ffi::c_char {
    guard(std::ptr::null(), || {
        let Err(missing) = abi::resolve() else {
            return abi::ABI_VERSION.as_ptr();
        };
        // Envoy's own log callback may be among the missing: stderr.
        eprintln!(
            "policy_canary: refusing to load: this module is built for Envoy {}'s dynamic-module ABI {} \
             and this Envoy does not export {}",
            abi::ENVOY_RELEASE,
            abi::ABI_VERSION.to_string_lossy(),
            missing.join(", ")
        );
        std::ptr::null()
    })
}

/// # Safety
/// Envoy's contract: `name` and `config` are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    envoy: EnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers are valid for the call.
        let (name, config) = unsafe { (name.bytes(), config.bytes()) };
        if !serves(name, "filter_name") {
            return std::ptr::null();
        }
        match new_config(envoy, config) {
            Some(config) => {
                let config = Arc::new(config);
                specifier::register(&config);
                Arc::into_raw(config) as ModulePtr
            }
            None => std::ptr::null(),
        }
    })
}

/// Whether `name` (Envoy's `field`) is the one this module serves; logged if not.
fn serves(name: &[u8], field: &str) -> bool {
    if name == FILTER_NAME.as_bytes() {
        return true;
    }
    abi::log(
        abi::LOG_ERROR,
        &format!(
            "policy_canary: unknown {field} `{}` (this module serves `{FILTER_NAME}`)",
            String::from_utf8_lossy(name)
        ),
    );
    false
}

fn new_config(envoy: EnvoyPtr, bytes: &[u8]) -> Option<NativeConfig> {
    let full = match PluginConfig::from_json(bytes) {
        Ok(config) => config,
        Err(error) => {
            abi::log(
                abi::LOG_ERROR,
                &format!("policy_canary: invalid plugin configuration: {error}"),
            );
            return None;
        }
    };
    let mut stats = Stats::default();
    stats.families = Family::all().map(|family| define(envoy, family)).collect();
    let mut plugin = full.clone();
    plugin.sync = None;
    let mut config = NativeConfig {
        id: NEXT_CONFIG.fetch_add(1, Ordering::Relaxed),
        envoy: envoy as usize,
        plugin,
        stats,
        tallies: Mutex::default(),
        ticker: None,
        ticks: AtomicU32::new(0),
        specified: AtomicBool::new(false),
        retired: AtomicBool::new(false),
    };
    if full.sync.is_some() {
        let worker = Worker::new(full, &config.host(None, None));
        SYNC_WORKERS.with(|w| w.borrow_mut().insert(config.id, worker));
    }
    config.ticker = start_ticker(envoy);
    Some(config)
}

/// Defines one stat family; `None` (logged) if Envoy refuses it.
fn define(envoy: EnvoyPtr, family: Family) -> Option<usize> {
    let cb = abi::callbacks()?;
    let name = family.name();
    let labels: Vec<ModuleBuffer> = family
        .label_names()
        .iter()
        .map(|l| ModuleBuffer::of(l.as_bytes()))
        .collect();
    let define = if family.is_gauge() {
        cb.http_filter_config_define_gauge
    } else if family.is_histogram() {
        cb.http_filter_config_define_histogram
    } else {
        cb.http_filter_config_define_counter
    };
    let mut id = 0usize;
    // SAFETY: the buffers outlive the call; `envoy` is the configuration being made.
    let result = unsafe {
        define(
            envoy,
            ModuleBuffer::of(name.as_bytes()),
            labels.as_ptr(),
            labels.len(),
            &mut id,
        )
    };
    if result != abi::SUCCESS {
        abi::log(
            abi::LOG_WARN,
            &format!("policy_canary: Envoy refused the stat {name} ({result}); it is not counted"),
        );
        return None;
    }
    Some(id)
}

fn start_ticker(envoy: EnvoyPtr) -> Option<Ticker> {
    let cb = abi::callbacks()?;
    // SAFETY: `envoy` is the configuration being made, on the main thread.
    let scheduler = unsafe { (cb.http_filter_config_scheduler_new)(envoy) };
    if scheduler.is_null() {
        abi::log(
            abi::LOG_ERROR,
            "policy_canary: no scheduler: filter-side sync cannot run",
        );
        return None;
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (address, flag, commit) = (
        scheduler as usize,
        Arc::clone(&stop),
        cb.http_filter_config_scheduler_commit,
    );
    let thread = std::thread::Builder::new()
        .name("policy-canary-tick".into())
        .spawn(move || {
            while !flag.load(Ordering::Acquire) {
                std::thread::sleep(FOLLOW_PERIOD);
                // SAFETY: the scheduler is deleted only after this thread is joined;
                // commit may be called from any thread.
                unsafe { commit(address as EnvoyPtr, 0) };
            }
        })
        .ok();
    Some(Ticker {
        scheduler: scheduler as usize,
        stop,
        thread: Mutex::new(thread),
    })
}

/// # Safety
/// `config` is a pointer `on_http_filter_config_new` returned, not yet destroyed.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_destroy(config: ModulePtr) {
    guard((), || {
        if config.is_null() {
            return;
        }
        // SAFETY: made by `Arc::into_raw` in config_new; Envoy destroys it once.
        // A specifier choosing a cluster may hold it a moment longer.
        let config = unsafe { Arc::from_raw(config as *const NativeConfig) };
        specifier::retire(&config);
        // What the workers counted since the last tick still reaches Envoy.
        config.flush();
        if let (Some(ticker), Some(cb)) = (&config.ticker, abi::callbacks()) {
            ticker.stop.store(true, Ordering::Release);
            let thread = ticker
                .thread
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .take();
            if let Some(thread) = thread {
                let _ = thread.join();
            }
            // SAFETY: the ticker thread, its only other user, has ended.
            unsafe { (cb.http_filter_config_scheduler_delete)(ticker.scheduler as EnvoyPtr) };
        }
        SYNC_WORKERS.with(|w| w.borrow_mut().remove(&config.id));
    });
}

/// # Safety
/// `config` is live (Envoy destroys it after its filters).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_scheduled(
    _envoy: EnvoyPtr,
    config: ModulePtr,
    _event: u64,
) {
    guard((), || {
        // SAFETY: the caller's contract.
        let Some(config) = (unsafe { (config as *const NativeConfig).as_ref() }) else {
            return;
        };
        SYNC_WORKERS.with(|w| {
            if let Ok(workers) = w.try_borrow() {
                if let Some(worker) = workers.get(&config.id) {
                    worker.on_tick(&config.host(None, None));
                }
            }
        });
        let ticks = config.ticks.fetch_add(1, Ordering::Relaxed).wrapping_add(1);
        if ticks.is_multiple_of(FLUSH_EVERY_TICKS) {
            config.flush();
        }
    });
}

/// # Safety
/// Envoy's contract: `config` is live; `headers` and `body` hold the given counts.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_http_callout_done(
    _envoy: EnvoyPtr,
    config: ModulePtr,
    callout: u64,
    result: u32,
    headers: *const abi::HttpHeader,
    headers_size: usize,
    body: *const EnvoyBuffer,
    body_size: usize,
) {
    guard((), || {
        // SAFETY: the caller's contract.
        let Some(config) = (unsafe { (config as *const NativeConfig).as_ref() }) else {
            return;
        };
        let mut answer = CallAnswer::default();
        if result == abi::SUCCESS {
            // SAFETY: Envoy's arrays and buffers are valid until this hook returns.
            unsafe {
                for h in abi::slice(headers, headers_size) {
                    let (name, value) = h.pair();
                    answer
                        .headers
                        .push((String::from_utf8_lossy(name).into_owned(), value.to_vec()));
                }
                for chunk in abi::slice(body, body_size) {
                    answer.body.extend_from_slice(chunk.bytes());
                }
            }
        }
        let Ok(token) = u32::try_from(callout) else {
            return;
        };
        SYNC_WORKERS.with(|w| {
            if let Ok(workers) = w.try_borrow() {
                if let Some(worker) = workers.get(&config.id) {
                    let host = config.host(None, Some(&answer));
                    worker.on_http_call_response(&host, token, answer.body.len());
                }
            }
        });
    });
}

/// This thread's worker for `config`, having followed the shared table if that
/// is due (its counts are the main thread's to flush, never a stream's). Workers of
/// configurations Envoy has destroyed since (a listener update replaces them)
/// are dropped first.
fn thread_worker(config: &Arc<NativeConfig>, host: &NativeHost<'_>) -> Option<Rc<Worker>> {
    WORKERS.with(|w| {
        let mut workers = w.try_borrow_mut().ok()?;
        let generation = specifier::generation();
        if WORKERS_GENERATION.replace(generation) != generation {
            workers.retain(|_, w| {
                w.config
                    .upgrade()
                    .is_some_and(|c| !c.retired.load(Ordering::Acquire))
            });
        }
        let entry = workers.entry(config.id).or_insert_with(|| {
            let worker = Rc::new(Worker::new(config.plugin.clone(), host));
            config
                .tallies
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(worker.shared_tally());
            ThreadWorker {
                worker,
                followed: Instant::now(),
                config: Arc::downgrade(config),
            }
        });
        if entry.followed.elapsed() >= FOLLOW_PERIOD {
            entry.followed = Instant::now();
            entry.worker.follow(host);
        }
        Some(Rc::clone(&entry.worker))
    })
}

/// # Safety
/// `config` is live; `filter` is the new stream's.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_new(
    config: ModulePtr,
    filter: EnvoyPtr,
) -> ModulePtr {
    guard(std::ptr::null(), || {
        if config.is_null() {
            return std::ptr::null();
        }
        // SAFETY: made by `Arc::into_raw` in config_new and live (the caller's
        // contract); borrowed, so its count is left as it is.
        let native =
            std::mem::ManuallyDrop::new(unsafe { Arc::from_raw(config as *const NativeConfig) });
        let host = native.host(Some(filter), None);
        let Some(worker) = thread_worker(&native, &host) else {
            return std::ptr::null();
        };
        let stream = Box::new(NativeStream {
            config: Arc::as_ptr(&native),
            stream: Stream::new(Some(worker)),
        });
        Box::into_raw(stream) as ModulePtr
    })
}

/// Runs `f` on the stream, with its host.
///
/// # Safety
/// `stream` is null or a live `NativeStream` of this thread; `filter` its Envoy filter.
unsafe fn on_stream(
    filter: EnvoyPtr,
    stream: ModulePtr,
    f: impl FnOnce(&mut NativeStream, &NativeHost<'_>),
) {
    guard((), || {
        // SAFETY: the caller's contract; a stream's hooks run on one thread, one at a time.
        let Some(stream) = (unsafe { (stream as *mut NativeStream).as_mut() }) else {
            return;
        };
        // SAFETY: Envoy destroys a configuration after its streams.
        let Some(config) = (unsafe { stream.config.as_ref() }) else {
            return;
        };
        let host = config.host(Some(filter), None);
        f(stream, &host);
    });
}

/// # Safety
/// Envoy's contract (see `on_stream`).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: EnvoyPtr,
    stream: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        on_stream(filter, stream, |s, host| {
            // SAFETY (in the caller's block): `on_stream` found the configuration live.
            let Some(config) = s.config.as_ref() else {
                return;
            };
            match specifier::routed(config, filter) {
                Some(routed) => {
                    let edits = routed.edits();
                    s.stream
                        .on_routed_request(host, routed.table.clone(), routed.decision, edits);
                }
                None => {
                    s.stream.on_request_headers(host);
                    host.refresh_route();
                }
            }
        })
    };
    abi::SUCCESS
}

/// # Safety
/// Envoy's contract (see `on_stream`).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: EnvoyPtr,
    stream: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe { on_stream(filter, stream, |s, host| s.stream.on_response_headers(host)) };
    abi::SUCCESS
}

/// # Safety
/// Envoy's contract (see `on_stream`).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter: EnvoyPtr,
    stream: ModulePtr,
) -> u32 {
    // SAFETY: the caller's contract.
    unsafe {
        on_stream(filter, stream, |s, host| {
            s.stream.on_response_trailers(host)
        })
    };
    abi::SUCCESS
}

/// # Safety
/// Envoy's contract (see `on_stream`).
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_stream_complete(
    filter: EnvoyPtr,
    stream: ModulePtr,
) {
    // SAFETY: the caller's contract.
    unsafe { on_stream(filter, stream, |s, host| s.stream.on_log(host)) };
}

/// # Safety
/// `stream` is null or a `NativeStream` from `on_http_filter_new`, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_destroy(stream: ModulePtr) {
    guard((), || {
        if !stream.is_null() {
            // SAFETY: made by `Box::into_raw` in filter_new.
            drop(unsafe { Box::from_raw(stream as *mut NativeStream) });
        }
    });
}
