//! The plugin's behaviour in each proxy-wasm context, written against the `Host`
//! trait so that it runs in tests without Envoy: the root context's role
//! (`Role`), a worker's shared state (`worker`), one HTTP stream (`stream`), the
//! sync service (`sync_service`) and, for filter-side sync, the lease that lets one
//! root per Envoy run it (`lease`). The wasm glue in `filter` only binds these to
//! the module's exports and the host's imports.

pub mod evidence;
pub mod host;
pub mod lease;
pub mod stream;
pub mod sync_service;
pub mod worker;

use crate::config::PluginConfig;
use crate::sync::SyncConfig;
use host::{Host, LogLevel};
use std::rc::Rc;
use std::time::Duration;
use stream::Stream;
use sync_service::SyncService;
use worker::Worker;

/// Filter roots look for a new route table from the sync service on this tick.
pub const FOLLOW_PERIOD: Duration = Duration::from_millis(50);
/// The sync service checks whether to poll (after a backoff) on this tick.
pub const SYNC_PERIOD: Duration = Duration::from_millis(100);
/// `root_id` of the sync service (an `envoy.bootstrap.wasm` singleton).
pub const SYNC_ROOT_ID: &str = "policy_canary_sync";

/// What a root context is, once configured: one root type serves both roles.
#[derive(Default)]
pub enum Role {
    #[default]
    Unconfigured,
    Filter(Rc<Worker>),
    Sync(Box<SyncService>),
}

impl Role {
    /// The role the plugin's `root_id` asks for, from its configuration; `None`
    /// (logged, naming the field) when the configuration is invalid.
    pub fn configure(
        host: &impl Host,
        root_id: Option<&[u8]>,
        configuration: &[u8],
    ) -> Option<Role> {
        if root_id == Some(SYNC_ROOT_ID.as_bytes()) {
            match SyncConfig::from_json(configuration) {
                Ok(config) => Some(Role::Sync(Box::new(SyncService::new(config, host)))),
                Err(error) => {
                    host.log(
                        LogLevel::Error,
                        &format!("policy_canary: invalid sync configuration: {error}"),
                    );
                    None
                }
            }
        } else {
            match PluginConfig::from_json(configuration) {
                Ok(config) => Some(Role::Filter(Rc::new(Worker::new(config, host)))),
                Err(error) => {
                    host.log(
                        LogLevel::Error,
                        &format!("policy_canary: invalid plugin configuration: {error}"),
                    );
                    None
                }
            }
        }
    }

    pub fn tick_period(&self) -> Duration {
        match self {
            Role::Sync(_) => SYNC_PERIOD,
            _ => FOLLOW_PERIOD,
        }
    }

    pub fn on_tick(&mut self, host: &impl Host) {
        match self {
            Role::Filter(worker) => worker.on_tick(host),
            Role::Sync(sync) => sync.on_tick(host),
            Role::Unconfigured => {}
        }
    }

    pub fn on_http_call_response(&mut self, host: &impl Host, token: u32, body_size: usize) {
        match self {
            Role::Sync(sync) => sync.on_response(host, token, body_size, true),
            Role::Filter(worker) => worker.on_http_call_response(host, token, body_size),
            Role::Unconfigured => {}
        }
    }

    /// A stream for a new request; roles other than the filter pass it through.
    pub fn new_stream(&self) -> Stream {
        Stream::new(match self {
            Role::Filter(worker) => Some(Rc::clone(worker)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod counting_tests;
#[cfg(test)]
mod evidence_tests;
#[cfg(test)]
mod lease_tests;
#[cfg(test)]
mod tests;
