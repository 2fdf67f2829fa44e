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
    // 3: idempotency keys of applied actions (a retried request changes nothing).
    "CREATE TABLE idempotency (
        key TEXT PRIMARY KEY,
        rollout_id INTEGER NOT NULL,
        action TEXT NOT NULL,
        at_ms INTEGER NOT NULL);",
    // 4: named, scoped API tokens (the secret's sha256 only) and who acted, by the
    // token they held.
    "CREATE TABLE tokens (
        name TEXT PRIMARY KEY,
        sha256 TEXT NOT NULL UNIQUE,
        scopes TEXT NOT NULL,
        created_ms INTEGER NOT NULL,
        created_by TEXT NOT NULL,
        revoked_ms INTEGER);
     ALTER TABLE audit ADD COLUMN principal TEXT;",
    // 5: each rollout stage's analysis window, so that a restarted controller
    // continues it (the snapshot: an Envoy-admin window's counts and baselines).
    "CREATE TABLE analysis_windows (
        rollout_id INTEGER NOT NULL,
        stage INTEGER NOT NULL,
        sequence INTEGER NOT NULL,
        started_ms INTEGER NOT NULL,
        snapshot TEXT,
        saved_ms INTEGER NOT NULL,
        PRIMARY KEY (rollout_id, stage, sequence));",
    // 6: delayed signals (judges, feedback), each placed in its rollout's arm and
    // session replicate when it was received.
    "CREATE TABLE signals (
        id TEXT PRIMARY KEY,
        target TEXT NOT NULL,
        rollout_id INTEGER NOT NULL,
        name TEXT NOT NULL,
        version TEXT NOT NULL,
        arm TEXT NOT NULL,
        traffic TEXT NOT NULL,
        replicate INTEGER NOT NULL,
        session TEXT NOT NULL,
        value REAL NOT NULL,
        at_ms INTEGER NOT NULL,
        received_ms INTEGER NOT NULL);
     CREATE INDEX signals_by_rollout ON signals (rollout_id, name, at_ms);",
    // 7: the clusters each target may route to (bound under `admin`); the ones in
    // use before are bound as they were.
    "CREATE TABLE target_clusters (
        target TEXT NOT NULL,
        cluster TEXT NOT NULL,
        bound_ms INTEGER NOT NULL,
        bound_by TEXT NOT NULL,
        PRIMARY KEY (target, cluster));
     INSERT OR IGNORE INTO target_clusters (target, cluster, bound_ms, bound_by)
        SELECT name, stable_cluster, updated_ms, 'upgrade' FROM targets;
     INSERT OR IGNORE INTO target_clusters (target, cluster, bound_ms, bound_by)
        SELECT target, json_extract(plan, '$.stable.cluster'), created_ms, 'upgrade' FROM rollouts
        WHERE json_extract(plan, '$.stable.cluster') IS NOT NULL;
     INSERT OR IGNORE INTO target_clusters (target, cluster, bound_ms, bound_by)
        SELECT target, json_extract(plan, '$.canary.cluster'), created_ms, 'upgrade' FROM rollouts
        WHERE json_extract(plan, '$.canary.cluster') IS NOT NULL;",
];

pub fn open(path: &Path) -> rusqlite::Result<Connection> {
    create_private(path).map_err(|e| {
        rusqlite::Error::InvalidParameterName(format!("cannot create {}: {e}", path.display()))
    })?;
    let mut conn = Connection::open(path)?;
    // WAL is what makes every change durable without blocking readers: refuse to run
    // without it (a file system that cannot, an in-memory database).
    let mode: String = conn.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(rusqlite::Error::InvalidParameterName(format!(
            "the state database {} cannot use WAL (journal mode `{mode}`)",
            path.display()
        )));
    }
    // FULL: an acknowledged change survives a crash of the process and of the machine.
    conn.pragma_update(None, "synchronous", "FULL")?;
    conn.pragma_update(None, "foreign_keys", "ON")?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    migrate(&mut conn)?;
    Ok(conn)
}

/// A read-only connection to a database `open` has set up: WAL lets it read the
/// last commit while the writer works, so reads never wait for a decision.
pub fn open_reader(path: &Path) -> rusqlite::Result<Connection> {
    use rusqlite::OpenFlags;
    let conn = Connection::open_with_flags(
        path,
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )?;
    conn.busy_timeout(std::time::Duration::from_secs(5))?;
    Ok(conn)
}

/// Creates the database file readable by its owner only (SQLite gives its WAL and
/// shared-memory files the same mode); an existing file is left as it is.
fn create_private(path: &Path) -> std::io::Result<()> {
    if path.exists() || path.as_os_str() == ":memory:" {
        return Ok(());
    }
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
    match options.open(path) {
        Ok(_) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

/// Creates the state directory (and missing parents) readable by its owner only.
pub fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir)
}

/// An exclusive lock on a state directory, held for the process's life: two
/// controllers on one state would both decide and serve different tables.
pub struct StateLock(#[allow(dead_code)] std::fs::File);

/// Takes the state directory's lock (`<dir>/lock`), or says who holds it.
pub fn lock(dir: &Path) -> Result<StateLock, String> {
    let path = dir.join("lock");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("cannot open {}: {e}", path.display()))?;
    #[cfg(unix)]
    {
        use std::os::fd::AsRawFd;
        // SAFETY: flock on a descriptor this function owns; the kernel drops the
        // lock when the process ends, however it ends.
        let held = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
        if held != 0 {
            return Err(format!(
                "another canaryctl serves the state directory {} (it holds {}): one controller per state directory",
                dir.display(),
                path.display()
            ));
        }
    }
    Ok(StateLock(file))
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

    #[test]
    fn the_database_is_private_and_in_wal_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        drop(open(&path).unwrap());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600, "{mode:o}");
        }
        let message = open(Path::new(":memory:")).unwrap_err().to_string();
        assert!(message.contains("cannot use WAL"), "{message}");
    }

    #[test]
    fn one_lock_per_state_directory() {
        let dir = tempfile::tempdir().unwrap();
        let first = lock(dir.path()).unwrap();
        let second = lock(dir.path()).err().unwrap();
        assert!(second.contains("another canaryctl"), "{second}");
        drop(first);
        assert!(
            lock(dir.path()).is_ok(),
            "free again once the holder is gone"
        );
    }

    /// A state from before cluster bindings keeps working for `operate` tokens:
    /// the clusters its targets and rollouts used are bound by the upgrade.
    #[test]
    fn the_upgrade_binds_the_clusters_in_use() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.db");
        {
            let conn = Connection::open(&path).unwrap();
            for migration in &MIGRATIONS[..6] {
                conn.execute_batch(migration).unwrap();
            }
            conn.pragma_update(None, "user_version", 6).unwrap();
            conn.execute(
                "INSERT INTO targets VALUES ('t', 'v1', 'blue', '{}', 1)",
                [],
            )
            .unwrap();
            conn.execute(
                "INSERT INTO rollouts (target, plan, salt, phase, stage, stage_started_ms, created_ms, updated_ms)
                 VALUES ('t', '{\"stable\": {\"cluster\": \"blue\"}, \"canary\": {\"cluster\": \"green\"}}',
                         's', 'promoted', 0, 0, 2, 2)",
                [],
            )
            .unwrap();
        }
        let conn = open(&path).unwrap();
        let bound = crate::store::bound_clusters(&conn, "t").unwrap();
        let names: Vec<(&str, &str)> = bound
            .iter()
            .map(|b| (b.cluster.as_str(), b.bound_by.as_str()))
            .collect();
        assert_eq!(names, [("blue", "upgrade"), ("green", "upgrade")]);
    }
}
