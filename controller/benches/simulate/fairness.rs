//! A fair comparison (`BENCH_ONLY=fairness`, `FAIRNESS_TRIALS=N`): rollouts
//! where the two arms could stop being a randomized split of the same traffic —
//! a few dominant sessions, internal users sent to the canary by a segment, a
//! time window that changes the weight inside a stage, controller restarts —
//! with what the analysis does now, and (where the simulation can show it) what
//! it did before.

use super::model::{iid, Behaviour, Segment, Sessions, BASE, INTERVAL_MS, REQUESTS_PER_INTERVAL};
use super::{default_plan, rate, run, setting, trials, Disruption, End, Method, Trial};
use canaryctl::rollout::plan::RolloutPlan;

const SEED: u64 = 0x7f4a_7c15_9e37_79b9;

fn with_completion(completion: f64) -> Behaviour {
    Behaviour { completion, ..BASE }
}

/// The share of trials whose canary passed the first stage, in percent.
fn passed_first(results: &[Trial]) -> f64 {
    share(results, |r| r.passed_first_stage)
}

/// The share of trials whose completion gate passed at a check of the first
/// stage (whatever the other gates did), in percent.
fn completion_passed(results: &[Trial]) -> f64 {
    share(results, |r| r.completion_passed_first_stage)
}

fn share(results: &[Trial], pick: impl Fn(&Trial) -> bool) -> f64 {
    results.iter().filter(|r| pick(r)).count() as f64 / results.len().max(1) as f64 * 100.0
}

fn percent(x: f64) -> String {
    format!("{x:.1}%")
}

pub fn tables() {
    let n = setting("FAIRNESS_TRIALS", 200);
    println!();
    println!(
        "A fair comparison, {} requests/s, {n} trials per cell. Budgets: false rollback 1% per \
         rollout, false promotion 5% per gate and stage (the at-threshold columns: the first \
         stage passed).",
        REQUESTS_PER_INTERVAL as i64 * 1000 / INTERVAL_MS
    );
    dominant_sessions(n);
    segments(n);
    weight_change(n);
    restarts(n);
}

/// The session model's heavy-tailed traffic shares at 1% of 2000 or 3000 active
/// sessions: 20 or 30 sessions in the first stage's canary, a few of them with
/// most of its requests. Costs alike (σ 0), so that the completion gate is what
/// decides; the at-threshold column is that gate's pass at any check of the first
/// stage (its promise: at most 5%).
fn dominant_sessions(n: usize) {
    let plan = default_plan();
    let method = Method::robust(&plan);
    println!();
    println!(
        "Dominant sessions (session model, cost σ 0, Pareto α 1.5 traffic shares, default plan):"
    );
    println!();
    println!(
        "| active sessions | canary sessions at 1% | A/A false rollback | A/A promoted | \
         completion -5 points (at threshold): completion gate passed in the first stage | \
         completion -8 points (1.6×): rolled back |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for sessions in [2000usize, 3000] {
        let cell = |canary: Behaviour| {
            trials(n, SEED, |rng| {
                let s = Sessions::new(sessions, 0.0, rng);
                run(
                    &method,
                    &mut |weight, _, rng| s.interval(&canary, weight, rng),
                    rng,
                )
            })
        };
        let same = cell(BASE);
        let at_threshold = cell(with_completion(BASE.completion - 0.05));
        let worse = cell(with_completion(BASE.completion - 0.08));
        println!(
            "| {sessions} | {} | {} | {} | {} | {} |",
            sessions / 100,
            percent(rate(&same, End::RolledBack)),
            percent(rate(&same, End::Promoted)),
            percent(completion_passed(&at_threshold)),
            percent(rate(&worse, End::RolledBack)),
        );
    }
}

/// 2% of 30,000 sessions are internal users, sent to the canary at 100% by a
/// segment: about two thirds of the first stage's canary. Before, their requests
/// counted in the canary's arm; now they are counted apart.
fn segments(n: usize) {
    let plan = default_plan();
    let method = Method::robust(&plan);
    println!();
    println!(
        "Segments (session model, 30,000 sessions, 2% internal users sent to the canary at 100%, default plan):"
    );
    println!();
    println!(
        "| canary | internal users complete | before (in the canary's arm): rollback / promotion / first stage passed | \
         now (apart): rollback / promotion / first stage passed |"
    );
    println!("|---|---:|---:|---:|");
    let cases = [
        ("identical", BASE.completion, 0.75),
        (
            "-8 points for the others (1.6×)",
            BASE.completion - 0.08,
            0.95,
        ),
        (
            "-5 points for the others (at threshold)",
            BASE.completion - 0.05,
            0.95,
        ),
    ];
    for (name, completion, internal) in cases {
        let canary = with_completion(completion);
        let cell = |compared: bool| {
            trials(n, SEED, |rng| {
                let s = Sessions::with_internal(30_000, 1.0, 0.02, rng);
                let segment = Segment {
                    completion: internal,
                    compared,
                };
                run(
                    &method,
                    &mut |weight, _, rng| s.segmented(&canary, weight, Some(segment), rng),
                    rng,
                )
            })
        };
        let show = |r: &[Trial]| {
            format!(
                "{} / {} / {}",
                percent(rate(r, End::RolledBack)),
                percent(rate(r, End::Promoted)),
                percent(passed_first(r))
            )
        };
        println!(
            "| {name} | {internal:.2} | {} | {} |",
            show(&cell(true)),
            show(&cell(false))
        );
    }
}

