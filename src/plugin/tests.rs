//! The plugin's contexts against a mock host: header edits, telemetry, counts and
//! metrics, the sync service, and what happens when host calls fail.

use super::host::mock::MockHost;
use super::host::{LogLevel, MapKind};
use super::*;
use crate::sync::ROUTES_KEY;

pub(super) const CONFIG: &str = r#"{
  "target": "support-agent",
  "route": {
    "revision": 1,
    "salt": "s1",
    "canary_weight_bp": 10000,
    "stable": {"version": "v1", "cluster": "agent_stable"},
    "canary": {"version": "v2", "cluster": "agent_canary"}
  }
}"#;

const SYNC_CONFIG: &str = r#"{"sync": {"cluster": "controller", "wait_ms": 1000}}"#;

pub(super) fn filter(host: &MockHost) -> Role {
    Role::configure(host, Some(b"filter"), CONFIG.as_bytes()).unwrap()
}

pub(super) fn stat(version: &str, suffix: &str) -> String {
    format!("policy_canary.target.support-agent.version.{version}.{suffix}")
}

/// One whole stream through `role`, on `host`'s maps.
pub(super) fn run_stream(role: &Role, host: &MockHost) {
    let mut stream = role.new_stream();
    stream.on_request_headers(host);
    stream.on_response_headers(host);
    stream.on_response_trailers(host);
    stream.on_log(host);
}

#[test]
fn routes_the_request_and_removes_what_the_client_must_not_send() {
    let host = MockHost::default().with_map(
        MapKind::RequestHeaders,
        &[
            ("x-session-id", b"user-1"),
            ("x-policy-cluster", b"evil"),
            ("x-agent-policy", b"v0"),
        ],
    );
    let role = filter(&host);
    role.new_stream().on_request_headers(&host);
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-policy-cluster"),
        Some(b"agent_canary".to_vec()),
        "100% canary: the filter's own cluster replaces the client's"
    );
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-agent-policy"),
        Some(b"v2".to_vec())
    );
    assert!(host.logs.borrow().is_empty());
}

/// A request the host routed before the filter ran (the native module's cluster
/// specifier): the filter makes the edits it was handed and the version header,
/// writes no cluster or bucket header, and counts the stream for the decision
/// and table it was handed, not for one of its own.
#[test]
fn a_routed_request_keeps_the_decision_it_was_handed() {
    use crate::routing::{Decision, HeaderEdit};
    use crate::stats::Traffic;
    let host = MockHost::default().with_map(
        MapKind::RequestHeaders,
        &[("x-session-id", b"user-1"), ("x-policy-cluster", b"evil")],
    );
    let mut role = filter(&host);
    let Role::Filter(worker) = &role else {
        panic!("a filter");
    };
    let worker = Rc::clone(worker);
    // The config routes everything to the canary; the decision handed over is stable.
    let decision = Decision {
        cohort: crate::cohort::Cohort::Stable,
        bucket: 9999,
        traffic: Traffic::Forced,
        sessionless: false,
        replicate: None,
    };
    let mut stream = role.new_stream();
    stream.on_routed_request(
        &host,
        worker.current_table(),
        decision,
        [HeaderEdit::Remove("x-policy-cluster")],
    );
    stream.on_log(&host);
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-policy-cluster"),
        None
    );
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-canary-bucket"),
        None
    );
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-agent-policy"),
        Some(b"v1".to_vec())
    );
    for _ in 0..worker::FLUSH_EVERY_TICKS {
        role.on_tick(&host);
    }
    let forced = "policy_canary.target.support-agent.forced.version.v1.rq_total";
    assert_eq!(host.metric(forced), Some(1));
    assert_eq!(host.metric(&stat("v2", "rq_total")), None);
}

