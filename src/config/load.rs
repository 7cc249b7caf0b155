//! Reading a config directory into typed structs, collecting every error.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use serde::de::DeserializeOwned;

use super::diagnostics::{Diagnostics, Pos};
use super::env::Env;
use super::model::{Globals, LinkConfig, PipelineConfig, ProviderConfig};
use super::suggest::did_you_mean;
use super::yaml::{self, Kind, Node, Seg};

/// One config file as read: its text and its positioned YAML tree.
#[derive(Debug)]
pub struct SourceFile {
    /// Path relative to the config directory (what diagnostics print).
    pub rel: PathBuf,
    pub text: String,
    pub root: Node,
    /// The maps a value of the wrong type was taken out of while
    /// deserializing ([`deserialize`]). What a later check would say about
    /// such a map or its keys may be about that value's absence, which the
    /// value's own error already explains: it is not said.
    pruned: OnceLock<Vec<Vec<Seg>>>,
}

impl SourceFile {
    pub fn new(rel: PathBuf, text: String, root: Node) -> Self {
        SourceFile {
            rel,
            text,
            root,
            pruned: OnceLock::new(),
        }
    }

    pub fn node(&self, path: &[Seg]) -> Option<&Node> {
        self.root.at(path)
    }

    /// Whether `path` is a map a value was taken out of, or one of its
    /// keys (where a check says what the map lacks). What lies deeper is
    /// about those keys' own values, and is said.
    fn pruned(&self, path: &[Seg]) -> bool {
        self.pruned.get().is_some_and(|maps| {
            maps.iter()
                .any(|map| path.starts_with(map) && path.len() <= map.len() + 1)
        })
    }

    /// An error about the value at `path`. Not reported when the value's
    /// `${VAR}` failed (that error already stands at the same place), nor
    /// about a map a value was taken out of ([`SourceFile::pruned`]).
    pub fn error(&self, diags: &mut Diagnostics, path: &[Seg], message: impl Into<String>) {
        if !self.root.at(path).is_some_and(Node::env_failed) && !self.pruned(path) {
            diags.push(&self.rel, self.root.value_pos(path), message);
        }
    }

    /// An error about the key at `path` (an unknown or misplaced name).
    pub fn key_error(&self, diags: &mut Diagnostics, path: &[Seg], message: impl Into<String>) {
        if !self.pruned(path) {
            diags.push(&self.rel, self.root.key_pos(path), message);
        }
    }

    /// An error at `line:col` inside the scalar at `path` (a Rhai script or
    /// JSONPath), so the position lands on the offending character.
    pub fn text_error(
        &self,
        diags: &mut Diagnostics,
        path: &[Seg],
        line: usize,
        col: usize,
        message: impl Into<String>,
    ) {
        if self.pruned(path) {
            return;
        }
        let pos = match self.root.at(path) {
            Some(node) if node.env_failed() => return,
            Some(node) => node.text_pos(line, col),
            None => self.root.value_pos(path),
        };
        diags.push(&self.rel, pos, message);
    }
}

/// A typed config struct and the file it came from.
#[derive(Debug, Clone)]
pub struct Sourced<T> {
    pub value: T,
    pub file: Arc<SourceFile>,
    /// False when deserializing left something out (an unknown key, a
    /// value of the wrong type, both already reported): the struct is
    /// still checked for its other mistakes, but its `tests:` are not run
    /// (they would fail for what was left out).
    pub complete: bool,
}

/// Everything in a config directory, typed but not yet cross-checked.
#[derive(Debug, Default)]
pub struct RawConfig {
    pub dir: PathBuf,
    pub globals: Globals,
    pub globals_file: Option<Arc<SourceFile>>,
    pub providers: Vec<Sourced<ProviderConfig>>,
    /// The `name` of every provider file that is valid YAML, even one that
    /// failed to deserialize, so a pipeline naming it is not told "unknown".
    pub provider_names: Vec<String>,
    pub pipelines: Vec<Sourced<PipelineConfig>>,
    pub links: Vec<Sourced<LinkConfig>>,
    /// The `name` of every link file that is valid YAML (as `provider_names`).
    pub link_names: Vec<String>,
}

