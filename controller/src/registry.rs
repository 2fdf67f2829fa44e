//! Agent policies: immutable, versioned bundles identified by version and the
//! sha256 of their canonical JSON.

use crate::document::parse_document;
use policy_canary::check::check_version;
use policy_canary::digest::sha256_hex;
use policy_canary::error::{err, ConfigError};
use serde::{Deserialize, Serialize};

/// What an agent runs with. Free-form parts (`tools`, `guardrails`, `metadata`)
/// are kept as given; the canonical form sorts object keys.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBundle {
    pub version: String,
    pub system_prompt: String,
    pub model: String,
    pub temperature: f64,
    pub max_tokens: u64,
    #[serde(default)]
    pub tools: Vec<serde_json::Value>,
    #[serde(default)]
    pub guardrails: serde_json::Value,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

impl PolicyBundle {
    pub fn parse(text: &str) -> Result<PolicyBundle, ConfigError> {
        let bundle: PolicyBundle = parse_document(text)?;
        check_version("version", &bundle.version)?;
        if !(0.0..=2.0).contains(&bundle.temperature) {
            return Err(err("temperature", "must be between 0 and 2"));
        }
        if bundle.max_tokens == 0 {
            return Err(err("max_tokens", "must be at least 1"));
        }
        Ok(bundle)
    }

    /// Compact JSON with object keys sorted: equal bundles give equal bytes.
    pub fn canonical_json(&self) -> String {
        // serde_json's map is ordered by key (no `preserve_order`), so going
        // through `Value` sorts every object, nested ones included.
        serde_json::to_value(self)
            .map(|v| v.to_string())
            .unwrap_or_default()
    }

    pub fn sha256(&self) -> String {
        sha256_hex(self.canonical_json().as_bytes())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const YAML: &str = r#"
version: v2.4.0
system_prompt: You are a helpful support agent.
model: gpt-x-2026-10
temperature: 0.2
max_tokens: 1024
tools: [search_orders, {name: refund, max_amount: 100}]
guardrails: {pii: redact, topics: [billing]}
metadata: {owner: support-team}
"#;

    #[test]
    fn canonical_hash_ignores_formatting_and_key_order() {
        let a = PolicyBundle::parse(YAML).unwrap();
        let json = r#"{"metadata": {"owner": "support-team"}, "version": "v2.4.0", "model": "gpt-x-2026-10",
            "system_prompt": "You are a helpful support agent.", "temperature": 0.2, "max_tokens": 1024,
            "guardrails": {"topics": ["billing"], "pii": "redact"},
            "tools": ["search_orders", {"max_amount": 100, "name": "refund"}]}"#;
        let b = PolicyBundle::parse(json).unwrap();
        assert_eq!(a.sha256(), b.sha256());
        let mut c = a.clone();
        c.temperature = 0.3;
        assert_ne!(a.sha256(), c.sha256());
        // Keys are sorted at every level.
        assert!(a.canonical_json().starts_with(
            r#"{"guardrails":{"pii":"redact","topics":["billing"]},"max_tokens":1024"#
        ));
    }

    #[test]
    fn bad_bundles_name_the_field() {
        for (text, expected) in [
            (
                YAML.replace("temperature: 0.2", "temperature: 5"),
                "temperature: must be between 0 and 2",
            ),
            (
                YAML.replace("max_tokens: 1024", "max_tokens: -1"),
                "max_tokens:",
            ),
            (YAML.replace("model:", "modle:"), "unknown field `modle`"),
            (YAML.replace("version: v2.4.0", "version: v 2"), "version:"),
        ] {
            let message = PolicyBundle::parse(&text).unwrap_err().to_string();
            assert!(
                message.contains(expected),
                "got `{message}`, expected `{expected}`"
            );
        }
    }
}
