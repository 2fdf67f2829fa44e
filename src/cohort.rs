//! Sticky cohort assignment:
//! `bucket = int(sha256(session_id + ":" + salt), big-endian) % 10000`,
//! `canary` when `bucket < canary_weight_bp`.

use sha2::{Digest, Sha256};

/// Number of buckets; weights are in basis points of this.
pub const BUCKETS: u16 = 10_000;
/// Largest weight: every bucket, 10000 basis points = 100%.
pub const MAX_WEIGHT_BP: u16 = BUCKETS;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cohort {
    Stable,
    Canary,
}

impl Cohort {
    pub fn as_str(self) -> &'static str {
        match self {
            Cohort::Stable => "stable",
            Cohort::Canary => "canary",
        }
    }
}

/// Which traffic a stream belongs to. Only `Compared` streams were placed by the
/// cohort hash at the rollout's weight, so only they make the two arms a randomized
/// split of the same population; the others are counted apart, under
/// `<target>.<class>`, visible in their own stats and out of the analysis'
/// comparison (`docs/analysis.md`, "A fair comparison").
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Traffic {
    /// Placed by the session's bucket at the table's weight (or, sessionless under
    /// `missing: random`, by a random bucket at that weight).
    #[default]
    Compared,
    /// An honoured `x-canary` chose the cohort: whoever can send it must not be
    /// able to fill a stage's minimum requests or fail its gates.
    Forced,
    /// A segment's weight placed it: its users are not a random share of the
    /// population (internal users at 100%, say).
    Segment,
    /// No session id, sent to stable (`missing: stable`): stable only, no canary
    /// counterpart.
    Sessionless,
}

impl Traffic {
    pub const ALL: [Traffic; 4] = [
        Traffic::Compared,
        Traffic::Forced,
        Traffic::Segment,
        Traffic::Sessionless,
    ];

    /// The class of a stat target's suffix after `<target>.` (`None`: not one).
    pub fn from_name(name: &str) -> Option<Traffic> {
        Traffic::ALL.into_iter().find(|t| t.name() == name)
    }

    /// The class's name: what `stat_target` appends after a dot (empty for `Compared`).
    pub fn name(self) -> &'static str {
        match self {
            Traffic::Compared => "",
            Traffic::Forced => "forced",
            Traffic::Segment => "segment",
            Traffic::Sessionless => "sessionless",
        }
    }
}

/// Where a session sits under a rollout's salt: its bucket, and its replicate
/// (`replicate`), both from one sha256.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Assignment {
    pub bucket: u16,
    pub replicate: u8,
}

/// A session's replicate (`replicate`): the top five bits of the first byte of its
/// assignment digest. The bucket is the whole digest mod 10000, so it is
/// independent of these bits (up to a bias below 10^-70).
pub fn replicate_of(first_digest_byte: u8) -> u8 {
    first_digest_byte >> 3
}

/// The session's bucket in `0..10000` and its replicate under `salt`.
pub fn assign(session_id: &[u8], salt: &[u8]) -> Assignment {
    let mut hasher = Sha256::new();
    hasher.update(session_id);
    hasher.update(b":");
    hasher.update(salt);
    let digest = hasher.finalize();
    // The 256-bit big-endian integer mod 10000, 32 bits at a time (8 remainders
    // instead of 32: this runs on every request).
    let rest = digest.chunks_exact(4).fold(0u64, |rest, word| {
        let word = word
            .iter()
            .fold(0u64, |w, &byte| (w << 8) | u64::from(byte));
        ((rest << 32) | word) % u64::from(BUCKETS)
    });
    Assignment {
        bucket: rest as u16,
        replicate: replicate_of(digest[0]),
    }
}

/// The session's bucket in `0..10000` under `salt`.
pub fn bucket(session_id: &[u8], salt: &[u8]) -> u16 {
    assign(session_id, salt).bucket
}

/// `bucket` in decimal, written into `buffer`: the bucket header's value, with no
/// allocation on the request path.
pub fn bucket_text(bucket: u16, buffer: &mut [u8; 5]) -> &str {
    let mut start = buffer.len();
    let mut rest = bucket;
    loop {
        start -= 1;
        buffer[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    // Only ASCII digits were written.
    std::str::from_utf8(&buffer[start..]).unwrap_or("0")
}

/// Monotonic in the weight: a bucket in the canary at weight w stays there at any w' > w.
pub fn cohort_for(bucket: u16, canary_weight_bp: u16) -> Cohort {
    if bucket < canary_weight_bp {
        Cohort::Canary
    } else {
        Cohort::Stable
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bucket_text_writes_every_bucket() {
        let mut digits = [0u8; 5];
        for n in [0, 7, 10, 99, 100, 9999, u16::MAX] {
            assert_eq!(bucket_text(n, &mut digits), n.to_string());
        }
    }

    /// Vectors from `tests/golden/cohort_vectors.py` (Python hashlib), committed beside it.
    const GOLDEN: &str = include_str!("../tests/golden/cohort_vectors.tsv");

    fn unhex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn matches_independent_golden_vectors() {
        let mut checked = 0;
        for line in GOLDEN.lines().filter(|l| !l.starts_with('#')) {
            let cols: Vec<&str> = line.split('\t').collect();
            let [session, salt, weight, expected_bucket, expected_cohort] = cols[..] else {
                panic!("bad golden line: {line}");
            };
            let b = bucket(&unhex(session), &unhex(salt));
            assert_eq!(b.to_string(), expected_bucket, "line: {line}");
            let cohort = cohort_for(b, weight.parse().unwrap());
            assert_eq!(cohort.as_str(), expected_cohort, "line: {line}");
            checked += 1;
        }
        assert!(checked >= 1000, "only {checked} golden vectors");
    }

    #[test]
    fn weight_edges() {
        for b in [0, 1, 9998, 9999] {
            assert_eq!(cohort_for(b, 0), Cohort::Stable);
            assert_eq!(cohort_for(b, 10_000), Cohort::Canary);
        }
        assert_eq!(cohort_for(0, 1), Cohort::Canary);
        assert_eq!(cohort_for(1, 1), Cohort::Stable);
        assert_eq!(cohort_for(9998, 9999), Cohort::Canary);
        assert_eq!(cohort_for(9999, 9999), Cohort::Stable);
    }

    #[test]
    fn raising_the_weight_keeps_every_canary_session() {
        let weights = [100, 500, 2500, 5000, 10_000];
        for i in 0..5000u32 {
            let b = bucket(format!("session-{i}").as_bytes(), b"salt");
            let first = weights
                .iter()
                .position(|&w| cohort_for(b, w) == Cohort::Canary);
            if let Some(first) = first {
                assert!(weights[first..]
                    .iter()
                    .all(|&w| cohort_for(b, w) == Cohort::Canary));
            }
        }
    }
}
