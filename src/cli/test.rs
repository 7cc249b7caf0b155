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
    if tw.direction == crate::config::model::Direction::Outbound {
        let inbound: Vec<&str> = config
            .pipelines
            .values()
            .filter(|q| {
                q.two_way.as_ref().is_some_and(|t| {
                    t.link.name == tw.link.name
                        && t.direction == crate::config::model::Direction::Inbound
                })
            })
            .map(|q| q.name.as_str())
            .collect();
        return Err(TestError::Invalid(format!(
            "pipeline \"{}\" is link \"{}\"'s outbound half: --webhook and --poll feed its inbound pipeline ({})",
            p.name,
            tw.link.name,
            if inbound.is_empty() {
                "none yet".to_string()
            } else {
                inbound.join(", ")
            }
        )));
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn two_way() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/two-way")
    }

    fn dry_run(pipeline: &str, feed: Feed<'_>) -> Result<(bool, String), TestError> {
        let mut out = Vec::new();
        let ok = run(
            &two_way(),
            pipeline,
            None,
            Some(feed),
            Format::Text,
            &mut out,
        )?;
        Ok((ok, String::from_utf8(out).unwrap()))
    }

    #[test]
    fn a_webhook_body_runs_through_the_inbound_pipeline() {
        let sample = two_way().join("samples/hubspot-webhook.json");
        let (ok, out) = dry_run("hubspot-to-contacts", Feed::Webhook(&sample)).unwrap();
        assert!(ok, "{out}");
        assert!(out.starts_with("3 events read into envelopes\n"), "{out}");
        assert!(out.contains("1: key=5001 action=upsert\n   {\"crm\":\"hubspot\",\"email\":\"lin@example.com\",\"first_name\":\"Lin\",\"hubspot_id\":\"5001\"}"), "{out}");
        assert!(out.contains("3: key=4712 action=delete"), "{out}");
    }

    #[test]
    fn a_poll_page_runs_through_the_inbound_pipeline() {
        let sample = two_way().join("samples/salesforce-page.json");
        let (ok, out) = dry_run("salesforce-to-contacts", Feed::Poll(&sample)).unwrap();
        assert!(ok, "{out}");
        assert!(out.starts_with("2 events read into envelopes\n"), "{out}");
        assert!(
            out.contains("2: key=003000000000002 action=delete"),
            "{out}"
        );
    }

    #[test]
    fn feeds_of_the_wrong_kind_are_refused_with_the_reason() {
        let webhook = two_way().join("samples/hubspot-webhook.json");
        let page = two_way().join("samples/salesforce-page.json");
        let err = |pipeline, feed| dry_run(pipeline, feed).unwrap_err().to_string();
        assert_eq!(
            err("contacts-to-hubspot", Feed::Webhook(&webhook)),
            "pipeline \"contacts-to-hubspot\" is link \"contacts-hubspot\"'s outbound half: --webhook and --poll feed its inbound pipeline (hubspot-to-contacts)"
        );
        assert_eq!(
            err("hubspot-to-contacts", Feed::Poll(&page)),
            "provider \"hubspot\" has no inbound.poll for object \"contact\""
        );
        assert_eq!(
            err("salesforce-to-contacts", Feed::Webhook(&webhook)),
            "provider \"salesforce\" has no inbound.webhook"
        );
        // A body the provider's webhook would refuse: as syncflow run answers it.
        let bad = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(bad.path(), "{not json").unwrap();
        let refused = err("hubspot-to-contacts", Feed::Webhook(bad.path()));
        assert!(
            refused.starts_with("the webhook would be refused (400"),
            "{refused}"
        );
    }
}
