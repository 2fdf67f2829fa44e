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

#![allow(clippy::expect_used, clippy::unwrap_used)]

use canaryctl::analysis::clustered::normal_upper;
use canaryctl::analysis::evidence::{Sample, Scrape, Window};
use canaryctl::analysis::{analyse, decide, gate_alpha, Analysis, GateVerdict, StageDecision};
use canaryctl::rollout::plan::RolloutPlan;
use policy_canary::replicate::{Slot, LATENCY_BOUNDS_MS, REPLICATES};

const REQUESTS_PER_INTERVAL: u32 = 9_000;
const SIMULATED_ENVOY: &str = "simulated-envoy";
const INTERVAL_MS: i64 = 30_000;
/// Envoy's default histogram bucket bounds (ms), as the filter's replicates keep them.
const BUCKETS: [f64; 19] = LATENCY_BOUNDS_MS;

/// How one policy behaves, per request.
#[derive(Clone, Copy)]
struct Behaviour {
    completion: f64,
    abandonment: f64,
    error: f64,
    tool_error: f64,
    guardrail: f64,
    safety: f64,
    cost_mean: f64,
    /// Latency: log-normal with this median (ms) and σ of the log.
    latency_median: f64,
    latency_sigma: f64,
}

const BASE: Behaviour = Behaviour {
    completion: 0.85,
    abandonment: 0.05,
    error: 0.02,
    tool_error: 0.05,
    guardrail: 0.03,
    safety: 0.0,
    cost_mean: 2_000.0,
    latency_median: 800.0,
    latency_sigma: 0.5,
};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> f64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Counts of one arm over one interval, request by request, in total and per
/// session replicate (as the filter keeps them).
struct Tally {
    c: [f64; 10],
    latency: [f64; BUCKETS.len() + 1],
    /// Per replicate, in the filter's `Slot::index` order: its counters, then the
    /// latency buckets.
    replicates: Vec<[f64; Slot::COUNT]>,
    /// P(latency ≤ each bucket bound).
    latency_cdf: [f64; BUCKETS.len()],
}

impl Tally {
    /// An empty tally for requests of `behaviour` (its latency distribution).
    fn new(behaviour: &Behaviour) -> Tally {
        let mut latency_cdf = [0.0; BUCKETS.len()];
        for (p, bound) in latency_cdf.iter_mut().zip(BUCKETS) {
            let z = (bound / behaviour.latency_median).ln() / behaviour.latency_sigma;
            *p = 1.0 - normal_upper(z);
        }
        Tally {
            latency_cdf,
            c: [0.0; 10],
            latency: [0.0; BUCKETS.len() + 1],
            replicates: vec![[0.0; Slot::COUNT]; REPLICATES],
        }
    }

    /// One request of `behaviour` in session replicate `replicate`, with this
    /// completion probability and mean cost (a session's own, in the session model).
    fn request(
        &mut self,
        behaviour: &Behaviour,
        completion: f64,
        cost_mean: f64,
        replicate: usize,
        rng: &mut Rng,
    ) {
        let c = &mut self.c;
        let r = &mut self.replicates[replicate];
        c[0] += 1.0; // rq_total
        r[0] += 1.0;
        if rng.next() < behaviour.error {
            c[1] += 1.0; // rq_5xx
            r[1] += 1.0;
        }
        c[2] += 1.0; // tasks_total
        r[2] += 1.0;
        let outcome = rng.next();
        if outcome < completion {
            c[3] += 1.0;
            r[3] += 1.0;
        } else if outcome < completion + behaviour.abandonment {
            c[4] += 1.0;
            r[4] += 1.0;
        }
        let cost = cost_mean * (0.5 + rng.next());
        c[5] += cost; // cost_micros
        r[5] += cost;
        c[6] += 2.0; // tool_calls
        r[6] += 2.0;
        for _ in 0..2 {
            if rng.next() < behaviour.tool_error {
                c[7] += 1.0;
                r[7] += 1.0;
            }
        }
        if rng.next() < behaviour.guardrail {
            c[8] += 1.0;
            r[8] += 1.0;
        }
        if behaviour.safety > 0.0 && rng.next() < behaviour.safety {
            c[9] += 1.0;
        }
        // The latency's bucket straight from its log-normal CDF (one draw).
        let u = rng.next();
        let bucket = self
            .latency_cdf
            .iter()
            .position(|p| u <= *p)
            .unwrap_or(BUCKETS.len());
        self.latency[bucket] += 1.0;
        r[Slot::Latency(bucket).index()] += 1.0;
    }

