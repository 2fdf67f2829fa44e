//! A fleet's long-polls never starve the operator: polls and the API have separate
//! budgets, connections that have not authenticated are limited per address, and
//! `/metrics` shows the headroom. Small caps stand in for a big fleet; the fan-out
//! benchmark (`make bench`) holds 10,000 Envoys with the defaults.

use policy_canary_e2e::*;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

const MAX_CONNECTIONS: usize = 200;
/// `reserve_of(200)`: the last 25 slots are the API's.
const RESERVE: usize = 25;
const MAX_POLLS: usize = 120;

fn metric(text: &str, name: &str) -> u64 {
    text.lines()
        .find_map(|line| {
            line.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0)
}

/// A long-poll sent on its own connection, left waiting (not read).
fn poll(port: u16, token: &str, revision: u64, envoy: usize) -> TcpStream {
    let mut socket = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    write!(
        socket,
        "GET /v1/routes?revision={revision}&wait=30s HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {token}\r\nx-canary-envoy: envoy-{envoy}\r\n\r\n"
    )
    .expect("send the poll");
    socket
}

/// What the server sent on `socket` within `limit` (until it closed or paused).
fn answer(socket: &mut TcpStream, limit: Duration) -> String {
    socket.set_read_timeout(Some(limit)).expect("timeout");
    let mut seen = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = socket.read(&mut buf) {
        if n == 0 {
            break;
        }
        seen.extend_from_slice(&buf[..n]);
        if seen.windows(4).any(|w| w == b"\r\n\r\n") {
            break;
        }
    }
    String::from_utf8_lossy(&seen).into_owned()
}

#[test]
fn a_fleet_of_polls_never_starves_the_operator() {
    let controller = Controller::start(&[
        "--max-connections",
        &MAX_CONNECTIONS.to_string(),
        "--max-waiting-polls",
        &MAX_POLLS.to_string(),
        "--max-unauthenticated-per-address",
        "400",
    ])
    .with_policies(&["v2.3.1", "v2.4.0"]);
    let port = controller.port;
    let token = controller.routes_token();
    let id = controller.post_ok("/v1/rollouts", FAST_PLAN)["id"]
        .as_i64()
        .unwrap();
    let revision = controller.get("/healthz")["revision"].as_u64().unwrap();

    // Every poll slot taken.
    let mut waiting: Vec<TcpStream> = (0..MAX_POLLS)
        .map(|i| poll(port, &token, revision, i))
        .collect();
    let admin = controller.token.clone();
    wait_for("the polls to wait", Duration::from_secs(10), || {
        let text = http_get_with_token(port, &admin, "/metrics")?.1;
        (metric(&text, "canaryctl_open_long_polls") == MAX_POLLS as u64).then_some(text)
    });
    // One more: refused at once, told when to come back, closed.
    let mut extra = poll(port, &token, revision, 999);
    let said = answer(&mut extra, Duration::from_secs(2));
    assert!(said.starts_with("HTTP/1.1 503"), "{said}");
    assert!(said.to_lowercase().contains("retry-after: 5"), "{said}");
    assert!(said.to_lowercase().contains("connection: close"), "{said}");

    // More Envoys than connection slots outside the reserve: the polls that land
    // in the reserve are refused; the reserve's slots stay free for the API.
    let open_now = MAX_POLLS + 1;
    let mut crowd: Vec<TcpStream> = (0..MAX_CONNECTIONS - RESERVE - open_now + 10)
        .map(|i| poll(port, &token, revision, 2_000 + i))
        .collect();
    // (The last ones landed in the reserve; the first still wait.)
    let last = crowd.len() - 20;
    let refused = crowd[last..]
        .iter_mut()
        .map(|s| answer(s, Duration::from_millis(300)))
        .filter(|a| a.starts_with("HTTP/1.1 503"))
        .count();
    assert!(refused >= 10, "{refused} refused");

    // With every poll slot taken, the operator is answered at once.
    let asked = Instant::now();
    let (status, _) = http_get(port, "/healthz").expect("health answers");
    assert_eq!(status, 200);
    let rolled = controller.post_ok(
        &format!("/v1/rollouts/{id}/rollback"),
        r#"{"reason": "fleet full"}"#,
    );
    assert_eq!(rolled["phase"], "rolled_back", "{rolled}");
    // Well under the polls' 30 s wait, with room for a loaded 2-core machine.
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the operator waited {:?}",
        asked.elapsed()
    );
    // The waiting polls get the rollback.
    let said = answer(&mut waiting[0], Duration::from_secs(5));
    assert!(said.starts_with("HTTP/1.1 200"), "{said}");

    let text = http_get_with_token(port, &admin, "/metrics").unwrap().1;
    assert!(
        metric(&text, "canaryctl_polls_refused_total") >= 11,
        "{text}"
    );
    assert_eq!(metric(&text, "canaryctl_long_polls_max"), MAX_POLLS as u64);
    assert_eq!(
        metric(&text, "canaryctl_http_connections_max"),
        MAX_CONNECTIONS as u64
    );
    assert!(metric(&text, "canaryctl_http_connections_open") > 0);
    drop((waiting, crowd, extra));
}

/// Connections that never authenticate are limited per client address: one
/// address holding its share is refused more, another address is not.
#[test]
fn unauthenticated_connections_are_limited_per_address() {
    let controller = Controller::start(&["--max-unauthenticated-per-address", "20"]);
    let port = controller.port;
    let idle: Vec<TcpStream> = (0..20)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).expect("connect"))
        .collect();
    let admin = controller.token.clone();
    // The 21st from 127.0.0.1 is closed at once.
    wait_for("the address's cap", Duration::from_secs(5), || {
        let mut extra = TcpStream::connect(("127.0.0.1", port)).ok()?;
        let _ = extra.write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n");
        answer(&mut extra, Duration::from_millis(500))
            .is_empty()
            .then_some(())
    });
    // From another loopback address, all is well.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let other = runtime.block_on(async {
        let socket = tokio::net::TcpSocket::new_v4().unwrap();
        socket.bind("127.0.0.2:0".parse().unwrap()).unwrap();
        let mut stream = socket
            .connect(format!("127.0.0.1:{port}").parse().unwrap())
            .await
            .unwrap();
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut answer = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut answer)).await;
        String::from_utf8_lossy(&answer).into_owned()
    });
    assert!(other.starts_with("HTTP/1.1 200"), "{other}");
    // Once the idle ones go, 127.0.0.1 is served again; the refusals are counted.
    drop(idle);
    let text = wait_for("127.0.0.1 served again", Duration::from_secs(5), || {
        http_get_with_token(port, &admin, "/metrics").map(|(_, body)| body)
    });
    assert!(
        metric(
            &text,
            "canaryctl_http_connections_refused_unauthenticated_total"
        ) >= 1,
        "{text}"
    );
}
