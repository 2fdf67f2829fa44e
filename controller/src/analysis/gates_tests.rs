//! Gates beyond the seven built-in ones: derived from the filter's counts
//! (escalation rate, tokens and turns per task), custom metrics the agent
//! reports, and delayed signals, each session-robust like the built-ins.

use super::*;
use crate::analysis::evidence::{
    Sample, SeriesKey, SignalStrata, Stratum, SIGNAL_COUNT, SIGNAL_SUM,
};
use policy_canary::replicate::{ReplicateCounter as R, Slot, REPLICATES};

fn plan(gates: &str) -> RolloutPlan {
    RolloutPlan::parse(&format!(
        "target: t\nstable: {{version: s, cluster: a}}\ncanary: {{version: c, cluster: b}}\n\
         stages: [{{weight: 5%, min_duration: 1m, min_requests: 100}}, {{weight: 100%}}]\ngates: {gates}\n"
    ))
    .unwrap()
}

/// `tasks` spread over the replicates with `escalated` of them escalated, one
/// request per task, and a custom metric `judge` at `judge_mean` (±0.02 by replicate).
fn sample(tasks: f64, escalated: f64, judge_mean: f64) -> Sample {
    let mut s = Sample::default();
    let each = tasks / REPLICATES as f64;
    for r in 0..REPLICATES {
        let wobble = if r % 2 == 0 { 0.02 } else { -0.02 };
        for (counter, value) in [
            (R::RqTotal, each),
            (R::TasksTotal, each),
            (R::TasksCompleted, each * 0.85),
            (R::TasksEscalated, escalated / REPLICATES as f64),
        ] {
            s.set_replicate(r, Slot::Counter(counter).index(), value);
        }
        s.set_named_replicate(r, "custom_judge_micros", each * (judge_mean + wobble) * 1e6);
        s.set_named_replicate(r, "custom_judge_reports", each);
    }
    for (name, value) in [
        ("rq_total", tasks),
        ("tasks_total", tasks),
        ("tasks_completed", tasks * 0.85),
        ("tasks_escalated", escalated),
        ("custom_judge_micros", tasks * judge_mean * 1e6),
        ("custom_judge_reports", tasks),
    ] {
        s.counters.insert(name.into(), value);
    }
    s
}

fn window(stable: Sample, canary: Sample) -> Window {
    let mut w = Window::new(0);
    w.set_weight(0, 500);
    w.insert(SeriesKey::compared("s"), stable);
    w.insert(SeriesKey::compared("c"), canary);
    w
}

fn verdict(a: &Analysis, name: &str) -> GateVerdict {
    a.comparisons
        .iter()
        .find(|c| c.metric == name)
        .unwrap_or_else(|| panic!("no {name} in {:?}", a.comparisons))
        .verdict
}

#[test]
fn escalation_rate_is_off_until_named_and_then_judges() {
    let w = window(sample(40_000.0, 800.0, 0.8), sample(4_000.0, 400.0, 0.8));
    let a = analyse(&plan("{}"), 0, &w);
    assert!(a.comparisons.iter().all(|c| c.metric != "escalation_rate"));
    let a = analyse(&plan("{escalation_rate: {threshold: \"+20%\"}}"), 0, &w);
    assert_eq!(verdict(&a, "escalation_rate"), GateVerdict::Breach);
    let same = window(sample(40_000.0, 800.0, 0.8), sample(4_000.0, 80.0, 0.8));
    let a = analyse(&plan("{escalation_rate: {}}"), 0, &same);
    assert_eq!(verdict(&a, "escalation_rate"), GateVerdict::Pass);
}

#[test]
fn a_custom_metric_gate_reads_the_agents_reports() {
    let gates = "{judge: {metric: judge, worse: lower, threshold: 0.05}}";
    let worse = window(sample(40_000.0, 0.0, 0.8), sample(4_000.0, 0.0, 0.6));
    let a = analyse(&plan(gates), 0, &worse);
    let judge = a.comparisons.iter().find(|c| c.metric == "judge").unwrap();
    assert_eq!(judge.verdict, GateVerdict::Breach, "{judge:?}");
    assert!((judge.canary.unwrap() - 0.6).abs() < 1e-9);
    let same = window(sample(40_000.0, 0.0, 0.8), sample(4_000.0, 0.0, 0.8));
    assert_eq!(
        verdict(&analyse(&plan(gates), 0, &same), "judge"),
        GateVerdict::Pass
    );
    // No reports at all: nothing to compare.
    let unreported = |mut s: Sample| {
        s.counters.remove("custom_judge_reports");
        s.named.clear();
        s
    };
    let none = window(
        unreported(sample(40_000.0, 0.0, 0.8)),
        unreported(sample(4_000.0, 0.0, 0.8)),
    );
    let a = analyse(&plan(gates), 0, &none);
    assert_eq!(
        verdict(&a, "judge"),
        GateVerdict::Inconclusive,
        "a gate the plan named waits for its metric"
    );
}

/// Signals per replicate: `count` signals of mean `mean` (±0.2 by replicate).
fn signals(count: f64, mean: f64) -> Sample {
    let mut s = Sample::default();
    let each = count / REPLICATES as f64;
    for r in 0..REPLICATES {
        let wobble = if r % 2 == 0 { 0.2 } else { -0.2 };
        s.set_named_replicate(r, SIGNAL_SUM, each * (mean + wobble));
        s.set_named_replicate(r, SIGNAL_COUNT, each);
    }
    s.counters.insert(SIGNAL_SUM.into(), count * mean);
    s.counters.insert(SIGNAL_COUNT.into(), count);
    s
}

#[test]
fn a_signal_gate_breaches_at_once_and_passes_only_on_matured_answers() {
    let p = plan("{csat: {signal: csat, worse: lower, threshold: 0.3, delay: 2m}}");
    let mut w = window(sample(40_000.0, 0.0, 0.8), sample(4_000.0, 0.0, 0.8));
    let strata = |s: f64, c: f64| {
        vec![Stratum {
            stable: signals(20_000.0, s),
            canary: signals(2_000.0, c),
        }]
    };
    // Worse by a whole point: a breach on what has arrived, matured or not.
    w.signals.insert(
        "csat".into(),
        SignalStrata {
            all: strata(4.2, 3.2),
            matured: vec![Stratum::default()],
        },
    );
    assert_eq!(verdict(&analyse(&p, 0, &w), "csat"), GateVerdict::Breach);
    // Equal, but no answer is older than the delay yet: no pass.
    w.signals.insert(
        "csat".into(),
        SignalStrata {
            all: strata(4.2, 4.2),
            matured: vec![Stratum::default()],
        },
    );
    assert_eq!(
        verdict(&analyse(&p, 0, &w), "csat"),
        GateVerdict::Inconclusive
    );
    // Equal, and matured: a pass.
    w.signals.insert(
        "csat".into(),
        SignalStrata {
            all: strata(4.2, 4.2),
            matured: strata(4.2, 4.2),
        },
    );
    assert_eq!(verdict(&analyse(&p, 0, &w), "csat"), GateVerdict::Pass);
    // No signals at all: the gate waits for them (never a pass).
    w.signals.clear();
    assert_eq!(
        verdict(&analyse(&p, 0, &w), "csat"),
        GateVerdict::Inconclusive
    );
}
