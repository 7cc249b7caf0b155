//! Copies of the shipped config directories, for tests that edit them.

use std::path::Path;

/// Copies the repository's `syncflow.yaml`, `pipelines/`, `providers/` and
/// `schemas/` into a new temporary directory.
pub fn shipped_config() -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    // This crate lives in `crates/testkit` of the repository.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    for sub in ["pipelines", "providers", "schemas"] {
        copy_tree(&root.join(sub), &dir.path().join(sub))?;
    }
    std::fs::copy(root.join("syncflow.yaml"), dir.path().join("syncflow.yaml"))?;
    Ok(dir)
}

/// Copies the repository's `examples/<name>` (a whole config directory,
/// such as `two-way`) into a new temporary directory.
pub fn example_config(name: &str) -> std::io::Result<tempfile::TempDir> {
    let dir = tempfile::tempdir()?;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    copy_tree(&root.join("examples").join(name), dir.path())?;
    Ok(dir)
}

/// Copies the directory `from` into `to` (created if need be), recursively.
pub fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(to)?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        if entry.file_type()?.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else {
            std::fs::copy(entry.path(), target)?;
        }
    }
    Ok(())
}
