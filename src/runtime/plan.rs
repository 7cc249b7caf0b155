//! What a reload changes: the old compiled config against the new one, per
//! provider and per pipeline. Pure: no I/O, decided before anything is built.

use std::collections::BTreeMap;

use crate::compile::Config;
use crate::pipeline::Pipeline;

/// How a provider in the new config relates to the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProviderChange {
    Unchanged,
    /// Only `rate_limit` changed (and the provider had one and keeps one):
    /// the running sink stays and its shared limit takes the new rate.
    RateLimit,
    /// Anything else changed: a new sink is built and every pipeline that
    /// targets the provider takes it over.
    Rebuilt,
    Added,
}

/// How a pipeline in the new config relates to the running one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PipelineChange {
    Unchanged,
    /// Its file, one of its schemas or its provider's sink changed.
    Changed,
    Added,
}

#[derive(Debug, Default, PartialEq)]
pub struct Plan {
    /// Every provider of the new config.
    pub providers: BTreeMap<String, ProviderChange>,
    pub removed_providers: Vec<String>,
    /// Every pipeline of the new config.
    pub pipelines: BTreeMap<String, PipelineChange>,
    pub removed_pipelines: Vec<String>,
    /// `syncflow.yaml` changed: its settings (connections, listen address)
    /// take effect on the next start only.
    pub globals_changed: bool,
}

impl Plan {
    /// Nothing to do: every provider and pipeline is unchanged.
    pub fn is_empty(&self) -> bool {
        self.removed_providers.is_empty()
            && self.removed_pipelines.is_empty()
            && self
                .providers
                .values()
                .all(|c| *c == ProviderChange::Unchanged)
            && self
                .pipelines
                .values()
                .all(|c| *c == PipelineChange::Unchanged)
    }

    /// The pipelines with the given change, in name order.
    pub fn pipelines_with(&self, change: PipelineChange) -> Vec<&str> {
        self.pipelines
            .iter()
            .filter(|(_, c)| **c == change)
            .map(|(name, _)| name.as_str())
            .collect()
    }
}

pub fn plan(old: &Config, new: &Config) -> Plan {
    let providers: BTreeMap<String, ProviderChange> = new
        .providers
        .iter()
        .map(|(name, p)| {
            let change = match old.providers.get(name) {
                None => ProviderChange::Added,
                Some(o) if !o.same_except_rate_limit(p) => ProviderChange::Rebuilt,
                Some(o) if o.rate_limit == p.rate_limit => ProviderChange::Unchanged,
                // Adding or removing a limit changes what the sink holds.
                Some(o) if o.rate_limit.is_none() || p.rate_limit.is_none() => {
                    ProviderChange::Rebuilt
                }
                Some(_) => ProviderChange::RateLimit,
            };
            (name.clone(), change)
        })
        .collect();
    let pipelines = new
        .pipelines
        .iter()
        .map(|(name, p)| {
            let change = match old.pipelines.get(name) {
                None => PipelineChange::Added,
                Some(o)
                    if o.fingerprint != p.fingerprint
                        || provider_names(o) != provider_names(p)
                        || provider_names(p).iter().any(|name| {
                            matches!(
                                providers.get(*name),
                                Some(ProviderChange::Rebuilt | ProviderChange::Added)
                            )
                        }) =>
                {
                    PipelineChange::Changed
                }
                Some(_) => PipelineChange::Unchanged,
            };
            (name.clone(), change)
        })
        .collect();
    Plan {
        providers,
        removed_providers: removed(&old.providers, &new.providers),
        pipelines,
        removed_pipelines: removed(&old.pipelines, &new.pipelines),
        globals_changed: old.globals != new.globals,
    }
}

/// The providers a pipeline sends to: its target's, and a two-way
/// pipeline's link's (it sets lost edits back on the other side).
fn provider_names(pipeline: &Pipeline) -> Vec<&str> {
    let mut names: Vec<&str> = pipeline
        .target
        .provider()
        .map(|p| p.name.as_str())
        .into_iter()
        .collect();
    if let Some(tw) = &pipeline.two_way {
        names.extend(tw.link.provider_names());
    }
    names.sort_unstable();
    names.dedup();
    names
}

