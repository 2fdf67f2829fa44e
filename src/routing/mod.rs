//! The per-request decision: which cohort, which bucket, and the header edits that
//! carry it to Envoy's router and the backend. Pure: the glue hands in the request
//! headers and applies the edits.

use crate::cohort::{assign, bucket_text, cohort_for, Cohort, Traffic, BUCKETS};
use crate::config::{MissingSession, PluginConfig, INTERNAL_HEADERS};
use crate::digest::{constant_time_eq_ignore_ascii_case, sha256_hex};
use crate::route::RouteTable;
use crate::wire::HeaderMap;

/// Bucket written for a sessionless request sent to stable: the last bucket, which
/// only a 100% canary weight routes to the canary in runtime mode.
pub const STABLE_BUCKET: u16 = BUCKETS - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub cohort: Cohort,
    pub bucket: u16,
    /// Whether the cohort hash at the table's weight placed it (and so whether it
    /// is in the comparison), or what else did.
    pub traffic: Traffic,
    /// No session id was found.
    pub sessionless: bool,
    /// The session replicate this request counts in (`replicate`): `None` for
    /// requests outside the comparison (any traffic but `Compared`).
    pub replicate: Option<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HeaderEdit<'a> {
    Remove(&'a str),
    /// A header the request does not have (a client's copy is removed first):
    /// added, which spares Envoy the search for an old value that a replacement
    /// makes (the request map is searched once per call).
    Add(&'a str, &'a str),
}

/// Decides the cohort of one request and hands `edit` the header edits, removals
/// first (one by one, so that a request allocates nothing for them); a header is
/// added only after any client copy of it was removed.
///
/// `random` (64 random bits) is called only for a sessionless request under
/// `missing: random`: its bucket, and its replicate from the top bits.
pub fn route_request(
    config: &PluginConfig,
    table: &RouteTable,
    headers: &HeaderMap,
    random: impl FnOnce() -> u64,
    edit: impl FnMut(HeaderEdit<'_>),
) -> Decision {
    // Every header is read before the first edit (`edits` cannot read them): a
    // host may lend its own map, which an edit changes (a removal frees what the
    // map held).
    let (decision, sent) = decide(config, table, headers, random);
    edits(config, table, &sent, decision, edit);
    decision
}

/// What the client sent that the edits depend on: each of `internal_headers`
/// (a name listed twice counts once), the force token header, the force header.
struct Sent {
    spoofed: [bool; 6],
    token: bool,
    force: ForceHeader,
}

/// The headers the filter writes or reads for itself, which a client may not send.
fn internal_headers(config: &PluginConfig) -> [&str; 6] {
    let [a, b, c] = INTERNAL_HEADERS;
    [
        a,
        b,
        c,
        &config.cluster_header,
        &config.version_header,
        &config.bucket_header,
    ]
}

/// What the decision reads of the request map by name, found in one pass over
/// it (a map of 10-20 headers searched once per name cost more than the rest of
/// the decision but the hash).
#[derive(Default)]
struct Read<'h> {
    /// Each of `internal_headers` the client sent; a name listed twice is marked
    /// at its first place only.
    spoofed: [bool; 6],
    /// The first value of the force token header.
    token: Option<&'h [u8]>,
    /// The first value of the force header.
    force: Option<&'h [u8]>,
    /// The first non-empty value of the session header, trimmed.
    session: Option<&'h [u8]>,
}

fn read<'h>(config: &PluginConfig, headers: &'h HeaderMap) -> Read<'h> {
    let internal = internal_headers(config);
    let token = config.force.token_header.as_bytes();
    let force = config.force.header.as_bytes();
    let session = config.session.header.as_bytes();
    let mut read = Read::default();
    for (name, value) in headers.iter() {
        if let Some(i) = internal.iter().position(|n| n.as_bytes() == name) {
            read.spoofed[i] = true;
        }
        if name == token && read.token.is_none() {
            read.token = Some(value);
        }
        if name == force && read.force.is_none() {
            read.force = Some(value);
        }
        if name == session && read.session.is_none() {
            read.session = Some(value.trim_ascii()).filter(|v| !v.is_empty());
        }
    }
    read
}

/// The decision, from every header the filter reads.
fn decide(
    config: &PluginConfig,
    table: &RouteTable,
    headers: &HeaderMap,
    random: impl FnOnce() -> u64,
) -> (Decision, Sent) {
    // Never trust the client with the headers the filter writes.
    let Read {
        spoofed,
        token,
        force,
        session,
    } = read(config, headers);
    let force = forced_cohort(config, table, force, token);
    let session = session.or_else(|| session_cookie(config, headers));
    // A segment's weight places its sessions outside the comparison.
    let segment = segment_weight(table, headers);
    let (weight, placed_by) = match (&table.canary, segment) {
        (None, _) => (0, Traffic::Compared),
        (Some(_), Some(weight)) => (weight, Traffic::Segment),
        (Some(_), None) => (table.canary_weight_bp, Traffic::Compared),
    };
    let replicate =
        |r: u8| (config.session_replicates && placed_by == Traffic::Compared).then_some(r);
    let assignment = session.map(|id| assign(id, table.salt.as_bytes()));
    let decision = match (force, assignment) {
        (ForceHeader::Honoured(cohort), a) => Decision {
            cohort,
            bucket: a.map_or(
                match cohort {
                    Cohort::Canary => 0,
                    Cohort::Stable => STABLE_BUCKET,
                },
                |a| a.bucket,
            ),
            traffic: Traffic::Forced,
            sessionless: a.is_none(),
            replicate: None,
        },
        (_, Some(a)) => Decision {
            cohort: cohort_for(a.bucket, weight),
            bucket: a.bucket,
            traffic: placed_by,
            sessionless: false,
            replicate: replicate(a.replicate),
        },
        (_, None) => match config.session.missing {
            MissingSession::Stable => Decision {
                cohort: Cohort::Stable,
                bucket: STABLE_BUCKET,
                traffic: match placed_by {
                    Traffic::Segment => Traffic::Segment,
                    _ => Traffic::Sessionless,
                },
                sessionless: true,
                replicate: None,
            },
            MissingSession::Random => {
                // Each such request is its own unit: any replicate will do, drawn
                // from bits the bucket hardly depends on.
                let bits = random();
                let b = (bits % u64::from(BUCKETS)) as u16;
                Decision {
                    cohort: cohort_for(b, weight),
                    bucket: b,
                    traffic: placed_by,
                    sessionless: true,
                    replicate: replicate(crate::cohort::replicate_of((bits >> 56) as u8)),
                }
            }
        },
    };
    let sent = Sent {
        spoofed,
        token: token.is_some(),
        force,
    };
    (decision, sent)
}