#[test]
fn counts_telemetry_strips_it_and_flushes_metrics_on_the_tick() {
    let host = MockHost::default()
        .with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")])
        .with_map(
            MapKind::ResponseHeaders,
            &[
                (":status", b"200"),
                ("x-agent-outcome", b"completed"),
                ("x-agent-tokens", b"120"),
                ("content-type", b"text/plain"),
            ],
        )
        .with_map(
            MapKind::ResponseTrailers,
            &[("x-agent-cost-micros", b"1500")],
        )
        .with_property(&["xds", "cluster_name"], b"agent_canary");
    let mut role = filter(&host);
    // 42 ms from the request's headers to the stream's end.
    host.now.set(1_000);
    let mut stream = role.new_stream();
    stream.on_request_headers(&host);
    stream.on_response_headers(&host);
    stream.on_response_trailers(&host);
    host.now.set(1_042);
    stream.on_log(&host);
    // Telemetry headers and trailers are removed, the rest stays.
    let response = host.maps.borrow()[&MapKind::ResponseHeaders].clone();
    let names: Vec<&str> = response.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names, vec![":status", "content-type"]);
    assert_eq!(
        host.header(MapKind::ResponseTrailers, "x-agent-cost-micros"),
        None
    );
    assert_eq!(host.histogram(&stat("v2", "rq_latency_ms")), vec![42]);
    // Counts reach Envoy on every FLUSH_EVERY_TICKS-th tick, not before.
    for _ in 1..worker::FLUSH_EVERY_TICKS {
        role.on_tick(&host);
    }
    assert_eq!(host.metric(&stat("v2", "rq_total")), None);
    role.on_tick(&host);
    assert_eq!(host.metric(&stat("v2", "rq_total")), Some(1));
    assert_eq!(host.metric(&stat("v2", "rq_2xx")), Some(1));
    assert_eq!(host.metric(&stat("v2", "tasks_completed")), Some(1));
    assert_eq!(host.metric(&stat("v2", "tokens")), Some(120));
    assert_eq!(host.metric(&stat("v2", "cost_micros")), Some(1500));
    // And per session replicate: user-1's replicate under salt s1.
    let replicate = crate::cohort::assign(b"user-1", b"s1").replicate;
    let rep = |suffix: &str| stat("v2", &format!("replicate.{replicate}.{suffix}"));
    assert_eq!(host.metric(&rep("rq_total")), Some(1));
    assert_eq!(host.metric(&rep("tasks_completed")), Some(1));
    assert_eq!(host.metric(&rep("cost_micros")), Some(1500));
    assert_eq!(host.metric(&rep("latency_bucket_50")), Some(1), "42 ms");
    assert_eq!(host.metric(&rep("rq_errors")), None, "nothing to count");
}

#[test]
fn a_stream_counts_for_the_cluster_envoy_chose_unless_told_to_trust_the_decision() {
    // 0% canary: the filter decides stable; Envoy's route sent it to the canary's
    // cluster anyway (runtime mode's weights during a change).
    let zero = CONFIG.replace("10000", "0");
    let count = |config: &str| {
        let host = MockHost::default()
            .with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")])
            .with_map(MapKind::ResponseHeaders, &[(":status", b"200")])
            .with_property(&["xds", "cluster_name"], b"agent_canary");
        let mut role = Role::configure(&host, Some(b"filter"), config.as_bytes()).unwrap();
        run_stream(&role, &host);
        for _ in 0..worker::FLUSH_EVERY_TICKS {
            role.on_tick(&host);
        }
        (
            host.metric(&stat("v1", "rq_total")),
            host.metric(&stat("v2", "rq_total")),
        )
    };
    assert_eq!(count(&zero), (None, Some(1)), "served_by cluster (default)");
    let decision = zero.replace(
        r#""target": "support-agent","#,
        r#""target": "support-agent", "served_by": "decision","#,
    );
    assert_eq!(count(&decision), (Some(1), None), "served_by decision");
}

#[test]
fn a_failed_header_read_routes_as_sessionless_and_is_logged_once() {
    let host = MockHost::default().failing("map");
    let role = filter(&host);
    run_stream(&role, &host);
    run_stream(&role, &host);
    let logs = host.logs.borrow();
    assert_eq!(logs.len(), 1, "{logs:?}");
    assert_eq!(logs[0].0, LogLevel::Warn);
    assert!(logs[0].1.contains("read request headers"), "{logs:?}");
}

#[test]
fn failed_header_edits_are_logged_once_and_the_stream_goes_on() {
    let host = MockHost::default()
        .with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")])
        .failing("add_map_value");
    let mut role = filter(&host);
    run_stream(&role, &host);
    run_stream(&role, &host);
    assert_eq!(host.logs.borrow().len(), 1);
    assert!(host.logs.borrow()[0].1.contains("edit request headers"));
    // Both streams are still counted.
    for _ in 0..worker::FLUSH_EVERY_TICKS {
        role.on_tick(&host);
    }
    assert_eq!(host.metric(&stat("v2", "rq_total")), Some(2));
}

