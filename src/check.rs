//! Field checks shared by the plugin configuration, route tables and the
//! controller's plans, with the limits they enforce; each error names the field.

use crate::cohort::MAX_WEIGHT_BP;
use crate::error::{err, ConfigError};

/// Longest salt a route table may carry.
pub const MAX_SALT_BYTES: usize = 256;
/// Most segments a route table may carry.
pub const MAX_SEGMENTS: usize = 64;

/// A salt fits a route table: at most `MAX_SALT_BYTES`.
pub fn check_salt(path: &str, salt: &str) -> Result<(), ConfigError> {
    if salt.len() > MAX_SALT_BYTES {
        return Err(err(path, format!("must be at most {MAX_SALT_BYTES} bytes")));
    }
    Ok(())
}

/// Longest header value a segment may match.
pub const MAX_SEGMENT_VALUE_BYTES: usize = 256;

/// A segment's header value fits: at most `MAX_SEGMENT_VALUE_BYTES`.
pub fn check_segment_value(path: &str, value: &str) -> Result<(), ConfigError> {
    if value.len() > MAX_SEGMENT_VALUE_BYTES {
        return Err(err(
            path,
            format!("must be at most {MAX_SEGMENT_VALUE_BYTES} bytes"),
        ));
    }
    Ok(())
}

/// Most custom metrics (`x-agent-metric-<name>`) one target's agents may report.
pub const MAX_CUSTOM_METRICS: usize = 8;

/// A custom metric's or a signal's name: `[a-z0-9_]{1,32}` (it becomes part of a
/// stat name and a Prometheus series name).
pub fn check_metric_name(path: &str, name: &str) -> Result<(), ConfigError> {
    if is_token(name, 32, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'
    }) {
        Ok(())
    } else {
        Err(err(
            path,
            format!("`{name}` must be 1-32 characters of a-z, 0-9, '_'"),
        ))
    }
}

/// A target's custom metric names: valid, distinct, at most `MAX_CUSTOM_METRICS`.
pub fn check_metric_names(path: &str, names: &[String]) -> Result<(), ConfigError> {
    if names.len() > MAX_CUSTOM_METRICS {
        return Err(err(
            path,
            format!(
                "at most {MAX_CUSTOM_METRICS} custom metrics per target, got {}",
                names.len()
            ),
        ));
    }
    for (i, name) in names.iter().enumerate() {
        check_metric_name(&format!("{path}[{i}]"), name)?;
        if names[..i].contains(name) {
            return Err(err(
                format!("{path}[{i}]"),
                format!("`{name}` is listed twice"),
            ));
        }
    }
    Ok(())
}

/// A route table holds at most `MAX_SEGMENTS` segments.
pub fn check_segment_count(path: &str, count: usize) -> Result<(), ConfigError> {
    if count > MAX_SEGMENTS {
        return Err(err(path, format!("at most {MAX_SEGMENTS} segments")));
    }
    Ok(())
}

pub fn check_weight(path: &str, weight: u16) -> Result<(), ConfigError> {
    if weight > MAX_WEIGHT_BP {
        return Err(err(
            path,
            format!("must be at most {MAX_WEIGHT_BP} basis points (100%), got {weight}"),
        ));
    }
    Ok(())
}

/// 1 to `max` bytes, each one `allowed`: the shape of every name the filter and
/// the controller accept.
pub fn is_token(s: &str, max: usize, allowed: impl Fn(u8) -> bool) -> bool {
    !s.is_empty() && s.len() <= max && s.bytes().all(allowed)
}

/// Lowercase HTTP header names: Envoy stores them lowercased.
pub fn check_header(path: &str, name: &str) -> Result<(), ConfigError> {
    let valid = is_token(name, 128, |b| {
        b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_'
    });
    if valid {
        Ok(())
    } else {
        Err(err(
            path,
            format!("`{name}` is not a lowercase header name (a-z, 0-9, '-', '_')"),
        ))
    }
}

pub fn check_cookie_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let valid = is_token(name, 128, |b| {
        b.is_ascii_graphic() && !b"()<>@,;:\\\"/[]?={}".contains(&b)
    });
    if valid {
        Ok(())
    } else {
        Err(err(path, format!("`{name}` is not a valid cookie name")))
    }
}

/// Targets and clusters appear in stat names and headers.
pub fn check_name(path: &str, name: &str) -> Result<(), ConfigError> {
    let valid = is_token(name, 128, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_'
    });
    if valid {
        Ok(())
    } else {
        Err(err(
            path,
            format!("`{name}` must be 1-128 characters of A-Z, a-z, 0-9, '-', '_'"),
        ))
    }
}

/// An Envoy cluster name as meshes write them: Istio's
/// `outbound|7070||canaryctl.policy-canary.svc.cluster.local`, Envoy Gateway's
/// `httproute/policy-canary/canaryctl/rule/0`.
pub fn check_cluster(path: &str, name: &str) -> Result<(), ConfigError> {
    if is_token(name, 255, |b| b.is_ascii_graphic()) {
        Ok(())
    } else {
        Err(err(
            path,
            format!("`{name}` must be 1-255 visible ASCII characters (an Envoy cluster name)"),
        ))
    }
}

/// Versions appear in stat names, where dots are fine (the stats tag regex allows them).
pub fn check_version(path: &str, version: &str) -> Result<(), ConfigError> {
    let valid = is_token(version, 128, |b| {
        b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.'
    }) && !version.starts_with('.')
        && !version.ends_with('.')
        && !version.contains("..");
    if valid {
        Ok(())
    } else {
        Err(err(
            path,
            format!(
                "`{version}` must be 1-128 characters of A-Z, a-z, 0-9, '-', '_', '.' \
                 (no leading, trailing or double dot)"
            ),
        ))
    }
}
