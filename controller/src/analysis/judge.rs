//! Judges: at each analysis interval the control loop asks one for a stage decision.
//! `EvidenceJudge` compares canary with stable over the stage window that an
//! evidence source (`evidence::envoy_admin`) fills; `TimeOnlyJudge` serves a
//! controller with no evidence source.

use crate::analysis::analyse;
use crate::analysis::decide::{decide, StageDecision};
use crate::analysis::evidence::{
    SignalStrata, Snapshot, Stratum, Window, WindowCounts, SIGNAL_COUNT, SIGNAL_SUM,
};
use crate::analysis::AnalysisReport;
use crate::rollout::gates::Measure;
use crate::rollout::plan::InconclusiveAction;
use crate::rollout::Phase;
use crate::store::{self, RolloutRow};
use crate::units::Now;
use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};

/// A stage decision with the evidence behind it (kept in the audit log).
#[derive(Debug, Clone, PartialEq)]
pub struct Judgement {
    pub decision: StageDecision,
    pub details: serde_json::Value,
}

/// Decides, at each analysis interval, whether a progressing rollout moves on.
pub trait Judge: Send + Sync {
    fn check(&self, rollout: &RolloutRow, now: Now) -> Judgement;

    /// The comparison behind the decisions, for people.
    fn report(&self, _rollout: &RolloutRow) -> Option<AnalysisReport> {
        None
    }

    /// The counts the comparison is made of (the stage's window).
    fn counts(&self, _rollout: &RolloutRow) -> Option<WindowCounts> {
        None
    }
}

/// Without metrics: a stage moves on once its minimum duration has passed and it
/// needs no minimum request count; a stage that can never be judged waits until
/// `max_stage_duration`, then follows `on_inconclusive`.
pub struct TimeOnlyJudge;

impl Judge for TimeOnlyJudge {
    fn check(&self, rollout: &RolloutRow, now: Now) -> Judgement {
        let plan = &rollout.plan;
        let Some(stage) = plan.stages.get(rollout.state.stage) else {
            return Judgement {
                decision: StageDecision::Hold,
                details: serde_json::Value::Null,
            };
        };
        let elapsed = now.wall_ms - rollout.state.stage_started_ms;
        let details =
            serde_json::json!({"elapsed_ms": elapsed, "min_duration": stage.min_duration});
        let decision = if elapsed >= stage.min_duration.millis() && stage.min_requests == 0 {
            StageDecision::Advance(format!(
                "stage {} held for {}",
                rollout.state.stage + 1,
                stage.min_duration
            ))
        } else if elapsed >= plan.max_stage_duration.millis() {
            StageDecision::Inconclusive(format!(
                "no decision after the stage's maximum duration {}: data stayed insufficient",
                plan.max_stage_duration
            ))
        } else {
            StageDecision::Hold
        };
        Judgement { decision, details }
    }
}

/// One rollout's stage window and its run of failed checks.
#[derive(Debug)]
pub struct Tracked {
    stage: usize,
    /// Starts with the stage, and goes on across pauses and controller restarts.
    pub window: Window,
    consecutive_failures: u32,
    /// Since when (steady clock) the evidence has been unavailable, at the
    /// judge's checks.
    evidence_lost_since: Option<u64>,
}

impl Tracked {
    /// The rollout's window: continued from the store when it holds the stage's,
    /// else a new one (saved at once, so that a restart finds it).
    fn open(row: &RolloutRow, store: Option<&WindowStore>) -> Tracked {
        let window = match store {
            Some(store) => store.open(row),
            None => Window::new(row.state.stage_started_ms),
        };
        Tracked {
            stage: row.state.stage,
            window,
            consecutive_failures: 0,
            evidence_lost_since: None,
        }
    }

    /// A new stage starts a new window over the same baselines. A resume does
    /// not: the weight stayed the same through the pause, and so the comparison
    /// goes on (and its budgets are spent once per stage).
    fn follow(&mut self, row: &RolloutRow, store: Option<&WindowStore>) {
        if self.stage != row.state.stage {
            self.stage = row.state.stage;
            self.window.restart(row.state.stage_started_ms);
            self.consecutive_failures = 0;
            if let Some(store) = store {
                store.save(row, &self.window);
            }
        }
    }
}

/// Where the judge keeps each stage's window across controller restarts: for a
/// source that keeps history (Prometheus) its start and sequence, which is all it
/// needs to recompute it; for the Envoy admins the whole window, counts and
/// baselines together.
pub struct WindowStore {
    conn: Mutex<rusqlite::Connection>,
    keeps_history: bool,
}

