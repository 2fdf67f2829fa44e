//! The proxy-wasm host calls the filter makes (ABI 0.2.1), declared here with
//! wrappers that return every unexpected status as an error: a panic in the VM
//! fails live traffic. Enum arguments are plain `u32`s (ABI 0.2.1 values), so an
//! unknown status from the host is a number, never an invalid enum.

use crate::wire::{self, HeaderMap};
use std::ptr::null_mut;

/// A status other than the ones the call expects.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Status(pub u32);

const OK: u32 = 0;
const NOT_FOUND: u32 = 1;

pub const MAP_REQUEST_HEADERS: u32 = 0;
pub const MAP_RESPONSE_HEADERS: u32 = 2;
pub const MAP_RESPONSE_TRAILERS: u32 = 3;
pub const MAP_HTTP_CALL_RESPONSE_HEADERS: u32 = 6;
pub const BUFFER_HTTP_CALL_RESPONSE_BODY: u32 = 4;
pub const BUFFER_PLUGIN_CONFIGURATION: u32 = 7;

#[link(wasm_import_module = "env")]
extern "C" {
    fn proxy_log(level: u32, message_data: *const u8, message_size: usize) -> u32;
    fn proxy_get_current_time_nanoseconds(return_time: *mut u64) -> u32;
    fn proxy_set_tick_period_milliseconds(period: u32) -> u32;
    fn proxy_get_buffer_bytes(
        buffer_type: u32,
        start: usize,
        max_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_header_map_pairs(
        map_type: u32,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_add_header_map_value(
        map_type: u32,
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
    ) -> u32;
    fn proxy_remove_header_map_value(map_type: u32, key_data: *const u8, key_size: usize) -> u32;
    fn proxy_get_property(
        path_data: *const u8,
        path_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
    ) -> u32;
    fn proxy_get_shared_data(
        key_data: *const u8,
        key_size: usize,
        return_data: *mut *mut u8,
        return_size: *mut usize,
        return_cas: *mut u32,
    ) -> u32;
    fn proxy_set_shared_data(
        key_data: *const u8,
        key_size: usize,
        value_data: *const u8,
        value_size: usize,
        cas: u32,
    ) -> u32;
    fn proxy_define_metric(
        metric_type: u32,
        name_data: *const u8,
        name_size: usize,
        return_id: *mut u32,
    ) -> u32;
    fn proxy_increment_metric(metric_id: u32, offset: i64) -> u32;
    fn proxy_record_metric(metric_id: u32, value: u64) -> u32;
    fn proxy_get_metric(metric_id: u32, return_value: *mut u64) -> u32;
    fn proxy_http_call(
        upstream_data: *const u8,
        upstream_size: usize,
        headers_data: *const u8,
        headers_size: usize,
        body_data: *const u8,
        body_size: usize,
        trailers_data: *const u8,
        trailers_size: usize,
        timeout_ms: u32,
        return_token: *mut u32,
    ) -> u32;
}

fn ok(status: u32) -> Result<(), Status> {
    if status == OK {
        Ok(())
    } else {
        Err(Status(status))
    }
}

/// Takes ownership of bytes the host returned: it allocated them through the
/// SDK's `proxy_on_memory_allocate`, a `Vec<u8>` of exactly `size`.
///
/// # Safety
/// `data` is null or was returned by the host with `size` for this call.
unsafe fn owned(data: *mut u8, size: usize) -> Option<Vec<u8>> {
    if data.is_null() {
        None
    } else {
        // SAFETY: the caller's contract (see above).
        Some(unsafe { Vec::from_raw_parts(data, size, size) })
    }
}

/// A call that returns bytes: `Ok(None)` for NotFound or no data.
fn returned_bytes(
    call: impl FnOnce(*mut *mut u8, *mut usize) -> u32,
) -> Result<Option<Vec<u8>>, Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    match call(&mut data, &mut size) {
        // SAFETY: the host filled `data` and `size` for this call.
        OK => Ok(unsafe { owned(data, size) }),
        NOT_FOUND => Ok(None),
        status => Err(Status(status)),
    }
}

pub fn log(level: u32, message: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live &str.
    ok(unsafe { proxy_log(level, message.as_ptr(), message.len()) })
}

pub fn now_ns() -> Result<u64, Status> {
    let mut time = 0u64;
    // SAFETY: a valid out-pointer.
    ok(unsafe { proxy_get_current_time_nanoseconds(&mut time) })?;
    Ok(time)
}

pub fn set_tick_period_ms(period_ms: u32) -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_set_tick_period_milliseconds(period_ms) })
}

