//! The `email` format, with a fast path for the common shape.
//!
//! jsonschema's own check parses the address with the `email_address`
//! crate: about 3,000 instructions per value, and a contact record carries
//! its email through the input and the output schema (a profile of the
//! throughput benchmark put the two checks at a sixth of a record's
//! evaluation). Nearly every address is a plain `local@host.domain`, which
//! a byte scan accepts in a tenth of that. Anything else (quoted local
//! parts, IP literals, non-ASCII, and every address the scan would refuse)
//! goes to jsonschema's own check, so the verdict is always jsonschema's:
//! the scan only ever says "valid" where jsonschema does too (see the
//! differential test below).

use std::sync::LazyLock;

use serde_json::Value;

/// jsonschema's built-in `email` check, for whatever the fast path leaves.
static BUILTIN: LazyLock<jsonschema::Validator> = LazyLock::new(|| {
    jsonschema::options()
        .should_validate_formats(true)
        .build(&serde_json::json!({"type": "string", "format": "email"}))
        .expect("a constant schema")
});

/// The `email` format check schemas are compiled with.
pub fn is_email(s: &str) -> bool {
    plain_address(s) || BUILTIN.is_valid(&Value::String(s.to_owned()))
}

/// `local@label.label…`: a dot-atom local part of 1–64 ASCII `atext`
/// characters and a host name of two or more letter/digit/hyphen labels,
/// the last starting with a letter. True only for addresses of that shape.
///
/// Byte scans over slices: `str::split_once` and `str::split` with a
/// `char` searched with memchr, whose set-up cost more than the scan of a
/// 20-byte address (750 instructions a record for two checks, callgrind).
fn plain_address(s: &str) -> bool {
    let b = s.as_bytes();
    let Some(at) = b.iter().position(|&c| c == b'@') else {
        return false;
    };
    b.len() <= 254 && dot_atom(&b[..at]) && host_name(&b[at + 1..])
}

fn dot_atom(b: &[u8]) -> bool {
    let mut prev = b'.'; // a leading dot is refused like a doubled one
    for &c in b {
        if c == b'.' {
            if prev == b'.' {
                return false;
            }
        } else if !atext(c) {
            return false;
        }
        prev = c;
    }
    !b.is_empty() && b.len() <= 64 && prev != b'.'
}

/// RFC 5322 `atext`.
fn atext(c: u8) -> bool {
    matches!(c,
        b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9'
        | b'!' | b'#' | b'$' | b'%' | b'&' | b'\'' | b'*' | b'+' | b'-' | b'/'
        | b'=' | b'?' | b'^' | b'_' | b'`' | b'{' | b'|' | b'}' | b'~')
}

fn host_name(domain: &[u8]) -> bool {
    if domain.len() > 253 {
        return false;
    }
    let mut labels = 0;
    let mut last: &[u8] = &[];
    for b in domain.split(|&c| c == b'.') {
        let ok = !b.is_empty()
            && b.len() <= 63
            && b[0] != b'-'
            && b[b.len() - 1] != b'-'
            && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-');
        if !ok {
            return false;
        }
        labels += 1;
        last = b;
    }
    labels >= 2 && last[0].is_ascii_alphabetic()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn builtin(s: &str) -> bool {
        BUILTIN.is_valid(&Value::String(s.to_owned()))
    }

    #[test]
    fn common_addresses_take_the_fast_path() {
        for s in [
            "ada@example.com",
            "first.last+tag@mail.example.co.uk",
            "o'brien@x-y.io",
            "user_42@sub.domain.org",
        ] {
            assert!(plain_address(s), "{s}");
            assert!(builtin(s), "{s}");
        }
    }

    #[test]
    fn everything_else_gets_jsonschemas_verdict() {
        for (s, valid) in [
            ("not-an-email", false),
            ("a@b@c.com", false),
            (".a@b.com", false),
            ("a..b@c.com", false),
            ("a b@c.com", false),
            ("a@-b.com", false),
            ("\"quoted local\"@example.com", true),
            ("a@[127.0.0.1]", true),
            ("", false),
        ] {
            assert!(!plain_address(s), "{s}");
            assert_eq!(is_email(s), valid, "{s}");
            assert_eq!(is_email(s), builtin(s), "{s}");
        }
    }

    /// Random strings over the characters that matter: whenever the fast
    /// path says valid, so does jsonschema.
    #[test]
    fn the_fast_path_never_accepts_what_jsonschema_refuses() {
        // Mostly address-shaped: a local part, `@`, dot-separated labels,
        // each drawn from characters that are sometimes wrong there.
        let local_chars: Vec<char> = "aZ9.-_+!#~'\"é @".chars().collect();
        let label_chars: Vec<char> = "aZ09--_.é@[]".chars().collect();
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let mut pick = |chars: &[char], max: usize| -> String {
            let len = rng.random_range(0..max);
            (0..len)
                .map(|_| chars[rng.random_range(0..chars.len())])
                .collect()
        };
        let mut accepted = 0;
        for _ in 0..100_000 {
            let mut s = pick(&local_chars, 6);
            s.push('@');
            s.push_str(&pick(&label_chars, 5));
            s.push('.');
            s.push_str(&pick(&label_chars, 4));
            if plain_address(&s) {
                accepted += 1;
                assert!(builtin(&s), "fast path accepts {s:?}, jsonschema does not");
            }
        }
        // Not vacuous: the generator does produce plain addresses.
        assert!(accepted > 100, "{accepted}");
        let long_local = format!("{}@example.com", "a".repeat(65));
        assert!(!plain_address(&long_local));
        let long_label = format!("a@{}.com", "b".repeat(64));
        assert!(!plain_address(&long_label));
    }
}
