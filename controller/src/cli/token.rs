//! `canaryctl token …`: named, scoped API tokens.

use super::client::Client;
use super::{print_or, Failure, TokenCommand};
use crate::format::utc;
use crate::view::TokenList;
use serde_json::json;

pub(super) async fn run(client: &Client, command: TokenCommand, json: bool) -> Result<(), Failure> {
    match command {
        TokenCommand::Create { name, scopes } => {
            let body = json!({"name": name, "scopes": scopes, "actor": client.actor});
            let v = client.post("/v1/tokens", body.to_string()).await?;
            print_or(json, &v, || {
                // The secret alone on stdout's first line, so that scripts can take it.
                println!("{}", v["token"].as_str().unwrap_or(""));
                eprintln!(
                    "token {} ({}): shown only now; store it where its holder reads it",
                    v["name"].as_str().unwrap_or(""),
                    v["scopes"]
                        .as_array()
                        .map(|s| s
                            .iter()
                            .filter_map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", "))
                        .unwrap_or_default()
                );
            });
            Ok(())
        }
        TokenCommand::List => {
            let v: TokenList = client.fetch("/v1/tokens").await?;
            print_or(json, &v, || {
                for t in &v.tokens {
                    let scopes: Vec<&str> = t.scopes.iter().map(|s| s.as_str()).collect();
                    let state = t
                        .revoked_ms
                        .map_or("live".to_string(), |at| format!("revoked {}", utc(at)));
                    println!(
                        "{:<20} {:<36} made {} by {:<12} {state}",
                        t.name,
                        scopes.join(","),
                        utc(t.created_ms),
                        t.created_by
                    );
                }
            });
            Ok(())
        }
        TokenCommand::Revoke { name } => {
            let v = client
                .post(&format!("/v1/tokens/{name}/revoke"), String::new())
                .await?;
            print_or(json, &v, || println!("revoked token {name}"));
            Ok(())
        }
    }
}
