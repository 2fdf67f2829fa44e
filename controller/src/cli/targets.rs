//! `canaryctl targets`: each target's stable policy and route table, and which
//! Envoys follow which revision.

use crate::units::now_ms;
use crate::view::TargetsView;

pub(super) fn print_targets(v: &TargetsView) {
    for t in &v.targets.targets {
        let route = &t.route;
        let canary = route.canary.as_ref().map_or(String::new(), |c| {
            format!(", canary {} at {}bp", c.version, route.canary_weight_bp)
        });
        println!(
            "{:<20} stable {}{}  (revision {})",
            t.name, t.stable.version, canary, route.revision
        );
    }
    let envoys = &v.envoys;
    if envoys.envoys.is_empty() {
        println!(
            "no Envoy has polled this controller yet (revision {})",
            envoys.revision
        );
        return;
    }
    let in_sync = envoys
        .envoys
        .iter()
        .filter(|e| e.in_sync && !e.stale)
        .count();
    println!(
        "envoys: {in_sync} of {} hold the current revision {}",
        envoys.envoys.len(),
        envoys.revision
    );
    for e in &envoys.envoys {
        let state = if e.stale {
            "STALE"
        } else if e.in_sync {
            "in sync"
        } else {
            "BEHIND"
        };
        println!(
            "  {:<32} revision {:<6} {:<8} last poll {}s ago, {} open",
            e.id,
            e.revision,
            state,
            (now_ms() - e.last_poll_ms).max(0) / 1000,
            e.open_polls
        );
    }
}
