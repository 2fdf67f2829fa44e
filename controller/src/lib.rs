//! canaryctl: the policy-canary control plane and its command-line client.
//!
//! Each room holds one concern:
//! - `rollout`: plans, the pure state machine, and the typed view of a rollout;
//! - `analysis`: gates, anytime-valid bounds, stage decisions, and `evidence`
//!   with one module per source;
//! - `controller`: the operations (one SQLite transaction each) and the control loop;
//! - `store`: SQLite state and its migrations; `registry`: policy bundles;
//! - `api`: the HTTP router, auth, handlers and the dashboard;
//! - `envoy`: the Envoy admin client and the runtime-weights driver;
//! - `notify`: webhooks; `cli`: the client commands; `demo`: the demo agent and
//!   traffic generator (`canaryctl agent`, `canaryctl traffic`), kept apart from
//!   the control plane;
//! - `units`, `document`, `format`: weights and durations, YAML/JSON documents, and
//!   the formatting the CLI and the dashboard share.

pub mod analysis;
pub mod api;
pub mod cli;
pub mod controller;
pub mod demo;
pub mod document;
pub mod envoy;
pub mod format;
pub mod notify;
pub mod registry;
pub mod rollout;
pub mod serve;
pub mod store;
pub mod units;
