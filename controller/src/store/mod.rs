//! SQLite persistence: WAL, full sync, one transaction per state change. `schema`
//! opens the database and migrates it; this module reads and writes its rows.

mod clusters;
mod schema;
mod signals;
mod tokens;
mod windows;

pub use clusters::{bind_cluster, bound_clusters, unbind_cluster, ClusterBinding};
pub use schema::{create_private_dir, lock, open, open_reader, schema_version, StateLock};
pub use signals::{insert_signal, rollout_at, signal_sums, weight_at, PlacedSignal, SignalSum};
pub use tokens::{find_token, get_token, insert_token, list_tokens, revoke_token, TokenRecord};
pub use windows::{forget_ended_windows, latest_window, save_window, StoredWindow};

use crate::rollout::plan::RolloutPlan;
use crate::rollout::{AuditAction, Phase, RolloutState};
use policy_canary::route::{PolicyBackend, RouteTable};
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PolicyRecord {
    pub version: String,
    pub sha256: String,
    pub id: String,
    pub created_ms: i64,
    pub bundle: serde_json::Value,
}

#[derive(Debug, Clone)]
pub struct RolloutRow {
    pub id: i64,
    pub target: String,
    pub plan: RolloutPlan,
    pub salt: String,
    pub state: RolloutState,
    pub created_ms: i64,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TargetRow {
    pub name: String,
    pub stable: PolicyBackend,
    #[serde(deserialize_with = "route_from_json")]
    pub route: RouteTable,
    pub updated_ms: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    /// The name of the token that made the change (`canaryctl` for the control
    /// loop; absent on entries older than named tokens).
    #[serde(default)]
    pub principal: Option<String>,
    /// What the client called itself (free text).
    pub actor: String,
    pub action: AuditAction,
    pub reason: String,
    pub target: Option<String>,
    pub rollout_id: Option<i64>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub revision: u64,
    /// The canary weight in force after this change (basis points), when it moved routes.
    pub canary_weight_bp: Option<u16>,
    pub details: Option<serde_json::Value>,
}

/// A new audit entry (the id and time are assigned on insert).
#[derive(Debug, Clone)]
pub struct NewAudit {
    pub principal: String,
    pub actor: String,
    pub action: AuditAction,
    pub reason: String,
    pub target: Option<String>,
    pub rollout_id: Option<i64>,
    pub from: Option<String>,
    pub to: Option<String>,
    pub canary_weight_bp: Option<u16>,
    pub details: Option<serde_json::Value>,
}

fn json_column<T: serde::de::DeserializeOwned>(text: String, index: usize) -> rusqlite::Result<T> {
    serde_json::from_str(&text).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

/// A route table read back from the API (the table parses with the filter's own reader).
fn route_from_json<'de, D: serde::Deserializer<'de>>(d: D) -> Result<RouteTable, D::Error> {
    let value = serde_json::Value::deserialize(d)?;
    RouteTable::from_json(value.to_string().as_bytes()).map_err(serde::de::Error::custom)
}

fn audit_action(text: String) -> rusqlite::Result<AuditAction> {
    AuditAction::parse(&text).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            3,
            rusqlite::types::Type::Text,
            format!("unknown audit action `{text}`").into(),
        )
    })
}

fn route_column(text: String, index: usize) -> rusqlite::Result<RouteTable> {
    RouteTable::from_json(text.as_bytes()).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(index, rusqlite::types::Type::Text, Box::new(e))
    })
}

pub fn revision(conn: &Connection) -> rusqlite::Result<u64> {
    conn.query_row(
        "SELECT value FROM meta WHERE key = 'route_revision'",
        [],
        |r| r.get::<_, i64>(0),
    )
    .map(|v| v as u64)
}

/// Increments and returns the route revision.
pub fn bump_revision(tx: &Transaction<'_>) -> rusqlite::Result<u64> {
    tx.execute(
        "UPDATE meta SET value = value + 1 WHERE key = 'route_revision'",
        [],
    )?;
    revision(tx)
}

pub fn get_policy(conn: &Connection, version: &str) -> rusqlite::Result<Option<PolicyRecord>> {
    conn.query_row(
        "SELECT version, sha256, bundle, created_ms FROM policies WHERE version = ?1",
        [version],
        policy_row,
    )
    .optional()
}

fn policy_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<PolicyRecord> {
    let version: String = r.get(0)?;
    let sha256: String = r.get(1)?;
    Ok(PolicyRecord {
        id: format!("{version}@sha256:{sha256}"),
        version,
        sha256,
        bundle: json_column(r.get(2)?, 2)?,
        created_ms: r.get(3)?,
    })
}

