//! The Envoy admin client, and the once-per-change logging of sources that fail
//! and recover.

use policy_canary::stats::wasm_prometheus_names;
use std::collections::HashMap;
use std::time::Duration;

/// How long one admin request may take.
pub const ADMIN_TIMEOUT: Duration = Duration::from_secs(3);

/// Reads stats and runtime values from Envoy admin endpoints and sets runtime values.
#[derive(Clone)]
pub struct AdminClient {
    http: reqwest::Client,
}

impl Default for AdminClient {
    fn default() -> Self {
        AdminClient {
            http: reqwest::Client::builder()
                .timeout(ADMIN_TIMEOUT)
                .build()
                .unwrap_or_default(),
        }
    }
}

impl AdminClient {
    /// The filter's series (`policy_canary_*`) and Envoy's uptime (a restart
    /// resets every counter) from `/stats/prometheus`. The native module's series
    /// (`envoy_wasmcustom_policy_canary_*`: Envoy keeps a dynamic module's
    /// namespace in the name) are renamed to the wasm filter's.
    pub async fn policy_stats(&self, admin: &str) -> Result<String, String> {
        let url = format!(
            "{}/stats/prometheus?usedonly&filter=policy_canary%7C%5Eserver%5C.uptime%24",
            admin.trim_end_matches('/')
        );
        let response = self
            .http
            .get(&url)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("{url} answered {}", response.status()));
        }
        let text = response.text().await.map_err(|e| e.to_string())?;
        Ok(wasm_prometheus_names(&text))
    }

    /// `GET /runtime`: every runtime entry with its final value.
    pub async fn runtime(&self, admin: &str) -> Result<serde_json::Value, String> {
        self.http
            .get(format!("{}/runtime", admin.trim_end_matches('/')))
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())
    }

    /// `POST /runtime_modify` with `key=value` pairs (needs an admin runtime layer).
    pub async fn runtime_modify(
        &self,
        admin: &str,
        values: &[(String, String)],
    ) -> Result<(), String> {
        let response = self
            .http
            .post(format!("{}/runtime_modify", admin.trim_end_matches('/')))
            .query(values)
            .send()
            .await
            .map_err(|e| e.to_string())?;
        if !response.status().is_success() {
            return Err(format!("runtime_modify answered {}", response.status()));
        }
        Ok(())
    }
}

/// A source's health changed since the last observation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HealthChange {
    Failing,
    Recovered,
}

/// Remembers which sources failed last time, so that each change is logged once.
#[derive(Debug, Default)]
pub struct SourceHealth {
    failing: HashMap<String, bool>,
}

impl SourceHealth {
    pub fn observe(&mut self, source: &str, ok: bool) -> Option<HealthChange> {
        let was_failing = self
            .failing
            .insert(source.to_string(), !ok)
            .unwrap_or(false);
        match (was_failing, ok) {
            (false, false) => Some(HealthChange::Failing),
            (true, true) => Some(HealthChange::Recovered),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_change_of_health_is_reported_once() {
        let mut health = SourceHealth::default();
        assert_eq!(health.observe("a", true), None);
        assert_eq!(health.observe("a", false), Some(HealthChange::Failing));
        assert_eq!(health.observe("a", false), None);
        assert_eq!(health.observe("b", false), Some(HealthChange::Failing));
        assert_eq!(health.observe("a", true), Some(HealthChange::Recovered));
        assert_eq!(health.observe("a", true), None);
    }
}
