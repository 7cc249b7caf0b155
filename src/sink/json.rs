//! Request bodies written as JSON, with a fast path for plain strings.
//!
//! serde_json escapes a string byte by byte, looking each one up in a
//! table: that loop was 1,900 instructions of a bench record (callgrind,
//! `bench/README.md`), the single largest item of the body's serialization.
//! Nearly every string of a CRM body (its keys, names, emails, phone
//! numbers) needs no escape at all, which one pass without early exit (the
//! compiler makes it a vector loop) can tell; such a string is copied
//! between quotes whole. Every other string, and every number, goes to
//! serde_json, so the output is always byte for byte serde_json's (see the
//! differential test below).

use serde_json::Value;

/// Appends `value` as compact JSON, exactly as `serde_json::to_writer`
/// would write it.
pub fn write_value(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_value(out, item);
            }
            out.push(b']');
        }
        Value::Object(fields) => {
            out.push(b'{');
            for (i, (name, item)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_str(out, name);
                out.push(b':');
                write_value(out, item);
            }
            out.push(b'}');
        }
        // null, booleans and numbers: serde_json's own (itoa, ryu).
        scalar => serde_json::to_writer(out, scalar).expect("a JSON value always serializes"),
    }
}

/// Appends `s` as a JSON string.
pub fn write_str(out: &mut Vec<u8>, s: &str) {
    if needs_escape(s.as_bytes()) {
        serde_json::to_writer(out, s).expect("a string always serializes");
        return;
    }
    out.reserve(s.len() + 2);
    out.push(b'"');
    out.extend_from_slice(s.as_bytes());
    out.push(b'"');
}

/// Whether any byte must be escaped in a JSON string: a control character,
/// a quote or a backslash (serde_json escapes nothing else).
///
/// A fold over every byte rather than `any`: without the early exit the
/// loop is vectorized, and the strings here are short and nearly always
/// clean, so reading them whole costs less than stopping early would save.
fn needs_escape(bytes: &[u8]) -> bool {
    bytes.iter().fold(false, |seen, &b| {
        seen | (b < 0x20) | (b == b'"') | (b == b'\\')
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn written(value: &Value) -> String {
        let mut out = Vec::new();
        write_value(&mut out, value);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn writes_what_serde_json_writes() {
        let cases = [
            json!(null),
            json!(true),
            json!(-12),
            json!(18446744073709551615u64),
            json!(1.5e300),
            json!(0.1),
            json!(""),
            json!("plain ascii, with spaces / slashes"),
            json!("quote \" backslash \\ newline \n tab \t nul \u{0} unit sep \u{1f} del \u{7f}"),
            json!("non-ASCII: ünïcødé 日本 😀 and \u{2028}"),
            json!([]),
            json!({}),
            json!({"properties": {"email": "a@b.c", "n": [1, "x\"y", {"k\n": null}]}, "a": false}),
        ];
        for case in &cases {
            assert_eq!(
                written(case),
                serde_json::to_string(case).unwrap(),
                "{case}"
            );
        }
    }

    #[test]
    fn every_byte_that_needs_an_escape_is_found() {
        for b in 0u8..=127 {
            let s = format!("ab{}cd", b as char);
            let mut out = Vec::new();
            write_str(&mut out, &s);
            assert_eq!(out, serde_json::to_vec(&s).unwrap(), "byte {b:#x}");
        }
    }
}