pub fn list_policies(conn: &Connection) -> rusqlite::Result<Vec<PolicyRecord>> {
    let mut stmt = conn.prepare(
        "SELECT version, sha256, bundle, created_ms FROM policies ORDER BY created_ms, version",
    )?;
    let rows = stmt.query_map([], policy_row)?;
    rows.collect()
}

pub fn insert_policy(
    tx: &Transaction<'_>,
    version: &str,
    sha256: &str,
    bundle: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "INSERT INTO policies (version, sha256, bundle, created_ms) VALUES (?1, ?2, ?3, ?4)",
        params![version, sha256, bundle, now_ms],
    )?;
    Ok(())
}

pub fn get_target(conn: &Connection, name: &str) -> rusqlite::Result<Option<TargetRow>> {
    conn.query_row(
        "SELECT name, stable_version, stable_cluster, route, updated_ms FROM targets WHERE name = ?1",
        [name],
        target_row,
    )
    .optional()
}

fn target_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<TargetRow> {
    Ok(TargetRow {
        name: r.get(0)?,
        stable: PolicyBackend {
            version: r.get(1)?,
            cluster: r.get(2)?,
        },
        route: route_column(r.get(3)?, 3)?,
        updated_ms: r.get(4)?,
    })
}

pub fn list_targets(conn: &Connection) -> rusqlite::Result<Vec<TargetRow>> {
    let mut stmt = conn.prepare(
        "SELECT name, stable_version, stable_cluster, route, updated_ms FROM targets ORDER BY name",
    )?;
    let rows = stmt.query_map([], target_row)?;
    rows.collect()
}

pub fn upsert_target(
    tx: &Transaction<'_>,
    name: &str,
    stable: &PolicyBackend,
    route: &RouteTable,
    now_ms: i64,
) -> rusqlite::Result<()> {
    let route = serde_json::to_string(route).unwrap_or_default();
    tx.execute(
        "INSERT INTO targets (name, stable_version, stable_cluster, route, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (name) DO UPDATE SET stable_version = ?2, stable_cluster = ?3, route = ?4, updated_ms = ?5",
        params![name, stable.version, stable.cluster, route, now_ms],
    )?;
    Ok(())
}

pub(crate) const ROLLOUT_COLUMNS: &str =
    "id, target, plan, salt, phase, stage, stage_started_ms, created_ms, updated_ms";

pub(crate) fn rollout_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<RolloutRow> {
    let phase: String = r.get(4)?;
    let phase = Phase::parse(&phase).ok_or_else(|| {
        rusqlite::Error::FromSqlConversionFailure(
            4,
            rusqlite::types::Type::Text,
            format!("unknown phase `{phase}`").into(),
        )
    })?;
    Ok(RolloutRow {
        id: r.get(0)?,
        target: r.get(1)?,
        plan: json_column(r.get(2)?, 2)?,
        salt: r.get(3)?,
        state: RolloutState {
            phase,
            stage: r.get::<_, i64>(5)? as usize,
            stage_started_ms: r.get(6)?,
        },
        created_ms: r.get(7)?,
        updated_ms: r.get(8)?,
    })
}

pub fn get_rollout(conn: &Connection, id: i64) -> rusqlite::Result<Option<RolloutRow>> {
    conn.query_row(
        &format!("SELECT {ROLLOUT_COLUMNS} FROM rollouts WHERE id = ?1"),
        [id],
        rollout_row,
    )
    .optional()
}

pub fn active_rollout(conn: &Connection, target: &str) -> rusqlite::Result<Option<RolloutRow>> {
    conn.query_row(
        &format!(
            "SELECT {ROLLOUT_COLUMNS} FROM rollouts
             WHERE target = ?1 AND phase IN ('pending', 'progressing', 'paused')"
        ),
        [target],
        rollout_row,
    )
    .optional()
}

pub fn list_rollouts(conn: &Connection, active_only: bool) -> rusqlite::Result<Vec<RolloutRow>> {
    let filter = if active_only {
        "WHERE phase IN ('pending', 'progressing', 'paused')"
    } else {
        ""
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT {ROLLOUT_COLUMNS} FROM rollouts {filter} ORDER BY id"
    ))?;
    let rows = stmt.query_map([], rollout_row)?;
    rows.collect()
}

pub fn salt_used(conn: &Connection, salt: &str) -> rusqlite::Result<bool> {
    conn.query_row(
        "SELECT COUNT(*) FROM rollouts WHERE salt = ?1",
        [salt],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| n > 0)
}

