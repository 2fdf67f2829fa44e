//! policy-canary: canary rollout of AI-agent policies at the proxy.
//!
//! The pure core (configuration, cohort assignment, routing decisions, telemetry and
//! stats) is plain Rust shared with the controller. `plugin` is the filter's and the
//! sync service's behaviour per proxy-wasm context, written against a small `Host`
//! trait and tested with a mock host. The proxy-wasm glue in `filter` exports the
//! ABI's callbacks itself (no SDK) and is compiled only for wasm32, so host builds
//! never link a second entry point.

pub mod check;
pub mod clock;
pub mod cohort;
pub mod config;
pub mod custom;
pub mod digest;
pub mod error;
pub mod evidence;
pub mod lease;
pub mod plugin;
pub mod reader;
pub mod replicate;
pub mod route;
pub mod routing;
pub mod stats;
pub mod sync;
pub mod telemetry;
pub mod wire;

#[cfg(target_arch = "wasm32")]
mod filter;
