//! What a worker's root context shares with its streams: the configuration, the
//! route table in force, counts not yet flushed, metric ids. A worker VM runs on one
//! thread, so `Rc` and `RefCell` suffice; only the tally sits behind a mutex, so
//! that a native module's main thread can hand it to Envoy while the worker serves.

use super::host::{Host, LogLevel, MetricKind};
use super::lease::Lease;
use super::sync_service::SyncService;
use crate::config::PluginConfig;
use crate::custom::{self, PendingCustom};
use crate::replicate::{replicate_stat_name, PendingReplicates, Slot, REPLICATES};
use crate::route::RouteTable;
use crate::stats::{
    stat_name, stat_target, ByVersion, Counter, PendingCounts, Traffic, LATENCY_SUFFIX,
};
use crate::sync::{Follow, TableFollower, ROUTES_KEY};
use std::cell::{Cell, RefCell};
use std::rc::Rc;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

pub struct Worker {
    pub config: PluginConfig,
    /// The table new requests are routed by: the configuration's until the sync
    /// service delivers a newer one for this target.
    pub table: RefCell<Rc<RouteTable>>,
    follower: RefCell<TableFollower>,
    ticks: Cell<u32>,
    tally: Arc<Mutex<Tally>>,
    rng: Cell<u64>,
    host_error_logged: Cell<bool>,
    /// Filter-side sync, when the configuration has a `sync` block.
    sync: Option<RefCell<FilterSync>>,
}

/// A filter root's part in filter-side sync: the lease, and the poller it runs
/// while it holds it.
struct FilterSync {
    lease: Lease,
    service: SyncService,
    /// It polled at its last tick.
    leading: bool,
}

/// Counts live in wasm memory per worker and reach Envoy every this many ticks.
pub const FLUSH_EVERY_TICKS: u32 = 5;

impl Worker {
    /// A worker for a valid configuration; the sync service's table, if one is
    /// already in shared data, applies at once.
    pub fn new(config: PluginConfig, host: &impl Host) -> Worker {
        // The Envoy process's instance, as early as its first root starts.
        let _ = super::evidence::instance(host);
        let table = Rc::new(config.route.clone());
        let sync = config.sync.clone().map(|sync| {
            RefCell::new(FilterSync {
                lease: Lease::new(host),
                service: SyncService::new(sync, host),
                leading: false,
            })
        });
        let worker = Worker {
            config,
            table: RefCell::new(table),
            follower: RefCell::default(),
            ticks: Cell::new(0),
            tally: Arc::default(),
            rng: Cell::new(host.now_ms().wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1),
            host_error_logged: Cell::new(false),
            sync,
        };
        worker.follow(host);
        worker
    }

    /// The table a new stream is routed by.
    pub fn current_table(&self) -> Rc<RouteTable> {
        Rc::clone(&self.table.borrow())
    }

