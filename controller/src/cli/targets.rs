//! `canaryctl targets`: each target's stable policy and route table, and which
//! Envoys follow which revision.

use super::client::Client;
use super::{fail, print_or, Failure};
use crate::units::now_ms;
use crate::view::TargetsView;
use clap::Subcommand;
use policy_canary::check::check_name;
use serde_json::{json, Value};

#[derive(Subcommand, Debug)]
pub enum TargetsCommand {
    /// The clusters a target may route to (an `operate` token's plans may name
    /// only these).
    #[command(after_help = "Example:\n  canaryctl targets clusters support-agent")]
    Clusters { target: String },
    /// Let a target route to clusters (needs an `admin` token).
    #[command(
        after_help = "Example:\n  canaryctl targets bind support-agent agent_stable agent_canary"
    )]
    Bind {
        target: String,
        #[arg(required = true)]
        clusters: Vec<String>,
    },
    /// Stop a target's future plans from naming clusters (needs an `admin` token;
    /// a rollout in progress keeps its clusters).
    #[command(after_help = "Example:\n  canaryctl targets unbind support-agent agent_old")]
    Unbind {
        target: String,
        #[arg(required = true)]
        clusters: Vec<String>,
    },
}

pub(super) async fn run(
    client: &Client,
    command: TargetsCommand,
    json: bool,
) -> Result<(), Failure> {
    let named =
        |field: &str, name: &str| check_name(field, name).map_err(|e| fail(2, e.to_string()));
    let v = match &command {
        TargetsCommand::Clusters { target } => {
            named("target", target)?;
            client
                .get(&format!("/v1/targets/{target}/clusters"))
                .await?
        }
        TargetsCommand::Bind { target, clusters } => {
            named("target", target)?;
            let body = json!({"clusters": clusters, "actor": client.actor});
            client
                .post(&format!("/v1/targets/{target}/clusters"), body.to_string())
                .await?
        }
        TargetsCommand::Unbind { target, clusters } => {
            named("target", target)?;
            let mut last = Value::Null;
            for cluster in clusters {
                named("cluster", cluster)?;
                last = client
                    .delete(&format!("/v1/targets/{target}/clusters/{cluster}"))
                    .await?;
            }
            last
        }
    };
    print_or(json, &v, || print_clusters(&v));
    Ok(())
}

fn print_clusters(v: &Value) {
    let target = v["target"].as_str().unwrap_or_default();
    let clusters = v["clusters"].as_array().cloned().unwrap_or_default();
    if clusters.is_empty() {
        println!("{target}: no cluster bound (only an admin's plan may route it)");
    }
    for c in &clusters {
        println!(
            "{target:<20} {:<24} bound by {} at {}",
            c["cluster"].as_str().unwrap_or_default(),
            c["bound_by"].as_str().unwrap_or_default(),
            crate::format::utc(c["bound_ms"].as_i64().unwrap_or_default())
        );
    }
}

pub(super) fn print_targets(v: &TargetsView) {
    for t in &v.targets.targets {
        let route = &t.route;
        let canary = route.canary.as_ref().map_or(String::new(), |c| {
            format!(", canary {} at {}bp", c.version, route.canary_weight_bp)
        });
        println!(
            "{:<20} stable {}{}  (revision {})",
            t.name, t.stable.version, canary, route.revision
        );
    }
    let envoys = &v.envoys;
    if envoys.envoys.is_empty() {
        println!(
            "no Envoy has polled this controller yet (revision {})",
            envoys.revision
        );
        return;
    }
    let in_sync = envoys
        .envoys
        .iter()
        .filter(|e| e.in_sync && !e.stale)
        .count();
    println!(
        "envoys: {in_sync} of {} hold the current revision {}",
        envoys.envoys.len(),
        envoys.revision
    );
    for e in &envoys.envoys {
        let state = if e.stale {
            "STALE"
        } else if e.in_sync {
            "in sync"
        } else {
            "BEHIND"
        };
        println!(
            "  {:<32} revision {:<6} {:<8} last poll {}s ago, {} open",
            e.id,
            e.revision,
            state,
            (now_ms() - e.last_poll_ms).max(0) / 1000,
            e.open_polls
        );
    }
}
