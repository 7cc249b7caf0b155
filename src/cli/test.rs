//! `syncflow test`: a dry run of one pipeline. No network.

use std::io::{BufRead, Write};
use std::path::Path;

use serde_json::{Value, json};

use super::Format;
use crate::compile::{Config, compile_dir};
use crate::config::env::ProcessEnv;
use crate::expr::ScriptEngine;
use crate::inbound::Envelope;
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
    feed: Option<Feed<'_>>,
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
    if let Some(feed) = feed {
        let envelopes = envelopes(&config, p, feed)?;
        let lines: String = envelopes
            .iter()
            .map(|e| serde_json::to_string(e).expect("an envelope serializes") + "\n")
            .collect();
        if format == Format::Text {
            writeln!(out, "{} events read into envelopes", envelopes.len())?;
        }
        return messages(p, lines.as_bytes(), format, out);
    }
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

/// A provider's raw answer, read the way `syncflow run` reads it before
/// an inbound pipeline sees it.
pub enum Feed<'a> {
    /// A webhook request's body (its signature is not checked).
    Webhook(&'a Path),
    /// A page of the object's poll endpoint.
    Poll(&'a Path),
}

/// The envelopes of a webhook body or a poll page for `p`'s link's
/// provider object.
fn envelopes(config: &Config, p: &Pipeline, feed: Feed<'_>) -> Result<Vec<Envelope>, TestError> {
    let Some(tw) = p.two_way.as_ref() else {
        return Err(TestError::Invalid(format!(
            "pipeline \"{}\" is not part of a link: --webhook and --poll feed a link's inbound pipeline",
            p.name
        )));
    };
    let (provider, object) = tw.link.provider();
    let provider = config.providers.get(&provider.name).unwrap_or(provider);
    let engine = ScriptEngine::new();
    let read = |path: &Path| {
        std::fs::read(path)
            .map_err(|e| TestError::Invalid(format!("cannot read {}: {e}", path.display())))
    };
    match feed {
        Feed::Webhook(path) => {
            let Some(webhook) = &provider.inbound.webhook else {
                return Err(TestError::Invalid(format!(
                    "provider \"{}\" has no inbound.webhook",
                    provider.name
                )));
            };
            webhook.read(&read(path)?, &engine).map_err(|r| {
                TestError::Invalid(format!(
                    "the webhook would be refused ({}): {}",
                    r.status(),
                    r.message()
                ))
            })
        }
        Feed::Poll(path) => {
            let Some(poll) = provider.inbound.polls.get(object) else {
                return Err(TestError::Invalid(format!(
                    "provider \"{}\" has no inbound.poll for object \"{object}\"",
                    provider.name
                )));
            };
            let body: Value = serde_json::from_slice(&read(path)?)
                .map_err(|e| TestError::Invalid(format!("{} is not JSON: {e}", path.display())))?;
            poll.page(&body, &engine)
                .map(|(envelopes, _)| envelopes)
                .map_err(|e| TestError::Invalid(format!("the page cannot be read: {e}")))
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
                if let (Some(facts), Some(tw)) = (&o.facts, &p.two_way) {
                    writeln!(
                        out,
                        "   link {}: modified {}, fields {}",
                        tw.link.name,
                        facts.modified,
                        link_fields(tw, facts)
                    )?;
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
                json!({"line": n, "key": o.key, "action": o.action.as_str(), "skip_reason": o.skip_reason, "output": o.body.clone().unwrap_or(Value::Null),
                "link": match (&o.facts, &p.two_way) {
                    (Some(facts), Some(tw)) => json!({"name": tw.link.name, "modified": facts.modified, "fields": link_fields(tw, facts)}),
                    _ => Value::Null,
                }})
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

/// The link's fields a change carries, by name.
fn link_fields(tw: &crate::pipeline::TwoWay, facts: &crate::pipeline::Facts) -> Value {
    let fields = tw
        .link
        .fields
        .iter()
        .zip(&facts.fields)
        .filter_map(|(field, value)| Some((field.name.clone(), value.clone()?)))
        .collect();
    Value::Object(fields)
}
