//! A test backend for end-to-end tests and `make run`.
//!
//! `test-backend NAME [PORT]` serves HTTP/1.1 and h2c on 127.0.0.1 (port 0 = any free
//! port) and prints `listening 127.0.0.1:PORT` once ready. Every answer is a JSON
//! object with the backend's name and the request headers it received. The request
//! drives the answer:
//! - `x-reply-<name>: v` → response header `<name>: v` (e.g. `x-reply-x-agent-outcome`);
//! - `x-trailer-<name>: v` → response trailer `<name>: v` (the body is streamed);
//! - `x-test-chunks: N` → the body is N small server-sent-event chunks (as an agent
//!   streams its tokens) instead of the JSON echo;
//! - `x-test-status: N` → status N; `x-test-delay-ms: N` → answer after N ms;
//! - `x-test-reset: 1` → reset the stream before any response header.
//!
//! `test-backend NAME PORT completion=0.7 safety_at=N cost=1000` makes it act as an
//! agent: every answer reports a task outcome (`completed` for that share of requests,
//! spread evenly, else `failed`), its cost, and one safety violation on request N.
//! `power_completion=0.3 power_cost=20000`: sessions whose `x-session-id` starts
//! with `power-` (heavy users with their own character) complete that share of
//! their tasks, at that cost, whichever policy serves them.
//! `escalation=0.2`: that share of all tasks ends `escalated` instead of `failed`
//! (taken from the tasks not completed). `metric=judge_score:0.8` (repeatable):
//! every answer reports `x-agent-metric-judge_score`, alternately 0.1 above and
//! below that mean.

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{HeaderMap, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use std::convert::Infallible;
use std::io::Write;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

/// A body of one data frame (or `chunks` small ones), then trailers if any.
struct Answer {
    data: Option<Bytes>,
    chunks: u32,
    trailers: Option<HeaderMap>,
}

/// One streamed chunk: a server-sent event carrying a few tokens.
const CHUNK: &[u8] = b"data: {\"delta\": \"a few tokens\"}\n\n";

impl Body for Answer {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.chunks > 0 {
            self.chunks -= 1;
            return Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(CHUNK)))));
        }
        if let Some(data) = self.data.take() {
            return Poll::Ready(Some(Ok(Frame::data(data))));
        }
        Poll::Ready(self.trailers.take().map(|t| Ok(Frame::trailers(t))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks == 0 && self.data.is_none() && self.trailers.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        match (&self.data, &self.trailers) {
            // Trailers and chunks need a streamed (chunked) body.
            _ if self.chunks > 0 => SizeHint::default(),
            (_, Some(_)) => SizeHint::default(),
            (Some(d), None) => SizeHint::with_exact(d.len() as u64),
            (None, None) => SizeHint::with_exact(0),
        }
    }
}

#[derive(Debug)]
struct ResetRequested;

impl std::fmt::Display for ResetRequested {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("reset requested by x-test-reset")
    }
}

impl std::error::Error for ResetRequested {}

fn header_str<'a>(request: &'a Request<Incoming>, name: &str) -> Option<&'a str> {
    request.headers().get(name).and_then(|v| v.to_str().ok())
}

/// Telemetry every answer reports (from `key=value` arguments).
#[derive(Clone, Default)]
struct Profile {
    completion: Option<f64>,
    safety_at: Option<u64>,
    cost: u64,
    power_completion: Option<f64>,
    power_cost: Option<u64>,
    escalation: f64,
    /// Custom metrics: name and mean.
    metrics: Vec<(HeaderName, f64)>,
}

static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Answers per class (power sessions, the rest), each spreading its own share.
static SERVED_POWER: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
static SERVED_OTHERS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// Tasks not completed, spreading the escalated share among them.
static NOT_COMPLETED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Whether the k-th of a run spreading `share` evenly falls on a hit.
fn spread(k: u64, share: f64) -> bool {
    ((k as f64) * share).floor() > (((k - 1) as f64) * share).floor()
}

fn profile_headers(profile: &Profile, power: bool, headers: &mut HeaderMap) {
    let Some(completion) = profile.completion else {
        return;
    };
    let n = SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    let (completion, cost, class) = match (power, profile.power_completion) {
        (true, Some(power_completion)) => (
            power_completion,
            profile.power_cost.unwrap_or(profile.cost),
            &SERVED_POWER,
        ),
        _ => (completion, profile.cost, &SERVED_OTHERS),
    };
    let k = class.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
    // Completed when the running share of completions would otherwise fall behind.
    let completed = spread(k, completion);
    let outcome = if completed {
        "completed"
    } else {
        let j = NOT_COMPLETED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1;
        let share = (profile.escalation / (1.0 - completion).max(1e-9)).min(1.0);
        if spread(j, share) {
            "escalated"
        } else {
            "failed"
        }
    };
    headers.insert("x-agent-outcome", HeaderValue::from_static(outcome));
    for (name, mean) in &profile.metrics {
        let value = if n.is_multiple_of(2) {
            mean + 0.1
        } else {
            mean - 0.1
        };
        if let Ok(value) = HeaderValue::from_str(&format!("{:.3}", value.max(0.0))) {
            headers.insert(name.clone(), value);
        }
    }
    if let Ok(cost) = HeaderValue::from_str(&cost.to_string()) {
        headers.insert("x-agent-cost-micros", cost);
    }
    let violations = if profile.safety_at == Some(n) {
        "1"
    } else {
        "0"
    };
    headers.insert(
        "x-agent-safety-violations",
        HeaderValue::from_static(violations),
    );
}

