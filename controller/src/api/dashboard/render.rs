//! The dashboard's HTML.

use super::Snapshot;
use crate::format::{breaches, count, is_active, min_duration_ms, number, utc, weight};
use serde_json::Value;
use std::fmt::Write as _;

fn s(v: &Value) -> &str {
    v.as_str().unwrap_or("")
}

/// Text safe inside HTML elements and quoted attributes.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The whole page.
pub fn page(snapshot: &Snapshot) -> String {
    let title = snapshot
        .focus
        .as_ref()
        .map_or("policy-canary".to_string(), |r| {
            format!(
                "#{} {} {} → {} — policy-canary",
                r["id"],
                s(&r["target"]),
                s(&r["stable"]["version"]),
                s(&r["canary"]["version"])
            )
        });
    format!(
        r#"<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<link rel="stylesheet" href="/dashboard.css">
<script src="/dashboard.js" defer></script>
</head>
<body>
<header>
  <h1>policy-canary</h1>
  <form id="auth" autocomplete="off">
    <label>API token <input id="token" type="password" placeholder="from the state directory's token file"></label>
    <label>Reason <input id="reason" type="text" placeholder="for the audit log"></label>
  </form>
  <p id="message" role="status"></p>
</header>
{main}
</body>
</html>
"#,
        title = escape(&title),
        main = main(snapshot)
    )
}

/// The part the script refreshes (`/?part=main`).
pub fn main(snapshot: &Snapshot) -> String {
    let focus_id = snapshot
        .focus
        .as_ref()
        .and_then(|r| r["id"].as_i64())
        .map_or(String::new(), |id| id.to_string());
    let mut out = format!(
        "<main id=\"main\" data-rollout=\"{focus_id}\" data-rendered-ms=\"{}\">\n",
        snapshot.now_ms
    );
    targets(&mut out, snapshot);
    match &snapshot.focus {
        Some(rollout) => {
            rollout_summary(&mut out, rollout, snapshot);
            stages(&mut out, rollout, &snapshot.analysis, snapshot.now_ms);
            weight_chart(&mut out, rollout, &snapshot.audit, snapshot.now_ms);
            analysis(&mut out, &snapshot.analysis);
            timeline(&mut out, &snapshot.audit);
        }
        None => out.push_str(
            "<section><h2>No rollout yet</h2><p>Register two policies and start one:\
             <code>canaryctl policy add envoy/policies/v2.4.1.yaml</code>, \
             <code>canaryctl rollout start envoy/plans/support-agent.yaml</code>.</p></section>\n",
        ),
    }
    rollout_list(&mut out, snapshot);
    out.push_str("</main>\n");
    out
}

fn targets(out: &mut String, snapshot: &Snapshot) {
    out.push_str("<section id=\"targets\"><h2>Targets</h2>\n");
    if snapshot.targets.is_empty() {
        out.push_str("<p>No target has a route table yet.</p></section>\n");
        return;
    }
    out.push_str(
        "<table><thead><tr><th>target</th><th>stable</th><th>canary</th><th>weight</th><th>revision</th></tr></thead><tbody>\n",
    );
    for t in &snapshot.targets {
        let route = &t["route"];
        let canary = route["canary"]["version"].as_str().unwrap_or("—");
        let weight_bp = route["canary_weight_bp"].as_u64().unwrap_or(0);
        let _ = writeln!(
            out,
            "<tr data-target=\"{name}\"><td>{name}</td><td>{stable}</td><td>{canary}</td><td class=\"num\">{weight}</td><td class=\"num\">{revision}</td></tr>",
            name = escape(s(&t["name"])),
            stable = escape(s(&t["stable"]["version"])),
            canary = escape(canary),
            weight = weight(weight_bp),
            revision = route["revision"],
        );
    }
    out.push_str("</tbody></table></section>\n");
}

