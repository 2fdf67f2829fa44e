//! The native module's floor: every hook Envoy 1.40 requires of an HTTP filter,
//! each doing nothing (what loading any dynamic-module filter costs per request).

use std::ffi::{c_char, c_void};

type Ptr = *mut c_void;

#[repr(C)]
pub struct Buffer {
    ptr: *const u8,
    length: usize,
}

static CONFIG: u8 = 0;

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_program_init() -> *const c_char {
    c"v0.2.0".as_ptr()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_config_new(
    _e: Ptr,
    _n: Buffer,
    _c: Buffer,
) -> *const u8 {
    &CONFIG
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
    envoy_dynamic_module_on_http_filter_request_headers(Ptr, Ptr, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_request_body(Ptr, Ptr, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_request_trailers(Ptr, Ptr) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_headers(Ptr, Ptr, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_body(Ptr, Ptr, bool) -> u32 = 0;
    envoy_dynamic_module_on_http_filter_response_trailers(Ptr, Ptr) -> u32 = 0;
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
