//! What users copy into their own setup, checked with real tools: the compose file
//! with Debian's `docker-compose config` (no engine needed) and every Envoy config
//! it mounts with `envoy --mode validate`; the Istio example's plugin configuration
//! with the filter's own parser; the Prometheus config and rules with `promtool`.

use policy_canary::config::PluginConfig;
use policy_canary_e2e::*;
use serde_json::Value;
use std::path::Path;
use std::process::Command;

fn run(program: &str, args: &[&str], dir: &Path) -> (bool, String) {
    let output = Command::new(program)
        .args(args)
        .current_dir(dir)
        .env_remove("PLAN")
        .env_remove("CANARY_POLICY")
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} ({e}): `make test` installs it (Makefile test-tools)")
        });
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

fn yaml(path: &Path) -> Value {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn the_compose_file_parses_and_mounts_configs_that_validate() {
    let envoy_dir = repo_root().join("envoy");
    let (ok, text) = run(
        "docker-compose",
        &["-f", "docker-compose.yaml", "config", "-q"],
        &envoy_dir,
    );
    assert!(ok, "docker-compose config refused the file:\n{text}");
    // The parser is a real check: a broken copy is refused.
    let broken = std::fs::read_to_string(envoy_dir.join("docker-compose.yaml"))
        .unwrap()
        .replacen("condition: service_healthy", "condition: whenever", 1);
    let path = envoy_dir.join(format!(".compose-check-{}.yaml", std::process::id()));
    std::fs::write(&path, broken).unwrap();
    let name = path.file_name().unwrap().to_str().unwrap().to_string();
    let (ok, _) = run("docker-compose", &["-f", &name, "config", "-q"], &envoy_dir);
    std::fs::remove_file(&path).unwrap();
    assert!(!ok, "docker-compose accepted a broken file");

    let compose = yaml(&envoy_dir.join("docker-compose.yaml"));
    let envoy = &compose["services"]["envoy"];
    // The official image, the same Envoy version the tests run.
    let makefile = std::fs::read_to_string(repo_root().join("Makefile")).unwrap();
    let version = makefile
        .lines()
        .find_map(|l| l.strip_prefix("ENVOY_VERSION ?= "))
        .unwrap()
        .trim();
    // Images are variables (the compose test swaps in local builds) defaulting
    // to the official ones.
    assert_eq!(
        envoy["image"].as_str().unwrap(),
        format!("${{ENVOY_IMAGE:-envoyproxy/envoy:v{version}}}")
    );
    for (name, service) in compose["services"].as_object().unwrap() {
        if name != "envoy" {
            assert_eq!(
                service["image"], "${CANARYCTL_IMAGE:-policy-canary/canaryctl:dev}",
                "{name}"
            );
        }
    }
    let (_, reported) = run(envoy_bin().to_str().unwrap(), &["--version"], &envoy_dir);
    assert!(reported.contains(&format!("/{version}/")), "{reported}");

    // Every mounted Envoy config validates, and the .wasm lands where it says.
    let working_dir = envoy["working_dir"].as_str().unwrap();
    let mut validated = 0;
    let mut wasm_mounted = false;
    for volume in envoy["volumes"].as_array().unwrap() {
        let volume = volume.as_str().unwrap();
        let mut parts = volume.split(':');
        let (host, container) = (parts.next().unwrap(), parts.next().unwrap());
        if !host.starts_with('.') {
            // A named volume (the tokens the `tokens` service makes).
            assert!(
                compose["volumes"].get(host).is_some(),
                "{host} is not a declared volume"
            );
            continue;
        }
        let host = envoy_dir.join(host);
        assert!(host.exists(), "{} is not there", host.display());
        if host.extension().is_some_and(|e| e == "yaml") {
            let config = std::fs::read_to_string(&host).unwrap();
            for filename in config
                .lines()
                .filter_map(|l| l.split("filename: ").nth(1))
                .map(|f| f.trim_end_matches(['}', ' ']))
            {
                assert_eq!(
                    format!("{working_dir}/{filename}"),
                    "/srv/policy-canary/target/policy_canary.wasm",
                    "the config's .wasm path, from the container's working directory"
                );
            }
            let (ok, text) = run(
                envoy_bin().to_str().unwrap(),
                &["--mode", "validate", "-c", host.to_str().unwrap()],
                &repo_root(),
            );
            assert!(ok, "{} does not validate:\n{text}", host.display());
            validated += 1;
        }
        if container.ends_with(".wasm") {
            assert_eq!(container, "/srv/policy-canary/target/policy_canary.wasm");
            assert_eq!(
                host.canonicalize().unwrap(),
                wasm_path().canonicalize().unwrap()
            );
            wasm_mounted = true;
        }
    }
    assert!(validated >= 1 && wasm_mounted);

    // The controller, agents and setup come from the repo's Dockerfile, and the
    // files they name are in the image.
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains("COPY envoy/policies ") && dockerfile.contains("COPY envoy/plans ")
    );
    assert_eq!(
        compose["services"]["controller"]["build"]["dockerfile"],
        "Dockerfile"
    );
    let setup = serde_json::to_string(&compose["services"]["setup"]).unwrap();
    for file in [
        "envoy/policies/v2.3.1.yaml",
        "envoy/policies/v2.4.1.yaml",
        "envoy/plans/demo.yaml",
    ] {
        assert!(setup.contains(file), "setup names {file}");
        assert!(repo_root().join(file).exists(), "{file}");
    }
}

