//! A YAML document as a tree that remembers where every node sits.
//!
//! serde deserializes the typed config from this tree (via
//! `serde_yaml::Value`); the tree itself is the source map that turns a
//! serde error path, or a semantic check, into `line:col`.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::{Marker, TScalarStyle};

use super::diagnostics::Pos;
use super::env::{Env, interpolate};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Style {
    Plain,
    Quoted,
    /// `|` or `>`: the text starts on the line after the indicator.
    Block,
}

#[derive(Debug, Clone)]
pub enum Kind {
    /// `env_failed`: a `${VAR}` in it could not be replaced (already
    /// reported), so checks of its value would only repeat that error.
    Scalar {
        value: String,
        style: Style,
        env_failed: bool,
    },
    Seq(Vec<Node>),
    Map(Vec<(Node, Node)>),
}

#[derive(Debug, Clone)]
pub struct Node {
    pub pos: Pos,
    pub kind: Kind,
}

/// One step of a path into the tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Seg {
    Key(String),
    Index(usize),
}

impl From<&str> for Seg {
    fn from(s: &str) -> Self {
        Seg::Key(s.to_string())
    }
}

impl From<&String> for Seg {
    fn from(s: &String) -> Self {
        Seg::Key(s.clone())
    }
}

impl From<usize> for Seg {
    fn from(i: usize) -> Self {
        Seg::Index(i)
    }
}

/// `path!["rules", 0, "then"]`: a path into a YAML tree.
#[macro_export]
macro_rules! path {
    ($($seg:expr),* $(,)?) => {
        [$($crate::config::yaml::Seg::from($seg)),*]
    };
}

/// A YAML syntax error.
#[derive(Debug)]
pub struct SyntaxError {
    pub pos: Pos,
    pub message: String,
}

/// Parses one YAML document. An empty file is an empty map.
pub fn parse(text: &str) -> Result<Node, SyntaxError> {
    parse_with_duplicates(text).map(|(root, _)| root)
}

/// [`parse`], and each key repeated in one map (the tree keeps both). YAML
/// parsers keep only one of the two, so a whole line of config would be
/// dropped without a word: the config loader reports each as an error.
pub fn parse_with_duplicates(text: &str) -> Result<(Node, Vec<SyntaxError>), SyntaxError> {
    let mut builder = Builder::default();
    let mut parser = Parser::new_from_str(text);
    parser.load(&mut builder, false).map_err(|e| SyntaxError {
        pos: pos(e.marker()),
        message: e.info().to_string(),
    })?;
    let root = builder.root.unwrap_or(Node {
        pos: Pos::new(1, 1),
        kind: Kind::Map(Vec::new()),
    });
    Ok((root, builder.duplicates))
}

fn pos(m: &Marker) -> Pos {
    // yaml-rust2 columns are 0-based; diagnostics are 1-based like editors.
    Pos::new(m.line(), m.col() + 1)
}

#[derive(Default)]
struct Builder {
    stack: Vec<(Node, Option<Node>)>,
    anchors: HashMap<usize, Node>,
    anchor_of_open: Vec<usize>,
    root: Option<Node>,
    duplicates: Vec<SyntaxError>,
}

impl Builder {
    fn insert(&mut self, node: Node) {
        match self.stack.last_mut() {
            None => {
                if self.root.is_none() {
                    self.root = Some(node);
                }
            }
            Some((parent, pending_key)) => match &mut parent.kind {
                Kind::Seq(items) => items.push(node),
                Kind::Map(entries) => match pending_key.take() {
                    None => *pending_key = Some(node),
                    Some(key) => {
                        let first = key
                            .as_str()
                            .and_then(|k| entries.iter().find(|(e, _)| e.as_str() == Some(k)));
                        if let (Some(k), Some((first, _))) = (key.as_str(), first) {
                            self.duplicates.push(SyntaxError {
                                pos: key.pos,
                                message: format!(
                                    "duplicate key \"{k}\" (first at line {})",
                                    first.pos.line
                                ),
                            });
                        }
                        entries.push((key, node));
                    }
                },
                Kind::Scalar { .. } => unreachable!("scalars have no children"),
            },
        }
    }

