//! The per-record evaluation on the shipped config.

mod common;

use syncflow::action::Action;
use syncflow::compile::compile_dir;
use syncflow::pipeline::{EvalErrorKind, MessageMeta};

#[test]
fn a_script_that_loops_forever_fails_only_its_record() {
    let dir = common::shipped_config();
    common::edit(
        dir.path(),
        "pipelines/contacts-to-salesforce.yaml",
        "LeadSource: { expr: 'if record.status == \"lead\" { \"Web\" } else { () }' }",
        "LeadSource: { expr: 'if record.status == \"lead\" { loop { } } else { () }' }",
    );
    let config = compile_dir(dir.path(), &std::collections::HashMap::new(), false).unwrap();
    let p = &config.pipelines["contacts-to-salesforce"];
    let meta = MessageMeta::default();

    let started = std::time::Instant::now();
    let err = p
        .evaluate(
            &meta,
            br#"{"op":"c","after":{"id":"1","last_name":"L","status":"lead"}}"#,
        )
        .unwrap_err();
    assert_eq!(err.kind, EvalErrorKind::Script);
    assert_eq!(err.key.as_deref(), Some("1"));
    assert!(err.message.contains("operations"), "{}", err.message);
    // Bounded by the operation limit, not by a clock: generous margin.
    assert!(started.elapsed() < std::time::Duration::from_secs(5));

    let ok = p
        .evaluate(
            &meta,
            br#"{"op":"c","after":{"id":"2","last_name":"L","status":"active"}}"#,
        )
        .unwrap();
    assert_eq!(ok.action, Action::Upsert);
}

#[test]
fn every_error_kind_is_typed() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = compile_dir(dir.as_ref(), &std::collections::HashMap::new(), false).unwrap();
    let sf = &config.pipelines["contacts-to-salesforce"];
    let meta = MessageMeta::default();
    let kind = |data: &[u8]| sf.evaluate(&meta, data).unwrap_err().kind;
    assert_eq!(kind(b"not json"), EvalErrorKind::Decode);
    assert_eq!(kind(br#"{"op":"c","after":{}}"#), EvalErrorKind::Key);
    assert_eq!(
        kind(br#"{"op":"c","after":{"id":"1","status":"gone"}}"#),
        EvalErrorKind::InputSchema
    );
    assert_eq!(
        kind(br#"{"op":"c","after":{"id":"1","email":"a@b.c"}}"#),
        EvalErrorKind::OutputSchema
    );
}

#[test]
fn a_key_longer_than_max_key_bytes_is_a_key_error() {
    let dir = env!("CARGO_MANIFEST_DIR");
    let config = compile_dir(dir.as_ref(), &std::collections::HashMap::new(), false).unwrap();
    let sf = &config.pipelines["contacts-to-salesforce"];
    let meta = MessageMeta::default();
    let message = |key: &str| {
        format!(r#"{{"op":"c","after":{{"id":"{key}","last_name":"L","status":"lead"}}}}"#)
    };
    // 512 bytes (the default) is fine, one more is not.
    assert!(
        sf.evaluate(&meta, message(&"k".repeat(512)).as_bytes())
            .is_ok()
    );
    let err = sf
        .evaluate(&meta, message(&"k".repeat(513)).as_bytes())
        .unwrap_err();
    assert_eq!(err.kind, EvalErrorKind::Key);
    assert!(
        err.message
            .contains("513 bytes long, more than max_key_bytes (512)"),
        "{}",
        err.message
    );
}
