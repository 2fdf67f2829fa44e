//! Least privilege against a real `canaryctl serve`: tokens made and revoked with
//! the CLI survive `kill -9` the moment they are acknowledged, secrets never reach
//! the log or the audit, and the API speaks TLS with a certificate made here.

use policy_canary_e2e::*;
use std::process::{Command, Output, Stdio};

fn canaryctl(server: &str, state_dir: &std::path::Path, args: &[&str]) -> Output {
    Command::new(canaryctl_bin())
        .current_dir(repo_root())
        .args(args)
        .env("CANARYCTL_SERVER", server)
        .env("CANARYCTL_STATE_DIR", state_dir)
        .env("CANARYCTL_ACTOR", "tester")
        .env_remove("CANARYCTL_TOKEN")
        .env_remove("CANARYCTL_CA_FILE")
        .stdin(Stdio::null())
        .output()
        .expect("run canaryctl")
}

fn ok(server: &str, state_dir: &std::path::Path, args: &[&str]) -> String {
    let out = canaryctl(server, state_dir, args);
    assert!(
        out.status.success(),
        "canaryctl {args:?} failed ({:?}): {}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A GET with `token`: the status.
fn status_with(controller: &Controller, token: &str, path: &str) -> u16 {
    http_get_with_token(controller.port, token, path)
        .expect("the controller answers")
        .0
}

#[test]
fn tokens_survive_kill_9_and_never_reach_the_log() {
    let mut controller = Controller::start_logging(&[]);
    let server = format!("http://127.0.0.1:{}", controller.port);
    let state = controller.state_dir.clone();

    let secret = ok(
        &server,
        &state,
        &["token", "create", "ci", "--scope", "read"],
    )
    .trim()
    .to_string();
    assert!(secret.starts_with("pct_"), "{secret}");
    // Acknowledged, then killed at once: the token is there after the restart.
    controller.kill();
    controller.restart();
    assert_eq!(status_with(&controller, &secret, "/v1/rollouts"), 200);
    assert_eq!(status_with(&controller, &secret, "/v1/tokens"), 403);
    let listed = ok(&server, &state, &["token", "list"]);
    assert!(
        listed.contains("ci") && listed.contains("read") && listed.contains("live"),
        "{listed}"
    );

    ok(&server, &state, &["token", "revoke", "ci"]);
    controller.kill();
    controller.restart();
    assert_eq!(status_with(&controller, &secret, "/v1/rollouts"), 401);
    let listed = ok(&server, &state, &["token", "list"]);
    assert!(listed.contains("revoked"), "{listed}");

    // A wrong scope on the command line is refused by the CLI's server, clearly.
    let out = canaryctl(
        &server,
        &state,
        &["token", "create", "x", "--scope", "root"],
    );
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown scope"));

    let audit = controller.get("/v1/audit").to_string();
    assert!(audit.contains("token_created") && audit.contains("token_revoked"));
    let log = controller.log_text();
    for (what, text) in [("audit", &audit), ("log", &log)] {
        assert!(!text.contains(&secret), "the secret reached the {what}");
        assert!(
            !text.contains(&controller.token),
            "the bootstrap token reached the {what}"
        );
    }
    assert!(!log.is_empty(), "the controller logged at debug level");
}

#[test]
fn the_api_speaks_tls_with_a_certificate_made_here() {
    let dir = TempDir::new("tls");
    let path = |name: &str| dir.path().join(name).to_string_lossy().into_owned();
    let (ca, ca_key, cert, key) = (
        path("ca.pem"),
        path("ca-key.pem"),
        path("cert.pem"),
        path("key.pem"),
    );
    let openssl = |args: &[&str]| {
        let made = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "1"])
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .expect("openssl makes test certificates");
        assert!(made.success(), "openssl {args:?}");
    };
    // A private CA, and the controller's certificate signed by it.
    openssl(&[
        "-subj",
        "/CN=policy-canary test CA",
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    openssl(&[
        "-subj",
        "/CN=canaryctl",
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-addext",
        "subjectAltName=IP:127.0.0.1",
        "-addext",
        "basicConstraints=critical,CA:FALSE",
        "-keyout",
        &key,
        "-out",
        &cert,
    ]);
    let (cert, key) = (
        std::path::PathBuf::from(cert),
        std::path::PathBuf::from(key),
    );
    let controller = Controller::start(&[
        "--tls-cert",
        cert.to_str().unwrap(),
        "--tls-key",
        key.to_str().unwrap(),
    ]);
    let server = format!("https://127.0.0.1:{}", controller.port);
    let state = controller.state_dir.clone();
    let targets = ok(&server, &state, &["--ca-file", &ca, "targets"]);
    assert!(targets.contains("no Envoy has polled"), "{targets}");
    // Without the CA the certificate is not trusted: exit 3 (cannot reach).
    let out = canaryctl(&server, &state, &["targets"]);
    assert_eq!(
        out.status.code(),
        Some(3),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Plain HTTP to the TLS port gets no HTTP answer.
    assert_eq!(
        http_get(controller.port, "/healthz").map(|(status, _)| status),
        None
    );
    // A bad key file: the controller says so and does not start.
    let out = Command::new(canaryctl_bin())
        .args(["serve", "--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&cert)
        .arg("--state-dir")
        .arg(dir.path().join("other-state"))
        .stdin(Stdio::null())
        .output()
        .expect("run canaryctl serve");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("private key"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
