//! Per-version stats inside a real Envoy: what Envoy reports equals what was sent.

use policy_canary_e2e::*;
use std::collections::HashMap;
use std::io::Write;
use std::net::TcpStream;
use std::time::Duration;

const BACKEND: &str = env!("CARGO_BIN_EXE_test-backend");
const SALT: &str = "rollout-2026-11-22";
const TARGET: &str = "support-agent";
const STABLE: &str = "v2.3.1";
const CANARY: &str = "v2.4.0";

const SUFFIXES: [&str; 20] = [
    "rq_total",
    "rq_forced",
    "rq_2xx",
    "rq_4xx",
    "rq_5xx",
    "rq_reset",
    "rq_no_response",
    "tasks_total",
    "tasks_completed",
    "tasks_failed",
    "tasks_abandoned",
    "tasks_escalated",
    "cost_micros",
    "tokens",
    "tool_calls",
    "tool_errors",
    "guardrail_triggers",
    "safety_violations",
    "telemetry_malformed",
    "sessionless_rq",
];

fn session_in(canary: bool) -> String {
    (0..)
        .map(|i| format!("stats-{i}"))
        .find(|s| expected_canary(s, SALT, 1000) == canary)
        .unwrap()
}

/// Expected counters of one version, built up as requests are sent.
#[derive(Default)]
struct Expected(HashMap<&'static str, u64>);

impl Expected {
    fn add(&mut self, suffix: &'static str, n: u64) {
        *self.0.entry(suffix).or_default() += n;
    }
}

fn assert_stats(envoy: &Envoy, version: &str, expected: &Expected) {
    assert_stats_of(envoy, TARGET, version, expected)
}

fn assert_stats_of(envoy: &Envoy, target: &str, version: &str, expected: &Expected) {
    let read = || -> HashMap<&'static str, u64> {
        SUFFIXES
            .iter()
            .map(|s| (*s, envoy.policy_stat(target, version, s)))
            .collect()
    };
    let want: HashMap<&'static str, u64> = SUFFIXES
        .iter()
        .map(|s| (*s, expected.0.get(s).copied().unwrap_or(0)))
        .collect();
    let total = want["rq_total"];
    // Counts reach Envoy on the filter's flush tick; wait for all of them.
    wait_for(
        &format!("{version} rq_total = {total}"),
        Duration::from_secs(5),
        || (envoy.policy_stat(target, version, "rq_total") >= total).then_some(()),
    );
    // One more tick so that nothing is still on its way, then compare exactly.
    std::thread::sleep(Duration::from_millis(600));
    let got = read();
    let mut diff: Vec<String> = SUFFIXES
        .iter()
        .filter(|s| got[*s] != want[*s])
        .map(|s| format!("{s}: got {}, want {}", got[s], want[s]))
        .collect();
    diff.sort();
    assert!(
        diff.is_empty(),
        "{version} stats differ:\n  {}",
        diff.join("\n  ")
    );
}

