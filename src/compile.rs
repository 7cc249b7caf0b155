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

/// The compiled config. Building it never touches the network.
#[derive(Debug, Clone)]
pub struct Config {
    pub globals: Globals,
    pub providers: BTreeMap<String, Arc<Provider>>,
    pub pipelines: BTreeMap<String, Arc<Pipeline>>,
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
    if let Some(file) = &raw.globals_file {
        if raw
            .globals
            .http
            .listen
            .parse::<std::net::SocketAddr>()
            .is_err()
        {
            file.error(
                &mut diags,
                &path!["http", "listen"],
                format!(
                    "http.listen must be an address such as 127.0.0.1:9464, not \"{}\"",
                    raw.globals.http.listen
                ),
            );
        }
    }

    let providers: BTreeMap<String, Arc<Provider>> = raw
        .providers
        .iter()
        .filter_map(|p| provider::compile(p, &mut diags))
        .map(|p| (p.name.clone(), Arc::new(p)))
        .collect();

    let engine = ScriptEngine::new();
    let mut schemas = SchemaCache::default();
    let mut ctx = pipeline::compile::Context {
        dir,
        engine: &engine,
        provider_names: &raw.provider_names,
        providers: &providers,
        schemas: &mut schemas,
    };
    let mut pipelines = BTreeMap::new();
    for src in &raw.pipelines {
        let Some(compiled) = pipeline::compile(src, &mut ctx, &mut diags) else {
            continue;
        };
        if run_tests {
            report_test_failures(src, &compiled, &mut diags);
        }
        pipelines.insert(compiled.name.clone(), Arc::new(compiled));
    }

    if diags.is_empty() {
        Ok(Config {
            globals: raw.globals,
            providers,
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
