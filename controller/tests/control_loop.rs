//! The control loop against its clocks: intervals run on the steady clock, so a
//! wall-clock step neither suspends the analysis nor fires it early.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use canaryctl::access::Who;
use canaryctl::analysis::decide::StageDecision;
use canaryctl::analysis::judge::{Judge, Judgement};
use canaryctl::controller::Controller;
use canaryctl::notify::Notifier;
use canaryctl::store::RolloutRow;
use canaryctl::units::Now;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

/// Counts the checks and always holds.
#[derive(Clone, Default)]
struct CountingJudge(Arc<AtomicUsize>);

impl Judge for CountingJudge {
    fn check(&self, _rollout: &RolloutRow, _now: Now) -> Judgement {
        self.0.fetch_add(1, Ordering::SeqCst);
        Judgement {
            decision: StageDecision::Hold,
            details: serde_json::Value::Null,
        }
    }
}

const PLAN: &str = r#"
target: support-agent
stable: {version: v1, cluster: agent_stable}
canary: {version: v2, cluster: agent_canary}
analysis_interval: 30s
stages:
  - {weight: 5%, min_duration: 1h}
  - {weight: 100%}
"#;

#[test]
fn a_wall_clock_step_neither_suspends_nor_hurries_the_analysis() {
    let dir = tempfile::tempdir().unwrap();
    let judge = CountingJudge::default();
    let checks = Arc::clone(&judge.0);
    let controller = Controller::open(dir.path(), Notifier::none(), Box::new(judge)).unwrap();
    for version in ["v1", "v2"] {
        let policy = format!(
            "version: {version}\nsystem_prompt: p\nmodel: m\ntemperature: 0.2\nmax_tokens: 64\ntools: []\n"
        );
        controller
            .add_policy(&policy, &Who::new("test", None))
            .unwrap();
    }
    let started = controller
        .start_rollout(
            PLAN,
            &Who::new("test", None),
            canaryctl::rollout::permit::Authority::Admin,
        )
        .unwrap();
    let wall = started.stage_started_ms;
    let steady = 1_000_000;
    let at = |wall_ms: i64, steady_ms: u64| Now { wall_ms, steady_ms };

    controller.reconcile(at(wall + 30_000, steady)).unwrap();
    assert_eq!(checks.load(Ordering::SeqCst), 1, "due 30 s into the stage");

    // The wall clock steps back an hour; 30 s pass on the steady clock: due again.
    controller
        .reconcile(at(wall + 30_000 - 3_600_000, steady + 30_000))
        .unwrap();
    assert_eq!(
        checks.load(Ordering::SeqCst),
        2,
        "a step back suspended the analysis"
    );

    // The wall clock leaps a day ahead, 1 s later: not due yet.
    controller
        .reconcile(at(wall + 86_400_000, steady + 31_000))
        .unwrap();
    assert_eq!(
        checks.load(Ordering::SeqCst),
        2,
        "a leap ahead hurried the analysis"
    );
    controller
        .reconcile(at(wall + 86_400_000, steady + 60_000))
        .unwrap();
    assert_eq!(checks.load(Ordering::SeqCst), 3);
}
