//! The plugin's `Host` over the filter's own ABI wrappers (`abi`), which return
//! every unexpected host status as an error instead of panicking.

use super::abi;
use crate::plugin::host::{Host, HostError, HostResult, LogLevel, MapKind, MetricKind};
use crate::wire::HeaderMap;
use std::time::Duration;

/// The running Envoy, through the ABI (zero-sized: every call goes to the host).
pub struct ProxyWasmHost;

fn status(_: abi::Status) -> HostError {
    HostError
}

fn map_type(map: MapKind) -> u32 {
    match map {
        MapKind::RequestHeaders => abi::MAP_REQUEST_HEADERS,
        MapKind::ResponseHeaders => abi::MAP_RESPONSE_HEADERS,
        MapKind::ResponseTrailers => abi::MAP_RESPONSE_TRAILERS,
        MapKind::HttpCallResponseHeaders => abi::MAP_HTTP_CALL_RESPONSE_HEADERS,
    }
}

impl Host for ProxyWasmHost {
    fn map(&self, map: MapKind) -> HostResult<HeaderMap<'_>> {
        abi::map(map_type(map)).map_err(status)
    }

    fn add_map_value(&self, map: MapKind, name: &str, value: &[u8]) -> HostResult<()> {
        abi::add_map_value(map_type(map), name, value).map_err(status)
    }

    fn remove_map_value(&self, map: MapKind, name: &str) -> HostResult<()> {
        abi::remove_map_value(map_type(map), name).map_err(status)
    }

    fn property(&self, path: &[&str]) -> HostResult<Option<Vec<u8>>> {
        abi::property(path).map_err(status)
    }

    fn define_metric(&self, kind: MetricKind, name: &str) -> HostResult<u32> {
        let kind = match kind {
            MetricKind::Counter => 0,
            MetricKind::Gauge => 1,
            MetricKind::Histogram => 2,
        };
        abi::define_metric(kind, name).map_err(status)
    }

    fn increment_metric(&self, id: u32, by: i64) -> HostResult<()> {
        abi::increment_metric(id, by).map_err(status)
    }

    fn record_metric(&self, id: u32, value: u64) -> HostResult<()> {
        abi::record_metric(id, value).map_err(status)
    }

    fn shared_data(&self, key: &str) -> HostResult<(Option<Vec<u8>>, Option<u32>)> {
        abi::shared_data(key).map_err(status)
    }

    fn set_shared_data(&self, key: &str, value: &[u8], cas: Option<u32>) -> HostResult<()> {
        abi::set_shared_data(key, value, cas).map_err(status)
    }

    fn get_metric(&self, id: u32) -> HostResult<u64> {
        abi::get_metric(id).map_err(status)
    }

    fn dispatch_http_call(
        &self,
        cluster: &str,
        headers: &[(&str, &str)],
        body: &[u8],
        timeout: Duration,
    ) -> HostResult<u32> {
        // The answer comes to the root that called, by its context id: no token table.
        let headers = HeaderMap::from_pairs(headers);
        let timeout_ms = u32::try_from(timeout.as_millis()).unwrap_or(u32::MAX);
        abi::http_call(cluster, &headers, body, timeout_ms).map_err(status)
    }

    fn http_call_body(&self, size: usize) -> HostResult<Vec<u8>> {
        abi::buffer(abi::BUFFER_HTTP_CALL_RESPONSE_BODY, 0, size)
            .map(Option::unwrap_or_default)
            .map_err(status)
    }

    fn now_ns(&self) -> u64 {
        abi::now_ns().unwrap_or(0)
    }

    fn env(&self, name: &str) -> Option<String> {
        // WASI's environ, as Envoy's `vm_config.environment_variables` sets it.
        std::env::var(name).ok()
    }

    fn log(&self, level: LogLevel, message: &str) {
        let level = match level {
            LogLevel::Info => 2,
            LogLevel::Warn => 3,
            LogLevel::Error => 4,
        };
        let _ = abi::log(level, message);
    }
}
