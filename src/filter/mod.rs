//! proxy-wasm glue (wasm32 only): binds the plugin (`crate::plugin`) to the
//! SDK's context traits and implements its `Host` over the filter's own ABI
//! wrappers (`abi`): the SDK's `hostcalls` and trait helpers panic on an
//! unexpected status or a non-UTF-8 byte, so only its context dispatch is used.

mod abi;
mod host;

use crate::plugin::host::Host as _;
use crate::plugin::host::LogLevel as PluginLogLevel;
use crate::plugin::stream::Stream;
use crate::plugin::Role;
use host::ProxyWasmHost;
use proxy_wasm::traits::{Context, HttpContext, RootContext};
use proxy_wasm::types::{Action, ContextType, LogLevel};

proxy_wasm::main! {{
    // Also installs a panic hook that logs the panic at critical level.
    proxy_wasm::set_log_level(LogLevel::Info);
    proxy_wasm::set_root_context(|_| Box::new(Root::default()));
}}

/// One root context type for both roles; `on_configure` picks the role from the
/// plugin's `root_id`.
#[derive(Default)]
struct Root {
    role: Role,
}

impl Context for Root {
    fn on_http_call_response(
        &mut self,
        token: u32,
        _headers: usize,
        body_size: usize,
        _trailers: usize,
    ) {
        self.role
            .on_http_call_response(&ProxyWasmHost, token, body_size);
    }
}

impl RootContext for Root {
    fn on_configure(&mut self, _configuration_size: usize) -> bool {
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
        self.role = role;
        true
    }

    fn on_tick(&mut self) {
        self.role.on_tick(&ProxyWasmHost);
    }

    fn create_http_context(&self, _context_id: u32) -> Option<Box<dyn HttpContext>> {
        // The SDK panics on None, so other roles hand out a pass-through stream.
        Some(Box::new(PolicyStream(self.role.new_stream())))
    }

    fn get_type(&self) -> Option<ContextType> {
        Some(ContextType::HttpContext)
    }
}

struct PolicyStream(Stream);

impl Context for PolicyStream {}

impl HttpContext for PolicyStream {
    fn on_http_request_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.0.on_request_headers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_http_response_headers(&mut self, _num_headers: usize, _end_of_stream: bool) -> Action {
        self.0.on_response_headers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_http_response_trailers(&mut self, _num_trailers: usize) -> Action {
        self.0.on_response_trailers(&ProxyWasmHost);
        Action::Continue
    }

    fn on_log(&mut self) {
        self.0.on_log(&ProxyWasmHost);
    }
}