#[test]
fn counts_survive_a_failing_metric_host_until_it_recovers() {
    let host = MockHost::default()
        .with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")])
        .failing("increment_metric");
    let mut role = filter(&host);
    run_stream(&role, &host);
    for _ in 0..worker::FLUSH_EVERY_TICKS {
        role.on_tick(&host);
    }
    assert_eq!(host.metric(&stat("v2", "rq_total")), Some(0));
    host.failing.borrow_mut().clear();
    for _ in 0..worker::FLUSH_EVERY_TICKS {
        role.on_tick(&host);
    }
    assert_eq!(host.metric(&stat("v2", "rq_total")), Some(1));
}

#[test]
fn a_bad_configuration_is_refused_with_the_field_named() {
    let host = MockHost::default();
    let bad = CONFIG.replace("canary_weight_bp", "canary_weight");
    assert!(Role::configure(&host, Some(b"filter"), bad.as_bytes()).is_none());
    assert!(Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), b"{}").is_none());
    let logs = host.logs.borrow();
    assert_eq!(logs.len(), 2);
    assert!(logs.iter().all(|(level, _)| *level == LogLevel::Error));
    assert!(logs[0].1.contains("canary_weight"), "{logs:?}");
    assert!(logs[1].1.contains("invalid sync configuration"), "{logs:?}");
}

#[test]
fn streams_of_a_sync_root_pass_through() {
    let host = MockHost::default().with_map(MapKind::RequestHeaders, &[("x-session-id", b"u")]);
    let sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), SYNC_CONFIG.as_bytes()).unwrap();
    run_stream(&sync, &host);
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-policy-cluster"),
        None
    );
}

pub(super) fn routes(revision: u64, weight: u16) -> Vec<u8> {
    format!(
        r#"{{"revision": {revision}, "routes": {{"support-agent": {{"revision": {revision},
        "salt": "s2", "canary_weight_bp": {weight},
        "stable": {{"version": "v1", "cluster": "agent_stable"}},
        "canary": {{"version": "v2", "cluster": "agent_canary"}}}}}}}}"#
    )
    .into_bytes()
}

/// The controller answers the sync service's open poll.
fn answer(sync: &mut Role, host: &MockHost, headers: &[(&str, &[u8])], body: &[u8]) {
    *host.call_body.borrow_mut() = body.to_vec();
    host.maps.borrow_mut().insert(
        MapKind::HttpCallResponseHeaders,
        headers
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_vec()))
            .collect(),
    );
    let token = host.calls.borrow().len() as u32;
    sync.on_http_call_response(host, token, body.len());
}

#[test]
fn the_sync_service_stores_the_table_and_every_worker_follows_it() {
    let host =
        MockHost::default().with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")]);
    host.now.set(1_000);
    let mut sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), SYNC_CONFIG.as_bytes()).unwrap();
    let mut role = filter(&host);
    sync.on_tick(&host);
    {
        let calls = host.calls.borrow();
        assert_eq!(calls.len(), 1);
        assert_eq!(calls[0].0, "controller");
        assert!(calls[0].1.contains(&(
            ":path".into(),
            "/v1/routes?revision=0&epoch=0&wait=1000ms".into()
        )));
    }
    // A header value that is not UTF-8 must not matter (the SDK's get_map would panic).
    answer(
        &mut sync,
        &host,
        &[(":status", b"200"), ("x-odd", b"\xff\xfe")],
        &routes(5, 0),
    );
    assert!(host.shared.borrow().contains_key(ROUTES_KEY));
    assert_eq!(host.metric("policy_canary.sync.revision"), Some(5));
    assert_eq!(
        host.calls.borrow().len(),
        2,
        "the next long-poll starts at once"
    );
    role.on_tick(&host);
    role.new_stream().on_request_headers(&host);
    assert_eq!(
        host.header(MapKind::RequestHeaders, "x-policy-cluster"),
        Some(b"agent_stable".to_vec()),
        "revision 5 sends everyone to stable"
    );
}

