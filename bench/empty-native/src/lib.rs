//! The native module's floor: every hook Envoy 1.40 requires of an HTTP filter,
//! each doing nothing (what loading any dynamic-module filter costs per request).
//! With the filter configuration `routing floor` its request hook does the least
//! a filter that picks the upstream by a header must: add the cluster header
//! (`x-policy-cluster: agent_stable`) and clear the route cache, once. Its cluster
//! specifier (a route's `inline_cluster_specifier_plugin`) picks `agent_stable`
//! while Envoy picks the route: routing by a module with no second route pick.
//! With `required edits` (beside that specifier) its hooks make only the header
//! edits policy-canary is asked to make per request, as Envoy 1.40's ABI allows
//! them (one call per header): add the version header (`x-agent-policy: v1`) and
//! remove the seven telemetry headers from the answer (its headers or, for a
//! streamed answer, its trailers).

use std::ffi::{c_char, c_void};

type Ptr = *mut c_void;

#[repr(C)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

static CONFIG: u8 = 0;
static ROUTING_FLOOR: u8 = 1;
static REQUIRED_EDITS: u8 = 3;

/// The agent's seven telemetry headers, as the benchmark's answers carry them.
const TELEMETRY: [&[u8]; 7] = [
    b"x-agent-outcome",
    b"x-agent-cost-micros",
    b"x-agent-tokens",
    b"x-agent-tool-calls",
    b"x-agent-tool-errors",
    b"x-agent-guardrail-triggers",
    b"x-agent-safety-violations",
];

// Envoy's own (the binary exports them; the module is loaded into it).
extern "C" {
    fn envoy_dynamic_module_callback_http_set_header(
        filter: Ptr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_add_header(
        filter: Ptr,
        header_type: u32,
        key: Buffer,
        value: Buffer,
    ) -> bool;
    fn envoy_dynamic_module_callback_http_clear_route_cache(filter: Ptr);
    fn envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
        context: Ptr,
        cluster: Buffer,
    );
}

/// `envoy_dynamic_module_type_http_header_type` of request and response headers.
const REQUEST_HEADER: u32 = 0;
const RESPONSE_HEADER: u32 = 2;
const RESPONSE_TRAILER: u32 = 3;

fn buffer(bytes: &[u8]) -> Buffer {
    Buffer {
        ptr: bytes.as_ptr(),
        length: bytes.len(),
    }
}

/// Null: `set_header` removes the header.
const NO_VALUE: Buffer = Buffer {
    ptr: std::ptr::null(),
    length: 0,
};

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.2.0".as_ptr()
}

/// # Safety
/// `c` is Envoy's buffer of the filter configuration, valid during the call.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _e: Ptr,
    _n: Buffer,
    c: Buffer,
) -> *const u8 {
    let config = if c.ptr.is_null() {
        &[][..]
    } else {
        // SAFETY: Envoy's buffer of `c.length` bytes, valid during the call.
        unsafe { std::slice::from_raw_parts(c.ptr, c.length) }
    };
    match config {
        b"routing floor" => &ROUTING_FLOOR,
        b"required edits" => &REQUIRED_EDITS,
        _ => &CONFIG,
    }
}

/// # Safety
/// `filter` is the stream whose hook Envoy is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_request_headers(
    filter: Ptr,
    module: *const u8,
    _end_of_stream: bool,
) -> u32 {
    if std::ptr::eq(module, &ROUTING_FLOOR) {
        let (key, value) = (b"x-policy-cluster", b"agent_stable");
        // SAFETY: `filter` is the stream whose hook is running; the buffers outlive the calls.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                filter,
                REQUEST_HEADER,
                buffer(key),
                buffer(value),
            );
            envoy_dynamic_module_callback_http_clear_route_cache(filter);
        }
    } else if std::ptr::eq(module, &REQUIRED_EDITS) {
        // SAFETY: as above.
        unsafe {
            envoy_dynamic_module_callback_http_add_header(
                filter,
                REQUEST_HEADER,
                buffer(b"x-agent-policy"),
                buffer(b"v1"),
            );
        }
    }
    0
}

