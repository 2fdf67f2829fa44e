//! `canaryctl rollout watch`: an audit line per change and a live line per stage.

use super::client::Client;
use super::{fail, Failure};
use crate::analysis::AnalysisReport;
use crate::analysis::{Analysis, GateVerdict};
use crate::format::{number, utc};
use crate::rollout::Phase;
use crate::store::AuditEntry;
use crate::units::Weight;
use crate::view::{AuditList, RolloutView};
use std::time::Duration;

/// Exit code of `rollout watch` when the rollout ends without the canary promoted.
pub const NOT_PROMOTED: i32 = 4;

pub(super) async fn watch(client: &Client, id: i64, json: bool) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal() && !json;
    let mut shown: Option<(Phase, usize)> = None;
    let mut last_audit = 0;
    let mut bar_drawn = false;
    let mut last_plain = std::time::Instant::now();
    loop {
        let v = client.rollout_status(id).await?;
        let audit: AuditList = client
            .fetch(&format!("/v1/audit?rollout={id}&after={last_audit}"))
            .await?;
        let phase = v.rollout.phase;
        let key = (phase, v.rollout.stage);
        let mut out = std::io::stdout().lock();
        for e in &audit.audit {
            last_audit = e.id;
            if json {
                let _ = writeln!(out, "{}", serde_json::json!({"audit": e}));
                continue;
            }
            if bar_drawn {
                let _ = writeln!(out);
                bar_drawn = false;
            }
            let _ = writeln!(out, "{}", audit_line(e));
        }
        let ended = !v.rollout.is_active();
        if json {
            if shown.as_ref() != Some(&key) || ended {
                let _ = writeln!(out, "{}", serde_json::to_string(&v).unwrap_or_default());
            }
        } else if !ended {
            let line = stage_line(&v.rollout, v.analysis.as_ref());
            if terminal {
                let _ = write!(out, "\r\x1b[2K{}", fit(&line));
                bar_drawn = true;
            } else if shown.as_ref() != Some(&key)
                || last_plain.elapsed() >= Duration::from_secs(10)
            {
                let _ = writeln!(out, "{line}");
                last_plain = std::time::Instant::now();
            }
        }
        let _ = out.flush();
        shown = Some(key);
        if ended {
            if bar_drawn {
                let _ = writeln!(out);
            }
            if !json {
                let _ = writeln!(
                    out,
                    "rollout #{id} {phase}: {} now serves {}",
                    v.rollout.target,
                    if phase == Phase::Promoted {
                        &v.rollout.canary.version
                    } else {
                        &v.rollout.stable.version
                    }
                );
            }
            return if phase == Phase::Promoted {
                Ok(())
            } else {
                Err(fail(NOT_PROMOTED, format!("rollout #{id} ended {phase}")))
            };
        }
        drop(out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// One audit entry as a watch line: what changed, by whom and why, with the
/// breached gates of an automatic rollback.
fn audit_line(e: &AuditEntry) -> String {
    let at = utc(e.at_ms);
    let weight = e
        .canary_weight_bp
        .map_or(String::new(), |bp| format!("  canary {}", Weight(bp)));
    let mut line = format!(
        "{}  {:<14} {} -> {}{weight}  by {}: {}",
        &at[11..19],
        e.action.as_str(),
        e.from.as_deref().unwrap_or(""),
        e.to.as_deref().unwrap_or(""),
        crate::format::acted_by(e),
        e.reason
    );
    if let Some(analysis) = Analysis::from_audit(e) {
        for c in analysis.breaches() {
            line.push_str(&format!(
                "\n          breach: {} stable {} canary {} ({}, threshold {})",
                c.metric,
                number(c.stable),
                number(c.canary),
                c.change,
                c.threshold
            ));
        }
    }
    line
}

/// The current stage on one line: weight, a progress bar towards the stage's
/// minimum duration and canary requests, samples and the gates' verdicts.
pub fn stage_line(v: &RolloutView, report: Option<&AnalysisReport>) -> String {
    let (min_ms, min_requests) = v.current_stage().map_or((0, 0.0), |s| {
        (s.min_duration.millis(), s.min_requests as f64)
    });
    let elapsed = (crate::units::now_ms() - v.stage_started_ms).max(0);
    let analysis = report.map(|r| &r.analysis);
    let canary = analysis.map_or(0.0, |a| a.canary_requests);
    let stable = analysis.map_or(0.0, |a| a.stable_requests);
    let time_part = if min_ms > 0 {
        (elapsed as f64 / min_ms as f64).min(1.0)
    } else {
        1.0
    };
    let request_part = if min_requests > 0.0 {
        (canary / min_requests).min(1.0)
    } else {
        1.0
    };
    let filled = (time_part.min(request_part) * 20.0).round() as usize;
    let mut counts: std::collections::BTreeMap<GateVerdict, Vec<String>> = Default::default();
    for c in analysis.map_or(&[][..], |a| &a.comparisons) {
        // An open gate with its estimated time to decision (`error_rate ~12m`),
        // or the arm a few sessions dominate (`error_rate (canary: few sessions)`).
        let dominated = c.dominated_arms();
        let name = match c.eta_s {
            _ if !dominated.is_empty() => format!(
                "{} ({}: few sessions)",
                c.metric.as_str(),
                dominated.join("+")
            ),
            Some(s) => format!(
                "{} ~{}",
                c.metric.as_str(),
                crate::analysis::planning::duration(s)
            ),
            None => c.metric.clone(),
        };
        counts.entry(c.verdict).or_default().push(name);
    }
    let total: usize = counts.values().map(Vec::len).sum();
    let pass = counts.get(&GateVerdict::Pass).map_or(0, Vec::len);
    let list = |k: GateVerdict, label: &str| {
        counts
            .get(&k)
            .map_or(String::new(), |m| format!("  {label} {}", m.join(", ")))
    };
    let gates = match report {
        None => "  no analysis".to_string(),
        Some(report) => format!(
            "  gates pass {pass}/{total}{}{}{}{}",
            list(GateVerdict::Breach, "BREACH"),
            list(GateVerdict::Inconclusive, "waiting on"),
            if report.telemetry_missing() {
                "  NO AGENT TELEMETRY"
            } else {
                ""
            },
            if report.analysis.evidence_unavailable.is_some() {
                "  NO EVIDENCE (held)"
            } else {
                ""
            }
        ),
    };
    format!(
        "stage {}/{} {:>4}{} [{}{}] {:>3}s/{}s  canary {}/{}  stable {}{gates}",
        v.stage,
        v.stages,
        v.weight,
        if v.phase == Phase::Paused {
            " PAUSED"
        } else {
            ""
        },
        "#".repeat(filled),
        "-".repeat(20 - filled.min(20)),
        elapsed / 1000,
        min_ms / 1000,
        canary as u64,
        min_requests as u64,
        stable as u64,
    )
}

/// Cuts a line to the terminal's width (`COLUMNS`, else 120) so that `\r`
/// redraws it in place.
fn fit(line: &str) -> String {
    let width = std::env::var("COLUMNS")
        .ok()
        .and_then(|c| c.parse::<usize>().ok())
        .unwrap_or(120)
        .max(20);
    if line.chars().count() <= width {
        return line.to_string();
    }
    let mut cut: String = line.chars().take(width - 1).collect();
    cut.push('…');
    cut
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures;
    use crate::view::fixtures::report;

    #[test]
    fn the_stage_line_shows_progress_verdicts_and_missing_telemetry() {
        let rollout = serde_json::json!({"stage": 1, "stages": 4, "weight": "10%",
            "phase": "progressing", "stage_started_ms": crate::units::now_ms() - 10_000,
            "plan": {"stages": [{"weight": "10%", "min_duration": "20s", "min_requests": 500}]}});
        let analysis = |missing: bool| {
            let comparison = |metric: &str, verdict: &str| {
                serde_json::json!({"metric": metric, "verdict": verdict, "stable": null,
                    "canary": null, "change": "n/a", "threshold": "+10%", "n_stable": 0.0,
                    "n_canary": 0.0})
            };
            report(
                serde_json::json!({"canary_requests": 250.0, "stable_requests": 2250.0,
                "telemetry_missing": missing, "alpha": 0.001,
                "safety": {"stable": 0.0, "canary": 0.0, "verdict": "pass"},
                "comparisons": [
                    comparison("error_rate", "pass"),
                    comparison("completion_rate", "inconclusive"),
                    comparison("abandonment_rate", "breach")]}),
            )
        };
        let rollout = fixtures::rollout(rollout);
        let line = stage_line(&rollout, Some(&analysis(false)));
        assert!(
            line.starts_with(
                "stage 1/4  10% [##########----------]  10s/20s  canary 250/500  stable 2250"
            ),
            "{line}"
        );
        assert!(
            line.ends_with("gates pass 1/3  BREACH abandonment_rate  waiting on completion_rate"),
            "{line}"
        );
        assert!(stage_line(&rollout, Some(&analysis(true))).ends_with("  NO AGENT TELEMETRY"));
        // An open gate with its estimated time to decision.
        let mut with_eta = analysis(false);
        with_eta.analysis.comparisons[1].eta_s = Some(720.0);
        let line = stage_line(&rollout, Some(&with_eta));
        assert!(line.ends_with("waiting on completion_rate ~12m"), "{line}");
    }
}
