//! The session-robust analysis on small, lopsided windows: everything it reports
//! stays finite and survives JSON.

use super::*;
use crate::analysis::evidence::Sample;
use policy_canary::replicate::{Slot, REPLICATES};

/// Small, lopsided, random replicate counts: every number an analysis reports is
/// finite (JSON has no infinity; a client reading `null` for a bound fails).
#[test]
fn bounds_from_few_replicates_are_finite() {
    let plan = RolloutPlan::parse(
        "target: t\nstable: {version: s, cluster: a}\ncanary: {version: c, cluster: b}\n",
    )
    .unwrap();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    let mut next = |m: u64| {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed % m.max(1)
    };
    for trial in 0..3000 {
        let mut window = Window::new(0);
        for version in ["s", "c"] {
            let mut sample = Sample::default();
            let groups = 1 + next(REPLICATES as u64) as usize;
            let scale = [1, 3, 30, 1000][trial % 4];
            for r in 0..groups {
                let requests = next(scale) as f64;
                let tasks = (requests - next(2) as f64).max(0.0);
                for (slot, value) in [
                    (0, requests),
                    (1, next(requests as u64 + 1) as f64),
                    (2, tasks),
                    (3, next(tasks as u64 + 1) as f64),
                    (4, next(2) as f64),
                    (5, next(100_000) as f64),
                    (6, next(3) as f64),
                    (7, next(2) as f64),
                    (8, next(2) as f64),
                ] {
                    sample.set_replicate(r, slot, value);
                }
                for _ in 0..3 {
                    let bucket = 5 + next(6) as usize;
                    let before = sample.replicate(r, Slot::Latency(bucket));
                    sample.set_replicate(
                        r,
                        Slot::Latency(bucket).index(),
                        before + next(requests as u64 + 1) as f64,
                    );
                }
            }
            let total = |i: usize| {
                (0..REPLICATES)
                    .map(|r| sample.replicates[r][i])
                    .sum::<f64>()
            };
            sample.counters.insert("rq_total".into(), total(0));
            sample.counters.insert("tasks_total".into(), total(2));
            let n = total(0);
            let early = next(n as u64 + 1) as f64;
            sample.latency = vec![(250.0, early), (1000.0, n), (f64::INFINITY, n)];
            window.insert(
                crate::analysis::evidence::SeriesKey::compared(version),
                sample,
            );
        }
        let a = analyse(&plan, trial % 4, &window);
        for c in &a.comparisons {
            let numbers = [c.stable, c.canary, c.estimate]
                .into_iter()
                .flatten()
                .chain(c.degradation.into_iter().flat_map(|(l, u)| [l, u]));
            for x in numbers {
                assert!(x.is_finite(), "trial {trial}: {c:?}");
            }
        }
        let now = next(600_000) as i64 + 1;
        let report = AnalysisReport::running(a, 0, Some(now));
        let json = serde_json::to_string(&report).unwrap();
        let back: Result<AnalysisReport, _> = serde_json::from_str(&json);
        assert!(back.is_ok(), "trial {trial}: {json}");
    }
}
