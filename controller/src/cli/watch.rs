//! `canaryctl rollout watch`: an audit line per change and a live line per stage.

use super::client::Client;
use super::{fail, s, Failure};
use crate::format::utc;
use serde_json::Value;
use std::time::Duration;

/// Exit code of `rollout watch` when the rollout ends without the canary promoted.
pub const NOT_PROMOTED: i32 = 4;

pub(super) async fn watch(client: &Client, id: i64, json: bool) -> Result<(), Failure> {
    use std::io::{IsTerminal, Write};
    let terminal = std::io::stdout().is_terminal() && !json;
    let mut shown: Option<(String, u64)> = None;
    let mut last_audit = 0;
    let mut bar_drawn = false;
    let mut last_plain = std::time::Instant::now();
    loop {
        let v = client.rollout_with_analysis(id).await?;
        let audit = client
            .get(&format!("/v1/audit?rollout={id}&after={last_audit}"))
            .await?;
        let phase = s(&v["phase"]).to_string();
        let stage = v["stage"].as_u64().unwrap_or(0);
        let key = (phase.clone(), stage);
        let mut out = std::io::stdout().lock();
        for e in audit["audit"].as_array().into_iter().flatten() {
            last_audit = e["id"].as_i64().unwrap_or(last_audit);
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
        let ended = !crate::format::is_active(&v);
        if json {
            if shown.as_ref() != Some(&key) || ended {
                let _ = writeln!(out, "{v}");
            }
        } else if !ended {
            let line = stage_line(&v, &v["analysis"]);
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
                    s(&v["target"]),
                    if phase == "promoted" {
                        s(&v["canary"]["version"])
                    } else {
                        s(&v["stable"]["version"])
                    }
                );
            }
            return if phase == "promoted" {
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
fn audit_line(e: &Value) -> String {
    let at = utc(e["at_ms"].as_i64().unwrap_or(0));
    let weight = e["canary_weight_bp"].as_u64().map_or(String::new(), |bp| {
        format!("  canary {}", crate::format::weight(bp))
    });
    let mut line = format!(
        "{}  {:<14} {} -> {}{weight}  by {}: {}",
        &at[11..19],
        s(&e["action"]),
        s(&e["from"]),
        s(&e["to"]),
        s(&e["actor"]),
        s(&e["reason"])
    );
    for c in crate::format::breaches(e) {
        line.push_str(&format!(
            "\n          breach: {} stable {} canary {} ({}, threshold {})",
            s(&c["metric"]),
            crate::format::number(&c["stable"]),
            crate::format::number(&c["canary"]),
            s(&c["change"]),
            s(&c["threshold"])
        ));
    }
    line
}

/// The current stage on one line: weight, a progress bar towards the stage's
/// minimum duration and canary requests, samples and the gates' verdicts.
pub fn stage_line(v: &Value, analysis: &Value) -> String {
    let stage_index = v["stage"].as_u64().unwrap_or(1).saturating_sub(1) as usize;
    let spec = &v["plan"]["stages"][stage_index];
    let min_ms = crate::format::min_duration_ms(spec);
    let min_requests = spec["min_requests"].as_f64().unwrap_or(0.0);
    let elapsed =
        (crate::controller::now_ms() - v["stage_started_ms"].as_i64().unwrap_or(0)).max(0);
    let canary = analysis["canary_requests"].as_f64().unwrap_or(0.0);
    let stable = analysis["stable_requests"].as_f64().unwrap_or(0.0);
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
    let mut counts: std::collections::BTreeMap<&str, Vec<&str>> = Default::default();
    for c in analysis["comparisons"].as_array().into_iter().flatten() {
        counts
            .entry(s(&c["verdict"]))
            .or_default()
            .push(s(&c["metric"]));
    }
    let total: usize = counts.values().map(Vec::len).sum();
    let pass = counts.get("pass").map_or(0, Vec::len);
    let list = |k: &str, label: &str| {
        counts
            .get(k)
            .map_or(String::new(), |m| format!("  {label} {}", m.join(", ")))
    };
    let gates = if analysis.is_null() {
        "  no analysis".to_string()
    } else {
        format!(
            "  gates pass {pass}/{total}{}{}{}",
            list("breach", "BREACH"),
            list("inconclusive", "waiting on"),
            if crate::analysis::telemetry_missing(analysis) {
                "  NO AGENT TELEMETRY"
            } else {
                ""
            }
        )
    };
    format!(
        "stage {}/{} {:>4}{} [{}{}] {:>3}s/{}s  canary {}/{}  stable {}{gates}",
        v["stage"],
        v["stages"],
        s(&v["weight"]),
        if s(&v["phase"]) == "paused" {
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

    #[test]
    fn the_stage_line_shows_progress_verdicts_and_missing_telemetry() {
        let rollout = serde_json::json!({"stage": 1, "stages": 4, "weight": "10%",
            "phase": "progressing", "stage_started_ms": crate::controller::now_ms() - 10_000,
            "plan": {"stages": [{"weight": "10%", "min_duration": "20s", "min_requests": 500}]}});
        let analysis = |missing: bool| {
            serde_json::json!({"canary_requests": 250.0, "stable_requests": 2250.0,
                "telemetry_missing": missing,
                "comparisons": [
                    {"metric": "error_rate", "verdict": "pass"},
                    {"metric": "completion_rate", "verdict": "inconclusive"},
                    {"metric": "abandonment_rate", "verdict": "breach"}]})
        };
        let line = stage_line(&rollout, &analysis(false));
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
        assert!(stage_line(&rollout, &analysis(true)).ends_with("  NO AGENT TELEMETRY"));
    }
}
