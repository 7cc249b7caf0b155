//! `syncflow validate`: every error in every file, at once.

use std::io::Write;
use std::path::Path;

use serde_json::json;

use super::Format;
use crate::compile::compile_dir;
use crate::config::env::ProcessEnv;

/// Prints the result; returns whether the config is valid.
pub fn run(dir: &Path, format: Format, out: &mut dyn Write) -> std::io::Result<bool> {
    match compile_dir(dir, &ProcessEnv, true) {
        Ok(config) => {
            let tests: usize = config.pipelines.values().map(|p| p.tests.len()).sum();
            match format {
                Format::Text => writeln!(
                    out,
                    "{}: valid: {} pipelines, {} providers, {}{} tests passed",
                    dir.display(),
                    config.pipelines.len(),
                    config.providers.len(),
                    match config.links.len() {
                        0 => String::new(),
                        1 => "1 link, ".to_string(),
                        n => format!("{n} links, "),
                    },
                    tests
                )?,
                Format::Json => writeln!(
                    out,
                    "{}",
                    json!({
                        "valid": true,
                        "pipelines": config.pipelines.keys().collect::<Vec<_>>(),
                        "providers": config.providers.keys().collect::<Vec<_>>(),
                        "links": config.links.keys().collect::<Vec<_>>(),
                        "tests_passed": tests,
                        "errors": [],
                    })
                )?,
            }
            Ok(true)
        }
        Err(diags) => {
            let count = diags.len();
            let errors = diags.into_sorted();
            match format {
                Format::Text => {
                    for d in &errors {
                        writeln!(out, "{d}")?;
                    }
                    writeln!(out, "{count} error{}", if count == 1 { "" } else { "s" })?;
                }
                Format::Json => writeln!(out, "{}", json!({ "valid": false, "errors": errors }))?,
            }
            Ok(false)
        }
    }
}
