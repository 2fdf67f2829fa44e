//! Envoy runtime driver: keeps every Envoy's runtime weights equal to the route
//! tables (`policy_canary.<target>.<cluster>` keys, as read by `weighted_clusters`
//! with `runtime_key_prefix: policy_canary.<target>`), and re-applies them when an
//! Envoy restarts and forgets them.

use crate::controller::Controller;
use crate::envoy::admin::{AdminClient, HealthChange, SourceHealth};
use crate::units::Weight;
use policy_canary::route::RoutesDocument;
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

/// Runtime key (after the target's prefix) gating the forced-canary route.
pub const FORCING_KEY: &str = "forcing";

/// How often the driver re-checks every Envoy even without a route change.
pub const RECHECK: Duration = Duration::from_secs(2);

/// Runtime keys and values for every target: stable gets `100% - w`, the canary
/// `w`, any other cluster a rollout of the target used 0; `<prefix>.forcing` is
/// 100 (percent of forced requests the forced route takes) while the target has a
/// canary and 0 when it has none.
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
            Weight::FULL.bp() - canary,
        );
        if let Some(c) = &table.canary {
            keys.insert(format!("{prefix}.{}", c.cluster), canary);
        }
        keys.insert(
            format!("{prefix}.{FORCING_KEY}"),
            if table.canary.is_some() { 100 } else { 0 },
        );
    }
    keys
}

pub async fn run(controller: Arc<Controller>, admins: Vec<String>) {
    let client = AdminClient::default();
    let mut revisions = controller.subscribe();
    let mut health = SourceHealth::default();
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
            match (health.observe(admin, result.is_ok()), result) {
                (Some(HealthChange::Failing), Err(e)) => {
                    tracing::warn!(admin, error = %e, "cannot set runtime weights")
                }
                (_, Ok(true)) => tracing::info!(admin, "runtime weights applied"),
                (Some(HealthChange::Recovered), _) => {
                    tracing::info!(admin, "runtime weights reachable again")
                }
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
    client: &AdminClient,
    admin: &str,
    wanted: &BTreeMap<String, u16>,
) -> Result<bool, String> {
    let current = client.runtime(admin).await?;
    let differs: Vec<(String, String)> = wanted
        .iter()
        .filter(|(key, value)| {
            current["entries"][key.as_str()]["final_value"].as_str()
                != Some(value.to_string().as_str())
        })
        .map(|(k, v)| (k.clone(), v.to_string()))
        .collect();
    if differs.is_empty() {
        return Ok(false);
    }
    client.runtime_modify(admin, &differs).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_canary::route::{PolicyBackend, RouteTable};

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
                metrics: vec![],
            },
        );
        let known = HashMap::from([(
            "support-agent".to_string(),
            vec!["agent_stable".to_string(), "agent_canary".to_string()],
        )]);
        let w = desired_weights(&doc, &known);
        assert_eq!(w["policy_canary.support-agent.agent_canary"], 500);
        assert_eq!(w["policy_canary.support-agent.agent_stable"], 9_500);
        assert_eq!(w["policy_canary.support-agent.forcing"], 100);
        let table = doc.routes.get_mut("support-agent").unwrap();
        table.stable = backend("v2", "agent_canary");
        table.canary = None;
        table.canary_weight_bp = 0;
        let w = desired_weights(&doc, &known);
        assert_eq!(w["policy_canary.support-agent.agent_canary"], 10_000);
        assert_eq!(w["policy_canary.support-agent.agent_stable"], 0);
        assert_eq!(
            w["policy_canary.support-agent.forcing"], 0,
            "no canary, no forcing"
        );
    }
}