impl WindowStore {
    /// A store on the controller's state database (opened and migrated already).
    pub fn open_at(path: &std::path::Path, keeps_history: bool) -> rusqlite::Result<WindowStore> {
        Ok(WindowStore {
            conn: Mutex::new(store::open(path)?),
            keeps_history,
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, rusqlite::Connection> {
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The stage's window as last saved, or a new one. A saved window whose
    /// evidence cannot be read back (a snapshot missing or unreadable) is lost:
    /// a new analysis sequence starts now, with its own share of the budgets.
    fn open(&self, row: &RolloutRow) -> Window {
        let stored = store::latest_window(&self.conn(), row.id, row.state.stage)
            .unwrap_or_else(|e| {
                tracing::warn!(rollout = row.id, error = %e, "cannot read the saved analysis window");
                None
            });
        let window = match stored {
            None => Window::new(row.state.stage_started_ms),
            Some(stored) if self.keeps_history => {
                let mut window = Window::new(stored.started_ms);
                window.sequence = stored.sequence;
                return window;
            }
            Some(stored) => {
                let snapshot = stored
                    .snapshot
                    .as_deref()
                    .and_then(|json| serde_json::from_str::<Snapshot>(json).ok())
                    .filter(|s| s.sequence == stored.sequence);
                match snapshot {
                    Some(snapshot) => return Window::restore(snapshot),
                    None => {
                        let mut window = Window::new(crate::units::now_ms());
                        window.sequence = stored.sequence.saturating_add(1);
                        tracing::warn!(
                            rollout = row.id,
                            stage = row.state.stage + 1,
                            sequence = window.sequence,
                            "the stage's saved evidence is lost: a new analysis starts with its share of the budgets"
                        );
                        window
                    }
                }
            }
        };
        self.save(row, &window);
        window
    }

    /// Saves the window (its snapshot, unless the source keeps history).
    fn save(&self, row: &RolloutRow, window: &Window) {
        self.write(row, &window.snapshot());
    }

    fn write(&self, row: &RolloutRow, snapshot: &Snapshot) {
        let stored = store::StoredWindow {
            sequence: snapshot.sequence,
            started_ms: snapshot.started_ms,
            snapshot: (!self.keeps_history)
                .then(|| serde_json::to_string(snapshot).ok())
                .flatten(),
        };
        let now = crate::units::now_ms();
        if let Err(e) = store::save_window(&self.conn(), row.id, row.state.stage, &stored, now) {
            tracing::warn!(rollout = row.id, error = %e, "cannot save the analysis window");
        }
    }

    /// Every signal gate's evidence over the window's periods (`starts`, oldest
    /// first): all signals so far, and those of answers older than the gate's delay.
    fn signals(
        &self,
        row: &RolloutRow,
        starts: &[i64],
        now_ms: i64,
    ) -> BTreeMap<String, SignalStrata> {
        let mut out = BTreeMap::new();
        let conn = self.conn();
        for gate in row.plan.gates.enabled() {
            let Measure::Signal { name, delay } = gate.measure else {
                continue;
            };
            let strata = |until_ms: i64| -> Vec<Stratum> {
                starts
                    .iter()
                    .enumerate()
                    .map(|(i, from)| {
                        let to = starts.get(i + 1).copied().unwrap_or(i64::MAX).min(until_ms);
                        let sums = if to > *from {
                            store::signal_sums(&conn, row.id, &name, (*from, to))
                                .unwrap_or_else(|e| {
                                    tracing::warn!(rollout = row.id, error = %e, "cannot read signals");
                                    Vec::new()
                                })
                        } else {
                            Vec::new()
                        };
                        signal_stratum(&sums)
                    })
                    .collect()
            };
            out.insert(
                name.clone(),
                SignalStrata {
                    all: strata(now_ms.saturating_add(1)),
                    matured: strata(now_ms - delay.millis()),
                },
            );
        }
        out
    }

    fn forget_ended(&self) {
        if let Err(e) = store::forget_ended_windows(&self.conn()) {
            tracing::warn!(error = %e, "cannot forget the windows of ended rollouts");
        }
    }
}

/// Signal sums per arm and replicate as both versions' samples.
fn signal_stratum(sums: &[store::SignalSum]) -> Stratum {
    let mut stratum = Stratum::default();
    for s in sums {
        let sample = if s.canary {
            &mut stratum.canary
        } else {
            &mut stratum.stable
        };
        *sample.counters.entry(SIGNAL_SUM.into()).or_default() += s.sum;
        *sample.counters.entry(SIGNAL_COUNT.into()).or_default() += s.count;
        let sum = sample.named_replicate(s.replicate, SIGNAL_SUM);
        sample.set_named_replicate(s.replicate, SIGNAL_SUM, sum + s.sum);
        let count = sample.named_replicate(s.replicate, SIGNAL_COUNT);
        sample.set_named_replicate(s.replicate, SIGNAL_COUNT, count + s.count);
    }
    stratum
}

/// Evidence per rollout, shared by the evidence source that fills the windows and
/// the checks that read them.
#[derive(Clone, Default)]
pub struct EvidenceJudge {
    tracked: Arc<Mutex<HashMap<i64, Tracked>>>,
    /// Set once the controller's state is open; without it (tests, simulations)
    /// windows live in memory only.
    store: Arc<OnceLock<WindowStore>>,
}

impl EvidenceJudge {
    /// Keeps windows in `store` from now on.
    pub fn keep_windows_in(&self, store: WindowStore) {
        let _ = self.store.set(store);
    }

    /// Reads the signal gates' evidence into the rollout's window (none without a
    /// store).
    fn refresh_signals(&self, row: &RolloutRow, now_ms: i64) {
        let Some(store) = self.store.get() else {
            return;
        };
        if !row
            .plan
            .gates
            .enabled()
            .iter()
            .any(|g| matches!(g.measure, Measure::Signal { .. }))
        {
            return;
        }
        let starts = self.with(row, |t| {
            let starts: Vec<i64> = t.window.periods().iter().map(|p| p.started_ms).collect();
            if starts.is_empty() {
                vec![t.window.started_ms]
            } else {
                starts
            }
        });
        let signals = store.signals(row, &starts, now_ms);
        self.with(row, |t| t.window.signals = signals);
    }

    /// Runs `f` on the rollout's tracked window (opened when first seen).
    pub fn with<T>(&self, row: &RolloutRow, f: impl FnOnce(&mut Tracked) -> T) -> T {
        let store = self.store.get();
        let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
        let entry = tracked
            .entry(row.id)
            .or_insert_with(|| Tracked::open(row, store));
        entry.follow(row, store);
        f(entry)
    }

    /// The active rollouts, as `list` reads them from the store (off the async
    /// workers); the windows of every other rollout are dropped.
    pub async fn active<E: Send + 'static>(
        &self,
        list: impl FnOnce() -> Result<Vec<RolloutRow>, E> + Send + 'static,
    ) -> Vec<RolloutRow> {
        let rows = tokio::task::spawn_blocking(list)
            .await
            .ok()
            .and_then(Result::ok)
            .unwrap_or_default();
        let ended = {
            let mut tracked = self.tracked.lock().unwrap_or_else(|p| p.into_inner());
            let before = tracked.len();
            tracked.retain(|id, _| rows.iter().any(|r| r.id == *id));
            tracked.len() < before
        };
        if ended {
            let judge = self.clone();
            let _ = tokio::task::spawn_blocking(move || {
                if let Some(store) = judge.store.get() {
                    store.forget_ended();
                }
            })
            .await;
        }
        rows
    }
}

impl Judge for EvidenceJudge {
    fn check(&self, row: &RolloutRow, now: Now) -> Judgement {
        self.refresh_signals(row, now.wall_ms);
        let judgement = self.with(row, |t| {
            let analysis = analyse(&row.plan, row.state.stage, &t.window);
            // The stage's clock (from its start or resume), and never more than the
            // window's evidence spans: a window started afresh after lost evidence
            // must meet `min_duration` by itself.
            let elapsed = now.wall_ms - row.state.stage_started_ms.max(t.window.started_ms);
            if let Some(reason) = &analysis.evidence_unavailable {
                // No evidence is never a pass: hold; after `evidence_timeout` without
                // any, the plan's `on_evidence_loss` (unmonitored, a canary may be
                // harming users, safety included).
                let since = *t.evidence_lost_since.get_or_insert(now.steady_ms);
                let lost_for = now.steady_since(since);
                let timeout = u64::try_from(row.plan.evidence_timeout.millis()).unwrap_or(0);
                let decision = if lost_for >= timeout {
                    let why = format!(
                        "no evidence for {} (evidence_timeout {}): {reason}",
                        crate::units::Dur(std::time::Duration::from_millis(lost_for)),
                        row.plan.evidence_timeout
                    );
                    match row.plan.evidence_loss_action(row.state.stage) {
                        InconclusiveAction::Pause => StageDecision::Pause(why),
                        InconclusiveAction::Rollback => StageDecision::Rollback(why),
                    }
                } else if elapsed >= row.plan.max_stage_duration.millis() {
                    StageDecision::Inconclusive(format!(
                        "no evidence for the stage's maximum duration {}: {reason}",
                        row.plan.max_stage_duration
                    ))
                } else {
                    StageDecision::Hold
                };
                let details = serde_json::to_value(&analysis).unwrap_or_default();
                return Judgement { decision, details };
            }
            t.evidence_lost_since = None;
            let (decision, failures) = decide(
                &row.plan,
                row.state.stage,
                elapsed,
                &analysis,
                t.consecutive_failures,
            );
            t.consecutive_failures = failures;
            let details = serde_json::to_value(&analysis).unwrap_or_default();
            Judgement { decision, details }
        });
        // Saved at every check: a restart continues from here, and the evidence
        // since comes back with the next scrape (Envoy's counters are cumulative).
        if let Some(store) = self.store.get().filter(|s| !s.keeps_history) {
            let snapshot = self.with(row, |t| t.window.snapshot());
            store.write(row, &snapshot);
        }
        judgement
    }

    fn counts(&self, row: &RolloutRow) -> Option<WindowCounts> {
        Some(self.with(row, |t| t.window.counts()))
    }

    fn report(&self, row: &RolloutRow) -> Option<AnalysisReport> {
        self.refresh_signals(row, crate::units::now_ms());
        self.with(row, |t| {
            // Time to decision only while the stage runs (not while it is paused).
            let now_ms = (row.state.phase == Phase::Progressing).then(crate::units::now_ms);
            Some(AnalysisReport::running(
                analyse(&row.plan, row.state.stage, &t.window),
                t.consecutive_failures,
                now_ms,
            ))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::analysis::GateVerdict;
    use crate::rollout::plan::RolloutPlan;
    use crate::rollout::{Phase, RolloutState};

    fn row(min_requests: u64) -> RolloutRow {
        let plan = RolloutPlan::parse(&format!(
            "target: t\nstable: {{version: v1, cluster: a}}\ncanary: {{version: v2, cluster: b}}\n\
             max_stage_duration: 1h\nstages: [{{weight: 5%, min_duration: 0s, min_requests: {min_requests}}}, {{weight: 100%}}]\n"
        ))
        .unwrap();
        RolloutRow {
            id: 1,
            target: "t".into(),
            plan,
            salt: "s".into(),
            state: RolloutState {
                phase: Phase::Progressing,
                stage: 0,
                stage_started_ms: 0,
            },
            created_ms: 0,
            updated_ms: 0,
        }
    }

    /// Unavailable evidence holds the stage, whatever the stage asks for.
    #[test]
    fn no_evidence_holds_the_stage_and_proves_no_gate() {
        let judge = EvidenceJudge::default();
        let row = row(0);
        judge.with(&row, |t| {
            t.window = Window::unavailable(0, "cannot reach Prometheus at http://p".into())
        });
        let judgement = judge.check(&row, Now::at(60_000));
        assert_eq!(judgement.decision, StageDecision::Hold);
        let report = judge.report(&row).unwrap();
        assert!(report
            .analysis
            .comparisons
            .iter()
            .all(|c| c.verdict == GateVerdict::Inconclusive));
        assert_eq!(report.analysis.safety.verdict, GateVerdict::Inconclusive);
        assert!(report.analysis.evidence_unavailable.is_some());
        // A wall-clock leap is not time without evidence (the steady clock is).
        let leap = Now {
            wall_ms: 60_000 + 120_000,
            steady_ms: 61_000,
        };
        assert_eq!(judge.check(&row, leap).decision, StageDecision::Hold);
        // Unmonitored for the plan's evidence_timeout (2 minutes): in the first
        // stage it pauses, past it it rolls back (audited and notified by the loop).
        let late = judge.check(&row, Now::at(60_000 + 120_000));
        assert!(
            matches!(&late.decision, StageDecision::Pause(r) if r.contains("no evidence for 2m")),
            "{:?}",
            late.decision
        );
        let mut later_stage = row.clone();
        later_stage.state.stage = 1;
        let judge = EvidenceJudge::default();
        judge.with(&later_stage, |t| {
            t.window = Window::unavailable(0, "no Envoy admin answered (2 tried)".into())
        });
        assert_eq!(
            judge.check(&later_stage, Now::at(1_000)).decision,
            StageDecision::Hold
        );
        assert!(matches!(
            judge.check(&later_stage, Now::at(1_000 + 120_000)).decision,
            StageDecision::Rollback(r) if r.contains("no Envoy admin answered")
        ));
        let judge = EvidenceJudge::default();
        judge.with(&row, |t| t.window = Window::unavailable(0, "down".into()));
        let _ = judge.check(&row, Now::at(60_000));
        // Evidence back: the analysis no longer says it is missing.
        judge.with(&row, |t| t.window = Window::new(0));
        let report = judge.report(&row).unwrap();
        assert_eq!(report.analysis.evidence_unavailable, None);
    }

    /// Cumulative counts as one Envoy reports them after `passes` passes of
    /// identical versions (A/A), with session replicates.
    fn envoy_scrape(passes: u32) -> crate::analysis::evidence::Scrape {
        use crate::analysis::evidence::{Sample, SeriesKey};
        use policy_canary::replicate::{ReplicateCounter as R, Slot, REPLICATES};
        let mut scrape = crate::analysis::evidence::Scrape::default();
        for (version, per_pass) in [("v1", 190.0), ("v2", 10.0)] {
            let mut s = Sample::default();
            for r in 0..REPLICATES {
                // Replicates differ (sessions do), the versions do not.
                let tasks = f64::from(passes) * per_pass * (1.0 + (r % 3) as f64) / 64.0;
                let completed = tasks * (0.8 + 0.05 * (r % 4) as f64);
                for (counter, value) in [
                    (R::RqTotal, tasks),
                    (R::TasksTotal, tasks),
                    (R::TasksCompleted, completed.floor()),
                ] {
                    s.set_replicate(r, Slot::Counter(counter).index(), value.floor());
                }
            }
            for (name, counter) in [
                ("rq_total", R::RqTotal),
                ("tasks_total", R::TasksTotal),
                ("tasks_completed", R::TasksCompleted),
            ] {
                let total: f64 = (0..REPLICATES)
                    .map(|r| s.replicate(r, Slot::Counter(counter)))
                    .sum();
                s.counters.insert(name.into(), total);
            }
            scrape.series.insert(SeriesKey::compared(version), s);
        }
        scrape
    }

    /// A judge keeping its windows in the state database at `path`.
    fn judge_on(path: &std::path::Path) -> EvidenceJudge {
        let judge = EvidenceJudge::default();
        judge.keep_windows_in(WindowStore::open_at(path, false).unwrap());
        judge
    }

    /// Three controller restarts in a stage change nothing the checks see: the
    /// window, saved at every check, is continued (not started afresh), so the
    /// stage's analysis is one sequence and spends its budgets once; the evidence
    /// scraped while the controller was down comes back in the next deltas.
    #[test]
    fn restarts_continue_the_stage_window() {
        let dir = tempfile::tempdir().unwrap();
        let row = row(0);
        let steady = EvidenceJudge::default();
        let mut restarted = judge_on(&dir.path().join("canaryctl.db"));
        let mut seen = Vec::new();
        for pass in 0..40u32 {
            if [10, 20, 30].contains(&pass) {
                // kill -9 after the last check; scrapes in between are lost.
                restarted = judge_on(&dir.path().join("canaryctl.db"));
            }
            let scrape = envoy_scrape(pass);
            for judge in [&steady, &restarted] {
                judge.with(&row, |t| t.window.add("envoy-1", &scrape));
            }
            if pass % 3 == 2 {
                let now = Now::at(i64::from(pass) * 1_000);
                let a = steady.check(&row, now);
                let b = restarted.check(&row, now);
                assert_eq!(a.decision, b.decision);
                for field in [
                    "comparisons",
                    "safety",
                    "stable_requests",
                    "canary_requests",
                    "sequence",
                    "alpha",
                ] {
                    assert_eq!(a.details[field], b.details[field], "pass {pass}: {field}");
                }
                seen.push(b.details["canary_requests"].as_f64().unwrap());
            }
        }
        assert!(seen.windows(2).all(|w| w[0] <= w[1]), "{seen:?}");
        assert_eq!(restarted.report(&row).unwrap().analysis.sequence, 0);

        // A saved window that cannot be read back is lost evidence: a new
        // sequence starts, now, with its smaller share of the budgets.
        let conn = store::open(&dir.path().join("canaryctl.db")).unwrap();
        conn.execute("UPDATE analysis_windows SET snapshot = 'garbage'", [])
            .unwrap();
        let after_loss = judge_on(&dir.path().join("canaryctl.db"));
        let report = after_loss.report(&row).unwrap().analysis;
        assert_eq!((report.sequence, report.canary_requests), (1, 0.0));
        assert!(report.window_started_ms > 0);
        let levels = crate::analysis::Levels::at_stage(&row.plan, 0);
        assert!((report.alpha - levels.for_sequence(1).breach).abs() < 1e-15);
        // And the next restart continues that one.
        let again = judge_on(&dir.path().join("canaryctl.db"));
        assert_eq!(again.report(&row).unwrap().analysis.sequence, 1);
    }
}
