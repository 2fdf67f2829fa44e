//! Analysis windows: for each rollout stage, which analysis sequence runs and since
//! when, and (for a source that keeps no history, the Envoy admins) the window's
//! counts and baselines, so that a restarted controller continues the stage's
//! analysis instead of starting a new one and spending its error budgets again.

use rusqlite::{params, Connection, OptionalExtension};

/// One stage's analysis window as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredWindow {
    pub sequence: u32,
    pub started_ms: i64,
    /// `Window::snapshot` as JSON, when the source needs one.
    pub snapshot: Option<String>,
}

/// The latest window of a rollout's stage (the highest sequence), if any.
pub fn latest_window(
    conn: &Connection,
    rollout_id: i64,
    stage: usize,
) -> rusqlite::Result<Option<StoredWindow>> {
    conn.query_row(
        "SELECT sequence, started_ms, snapshot FROM analysis_windows
         WHERE rollout_id = ?1 AND stage = ?2 ORDER BY sequence DESC LIMIT 1",
        params![rollout_id, stage as i64],
        |r| {
            Ok(StoredWindow {
                sequence: r.get::<_, i64>(0)?.clamp(0, i64::from(u32::MAX)) as u32,
                started_ms: r.get(1)?,
                snapshot: r.get(2)?,
            })
        },
    )
    .optional()
}

/// Saves a window (replacing the one of the same sequence).
pub fn save_window(
    conn: &Connection,
    rollout_id: i64,
    stage: usize,
    window: &StoredWindow,
    now_ms: i64,
) -> rusqlite::Result<()> {
    conn.execute(
        "INSERT INTO analysis_windows (rollout_id, stage, sequence, started_ms, snapshot, saved_ms)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6)
         ON CONFLICT (rollout_id, stage, sequence)
         DO UPDATE SET started_ms = ?4, snapshot = ?5, saved_ms = ?6",
        params![
            rollout_id,
            stage as i64,
            i64::from(window.sequence),
            window.started_ms,
            window.snapshot,
            now_ms
        ],
    )?;
    Ok(())
}

/// Forgets the windows of rollouts that are no longer active.
pub fn forget_ended_windows(conn: &Connection) -> rusqlite::Result<usize> {
    conn.execute(
        "DELETE FROM analysis_windows WHERE rollout_id NOT IN
         (SELECT id FROM rollouts WHERE phase IN ('pending', 'progressing', 'paused'))",
        [],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_sequence_is_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let conn = crate::store::open(&dir.path().join("s.db")).unwrap();
        assert_eq!(latest_window(&conn, 1, 0).unwrap(), None);
        let first = StoredWindow {
            sequence: 0,
            started_ms: 10,
            snapshot: Some("{}".into()),
        };
        save_window(&conn, 1, 0, &first, 11).unwrap();
        let second = StoredWindow {
            sequence: 1,
            started_ms: 20,
            snapshot: None,
        };
        save_window(&conn, 1, 0, &second, 21).unwrap();
        assert_eq!(latest_window(&conn, 1, 0).unwrap(), Some(second.clone()));
        let again = StoredWindow {
            started_ms: 25,
            ..second
        };
        save_window(&conn, 1, 0, &again, 26).unwrap();
        assert_eq!(latest_window(&conn, 1, 0).unwrap(), Some(again));
        assert_eq!(latest_window(&conn, 1, 1).unwrap(), None);
        assert_eq!(forget_ended_windows(&conn).unwrap(), 2, "no such rollout");
    }
}