fn rollout_summary(out: &mut String, r: &Value, snapshot: &Snapshot) {
    let id = r["id"].as_i64().unwrap_or(0);
    let phase = s(&r["phase"]);
    let _ = writeln!(
        out,
        "<section id=\"rollout\"><h2>Rollout #{id} · {target}: {stable} → {canary}</h2>",
        target = escape(s(&r["target"])),
        stable = escape(s(&r["stable"]["version"])),
        canary = escape(s(&r["canary"]["version"])),
    );
    let _ = writeln!(
        out,
        "<dl class=\"facts\">\
         <dt>phase</dt><dd id=\"phase\" class=\"phase-{phase_class}\">{phase}</dd>\
         <dt>stage</dt><dd id=\"stage\">{stage} of {stages} ({stage_weight})</dd>\
         <dt>canary weight</dt><dd id=\"weight\">{weight}</dd>\
         <dt>stage since</dt><dd>{since} ({ago}s ago)</dd>\
         <dt>salt</dt><dd id=\"salt\"><code>{salt}</code></dd>\
         <dt>route revision</dt><dd id=\"revision\">{revision}</dd></dl>",
        phase_class = escape(phase),
        phase = escape(phase),
        stage = r["stage"],
        stages = r["stages"],
        stage_weight = escape(s(&r["stage_weight"])),
        weight = escape(s(&r["weight"])),
        since = utc(r["stage_started_ms"].as_i64().unwrap_or(0)),
        ago = ((snapshot.now_ms - r["stage_started_ms"].as_i64().unwrap_or(0)).max(0) / 1000),
        salt = escape(s(&r["salt"])),
        revision = r["revision"],
    );
    let active = is_active(r);
    let enabled = |on: bool| if on { "" } else { " disabled" };
    let _ = writeln!(
        out,
        "<div class=\"actions\">\
         <button data-action=\"pause\" data-rollout=\"{id}\"{}>Pause</button>\
         <button data-action=\"resume\" data-rollout=\"{id}\"{}>Resume</button>\
         <button data-action=\"promote\" data-rollout=\"{id}\"{}>Promote</button>\
         <button data-action=\"rollback\" data-rollout=\"{id}\" class=\"danger\"{}>Roll back</button>\
         </div></section>",
        enabled(phase == "progressing"),
        enabled(phase == "paused"),
        enabled(active),
        enabled(active),
    );
}

fn stages(out: &mut String, r: &Value, analysis: &Value, now: i64) {
    let current = r["stage"].as_u64().unwrap_or(0) as usize;
    let phase = s(&r["phase"]);
    out.push_str("<section id=\"stages\"><h2>Stages</h2><table><thead><tr><th>#</th><th>weight</th><th>min duration</th><th>min canary requests</th><th>progress</th></tr></thead><tbody>\n");
    for (i, stage) in r["plan"]["stages"]
        .as_array()
        .into_iter()
        .flatten()
        .enumerate()
    {
        let number = i + 1;
        let status = match phase {
            "promoted" => "done",
            "progressing" | "paused" if number < current => "done",
            "progressing" | "paused" if number == current => "current",
            "rolled_back" | "aborted" if number < current => "done",
            "rolled_back" | "aborted" if number == current => "stopped",
            _ => "next",
        };
        let min_duration = s(&stage["min_duration"]);
        let min_requests = stage["min_requests"].as_u64().unwrap_or(0);
        let progress = if status == "current" {
            let elapsed = (now - r["stage_started_ms"].as_i64().unwrap_or(now)).max(0);
            let duration_ms = min_duration_ms(stage);
            let requests = analysis["canary_requests"].as_f64().unwrap_or(0.0);
            format!(
                "<progress id=\"stage-time\" max=\"{max_t}\" value=\"{t}\"></progress> {secs}s / {min_duration} \
                 <progress id=\"stage-requests\" max=\"{max_r}\" value=\"{req}\"></progress> {req} / {min_requests} canary requests",
                max_t = duration_ms.max(1),
                t = elapsed.min(duration_ms.max(1)),
                secs = elapsed / 1000,
                min_duration = escape(min_duration),
                max_r = min_requests.max(1),
                req = requests as u64,
            )
        } else {
            status.to_string()
        };
        let _ = writeln!(
            out,
            "<tr class=\"stage-{status}\"><td>{number}</td><td>{weight}</td><td>{min_duration}</td><td class=\"num\">{min_requests}</td><td>{progress}</td></tr>",
            weight = escape(s(&stage["weight"])),
            min_duration = escape(min_duration),
        );
    }
    out.push_str("</tbody></table></section>\n");
}

