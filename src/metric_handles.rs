//! Metric handles for labels known only at run time (an HTTP status, a
//! dead-letter kind), registered on first use.
//!
//! `metrics::counter!` with dynamic labels allocates the label strings and
//! looks the series up in the registry on every call; on the per-record path
//! that is a measurable share of the CPU. A [`Handles`] keeps each series'
//! handle by its small key, so after the first record with a given key,
//! recording is a read lock and an atomic add.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::RwLock;

pub struct Handles<K, H> {
    known: RwLock<HashMap<K, H, foldhash::fast::RandomState>>,
    register: Box<dyn Fn(&K) -> H + Send + Sync>,
}

impl<K: Hash + Eq + Clone, H: Clone> Handles<K, H> {
    /// `register` makes the handle of a key seen for the first time.
    pub fn new(register: impl Fn(&K) -> H + Send + Sync + 'static) -> Self {
        Handles {
            known: RwLock::new(HashMap::default()),
            register: Box::new(register),
        }
    }

    pub fn get(&self, key: K) -> H {
        if let Some(handle) = self.known.read().expect("metric handles").get(&key) {
            return handle.clone();
        }
        let handle = (self.register)(&key);
        self.known
            .write()
            .expect("metric handles")
            .entry(key)
            .or_insert(handle)
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[test]
    fn a_key_is_registered_once() {
        let registered = Arc::new(AtomicUsize::new(0));
        let count = registered.clone();
        let handles = Handles::new(move |k: &u16| {
            count.fetch_add(1, Ordering::Relaxed);
            format!("status {k}")
        });
        assert_eq!(handles.get(200), "status 200");
        assert_eq!(handles.get(200), "status 200");
        assert_eq!(handles.get(503), "status 503");
        assert_eq!(registered.load(Ordering::Relaxed), 2);
    }
}
