//! How far a canary may be worse than stable: absolute (in the metric's own
//! units) or relative to stable, written as people write it.

use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;

/// How far the canary may be worse than stable.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Threshold {
    /// In the metric's own units (0.05 = 5 points of a rate).
    Absolute(f64),
    /// As a fraction of stable's value (0.2 = +20%, 2.0 = 3×).
    Relative(f64),
}

impl Threshold {
    /// `"5 points"`, `"5pp"`, `"+20%"`, `"20%"`, `"3x"`, `"0.05"` (absolute).
    pub fn parse(text: &str) -> Result<Threshold, String> {
        let t = text.trim().trim_start_matches('+');
        let number = |s: &str| -> Result<f64, String> {
            let v: f64 = s.trim().parse().map_err(|_| {
                format!("`{text}` is not a threshold (write e.g. \"5 points\", \"+20%\" or \"3x\")")
            })?;
            if v.is_finite() && v >= 0.0 {
                Ok(v)
            } else {
                Err(format!("threshold `{text}` must be a non-negative number"))
            }
        };
        if let Some(points) = t
            .strip_suffix("points")
            .or_else(|| t.strip_suffix("point"))
            .or_else(|| t.strip_suffix("pp"))
        {
            return Ok(Threshold::Absolute(number(points)? / 100.0));
        }
        if let Some(percent) = t.strip_suffix('%') {
            return Ok(Threshold::Relative(number(percent)? / 100.0));
        }
        if let Some(times) = t.strip_suffix(['x', '×']) {
            let times = number(times)?;
            if times < 1.0 {
                return Err(format!("threshold `{text}` must be at least 1x"));
            }
            return Ok(Threshold::Relative(times - 1.0));
        }
        number(t).map(Threshold::Absolute)
    }
}

impl fmt::Display for Threshold {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Threshold::Absolute(v) => write!(f, "{} points", trim(v * 100.0)),
            Threshold::Relative(v) if v >= 1.0 => write!(f, "{}x", trim(v + 1.0)),
            Threshold::Relative(v) => write!(f, "+{}%", trim(v * 100.0)),
        }
    }
}

fn trim(v: f64) -> String {
    let s = format!("{v:.4}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

impl Serialize for Threshold {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Threshold {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Threshold;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a threshold such as \"5 points\", \"+20%\" or \"3x\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Threshold, E> {
                Threshold::parse(v).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Threshold, E> {
                Threshold::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Threshold, E> {
                Threshold::parse(&v.to_string()).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Threshold, E> {
                Threshold::parse(&v.to_string()).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_as_people_write_them() {
        let cases = [
            ("5 points", Threshold::Absolute(0.05)),
            ("5pp", Threshold::Absolute(0.05)),
            ("+20%", Threshold::Relative(0.2)),
            ("10%", Threshold::Relative(0.1)),
            ("3x", Threshold::Relative(2.0)),
            ("0.05", Threshold::Absolute(0.05)),
        ];
        for (text, expected) in cases {
            let got = Threshold::parse(text).unwrap();
            match (got, expected) {
                (Threshold::Absolute(a), Threshold::Absolute(b))
                | (Threshold::Relative(a), Threshold::Relative(b)) => {
                    assert!((a - b).abs() < 1e-12, "{text}")
                }
                _ => panic!("{text}: {got:?}"),
            }
        }
        for bad in ["-5%", "lots", "0.5x", "NaN"] {
            assert!(Threshold::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Threshold::Relative(2.0).to_string(), "3x");
        assert_eq!(Threshold::Relative(0.2).to_string(), "+20%");
        assert_eq!(Threshold::Absolute(0.05).to_string(), "5 points");
    }
}
