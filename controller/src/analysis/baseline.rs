//! What `canaryctl plan check` assumes of stable (and of an equal canary), with
//! `--base NAME=VALUE` to change one value or give a plan's own gate its mean.

/// What the check assumes of stable (and an equal canary).
#[derive(Debug, Clone, PartialEq)]
pub struct Baseline {
    pub completion_rate: f64,
    pub error_rate: f64,
    pub tool_error_rate: f64,
    /// Standard deviation of cost per task over its mean.
    pub cost_cv: f64,
    pub guardrail_rate: f64,
    pub abandonment_rate: f64,
    /// σ of log latency (log-normal): how far an equal canary sits below the P95 gate.
    pub latency_log_sigma: f64,
    /// With `--sessions`: how uneven sessions' shares of the traffic are, as the α
    /// of a Pareto distribution (smaller: a few sessions send more of it).
    pub session_pareto: f64,
    pub escalation_rate: f64,
    /// Standard deviation over the mean of tokens per task, and of requests per task.
    pub tokens_cv: f64,
    pub turns_cv: f64,
    /// The plan's own gates (custom metrics, signals): mean and standard
    /// deviation per report or signal (`--base NAME=MEAN[:SD]`).
    pub custom: std::collections::BTreeMap<String, (f64, f64)>,
}

impl Default for Baseline {
    fn default() -> Self {
        Baseline {
            completion_rate: 0.85,
            error_rate: 0.02,
            tool_error_rate: 0.05,
            cost_cv: 0.3,
            guardrail_rate: 0.03,
            abandonment_rate: 0.05,
            latency_log_sigma: 0.5,
            session_pareto: 1.5,
            escalation_rate: 0.05,
            tokens_cv: 0.5,
            turns_cv: 0.5,
            custom: Default::default(),
        }
    }
}

impl Baseline {
    /// Sets one value from `metric=value` (a gate's name, or `cost_cv`,
    /// `latency_log_sigma`, …), or a plan's own gate's `NAME=MEAN[:SD]` (SD by
    /// default that of a proportion for a mean inside 0..1, else the mean).
    pub fn set(&mut self, assignment: &str) -> Result<(), String> {
        let (name, value) = assignment
            .split_once('=')
            .ok_or_else(|| format!("`{assignment}`: expected NAME=VALUE"))?;
        let builtin = [
            "completion_rate",
            "error_rate",
            "tool_error_rate",
            "guardrail_rate",
            "abandonment_rate",
            "escalation_rate",
            "cost_cv",
            "latency_log_sigma",
            "session_pareto",
            "tokens_cv",
            "turns_cv",
        ];
        if !builtin.contains(&name.trim()) {
            return self.set_custom(name.trim(), value.trim());
        }
        let value: f64 = value
            .trim()
            .parse()
            .map_err(|_| format!("`{assignment}`: {value} is not a number"))?;
        let rate = |v: f64| {
            if v > 0.0 && v < 1.0 {
                Ok(v)
            } else {
                Err(format!(
                    "`{assignment}`: a rate between 0 and 1 (exclusive)"
                ))
            }
        };
        let positive = |v: f64| {
            if v > 0.0 && v.is_finite() {
                Ok(v)
            } else {
                Err(format!("`{assignment}`: must be above 0"))
            }
        };
        match name.trim() {
            "completion_rate" => self.completion_rate = rate(value)?,
            "error_rate" => self.error_rate = rate(value)?,
            "tool_error_rate" => self.tool_error_rate = rate(value)?,
            "guardrail_rate" => self.guardrail_rate = positive(value)?,
            "abandonment_rate" => self.abandonment_rate = rate(value)?,
            "cost_cv" => self.cost_cv = positive(value)?,
            "latency_log_sigma" => self.latency_log_sigma = positive(value)?,
            "session_pareto" => self.session_pareto = positive(value)?,
            "escalation_rate" => self.escalation_rate = rate(value)?,
            "tokens_cv" => self.tokens_cv = positive(value)?,
            "turns_cv" => self.turns_cv = positive(value)?,
            other => return Err(format!("`{other}`: not a baseline value")),
        }
        Ok(())
    }

    fn set_custom(&mut self, name: &str, value: &str) -> Result<(), String> {
        policy_canary::check::check_metric_name("--base", name).map_err(|_| {
            format!(
                "`{name}`: one of completion_rate, error_rate, tool_error_rate, guardrail_rate, \
                 abandonment_rate, escalation_rate, cost_cv, latency_log_sigma, session_pareto, \
                 tokens_cv, turns_cv, or a plan's own gate (NAME=MEAN[:SD])"
            )
        })?;
        let number = |text: &str| {
            text.trim()
                .parse::<f64>()
                .ok()
                .filter(|v| v.is_finite())
                .ok_or_else(|| format!("`{name}={value}`: {text} is not a number"))
        };
        let (mean, sd) = match value.split_once(':') {
            Some((mean, sd)) => (number(mean)?, number(sd)?),
            None => {
                let mean = number(value)?;
                let sd = if mean > 0.0 && mean < 1.0 {
                    (mean * (1.0 - mean)).sqrt()
                } else {
                    mean.abs()
                };
                (mean, sd)
            }
        };
        if sd <= 0.0 {
            return Err(format!(
                "`{name}={value}`: the standard deviation must be above 0"
            ));
        }
        self.custom.insert(name.to_string(), (mean, sd));
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn baseline_values_are_checked() {
        let mut b = Baseline::default();
        b.set("completion_rate=0.7").unwrap();
        assert_eq!(b.completion_rate, 0.7);
        assert!(b.set("completion_rate=1.5").is_err());
        assert!(b.set("cost_cv").is_err());
        // A plan's own gate: mean, and sd (a proportion's by default inside 0..1).
        b.set("judge=0.8").unwrap();
        assert!((b.custom["judge"].1 - 0.4).abs() < 1e-12);
        b.set("csat=4.2:0.9").unwrap();
        assert_eq!(b.custom["csat"], (4.2, 0.9));
        for bad in ["Judge!=1", "judge=x", "judge=1:0", "judge=1:y"] {
            assert!(b.set(bad).is_err(), "{bad}");
        }
    }
}
