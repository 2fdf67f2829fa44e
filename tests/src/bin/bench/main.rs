//! `make bench`: Envoy CPU per request with no filter, an empty proxy-wasm filter and
//! policy-canary, measured side by side in one run.
//!
//! Each variant is its own Envoy (one worker) whose listener proxies to a second
//! listener in the same process answering directly with agent telemetry headers.
//! `h2load` sends a fixed number of HTTP/1.1 requests; the Envoy process's CPU time
//! (utime + stime from /proc) over those requests, divided by their number, is the
//! cost per request. Variants are interleaved round by round and medians reported.

mod fanout;
mod instructions;
mod profile;

use policy_canary_e2e::*;
use std::process::Command;

/// Requests per variant and round: short batches, many rounds, so that each round
/// measures every variant within a few seconds (this machine's speed drifts).
const REQUESTS: u32 = 5_000;
/// Rounds per variant (BENCH_ROUNDS overrides it for a quick look).
const ROUNDS: usize = 41;

fn rounds() -> usize {
    std::env::var("BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS)
}
const CONNECTIONS: u32 = 16;

struct Variant {
    name: &'static str,
    envoy: Envoy,
    samples: Vec<f64>,
}

/// The Envoy config of one variant; `filter` is the HTTP filter YAML, if any.
fn config(filter: Option<&str>, route: &str, upstream_port: u16) -> String {
    let filters = filter.unwrap_or("");
    format!(
        r#"
admin:
  address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
static_resources:
  listeners:
  - name: front
    address: {{socket_address: {{address: 127.0.0.1, port_value: 0}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: front
          route_config:
            virtual_hosts:
            - name: front
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                route: {route}
          http_filters:
{filters}
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  - name: upstream
    address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: upstream
          route_config:
            virtual_hosts:
            - name: upstream
              domains: ["*"]
              routes:
              - match: {{prefix: "/"}}
                direct_response: {{status: 200, body: {{inline_string: "ok"}}}}
                response_headers_to_add:
                - header: {{key: x-agent-outcome, value: completed}}
                - header: {{key: x-agent-cost-micros, value: "1250"}}
                - header: {{key: x-agent-tokens, value: "812"}}
                - header: {{key: x-agent-tool-calls, value: "3"}}
                - header: {{key: x-agent-tool-errors, value: "0"}}
                - header: {{key: x-agent-guardrail-triggers, value: "0"}}
                - header: {{key: x-agent-safety-violations, value: "0"}}
          http_filters:
          - name: envoy.filters.http.router
            typed_config: {{"@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router}}
  clusters:
  - name: agent_stable
    connect_timeout: 1s
    load_assignment:
      cluster_name: agent_stable
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}}}]}}]
  - name: agent_canary
    connect_timeout: 1s
    load_assignment:
      cluster_name: agent_canary
      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: {upstream_port}}}}}}}}}]}}]
"#
    )
}

fn wasm_filter(path: &str, configuration: &str) -> String {
    format!(
        r#"          - name: wasm
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm
              config:
                root_id: bench
                vm_config:
                  runtime: envoy.wasm.runtime.v8
                  code: {{local: {{filename: {path}}}}}
                configuration:
                  "@type": type.googleapis.com/google.protobuf.StringValue
                  value: '{configuration}'
"#
    )
}

/// A native module (`target/lib<module>.so`, `make bench` puts both there):
/// policy-canary's with the same plugin JSON, or the empty floor.
fn native_filter(module: &str, configuration: &str) -> String {
    format!(
        r#"          - name: policy_canary
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {{name: {module}, metrics_namespace: wasmcustom}}
              filter_name: policy_canary
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: '{configuration}'
"#
    )
}

/// The `label=path` pairs of a comma-separated environment variable.
fn extra_builds(var: &str) -> Vec<(&'static str, String)> {
    std::env::var(var)
        .unwrap_or_default()
        .split(',')
        .filter_map(|extra| extra.split_once('='))
        .map(|(label, path)| {
            let label: &'static str = Box::leak(label.to_string().into_boxed_str());
            (label, path.to_string())
        })
        .collect()
}

/// CPU time of every thread of process `pid` so far, in ns (the scheduler's own
/// account, `/proc/PID/task/*/schedstat`: user and system, no tick rounding, so a
/// short batch measures as exactly as a long one).
fn cpu_ns(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .filter_map(|task| {
            let stat = std::fs::read_to_string(task.ok()?.path().join("schedstat")).ok()?;
            stat.split(' ').next()?.parse::<u64>().ok()
        })
        .sum()
}

