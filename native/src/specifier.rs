//! Routing by the module's cluster specifier (a route's
//! `inline_cluster_specifier_plugin`): Envoy asks the specifier for the cluster
//! while it picks the route, before any HTTP filter runs, so the filter writes no
//! cluster header and Envoy picks no route a second time.
//!
//! The specifier decides with the filter's own code (`route_request`) on the
//! thread's `Worker` of the filter configuration it names, and hands the decision
//! to the same stream's HTTP filter through a thread-local slot: the filter takes
//! it in its request hook, applies the header edits left (never the cluster or
//! bucket header) and counts the stream as decided. A slot belongs to the stream
//! whose `:path` value lives at the address it records (an Envoy header map's
//! value is the stream's own memory while the stream lives) and whose route has
//! the cluster it names. The filter reads its route first, so a route an earlier
//! filter cleared is picked again, and decided again, before the slot is read; a
//! filter that finds no slot of its own (an earlier filter paused while other
//! streams were routed, or rewrote `:path` without clearing the route) asks Envoy
//! to pick the route again, which runs the specifier on its current headers; a
//! route without the specifier is routed by the cluster header as before.

use crate::abi::{self, EnvoyBuffer, EnvoyPtr, HttpHeader, ModuleBuffer, ModulePtr};
use crate::{guard, serves, thread_worker, NativeConfig};
use policy_canary::route::RouteTable;
use policy_canary::routing::{route_request, Decision, HeaderEdit};
use policy_canary::wire::HeaderMap;
use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, Weak};

/// What the specifier decided for one stream, for its HTTP filter.
pub struct Handoff {
    /// The filter configuration that decided (`NativeConfig::id`).
    config: u64,
    /// Address and length of the stream's `:path` value.
    path: (usize, usize),
    pub table: Rc<RouteTable>,
    pub decision: Decision,
    /// The header edits the filter makes: removals of what the client may not
    /// send and the canonical force header (the version header it writes itself).
    edits: Vec<(String, Option<String>)>,
}

impl Handoff {
    pub fn edits(&self) -> impl Iterator<Item = HeaderEdit<'_>> {
        self.edits.iter().map(|(name, value)| match value {
            Some(value) => HeaderEdit::Add(name, value),
            None => HeaderEdit::Remove(name),
        })
    }
}

thread_local! {
    static HANDOFF: RefCell<Option<Handoff>> = const { RefCell::new(None) };
}

/// Every live filter configuration, for specifiers to find theirs by target.
static CONFIGS: Mutex<Vec<Weak<NativeConfig>>> = Mutex::new(Vec::new());

/// Moves on whenever a filter configuration or a specifier comes or goes: what
/// each thread found for its specifiers is then looked up again, and its workers
/// of destroyed configurations are dropped.
static GENERATION: AtomicU64 = AtomicU64::new(0);

/// The configuration a thread found for a specifier, and at which generation
/// (holding it keeps it alive while the thread uses it).
type Found = (u64, Option<Arc<NativeConfig>>);

thread_local! {
    /// This thread's configuration of each specifier, by the specifier's address.
    static FOUND: RefCell<HashMap<usize, Found>> = RefCell::new(HashMap::new());
}

