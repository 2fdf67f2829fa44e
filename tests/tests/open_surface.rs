//! The controller's open port under a bounded storm of slow clients on loopback:
//! header and request deadlines, the connection cap and the cap on waiting
//! long-polls keep Envoys' polls, the CLI and the control loop served.

use policy_canary_e2e::*;
use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const SLOW_HEADERS: usize = 200;
const SLOW_BODIES: usize = 20;
const MAX_CONNECTIONS: usize = 256;
const OVER_CAP: usize = 60;

/// A socket that sends `bytes` and then nothing more.
fn stalled(port: u16, bytes: &[u8]) -> TcpStream {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    socket.write_all(bytes).expect("send the first bytes");
    socket
}

/// Whether the server closed `socket` (EOF or reset) before `deadline`; the bytes it
/// sent before closing are returned.
fn closed_by_server(socket: &mut TcpStream, deadline: Instant) -> Option<String> {
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        socket
            .set_read_timeout(Some(left.max(Duration::from_millis(1))))
            .ok()?;
        match socket.read(&mut buf) {
            Ok(0) => return Some(String::from_utf8_lossy(&seen).into_owned()),
            Ok(n) => seen.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return None
            }
            Err(_) => return Some(String::from_utf8_lossy(&seen).into_owned()),
        }
    }
}

