//! Envoy runtime driver: keeps every Envoy's runtime weights equal to the route
//! tables (`policy_canary.<target>.<cluster>` keys, as read by `weighted_clusters`
//! with `runtime_key_prefix: policy_canary.<target>`), and re-applies them when an
//! Envoy restarts and forgets them.

use crate::controller::Controller;
use policy_canary::config::RoutesDocument;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// How often the driver re-checks every Envoy even without a route change.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Runtime keys and values for every target: stable gets `10000 - w`, the canary
/// `w`, any other cluster a rollout of the target used 0.
pub fn desired_weights(
    doc: &RoutesDocument,
    known: &HashMap<String, Vec<String>>,
) -> BTreeMap<String, u16> {
    let mut keys = BTreeMap::new();
    for (target, table) in &doc.routes {
        let prefix = format!("policy_canary.{target}");
        for cluster in known.get(target).into_iter().flatten() {
            keys.insert(format!("{prefix}.{cluster}"), 0);
        }
        let canary = table.canary.as_ref().map_or(0, |_| table.canary_weight_bp);
        keys.insert(
            format!("{prefix}.{}", table.stable.cluster),
            10_000 - canary,
        );
        if let Some(c) = &table.canary {
            keys.insert(format!("{prefix}.{}", c.cluster), canary);
        }
    }
    keys
}

pub async fn run(controller: Arc<Controller>, admins: Vec<String>) {
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(3))
        .build()
        .unwrap_or_default();
    let mut revisions = controller.subscribe();
    let mut failing: HashMap<String, bool> = HashMap::new();
    loop {
        let known = {
            let c = Arc::clone(&controller);
            tokio::task::spawn_blocking(move || c.known_clusters())
                .await
                .ok()
                .and_then(Result::ok)
                .unwrap_or_default()
        };
        let wanted = desired_weights(&controller.routes(), &known);
        for admin in &admins {
            let result = sync_one(&client, admin, &wanted).await;
            let was_failing = failing
                .insert(admin.clone(), result.is_err())
                .unwrap_or(false);
            match result {
                Err(e) if !was_failing => {
                    tracing::warn!(admin, error = %e, "cannot set runtime weights")
                }
                Ok(true) => tracing::info!(admin, "runtime weights applied"),
                Ok(_) if was_failing => tracing::info!(admin, "runtime weights reachable again"),
                _ => {}
            }
        }
        tokio::select! {
            _ = revisions.changed() => {}
            _ = tokio::time::sleep(RECHECK) => {}
        }
    }
}

/// Sets the weights that differ; returns whether anything was written.
async fn sync_one(
    client: &reqwest::Client,
    admin: &str,
    wanted: &BTreeMap<String, u16>,
) -> Result<bool, String> {
    let admin = admin.trim_end_matches('/');
    let current: serde_json::Value = client
        .get(format!("{admin}/runtime"))
        .send()
        .await
        .map_err(|e| e.to_string())?
        .json()
        .await
        .map_err(|e| e.to_string())?;
    let differs: Vec<(&String, &u16)> = wanted
        .iter()
        .filter(|(key, value)| {
            current["entries"][key.as_str()]["final_value"].as_str()
                != Some(value.to_string().as_str())
        })
        .collect();
    if differs.is_empty() {
        return Ok(false);
    }
    let query: Vec<(String, String)> = differs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let response = client
        .post(format!("{admin}/runtime_modify"))
        .query(&query)
        .send()
        .await
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("runtime_modify answered {}", response.status()));
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_canary::config::{PolicyBackend, RouteTable};

    #[test]
    fn weights_for_a_rollout_and_after_promotion() {
        let backend = |v: &str, c: &str| PolicyBackend {
            version: v.into(),
            cluster: c.into(),
        };
        let mut doc = RoutesDocument::default();
        doc.routes.insert(
            "support-agent".into(),
            RouteTable {
                revision: 1,
                salt: "s".into(),
                canary_weight_bp: 500,
                stable: backend("v1", "agent_stable"),
                canary: Some(backend("v2", "agent_canary")),
                segments: vec![],
            },
        );
        let known = HashMap::from([(
            "support-agent".to_string(),
            vec!["agent_stable".to_string(), "agent_canary".to_string()],
        )]);
        let w = desired_weights(&doc, &known);
        assert_eq!(w["policy_canary.support-agent.agent_canary"], 500);
        assert_eq!(w["policy_canary.support-agent.agent_stable"], 9_500);
        let table = doc.routes.get_mut("support-agent").unwrap();
        table.stable = backend("v2", "agent_canary");
        table.canary = None;
        table.canary_weight_bp = 0;
        let w = desired_weights(&doc, &known);
        assert_eq!(w["policy_canary.support-agent.agent_canary"], 10_000);
        assert_eq!(w["policy_canary.support-agent.agent_stable"], 0);
    }
}