/// The YAML documents of a shipped manifest, and a lookup by kind (and name).
fn documents(path: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(repo_root().join(path)).unwrap();
    serde_yaml_ng::Deserializer::from_str(&text)
        .map(|d| serde::Deserialize::deserialize(d).unwrap())
        .collect()
}

fn find<'a>(documents: &'a [Value], kind: &str, name: Option<&str>) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && name.is_none_or(|n| d["metadata"]["name"] == n))
        .unwrap_or_else(|| panic!("no {kind} {name:?}"))
}

/// The stats tags of the plain Envoy config (envoy/envoy.yaml).
fn shipped_stats_tags() -> Value {
    documents("envoy/envoy.yaml")[0]["stats_config"]["stats_tags"].clone()
}

/// A mesh's plugin configuration, through the filter's own parser: controller mode
/// with filter-side sync, stable alone until the controller answers.
fn mesh_plugin_config(config: &Value, sync_cluster: &str) -> PluginConfig {
    let config = PluginConfig::from_json(&serde_json::to_vec(config).unwrap())
        .unwrap_or_else(|e| panic!("the filter refuses the plugin configuration: {e}"));
    let sync = config
        .sync
        .as_ref()
        .expect("a sync block (controller mode)");
    assert_eq!(sync.cluster, sync_cluster);
    assert!(
        config.route.canary.is_none(),
        "stable alone until the controller answers"
    );
    assert!(
        config.force.token_sha256.is_some(),
        "an edge forces only with a token"
    );
    config
}

