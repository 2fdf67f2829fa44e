//! The controller's own metrics, in the Prometheus text format at `/metrics`:
//! rollouts by phase, canary weight per target, automatic decisions by kind,
//! evidence-source health and errors, open long-polls, Envoys by state and revision.
//! Counters live here (atomics, bumped where things happen); the rest is read from
//! the controller's state when scraped.

use crate::fleet::EnvoyList;
use policy_canary::route::RoutesDocument;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Mutex;

/// The evidence sources the analysis can read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EvidenceSource {
    EnvoyAdmin,
    Prometheus,
    /// The Envoys' reports through the sync channel (up: none missing).
    Sync,
}

impl EvidenceSource {
    pub fn as_str(self) -> &'static str {
        match self {
            EvidenceSource::EnvoyAdmin => "envoy_admin",
            EvidenceSource::Prometheus => "prometheus",
            EvidenceSource::Sync => "sync",
        }
    }
}

/// What the judge decided at a check.
pub const DECISIONS: [&str; 5] = ["hold", "advance", "rollback", "pause", "inconclusive"];

#[derive(Debug, Default)]
pub struct Metrics {
    decisions: [AtomicU64; DECISIONS.len()],
    /// Per source: failed reads, and whether the last read worked.
    evidence: Mutex<BTreeMap<EvidenceSource, (u64, bool)>>,
    /// Connections closed at once: the connection cap was reached.
    pub connections_refused: AtomicU64,
    /// Connections closed at once: their address held too many unauthenticated ones.
    pub connections_refused_unauthenticated: AtomicU64,
    /// Connections open now, and the cap.
    pub connections_open: AtomicU64,
    pub connections_max: AtomicU64,
    /// The cap on waiting long-polls (`--max-waiting-polls`).
    pub polls_max: AtomicU64,
    /// Long-polls answered 503 at once: the cap on waiting polls was reached.
    pub polls_refused: AtomicU64,
    /// `POST /v1/signals`: signals stored, sent again, refused.
    pub signals_accepted: AtomicU64,
    pub signals_duplicates: AtomicU64,
    pub signals_rejected: AtomicU64,
    /// `POST /v1/evidence`: reports taken, refused; Envoys that follow but do not report.
    pub evidence_reports: AtomicU64,
    pub evidence_reports_rejected: AtomicU64,
    pub evidence_envoys_missing: AtomicU64,
}

impl Metrics {
    /// Counts one automatic decision (`DECISIONS` names the kinds).
    pub fn decided(&self, kind: &str) {
        if let Some(i) = DECISIONS.iter().position(|d| *d == kind) {
            self.decisions[i].fetch_add(1, Relaxed);
        }
    }

    /// Records a read of an evidence source.
    pub fn evidence_read(&self, source: EvidenceSource, ok: bool) {
        let mut evidence = self.evidence.lock().unwrap_or_else(|p| p.into_inner());
        let entry = evidence.entry(source).or_insert((0, true));
        if !ok {
            entry.0 += 1;
        }
        entry.1 = ok;
    }
}

/// What a scrape reads from the controller's state besides the counters.
pub struct Snapshot<'a> {
    pub rollouts_by_phase: &'a [(&'static str, u64)],
    pub routes: &'a RoutesDocument,
    pub envoys: &'a EnvoyList,
    pub open_polls: u64,
}

