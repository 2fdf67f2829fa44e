//! The agent's quality report, read from response headers and trailers.

use crate::check::MAX_CUSTOM_METRICS;
use crate::config::TelemetryHeaders;
use crate::wire::HeaderMap;

/// How the task that this response ends turned out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TaskOutcome {
    Completed,
    Failed,
    Abandoned,
    Escalated,
}

impl TaskOutcome {
    pub fn parse(value: &[u8]) -> Option<Self> {
        let value = value.trim_ascii();
        [
            (&b"completed"[..], TaskOutcome::Completed),
            (b"failed", TaskOutcome::Failed),
            (b"abandoned", TaskOutcome::Abandoned),
            (b"escalated", TaskOutcome::Escalated),
        ]
        .into_iter()
        .find(|(name, _)| name.eq_ignore_ascii_case(value))
        .map(|(_, outcome)| outcome)
    }
}

/// The report of one response. Fields are `None` when absent or malformed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TelemetryReport {
    pub outcome: Option<TaskOutcome>,
    pub cost_micros: Option<u64>,
    pub tokens: Option<u64>,
    pub tool_calls: Option<u64>,
    pub tool_errors: Option<u64>,
    pub guardrail_triggers: Option<u64>,
    pub safety_violations: Option<u64>,
    /// Telemetry values that could not be read (bad number, unknown outcome, repeated header).
    pub malformed: u32,
    /// Custom metrics, by their index in the route table's `metrics`.
    pub custom: CustomReport,
}

/// The custom metrics one response reported (`x-agent-metric-<name>`), by index
/// in the route table's `metrics`: each value in micro-units, or invalid.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CustomReport {
    pub values: [Option<u64>; MAX_CUSTOM_METRICS],
    /// Reported but not a number the filter takes (`parse_micros`), or repeated.
    pub invalid: [bool; MAX_CUSTOM_METRICS],
}

impl CustomReport {
    pub fn is_empty(&self) -> bool {
        self.values.iter().all(Option::is_none) && !self.invalid.contains(&true)
    }
}

const FIELDS: usize = 7;

impl TelemetryReport {
    /// Reads the telemetry fields present in `headers` (a header or trailer map),
    /// and the custom metrics named in `metrics` (`<metric_prefix><name>`).
    /// A field present here replaces what an earlier map said: trailers are read after
    /// headers and win, since a streamed answer knows its totals only at the end.
    /// Returns which telemetry headers the map held (to strip them).
    pub fn read(
        &mut self,
        config: &TelemetryHeaders,
        metrics: &[String],
        headers: &HeaderMap,
    ) -> Found {
        let names = config.names();
        let prefix = config.metric_prefix.as_bytes();
        let mut values: [Option<&[u8]>; FIELDS] = [None; FIELDS];
        let mut repeated = [false; FIELDS];
        let mut custom: [Option<&[u8]>; MAX_CUSTOM_METRICS] = [None; MAX_CUSTOM_METRICS];
        let mut custom_repeated = [false; MAX_CUSTOM_METRICS];
        let mut any_custom = false;
        for (name, value) in headers.iter() {
            if let Some(field) = names.iter().position(|n| n.as_bytes() == name) {
                repeated[field] |= values[field].is_some();
                values[field] = Some(value);
            } else if let Some(metric) = name.strip_prefix(prefix) {
                any_custom = true;
                if let Some(i) = metrics.iter().position(|m| m.as_bytes() == metric) {
                    if let (Some(slot), Some(again)) =
                        (custom.get_mut(i), custom_repeated.get_mut(i))
                    {
                        *again |= slot.is_some();
                        *slot = Some(value);
                    }
                }
            }
        }
        for (i, value) in custom.iter().enumerate() {
            let Some(value) = value else { continue };
            let parsed = parse_micros(value).filter(|_| !custom_repeated[i]);
            self.custom.values[i] = parsed;
            self.custom.invalid[i] = parsed.is_none();
        }
        for field in 0..FIELDS {
            let Some(value) = values[field] else { continue };
            if repeated[field] {
                self.malformed += 1;
                self.clear(field);
                continue;
            }
            let ok = if field == 0 {
                self.outcome = TaskOutcome::parse(value);
                self.outcome.is_some()
            } else {
                let count = parse_count(value);
                *self.count_mut(field) = count;
                count.is_some()
            };
            if !ok {
                self.malformed += 1;
            }
        }
        Found {
            fields: values.map(|value| value.is_some()),
            custom: any_custom,
        }
    }

