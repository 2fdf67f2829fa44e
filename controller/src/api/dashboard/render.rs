//! The dashboard's HTML, from `maud` templates: every value is escaped unless it is
//! wrapped in `PreEscaped` (only the SVG path below, built from numbers).

use super::Snapshot;
use crate::analysis::AnalysisReport;
use crate::analysis::{Analysis, TELEMETRY_MISSING};
use crate::format::{acted_by, breached_gates, count, number, utc};
use crate::rollout::{ManualAction, Phase};
use crate::store::AuditEntry;
use crate::units::Weight;
use crate::view::RolloutView;
use maud::{html, Markup, PreEscaped, DOCTYPE};
use std::fmt::Write as _;

/// The whole page.
pub fn page(snapshot: &Snapshot) -> Markup {
    let title = snapshot
        .focus
        .as_ref()
        .map_or("policy-canary".to_string(), |r| {
            format!(
                "#{} {} {} → {} — policy-canary",
                r.id, r.target, r.stable.version, r.canary.version
            )
        });
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) }
                link rel="stylesheet" href="/dashboard.css";
                script src="/dashboard.js" defer {}
            }
            body {
                header {
                    h1 { "policy-canary" }
                    form id="auth" autocomplete="off" {
                        label { "API token " input id="token" type="password" placeholder="paste a token"; }
                        button id="sign-in" type="submit" { "Sign in" }
                        button id="sign-out" type="button" class="secondary" { "Sign out" }
                        label { "Reason " input id="reason" type="text" placeholder="for the audit log"; }
                    }
                    p id="message" role="status" {}
                }
                (main(snapshot))
            }
        }
    }
}

/// The part the script refreshes (`/?part=main`).
pub fn main(snapshot: &Snapshot) -> Markup {
    let focus_id = snapshot
        .focus
        .as_ref()
        .map_or(String::new(), |r| r.id.to_string());
    if snapshot.locked {
        return html! {
            main id="main" data-locked="1" {
                section {
                    h2 { "Sign in" }
                    p {
                        "Paste an API token with the " code { "read" } " scope above and sign in; "
                        "pausing, resuming, promoting and rolling back need " code { "operate" } ". "
                        "The token is kept for this browser tab only and never goes in a URL."
                    }
                }
            }
        };
    }
    html! {
        main id="main" data-rollout=(focus_id) data-rendered-ms=(snapshot.now_ms) {
            (targets(snapshot))
            (envoys(snapshot))
            @if let Some(rollout) = &snapshot.focus {
                (rollout_summary(rollout, snapshot.now_ms))
                (stages(rollout, snapshot.analysis.as_ref(), snapshot.now_ms))
                (weight_chart(rollout, &snapshot.audit, snapshot.now_ms))
                (analysis(snapshot.analysis.as_ref()))
                (timeline(&snapshot.audit))
            } @else {
                section {
                    h2 { "No rollout yet" }
                    p {
                        "Register two policies and start one:"
                        code { "canaryctl policy add envoy/policies/v2.4.1.yaml" } ", "
                        code { "canaryctl rollout start envoy/plans/support-agent.yaml" } "."
                    }
                }
            }
            (rollout_list(snapshot))
        }
    }
}