/// The canary weight over the rollout's life as a step line, from the audit log.
fn weight_chart(out: &mut String, r: &Value, audit: &[Value], now: i64) {
    const W: f64 = 720.0;
    const H: f64 = 160.0;
    const PAD: f64 = 36.0;
    let start = r["created_ms"].as_i64().unwrap_or(now);
    let end = if is_active(r) {
        now
    } else {
        audit
            .last()
            .and_then(|e| e["at_ms"].as_i64())
            .unwrap_or(now)
    }
    .max(start + 1);
    let x = |t: i64| PAD + (t - start) as f64 / (end - start) as f64 * (W - 2.0 * PAD);
    let y = |bp: u64| H - PAD / 2.0 - bp as f64 / 10_000.0 * (H - PAD);
    let mut points = vec![(start, 0u64)];
    for e in audit {
        if let (Some(at), Some(bp)) = (e["at_ms"].as_i64(), e["canary_weight_bp"].as_u64()) {
            points.push((at.max(start), bp));
        }
    }
    let mut path = format!("M{:.1},{:.1}", x(start), y(0));
    for (at, bp) in &points[1..] {
        let _ = write!(path, " H{:.1} V{:.1}", x(*at), y(*bp));
    }
    let last_bp = points.last().map_or(0, |p| p.1);
    let _ = write!(path, " H{:.1}", x(end));
    let _ = writeln!(
        out,
        "<section id=\"weight-over-time\"><h2>Canary weight over time</h2>\
         <svg viewBox=\"0 0 {W} {H}\" role=\"img\" aria-label=\"canary weight over time, now {now_pct}\">\
         <line class=\"axis\" x1=\"{PAD}\" y1=\"{y0:.1}\" x2=\"{x_end:.1}\" y2=\"{y0:.1}\"/>\
         <line class=\"grid\" x1=\"{PAD}\" y1=\"{y50:.1}\" x2=\"{x_end:.1}\" y2=\"{y50:.1}\"/>\
         <line class=\"grid\" x1=\"{PAD}\" y1=\"{y100:.1}\" x2=\"{x_end:.1}\" y2=\"{y100:.1}\"/>\
         <text x=\"2\" y=\"{y0:.1}\">0%</text><text x=\"2\" y=\"{y50:.1}\">50%</text><text x=\"2\" y=\"{y100:.1}\">100%</text>\
         <path class=\"weight\" d=\"{path}\"/>\
         <text x=\"{PAD}\" y=\"{H}\">{from}</text><text x=\"{x_end:.1}\" y=\"{H}\" text-anchor=\"end\">{to}</text>\
         </svg></section>",
        now_pct = weight(last_bp),
        y0 = y(0),
        y50 = y(5_000),
        y100 = y(10_000),
        x_end = W - PAD,
        from = utc(start),
        to = if is_active(r) {
            "now".to_string()
        } else {
            utc(end)
        },
    );
}

