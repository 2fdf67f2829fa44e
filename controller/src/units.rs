//! Weights and durations as people write them in plans (`"5%"`, `"0.5%"`, `"10m"`),
//! and the clocks.

use policy_canary::cohort::MAX_WEIGHT_BP;
use serde::{de, Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::time::Duration;

/// Milliseconds since the epoch, by the wall clock.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Milliseconds since the epoch from an RFC 3339 timestamp
/// (`2026-12-06T14:03:07.250Z`, `…+01:00`): a date, `T` (or `t` or a space), a
/// time with optional fraction (milliseconds kept), and `Z` or an offset.
pub fn parse_rfc3339(text: &str) -> Result<i64, String> {
    let bad = || format!("`{text}` is not an RFC 3339 time (e.g. 2026-12-06T14:03:07Z)");
    let b = text.trim().as_bytes();
    let num = |range: std::ops::Range<usize>| -> Result<i64, String> {
        let digits = b.get(range).ok_or_else(bad)?;
        if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
            return Err(bad());
        }
        Ok(digits
            .iter()
            .fold(0i64, |n, d| n * 10 + i64::from(d - b'0')))
    };
    if b.len() < 20 || b[4] != b'-' || b[7] != b'-' || b[13] != b':' || b[16] != b':' {
        return Err(bad());
    }
    if !matches!(b[10], b'T' | b't' | b' ') {
        return Err(bad());
    }
    let (year, month, day) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (hour, minute, second) = (num(11..13)?, num(14..16)?, num(17..19)?);
    let mut at = 19;
    let mut millis = 0;
    if b[at] == b'.' {
        let end = at
            + 1
            + b[at + 1..]
                .iter()
                .take_while(|c| c.is_ascii_digit())
                .count();
        if end == at + 1 {
            return Err(bad());
        }
        let fraction = &b[at + 1..end];
        millis = (0..3).fold(0, |n, i| {
            n * 10 + fraction.get(i).map_or(0, |d| i64::from(d - b'0'))
        });
        at = end;
    }
    let offset_minutes = match b.get(at) {
        Some(b'Z' | b'z') if b.len() == at + 1 => 0,
        Some(sign @ (b'+' | b'-')) if b.len() == at + 6 && b[at + 3] == b':' => {
            let (h, m) = (num(at + 1..at + 3)?, num(at + 4..at + 6)?);
            if h > 23 || m > 59 {
                return Err(bad());
            }
            if *sign == b'+' {
                h * 60 + m
            } else {
                -(h * 60 + m)
            }
        }
        _ => return Err(bad()),
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if (year % 4 == 0 && year % 100 != 0) || year % 400 == 0 => 29,
        2 => 28,
        _ => return Err(bad()),
    };
    if !(1..=days_in_month).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return Err(bad());
    }
    // Days since 1970-01-01 from the civil date (Howard Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let seconds = days * 86_400 + hour * 3600 + minute * 60 + second.min(59) - offset_minutes * 60;
    Ok(seconds * 1000 + millis)
}

/// A moment by both clocks. The wall clock places things people see and stores
/// (stage starts, audit times); the steady clock (monotonic, from this process's
/// start) measures intervals and timeouts, which a clock step must not stretch or
/// cut short.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Now {
    pub wall_ms: i64,
    pub steady_ms: u64,
}

