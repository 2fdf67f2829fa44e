//! The `canaryctl` command line against a real `canaryctl serve`, with the example
//! policies and plan from envoy/.

use policy_canary_e2e::*;
use std::process::{Command, Output, Stdio};
use std::time::Duration;

fn command(controller: &Controller, args: &[&str]) -> Command {
    let mut command = Command::new(canaryctl_bin());
    command
        .current_dir(repo_root())
        .args(args)
        .env(
            "CANARYCTL_SERVER",
            format!("http://127.0.0.1:{}", controller.port),
        )
        .env("CANARYCTL_STATE_DIR", &controller.state_dir)
        .env("CANARYCTL_ACTOR", "tester")
        .env_remove("CANARYCTL_TOKEN")
        .stdin(Stdio::null());
    command
}

fn canaryctl(controller: &Controller, args: &[&str]) -> Output {
    command(controller, args).output().expect("run canaryctl")
}

fn ok(controller: &Controller, args: &[&str]) -> String {
    let out = canaryctl(controller, args);
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "canaryctl {args:?} failed ({:?}): {text}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    text
}

#[test]
fn the_cli_drives_a_rollout() {
    let c = Controller::start(&[]);
    assert!(ok(&c, &["policy", "add", "envoy/policies/v2.3.1.yaml"])
        .starts_with("registered v2.3.1@sha256:"));
    ok(&c, &["policy", "add", "envoy/policies/v2.4.0.yaml"]);
    let list = ok(&c, &["policy", "list"]);
    assert!(list.contains("v2.3.1") && list.contains("v2.4.0"));
    assert!(ok(&c, &["policy", "show", "v2.4.0"]).contains("agent-model-2026-11"));

    let started = ok(&c, &["rollout", "start", "envoy/plans/support-agent.yaml"]);
    assert!(
        started.contains("support-agent  v2.3.1 -> v2.4.0"),
        "{started}"
    );
    let status = ok(&c, &["rollout", "status"]);
    assert!(
        status.contains("progressing, stage 1 of 5 (1%)"),
        "{status}"
    );
    let json: serde_json::Value =
        serde_json::from_str(&ok(&c, &["rollout", "status", "--json"])).unwrap();
    assert_eq!(json["phase"], "progressing");

    ok(&c, &["rollout", "pause", "--reason", "looking at tickets"]);
    ok(&c, &["rollout", "resume"]);
    let promoted = ok(&c, &["rollout", "promote"]);
    assert!(promoted.contains("stage 2 of 5 (5%)"), "{promoted}");
    // `status --watch` follows the rollout until it ends.
    let dir = TempDir::new("cli-watch");
    let log = dir.path().join("watch.log");
    let mut watching = ChildGuard(
        command(&c, &["rollout", "status", "--watch"])
            .stdout(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn canaryctl rollout status --watch"),
    );
    wait_for("the first status", Duration::from_secs(10), || {
        std::fs::read_to_string(&log)
            .unwrap_or_default()
            .contains("stage 2 of 5 (5%)")
            .then_some(())
    });
    ok(
        &c,
        &["rollout", "rollback", "--reason", "refund flow broke"],
    );
    let status = wait_for("status --watch to end", Duration::from_secs(10), || {
        watching.0.try_wait().unwrap()
    });
    let watched = std::fs::read_to_string(&log).unwrap();
    assert!(status.success(), "{watched}");
    assert!(
        watched
            .trim_end()
            .lines()
            .any(|l| l.contains("rolled_back")),
        "{watched}"
    );
    let audit = ok(&c, &["rollout", "audit"]);
    for expected in [
        "start",
        "pause",
        "by tester (token admin): looking at tickets",
        "resume",
        "promote",
        "rollback",
        "refund flow broke",
    ] {
        assert!(
            audit.contains(expected),
            "audit lacks `{expected}`:\n{audit}"
        );
    }
    let targets = ok(&c, &["targets"]);
    assert!(
        targets.contains("support-agent") && targets.contains("stable v2.3.1"),
        "{targets}"
    );

    // Errors: what went wrong and the documented exit codes.
    let refused = canaryctl(&c, &["rollout", "pause"]);
    assert_eq!(refused.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&refused.stderr).contains("no active rollout"));
    let illegal = canaryctl(&c, &["rollout", "resume", "1"]);
    assert_eq!(illegal.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&illegal.stderr)
        .contains("409 Conflict: cannot resume a rollout that is rolled_back"));
    let bad = canaryctl(&c, &["rollout", "start", "envoy/policies/v2.3.1.yaml"]);
    assert_eq!(bad.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400 Bad Request"));
    let no_token = Command::new(canaryctl_bin())
        .current_dir(repo_root())
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", c.port),
            "--state-dir",
            "/nonexistent",
            "policy",
            "add",
            "envoy/policies/v2.3.1.yaml",
        ])
        .env_remove("CANARYCTL_TOKEN")
        .output()
        .unwrap();
    assert_eq!(no_token.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_token.stderr).contains("401"));
    let unreachable = Command::new(canaryctl_bin())
        .args([
            "--server",
            &format!("http://127.0.0.1:{}", free_port()),
            "rollout",
            "list",
        ])
        .output()
        .unwrap();
    assert_eq!(unreachable.status.code(), Some(3));
    let usage = Command::new(canaryctl_bin())
        .args(["rollout", "frobnicate"])
        .output()
        .unwrap();
    assert_eq!(usage.status.code(), Some(2));
    for help in [
        &["--help"][..],
        &["rollout", "--help"],
        &["serve", "--help"],
        &["policy", "add", "--help"],
    ] {
        let out = Command::new(canaryctl_bin()).args(help).output().unwrap();
        assert!(out.status.success(), "{help:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("Example"),
            "{help:?} shows examples"
        );
    }
}

