//! Simulation benchmark of the automatic analysis (`make bench`, or
//! `cargo bench -p canaryctl --bench simulate`; `TRIALS=N` changes the trials).
//!
//! Synthetic per-request outcomes for stable and canary go through the same code the
//! controller runs (`analysis::analyse` + `analysis::decide`) over the default stage
//! plan, time compressed: one loop turn is one 30 s analysis interval of 300 requests
//! per second. Beside it, the naive rule (`decide_naive`: point estimates against
//! the thresholds at every interval once the stage's minimum requests are in), and
//! the same naive rule calibrated to the false-rollback budget: its minimum
//! requests per stage multiplied by the smallest factor (2, 4, …, 64) whose A/A
//! false-rollback rate is at most 1%, so that exposures compare at equal error.
//! Then the session model (`BENCH_ONLY=sessions`, `SESSION_TRIALS=N`): A/A rollouts
//! where requests come from a fixed set of sessions with persistent traits, sticky
//! to their cohort — the case where treating requests as independent breaks.
//! Then a fair comparison (`BENCH_ONLY=fairness`, `fairness`): dominant sessions,
//! segments, a weight change inside a stage, controller restarts.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod fairness;
mod model;
mod signals;

use canaryctl::analysis::evidence::{Scrape, SeriesKey, Window};
use canaryctl::analysis::{analyse, decide, gate_alpha, Analysis, GateVerdict, StageDecision};
use canaryctl::rollout::plan::RolloutPlan;
use model::{
    iid, Behaviour, Rng, Sessions, Tally, BASE, INTERVAL_MS, REQUESTS_PER_INTERVAL, SIMULATED_ENVOY,
};

#[derive(Clone, Copy, PartialEq)]
enum End {
    Promoted,
    RolledBack,
    Inconclusive,
}

struct Trial {
    end: End,
    exposed: f64,
    minutes: f64,
    /// The first stage passed (the canary went on to the second).
    passed_first_stage: bool,
    /// The completion gate passed at a check of the first stage.
    completion_passed_first_stage: bool,
}

type Rule = fn(&RolloutPlan, usize, i64, &Analysis, u32) -> (StageDecision, u32);

/// How the analysis is run: the plan's rule, and whether the filter's session
/// replicates reach it.
#[derive(Clone)]
struct Method {
    name: String,
    plan: RolloutPlan,
    rule: Rule,
    replicates: bool,
    /// The window is split into constant-weight periods (else pooled, as before).
    periods: bool,
    disruption: Disruption,
}

/// What happens to a stage's window besides evidence.
#[derive(Clone, Copy, PartialEq)]
enum Disruption {
    None,
    /// Three controller restarts a stage, each starting a fresh window that
    /// spends the budgets again (before windows were kept).
    FreshWindows,
    /// Three a stage whose saved window is lost: each restart starts a new
    /// analysis sequence with its share of the budgets (the fallback now).
    LostWindows,
}

/// The checks of a stage at which `Disruption` restarts the controller.
const RESTART_CHECKS: [i64; 3] = [7, 15, 30];

impl Method {
    /// Today's method: requests independent (no replicates), and a pass at the same
    /// split level as a breach.
    fn today(plan: &RolloutPlan) -> Method {
        let mut plan = plan.clone();
        plan.false_promotion = gate_alpha(&plan);
        Method {
            name: "sequential (requests independent, one split α)".into(),
            plan,
            rule: decide,
            replicates: false,
            periods: true,
            disruption: Disruption::None,
        }
    }

    /// The session-robust method with separate budgets: the plan as given.
    fn robust(plan: &RolloutPlan) -> Method {
        Method {
            name: "session-robust, α 1% / β 5%".into(),
            plan: plan.clone(),
            rule: decide,
            replicates: true,
            periods: true,
            disruption: Disruption::None,
        }
    }
}

/// One interval's traffic at a canary weight and a time (ms since the trial began,
/// a UTC midnight): stable's and canary's counts and the canary's requests.
type Traffic<'a> = dyn FnMut(f64, i64, &mut Rng) -> (Tally, Tally, u32) + 'a;

fn run(method: &Method, traffic: &mut Traffic<'_>, rng: &mut Rng) -> Trial {
    run_judged(method, traffic, rng, None)
}