    fn remember(&mut self, anchor: usize, node: &Node) {
        if anchor > 0 {
            self.anchors.insert(anchor, node.clone());
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        let at = pos(&mark);
        match ev {
            Event::Scalar(value, style, anchor, _tag) => {
                let style = match style {
                    TScalarStyle::Plain => Style::Plain,
                    TScalarStyle::SingleQuoted | TScalarStyle::DoubleQuoted => Style::Quoted,
                    TScalarStyle::Literal | TScalarStyle::Folded => Style::Block,
                };
                let node = Node {
                    pos: at,
                    kind: Kind::Scalar {
                        value,
                        style,
                        env_failed: false,
                    },
                };
                self.remember(anchor, &node);
                self.insert(node);
            }
            Event::SequenceStart(anchor, _) => {
                self.anchor_of_open.push(anchor);
                self.stack.push((
                    Node {
                        pos: at,
                        kind: Kind::Seq(Vec::new()),
                    },
                    None,
                ));
            }
            Event::MappingStart(anchor, _) => {
                self.anchor_of_open.push(anchor);
                self.stack.push((
                    Node {
                        pos: at,
                        kind: Kind::Map(Vec::new()),
                    },
                    None,
                ));
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (mut node, _) = self.stack.pop().expect("balanced events");
                // A block collection's start event is marked after its first
                // key or item; the first child is where it visibly begins.
                let first = match &node.kind {
                    Kind::Map(entries) => entries.first().map(|(k, _)| k.pos),
                    Kind::Seq(items) => items.first().map(|n| n.pos),
                    Kind::Scalar { .. } => None,
                };
                if let Some(first) = first.filter(|f| *f < node.pos) {
                    node.pos = first;
                }
                let anchor = self.anchor_of_open.pop().unwrap_or(0);
                self.remember(anchor, &node);
                self.insert(node);
            }
            Event::Alias(anchor) => {
                let node = self.anchors.get(&anchor).cloned().unwrap_or(Node {
                    pos: at,
                    kind: Kind::Scalar {
                        value: String::new(),
                        style: Style::Plain,
                        env_failed: false,
                    },
                });
                self.insert(node);
            }
            Event::Nothing
            | Event::StreamStart
            | Event::StreamEnd
            | Event::DocumentStart
            | Event::DocumentEnd => {}
        }
    }
}

impl Node {
    /// The node at `path`, if there is one.
    pub fn at(&self, path: &[Seg]) -> Option<&Node> {
        let mut node = self;
        for seg in path {
            node = match (&node.kind, seg) {
                (Kind::Map(entries), Seg::Key(k)) => entries
                    .iter()
                    .find(|(key, _)| key.as_str() == Some(k))
                    .map(|(_, v)| v)?,
                (Kind::Seq(items), Seg::Index(i)) => items.get(*i)?,
                _ => return None,
            };
        }
        Some(node)
    }

    /// Where the key of the last path step is written (`key:`), falling back
    /// to the deepest node that exists.
    pub fn key_pos(&self, path: &[Seg]) -> Pos {
        if let Some((Seg::Key(k), parent)) = path.split_last() {
            if let Some(Node {
                kind: Kind::Map(entries),
                ..
            }) = self.at(parent)
            {
                if let Some((key, _)) = entries.iter().find(|(key, _)| key.as_str() == Some(k)) {
                    return key.pos;
                }
            }
        }
        self.value_pos(path)
    }

    /// Where the value at `path` is written, or the deepest existing parent.
    pub fn value_pos(&self, path: &[Seg]) -> Pos {
        let mut node = self;
        for seg in path {
            match node.at(std::slice::from_ref(seg)) {
                Some(child) => node = child,
                None => break,
            }
        }
        node.pos
    }

    pub fn env_failed(&self) -> bool {
        matches!(
            self.kind,
            Kind::Scalar {
                env_failed: true,
                ..
            }
        )
    }

    pub fn as_str(&self) -> Option<&str> {
        match &self.kind {
            Kind::Scalar { value, .. } => Some(value),
            _ => None,
        }
    }

    /// Maps a 1-based `line:col` inside this scalar's text (as a Rhai or
    /// JSONPath parser reports it) to the position in the YAML file.
    pub fn text_pos(&self, line: usize, col: usize) -> Pos {
        let (line, col) = (line.max(1), col.max(1));
        match &self.kind {
            // A block scalar's node position is its first text character; its
            // lines share that indentation.
            Kind::Scalar {
                style: Style::Block,
                ..
            } => Pos::new(self.pos.line + line - 1, self.pos.col + col - 1),
            Kind::Scalar { style, .. } if line == 1 => {
                let quote = usize::from(*style == Style::Quoted);
                Pos::new(self.pos.line, self.pos.col + quote + col - 1)
            }
            _ => Pos::new(self.pos.line + line - 1, col),
        }
    }

    /// Replaces `${VAR}` in every scalar value (not keys); each failure is
    /// reported at the scalar that holds it.
    pub fn interpolate(&mut self, env: &dyn Env, errors: &mut Vec<(Pos, String)>) {
        match &mut self.kind {
            Kind::Scalar {
                value, env_failed, ..
            } => match interpolate(value, env) {
                Ok(Some(replaced)) => *value = replaced,
                Ok(None) => {}
                Err(e) => {
                    *env_failed = true;
                    let text_col = value[..e.offset].chars().count() + 1;
                    let at = self.text_pos(1, text_col);
                    errors.push((at, e.message));
                }
            },
            Kind::Seq(items) => items.iter_mut().for_each(|n| n.interpolate(env, errors)),
            Kind::Map(entries) => entries
                .iter_mut()
                .for_each(|(_, v)| v.interpolate(env, errors)),
        }
    }