fn targets(snapshot: &Snapshot) -> Markup {
    html! {
        section id="targets" {
            h2 { "Targets" }
            @if snapshot.targets.is_empty() {
                p { "No target has a route table yet." }
            } @else {
                table {
                    thead { tr { th { "target" } th { "stable" } th { "canary" } th { "weight" } th { "revision" } } }
                    tbody {
                        @for t in &snapshot.targets {
                            tr data-target=(t.name) {
                                td { (t.name) }
                                td { (t.stable.version) }
                                td { (t.route.canary.as_ref().map_or("—", |c| c.version.as_str())) }
                                td class="num" { (Weight(t.route.canary_weight_bp)) }
                                td class="num" { (t.route.revision) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn envoys(snapshot: &Snapshot) -> Markup {
    let fleet = &snapshot.envoys;
    html! {
        section id="envoys" {
            h2 { "Envoys" }
            @if fleet.envoys.is_empty() {
                p { "No Envoy has polled this controller yet (revision " (fleet.revision) ")." }
            } @else {
                table {
                    thead { tr { th { "envoy" } th { "revision" } th { "state" } th { "last poll" } th { "open polls" } } }
                    tbody {
                        @for e in &fleet.envoys {
                            @let state = if e.stale { "stale" } else if e.in_sync { "in sync" } else { "behind" };
                            tr data-envoy=(e.id) class={ "envoy-" (state.replace(' ', "-")) } {
                                td { (e.id) }
                                td class="num" { (e.revision) " / " (fleet.revision) }
                                td data-col="state" { (state) }
                                td { ((snapshot.now_ms - e.last_poll_ms).max(0) / 1000) "s ago" }
                                td class="num" { (e.open_polls) }
                            }
                        }
                    }
                }
            }
        }
    }
}

fn rollout_summary(r: &RolloutView, now: i64) -> Markup {
    let button = |action: ManualAction, label: &str| {
        html! {
            @if action == ManualAction::Rollback {
                button data-action=(action) data-rollout=(r.id) data-stage=(r.stage) class="danger" disabled[!action.allowed_in(r.phase)] { (label) }
            } @else {
                button data-action=(action) data-rollout=(r.id) data-stage=(r.stage) disabled[!action.allowed_in(r.phase)] { (label) }
            }
        }
    };
    html! {
        section id="rollout" {
            h2 { "Rollout #" (r.id) " · " (r.target) ": " (r.stable.version) " → " (r.canary.version) }
            dl class="facts" {
                dt { "phase" } dd id="phase" class={ "phase-" (r.phase) } { (r.phase) }
                dt { "stage" } dd id="stage" { (r.stage) " of " (r.stages) " (" (r.stage_weight) ")" }
                dt { "canary weight" } dd id="weight" { (r.weight) }
                dt { "stage since" } dd { (utc(r.stage_started_ms)) " (" ((now - r.stage_started_ms).max(0) / 1000) "s ago)" }
                dt { "salt" } dd id="salt" { code { (r.salt) } }
                dt { "route revision" } dd id="revision" { (r.revision) }
            }
            div class="actions" {
                (button(ManualAction::Pause, "Pause"))
                (button(ManualAction::Resume, "Resume"))
                (button(ManualAction::Promote, "Promote"))
                (button(ManualAction::Rollback, "Roll back"))
            }
        }
    }
}

fn stages(r: &RolloutView, analysis: Option<&AnalysisReport>, now: i64) -> Markup {
    html! {
        section id="stages" {
            h2 { "Stages" }
            table {
                thead { tr { th { "#" } th { "weight" } th { "min duration" } th { "min canary requests" } th { "progress" } } }
                tbody {
                    @for (i, stage) in r.plan.stages.iter().enumerate() {
                        @let number = i + 1;
                        @let status = stage_status(r.phase, number, r.stage);
                        tr class={ "stage-" (status) } {
                            td { (number) }
                            td { (stage.weight) }
                            td { (stage.min_duration) }
                            td class="num" { (stage.min_requests) }
                            td {
                                @if status == "current" {
                                    @let elapsed = (now - r.stage_started_ms).max(0);
                                    @let duration_ms = stage.min_duration.millis().max(1);
                                    @let requests = analysis.map_or(0.0, |a| a.analysis.canary_requests) as u64;
                                    progress id="stage-time" max=(duration_ms) value=(elapsed.min(duration_ms)) {}
                                    " " (elapsed / 1000) "s / " (stage.min_duration) " "
                                    progress id="stage-requests" max=(stage.min_requests.max(1)) value=(requests) {}
                                    " " (requests) " / " (stage.min_requests) " canary requests"
                                } @else {
                                    (status)
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// Where stage `number` (1-based) stands when the rollout is at stage `current`.
fn stage_status(phase: Phase, number: usize, current: usize) -> &'static str {
    use std::cmp::Ordering::{Equal, Less};
    match (phase, number.cmp(&current)) {
        (Phase::Promoted, _) => "done",
        (Phase::Progressing | Phase::Paused | Phase::RolledBack | Phase::Aborted, Less) => "done",
        (Phase::Progressing | Phase::Paused, Equal) => "current",
        (Phase::RolledBack | Phase::Aborted, Equal) => "stopped",
        _ => "next",
    }
}

/// The canary weight over the rollout's life as a step line, from the audit log.
fn weight_chart(r: &RolloutView, audit: &[AuditEntry], now: i64) -> Markup {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    const PAD: f64 = 36.0;
    let start = r.created_ms;
    let end = if r.is_active() {
        now
    } else {
        audit.last().map_or(now, |e| e.at_ms)
    }
    .max(start + 1);
    let full = f64::from(Weight::FULL.bp());
    let x = |t: i64| PAD + (t - start) as f64 / (end - start) as f64 * (W - 2.0 * PAD);
    let y = |bp: u16| H - PAD / 2.0 - f64::from(bp) / full * (H - PAD);
    let mut points = vec![(start, 0u16)];
    points.extend(
        audit
            .iter()
            .filter_map(|e| Some((e.at_ms.max(start), e.canary_weight_bp?))),
    );
    let mut path = format!("M{:.1},{:.1}", x(start), y(0));
    for (at, bp) in &points[1..] {
        let _ = write!(path, " H{:.1} V{:.1}", x(*at), y(*bp));
    }
    let _ = write!(path, " H{:.1}", x(end));
    let last_bp = points.last().map_or(0, |p| p.1);
    let coordinate = |v: f64| format!("{v:.1}");
    let (y0, y50, y100) = (
        coordinate(y(0)),
        coordinate(y(Weight::FULL.bp() / 2)),
        coordinate(y(Weight::FULL.bp())),
    );
    let x_end = coordinate(W - PAD);
    html! {
        section id="weight-over-time" {
            h2 { "Canary weight over time" }
            svg viewBox={ "0 0 " (W) " " (H) } role="img" aria-label={ "canary weight over time, now " (Weight(last_bp)) } {
                line class="axis" x1=(PAD) y1=(y0) x2=(x_end) y2=(y0) {}
                line class="grid" x1=(PAD) y1=(y50) x2=(x_end) y2=(y50) {}
                line class="grid" x1=(PAD) y1=(y100) x2=(x_end) y2=(y100) {}
                text x="2" y=(y0) { "0%" }
                text x="2" y=(y50) { "50%" }
                text x="2" y=(y100) { "100%" }
                path class="weight" d=(PreEscaped(path)) {}
                text x=(PAD) y=(H) { (utc(start)) }
                text x=(x_end) y=(H) text-anchor="end" {
                    @if r.is_active() { "now" } @else { (utc(end)) }
                }
            }
        }
    }
}

fn analysis(report: Option<&AnalysisReport>) -> Markup {
    let when = report
        .and_then(|r| r.decided_ms)
        .map_or("this stage".to_string(), |at| {
            format!("at the last decision, {}", utc(at))
        });
    html! {
        section id="analysis" {
            h2 { "Stable vs canary (" (when) ")" }
            @if let Some(report) = report {
                @let a = &report.analysis;
                p {
                    "requests: stable " span id="stable-requests" { (count(a.stable_requests)) }
                    ", canary " span id="canary-requests" { (count(a.canary_requests)) }
                    " · α per gate " (format!("{:.2e}", a.alpha))
                    " · β " (format!("{:.2}", a.beta))
                    @if let Some(n) = report.consecutive_failures { " · failed checks in a row " (n) }
                    br;
                    "bounds: " span id="bounds-basis" { (crate::format::bounds_basis(a.session_robust)) }
                }
                table class="metrics" {
                    thead { tr { th { "metric" } th { "stable" } th { "canary" } th { "change" } th { "threshold" } th { "n stable / canary" } th { "verdict" } } }
                    tbody {
                        @for c in &a.comparisons {
                            tr data-metric=(c.metric) {
                                td { (c.metric) }
                                td class="num" data-col="stable" { (number(c.stable)) }
                                td class="num" data-col="canary" { (number(c.canary)) }
                                td class="num" data-col="change" { (c.change) }
                                td data-col="threshold" { (c.threshold) }
                                td class="num" data-col="n" { (count(c.n_stable)) "/" (count(c.n_canary)) }
                                td data-col="verdict" class={ "verdict-" (c.verdict) } {
                                    (c.verdict)
                                    @if let Some(s) = c.eta_s {
                                        span class="eta" data-col="eta" { " ~" (crate::analysis::planning::duration(s)) }
                                    }
                                }
                            }
                        }
                        tr data-metric="safety_violations" {
                            td { "safety_violations" }
                            td class="num" data-col="stable" { (count(a.safety.stable)) }
                            td class="num" data-col="canary" { (count(a.safety.canary)) }
                            td {}
                            td data-col="threshold" { "any" }
                            td {}
                            td data-col="verdict" class={ "verdict-" (a.safety.verdict) } { (a.safety.verdict) }
                        }
                    }
                }
                @for line in a.comparisons.iter().filter_map(crate::format::dominated) {
                    p class="warning dominated" { (line) }
                }
                @if let Some(line) = crate::format::periods(a) {
                    p id="periods" { (line) }
                }
                @if let Some(line) = crate::format::sequence(a) {
                    p id="sequence" class="warning" { (line) }
                }
                @if !a.outside.is_empty() {
                    p { (crate::format::APART_NOTE) ":" }
                    table id="outside" class="metrics" {
                        thead { tr { @for h in crate::format::APART_COLUMNS { th { (h) } } } }
                        tbody {
                            @for t in &a.outside {
                                tr data-traffic=(t.traffic) data-version=(t.version) {
                                    @for cell in crate::format::apart_row(t) { td { (cell) } }
                                }
                            }
                        }
                    }
                }
                @if report.telemetry_missing() {
                    p id="telemetry-missing" class="warning" { (TELEMETRY_MISSING) }
                }
                @if let Some(reason) = &a.evidence_unavailable {
                    p id="evidence-unavailable" class="warning" {
                        "No evidence now, so the stage is held (never passed): " (reason)
                    }
                }
            } @else {
                p { "No analysis: start the controller with " code { "--envoy-admin" } " to compare metrics." }
            }
        }
    }
}

fn timeline(audit: &[AuditEntry]) -> Markup {
    html! {
        section id="audit" {
            h2 { "Audit timeline" }
            ol class="timeline" {
                @for e in audit.iter().rev() {
                    @let breached = Analysis::from_audit(e).map(|a| breached_gates(&a)).unwrap_or_default();
                    li data-audit-id=(e.id) class={ "action-" (e.action) } {
                        time { (utc(e.at_ms)) } " " b { (e.action) } " "
                        @if let (Some(from), Some(to)) = (&e.from, &e.to) { (from) " → " (to) }
                        @if let Some(bp) = e.canary_weight_bp { " · canary " (Weight(bp)) }
                        " · rev " (e.revision) " · by " (acted_by(e)) ": " (e.reason)
                        @if !breached.is_empty() {
                            div class="evidence" { "breached: " (breached.join("; ")) }
                        }
                    }
                }
            }
        }
    }
}

fn rollout_list(snapshot: &Snapshot) -> Markup {
    html! {
        @if !snapshot.rollouts.is_empty() {
            section id="rollouts" {
                h2 { "All rollouts" }
                ul {
                    @for r in snapshot.rollouts.iter().rev().take(50) {
                        li {
                            a href={ "/?rollout=" (r.id) } { "#" (r.id) }
                            " " (r.target) ": " (r.stable.version) " → " (r.canary.version) ", " (r.phase) ", stage " (r.stage) "/" (r.stages)
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::view::fixtures::{audit, report};
    use serde_json::json;

    #[test]
    fn escapes_everything_that_could_open_markup() {
        let text = r#"<script>"a" & 'b'</script>"#;
        assert_eq!(
            html! { (text) }.into_string(),
            "&lt;script&gt;&quot;a&quot; &amp; 'b'&lt;/script&gt;"
        );
    }

    fn rollout() -> RolloutView {
        serde_json::from_value(json!({
            "id": 3, "target": "support<agent>", "phase": "progressing", "stage": 2, "stages": 3,
            "weight": "25%", "weight_bp": 2500, "stage_weight": "25%", "stage_started_ms": 1_000,
            "salt": "ro-abc", "revision": 7, "created_ms": 0, "updated_ms": 1_000,
            "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"},
            "plan": {"target": "support<agent>", "stable": {"version": "v1", "cluster": "a"},
                "canary": {"version": "v2", "cluster": "b"}, "stages": [
                {"weight": "5%", "min_duration": "10s", "min_requests": 100},
                {"weight": "25%", "min_duration": "20s", "min_requests": 400},
                {"weight": "100%", "min_duration": "0s", "min_requests": 0}]}
        }))
        .unwrap()
    }

    #[test]
    fn renders_the_rollout_the_analysis_and_the_timeline() {
        let snapshot = Snapshot {
            now_ms: 11_000,
            envoys: serde_json::from_value(json!({"revision": 7, "envoys": [
                {"id": "edge-1", "revision": 7, "last_poll_ms": 10_000, "open_polls": 1,
                 "in_sync": true, "stale": false},
                {"id": "edge-2", "revision": 5, "last_poll_ms": 1_000, "open_polls": 0,
                 "in_sync": false, "stale": true}]}))
            .unwrap(),
            targets: vec![serde_json::from_value(
                json!({"name": "support<agent>", "stable": {"version": "v1", "cluster": "a"},
                "updated_ms": 0,
                "route": {"revision": 7, "salt": "ro-abc", "stable": {"version": "v1", "cluster": "a"},
                    "canary": {"version": "v2", "cluster": "b"}, "canary_weight_bp": 2500}}),
            )
            .unwrap()],
            rollouts: vec![rollout()],
            focus: Some(rollout()),
            analysis: Some(report(
                json!({"stable_requests": 900.0, "canary_requests": 300.0, "alpha": 0.0005,
                "consecutive_failures": 1,
                "session_robust": true,
                "comparisons": [{"metric": "completion_rate", "stable": 0.9, "canary": 0.70123,
                    "change": "-19.9 points", "threshold": "5 points", "n_stable": 900.0,
                    "n_canary": 300.0, "verdict": "breach", "effective_replicates": [30.5, 2.5]},
                    {"metric": "error_rate", "stable": 0.01, "canary": 0.01,
                    "change": "+0.0%", "threshold": "+10%", "n_stable": 900.0,
                    "n_canary": 300.0, "verdict": "inconclusive", "eta_s": 720.0}],
                "safety": {"stable": 0.0, "canary": 0.0, "verdict": "pass"},
                "outside": [{"traffic": "segment", "version": "v2", "requests": 40.0, "errors": 0.0,
                    "tasks": 40.0, "tasks_completed": 30.0, "cost_micros": 0.0, "safety_violations": 0.0}]}),
            )),
            audit: vec![
                audit(
                    json!({"id": 1, "at_ms": 0, "action": "start", "from": "pending", "to": "progressing (stage 1)",
                    "revision": 5, "principal": "ci", "actor": "ops", "reason": "go", "canary_weight_bp": 500}),
                ),
                audit(
                    json!({"id": 2, "at_ms": 1_000, "action": "advance", "from": "progressing (stage 1)",
                    "to": "progressing (stage 2)", "revision": 7, "actor": "canaryctl",
                    "reason": "<b>gates</b> passed", "canary_weight_bp": 2500}),
                ),
            ],
            locked: false,
        };
        let html = page(&snapshot).into_string();
        assert!(html.contains("support&lt;agent&gt;"));
        assert!(!html.contains("<b>gates</b>"));
        assert!(html.contains("<dd id=\"phase\" class=\"phase-progressing\">progressing</dd>"));
        assert!(html.contains("data-col=\"canary\">0.7012</td>"));
        assert!(html.contains("class=\"verdict-breach\">breach</td>"));
        // An open gate's estimated time to decision; what the bounds assume.
        assert!(html.contains("data-col=\"eta\"> ~12m</span>"), "{html}");
        assert!(html.contains("bounds: <span id=\"bounds-basis\">session-robust"));
        // A few sessions dominate the canary; traffic outside the comparison apart.
        assert!(
            html.contains("completion_rate: canary dominated by a few sessions"),
            "{html}"
        );
        assert!(html.contains("<tr data-traffic=\"segment\" data-version=\"v2\"><td>segment</td>"));
        assert!(html.contains("<td>0.7500</td>"), "the segment's completion");
        assert!(
            html.contains("10s / 20s"),
            "stage 2 has run 10 of 20 seconds"
        );
        assert!(html.contains("300 / 400 canary requests"));
        assert!(
            html.contains(" · by ops (token ci): go"),
            "both who acted and the token"
        );
        assert!(html.contains("aria-label=\"canary weight over time, now 25%\""));
        assert!(html.contains("<tr data-envoy=\"edge-1\" class=\"envoy-in-sync\">"));
        assert!(html.contains("<tr data-envoy=\"edge-2\" class=\"envoy-stale\">"));
        // Newest audit entry first; pause enabled, resume not.
        assert!(html.find("data-audit-id=\"2\"") < html.find("data-audit-id=\"1\""));
        assert!(html.contains("data-action=\"pause\" data-rollout=\"3\" data-stage=\"2\">"));
        assert!(
            html.contains("data-action=\"resume\" data-rollout=\"3\" data-stage=\"2\" disabled>")
        );
    }

    #[test]
    fn says_when_a_window_had_no_agent_telemetry() {
        let analysis = |missing: bool| {
            super::analysis(Some(&report(
                json!({"stable_requests": 900.0, "canary_requests": 300.0, "alpha": 0.0005,
                    "telemetry_missing": missing, "comparisons": [],
                    "safety": {"stable": 0.0, "canary": 0.0, "verdict": "pass"},
                "outside": [{"traffic": "segment", "version": "v2", "requests": 40.0, "errors": 0.0,
                    "tasks": 40.0, "tasks_completed": 30.0, "cost_micros": 0.0, "safety_violations": 0.0}]}),
            )))
            .into_string()
        };
        assert!(analysis(true)
            .contains("<p id=\"telemetry-missing\" class=\"warning\">No agent telemetry"));
        assert!(!analysis(false).contains("telemetry-missing"));
        let held = super::analysis(Some(&report(
            json!({"stable_requests": 0.0, "canary_requests": 0.0, "alpha": 0.0005,
                "comparisons": [], "evidence_unavailable": "cannot reach Prometheus at http://p:9090",
                "safety": {"stable": 0.0, "canary": 0.0, "verdict": "pass"},
                "outside": [{"traffic": "segment", "version": "v2", "requests": 40.0, "errors": 0.0,
                    "tasks": 40.0, "tasks_completed": 30.0, "cost_micros": 0.0, "safety_violations": 0.0}]}),
        )))
        .into_string();
        assert!(held.contains("<p id=\"evidence-unavailable\" class=\"warning\">"));
        assert!(held.contains("cannot reach Prometheus"));
    }

    #[test]
    fn renders_an_empty_controller() {
        let html = page(&Snapshot::default()).into_string();
        assert!(html.contains("No rollout yet"));
        assert!(html.contains("No target has a route table yet"));
        assert!(html.contains("No Envoy has polled this controller yet"));
    }
}
