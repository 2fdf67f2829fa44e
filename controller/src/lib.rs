//! canaryctl: the policy-canary control plane and its command-line client.
//!
//! Each room holds one concern:
//! - `rollout`: plans and their gates, and the pure state machine;
//! - `analysis`: anytime-valid bounds, comparisons, stage decisions, judges, and
//!   `evidence` with one module per source;
//! - `controller`: the operations (one SQLite transaction each), the control loop
//!   and the Envoy runtime-weights driver;
//! - `view`: the one typed view of a rollout that the API serves and the CLI and
//!   the dashboard read;
//! - `store`: SQLite state and its migrations; `registry`: policy bundles;
//! - `api`: the HTTP router, auth, handlers and the dashboard;
//! - `envoy`: the Envoy admin client; `fleet`: which Envoys follow which revision;
//!   `metrics`: the controller's own Prometheus metrics;
//! - `notify`: webhooks; `cli`: the client commands; `demo`: the demo agent and
//!   traffic generator (`canaryctl agent`, `canaryctl traffic`), kept apart from
//!   the control plane;
//! - `access`: token scopes, which scope each endpoint needs, who acted;
//! - `units`, `document`, `format`: weights and durations, YAML/JSON documents, and
//!   the formatting the CLI and the dashboard share.
//!
//! The rooms form layers with no import cycle (`tests/layout.rs` checks it): each
//! uses only rooms listed before it in `units`, `document`, `access`, `rollout`,
//! `registry`, `store`, `notify`, `envoy`, `fleet`, `metrics`, `analysis`, `format`,
//! `view`, `controller`, `demo`, `api`, `serve`, `cli`.

pub mod access;
pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod document;
pub mod envoy;
pub mod fleet;
pub mod format;
pub mod metrics;
pub mod notify;
pub mod registry;
pub mod rollout;
pub mod serve;
pub mod store;
pub mod units;
pub mod view;
