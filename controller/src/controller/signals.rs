//! `POST /v1/signals`: delayed signals about answers (an LLM judge's score, a
//! user's thumbs or CSAT, a ticket reopened), each placed in the arm and session
//! replicate of the rollout that served the answer, exactly as the filter places
//! the session (sha256 of the session and that rollout's salt), and stored before
//! the answer is given.

use super::{Controller, Error, Result};
use crate::store::{self, PlacedSignal};
use crate::units::{now_ms, parse_rfc3339};
use policy_canary::check::{check_metric_name, check_name, check_version, is_token};
use policy_canary::cohort::{assign, cohort_for, Cohort};
use policy_canary::error::err;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use std::sync::atomic::Ordering::Relaxed;

/// Most signals one request may carry.
pub const MAX_SIGNALS: usize = 1000;
/// Largest signal value (either sign).
pub const MAX_SIGNAL_VALUE: f64 = 1e12;
/// How far in the future an answer's time may be (clocks differ).
const MAX_CLOCK_AHEAD_MS: i64 = 5 * 60 * 1000;
/// After a weight change, how long an answer may still have been placed by the
/// weight before it (Envoys follow within ~50 ms; a few seconds is generous).
const PROPAGATION_GRACE_MS: i64 = 5_000;

/// One signal as a client sends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct SignalIn {
    /// Counted once however often it is sent.
    id: String,
    target: String,
    session: String,
    /// What the agent was told in `x-agent-policy`.
    version: String,
    name: String,
    value: Value,
    /// The time of the answer judged (RFC 3339).
    at: String,
    /// `compared` (default), or `forced` / `segment` for an answer the filter
    /// counted apart (stored, not compared).
    #[serde(default)]
    traffic: Option<String>,
}

/// What became of one rejected signal.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    pub index: usize,
    pub error: String,
}

/// The answer to `POST /v1/signals`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SignalsAnswer {
    pub accepted: u64,
    pub duplicates: u64,
    pub rejected: Vec<Rejected>,
}

impl Controller {
    /// Checks, places and stores a batch of signals (`{"signals": [...]}`) in one
    /// transaction, committed before it returns. A bad item is rejected with its
    /// index and reason and changes nothing; a bad body is a 400 for all.
    pub fn post_signals(&self, body: &[u8]) -> Result<SignalsAnswer> {
        let value: Value = serde_json::from_slice(body)
            .map_err(|e| Error::BadRequest(err("", format!("not valid JSON: {e}"))))?;
        let Some(object) = value.as_object() else {
            return Err(Error::BadRequest(err(
                "",
                "expected an object {\"signals\": [...]}",
            )));
        };
        if let Some(other) = object.keys().find(|k| *k != "signals") {
            return Err(Error::BadRequest(err(
                other,
                "unknown field, expected one of: signals",
            )));
        }
        let Some(items) = object.get("signals").and_then(Value::as_array) else {
            return Err(Error::BadRequest(err(
                "signals",
                "expected an array of signals",
            )));
        };
        if items.len() > MAX_SIGNALS {
            return Err(Error::BadRequest(err(
                "signals",
                format!(
                    "at most {MAX_SIGNALS} signals a request, got {}",
                    items.len()
                ),
            )));
        }
        let now = now_ms();
        let mut answer = SignalsAnswer {
            accepted: 0,
            duplicates: 0,
            rejected: Vec::new(),
        };
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for (index, item) in items.iter().enumerate() {
            let placed = serde_json::from_value::<SignalIn>(item.clone())
                .map_err(|e| e.to_string())
                .and_then(|signal| place(&tx, &signal, now));
            match placed {
                Err(error) => answer.rejected.push(Rejected { index, error }),
                Ok(signal) => {
                    if store::insert_signal(&tx, &signal, now)? {
                        answer.accepted += 1;
                    } else {
                        answer.duplicates += 1;
                    }
                }
            }
        }
        tx.commit()?;
        let m = self.metrics();
        m.signals_accepted.fetch_add(answer.accepted, Relaxed);
        m.signals_duplicates.fetch_add(answer.duplicates, Relaxed);
        m.signals_rejected
            .fetch_add(answer.rejected.len() as u64, Relaxed);
        Ok(answer)
    }
}

