//! The route table: which policy version and cluster serve stable and canary, at
//! which weight, with which salt and segments. One type, served by the controller
//! (`Serialize`) and read by the filter (with `reader`, which names the field path).

use crate::check::{
    check_header, check_metric_names, check_name, check_salt, check_segment_count,
    check_segment_value, check_version, check_weight,
};
use crate::cohort::Cohort;
use crate::error::{err, ConfigError};
use crate::reader::{Object, Reader};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// Where a cohort's requests go: the policy version and the Envoy cluster serving it.
/// (`Deserialize` is for the controller's plans; the filter reads JSON with `reader`.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyBackend {
    pub version: String,
    pub cluster: String,
}

/// Requests whose `header` equals `value` use `canary_weight_bp` instead of the
/// table's weight. The first matching segment wins.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Segment {
    pub header: String,
    pub value: String,
    pub canary_weight_bp: u16,
}

/// The routing state of one target at one revision: the document the controller
/// serves and the `route` field of the plugin configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct RouteTable {
    pub revision: u64,
    pub salt: String,
    pub canary_weight_bp: u16,
    pub stable: PolicyBackend,
    /// No canary: every request goes to stable and forcing the canary is ignored.
    pub canary: Option<PolicyBackend>,
    pub segments: Vec<Segment>,
    /// The custom metrics the target's agents report (`x-agent-metric-<name>`)
    /// that the filter counts: the active plan's, so a new plan needs no Envoy
    /// change. Left out of the document when there are none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub metrics: Vec<String>,
}

/// Every target's route table at one revision: what the controller serves at
/// `GET /v1/routes` and the sync service hands to the filters.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Default)]
pub struct RoutesDocument {
    /// The controller process's generation: a new one on every start. Revisions
    /// only compare within a generation, so a controller whose revisions went back
    /// (restored from a backup, a lost state directory) is still followed.
    #[serde(skip_serializing_if = "is_zero")]
    pub epoch: u64,
    pub revision: u64,
    pub routes: BTreeMap<String, RouteTable>,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// A routes document's generation and revision.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct DocumentVersion {
    /// 0: a controller that does not say (before generations existed).
    pub epoch: u64,
    pub revision: u64,
}

impl DocumentVersion {
    /// Whether a document at `self` replaces one at `held`: any revision of another
    /// generation, else only a newer revision.
    pub fn replaces(&self, held: &DocumentVersion) -> bool {
        self.epoch != held.epoch || self.revision > held.revision
    }
}

impl RoutesDocument {
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let mut routes = BTreeMap::new();
        let mut invalid = None;
        let version = read_routes(bytes, |target, table| match table {
            Ok(table) => {
                routes.insert(target.to_string(), table);
            }
            Err(e) => {
                invalid.get_or_insert(e);
            }
        })?;
        if let Some(e) = invalid {
            return Err(e);
        }
        Ok(RoutesDocument {
            epoch: version.epoch,
            revision: version.revision,
            routes,
        })
    }
}

/// Validates a routes document and hands each target's table to `visit`, or the
/// error that table has: one target's bad table does not hold back the others.
/// Returns the document's generation and revision; errors of the document itself
/// (not JSON, no revision, unknown fields) fail the whole of it. (The filter uses
/// this directly, without a map.)
pub fn read_routes(
    bytes: &[u8],
    mut visit: impl FnMut(&str, Result<RouteTable, ConfigError>),
) -> Result<DocumentVersion, ConfigError> {
    let reader = Reader::parse(bytes)?;
    let root = reader.root()?;
    root.only(&["epoch", "revision", "routes"])?;
    let epoch = root.u64("epoch")?.unwrap_or(0);
    let revision = root
        .u64("revision")?
        .ok_or_else(|| err("revision", "missing field"))?;
    for (target, table) in root.entries("routes")? {
        let read = || -> Result<RouteTable, ConfigError> {
            check_name(&format!("routes.{target}"), target)?;
            let table = RouteTable::read(&table)?;
            table.validate(&format!("routes.{target}."))?;
            if table.revision > revision {
                return Err(err(
                    format!("routes.{target}.revision"),
                    format!(
                        "{} is newer than the document's revision {revision}",
                        table.revision
                    ),
                ));
            }
            Ok(table)
        };
        visit(target, read());
    }
    Ok(DocumentVersion { epoch, revision })
}

impl RouteTable {
    /// Parses and validates a route table, as served by the controller.
    pub fn from_json(bytes: &[u8]) -> Result<Self, ConfigError> {
        let reader = Reader::parse(bytes)?;
        let table = Self::read(&reader.root()?)?;
        table.validate("")?;
        Ok(table)
    }