pub(crate) fn register(config: &Arc<NativeConfig>) {
    let mut configs = CONFIGS.lock().unwrap_or_else(PoisonError::into_inner);
    configs.retain(|c| c.strong_count() > 0);
    configs.push(Arc::downgrade(config));
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The configurations' generation now.
pub(crate) fn generation() -> u64 {
    GENERATION.load(Ordering::Acquire)
}

/// A filter configuration is being destroyed: specifiers stop using it.
pub(crate) fn retire(config: &NativeConfig) {
    config.retired.store(true, Ordering::Release);
    GENERATION.fetch_add(1, Ordering::Release);
}

/// The newest live configuration of `target` (any target when empty).
fn find(target: &str) -> Option<Arc<NativeConfig>> {
    let configs = CONFIGS.lock().unwrap_or_else(PoisonError::into_inner);
    configs
        .iter()
        .filter_map(Weak::upgrade)
        .filter(|c| !c.retired.load(Ordering::Acquire))
        .filter(|c| target.is_empty() || c.plugin.target == target)
        .max_by_key(|c| c.id)
}

/// One `DynamicModuleClusterSpecifier` of this module.
struct Specifier {
    /// The target whose filter configuration decides (`specifier_config`).
    target: String,
    missing_logged: AtomicBool,
}

impl Specifier {
    /// Runs `f` with this thread's configuration of the specifier (found once per
    /// generation, without a lock or a shared count touched per request).
    fn with_config<T>(&self, f: impl FnOnce(Option<&Arc<NativeConfig>>) -> T) -> T {
        let generation = GENERATION.load(Ordering::Acquire);
        let key = self as *const Specifier as usize;
        FOUND.with(|found| {
            let Ok(mut found) = found.try_borrow_mut() else {
                return f(None);
            };
            if found.get(&key).is_none_or(|(at, _)| *at != generation) {
                found.retain(|_, (at, _)| *at == generation);
                found.insert(key, (generation, find(&self.target)));
            }
            // Borrowed for the call: a nested call (none is made) would get `None`.
            f(found.get(&key).and_then(|(_, config)| config.as_ref()))
        })
    }
}

/// # Safety
/// Envoy's contract: `name` and `config` are valid for the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_new(
    _envoy: EnvoyPtr,
    name: EnvoyBuffer,
    config: EnvoyBuffer,
) -> ModulePtr {
    guard(std::ptr::null(), || {
        // SAFETY: Envoy's buffers are valid for the call.
        let (name, config) = unsafe { (name.bytes(), config.bytes()) };
        if !serves(name, "specifier_name") {
            return std::ptr::null();
        }
        let target = match parse_target(config) {
            Ok(target) => target,
            Err(error) => {
                abi::log(abi::LOG_ERROR, &format!("policy_canary: {error}"));
                return std::ptr::null();
            }
        };
        GENERATION.fetch_add(1, Ordering::Release);
        let specifier = Box::new(Specifier {
            target,
            missing_logged: AtomicBool::new(false),
        });
        Box::into_raw(specifier) as ModulePtr
    })
}

/// The target a `specifier_config` names: a target name as the filter
/// configuration allows it, or empty (the newest configuration of any target).
pub fn parse_target(config: &[u8]) -> Result<String, String> {
    let target = std::str::from_utf8(config)
        .map_err(|_| "specifier_config: the target is not UTF-8".to_string())?
        .trim();
    if target
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(target.to_string())
    } else {
        Err(format!(
            "specifier_config: `{target}` is not a target name (A-Z a-z 0-9 - _)"
        ))
    }
}

/// # Safety
/// `config` is a pointer `on_cluster_specifier_config_new` returned, destroyed once.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_destroy(
    config: ModulePtr,
) {
    guard((), || {
        if !config.is_null() {
            // Threads drop what they found for it at their next selection.
            GENERATION.fetch_add(1, Ordering::Release);
            // SAFETY: made by `Box::into_raw` in config_new.
            drop(unsafe { Box::from_raw(config as *mut Specifier) });
        }
    });
}

/// # Safety
/// `config` is live; `context` is the selection Envoy is making.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_select(
    config: ModulePtr,
    context: EnvoyPtr,
) -> bool {
    guard(false, || {
        // SAFETY: the caller's contract.
        let Some(specifier) = (unsafe { (config as *const Specifier).as_ref() }) else {
            return false;
        };
        specifier.with_config(|native| {
            let Some(native) = native else {
                if !specifier.missing_logged.swap(true, Ordering::Relaxed) {
                    abi::log(
                        abi::LOG_ERROR,
                        &format!(
                            "policy_canary: the cluster specifier finds no policy_canary filter of target `{}`: \
                             the route has no cluster",
                            specifier.target
                        ),
                    );
                }
                return false;
            };
            // SAFETY: `context` is live during this call.
            unsafe { select(native, context) }
        })
    })
}