async fn answer(
    name: &'static str,
    profile: Profile,
    request: Request<Incoming>,
) -> Result<Response<Answer>, ResetRequested> {
    if let Some(ms) = header_str(&request, "x-test-delay-ms").and_then(|v| v.parse().ok()) {
        tokio::time::sleep(Duration::from_millis(ms)).await;
    }
    if header_str(&request, "x-test-reset").is_some() {
        return Err(ResetRequested);
    }
    let status = header_str(&request, "x-test-status")
        .and_then(|v| v.parse().ok())
        .and_then(|code| StatusCode::from_u16(code).ok())
        .unwrap_or(StatusCode::OK);
    let power = header_str(&request, "x-session-id").is_some_and(|s| s.starts_with("power-"));
    let mut received = serde_json::Map::new();
    let mut reply = HeaderMap::new();
    let mut trailers = HeaderMap::new();
    for (key, value) in request.headers() {
        let text = String::from_utf8_lossy(value.as_bytes()).into_owned();
        match received.get_mut(key.as_str()) {
            Some(serde_json::Value::Array(values)) => values.push(text.into()),
            _ => {
                received.insert(key.to_string(), serde_json::Value::Array(vec![text.into()]));
            }
        }
        for (prefix, map) in [("x-reply-", &mut reply), ("x-trailer-", &mut trailers)] {
            if let Some(target) = key.as_str().strip_prefix(prefix) {
                if let Ok(target) = HeaderName::from_bytes(target.as_bytes()) {
                    map.append(target, value.clone());
                }
            }
        }
    }
    let body = serde_json::json!({
        "backend": name,
        "method": request.method().as_str(),
        "path": request.uri().path(),
        "headers": received,
    });
    let chunks = header_str(&request, "x-test-chunks")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0u32)
        .min(100_000);
    let mut response = Response::new(Answer {
        data: (chunks == 0).then(|| Bytes::from(body.to_string())),
        chunks,
        trailers: (!trailers.is_empty()).then_some(trailers),
    });
    *response.status_mut() = status;
    let headers = response.headers_mut();
    profile_headers(&profile, power, headers);
    headers.insert("content-type", HeaderValue::from_static("application/json"));
    headers.insert("x-backend", HeaderValue::from_static(name));
    for (key, value) in reply.iter() {
        headers.append(key, value.clone());
    }
    Ok(response)
}

fn main() {
    let mut args = std::env::args().skip(1);
    let name: &'static str = Box::leak(
        args.next()
            .unwrap_or_else(|| "backend".into())
            .into_boxed_str(),
    );
    let port: u16 = args.next().and_then(|p| p.parse().ok()).unwrap_or(0);
    let mut profile = Profile {
        cost: 1_000,
        ..Profile::default()
    };
    for arg in args {
        match arg.split_once('=') {
            Some(("completion", v)) => profile.completion = v.parse().ok(),
            Some(("safety_at", v)) => profile.safety_at = v.parse().ok(),
            Some(("cost", v)) => profile.cost = v.parse().unwrap_or(1_000),
            Some(("power_completion", v)) => profile.power_completion = v.parse().ok(),
            Some(("power_cost", v)) => profile.power_cost = v.parse().ok(),
            Some(("escalation", v)) => profile.escalation = v.parse().unwrap_or(0.0),
            Some(("metric", v)) => {
                let parsed = v.split_once(':').and_then(|(name, mean)| {
                    let header =
                        HeaderName::from_bytes(format!("x-agent-metric-{name}").as_bytes());
                    Some((header.ok()?, mean.parse().ok()?))
                });
                match parsed {
                    Some(metric) => profile.metrics.push(metric),
                    None => eprintln!("test-backend: ignoring argument {arg}"),
                }
            }
            _ => eprintln!("test-backend: ignoring argument {arg}"),
        }
    }
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("test-backend: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    runtime.block_on(async move {
        let listener = match tokio::net::TcpListener::bind(("127.0.0.1", port)).await {
            Ok(listener) => listener,
            Err(e) => {
                eprintln!("test-backend: cannot listen on 127.0.0.1:{port}: {e}");
                std::process::exit(1);
            }
        };
        if let Ok(address) = listener.local_addr() {
            println!("listening {address}");
            let _ = std::io::stdout().flush();
        }
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let profile = profile.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |request| {
                    answer(name, profile.clone(), request)
                });
                let mut builder =
                    hyper_util::server::conn::auto::Builder::new(TokioExecutor::new());
                // Envoy forwards up to 60 KiB of request headers; accept all of them.
                builder.http1().max_buf_size(256 * 1024);
                builder.http2().max_header_list_size(256 * 1024);
                let _ = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    });
}
