//! Mutation fuzzing of config loading and of per-message evaluation: no
//! input, however broken, panics the process. Seeded from the shipped
//! config and the YAML examples of the README and DESIGN.md, mutated at
//! the byte, token and line level with values chosen to hit edges (huge
//! numbers and durations, unset variables, scripts that block, deep JSON).
//!
//! CI runs a small budget. By hand, a million inputs of each kind:
//!
//! ```sh
//! SYNCFLOW_FUZZ_INPUTS=1000000 cargo test --release --test fuzz -- --nocapture
//! ```
//!
//! `SYNCFLOW_FUZZ_SEED` picks another sequence (default 1); a failure
//! prints the seed and the input that panicked.

mod common;

use std::collections::HashMap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::Path;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use syncflow::compile::compile_dir;
use syncflow::pipeline::MessageMeta;

/// Values that break parsers and range checks.
const INTERESTING: &[&str] = &[
    "",
    "0",
    "-1",
    "1",
    "4294967296",
    "18446744073709551616",
    "99999999999999999999",
    "1e400",
    "-0.0",
    "NaN",
    "99999999999999999999h",
    "8785h",
    "0ms",
    "1.5ms",
    "${UNSET_VAR}",
    "${X:-}",
    "$${",
    "{",
    "}",
    "[",
    "'",
    "\"",
    "\\",
    "\u{0}",
    "\u{202e}",
    "é",
    "$",
    "$..*",
    "$[?(@.a == 1)]",
    "$.a[-1]",
    "{key}",
    "{id}",
    "{action}",
    "sleep(10)",
    "loop { }",
    "eval(\"1\")",
    "timestamp()",
    "record.a.b.c.d",
    "event.nope",
    "http://user:pw@h",
    "ftp://x",
    "null",
    "~",
    "true",
    "[1, 2, 3]",
    "{ a: 1 }",
    "*anchor",
    "&anchor x",
    "!!binary AAAA",
    "create",
    "upsert",
    "nats",
];

/// A mutation of `text`.
fn mutate(text: &str, rng: &mut StdRng) -> String {
    let mut bytes = text.as_bytes().to_vec();
    for _ in 0..rng.random_range(1..=4) {
        if bytes.is_empty() {
            bytes.extend_from_slice(INTERESTING[rng.random_range(0..INTERESTING.len())].as_bytes());
            continue;
        }
        let at = rng.random_range(0..bytes.len());
        match rng.random_range(0..8) {
            // Replace a token (a run of word characters) with an interesting value.
            0 | 1 => {
                let start = (0..=at)
                    .rev()
                    .find(|&i| i == 0 || !is_word(bytes[i - 1]))
                    .unwrap_or(at);
                let end = (at..bytes.len())
                    .find(|&i| !is_word(bytes[i]))
                    .unwrap_or(bytes.len());
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                bytes.splice(start..end.max(start), value.bytes());
            }
            // Insert an interesting value.
            2 => {
                let value = INTERESTING[rng.random_range(0..INTERESTING.len())];
                bytes.splice(at..at, value.bytes());
            }
            // Flip a byte, or set a random one.
            3 => bytes[at] ^= 1 << rng.random_range(0..8),
            4 => bytes[at] = rng.random(),
            // Delete a range.
            5 => {
                let end = (at + rng.random_range(1..=16)).min(bytes.len());
                bytes.drain(at..end);
            }
            // Duplicate a line, or swap two lines.
            6 => {
                let lines: Vec<&[u8]> = bytes.split(|&b| b == b'\n').collect();
                let i = rng.random_range(0..lines.len());
                let j = rng.random_range(0..lines.len());
                let mut lines: Vec<Vec<u8>> = lines.into_iter().map(<[u8]>::to_vec).collect();
                if rng.random_bool(0.5) {
                    let copy = lines[i].clone();
                    lines.insert(j, copy);
                } else {
                    lines.swap(i, j);
                }
                bytes = lines.join(&b'\n');
            }
            // Change a line's indentation.
            _ => {
                let start = bytes[..at]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                if rng.random_bool(0.5) {
                    bytes.splice(start..start, *b"  ");
                } else if bytes[start..].starts_with(b" ") {
                    bytes.remove(start);
                }
            }
        }
    }
    String::from_utf8_lossy(&bytes).into_owned()
}

fn is_word(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

fn budget() -> (u64, u64) {
    let inputs = std::env::var("SYNCFLOW_FUZZ_INPUTS")
        .ok()
        .and_then(|n| n.parse().ok());
    let seed = std::env::var("SYNCFLOW_FUZZ_SEED")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1);
    (inputs.unwrap_or(0), seed)
}

/// The YAML blocks of a markdown file that look like a provider or a pipeline.
fn yaml_examples(markdown: &str) -> Vec<String> {
    markdown
        .split("```yaml\n")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .filter(|block| block.contains("name:"))
        .map(str::to_string)
        .collect()
}

/// Runs `f`, turning a panic into the message to report.
fn no_panic(what: &str, seed: u64, input: &str, f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("{what} panicked (SYNCFLOW_FUZZ_SEED={seed}) on:\n{input}");
    }
}

