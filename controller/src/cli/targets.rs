//! `canaryctl targets`: each target's stable policy and route table.

use super::s;
use serde_json::Value;

pub(super) fn print_targets(v: &Value) {
    for t in v["targets"].as_array().into_iter().flatten() {
        let route = &t["route"];
        let canary = route["canary"]["version"]
            .as_str()
            .map_or(String::new(), |c| {
                format!(", canary {c} at {}bp", route["canary_weight_bp"])
            });
        println!(
            "{:<20} stable {}{}  (revision {})",
            s(&t["name"]),
            s(&t["stable"]["version"]),
            canary,
            route["revision"]
        );
    }
}
