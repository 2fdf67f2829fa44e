//! proxy-wasm glue (wasm32 only): the module's exports (ABI 0.2.1), dispatching
//! each to the plugin (`crate::plugin`) with a `Host` over the filter's own ABI
//! wrappers (`abi`).
//!
//! The filter exports only the callbacks it uses. Envoy enters the VM only for an
//! exported callback, so no body callback means no VM entry per body chunk: a
//! streamed answer of 200 chunks costs the same VM entries as a plain one. Nor is
//! there a `proxy_on_done`: without it the host takes a stream as done at once,
//! as it should be. (An SDK exports every callback, and also panics on an unknown
//! context id; this dispatcher ignores one.)

mod abi;
mod host;

use crate::plugin::host::Host as _;
use crate::plugin::host::LogLevel as PluginLogLevel;
use crate::plugin::stream::Stream;
use crate::plugin::Role;
use host::ProxyWasmHost;
use std::cell::RefCell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

/// Contexts by the id the host gave them.
#[derive(Default)]
struct Contexts {
    roots: HashMap<u32, Role, IdHash>,
    streams: HashMap<u32, Stream, IdHash>,
}

thread_local! {
    // A VM runs on one thread; Envoy defers a callback that would re-enter the VM
    // during a host call, so a borrow here is never contended (if it were, the
    // callback is ignored rather than panicking).
    static CONTEXTS: RefCell<Contexts> = RefCell::new(Contexts::default());
}

/// Runs `f` on the contexts; `fallback` if they are busy.
fn with_contexts<T>(fallback: T, f: impl FnOnce(&mut Contexts) -> T) -> T {
    CONTEXTS.with(|contexts| match contexts.try_borrow_mut() {
        Ok(mut contexts) => f(&mut contexts),
        Err(_) => fallback,
    })
}

/// Context ids are small distinct integers from the host: hashed by one multiply.
type IdHash = BuildHasherDefault<IdHasher>;

#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &byte in bytes {
            self.0 = (self.0 << 8 | u64::from(byte)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u32(&mut self, id: u32) {
        self.0 = u64::from(id).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// `Continue` in the ABI's filter statuses.
const CONTINUE: u32 = 0;

/// The ABI version this module speaks (the host looks for this export's name).
#[no_mangle]
pub extern "C" fn proxy_abi_version_0_2_1() {}

#[cfg(target_os = "wasi")]
extern "C" {
    fn __wasm_call_ctors();
}

/// The reactor's start: static constructors, then a panic hook that logs a panic
/// at critical level (the filter's glue never unwraps; this is the last word).
#[no_mangle]
pub extern "C" fn _initialize() {
    #[cfg(target_os = "wasi")]
    // SAFETY: the linker's constructor list, run once before anything else.
    unsafe {
        __wasm_call_ctors();
    }
    std::panic::set_hook(Box::new(|panic| {
        let _ = abi::log(5, &format!("policy_canary: panic: {panic}"));
    }));
}

/// Memory for bytes the host hands over; `abi::owned` takes them back as a
/// `Vec<u8>` of exactly `size`.
#[no_mangle]
pub extern "C" fn proxy_on_memory_allocate(size: usize) -> *mut u8 {
    let bytes = vec![0u8; size].into_boxed_slice();
    Box::into_raw(bytes).cast::<u8>()
}

#[no_mangle]
pub extern "C" fn proxy_on_vm_start(_root_id: u32, _vm_configuration_size: usize) -> bool {
    true
}

/// A new root (`root_id` 0) or a new HTTP stream of root `root_id`.
#[no_mangle]
pub extern "C" fn proxy_on_context_create(id: u32, root_id: u32) {
    with_contexts((), |contexts| {
        if root_id == 0 {
            contexts.roots.insert(id, Role::default());
        } else {
            // A stream of an unknown root passes through.
            let stream = contexts
                .roots
                .get(&root_id)
                .map_or_else(|| Stream::new(None), Role::new_stream);
            contexts.streams.insert(id, stream);
        }
    });
}

/// Configures a root; its role comes from the plugin's `root_id`.
#[no_mangle]
pub extern "C" fn proxy_on_configure(id: u32, _configuration_size: usize) -> bool {
    let host = ProxyWasmHost;
    let configuration = match abi::buffer(abi::BUFFER_PLUGIN_CONFIGURATION, 0, usize::MAX) {
        Ok(bytes) => bytes.unwrap_or_default(),
        Err(status) => {
            host.log(
                PluginLogLevel::Error,
                &format!("policy_canary: cannot read the plugin configuration: {status:?}"),
            );
            return false;
        }
    };
    let root_id = host.property(&["plugin_root_id"]).ok().flatten();
    let Some(role) = Role::configure(&host, root_id.as_deref(), &configuration) else {
        return false;
    };
    let period_ms = u32::try_from(role.tick_period().as_millis()).unwrap_or(u32::MAX);
    if abi::set_tick_period_ms(period_ms).is_err() {
        host.log(
            PluginLogLevel::Error,
            "policy_canary: cannot set the tick period",
        );
        return false;
    }
    with_contexts(false, |contexts| {
        contexts.roots.insert(id, role);
        true
    })
}

#[no_mangle]
pub extern "C" fn proxy_on_tick(id: u32) {
    with_contexts((), |contexts| {
        if let Some(role) = contexts.roots.get_mut(&id) {
            role.on_tick(&ProxyWasmHost);
        }
    });
}

/// The answer to an HTTP call, delivered to the root that made it.
#[no_mangle]
pub extern "C" fn proxy_on_http_call_response(
    id: u32,
    token: u32,
    _headers: usize,
    body_size: usize,
    _trailers: usize,
) {
    with_contexts((), |contexts| {
        if let Some(role) = contexts.roots.get_mut(&id) {
            role.on_http_call_response(&ProxyWasmHost, token, body_size);
        }
    });
}

/// Runs `f` on stream `id` (an unknown id is ignored).
fn on_stream(id: u32, f: impl FnOnce(&mut Stream)) {
    with_contexts((), |contexts| {
        if let Some(stream) = contexts.streams.get_mut(&id) {
            f(stream);
        }
    });
}

#[no_mangle]
pub extern "C" fn proxy_on_request_headers(id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    on_stream(id, |stream| stream.on_request_headers(&ProxyWasmHost));
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_headers(id: u32, _headers: usize, _end_of_stream: bool) -> u32 {
    on_stream(id, |stream| stream.on_response_headers(&ProxyWasmHost));
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_response_trailers(id: u32, _trailers: usize) -> u32 {
    on_stream(id, |stream| stream.on_response_trailers(&ProxyWasmHost));
    CONTINUE
}

#[no_mangle]
pub extern "C" fn proxy_on_log(id: u32) {
    on_stream(id, |stream| stream.on_log(&ProxyWasmHost));
}

#[no_mangle]
pub extern "C" fn proxy_on_delete(id: u32) {
    with_contexts((), |contexts| {
        if contexts.streams.remove(&id).is_none() {
            contexts.roots.remove(&id);
        }
    });
}
