//! An answer's header fields, kept as received and looked up by name.
//!
//! syncflow reads at most three of an answer's headers (Retry-After, the
//! quota's and the rate window's remaining count), while a CRM or nginx
//! sends five to fifteen. An `http::HeaderMap` of them checked and
//! lower-cased each name, copied each value into its own allocation and
//! hashed it into the map, all freed again: this buffer cost about 530
//! instructions less per request (callgrind, bench/README.md, "HTTP/1.1
//! without hyper"). The fields are copied once into one buffer, and a
//! lookup compares names without regard to case, as HTTP names compare.
//! httparse has checked the names (tokens) and the values (no control
//! characters but tab) already.

use std::fmt;

/// The fields, in the order received: for each, its name's length and its
/// value's length (four bytes each, little-endian), then the name and the
/// value.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Fields {
    bytes: Vec<u8>,
}

impl Fields {
    /// The fields of a parsed head.
    pub(super) fn from_parsed(headers: &[httparse::Header<'_>]) -> Fields {
        let size = headers
            .iter()
            .map(|h| 8 + h.name.len() + h.value.len())
            .sum();
        let mut bytes = Vec::with_capacity(size);
        for h in headers {
            let (name, value) = (h.name.as_bytes(), h.value);
            // A head is far below 4 GB (wire.rs, MAX_HEAD_BYTES).
            let len = |part: &[u8]| (part.len() as u32).to_le_bytes();
            bytes.extend_from_slice(&len(name));
            bytes.extend_from_slice(&len(value));
            bytes.extend_from_slice(name);
            bytes.extend_from_slice(value);
        }
        Fields { bytes }
    }

    /// Every field: (name as received, value).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[u8])> {
        let mut rest = self.bytes.as_slice();
        std::iter::from_fn(move || {
            let (lens, after) = rest.split_first_chunk::<8>()?;
            let name_len = u32::from_le_bytes([lens[0], lens[1], lens[2], lens[3]]) as usize;
            let value_len = u32::from_le_bytes([lens[4], lens[5], lens[6], lens[7]]) as usize;
            let (name, after) = after.split_at(name_len);
            let (value, after) = after.split_at(value_len);
            rest = after;
            // A token: ASCII (httparse checked it).
            Some((std::str::from_utf8(name).unwrap_or_default(), value))
        })
    }

    /// The value of the first field named `name` (in any case).
    pub fn get_bytes(&self, name: &str) -> Option<&[u8]> {
        self.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, value)| value)
    }

    /// [`get_bytes`](Self::get_bytes) as text, when the value is visible
    /// ASCII (what `HeaderValue::to_str` allows): a number, a date.
    pub fn get(&self, name: &str) -> Option<&str> {
        let value = self.get_bytes(name)?;
        let visible = value
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b));
        visible.then(|| std::str::from_utf8(value).ok()).flatten()
    }
}

impl fmt::Debug for Fields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_map()
            .entries(
                self.iter()
                    .map(|(name, value)| (name, String::from_utf8_lossy(value))),
            )
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(pairs: &[(&'static str, &'static [u8])]) -> Fields {
        let headers: Vec<httparse::Header<'_>> = pairs
            .iter()
            .map(|&(name, value)| httparse::Header { name, value })
            .collect();
        Fields::from_parsed(&headers)
    }

    #[test]
    fn names_compare_in_any_case_and_the_first_field_wins() {
        let f = fields(&[
            ("Server", b"nginx"),
            ("Retry-After", b"3"),
            ("retry-after", b"9"),
            ("X-Empty", b""),
        ]);
        assert_eq!(f.get("retry-after"), Some("3"));
        assert_eq!(f.get("RETRY-AFTER"), Some("3"));
        assert_eq!(f.get("x-empty"), Some(""));
        assert_eq!(f.get("retry"), None, "a prefix is not the name");
        assert_eq!(f.get("content-length"), None);
        let all: Vec<_> = f.iter().map(|(n, v)| (n, v.len())).collect();
        assert_eq!(
            all,
            [
                ("Server", 5),
                ("Retry-After", 1),
                ("retry-after", 1),
                ("X-Empty", 0)
            ]
        );
        assert!(fields(&[]).iter().next().is_none());
    }

    #[test]
    fn a_value_that_is_not_visible_ascii_is_bytes_only() {
        let f = fields(&[("X-Name", "Zoë".as_bytes()), ("X-Tab", b"a\tb")]);
        assert_eq!(f.get("x-name"), None);
        assert_eq!(f.get_bytes("x-name"), Some("Zoë".as_bytes()));
        assert_eq!(f.get("x-tab"), Some("a\tb"));
    }

    #[test]
    fn long_values_keep_their_length() {
        let long = vec![b'a'; 60_000];
        let leaked: &'static [u8] = Box::leak(long.into_boxed_slice());
        let f = fields(&[("X-Long", leaked), ("X-After", b"1")]);
        assert_eq!(f.get_bytes("x-long").map(<[u8]>::len), Some(60_000));
        assert_eq!(f.get("x-after"), Some("1"));
    }
}
