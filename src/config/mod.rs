//! The config directory: model, loading, `${VAR}` interpolation, durations
//! and diagnostics with `file:line:col`.

pub mod diagnostics;
pub mod duration;
pub mod env;
pub mod globals;
pub mod load;
pub mod model;
pub mod placeholders;
pub mod range;
pub mod secret;
pub mod suggest;
pub mod yaml;

/// A stable hash of config texts, to tell on reload what changed.
pub fn fingerprint(texts: &[&str]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    for t in texts {
        t.hash(&mut h);
    }
    h.finish()
}
