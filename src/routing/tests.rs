//! `route_request`'s tests: the formula, forcing, segments, sessions, hostile headers.

use super::*;
use crate::cohort::bucket;
use crate::route::Segment;

fn config() -> PluginConfig {
    PluginConfig::from_json(
        br#"{
        "target": "support-agent",
        "route": {
            "salt": "salt-1",
            "canary_weight_bp": 2500,
            "stable": {"version": "v1", "cluster": "agent_stable"},
            "canary": {"version": "v2", "cluster": "agent_canary"}
        }
    }"#,
    )
    .unwrap()
}

fn h(pairs: &[(&str, &[u8])]) -> HeaderMap<'static> {
    HeaderMap::from_pairs(pairs)
}

fn decide(config: &PluginConfig, headers: &HeaderMap) -> (Decision, Vec<HeaderEdit<'static>>) {
    let mut edits = Vec::new();
    let d = route_request(
        config,
        &config.route,
        headers,
        || 42,
        |e| {
            edits.push(match e {
                HeaderEdit::Remove(n) => HeaderEdit::Remove(leak(n)),
                HeaderEdit::Add(n, v) => HeaderEdit::Add(leak(n), leak(v)),
            })
        },
    );
    (d, edits)
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

fn set_value<'e>(edits: &'e [HeaderEdit<'_>], name: &str) -> Option<&'e str> {
    edits.iter().rev().find_map(|e| match e {
        HeaderEdit::Add(n, v) if *n == name => Some(*v),
        _ => None,
    })
}

fn removes(edits: &[HeaderEdit<'_>], name: &str) -> bool {
    edits.contains(&HeaderEdit::Remove(name))
}

/// Finds a session id whose bucket falls in the wanted cohort at weight 2500.
fn session_in(cohort: Cohort) -> String {
    (0..)
        .map(|i| format!("s{i}"))
        .find(|s| cohort_for(bucket(s.as_bytes(), b"salt-1"), 2500) == cohort)
        .unwrap()
}

#[test]
fn session_header_decides_by_the_formula() {
    let c = config();
    for i in 0..500 {
        let s = format!("user-{i}");
        let (d, edits) = decide(&c, &h(&[("x-session-id", s.as_bytes())]));
        let b = bucket(s.as_bytes(), b"salt-1");
        assert_eq!(d.bucket, b);
        assert_eq!(d.cohort, cohort_for(b, 2500));
        assert!(d.traffic != Traffic::Forced && !d.sessionless);
        let cluster = if d.cohort == Cohort::Canary {
            "agent_canary"
        } else {
            "agent_stable"
        };
        assert_eq!(set_value(&edits, "x-policy-cluster"), Some(cluster));
        assert_eq!(
            set_value(&edits, "x-canary-bucket"),
            Some(b.to_string().as_str())
        );
    }
}

#[test]
fn force_values() {
    let c = config();
    let stable_session = session_in(Cohort::Stable);
    for (value, expected) in [
        (&b"true"[..], Some(Cohort::Canary)),
        (b"1", Some(Cohort::Canary)),
        (b"Canary", Some(Cohort::Canary)),
        (b" TRUE ", Some(Cohort::Canary)),
        (b"false", Some(Cohort::Stable)),
        (b"0", Some(Cohort::Stable)),
        (b"stable", Some(Cohort::Stable)),
        (b"yes", None),
        (b"", None),
        (b"\xff\xfe", None),
        (b"truex", None),
    ] {
        let (d, edits) = decide(
            &c,
            &h(&[
                ("x-session-id", stable_session.as_bytes()),
                ("x-canary", value),
            ]),
        );
        match expected {
            Some(cohort) => {
                assert_eq!(d.cohort, cohort);
                assert!(d.traffic == Traffic::Forced);
                let canonical = if cohort == Cohort::Canary {
                    "true"
                } else {
                    "false"
                };
                assert_eq!(set_value(&edits, "x-canary"), Some(canonical));
            }
            None => {
                assert_eq!(d.cohort, Cohort::Stable, "value {value:?}");
                assert!(d.traffic != Traffic::Forced);
                assert!(removes(&edits, "x-canary"));
                assert_eq!(set_value(&edits, "x-canary"), None);
            }
        }
    }
}

#[test]
fn token_gated_force() {
    let mut c = config();
    c.force.token_sha256 = Some(sha256_hex(b"s3cret").to_uppercase());
    let s = session_in(Cohort::Stable);
    let (d, edits) = decide(
        &c,
        &h(&[("x-session-id", s.as_bytes()), ("x-canary", b"true")]),
    );
    assert!(d.traffic != Traffic::Forced && d.cohort == Cohort::Stable);
    assert!(removes(&edits, "x-canary"));
    let (d, edits) = decide(
        &c,
        &h(&[
            ("x-session-id", s.as_bytes()),
            ("x-canary", b"true"),
            ("x-canary-token", b"wrong"),
        ]),
    );
    assert!(d.traffic != Traffic::Forced && d.cohort == Cohort::Stable);
    assert!(removes(&edits, "x-canary") && removes(&edits, "x-canary-token"));
    let (d, edits) = decide(
        &c,
        &h(&[
            ("x-session-id", s.as_bytes()),
            ("x-canary", b"true"),
            ("x-canary-token", b"s3cret"),
        ]),
    );
    assert!(d.traffic == Traffic::Forced && d.cohort == Cohort::Canary);
    assert!(
        removes(&edits, "x-canary-token"),
        "the token never reaches the backend"
    );
}

#[test]
fn forcing_the_canary_without_a_canary_is_ignored() {
    let mut c = config();
    c.route.canary = None;
    c.route.canary_weight_bp = 0;
    let (d, edits) = decide(&c, &h(&[("x-canary", b"true")]));
    assert_eq!(d.cohort, Cohort::Stable);
    assert!(d.traffic != Traffic::Forced);
    assert!(removes(&edits, "x-canary"));
    assert_eq!(set_value(&edits, "x-policy-cluster"), Some("agent_stable"));
}

#[test]
fn segments_override_the_weight_first_match_wins() {
    let mut c = config();
    c.route.segments = vec![
        Segment {
            header: "x-user-group".into(),
            value: "internal".into(),
            canary_weight_bp: 10_000,
        },
        Segment {
            header: "x-user-group".into(),
            value: "vip".into(),
            canary_weight_bp: 0,
        },
        Segment {
            header: "x-tier".into(),
            value: "free".into(),
            canary_weight_bp: 10_000,
        },
    ];
    let s = session_in(Cohort::Stable);
    let c_s = session_in(Cohort::Canary);
    let (d, _) = decide(
        &c,
        &h(&[
            ("x-session-id", s.as_bytes()),
            ("x-user-group", b"internal"),
        ]),
    );
    assert_eq!(d.cohort, Cohort::Canary);
    // Placed by the segment, not by the hash at the rollout's weight: outside
    // the comparison, in no replicate.
    assert_eq!((d.traffic, d.replicate), (Traffic::Segment, None));
    let (d, _) = decide(
        &c,
        &h(&[
            ("x-session-id", c_s.as_bytes()),
            ("x-user-group", b"vip"),
            ("x-tier", b"free"),
        ]),
    );
    assert_eq!(d.cohort, Cohort::Stable, "first matching segment wins");
    assert_eq!(d.traffic, Traffic::Segment);
    let (d, _) = decide(
        &c,
        &h(&[("x-session-id", s.as_bytes()), ("x-user-group", b"other")]),
    );
    assert_eq!(d.cohort, Cohort::Stable);
    assert_eq!(d.traffic, Traffic::Compared);
    assert!(d.replicate.is_some());
}

#[test]
fn missing_session_policies() {
    let mut c = config();
    let (d, edits) = decide(&c, &h(&[]));
    assert_eq!(
        (d.cohort, d.bucket, d.sessionless),
        (Cohort::Stable, STABLE_BUCKET, true)
    );
    assert_eq!(set_value(&edits, "x-canary-bucket"), Some("9999"));
    c.session.missing = MissingSession::Random;
    let d = route_request(&c, &c.route, &h(&[]), || 42, |_| {});
    assert_eq!(
        (d.cohort, d.bucket, d.sessionless),
        (Cohort::Canary, 42, true)
    );
    let d = route_request(
        &c,
        &c.route,
        &h(&[("x-session-id", b"   ")]),
        || 9000,
        |_| {},
    );
    assert_eq!(
        (d.cohort, d.bucket, d.sessionless),
        (Cohort::Stable, 9000, true)
    );
    let d = route_request(&c, &c.route, &h(&[]), || 60_000, |_| {});
    assert!(d.bucket < BUCKETS);
}

/// Each header is read by its first value (a session header by its first
/// non-empty one), however many copies the request carries, wherever they are.
#[test]
fn repeated_headers_are_read_by_their_first_value() {
    let mut c = config();
    c.force.token_sha256 = Some(sha256_hex(b"s3cret"));
    let (d, _) = decide(
        &c,
        &h(&[
            ("x-session-id", b"  "),
            ("x-canary", b"false"),
            ("x-canary-token", b"s3cret"),
            ("x-session-id", b"abc"),
            ("x-canary", b"true"),
            ("x-canary-token", b"wrong"),
            ("x-session-id", b"xyz"),
        ]),
    );
    assert_eq!(d.bucket, bucket(b"abc", b"salt-1"));
    assert!(d.traffic == Traffic::Forced && d.cohort == Cohort::Stable);
    let (d, edits) = decide(
        &c,
        &h(&[
            ("x-canary-token", b"wrong"),
            ("x-canary", b"true"),
            ("x-canary-token", b"s3cret"),
        ]),
    );
    assert!(d.traffic != Traffic::Forced && d.cohort == Cohort::Stable);
    assert!(removes(&edits, "x-canary") && removes(&edits, "x-canary-token"));
}

#[test]
fn cookie_fallback() {
    let mut c = config();
    c.session.cookie = Some("sid".into());
    let expected = bucket(b"abc", b"salt-1");
    for cookie in [
        &b"sid=abc"[..],
        b"a=1; sid=abc",
        b"a=1;sid=abc;b=2",
        b"sidx=no; sid = abc",
    ] {
        let (d, _) = decide(&c, &h(&[("cookie", cookie)]));
        assert_eq!((d.bucket, d.sessionless), (expected, false), "{cookie:?}");
    }
    let (d, _) = decide(&c, &h(&[("cookie", b"a=1"), ("cookie", b"sid=abc")]));
    assert_eq!(d.bucket, expected);
    let (d, _) = decide(
        &c,
        &h(&[("cookie", b"sid=; x=y"), ("cookie", b"garbage;;=;")]),
    );
    assert!(d.sessionless);
    let (d, _) = decide(&c, &h(&[("x-session-id", b"hdr"), ("cookie", b"sid=abc")]));
    assert_eq!(
        d.bucket,
        bucket(b"hdr", b"salt-1"),
        "the header wins over the cookie"
    );
}

#[test]
fn spoofed_internal_headers_are_removed_then_set() {
    let c = config();
    let s = session_in(Cohort::Stable);
    let (_, edits) = decide(
        &c,
        &h(&[
            ("x-session-id", s.as_bytes()),
            ("x-policy-cluster", b"agent_canary"),
            ("x-agent-policy", b"v2"),
            ("x-canary-bucket", b"0"),
            ("x-canary-bucket", b"1"),
        ]),
    );
    for name in INTERNAL_HEADERS {
        let remove = edits
            .iter()
            .position(|e| *e == HeaderEdit::Remove(name))
            .unwrap();
        let set = edits
            .iter()
            .position(|e| matches!(e, HeaderEdit::Add(n, _) if *n == name))
            .unwrap();
        assert!(remove < set);
        assert_eq!(
            edits
                .iter()
                .filter(|e| **e == HeaderEdit::Remove(name))
                .count(),
            1
        );
    }
    assert_eq!(set_value(&edits, "x-policy-cluster"), Some("agent_stable"));
    assert_eq!(set_value(&edits, "x-agent-policy"), Some("v1"));
}

#[test]
fn custom_internal_header_names_are_also_protected() {
    let mut c = config();
    c.cluster_header = "x-my-cluster".into();
    let (_, edits) = decide(
        &c,
        &h(&[("x-my-cluster", b"evil"), ("x-policy-cluster", b"evil")]),
    );
    assert!(removes(&edits, "x-my-cluster") && removes(&edits, "x-policy-cluster"));
    assert_eq!(set_value(&edits, "x-my-cluster"), Some("agent_stable"));
}

#[test]
fn hostile_session_values_never_panic() {
    let c = config();
    let big = vec![b'a'; 30 * 1024];
    let cases: Vec<HeaderMap> = vec![
        h(&[("x-session-id", &big)]),
        h(&[("x-session-id", b"\xff\x00\xfe")]),
        h(&[("x-session-id", b""), ("x-session-id", b"second")]),
        h(&[("x-session-id", b"a"), ("x-session-id", b"b")]),
    ];
    for headers in cases {
        let (d, _) = decide(&c, &headers);
        assert!(d.bucket < BUCKETS);
    }
    let (d, _) = decide(
        &c,
        &h(&[("x-session-id", b""), ("x-session-id", b"second")]),
    );
    assert_eq!(d.bucket, bucket(b"second", b"salt-1"));
}

#[test]
fn no_canary_means_everything_stable() {
    let mut c = config();
    c.route.canary = None;
    c.route.canary_weight_bp = 0;
    c.route.segments = vec![Segment {
        header: "x-g".into(),
        value: "i".into(),
        canary_weight_bp: 10_000,
    }];
    let (d, edits) = decide(&c, &h(&[("x-session-id", b"x"), ("x-g", b"i")]));
    assert_eq!(d.cohort, Cohort::Stable);
    assert_eq!(set_value(&edits, "x-agent-policy"), Some("v1"));
}
