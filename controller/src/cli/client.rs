//! The controller's HTTP client: token, actor, errors mapped to exit codes.

use super::rollout::print_rollout;
use super::{fail, print_or, s, ActArgs, Failure};
use serde_json::Value;

pub(super) struct Client {
    pub(super) http: reqwest::Client,
    pub(super) base: String,
    pub(super) token: Option<String>,
    pub(super) actor: String,
}

impl Client {
    pub(super) async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, Failure> {
        let mut request = request.header("x-actor", &self.actor);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await.map_err(|e| {
            fail(3, format!("cannot reach the controller at {}: {e}\nIs `canaryctl serve` running? Set --server or CANARYCTL_SERVER.", self.base))
        })?;
        let status = response.status();
        let body: Value = response.json().await.unwrap_or(Value::Null);
        if status.is_success() {
            return Ok(body);
        }
        let message = body["error"]
            .as_str()
            .unwrap_or("no explanation")
            .to_string();
        let hint = match status.as_u16() {
            401 => "\nGive the API token with --token, CANARYCTL_TOKEN or --token-file.",
            _ => "",
        };
        Err(fail(1, format!("{status}: {message}{hint}")))
    }

    pub(super) async fn get(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.get(format!("{}{path}", self.base)))
            .await
    }

    /// A rollout as the API shows it, with its analysis under `analysis`.
    pub(super) async fn rollout_with_analysis(&self, id: i64) -> Result<Value, Failure> {
        let mut v = self.get(&format!("/v1/rollouts/{id}")).await?;
        let analysis = self.get(&format!("/v1/rollouts/{id}/analysis")).await?;
        v["analysis"] = analysis["analysis"].clone();
        Ok(v)
    }

    pub(super) async fn post(&self, path: &str, body: String) -> Result<Value, Failure> {
        self.send(self.http.post(format!("{}{path}", self.base)).body(body))
            .await
    }

    /// The given id, else the active rollout (of `target` if given).
    pub(super) async fn resolve(
        &self,
        id: Option<i64>,
        target: Option<&str>,
        any_if_none_active: bool,
    ) -> Result<i64, Failure> {
        if let Some(id) = id {
            return Ok(id);
        }
        let v = self.get("/v1/rollouts").await?;
        let all: Vec<&Value> = v["rollouts"].as_array().into_iter().flatten().collect();
        let matching = |r: &&Value| target.is_none_or(|t| s(&r["target"]) == t);
        let active: Vec<&Value> = all
            .iter()
            .copied()
            .filter(matching)
            .filter(|r| crate::format::is_active(r))
            .collect();
        match active.as_slice() {
            [one] => return one["id"].as_i64().ok_or_else(|| fail(1, "bad rollout id")),
            [] => {}
            several => {
                let list: Vec<String> = several
                    .iter()
                    .map(|r| format!("#{} {}", r["id"], s(&r["target"])))
                    .collect();
                return Err(fail(
                    1,
                    format!(
                        "several active rollouts ({}): give an id or --target",
                        list.join(", ")
                    ),
                ));
            }
        }
        if any_if_none_active {
            if let Some(last) = all.iter().copied().rev().find(matching) {
                return last["id"].as_i64().ok_or_else(|| fail(1, "bad rollout id"));
            }
        }
        Err(fail(1, "no active rollout: give a rollout id"))
    }

    pub(super) async fn act(
        &self,
        a: ActArgs,
        action: &str,
        to_end: bool,
        json: bool,
    ) -> Result<(), Failure> {
        let id = self.resolve(a.id, a.target.as_deref(), false).await?;
        let mut body = serde_json::json!({"actor": self.actor});
        if let Some(reason) = a.reason {
            body["reason"] = reason.into();
        }
        if to_end {
            body["to_end"] = true.into();
        }
        let v = self
            .post(&format!("/v1/rollouts/{id}/{action}"), body.to_string())
            .await?;
        print_or(json, &v, || print_rollout(&v));
        Ok(())
    }
}
