//! The sync service's logic: long-poll the controller for the routes document,
//! keep the last good one (fail static), back off on failure. Pure: the glue does
//! the HTTP calls and shared-data writes.

mod config;

pub use config::{
    is_envoy_id, is_sync_token, SyncConfig, ENVOY_ID_HEADER, MAX_ENVOY_ID_BYTES, MAX_TOKEN_BYTES,
};

use crate::route::{read_routes, DocumentVersion};

/// Shared-data key holding the last good routes document (JSON, as served).
pub const ROUTES_KEY: &str = "policy_canary/routes";

/// Why a poll did not produce a new document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PollFailure {
    /// No call could be made (unknown cluster, …).
    Dispatch,
    /// No answer: reset, connect failure or timeout (Envoy answers these itself).
    Unreachable(u16),
    /// The controller answered with an error status.
    Status(u16),
    /// The controller is busy (503 with `Retry-After`, in seconds): come back then.
    Busy(u64),
    TooLarge(usize),
    BadDocument(String),
    OlderRevision {
        got: u64,
        have: u64,
    },
}

impl std::fmt::Display for PollFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PollFailure::Dispatch => write!(f, "cannot call the controller cluster"),
            PollFailure::Unreachable(0) => write!(f, "controller unreachable (reset)"),
            PollFailure::Unreachable(s) => write!(f, "controller unreachable (Envoy answered {s})"),
            PollFailure::Status(s @ (401 | 403)) => write!(
                f,
                "controller answered HTTP {s}: give the sync a token with the routes:read scope (sync.token, or the VM environment variable sync.token_env, POLICY_CANARY_TOKEN by default)"
            ),
            PollFailure::Status(s) => write!(f, "controller answered HTTP {s}"),
            PollFailure::Busy(after) => {
                write!(f, "controller busy (too many polls), retrying after about {after}s")
            }
            PollFailure::TooLarge(n) => write!(f, "routes document too large ({n} bytes)"),
            PollFailure::BadDocument(e) => write!(f, "bad routes document: {e}"),
            PollFailure::OlderRevision { got, have } => {
                write!(f, "routes document revision {got} is older than {have}")
            }
        }
    }
}

impl PollFailure {
    /// Whether the document was refused (as opposed to not arriving).
    pub fn is_rejection(&self) -> bool {
        matches!(
            self,
            PollFailure::TooLarge(_)
                | PollFailure::BadDocument(_)
                | PollFailure::OlderRevision { .. }
        )
    }
}

/// What the glue should do after a poll.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AfterPoll {
    /// Store the body in shared data: it holds this newer revision (or another
    /// generation of the controller).
    Store { version: DocumentVersion },
    /// Same revision as held: nothing to write.
    Unchanged,
    /// Keep the last good document.
    Keep(PollFailure),
}

/// A change in health worth one log line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HealthChange {
    Failing(PollFailure),
    Recovered { after_failures: u32 },
}

#[derive(Debug, Clone, Default)]
pub struct SyncState {
    /// Revision of the document in shared data.
    pub revision: u64,
    /// The controller generation that document came from (0 before any).
    pub epoch: u64,
    pub consecutive_failures: u32,
    /// When the next poll may start (ms, the sync's steady clock).
    pub next_poll_ms: u64,
    /// When the poll in flight started.
    pub in_flight_since_ms: Option<u64>,
    last_failure: Option<PollFailure>,
    /// xorshift64* state for the retry jitter.
    jitter: u64,
}

impl SyncState {
    /// A state whose retry jitter starts from `seed` (any value; a clock reading).
    pub fn seeded(seed: u64) -> SyncState {
        SyncState {
            jitter: seed | 1,
            ..SyncState::default()
        }
    }

