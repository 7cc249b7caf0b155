//! FNV-1a 64: the hash syncflow stores or shares between instances (the id
//! map's body hashes, a key's fleet partition). Stable across versions,
//! builds and machines, which std's hashers do not promise.

const OFFSET: u64 = 0xcbf2_9ce4_8422_2325;
const PRIME: u64 = 0x0100_0000_01b3;

/// FNV-1a 64 of `bytes`.
pub fn hash(bytes: &[u8]) -> u64 {
    extend(OFFSET, bytes)
}

fn extend(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ u64::from(b)).wrapping_mul(PRIME))
}

/// FNV-1a 64 of everything written to it, for hashing what a serializer
/// writes without keeping a copy of it.
pub struct Writer(u64);

impl Writer {
    pub fn new() -> Self {
        Writer(OFFSET)
    }

    pub fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Writer {
    fn default() -> Self {
        Writer::new()
    }
}

impl std::io::Write for Writer {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0 = extend(self.0, bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn written_in_pieces_or_at_once_the_hash_is_the_same() {
        assert_eq!(hash(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(hash(b"a"), 0xaf63_dc4c_8601_ec8c);
        let mut w = Writer::new();
        std::io::Write::write_all(&mut w, b"ab").unwrap();
        std::io::Write::write_all(&mut w, b"c").unwrap();
        assert_eq!(w.finish(), hash(b"abc"));
    }
}