    /// The YAML 1.2 core-schema value of this tree, for serde.
    pub fn to_value(&self) -> serde_yaml::Value {
        use serde_yaml::Value;
        match &self.kind {
            Kind::Scalar { value, style, .. } => match style {
                Style::Plain => resolve_plain(value),
                _ => Value::String(value.clone()),
            },
            Kind::Seq(items) => Value::Sequence(items.iter().map(Node::to_value).collect()),
            Kind::Map(entries) => Value::Mapping(
                entries
                    .iter()
                    .map(|(k, v)| (k.to_value(), v.to_value()))
                    .collect(),
            ),
        }
    }
}

fn resolve_plain(s: &str) -> serde_yaml::Value {
    use serde_yaml::Value;
    match s {
        "" | "~" | "null" | "Null" | "NULL" => Value::Null,
        "true" | "True" | "TRUE" => Value::Bool(true),
        "false" | "False" | "FALSE" => Value::Bool(false),
        _ => {
            let numeric =
                s.starts_with(|c: char| c.is_ascii_digit() || c == '-' || c == '+' || c == '.');
            if numeric {
                if let Ok(i) = s.parse::<i64>() {
                    return Value::Number(i.into());
                }
                if let Ok(u) = s.parse::<u64>() {
                    return Value::Number(u.into());
                }
                if let Ok(f) = s.parse::<f64>() {
                    if f.is_finite() {
                        return Value::Number(f.into());
                    }
                }
            }
            Value::String(s.to_string())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DOC: &str = "name: x\nrules:\n  - if: 'a == 1'\n    then: create\nscript: |\n  let a = 1;\n  a +\nn: 42\n";

    #[test]
    fn positions_of_keys_and_values() {
        let root = parse(DOC).unwrap();
        let then = [
            Seg::Key("rules".into()),
            Seg::Index(0),
            Seg::Key("then".into()),
        ];
        assert_eq!(root.at(&then).unwrap().as_str(), Some("create"));
        assert_eq!(root.key_pos(&then), Pos::new(4, 5));
        assert_eq!(root.value_pos(&then), Pos::new(4, 11));
        // Inside the quoted `if`, column 3 of the script is the `=`.
        let cond = root.at(&[
            Seg::Key("rules".into()),
            Seg::Index(0),
            Seg::Key("if".into()),
        ]);
        assert_eq!(cond.unwrap().text_pos(1, 3), Pos::new(3, 12));
        // Line 2 col 3 of the block script is the `+`.
        let script = root.at(&[Seg::Key("script".into())]).unwrap();
        assert_eq!(script.text_pos(2, 3), Pos::new(7, 5));
    }

    #[test]
    fn plain_scalars_get_core_schema_types() {
        let v = parse("a: 42\nb: '42'\nc: true\nd: ~\ne: 1.5\nf: $.x")
            .unwrap()
            .to_value();
        assert_eq!(v["a"], serde_yaml::Value::Number(42.into()));
        assert_eq!(v["b"], serde_yaml::Value::String("42".into()));
        assert_eq!(v["c"], serde_yaml::Value::Bool(true));
        assert_eq!(v["d"], serde_yaml::Value::Null);
        assert_eq!(v["e"], serde_yaml::Value::Number(1.5.into()));
        assert_eq!(v["f"], serde_yaml::Value::String("$.x".into()));
    }

    #[test]
    fn syntax_errors_have_a_position() {
        let err = parse("a: [1, 2\nb: 3\n").unwrap_err();
        assert!(err.pos.line >= 1, "{err:?}");
        assert!(!err.message.is_empty());
    }

    #[test]
    fn duplicate_keys_are_each_an_error() {
        let (_, errs) = parse_with_duplicates("a: 1\nb:\n  c: 1\n  c: 2\na: 3\n").unwrap();
        let found: Vec<_> = errs
            .iter()
            .map(|e| (e.pos.line, e.pos.col, e.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (4, 3, "duplicate key \"c\" (first at line 3)"),
                (5, 1, "duplicate key \"a\" (first at line 1)"),
            ]
        );
        // The same key in two maps is no duplicate.
        assert!(
            parse_with_duplicates("a: {x: 1}\nb: {x: 2}\n")
                .unwrap()
                .1
                .is_empty()
        );
    }

    #[test]
    fn anchors_and_aliases_are_expanded() {
        let v = parse("a: &x {n: 1}\nb: *x\n").unwrap().to_value();
        assert_eq!(v["b"]["n"], serde_yaml::Value::Number(1.into()));
    }
}
