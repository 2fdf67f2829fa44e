//! canaryctl: the policy-canary control plane and its command-line client.
//!
//! `controller` holds the operations, `rollout` the pure state machine, `plan` and
//! `policy` the documents people write, `store` the SQLite state, `api` the HTTP
//! API, `dashboard` the page at `/`, `notify` the webhooks, `envoy_runtime` the
//! Envoy runtime driver, `cli` the client commands, `agent` and `traffic` the demo's
//! agent backend and traffic generator.

pub mod agent;
pub mod analysis;
pub mod analyst;
pub mod api;
pub mod cli;
pub mod controller;
pub mod dashboard;
pub mod envoy_runtime;
pub mod evidence;
pub mod gates;
pub mod notify;
pub mod plan;
pub mod policy;
pub mod rollout;
pub mod sequential;
pub mod serve;
pub mod store;
pub mod traffic;
pub mod units;