/// A plan whose first stage (25%, at least 30 minutes) is capped to 10% by a
/// time window for its first 20 minutes, while completion drifts over the day
/// for both versions alike (0.90 in the window, 0.80 after it).
fn weight_change(n: usize) {
    let plan = RolloutPlan::parse(
        "target: t\nstable: {version: s, cluster: a}\ncanary: {version: c, cluster: b}\n\
         stages: [{weight: 25%, min_duration: 30m, min_requests: 500}, {weight: 100%}]\n\
         windows: [{start: \"00:00\", end: \"00:20\", max_weight: 10%}]\n\
         gates: {completion_rate: {threshold: 2 points}}\n",
    )
    .expect("the plan");
    println!();
    println!(
        "A weight change inside a stage (independent requests; the first stage, 25%, is capped to 10% \
         for its first 20 minutes; completion 0.90 then 0.80 for both versions; completion gate 2 points):"
    );
    println!();
    println!("| canary | before (one pooled window): rollback / first stage passed | now (period by period): rollback / first stage passed |");
    println!("|---|---:|---:|");
    let drift = |at_ms: i64| if at_ms < 20 * 60_000 { 0.90 } else { 0.80 };
    for (name, shift) in [("identical", 0.0), ("-2 points (at threshold)", -0.02)] {
        let cell = |periods: bool| {
            let method = Method {
                periods,
                ..Method::robust(&plan)
            };
            trials(n, SEED, |rng| {
                run(
                    &method,
                    &mut |weight, at_ms, rng| {
                        let completion = drift(at_ms);
                        let stable = with_completion(completion);
                        iid(&stable, &with_completion(completion + shift), weight, rng)
                    },
                    rng,
                )
            })
        };
        let show = |r: &[Trial]| {
            format!(
                "{} / {}",
                percent(rate(r, End::RolledBack)),
                percent(passed_first(r))
            )
        };
        println!(
            "| {name} | {} | {} |",
            show(&cell(false)),
            show(&cell(true))
        );
    }
}

/// Three controller restarts in a stage (at its 7th, 15th and 30th check): one
/// analysed stage (5%, at least 20 minutes) judged on completion alone, with a
/// false-rollback budget of 20% (the most a plan may set) and one breaching check
/// enough to roll back, so that false rollbacks are frequent enough to count.
fn restarts(n: usize) {
    let plan = RolloutPlan::parse(
        "target: t\nstable: {version: s, cluster: a}\ncanary: {version: c, cluster: b}\n\
         stages: [{weight: 5%, min_duration: 20m, min_requests: 500}, {weight: 100%}]\n\
         false_rollback: 0.2\nfailure_threshold: 1\n\
         gates: {error_rate: {enabled: false}, tool_error_rate: {enabled: false}, \
         cost_per_task: {enabled: false}, latency_p95: {enabled: false}, \
         guardrail_rate: {enabled: false}, abandonment_rate: {enabled: false}}\n",
    )
    .expect("the plan");
    println!();
    println!(
        "Controller restarts (independent requests; one 5% stage of at least 20 minutes judged on completion \
         alone, false_rollback 20%, failure_threshold 1; three restarts in the stage). A kept window (now) \
         continues as if there had been no restart:"
    );
    println!();
    println!(
        "| canary | no restart (= window kept) | before (each restart a fresh window and budget) | \
         now, if a restart loses the saved window (a new sequence, its share of the budget) |"
    );
    println!("|---|---:|---:|---:|");
    for (name, canary) in [
        ("A/A: rolled back", BASE),
        (
            "-5 points (at threshold): stage passed",
            with_completion(BASE.completion - 0.05),
        ),
    ] {
        let cell = |disruption: Disruption| {
            let method = Method {
                disruption,
                ..Method::robust(&plan)
            };
            trials(n, SEED, |rng| {
                run(
                    &method,
                    &mut |weight, _, rng| iid(&BASE, &canary, weight, rng),
                    rng,
                )
            })
        };
        let measure = |r: &[Trial]| {
            if canary.completion == BASE.completion {
                percent(rate(r, End::RolledBack))
            } else {
                percent(passed_first(r))
            }
        };
        println!(
            "| {name} | {} | {} | {} |",
            measure(&cell(Disruption::None)),
            measure(&cell(Disruption::FreshWindows)),
            measure(&cell(Disruption::LostWindows)),
        );
    }
}