impl Now {
    pub fn read() -> Now {
        static START: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        let start = START.get_or_init(std::time::Instant::now);
        Now {
            wall_ms: now_ms(),
            steady_ms: u64::try_from(start.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// A moment where both clocks agree (tests and simulations).
    pub fn at(ms: i64) -> Now {
        Now {
            wall_ms: ms,
            steady_ms: u64::try_from(ms).unwrap_or(0),
        }
    }

    /// Steady milliseconds since `earlier` (0 if it is later).
    pub fn steady_since(&self, earlier: u64) -> u64 {
        self.steady_ms.saturating_sub(earlier)
    }
}

/// A traffic weight in basis points (0..=10000). Written as `"5%"`, `"0.25%"`, a
/// number of percent (`5`), or `"500bp"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Weight(pub u16);

impl Weight {
    pub const FULL: Weight = Weight(MAX_WEIGHT_BP);

    pub fn bp(self) -> u16 {
        self.0
    }

    pub fn parse(text: &str) -> Result<Weight, String> {
        let text = text.trim();
        if let Some(bp) = text.strip_suffix("bp") {
            let bp: u64 = bp
                .trim()
                .parse()
                .map_err(|_| format!("`{text}` is not a whole number of basis points"))?;
            return Self::from_bp(bp);
        }
        let percent = text.strip_suffix('%').unwrap_or(text).trim();
        let value: f64 = percent
            .parse()
            .map_err(|_| format!("`{text}` is not a weight (write e.g. \"5%\" or \"500bp\")"))?;
        Self::from_percent(value)
    }

    pub fn from_percent(percent: f64) -> Result<Weight, String> {
        if !percent.is_finite() || percent < 0.0 {
            return Err(format!(
                "weight must be between 0% and 100%, got {percent}%"
            ));
        }
        let bp = percent * 100.0;
        if (bp - bp.round()).abs() > 1e-6 {
            return Err(format!(
                "weight {percent}% is finer than one basis point (0.01%)"
            ));
        }
        Self::from_bp(bp.round() as u64)
    }

    pub fn from_bp(bp: u64) -> Result<Weight, String> {
        if bp > u64::from(MAX_WEIGHT_BP) {
            return Err(format!(
                "weight must be at most 100%, got {}%",
                bp as f64 / 100.0
            ));
        }
        Ok(Weight(bp as u16))
    }
}

impl fmt::Display for Weight {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let whole = self.0 / 100;
        let frac = self.0 % 100;
        if frac == 0 {
            write!(f, "{whole}%")
        } else if frac.is_multiple_of(10) {
            write!(f, "{whole}.{}%", frac / 10)
        } else {
            write!(f, "{whole}.{frac:02}%")
        }
    }
}

impl Serialize for Weight {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Weight {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Weight;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a weight such as \"5%\", \"0.5%\" or \"500bp\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Weight, E> {
                Weight::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Weight, E> {
                Weight::from_percent(v as f64).map_err(E::custom)
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Weight, E> {
                Weight::from_percent(v as f64).map_err(E::custom)
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Weight, E> {
                Weight::from_percent(v).map_err(E::custom)
            }
        }
        d.deserialize_any(V)
    }
}

/// Longest duration accepted (about 31,700 years): anything longer is a mistake,
/// and sums of parts stay far from overflowing.
const MAX_DURATION_MS: f64 = 1e15;

/// A duration written as `"90s"`, `"10m"`, `"1h30m"`, `"250ms"` or a number of seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub struct Dur(pub Duration);

impl Dur {
    pub fn secs(s: u64) -> Dur {
        Dur(Duration::from_secs(s))
    }

    pub fn millis(self) -> i64 {
        i64::try_from(self.0.as_millis()).unwrap_or(i64::MAX)
    }

    pub fn parse(text: &str) -> Result<Dur, String> {
        let text = text.trim();
        if text.starts_with('-') {
            return Err(format!("duration `{text}` is negative"));
        }
        if text.is_empty() {
            return Err("empty duration".into());
        }
        if text.bytes().all(|b| b.is_ascii_digit()) {
            return text
                .parse()
                .map(Dur::secs)
                .map_err(|_| format!("duration `{text}` is too long"));
        }
        let mut total = Duration::ZERO;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest
                .find(|c: char| !(c.is_ascii_digit() || c == '.'))
                .ok_or_else(|| format!("duration `{text}` needs a unit (ms, s, m, h, d)"))?;
            if digits == 0 {
                return Err(format!(
                    "`{text}` is not a duration (write e.g. \"30s\", \"10m\", \"1h30m\")"
                ));
            }
            let number: f64 = rest[..digits]
                .parse()
                .map_err(|_| format!("`{text}` is not a duration"))?;
            rest = &rest[digits..];
            let unit_len = rest
                .find(|c: char| c.is_ascii_digit())
                .unwrap_or(rest.len());
            let unit = &rest[..unit_len];
            rest = &rest[unit_len..];
            let millis = match unit {
                "ms" => 1.0,
                "s" => 1_000.0,
                "m" => 60_000.0,
                "h" => 3_600_000.0,
                "d" => 86_400_000.0,
                _ => {
                    return Err(format!(
                        "`{unit}` in `{text}` is not a unit (ms, s, m, h, d)"
                    ))
                }
            };
            let part = (number * millis).round();
            total = (part.is_finite() && part < MAX_DURATION_MS)
                .then(|| total.checked_add(Duration::from_millis(part as u64)))
                .flatten()
                .filter(|t| t.as_millis() < MAX_DURATION_MS as u128)
                .ok_or_else(|| format!("duration `{text}` is too long"))?;
        }
        Ok(Dur(total))
    }
}

impl fmt::Display for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let ms = self.0.as_millis();
        if ms == 0 {
            f.write_str("0s")
        } else if ms.is_multiple_of(3_600_000) {
            write!(f, "{}h", ms / 3_600_000)
        } else if ms.is_multiple_of(60_000) {
            write!(f, "{}m", ms / 60_000)
        } else if ms.is_multiple_of(1_000) {
            write!(f, "{}s", ms / 1_000)
        } else {
            write!(f, "{ms}ms")
        }
    }
}

