//! Fan-out: N simulated Envoys long-poll one real controller started with its
//! default flags, as the filter's sync does (`GET /v1/routes?revision=R&epoch=E&
//! wait=25000ms` with an Envoy id and a `routes:read` token, one keep-alive
//! connection each). Per change: the time from the API's acknowledgement to each
//! poll's answer carrying it; and the controller's resident memory per open poll.
//!
//! The pollers run on one thread of this process (a current-thread runtime), from
//! 40 loopback addresses as a fleet comes from many; they share the 2 cores with
//! the controller, so the times include this process's own reading.

use policy_canary_e2e::*;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fleet sizes (BENCH_FLEETS=1000,2000 overrides them).
const FLEETS: [usize; 2] = [1_000, 10_000];
/// Changes per fleet size (BENCH_CHANGES overrides it, e.g. to profile).
const CHANGES: usize = 6;

fn changes() -> usize {
    std::env::var("BENCH_CHANGES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CHANGES)
}
/// Loopback source addresses the pollers spread over.
const SOURCES: usize = 40;
/// The filter's default long-poll wait.
const WAIT: &str = "25000ms";

pub fn run() {
    let open_files = raise_open_files();
    let fleets: Vec<usize> = std::env::var("BENCH_FLEETS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| FLEETS.to_vec());
    // Each poller is a socket here and one in the controller (the same hard limit).
    let (fit, too_many): (Vec<usize>, Vec<usize>) = fleets
        .into_iter()
        .partition(|&n| n as u64 + 1_024 <= open_files);
    let rows: Vec<Row> = fit.into_iter().map(measure).collect();
    println!();
    println!("Fan-out: one controller (default flags), N simulated Envoys long-polling; from a change's API request to each poll's answer carrying it ({} changes per row; the API's own acknowledgement comes at the time shown, often after the polls' answers)", changes());
    println!();
    println!("| Envoys | answers | API acknowledged ms | p50 ms | p99 ms | max ms | refused | controller RSS idle → all polling | per open poll |");
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for row in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.1} → {:.1} MiB | {:.1} KiB |",
            row.envoys,
            row.answers,
            row.acknowledged,
            row.p50,
            row.p99,
            row.max,
            row.refused,
            row.idle_kib as f64 / 1024.0,
            row.polling_kib as f64 / 1024.0,
            row.polling_kib.saturating_sub(row.idle_kib) as f64 / row.envoys as f64,
        );
    }
    for n in too_many {
        println!("| {n} | not run: the open-file hard limit is {open_files} (ulimit -Hn); raise it to {} |||||||", n + 1_024);
    }
}

struct Row {
    envoys: usize,
    /// The API's answer to the change, median ms from its request.
    acknowledged: f64,
    answers: usize,
    p50: f64,
    p99: f64,
    max: f64,
    refused: u64,
    idle_kib: u64,
    polling_kib: u64,
}

/// What the pollers and the driver share.
struct Fleet {
    /// The revision a change is waited for at (0: none).
    awaited: AtomicU64,
    /// When each poller first got `awaited` or later.
    arrived: Mutex<Vec<Option<Instant>>>,
    arrivals: AtomicUsize,
    refused: AtomicU64,
    stop: AtomicBool,
}

fn measure(envoys: usize) -> Row {
    let controller = Controller::start(&[]).with_policies(&["v2.3.1", "v2.4.0"]);
    let token = controller.routes_token();
    // Warm: the API and one poll served before the idle footprint is read.
    let _ = http_get_with_token(controller.port, &token, "/v1/routes");
    let idle_kib = resident_kib(controller.pid());
    let fleet = Arc::new(Fleet {
        awaited: AtomicU64::new(0),
        arrived: Mutex::new(vec![None; envoys]),
        arrivals: AtomicUsize::new(0),
        refused: AtomicU64::new(0),
        stop: AtomicBool::new(false),
    });
    let pollers = {
        let fleet = fleet.clone();
        let port = controller.port;
        std::thread::spawn(move || poll_all(port, token, envoys, fleet))
    };
    let all_polling = || {
        wait_for("every poller's long-poll", Duration::from_secs(180), || {
            (open_polls(&controller)? >= envoys).then_some(())
        })
    };
    all_polling();
    let polling_kib = resident_kib(controller.pid());
    let plan = "target: support-agent\nstable: {version: v2.3.1, cluster: agent_stable}\ncanary: {version: v2.4.0, cluster: agent_canary}\nstages: [{weight: 1%, min_duration: 1h}, {weight: 100%}]\n";
    let mut latencies = Vec::with_capacity(envoys * changes());
    let mut acknowledgements = Vec::with_capacity(changes());
    let mut rollout = 0;
    for change in 0..changes() {
        all_polling();
        let revision = controller.get("/healthz")["revision"].as_u64().unwrap_or(0);
        {
            let mut arrived = fleet.arrived.lock().unwrap();
            arrived.iter_mut().for_each(|a| *a = None);
        }
        fleet.arrivals.store(0, Relaxed);
        fleet.awaited.store(revision + 1, Relaxed);
        let sent = Instant::now();
        if change % 2 == 0 {
            rollout = controller.post_ok("/v1/rollouts", plan)["id"]
                .as_i64()
                .unwrap_or(0);
        } else {
            controller.post_ok(&format!("/v1/rollouts/{rollout}/rollback"), "");
        }
        acknowledgements.push(sent.elapsed().as_secs_f64() * 1000.0);
        wait_for("every poller's answer", Duration::from_secs(60), || {
            (fleet.arrivals.load(Relaxed) >= envoys).then_some(())
        });
        let arrived = fleet.arrived.lock().unwrap();
        // From the change's request: the answers often come before the API's
        // acknowledgement does, so this bounds the time from it too.
        latencies.extend(
            arrived
                .iter()
                .flatten()
                .map(|at| at.duration_since(sent).as_secs_f64() * 1000.0),
        );
    }
    fleet.stop.store(true, Relaxed);
    drop(controller);
    let _ = pollers.join();
    latencies.sort_by(f64::total_cmp);
    acknowledgements.sort_by(f64::total_cmp);
    let at = |q: f64| latencies[((latencies.len() as f64 - 1.0) * q).round() as usize];
    Row {
        acknowledged: acknowledgements[acknowledgements.len() / 2],
        envoys,
        answers: latencies.len(),
        p50: at(0.5),
        p99: at(0.99),
        max: at(1.0),
        refused: fleet.refused.load(Relaxed),
        idle_kib,
        polling_kib,
    }
}

