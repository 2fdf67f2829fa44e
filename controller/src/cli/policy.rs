//! `canaryctl policy …`: the policy registry.

use super::client::Client;
use super::{print_or, read_file, Failure, PolicyCommand};
use crate::store::PolicyRecord;
use crate::view::PolicyList;

pub(super) async fn run(
    client: &Client,
    command: PolicyCommand,
    json: bool,
) -> Result<(), Failure> {
    match command {
        PolicyCommand::Add { file } => {
            let text = read_file(&file)?;
            let v: PolicyRecord = client.post_as("/v1/policies", text).await?;
            print_or(json, &v, || println!("registered {}", v.id));
            Ok(())
        }
        PolicyCommand::List => {
            let v: PolicyList = client.fetch("/v1/policies").await?;
            print_or(json, &v, || {
                for p in &v.policies {
                    println!(
                        "{:<16} sha256:{}  {}",
                        p.version,
                        p.sha256,
                        p.bundle["model"].as_str().unwrap_or("")
                    );
                }
            });
            Ok(())
        }
        PolicyCommand::Show { version } => {
            let v = client.get(&format!("/v1/policies/{version}")).await?;
            println!("{}", serde_json::to_string_pretty(&v).unwrap_or_default());
            Ok(())
        }
    }
}