    fn clear(&mut self, field: usize) {
        if field == 0 {
            self.outcome = None;
        } else {
            *self.count_mut(field) = None;
        }
    }

    fn count_mut(&mut self, field: usize) -> &mut Option<u64> {
        match field {
            1 => &mut self.cost_micros,
            2 => &mut self.tokens,
            3 => &mut self.tool_calls,
            4 => &mut self.tool_errors,
            5 => &mut self.guardrail_triggers,
            _ => &mut self.safety_violations,
        }
    }
}

/// The telemetry headers one map held, each once however often it was repeated.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Found {
    fields: [bool; FIELDS],
    /// Some header had the custom metric prefix (listed in the table or not).
    pub custom: bool,
}

impl Found {
    /// Their configured names.
    pub fn names(self, names: &TelemetryHeaders) -> impl Iterator<Item = &str> {
        names
            .names()
            .into_iter()
            .zip(self.fields)
            .filter_map(|(name, found)| found.then_some(name))
    }
}

/// The largest custom metric value the filter takes: 10⁹.
pub const MAX_CUSTOM_VALUE: u64 = 1_000_000_000;

/// A custom metric's value in micro-units: a non-negative decimal number of at
/// most `MAX_CUSTOM_VALUE`, with a fraction of any length (digits past the sixth
/// are dropped), surrounding spaces allowed. No sign, exponent, `NaN` or `inf`:
/// anything else is invalid (and an Envoy counter cannot go below zero).
pub fn parse_micros(value: &[u8]) -> Option<u64> {
    let text = value.trim_ascii();
    let (whole, fraction) = match text.iter().position(|&b| b == b'.') {
        Some(dot) => (&text[..dot], &text[dot + 1..]),
        None => (text, &b""[..]),
    };
    let digits = |d: &[u8]| d.iter().all(u8::is_ascii_digit);
    if whole.is_empty() || whole.len() > 10 || !digits(whole) || !digits(fraction) {
        return None;
    }
    if fraction.len() > 64 || (text.len() > whole.len() && fraction.is_empty()) {
        return None;
    }
    let whole = parse_count(whole)?;
    if whole > MAX_CUSTOM_VALUE {
        return None;
    }
    let mut micros = 0u64;
    for i in 0..6 {
        micros = micros * 10 + fraction.get(i).map_or(0, |d| u64::from(d - b'0'));
    }
    let total = whole * 1_000_000 + micros;
    (total <= MAX_CUSTOM_VALUE * 1_000_000).then_some(total)
}

