//! Shipped Envoy configs validate; bad plugin configurations are refused with a
//! log line that names the field.

use policy_canary_e2e::*;
use std::process::Command;

fn validate(config_path: &std::path::Path) -> (bool, String) {
    let output = Command::new(envoy_bin())
        .current_dir(repo_root())
        .args(["--mode", "validate", "-c"])
        .arg(config_path)
        .output()
        .expect("run envoy --mode validate");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    (output.status.success(), text)
}

#[test]
fn every_shipped_envoy_config_validates() {
    wasm_path();
    let mut checked = 0;
    for entry in std::fs::read_dir(repo_root().join("envoy")).unwrap() {
        let path = entry.unwrap().path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        if !name.starts_with("envoy") || !name.ends_with(".yaml") {
            continue;
        }
        let (ok, text) = validate(&path);
        assert!(ok, "{name} does not validate:\n{text}");
        // Every wasm plugin says what Envoy does if its VM fails: reload it.
        let config = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            config.matches("failure_policy: FAIL_RELOAD").count(),
            config.matches("root_id:").count(),
            "{name}: a wasm plugin without failure_policy"
        );
        checked += 1;
    }
    assert!(checked >= 2, "only {checked} configs found");
}

#[test]
fn envoy_refuses_a_bad_plugin_configuration_and_says_why() {
    let base = shipped_config("envoy-static.yaml", 1, 2);
    let cases = [
        (
            r#"{"target": "support-agent", "route": {"salt": "s", "canary_weight_bp": 20000,
 "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"}}}"#,
            "route.canary_weight_bp: must be at most 10000",
        ),
        (
            r#"{"target": "support-agent", "sesion": {}, "route": {"salt": "s", "stable": {"version": "v1", "cluster": "a"}}}"#,
            "sesion: unknown field",
        ),
        (r#"{"target": "support-agent"}"#, "route: missing field"),
        ("not json", "not valid JSON"),
    ];
    for (plugin, message) in cases {
        let config = with_plugin_config(&base, plugin);
        let log = match Envoy::try_start(&config, 1) {
            Ok(_) => panic!("Envoy accepted the plugin configuration {plugin}"),
            Err(log) => log,
        };
        let line = log
            .lines()
            .find(|l| l.contains("policy_canary: invalid plugin configuration"))
            .unwrap_or_else(|| panic!("no explanation in Envoy's log for {plugin}:\n{log}"));
        assert!(line.contains(message), "`{line}` should say `{message}`");
    }
}

#[test]
fn validate_mode_catches_a_bad_plugin_configuration() {
    let dir = TempDir::new("validate");
    let config = with_plugin_config(
        &shipped_config("envoy-static.yaml", 1, 2),
        r#"{"target": "support-agent", "route": {"salt": "s", "stable": {"version": "v1", "cluster": "bad cluster"}}}"#,
    );
    let path = dir.path().join("bad.yaml");
    std::fs::write(&path, config).unwrap();
    let (ok, text) = validate(&path);
    assert!(!ok, "validate accepted a bad plugin configuration");
    assert!(text.contains("route.stable.cluster:"), "{text}");
}
