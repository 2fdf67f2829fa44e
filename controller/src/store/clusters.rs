//! Which upstream clusters each target may route to: bound by an admin (or by an
//! admin's plan), read when an `operate` token starts a rollout.

use rusqlite::{params, Connection, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterBinding {
    pub target: String,
    pub cluster: String,
    pub bound_ms: i64,
    /// The principal that bound it (`upgrade` for clusters in use before bindings).
    pub bound_by: String,
}

pub fn bound_clusters(conn: &Connection, target: &str) -> rusqlite::Result<Vec<ClusterBinding>> {
    let mut stmt = conn.prepare(
        "SELECT target, cluster, bound_ms, bound_by FROM target_clusters
         WHERE target = ?1 ORDER BY cluster",
    )?;
    let rows = stmt.query_map([target], |r| {
        Ok(ClusterBinding {
            target: r.get(0)?,
            cluster: r.get(1)?,
            bound_ms: r.get(2)?,
            bound_by: r.get(3)?,
        })
    })?;
    rows.collect()
}

/// Binds `cluster` to `target`; false when it already was.
pub fn bind_cluster(
    tx: &Transaction<'_>,
    target: &str,
    cluster: &str,
    by: &str,
    now_ms: i64,
) -> rusqlite::Result<bool> {
    let added = tx.execute(
        "INSERT OR IGNORE INTO target_clusters (target, cluster, bound_ms, bound_by)
         VALUES (?1, ?2, ?3, ?4)",
        params![target, cluster, now_ms, by],
    )?;
    Ok(added == 1)
}

/// Unbinds `cluster` from `target`; false when it was not bound.
pub fn unbind_cluster(tx: &Transaction<'_>, target: &str, cluster: &str) -> rusqlite::Result<bool> {
    let removed = tx.execute(
        "DELETE FROM target_clusters WHERE target = ?1 AND cluster = ?2",
        params![target, cluster],
    )?;
    Ok(removed == 1)
}