#[test]
fn the_sync_service_fails_static_and_says_so_once() {
    let host = MockHost::default();
    host.now.set(1_000);
    let mut sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), SYNC_CONFIG.as_bytes()).unwrap();
    sync.on_tick(&host);
    answer(&mut sync, &host, &[(":status", b"200")], &routes(5, 0));
    let stored = host.shared.borrow()[ROUTES_KEY].clone();
    // The controller is down for two polls: said once.
    for now in [60_000, 120_000] {
        answer(&mut sync, &host, &[(":status", b"503")], b"");
        host.now.set(now);
        sync.on_tick(&host);
    }
    answer(&mut sync, &host, &[(":status", b"200")], b"{not json");
    assert_eq!(
        host.shared.borrow()[ROUTES_KEY],
        stored,
        "the last good table stays"
    );
    assert_eq!(host.metric("policy_canary.sync.polls_failed"), Some(2));
    assert_eq!(
        host.metric("policy_canary.sync.documents_rejected"),
        Some(1)
    );
    let warnings: Vec<String> = host
        .logs
        .borrow()
        .iter()
        .filter(|(level, _)| *level == LogLevel::Warn)
        .map(|(_, line)| line.clone())
        .collect();
    assert_eq!(
        warnings.len(),
        2,
        "one line per kind of failure: {warnings:?}"
    );
    assert!(warnings[0].contains("unreachable") && warnings[0].contains("fail static"));
    assert!(warnings[1].contains("bad routes document"), "{warnings:?}");
}

#[test]
fn a_failed_dispatch_is_counted_and_retried_later() {
    let host = MockHost::default().failing("dispatch_http_call");
    host.now.set(1_000);
    let mut sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), SYNC_CONFIG.as_bytes()).unwrap();
    sync.on_tick(&host);
    assert_eq!(host.metric("policy_canary.sync.polls_failed"), Some(1));
    host.failing.borrow_mut().clear();
    host.now.set(100_000);
    sync.on_tick(&host);
    assert_eq!(host.calls.borrow().len(), 1);
}

#[test]
fn polls_carry_the_sync_token_from_the_config_or_the_environment() {
    let authorization = |config: &str, env: Option<&str>| {
        let host = MockHost::default();
        if let Some(token) = env {
            host.env
                .borrow_mut()
                .insert("POLICY_CANARY_TOKEN".into(), token.into());
        }
        let mut sync =
            Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), config.as_bytes()).unwrap();
        sync.on_tick(&host);
        let calls = host.calls.borrow();
        header_of(&calls[0], "authorization")
    };
    assert_eq!(authorization(SYNC_CONFIG, None), None);
    assert_eq!(
        authorization(SYNC_CONFIG, Some("pct_env")).as_deref(),
        Some("Bearer pct_env")
    );
    assert_eq!(
        authorization(SYNC_CONFIG, Some("not a token")),
        None,
        "an unusable value is not sent"
    );
    let configured = r#"{"sync": {"cluster": "controller", "wait_ms": 1000, "token": "pct_cfg"}}"#;
    assert_eq!(
        authorization(configured, Some("pct_env")).as_deref(),
        Some("Bearer pct_cfg")
    );
    let other_env =
        r#"{"sync": {"cluster": "controller", "wait_ms": 1000, "token_env": "MY_TOKEN"}}"#;
    assert_eq!(authorization(other_env, Some("pct_env")), None);
}

#[test]
fn a_wall_clock_step_back_does_not_suspend_polling() {
    let host = MockHost::default();
    host.now.set(10_000_000);
    let mut sync =
        Role::configure(&host, Some(SYNC_ROOT_ID.as_bytes()), SYNC_CONFIG.as_bytes()).unwrap();
    sync.on_tick(&host);
    answer(&mut sync, &host, &[(":status", b"503")], b"");
    // The clock steps back an hour while the service backs off (100 ms).
    host.now.set(10_000_000 - 3_600_000);
    for _ in 0..5 {
        host.now
            .set(host.now.get() + SYNC_PERIOD.as_millis() as u64);
        sync.on_tick(&host);
    }
    assert_eq!(
        host.calls.borrow().len(),
        2,
        "it polls again after its backoff"
    );
}

pub(super) const FILTER_SYNC_CONFIG: &str = r#"{
  "target": "support-agent",
  "route": {"revision": 0, "salt": "boot", "stable": {"version": "v1", "cluster": "agent_stable"}},
  "sync": {"cluster": "outbound|7070||canaryctl.policy-canary.svc.cluster.local", "wait_ms": 1000}
}"#;

/// Every root ticks once, the clock moving one tick period.
pub(super) fn tick_all(roots: &mut [Role], host: &MockHost) {
    host.now
        .set(host.now.get() + FOLLOW_PERIOD.as_millis() as u64);
    for root in roots.iter_mut() {
        root.on_tick(host);
    }
}

pub(super) fn header_of(call: &super::host::mock::Call, name: &str) -> Option<String> {
    call.1
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, v)| v.clone())
}

