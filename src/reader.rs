//! A strict reader over parsed JSON that names the field path in every error.
//!
//! The filter reads its configuration with this instead of serde's derived
//! `Deserialize`: one generic JSON parse plus these few methods keep the `.wasm`
//! about 80 KB smaller, and the errors name the full path (`route.stable.cluster`).

use crate::cohort::MAX_WEIGHT_BP;
use crate::error::{err, ConfigError};
use serde_json::{Map, Value};

/// A parsed JSON document.
pub struct Reader {
    value: Value,
}

impl Reader {
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let value =
            serde_json::from_slice(bytes).map_err(|e| err("", format!("not valid JSON: {e}")))?;
        Ok(Reader { value })
    }

    pub fn root(&self) -> Result<Object<'_>, ConfigError> {
        match &self.value {
            Value::Object(map) => Ok(Object {
                map,
                path: String::new(),
            }),
            other => Err(err(
                "",
                format!("expected a JSON object, got {}", kind(other)),
            )),
        }
    }
}

/// A JSON object at a known path.
pub struct Object<'a> {
    map: &'a Map<String, Value>,
    path: String,
}

impl<'a> Object<'a> {
    /// The path of `key` inside this object, e.g. `route.stable.version`.
    fn field_path(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }

    pub fn error(&self, key: &str, message: impl Into<String>) -> ConfigError {
        err(self.field_path(key), message)
    }

    /// Refuses any key not in `allowed`.
    pub fn only(&self, allowed: &[&str]) -> Result<(), ConfigError> {
        match self.map.keys().find(|k| !allowed.contains(&k.as_str())) {
            None => Ok(()),
            Some(key) => Err(self.error(
                key,
                format!("unknown field, expected one of: {}", allowed.join(", ")),
            )),
        }
    }

    /// The value of `key`; an explicit `null` counts as absent.
    fn get(&self, key: &str) -> Option<&'a Value> {
        self.map.get(key).filter(|v| !v.is_null())
    }

    fn missing(&self, key: &str) -> ConfigError {
        self.error(key, "missing field")
    }

    fn wrong(&self, key: &str, expected: &str, got: &Value) -> ConfigError {
        self.error(key, format!("expected {expected}, got {}", kind(got)))
    }

    pub fn string(&self, key: &str) -> Result<Option<String>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s.clone())),
            Some(other) => Err(self.wrong(key, "a string", other)),
        }
    }

    pub fn required_string(&self, key: &str) -> Result<String, ConfigError> {
        self.string(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn bool(&self, key: &str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => Err(self.wrong(key, "true or false", other)),
        }
    }

    pub fn u64(&self, key: &str) -> Result<Option<u64>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Number(n)) => match n.as_u64() {
                Some(v) => Ok(Some(v)),
                None => Err(self.error(key, format!("expected a non-negative integer, got {n}"))),
            },
            Some(other) => Err(self.wrong(key, "a non-negative integer", other)),
        }
    }

    /// A weight in basis points, 0..=10000.
    pub fn weight(&self, key: &str) -> Result<Option<u16>, ConfigError> {
        let out_of_range = |got: &dyn std::fmt::Display| {
            self.error(
                key,
                format!("must be at most {MAX_WEIGHT_BP} basis points (100%), got {got}"),
            )
        };
        match self.get(key) {
            Some(Value::Number(n)) if n.as_u64().is_none() => Err(self.error(
                key,
                format!("must be an integer from 0 to {MAX_WEIGHT_BP} basis points, got {n}"),
            )),
            _ => match self.u64(key)? {
                None => Ok(None),
                Some(v) if v <= u64::from(MAX_WEIGHT_BP) => Ok(Some(v as u16)),
                Some(v) => Err(out_of_range(&v)),
            },
        }
    }

    pub fn required_weight(&self, key: &str) -> Result<u16, ConfigError> {
        self.weight(key)?.ok_or_else(|| self.missing(key))
    }

    pub fn object(&self, key: &str) -> Result<Option<Object<'a>>, ConfigError> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Object(map)) => Ok(Some(Object {
                map,
                path: self.field_path(key),
            })),
            Some(other) => Err(self.wrong(key, "an object", other)),
        }
    }

    pub fn required_object(&self, key: &str) -> Result<Object<'a>, ConfigError> {
        self.object(key)?.ok_or_else(|| self.missing(key))
    }

    /// The entries of an object field whose values are all objects (absent → empty).
    pub fn entries(&self, key: &str) -> Result<Vec<(&'a str, Object<'a>)>, ConfigError> {
        let Some(field) = self.object(key)? else {
            return Ok(Vec::new());
        };
        field
            .map
            .iter()
            .map(|(name, value)| match value {
                Value::Object(map) => Ok((
                    name.as_str(),
                    Object {
                        map,
                        path: field.field_path(name),
                    },
                )),
                other => Err(field.wrong(name, "an object", other)),
            })
            .collect()
    }

    /// The strings of an array field (absent → empty).
    pub fn strings(&self, key: &str) -> Result<Vec<String>, ConfigError> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong(key, "an array", other)),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| match item {
                Value::String(s) => Ok(s.clone()),
                other => Err(err(
                    format!("{}[{i}]", self.field_path(key)),
                    format!("expected a string, got {}", kind(other)),
                )),
            })
            .collect()
    }

    /// The objects of an array field (absent → empty), with paths `key[i]`.
    pub fn objects(&self, key: &str) -> Result<Vec<Object<'a>>, ConfigError> {
        let items = match self.get(key) {
            None => return Ok(Vec::new()),
            Some(Value::Array(items)) => items,
            Some(other) => return Err(self.wrong(key, "an array", other)),
        };
        items
            .iter()
            .enumerate()
            .map(|(i, item)| {
                let path = format!("{}[{i}]", self.field_path(key));
                match item {
                    Value::Object(map) => Ok(Object { map, path }),
                    other => Err(err(
                        path,
                        format!("expected an object, got {}", kind(other)),
                    )),
                }
            })
            .collect()
    }
}

fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}
