//! A link, compiled: its provider object, System A's side (where records
//! born in the provider are created, and edits set back), and its fields.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::config::diagnostics::Diagnostics;
use crate::config::load::Sourced;
use crate::config::model::{LinkConfig, Policy, TargetConfig};
use crate::config::suggest::did_you_mean;
use crate::path;
use crate::pipeline::{SubjectTemplate, Target};
use crate::provider::Provider;

#[derive(Debug, Clone)]
pub struct Link {
    pub name: String,
    /// The provider object.
    pub external: Target,
    /// System A's side.
    pub internal: Target,
    pub fields: Vec<LinkField>,
    /// Hash of the link file's text: a pipeline of a changed link is changed.
    pub fingerprint: u64,
}

/// One synced field: where it is on each side, and who wins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkField {
    pub name: String,
    /// Dotted paths in each side's records.
    pub internal: Vec<String>,
    pub external: Vec<String>,
    pub policy: Policy,
}

impl Link {
    /// The providers of both sides.
    pub fn provider_names(&self) -> impl Iterator<Item = &str> {
        [&self.external, &self.internal]
            .into_iter()
            .filter_map(|t| t.provider().map(|p| p.name.as_str()))
    }

    /// The provider and object of the external side.
    pub fn provider(&self) -> (&Arc<Provider>, &str) {
        match &self.external {
            Target::Provider { provider, object } => (provider, object),
            Target::Subject(_) => unreachable!("a link's external side is a provider object"),
        }
    }
}

/// Checks and compiles a link; `None` if it has errors.
pub fn compile(
    src: &Sourced<LinkConfig>,
    providers: &BTreeMap<String, Arc<Provider>>,
    provider_names: &[String],
    diags: &mut Diagnostics,
) -> Option<Link> {
    let (cfg, file) = (&src.value, &src.file);
    let before = diags.len();
    let provider_object = |at: &str, provider: &str, object: &str, diags: &mut Diagnostics| {
        let Some(p) = providers.get(provider) else {
            if !provider_names.iter().any(|n| n == provider) {
                file.error(
                    diags,
                    &path![at, "provider"],
                    format!(
                        "unknown provider \"{provider}\"{}",
                        did_you_mean(provider, provider_names.iter().map(String::as_str))
                    ),
                );
            }
            return None;
        };
        if !p.objects.contains_key(object) {
            file.error(
                diags,
                &path![at, "object"],
                format!(
                    "provider \"{provider}\" has no object \"{object}\"{}",
                    did_you_mean(object, p.objects.keys().map(String::as_str))
                ),
            );
            return None;
        }
        Some(Target::Provider {
            provider: p.clone(),
            object: object.to_string(),
        })
    };
    let external = provider_object(
        "external",
        &cfg.external.provider,
        &cfg.external.object,
        diags,
    );
    let internal = match &cfg.internal {
        TargetConfig {
            provider: Some(provider),
            object: Some(object),
            nats: None,
            ..
        } => provider_object("internal", provider, object, diags),
        TargetConfig {
            provider: None,
            object: None,
            nats: Some(nats),
            ..
        } => SubjectTemplate::parse(&nats.subject)
            .map(Target::Subject)
            .map_err(|e| file.error(diags, &path!["internal", "nats", "subject"], e))
            .ok(),
        _ => {
            file.error(
                diags,
                &path!["internal"],
                "internal is a provider object (provider, object: System A's API) or nats: { subject }",
            );
            None
        }
    };
    if cfg.fields.is_empty() {
        file.error(diags, &path!["fields"], "a link needs at least one field");
    }
    let mut fields = Vec::new();
    for (name, field) in &cfg.fields {
        let split = |side: &str, text: &str, diags: &mut Diagnostics| {
            let segments: Vec<String> = text.split('.').map(str::to_string).collect();
            if segments.iter().any(String::is_empty) {
                file.error(
                    diags,
                    &path!["fields", name, side],
                    format!("\"{text}\" is not a dotted path (a.b.c)"),
                );
            }
            segments
        };
        fields.push(LinkField {
            name: name.clone(),
            internal: split("internal", &field.internal, diags),
            external: split("external", &field.external, diags),
            policy: field.policy,
        });
    }
    if diags.len() != before {
        return None;
    }
    Some(Link {
        name: cfg.name.clone(),
        external: external?,
        internal: internal?,
        fields,
        fingerprint: crate::config::fingerprint(&[&file.text]),
    })
}
