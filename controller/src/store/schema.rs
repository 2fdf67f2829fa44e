//! Opening the database: WAL, full sync, and versioned migrations
//! (`PRAGMA user_version`).

use rusqlite::Connection;
use std::path::Path;

/// Each entry moves the schema one version up; never edit a released entry.
const MIGRATIONS: &[&str] = &[
    // 1: the first schema.
    "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
     INSERT INTO meta (key, value) VALUES ('route_revision', 0);
     CREATE TABLE policies (
        version TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL,
        bundle TEXT NOT NULL,
        created_ms INTEGER NOT NULL);
     CREATE TABLE targets (
        name TEXT PRIMARY KEY,
        stable_version TEXT NOT NULL,
        stable_cluster TEXT NOT NULL,
        route TEXT NOT NULL,
        updated_ms INTEGER NOT NULL);
     CREATE TABLE rollouts (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        target TEXT NOT NULL,
        plan TEXT NOT NULL,
        salt TEXT NOT NULL UNIQUE,
        phase TEXT NOT NULL,
        stage INTEGER NOT NULL,
        stage_started_ms INTEGER NOT NULL,
        created_ms INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL);
     CREATE UNIQUE INDEX one_active_rollout_per_target ON rollouts (target)
        WHERE phase IN ('pending', 'progressing', 'paused');
     CREATE TABLE audit (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms INTEGER NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        reason TEXT NOT NULL,
        target TEXT,
        rollout_id INTEGER,
        from_state TEXT,
        to_state TEXT,
        revision INTEGER NOT NULL,
        details TEXT);",
    // 2: the canary weight each change put in force (the dashboard's weight over time).
    "ALTER TABLE audit ADD COLUMN canary_weight_bp INTEGER;",
];

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    let mut conn = Connection::open(path)?;
    conn.pragma_update(None, "journal_mode", "WAL")?;
    // FULL: an acknowledged change survives a crash of the process and of the machine.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&mut conn)?;
    Ok(conn)
}

pub fn schema_version(conn: &Connection) -> rusqlite::Result<usize> {
    conn.query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
        .map(|v| v as usize)
}

fn migrate(conn: &mut Connection) -> rusqlite::Result<()> {
    let current = schema_version(conn)?;
    if current > MIGRATIONS.len() {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the state was written by a newer canaryctl (schema {current}, this one knows {})",
            MIGRATIONS.len()
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(current) {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", (i + 1) as i64)?;
        tx.commit()?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_apply_once_and_refuse_a_newer_schema() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        let conn = open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len());
        assert_eq!(crate::store::revision(&conn).unwrap(), 0);
        drop(conn);
        let conn = open(&path).unwrap();
        assert_eq!(schema_version(&conn).unwrap(), MIGRATIONS.len());
        conn.pragma_update(None, "user_version", 99).unwrap();
        drop(conn);
        assert!(open(&path)
            .unwrap_err()
            .to_string()
            .contains("newer canaryctl"));
    }
}
