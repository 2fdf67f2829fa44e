//! The plugin's `Host` over the dynamic-module callbacks. Two places call it: a
//! stream's hooks on a worker thread (`filter` is set) and the main thread's
//! scheduled ticks and callout answers (`filter` is `None`). What the wasm filter
//! gets from Envoy per VM the module keeps per process: shared data (one map for
//! every worker, with the same CAS rules) and the value of every stat it adds to
//! (what `get_metric` reads: the module's own additions, Envoy-wide), handed to
//! Envoy by the main thread every `FLUSH_EVERY_TICKS` ticks.

use crate::abi::{self, EnvoyBuffer, EnvoyPtr, HttpHeader, ModuleBuffer};
use crate::names::{labelled, Family};
use policy_canary::plugin::host::{
    shared_get, shared_set, Host, HostError, HostResult, LogLevel, MapKind, MetricKind, SharedData,
};
use policy_canary::wire::HeaderMap;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::Duration;

/// The filter configuration's stats: the families Envoy defined for it, and each
/// labelled stat the plugin named, by the id handed to the plugin.
#[derive(Default)]
pub struct Stats {
    /// Envoy's id of each family (`Family::index`), when its definition succeeded.
    pub families: Vec<Option<usize>>,
    entries: RwLock<Vec<Entry>>,
    by_name: Mutex<HashMap<String, u32>>,
    refusal_logged: std::sync::atomic::AtomicBool,
}

struct Entry {
    family: Family,
    labels: Vec<String>,
    /// Everything the module added to it, in every worker.
    total: AtomicU64,
    /// Added since the last `drain` (counters); the value to set (gauges).
    pending: AtomicU64,
    /// A gauge was set since the last `drain`.
    dirty: std::sync::atomic::AtomicBool,
    /// Recorded since the last `drain` (histograms), at most `MAX_SAMPLES`.
    samples: Mutex<Vec<u64>>,
}

/// Histogram samples one stat keeps between two drains (more are dropped).
pub const MAX_SAMPLES: usize = 65_536;

impl Stats {
    fn define(&self, name: &str) -> HostResult<u32> {
        let mut by_name = self.by_name.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(id) = by_name.get(name) {
            return Ok(*id);
        }
        let labelled = labelled(name).ok_or(HostError)?;
        self.families
            .get(labelled.family.index())
            .copied()
            .flatten()
            .ok_or(HostError)?;
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        let id = u32::try_from(entries.len()).map_err(|_| HostError)?;
        entries.push(Entry {
            family: labelled.family,
            labels: labelled.labels,
            total: AtomicU64::new(0),
            pending: AtomicU64::new(0),
            dirty: std::sync::atomic::AtomicBool::new(false),
            samples: Mutex::new(Vec::new()),
        });
        by_name.insert(name.to_string(), id);
        Ok(id)
    }

