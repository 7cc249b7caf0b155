//! Evaluates the benchmark pipeline (bench/config) on `N` events of the
//! shape bench_load publishes, and nothing else: no NATS, no HTTP. Run under
//! callgrind it counts the instructions one record's evaluation takes, a
//! figure that does not move with the machine's load (wall-clock benchmarks
//! here vary by a quarter between runs):
//!
//! ```text
//! cargo build --release --example bench_evaluate
//! valgrind --tool=callgrind --callgrind-out-file=/tmp/eval.out \
//!     target/release/examples/bench_evaluate 20000
//! callgrind_annotate /tmp/eval.out | head -30
//! ```
//!
//! Without valgrind it prints the wall-clock time per record.

use std::collections::HashMap;
use std::hint::black_box;
use std::path::Path;
use std::time::Instant;

use syncflow::compile::compile_dir;
use syncflow::pipeline::MessageMeta;

#[path = "shared/bench_event.rs"]
mod bench_event;
use bench_event::event;

// The allocator of the syncflow binary, so the figure is the binary's.
#[global_allocator]
static ALLOCATOR: syncflow::allocator::Allocator = syncflow::allocator::Allocator;

fn main() {
    let count: u64 = std::env::args()
        .nth(1)
        .map(|n| n.parse().expect("usage: bench_evaluate [COUNT]"))
        .unwrap_or(20_000);
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("bench/config");
    let config = compile_dir(&dir, &HashMap::new(), false).expect("bench/config is valid");
    let pipeline = &config.pipelines["bench-contacts"];
    // Built first, so the count below is evaluation only.
    let events: Vec<String> = (0..count)
        .map(|id| event(id, 1_700_000_000_000_000 + id))
        .collect();
    let started = Instant::now();
    for (seq, event) in events.iter().enumerate() {
        let meta = MessageMeta {
            subject: "bench.contacts.c",
            seq: seq as u64,
            timestamp_ms: Some(1_700_000_000_000),
            headers: &[],
            linked_key: None,
        };
        let outcome = pipeline.evaluate(black_box(&meta), black_box(event.as_bytes()));
        assert!(outcome.is_ok(), "{outcome:?}");
        black_box(outcome.ok());
    }
    let per_record = started.elapsed() / count.max(1) as u32;
    // The nanoseconds again, plain, for bench/run.sh to read.
    println!(
        "{count} records evaluated, {per_record:?} per record ({} ns)",
        per_record.as_nanos()
    );
}