pub fn insert_rollout(
    tx: &Transaction<'_>,
    plan: &RolloutPlan,
    salt: &str,
    state: &RolloutState,
    now_ms: i64,
) -> rusqlite::Result<i64> {
    let plan_json = serde_json::to_string(plan).unwrap_or_default();
    tx.execute(
        "INSERT INTO rollouts (target, plan, salt, phase, stage, stage_started_ms, created_ms, updated_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?7)",
        params![
            plan.target,
            plan_json,
            salt,
            state.phase.as_str(),
            state.stage as i64,
            state.stage_started_ms,
            now_ms
        ],
    )?;
    Ok(tx.last_insert_rowid())
}

pub fn update_rollout_state(
    tx: &Transaction<'_>,
    id: i64,
    state: &RolloutState,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE rollouts SET phase = ?2, stage = ?3, stage_started_ms = ?4, updated_ms = ?5 WHERE id = ?1",
        params![id, state.phase.as_str(), state.stage as i64, state.stage_started_ms, now_ms],
    )?;
    Ok(())
}

pub fn insert_audit(
    tx: &Transaction<'_>,
    entry: &NewAudit,
    revision: u64,
    now_ms: i64,
) -> rusqlite::Result<AuditEntry> {
    let details = entry.details.as_ref().map(|d| d.to_string());
    tx.execute(
        "INSERT INTO audit (at_ms, actor, action, reason, target, rollout_id, from_state, to_state, revision, details, canary_weight_bp, principal)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            now_ms,
            entry.actor,
            entry.action.as_str(),
            entry.reason,
            entry.target,
            entry.rollout_id,
            entry.from,
            entry.to,
            revision as i64,
            details,
            entry.canary_weight_bp,
            entry.principal
        ],
    )?;
    Ok(AuditEntry {
        id: tx.last_insert_rowid(),
        at_ms: now_ms,
        principal: Some(entry.principal.clone()),
        actor: entry.actor.clone(),
        action: entry.action,
        reason: entry.reason.clone(),
        target: entry.target.clone(),
        rollout_id: entry.rollout_id,
        from: entry.from.clone(),
        to: entry.to.clone(),
        revision,
        canary_weight_bp: entry.canary_weight_bp,
        details: entry.details.clone(),
    })
}

/// Audit entries in order, optionally for one rollout or target, after `after_id`.
pub fn list_audit(
    conn: &Connection,
    rollout_id: Option<i64>,
    target: Option<&str>,
    after_id: i64,
    limit: i64,
) -> rusqlite::Result<Vec<AuditEntry>> {
    let mut stmt = conn.prepare(
        "SELECT id, at_ms, actor, action, reason, target, rollout_id, from_state, to_state, revision, details, canary_weight_bp, principal
         FROM audit
         WHERE (?1 IS NULL OR rollout_id = ?1) AND (?2 IS NULL OR target = ?2) AND id > ?3
         ORDER BY id LIMIT ?4",
    )?;
    let rows = stmt.query_map(params![rollout_id, target, after_id, limit], |r| {
        let details: Option<String> = r.get(10)?;
        Ok(AuditEntry {
            id: r.get(0)?,
            at_ms: r.get(1)?,
            principal: r.get(12)?,
            actor: r.get(2)?,
            action: audit_action(r.get(3)?)?,
            reason: r.get(4)?,
            target: r.get(5)?,
            rollout_id: r.get(6)?,
            from: r.get(7)?,
            to: r.get(8)?,
            revision: r.get::<_, i64>(9)? as u64,
            canary_weight_bp: r.get(11)?,
            details: details.and_then(|d| serde_json::from_str(&d).ok()),
        })
    })?;
    rows.collect()
}

/// How long an idempotency key is remembered.
pub const IDEMPOTENCY_MS: i64 = 24 * 3_600_000;

/// The request an idempotency key was first used for: rollout id and action.
pub fn idempotent_request(conn: &Connection, key: &str) -> rusqlite::Result<Option<(i64, String)>> {
    conn.query_row(
        "SELECT rollout_id, action FROM idempotency WHERE key = ?1",
        [key],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )
    .optional()
}

/// Remembers that `key` applied `action` to a rollout (forgetting keys past their day).
pub fn insert_idempotency(
    tx: &Transaction<'_>,
    key: &str,
    rollout_id: i64,
    action: &str,
    now_ms: i64,
) -> rusqlite::Result<()> {
    tx.execute(
        "DELETE FROM idempotency WHERE at_ms < ?1",
        [now_ms - IDEMPOTENCY_MS],
    )?;
    tx.execute(
        "INSERT INTO idempotency (key, rollout_id, action, at_ms) VALUES (?1, ?2, ?3, ?4)",
        params![key, rollout_id, action, now_ms],
    )?;
    Ok(())
}
