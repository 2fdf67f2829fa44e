//! A fair comparison (`docs/analysis.md`): only compared traffic counts, a few
//! dominant sessions cannot pass as many, a change of weight inside a stage does
//! not move the comparison, and stable's P95 is not taken as known.

use super::*;
use crate::analysis::evidence::{Sample, SeriesKey};
use policy_canary::replicate::{ReplicateCounter as R, Slot, LATENCY_BOUNDS_MS, REPLICATES};

fn plan(extra: &str) -> RolloutPlan {
    RolloutPlan::parse(&format!(
        "target: t\nstable: {{version: s, cluster: a}}\ncanary: {{version: c, cluster: b}}\n\
         stages: [{{weight: 5%, min_duration: 1m, min_requests: 100}}, {{weight: 100%}}]\n{extra}"
    ))
    .unwrap()
}

/// One version's counts from per-replicate (tasks, completed): one request per task.
fn sample(replicates: &[(f64, f64)]) -> Sample {
    let mut s = Sample::default();
    for (r, (tasks, completed)) in replicates.iter().enumerate() {
        for (counter, value) in [
            (R::RqTotal, *tasks),
            (R::TasksTotal, *tasks),
            (R::TasksCompleted, *completed),
            (R::CostMicros, tasks * 1000.0),
        ] {
            s.set_replicate(r, Slot::Counter(counter).index(), value);
        }
    }
    for (name, value) in [
        ("rq_total", replicates.iter().map(|r| r.0).sum::<f64>()),
        ("tasks_total", replicates.iter().map(|r| r.0).sum()),
        ("tasks_completed", replicates.iter().map(|r| r.1).sum()),
        ("cost_micros", replicates.iter().map(|r| r.0 * 1000.0).sum()),
    ] {
        s.counters.insert(name.into(), value);
    }
    s
}

/// `tasks` spread evenly over the 32 replicates at completion `p`.
fn even(tasks: f64, p: f64) -> Vec<(f64, f64)> {
    let each = tasks / REPLICATES as f64;
    vec![(each, each * p); REPLICATES]
}

fn completion(a: &Analysis) -> &Comparison {
    a.comparisons
        .iter()
        .find(|c| c.metric == "completion_rate")
        .unwrap()
}

fn window_of(periods: &[(u16, Sample, Sample)]) -> Window {
    let mut w = Window::new(0);
    for (i, (weight, stable, canary)) in periods.iter().enumerate() {
        w.set_weight(i as i64 * 60_000, *weight);
        w.insert(SeriesKey::compared("s"), stable.clone());
        w.insert(SeriesKey::compared("c"), canary.clone());
    }
    w
}

/// An identical canary with internal users (completion 0.75 against the others'
/// 0.85) sent to it at 100% by a segment: their requests are counted apart, so
/// they neither roll it back nor, when they complete more, hide a regression.
#[test]
fn segment_routed_traffic_is_not_compared() {
    let p = plan("");
    let mut w = window_of(&[(
        500,
        sample(&even(40_000.0, 0.85)),
        sample(&even(2_000.0, 0.85)),
    )]);
    w.insert(
        SeriesKey::new(Traffic::Segment, "c"),
        sample(&even(4_000.0, 0.75)),
    );
    let a = analyse(&p, 0, &w);
    assert_ne!(completion(&a).verdict, GateVerdict::Breach);
    assert_eq!(a.canary_requests, 2_000.0, "only compared requests");
    let apart = &a.outside[0];
    assert_eq!(
        (apart.traffic.as_str(), apart.version.as_str(), apart.tasks),
        ("segment", "c", 4_000.0)
    );
    // The same internal users pooled into the canary arm (as they were counted
    // before) roll the identical canary back.
    let mut pooled = sample(&even(2_000.0, 0.85));
    pooled.add(&sample(&even(4_000.0, 0.75)));
    let before = window_of(&[(500, sample(&even(40_000.0, 0.85)), pooled)]);
    assert_eq!(
        completion(&analyse(&p, 0, &before)).verdict,
        GateVerdict::Breach
    );

    // External users 10 points worse on the canary, internal ones better: the
    // regression shows.
    let mut w = window_of(&[(
        500,
        sample(&even(40_000.0, 0.85)),
        sample(&even(4_000.0, 0.75)),
    )]);
    w.insert(
        SeriesKey::new(Traffic::Segment, "c"),
        sample(&even(8_000.0, 0.99)),
    );
    assert_eq!(completion(&analyse(&p, 0, &w)).verdict, GateVerdict::Breach);
    // A safety violation of a segment-routed user still counts.
    let mut unsafe_segment = sample(&even(100.0, 0.9));
    unsafe_segment
        .counters
        .insert("safety_violations".into(), 1.0);
    w.insert(SeriesKey::new(Traffic::Segment, "c"), unsafe_segment);
    assert_eq!(analyse(&p, 0, &w).safety.verdict, GateVerdict::Breach);
}