#[test]
fn the_istio_example_follows_the_controller_and_routes_by_its_cluster_header() {
    let documents = documents("envoy/istio/policy-canary.yaml");
    let plugin = find(&documents, "WasmPlugin", None);
    let config = mesh_plugin_config(
        &plugin["spec"]["pluginConfig"],
        "outbound|7070||canaryctl.policy-canary.svc.cluster.local",
    );
    assert_eq!(plugin["spec"]["vmConfig"]["env"][0]["name"], "HOSTNAME");
    assert_eq!(plugin["spec"]["vmConfig"]["env"][0]["valueFrom"], "HOST");
    assert!(
        config.sync.as_ref().unwrap().evidence_ms > 0,
        "reports evidence"
    );
    // The bootstrap override carries the plain Envoy config's stats tags.
    let bootstrap = find(&documents, "ConfigMap", Some("policy-canary-bootstrap"));
    let merged: Value = serde_json::from_str(
        bootstrap["data"]["custom_bootstrap.json"]
            .as_str()
            .expect("custom_bootstrap.json"),
    )
    .expect("JSON");
    assert_eq!(merged["stats_config"]["stats_tags"], shipped_stats_tags());
    // Every route sends a cluster name to the subset of that name; stable catches the rest.
    let subsets: Vec<&str> = find(&documents, "DestinationRule", None)["spec"]["subsets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    let routes = find(&documents, "VirtualService", None)["spec"]["http"]
        .as_array()
        .unwrap();
    for route in routes {
        let subset = route["route"][0]["destination"]["subset"].as_str().unwrap();
        assert!(subsets.contains(&subset), "{subset}");
        if let Some(cluster) =
            route["match"][0]["headers"][config.cluster_header.as_str()]["exact"].as_str()
        {
            assert_eq!(cluster, subset);
        }
    }
    let last = routes.last().unwrap();
    assert_eq!(last["match"], Value::Null, "a catch-all route");
    assert_eq!(
        last["route"][0]["destination"]["subset"],
        config.route.stable.cluster.as_str()
    );
}

#[test]
fn the_envoy_gateway_example_follows_the_controller_and_routes_by_its_cluster_header() {
    let documents = documents("envoy/envoy-gateway/policy-canary.yaml");
    let policy = find(&documents, "EnvoyExtensionPolicy", None);
    let wasm = &policy["spec"]["wasm"][0];
    let config = mesh_plugin_config(&wasm["config"], "httproute/agents/canaryctl/rule/0");
    assert_eq!(wasm["rootID"], "policy_canary");
    assert_eq!(wasm["env"]["hostKeys"][0], "HOSTNAME");
    assert!(
        config.sync.as_ref().unwrap().evidence_ms > 0,
        "reports evidence"
    );
    // The EnvoyProxy gives the token and merges the plain Envoy config's stats tags.
    let proxy = find(&documents, "EnvoyProxy", Some("policy-canary"));
    assert_eq!(proxy["spec"]["bootstrap"]["type"], "Merge");
    let merged: Value =
        serde_yaml_ng::from_str(proxy["spec"]["bootstrap"]["value"].as_str().unwrap()).unwrap();
    assert_eq!(merged["stats_config"]["stats_tags"], shipped_stats_tags());
    let env = &proxy["spec"]["provider"]["kubernetes"]["envoyDeployment"]["container"]["env"][0];
    assert_eq!(env["name"], wasm["env"]["hostKeys"][1]);
    // The sync cluster is the one Envoy Gateway makes for the canaryctl route.
    let controller_route = find(&documents, "HTTPRoute", Some("canaryctl"));
    let namespace = controller_route["metadata"]["namespace"].as_str().unwrap();
    assert_eq!(
        config.sync.as_ref().unwrap().cluster,
        format!("httproute/{namespace}/canaryctl/rule/0")
    );
    assert_eq!(
        controller_route["spec"]["hostnames"][0],
        config.sync.as_ref().unwrap().authority.as_str()
    );
    // Its one rule passes polls and evidence reports, nothing else of the API.
    let paths: Vec<&str> = controller_route["spec"]["rules"][0]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["path"]["value"].as_str().unwrap())
        .collect();
    assert_eq!(
        paths,
        [
            config.sync.as_ref().unwrap().path.as_str(),
            config.sync.as_ref().unwrap().evidence_path.as_str()
        ]
    );
    let agents = find(&documents, "HTTPRoute", Some("support-agent"));
    let rules = agents["spec"]["rules"].as_array().unwrap();
    for rule in rules {
        let backend = rule["backendRefs"][0]["name"].as_str().unwrap();
        if let Some(header) = rule["matches"][0]["headers"][0].as_object() {
            assert_eq!(header["name"], config.cluster_header.as_str());
            assert_eq!(header["value"], backend);
        }
    }
    assert_eq!(
        rules.last().unwrap()["backendRefs"][0]["name"],
        config.route.stable.cluster.as_str()
    );
}

#[test]
fn the_prometheus_config_and_rules_pass_promtool() {
    let dir = repo_root().join("envoy/prometheus");
    // The config scrapes the controller with a `read` token from a file beside it,
    // which a deployment provides: check a copy that has one.
    let copy = TempDir::new("prometheus");
    for file in ["prometheus.yml", "rules.yml", "alerts.yml"] {
        std::fs::copy(dir.join(file), copy.path().join(file)).unwrap();
    }
    std::fs::write(copy.path().join("canaryctl-read.token"), "pct_example\n").unwrap();
    let (ok, text) = run(
        "promtool",
        &["check", "config", "prometheus.yml"],
        copy.path(),
    );
    assert!(ok, "{text}");
    let (ok, text) = run("promtool", &["test", "rules", "rules_test.yml"], &dir);
    assert!(ok, "{text}");
    let (ok, text) = run("promtool", &["check", "rules", "alerts.yml"], &dir);
    assert!(ok, "{text}");
    let (ok, text) = run("promtool", &["test", "rules", "alerts_test.yml"], &dir);
    assert!(ok, "{text}");
}