fn analysis(out: &mut String, a: &Value) {
    let when = a["decided_ms"]
        .as_i64()
        .map_or("this stage".to_string(), |at| {
            format!("at the last decision, {}", utc(at))
        });
    let _ = writeln!(
        out,
        "<section id=\"analysis\"><h2>Stable vs canary ({when})</h2>"
    );
    if a.is_null() {
        out.push_str("<p>No analysis: start the controller with <code>--envoy-admin</code> to compare metrics.</p></section>\n");
        return;
    }
    let failures = a["consecutive_failures"]
        .as_u64()
        .map_or(String::new(), |n| format!(" · failed checks in a row {n}"));
    let _ = writeln!(
        out,
        "<p>requests: stable <span id=\"stable-requests\">{}</span>, canary <span id=\"canary-requests\">{}</span> · α per gate {:.2e}{failures}</p>",
        count(&a["stable_requests"]),
        count(&a["canary_requests"]),
        a["alpha"].as_f64().unwrap_or(0.0),
    );
    out.push_str("<table class=\"metrics\"><thead><tr><th>metric</th><th>stable</th><th>canary</th><th>change</th><th>threshold</th><th>n stable / canary</th><th>verdict</th></tr></thead><tbody>\n");
    for c in a["comparisons"].as_array().into_iter().flatten() {
        let metric = escape(s(&c["metric"]));
        let verdict = escape(s(&c["verdict"]));
        let _ = writeln!(
            out,
            "<tr data-metric=\"{metric}\"><td>{metric}</td><td class=\"num\" data-col=\"stable\">{}</td><td class=\"num\" data-col=\"canary\">{}</td><td class=\"num\" data-col=\"change\">{}</td><td data-col=\"threshold\">{}</td><td class=\"num\" data-col=\"n\">{}/{}</td><td data-col=\"verdict\" class=\"verdict-{verdict}\">{verdict}</td></tr>",
            number(&c["stable"]),
            number(&c["canary"]),
            escape(s(&c["change"])),
            escape(s(&c["threshold"])),
            count(&c["n_stable"]),
            count(&c["n_canary"]),
        );
    }
    let safety = &a["safety"];
    let verdict = escape(s(&safety["verdict"]));
    let _ = writeln!(
        out,
        "<tr data-metric=\"safety_violations\"><td>safety_violations</td><td class=\"num\" data-col=\"stable\">{}</td><td class=\"num\" data-col=\"canary\">{}</td><td></td><td data-col=\"threshold\">any</td><td></td><td data-col=\"verdict\" class=\"verdict-{verdict}\">{verdict}</td></tr>",
        count(&safety["stable"]), count(&safety["canary"]),
    );
    out.push_str("</tbody></table>\n");
    if crate::analysis::telemetry_missing(a) {
        let _ = writeln!(
            out,
            "<p id=\"telemetry-missing\" class=\"warning\">{}</p>",
            escape(crate::analysis::TELEMETRY_MISSING)
        );
    }
    out.push_str("</section>\n");
}

fn timeline(out: &mut String, audit: &[Value]) {
    out.push_str("<section id=\"audit\"><h2>Audit timeline</h2><ol class=\"timeline\">\n");
    for e in audit.iter().rev() {
        let change = match (e["from"].as_str(), e["to"].as_str()) {
            (Some(f), Some(t)) => format!("{} → {}", escape(f), escape(t)),
            _ => String::new(),
        };
        let weight = e["canary_weight_bp"]
            .as_u64()
            .map_or(String::new(), |bp| format!(" · canary {}", weight(bp)));
        let breached: Vec<String> = breaches(e)
            .map(|c| {
                format!(
                    "{} {} (stable {}, canary {})",
                    escape(s(&c["metric"])),
                    escape(s(&c["change"])),
                    number(&c["stable"]),
                    number(&c["canary"])
                )
            })
            .collect();
        let evidence = if breached.is_empty() {
            String::new()
        } else {
            format!(
                "<div class=\"evidence\">breached: {}</div>",
                breached.join("; ")
            )
        };
        let _ = writeln!(
            out,
            "<li data-audit-id=\"{id}\" class=\"action-{action}\"><time>{at}</time> <b>{action}</b> {change}{weight} · rev {revision} · by {actor}: {reason}{evidence}</li>",
            id = e["id"],
            at = utc(e["at_ms"].as_i64().unwrap_or(0)),
            action = escape(s(&e["action"])),
            revision = e["revision"],
            actor = escape(s(&e["actor"])),
            reason = escape(s(&e["reason"])),
        );
    }
    out.push_str("</ol></section>\n");
}

