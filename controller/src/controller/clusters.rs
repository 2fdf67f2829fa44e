//! The clusters each target may route to (`rollout::permit`): bound and unbound
//! by an admin, audited, read by anyone who may read.

use super::{audit_outside_rollouts, Controller, Error, Result};
use crate::access::Who;
use crate::rollout::AuditAction;
use crate::store::{self, ClusterBinding};
use crate::units::now_ms;
use policy_canary::check::check_name;

/// Most clusters one request binds.
pub const MAX_CLUSTERS_PER_REQUEST: usize = 64;

impl Controller {
    pub fn clusters(&self, target: &str) -> Result<Vec<ClusterBinding>> {
        check_name("target", target)?;
        Ok(store::bound_clusters(&self.reader(), target)?)
    }

    /// Binds `clusters` to `target` (those already bound stay as they were);
    /// answers every binding of the target.
    pub fn bind_clusters(
        &self,
        target: &str,
        clusters: &[String],
        who: &Who,
    ) -> Result<Vec<ClusterBinding>> {
        self.change_bindings(target, clusters, who, true)
    }

    /// Unbinds `clusters` from `target`; a cluster that was not bound is an error.
    pub fn unbind_clusters(
        &self,
        target: &str,
        clusters: &[String],
        who: &Who,
    ) -> Result<Vec<ClusterBinding>> {
        self.change_bindings(target, clusters, who, false)
    }

    fn change_bindings(
        &self,
        target: &str,
        clusters: &[String],
        who: &Who,
        bind: bool,
    ) -> Result<Vec<ClusterBinding>> {
        check_name("target", target)?;
        if clusters.is_empty() || clusters.len() > MAX_CLUSTERS_PER_REQUEST {
            return Err(policy_canary::error::err(
                "clusters",
                format!("name 1 to {MAX_CLUSTERS_PER_REQUEST} clusters"),
            )
            .into());
        }
        for cluster in clusters {
            check_name("clusters", cluster)?;
        }
        let now = now_ms();
        let mut conn = self.db();
        let tx = conn.transaction_with_behavior(rusqlite::TransactionBehavior::Immediate)?;
        for cluster in clusters {
            let changed = if bind {
                store::bind_cluster(&tx, target, cluster, &who.principal, now)?
            } else {
                store::unbind_cluster(&tx, target, cluster)?
            };
            if !changed && !bind {
                return Err(Error::NotFound(format!(
                    "cluster `{cluster}` is not bound to target {target}"
                )));
            }
            if changed {
                let (action, what) = if bind {
                    (AuditAction::ClusterBound, "bound to")
                } else {
                    (AuditAction::ClusterUnbound, "unbound from")
                };
                audit_outside_rollouts(
                    &tx,
                    who,
                    action,
                    format!("cluster {cluster} {what} target {target}"),
                    Some(target),
                    now,
                )?;
            }
        }
        tx.commit()?;
        Ok(store::bound_clusters(&conn, target)?)
    }
}
