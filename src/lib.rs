//! policy-canary: canary rollout of AI-agent policies at the proxy.
//!
//! The pure core (configuration, cohort assignment, routing decisions, telemetry and
//! stats) is plain Rust shared with the controller. The proxy-wasm glue in `filter`
//! is compiled only for wasm32, so host builds never link a second entry point.

pub mod cohort;
pub mod config;
pub mod digest;
pub mod error;
pub mod reader;
pub mod routing;
pub mod stats;
pub mod sync;
pub mod telemetry;

#[cfg(target_arch = "wasm32")]
mod filter;
