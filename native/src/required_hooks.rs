//! The HTTP-filter hooks Envoy requires of a module that this filter does not
//! use: each answers `Continue` or does nothing.

use crate::abi::{self, EnvoyBuffer, EnvoyPtr, ModulePtr};

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_new(
    _name: EnvoyBuffer,
    _config: EnvoyBuffer,
) -> ModulePtr {
    abi::log(
        abi::LOG_ERROR,
        "policy_canary: per-route configuration is not supported",
    );
    std::ptr::null()
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_per_route_config_destroy(_config: ModulePtr) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_body(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    abi::SUCCESS
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_request_trailers(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
) -> u32 {
    abi::SUCCESS
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_response_body(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _end_of_stream: bool,
) -> u32 {
    abi::SUCCESS
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_callout_done(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _callout: u64,
    _result: u32,
    _headers: *const abi::HttpHeader,
    _headers_size: usize,
    _body: *const EnvoyBuffer,
    _body_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_headers(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _id: u64,
    _headers: *const abi::HttpHeader,
    _headers_size: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_data(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _id: u64,
    _data: *const EnvoyBuffer,
    _data_count: usize,
    _end_stream: bool,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_trailers(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _id: u64,
    _trailers: *const abi::HttpHeader,
    _trailers_size: usize,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_complete(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _id: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_http_stream_reset(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _id: u64,
    _reason: u32,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_scheduled(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
    _event: u64,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_above_write_buffer_high_watermark(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
) {
}

#[no_mangle]
pub extern "C" fn envoy_dynamic_module_on_http_filter_downstream_below_write_buffer_low_watermark(
    _filter: EnvoyPtr,
    _stream: ModulePtr,
) {
}
