//! Instructions per request, counted by callgrind (Debian `valgrind`): exact and
//! repeatable (two runs agree within 0.3%), where the CPU-time tables of this VM
//! move by several µs per request between runs. Each variant is an Envoy (one
//! worker) run under `valgrind --tool=callgrind` with counting off; after a
//! warm-up, counting is switched on (`callgrind_control -i on`), a table's
//! answers are sent (plain ones, then streamed ones), and the count is dumped. Every thread of Envoy counts, in
//! user space only: the kernel's share of a request (sockets, epoll) is not in the
//! count, nor are the stalls of code that misses the caches or crosses into a
//! module, so a filter's ratio here is neither bound of its ratio in CPU time.
//! Plain answers come from a second listener of the same Envoy (its work is in
//! every row's count); streamed ones from a test backend outside it, whose work
//! is in none.
//! Valgrind's CPU has no SHA extensions, so sha256 runs the portable code here
//! (about 3,500 instructions a request) where this machine's CPU would use them.

use super::{
    config, h2load, native_filter, wasm_filter, with_upstream, CONNECTIONS, PLUGIN, REQUESTS,
    STREAMED_HEADERS,
};
use policy_canary_e2e::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

/// How one table's requests are answered, and how many are counted (after
/// `warm_up` uncounted ones).
struct Load {
    answer: &'static str,
    requests: u32,
    warm_up: u32,
    headers: Vec<&'static str>,
}

/// One variant: its HTTP filter (YAML), its route, and whether it is counted on
/// streamed answers too (each costs as much as a plain one; the rows that
/// matter for the native module are).
struct Row {
    name: &'static str,
    filter: Option<String>,
    route: String,
    streamed: bool,
}

/// Envoy's own filter stripping the telemetry headers: what the removals cost
/// without a module.
const HEADER_MUTATION: &str = r#"          - name: envoy.filters.http.header_mutation
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
              mutations:
                response_mutations:
                - remove: x-agent-outcome
                - remove: x-agent-cost-micros
                - remove: x-agent-tokens
                - remove: x-agent-tool-calls
                - remove: x-agent-tool-errors
                - remove: x-agent-guardrail-triggers
                - remove: x-agent-safety-violations
"#;

/// Where a variant's instructions went: its module's hooks (inclusive), per request.
struct Count {
    name: &'static str,
    per_request: f64,
    hooks: Vec<(String, f64)>,
}

