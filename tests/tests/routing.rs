//! The filter's routing inside a real Envoy, static mode (envoy/envoy-static.yaml),
//! each test against every build: the wasm filter, the native module, and the
//! native module deciding in its cluster specifier.

use policy_canary_e2e::*;
use std::collections::HashSet;

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");
const SALT: &str = "rollout-2026-11-22";
const TARGET: &str = "support-agent";

struct Setup {
    envoy: Envoy,
    client: Client,
    _stable: Backend,
    _canary: Backend,
}

/// The shipped static config, optionally with another plugin configuration.
fn start(build: Build, plugin_json: Option<&str>) -> Setup {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let mut config = shipped_config("envoy-static.yaml", stable.port, canary.port);
    if let Some(json) = plugin_json {
        config = with_plugin_config(&config, json);
    }
    let envoy = Envoy::start(&build.config(&config), 1);
    let client = Client::new(envoy.port);
    Setup {
        envoy,
        client,
        _stable: stable,
        _canary: canary,
    }
}

fn plugin(weight: u16, extra: &str) -> String {
    format!(
        r#"{{
  "target": "{TARGET}",
  {extra}
  "route": {{
    "salt": "{SALT}",
    "canary_weight_bp": {weight},
    "stable": {{"version": "v2.3.1", "cluster": "agent_stable"}},
    "canary": {{"version": "v2.4.0", "cluster": "agent_canary"}}
  }}
}}"#
    )
}

fn backend_for(canary: bool) -> &'static str {
    if canary {
        "canary"
    } else {
        "stable"
    }
}

/// A session that the formula puts in the wanted cohort at `weight`.
fn session_in(canary: bool, weight: u16) -> String {
    (0..)
        .map(|i| format!("probe-{i}"))
        .find(|s| expected_canary(s, SALT, weight) == canary)
        .unwrap()
}

fn every_session_lands_where_the_formula_says_and_stays_there(build: Build) {
    // The shipped config: 10% canary.
    let s = start(build, None);
    let weight = 1000;
    let sessions: Vec<String> = (0..2500).map(|i| format!("user-{i}")).collect();
    let mut canary = 0u32;
    for session in &sessions {
        let reply = s.client.session(session);
        assert_eq!(reply.status, 200);
        let expected = expected_canary(session, SALT, weight);
        assert_eq!(reply.backend, backend_for(expected), "session {session}");
        let bucket = policy_canary::cohort::bucket(session.as_bytes(), SALT.as_bytes());
        assert_eq!(
            reply.received.get("x-canary-bucket"),
            (!build.routes_by_specifier())
                .then(|| bucket.to_string())
                .as_ref()
        );
        let version = if expected { "v2.4.0" } else { "v2.3.1" };
        assert_eq!(reply.received["x-agent-policy"], version);
        canary += u32::from(expected);
    }
    // The observed share sits inside the 99.9% binomial interval of the weight.
    let n = sessions.len() as f64;
    let p = f64::from(weight) / 10_000.0;
    let half_width = 3.29 * (n * p * (1.0 - p)).sqrt();
    assert!(
        (f64::from(canary) - n * p).abs() <= half_width,
        "{canary} of {n} sessions on the canary, expected {} ± {half_width:.1}",
        n * p
    );
    // Sticky: every repeat lands on the same backend.
    for session in sessions.iter().step_by(3) {
        let again = s.client.session(session);
        assert_eq!(
            again.backend,
            backend_for(expected_canary(session, SALT, weight))
        );
    }
    assert_eq!(s.envoy.wasm_failures(), Vec::<String>::new());
}

fn raising_the_weight_keeps_every_earlier_canary_session(build: Build) {
    let sessions: Vec<String> = (0..2000).map(|i| format!("grow-{i}")).collect();
    let mut previous: HashSet<String> = HashSet::new();
    for weight in [100, 500, 2500] {
        let s = start(build, Some(&plugin(weight, "")));
        let now: HashSet<String> = sessions
            .iter()
            .filter(|session| s.client.session(session).backend == "canary")
            .cloned()
            .collect();
        assert!(
            previous.is_subset(&now),
            "a canary session left the canary at {weight} bp"
        );
        let expected: HashSet<String> = sessions
            .iter()
            .filter(|session| expected_canary(session, SALT, weight))
            .cloned()
            .collect();
        assert_eq!(now, expected, "at {weight} bp");
        previous = now;
    }
}