    /// A uniform draw in `[0, 1)`.
    fn uniform(&mut self) -> f64 {
        let mut x = self.jitter | 1;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.jitter = x;
        (x.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    /// How long to wait after the `failures`-th failure in a row: unreachable,
    /// at random up to `max_reconnect_ms` (growing from 100 ms: a restart is
    /// followed within about that, never in lockstep); busy, what the controller
    /// asked plus up to as much again; any other error, doubling from 100 ms up to
    /// `max_backoff_ms`, the last half at random.
    fn retry_after_ms(&mut self, config: &SyncConfig, failure: &PollFailure) -> u64 {
        let exponent = self.consecutive_failures.clamp(1, 16) - 1;
        let doubling = 100u64 << exponent;
        let u = self.uniform();
        match failure {
            PollFailure::Unreachable(_) | PollFailure::Dispatch => {
                let cap = doubling.min(config.max_reconnect_ms);
                (cap as f64 * (0.5 + 0.5 * u)) as u64
            }
            PollFailure::Busy(after_s) => {
                let after = after_s.saturating_mul(1000).max(1000);
                after + (after as f64 * u) as u64
            }
            _ => {
                let cap = doubling.min(config.max_backoff_ms);
                (cap as f64 * (0.5 + 0.5 * u)) as u64
            }
        }
    }

    pub fn should_poll(&self, config: &SyncConfig, now_ms: u64) -> bool {
        match self.in_flight_since_ms {
            // A call Envoy never answered: give up on it after its timeout and a margin.
            Some(since) => now_ms.saturating_sub(since) > config.timeout_ms + 5_000,
            None => now_ms >= self.next_poll_ms,
        }
    }

    pub fn poll_path(&self, config: &SyncConfig) -> String {
        format!(
            "{}?revision={}&epoch={}&wait={}ms",
            config.path, self.revision, self.epoch, config.wait_ms
        )
    }

    /// The version of the document in shared data.
    pub fn version(&self) -> DocumentVersion {
        DocumentVersion {
            epoch: self.epoch,
            revision: self.revision,
        }
    }

    pub fn started(&mut self, now_ms: u64) {
        self.in_flight_since_ms = Some(now_ms);
    }

    /// The poll out was answered after this root stopped leading: forgotten.
    pub fn abandoned(&mut self) {
        self.in_flight_since_ms = None;
    }

    /// Judges one answer: `status` 0 when there was none; `retry_after` the
    /// controller's `Retry-After` (seconds), if it sent one.
    pub fn judge(
        &self,
        config: &SyncConfig,
        (status, retry_after): (u16, Option<u64>),
        body_size: usize,
        body: &[u8],
    ) -> AfterPoll {
        if status == 0 {
            return AfterPoll::Keep(PollFailure::Unreachable(0));
        }
        if status != 200 {
            // Envoy's own 502-504 (no connection, reset, timeout) carry no
            // Retry-After; the controller's 503 for too many polls does.
            return AfterPoll::Keep(match (status, retry_after) {
                (503, Some(after)) => PollFailure::Busy(after.min(300)),
                (502..=504, _) => PollFailure::Unreachable(status),
                _ => PollFailure::Status(status),
            });
        }
        if body_size > config.max_body_bytes {
            return AfterPoll::Keep(PollFailure::TooLarge(body_size));
        }
        let held = self.version();
        match read_routes(body, |_, _| {}) {
            Err(e) => AfterPoll::Keep(PollFailure::BadDocument(e.to_string())),
            // A new controller generation starts its own count: follow it.
            Ok(version) if version.epoch != held.epoch => AfterPoll::Store { version },
            Ok(version) if version.revision < held.revision => {
                AfterPoll::Keep(PollFailure::OlderRevision {
                    got: version.revision,
                    have: held.revision,
                })
            }
            Ok(version) if version.revision == held.revision && held.revision > 0 => {
                AfterPoll::Unchanged
            }
            Ok(version) => AfterPoll::Store { version },
        }
    }

    /// Records the outcome of a poll; returns a health change to log, if any.
    pub fn finished(
        &mut self,
        config: &SyncConfig,
        outcome: &AfterPoll,
        now_ms: u64,
    ) -> Option<HealthChange> {
        self.in_flight_since_ms = None;
        match outcome {
            AfterPoll::Keep(failure) => {
                self.consecutive_failures = self.consecutive_failures.saturating_add(1);
                self.next_poll_ms = now_ms + self.retry_after_ms(config, failure);
                let changed = self.last_failure.as_ref().map(std::mem::discriminant)
                    != Some(std::mem::discriminant(failure));
                self.last_failure = Some(failure.clone());
                changed.then(|| HealthChange::Failing(failure.clone()))
            }
            AfterPoll::Store { .. } | AfterPoll::Unchanged => {
                if let AfterPoll::Store { version } = outcome {
                    self.revision = version.revision;
                    self.epoch = version.epoch;
                }
                self.next_poll_ms = now_ms;
                let failures = std::mem::take(&mut self.consecutive_failures);
                self.last_failure.take().map(|_| HealthChange::Recovered {
                    after_failures: failures,
                })
            }
        }
    }
}

/// A worker's view of the controller's tables: parses the shared document only when
/// its CAS changes, and moves only forward in revision.
#[derive(Debug, Default)]
pub struct TableFollower {
    last_cas: Option<u32>,
    /// The controller generation of the table in force (0: the configuration's).
    epoch: u64,
}

/// What a worker should do with the shared document.
#[derive(Debug, PartialEq)]
pub enum Follow {
    /// Nothing new (same CAS, or no document).
    Same,
    /// A newer table for the worker's target.
    Newer(crate::route::RouteTable),
    /// The document is new but has nothing newer for this target.
    NothingForTarget,
    Invalid(String),
}

impl TableFollower {
    pub fn follow(
        &mut self,
        target: &str,
        current_revision: u64,
        value: Option<&[u8]>,
        cas: Option<u32>,
    ) -> Follow {
        let Some(value) = value else {
            return Follow::Same;
        };
        if cas.is_some() && cas == self.last_cas {
            return Follow::Same;
        }
        self.last_cas = cas;
        let mut mine = None;
        let mut read = read_routes(value, |name, table| {
            if name == target {
                mine = Some(table);
            }
        });
        // Only this target's own table can be wrong for this worker.
        let mine = match mine {
            Some(Err(e)) => {
                read = Err(e);
                None
            }
            Some(Ok(table)) => Some(table),
            None => None,
        };
        let held = DocumentVersion {
            epoch: self.epoch,
            revision: current_revision,
        };
        match (read, mine) {
            (Err(e), _) => Follow::Invalid(e.to_string()),
            (Ok(version), Some(table))
                if (DocumentVersion {
                    epoch: version.epoch,
                    revision: table.revision,
                })
                .replaces(&held) =>
            {
                self.epoch = version.epoch;
                Follow::Newer(table)
            }
            (Ok(_), _) => Follow::NothingForTarget,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> SyncConfig {
        SyncConfig::from_json(br#"{"sync": {"cluster": "canary_controller", "wait_ms": 1000}}"#)
            .unwrap()
    }

    const DOC: &str = r#"{"revision": 4, "routes": {"support-agent": {"revision": 4, "salt": "s",
        "canary_weight_bp": 500, "stable": {"version": "v1", "cluster": "a"},
        "canary": {"version": "v2", "cluster": "b"}}}}"#;

    fn document(epoch: u64, revision: u64) -> String {
        format!(
            r#"{{"epoch": {epoch}, "revision": {revision}, "routes": {{"support-agent": {{"revision": {revision},
            "salt": "s", "canary_weight_bp": 500, "stable": {{"version": "v1", "cluster": "a"}},
            "canary": {{"version": "v2", "cluster": "b"}}}}}}}}"#
        )
    }

    /// A controller restored from an older backup (or with a lost state directory)
    /// serves lower revisions under a new generation: followed, not refused.
    #[test]
    fn a_new_generation_is_followed_even_with_lower_revisions() {
        let c = config();
        let mut state = SyncState::default();
        let store = |state: &mut SyncState, epoch: u64, revision: u64| {
            let body = document(epoch, revision);
            let outcome = state.judge(&c, (200, None), body.len(), body.as_bytes());
            state.finished(&c, &outcome, 0);
            outcome
        };
        assert!(matches!(store(&mut state, 7, 40), AfterPoll::Store { .. }));
        assert_eq!(
            state.poll_path(&c),
            "/v1/routes?revision=40&epoch=7&wait=1000ms"
        );
        // Same generation: an older revision is refused, as before.
        assert!(matches!(
            store(&mut state, 7, 39),
            AfterPoll::Keep(PollFailure::OlderRevision { got: 39, have: 40 })
        ));
        // Restored controller, new generation, revision 12: followed.
        assert!(matches!(store(&mut state, 9, 12), AfterPoll::Store { .. }));
        assert_eq!((state.epoch, state.revision), (9, 12));
        // Workers follow it too.
        let mut follower = TableFollower::default();
        let first = document(7, 40);
        assert!(matches!(
            follower.follow("support-agent", 0, Some(first.as_bytes()), Some(1)),
            Follow::Newer(t) if t.revision == 40
        ));
        let older_same = document(7, 39);
        assert_eq!(
            follower.follow("support-agent", 40, Some(older_same.as_bytes()), Some(2)),
            Follow::NothingForTarget
        );
        let restored = document(9, 12);
        assert!(matches!(
            follower.follow("support-agent", 40, Some(restored.as_bytes()), Some(3)),
            Follow::Newer(t) if t.revision == 12
        ));
        // A document without a generation (an older controller) reads as generation 0.
        let plain = DOC;
        assert_eq!(read_routes(plain.as_bytes(), |_, _| {}).unwrap().epoch, 0);
    }

    /// One target's bad table (here a weight over 100%) does not hold back the
    /// other targets' updates; that target keeps its last table.
    #[test]
    fn a_bad_table_holds_back_only_its_own_target() {
        let good = |rev: u64| {
            format!(
                r#""support-agent": {{"revision": {rev}, "salt": "s", "canary_weight_bp": 500,
                "stable": {{"version": "v1", "cluster": "a"}}, "canary": {{"version": "v2", "cluster": "b"}}}}"#
            )
        };
        let bad = r#""billing-agent": {"revision": 2, "salt": "s", "canary_weight_bp": 20000,
            "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"}}"#;
        let doc = format!(r#"{{"revision": 2, "routes": {{{}, {bad}}}}}"#, good(2));
        let c = config();
        let state = SyncState::default();
        assert!(matches!(
            state.judge(&c, (200, None), doc.len(), doc.as_bytes()),
            AfterPoll::Store { .. }
        ));
        let mut support = TableFollower::default();
        assert!(matches!(
            support.follow("support-agent", 0, Some(doc.as_bytes()), Some(1)),
            Follow::Newer(t) if t.revision == 2
        ));
        let mut billing = TableFollower::default();
        assert!(matches!(
            billing.follow("billing-agent", 0, Some(doc.as_bytes()), Some(1)),
            Follow::Invalid(e) if e.contains("routes.billing-agent.canary_weight_bp")
        ));
        // A segment value longer than 256 bytes is a bad table too.
        let long = format!(
            r#"{{"revision": 3, "routes": {{"support-agent": {{"revision": 3, "salt": "s",
            "stable": {{"version": "v1", "cluster": "a"}},
            "segments": [{{"header": "x-g", "value": "{}", "canary_weight_bp": 0}}]}}}}}}"#,
            "v".repeat(257)
        );
        assert!(matches!(
            TableFollower::default().follow("support-agent", 0, Some(long.as_bytes()), Some(1)),
            Follow::Invalid(e) if e.contains("segments[0].value")
        ));
    }

    #[test]
    fn judges_answers() {
        let c = config();
        let mut state = SyncState::default();
        assert_eq!(
            state.poll_path(&c),
            "/v1/routes?revision=0&epoch=0&wait=1000ms"
        );
        assert_eq!(
            state.judge(&c, (200, None), DOC.len(), DOC.as_bytes()),
            AfterPoll::Store {
                version: DocumentVersion {
                    epoch: 0,
                    revision: 4
                }
            }
        );
        state.revision = 4;
        assert_eq!(
            state.judge(&c, (200, None), DOC.len(), DOC.as_bytes()),
            AfterPoll::Unchanged
        );
        state.revision = 9;
        assert!(matches!(
            state.judge(&c, (200, None), DOC.len(), DOC.as_bytes()),
            AfterPoll::Keep(PollFailure::OlderRevision { got: 4, have: 9 })
        ));
        assert_eq!(
            state.judge(&c, (0, None), 0, b""),
            AfterPoll::Keep(PollFailure::Unreachable(0))
        );
        assert_eq!(
            state.judge(&c, (503, None), 0, b""),
            AfterPoll::Keep(PollFailure::Unreachable(503))
        );
        // The controller's own 503 for too many polls says when to come back.
        assert_eq!(
            state.judge(&c, (503, Some(5)), 0, b""),
            AfterPoll::Keep(PollFailure::Busy(5))
        );
        assert_eq!(
            state.judge(&c, (500, None), 0, b""),
            AfterPoll::Keep(PollFailure::Status(500))
        );
        assert_eq!(
            state.judge(&c, (200, None), 2 << 20, b""),
            AfterPoll::Keep(PollFailure::TooLarge(2 << 20))
        );
        for garbage in [&b"<html>"[..], b"{}", br#"{"revision": 10, "routes": 5}"#] {
            assert!(matches!(
                state.judge(&c, (200, None), garbage.len(), garbage),
                AfterPoll::Keep(PollFailure::BadDocument(_))
            ));
        }
        // A document whose only bad part is one target's table is kept: that
        // target's workers refuse its table, the others follow the rest.
        let one_bad_table = br#"{"revision": 10, "routes": {"x": {"salt": 1}}}"#;
        assert!(matches!(
            state.judge(&c, (200, None), one_bad_table.len(), one_bad_table),
            AfterPoll::Store { .. }
        ));
    }

    #[test]
    fn backs_off_and_logs_only_changes() {
        let c = config();
        let mut state = SyncState::seeded(42);
        let fail = AfterPoll::Keep(PollFailure::Unreachable(503));
        let first = state.finished(&c, &fail, 1_000);
        assert!(matches!(first, Some(HealthChange::Failing(_))));
        // Unreachable: 50-100 ms, then growing, never past max_reconnect_ms, and
        // at random in the upper half (no two Envoys in lockstep).
        assert!(
            (1_050..=1_100).contains(&state.next_poll_ms),
            "{}",
            state.next_poll_ms
        );
        assert_eq!(
            state.finished(&c, &fail, 2_000),
            None,
            "same failure: no new log line"
        );
        assert!((2_100..=2_200).contains(&state.next_poll_ms));
        let mut waits = Vec::new();
        for _ in 0..20 {
            state.finished(&c, &fail, 3_000);
            waits.push(state.next_poll_ms - 3_000);
        }
        let top = waits.iter().skip(5);
        assert!(
            top.clone()
                .all(|w| (c.max_reconnect_ms / 2..=c.max_reconnect_ms).contains(w)),
            "{waits:?}"
        );
        assert!(top.clone().any(|w| *w != waits[10]), "jittered: {waits:?}");
        // Busy: what the controller asked, plus up to as much again.
        state.finished(&c, &AfterPoll::Keep(PollFailure::Busy(5)), 3_000);
        assert!((8_000..=13_000).contains(&state.next_poll_ms));
        // Other errors: up to max_backoff_ms; a new kind of failure is logged once.
        let other = state.finished(&c, &AfterPoll::Keep(PollFailure::Status(500)), 3_000);
        assert!(matches!(
            other,
            Some(HealthChange::Failing(PollFailure::Status(500)))
        ));
        for _ in 0..20 {
            state.finished(&c, &AfterPoll::Keep(PollFailure::Status(500)), 3_000);
        }
        assert!(
            (3_000 + c.max_backoff_ms / 2..=3_000 + c.max_backoff_ms).contains(&state.next_poll_ms)
        );
        let back = state.finished(
            &c,
            &AfterPoll::Store {
                version: DocumentVersion {
                    epoch: 0,
                    revision: 7,
                },
            },
            5_000,
        );
        assert_eq!(back, Some(HealthChange::Recovered { after_failures: 44 }));
        assert_eq!((state.revision, state.next_poll_ms), (7, 5_000));
        assert!(state.should_poll(&c, 5_000));
        state.started(5_000);
        assert!(!state.should_poll(&c, 6_000));
        assert!(
            state.should_poll(&c, 5_000 + c.timeout_ms + 5_001),
            "a lost call is given up"
        );
    }

    #[test]
    fn followers_parse_only_new_documents_and_move_forward() {
        let mut f = TableFollower::default();
        assert_eq!(f.follow("support-agent", 0, None, None), Follow::Same);
        let Follow::Newer(table) = f.follow("support-agent", 0, Some(DOC.as_bytes()), Some(1))
        else {
            panic!("expected a table");
        };
        assert_eq!(table.canary_weight_bp, 500);
        assert_eq!(
            f.follow("support-agent", 4, Some(DOC.as_bytes()), Some(1)),
            Follow::Same
        );
        assert_eq!(
            f.follow("support-agent", 4, Some(DOC.as_bytes()), Some(2)),
            Follow::NothingForTarget
        );
        assert_eq!(
            f.follow("other", 0, Some(DOC.as_bytes()), Some(3)),
            Follow::NothingForTarget
        );
        assert!(matches!(
            f.follow("support-agent", 0, Some(b"junk"), Some(4)),
            Follow::Invalid(_)
        ));
    }
}