fn stats_equal_what_was_sent_per_version(build: Build) {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy = Envoy::start(
        &build.config(&shipped_config(
            "envoy-static.yaml",
            stable.port,
            canary.port,
        )),
        2,
    );
    let client = Client::new(envoy.port);
    let (s_session, c_session) = (session_in(false), session_in(true));
    let mut want_stable = Expected::default();
    let mut want_canary = Expected::default();

    // Telemetry in response headers, on the stable cohort.
    for i in 0..40u64 {
        let outcome = ["completed", "failed", "abandoned", "escalated"][(i % 4) as usize];
        let cost = (100 + i).to_string();
        let reply = client.get(
            "/",
            &[
                ("x-session-id", &s_session),
                ("x-reply-x-agent-outcome", outcome),
                ("x-reply-x-agent-cost-micros", &cost),
                ("x-reply-x-agent-tokens", "50"),
                ("x-reply-x-agent-tool-calls", "3"),
                ("x-reply-x-agent-tool-errors", "1"),
                ("x-reply-x-agent-guardrail-triggers", "2"),
                ("x-reply-x-agent-safety-violations", "0"),
            ],
        );
        assert_eq!(reply.backend, "stable");
        // Stripped from the client's response by default.
        let leaked: Vec<&String> = reply
            .headers
            .keys()
            .filter(|k| k.starts_with("x-agent-"))
            .collect();
        assert!(
            leaked.is_empty(),
            "telemetry leaked to the client: {leaked:?}"
        );
        want_stable.add("rq_total", 1);
        want_stable.add("rq_2xx", 1);
        want_stable.add("tasks_total", 1);
        want_stable.add(
            [
                "tasks_completed",
                "tasks_failed",
                "tasks_abandoned",
                "tasks_escalated",
            ][(i % 4) as usize],
            1,
        );
        want_stable.add("cost_micros", 100 + i);
        want_stable.add("tokens", 50);
        want_stable.add("tool_calls", 3);
        want_stable.add("tool_errors", 1);
        want_stable.add("guardrail_triggers", 2);
    }

    // Telemetry in trailers (a streamed answer), on the canary cohort; trailers win.
    for _ in 0..25 {
        let reply = client.get(
            "/",
            &[
                ("x-session-id", &c_session),
                ("x-reply-x-agent-tokens", "1"),
                ("x-trailer-x-agent-tokens", "70"),
                ("x-trailer-x-agent-outcome", "completed"),
                ("x-trailer-x-agent-cost-micros", "999"),
                ("x-trailer-x-agent-safety-violations", "1"),
                ("x-trailer-x-agent-tool-calls", "4"),
            ],
        );
        assert_eq!(reply.backend, "canary");
        want_canary.add("rq_total", 1);
        want_canary.add("rq_2xx", 1);
        want_canary.add("tasks_total", 1);
        want_canary.add("tasks_completed", 1);
        want_canary.add("cost_micros", 999);
        want_canary.add("tokens", 70);
        want_canary.add("tool_calls", 4);
        want_canary.add("safety_violations", 1);
    }

    // Status classes, from the backend and from Envoy itself.
    for (status, class) in [
        ("404", "rq_4xx"),
        ("429", "rq_4xx"),
        ("500", "rq_5xx"),
        ("503", "rq_5xx"),
        ("302", ""),
    ] {
        let reply = client.get(
            "/",
            &[("x-session-id", &c_session), ("x-test-status", status)],
        );
        assert_eq!(reply.status.to_string(), status);
        want_canary.add("rq_total", 1);
        if !class.is_empty() {
            want_canary.add(class, 1);
        }
    }

    // Upstream reset before any header: Envoy answers 503 for it, counted as 5xx and reset.
    for _ in 0..3 {
        let reply = client.get("/", &[("x-session-id", &s_session), ("x-test-reset", "1")]);
        assert_eq!(reply.status, 503);
        want_stable.add("rq_total", 1);
        want_stable.add("rq_5xx", 1);
        want_stable.add("rq_reset", 1);
    }

    // The client goes away before the answer: no response at all, counted as reset.
    for _ in 0..2 {
        let mut stream = TcpStream::connect(("127.0.0.1", envoy.port)).unwrap();
        write!(
            stream,
            "GET / HTTP/1.1\r\nhost: x\r\nx-session-id: {s_session}\r\nx-test-delay-ms: 1500\r\n\r\n"
        )
        .unwrap();
        std::thread::sleep(Duration::from_millis(150));
        drop(stream);
        want_stable.add("rq_total", 1);
        want_stable.add("rq_reset", 1);
        want_stable.add("rq_no_response", 1);
    }

    // Malformed telemetry is counted, never fails the response.
    for (header, value) in [
        ("x-reply-x-agent-outcome", "maybe"),
        ("x-reply-x-agent-cost-micros", "-3"),
        ("x-reply-x-agent-tokens", "12abc"),
        ("x-reply-x-agent-tool-calls", "99999999999999999999999"),
        ("x-reply-x-agent-safety-violations", "\u{00e9}"),
    ] {
        let reply = client.get("/", &[("x-session-id", &s_session), (header, value)]);
        assert_eq!(reply.status, 200);
        want_stable.add("rq_total", 1);
        want_stable.add("rq_2xx", 1);
        want_stable.add("telemetry_malformed", 1);
    }

    // Forced and sessionless requests: counted apart, under `<target>.forced` and
    // `<target>.sessionless`, out of the analysis' comparison.
    let mut want_forced = Expected::default();
    let mut want_sessionless = Expected::default();
    for _ in 0..4 {
        client.get("/", &[("x-canary", "true")]);
        want_forced.add("rq_total", 1);
        want_forced.add("rq_2xx", 1);
        want_forced.add("rq_forced", 1);
        want_forced.add("sessionless_rq", 1);
    }
    for _ in 0..6 {
        client.get("/", &[]);
        want_sessionless.add("rq_total", 1);
        want_sessionless.add("rq_2xx", 1);
        want_sessionless.add("sessionless_rq", 1);
    }

    assert_stats(&envoy, STABLE, &want_stable);
    assert_stats(&envoy, CANARY, &want_canary);
    assert_stats_of(&envoy, &format!("{TARGET}.forced"), CANARY, &want_forced);
    assert_stats_of(
        &envoy,
        &format!("{TARGET}.sessionless"),
        STABLE,
        &want_sessionless,
    );

    // The latency histogram exists per version with one sample per finished request.
    // Envoy merges histograms on its stats flush (every 5 s by default).
    let count_line = format!(
        "policy_canary_rq_latency_ms_count{{target=\"{TARGET}\",policy_version=\"{CANARY}\"}}"
    );
    let want_count = want_canary.0["rq_total"];
    let prometheus = wait_for("the latency histogram", Duration::from_secs(15), || {
        let text = envoy.prometheus();
        let count: Option<u64> = text
            .lines()
            .find_map(|l| l.strip_prefix(&count_line)?.trim().parse().ok());
        (count == Some(want_count)).then_some(text)
    });
    // Target and version are Prometheus labels.
    let total_line = format!(
        "policy_canary_rq_total{{target=\"{TARGET}\",policy_version=\"{STABLE}\"}} {}",
        want_stable.0["rq_total"]
    );
    assert!(
        prometheus.lines().any(|l| l == total_line),
        "no `{total_line}` in:\n{}",
        prometheus
            .lines()
            .filter(|l| l.starts_with("policy_canary_rq_total"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    // Session replicates: every compared request (under the target itself) counts
    // in one of 32 replicates,
    // `policy_canary_replicate{target,policy_version,replicate,counter}` (the
    // shipped `stats_tags`); those counted apart in none.
    for (version, want) in [(STABLE, &want_stable), (CANARY, &want_canary)] {
        let mut total = 0;
        for line in prometheus.lines() {
            let Some(rest) = line.strip_prefix("policy_canary_replicate{") else {
                continue;
            };
            let (labels, value) = rest.rsplit_once("} ").unwrap();
            let labels: HashMap<&str, &str> = labels
                .split(',')
                .filter_map(|kv| kv.split_once('='))
                .map(|(k, v)| (k, v.trim_matches('"')))
                .collect();
            if labels["target"] == TARGET
                && labels["policy_version"] == version
                && labels["counter"] == "rq_total"
            {
                let replicate: usize = labels["replicate"].parse().unwrap();
                assert!(replicate < 32, "{line}");
                total += value.parse::<u64>().unwrap();
            }
        }
        assert_eq!(total, want.0["rq_total"], "{version}");
    }
    assert_eq!(envoy.wasm_failures(), Vec::<String>::new());
}

fn telemetry_can_be_left_on_the_response(build: Build) {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let config = with_plugin_config(
        &shipped_config("envoy-static.yaml", stable.port, canary.port),
        r#"{"target": "support-agent", "telemetry": {"strip": false},
 "route": {"salt": "s", "stable": {"version": "v1", "cluster": "agent_stable"}}}"#,
    );
    let envoy = Envoy::start(&build.config(&config), 1);
    let reply = Client::new(envoy.port).get("/", &[("x-reply-x-agent-outcome", "completed")]);
    assert_eq!(
        reply.headers.get("x-agent-outcome").map(String::as_str),
        Some("completed")
    );
}

/// The filter keeps per-stream state in wasm memory and frees it when Envoy
/// deletes the stream's context: 32,000 streams must not grow Envoy (a leak of
/// even 100 bytes a stream would add 3 MiB).
fn streams_leave_no_memory_behind(build: Build) {
    let stable = Backend::start(BACKEND, "stable");
    let canary = Backend::start(BACKEND, "canary");
    let envoy = Envoy::start(
        &build.config(&shipped_config(
            "envoy-static.yaml",
            stable.port,
            canary.port,
        )),
        1,
    );
    let send = |per_thread: usize| {
        std::thread::scope(|scope| {
            for t in 0..4 {
                let client = Client::new(envoy.port);
                scope.spawn(move || {
                    for i in 0..per_thread {
                        let reply = client.session(&format!("mem-{t}-{i}"));
                        assert_eq!(reply.status, 200);
                    }
                });
            }
        });
    };
    send(1_000); // warm-up: connections, stats, the VM's first pages
    let before = envoy.rss_kib();
    send(8_000);
    let after = envoy.rss_kib();
    assert!(
        after < before + 2_048,
        "Envoy grew from {before} KiB to {after} KiB over 32,000 streams"
    );
}

every_build!(
    stats_equal_what_was_sent_per_version,
    telemetry_can_be_left_on_the_response,
    streams_leave_no_memory_behind,
);
