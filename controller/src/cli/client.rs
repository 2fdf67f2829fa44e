//! The controller's HTTP client: token, actor, errors mapped to exit codes.

use super::rollout::print_rollout;
use super::{fail, print_or, ActArgs, Failure};
use crate::rollout::ManualAction;
use crate::view::{RolloutAnalysis, RolloutList, RolloutStatus, RolloutView};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// A fresh key for one command's request and its retries.
fn idempotency_key() -> Result<String, Failure> {
    let mut bytes = [0u8; 16];
    getrandom::fill(&mut bytes).map_err(|e| fail(1, format!("no randomness: {e}")))?;
    Ok(policy_canary::digest::hex(&bytes))
}

/// The controller's answer to `path` read as `T`.
fn typed<T: DeserializeOwned>(path: &str, value: Value) -> Result<T, Failure> {
    serde_json::from_value(value).map_err(|e| {
        fail(
            1,
            format!("the controller answered {path} with something unexpected: {e} (is it the same version as this canaryctl?)"),
        )
    })
}

/// An error and every cause under it, on one line (reqwest's own message only
/// says that sending failed).
fn causes(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

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
            fail(3, format!("cannot reach the controller at {}: {}\nIs `canaryctl serve` running? Set --server or CANARYCTL_SERVER (and --ca-file for a private CA).", self.base, causes(&e)))
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

    /// `GET path` read as `T`; an answer of another shape is an error that says so.
    pub(super) async fn fetch<T: DeserializeOwned>(&self, path: &str) -> Result<T, Failure> {
        typed(path, self.get(path).await?)
    }

    /// `POST path` with `body`, the answer read as `T`.
    pub(super) async fn post_as<T: DeserializeOwned>(
        &self,
        path: &str,
        body: String,
    ) -> Result<T, Failure> {
        typed(path, self.post(path, body).await?)
    }

    /// A rollout with its analysis.
    pub(super) async fn rollout_status(&self, id: i64) -> Result<RolloutStatus, Failure> {
        let rollout: RolloutView = self.fetch(&format!("/v1/rollouts/{id}")).await?;
        let analysis: RolloutAnalysis = self.fetch(&format!("/v1/rollouts/{id}/analysis")).await?;
        Ok(RolloutStatus {
            rollout,
            analysis: analysis.analysis,
        })
    }

    pub(super) async fn delete(&self, path: &str) -> Result<Value, Failure> {
        self.send(self.http.delete(format!("{}{path}", self.base)))
            .await
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
        let list: RolloutList = self.fetch("/v1/rollouts").await?;
        let matching = |r: &&RolloutView| target.is_none_or(|t| r.target == t);
        let active: Vec<&RolloutView> = list
            .rollouts
            .iter()
            .filter(matching)
            .filter(|r| r.is_active())
            .collect();
        match active.as_slice() {
            [one] => return Ok(one.id),
            [] => {}
            several => {
                let list: Vec<String> = several
                    .iter()
                    .map(|r| format!("#{} {}", r.id, r.target))
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
            if let Some(last) = list.rollouts.iter().rev().find(matching) {
                return Ok(last.id);
            }
        }
        Err(fail(1, "no active rollout: give a rollout id"))
    }

    pub(super) async fn act(
        &self,
        a: ActArgs,
        action: ManualAction,
        to_end: bool,
        json: bool,
    ) -> Result<(), Failure> {
        let id = self.resolve(a.id, a.target.as_deref(), false).await?;
        // Act on the stage seen now, once: a retry after a lost answer reuses the
        // key, and the controller applies the action only once.
        let seen: RolloutView = self.fetch(&format!("/v1/rollouts/{id}")).await?;
        let mut body = serde_json::json!({"actor": self.actor, "expected_stage": seen.stage});
        if let Some(reason) = a.reason {
            body["reason"] = reason.into();
        }
        if to_end {
            body["to_end"] = true.into();
        }
        let key = idempotency_key()?;
        let path = format!("{}/v1/rollouts/{id}/{action}", self.base);
        let mut attempt = 1;
        let v = loop {
            let request = self
                .http
                .post(&path)
                .header("idempotency-key", &key)
                .body(body.to_string());
            match self.send(request).await {
                // The controller could not be reached (or its answer was lost): retry.
                Err(failure) if failure.code == 3 && attempt < 3 => {
                    attempt += 1;
                    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
                }
                result => break result?,
            }
        };
        let v: RolloutView = typed(&path, v)?;
        print_or(json, &v, || print_rollout(&v));
        Ok(())
    }
}
