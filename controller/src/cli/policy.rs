//! `canaryctl policy …`: the policy registry.

use super::client::Client;
use super::{print_or, read_file, s, Failure, PolicyCommand};

pub(super) async fn run(
    client: &Client,
    command: PolicyCommand,
    json: bool,
) -> Result<(), Failure> {
    match command {
        PolicyCommand::Add { file } => {
            let text = read_file(&file)?;
            let v = client.post("/v1/policies", text).await?;
            print_or(json, &v, || {
                println!("registered {}", v["id"].as_str().unwrap_or("?"))
            });
            Ok(())
        }
        PolicyCommand::List => {
            let v = client.get("/v1/policies").await?;
            print_or(json, &v, || {
                for p in v["policies"].as_array().into_iter().flatten() {
                    println!(
                        "{:<16} sha256:{}  {}",
                        s(&p["version"]),
                        s(&p["sha256"]),
                        s(&p["bundle"]["model"])
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
