//! Where the filter's extra microseconds go, two ways, on plain answers:
//! - by ablation: floor filters that each add one of the unavoidable steps (read
//!   the session header, sha256, write two headers, read the response headers),
//!   then one by one the host calls policy-canary makes beyond the floor (the
//!   whole request map, the bucket header, two clock reads, seven telemetry
//!   removals, the latency histogram), measured side by side with the empty filter
//!   and policy-canary, so that each step's cost is a difference of medians and
//!   policy-canary's last step is its own wasm code;
//! - by `perf record` on the Envoy process (Debian `linux-perf`), split by where the
//!   samples fall: the wasm code V8 compiled (no symbols: anonymous executable
//!   memory), Envoy itself with V8's runtime (the PyPI binary is stripped, so no
//!   finer), libc, and the kernel.

use super::{config, measure, median, wasm_filter, Variant, CONNECTIONS, REQUESTS};
use policy_canary_e2e::*;
use std::process::{Command, Stdio};

pub fn run() {
    let root = repo_root();
    let baseline = root
        .join("target/wasm32-wasip1/wasm/empty_filter.wasm")
        .to_string_lossy()
        .into_owned();
    let filter = wasm_path().to_string_lossy().into_owned();
    let plugin = super::PLUGIN;
    let direct = "{cluster: agent_stable}";
    let by_header = "{cluster_header: x-policy-cluster}";
    let start = |filter: Option<String>, route: &str| {
        Envoy::start(&config(filter.as_deref(), route, free_port()), 1)
    };
    let direct_floor = root
        .join("target/wasm32-wasip1/wasm/floor_direct.wasm")
        .to_string_lossy()
        .into_owned();
    let steps: [(&'static str, Option<String>, &str); 13] = [
        ("no filter", None, direct),
        (
            "empty wasm filter",
            Some(wasm_filter(&baseline, "")),
            direct,
        ),
        (
            "+ read the session header",
            Some(wasm_filter(&baseline, "read")),
            direct,
        ),
        (
            "+ sha256",
            Some(wasm_filter(&baseline, "read,hash")),
            direct,
        ),
        (
            "+ write cluster and version headers",
            Some(wasm_filter(&baseline, "read,hash,write")),
            by_header,
        ),
        (
            "+ read the response headers (= floor)",
            Some(wasm_filter(&baseline, "floor")),
            by_header,
        ),
        (
            "+ the whole request map instead of one header",
            Some(wasm_filter(&baseline, "floor,map")),
            by_header,
        ),
        (
            "+ write the bucket header",
            Some(wasm_filter(&baseline, "floor,map,bucket")),
            by_header,
        ),
        (
            "+ two clock reads",
            Some(wasm_filter(&baseline, "floor,map,bucket,clock")),
            by_header,
        ),
        (
            "+ remove seven telemetry headers",
            Some(wasm_filter(&baseline, "floor,map,bucket,clock,strip")),
            by_header,
        ),
        (
            "+ record the latency histogram (= policy-canary's host calls)",
            Some(wasm_filter(&baseline, "calls")),
            by_header,
        ),
        (
            "policy-canary",
            Some(wasm_filter(&filter, plugin)),
            by_header,
        ),
        (
            "the floor with its own exports (no body callbacks), over the floor",
            Some(wasm_filter(&direct_floor, "")),
            by_header,
        ),
    ];
    let mut variants: Vec<Variant> = steps
        .into_iter()
        .map(|(name, filter, route)| Variant {
            name,
            envoy: start(filter, route),
            samples: vec![],
        })
        .collect();
    for variant in &variants {
        pin(variant.envoy.pid());
    }
    let headers = ["x-session-id: bench-session-42"];
    let rounds = super::rounds();
    for variant in &variants {
        measure(&variant.envoy, REQUESTS / 4, &headers);
    }
    for _ in 0..rounds {
        for variant in &mut variants {
            let sample = measure(&variant.envoy, REQUESTS, &headers);
            variant.samples.push(sample);
        }
    }
    println!();
    println!("Where the microseconds go, by ablation (plain answers, {CONNECTIONS} connections, {REQUESTS} requests x {rounds} rounds, interleaved):");
    println!();
    println!("| variant | median µs/rq | step's cost µs | over no filter µs |");
    println!("|---|---:|---:|---:|");
    let base = median(&variants[0].samples);
    let mut previous = base;
    let floor = variants
        .iter()
        .find(|v| v.name.ends_with("(= floor)"))
        .map_or(base, |v| median(&v.samples));
    for variant in &variants {
        let m = median(&variant.samples);
        // Each row over the one before (policy-canary's: over its host calls alone),
        // the own-exports floor's over the SDK-built floor.
        let over_floor = variant.name.starts_with("the floor with its own exports");
        let step = m - if over_floor { floor } else { previous };
        println!(
            "| {} | {m:.1} | {} | {:.1} |",
            variant.name,
            if variant.name == "no filter" {
                "—".to_string()
            } else {
                format!("{step:+.1}")
            },
            m - base
        );
        previous = m;
    }

    // perf: samples by where they fall, for the empty filter, the floor, the floor
    // with policy-canary's host calls, and policy-canary.
    println!();
    println!("Where the CPU goes, by `perf record -g` on the Envoy process (µs per request, plain answers):");
    println!();
    println!("| variant | total µs/rq | wasm code (V8-compiled) | Envoy + V8 runtime | libc | kernel | other |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for index in [0, 1, 5, 10, 11] {
        let variant = &variants[index];
        let Some(split) = perf_split(&variant.envoy, &headers) else {
            println!("| {} | perf unavailable | | | | | |", variant.name);
            continue;
        };
        println!(
            "| {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} | {:.1} |",
            variant.name,
            split.total,
            split.wasm,
            split.envoy,
            split.libc,
            split.kernel,
            split.other
        );
    }
}

fn pin(pid: u32) {
    let status = Command::new("taskset")
        .args(["-a", "-p", "-c", "1", &pid.to_string()])
        .stdout(Stdio::null())
        .status()
        .expect("taskset (util-linux)");
    assert!(status.success(), "taskset failed");
}

/// CPU µs per request, split by where perf's samples fall.
struct Split {
    total: f64,
    wasm: f64,
    envoy: f64,
    libc: f64,
    kernel: f64,
    other: f64,
}

/// Records the Envoy process with perf while `REQUESTS` requests go through it.
fn perf_split(envoy: &Envoy, headers: &[&str]) -> Option<Split> {
    let dir = TempDir::new("perf");
    let data = dir.path().join("perf.data");
    let mut recorder = Command::new("perf")
        .args([
            "record",
            "-F",
            "4999",
            "-g",
            "-p",
            &envoy.pid().to_string(),
            "-o",
        ])
        .arg(&data)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // perf attaches within a moment; a warm-up batch covers it.
    measure(envoy, REQUESTS / 10, headers);
    let total = measure(envoy, REQUESTS, headers);
    // SIGINT ends the recording cleanly.
    let _ = Command::new("kill")
        .args(["-INT", &recorder.id().to_string()])
        .status();
    let _ = recorder.wait();
    let report = Command::new("perf")
        .args(["report", "--stdio", "--no-children", "--sort", "dso", "-i"])
        .arg(&data)
        .stderr(Stdio::null())
        .output()
        .ok()?;
    let text = String::from_utf8_lossy(&report.stdout);
    let mut split = Split {
        total,
        wasm: 0.0,
        envoy: 0.0,
        libc: 0.0,
        kernel: 0.0,
        other: 0.0,
    };
    let mut seen = 0.0;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let mut fields = line.split_whitespace();
        let (Some(percent), Some(dso)) = (fields.next(), fields.next()) else {
            continue;
        };
        let Ok(percent) = percent.trim_end_matches('%').parse::<f64>() else {
            continue;
        };
        let share = percent / 100.0 * total;
        seen += percent;
        match dso {
            "envoy" => split.envoy += share,
            d if d.starts_with("libc") || d.starts_with("libm") || d.starts_with("libpthread") => {
                split.libc += share
            }
            d if d.contains("kernel") => split.kernel += share,
            // V8's compiled wasm lives in anonymous executable memory.
            d if d.starts_with("[unknown]")
                || d.starts_with("[JIT]")
                || d.starts_with("//anon")
                || d.starts_with("perf-") =>
            {
                split.wasm += share
            }
            _ => split.other += share,
        }
    }
    (seen > 50.0).then_some(split)
}
