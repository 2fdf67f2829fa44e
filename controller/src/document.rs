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

#[cfg(test)]
mod tests {
    use super::*;

    /// A few hundred bytes must not expand into billions of values (plans and
    /// policies arrive over the API).
    #[test]
    fn alias_bombs_are_refused() {
        let mut text = String::from("a: &a [x, x, x, x, x, x, x, x, x, x]\n");
        let mut previous = 'a';
        for name in 'b'..='j' {
            text.push_str(&format!(
                "{name}: &{name} [*{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}, *{previous}]\n"
            ));
            previous = name;
        }
        let started = std::time::Instant::now();
        let result: Result<serde_json::Value, _> = parse_document(&text);
        let message = result.expect_err("an alias bomb was expanded").to_string();
        // serde_yaml_ng bounds alias expansion itself; this keeps it so.
        assert!(message.contains("repetition limit exceeded"), "{message}");
        assert!(started.elapsed() < std::time::Duration::from_secs(2));
    }
}
