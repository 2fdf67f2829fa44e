//! `canaryctl rollout …`: start, list, status, steer and audit rollouts.

use super::client::Client;
use super::{print_or, read_file, watch, Failure, RolloutCommand};
use crate::analysis::AnalysisReport;
use crate::analysis::TELEMETRY_MISSING;
use crate::format::{count, number, utc};
use crate::rollout::{ManualAction, Phase};
use crate::view::{AuditList, RolloutList, RolloutView};
use std::time::Duration;

pub(super) async fn run(
    client: &Client,
    command: RolloutCommand,
    json: bool,
) -> Result<(), Failure> {
    match command {
        RolloutCommand::Start { plan } => {
            let text = read_file(&plan)?;
            let v: RolloutView = client.post_as("/v1/rollouts", text).await?;
            print_or(json, &v, || print_rollout(&v));
            Ok(())
        }
        RolloutCommand::List => {
            let v: RolloutList = client.fetch("/v1/rollouts").await?;
            print_or(json, &v, || {
                for r in &v.rollouts {
                    println!(
                        "#{:<4} {:<20} {} -> {}  {} stage {}/{} at {}",
                        r.id,
                        r.target,
                        r.stable.version,
                        r.canary.version,
                        r.phase,
                        r.stage,
                        r.stages,
                        r.weight
                    );
                }
            });
            Ok(())
        }
        RolloutCommand::Status { id, target, watch } => {
            let id = client.resolve(id, target.as_deref(), true).await?;
            loop {
                let v = client.rollout_status(id).await?;
                print_or(json, &v, || {
                    print_rollout(&v.rollout);
                    print_analysis(v.analysis.as_ref());
                });
                let active = v.rollout.is_active();
                if !watch || !active {
                    return Ok(());
                }
                tokio::time::sleep(Duration::from_secs(1)).await;
                if !json {
                    println!();
                }
            }
        }
        RolloutCommand::Watch { id, target } => {
            let id = client.resolve(id, target.as_deref(), true).await?;
            watch::watch(client, id, json).await
        }
        RolloutCommand::Pause(a) => client.act(a, ManualAction::Pause, false, json).await,
        RolloutCommand::Resume(a) => client.act(a, ManualAction::Resume, false, json).await,
        RolloutCommand::Promote { act, to_end } => {
            client.act(act, ManualAction::Promote, to_end, json).await
        }
        RolloutCommand::Rollback(a) => client.act(a, ManualAction::Rollback, false, json).await,
        RolloutCommand::Abort(a) => client.act(a, ManualAction::Abort, false, json).await,
        RolloutCommand::Audit { id, all } => {
            let path = if all {
                "/v1/audit".to_string()
            } else {
                let id = client.resolve(id, None, true).await?;
                format!("/v1/audit?rollout={id}")
            };
            let v: AuditList = client.fetch(&path).await?;
            print_or(json, &v, || {
                for e in &v.audit {
                    let rollout = e.rollout_id.map_or(String::new(), |id| format!("#{id} "));
                    let change = match (&e.from, &e.to) {
                        (Some(f), Some(t)) => format!("{f} -> {t}  "),
                        _ => String::new(),
                    };
                    println!(
                        "{}  rev {:<4} {}{:<16} {}by {}: {}",
                        utc(e.at_ms),
                        e.revision,
                        rollout,
                        e.action.as_str(),
                        change,
                        crate::format::acted_by(e),
                        e.reason
                    );
                }
            });
            Ok(())
        }
    }
}

pub(super) fn print_rollout(v: &RolloutView) {
    println!(
        "rollout #{}  {}  {} -> {}",
        v.id, v.target, v.stable.version, v.canary.version
    );
    let stage_line = match v.phase {
        Phase::Progressing | Phase::Paused => format!(
            "{}, stage {} of {} ({}), canary weight now {}",
            v.phase, v.stage, v.stages, v.stage_weight, v.weight
        ),
        other => other.to_string(),
    };
    println!("  state     {stage_line}");
    let ago = (crate::units::now_ms() - v.stage_started_ms).max(0) / 1000;
    println!("  since     {} ({ago}s ago)", utc(v.stage_started_ms));
    println!("  salt      {}   route revision {}", v.salt, v.revision);
}

/// Stable vs canary, metric by metric, with the verdict and sample sizes.
fn print_analysis(report: Option<&AnalysisReport>) {
    let Some(report) = report else {
        println!("  analysis  none (start the controller with --envoy-admin to compare metrics)");
        return;
    };
    let a = &report.analysis;
    // An ended rollout shows its last decision's comparison (no running count then).
    let failures = report
        .consecutive_failures
        .map_or(String::new(), |n| format!(", failed checks in a row {n}"));
    let when = report.decided_ms.map_or(String::new(), |at| {
        format!("  at the last decision, {}", utc(at))
    });
    println!(
        "  requests  stable {}  canary {}   (alpha per gate {:.2e}, beta {:.2}{failures}){when}",
        count(a.stable_requests),
        count(a.canary_requests),
        a.alpha,
        a.beta,
    );
    println!(
        "  bounds    {}",
        crate::format::bounds_basis(a.session_robust)
    );
    println!(
        "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  verdict",
        "metric", "stable", "canary", "change", "threshold", "n stable/canary"
    );
    for c in &a.comparisons {
        println!(
            "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  {}{}",
            c.metric.as_str(),
            number(c.stable),
            number(c.canary),
            c.change,
            c.threshold,
            format!("{}/{}", count(c.n_stable), count(c.n_canary)),
            c.verdict,
            crate::format::eta(c.eta_s),
        );
    }
    println!(
        "  {:<18} {:>10} {:>10} {:>14} {:>10} {:>15}  {}",
        "safety_violations",
        count(a.safety.stable),
        count(a.safety.canary),
        "",
        "any",
        "",
        a.safety.verdict
    );
    for line in a
        .comparisons
        .iter()
        .filter_map(crate::format::dominated)
        .chain(crate::format::periods(a))
        .chain(crate::format::sequence(a))
    {
        println!("  note      {line}");
    }
    if !a.outside.is_empty() {
        println!("  {}:", crate::format::APART_NOTE);
        let row = |cells: [&str; 7]| {
            println!(
                "    {:<12} {:<14} {:>9} {:>10} {:>9} {:>10} {:>10}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6]
            )
        };
        row(crate::format::APART_COLUMNS);
        for t in &a.outside {
            let cells = crate::format::apart_row(t);
            row(cells.each_ref().map(String::as_str));
        }
    }
    if report.telemetry_missing() {
        println!("  {TELEMETRY_MISSING}");
    }
    if let Some(reason) = &a.evidence_unavailable {
        println!("  EVIDENCE UNAVAILABLE, stage held: {reason}");
    }
}