/// The Dockerfile's Rust is the workspace's `rust-version`, and that is at least
/// what every locked dependency declares it needs.
#[test]
fn the_dockerfile_toolchain_builds_the_locked_dependencies() {
    let manifest = std::fs::read_to_string(repo_root().join("Cargo.toml")).unwrap();
    let declared = manifest
        .lines()
        .find_map(|l| l.strip_prefix("rust-version = "))
        .unwrap()
        .trim_matches('"')
        .to_string();
    let dockerfile = std::fs::read_to_string(repo_root().join("Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(&format!("FROM rust:{declared}-")),
        "the Dockerfile should build with Rust {declared}"
    );
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(repo_root())
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .unwrap();
    assert!(output.status.success(), "{output:?}");
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    let version = |v: &str| -> Vec<u32> {
        v.split('.')
            .map(|p| p.parse().unwrap_or(0))
            .chain([0, 0])
            .take(3)
            .collect()
    };
    for package in metadata["packages"].as_array().unwrap() {
        if let Some(needed) = package["rust_version"].as_str() {
            assert!(
                version(needed) <= version(&declared),
                "{} {} needs Rust {needed}, the workspace declares {declared}",
                package["name"],
                package["version"]
            );
        }
    }
}

fn kubernetes_validate(files: &[std::path::PathBuf]) -> (bool, String) {
    let tool = repo_root().join(".venv/bin/kubernetes-validate");
    let mut args = vec!["--strict"];
    args.extend(files.iter().filter_map(|f| f.to_str()));
    run(&tool.to_string_lossy(), &args, &repo_root())
}

/// deploy/kubernetes: every resource the kustomization lists validates offline
/// against Kubernetes' schemas, and says what the design needs: one replica,
/// recreated, state on the claim, probes on /healthz, evidence from Prometheus.
#[test]
fn the_kubernetes_manifests_validate_and_keep_one_controller() {
    let dir = repo_root().join("deploy/kubernetes");
    let kustomization: Value =
        serde_yaml_ng::from_str(&std::fs::read_to_string(dir.join("kustomization.yaml")).unwrap())
            .unwrap();
    let files: Vec<std::path::PathBuf> = kustomization["resources"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| dir.join(r.as_str().unwrap()))
        .collect();
    assert!(files.len() >= 5);
    let (ok, text) = kubernetes_validate(&files);
    assert!(ok, "{text}");
    assert_eq!(text.matches(" passed ").count(), files.len(), "{text}");

    let all: Vec<Value> = files
        .iter()
        .flat_map(|f| documents(f.strip_prefix(repo_root()).unwrap().to_str().unwrap()))
        .collect();
    let deployment = find(&all, "Deployment", Some("canaryctl"));
    assert_eq!(deployment["spec"]["replicas"], 1);
    assert_eq!(deployment["spec"]["strategy"]["type"], "Recreate");
    let pod = &deployment["spec"]["template"]["spec"];
    let container = &pod["containers"][0];
    let args: Vec<&str> = container["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "serve");
    assert!(args.contains(&"--evidence=sync"), "{args:?}");
    let state_dir = args
        .iter()
        .find_map(|a| a.strip_prefix("--state-dir="))
        .expect("--state-dir");
    let claim = find(&all, "PersistentVolumeClaim", None)["metadata"]["name"].clone();
    let volume = pod["volumes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["persistentVolumeClaim"]["claimName"] == claim)
        .expect("the claim is mounted");
    assert!(container["volumeMounts"]
        .as_array()
        .unwrap()
        .iter()
        .any(|m| m["name"] == volume["name"] && m["mountPath"] == state_dir));
    for probe in ["readinessProbe", "livenessProbe"] {
        assert_eq!(container[probe]["httpGet"]["path"], "/healthz", "{probe}");
    }
    let token = &container["env"][0]["valueFrom"]["secretKeyRef"];
    let secret = find(&all, "Secret", None);
    assert_eq!(token["name"], secret["metadata"]["name"]);
    // Istio's outbound cluster in envoy/istio names this Service and port.
    let service = find(&all, "Service", Some("canaryctl"));
    assert_eq!(service["spec"]["ports"][0]["port"], 7070);
    assert_eq!(service["metadata"]["namespace"], "policy-canary");

    // The check can fail: a Deployment with a misspelt field does not validate.
    let broken = tempfile_with(
        &std::fs::read_to_string(dir.join("deployment.yaml"))
            .unwrap()
            .replace("replicas: 1", "replica: 1"),
    );
    let (ok, text) = kubernetes_validate(&[broken.path().join("deployment.yaml")]);
    assert!(!ok, "a broken manifest passed: {text}");
}

/// A scratch directory holding `deployment.yaml` with `text`.
fn tempfile_with(text: &str) -> TempDir {
    let dir = TempDir::new("k8s");
    std::fs::write(dir.path().join("deployment.yaml"), text).unwrap();
    dir
}
