//! Filter-side sync's lease, as stored in proxy-wasm shared data: which root
//! context of an Envoy polls the controller, until when. Pure: `plugin::lease`
//! reads and writes it with compare-and-set.

/// Shared-data key of the filter-side sync lease (`<holder>:<expires_ms>`, hex and
/// decimal): the one root context per Envoy that polls the controller holds it.
pub const LEASE_KEY: &str = "policy_canary/sync_lease";
/// How long a lease lasts without renewal; its holder renews it in its second half.
pub const LEASE_MS: u64 = 2_000;

/// The lease as stored in shared data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseRecord {
    pub holder: u64,
    pub expires_ms: u64,
}

impl LeaseRecord {
    pub fn parse(bytes: &[u8]) -> Option<LeaseRecord> {
        let text = std::str::from_utf8(bytes).ok()?;
        let (holder, expires) = text.split_once(':')?;
        Some(LeaseRecord {
            holder: u64::from_str_radix(holder, 16).ok()?,
            expires_ms: expires.parse().ok()?,
        })
    }

    pub fn encode(&self) -> String {
        format!("{:x}:{}", self.holder, self.expires_ms)
    }
}

/// What a root context does about the lease on its tick.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LeaseStep {
    /// It holds the lease and it is fresh.
    Hold,
    /// It holds the lease, in its second half: extend it (compare-and-set).
    Renew,
    /// Nobody holds a live lease (absent, expired or unreadable): take it.
    Take,
    /// Another root holds a live lease.
    Wait,
}

pub fn lease_step(current: Option<&LeaseRecord>, me: u64, now_ms: u64) -> LeaseStep {
    match current {
        Some(lease) if lease.holder == me => {
            if lease.expires_ms.saturating_sub(now_ms) < LEASE_MS / 2 {
                LeaseStep::Renew
            } else {
                LeaseStep::Hold
            }
        }
        Some(lease) if lease.expires_ms > now_ms => LeaseStep::Wait,
        _ => LeaseStep::Take,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_lease_reads_back_and_passes_on_only_when_it_lapses() {
        let lease = LeaseRecord {
            holder: 0xabc,
            expires_ms: 5_000,
        };
        assert_eq!(lease.encode(), "abc:5000");
        assert_eq!(LeaseRecord::parse(lease.encode().as_bytes()), Some(lease));
        for garbage in [&b""[..], b"abc", b"zz:1", b"1:x", b"\xff:1"] {
            assert_eq!(LeaseRecord::parse(garbage), None);
        }
        let held = Some(&lease);
        assert_eq!(lease_step(held, 0xabc, 3_000), LeaseStep::Hold);
        assert_eq!(lease_step(held, 0xabc, 4_500), LeaseStep::Renew);
        assert_eq!(lease_step(held, 0xdef, 4_999), LeaseStep::Wait);
        assert_eq!(lease_step(held, 0xdef, 5_000), LeaseStep::Take);
        assert_eq!(lease_step(None, 0xdef, 0), LeaseStep::Take);
    }
}