#[test]
fn filter_side_sync_has_one_poller_per_envoy_and_a_successor() {
    let host =
        MockHost::default().with_map(MapKind::RequestHeaders, &[("x-session-id", b"user-1")]);
    host.env
        .borrow_mut()
        .insert("HOSTNAME".into(), "edge-1".into());
    host.now.set(10_000_000);
    // Four workers and the main thread's root, as Envoy creates them.
    let mut roots: Vec<Role> = (0..5)
        .map(|_| Role::configure(&host, Some(b"filter"), FILTER_SYNC_CONFIG.as_bytes()).unwrap())
        .collect();
    for _ in 0..10 {
        tick_all(&mut roots, &host);
    }
    {
        let calls = host.calls.borrow();
        assert_eq!(calls.len(), 1, "one open poll per Envoy: {calls:?}");
        assert_eq!(
            calls[0].0,
            "outbound|7070||canaryctl.policy-canary.svc.cluster.local"
        );
        assert_eq!(
            header_of(&calls[0], "x-canary-envoy").as_deref(),
            Some("edge-1")
        );
    }
    let leader = (0..roots.len())
        .find(|&i| matches!(&roots[i], Role::Filter(w) if w.sync_leading()))
        .expect("a leader");
    // The controller answers the leader: every worker routes by the new table.
    *host.call_body.borrow_mut() = routes(5, 10_000);
    host.maps.borrow_mut().insert(
        MapKind::HttpCallResponseHeaders,
        vec![(":status".into(), b"200".to_vec())],
    );
    roots[leader].on_http_call_response(&host, 1, routes(5, 10_000).len());
    assert_eq!(
        host.calls.borrow().len(),
        2,
        "the leader polls again at once"
    );
    tick_all(&mut roots, &host);
    for root in &roots {
        root.new_stream().on_request_headers(&host);
        assert_eq!(
            host.header(MapKind::RequestHeaders, "x-policy-cluster"),
            Some(b"agent_canary".to_vec())
        );
    }
    // The leader goes away (its VM stops ticking): another root takes over once the
    // lease lapses, and waits for a change past revision 5 instead of refetching.
    let mut rest: Vec<Role> = roots
        .into_iter()
        .enumerate()
        .filter(|(i, _)| *i != leader)
        .map(|(_, r)| r)
        .collect();
    let lapse = crate::lease::LEASE_MS / FOLLOW_PERIOD.as_millis() as u64 + 3;
    for _ in 0..lapse {
        tick_all(&mut rest, &host);
    }
    {
        let calls = host.calls.borrow();
        assert_eq!(calls.len(), 3, "{calls:?}");
        let path = header_of(&calls[2], ":path").unwrap();
        assert!(path.contains("revision=5"), "{path}");
        assert_eq!(
            header_of(&calls[2], "x-canary-envoy").as_deref(),
            Some("edge-1")
        );
    }
    // The wall clock steps back an hour and this leader goes away too: the lease
    // still passes on within a lease (it is timed on each root's steady clock).
    let successor = rest
        .iter()
        .position(|r| matches!(r, Role::Filter(w) if w.sync_leading()))
        .expect("a successor leads");
    rest.remove(successor);
    host.now.set(host.now.get() - 3_600_000);
    for _ in 0..lapse {
        tick_all(&mut rest, &host);
    }
    assert_eq!(host.calls.borrow().len(), 4, "a third root took over");
}

#[test]
fn without_a_hostname_the_roots_share_one_generated_name() {
    let host = MockHost::default();
    host.now.set(1_000);
    let sync = |host: &MockHost| match Role::configure(
        host,
        Some(b"filter"),
        FILTER_SYNC_CONFIG.as_bytes(),
    ) {
        Some(Role::Filter(worker)) => worker,
        _ => panic!("a filter root"),
    };
    let (a, b) = (sync(&host), sync(&host));
    let (name_a, name_b) = (a.envoy_id(&host), b.envoy_id(&host));
    assert_eq!(name_a, name_b);
    assert!(
        name_a.as_deref().is_some_and(|n| n.starts_with("envoy-")),
        "{name_a:?}"
    );
}

#[test]
fn a_filter_without_a_sync_block_never_polls() {
    let host = MockHost::default();
    let mut roots = vec![filter(&host), filter(&host)];
    for _ in 0..100 {
        tick_all(&mut roots, &host);
    }
    assert!(host.calls.borrow().is_empty());
    assert!(host.shared.borrow().get(crate::lease::LEASE_KEY).is_none());
}
