//! Named, scoped API tokens: made (the secret is returned once and only its sha256
//! kept), listed, revoked (from the next request on), and looked up for each
//! request. Creation and revocation are audited, without the secret.

use super::{audit_outside_rollouts, conflict, Controller, Error, Result};
use crate::access::{is_token_name, new_secret, secret_hash, Scope, Who, MAX_TOKEN_NAME};
use crate::rollout::AuditAction;
use crate::store::{self, TokenRecord};
use crate::units::now_ms;
use policy_canary::error::err;

impl Controller {
    /// Makes a token; returns it and its secret (shown once).
    pub fn create_token(
        &self,
        name: &str,
        scopes: &[Scope],
        who: &Who,
    ) -> Result<(TokenRecord, String)> {
        if !is_token_name(name) {
            return Err(err(
                "name",
                format!("1 to {MAX_TOKEN_NAME} of a-z, A-Z, 0-9, `.`, `_`, `-`"),
            )
            .into());
        }
        if scopes.is_empty() {
            return Err(err("scopes", "name at least one scope").into());
        }
        let mut scopes = scopes.to_vec();
        scopes.sort();
        scopes.dedup();
        let secret = new_secret().map_err(Error::Internal)?;
        let now = now_ms();
        let record = TokenRecord {
            name: name.to_string(),
            scopes,
            created_ms: now,
            created_by: who.principal.clone(),
            revoked_ms: None,
        };
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        if !store::insert_token(&tx, &record, &secret_hash(&secret))? {
            return Err(conflict(
                format!("a token named `{name}` exists (or existed: names of revoked tokens stay taken); choose another name"),
                None,
            ));
        }
        let scopes: Vec<&str> = record.scopes.iter().map(|s| s.as_str()).collect();
        audit_outside_rollouts(
            &tx,
            who,
            AuditAction::TokenCreated,
            format!("token {name} ({})", scopes.join(", ")),
            None,
            now,
        )?;
        tx.commit()?;
        Ok((record, secret))
    }

    pub fn tokens(&self) -> Result<Vec<TokenRecord>> {
        Ok(store::list_tokens(&self.reader())?)
    }

    /// Revokes `name`: refused from the next request on.
    pub fn revoke_token(&self, name: &str, who: &Who) -> Result<TokenRecord> {
        let now = now_ms();
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        let Some(token) = store::get_token(&tx, name)? else {
            return Err(Error::NotFound(format!("no token named `{name}`")));
        };
        if token.revoked_ms.is_some() {
            return Err(conflict(format!("token `{name}` is already revoked"), None));
        }
        store::revoke_token(&tx, name, now)?;
        audit_outside_rollouts(
            &tx,
            who,
            AuditAction::TokenRevoked,
            format!("token {name}"),
            None,
            now,
        )?;
        tx.commit()?;
        self.forget_tokens();
        Ok(TokenRecord {
            revoked_ms: Some(now),
            ..token
        })
    }

    /// The live token whose secret is `secret`.
    pub fn authenticate(&self, secret: &str) -> Result<Option<TokenRecord>> {
        let hash = secret_hash(secret);
        if let Some(known) = self.known_token_by_hash(&hash) {
            return Ok(Some(known));
        }
        let generation = self.known_tokens.read().map_or(0, |k| k.generation);
        let found = store::find_token(&self.reader(), &hash)?;
        let live = found.filter(|t| t.revoked_ms.is_none());
        if let (Some(token), Ok(mut known)) = (&live, self.known_tokens.write()) {
            // A revocation committed since the lookup began: do not keep what it read.
            if known.generation == generation {
                known.by_hash.insert(hash, token.clone());
            }
        }
        Ok(live)
    }

    /// A live token already looked up once, without the database: every Envoy's
    /// poll shows one, and ten thousand at once must not queue on SQLite. The
    /// cache holds live tokens only and is emptied after any revocation commits;
    /// a lookup that read the database before that commit does not fill it.
    pub fn known_token(&self, secret: &str) -> Option<TokenRecord> {
        self.known_token_by_hash(&secret_hash(secret))
    }

    fn known_token_by_hash(&self, hash: &str) -> Option<TokenRecord> {
        self.known_tokens.read().ok()?.by_hash.get(hash).cloned()
    }

    fn forget_tokens(&self) {
        let mut known = match self.known_tokens.write() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        known.generation += 1;
        known.by_hash.clear();
    }
}

/// Live tokens by secret hash, and how many revocations emptied them.
#[derive(Default)]
pub(super) struct KnownTokens {
    generation: u64,
    by_hash: std::collections::HashMap<String, TokenRecord>,
}