    /// xorshift64*: 64 random bits for a sessionless request under `missing: random`.
    pub fn random(&self) -> u64 {
        let mut x = self.rng.get();
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.rng.set(x);
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// Logs the first failed host call of this worker; later ones are only dropped.
    pub fn host_error(&self, host: &impl Host, what: &str) {
        if !self.host_error_logged.replace(true) {
            host.log(
                LogLevel::Warn,
                &format!("policy_canary: host call failed: {what} (further failures not logged)"),
            );
        }
    }

    /// The root's tick: poll the controller if this root leads filter-side sync,
    /// follow the shared table, flush counts every few ticks.
    pub fn on_tick(&self, host: &impl Host) {
        if let Some(sync) = &self.sync {
            let mut sync = sync.borrow_mut();
            let may_poll = sync.lease.tick(host);
            if may_poll && !sync.leading {
                sync.service.resume_from_shared(host);
            }
            sync.leading = may_poll;
            if may_poll {
                sync.service.on_tick(host);
            }
        }
        self.follow(host);
        let ticks = self.ticks.get().wrapping_add(1);
        self.ticks.set(ticks);
        if ticks.is_multiple_of(FLUSH_EVERY_TICKS) {
            self.flush(host);
        }
    }

    /// The answer to a filter-side sync poll.
    pub fn on_http_call_response(&self, host: &impl Host, token: u32, body_size: usize) {
        if let Some(sync) = &self.sync {
            let mut sync = sync.borrow_mut();
            // Leading at the last tick is not enough: the lease may have moved on
            // while this poll was out, and the answer is then another's to store.
            let leading = sync.leading && sync.lease.still_held(host);
            sync.service.on_response(host, token, body_size, leading);
        }
    }

    /// This root runs filter-side sync now.
    pub fn sync_leading(&self) -> bool {
        self.sync.as_ref().is_some_and(|s| s.borrow().leading)
    }

    /// How this Envoy names itself to the controller, with filter-side sync.
    pub fn envoy_id(&self, host: &impl Host) -> Option<String> {
        self.sync
            .as_ref()
            .map(|s| s.borrow().service.envoy_id(host))
    }

    /// Picks up a newer route table from shared data, parsing only a changed document.
    pub fn follow(&self, host: &impl Host) {
        let Ok((value, cas)) = host.shared_data(ROUTES_KEY) else {
            return;
        };
        let current = self.table.borrow().revision;
        let outcome =
            self.follower
                .borrow_mut()
                .follow(&self.config.target, current, value.as_deref(), cas);
        match outcome {
            Follow::Newer(table) => *self.table.borrow_mut() = Rc::new(table),
            Follow::Invalid(error) => host.log(
                LogLevel::Warn,
                &format!("policy_canary: ignoring the shared routes document: {error}"),
            ),
            Follow::Same | Follow::NothingForTarget => {}
        }
    }

    /// What this worker's streams counted, locked for the caller.
    pub fn tally(&self) -> MutexGuard<'_, Tally> {
        self.tally.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The tally itself, for a thread that flushes it on the worker's behalf (the
    /// native module's main thread; the worker then never flushes it itself).
    pub fn shared_tally(&self) -> Arc<Mutex<Tally>> {
        Arc::clone(&self.tally)
    }

    /// Adds the pending counts to Envoy's metrics; what fails stays pending.
    pub fn flush(&self, host: &impl Host) {
        self.tally().flush(host, &self.config.target);
    }
}

/// What a worker's streams counted and has not yet handed to the host's metrics,
/// with the metric ids it has defined.
#[derive(Default)]
pub struct Tally {
    pub counts: PendingCounts,
    pub replicates: PendingReplicates,
    pub custom: PendingCustom,
    pub metrics: MetricIds,
}

impl Tally {
    /// Adds the pending counts to the host's metrics (stats of `target`); what
    /// fails stays pending.
    pub fn flush(&mut self, host: &impl Host, target: &str) {
        let Tally {
            counts,
            replicates,
            custom,
            metrics,
        } = self;
        counts.flush(|version, traffic, counter, value| {
            let id = metrics.counter(host, target, version, traffic, counter);
            increment(host, id, value)
        });
        replicates.flush(|version, replicate, slot, value| {
            let id = metrics.replicate(host, target, version, replicate, slot);
            increment(host, id, value)
        });
        custom.versions.for_each_mut(|version, traffic, counts| {
            counts.flush(|name, field, value| {
                let stat = stat_name(
                    &stat_target(target, traffic),
                    version,
                    &custom::suffix(name, field),
                );
                increment(host, metrics.named(host, stat), value)
            })
        });
        custom.replicates.for_each_mut(|version, _, replicates| {
            replicates.flush(|name, replicate, field, value| {
                let stat = stat_name(
                    target,
                    version,
                    &format!("replicate.{replicate}.{}", custom::suffix(name, field)),
                );
                increment(host, metrics.named(host, stat), value)
            })
        });
        custom
            .versions
            .forget_if_many(custom::CustomCounts::is_zero);
        custom
            .replicates
            .forget_if_many(custom::CustomReplicates::is_zero);
    }
}

/// Adds `value` to metric `id`; returns how much went out (0 without an id or on
/// a failed call: it stays pending).
fn increment(host: &impl Host, id: Option<u32>, value: u64) -> u64 {
    let Some(id) = id else {
        return 0;
    };
    let amount = value.min(i64::MAX as u64);
    match host.increment_metric(id, amount as i64) {
        Ok(()) => amount,
        Err(_) => 0,
    }
}

/// Envoy metric ids, defined the first time a version needs them.
#[derive(Default)]
pub struct MetricIds {
    versions: ByVersion<VersionMetrics>,
    replicates: ByVersion<ReplicateMetrics>,
    /// Custom metrics' counters by full stat name (few: only what agents report).
    named: Vec<(String, u32)>,
}

/// One version's replicate metric ids, defined as each slot first has a count.
struct ReplicateMetrics(Vec<[Option<u32>; Slot::COUNT]>);

impl Default for ReplicateMetrics {
    fn default() -> Self {
        ReplicateMetrics(vec![[None; Slot::COUNT]; REPLICATES])
    }
}

#[derive(Default)]
struct VersionMetrics {
    counters: [Option<u32>; Counter::ALL.len()],
    latency: Option<u32>,
}

impl MetricIds {
    pub fn counter(
        &mut self,
        host: &impl Host,
        target: &str,
        version: &str,
        traffic: Traffic,
        counter: Counter,
    ) -> Option<u32> {
        let slot = &mut self.versions.get_mut(version, traffic).counters[counter as usize];
        let target = stat_target(target, traffic);
        define(
            host,
            slot,
            MetricKind::Counter,
            &target,
            version,
            counter.suffix(),
        )
    }

    pub fn replicate(
        &mut self,
        host: &impl Host,
        target: &str,
        version: &str,
        replicate: u8,
        slot: Slot,
    ) -> Option<u32> {
        let ids = self.replicates.get_mut(version, Traffic::Compared);
        let id = ids
            .0
            .get_mut(usize::from(replicate))?
            .get_mut(slot.index())?;
        if id.is_none() {
            *id = host
                .define_metric(
                    MetricKind::Counter,
                    &replicate_stat_name(target, version, replicate, slot),
                )
                .ok();
        }
        *id
    }

    /// A counter by its full stat name (custom metrics), defined the first time.
    pub fn named(&mut self, host: &impl Host, stat: String) -> Option<u32> {
        if let Some((_, id)) = self.named.iter().find(|(name, _)| *name == stat) {
            return Some(*id);
        }
        let id = host.define_metric(MetricKind::Counter, &stat).ok()?;
        // Ids stay valid in Envoy; past a bound only the lookup cache is dropped.
        if self.named.len() >= 1024 {
            self.named.clear();
        }
        self.named.push((stat, id));
        Some(id)
    }

    pub fn latency(
        &mut self,
        host: &impl Host,
        target: &str,
        version: &str,
        traffic: Traffic,
    ) -> Option<u32> {
        let slot = &mut self.versions.get_mut(version, traffic).latency;
        let target = stat_target(target, traffic);
        define(
            host,
            slot,
            MetricKind::Histogram,
            &target,
            version,
            LATENCY_SUFFIX,
        )
    }
}

fn define(
    host: &impl Host,
    slot: &mut Option<u32>,
    kind: MetricKind,
    target: &str,
    version: &str,
    suffix: &str,
) -> Option<u32> {
    if slot.is_none() {
        *slot = host
            .define_metric(kind, &stat_name(target, version, suffix))
            .ok();
    }
    *slot
}