/// `canaryctl_open_long_polls` from the controller's /metrics.
fn open_polls(controller: &Controller) -> Option<usize> {
    let (_, text) = controller.get_raw("/metrics")?;
    text.lines()
        .find_map(|l| l.strip_prefix("canaryctl_open_long_polls "))?
        .trim()
        .parse()
        .ok()
}

fn resident_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// This process holds one socket per poller: its soft open-file limit goes to the
/// hard one, which it returns.
fn raise_open_files() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit only read and write the struct passed.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return 1_024;
        }
        limit.rlim_cur = limit.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
    }
    limit.rlim_max
}

fn poll_all(port: u16, token: String, envoys: usize, fleet: Arc<Fleet>) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        let token: Arc<str> = token.into();
        let tasks: Vec<_> = (0..envoys)
            .map(|i| tokio::spawn(poller(port, i, token.clone(), fleet.clone())))
            .collect();
        for task in tasks {
            let _ = task.await;
        }
    });
}

/// One simulated Envoy: polls, records the revision each answer carries, polls on.
async fn poller(port: u16, index: usize, token: Arc<str>, fleet: Arc<Fleet>) {
    let source: std::net::IpAddr = [127, 0, 0, 2 + (index % SOURCES) as u8].into();
    let (mut epoch, mut revision) = (0u64, 0u64);
    let mut buffer = Vec::with_capacity(4096);
    while !fleet.stop.load(Relaxed) {
        let Some(mut stream) = connect(source, port).await else {
            tokio::time::sleep(Duration::from_millis(100)).await;
            continue;
        };
        loop {
            if fleet.stop.load(Relaxed) {
                return;
            }
            let request = format!(
                "GET /v1/routes?revision={revision}&epoch={epoch}&wait={WAIT} HTTP/1.1\r\nhost: canaryctl\r\naccept: application/json\r\nx-canary-envoy: bench-{index}\r\nauthorization: Bearer {token}\r\n\r\n"
            );
            if stream.write_all(request.as_bytes()).await.is_err() {
                break;
            }
            let Some((status, body)) = read_answer(&mut stream, &mut buffer).await else {
                break;
            };
            if status != 200 {
                fleet.refused.fetch_add(1, Relaxed);
                tokio::time::sleep(Duration::from_millis(500)).await;
                break;
            }
            epoch = number_after(&body, "\"epoch\":").unwrap_or(epoch);
            revision = number_after(&body, "\"revision\":").unwrap_or(revision);
            let awaited = fleet.awaited.load(Relaxed);
            if awaited > 0 && revision >= awaited {
                let mut arrived = fleet.arrived.lock().unwrap();
                if arrived[index].is_none() {
                    arrived[index] = Some(Instant::now());
                    fleet.arrivals.fetch_add(1, Relaxed);
                }
            }
        }
    }
}

async fn connect(source: std::net::IpAddr, port: u16) -> Option<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4().ok()?;
    socket.bind((source, 0).into()).ok()?;
    socket.connect(([127, 0, 0, 1], port).into()).await.ok()
}

/// One HTTP/1.1 answer with a content-length: its status and body.
async fn read_answer(
    stream: &mut tokio::net::TcpStream,
    buffer: &mut Vec<u8>,
) -> Option<(u16, String)> {
    buffer.clear();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(end) = buffer.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buffer[..end]).to_ascii_lowercase();
            let status = head.split(' ').nth(1)?.parse().ok()?;
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))?
                .trim()
                .parse()
                .ok()?;
            while buffer.len() < end + 4 + length {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buffer.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buffer[end + 4..end + 4 + length]).into_owned();
            return Some((status, body));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

/// The whole number right after the first `key` in `text`.
fn number_after(text: &str, key: &str) -> Option<u64> {
    let rest = &text[text.find(key)? + key.len()..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