fn rollout_list(out: &mut String, snapshot: &Snapshot) {
    if snapshot.rollouts.is_empty() {
        return;
    }
    out.push_str("<section id=\"rollouts\"><h2>All rollouts</h2><ul>\n");
    for r in snapshot.rollouts.iter().rev().take(50) {
        let _ = writeln!(
            out,
            "<li><a href=\"/?rollout={id}\">#{id}</a> {target}: {stable} → {canary}, {phase}, stage {stage}/{stages}</li>",
            id = r["id"],
            target = escape(s(&r["target"])),
            stable = escape(s(&r["stable"]["version"])),
            canary = escape(s(&r["canary"]["version"])),
            phase = escape(s(&r["phase"])),
            stage = r["stage"],
            stages = r["stages"],
        );
    }
    out.push_str("</ul></section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn escapes_everything_that_could_open_markup() {
        assert_eq!(
            escape(r#"<script>"a" & 'b'</script>"#),
            "&lt;script&gt;&quot;a&quot; &amp; &#39;b&#39;&lt;/script&gt;"
        );
    }

    fn rollout() -> Value {
        json!({
            "id": 3, "target": "support<agent>", "phase": "progressing", "stage": 2, "stages": 3,
            "weight": "25%", "weight_bp": 2500, "stage_weight": "25%", "stage_started_ms": 1_000,
            "salt": "ro-abc", "revision": 7, "created_ms": 0, "updated_ms": 1_000,
            "stable": {"version": "v1", "cluster": "a"}, "canary": {"version": "v2", "cluster": "b"},
            "plan": {"stages": [
                {"weight": "5%", "min_duration": "10s", "min_requests": 100},
                {"weight": "25%", "min_duration": "20s", "min_requests": 400},
                {"weight": "100%", "min_duration": "0s", "min_requests": 0}]}
        })
    }

    #[test]
    fn renders_the_rollout_the_analysis_and_the_timeline() {
        let snapshot = Snapshot {
            now_ms: 11_000,
            targets: vec![
                json!({"name": "support<agent>", "stable": {"version": "v1"},
                "route": {"revision": 7, "canary": {"version": "v2"}, "canary_weight_bp": 2500}}),
            ],
            rollouts: vec![rollout()],
            focus: Some(rollout()),
            analysis: json!({"stable_requests": 900.0, "canary_requests": 300.0, "alpha": 0.0005,
                "consecutive_failures": 1,
                "comparisons": [{"metric": "completion_rate", "stable": 0.9, "canary": 0.70123,
                    "change": "-19.9 points", "threshold": "5 points", "n_stable": 900.0,
                    "n_canary": 300.0, "verdict": "breach"}],
                "safety": {"stable": 0.0, "canary": 0.0, "verdict": "pass"}}),
            audit: vec![
                json!({"id": 1, "at_ms": 0, "action": "start", "from": "pending", "to": "progressing (stage 1)",
                    "revision": 5, "actor": "ops", "reason": "go", "canary_weight_bp": 500}),
                json!({"id": 2, "at_ms": 1_000, "action": "auto_promote", "from": "progressing (stage 1)",
                    "to": "progressing (stage 2)", "revision": 7, "actor": "canaryctl",
                    "reason": "<b>gates</b> passed", "canary_weight_bp": 2500}),
            ],
        };
        let html = page(&snapshot);
        assert!(html.contains("support&lt;agent&gt;"));
        assert!(!html.contains("<b>gates</b>"));
        assert!(html.contains("<dd id=\"phase\" class=\"phase-progressing\">progressing</dd>"));
        assert!(html.contains("data-col=\"canary\">0.7012</td>"));
        assert!(html.contains("class=\"verdict-breach\">breach</td>"));
        assert!(
            html.contains("10s / 20s"),
            "stage 2 has run 10 of 20 seconds"
        );
        assert!(html.contains("300 / 400 canary requests"));
        assert!(html.contains("aria-label=\"canary weight over time, now 25%\""));
        // Newest audit entry first; pause enabled, resume not.
        assert!(html.find("data-audit-id=\"2\"") < html.find("data-audit-id=\"1\""));
        assert!(html.contains("data-action=\"pause\" data-rollout=\"3\">"));
        assert!(html.contains("data-action=\"resume\" data-rollout=\"3\" disabled>"));
    }

    #[test]
    fn says_when_a_window_had_no_agent_telemetry() {
        let analysis = |missing: bool| {
            let mut out = String::new();
            super::analysis(
                &mut out,
                &json!({"stable_requests": 900.0, "canary_requests": 300.0, "alpha": 0.0005,
                    "telemetry_missing": missing, "comparisons": [],
                    "safety": {"stable": 0.0, "canary": 0.0, "verdict": "pass"}}),
            );
            out
        };
        assert!(analysis(true)
            .contains("<p id=\"telemetry-missing\" class=\"warning\">No agent telemetry"));
        assert!(!analysis(false).contains("telemetry-missing"));
    }

    #[test]
    fn renders_an_empty_controller() {
        let html = page(&Snapshot::default());
        assert!(html.contains("No rollout yet"));
        assert!(html.contains("No target has a route table yet"));
    }
}