impl Serialize for Dur {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl de::Visitor<'_> for V {
            type Value = Dur;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a duration such as \"30s\", \"10m\" or \"1h30m\"")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Dur, E> {
                Dur::parse(v).map_err(E::custom)
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Dur, E> {
                Ok(Dur::secs(v))
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Dur, E> {
                u64::try_from(v)
                    .map(Dur::secs)
                    .map_err(|_| E::custom(format!("duration {v}s is negative")))
            }
            fn visit_f64<E: de::Error>(self, v: f64) -> Result<Dur, E> {
                if v.is_finite() && v >= 0.0 {
                    Ok(Dur(Duration::from_millis((v * 1000.0).round() as u64)))
                } else {
                    Err(E::custom(format!("duration {v}s is negative")))
                }
            }
        }
        d.deserialize_any(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn weights() {
        for (text, bp) in [
            ("5%", 500),
            ("0.5%", 50),
            ("0.01%", 1),
            ("100%", 10_000),
            ("250bp", 250),
            (" 1 % ", 100),
            ("7", 700),
        ] {
            assert_eq!(Weight::parse(text), Ok(Weight(bp)), "{text}");
        }
        for bad in ["101%", "-1%", "0.001%", "abc", "10001bp", "NaN%"] {
            assert!(Weight::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Weight(500).to_string(), "5%");
        assert_eq!(Weight(50).to_string(), "0.5%");
        assert_eq!(Weight(1).to_string(), "0.01%");
    }

    #[test]
    fn durations() {
        for (text, ms) in [
            ("30s", 30_000),
            ("10m", 600_000),
            ("1h30m", 5_400_000),
            ("250ms", 250),
            ("2", 2_000),
            ("1.5s", 1_500),
            ("0s", 0),
        ] {
            assert_eq!(Dur::parse(text).map(|d| d.0.as_millis()), Ok(ms), "{text}");
        }
        // Too long to be meant, and never a panic (reachable as `wait=` without a token).
        for huge in [
            "18446744073709551615s18446744073709551615s",
            "99999999999999999999999999999999999999999h",
            "18446744073709551615ms1ms",
        ] {
            let message = Dur::parse(huge).unwrap_err();
            assert!(message.contains("too long"), "{huge}: {message}");
        }
        for bad in ["-5s", "5", "", "s", "5x", "1h-2m"] {
            if bad == "5" {
                continue;
            }
            assert!(Dur::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(Dur::parse("90s").unwrap().to_string(), "90s");
        assert_eq!(Dur::parse("2h").unwrap().to_string(), "2h");
    }

    #[test]
    fn rfc3339_times() {
        assert_eq!(parse_rfc3339("1970-01-01T00:00:00Z"), Ok(0));
        assert_eq!(parse_rfc3339("2026-11-22T03:00:00Z"), Ok(1_795_316_400_000));
        assert_eq!(
            parse_rfc3339("2026-11-22T04:00:00.250+01:00"),
            Ok(1_795_316_400_250)
        );
        assert_eq!(parse_rfc3339("2000-02-29t00:00:00z"), Ok(951_782_400_000));
        assert_eq!(
            parse_rfc3339("2026-11-21 22:00:00.9-05:00"),
            Ok(1_795_316_400_900)
        );
        for bad in [
            "",
            "2026-11-22",
            "2026-11-22T03:00:00",
            "2026-02-30T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T24:00:00Z",
            "2026-11-22T03:00:00.Z",
            "2026-11-22T03:00:00+0100",
            "2026-11-22T03:00:00Zjunk",
            "２０２６-11-22T03:00:00Z",
        ] {
            assert!(parse_rfc3339(bad).is_err(), "{bad}");
        }
    }
}
