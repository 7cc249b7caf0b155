//! A pipeline's own `tests:`, run offline by `validate` and `test`.

use super::{EvalErrorKind, MessageMeta, Pipeline};
use crate::config::model::TestCase;

/// One failing test case: `index` into `tests:` and why it failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFailure {
    pub index: usize,
    pub name: String,
    pub message: String,
}

/// Runs every test case; returns the failures.
pub fn run_tests(pipeline: &Pipeline) -> Vec<TestFailure> {
    pipeline
        .tests
        .iter()
        .enumerate()
        .filter_map(|(index, case)| {
            check(pipeline, index, case)
                .err()
                .map(|message| TestFailure {
                    index,
                    name: case.name.clone(),
                    message: format!("test \"{}\" failed: {message}", case.name),
                })
        })
        .collect()
}

fn check(pipeline: &Pipeline, index: usize, case: &TestCase) -> Result<(), String> {
    let data = serde_json::to_vec(&case.input).map_err(|e| e.to_string())?;
    let meta = MessageMeta {
        subject: "test",
        seq: index as u64 + 1,
        linked_key: case.linked_key.as_deref(),
        ..MessageMeta::default()
    };
    let expect = &case.expect;
    if let Some(kind) = &expect.error {
        if !EvalErrorKind::NAMES.contains(&kind.as_str()) {
            return Err(format!(
                "unknown error kind \"{kind}\" in expect.error; expected one of {}",
                EvalErrorKind::NAMES.join(", ")
            ));
        }
    }
    match (pipeline.evaluate(&meta, &data), &expect.error) {
        (Err(e), Some(kind)) if e.kind.as_str() == kind => Ok(()),
        (Err(e), Some(kind)) => Err(format!("expected a {kind} error, got {e}")),
        (Err(e), None) => Err(format!(
            "expected action {}, got error {e}",
            expect.action.as_deref().unwrap_or("(any)")
        )),
        (Ok(out), Some(kind)) => Err(format!(
            "expected a {kind} error, got action {}",
            out.action
        )),
        (Ok(out), None) => {
            if let Some(action) = &expect.action {
                if out.action.as_str() != action {
                    let why = out
                        .skip_reason
                        .map(|r| format!(" ({r})"))
                        .unwrap_or_default();
                    return Err(format!("expected action {action}, got {}{why}", out.action));
                }
            }
            if let Some(expected) = &expect.output {
                let actual = out.body.clone().unwrap_or(serde_json::Value::Null);
                if &actual != expected {
                    return Err(format!(
                        "output differs: expected {expected}, actual {actual}"
                    ));
                }
            }
            Ok(())
        }
    }
}
