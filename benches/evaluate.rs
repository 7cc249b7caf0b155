//! Per-record evaluation on the shipped contacts→hubspot pipeline:
//! decode, key, input schema, `when`, rules, mapping (with two Rhai
//! expressions) and output schema.
//!
//! cargo bench --bench evaluate

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

// The allocator of the syncflow binary, so the figure is the binary's.
#[global_allocator]
static ALLOCATOR: syncflow::allocator::Allocator = syncflow::allocator::Allocator;
use syncflow::compile::compile_dir;
use syncflow::pipeline::MessageMeta;

fn evaluate(c: &mut Criterion) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = compile_dir(dir, &HashMap::new(), false).expect("shipped config is valid");
    let pipeline = &config.pipelines["contacts-to-hubspot"];
    let create = br#"{"op":"c","ts_ms":1732252800000,"after":{"id":"42","email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","company":"Analytical Engines","phone":"+44 20 7946 0000","status":"active"}}"#;
    let update = br#"{"op":"u","ts_ms":1732252800000,"after":{"id":"42","email":"ada@example.com","first_name":"Ada","last_name":"Lovelace","company":null,"phone":null,"status":"lead"}}"#;
    let headers = [("Nats-Msg-Id".to_string(), "cdc-42-1".to_string())];
    let meta = MessageMeta {
        subject: "cdc.contacts.42",
        seq: 1,
        timestamp_ms: Some(1_732_252_800_000),
        headers: &headers,
        linked_key: None,
    };

    let mut group = c.benchmark_group("contacts-to-hubspot");
    group.throughput(Throughput::Elements(1));
    group.bench_function("create", |b| {
        b.iter(|| {
            pipeline
                .evaluate(black_box(&meta), black_box(create))
                .unwrap()
        })
    });
    group.bench_function("update", |b| {
        b.iter(|| {
            pipeline
                .evaluate(black_box(&meta), black_box(update))
                .unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, evaluate);
criterion_main!(benches);