/// Label values in the text format: backslash, quote and newline escaped.
fn label(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// The whole exposition.
pub fn render(metrics: &Metrics, snapshot: &Snapshot<'_>) -> String {
    let mut out = String::new();
    family(
        &mut out,
        "canaryctl_rollouts",
        "gauge",
        "Rollouts by phase.",
    );
    for (phase, count) in snapshot.rollouts_by_phase {
        let _ = writeln!(out, "canaryctl_rollouts{{phase=\"{phase}\"}} {count}");
    }
    family(
        &mut out,
        "canaryctl_route_revision",
        "gauge",
        "The route tables' current revision.",
    );
    let _ = writeln!(out, "canaryctl_route_revision {}", snapshot.routes.revision);
    family(
        &mut out,
        "canaryctl_canary_weight_basis_points",
        "gauge",
        "Canary weight in force per target (0..10000).",
    );
    for (target, table) in &snapshot.routes.routes {
        let _ = writeln!(
            out,
            "canaryctl_canary_weight_basis_points{{target=\"{}\"}} {}",
            label(target),
            table.canary_weight_bp
        );
    }
    family(
        &mut out,
        "canaryctl_decisions_total",
        "counter",
        "Automatic stage decisions by kind.",
    );
    for (kind, count) in DECISIONS.iter().zip(&metrics.decisions) {
        let _ = writeln!(
            out,
            "canaryctl_decisions_total{{decision=\"{kind}\"}} {}",
            count.load(Relaxed)
        );
    }
    for (name, help, counter) in [
        (
            "canaryctl_http_connections_refused_total",
            "Connections closed at once because --max-connections were open.",
            &metrics.connections_refused,
        ),
        (
            "canaryctl_http_connections_refused_unauthenticated_total",
            "Connections closed at once because their client address held --max-unauthenticated-per-address connections that had not authenticated.",
            &metrics.connections_refused_unauthenticated,
        ),
        (
            "canaryctl_polls_refused_total",
            "Route long-polls refused (503) because --max-waiting-polls were waiting.",
            &metrics.polls_refused,
        ),
        (
            "canaryctl_signals_accepted_total",
            "Delayed signals stored (POST /v1/signals).",
            &metrics.signals_accepted,
        ),
        (
            "canaryctl_signals_duplicates_total",
            "Delayed signals sent again (their id was known): counted once.",
            &metrics.signals_duplicates,
        ),
        (
            "canaryctl_signals_rejected_total",
            "Delayed signals refused (bad, unknown target or version, no rollout then, cohort contradicted).",
            &metrics.signals_rejected,
        ),
        (
            "canaryctl_evidence_reports_total",
            "Evidence reports taken from Envoys (the sync channel).",
            &metrics.evidence_reports,
        ),
        (
            "canaryctl_evidence_reports_rejected_total",
            "Evidence reports refused (unreadable).",
            &metrics.evidence_reports_rejected,
        ),
    ] {
        family(&mut out, name, "counter", help);
        let _ = writeln!(out, "{name} {}", counter.load(Relaxed));
    }
    let evidence = metrics.evidence.lock().unwrap_or_else(|p| p.into_inner());
    family(
        &mut out,
        "canaryctl_evidence_errors_total",
        "counter",
        "Failed reads of an evidence source.",
    );
    for (source, (errors, _)) in evidence.iter() {
        let _ = writeln!(
            out,
            "canaryctl_evidence_errors_total{{source=\"{}\"}} {errors}",
            source.as_str()
        );
    }
    family(
        &mut out,
        "canaryctl_evidence_up",
        "gauge",
        "Whether the last read of an evidence source worked (1) or not (0).",
    );
    for (source, (_, up)) in evidence.iter() {
        let _ = writeln!(
            out,
            "canaryctl_evidence_up{{source=\"{}\"}} {}",
            source.as_str(),
            u8::from(*up)
        );
    }
    drop(evidence);
    family(
        &mut out,
        "canaryctl_open_long_polls",
        "gauge",
        "Route long-polls held open now.",
    );
    let _ = writeln!(out, "canaryctl_open_long_polls {}", snapshot.open_polls);
    let polls_max = metrics.polls_max.load(Relaxed);
    let connections = (
        metrics.connections_open.load(Relaxed),
        metrics.connections_max.load(Relaxed),
    );
    for (name, help, value) in [
        (
            "canaryctl_long_polls_max",
            "Route long-polls that may wait at once (--max-waiting-polls).",
            polls_max,
        ),
        (
            "canaryctl_long_polls_headroom",
            "Route long-polls that may still start: the cap less the open ones.",
            polls_max.saturating_sub(snapshot.open_polls),
        ),
        (
            "canaryctl_http_connections_open",
            "HTTP connections open now.",
            connections.0,
        ),
        (
            "canaryctl_evidence_envoys_missing",
            "Envoys that follow the controller but have not reported evidence for three intervals (--evidence sync).",
            metrics.evidence_envoys_missing.load(Relaxed),
        ),
        (
            "canaryctl_http_connections_max",
            "HTTP connections that may be open at once (--max-connections, within the open-file limit).",
            connections.1,
        ),
    ] {
        family(&mut out, name, "gauge", help);
        let _ = writeln!(out, "{name} {value}");
    }
    family(
        &mut out,
        "canaryctl_envoys",
        "gauge",
        "Envoys that poll, by state (in_sync, behind, stale).",
    );
    let count = |f: &dyn Fn(&crate::fleet::EnvoyStatus) -> bool| {
        snapshot.envoys.envoys.iter().filter(|e| f(e)).count()
    };
    for (state, n) in [
        ("in_sync", count(&|e| !e.stale && e.in_sync)),
        ("behind", count(&|e| !e.stale && !e.in_sync)),
        ("stale", count(&|e| e.stale)),
    ] {
        let _ = writeln!(out, "canaryctl_envoys{{state=\"{state}\"}} {n}");
    }
    family(
        &mut out,
        "canaryctl_envoy_route_revision",
        "gauge",
        "The route revision each Envoy held at its last poll.",
    );
    for envoy in &snapshot.envoys.envoys {
        let _ = writeln!(
            out,
            "canaryctl_envoy_route_revision{{envoy=\"{}\"}} {}",
            label(&envoy.id),
            envoy.revision
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_escaped_labels() {
        let metrics = Metrics::default();
        metrics.decided("hold");
        metrics.decided("hold");
        metrics.decided("rollback");
        metrics.decided("nonsense");
        metrics.evidence_read(EvidenceSource::Prometheus, false);
        let routes = RoutesDocument::from_json(
            br#"{"revision": 7, "routes": {"support-agent": {"revision": 7, "salt": "s",
            "canary_weight_bp": 500, "stable": {"version": "v1", "cluster": "a"},
            "canary": {"version": "v2", "cluster": "b"}}}}"#,
        )
        .unwrap();
        let envoys: EnvoyList = serde_json::from_str(
            r#"{"revision": 7, "envoys": [{"id": "gw\"1", "revision": 6, "last_poll_ms": 0,
            "open_polls": 1, "in_sync": false, "stale": false}]}"#,
        )
        .unwrap();
        let text = render(
            &metrics,
            &Snapshot {
                rollouts_by_phase: &[("progressing", 1), ("rolled_back", 2)],
                routes: &routes,
                envoys: &envoys,
                open_polls: 1,
            },
        );
        for line in [
            "canaryctl_rollouts{phase=\"rolled_back\"} 2",
            "canaryctl_canary_weight_basis_points{target=\"support-agent\"} 500",
            "canaryctl_decisions_total{decision=\"hold\"} 2",
            "canaryctl_decisions_total{decision=\"rollback\"} 1",
            "canaryctl_evidence_errors_total{source=\"prometheus\"} 1",
            "canaryctl_evidence_up{source=\"prometheus\"} 0",
            "canaryctl_envoys{state=\"behind\"} 1",
            "canaryctl_envoy_route_revision{envoy=\"gw\\\"1\"} 6",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "missing `{line}` in\n{text}"
            );
        }
    }
}