/// How many of `sockets` the server closes within `limit` (checked side by side).
fn closed_within(sockets: &mut [TcpStream], limit: Duration) -> usize {
    let deadline = Instant::now() + limit;
    let mut closed = vec![false; sockets.len()];
    let mut buf = [0u8; 256];
    for socket in sockets.iter() {
        socket.set_nonblocking(true).expect("nonblocking");
    }
    while Instant::now() < deadline && closed.iter().any(|c| !c) {
        for (socket, closed) in sockets.iter_mut().zip(closed.iter_mut()) {
            if !*closed {
                *closed = match socket.read(&mut buf) {
                    Ok(0) => true,
                    Ok(_) => false,
                    Err(e) => e.kind() != ErrorKind::WouldBlock,
                };
            }
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    closed.iter().filter(|c| **c).count()
}

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn a_slow_client_storm_starves_nobody() {
    let controller = Controller::start(&[
        "--max-connections",
        &MAX_CONNECTIONS.to_string(),
        "--header-timeout",
        "2s",
        "--request-timeout",
        "3s",
        "--max-waiting-polls",
        "4",
    ])
    .with_policies(&["v2.3.1", "v2.4.0"]);
    let port = controller.port;
    let token = controller.token.clone();
    let rollout = controller.post_ok("/v1/rollouts", FAST_PLAN);
    let id = rollout["id"].as_i64().expect("rollout id");

    // The storm: requests whose headers never end, and bodies that never come.
    let started = Instant::now();
    let mut slow_headers: Vec<TcpStream> = (0..SLOW_HEADERS)
        .map(|_| {
            stalled(
                port,
                b"GET /v1/rollouts HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow: ",
            )
        })
        .collect();
    let body_head = format!(
        "POST /v1/policies HTTP/1.1\r\nhost: 127.0.0.1\r\nauthorization: Bearer {}\r\ncontent-length: 1000\r\n\r\nversion: v",
        controller.token
    );
    let mut slow_bodies: Vec<TcpStream> = (0..SLOW_BODIES)
        .map(|_| stalled(port, body_head.as_bytes()))
        .collect();

    // Meanwhile reads, changes and an Envoy's long-poll are served.
    let (status, _) = http_get(port, "/healthz").expect("health answers during the storm");
    assert_eq!(status, 200);
    let revision = controller.get("/healthz")["revision"].as_u64().unwrap_or(0);
    let poll = {
        let token = token.clone();
        std::thread::spawn(move || {
            http_get_with_token(
                port,
                &token,
                &format!("/v1/routes?revision={revision}&wait=20s"),
            )
        })
    };
    wait_for("the long-poll to wait", Duration::from_secs(5), || {
        let metrics = http_get_with_token(port, &token, "/metrics")?.1;
        (metric(&metrics, "canaryctl_open_long_polls") >= 1).then_some(())
    });
    controller.post_ok(
        &format!("/v1/rollouts/{id}/pause"),
        r#"{"reason": "storm"}"#,
    );
    let (status, body) = poll
        .join()
        .expect("poll thread")
        .expect("the long-poll is answered");
    assert_eq!(status, 200, "{body}");
    let answered: serde_json::Value = serde_json::from_str(&body).expect("routes JSON");
    assert!(answered["revision"].as_u64() > Some(revision), "{body}");
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "all of that within the header deadline: {:?}",
        started.elapsed()
    );

    // Over the cap, new connections are closed at once.
    let mut over: Vec<TcpStream> = (0..OVER_CAP)
        .map(|_| stalled(port, b"GET /healthz HTTP/1.1\r\n"))
        .collect();
    let refused = closed_within(&mut over, Duration::from_millis(500));
    let open_before = SLOW_HEADERS + SLOW_BODIES;
    assert!(
        refused >= OVER_CAP - (MAX_CONNECTIONS - open_before),
        "{refused} of {OVER_CAP} refused over a cap of {MAX_CONNECTIONS} with {open_before} open"
    );

    // Slow headers are cut at their deadline, slow bodies at the request's (408, JSON).
    let deadline = Instant::now() + Duration::from_secs(8);
    for socket in &mut slow_headers {
        assert!(
            closed_by_server(socket, deadline).is_some(),
            "a socket that never finished its headers is still open after {:?}",
            started.elapsed()
        );
    }
    for socket in &mut slow_bodies {
        let said = closed_by_server(socket, deadline).expect("a stalled body is cut off");
        assert!(
            said.starts_with("HTTP/1.1 408") && said.contains(r#""error""#),
            "{said}"
        );
    }
    drop(over);

    // Capacity is back; the refusals are counted.
    let metrics = wait_for(
        "the controller to serve again",
        Duration::from_secs(5),
        || http_get_with_token(port, &token, "/metrics").map(|(_, body)| body),
    );
    assert!(metric(&metrics, "canaryctl_http_connections_refused_total") >= 1);

    // Waiting long-polls are capped: over the cap an Envoy is told to retry.
    let revision = controller.get("/healthz")["revision"].as_u64().unwrap_or(0);
    let waiting: Vec<_> = (0..4)
        .map(|_| {
            let token = token.clone();
            std::thread::spawn(move || {
                http_get_with_token(
                    port,
                    &token,
                    &format!("/v1/routes?revision={revision}&wait=20s"),
                )
            })
        })
        .collect();
    wait_for("four long-polls to wait", Duration::from_secs(5), || {
        let metrics = http_get_with_token(port, &token, "/metrics")?.1;
        (metric(&metrics, "canaryctl_open_long_polls") >= 4).then_some(())
    });
    let asked = Instant::now();
    let (status, body) = http_get_with_token(
        port,
        &token,
        &format!("/v1/routes?revision={revision}&wait=20s"),
    )
    .expect("the fifth poll is answered");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("--max-waiting-polls"), "{body}");
    // At once: well under the 20 s the poll asked to wait.
    assert!(asked.elapsed() < Duration::from_secs(5), "refused at once");
    controller.post_ok(
        &format!("/v1/rollouts/{id}/resume"),
        r#"{"reason": "calm"}"#,
    );
    for poll in waiting {
        let (status, _) = poll.join().expect("poll thread").expect("answered");
        assert_eq!(status, 200);
    }
    let metrics = http_get_with_token(port, &token, "/metrics")
        .expect("metrics")
        .1;
    assert!(metric(&metrics, "canaryctl_polls_refused_total") >= 1);
}