    /// The counts as a scrape shows them; with `replicates`, the replicate series
    /// too (without, the analysis treats requests as independent: today's method).
    fn sample(&self, replicates: bool) -> Sample {
        let names = [
            "rq_total",
            "rq_5xx",
            "tasks_total",
            "tasks_completed",
            "tasks_abandoned",
            "cost_micros",
            "tool_calls",
            "tool_errors",
            "guardrail_triggers",
            "safety_violations",
        ];
        let mut sample = Sample::default();
        for (name, value) in names.iter().zip(self.c) {
            sample.counters.insert(name.to_string(), value);
        }
        let mut cumulative = 0.0;
        for (i, count) in self.latency.iter().enumerate() {
            cumulative += count;
            sample
                .latency
                .push((BUCKETS.get(i).copied().unwrap_or(f64::INFINITY), cumulative));
        }
        if replicates {
            sample.replicates = self.replicates.clone();
        }
        sample
    }
}

/// One interval's traffic at canary weight `weight`: every request independent, each
/// to the canary with that probability. Returns stable's and canary's samples and
/// the canary's request count.
fn iid(stable: &Behaviour, canary: &Behaviour, weight: f64, rng: &mut Rng) -> (Tally, Tally, u32) {
    let mut to_canary = 0;
    for _ in 0..REQUESTS_PER_INTERVAL {
        if rng.next() < weight {
            to_canary += 1;
        }
    }
    let serve = |behaviour: &Behaviour, requests: u32, rng: &mut Rng| {
        let mut tally = Tally::new(behaviour);
        for _ in 0..requests {
            // Independent requests: each its own session, in a random replicate.
            let replicate = (rng.next() * REPLICATES as f64) as usize % REPLICATES;
            tally.request(
                behaviour,
                behaviour.completion,
                behaviour.cost_mean,
                replicate,
                rng,
            );
        }
        tally
    };
    let stable = serve(stable, REQUESTS_PER_INTERVAL - to_canary, rng);
    let canary = serve(canary, to_canary, rng);
    (stable, canary, to_canary)
}

/// The session model: `n` active sessions, each with persistent traits — a cost
/// level (log-normal, σ of the log `cost_sigma`, mean 1), a completion propensity
/// (a two-point mixture: 80% of sessions at 0.90, 20% at 0.65, mean 0.85) and a
/// share of the traffic (Pareto, α 1.5: a few sessions send most requests) — and a
/// fixed cohort draw, as sticky assignment gives. Both arms behave as `BASE`
/// otherwise (A/A).
struct Sessions {
    cohort: Vec<f64>,
    /// The session's replicate: drawn independently of its cohort, as the top
    /// bits of its hash are of its bucket.
    replicate: Vec<usize>,
    cost: Vec<f64>,
    completion: Vec<f64>,
    cumulative: Vec<f64>,
}

impl Sessions {
    fn new(n: usize, cost_sigma: f64, rng: &mut Rng) -> Sessions {
        let mut sessions = Sessions {
            cohort: Vec::with_capacity(n),
            replicate: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
            completion: Vec::with_capacity(n),
            cumulative: Vec::with_capacity(n),
        };
        let mut total = 0.0;
        for _ in 0..n {
            sessions.cohort.push(rng.next());
            sessions
                .replicate
                .push((rng.next() * REPLICATES as f64) as usize % REPLICATES);
            sessions
                .cost
                .push((cost_sigma * rng.normal() - cost_sigma * cost_sigma / 2.0).exp());
            sessions
                .completion
                .push(if rng.next() < 0.8 { 0.90 } else { 0.65 });
            total += (1.0 - rng.next()).powf(-1.0 / 1.5);
            sessions.cumulative.push(total);
        }
        sessions
    }

