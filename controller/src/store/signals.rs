//! Delayed signals (LLM-judge scores, user feedback), as `POST /v1/signals`
//! placed them: each counted once by its id, in its rollout's arm and session
//! replicate, and summed per arm and replicate for the analysis.

use rusqlite::{params, Connection, OptionalExtension, Transaction};

/// A signal ready to store: checked and placed.
#[derive(Debug, Clone, PartialEq)]
pub struct PlacedSignal {
    pub id: String,
    pub target: String,
    pub rollout_id: i64,
    pub name: String,
    pub version: String,
    /// `stable` or `canary`.
    pub arm: &'static str,
    /// `compared`, `forced` or `segment`: only compared signals are compared.
    pub traffic: &'static str,
    pub replicate: u8,
    pub session: String,
    pub value: f64,
    pub at_ms: i64,
}

/// Stores a signal unless its id is known; `false` for a duplicate.
pub fn insert_signal(
    tx: &Transaction<'_>,
    s: &PlacedSignal,
    received_ms: i64,
) -> rusqlite::Result<bool> {
    let inserted = tx.execute(
        "INSERT OR IGNORE INTO signals
         (id, target, rollout_id, name, version, arm, traffic, replicate, session, value, at_ms, received_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
        params![
            s.id,
            s.target,
            s.rollout_id,
            s.name,
            s.version,
            s.arm,
            s.traffic,
            i64::from(s.replicate),
            s.session,
            s.value,
            s.at_ms,
            received_ms
        ],
    )?;
    Ok(inserted > 0)
}

/// The sum and count of one arm's compared signals in one replicate.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SignalSum {
    pub canary: bool,
    pub replicate: usize,
    pub sum: f64,
    pub count: f64,
}

/// A rollout's compared signals of `name` for answers in `[from_ms, until_ms)`,
/// summed per arm and replicate.
pub fn signal_sums(
    conn: &Connection,
    rollout_id: i64,
    name: &str,
    (from_ms, until_ms): (i64, i64),
) -> rusqlite::Result<Vec<SignalSum>> {
    let mut stmt = conn.prepare_cached(
        "SELECT arm, replicate, SUM(value), COUNT(*) FROM signals
         WHERE rollout_id = ?1 AND name = ?2 AND traffic = 'compared'
           AND at_ms >= ?3 AND at_ms < ?4
         GROUP BY arm, replicate",
    )?;
    let rows = stmt.query_map(params![rollout_id, name, from_ms, until_ms], |r| {
        Ok(SignalSum {
            canary: r.get::<_, String>(0)? == "canary",
            replicate: r.get::<_, i64>(1)?.clamp(0, 255) as usize,
            sum: r.get(2)?,
            count: r.get::<_, i64>(3)? as f64,
        })
    })?;
    rows.collect()
}

/// The canary weight a rollout had in force at `at_ms` (its last change then), if
/// it had started.
pub fn weight_at(conn: &Connection, rollout_id: i64, at_ms: i64) -> rusqlite::Result<Option<u16>> {
    conn.query_row(
        "SELECT canary_weight_bp FROM audit
         WHERE rollout_id = ?1 AND at_ms <= ?2 AND canary_weight_bp IS NOT NULL
         ORDER BY id DESC LIMIT 1",
        params![rollout_id, at_ms],
        |r| r.get::<_, i64>(0),
    )
    .optional()
    .map(|w| w.map(|w| w.clamp(0, 10_000) as u16))
}

/// The rollout of `target` in force at `at_ms`: the latest one created by then,
/// unless it had already ended.
pub fn rollout_at(
    conn: &Connection,
    target: &str,
    at_ms: i64,
) -> rusqlite::Result<Option<super::RolloutRow>> {
    let row = conn
        .query_row(
            &format!(
                "SELECT {} FROM rollouts WHERE target = ?1 AND created_ms <= ?2
                 ORDER BY created_ms DESC, id DESC LIMIT 1",
                super::ROLLOUT_COLUMNS
            ),
            params![target, at_ms],
            super::rollout_row,
        )
        .optional()?;
    Ok(row.filter(|r| r.state.phase.is_active() || r.updated_ms >= at_ms))
}
