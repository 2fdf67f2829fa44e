//! The demo scripts themselves, end to end on free ports. `make run`'s
//! (`scripts/run-demo.sh`): the regression scenario rolls back by itself, the script
//! prints the dashboard URL and the live lines, exits with `rollout watch`'s code
//! under `DEMO_EXIT=1`, and leaves nothing listening behind it. `make run-static`'s
//! (`scripts/run-static.sh`): every command it prints works as it says. And the
//! README still quotes what `scripts/refund-share.py` prints.

use policy_canary_e2e::*;
use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A script of `scripts/` in its own process group, its output in files. On drop the
/// whole group gets SIGTERM (as Ctrl-C reaches a terminal's foreground group), then
/// SIGKILL if it lingers.
struct Script {
    child: Child,
    out: PathBuf,
    err: PathBuf,
}

impl Script {
    fn start(name: &str, dir: &Path, env: &[(&str, OsString)]) -> Script {
        let (out, err) = (dir.join("out.log"), dir.join("err.log"));
        let child = Command::new("bash")
            .arg(repo_root().join("scripts").join(name))
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env_remove("CANARYCTL_TOKEN")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&out).unwrap())
            .stderr(std::fs::File::create(&err).unwrap())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|e| panic!("run scripts/{name}: {e}"));
        Script { child, out, err }
    }

    fn stdout(&self) -> String {
        std::fs::read_to_string(&self.out).unwrap_or_default()
    }

    /// Both outputs, for failure messages.
    fn outputs(&self) -> String {
        format!(
            "{}\n{}",
            self.stdout(),
            std::fs::read_to_string(&self.err).unwrap_or_default()
        )
    }

    fn exited(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }
}

impl Drop for Script {
    fn drop(&mut self) {
        let group = format!("-{}", self.child.id());
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
            if self.exited().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        kill("-KILL");
        let _ = self.child.wait();
    }
}

/// The ports `scripts/run-demo.sh` takes from the environment (run-static.sh: the
/// last four).
const DEMO_PORTS: [&str; 5] = [
    "CONTROLLER_PORT",
    "STABLE_PORT",
    "CANARY_PORT",
    "ADMIN_PORT",
    "LISTENER_PORT",
];

fn port_env(names: &[&'static str]) -> (Vec<u16>, Vec<(&'static str, OsString)>) {
    let ports: Vec<u16> = names.iter().map(|_| free_port()).collect();
    let env = names
        .iter()
        .zip(&ports)
        .map(|(name, port)| (*name, port.to_string().into()))
        .collect();
    (ports, env)
}

fn assert_nothing_listens(ports: &[u16]) {
    for port in ports {
        assert!(
            std::net::TcpStream::connect(("127.0.0.1", *port)).is_err(),
            "something still listens on {port}"
        );
    }
}