/// One ordinary session holding 95% of the canary's tasks: 32 non-empty
/// replicates, about one effective. An A/A window where that session happens to
/// complete less does not breach; a canary 6 points worse for everyone does not
/// pass because one good session dominates it.
#[test]
fn a_dominant_session_is_one_unit_of_evidence() {
    let p = plan("");
    let stable = sample(&even(60_000.0, 0.85));
    let dominated = |big: (f64, f64), rest_p: f64| {
        let mut canary = vec![big];
        canary.extend((1..REPLICATES).map(|_| (16.0, 16.0 * rest_p)));
        sample(&canary)
    };
    // A/A: the big session completes 0.70 (sessions differ), the rest 0.85.
    let a = analyse(
        &p,
        0,
        &window_of(&[(500, stable.clone(), dominated((9_500.0, 6_650.0), 0.85))]),
    );
    let c = completion(&a);
    assert_ne!(c.verdict, GateVerdict::Breach, "{c:?}");
    assert_eq!(c.dominated_arms(), ["canary"]);
    assert!(c.effective_replicates.unwrap()[1] < 1.2);
    // Worse by 6 points for every session, one big good one at 0.86.
    let a = analyse(
        &p,
        0,
        &window_of(&[(500, stable.clone(), dominated((9_500.0, 8_170.0), 0.79))]),
    );
    assert_ne!(completion(&a).verdict, GateVerdict::Pass);
    // Evenly spread sessions decide as before.
    let a = analyse(
        &p,
        0,
        &window_of(&[(500, stable, sample(&even(10_000.0, 0.70)))]),
    );
    assert_eq!(completion(&a).verdict, GateVerdict::Breach);
    assert!(completion(&a).dominated_arms().is_empty());
}

/// A time window lifts the canary from 10% to 25% while completion drifts over
/// the day (0.95, then 0.70, for both versions alike). Pooled over the stage (as
/// before periods), the canary's tasks lean to the worse hours and an identical
/// canary breaches; compared period by period, the versions are equal.
#[test]
fn a_weight_change_inside_a_stage_does_not_move_the_comparison() {
    let p = plan("gates: {completion_rate: {threshold: 2 points}}\n");
    let periods = [
        (
            1_000,
            sample(&even(90_000.0, 0.95)),
            sample(&even(10_000.0, 0.95)),
        ),
        (
            2_500,
            sample(&even(30_000.0, 0.70)),
            sample(&even(10_000.0, 0.70)),
        ),
    ];
    let a = analyse(&p, 0, &window_of(&periods));
    assert_eq!(a.periods.len(), 2);
    let c = completion(&a);
    assert!(
        (c.stable.unwrap() - c.canary.unwrap()).abs() < 1e-9,
        "{c:?}"
    );
    assert_ne!(c.verdict, GateVerdict::Breach);
    let mut pooled_s = periods[0].1.clone();
    pooled_s.add(&periods[1].1);
    let mut pooled_c = periods[0].2.clone();
    pooled_c.add(&periods[1].2);
    let pooled = analyse(&p, 0, &window_of(&[(1_000, pooled_s, pooled_c)]));
    assert_eq!(
        completion(&pooled).verdict,
        GateVerdict::Breach,
        "pooled, the drift is a difference"
    );
}

