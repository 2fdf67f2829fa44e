//! What an `operate` token may put in a plan. Starting a rollout is `operate`'s
//! job, but a plan also says where production traffic goes and how much of it
//! goes there unanalysed; those parts are bounded here and the rest needs `admin`:
//! the clusters must be bound to the target (by an admin), the first stage may
//! carry at most `max_first_stage`, and the analysis must stay on (some metric
//! gate, the safety gate, a false-promotion budget no looser than the default).

use crate::rollout::plan::{RolloutPlan, FALSE_PROMOTION_BUDGET};
use crate::units::Weight;
use std::collections::BTreeSet;

/// The bounds on an `operate` token's plans (`serve --operate-max-first-stage`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OperateLimits {
    pub max_first_stage: Weight,
}

impl Default for OperateLimits {
    fn default() -> Self {
        OperateLimits {
            max_first_stage: Weight(2500),
        }
    }
}

/// Who starts a rollout: an admin (anything a valid plan says, its clusters bound
/// by starting it) or an `operate` token (within the limits).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Authority {
    Admin,
    Operate(OperateLimits),
}

/// The plan's clusters that are not bound to its target.
pub fn unbound_clusters(plan: &RolloutPlan, bound: &BTreeSet<String>) -> Vec<String> {
    [&plan.stable.cluster, &plan.canary.cluster]
        .into_iter()
        .filter(|c| !bound.contains(*c))
        .cloned()
        .collect()
}

/// Why `plan` needs `admin` rather than `operate`: one sentence per reason, each
/// saying what would allow it. Empty when an `operate` token may start it.
pub fn needs_admin(
    plan: &RolloutPlan,
    bound: &BTreeSet<String>,
    limits: &OperateLimits,
) -> Vec<String> {
    let mut reasons = Vec::new();
    for cluster in unbound_clusters(plan, bound) {
        reasons.push(format!(
            "cluster `{cluster}` is not bound to target {target}: binding it needs the `admin` scope \
             (canaryctl targets bind {target} {cluster})",
            target = plan.target
        ));
    }
    if let Some(first) = plan.stages.first() {
        if first.weight > limits.max_first_stage {
            reasons.push(format!(
                "the first stage sends {} to the canary, above the {} an `operate` token may start with \
                 (serve --operate-max-first-stage): it needs the `admin` scope",
                first.weight, limits.max_first_stage
            ));
        }
    }
    if plan.gates.enabled().is_empty() {
        reasons.push(
            "every metric gate is disabled: a rollout without analysis needs the `admin` scope"
                .to_string(),
        );
    }
    if !plan.gates.safety_violations.enabled {
        reasons.push(
            "the safety_violations gate is disabled: that needs the `admin` scope".to_string(),
        );
    }
    if plan.false_promotion > FALSE_PROMOTION_BUDGET {
        reasons.push(format!(
            "false_promotion {} is looser than the default {FALSE_PROMOTION_BUDGET}: that needs the `admin` scope",
            plan.false_promotion
        ));
    }
    reasons
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(extra: &str) -> RolloutPlan {
        RolloutPlan::parse(&format!(
            "target: support-agent\nstable: {{version: v1, cluster: agent_stable}}\n\
             canary: {{version: v2, cluster: agent_canary}}\n{extra}"
        ))
        .unwrap()
    }

    fn bound(clusters: &[&str]) -> BTreeSet<String> {
        clusters.iter().map(|c| c.to_string()).collect()
    }

    #[test]
    fn a_plan_within_the_bounds_needs_operate_only() {
        let both = bound(&["agent_stable", "agent_canary"]);
        let limits = OperateLimits::default();
        assert_eq!(needs_admin(&plan(""), &both, &limits), Vec::<String>::new());
        let at_limit = plan("stages: [{weight: 25%}, {weight: 100%}]");
        assert!(needs_admin(&at_limit, &both, &limits).is_empty());
        let tighter = plan("false_promotion: 0.01\ngates: {latency_p95: {enabled: false}}");
        assert!(needs_admin(&tighter, &both, &limits).is_empty());
    }

    #[test]
    fn each_way_past_the_bounds_is_named() {
        let limits = OperateLimits::default();
        let reasons = needs_admin(&plan(""), &bound(&["agent_stable"]), &limits);
        assert_eq!(reasons.len(), 1, "{reasons:?}");
        assert!(reasons[0].contains("cluster `agent_canary` is not bound"));
        assert!(reasons[0].contains("`admin` scope"));
        assert!(reasons[0].contains("canaryctl targets bind support-agent agent_canary"));

        let both = bound(&["agent_stable", "agent_canary"]);
        let straight_to_full = plan("stages: [{weight: 100%}]");
        let reasons = needs_admin(&straight_to_full, &both, &limits);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("100%") && reasons[0].contains("25%"));

        let mut off = String::from("gates:\n");
        for metric in crate::rollout::gates::Metric::ALL {
            off.push_str(&format!("  {metric}: {{enabled: false}}\n"));
        }
        let reasons = needs_admin(&plan(&off), &both, &limits);
        assert_eq!(reasons.len(), 1);
        assert!(reasons[0].contains("every metric gate is disabled"));

        let unsafe_plan = plan("gates: {safety_violations: {enabled: false}}");
        assert!(needs_admin(&unsafe_plan, &both, &limits)[0].contains("safety_violations"));
        let loose = plan("false_promotion: 0.2");
        assert!(needs_admin(&loose, &both, &limits)[0].contains("false_promotion"));

        // A lower configured limit bounds the default plan's stages too.
        let strict = OperateLimits {
            max_first_stage: Weight(100),
        };
        let reasons = needs_admin(&plan("stages: [{weight: 5%}]"), &both, &strict);
        assert!(reasons[0].contains("5%") && reasons[0].contains("1%"));
    }
}
