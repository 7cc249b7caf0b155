//! A whole config directory, loaded, checked and compiled: what `validate`,
//! `test` and `run` work from.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use crate::config::diagnostics::Diagnostics;
use crate::config::env::Env;
use crate::config::load::{Sourced, load_dir};
use crate::config::model::{Globals, PipelineConfig};
use crate::expr::ScriptEngine;
use crate::path;
use crate::pipeline::{self, Pipeline, run_tests};
use crate::provider::{self, Provider};
use crate::schema::SchemaCache;
use crate::twoway::{self, Link};

/// The compiled config. Building it never touches the network.
#[derive(Debug, Clone)]
pub struct Config {
    pub globals: Globals,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub links: BTreeMap<String, Arc<Link>>,
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
}

impl Config {
    /// The files besides its YAML and schemas the config was made of
    /// (providers' TLS certificates and keys, wherever they are), with
    /// fingerprints of what was read: hot reload watches them too. A file
    /// two providers name is listed for each: either may have read it
    /// before a rotation.
    pub fn read_files(&self) -> Vec<crate::sink::http::tls::ReadFile> {
        self.providers
            .values()
            .flat_map(|p| p.tls_files.iter().cloned())
            .collect()
    }
}

/// Loads and compiles `dir`, running every pipeline's `tests:` when
/// `run_tests`. Returns every error found, in every file, or the config.
pub fn compile_dir(dir: &Path, env: &dyn Env, run_tests: bool) -> Result<Config, Diagnostics> {
    let mut diags = Diagnostics::default();
    let raw = load_dir(dir, env, &mut diags);

    check_unique_names(
        raw.providers.iter().map(|p| (&p.value.name, p)),
        "provider",
        &mut diags,
    );
    check_unique_names(
        raw.pipelines.iter().map(|p| (&p.value.name, p)),
        "pipeline",
        &mut diags,
    );
    let mut globals = raw.globals.clone();
    if let Some(file) = &raw.globals_file {
        crate::config::globals::check(file, dir, &globals, &mut diags);
        crate::config::globals::resolve_files(dir, &mut globals);
    }

    let engine = ScriptEngine::new();
    // An incomplete provider or link (`Sourced::complete`: a key left out) is
    // compiled for its own errors, but nothing is checked against what is
    // left of it: a pipeline would be told of an endpoint or a setting it
    // lacks only because it was left out. Its name is still known.
    let providers: BTreeMap<String, Arc<Provider>> = raw
        .providers
        .iter()
        .filter_map(|p| provider::compile(p, dir, &engine, &mut diags).filter(|_| p.complete))
        .map(|p| (p.name.clone(), Arc::new(p)))
        .collect();

    check_unique_names(
        raw.links.iter().map(|l| (&l.value.name, l)),
        "link",
        &mut diags,
    );
    let links: BTreeMap<String, Arc<Link>> = raw
        .links
        .iter()
        .filter_map(|l| {
            twoway::link::compile(l, &providers, &raw.provider_names, &mut diags)
                .filter(|_| l.complete)
        })
        .map(|l| (l.name.clone(), Arc::new(l)))
        .collect();

    let mut schemas = SchemaCache::default();
    let mut ctx = pipeline::compile::Context {
        dir,
        engine: &engine,
        provider_names: &raw.provider_names,
        providers: &providers,
        links: &links,
        link_names: &raw.link_names,
        schemas: &mut schemas,
    };
    let mut pipelines = BTreeMap::new();
    for src in &raw.pipelines {
        let Some(compiled) = pipeline::compile(src, &mut ctx, &mut diags) else {
            continue;
        };
        // An incomplete file's tests would fail for what was left out.
        if run_tests && src.complete {
            report_test_failures(src, &compiled, &mut diags);
        }
        pipelines.insert(compiled.name.clone(), Arc::new(compiled));
    }

    if diags.is_empty() {
        Ok(Config {
            globals,
            providers,
            links,
            pipelines,
        })
    } else {
        Err(diags)
    }
}

fn report_test_failures(
    src: &Sourced<PipelineConfig>,
    compiled: &Pipeline,
    diags: &mut Diagnostics,
) {
    for failure in run_tests(compiled) {
        src.file.error(
            diags,
            &path!["tests", failure.index, "name"],
            failure.message,
        );
    }
}

fn check_unique_names<'a, T: 'a>(
    items: impl Iterator<Item = (&'a String, &'a Sourced<T>)>,
    what: &str,
    diags: &mut Diagnostics,
) {
    let mut seen: BTreeMap<&str, &Sourced<T>> = BTreeMap::new();
    for (name, src) in items {
        if let Some(first) = seen.get(name.as_str()) {
            src.file.error(
                diags,
                &path!["name"],
                format!(
                    "{what} \"{name}\" is already defined in {}",
                    first.file.rel.display()
                ),
            );
        } else {
            seen.insert(name, src);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    /// No `Debug` of a compiled config shows a credential: provider auth of
    /// every kind, extra headers, and passwords in connection URLs.
    #[test]
    fn credentials_never_show_in_debug_output() {
        let dir = syncflow_testkit::shipped_config().unwrap();
        let edit = |file: &str, from: &str, to: &str| {
            let path = dir.path().join(file);
            let text = std::fs::read_to_string(&path).unwrap();
            assert!(text.contains(from), "{from} in {file}");
            std::fs::write(&path, text.replacen(from, to, 1)).unwrap();
        };
        edit(
            "providers/salesforce.yaml",
            r#"auth: { bearer: "${SALESFORCE_TOKEN:-dev-token}" }"#,
            "auth: { basic: { username: u, password: basic-secret-1 } }\nheaders: { X-Api-Key: header-secret-2 }",
        );
        edit(
            "syncflow.yaml",
            r#"nats:  { url: "${NATS_URL:-nats://127.0.0.1:4222}" }"#,
            "nats: { url: \"nats://u:url-secret-3@127.0.0.1:4222\" }",
        );
        edit(
            "syncflow.yaml",
            r#"redis: { url: "${REDIS_URL:-redis://127.0.0.1:6379}" }"#,
            "redis: { url: \"redis://:url-secret-4@127.0.0.1:6379\" }",
        );
        let env = HashMap::from([("HUBSPOT_TOKEN".to_string(), "bearer-secret-5".to_string())]);
        let config = compile_dir(dir.path(), &env, false).unwrap();
        let shown = format!("{config:?} {config:#?}");
        for secret in [
            "basic-secret-1",
            "header-secret-2",
            "url-secret-3",
            "url-secret-4",
            "bearer-secret-5",
        ] {
            assert!(!shown.contains(secret), "{secret} shows");
        }
        // The basic credentials are base64 in the header: not that either.
        use base64::Engine as _;
        let encoded = base64::engine::general_purpose::STANDARD.encode("u:basic-secret-1");
        assert!(!shown.contains(&encoded));
        assert!(shown.contains("[redacted]"));
    }
}
