//! Helpers shared by the end-to-end tests.
#![allow(dead_code)]

use std::path::Path;

/// A copy of the shipped config in a temporary directory.
pub fn shipped_config() -> tempfile::TempDir {
    syncflow_testkit::shipped_config().expect("copy the shipped config")
}

/// Replaces the one line of `file` that contains `needle` with `line`.
pub fn set_line(dir: &Path, file: &str, needle: &str, line: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let found: Vec<&str> = text.lines().filter(|l| l.contains(needle)).collect();
    assert_eq!(found.len(), 1, "{needle:?} must be on one line of {file}");
    let from = found[0].to_string();
    edit(dir, file, &from, line);
}

/// Replaces `from` (which must occur exactly once) with `to` in `file`.
pub fn edit(dir: &Path, file: &str, from: &str, to: &str) {
    let path = dir.join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    assert_eq!(
        text.matches(from).count(),
        1,
        "{from:?} must occur once in {file}"
    );
    std::fs::write(path, text.replacen(from, to, 1)).unwrap();
}
pub mod contacts;
pub mod harness;
pub mod mapping_bug;
pub mod metrics;
pub mod twoway;