#[test]
fn the_token_file_is_private() {
    use std::os::unix::fs::PermissionsExt;
    let c = Controller::start(&[]);
    let mode = std::fs::metadata(c.state_dir.join("token"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

/// `canaryctl plan check` on every shipped plan, offline (no controller): a row per
/// stage and gate, an exit status saying whether every stage can decide, and what
/// would make the ones that cannot.
#[test]
fn plan_check_reads_the_shipped_plans() {
    let check = |args: &[&str]| -> (Option<i32>, String) {
        let out = Command::new(canaryctl_bin())
            .current_dir(repo_root())
            .args(["plan", "check"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run canaryctl");
        let text = String::from_utf8_lossy(&out.stdout).to_string()
            + &String::from_utf8_lossy(&out.stderr);
        (out.status.code(), text)
    };
    let plans: Vec<String> = std::fs::read_dir(repo_root().join("envoy/plans"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .map(|p| p.strip_prefix(repo_root()).unwrap().display().to_string())
        .collect();
    assert!(plans.len() >= 4, "{plans:?}");
    for plan in &plans {
        // The demos' own traffic (scripts/run-demo.sh): 10000 sessions; their agents
        // answer without 5xx, so the error baseline is low.
        let (code, text) = check(&[
            plan,
            "--rate",
            "300",
            "--sessions",
            "10000",
            "--base",
            "error_rate=0.002",
            // The demo plans' judge gate: the agents' judge scores (0.8 ± 0.15).
            "--base",
            "judge_score=0.8:0.09",
        ]);
        assert_eq!(code, Some(0), "{plan}:\n{text}");
        assert!(text.contains("stage 1 ("), "{plan}:\n{text}");
        for gate in ["completion_rate", "error_rate", "abandonment_rate"] {
            assert!(text.contains(gate), "{plan}: no {gate} row:\n{text}");
        }
        assert!(text.contains("promoted after about"), "{plan}:\n{text}");
        // JSON for scripts.
        let (code, json) = check(&[
            plan,
            "--rate",
            "300",
            "--json",
            "--base",
            "error_rate=0.002",
            // The demo plans' judge gate: the agents' judge scores (0.8 ± 0.15).
            "--base",
            "judge_score=0.8:0.09",
        ]);
        assert_eq!(code, Some(0), "{json}");
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        assert!(v["stages"][0]["gates"][0]["pass_units"].as_f64().unwrap() > 0.0);
    }
    // A plan's own gate needs its baseline: the demo's judge gate without one.
    let (code, text) = check(&["envoy/plans/demo.yaml", "--rate", "300"]);
    assert_eq!(code, Some(2), "{text}");
    assert!(text.contains("--base judge_score=MEAN[:SD]"), "{text}");
    // The production plan at 5 requests/s: flagged, with what would decide.
    let (code, text) = check(&["envoy/plans/support-agent.yaml", "--rate", "5"]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("cannot show an equal canary"), "{text}");
    assert!(text.contains("threshold (or floor) of at least"), "{text}");
    assert!(text.contains("cannot promote"), "{text}");
    // With 60 active sessions, a 1% stage holds less than one: flagged.
    let (code, text) = check(&[
        "envoy/plans/support-agent.yaml",
        "--rate",
        "300",
        "--sessions",
        "60",
    ]);
    assert_eq!(code, Some(1), "{text}");
    assert!(text.contains("sessions in the canary"), "{text}");
    // Bad input: clear errors, exit 2.
    for bad in [
        vec!["envoy/plans/support-agent.yaml", "--rate", "0"],
        vec![
            "envoy/plans/support-agent.yaml",
            "--rate",
            "300",
            "--base",
            "completion_rate=2",
        ],
        vec!["envoy/policies/v2.3.1.yaml", "--rate", "300"],
    ] {
        let (code, text) = check(&bad);
        assert_eq!(code, Some(2), "{bad:?}: {text}");
        assert!(text.contains("canaryctl:"), "{bad:?}: {text}");
    }
}

/// A token file that is named (`--token-file` or `CANARYCTL_TOKEN_FILE`) but
/// missing, unreadable or empty is an error naming the file and the cause, exit 2,
/// before any request; only the state directory's default file may be absent.
#[test]
fn a_named_token_file_must_hold_a_token() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let server = format!("http://{}", listener.local_addr().unwrap());
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, " \n").unwrap();
    // A directory cannot be read as a file, even by root (the tests may run as root).
    let unreadable = dir.path().join("a-directory");
    std::fs::create_dir(&unreadable).unwrap();
    let cases = [
        (&missing, "does not exist"),
        (&empty, "is empty"),
        (&unreadable, "Is a directory"),
    ];
    for (file, cause) in cases {
        for by_env in [false, true] {
            let mut command = Command::new(canaryctl_bin());
            command
                .args(["--server", &server, "--state-dir"])
                .arg(dir.path())
                .env_remove("CANARYCTL_TOKEN")
                .env_remove("CANARYCTL_TOKEN_FILE")
                .stdin(Stdio::null());
            if by_env {
                command.env("CANARYCTL_TOKEN_FILE", file);
            } else {
                command.arg("--token-file").arg(file);
            }
            let out = command.args(["rollout", "list"]).output().unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{file:?} ({by_env}): {stderr}");
            assert!(
                stderr.contains(&file.display().to_string()) && stderr.contains(cause),
                "{file:?}: {stderr}"
            );
        }
    }
    assert!(
        listener.accept().is_err(),
        "a request was sent without the named token"
    );
    // The default file in the state directory may be absent: the request goes out
    // without a token (and the server answers it).
    let out = Command::new(canaryctl_bin())
        .args(["--server", &server, "--state-dir"])
        .arg(dir.path().join("no-state"))
        .env_remove("CANARYCTL_TOKEN")
        .env_remove("CANARYCTL_TOKEN_FILE")
        .args(["rollout", "list"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut out = out;
    let connected = loop {
        if listener.accept().is_ok() {
            break true;
        }
        if std::time::Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let _ = out.kill();
    let _ = out.wait();
    assert!(connected, "without a named token file the request is sent");
    // `serve` with a named token file it cannot read refuses to start.
    let serve = Command::new(canaryctl_bin())
        .args(["--state-dir"])
        .arg(dir.path().join("serve-state"))
        .arg("--token-file")
        .arg(&unreadable)
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env_remove("CANARYCTL_TOKEN")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!serve.status.success());
    assert!(String::from_utf8_lossy(&serve.stderr).contains("cannot read the token file"));
}

/// `canaryctl targets bind|clusters|unbind`: the clusters an `operate` token's
/// plans may name, managed with an admin token (the state directory's).
#[test]
fn targets_bind_and_unbind_clusters() {
    let c = Controller::start(&[]);
    let bound = ok(
        &c,
        &[
            "targets",
            "bind",
            "support-agent",
            "agent_stable",
            "agent_canary",
        ],
    );
    assert!(
        bound.contains("agent_canary") && bound.contains("agent_stable"),
        "{bound}"
    );
    let listed = ok(&c, &["--json", "targets", "clusters", "support-agent"]);
    let listed: serde_json::Value = serde_json::from_str(&listed).unwrap();
    assert_eq!(listed["clusters"].as_array().unwrap().len(), 2, "{listed}");
    assert_eq!(listed["clusters"][0]["bound_by"], "admin");
    let left = ok(&c, &["targets", "unbind", "support-agent", "agent_canary"]);
    assert!(
        !left.contains("agent_canary") && left.contains("agent_stable"),
        "{left}"
    );
    let bad = canaryctl(&c, &["targets", "bind", "support-agent", "not a name"]);
    assert_eq!(bad.status.code(), Some(1), "the controller refuses it");
    assert!(String::from_utf8_lossy(&bad.stderr).contains("400"));
    let bad = canaryctl(&c, &["targets", "unbind", "support/agent", "x"]);
    assert_eq!(bad.status.code(), Some(2), "refused before any request");
    let missing = canaryctl(&c, &["targets", "unbind", "support-agent", "agent_canary"]);
    assert_eq!(missing.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&missing.stderr).contains("not bound"));
}