#[test]
fn make_run_regression_scenario_rolls_back_and_cleans_up() {
    let dir = TempDir::new("run-demo");
    let (ports, mut env) = port_env(&DEMO_PORTS);
    env.extend([
        ("SCENARIO", "regression".into()),
        ("RATE", "300".into()),
        ("DEMO_EXIT", "1".into()),
        ("DEMO_DIR", dir.path().join("demo").into()),
        ("CANARYCTL", canaryctl_bin().into()),
        ("ENVOY_BIN", envoy_bin().into()),
    ]);
    let mut script = Script::start("run-demo.sh", dir.path(), &env);
    let started = Instant::now();
    let status = loop {
        if let Some(status) = script.exited() {
            break status;
        }
        assert!(
            started.elapsed() < Duration::from_secs(240),
            "the demo did not end:\n{}",
            script.outputs()
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let out = script.stdout();
    assert_eq!(status.code(), Some(4), "not promoted:\n{out}");
    // No secret on the terminal: the dashboard is signed in by pasting a token.
    assert!(
        !out.contains("pct_") && !out.contains("#token"),
        "make run printed a token:\n{out}"
    );
    for expected in [
        "registered v2.4.0@sha256:",
        &format!(
            "Dashboard:  http://127.0.0.1:{}/   sign in by pasting a token",
            ports[0]
        ),
        "start          pending -> progressing (stage 1)  canary 10%",
        // The demo operates with a scoped token; the audit names it.
        "by demo (token demo-operator): rollout started",
        "rollout #1 rolled_back: support-agent now serves v2.3.1",
        "stopped; logs and state are in",
    ] {
        assert!(out.contains(expected), "no {expected:?} in:\n{out}");
    }
    assert_refund_regression_breach(&out);
    // Everything the script started is gone.
    assert_nothing_listens(&ports);
}

/// Runs one command line as a person would paste it; its standard output.
fn paste(line: &str) -> String {
    let out = Command::new("bash")
        .args(["-c", line])
        .stdin(Stdio::null())
        .output()
        .expect("run bash");
    assert!(out.status.success(), "{line}: {out:?}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn make_run_static_prints_commands_that_work() {
    let dir = TempDir::new("run-static");
    let (ports, mut env) = port_env(&DEMO_PORTS[1..]);
    env.extend([
        ("BACKEND", env!("CARGO_BIN_EXE_test-backend").into()),
        ("ENVOY_BIN", envoy_bin().into()),
        ("DEMO_DIR", dir.path().join("static").into()),
    ]);
    let mut script = Script::start("run-static.sh", dir.path(), &env);
    let out = wait_for("the script's commands", Duration::from_secs(60), || {
        if let Some(status) = script.exited() {
            panic!("the script ended ({status}):\n{}", script.outputs());
        }
        let out = script.stdout();
        out.contains("Ctrl-C stops Envoy and the backends.")
            .then_some(out)
    });
    let commands: Vec<&str> = out
        .lines()
        .filter(|l| l.starts_with("  for ") || l.starts_with("  curl "))
        .collect();
    assert_eq!(commands.len(), 6, "{out}");
    for command in &commands {
        assert!(
            command.contains(&format!("127.0.0.1:{}", ports[3]))
                || command.contains(&format!("127.0.0.1:{}", ports[2])),
            "{command}"
        );
    }

    // The split: 1000 sessions, about 10% on the canary.
    let split = paste(commands[0]);
    let count = |backend: &str| -> u32 {
        split
            .lines()
            .find(|l| l.contains(&format!("\"backend\":\"{backend}\"")))
            .and_then(|l| l.split_whitespace().next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    };
    assert_eq!(count("stable") + count("canary"), 1000, "{split}");
    assert!((60..=140).contains(&count("canary")), "{split}");
    // Stickiness: five answers from one backend.
    let sticky_out = paste(commands[1]);
    let sticky: Vec<&str> = sticky_out.lines().collect();
    assert_eq!(sticky.len(), 5);
    assert!(sticky.iter().all(|l| *l == sticky[0]), "{sticky:?}");
    // Forcing and the internal segment.
    assert_eq!(paste(commands[2]).trim(), "\"backend\":\"canary\"");
    assert_eq!(paste(commands[3]).trim(), "\"backend\":\"canary\"");
    // Telemetry, then the stats that count it.
    assert_eq!(paste(commands[4]), "");
    // Counts reach Envoy every 250 ms: every request sent above, one task completed.
    let sum = |stats: &str, name: &str| -> f64 {
        stats
            .lines()
            .filter(|l| l.starts_with(&format!("policy_canary_{name}{{")))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    let stats = wait_for("the counts in Envoy", Duration::from_secs(10), || {
        let stats = paste(commands[5]);
        // A worker's flush adds its counters one by one: wait for the last of them too.
        (sum(&stats, "rq_total") == 1008.0 && sum(&stats, "tasks_completed") == 1.0)
            .then_some(stats)
    });
    assert!(
        stats.lines().all(|l| l.starts_with("policy_canary_")),
        "{stats}"
    );
    assert_eq!(sum(&stats, "tasks_completed"), 1.0, "{stats}");
    assert_eq!(sum(&stats, "rq_forced"), 1.0, "{stats}");

    let stopped = {
        drop(script);
        std::fs::read_to_string(dir.path().join("out.log")).unwrap_or_default()
    };
    assert!(stopped.ends_with("stopped\n"), "{stopped}");
    assert_nothing_listens(&ports);
}

#[test]
fn a_taken_port_is_named_and_nothing_starts() {
    let dir = TempDir::new("run-taken");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    for (script, port_name) in [
        ("run-static.sh", "ADMIN_PORT"),
        ("run-demo.sh", "LISTENER_PORT"),
    ] {
        let (ports, mut env) = port_env(&DEMO_PORTS);
        env.retain(|(name, _)| *name != port_name);
        env.extend([
            (port_name, taken_port.to_string().into()),
            ("DEMO_DIR", dir.path().join(script).into()),
        ]);
        let mut script = Script::start(script, dir.path(), &env);
        let status = wait_for("the script to refuse", Duration::from_secs(30), || {
            script.exited()
        });
        assert_eq!(status.code(), Some(1), "{}", script.outputs());
        assert!(
            script
                .outputs()
                .contains(&format!("port {taken_port} on 127.0.0.1 is taken")),
            "{}",
            script.outputs()
        );
        assert_nothing_listens(&ports);
    }
}

/// The README quotes `scripts/refund-share.py`'s range; it must still print it.
#[test]
fn the_readme_quotes_the_refund_share_script() {
    let out = Command::new("python3")
        .arg(repo_root().join("scripts/refund-share.py"))
        .output()
        .expect("run python3");
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    let percent = |key: &str| -> f64 {
        let at = text.find(&format!("{key} ")).unwrap() + key.len() + 1;
        text[at..].split('%').next().unwrap().parse().unwrap()
    };
    let quoted = format!(
        "{:.0}% to {:.0}% of the canary's sessions",
        percent("min"),
        percent("max")
    );
    let readme = std::fs::read_to_string(repo_root().join("README.md")).unwrap();
    let readme = readme.split_whitespace().collect::<Vec<_>>().join(" ");
    assert!(
        readme.contains(&quoted),
        "README lacks {quoted:?}; the script printed:\n{text}"
    );
}