/// The header edits for `decision`: removals first, then what the filter writes.
fn edits(
    config: &PluginConfig,
    table: &RouteTable,
    sent: &Sent,
    decision: Decision,
    mut edit: impl FnMut(HeaderEdit<'_>),
) {
    let internal = internal_headers(config);
    for (i, name) in internal.iter().enumerate() {
        if sent.spoofed[i] {
            edit(HeaderEdit::Remove(name));
        }
    }
    if sent.token {
        edit(HeaderEdit::Remove(&config.force.token_header));
    }
    match sent.force {
        ForceHeader::Absent => {}
        ForceHeader::Ignored => edit(HeaderEdit::Remove(&config.force.header)),
        ForceHeader::Honoured(cohort) => {
            // Canonical value, so that runtime-mode routes can match it exactly.
            let canonical = match cohort {
                Cohort::Canary => "true",
                Cohort::Stable => "false",
            };
            edit(HeaderEdit::Remove(&config.force.header));
            edit(HeaderEdit::Add(&config.force.header, canonical));
        }
    }
    let backend = table.backend(decision.cohort);
    edit(HeaderEdit::Add(&config.cluster_header, &backend.cluster));
    edit(HeaderEdit::Add(&config.version_header, &backend.version));
    let mut digits = [0u8; 5];
    edit(HeaderEdit::Add(
        &config.bucket_header,
        bucket_text(decision.bucket, &mut digits),
    ));
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ForceHeader {
    Absent,
    /// Present but not honoured (bad value, bad token, no canary): removed.
    Ignored,
    Honoured(Cohort),
}

/// What the force header (`value`, its first) asks, with the token header's
/// first value `token`.
fn forced_cohort(
    config: &PluginConfig,
    table: &RouteTable,
    value: Option<&[u8]>,
    token: Option<&[u8]>,
) -> ForceHeader {
    let Some(value) = value else {
        return ForceHeader::Absent;
    };
    let Some(cohort) = parse_force(value) else {
        return ForceHeader::Ignored;
    };
    if let Some(expected) = &config.force.token_sha256 {
        let token_ok = token.is_some_and(|token| {
            constant_time_eq_ignore_ascii_case(sha256_hex(token).as_bytes(), expected.as_bytes())
        });
        if !token_ok {
            return ForceHeader::Ignored;
        }
    }
    if cohort == Cohort::Canary && table.canary.is_none() {
        return ForceHeader::Ignored;
    }
    ForceHeader::Honoured(cohort)
}

/// `true`, `1`, `canary` force the canary; `false`, `0`, `stable` force stable.
pub fn parse_force(value: &[u8]) -> Option<Cohort> {
    let value = value.trim_ascii();
    const CANARY: [&[u8]; 3] = [b"true", b"1", b"canary"];
    const STABLE: [&[u8]; 3] = [b"false", b"0", b"stable"];
    if CANARY.iter().any(|c| c.eq_ignore_ascii_case(value)) {
        Some(Cohort::Canary)
    } else if STABLE.iter().any(|s| s.eq_ignore_ascii_case(value)) {
        Some(Cohort::Stable)
    } else {
        None
    }
}

/// The session cookie's first non-empty value (the session id when no session
/// header has one).
fn session_cookie<'h>(config: &PluginConfig, headers: &'h HeaderMap) -> Option<&'h [u8]> {
    let cookie_name = config.session.cookie.as_deref()?.as_bytes();
    headers
        .iter()
        .filter(|(n, _)| *n == b"cookie")
        .flat_map(|(_, v)| v.split(|&b| b == b';'))
        .filter_map(|pair| {
            let pair = pair.trim_ascii();
            let eq = pair.iter().position(|&b| b == b'=')?;
            (pair[..eq].trim_ascii() == cookie_name).then(|| pair[eq + 1..].trim_ascii())
        })
        .find(|v| !v.is_empty())
}

fn segment_weight(table: &RouteTable, headers: &HeaderMap) -> Option<u16> {
    table
        .segments
        .iter()
        .find(|segment| {
            headers
                .iter()
                .any(|(n, v)| n == segment.header.as_bytes() && v == segment.value.as_bytes())
        })
        .map(|segment| segment.canary_weight_bp)
}

#[cfg(test)]
mod tests;
