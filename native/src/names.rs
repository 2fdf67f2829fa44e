//! The plugin names its stats as the wasm filter does
//! (`policy_canary.target.<t>.version.<v>[.replicate.<r>].<suffix>`); Envoy's
//! dynamic modules define every stat before the first request, so the module
//! defines a few labelled families up front and maps each name onto one. With
//! `metrics_namespace: wasmcustom` the families are the very Prometheus series
//! the wasm filter's stats tags make:
//! `wasmcustom_policy_canary_rq_total{target, policy_version}`,
//! `wasmcustom_policy_canary_replicate{target, policy_version, replicate, counter}`.

use policy_canary::stats::{Counter, LATENCY_SUFFIX, NATIVE_CUSTOM_FAMILY};

/// The sync's own stats (`policy_canary.sync.<name>`), and whether each is a gauge:
/// unlabelled, so their names are the wasm filter's exactly.
pub const SYNC_STATS: [(&str, bool); 6] = [
    ("polls_ok", false),
    ("polls_failed", false),
    ("documents_rejected", false),
    ("revision", true),
    ("evidence_reports_ok", false),
    ("evidence_reports_failed", false),
];

/// A stat family the module defines when its configuration loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// One of `Counter::ALL`, by index.
    Counter(usize),
    Latency,
    Replicate,
    /// An agent's own metric (`custom_<name>_<field>`), named by its counter label.
    Custom,
    /// One of `SYNC_STATS`, by index.
    Sync(usize),
}

impl Family {
    pub const COUNT: usize = Counter::ALL.len() + 3 + SYNC_STATS.len();

    /// Every family, in a fixed order (its index is its slot in the definitions).
    pub fn all() -> impl Iterator<Item = Family> {
        (0..Counter::ALL.len())
            .map(Family::Counter)
            .chain([Family::Latency, Family::Replicate, Family::Custom])
            .chain((0..SYNC_STATS.len()).map(Family::Sync))
    }

    pub fn index(self) -> usize {
        match self {
            Family::Counter(i) => i,
            Family::Latency => Counter::ALL.len(),
            Family::Replicate => Counter::ALL.len() + 1,
            Family::Custom => Counter::ALL.len() + 2,
            Family::Sync(i) => Counter::ALL.len() + 3 + i,
        }
    }

    /// The stat's name under the metrics namespace.
    pub fn name(self) -> String {
        match self {
            Family::Counter(i) => format!(
                "policy_canary.{}",
                Counter::ALL.get(i).map_or("unknown", |c| c.suffix())
            ),
            Family::Latency => format!("policy_canary.{LATENCY_SUFFIX}"),
            Family::Replicate => "policy_canary.replicate".into(),
            Family::Custom => format!("policy_canary.{NATIVE_CUSTOM_FAMILY}"),
            Family::Sync(i) => format!(
                "policy_canary.sync.{}",
                SYNC_STATS.get(i).map_or("unknown", |(name, _)| name)
            ),
        }
    }

    pub fn label_names(self) -> &'static [&'static str] {
        match self {
            Family::Counter(_) | Family::Latency => &["target", "policy_version"],
            Family::Replicate => &["target", "policy_version", "replicate", "counter"],
            Family::Custom => &["target", "policy_version", "counter"],
            Family::Sync(_) => &[],
        }
    }

    pub fn is_histogram(self) -> bool {
        self == Family::Latency
    }

    pub fn is_gauge(self) -> bool {
        matches!(self, Family::Sync(i) if SYNC_STATS.get(i).is_some_and(|(_, gauge)| *gauge))
    }
}

/// A plugin stat name as a family and its label values.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub family: Family,
    pub labels: Vec<String>,
}

