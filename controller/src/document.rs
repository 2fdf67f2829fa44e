//! Documents people write (plans, policies): YAML or JSON, read into typed values
//! with the failing field's path in every error.

use policy_canary::error::{err, ConfigError};

/// Parses YAML or JSON (JSON is YAML) into `T`, with the failing field's path.
pub fn parse_document<T: serde::de::DeserializeOwned>(text: &str) -> Result<T, ConfigError> {
    let value: serde_json::Value = if text.trim_start().starts_with('{') {
        serde_json::from_str(text).map_err(|e| err("", format!("not valid JSON: {e}")))?
    } else {
        serde_yaml_ng::from_str(text).map_err(|e| err("", format!("not valid YAML: {e}")))?
    };
    serde_path_to_error::deserialize(value).map_err(|e| {
        let path = e.path().to_string();
        err(path, e.into_inner().to_string())
    })
}