    /// Reads a table from a JSON object (the plugin configuration's `route`).
    pub(crate) fn read(o: &Object<'_>) -> Result<Self, ConfigError> {
        o.only(&[
            "revision",
            "salt",
            "canary_weight_bp",
            "stable",
            "canary",
            "segments",
            "metrics",
        ])?;
        let mut segments = Vec::new();
        for s in o.objects("segments")? {
            s.only(&["header", "value", "canary_weight_bp"])?;
            segments.push(Segment {
                header: s.required_string("header")?,
                value: s.required_string("value")?,
                canary_weight_bp: s.required_weight("canary_weight_bp")?,
            });
        }
        Ok(RouteTable {
            revision: o.u64("revision")?.unwrap_or(0),
            salt: o.required_string("salt")?,
            canary_weight_bp: o.weight("canary_weight_bp")?.unwrap_or(0),
            stable: PolicyBackend::read(&o.required_object("stable")?)?,
            canary: o
                .object("canary")?
                .map(|c| PolicyBackend::read(&c))
                .transpose()?,
            segments,
            metrics: o.strings("metrics")?,
        })
    }

    /// Validates the table; `prefix` is prepended to field paths in errors.
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        check_salt(&format!("{prefix}salt"), &self.salt)?;
        check_metric_names(&format!("{prefix}metrics"), &self.metrics)?;
        check_weight(&format!("{prefix}canary_weight_bp"), self.canary_weight_bp)?;
        self.stable.validate(&format!("{prefix}stable."))?;
        if let Some(canary) = &self.canary {
            canary.validate(&format!("{prefix}canary."))?;
            if canary.version == self.stable.version {
                return Err(err(
                    format!("{prefix}canary.version"),
                    format!("must differ from the stable version `{}`", canary.version),
                ));
            }
        } else if self.canary_weight_bp > 0 {
            return Err(err(
                format!("{prefix}canary_weight_bp"),
                "must be 0 when there is no canary",
            ));
        }
        check_segment_count(&format!("{prefix}segments"), self.segments.len())?;
        for (i, segment) in self.segments.iter().enumerate() {
            let p = format!("{prefix}segments[{i}].");
            check_header(&format!("{p}header"), &segment.header)?;
            check_segment_value(&format!("{p}value"), &segment.value)?;
            check_weight(&format!("{p}canary_weight_bp"), segment.canary_weight_bp)?;
        }
        Ok(())
    }

    /// The backend serving `cohort`; stable when there is no canary.
    pub fn backend(&self, cohort: Cohort) -> &PolicyBackend {
        match (cohort, &self.canary) {
            (Cohort::Canary, Some(canary)) => canary,
            _ => &self.stable,
        }
    }

    /// The cohort whose version a finished stream is counted under: the cluster
    /// Envoy actually chose (`xds.cluster_name`) when it names exactly one of the
    /// table's backends, as in runtime mode where Envoy's weights pick the cluster;
    /// otherwise the filter's own decision (shared clusters, local replies, none).
    pub fn served_cohort(&self, decided: Cohort, cluster: Option<&[u8]>) -> Cohort {
        let Some(cluster) = cluster else {
            return decided;
        };
        let is_stable = self.stable.cluster.as_bytes() == cluster;
        let is_canary = self
            .canary
            .as_ref()
            .is_some_and(|canary| canary.cluster.as_bytes() == cluster);
        match (is_stable, is_canary) {
            (true, false) => Cohort::Stable,
            (false, true) => Cohort::Canary,
            _ => decided,
        }
    }
}

impl PolicyBackend {
    fn read(o: &Object<'_>) -> Result<Self, ConfigError> {
        o.only(&["version", "cluster"])?;
        Ok(PolicyBackend {
            version: o.required_string("version")?,
            cluster: o.required_string("cluster")?,
        })
    }

    fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        check_version(&format!("{prefix}version"), &self.version)?;
        check_name(&format!("{prefix}cluster"), &self.cluster)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_follow_the_cluster_envoy_chose() {
        let backend = |version: &str, cluster: &str| PolicyBackend {
            version: version.into(),
            cluster: cluster.into(),
        };
        let mut t = RouteTable {
            revision: 1,
            salt: "s".into(),
            canary_weight_bp: 2500,
            stable: backend("v1", "agent_stable"),
            canary: Some(backend("v2", "agent_canary")),
            segments: Vec::new(),
            metrics: Vec::new(),
        };
        let served =
            |t: &RouteTable, decided, cluster: Option<&[u8]>| t.served_cohort(decided, cluster);
        assert_eq!(
            served(&t, Cohort::Stable, Some(b"agent_canary")),
            Cohort::Canary
        );
        assert_eq!(
            served(&t, Cohort::Canary, Some(b"agent_stable")),
            Cohort::Stable
        );
        assert_eq!(served(&t, Cohort::Canary, Some(b"other")), Cohort::Canary);
        assert_eq!(served(&t, Cohort::Stable, None), Cohort::Stable);
        t.canary = Some(backend("v2", "agent_stable"));
        assert_eq!(
            served(&t, Cohort::Canary, Some(b"agent_stable")),
            Cohort::Canary
        );
    }
}