/// # Safety
/// `filter` is the stream whose hook Envoy is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_headers(
    filter: Ptr,
    module: *const u8,
    _end_of_stream: bool,
) -> u32 {
    if std::ptr::eq(module, &REQUIRED_EDITS) {
        // SAFETY: `filter` is the stream whose hook is running.
        unsafe { strip_telemetry(filter, RESPONSE_HEADER) };
    }
    0
}

/// # Safety
/// `filter` is the stream whose hook Envoy is running.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_http_filter_response_trailers(
    filter: Ptr,
    module: *const u8,
) -> u32 {
    if std::ptr::eq(module, &REQUIRED_EDITS) {
        // SAFETY: `filter` is the stream whose hook is running.
        unsafe { strip_telemetry(filter, RESPONSE_TRAILER) };
    }
    0
}

/// Removes the seven telemetry headers from map `kind`, one call each.
///
/// # Safety
/// `filter` is the stream whose hook Envoy is running.
unsafe fn strip_telemetry(filter: Ptr, kind: u32) {
    for name in TELEMETRY {
        // SAFETY: the caller's; the buffer outlives the call.
        unsafe {
            envoy_dynamic_module_callback_http_set_header(filter, kind, buffer(name), NO_VALUE)
        };
    }
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_new(config: *const u8, _f: Ptr) -> *const u8 {
    config
}

macro_rules! nothing {
    ($($name:ident($($arg:ty),*) $(-> $ret:ty = $value:expr)?;)*) => {
        $(
            #[no_mangle]
            pub extern "C" fn $name($(_: $arg),*) $(-> $ret)? { $($value)? }
        )*
    };
}

nothing! {
    envoy_dynamic_module_on_http_filter_config_destroy(Ptr);
    envoy_dynamic_module_on_http_filter_per_route_config_new(Buffer, Buffer) -> Ptr = std::ptr::null_mut();
    envoy_dynamic_module_on_http_filter_per_route_config_destroy(Ptr);
    envoy_dynamic_module_on_http_filter_request_body(Ptr, Ptr, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_request_trailers(Ptr, Ptr) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_body(Ptr, Ptr, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_stream_complete(Ptr, Ptr);
    envoy_dynamic_module_on_http_filter_destroy(Ptr);
    envoy_dynamic_module_on_http_filter_http_callout_done(Ptr, Ptr, u64, u32, Ptr, usize, Ptr, usize);
    envoy_dynamic_module_on_http_filter_http_stream_headers(Ptr, Ptr, u64, Ptr, usize, bool);
    envoy_dynamic_module_on_http_filter_http_stream_data(Ptr, Ptr, u64, Ptr, usize, bool);
    envoy_dynamic_module_on_http_filter_http_stream_trailers(Ptr, Ptr, u64, Ptr, usize);
    envoy_dynamic_module_on_http_filter_http_stream_complete(Ptr, Ptr, u64);
    envoy_dynamic_module_on_http_filter_http_stream_reset(Ptr, Ptr, u64, u32);
    envoy_dynamic_module_on_http_filter_scheduled(Ptr, Ptr, u64);
    envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(Ptr, Ptr);
    envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(Ptr, Ptr);
}

static SPECIFIER: u8 = 2;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_new(
    _e: Ptr,
    _n: Buffer,
    _c: Buffer,
) -> *const u8 {
    &SPECIFIER
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_cluster_specifier_config_destroy(_config: *const u8) {}

/// # Safety
/// `context` is the selection Envoy is making.
#[no_mangle]
pub unsafe extern "C" fn envoy_dynamic_module_on_cluster_specifier_select(
    _config: *const u8,
    context: Ptr,
) -> bool {
    // SAFETY: `context` is live during this call; the buffer outlives it.
    unsafe {
        envoy_dynamic_module_callback_cluster_specifier_set_cluster_name(
            context,
            buffer(b"agent_stable"),
        )
    };
    true
}