fn removed<T>(old: &BTreeMap<String, T>, new: &BTreeMap<String, T>) -> Vec<String> {
    old.keys()
        .filter(|name| !new.contains_key(*name))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::compile::compile_dir;

    /// The shipped config, with `edits` (file, from, to) applied.
    fn shipped_with(edits: &[(&str, &str, &str)]) -> Config {
        let dir = syncflow_testkit::shipped_config().unwrap();
        for (file, from, to) in edits {
            let path = dir.path().join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(from), "{from:?} not in {file}");
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        }
        compile_dir(dir.path(), &HashMap::new(), false).unwrap()
    }

    const HUBSPOT: &str = "contacts-to-hubspot";
    const SALESFORCE: &str = "contacts-to-salesforce";

    #[test]
    fn the_same_config_changes_nothing() {
        let plan = plan(&shipped_with(&[]), &shipped_with(&[]));
        assert!(plan.is_empty(), "{plan:?}");
        assert!(!plan.globals_changed);
    }

    #[test]
    fn a_mapping_edit_changes_only_its_pipeline() {
        let new = shipped_with(&[(
            "pipelines/contacts-to-hubspot.yaml",
            "properties.phone: $.phone",
            "properties.phone: $.mobile",
        )]);
        let plan = plan(&shipped_with(&[]), &new);
        assert_eq!(plan.pipelines[HUBSPOT], PipelineChange::Changed);
        assert_eq!(plan.pipelines[SALESFORCE], PipelineChange::Unchanged);
        assert!(
            plan.providers
                .values()
                .all(|c| *c == ProviderChange::Unchanged)
        );
    }

    #[test]
    fn a_shared_schema_edit_changes_every_pipeline_using_it() {
        let new = shipped_with(&[("schemas/internal/contact.json", "\"email\"", "\"email\" ")]);
        let plan = plan(&shipped_with(&[]), &new);
        assert_eq!(
            plan.pipelines_with(PipelineChange::Changed),
            [HUBSPOT, SALESFORCE]
        );
    }

    #[test]
    fn a_rate_limit_edit_touches_no_pipeline() {
        let new = shipped_with(&[(
            "providers/hubspot.yaml",
            "requests: 100, per: 10s",
            "requests: 150, per: 10s",
        )]);
        let plan = plan(&shipped_with(&[]), &new);
        assert_eq!(plan.providers["hubspot"], ProviderChange::RateLimit);
        assert_eq!(plan.providers["salesforce"], ProviderChange::Unchanged);
        assert!(
            plan.pipelines
                .values()
                .all(|c| *c == PipelineChange::Unchanged)
        );
    }

    #[test]
    fn another_provider_edit_rebuilds_its_sink_and_changes_its_pipelines() {
        let new = shipped_with(&[("providers/hubspot.yaml", "timeout: 10s", "timeout: 5s")]);
        let plan = plan(&shipped_with(&[]), &new);
        assert_eq!(plan.providers["hubspot"], ProviderChange::Rebuilt);
        assert_eq!(plan.pipelines_with(PipelineChange::Changed), [HUBSPOT]);
    }

    #[test]
    fn a_certificate_rotated_in_place_rebuilds_its_provider_only() {
        let dir = syncflow_testkit::shipped_config().unwrap();
        let provider = dir.path().join("providers/hubspot.yaml");
        let text = std::fs::read_to_string(&provider).unwrap();
        let text = text.replacen(
            "base_url: \"${HUBSPOT_URL:-http://127.0.0.1:18080/hubspot}\"",
            "base_url: https://crm.example/hubspot\ntls: { ca: certs/ca.pem }",
            1,
        );
        std::fs::write(&provider, text).unwrap();
        let ca = dir.path().join("certs/ca.pem");
        std::fs::create_dir_all(ca.parent().unwrap()).unwrap();
        let rotate = || {
            let made = tempfile::tempdir().unwrap();
            let certs = syncflow_testkit::Certs::write(made.path()).unwrap();
            std::fs::copy(&certs.ca, &ca).unwrap();
        };
        let compile = || compile_dir(dir.path(), &HashMap::new(), false).unwrap();
        rotate();
        let old = compile();
        assert_eq!(old.read_files().len(), 1);
        assert!(plan(&old, &compile()).is_empty(), "the same CA again");
        rotate();
        let new = compile();
        assert_ne!(old.read_files(), new.read_files());
        let plan = plan(&old, &new);
        assert_eq!(plan.providers["hubspot"], ProviderChange::Rebuilt);
        assert_eq!(plan.providers["salesforce"], ProviderChange::Unchanged);
        assert_eq!(plan.pipelines_with(PipelineChange::Changed), [HUBSPOT]);
    }

    #[test]
    fn a_comment_in_a_provider_file_changes_nothing() {
        let new = shipped_with(&[(
            "providers/hubspot.yaml",
            "timeout: 10s",
            "timeout: 10s  # was 5s",
        )]);
        assert!(plan(&shipped_with(&[]), &new).is_empty());
    }

    #[test]
    fn added_and_removed_pipelines_are_named() {
        let mut new = shipped_with(&[]);
        let hubspot = new.pipelines.remove(HUBSPOT).unwrap();
        let mut copy = (*hubspot).clone();
        copy.name = "contacts-copy".into();
        new.pipelines
            .insert(copy.name.clone(), std::sync::Arc::new(copy));
        let plan = plan(&shipped_with(&[]), &new);
        assert_eq!(plan.removed_pipelines, [HUBSPOT]);
        assert_eq!(plan.pipelines["contacts-copy"], PipelineChange::Added);
        assert_eq!(plan.pipelines[SALESFORCE], PipelineChange::Unchanged);
    }
}
