//! `canaryctl targets`: each target's stable policy and route table.

use crate::view::TargetList;

pub(super) fn print_targets(v: &TargetList) {
    for t in &v.targets {
        let route = &t.route;
        let canary = route.canary.as_ref().map_or(String::new(), |c| {
            format!(", canary {} at {}bp", c.version, route.canary_weight_bp)
        });
        println!(
            "{:<20} stable {}{}  (revision {})",
            t.name, t.stable.version, canary, route.revision
        );
    }
}