pub fn buffer(buffer_type: u32, start: usize, max_size: usize) -> Result<Option<Vec<u8>>, Status> {
    // SAFETY: valid out-pointers.
    returned_bytes(|data, size| unsafe {
        proxy_get_buffer_bytes(buffer_type, start, max_size, data, size)
    })
}

/// Every pair of a header map; a map the decoder cannot read is an error.
pub fn map(map_type: u32) -> Result<HeaderMap<'static>, Status> {
    // SAFETY: valid out-pointers.
    let bytes =
        returned_bytes(|data, size| unsafe { proxy_get_header_map_pairs(map_type, data, size) })?;
    HeaderMap::decode(bytes.unwrap_or_default()).ok_or(Status(u32::MAX))
}

pub fn add_map_value(map_type: u32, name: &str, value: &[u8]) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    ok(unsafe {
        proxy_add_header_map_value(
            map_type,
            name.as_ptr(),
            name.len(),
            value.as_ptr(),
            value.len(),
        )
    })
}

pub fn remove_map_value(map_type: u32, name: &str) -> Result<(), Status> {
    // SAFETY: pointer and length of a live &str.
    ok(unsafe { proxy_remove_header_map_value(map_type, name.as_ptr(), name.len()) })
}

pub fn property(path: &[&str]) -> Result<Option<Vec<u8>>, Status> {
    let path = wire::encode_path(path);
    // SAFETY: pointer and length of a live Vec; valid out-pointers.
    returned_bytes(|data, size| unsafe {
        proxy_get_property(path.as_ptr(), path.len(), data, size)
    })
}

/// A shared-data value and its CAS (`None` when absent).
pub fn shared_data(key: &str) -> Result<(Option<Vec<u8>>, Option<u32>), Status> {
    let mut data: *mut u8 = null_mut();
    let mut size: usize = 0;
    let mut cas: u32 = 0;
    // SAFETY: pointer and length of a live &str; valid out-pointers.
    let status =
        unsafe { proxy_get_shared_data(key.as_ptr(), key.len(), &mut data, &mut size, &mut cas) };
    match status {
        // SAFETY: the host filled `data` and `size` for this call.
        OK => Ok((unsafe { owned(data, size) }, (cas != 0).then_some(cas))),
        NOT_FOUND => Ok((None, None)),
        status => Err(Status(status)),
    }
}

/// Stores `value` under `key`, only if its CAS is still `cas` (when given).
pub fn set_shared_data(key: &str, value: &[u8], cas: Option<u32>) -> Result<(), Status> {
    // SAFETY: pointers and lengths of live slices.
    ok(unsafe {
        proxy_set_shared_data(
            key.as_ptr(),
            key.len(),
            value.as_ptr(),
            value.len(),
            cas.unwrap_or(0),
        )
    })
}

pub fn define_metric(metric_type: u32, name: &str) -> Result<u32, Status> {
    let mut id = 0u32;
    // SAFETY: pointer and length of a live &str; a valid out-pointer.
    ok(unsafe { proxy_define_metric(metric_type, name.as_ptr(), name.len(), &mut id) })?;
    Ok(id)
}

pub fn increment_metric(id: u32, by: i64) -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_increment_metric(id, by) })
}

pub fn record_metric(id: u32, value: u64) -> Result<(), Status> {
    // SAFETY: no pointers.
    ok(unsafe { proxy_record_metric(id, value) })
}

pub fn get_metric(id: u32) -> Result<u64, Status> {
    let mut value = 0u64;
    // SAFETY: a valid out-pointer.
    ok(unsafe { proxy_get_metric(id, &mut value) })?;
    Ok(value)
}

/// Starts an HTTP call to `cluster` with `body` (maybe empty); returns its token.
pub fn http_call(
    cluster: &str,
    headers: &HeaderMap,
    body: &[u8],
    timeout_ms: u32,
) -> Result<u32, Status> {
    let headers = headers.wire();
    // An empty map: a count of 0.
    let trailers = [0u8; 4];
    let mut token = 0u32;
    // SAFETY: pointers and lengths of live slices (an empty body: null and 0); a
    // valid out-pointer.
    ok(unsafe {
        proxy_http_call(
            cluster.as_ptr(),
            cluster.len(),
            headers.as_ptr(),
            headers.len(),
            if body.is_empty() {
                std::ptr::null()
            } else {
                body.as_ptr()
            },
            body.len(),
            trailers.as_ptr(),
            trailers.len(),
            timeout_ms,
            &mut token,
        )
    })?;
    Ok(token)
}