/// Reads `syncflow.yaml`, `providers/*.yaml`, `pipelines/*.yaml` and `links/*.yaml`.
/// Files that fail to parse are left out and their errors added to `diags`.
pub fn load_dir(dir: &Path, env: &dyn Env, diags: &mut Diagnostics) -> RawConfig {
    let mut raw = RawConfig {
        dir: dir.to_path_buf(),
        ..RawConfig::default()
    };
    let globals_path = dir.join("syncflow.yaml");
    if globals_path.exists() {
        if let Some(file) = read_file(dir, &globals_path, env, diags) {
            if let Some(globals) = deserialize::<Globals>(&file, diags) {
                raw.globals = globals.value;
            }
            raw.globals_file = Some(file);
        }
    }
    for path in yaml_files(dir, "providers", diags) {
        if let Some(file) = read_file(dir, &path, env, diags) {
            if let Some(name) = file.node(&[Seg::Key("name".into())]).and_then(Node::as_str) {
                raw.provider_names.push(name.to_string());
            }
            if let Some(sourced) = deserialize::<ProviderConfig>(&file, diags) {
                raw.providers.push(sourced);
            }
        }
    }
    for path in yaml_files(dir, "pipelines", diags) {
        if let Some(file) = read_file(dir, &path, env, diags) {
            if let Some(sourced) = deserialize::<PipelineConfig>(&file, diags) {
                raw.pipelines.push(sourced);
            }
        }
    }
    for path in yaml_files(dir, "links", diags) {
        if let Some(file) = read_file(dir, &path, env, diags) {
            if let Some(name) = file.node(&[Seg::Key("name".into())]).and_then(Node::as_str) {
                raw.link_names.push(name.to_string());
            }
            if let Some(sourced) = deserialize::<LinkConfig>(&file, diags) {
                raw.links.push(sourced);
            }
        }
    }
    raw
}

/// `*.yaml` and `*.yml` directly inside `dir/sub`, sorted by name.
fn yaml_files(dir: &Path, sub: &str, diags: &mut Diagnostics) -> Vec<PathBuf> {
    let folder = dir.join(sub);
    let entries = match std::fs::read_dir(&folder) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Vec::new(),
        Err(e) => {
            diags.push(
                Path::new(sub),
                Pos::new(1, 1),
                format!("cannot read directory: {e}"),
            );
            return Vec::new();
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.is_file() && matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml"))
        })
        .collect();
    files.sort();
    files
}

fn read_file(
    dir: &Path,
    path: &Path,
    env: &dyn Env,
    diags: &mut Diagnostics,
) -> Option<Arc<SourceFile>> {
    let rel = path.strip_prefix(dir).unwrap_or(path).to_path_buf();
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(e) => {
            diags.push(&rel, Pos::new(1, 1), format!("cannot read file: {e}"));
            return None;
        }
    };
    // A repeated key is reported, and the file read on: the config is
    // refused either way, and its other errors are reported with it.
    let mut root = match yaml::parse_with_duplicates(&text) {
        Ok((root, duplicates)) => {
            for e in duplicates {
                diags.push(&rel, e.pos, e.message);
            }
            root
        }
        Err(e) => {
            diags.push(&rel, e.pos, format!("invalid YAML: {}", e.message));
            return None;
        }
    };
    let mut env_errors = Vec::new();
    root.interpolate(env, &mut env_errors);
    for (pos, message) in env_errors {
        diags.push(&rel, pos, message);
    }
    Some(Arc::new(SourceFile::new(rel, text, root)))
}

/// Deserializes a file's tree into `T`, reporting every unknown key and
/// every value of the wrong type: each is removed and deserialization
/// retried, so one mistake does not hide the next. A file with such
/// mistakes still comes back when the rest holds together, marked
/// incomplete, so the checks after deserializing report its other
/// mistakes too (the errors already reported keep the config from being
/// used). A required key missing, or removed this way, ends the file.
pub fn deserialize<T: DeserializeOwned>(
    file: &Arc<SourceFile>,
    diags: &mut Diagnostics,
) -> Option<Sourced<T>> {
    let mut value = file.root.to_value();
    // The keys taken out so far: a "missing field" for one of them is the
    // error already reported, not a second one.
    let mut removed: Vec<Vec<Seg>> = Vec::new();
    // The maps values of the wrong type were taken out of.
    let mut pruned: Vec<Vec<Seg>> = Vec::new();
    // Bounded: each round removes one key.
    for _ in 0..256 {
        let err = match serde_path_to_error::deserialize::<_, T>(value.clone()) {
            Ok(value) => {
                if !pruned.is_empty() {
                    let _ = file.pruned.set(pruned);
                }
                return Some(Sourced {
                    value,
                    file: file.clone(),
                    complete: removed.is_empty(),
                });
            }
            Err(err) => err,
        };
        let path = to_segs(err.path());
        let message = err.inner().to_string();
        if let Some(field) = quoted_after(&message, "unknown field `") {
            let candidates = expected_names(&message);
            let hint = did_you_mean(&field, candidates.iter().map(String::as_str));
            let key_path = with_key(&path, &field);
            diags.push(
                &file.rel,
                file.root.key_pos(&key_path),
                format!("unknown key \"{field}\"{hint}"),
            );
            if !remove_key(&mut value, &path, &field) {
                return None;
            }
            removed.push(key_path);
            continue;
        }
        // A key missing ends the file: taking out the map that lacks it
        // would have the checks after report what was taken out. Missing
        // because it was taken out above, it is reported already.
        if let Some(field) = quoted_after(&message, "missing field `") {
            if !removed.contains(&with_key(&path, &field)) {
                diags.push(&file.rel, file.root.value_pos(&path), message);
            }
            return None;
        }
        let message = if let Some(variant) = quoted_after(&message, "unknown variant `") {
            let candidates = expected_names(&message);
            let hint = did_you_mean(&variant, candidates.iter().map(String::as_str));
            format!(
                "unknown value \"{variant}\"{hint}; expected one of {}",
                candidates.join(", ")
            )
        } else {
            message
        };
        // Not at a `${VAR}` that failed: its own error stands there.
        file.error(diags, &path, message);
        // A bad value goes with its key; a list's bad element with the
        // list's key (taking the element out would shift the positions of
        // the ones after it). A bad file as a whole ends it.
        let key_at = path.iter().rposition(|seg| matches!(seg, Seg::Key(_)))?;
        let key_path = path[..=key_at].to_vec();
        let Some(Seg::Key(field)) = key_path.last() else {
            return None;
        };
        if !remove_key(&mut value, &key_path, field) {
            return None;
        }
        pruned.push(key_path[..key_path.len() - 1].to_vec());
        removed.push(key_path);
    }
    None
}