/// Decides the stream's cohort, names its cluster and leaves the decision for
/// the stream's filter.
///
/// # Safety
/// `context` is the selection Envoy is making.
unsafe fn select(native: &Arc<NativeConfig>, context: EnvoyPtr) -> bool {
    let Some(cb) = abi::callbacks() else {
        return false;
    };
    let host = native.host(None, None);
    let Some(worker) = thread_worker(native, &host) else {
        return false;
    };
    // SAFETY: `context` is live; `read` gives room for `size` headers.
    let headers = unsafe {
        let size = (cb.cluster_specifier_get_request_headers_size)(context);
        HttpHeader::read(size, |room| {
            (cb.cluster_specifier_get_request_headers)(context, room)
        })
    }
    .unwrap_or_default();
    let path = headers
        .iter()
        .find(|h| {
            // SAFETY: Envoy's buffers are valid during this call.
            unsafe { h.pair() }.0 == b":path"
        })
        .map_or((0, 0), |h| (h.value_ptr as usize, h.value_length));
    // SAFETY: as above; the map is dropped before this call returns and nothing
    // edits the headers meanwhile.
    let map = HeaderMap::lent(headers.iter().map(|h| unsafe { h.pair() }).collect());
    let table = worker.current_table();
    let config = &worker.config;
    let mut edits = Vec::new();
    let decision = route_request(
        config,
        &table,
        &map,
        // SAFETY: `context` is live.
        || unsafe { (cb.cluster_specifier_get_random_value)(context) },
        |edit| match edit {
            HeaderEdit::Add(name, _)
                if name == config.cluster_header
                    || name == config.bucket_header
                    || name == config.version_header => {}
            HeaderEdit::Add(name, value) => edits.push((name.to_string(), Some(value.to_string()))),
            HeaderEdit::Remove(name) => edits.push((name.to_string(), None)),
        },
    );
    let cluster = &table.backend(decision.cohort).cluster;
    // SAFETY: the buffer outlives the call; `context` is live.
    unsafe {
        (cb.cluster_specifier_set_cluster_name)(context, ModuleBuffer::of(cluster.as_bytes()))
    };
    HANDOFF.with(|slot| {
        *slot.borrow_mut() = Some(Handoff {
            config: native.id,
            path,
            table,
            decision,
            edits,
        })
    });
    true
}

/// The specifier's decision for this stream (`filter`) of `config`, if a
/// specifier routes it: the one it left, else (once a specifier has routed a
/// stream of `config`) the one it makes when Envoy picks the route again.
/// `None`: the stream is routed by the cluster header.
pub(crate) fn routed(config: &NativeConfig, filter: EnvoyPtr) -> Option<Handoff> {
    let handoff = take(config, filter).or_else(|| {
        if !config.specified.load(Ordering::Relaxed) {
            return None;
        }
        reselect(filter);
        take(config, filter)
    })?;
    if !config.specified.load(Ordering::Relaxed) {
        config.specified.store(true, Ordering::Relaxed);
    }
    Some(handoff)
}

/// The decision the specifier left for this stream (`filter`) of `config`, if any.
fn take(config: &NativeConfig, filter: EnvoyPtr) -> Option<Handoff> {
    if HANDOFF.with(|slot| slot.borrow().is_none()) {
        return None;
    }
    let cb = abi::callbacks()?;
    // The route first: if an earlier filter cleared it, Envoy picks it again here
    // and the specifier decides again, on the headers as they now are.
    let mut cluster = EnvoyBuffer::empty();
    // SAFETY: `filter` is the running stream; `cluster` is a valid out-parameter.
    let routed = unsafe { (cb.http_get_cluster_name)(filter, &mut cluster) };
    let handoff = HANDOFF.with(|slot| slot.borrow_mut().take())?;
    let mut value = EnvoyBuffer::empty();
    // SAFETY: as above.
    let found = unsafe {
        (cb.http_get_header)(
            filter,
            abi::REQUEST_HEADER,
            ModuleBuffer::of(b":path"),
            &mut value,
            0,
            std::ptr::null_mut(),
        )
    };
    let path = (value.ptr as usize, value.length);
    let decided = &handoff.table.backend(handoff.decision.cohort).cluster;
    // A slot of this stream routes it to the cluster decided (a stale slot whose
    // `:path` memory a new stream reuses must not stand for a stream the
    // specifier did not route).
    // SAFETY: Envoy's buffer is read before the hook returns.
    let ours = found
        && routed
        && handoff.config == config.id
        && handoff.path == path
        && unsafe { cluster.bytes() } == decided.as_bytes();
    ours.then_some(handoff)
}

/// Has Envoy pick the stream's route again, now (running the specifier on the
/// current headers, if the route has it).
fn reselect(filter: EnvoyPtr) {
    if let Some(cb) = abi::callbacks() {
        let mut name = EnvoyBuffer::empty();
        // SAFETY: `filter` is the running stream; `name` is a valid out-parameter.
        unsafe {
            (cb.http_clear_route_cache)(filter);
            (cb.http_get_cluster_name)(filter, &mut name);
        }
    }
}