/// `run`, with a judge posting delayed signals about a sample of the answers.
fn run_judged(
    method: &Method,
    traffic: &mut Traffic<'_>,
    rng: &mut Rng,
    mut judge: Option<&mut signals::SignalJudge>,
) -> Trial {
    let (plan, rule) = (&method.plan, method.rule);
    let mut stage = 0;
    let mut window = Window::new(0);
    // The counts as one simulated Envoy reports them: cumulative, so that the
    // window takes deltas exactly as it does from a real scrape.
    let mut reported = Scrape::default();
    window.add(SIMULATED_ENVOY, &reported);
    let mut failures = 0;
    let mut checks_in_stage = 0i64;
    let mut exposed = 0.0;
    let mut checks = 0.0;
    let mut passed_first_stage = false;
    let mut completion_passed = false;
    loop {
        let now_ms = checks as i64 * INTERVAL_MS;
        checks += 1.0;
        checks_in_stage += 1;
        if method.disruption != Disruption::None && RESTART_CHECKS.contains(&checks_in_stage) {
            let sequence = window.sequence;
            window.restart(now_ms);
            if method.disruption == Disruption::LostWindows {
                window.sequence = sequence + 1;
            }
            failures = 0;
        }
        let weight = plan.effective_weight(stage, now_ms);
        if method.periods {
            window.set_weight(now_ms, weight.bp());
        }
        let (stable, canary, to_canary) = traffic(f64::from(weight.bp()) / 10_000.0, now_ms, rng);
        exposed += f64::from(to_canary);
        if let Some(judge) = judge.as_deref_mut() {
            let answers = (stable.requests(), canary.requests());
            judge.interval(answers, now_ms, window.started_ms, rng);
            window
                .signals
                .insert(judge.name.clone(), judge.strata(now_ms + INTERVAL_MS));
        }
        let served = [
            ("s", stable.sample(method.replicates)),
            ("c", canary.sample(method.replicates)),
        ];
        for (version, delta) in &served {
            reported
                .series
                .entry(SeriesKey::compared(version))
                .or_default()
                .add(delta);
        }
        window.add(SIMULATED_ENVOY, &reported);
        window.end_pass("s", "c");
        let analysis = analyse(plan, stage, &window);
        completion_passed |= stage == 0
            && analysis
                .comparisons
                .iter()
                .any(|c| c.metric == "completion_rate" && c.verdict == GateVerdict::Pass);
        // The stage's clock, and (now) never more than the window spans; before,
        // a fresh window after a restart counted the stage's whole time.
        let in_stage = checks_in_stage * INTERVAL_MS;
        let in_window = now_ms + INTERVAL_MS - window.started_ms;
        let elapsed = match method.disruption {
            Disruption::FreshWindows => in_stage,
            _ => in_stage.min(in_window),
        };
        let (decision, f) = rule(plan, stage, elapsed, &analysis, failures);
        failures = f;
        let minutes = checks * INTERVAL_MS as f64 / 60_000.0;
        let end = |end, passed_first_stage| Trial {
            end,
            exposed,
            minutes,
            passed_first_stage,
            completion_passed_first_stage: completion_passed,
        };
        match decision {
            StageDecision::Hold => {}
            StageDecision::Rollback(_) => return end(End::RolledBack, passed_first_stage),
            StageDecision::Inconclusive(_) | StageDecision::Pause(_) => {
                return end(End::Inconclusive, passed_first_stage)
            }
            StageDecision::Advance(_) => {
                passed_first_stage = true;
                stage += 1;
                if stage >= plan.stages.len() || plan.is_final_weight(stage) {
                    return end(End::Promoted, true);
                }
                window.restart(now_ms + INTERVAL_MS);
                failures = 0;
                checks_in_stage = 0;
            }
        }
    }
}

/// `trials` trials on up to 4 threads, trial `i` drawing from its own seeded
/// generator (so a run reproduces whatever the thread count).
fn trials(count: usize, seed: u64, trial: impl Fn(&mut Rng) -> Trial + Sync) -> Vec<Trial> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .min(4);
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let trial = &trial;
                scope.spawn(move || {
                    (t..count)
                        .step_by(threads)
                        .map(|i| trial(&mut Rng(seed ^ ((i as u64 + 1) * 0x1000_0000_01b3))))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().unwrap_or_default())
            .collect()
    })
}

/// The share of `results` that ended as `end`, in percent.
fn rate(results: &[Trial], end: End) -> f64 {
    results.iter().filter(|r| r.end == end).count() as f64 / results.len().max(1) as f64 * 100.0
}

/// A whole-number setting from the environment.
fn setting(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or(default)
}

/// The default plan, as a plan that names only its target and policies gets it.
fn default_plan() -> RolloutPlan {
    RolloutPlan::parse(
        "target: t\nstable: {version: s, cluster: a}\ncanary: {version: c, cluster: b}\n",
    )
    .expect("the default plan")
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    Some(v[v.len() / 2])
}