/// The sequences of a stage share each budget: however many restarts lose the
/// evidence, their levels add up to at most the stage's.
#[test]
fn sequences_share_the_budgets() {
    let levels = Levels {
        breach: 0.001,
        pass: 0.05,
    };
    let total: f64 = (0..64).map(|k| levels.for_sequence(k).breach).sum();
    assert!(total <= levels.breach * (1.0 + 1e-12), "{total}");
    let total: f64 = (0..64).map(|k| levels.for_sequence(k).pass).sum();
    assert!(total <= levels.pass * (1.0 + 1e-12));
    assert_eq!(levels.for_sequence(0).breach, 0.001 * FIRST_SEQUENCE_SHARE);
    assert!(levels.for_sequence(u32::MAX).breach >= 0.0);
}

/// Latency samples drawn from one log-normal, per replicate, as the filter keeps them.
fn latency_sample(n: usize, rng: &mut impl FnMut() -> f64) -> Sample {
    let mut s = Sample::default();
    let mut buckets = vec![0.0; LATENCY_BOUNDS_MS.len() + 1];
    for i in 0..n {
        // Box–Muller: a standard normal from two uniforms.
        let z = (-2.0 * rng().max(1e-300).ln()).sqrt() * (std::f64::consts::TAU * rng()).cos();
        let ms = 800.0 * (0.5 * z).exp();
        let b = LATENCY_BOUNDS_MS
            .iter()
            .position(|bound| ms <= *bound)
            .unwrap_or(LATENCY_BOUNDS_MS.len());
        buckets[b] += 1.0;
        let r = i % REPLICATES;
        let slot = Slot::Latency(b);
        let before = s.replicate(r, slot);
        s.set_replicate(r, slot.index(), before + 1.0);
        let total = s.replicate(r, Slot::Counter(R::RqTotal));
        s.set_replicate(r, Slot::Counter(R::RqTotal).index(), total + 1.0);
    }
    let mut cumulative = 0.0;
    for (i, count) in buckets.iter().enumerate() {
        cumulative += count;
        let le = LATENCY_BOUNDS_MS.get(i).copied().unwrap_or(f64::INFINITY);
        s.latency.push((le, cumulative));
    }
    s.counters.insert("rq_total".into(), n as f64);
    s
}

/// Identical latencies, a gate at +2%: stable's P95 taken as known breached
/// identical canaries; with its own bound it does not (the plan's whole
/// false-rollback budget on this one gate, so that breaches are frequent enough
/// to count).
#[test]
fn stable_p95_uncertainty_enters_the_latency_bound() {
    let p = plan(
        "false_rollback: 0.05\ngates: {latency_p95: {threshold: \"+1%\"}, completion_rate: {enabled: false}, \
         error_rate: {enabled: false}, tool_error_rate: {enabled: false}, cost_per_task: {enabled: false}, \
         guardrail_rate: {enabled: false}, abandonment_rate: {enabled: false}}\n",
    );
    let mut seed = 0x9e37_79b9_7f4a_7c15u64;
    let mut rng = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        (seed >> 11) as f64 / (1u64 << 53) as f64
    };
    let trials = 200;
    let mut breaches = 0;
    for _ in 0..trials {
        let w = window_of(&[(
            500,
            latency_sample(600, &mut rng),
            latency_sample(60_000, &mut rng),
        )]);
        let a = analyse(&p, 0, &w);
        let latency = a
            .comparisons
            .iter()
            .find(|c| c.metric == "latency_p95")
            .unwrap();
        if latency.verdict == GateVerdict::Breach {
            breaches += 1;
        }
    }
    // The level per check is 0.05 × 0.9 = 4.5%; one check of 200 identical pairs.
    eprintln!("{breaches} of {trials}");
    assert!(breaches <= trials * 45 / 1000, "{breaches} of {trials}");
}