    fn interval(&self, canary: &Behaviour, weight: f64, rng: &mut Rng) -> (Tally, Tally, u32) {
        let (mut s, mut c) = (Tally::new(&BASE), Tally::new(canary));
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let mut to_canary = 0;
        for _ in 0..REQUESTS_PER_INTERVAL {
            let at = rng.next() * total;
            let i = self
                .cumulative
                .partition_point(|c| *c < at)
                .min(self.cumulative.len() - 1);
            let replicate = self.replicate[i];
            if self.cohort[i] < weight {
                to_canary += 1;
                // The canary shifts the session's own traits as it shifts BASE's.
                let completion = self.completion[i] + canary.completion - BASE.completion;
                let cost = canary.cost_mean * self.cost[i];
                c.request(canary, completion, cost, replicate, rng);
            } else {
                let cost = BASE.cost_mean * self.cost[i];
                s.request(&BASE, self.completion[i], cost, replicate, rng);
            }
        }
        (s, c, to_canary)
    }
}

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
}

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
        }
    }

    /// The session-robust method with separate budgets: the plan as given.
    fn robust(plan: &RolloutPlan) -> Method {
        Method {
            name: "session-robust, α 1% / β 5%".into(),
            plan: plan.clone(),
            rule: decide,
            replicates: true,
        }
    }
}

fn run(
    method: &Method,
    traffic: &mut dyn FnMut(f64, &mut Rng) -> (Tally, Tally, u32),
    rng: &mut Rng,
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
    loop {
        checks += 1.0;
        checks_in_stage += 1;
        let weight = f64::from(plan.stages[stage].weight.bp()) / 10_000.0;
        let (stable, canary, to_canary) = traffic(weight, rng);
        exposed += f64::from(to_canary);
        let served = [
            ("s", stable.sample(method.replicates)),
            ("c", canary.sample(method.replicates)),
        ];
        for (version, delta) in &served {
            reported
                .versions
                .entry((*version).to_string())
                .or_default()
                .add(delta);
        }
        window.add(SIMULATED_ENVOY, &reported);
        window.end_pass("s", "c");
        let analysis = analyse(plan, stage, &window);
        let (decision, f) = rule(
            plan,
            stage,
            checks_in_stage * INTERVAL_MS,
            &analysis,
            failures,
        );
        failures = f;
        let minutes = checks * INTERVAL_MS as f64 / 60_000.0;
        match decision {
            StageDecision::Hold => {}
            StageDecision::Rollback(_) => {
                return Trial {
                    end: End::RolledBack,
                    exposed,
                    minutes,
                }
            }
            StageDecision::Inconclusive(_) | StageDecision::Pause(_) => {
                return Trial {
                    end: End::Inconclusive,
                    exposed,
                    minutes,
                }
            }
            StageDecision::Advance(_) => {
                stage += 1;
                if stage >= plan.stages.len() || plan.is_final_weight(stage) {
                    return Trial {
                        end: End::Promoted,
                        exposed,
                        minutes,
                    };
                }
                window.restart(0);
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
    if !only.is_empty() && only != "simulation" && only != "sessions" {
        return;
    }
    if only != "sessions" {
        independent_requests();
    }
    session_model();
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
                        &mut |weight, rng| sessions.interval(canary, weight, rng),
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
                &mut |weight, rng| iid(&BASE, canary, weight, rng),
                rng,
            )
        })
    };
    let naive = |name: String, plan: RolloutPlan| Method {
        name,
        plan,
        rule: decide_naive,
        replicates: false,
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
        .map(|c| c.metric.name())
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