/// A non-negative decimal integer that fits in u64, surrounding spaces allowed.
pub fn parse_count(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    digits.iter().try_fold(0u64, |acc, &d| {
        acc.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(pairs: &[(&str, &[u8])]) -> HeaderMap<'static> {
        HeaderMap::from_pairs(pairs)
    }

    #[test]
    fn reads_every_field() {
        let names = TelemetryHeaders::default();
        let mut report = TelemetryReport::default();
        report.read(
            &names,
            &[],
            &h(&[
                (":status", b"200"),
                ("x-agent-outcome", b"Completed"),
                ("x-agent-cost-micros", b"1250"),
                ("x-agent-tokens", b" 812 "),
                ("x-agent-tool-calls", b"3"),
                ("x-agent-tool-errors", b"1"),
                ("x-agent-guardrail-triggers", b"0"),
                ("x-agent-safety-violations", b"2"),
            ]),
        );
        assert_eq!(
            report,
            TelemetryReport {
                outcome: Some(TaskOutcome::Completed),
                cost_micros: Some(1250),
                tokens: Some(812),
                tool_calls: Some(3),
                tool_errors: Some(1),
                guardrail_triggers: Some(0),
                safety_violations: Some(2),
                malformed: 0,
                custom: CustomReport::default(),
            }
        );
    }

    #[test]
    fn malformed_values_are_counted_and_dropped() {
        let names = TelemetryHeaders::default();
        let mut report = TelemetryReport::default();
        report.read(
            &names,
            &[],
            &h(&[
                ("x-agent-outcome", b"maybe"),
                ("x-agent-cost-micros", b"-5"),
                ("x-agent-tokens", b"18446744073709551616"),
                ("x-agent-tool-calls", b"1e3"),
                ("x-agent-tool-errors", b""),
                ("x-agent-guardrail-triggers", b"\xff"),
                ("x-agent-safety-violations", b"1"),
                ("x-agent-safety-violations", b"1"),
            ]),
        );
        assert_eq!(report.malformed, 7);
        assert_eq!(report.outcome, None);
        assert_eq!(report.safety_violations, None);
        assert_eq!(parse_count(b"18446744073709551615"), Some(u64::MAX));
        assert_eq!(parse_count(b"007"), Some(7));
    }

    #[test]
    fn trailers_replace_header_values() {
        let names = TelemetryHeaders::default();
        let mut report = TelemetryReport::default();
        report.read(
            &names,
            &[],
            &h(&[("x-agent-tokens", b"10"), ("x-agent-outcome", b"failed")]),
        );
        report.read(
            &names,
            &[],
            &h(&[("x-agent-tokens", b"99"), ("x-agent-cost-micros", b"5")]),
        );
        assert_eq!(report.tokens, Some(99));
        assert_eq!(report.cost_micros, Some(5));
        assert_eq!(report.outcome, Some(TaskOutcome::Failed));
    }

    #[test]
    fn custom_metrics_by_the_tables_names() {
        let names = TelemetryHeaders::default();
        let metrics = [
            "judge_score".to_string(),
            "refund".to_string(),
            "csat".to_string(),
        ];
        let mut report = TelemetryReport::default();
        let found = report.read(
            &names,
            &metrics,
            &h(&[
                ("x-agent-metric-judge_score", b"0.875"),
                ("x-agent-metric-refund", b"12"),
                ("x-agent-metric-refund", b"13"),
                ("x-agent-metric-unlisted", b"1"),
                ("x-agent-metric-csat", b"NaN"),
            ]),
        );
        assert!(found.custom);
        assert_eq!(report.custom.values[0], Some(875_000));
        assert_eq!(
            (report.custom.values[1], report.custom.invalid[1]),
            (None, true),
            "repeated"
        );
        assert_eq!(
            (report.custom.values[2], report.custom.invalid[2]),
            (None, true)
        );
        assert_eq!(
            report.malformed, 0,
            "custom metrics count as their own invalid"
        );
        let mut none = TelemetryReport::default();
        assert!(
            !none
                .read(&names, &metrics, &h(&[("x-agent-tokens", b"1")]))
                .custom
        );
        assert!(none.custom.is_empty());
    }

    #[test]
    fn custom_values_are_non_negative_decimals() {
        for (text, want) in [
            (&b"0"[..], Some(0)),
            (b" 4.5 ", Some(4_500_000)),
            (b"0.0000019", Some(1)),
            (b"1000000000", Some(1_000_000_000_000_000)),
            (b"1000000000.5", None),
            (b"1000000001", None),
            (b"-1", None),
            (b"+1", None),
            (b"1e3", None),
            (b"inf", None),
            (b"NaN", None),
            (b".5", None),
            (b"5.", None),
            (b"", None),
            (b"1.2.3", None),
            (b"\xff", None),
        ] {
            assert_eq!(
                parse_micros(text),
                want,
                "{:?}",
                String::from_utf8_lossy(text)
            );
        }
    }

    #[test]
    fn custom_names() {
        let names = TelemetryHeaders {
            outcome: "x-o".into(),
            ..TelemetryHeaders::default()
        };
        let mut report = TelemetryReport::default();
        let found = report.read(
            &names,
            &[],
            &h(&[
                ("x-o", b"escalated"),
                ("x-agent-outcome", b"failed"),
                ("x-agent-tokens", b"7"),
                ("x-agent-tokens", b"8"),
            ]),
        );
        assert_eq!(report.outcome, Some(TaskOutcome::Escalated));
        // The configured names found, each once (a repeated one is one removal).
        let present: Vec<&str> = found.names(&names).collect();
        assert_eq!(present, ["x-o", "x-agent-tokens"]);
    }
}
