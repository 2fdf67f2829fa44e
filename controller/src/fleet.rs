//! Which Envoys follow the controller, and at which route revision. Every
//! long-poll names its Envoy (`x-canary-envoy`, the node id) and the revision it
//! holds (`revision=N`); the controller keeps the last of each per Envoy, in memory
//! (Envoys poll again within seconds of a controller restart).

use policy_canary::sync::is_envoy_id;
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Most Envoys remembered; past it, the one heard from longest ago is forgotten.
pub const MAX_ENVOYS: usize = 10_000;

/// One Envoy as the controller last heard from it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvoyStatus {
    pub id: String,
    /// The route revision it held at its last poll.
    pub revision: u64,
    /// When its last poll arrived (ms since the epoch).
    pub last_poll_ms: i64,
    /// Long-polls it holds open now (one at steady state).
    pub open_polls: u32,
    /// It holds the controller's current revision.
    pub in_sync: bool,
    /// No open poll and none arrived for longer than a poll can last.
    pub stale: bool,
}

/// `GET /v1/envoys`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct EnvoyList {
    /// The controller's current route revision.
    pub revision: u64,
    pub envoys: Vec<EnvoyStatus>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    revision: u64,
    last_poll_ms: i64,
    open_polls: u32,
}

#[derive(Debug, Default)]
pub struct Fleet {
    envoys: Mutex<HashMap<String, Seen>>,
    /// Polls open now, named or not.
    open: AtomicU64,
}

/// An open long-poll; dropping it (answered, timed out or abandoned) closes it.
pub struct OpenPoll {
    fleet: Arc<Fleet>,
    /// The Envoy it is counted for, when it named one.
    id: Option<String>,
}

impl Drop for OpenPoll {
    fn drop(&mut self) {
        self.fleet.open.fetch_sub(1, Ordering::Relaxed);
        let Some(id) = &self.id else {
            return;
        };
        let mut envoys = self.fleet.envoys.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(seen) = envoys.get_mut(id) {
            seen.open_polls = seen.open_polls.saturating_sub(1);
        }
    }
}

impl Fleet {
    /// Records a poll from `id` holding `revision` (counted, but not listed, when
    /// `id` is not an Envoy name). Keep the guard for as long as the poll is open.
    /// With a `cap`, refuses (`None`) when that many polls are open already.
    pub fn poll(
        self: &Arc<Self>,
        id: &str,
        revision: u64,
        now_ms: i64,
        cap: Option<u64>,
    ) -> Option<OpenPoll> {
        let cap = cap.unwrap_or(u64::MAX);
        self.open
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |open| {
                (open < cap).then_some(open + 1)
            })
            .ok()?;
        let listed = self.record(id, revision, now_ms);
        Some(OpenPoll {
            fleet: Arc::clone(self),
            id: listed.then(|| id.to_string()),
        })
    }

    /// Polls open now, named or not.
    pub fn open_polls(&self) -> u64 {
        self.open.load(Ordering::Relaxed)
    }

    fn record(&self, id: &str, revision: u64, now_ms: i64) -> bool {
        if !is_envoy_id(id) {
            return false;
        }
        let mut envoys = self.envoys.lock().unwrap_or_else(|p| p.into_inner());
        if !envoys.contains_key(id) && envoys.len() >= MAX_ENVOYS {
            let oldest = envoys
                .iter()
                .filter(|(_, seen)| seen.open_polls == 0)
                .min_by_key(|(_, seen)| seen.last_poll_ms)
                .map(|(id, _)| id.clone());
            match oldest {
                Some(oldest) => {
                    envoys.remove(&oldest);
                }
                None => return false,
            }
        }
        let seen = envoys.entry(id.to_string()).or_insert(Seen {
            revision,
            last_poll_ms: now_ms,
            open_polls: 0,
        });
        seen.revision = revision;
        seen.last_poll_ms = now_ms;
        seen.open_polls += 1;
        true
    }

    /// Every Envoy, by id, against the controller's `current` revision.
    pub fn status(&self, current: u64, now_ms: i64, stale_after: Duration) -> EnvoyList {
        let stale_ms = i64::try_from(stale_after.as_millis()).unwrap_or(i64::MAX);
        let envoys = self.envoys.lock().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<EnvoyStatus> = envoys
            .iter()
            .map(|(id, seen)| EnvoyStatus {
                id: id.clone(),
                revision: seen.revision,
                last_poll_ms: seen.last_poll_ms,
                open_polls: seen.open_polls,
                in_sync: seen.revision >= current,
                stale: seen.open_polls == 0 && now_ms - seen.last_poll_ms > stale_ms,
            })
            .collect();
        list.sort_by(|a, b| a.id.cmp(&b.id));
        EnvoyList {
            revision: current,
            envoys: list,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALE: Duration = Duration::from_secs(75);

    #[test]
    fn polls_are_counted_while_open_and_envoys_go_stale() {
        let fleet = Arc::new(Fleet::default());
        let poll = fleet.poll("edge-1", 4, 1_000, None).unwrap();
        let unnamed = fleet.poll("two words", 4, 1_000, Some(2)).unwrap();
        assert_eq!(fleet.open_polls(), 2);
        assert!(fleet.poll("edge-2", 4, 1_000, Some(2)).is_none(), "capped");
        assert_eq!(fleet.open_polls(), 2, "a refused poll is not counted");
        drop(unnamed);
        assert_eq!(fleet.open_polls(), 1);
        let list = fleet.status(5, 2_000, STALE);
        assert_eq!(list.envoys.len(), 1);
        let edge = &list.envoys[0];
        assert_eq!(
            (edge.revision, edge.open_polls, edge.in_sync, edge.stale),
            (4, 1, false, false)
        );
        drop(poll);
        let _again = fleet.poll("edge-1", 5, 3_000, Some(2)).unwrap();
        let edge = &fleet.status(5, 3_000, STALE).envoys[0];
        assert_eq!((edge.revision, edge.open_polls, edge.in_sync), (5, 1, true));
        drop(_again);
        let later = 3_000 + STALE.as_millis() as i64 + 1;
        assert!(fleet.status(5, later, STALE).envoys[0].stale);
    }

    #[test]
    fn the_fleet_stays_bounded() {
        let fleet = Arc::new(Fleet::default());
        for i in 0..MAX_ENVOYS + 5 {
            drop(fleet.poll(&format!("envoy-{i}"), 1, i as i64, None));
        }
        let list = fleet.status(1, 0, STALE);
        assert_eq!(list.envoys.len(), MAX_ENVOYS);
        assert!(
            !list.envoys.iter().any(|e| e.id == "envoy-0"),
            "the oldest went first"
        );
    }
}
