//! The control plane's operations. Each change is one SQLite transaction that moves
//! the rollout, recomputes its target's route table, bumps the route revision and
//! appends to the audit log; only after the commit do long-polls wake and webhooks go.

mod change;
pub mod clusters;
mod reconcile;
pub mod signals;
mod tokens;

pub use change::Guard;
pub mod runtime_weights;

use crate::access::Who;
use crate::analysis::evidence::WindowCounts;
use crate::analysis::judge::Judge;
use crate::analysis::Analysis;
use crate::analysis::AnalysisReport;
use crate::fleet::{EnvoyList, Fleet};
use crate::metrics::{self, Metrics};
use crate::notify::Notifier;
use crate::registry::PolicyBundle;
use crate::rollout::AuditAction;
use crate::rollout::Phase;
use crate::store::{self, AuditEntry, NewAudit, PolicyRecord, RolloutRow, TargetRow};
use crate::units::now_ms;
use crate::view::{RolloutAnalysis, RolloutView};
use axum::body::Bytes;
use policy_canary::error::ConfigError;
use policy_canary::route::{RouteTable, RoutesDocument};
use rusqlite::Connection;
use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};
use tokio::sync::watch;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    BadRequest(#[from] ConfigError),
    #[error("{0}")]
    NotFound(String),
    #[error("{message}")]
    Conflict {
        message: String,
        state: Option<String>,
    },
    /// The caller's token lacks the scope this needs (the message names it).
    #[error("{0}")]
    Forbidden(String),
    #[error("storage: {0}")]
    Storage(#[from] rusqlite::Error),
    #[error("internal: {0}")]
    Internal(String),
}

fn conflict(message: impl Into<String>, state: Option<String>) -> Error {
    Error::Conflict {
        message: message.into(),
        state,
    }
}

pub struct Controller {
    /// The one writer: changes and the control loop.
    db: Mutex<Connection>,
    /// Read-only connections for the API's reads, so that reads never wait for
    /// the writer (nor the writer for a burst of reads).
    readers: Vec<Mutex<Connection>>,
    next_reader: std::sync::atomic::AtomicUsize,
    routes: RwLock<Published>,
    /// Live tokens by secret hash, as looked up (`tokens::known_token`).
    known_tokens: RwLock<tokens::KnownTokens>,
    revision_tx: watch::Sender<u64>,
    notifier: Notifier,
    judge: Box<dyn Judge>,
    /// When (steady clock) each rollout was last analysed.
    last_check: Mutex<HashMap<i64, u64>>,
    fleet: Arc<Fleet>,
    metrics: Arc<Metrics>,
    /// Held while the controller lives: no second controller on this state.
    _lock: store::StateLock,
}

/// Read-only connections beside the writer.
const READERS: usize = 4;
/// Most audit entries one read returns.
pub const MAX_AUDIT_PAGE: i64 = 10_000;
/// Audit entries one read returns when the caller names no limit.
pub const DEFAULT_AUDIT_PAGE: i64 = 1_000;

impl Controller {
    pub fn open(state_dir: &Path, notifier: Notifier, judge: Box<dyn Judge>) -> Result<Arc<Self>> {
        store::create_private_dir(state_dir)
            .map_err(|e| Error::Internal(format!("cannot create {}: {e}", state_dir.display())))?;
        let lock = store::lock(state_dir).map_err(Error::Internal)?;
        let path = state_dir.join("canaryctl.db");
        let conn = store::open(&path)?;
        let readers = (0..READERS)
            .map(|_| store::open_reader(&path).map(Mutex::new))
            .collect::<Result<Vec<_>, _>>()?;
        // A new generation on every start: after a restore from an older backup
        // the revisions go back, and Envoys must follow them all the same.
        let epoch = random_epoch()?;
        let routes = Arc::new(load_routes(&conn, epoch)?);
        let (revision_tx, _) = watch::channel(routes.revision);
        Ok(Arc::new(Controller {
            db: Mutex::new(conn),
            readers,
            next_reader: Default::default(),
            routes: RwLock::new(Published::new(routes)),
            known_tokens: RwLock::default(),
            revision_tx,
            notifier,
            judge,
            last_check: Mutex::new(HashMap::new()),
            fleet: Arc::default(),
            metrics: Arc::default(),
            _lock: lock,
        }))
    }

    /// The writer connection. Its transactions begin IMMEDIATE: the analysis
    /// windows' store writes through a connection of its own, and a deferred
    /// transaction that read before it wrote would fail at once with
    /// SQLITE_BUSY instead of waiting out the busy timeout.
    fn db(&self) -> std::sync::MutexGuard<'_, Connection> {
        // A panic while holding the lock leaves SQLite consistent (transactions roll back).
        self.db
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A free reader connection, else the next one in turn.
    fn reader(&self) -> std::sync::MutexGuard<'_, Connection> {
        for reader in &self.readers {
            if let Ok(conn) = reader.try_lock() {
                return conn;
            }
        }
        let turn = self
            .next_reader
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.readers[turn % self.readers.len()]
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn routes(&self) -> Arc<RoutesDocument> {
        Arc::clone(&self.published().doc)
    }

    /// The route tables in force as JSON, encoded once per change: ten thousand
    /// long-polls answered at once share it.
    pub fn routes_json(&self) -> Bytes {
        self.published().json
    }

    fn published(&self) -> Published {
        self.routes
            .read()
            .map(|r| r.clone())
            .unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// The Envoys that poll for route tables.
    pub fn fleet(&self) -> &Arc<Fleet> {
        &self.fleet
    }

    /// The counters behind `/metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    /// `/metrics`: the counters and what the state says now.
    pub fn metrics_text(&self, envoys: &EnvoyList) -> Result<String> {
        let rows = store::list_rollouts(&self.reader(), false)?;
        let by_phase: Vec<(&'static str, u64)> = Phase::ALL
            .iter()
            .map(|phase| {
                let n = rows.iter().filter(|r| r.state.phase == *phase).count();
                (phase.as_str(), n as u64)
            })
            .collect();
        Ok(metrics::render(
            &self.metrics,
            &metrics::Snapshot {
                rollouts_by_phase: &by_phase,
                routes: &self.routes(),
                envoys,
                open_polls: self.fleet.open_polls(),
            },
        ))
    }

    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.revision_tx.subscribe()
    }

    /// Re-reads the route tables after a commit and wakes the long-polls.
    fn publish(&self, conn: &Connection) -> Result<()> {
        let doc = Arc::new(load_routes(conn, self.routes().epoch)?);
        let revision = doc.revision;
        let published = Published::new(doc);
        match self.routes.write() {
            Ok(mut routes) => *routes = published,
            Err(poisoned) => *poisoned.into_inner() = published,
        }
        self.revision_tx.send_replace(revision);
        Ok(())
    }

    pub fn add_policy(&self, text: &str, who: &Who) -> Result<(PolicyRecord, bool)> {
        let bundle = PolicyBundle::parse(text)?;
        let sha = bundle.sha256();
        let mut conn = self.db();
        if let Some(existing) = store::get_policy(&conn, &bundle.version)? {
            if existing.sha256 == sha {
                return Ok((existing, false));
            }
            return Err(conflict(
                format!(
                    "policy {} is already registered with sha256 {}; this bundle has sha256 {sha}. \
                     Policies are immutable: register the change under a new version",
                    bundle.version, existing.sha256
                ),
                None,
            ));
        }
        let now = now_ms();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        store::insert_policy(&tx, &bundle.version, &sha, &bundle.canonical_json(), now)?;
        audit_outside_rollouts(
            &tx,
            who,
            AuditAction::PolicyRegistered,
            format!("{}@sha256:{sha}", bundle.version),
            None,
            now,
        )?;
        tx.commit()?;
        let record = store::get_policy(&conn, &bundle.version)?
            .ok_or_else(|| Error::Internal("policy vanished after insert".into()))?;
        Ok((record, true))
    }

    pub fn policies(&self) -> Result<Vec<PolicyRecord>> {
        Ok(store::list_policies(&self.reader())?)
    }

    pub fn policy(&self, version: &str) -> Result<PolicyRecord> {
        store::get_policy(&self.reader(), version)?
            .ok_or_else(|| Error::NotFound(format!("no policy version `{version}`")))
    }

    pub fn targets(&self) -> Result<Vec<TargetRow>> {
        Ok(store::list_targets(&self.reader())?)
    }

    pub fn rollouts(&self, active_only: bool) -> Result<Vec<RolloutView>> {
        let conn = self.reader();
        let now = now_ms();
        store::list_rollouts(&conn, active_only)?
            .into_iter()
            .map(|row| self.view(&conn, row, now))
            .collect()
    }

    pub fn rollout(&self, id: i64) -> Result<RolloutView> {
        let conn = self.reader();
        let row = store::get_rollout(&conn, id)?.ok_or_else(|| not_found(id))?;
        self.view(&conn, row, now_ms())
    }

    pub fn rollout_rows(&self, active_only: bool) -> Result<Vec<RolloutRow>> {
        Ok(store::list_rollouts(&self.reader(), active_only)?)
    }

    /// The analysis of a rollout: its current stage's while it is under way, when the
    /// judge can give one; once it has ended, the comparison its last automatic
    /// decision kept in the audit log, marked with that decision's time.
    pub fn analysis(&self, id: i64) -> Result<RolloutAnalysis> {
        let row = self.rollout_row(id)?;
        let analysis = if row.state.phase.is_active() {
            self.judge.report(&row)
        } else {
            self.last_decision(id)?
        };
        Ok(RolloutAnalysis {
            rollout_id: row.id,
            phase: row.state.phase,
            stage: row.state.stage + 1,
            analysis,
        })
    }

    /// The counts behind an active rollout's analysis (its stage's window).
    pub fn evidence(&self, id: i64) -> Result<WindowCounts> {
        let row = self.rollout_row(id)?;
        if !row.state.phase.is_active() {
            return Err(Error::NotFound(format!(
                "rollout {id} is {}: its windows are gone (its decisions keep their analyses: GET /v1/audit)",
                row.state.phase.as_str()
            )));
        }
        self.judge.counts(&row).ok_or_else(|| {
            Error::NotFound(
                "this controller reads no evidence (canaryctl serve --evidence): stages move on time"
                    .into(),
            )
        })
    }

    fn last_decision(&self, id: i64) -> Result<Option<AnalysisReport>> {
        let audit = self.audit(Some(id), None, 0, MAX_AUDIT_PAGE)?;
        Ok(audit.iter().rev().find_map(|e| {
            let analysis = Analysis::from_audit(e)?;
            Some(AnalysisReport {
                analysis,
                consecutive_failures: None,
                decided_ms: Some(e.at_ms),
            })
        }))
    }

    pub fn rollout_row(&self, id: i64) -> Result<RolloutRow> {
        store::get_rollout(&self.reader(), id)?.ok_or_else(|| not_found(id))
    }

    pub fn audit(
        &self,
        rollout_id: Option<i64>,
        target: Option<&str>,
        after_id: i64,
        limit: i64,
    ) -> Result<Vec<AuditEntry>> {
        Ok(store::list_audit(
            &self.reader(),
            rollout_id,
            target,
            after_id,
            limit.clamp(1, MAX_AUDIT_PAGE),
        )?)
    }

    fn view(&self, conn: &Connection, row: RolloutRow, now: i64) -> Result<RolloutView> {
        let revision = store::get_target(conn, &row.target)?.map_or(0, |t| t.route.revision);
        Ok(RolloutView::new(row, revision, now))
    }

    /// Every cluster a target's rollouts have used (for the runtime driver).
    pub fn known_clusters(&self) -> Result<HashMap<String, Vec<String>>> {
        let mut clusters: HashMap<String, Vec<String>> = HashMap::new();
        for row in store::list_rollouts(&self.reader(), false)? {
            let entry = clusters.entry(row.target).or_default();
            for cluster in [row.plan.stable.cluster, row.plan.canary.cluster] {
                if !entry.contains(&cluster) {
                    entry.push(cluster);
                }
            }
        }
        Ok(clusters)
    }
}

/// Audits a change that concerns no rollout (a policy, a token), at the current
/// route revision.
fn audit_outside_rollouts(
    tx: &rusqlite::Transaction<'_>,
    who: &Who,
    action: AuditAction,
    reason: String,
    target: Option<&str>,
    now: i64,
) -> Result<()> {
    let revision = store::revision(tx)?;
    store::insert_audit(
        tx,
        &NewAudit {
            principal: who.principal.clone(),
            actor: who.actor.clone(),
            action,
            reason,
            target: target.map(str::to_string),
            rollout_id: None,
            from: None,
            to: None,
            canary_weight_bp: None,
            details: None,
        },
        revision,
        now,
    )?;
    Ok(())
}

fn not_found(id: i64) -> Error {
    Error::NotFound(format!("no rollout #{id}"))
}

/// A generation id: random, non-zero, exact as a JSON number in any client (48 bits).
fn random_epoch() -> Result<u64> {
    let mut bytes = [0u8; 8];
    getrandom::fill(&mut bytes).map_err(|e| Error::Internal(format!("no randomness: {e}")))?;
    Ok((u64::from_le_bytes(bytes) & 0xffff_ffff_ffff) | 1)
}

/// The route tables in force and their JSON.
#[derive(Clone)]
struct Published {
    doc: Arc<RoutesDocument>,
    json: Bytes,
}

impl Published {
    fn new(doc: Arc<RoutesDocument>) -> Published {
        // Serializing plain data with string keys cannot fail.
        let json = serde_json::to_vec(doc.as_ref()).unwrap_or_default().into();
        Published { doc, json }
    }
}

fn load_routes(conn: &Connection, epoch: u64) -> Result<RoutesDocument> {
    let revision = store::revision(conn)?;
    let routes = store::list_targets(conn)?
        .into_iter()
        .map(|t| (t.name, t.route))
        .collect::<std::collections::BTreeMap<String, RouteTable>>();
    Ok(RoutesDocument {
        epoch,
        revision,
        routes,
    })
}
