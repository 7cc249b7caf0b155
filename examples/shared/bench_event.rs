//! The benchmark's event, shared by bench_load (which publishes it) and
//! bench_evaluate (which evaluates it without NATS).

/// A contact create: eight fields besides the id, the shape the benchmark
/// pipeline maps. Every one passes its `when` and ends in `create`.
pub fn event(id: u64, sent_at_us: u64) -> String {
    let company = match id % 3 {
        0 => "null".to_owned(),
        n => format!("\"Company {}\"", id % 97 + n),
    };
    let status = ["active", "lead", "inactive"][(id % 3) as usize];
    format!(
        r#"{{"op":"c","after":{{"id":"{id}","email":"person{id}@example.com","first_name":"First{id}","last_name":"Last{id}","phone":"+1 555 {:04}","city":"City {}","company":{company},"status":"{status}","sent_at_us":{sent_at_us}}}}}"#,
        id % 10_000,
        id % 50,
    )
}

/// [`event`], with an `after.notes` field of filler that makes it about
/// `bytes` long (a record with a long text field the pipeline does not map).
#[allow(dead_code)] // bench_load's only
pub fn event_of_size(id: u64, sent_at_us: u64, bytes: usize) -> String {
    let plain = event(id, sent_at_us);
    // `,"notes":""` and the closing braces.
    let filler = bytes.saturating_sub(plain.len() + 11);
    if filler == 0 {
        return plain;
    }
    let body = &plain[..plain.len() - 2];
    format!(r#"{body},"notes":"{}"}}}}"#, "n".repeat(filler))
}