fn main() {
    // `make bench` runs every part; BENCH_ONLY picks one (`sessions`: only the
    // session model's table).
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    if !["", "simulation", "sessions", "fairness"].contains(&only.as_str()) {
        return;
    }
    if only.is_empty() || only == "simulation" {
        independent_requests();
    }
    if only != "fairness" {
        session_model();
    }
    if only != "sessions" {
        fairness::tables();
        signals::table();
    }
}

/// Rollouts under the session model, today's method and the session-robust one
/// side by side: identical canaries (A/A), and a regression at 1.6× the completion
/// gate's threshold.
fn session_model() {
    let trials_per_cell = setting("SESSION_TRIALS", 200);
    let plan = default_plan();
    let methods = [Method::today(&plan), Method::robust(&plan)];
    println!();
    println!(
        "Session model, default plan, {} requests/s, {trials_per_cell} trials per cell: \
         N active sessions with persistent traits (cost level log-normal σ, completion 0.90 or 0.65 \
         per session, Pareto α 1.5 shares of the traffic), sticky cohorts. Today: requests \
         independent, one split α; robust: session replicates, α 1% / β 5%",
        REQUESTS_PER_INTERVAL as i64 * 1000 / INTERVAL_MS
    );
    println!();
    println!(
        "| sessions | cost σ | A/A false rollback, today | A/A false rollback, robust | A/A promotion, robust | \
         A/A no decision, robust | A/A median minutes to promotion, robust | completion -8 points (1.6×), robust: rollback / promotion |"
    );
    println!("|---:|---:|---:|---:|---:|---:|---:|---:|");
    let regression = Behaviour {
        completion: BASE.completion - 0.08,
        ..BASE
    };
    for n in std::env::var("SIM_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .map_or(vec![60usize, 300, 3000], |n| vec![n])
    {
        for sigma in [0.0, 1.0, 1.5] {
            let cell = |method: &Method, canary: &Behaviour| {
                trials(trials_per_cell, 0x51ed_270b_2a5c_8f3d, |rng| {
                    let sessions = Sessions::new(n, sigma, rng);
                    run(
                        method,
                        &mut |weight, _, rng| sessions.interval(canary, weight, rng),
                        rng,
                    )
                })
            };
            let today = cell(&methods[0], &BASE);
            let robust = cell(&methods[1], &BASE);
            let bad = cell(&methods[1], &regression);
            let promoted_minutes = median(
                robust
                    .iter()
                    .filter(|r| r.end == End::Promoted)
                    .map(|r| r.minutes)
                    .collect(),
            );
            println!(
                "| {n} | {sigma:.1} | {:.1}% | {:.1}% | {:.1}% | {:.1}% | {} | {:.1}% / {:.1}% |",
                rate(&today, End::RolledBack),
                rate(&robust, End::RolledBack),
                rate(&robust, End::Promoted),
                rate(&robust, End::Inconclusive),
                promoted_minutes.map_or("-".into(), |m| format!("{m:.0}")),
                rate(&bad, End::RolledBack),
                rate(&bad, End::Promoted),
            );
        }
    }
}

/// The scenarios over independent requests, with the naive rules beside.
fn independent_requests() {
    let trials_per_scenario = setting("TRIALS", 500);
    let plan = default_plan();
    let with = |f: fn(&mut Behaviour)| {
        let mut b = BASE;
        f(&mut b);
        b
    };
    let scenarios: Vec<(&str, Behaviour)> = vec![
        ("A/A (no difference)", BASE),
        ("completion -3 points", with(|b| b.completion -= 0.03)),
        (
            "completion -5 points (1.0× threshold)",
            with(|b| b.completion -= 0.05),
        ),
        (
            "completion -8 points (1.6×)",
            with(|b| b.completion -= 0.08),
        ),
        ("completion -15 points", with(|b| b.completion -= 0.15)),
        ("cost per task +20% (1.0×)", with(|b| b.cost_mean *= 1.2)),
        ("cost per task +32% (1.6×)", with(|b| b.cost_mean *= 1.32)),
        ("cost per task +40%", with(|b| b.cost_mean *= 1.4)),
        ("latency P95 +100%", with(|b| b.latency_median *= 2.0)),
        ("safety violations 0.1%", with(|b| b.safety = 0.001)),
        ("error rate x2", with(|b| b.error *= 2.0)),
    ];
    println!(
        "Simulated rollouts: default plan (1% 5% 25% 50% 100%, 10 min and 500 canary requests per stage, \
         interval 30 s, failure threshold 2, max stage 4 h), {} requests/s, independent requests, \
         {trials_per_scenario} trials per scenario",
        REQUESTS_PER_INTERVAL as i64 * 1000 / INTERVAL_MS
    );
    println!();
    println!("| scenario | rule | rollback | promotion | no decision | median canary requests before rollback | median minutes to decision |");
    println!("|---|---|---:|---:|---:|---:|---:|");
    let simulate = |method: &Method, canary: &Behaviour| -> Vec<Trial> {
        trials(trials_per_scenario, 0x9e37_79b9_7f4a_7c15, |rng| {
            run(
                method,
                &mut |weight, _, rng| iid(&BASE, canary, weight, rng),
                rng,
            )
        })
    };
    let naive = |name: String, plan: RolloutPlan| Method {
        name,
        plan,
        rule: decide_naive,
        replicates: false,
        periods: true,
        disruption: Disruption::None,
    };
    // `SIM_ONLY=text`: only the scenarios whose name holds it (no calibration).
    let only = std::env::var("SIM_ONLY").unwrap_or_default();
    // The naive rule with k× the minimum requests, for the smallest k whose A/A
    // false-rollback rate is within the 1% budget.
    let mut calibration = Vec::new();
    let mut calibrated = None;
    for k in [2u64, 4, 8, 16, 32, 64]
        .into_iter()
        .filter(|_| only.is_empty())
    {
        let mut scaled = plan.clone();
        for stage in &mut scaled.stages {
            stage.min_requests *= k;
        }
        let method = naive(format!("naive, min requests ×{k}"), scaled);
        let false_rollback = rate(&simulate(&method, &BASE), End::RolledBack);
        calibration.push(format!("×{k}: {false_rollback:.1}%"));
        if false_rollback <= 1.0 {
            calibrated = Some(method);
            break;
        }
    }
    let mut methods = vec![
        Method::robust(&plan),
        Method::today(&plan),
        naive("naive".into(), plan.clone()),
    ];
    methods.extend(calibrated);
    for (name, canary) in scenarios.iter().filter(|(name, _)| name.contains(&only)) {
        for method in &methods {
            let results = simulate(method, canary);
            let exposed = median(
                results
                    .iter()
                    .filter(|r| r.end == End::RolledBack)
                    .map(|r| r.exposed)
                    .collect(),
            );
            let minutes = median(results.iter().map(|r| r.minutes).collect());
            println!(
                "| {name} | {} | {:.1}% | {:.1}% | {:.1}% | {} | {} |",
                method.name,
                rate(&results, End::RolledBack),
                rate(&results, End::Promoted),
                rate(&results, End::Inconclusive),
                exposed.map_or("-".into(), |e| format!("{e:.0}")),
                minutes.map_or("-".into(), |m| format!("{m:.0}")),
            );
        }
    }
    println!();
    println!(
        "Naive rule calibration (A/A false rollback by minimum-requests factor): {}",
        calibration.join(", ")
    );
}

/// The naive rule, for comparison in the simulation benchmark: once the stage's
/// minimum requests are in, a gate breaches when its point estimate is beyond the
/// threshold and passes otherwise; no bounds, checked at every interval.
pub fn decide_naive(
    plan: &RolloutPlan,
    stage: usize,
    elapsed_ms: i64,
    analysis: &Analysis,
    consecutive_failures: u32,
) -> (StageDecision, u32) {
    let Some(spec) = plan.stages.get(stage) else {
        return (StageDecision::Hold, 0);
    };
    if analysis.safety.verdict == GateVerdict::Breach {
        return (
            StageDecision::Rollback("safety".into()),
            consecutive_failures + 1,
        );
    }
    if analysis.canary_requests < spec.min_requests as f64 {
        return (StageDecision::Hold, consecutive_failures);
    }
    let enabled = analysis.comparisons.iter().filter(|c| {
        !matches!(
            c.verdict,
            GateVerdict::Disabled | GateVerdict::NotApplicable
        )
    });
    let breached: Vec<&str> = enabled
        .clone()
        .filter(|c| c.estimate.is_some_and(|e| e > 0.0))
        .map(|c| c.metric.as_str())
        .collect();
    if !breached.is_empty() {
        let failures = consecutive_failures + 1;
        if failures >= plan.failure_threshold {
            return (StageDecision::Rollback(breached.join(", ")), failures);
        }
        return (StageDecision::Hold, failures);
    }
    if elapsed_ms >= spec.min_duration.millis() && enabled.clone().all(|c| c.estimate.is_some()) {
        return (
            StageDecision::Advance("point estimates within thresholds".into()),
            0,
        );
    }
    if elapsed_ms >= plan.max_stage_duration.millis() {
        return (StageDecision::Inconclusive("no decision".into()), 0);
    }
    (StageDecision::Hold, 0)
}
