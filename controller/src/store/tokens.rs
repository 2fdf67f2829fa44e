//! Named API tokens: the secret's sha256, its scopes, who made it and whether it
//! is revoked. A revoked token keeps its row (its name stays taken, the audit
//! still names it).

use crate::access::Scope;
use rusqlite::{params, Connection, OptionalExtension, Transaction};
use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenRecord {
    pub name: String,
    pub scopes: Vec<Scope>,
    pub created_ms: i64,
    /// The principal that created it.
    pub created_by: String,
    pub revoked_ms: Option<i64>,
}

fn scopes_column(text: String) -> rusqlite::Result<Vec<Scope>> {
    text.split(',')
        .filter(|s| !s.is_empty())
        .map(|s| {
            Scope::parse(s).map_err(|e| {
                rusqlite::Error::FromSqlConversionFailure(
                    2,
                    rusqlite::types::Type::Text,
                    Box::<dyn std::error::Error + Send + Sync>::from(e),
                )
            })
        })
        .collect()
}

fn record(r: &rusqlite::Row<'_>) -> rusqlite::Result<TokenRecord> {
    Ok(TokenRecord {
        name: r.get(0)?,
        scopes: scopes_column(r.get(1)?)?,
        created_ms: r.get(2)?,
        created_by: r.get(3)?,
        revoked_ms: r.get(4)?,
    })
}

const COLUMNS: &str = "name, scopes, created_ms, created_by, revoked_ms";

/// Stores a token; `false` when the name is taken (revoked names too).
pub fn insert_token(
    tx: &Transaction<'_>,
    token: &TokenRecord,
    sha256: &str,
) -> rusqlite::Result<bool> {
    let scopes: Vec<&str> = token.scopes.iter().map(|s| s.as_str()).collect();
    let inserted = tx.execute(
        "INSERT INTO tokens (name, sha256, scopes, created_ms, created_by) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT DO NOTHING",
        params![
            token.name,
            sha256,
            scopes.join(","),
            token.created_ms,
            token.created_by
        ],
    )?;
    Ok(inserted == 1)
}

/// The token whose secret hashes to `sha256`, revoked or not.
pub fn find_token(conn: &Connection, sha256: &str) -> rusqlite::Result<Option<TokenRecord>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tokens WHERE sha256 = ?1"),
        [sha256],
        record,
    )
    .optional()
}

pub fn list_tokens(conn: &Connection) -> rusqlite::Result<Vec<TokenRecord>> {
    let mut stmt = conn.prepare(&format!("SELECT {COLUMNS} FROM tokens ORDER BY name"))?;
    let rows = stmt.query_map([], record)?;
    rows.collect()
}

/// The token named `name`, revoked or not.
pub fn get_token(conn: &Connection, name: &str) -> rusqlite::Result<Option<TokenRecord>> {
    conn.query_row(
        &format!("SELECT {COLUMNS} FROM tokens WHERE name = ?1"),
        [name],
        record,
    )
    .optional()
}

/// Marks `name` revoked at `now_ms`.
pub fn revoke_token(tx: &Transaction<'_>, name: &str, now_ms: i64) -> rusqlite::Result<()> {
    tx.execute(
        "UPDATE tokens SET revoked_ms = ?2 WHERE name = ?1",
        params![name, now_ms],
    )?;
    Ok(())
}