fn x_canary_forces_either_cohort(build: Build) {
    let s = start(build, None);
    let stable_session = session_in(false, 1000);
    let canary_session = session_in(true, 1000);
    for value in ["true", "1", "canary", "TRUE", " Canary "] {
        let reply = s.client.get(
            "/",
            &[("x-session-id", &stable_session), ("x-canary", value)],
        );
        assert_eq!(reply.backend, "canary", "x-canary: {value}");
        assert_eq!(reply.received["x-canary"], "true");
        assert_eq!(reply.received["x-agent-policy"], "v2.4.0");
    }
    for value in ["false", "0", "stable"] {
        let reply = s.client.get(
            "/",
            &[("x-session-id", &canary_session), ("x-canary", value)],
        );
        assert_eq!(reply.backend, "stable", "x-canary: {value}");
    }
    for value in ["yes", "", "2", "canary please"] {
        let reply = s.client.get(
            "/",
            &[("x-session-id", &stable_session), ("x-canary", value)],
        );
        assert_eq!(
            reply.backend, "stable",
            "odd x-canary: {value:?} is ignored"
        );
        assert!(!reply.received.contains_key("x-canary"), "and removed");
    }
    // Forced requests without a session are forced too.
    assert_eq!(s.client.get("/", &[("x-canary", "1")]).backend, "canary");
    wait_for(
        "forced requests counted",
        std::time::Duration::from_secs(5),
        || {
            (s.envoy
                .policy_stat(&format!("{TARGET}.forced"), "v2.4.0", "rq_forced")
                == 6)
                .then_some(())
        },
    );
    // Counted apart, under `<target>.forced`: never in the analysis' evidence.
    assert_eq!(
        s.envoy
            .policy_stat(&format!("{TARGET}.forced"), "v2.3.1", "rq_forced"),
        3
    );
    assert_eq!(s.envoy.policy_stat(TARGET, "v2.4.0", "rq_forced"), 0);
}