fn to_segs(path: &serde_path_to_error::Path) -> Vec<Seg> {
    use serde_path_to_error::Segment;
    path.iter()
        .filter_map(|seg| match seg {
            Segment::Seq { index } => Some(Seg::Index(*index)),
            Segment::Map { key } => Some(Seg::Key(key.clone())),
            Segment::Enum { variant } => Some(Seg::Key(variant.clone())),
            Segment::Unknown => None,
        })
        .collect()
}

/// The path of `field` inside the map at `path` (serde_path_to_error may or
/// may not have recorded the unknown key itself).
fn with_key(path: &[Seg], field: &str) -> Vec<Seg> {
    let mut p = path.to_vec();
    if p.last() != Some(&Seg::Key(field.to_string())) {
        p.push(Seg::Key(field.to_string()));
    }
    p
}

fn remove_key(value: &mut serde_yaml::Value, path: &[Seg], field: &str) -> bool {
    let parent = match path.last() {
        Some(Seg::Key(k)) if k == field => &path[..path.len() - 1],
        _ => path,
    };
    let mut v = value;
    for seg in parent {
        v = match (seg, v) {
            (Seg::Key(k), serde_yaml::Value::Mapping(m)) => match m.get_mut(k.as_str()) {
                Some(child) => child,
                None => return false,
            },
            (Seg::Index(i), serde_yaml::Value::Sequence(s)) => match s.get_mut(*i) {
                Some(child) => child,
                None => return false,
            },
            _ => return false,
        };
    }
    match v {
        serde_yaml::Value::Mapping(m) => m.remove(field).is_some(),
        _ => false,
    }
}