/// Sends `requests` through Envoy with h2load (with `headers`); returns the CPU µs
/// per request.
fn measure(envoy: &Envoy, requests: u32, headers: &[&str]) -> f64 {
    let before = cpu_ns(envoy.pid());
    h2load(envoy, requests, headers, true);
    let after = cpu_ns(envoy.pid());
    assert!(
        after > before,
        "no CPU time read from /proc/{}/task/*/schedstat (a kernel without scheduler stats?)",
        envoy.pid()
    );
    (after - before) as f64 / 1e3 / f64::from(requests)
}

/// Sends `requests` HTTP/1.1 requests with `headers` through `envoy` over
/// `CONNECTIONS` connections with h2load (on core 0 when `pinned`); all must
/// succeed.
fn h2load(envoy: &Envoy, requests: u32, headers: &[&str], pinned: bool) {
    let started = std::time::Instant::now();
    let mut h2load = Command::new(if pinned { "taskset" } else { "h2load" });
    if pinned {
        h2load.args(["-c", "0", "h2load"]);
    }
    h2load
        .args(["--h1", "-t", "1", "-c", &CONNECTIONS.to_string()])
        .args(["-n", &requests.to_string()]);
    for header in headers {
        h2load.args(["-H", header]);
    }
    let out = h2load
        .arg(format!("http://127.0.0.1:{}/chat", envoy.port))
        .output()
        .expect("h2load (Debian nghttp2-client) is installed by `make bench`");
    let text = String::from_utf8_lossy(&out.stdout);
    let ok = text.lines().find_map(|l| {
        l.trim()
            .strip_prefix("status codes: ")?
            .split(' ')
            .next()?
            .parse::<u32>()
            .ok()
    });
    assert_eq!(
        ok,
        Some(requests),
        "not every request succeeded in {:?}:\n{text}",
        started.elapsed()
    );
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn min(values: &[f64]) -> f64 {
    values.iter().copied().fold(f64::MAX, f64::min)
}

fn main() {
    // BENCH_ONLY=cpu (plain and streamed), plain, streamed, instructions, profile,
    // propagation or fanout runs one part of `make bench`.
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if only.is_empty() || only == "cpu" || only == "plain" {
        cpu(Answer::Plain);
    }
    if only.is_empty() || only == "streamed" || only == "cpu" {
        cpu(Answer::Streamed);
    }
    if only.is_empty() || only == "instructions" {
        instructions::run();
    }
    if only.is_empty() || only == "profile" {
        profile::run();
    }
    if only.is_empty() || only == "propagation" {
        propagation();
    }
    if only.is_empty() || only == "fanout" {
        fanout::run();
    }
}

/// How the upstream answers.
#[derive(Clone, Copy, PartialEq)]
enum Answer {
    /// At once, telemetry in seven response headers (a second listener of the same
    /// Envoy answers directly).
    Plain,
    /// A chunked body of `STREAMED_CHUNKS` server-sent events, telemetry in
    /// trailers (a test backend over h2c, as agents stream their tokens).
    Streamed,
}

/// policy-canary's configuration in the benchmark.
const PLUGIN: &str = r#"{"target": "bench", "served_by": "decision", "route": {"salt": "s", "canary_weight_bp": 1000, "stable": {"version": "v1", "cluster": "agent_stable"}, "canary": {"version": "v2", "cluster": "agent_canary"}}}"#;

/// Chunks of a streamed answer.
const STREAMED_CHUNKS: u32 = 200;

/// The request headers that make the test backend stream (`Answer::Streamed`).
const STREAMED_HEADERS: &[&str] = &[
    "x-test-chunks: 200",
    "x-trailer-x-agent-outcome: completed",
    "x-trailer-x-agent-cost-micros: 1250",
    "x-trailer-x-agent-tokens: 812",
    "x-trailer-x-agent-tool-calls: 3",
    "x-trailer-x-agent-tool-errors: 0",
    "x-trailer-x-agent-guardrail-triggers: 0",
    "x-trailer-x-agent-safety-violations: 0",
];

fn cpu(answer: Answer) {
    let root = repo_root();
    let filter_wasm = wasm_path();
    let baseline_wasm = root.join("target/wasm32-wasip1/wasm/empty_filter.wasm");
    assert!(baseline_wasm.exists(), "build it with `make bench`");
    let baseline_wasm = baseline_wasm.to_string_lossy().into_owned();
    let direct_floor_wasm = root
        .join("target/wasm32-wasip1/wasm/floor_direct.wasm")
        .to_string_lossy()
        .into_owned();
    // As the shipped controller-mode config: the route follows the filter's cluster
    // header, so streams count for the filter's decision (`served_by`).
    let plugin = PLUGIN;
    let direct = "{cluster: agent_stable}";
    let by_header = "{cluster_header: x-policy-cluster}";
    // A streamed answer comes from a test backend; a plain one from the Envoy itself.
    let backend = (answer == Answer::Streamed).then(|| {
        let binary = profile_dir().join("test-backend");
        Backend::start(&binary.to_string_lossy(), "streamer")
    });
    let (requests, headers): (u32, Vec<&str>) = match answer {
        Answer::Plain => (REQUESTS, vec!["x-session-id: bench-session-42"]),
        Answer::Streamed => {
            let mut headers = vec!["x-session-id: bench-session-42"];
            headers.extend_from_slice(STREAMED_HEADERS);
            (REQUESTS / 4, headers)
        }
    };
    let make = |filter: Option<String>, route: &str| {
        let text = config(filter.as_deref(), route, free_port());
        let text = match &backend {
            Some(backend) => with_upstream(&text, backend.port),
            None => text,
        };
        Envoy::start(&text, 1)
    };
    let mut variants = vec![
        Variant {
            name: "no filter",
            envoy: make(None, direct),
            samples: vec![],
        },
        Variant {
            name: "empty wasm filter",
            envoy: make(Some(wasm_filter(&baseline_wasm, "")), direct),
            samples: vec![],
        },
        Variant {
            name: "floor (unavoidable host calls)",
            envoy: make(Some(wasm_filter(&baseline_wasm, "floor")), by_header),
            samples: vec![],
        },
        Variant {
            name: "floor, own exports (no body callbacks, as policy-canary)",
            envoy: make(Some(wasm_filter(&direct_floor_wasm, "")), by_header),
            samples: vec![],
        },
        Variant {
            name: "policy-canary",
            envoy: make(
                Some(wasm_filter(&filter_wasm.to_string_lossy(), plugin)),
                by_header,
            ),
            samples: vec![],
        },
        Variant {
            name: "empty native module",
            envoy: make(Some(native_filter("policy_canary_empty", "")), direct),
            samples: vec![],
        },
        Variant {
            name: "native routing floor (sets the cluster header, clears the route cache)",
            envoy: make(
                Some(native_filter("policy_canary_empty", "routing floor")),
                by_header,
            ),
            samples: vec![],
        },
        Variant {
            name: "native cluster specifier floor (picks the cluster as Envoy picks the route)",
            envoy: make(
                Some(native_filter("policy_canary_empty", "")),
                &format!(
                    "{{{}}}",
                    specifier_route("policy_canary_empty", "floor", None)
                ),
            ),
            samples: vec![],
        },
        Variant {
            name: "policy-canary, native module",
            envoy: make(Some(native_filter("policy_canary", plugin)), by_header),
            samples: vec![],
        },
        Variant {
            name: "policy-canary, native module, cluster specifier",
            envoy: make(
                Some(native_filter("policy_canary", plugin)),
                &format!("{{{}}}", native_specifier_route("bench")),
            ),
            samples: vec![],
        },
        Variant {
            name: "policy-canary, no session replicates",
            envoy: make(
                Some(wasm_filter(
                    &filter_wasm.to_string_lossy(),
                    &plugin.replace(
                        r#""served_by": "decision", "#,
                        r#""served_by": "decision", "session_replicates": false, "#,
                    ),
                )),
                by_header,
            ),
            samples: vec![],
        },
        Variant {
            name: "policy-canary, served_by cluster (runtime mode)",
            envoy: make(
                Some(wasm_filter(
                    &filter_wasm.to_string_lossy(),
                    &plugin.replace(r#""served_by": "decision", "#, ""),
                )),
                by_header,
            ),
            samples: vec![],
        },
    ];
    // BENCH_VARIANTS="empty native module;policy-canary, native module" keeps those
    // (and "no filter", the base of the ratios, and the extra builds below).
    if let Ok(keep) = std::env::var("BENCH_VARIANTS") {
        let keep: Vec<&str> = keep.split(';').map(str::trim).collect();
        variants.retain(|v| v.name == "no filter" || keep.contains(&v.name));
    }
    // Extra builds to compare side by side (before/after an optimisation):
    // BENCH_EXTRA_WASM="label=path.wasm,label2=path2.wasm".
    for (name, path) in extra_builds("BENCH_EXTRA_WASM") {
        variants.push(Variant {
            name,
            envoy: make(Some(wasm_filter(&path, plugin)), by_header),
            samples: vec![],
        });
    }
    // BENCH_EXTRA_NATIVE="label=path.so": each copied under its own name into
    // target/ (Envoy finds modules by name there).
    for (name, path) in extra_builds("BENCH_EXTRA_NATIVE") {
        let module = format!("policy_canary_extra{}", variants.len());
        std::fs::copy(&path, root.join(format!("target/lib{module}.so")))
            .unwrap_or_else(|e| panic!("BENCH_EXTRA_NATIVE {path}: {e}"));
        variants.push(Variant {
            name,
            envoy: make(Some(native_filter(&module, plugin)), by_header),
            samples: vec![],
        });
    }
    // Envoy (all threads) on core 1, the load generator on core 0.
    for variant in &variants {
        let status = Command::new("taskset")
            .args(["-a", "-p", "-c", "1", &variant.envoy.pid().to_string()])
            .stdout(std::process::Stdio::null())
            .status()
            .expect("taskset (util-linux)");
        assert!(status.success(), "taskset failed");
    }
    println!();
    match answer {
        Answer::Plain => println!(
            "Envoy CPU per request, plain answers (telemetry in 7 response headers): 1 worker pinned to core 1, h2load on core 0, {CONNECTIONS} HTTP/1.1 connections, {requests} requests x {} rounds, interleaved",
            rounds()
        ),
        Answer::Streamed => println!(
            "Envoy CPU per request, streamed answers ({STREAMED_CHUNKS} SSE chunks over h2c from a test backend, telemetry in 7 trailers): 1 worker pinned to core 1, h2load on core 0, {CONNECTIONS} HTTP/1.1 connections, {requests} requests x {} rounds, interleaved",
            rounds()
        ),
    }
    for variant in &variants {
        measure(&variant.envoy, requests / 4, &headers); // warm-up
    }
    let rounds = rounds();
    for _ in 0..rounds {
        for variant in &mut variants {
            let sample = measure(&variant.envoy, requests, &headers);
            variant.samples.push(sample);
        }
    }
    print_table(&variants);
    if answer == Answer::Plain {
        let size = std::fs::metadata(&filter_wasm).unwrap().len();
        let baseline_size = std::fs::metadata(&baseline_wasm).unwrap().len();
        println!();
        println!("| module | bytes | KiB |");
        println!("|---|---:|---:|");
        println!(
            "| policy_canary.wasm | {size} | {:.1} |",
            size as f64 / 1024.0
        );
        println!(
            "| empty / floor filter | {baseline_size} | {:.1} |",
            baseline_size as f64 / 1024.0
        );
    }
}

/// Medians and minimums over the rounds; each overhead over no filter is also
/// given as a multiple of the floor's, and (medians) of the floor's built with its
/// own exports as policy-canary is. "paired" takes each round's overhead (the
/// variant minus no filter in that round) before the median, so that a slow round
/// moves both sides of the difference; "× no filter (paired)" likewise takes each
/// round's own ratio.
fn print_table(variants: &[Variant]) {
    let floor = variants
        .iter()
        .position(|v| v.name.starts_with("floor ("))
        .unwrap_or(1);
    let direct = variants
        .iter()
        .position(|v| v.name.starts_with("floor, own exports"))
        .unwrap_or(floor);
    let base = median(&variants[0].samples);
    let base_min = min(&variants[0].samples);
    let floor_overhead = median(&variants[floor].samples) - base;
    let floor_overhead_min = min(&variants[floor].samples) - base_min;
    let direct_overhead = median(&variants[direct].samples) - base;
    let paired = |variant: &Variant| {
        let overheads: Vec<f64> = variant
            .samples
            .iter()
            .zip(&variants[0].samples)
            .map(|(v, none)| v - none)
            .collect();
        median(&overheads)
    };
    let floor_paired = paired(&variants[floor]);
    let paired_ratio = |variant: &Variant| {
        let ratios: Vec<f64> = variant
            .samples
            .iter()
            .zip(&variants[0].samples)
            .map(|(v, none)| v / none)
            .collect();
        median(&ratios)
    };
    println!();
    println!("| variant | median µs/rq | × no filter | overhead ÷ floor's | min µs/rq | × no filter (min) | overhead ÷ floor's (min) | overhead ÷ floor's (paired) | overhead ÷ own-exports floor's | × no filter (paired) |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for variant in variants {
        let m = median(&variant.samples);
        let lo = min(&variant.samples);
        let ratio = |overhead: f64, floor: f64| {
            if variant.name == "no filter" || floor <= 0.0 {
                "—".to_string()
            } else {
                format!("{:.2}", overhead / floor)
            }
        };
        println!(
            "| {} | {m:.1} | {:.3} | {} | {lo:.1} | {:.3} | {} | {} | {} | {:.3} |",
            variant.name,
            m / base,
            ratio(m - base, floor_overhead),
            lo / base_min,
            ratio(lo - base_min, floor_overhead_min),
            ratio(paired(variant), floor_paired),
            ratio(m - base, direct_overhead),
            paired_ratio(variant),
        );
    }
}

/// `config` with both agent clusters on the test backend at `port`, over h2c.
fn with_upstream(config: &str, port: u16) -> String {
    let mut text = config.to_string();
    for cluster in ["agent_stable", "agent_canary"] {
        let old = format!("  - name: {cluster}\n    connect_timeout: 1s\n");
        let new = format!(
            "  - name: {cluster}\n    connect_timeout: 1s\n    typed_extension_protocol_options:\n      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:\n        \"@type\": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions\n        explicit_http_config: {{http2_protocol_options: {{}}}}\n"
        );
        assert!(text.contains(&old), "{cluster} in the config");
        text = text.replace(&old, &new);
        let endpoint = format!("cluster_name: {cluster}\n      endpoints: [{{lb_endpoints: [{{endpoint: {{address: {{socket_address: {{address: 127.0.0.1, port_value: ");
        let at = text.find(&endpoint).expect("the cluster's endpoint") + endpoint.len();
        let end = at + text[at..].find('}').expect("the port's end");
        text.replace_range(at..end, &port.to_string());
    }
    text
}

/// Changes the propagation benchmark makes (each one flips a probe's backend).
const CHANGES: usize = 100;

/// From a change acknowledged by the controller's API to the first request that
/// Envoy (2 workers) routes by the new table, over `CHANGES` changes, for the
/// singleton sync service and for filter-side sync side by side.
fn propagation() {
    let runs = [
        (
            "singleton sync service (envoy.yaml)",
            propagation_with(controller_mode_config),
        ),
        (
            "filter-side sync, lease (envoy-filter-sync.yaml)",
            propagation_with(|stable, canary, controller| {
                filter_sync_config(stable, canary, controller, "bench-envoy")
            }),
        ),
    ];
    println!();
    println!("Propagation: API acknowledgement -> first request routed by the new table (Envoy 2 workers, {CHANGES} changes)");
    println!();
    println!("| sync | p50 ms | p90 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, mut latencies) in runs {
        latencies.sort_by(f64::total_cmp);
        let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
        println!(
            "| {name} | {:.1} | {:.1} | {:.1} | {:.1} |",
            at(0.5),
            at(0.9),
            at(0.99),
            latencies[latencies.len() - 1]
        );
    }
}

/// Propagation latencies (ms) of `CHANGES` changes through Envoy started with `config`.
fn propagation_with(config: impl Fn(u16, u16, &Controller) -> String) -> Vec<f64> {
    let backend = profile_dir().join("test-backend");
    let backend = backend.to_string_lossy();
    let controller = Controller::start(&[]).with_policies(&["v2.3.1", "v2.4.0"]);
    let stable = Backend::start(&backend, "stable");
    let canary = Backend::start(&backend, "canary");
    let envoy = Envoy::start(&config(stable.port, canary.port, &controller), 2);
    let client = Client::new(envoy.port);
    // The probe is in a 100% segment: on the canary while a rollout runs, on stable after it.
    let plan = "target: support-agent\nstable: {version: v2.3.1, cluster: agent_stable}\ncanary: {version: v2.4.0, cluster: agent_canary}\nstages: [{weight: 1%, min_duration: 1h}, {weight: 100%}]\nsegments: [{header: x-probe, value: \"1\", weight: 100%}]\n";
    let probe = || {
        client
            .get("/chat", &[("x-session-id", "probe"), ("x-probe", "1")])
            .backend
    };
    let mut latencies = Vec::new();
    let mut rollout = 0;
    let mut seed: u64 = 0x2545_f491_4f6c_dd1d;
    for change in 0..CHANGES {
        // A change observed right after a worker's tick would otherwise be followed
        // by the next change at the same phase of the tick: spread them out.
        seed = seed
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        std::thread::sleep(std::time::Duration::from_millis((seed >> 33) % 97));
        let expected = if change % 2 == 0 {
            let started = controller.post_ok("/v1/rollouts", plan);
            rollout = started["id"].as_i64().unwrap();
            "canary"
        } else {
            controller.post_ok(&format!("/v1/rollouts/{rollout}/rollback"), "");
            "stable"
        };
        let acknowledged = std::time::Instant::now();
        let deadline = acknowledged + std::time::Duration::from_secs(5);
        loop {
            if probe() == expected {
                latencies.push(acknowledged.elapsed().as_secs_f64() * 1000.0);
                break;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "change {change} did not reach Envoy in 5 s"
            );
        }
    }
    latencies
}
