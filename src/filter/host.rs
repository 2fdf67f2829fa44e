//! The plugin's `Host` over `proxy_wasm::hostcalls`.

use crate::plugin::host::{Host, HostError, HostResult, LogLevel, MapKind, MetricKind};
use crate::routing::Header;
use proxy_wasm::hostcalls;
use proxy_wasm::types::{BufferType, MapType, MetricType, Status};
use std::time::{Duration, UNIX_EPOCH};

/// The running Envoy, through the ABI (zero-sized: every call goes to the host).
pub struct ProxyWasmHost;

fn status(_: Status) -> HostError {
    HostError
}

fn map_type(map: MapKind) -> MapType {
    match map {
        MapKind::RequestHeaders => MapType::HttpRequestHeaders,
        MapKind::ResponseHeaders => MapType::HttpResponseHeaders,
        MapKind::ResponseTrailers => MapType::HttpResponseTrailers,
        MapKind::HttpCallResponseHeaders => MapType::HttpCallResponseHeaders,
    }
}

impl Host for ProxyWasmHost {
    fn map(&self, map: MapKind) -> HostResult<Vec<Header>> {
        hostcalls::get_map_bytes(map_type(map)).map_err(status)
    }

    fn set_map_value(&self, map: MapKind, name: &str, value: &[u8]) -> HostResult<()> {
        hostcalls::set_map_value_bytes(map_type(map), name, Some(value)).map_err(status)
    }

    fn remove_map_value(&self, map: MapKind, name: &str) -> HostResult<()> {
        hostcalls::remove_map_value(map_type(map), name).map_err(status)
    }

    fn set_map(&self, map: MapKind, pairs: &[(&str, &[u8])]) -> HostResult<()> {
        hostcalls::set_map_bytes(map_type(map), pairs.to_vec()).map_err(status)
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        hostcalls::get_property(path.to_vec()).map_err(status)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        let kind = match kind {
            MetricKind::Counter => MetricType::Counter,
            MetricKind::Gauge => MetricType::Gauge,
            MetricKind::Histogram => MetricType::Histogram,
        };
        hostcalls::define_metric(kind, name).map_err(status)
    }

    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
        hostcalls::increment_metric(id, by).map_err(status)
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        hostcalls::record_metric(id, value).map_err(status)
    }

    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        hostcalls::get_shared_data(key).map_err(status)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        hostcalls::set_shared_data(key, Some(value), cas).map_err(status)
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        timeout: Duration,
    ) -> HostResult<u32> {
        hostcalls::dispatch_http_call(cluster, headers.to_vec(), None, vec![], timeout)
            .map_err(status)
    }

    fn http_call_body(&self, size: usize) -> HostResult<Vec<u8>> {
        hostcalls::get_buffer(BufferType::HttpCallResponseBody, 0, size)
            .map(Option::unwrap_or_default)
            .map_err(status)
    }

    fn now_ns(&self) -> u64 {
        hostcalls::get_current_time()
            .ok()
            .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
            .map_or(0, |d| d.as_nanos() as u64)
    }

    fn env(&self, name: &str) -> Option<String> {
        // WASI's environ, as Envoy's `vm_config.environment_variables` sets it.
        std::env::var(name).ok()
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Info => proxy_wasm::types::LogLevel::Info,
            LogLevel::Warn => proxy_wasm::types::LogLevel::Warn,
            LogLevel::Error => proxy_wasm::types::LogLevel::Error,
        };
        let _ = hostcalls::log(level, message);
    }
}
