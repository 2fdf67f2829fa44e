//! A delayed signal gate (`BENCH_ONLY=fairness`): an LLM judge scores 20% of the
//! answers (mean 0.8, uniform ±0.15) and its scores arrive 20–60 s later; the plan
//! gates on them (`signal`, threshold 0.05 lower, `delay: 60s`) beside the default
//! gates. Independent requests, default plan.

use super::model::{iid, Rng, BASE, INTERVAL_MS, REQUESTS_PER_INTERVAL};
use super::{default_plan, median, rate, run_judged, setting, trials, End, Method};
use canaryctl::analysis::evidence::{Sample, SignalStrata, Stratum, SIGNAL_COUNT, SIGNAL_SUM};
use canaryctl::rollout::gates::Gates;
use policy_canary::replicate::REPLICATES;
use std::collections::{BinaryHeap, VecDeque};

/// One score: when it arrives, the answer's time, arm, replicate and value.
#[derive(PartialEq)]
struct Score {
    arrival_ms: i64,
    at_ms: i64,
    canary: bool,
    replicate: usize,
    value: f64,
}

impl Eq for Score {}
impl PartialOrd for Score {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Score {
    // The earliest arrival first (a max-heap, reversed).
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        other.arrival_ms.cmp(&self.arrival_ms)
    }
}

/// The judge and the controller's view of its scores, kept incrementally.
pub struct SignalJudge {
    pub name: String,
    sample: f64,
    lag_ms: (i64, i64),
    delay_ms: i64,
    means: (f64, f64),
    in_flight: BinaryHeap<Score>,
    /// Every score generated this stage, oldest answer first (for `matured`).
    by_answer: VecDeque<(i64, bool, usize, f64)>,
    stage_start_ms: i64,
    arrived: Stratum,
    matured: Stratum,
}

fn add(stratum: &mut Stratum, canary: bool, replicate: usize, value: f64) {
    let sample: &mut Sample = if canary {
        &mut stratum.canary
    } else {
        &mut stratum.stable
    };
    *sample.counters.entry(SIGNAL_SUM.into()).or_default() += value;
    *sample.counters.entry(SIGNAL_COUNT.into()).or_default() += 1.0;
    let sum = sample.named_replicate(replicate, SIGNAL_SUM);
    sample.set_named_replicate(replicate, SIGNAL_SUM, sum + value);
    let count = sample.named_replicate(replicate, SIGNAL_COUNT);
    sample.set_named_replicate(replicate, SIGNAL_COUNT, count + 1.0);
}

impl SignalJudge {
    pub fn new(stable_mean: f64, canary_mean: f64) -> SignalJudge {
        SignalJudge {
            name: "judge".into(),
            sample: 0.2,
            lag_ms: (20_000, 60_000),
            delay_ms: 60_000,
            means: (stable_mean, canary_mean),
            in_flight: BinaryHeap::new(),
            by_answer: VecDeque::new(),
            stage_start_ms: 0,
            arrived: Stratum::default(),
            matured: Stratum::default(),
        }
    }

    /// One interval's answers (stable, canary) given at `now_ms`, in the stage
    /// whose window started at `stage_start_ms`; the scores due by then arrive.
    pub fn interval(
        &mut self,
        (stable, canary): (f64, f64),
        now_ms: i64,
        stage_start_ms: i64,
        rng: &mut Rng,
    ) {
        if stage_start_ms != self.stage_start_ms {
            // A new stage: a new window, over its own answers only.
            self.stage_start_ms = stage_start_ms;
            self.arrived = Stratum::default();
            self.matured = Stratum::default();
            self.by_answer.clear();
        }
        for (answers, canary) in [(stable, false), (canary, true)] {
            let judged = (answers * self.sample).round() as usize;
            for _ in 0..judged {
                let mean = if canary { self.means.1 } else { self.means.0 };
                let at_ms = now_ms + (rng.next() * INTERVAL_MS as f64) as i64;
                let lag =
                    self.lag_ms.0 + (rng.next() * (self.lag_ms.1 - self.lag_ms.0) as f64) as i64;
                self.in_flight.push(Score {
                    arrival_ms: at_ms + lag,
                    at_ms,
                    canary,
                    replicate: (rng.next() * REPLICATES as f64) as usize % REPLICATES,
                    value: mean + (rng.next() - 0.5) * 0.3,
                });
            }
        }
    }

    /// What the controller holds at `now_ms`: every score arrived (for a breach)
    /// and those of answers older than the delay (for a pass).
    pub fn strata(&mut self, now_ms: i64) -> SignalStrata {
        while self
            .in_flight
            .peek()
            .is_some_and(|s| s.arrival_ms <= now_ms)
        {
            let Some(s) = self.in_flight.pop() else { break };
            if s.at_ms < self.stage_start_ms {
                continue;
            }
            add(&mut self.arrived, s.canary, s.replicate, s.value);
            self.by_answer
                .push_back((s.at_ms, s.canary, s.replicate, s.value));
        }
        // Arrived in arrival order, matured by the answer's time: with the delay at
        // least the longest lag, every matured score has arrived.
        let mut kept = VecDeque::new();
        while let Some((at_ms, canary, replicate, value)) = self.by_answer.pop_front() {
            if at_ms <= now_ms - self.delay_ms {
                add(&mut self.matured, canary, replicate, value);
            } else {
                kept.push_back((at_ms, canary, replicate, value));
            }
        }
        self.by_answer = kept;
        SignalStrata {
            all: vec![self.arrived.clone()],
            matured: vec![self.matured.clone()],
        }
    }
}

pub fn table() {
    let n = setting("FAIRNESS_TRIALS", 200);
    let mut plan = default_plan();
    let gates: Gates = serde_json::from_str(
        r#"{"judge": {"signal": "judge", "worse": "lower", "threshold": 0.05, "delay": "60s"}}"#,
    )
    .expect("the gate");
    plan.gates = gates;
    let method = Method::robust(&plan);
    println!();
    println!(
        "A delayed signal gate (independent requests, default plan plus `judge: {{signal: judge, worse: lower, \
         threshold: 0.05, delay: 60s}}`; a judge scores 20% of the answers, mean 0.8 ± 0.15 uniform, its scores \
         arriving 20-60 s later; {} requests/s, {n} trials per row):",
        REQUESTS_PER_INTERVAL as i64 * 1000 / INTERVAL_MS
    );
    println!();
    println!("| canary | rolled back | promoted | no decision | median minutes to the decision | median canary requests before rollback |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (name, canary_mean) in [
        ("judged the same (A/A)", 0.8),
        ("judged 0.08 lower (1.6× the threshold)", 0.72),
        ("judged 0.05 lower (at the threshold)", 0.75),
    ] {
        let results = trials(n, 0x3c6e_f372_fe94_f82b, |rng| {
            let mut judge = SignalJudge::new(0.8, canary_mean);
            run_judged(
                &method,
                &mut |weight, _, rng| iid(&BASE, &BASE, weight, rng),
                rng,
                Some(&mut judge),
            )
        });
        let exposed = median(
            results
                .iter()
                .filter(|r| r.end == End::RolledBack)
                .map(|r| r.exposed)
                .collect(),
        );
        println!(
            "| {name} | {:.1}% | {:.1}% | {:.1}% | {} | {} |",
            rate(&results, End::RolledBack),
            rate(&results, End::Promoted),
            rate(&results, End::Inconclusive),
            median(results.iter().map(|r| r.minutes).collect())
                .map_or("-".into(), |m| format!("{m:.0}")),
            exposed.map_or("-".into(), |e| format!("{e:.0}")),
        );
    }
}