/// The text between `prefix` and the next backtick.
fn quoted_after(message: &str, prefix: &str) -> Option<String> {
    let start = message.find(prefix)? + prefix.len();
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

/// serde lists what it expected as `a`, `b` after "expected".
fn expected_names(message: &str) -> Vec<String> {
    let Some(at) = message.find("expected") else {
        return Vec::new();
    };
    message[at..]
        .split('`')
        .skip(1)
        .step_by(2)
        .map(str::to_string)
        .collect()
}

/// Node kind name for messages.
pub fn kind_name(node: &Node) -> &'static str {
    match node.kind {
        Kind::Scalar { .. } => "a scalar",
        Kind::Seq(_) => "a list",
        Kind::Map(_) => "a map",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::model::ProviderConfig;
    use std::collections::HashMap;

    fn file(text: &str) -> Arc<SourceFile> {
        let mut root = yaml::parse(text).unwrap();
        root.interpolate(&HashMap::new(), &mut Vec::new());
        Arc::new(SourceFile::new(
            "providers/p.yaml".into(),
            text.into(),
            root,
        ))
    }

    /// The errors as printed, in file order.
    fn errors(diags: Diagnostics) -> Vec<String> {
        diags
            .into_sorted()
            .iter()
            .map(ToString::to_string)
            .collect()
    }

    #[test]
    fn reports_every_unknown_key_with_a_suggestion() {
        let f = file(
            "name: p\nbase_url: http://x\nmax_inflight: 3\nobjects:\n  c:\n    create: { method: POST, path: /c, id_frm: $.id }\n",
        );
        let mut diags = Diagnostics::default();
        // What is left holds together: it comes back, incomplete.
        let typed = deserialize::<ProviderConfig>(&f, &mut diags).unwrap();
        assert!(!typed.complete);
        let out = errors(diags);
        assert_eq!(
            out,
            [
                "providers/p.yaml:3:1: error: unknown key \"max_inflight\" (did you mean \"max_in_flight\"?)",
                "providers/p.yaml:6:39: error: unknown key \"id_frm\" (did you mean \"id_from\"?)",
            ]
        );
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let f = file("name: p\nbase_url: http://x\ntimeout: 10\nobjects: {}\n");
        let mut diags = Diagnostics::default();
        let typed = deserialize::<ProviderConfig>(&f, &mut diags).unwrap();
        assert!(!typed.complete);
        let d = diags.iter().next().unwrap();
        assert_eq!((d.line, d.col), (3, 10));
        assert!(d.message.contains("needs a unit"), "{}", d.message);
    }

    #[test]
    fn one_mistake_does_not_hide_the_next() {
        // Two values of the wrong type and an unknown key, at three levels.
        let f = file(
            "name: p\nbase_url: http://x\ntimeout: 10\nmax_in_flight: many\nobjects:\n  c:\n    create: { method: POST, path: /c, id_frm: $.id }\n",
        );
        let mut diags = Diagnostics::default();
        let typed = deserialize::<ProviderConfig>(&f, &mut diags).unwrap();
        assert!(!typed.complete);
        let out = errors(diags);
        assert_eq!(out.len(), 3, "{out:?}");
        assert!(out[0].starts_with("providers/p.yaml:3:10: "), "{out:?}");
        assert!(out[1].starts_with("providers/p.yaml:4:16: "), "{out:?}");
        assert!(
            out[2].contains(":7:39: error: unknown key \"id_frm\""),
            "{out:?}"
        );
    }

    #[test]
    fn a_lists_bad_element_takes_the_list_out_and_the_rest_is_read() {
        let f = file(
            "name: p\nbase_url: http://x\nretry: { retry_on: [500, abc, 503] }\nmax_inflight: 3\nobjects: {}\n",
        );
        let mut diags = Diagnostics::default();
        let typed = deserialize::<ProviderConfig>(&f, &mut diags).unwrap();
        assert!(!typed.complete);
        let out = errors(diags);
        assert_eq!(out.len(), 2, "{out:?}");
        assert!(out[0].starts_with("providers/p.yaml:3:26: "), "{out:?}");
        assert!(
            out[1].contains(":4:1: error: unknown key \"max_inflight\""),
            "{out:?}"
        );
    }

    #[test]
    fn a_required_key_of_the_wrong_type_is_one_error_and_ends_the_file() {
        let f = file("name: p\nbase_url: [x]\nobjects: {}\n");
        let mut diags = Diagnostics::default();
        assert!(deserialize::<ProviderConfig>(&f, &mut diags).is_none());
        let out = errors(diags);
        assert_eq!(out.len(), 1, "{out:?}");
        assert!(out[0].starts_with("providers/p.yaml:2:11: "), "{out:?}");
    }

    #[test]
    fn a_value_whose_variable_is_not_set_is_not_also_of_the_wrong_type() {
        // `file` interpolates with no variables set: `${NOPE}` fails there
        // (its error is the loader's to report, not this one's).
        let f = file("name: p\nbase_url: http://x\nmax_in_flight: ${NOPE}\nobjects: {}\n");
        let mut diags = Diagnostics::default();
        let typed = deserialize::<ProviderConfig>(&f, &mut diags).unwrap();
        assert!(!typed.complete);
        assert!(diags.is_empty(), "{:?}", errors(diags));
    }

    #[test]
    fn a_file_without_mistakes_is_complete() {
        let f = file("name: p\nbase_url: http://x\nobjects: {}\n");
        let mut diags = Diagnostics::default();
        assert!(
            deserialize::<ProviderConfig>(&f, &mut diags)
                .unwrap()
                .complete
        );
        assert!(diags.is_empty());
    }

    #[test]
    fn missing_fields_point_at_the_map() {
        let f = file("name: p\nobjects: {}\n");
        let mut diags = Diagnostics::default();
        assert!(deserialize::<ProviderConfig>(&f, &mut diags).is_none());
        let d = diags.iter().next().unwrap();
        assert_eq!((d.line, d.col), (1, 1));
        assert!(
            d.message.contains("missing field `base_url`"),
            "{}",
            d.message
        );
    }
}
