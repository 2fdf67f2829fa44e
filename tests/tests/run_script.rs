//! `make run`'s own script (`scripts/run-demo.sh`), end to end on free ports: the
//! regression scenario rolls back by itself, the script prints the dashboard URL and
//! the live lines, exits with `rollout watch`'s code under `DEMO_EXIT=1`, and leaves
//! nothing listening behind it.

use policy_canary_e2e::*;
use std::os::unix::process::CommandExt;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The script in its own process group; on drop the whole group gets SIGTERM (as
/// Ctrl-C reaches a terminal's foreground group), then SIGKILL if it lingers.
struct Script(Child);

impl Drop for Script {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        // The group is usually gone already (the script cleaned up after itself).
        let kill = |signal: &str| {
            let _ = Command::new("kill")
                .args([signal, "--", &group])
                .stderr(Stdio::null())
                .status();
        };
        kill("-TERM");
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.0.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill("-KILL");
        let _ = self.0.wait();
    }
}

#[test]
fn make_run_regression_scenario_rolls_back_and_cleans_up() {
    let dir = TempDir::new("run-demo");
    let ports: Vec<u16> = (0..5).map(|_| free_port()).collect();
    let log = dir.path().join("out.log");
    let mut script = Script(
        Command::new("bash")
            .arg(repo_root().join("scripts/run-demo.sh"))
            .env("SCENARIO", "regression")
            .env("RATE", "300")
            .env("DEMO_EXIT", "1")
            .env("DEMO_DIR", dir.path().join("demo"))
            .env("CANARYCTL", canaryctl_bin())
            .env("ENVOY_BIN", envoy_bin())
            .env("CONTROLLER_PORT", ports[0].to_string())
            .env("STABLE_PORT", ports[1].to_string())
            .env("CANARY_PORT", ports[2].to_string())
            .env("ADMIN_PORT", ports[3].to_string())
            .env("LISTENER_PORT", ports[4].to_string())
            .env_remove("CANARYCTL_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(dir.path().join("err.log")).unwrap())
            .process_group(0)
            .spawn()
            .expect("run scripts/run-demo.sh"),
    );
    let started = Instant::now();
    let status = loop {
        if let Some(status) = script.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the demo did not end:\n{}\n{}",
            std::fs::read_to_string(&log).unwrap_or_default(),
            std::fs::read_to_string(dir.path().join("err.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = std::fs::read_to_string(&log).unwrap();
    assert_eq!(status.code(), Some(4), "not promoted:\n{out}");
    for expected in [
        "registered v2.4.0@sha256:",
        &format!("Dashboard:  http://127.0.0.1:{}/#token=", ports[0]),
        "start          pending -> progressing (stage 1)  canary 10%",
        "rollout #1 rolled_back: support-agent now serves v2.3.1",
        "stopped; logs and state are in",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    assert_refund_regression_breach(&out);
    // Everything the script started is gone.
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
            "something still listens on {port}"
        );
    }
}