    /// Adds to (counters) or records in (histograms) stat `id`: kept in the
    /// module until the main thread's next `drain` (a labelled stat costs Envoy a
    /// lookup per call; a worker pays an atomic add).
    fn add(&self, id: u32, value: u64) -> HostResult<()> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(id as usize).ok_or(HostError)?;
        if entry.family.is_histogram() {
            let mut samples = entry.samples.lock().unwrap_or_else(PoisonError::into_inner);
            if samples.len() < MAX_SAMPLES {
                samples.push(value);
            }
        } else if entry.family.is_gauge() {
            entry.pending.store(value, Ordering::Relaxed);
            entry.total.store(value, Ordering::Relaxed);
            entry.dirty.store(true, Ordering::Release);
        } else {
            entry.pending.fetch_add(value, Ordering::Relaxed);
            entry.total.fetch_add(value, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Hands what was added since the last call to Envoy (main thread, through
    /// `config`); what Envoy refuses is dropped (counted in the log once).
    pub(crate) fn drain(&self, config: EnvoyPtr) {
        let Some(cb) = abi::callbacks() else {
            return;
        };
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let mut refused = 0u64;
        for entry in entries.iter() {
            let Some(family_id) = self.families.get(entry.family.index()).copied().flatten() else {
                continue;
            };
            if entry.family.is_gauge() {
                if entry.dirty.swap(false, Ordering::Acquire) {
                    let value = entry.pending.load(Ordering::Relaxed);
                    // SAFETY: no labels; `config` is Envoy's live config.
                    let result = unsafe {
                        (cb.http_filter_config_set_gauge)(
                            config,
                            family_id,
                            std::ptr::null(),
                            0,
                            value,
                        )
                    };
                    refused += u64::from(result != abi::SUCCESS);
                }
                continue;
            }
            let pending = entry.pending.swap(0, Ordering::Relaxed);
            let samples = if entry.family.is_histogram() {
                std::mem::take(&mut *entry.samples.lock().unwrap_or_else(PoisonError::into_inner))
            } else {
                Vec::new()
            };
            if pending == 0 && samples.is_empty() {
                continue;
            }
            let values: Vec<ModuleBuffer> = entry
                .labels
                .iter()
                .map(|l| ModuleBuffer::of(l.as_bytes()))
                .collect();
            // SAFETY: the label buffers outlive each call; `config` is Envoy's live config.
            unsafe {
                if pending > 0
                    && (cb.http_filter_config_increment_counter)(
                        config,
                        family_id,
                        values.as_ptr(),
                        values.len(),
                        pending,
                    ) != abi::SUCCESS
                {
                    refused += 1;
                }
                for sample in samples {
                    if (cb.http_filter_config_record_histogram_value)(
                        config,
                        family_id,
                        values.as_ptr(),
                        values.len(),
                        sample,
                    ) != abi::SUCCESS
                    {
                        refused += 1;
                    }
                }
            }
        }
        if refused > 0 && !self.refusal_logged.swap(true, Ordering::Relaxed) {
            abi::log(
                abi::LOG_WARN,
                "policy_canary: Envoy refused a stat update (further refusals not logged)",
            );
        }
    }

    fn total(&self, id: u32) -> HostResult<u64> {
        let entries = self.entries.read().unwrap_or_else(PoisonError::into_inner);
        let entry = entries.get(id as usize).ok_or(HostError)?;
        Ok(entry.total.load(Ordering::Relaxed))
    }
}

/// Shared data for the whole process, as proxy-wasm's.
static SHARED: Mutex<SharedData> = Mutex::new(SharedData::new());

/// The answer to the HTTP callout being handled (main thread only).
#[derive(Default)]
pub struct CallAnswer {
    pub headers: Vec<(String, Vec<u8>)>,
    pub body: Vec<u8>,
}

/// The `Host` of one call into the module.
pub struct NativeHost<'a> {
    /// Envoy's filter configuration (its stats and callouts).
    pub config: EnvoyPtr,
    pub stats: &'a Stats,
    /// The stream being handled, on a worker thread.
    pub filter: Option<EnvoyPtr>,
    pub answer: Option<&'a CallAnswer>,
    /// A request header was edited: the route must be picked again (once, after
    /// the hook: `clear_route_cache`).
    pub route_dirty: std::cell::Cell<bool>,
}

fn header_type(map: MapKind) -> Option<u32> {
    match map {
        MapKind::RequestHeaders => Some(abi::REQUEST_HEADER),
        MapKind::ResponseHeaders => Some(abi::RESPONSE_HEADER),
        MapKind::ResponseTrailers => Some(abi::RESPONSE_TRAILER),
        MapKind::HttpCallResponseHeaders => None,
    }
}

impl NativeHost<'_> {
    /// After a hook that edited request headers: the route may read what was
    /// set (`cluster_header`), so Envoy picks it again.
    pub fn refresh_route(&self) {
        if let (true, Some(filter), Some(cb)) = (
            self.route_dirty.replace(false),
            self.filter,
            abi::callbacks(),
        ) {
            // SAFETY: `filter` is the stream whose hook is running.
            unsafe { (cb.http_clear_route_cache)(filter) };
        }
    }

    /// The stream's map, lent: Envoy's own buffers, valid while the hook runs
    /// and until the map is edited (the plugin reads a map before editing it).
    fn stream_map(&self, filter: EnvoyPtr, kind: u32) -> HostResult<HeaderMap<'_>> {
        let cb = abi::callbacks().ok_or(HostError)?;
        // SAFETY: `filter` is the stream whose hook is running; `read` gives room
        // for `size` headers, as the callback requires.
        let headers = unsafe {
            let size = (cb.http_get_headers_size)(filter, kind);
            HttpHeader::read(size, |room| (cb.http_get_headers)(filter, kind, room))
        }
        .ok_or(HostError)?;
        // SAFETY: Envoy's buffers are valid until the hook returns, which outlives
        // this host, and are not edited while the map is read (above).
        Ok(HeaderMap::lent(
            headers.iter().map(|h| unsafe { h.pair() }).collect(),
        ))
    }