pub fn run() {
    let valgrind = Command::new("valgrind").arg("--version").output();
    assert!(
        valgrind.is_ok_and(|o| o.status.success()),
        "valgrind (Debian valgrind) is installed by `make bench`"
    );
    let plugin = PLUGIN;
    let direct = "{cluster: agent_stable}".to_string();
    let by_header = "{cluster_header: x-policy-cluster}".to_string();
    let floor_specifier = format!(
        "{{{}}}",
        specifier_route("policy_canary_empty", "floor", None)
    );
    let specifier = format!("{{{}}}", native_specifier_route("bench"));
    let wasm = wasm_path().to_string_lossy().into_owned();
    let strip_off = plugin.replace(
        r#""served_by": "decision", "#,
        r#""served_by": "decision", "telemetry": {"strip": false}, "#,
    );
    let row = |name, filter: Option<String>, route: &String, streamed| Row {
        name,
        filter,
        route: route.clone(),
        streamed,
    };
    let mut variants = vec![
        row("no filter", None, &direct, true),
        row(
            "empty native module",
            Some(native_filter("policy_canary_empty", "")),
            &direct,
            true,
        ),
        row(
            "native cluster specifier floor (picks the cluster as Envoy picks the route)",
            Some(native_filter("policy_canary_empty", "")),
            &floor_specifier,
            true,
        ),
        row(
            "native required edits (the specifier floor + the version header added + seven telemetry headers removed)",
            Some(native_filter("policy_canary_empty", "required edits")),
            &floor_specifier,
            true,
        ),
        row(
            "Envoy's header_mutation filter removing the seven telemetry headers (no module)",
            Some(HEADER_MUTATION.to_string()),
            &direct,
            false,
        ),
        row(
            "native routing floor (sets the cluster header, clears the route cache)",
            Some(native_filter("policy_canary_empty", "routing floor")),
            &by_header,
            false,
        ),
        row(
            "policy-canary, native module",
            Some(native_filter("policy_canary", plugin)),
            &by_header,
            true,
        ),
        row(
            "policy-canary, native module, cluster specifier",
            Some(native_filter("policy_canary", plugin)),
            &specifier,
            true,
        ),
        row(
            "policy-canary, native module, cluster specifier, telemetry left on the answer (telemetry.strip: false)",
            Some(native_filter("policy_canary", &strip_off)),
            &specifier,
            false,
        ),
        row(
            "policy-canary",
            Some(wasm_filter(&wasm, plugin)),
            &by_header,
            true,
        ),
    ];
    if let Ok(keep) = std::env::var("BENCH_VARIANTS") {
        let keep: Vec<&str> = keep.split(';').map(str::trim).collect();
        variants.retain(|row| row.name == "no filter" || keep.contains(&row.name));
    }
    // BENCH_CALLGRIND_DIR keeps the dumps there (for `callgrind_annotate`).
    let temp = TempDir::new("callgrind");
    let dir = std::env::var_os("BENCH_CALLGRIND_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| temp.path().to_path_buf());
    std::fs::create_dir_all(&dir).expect("BENCH_CALLGRIND_DIR can be created");
    let plain = Load {
        answer: "plain answers",
        requests: REQUESTS,
        warm_up: REQUESTS / 5,
        headers: vec!["x-session-id: bench-session-42"],
    };
    table(&plain, &variants, None, &dir.join("plain"));
    // A streamed answer passes through the filter's body hooks 200 times.
    let backend = Backend::start(
        &profile_dir().join("test-backend").to_string_lossy(),
        "streamer",
    );
    let mut headers = vec!["x-session-id: bench-session-42"];
    headers.extend_from_slice(STREAMED_HEADERS);
    let streamed = Load {
        answer:
            "streamed answers (200 chunks, telemetry in trailers, from a test backend over h2c)",
        requests: REQUESTS / 4,
        warm_up: REQUESTS / 20,
        headers,
    };
    variants.retain(|row| row.streamed);
    table(
        &streamed,
        &variants,
        Some(backend.port),
        &dir.join("streamed"),
    );
}

/// Counts `variants` under `load` and prints their table; `upstream`: the port of
/// the backend that answers instead of Envoy's own listener.
fn table(load: &Load, variants: &[Row], upstream: Option<u16>, out: &Path) {
    println!();
    println!(
        "Instructions per request (callgrind, user space, every Envoy thread), {}: 1 worker, {CONNECTIONS} HTTP/1.1 connections, {} requests counted after {}",
        load.answer, load.requests, load.warm_up
    );
    let counts: Vec<Count> = variants
        .iter()
        .enumerate()
        .map(|(i, row)| {
            let text = config(row.filter.as_deref(), &row.route, free_port());
            let text = match upstream {
                Some(port) => with_upstream(&text, port),
                None => text,
            };
            count(row.name, &text, load, &out.with_extension(i.to_string()))
        })
        .collect();
    let base = counts[0].per_request;
    println!();
    println!("| variant | instructions/rq | × no filter | over no filter |");
    println!("|---|---:|---:|---:|");
    for count in &counts {
        println!(
            "| {} | {:.0} | {:.3} | {:+.0} |",
            count.name,
            count.per_request,
            count.per_request / base,
            count.per_request - base
        );
    }
    for count in counts
        .iter()
        .filter(|c| c.name.starts_with("policy-canary, native"))
    {
        println!();
        println!(
            "{}: its hooks, with what Envoy does in their callbacks (inclusive instructions/rq)",
            count.name
        );
        println!();
        println!("| hook | instructions/rq |");
        println!("|---|---:|");
        for (hook, per_request) in &count.hooks {
            println!("| {hook} | {per_request:.0} |");
        }
    }
}

/// Counts one variant's instructions per request; callgrind writes to `out.<pid>…`.
fn count(name: &'static str, config: &str, load: &Load, out: &Path) -> Count {
    let out_pattern = format!("--callgrind-out-file={}.%p", out.display());
    let envoy = Envoy::start_under(
        &[
            "valgrind",
            "--tool=callgrind",
            "--instr-atstart=no",
            &out_pattern,
        ],
        config,
        1,
    );
    let pid = envoy.pid().to_string();
    h2load(&envoy, load.warm_up, &load.headers, false);
    callgrind_control(&["-i", "on", &pid]);
    callgrind_control(&["-z", &pid]);
    h2load(&envoy, load.requests, &load.headers, false);
    callgrind_control(&["-d", &pid]);
    let dump = PathBuf::from(format!("{}.{pid}.1", out.display()));
    let total = wait_for("callgrind's dump", Duration::from_secs(60), || {
        let text = std::fs::read_to_string(&dump).ok()?;
        text.lines()
            .find_map(|line| line.strip_prefix("summary: "))
            .and_then(|n| n.trim().parse::<f64>().ok())
    });
    drop(envoy);
    let per_request = total / f64::from(load.requests);
    println!("  {name}: {per_request:.0}");
    Count {
        name,
        per_request,
        hooks: hooks(&dump, load.requests),
    }
}

/// The module's exported hooks in `dump`, inclusive instructions per request.
fn hooks(dump: &Path, requests: u32) -> Vec<(String, f64)> {
    let out = Command::new("callgrind_annotate")
        .args(["--inclusive=yes", "--threshold=100"])
        .arg(dump)
        .output()
        .expect("callgrind_annotate (Debian valgrind)");
    let text = String::from_utf8_lossy(&out.stdout);
    text.lines()
        .filter_map(|line| {
            let (count, rest) = line.trim().split_once(' ')?;
            let count: f64 = count.replace(',', "").parse().ok()?;
            let function = rest.split("???:").nth(1)?.split(' ').next()?;
            let hook = function.strip_prefix("envoy_dynamic_module_on_")?;
            rest.contains("libpolicy_canary.so")
                .then(|| (hook.to_string(), count / f64::from(requests)))
        })
        .filter(|(_, per_request)| *per_request >= 50.0)
        .collect()
}

fn callgrind_control(args: &[&str]) {
    let status = Command::new("callgrind_control")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("callgrind_control (Debian valgrind)");
    assert!(status.success(), "callgrind_control {args:?}");
}
