//! Filter-side sync's lease, as stored in proxy-wasm shared data: which root
//! context of an Envoy polls the controller. Pure: `plugin::lease` reads and writes
//! it with compare-and-set.
//!
//! The record holds a heartbeat, not an expiry time: roots do not share a steady
//! clock and the wall clock may step, so each root times the record on its own
//! steady clock (`clock::SteadyClock`) and takes it over once it has not changed
//! for `LEASE_MS`.

/// Shared-data key of the lease (`<holder>:<beat>`, hex and decimal).
pub const LEASE_KEY: &str = "policy_canary/sync_lease";
/// How long a record may stay unchanged before another root takes the lease; its
/// holder renews (bumps the beat) every half of it.
pub const LEASE_MS: u64 = 2_000;

/// The lease as stored in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: u64,
    /// Bumped at every renewal, so followers see the holder is alive.
    pub beat: u64,
}

impl LeaseRecord {
    pub fn parse(bytes: &[u8]) -> Option<LeaseRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (holder, beat) = text.split_once(':')?;
        Some(LeaseRecord {
            holder: u64::from_str_radix(holder, 16).ok()?,
            beat: beat.parse().ok()?,
        })
    }

    pub fn encode(&self) -> String {
        format!("{:x}:{}", self.holder, self.beat)
    }
}

/// What a root context does about the lease on its tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// It holds the lease and renewed it less than half a lease ago.
    Hold,
    /// It holds the lease: renew it (compare-and-set `next`).
    Renew,
    /// Nobody holds a live lease (absent, unreadable or unchanged for `LEASE_MS`):
    /// take it (compare-and-set `next`).
    Take,
    /// Another root holds a live lease.
    Wait,
}

/// One root's view of the lease: the record it last saw and since when (its own
/// steady clock) that record has been unchanged.
#[derive(Debug, Clone, Default)]
pub struct LeaseWatch {
    seen: Option<LeaseRecord>,
    seen_since_ms: u64,
}

impl LeaseWatch {
    pub fn step(&mut self, current: Option<LeaseRecord>, me: u64, now_ms: u64) -> LeaseStep {
        if current != self.seen {
            self.seen = current;
            self.seen_since_ms = now_ms;
        }
        let unchanged_for = now_ms.saturating_sub(self.seen_since_ms);
        match current {
            None => LeaseStep::Take,
            Some(lease) if lease.holder == me => {
                if unchanged_for >= LEASE_MS / 2 {
                    LeaseStep::Renew
                } else {
                    LeaseStep::Hold
                }
            }
            Some(_) if unchanged_for >= LEASE_MS => LeaseStep::Take,
            Some(_) => LeaseStep::Wait,
        }
    }

    /// The record `me` writes to take or renew the lease.
    pub fn next(&self, me: u64) -> LeaseRecord {
        LeaseRecord {
            holder: me,
            beat: self.seen.map_or(0, |s| s.beat.wrapping_add(1)),
        }
    }

    /// `record` was written at `now_ms`.
    pub fn wrote(&mut self, record: LeaseRecord, now_ms: u64) {
        self.seen = Some(record);
        self.seen_since_ms = now_ms;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_reads_back_and_passes_on_only_when_its_beat_stops() {
        let lease = LeaseRecord {
            holder: 0xabc,
            beat: 7,
        };
        assert_eq!(lease.encode(), "abc:7");
        assert_eq!(LeaseRecord::parse(lease.encode().as_bytes()), Some(lease));
        for garbage in [&b""[..], b"abc", b"zz:1", b"1:x", b"\xff:1"] {
            assert_eq!(LeaseRecord::parse(garbage), None);
        }
        let (holder, other) = (0xabc, 0xdef);
        let mut mine = LeaseWatch::default();
        assert_eq!(mine.step(None, holder, 0), LeaseStep::Take);
        let first = mine.next(holder);
        assert_eq!(first.beat, 0);
        mine.wrote(first, 0);
        let mut theirs = LeaseWatch::default();
        assert_eq!(theirs.step(Some(first), other, 0), LeaseStep::Wait);
        assert_eq!(mine.step(Some(first), holder, 999), LeaseStep::Hold);
        assert_eq!(mine.step(Some(first), holder, 1_000), LeaseStep::Renew);
        let second = mine.next(holder);
        assert_eq!(second.beat, 1);
        mine.wrote(second, 1_000);
        // A changed beat is a live holder: the other root's wait starts again.
        assert_eq!(theirs.step(Some(second), other, 1_500), LeaseStep::Wait);
        assert_eq!(theirs.step(Some(second), other, 3_499), LeaseStep::Wait);
        // Unchanged for a whole lease: the holder is gone.
        assert_eq!(theirs.step(Some(second), other, 3_500), LeaseStep::Take);
        assert_eq!(
            theirs.next(other),
            LeaseRecord {
                holder: other,
                beat: 2
            }
        );
        // Unreadable is absent.
        assert_eq!(LeaseWatch::default().step(None, other, 0), LeaseStep::Take);
    }
}