    /// Adds (`add`) or replaces a header; a null `value` removes it.
    fn edit_header(
        &self,
        map: MapKind,
        name: &str,
        value: ModuleBuffer,
        add: bool,
    ) -> HostResult<()> {
        let (Some(filter), Some(kind)) = (self.filter, header_type(map)) else {
            return Err(HostError);
        };
        let cb = abi::callbacks().ok_or(HostError)?;
        let edit = if add {
            cb.http_add_header
        } else {
            cb.http_set_header
        };
        // SAFETY: the buffers outlive the call; `filter` is the running stream.
        let ok = unsafe { edit(filter, kind, ModuleBuffer::of(name.as_bytes()), value) };
        if !ok {
            return Err(HostError);
        }
        if map == MapKind::RequestHeaders {
            self.route_dirty.set(true);
        }
        Ok(())
    }
}

impl Host for NativeHost<'_> {
    fn map(&self, map: MapKind) -> HostResult<HeaderMap<'_>> {
        match (header_type(map), self.filter, self.answer) {
            (Some(kind), Some(filter), _) => self.stream_map(filter, kind),
            (None, _, Some(answer)) => Ok(HeaderMap::from_pairs(&answer.headers)),
            _ => Err(HostError),
        }
    }

    fn add_map_value(&self, map: MapKind, name: &str, value: &[u8]) -> HostResult<()> {
        // A non-null pointer even for an empty value.
        let value = if value.is_empty() {
            ModuleBuffer {
                ptr: b"".as_ptr(),
                length: 0,
            }
        } else {
            ModuleBuffer::of(value)
        };
        self.edit_header(map, name, value, true)
    }

    fn remove_map_value(&self, map: MapKind, name: &str) -> HostResult<()> {
        self.edit_header(map, name, ModuleBuffer::null(), false)
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        let attribute = match path {
            ["xds", "cluster_name"] => abi::ATTRIBUTE_XDS_CLUSTER_NAME,
            ["response", "code_details"] => abi::ATTRIBUTE_RESPONSE_CODE_DETAILS,
            _ => return Ok(None),
        };
        let filter = self.filter.ok_or(HostError)?;
        let cb = abi::callbacks().ok_or(HostError)?;
        let mut value = EnvoyBuffer::empty();
        // SAFETY: `value` is a valid out-parameter; `filter` is the running stream.
        let found = unsafe { (cb.http_filter_get_attribute_string)(filter, attribute, &mut value) };
        // SAFETY: Envoy's buffer is valid until the hook returns.
        Ok(found.then(|| unsafe { value.to_vec() }))
    }

    fn define_metric(&self, _kind: MetricKind, name: &str) -> HostResult<u32> {
        self.stats.define(name)
    }

    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
        let by = u64::try_from(by).map_err(|_| HostError)?;
        self.stats.add(id, by)
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        self.stats.add(id, value)
    }

    fn get_metric(&self, id: u32) -> HostResult<u64> {
        self.stats.total(id)
    }

    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        Ok(shared_get(
            &SHARED.lock().unwrap_or_else(PoisonError::into_inner),
            key,
        ))
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        shared_set(
            &mut SHARED.lock().unwrap_or_else(PoisonError::into_inner),
            key,
            value,
            cas,
        )
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> HostResult<u32> {
        let mut pairs: Vec<HttpHeader> = headers
            .iter()
            .map(|(name, value)| HttpHeader {
                key_ptr: name.as_ptr(),
                key_length: name.len(),
                value_ptr: value.as_ptr(),
                value_length: value.len(),
            })
            .collect();
        let cb = abi::callbacks().ok_or(HostError)?;
        let mut id = 0u64;
        let timeout_ms = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
        // SAFETY: every buffer outlives the call (Envoy copies the request).
        let result = unsafe {
            (cb.http_filter_config_http_callout)(
                self.config,
                &mut id,
                ModuleBuffer::of(cluster.as_bytes()),
                pairs.as_mut_ptr(),
                pairs.len(),
                ModuleBuffer::of(body),
                timeout_ms,
            )
        };
        if result != abi::SUCCESS {
            return Err(HostError);
        }
        u32::try_from(id).map_err(|_| HostError)
    }

    fn http_call_body(&self, size: usize) -> HostResult<Vec<u8>> {
        let answer = self.answer.ok_or(HostError)?;
        Ok(answer.body.iter().take(size).copied().collect())
    }

    fn now_ns(&self) -> u64 {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Info => abi::LOG_INFO,
            LogLevel::Warn => abi::LOG_WARN,
            LogLevel::Error => abi::LOG_ERROR,
        };
        abi::log(level, message);
    }

    fn env(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}