/// Checks one signal and places it: the rollout of its target in force at its
/// time, the arm its version names, the replicate of its session.
fn place(conn: &rusqlite::Connection, s: &SignalIn, now: i64) -> Result<PlacedSignal, String> {
    if !is_token(&s.id, 128, |b| b.is_ascii_graphic()) {
        return Err("id: 1-128 printable ASCII characters".into());
    }
    check_name("target", &s.target).map_err(|e| e.to_string())?;
    if s.session.is_empty() || s.session.len() > 256 {
        return Err("session: 1-256 bytes".into());
    }
    check_version("version", &s.version).map_err(|e| e.to_string())?;
    check_metric_name("name", &s.name).map_err(|e| e.to_string())?;
    let value = s
        .value
        .as_f64()
        .filter(|v| v.is_finite() && v.abs() <= MAX_SIGNAL_VALUE)
        .ok_or_else(|| {
            format!(
                "value: a finite number of at most {MAX_SIGNAL_VALUE:e} either way, got {}",
                s.value
            )
        })?;
    let at_ms = parse_rfc3339(&s.at).map_err(|e| format!("at: {e}"))?;
    if at_ms > now + MAX_CLOCK_AHEAD_MS {
        return Err(format!("at: {} is in the future", s.at));
    }
    let traffic = match s.traffic.as_deref() {
        None | Some("compared") => "compared",
        Some("forced") => "forced",
        Some("segment") => "segment",
        Some(other) => {
            return Err(format!(
                "traffic: `{other}` is not one of compared, forced, segment"
            ))
        }
    };
    let storage = |e: rusqlite::Error| format!("storage: {e}");
    if store::get_target(conn, &s.target)
        .map_err(storage)?
        .is_none()
    {
        return Err(format!("target: unknown target `{}`", s.target));
    }
    let rollout = store::rollout_at(conn, &s.target, at_ms)
        .map_err(storage)?
        .ok_or_else(|| {
            format!(
                "at: no rollout of `{}` was in force at {} (a signal is placed in the rollout \
                 that served the answer)",
                s.target, s.at
            )
        })?;
    let plan = &rollout.plan;
    let arm = if s.version == plan.canary.version {
        Cohort::Canary
    } else if s.version == plan.stable.version {
        Cohort::Stable
    } else {
        return Err(format!(
            "version: `{}` is neither arm of rollout #{} (stable {}, canary {})",
            s.version, rollout.id, plan.stable.version, plan.canary.version
        ));
    };
    let assignment = assign(s.session.as_bytes(), rollout.salt.as_bytes());
    if traffic == "compared" {
        let weight = store::weight_at(conn, rollout.id, at_ms)
            .map_err(storage)?
            .unwrap_or(0);
        // Envoys follow a change within moments: an answer given just after one
        // may have been placed by the weight before it.
        let before = store::weight_at(conn, rollout.id, at_ms - PROPAGATION_GRACE_MS)
            .map_err(storage)?
            .unwrap_or(0);
        let expected = cohort_for(assignment.bucket, weight);
        if expected != arm && cohort_for(assignment.bucket, before) != arm {
            return Err(format!(
                "version: session `{}` was in {} at {} (rollout #{}, bucket {}, canary weight \
                 {} bp), not {}; an answer that was forced or segment-routed says so with \
                 \"traffic\"",
                s.session,
                expected.as_str(),
                s.at,
                rollout.id,
                assignment.bucket,
                weight,
                arm.as_str()
            ));
        }
    }
    Ok(PlacedSignal {
        id: s.id.clone(),
        target: s.target.clone(),
        rollout_id: rollout.id,
        name: s.name.clone(),
        version: s.version.clone(),
        arm: arm.as_str(),
        traffic,
        replicate: assignment.replicate,
        session: s.session.clone(),
        value,
        at_ms,
    })
}