/// The family and labels of a stat the plugin names; `None` for a name of
/// another shape (the plugin keeps its counts pending, as after a failed call).
pub fn labelled(name: &str) -> Option<Labelled> {
    if let Some(stat) = name.strip_prefix("policy_canary.sync.") {
        let i = SYNC_STATS.iter().position(|(n, _)| *n == stat)?;
        return Some(Labelled {
            family: Family::Sync(i),
            labels: Vec::new(),
        });
    }
    let rest = name.strip_prefix("policy_canary.target.")?;
    let (target, rest) = rest.split_once(".version.")?;
    let (head, suffix) = rest.rsplit_once('.')?;
    if target.is_empty() || head.is_empty() || suffix.is_empty() {
        return None;
    }
    // `<version>.replicate.<r>` (a version may itself hold dots).
    if let Some((version, replicate)) = head.rsplit_once(".replicate.") {
        if !version.is_empty()
            && !replicate.is_empty()
            && replicate.bytes().all(|b| b.is_ascii_digit())
        {
            return Some(Labelled {
                family: Family::Replicate,
                labels: vec![
                    target.into(),
                    version.into(),
                    replicate.into(),
                    suffix.into(),
                ],
            });
        }
    }
    let family = if suffix == LATENCY_SUFFIX {
        Family::Latency
    } else if let Some(i) = Counter::ALL.iter().position(|c| c.suffix() == suffix) {
        Family::Counter(i)
    } else if policy_canary::custom::parse_suffix(suffix).is_some() {
        Family::Custom
    } else {
        return None;
    };
    let mut labels = vec![target.to_string(), head.to_string()];
    if family == Family::Custom {
        labels.push(suffix.into());
    }
    Some(Labelled { family, labels })
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy_canary::replicate::{replicate_stat_name, Slot};
    use policy_canary::stats::{stat_name, stat_target, Traffic};

    fn labels(name: &str) -> (Family, Vec<String>) {
        let l = labelled(name).unwrap_or_else(|| panic!("{name}"));
        (l.family, l.labels)
    }

    #[test]
    fn every_name_the_plugin_makes_has_a_family() {
        for counter in Counter::ALL {
            let name = stat_name("support-agent", "v2.4.0", counter.suffix());
            let (family, values) = labels(&name);
            assert_eq!(family.name(), format!("policy_canary.{}", counter.suffix()));
            assert_eq!(values, ["support-agent", "v2.4.0"]);
        }
        let forced = stat_name(&stat_target("t", Traffic::Forced), "v2", "rq_total");
        assert_eq!(labels(&forced).1, ["t.forced", "v2"]);
        let latency = stat_name("t", "v1.0.0", LATENCY_SUFFIX);
        assert_eq!(labels(&latency).0, Family::Latency);
        for index in 0..Slot::COUNT {
            let slot = Slot::at(index);
            let name = replicate_stat_name("t", "v2.4.0", 31, slot);
            let (family, values) = labels(&name);
            assert_eq!(family, Family::Replicate);
            assert_eq!(values, ["t", "v2.4.0", "31", slot.suffix()]);
        }
        let custom = stat_name("t", "v2", &policy_canary::custom::suffix("judge", "micros"));
        assert_eq!(
            labels(&custom),
            (
                Family::Custom,
                vec!["t".into(), "v2".into(), "custom_judge_micros".into()]
            )
        );
    }

    #[test]
    fn other_names_have_none() {
        for name in [
            "",
            "policy_canary.sync.no_such_stat",
            "policy_canary.target.t.rq_total",
            "policy_canary.target..version.v1.rq_total",
            "policy_canary.target.t.version.v1.no_such_counter",
            "policy_canary.target.t.version.rq_total",
            "other.target.t.version.v1.rq_total",
        ] {
            assert_eq!(labelled(name), None, "{name}");
        }
        // A replicate that is not a number stays part of the version.
        let odd = labelled("policy_canary.target.t.version.v1.replicate.x.rq_total").unwrap();
        assert_eq!(odd.labels, ["t", "v1.replicate.x"]);
    }

    #[test]
    fn sync_stats_keep_their_names() {
        for (i, (stat, gauge)) in SYNC_STATS.iter().enumerate() {
            let name = format!("policy_canary.sync.{stat}");
            let l = labelled(&name).unwrap();
            assert_eq!(l.family, Family::Sync(i));
            assert_eq!(l.family.name(), name);
            assert!(l.labels.is_empty());
            assert_eq!(l.family.is_gauge(), *gauge);
        }
    }

    #[test]
    fn families_are_indexed_densely() {
        let all: Vec<Family> = Family::all().collect();
        assert_eq!(all.len(), Family::COUNT);
        for (i, family) in all.iter().enumerate() {
            assert_eq!(family.index(), i);
        }
    }
}
