//! `syncflow test`: a dry run of one pipeline. No network.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::Format;
use crate::compile::{Config, compile_dir};
use crate::config::env::ProcessEnv;
use crate::pipeline::{MessageMeta, Pipeline, run_tests};

#[derive(Debug, thiserror::Error)]
pub enum TestError {
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// Returns whether every message (or every declared test) succeeded.
pub fn run(
    dir: &Path,
    pipeline: &str,
    input: Option<&Path>,
    format: Format,
    out: &mut dyn Write,
) -> Result<bool, TestError> {
    // The pipeline's own tests are not a precondition of a dry run: the
    // operator may be running one precisely to see why they fail.
    let config: Config =
        compile_dir(dir, &ProcessEnv, false).map_err(|d| TestError::Invalid(d.to_string()))?;
    let Some(p) = config.pipelines.get(pipeline) else {
        let names: Vec<&str> = config.pipelines.keys().map(String::as_str).collect();
        return Err(TestError::Invalid(format!(
            "unknown pipeline \"{pipeline}\"{}; pipelines: {}",
            crate::config::suggest::did_you_mean(pipeline, names.iter().copied()),
            names.join(", ")
        )));
    };
    match input {
        None => declared_tests(p, format, out),
        Some(path) if path == Path::new("-") => messages(p, std::io::stdin().lock(), format, out),
        Some(path) => {
            let file = std::fs::File::open(path)
                .map_err(|e| TestError::Invalid(format!("cannot read {}: {e}", path.display())))?;
            messages(p, std::io::BufReader::new(file), format, out)
        }
    }
}

fn declared_tests(p: &Pipeline, format: Format, out: &mut dyn Write) -> Result<bool, TestError> {
    let failures = run_tests(p);
    for (i, case) in p.tests.iter().enumerate() {
        let failure = failures.iter().find(|f| f.index == i);
        match format {
            Format::Text => match failure {
                None => writeln!(out, "ok    {}", case.name)?,
                Some(f) => writeln!(out, "FAIL  {}", f.message)?,
            },
            Format::Json => writeln!(
                out,
                "{}",
                json!({"test": case.name, "passed": failure.is_none(), "message": failure.map(|f| &f.message)})
            )?,
        }
    }
    if format == Format::Text {
        writeln!(
            out,
            "{} passed, {} failed",
            p.tests.len() - failures.len(),
            failures.len()
        )?;
    }
    Ok(failures.is_empty())
}

fn messages(
    p: &Pipeline,
    input: impl BufRead,
    format: Format,
    out: &mut dyn Write,
) -> Result<bool, TestError> {
    let mut all_ok = true;
    for (i, line) in input.lines().enumerate() {
        let line = line?;
        if line.trim().is_empty() {
            continue;
        }
        let n = i + 1;
        let meta = MessageMeta {
            subject: "test",
            seq: n as u64,
            ..MessageMeta::default()
        };
        let result = p.evaluate(&meta, line.as_bytes());
        all_ok &= result.is_ok();
        match (format, result) {
            (Format::Text, Ok(o)) => {
                let why = o.skip_reason.map(|r| format!(" ({r})")).unwrap_or_default();
                writeln!(out, "{n}: key={} action={}{why}", o.key, o.action)?;
                if let Some(body) = &o.body {
                    writeln!(out, "   {body}")?;
                }
            }
            (Format::Text, Err(e)) => {
                let key = e
                    .key
                    .as_deref()
                    .map(|k| format!(" key={k}"))
                    .unwrap_or_default();
                writeln!(out, "{n}:{key} error[{}]: {}", e.kind, e.message)?;
            }
            (Format::Json, Ok(o)) => writeln!(
                out,
                "{}",
                json!({"line": n, "key": o.key, "action": o.action.as_str(), "skip_reason": o.skip_reason, "output": o.body.unwrap_or(Value::Null)})
            )?,
            (Format::Json, Err(e)) => writeln!(
                out,
                "{}",
                json!({"line": n, "key": e.key, "error": {"kind": e.kind.as_str(), "message": e.message}})
            )?,
        }
    }
    Ok(all_ok)
}