#[test]
fn broken_config_files_are_errors_never_panics() {
    let (inputs, seed) = budget();
    let inputs = if inputs == 0 { 1_500 } else { inputs };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = common::shipped_config();
    // Two config directories: the shipped one, and the two-way example
    // (links, webhooks, polls).
    let two_way = syncflow_testkit::example_config("two-way").unwrap();
    let dirs = [dir.path(), two_way.path()];
    // (directory, file in it, its original text) for each seed input.
    let mut corpus: Vec<(usize, String, String)> = Vec::new();
    for file in [
        "syncflow.yaml",
        "pipelines/contacts-to-hubspot.yaml",
        "pipelines/contacts-to-salesforce.yaml",
        "providers/hubspot.yaml",
        "providers/salesforce.yaml",
        "schemas/internal/contact.json",
        "schemas/hubspot/contact.json",
    ] {
        let text = std::fs::read_to_string(dir.path().join(file)).unwrap();
        corpus.push((0, file.to_string(), text));
    }
    for file in [
        "links/contacts-hubspot.yaml",
        "links/contacts-salesforce.yaml",
        "providers/hubspot.yaml",
        "providers/salesforce.yaml",
        "providers/system_a.yaml",
        "pipelines/contacts-to-hubspot.yaml",
        "pipelines/hubspot-to-contacts.yaml",
        "pipelines/salesforce-to-contacts.yaml",
    ] {
        let text = std::fs::read_to_string(two_way.path().join(file)).unwrap();
        corpus.push((1, file.to_string(), text));
    }
    for doc in ["README.md", "../shared/DESIGN.md"] {
        let Ok(text) = std::fs::read_to_string(root.join(doc)) else {
            continue;
        };
        for example in yaml_examples(&text) {
            let file = match example.contains("objects:") {
                true => "providers/hubspot.yaml",
                false => "pipelines/contacts-to-hubspot.yaml",
            };
            corpus.push((0, file.to_string(), example));
        }
    }
    let env: HashMap<String, String> = HashMap::new();
    let mut rng = StdRng::seed_from_u64(seed);
    let silent = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut invalid = 0u64;
    for n in 0..inputs {
        // Long runs by hand say how far they got (a panic ends them at once).
        if n > 0 && n % 100_000 == 0 {
            eprintln!("{n} config files so far, {invalid} refused, 0 panics");
        }
        let (d, file, original) = &corpus[rng.random_range(0..corpus.len())];
        let mutated = mutate(original, &mut rng);
        let path = dirs[*d].join(file);
        let before = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, &mutated).unwrap();
        no_panic("compile_dir", seed, &mutated, || {
            if compile_dir(dirs[*d], &env, true).is_err() {
                invalid += 1;
            }
        });
        std::fs::write(&path, before).unwrap();
    }
    std::panic::set_hook(silent);
    println!("{inputs} mutated config files, {invalid} refused with errors, 0 panics");
    assert!(invalid > 0, "the mutations must break something");
}

#[test]
fn broken_messages_are_dead_letters_never_panics() {
    let (inputs, seed) = budget();
    let inputs = if inputs == 0 { 20_000 } else { inputs };
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = compile_dir(root, &HashMap::new(), false).unwrap();
    let two_way = compile_dir(&root.join("examples/two-way"), &HashMap::new(), false).unwrap();
    let pipelines: Vec<_> = config
        .pipelines
        .values()
        .chain(two_way.pipelines.values())
        .cloned()
        .collect();
    let samples = [
        r#"{"op":"c","before":null,"after":{"id":"1","crm":"hubspot","email":"a@b.c","first_name":"A"},"ts_ms":1700000000000}"#,
        r#"{"op":"d","before":{"id":"1","crm":"salesforce"},"after":null,"ts_ms":1700000000000}"#,
        r#"{"provider":"hubspot","object":"contact","event_id":"hubspot:1","record_id":"77","occurred_at":1700000000000,"change":"update","record":{"properties":{"firstname":"B"}},"source":"webhook"}"#,
        r#"{"provider":"salesforce","object":"contact","event_id":"salesforce:3:1","record_id":"003","occurred_at":1700000000000,"change":"delete","record":{"Id":"003","LastName":"X"},"source":"poll"}"#,
        r#"{"op":"c","after":{"id":"1","email":"ada@example.com","first_name":"Ada","last_name":"L","company":"A","status":"active","phone":"+1"}}"#,
        r#"{"op":"u","after":{"id":2,"email":"x@y.z","status":"lead"}}"#,
        r#"{"op":"d","after":{"id":"3"},"before":{"id":"3"}}"#,
        r#"{"op":"c","after":{"id":"4","email":"not-an-email","company":null,"tags":[1,[2,[3]]]}}"#,
        r#"{"after":{"id":"5","last_name":"é\u0000\u202e","status":"active","n":1e308}}"#,
    ];
    let headers = vec![("Nats-Msg-Id".to_string(), "x".to_string())];
    let meta = MessageMeta {
        subject: "cdc.contacts.1",
        seq: 1,
        timestamp_ms: Some(1_700_000_000_000),
        headers: &headers,
        linked_key: None,
    };
    let mut rng = StdRng::seed_from_u64(seed);
    let silent = std::panic::take_hook();
    std::panic::set_hook(Box::new(|_| {}));
    let mut refused = 0u64;
    for i in 0..inputs {
        let sample = samples[rng.random_range(0..samples.len())];
        let message = match i % 10 {
            // Deep nesting, now and then.
            0 => format!(
                r#"{{"op":"c","after":{{"id":"d","x":{}1{}}}}}"#,
                "[".repeat(200),
                "]".repeat(200)
            ),
            _ => mutate(sample, &mut rng),
        };
        let pipeline = &pipelines[rng.random_range(0..pipelines.len())];
        no_panic("evaluate", seed, &message, || {
            if pipeline.evaluate(&meta, message.as_bytes()).is_err() {
                refused += 1;
            }
        });
    }
    std::panic::set_hook(silent);
    println!("{inputs} mutated messages, {refused} refused as dead letters, 0 panics");
    assert!(refused > 0);
}
