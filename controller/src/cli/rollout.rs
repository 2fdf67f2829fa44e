//! `canaryctl rollout …`: start, list, status, steer and audit rollouts.

use super::client::Client;
use super::{print_or, read_file, s, watch, Failure, RolloutCommand};
use crate::format::{count, number, utc};
use serde_json::Value;
use std::time::Duration;

pub(super) async fn run(
    client: &Client,
    command: RolloutCommand,
    json: bool,
) -> Result<(), Failure> {
    match command {
        RolloutCommand::Start { plan } => {
            let text = read_file(&plan)?;
            let v = client.post("/v1/rollouts", text).await?;
            print_or(json, &v, || print_rollout(&v));
            Ok(())
        }
        RolloutCommand::List => {
            let v = client.get("/v1/rollouts").await?;
            print_or(json, &v, || {
                for r in v["rollouts"].as_array().into_iter().flatten() {
                    println!(
                        "#{:<4} {:<20} {} -> {}  {} stage {}/{} at {}",
                        r["id"],
                        s(&r["target"]),
                        s(&r["stable"]["version"]),
                        s(&r["canary"]["version"]),
                        s(&r["phase"]),
                        r["stage"],
                        r["stages"],
                        s(&r["weight"])
                    );
                }
            });
            Ok(())
        }
        RolloutCommand::Status { id, target, watch } => {
            let id = client.resolve(id, target.as_deref(), true).await?;
            loop {
                let v = client.rollout_with_analysis(id).await?;
                print_or(json, &v, || {
                    print_rollout(&v);
                    print_analysis(&v["analysis"]);
                });
                let active = crate::format::is_active(&v);
                if !watch || !active {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !json {
                    println!();
                }
            }
        }
        RolloutCommand::Watch { id, target } => {
            let id = client.resolve(id, target.as_deref(), true).await?;
            watch::watch(client, id, json).await
        }
        RolloutCommand::Pause(a) => client.act(a, "pause", false, json).await,
        RolloutCommand::Resume(a) => client.act(a, "resume", false, json).await,
        RolloutCommand::Promote { act, to_end } => client.act(act, "promote", to_end, json).await,
        RolloutCommand::Rollback(a) => client.act(a, "rollback", false, json).await,
        RolloutCommand::Abort(a) => client.act(a, "abort", false, json).await,
        RolloutCommand::Audit { id, all } => {
            let path = if all {
                "/v1/audit".to_string()
            } else {
                let id = client.resolve(id, None, true).await?;
                format!("/v1/audit?rollout={id}")
            };
            let v = client.get(&path).await?;
            print_or(json, &v, || {
                for e in v["audit"].as_array().into_iter().flatten() {
                    let rollout = e["rollout_id"]
                        .as_i64()
                        .map_or(String::new(), |id| format!("#{id} "));
                    let change = match (e["from"].as_str(), e["to"].as_str()) {
                        (Some(f), Some(t)) => format!("{f} -> {t}  "),
                        _ => String::new(),
                    };
                    println!(
                        "{}  rev {:<4} {}{:<16} {}by {}: {}",
                        utc(e["at_ms"].as_i64().unwrap_or(0)),
                        e["revision"],
                        rollout,
                        s(&e["action"]),
                        change,
                        s(&e["actor"]),
                        s(&e["reason"])
                    );
                }
            });
            Ok(())
        }
    }
}

pub(super) fn print_rollout(v: &Value) {
    println!(
        "rollout #{}  {}  {} -> {}",
        v["id"],
        s(&v["target"]),
        s(&v["stable"]["version"]),
        s(&v["canary"]["version"])
    );
    let stage_line = match s(&v["phase"]) {
        "progressing" | "paused" => format!(
            "{}, stage {} of {} ({}), canary weight now {}",
            s(&v["phase"]),
            v["stage"],
            v["stages"],
            s(&v["stage_weight"]),
            s(&v["weight"])
        ),
        other => other.to_string(),
    };
    println!("  state     {stage_line}");
    let started = v["stage_started_ms"].as_i64().unwrap_or(0);
    let ago = (crate::controller::now_ms() - started).max(0) / 1000;
    println!("  since     {} ({ago}s ago)", utc(started));
    println!(
        "  salt      {}   route revision {}",
        s(&v["salt"]),
        v["revision"]
    );
}

/// Stable vs canary, metric by metric, with the verdict and sample sizes.
fn print_analysis(a: &Value) {
    if a.is_null() {
        println!("  analysis  none (start the controller with --envoy-admin to compare metrics)");
        return;
    }
    // An ended rollout shows its last decision's comparison (no running count then).
    let failures = a["consecutive_failures"]
        .as_u64()
        .map_or(String::new(), |n| format!(", failed checks in a row {n}"));
    let when = a["decided_ms"].as_i64().map_or(String::new(), |at| {
        format!("  at the last decision, {}", utc(at))
    });
    println!(
        "  requests  stable {}  canary {}   (alpha per gate {:.2e}{failures}){when}",
        count(&a["stable_requests"]),
        count(&a["canary_requests"]),
        a["alpha"].as_f64().unwrap_or(0.0),
    );
    println!(
        "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  verdict",
        "metric", "stable", "canary", "change", "threshold", "n stable/canary"
    );
    let num = number;
    for c in a["comparisons"].as_array().into_iter().flatten() {
        println!(
            "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  {}",
            s(&c["metric"]),
            num(&c["stable"]),
            num(&c["canary"]),
            s(&c["change"]),
            s(&c["threshold"]),
            format!("{}/{}", count(&c["n_stable"]), count(&c["n_canary"])),
            s(&c["verdict"])
        );
    }
    let safety = &a["safety"];
    println!(
        "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  {}",
        "safety_violations",
        count(&safety["stable"]),
        count(&safety["canary"]),
        "",
        "any",
        "",
        s(&safety["verdict"])
    );
    if crate::analysis::telemetry_missing(a) {
        println!("  {}", crate::analysis::TELEMETRY_MISSING);
    }
}