fn forcing_needs_the_token_when_one_is_configured(build: Build) {
    let hash = policy_canary::digest::sha256_hex(b"let-me-in");
    let s = start(
        build,
        Some(&plugin(
            0,
            &format!(r#""force": {{"header": "x-canary", "token_sha256": "{hash}"}},"#),
        )),
    );
    let no_token = s
        .client
        .get("/", &[("x-session-id", "a"), ("x-canary", "true")]);
    assert_eq!(no_token.backend, "stable");
    assert!(!no_token.received.contains_key("x-canary"));
    let wrong = s.client.get(
        "/",
        &[
            ("x-session-id", "a"),
            ("x-canary", "true"),
            ("x-canary-token", "guess"),
        ],
    );
    assert_eq!(wrong.backend, "stable");
    assert!(!wrong.received.contains_key("x-canary-token"));
    let right = s.client.get(
        "/",
        &[
            ("x-session-id", "a"),
            ("x-canary", "true"),
            ("x-canary-token", "let-me-in"),
        ],
    );
    assert_eq!(right.backend, "canary");
    assert!(
        !right.received.contains_key("x-canary-token"),
        "the token never reaches a backend"
    );
}

fn segments_override_the_weight(build: Build) {
    // The shipped config sends x-user-group: internal to the canary at 100%.
    let s = start(build, None);
    for i in 0..200 {
        let session = format!("staff-{i}");
        let reply = s.client.get(
            "/",
            &[("x-session-id", &session), ("x-user-group", "internal")],
        );
        assert_eq!(reply.backend, "canary");
        let outside = s.client.get(
            "/",
            &[("x-session-id", &session), ("x-user-group", "external")],
        );
        assert_eq!(
            outside.backend,
            backend_for(expected_canary(&session, SALT, 1000))
        );
    }
}

fn sessions_from_the_cookie_and_requests_without_one(build: Build) {
    let s = start(build, None);
    // The shipped config reads the session from cookie `agent_session` when the header is absent.
    for i in 0..300 {
        let session = format!("cookie-{i}");
        let cookie = format!("theme=dark; agent_session={session}; other=1");
        let reply = s.client.get("/", &[("cookie", &cookie)]);
        assert_eq!(
            reply.backend,
            backend_for(expected_canary(&session, SALT, 1000))
        );
    }
    for _ in 0..50 {
        let reply = s.client.get("/", &[]);
        assert_eq!(reply.backend, "stable", "no session → stable");
        let bucket = reply.received.get("x-canary-bucket").map(String::as_str);
        let expected = (!build.routes_by_specifier()).then_some("9999");
        assert_eq!(bucket, expected);
    }
    wait_for(
        "sessionless requests counted",
        std::time::Duration::from_secs(5),
        || {
            let apart = format!("{TARGET}.sessionless");
            (s.envoy.policy_stat(&apart, "v2.3.1", "sessionless_rq") == 50).then_some(())
        },
    );
    // Counted apart, not in the comparison.
    assert_eq!(s.envoy.policy_stat(TARGET, "v2.3.1", "sessionless_rq"), 0);
    assert_eq!(s.envoy.policy_stat(TARGET, "v2.4.0", "sessionless_rq"), 0);
}

fn missing_random_spreads_sessionless_requests(build: Build) {
    let s = start(
        build,
        Some(&plugin(5000, r#""session": {"missing": "random"},"#)),
    );
    let canary = (0..400)
        .filter(|_| s.client.get("/", &[]).backend == "canary")
        .count();
    // 400 draws at p = 0.5: the 99.9% interval is 200 ± 33.
    assert!(
        (167..=233).contains(&canary),
        "{canary} of 400 on the canary"
    );
    wait_for(
        "sessionless counted",
        std::time::Duration::from_secs(5),
        || {
            let total = s.envoy.policy_stat(TARGET, "v2.3.1", "sessionless_rq")
                + s.envoy.policy_stat(TARGET, "v2.4.0", "sessionless_rq");
            (total == 400).then_some(())
        },
    );
    // Each counted for the version whose backend answered it.
    let counted = s.envoy.policy_stat(TARGET, "v2.4.0", "sessionless_rq");
    assert_eq!(counted, canary as u64);
}

fn client_sent_internal_headers_are_replaced(build: Build) {
    let s = start(build, None);
    let session = session_in(false, 1000);
    let reply = s.client.get(
        "/",
        &[
            ("x-session-id", &session),
            ("x-policy-cluster", "agent_canary"),
            ("x-agent-policy", "v9.9.9"),
            ("x-canary-bucket", "0"),
            ("x-canary-bucket", "1"),
        ],
    );
    assert_eq!(reply.backend, "stable");
    assert_eq!(reply.received_all["x-agent-policy"], vec!["v2.3.1"]);
    if build.routes_by_specifier() {
        // Removed, and nothing written in their place: the route needs neither.
        assert_eq!(reply.received_all.get("x-policy-cluster"), None);
        assert_eq!(reply.received_all.get("x-canary-bucket"), None);
        return;
    }
    assert_eq!(reply.received_all["x-policy-cluster"], vec!["agent_stable"]);
    let bucket = policy_canary::cohort::bucket(session.as_bytes(), SALT.as_bytes());
    assert_eq!(
        reply.received_all["x-canary-bucket"],
        vec![bucket.to_string()]
    );
}

fn hostile_headers_still_reach_a_backend(build: Build) {
    let s = start(build, None);
    let big = vec![b's'; 30 * 1024];
    let cases: Vec<Vec<(&str, &[u8])>> = vec![
        vec![("x-session-id", b"")],
        vec![("x-session-id", &big)],
        vec![("x-session-id", b"\xff\xfe\xfd caf\xc3")],
        vec![("x-session-id", b"one"), ("x-session-id", b"two")],
        vec![("x-session-id", b"a"), ("x-canary", b"\xff")],
        vec![("x-canary", b"true"), ("x-canary", b"false")],
        vec![("x-canary-token", &big)],
        vec![("cookie", b";;;=;agent_session;agent_session=")],
        vec![("x-user-group", b"\x80internal")],
    ];
    for headers in &cases {
        let (status, body) =
            http_request(s.envoy.port, "GET", "/", headers).expect("Envoy answers");
        let shown: Vec<(&str, usize)> = headers.iter().map(|(n, v)| (*n, v.len())).collect();
        assert_eq!(status, 200, "headers (name, value length): {shown:?}");
        assert!(body.contains("\"backend\""), "a backend answered: {body}");
    }
    // Repeated session headers: the first non-empty one decides.
    let reply = http_request(
        s.envoy.port,
        "GET",
        "/",
        &[("x-session-id", b""), ("x-session-id", b"two")],
    )
    .unwrap();
    let expected = backend_for(expected_canary("two", SALT, 1000));
    assert!(reply.1.contains(&format!("\"backend\":\"{expected}\"")));
    assert_eq!(s.envoy.wasm_failures(), Vec::<String>::new());
}

every_build!(
    every_session_lands_where_the_formula_says_and_stays_there,
    raising_the_weight_keeps_every_earlier_canary_session,
    x_canary_forces_either_cohort,
    forcing_needs_the_token_when_one_is_configured,
    segments_override_the_weight,
    sessions_from_the_cookie_and_requests_without_one,
    missing_random_spreads_sessionless_requests,
    client_sent_internal_headers_are_replaced,
    hostile_headers_still_reach_a_backend,
);

/// The native module's specifier hands its decision to the stream's filter only
/// while `:path` is the one it saw: a stream whose path an earlier filter rewrote
/// has Envoy pick the route again (the specifier decides on the new headers), and
/// a route without the specifier is routed by the cluster header. Either way each
/// session lands where the formula says, and every request, sessionless ones
/// drawn at random too, is counted for the version that answered it.
#[test]
fn native_specifier_streams_are_routed_when_the_path_changes_or_the_route_lacks_it() {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let config = with_plugin_config(
        &shipped_config("envoy-static.yaml", stable.port, canary.port),
        &plugin(5000, r#""session": {"missing": "random"},"#),
    );
    let config = native_specifier_config(&config);
    let by_header = "- match: {prefix: \"/by-header/\"}\n                route: {cluster_header: x-policy-cluster, timeout: 60s}\n              ";
    let routes = "routes:\n              ";
    assert!(config.contains(routes));
    let config = config.replacen(routes, &format!("{routes}{by_header}"), 1);
    // Before the module: `/rewrite/…` gets another path; `/pause/…` waits for a
    // call to a backend, while the worker routes other streams.
    let rewrite = r#"- name: envoy.filters.http.lua
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.lua.v3.Lua
              default_source_code:
                inline_string: |
                  function envoy_on_request(h)
                    local path = h:headers():get(":path")
                    if string.sub(path, 1, 9) == "/rewrite/" then
                      h:headers():replace(":path", "/rewritten" .. string.sub(path, 9))
                    elseif string.sub(path, 1, 7) == "/pause/" then
                      h:httpCall("agent_stable", {[":method"] = "GET", [":path"] = "/", [":authority"] = "pause"}, "", 5000)
                    end
                  end
          "#;
    let filters = "http_filters:\n          ";
    assert!(config.contains(filters));
    let config = config.replacen(filters, &format!("{filters}{rewrite}"), 1);
    let envoy = Envoy::start(&config, 1);
    let client = Client::new(envoy.port);
    let paths = ["/", "/rewrite/x", "/by-header/x", "/pause/x"];
    let mut on_canary = 0u64;
    for i in 0..400 {
        let session = format!("user-{i}");
        let path = paths[i % paths.len()];
        let reply = client.get(path, &[("x-session-id", &session)]);
        assert_eq!(reply.status, 200, "{path}");
        let expected = expected_canary(&session, SALT, 5000);
        assert_eq!(reply.backend, backend_for(expected), "{session} on {path}");
        let version = if expected { "v2.4.0" } else { "v2.3.1" };
        assert_eq!(reply.received["x-agent-policy"], version);
        on_canary += u64::from(expected);
    }
    // Sessionless requests, drawn at random, from 8 clients at once: streams
    // paused in `/pause/` find other streams' decisions in the hand-off slot.
    let port = envoy.port;
    let threads: Vec<_> = (0..8)
        .map(|t| {
            std::thread::spawn(move || {
                let client = Client::new(port);
                let mut canary = 0u64;
                for i in 0..50 {
                    let reply = client.get(paths[(t + i) % paths.len()], &[]);
                    assert_eq!(reply.status, 200);
                    let on_canary = reply.backend == "canary";
                    let version = if on_canary { "v2.4.0" } else { "v2.3.1" };
                    assert_eq!(reply.received["x-agent-policy"], version);
                    canary += u64::from(on_canary);
                }
                canary
            })
        })
        .collect();
    for thread in threads {
        on_canary += thread.join().unwrap();
    }
    wait_for(
        "every stream counted",
        std::time::Duration::from_secs(5),
        || {
            let counted = envoy.policy_stat(TARGET, "v2.3.1", "rq_total")
                + envoy.policy_stat(TARGET, "v2.4.0", "rq_total");
            (counted == 800).then_some(())
        },
    );
    assert_eq!(envoy.policy_stat(TARGET, "v2.4.0", "rq_total"), on_canary);
}
