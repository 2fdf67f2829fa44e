//! The simulated traffic: how a policy behaves per request, what one interval of
//! it adds up to (as the filter counts it), independent requests or sessions.

use canaryctl::analysis::clustered::normal_upper;
use canaryctl::analysis::evidence::Sample;
use policy_canary::replicate::{Slot, LATENCY_BOUNDS_MS, REPLICATES};

pub const REQUESTS_PER_INTERVAL: u32 = 9_000;
pub const SIMULATED_ENVOY: &str = "simulated-envoy";
pub const INTERVAL_MS: i64 = 30_000;
/// Envoy's default histogram bucket bounds (ms), as the filter's replicates keep them.
pub const BUCKETS: [f64; 19] = LATENCY_BOUNDS_MS;

/// How one policy behaves, per request.
#[derive(Clone, Copy)]
pub struct Behaviour {
    pub completion: f64,
    pub abandonment: f64,
    pub error: f64,
    pub tool_error: f64,
    pub guardrail: f64,
    pub safety: f64,
    pub cost_mean: f64,
    /// Latency: log-normal with this median (ms) and σ of the log.
    pub latency_median: f64,
    pub latency_sigma: f64,
}

pub const BASE: Behaviour = Behaviour {
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

pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> f64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn normal(&mut self) -> f64 {
        let (u, v) = (self.next().max(1e-300), self.next());
        (-2.0 * u.ln()).sqrt() * (std::f64::consts::TAU * v).cos()
    }
}

/// Counts of one arm over one interval, request by request, in total and per
/// session replicate (as the filter keeps them).
pub struct Tally {
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
    pub fn new(behaviour: &Behaviour) -> Tally {
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
    pub fn request(
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

    /// Requests counted.
    pub fn requests(&self) -> f64 {
        self.c[0]
    }

    /// The counts as a scrape shows them; with `replicates`, the replicate series
    /// too (without, the analysis treats requests as independent: today's method).
    pub fn sample(&self, replicates: bool) -> Sample {
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
pub fn iid(
    stable: &Behaviour,
    canary: &Behaviour,
    weight: f64,
    rng: &mut Rng,
) -> (Tally, Tally, u32) {
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
/// otherwise (A/A). A share of the sessions can be internal users (`Segment`).
pub struct Sessions {
    cohort: Vec<f64>,
    /// The session's replicate: drawn independently of its cohort, as the top
    /// bits of its hash are of its bucket.
    replicate: Vec<usize>,
    cost: Vec<f64>,
    completion: Vec<f64>,
    internal: Vec<bool>,
    cumulative: Vec<f64>,
}

/// Internal users sent to the canary by a segment at 100%: their completion,
/// and whether their requests count
/// in the compared arms (as the filter counted them before) or apart.
#[derive(Clone, Copy)]
pub struct Segment {
    pub completion: f64,
    pub compared: bool,
}

impl Sessions {
    pub fn new(n: usize, cost_sigma: f64, rng: &mut Rng) -> Sessions {
        Sessions::with_internal(n, cost_sigma, 0.0, rng)
    }

    /// `internal_share` of the sessions are internal users.
    pub fn with_internal(
        n: usize,
        cost_sigma: f64,
        internal_share: f64,
        rng: &mut Rng,
    ) -> Sessions {
        let mut sessions = Sessions {
            cohort: Vec::with_capacity(n),
            replicate: Vec::with_capacity(n),
            cost: Vec::with_capacity(n),
            completion: Vec::with_capacity(n),
            internal: Vec::with_capacity(n),
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
            sessions.internal.push(rng.next() < internal_share);
            total += (1.0 - rng.next()).powf(-1.0 / 1.5);
            sessions.cumulative.push(total);
        }
        sessions
    }

    pub fn interval(&self, canary: &Behaviour, weight: f64, rng: &mut Rng) -> (Tally, Tally, u32) {
        self.segmented(canary, weight, None, rng)
    }

    /// One interval; internal users (with `segment`) all go to the canary.
    pub fn segmented(
        &self,
        canary: &Behaviour,
        weight: f64,
        segment: Option<Segment>,
        rng: &mut Rng,
    ) -> (Tally, Tally, u32) {
        let (mut s, mut c) = (Tally::new(&BASE), Tally::new(canary));
        // Segment-routed requests counted apart: not reported to the analysis.
        let mut apart = Tally::new(canary);
        let total = self.cumulative.last().copied().unwrap_or(1.0);
        let mut to_canary = 0;
        for _ in 0..REQUESTS_PER_INTERVAL {
            let at = rng.next() * total;
            let i = self
                .cumulative
                .partition_point(|c| *c < at)
                .min(self.cumulative.len() - 1);
            let replicate = self.replicate[i];
            if let (Some(segment), true) = (segment, self.internal[i]) {
                to_canary += 1;
                let cost = canary.cost_mean * self.cost[i];
                let tally = if segment.compared { &mut c } else { &mut apart };
                tally.request(canary, segment.completion, cost, replicate, rng);
            } else if self.cohort[i] < weight {
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
