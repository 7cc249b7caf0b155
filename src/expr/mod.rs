//! Rhai scripts: `when`, rule `if` and mapping `expr`.
//!
//! One sandboxed engine compiles every script once at load. Rhai has no file
//! or network access unless a host registers it; on top of that `eval` is
//! disabled, printing is silenced and every resource is bounded, so a
//! runaway script fails its record, never the process.

mod native;
mod sandbox;
mod value;

use std::borrow::Cow;
use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope};
use serde_json::Value;

use crate::doc::Doc;

pub use value::{from_doc, to_json};

pub use sandbox::MAX_OPERATIONS;

/// The variables every script sees.
pub const RECORD: &str = "record";
pub const EVENT: &str = "event";

/// The sandboxed engine shared by every compiled script.
#[derive(Clone)]
pub struct ScriptEngine {
    engine: Arc<Engine>,
}

impl std::fmt::Debug for ScriptEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ScriptEngine")
    }
}

impl Default for ScriptEngine {
    fn default() -> Self {
        Self::new()
    }
}

/// A syntax or compile error, at a 1-based line:col inside the script.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompileError {
    pub line: usize,
    pub col: usize,
    pub message: String,
}

/// A script that failed on one record.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct ScriptError {
    pub message: String,
}

/// A compiled script: Rhai's AST and, when the script is simple enough,
/// its native translation (see `native`).
#[derive(Clone)]
pub struct Script {
    ast: Arc<rhai::AST>,
    native: Option<Arc<native::Node>>,
    /// As written.
    text: Arc<str>,
}

impl Script {
    /// The script as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    /// Whether records are evaluated natively (Rhai only when unsure).
    pub fn is_native(&self) -> bool {
        self.native.is_some()
    }
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

impl ScriptEngine {
    pub fn new() -> Self {
        ScriptEngine {
            engine: Arc::new(sandbox::engine()),
        }
    }

    pub fn compile(&self, source: &str) -> Result<Script, CompileError> {
        // Declared (strict variables) but not as constants: the optimizer
        // folds a constant's value into the script, and `record == ()`
        // would compile to `true`. At run time they are constants.
        let mut scope = Scope::new();
        scope.push(RECORD, Dynamic::UNIT);
        scope.push(EVENT, Dynamic::UNIT);
        match self.engine.compile_with_scope(&scope, source) {
            Ok(ast) => {
                sandbox::check_calls(&ast)?;
                Ok(Script {
                    native: native::translate(&ast).map(Arc::new),
                    ast: Arc::new(ast),
                    text: source.into(),
                })
            }
            Err(err) => {
                let (line, col) = line_col(err.position());
                let message = match err.err_type() {
                    rhai::ParseErrorType::UnexpectedEOF => {
                        "the script ends too early (a value or a closing bracket is missing)"
                            .to_string()
                    }
                    other => other.to_string(),
                };
                Err(CompileError { line, col, message })
            }
        }
    }

    /// Runs `script` with `record` and `event` in scope.
    pub fn eval<'a>(
        &self,
        script: &'a Script,
        vars: &mut Vars<'a>,
    ) -> Result<ScriptValue<'a>, ScriptError> {
        if let Some(node) = &script.native
            && let Some(value) = native::eval(node, vars.record, &vars.event)
        {
            return Ok(ScriptValue::Native(value));
        }
        self.eval_rhai(script, vars).map(ScriptValue::Rhai)
    }

    /// Rhai's answer, whether or not the script has a native translation.
    fn eval_rhai(&self, script: &Script, vars: &mut Vars<'_>) -> Result<Dynamic, ScriptError> {
        self.engine
            .eval_ast_with_scope::<Dynamic>(vars.scope(), &script.ast)
            .map_err(|e| ScriptError {
                message: describe(&e),
            })
    }

    /// Runs a condition; anything but a bool is an error naming its type.
    pub fn eval_bool(&self, script: &Script, vars: &mut Vars<'_>) -> Result<bool, ScriptError> {
        if let Some(node) = &script.native
            && let Some(native::Val::Bool(b)) = native::eval(node, vars.record, &vars.event)
        {
            return Ok(b);
        }
        let value = self.eval_rhai(script, vars)?;
        value.as_bool().map_err(|type_name| ScriptError {
            message: format!("condition must return true or false, got {type_name}"),
        })
    }
}

/// A script's result, from whichever evaluator produced it.
#[derive(Debug)]
pub enum ScriptValue<'a> {
    Native(native::Val<'a>),
    Rhai(Dynamic),
}

impl ScriptValue<'_> {
    /// `()` becomes `None`: a mapping expression returning `()` leaves its
    /// field out.
    pub fn into_json(self) -> Result<Option<Value>, String> {
        match self {
            ScriptValue::Native(v) => v.into_json(),
            ScriptValue::Rhai(d) => to_json(d),
        }
    }
}

/// What scripts see as `event`: the message's metadata besides its record.
#[derive(Debug, Clone, Copy, Default)]
pub struct Event<'a> {
    /// The value at the pipeline's `op` path.
    pub op: Option<&'a Doc<'a>>,
    pub key: &'a str,
    pub subject: &'a str,
    pub seq: u64,
    /// Publish time, milliseconds since the Unix epoch.
    pub timestamp_ms: Option<i64>,
    pub headers: &'a [(String, String)],
    /// System A's key of an inbound two-way change's record, when linked.
    pub linked_key: Option<&'a str>,
}

impl<'a> Event<'a> {
    fn property(&self, name: &str) -> native::Val<'a> {
        use native::Val;
        match name {
            "op" => self.op.map_or(Val::Unit, native::json),
            "key" => Val::Str(Cow::Borrowed(self.key)),
            "subject" => Val::Str(Cow::Borrowed(self.subject)),
            "seq" => Val::Int(self.seq as i64),
            "timestamp" => self.timestamp_ms.map_or(Val::Unit, Val::Int),
            "headers" => Val::Headers,
            "linked_key" => self
                .linked_key
                .map_or(Val::Unit, |k| Val::Str(Cow::Borrowed(k))),
            _ => Val::Unit,
        }
    }

    /// A header's value; of repeated names the last, as in the Rhai map.
    fn header(&self, name: &str) -> native::Val<'a> {
        self.headers
            .iter()
            .rev()
            .find(|(k, _)| k == name)
            .map_or(native::Val::Unit, |(_, v)| {
                native::Val::Str(Cow::Borrowed(v.as_str()))
            })
    }

    /// The Rhai map scripts get as `event`.
    fn to_dynamic(self) -> Dynamic {
        let string = |s: &str| Dynamic::from(rhai::ImmutableString::from(s));
        let mut event = rhai::Map::new();
        event.insert("op".into(), self.op.map(from_doc).unwrap_or(Dynamic::UNIT));
        event.insert("key".into(), string(self.key));
        event.insert("subject".into(), string(self.subject));
        event.insert("seq".into(), Dynamic::from_int(self.seq as i64));
        event.insert(
            "timestamp".into(),
            self.timestamp_ms
                .map(Dynamic::from_int)
                .unwrap_or(Dynamic::UNIT),
        );
        let headers: rhai::Map = self
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().into(), string(v)))
            .collect();
        event.insert("headers".into(), Dynamic::from_map(headers));
        event.insert(
            "linked_key".into(),
            self.linked_key.map(string).unwrap_or(Dynamic::UNIT),
        );
        Dynamic::from_map(event)
    }
}

/// What one record's scripts see. The Rhai scope (a copy of the record and
/// event as Rhai values) is built on the first script Rhai has to run, and
/// then shared by `when`, the rules and the mapping expressions.
pub struct Vars<'a> {
    record: &'a Doc<'a>,
    event: Event<'a>,
    scope: Option<Scope<'static>>,
}

impl<'a> Vars<'a> {
    pub fn new(record: &'a Doc<'a>, event: Event<'a>) -> Self {
        Vars {
            record,
            event,
            scope: None,
        }
    }

    fn scope(&mut self) -> &mut Scope<'static> {
        let (record, event) = (self.record, self.event);
        self.scope.get_or_insert_with(|| {
            let mut scope = Scope::new();
            scope.push_constant(RECORD, from_doc(record));
            scope.push_constant(EVENT, event.to_dynamic());
            scope
        })
    }
}

fn line_col(pos: Position) -> (usize, usize) {
    (pos.line().unwrap_or(1), pos.position().unwrap_or(1))
}

fn describe(err: &EvalAltResult) -> String {
    let pos = err.position();
    let what = match err {
        EvalAltResult::ErrorTooManyOperations(_) => {
            format!("script exceeded its limit of {MAX_OPERATIONS} operations")
        }
        other => other.to_string(),
    };
    if pos.is_none() {
        what
    } else {
        let (line, col) = line_col(pos);
        // Rhai appends its own "(line x, position y)"; keep ours only.
        let what = what
            .rsplit_once(" (line ")
            .map(|(head, _)| head.to_string())
            .unwrap_or(what);
        format!("{what} (script line {line}, column {col})")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn vars<'a>(record: &'a Doc<'a>) -> Vars<'a> {
        Vars::new(record, Event::default())
    }

    #[test]
    fn conditions_see_record_and_event() {
        let e = ScriptEngine::new();
        let s = e
            .compile(r#"event.op == "c" && record.company != ()"#)
            .unwrap();
        let op = Doc::from(json!("c"));
        let event = Event {
            op: Some(&op),
            ..Event::default()
        };
        let with_company = Doc::from(json!({"company": "acme"}));
        let without = Doc::from(json!({}));
        assert!(
            e.eval_bool(&s, &mut Vars::new(&with_company, event))
                .unwrap()
        );
        assert!(!e.eval_bool(&s, &mut Vars::new(&without, event)).unwrap());
    }

    #[test]
    fn whole_record_and_event_are_not_folded_at_compile_time() {
        let e = ScriptEngine::new();
        let s = e.compile("record == () || event == ()").unwrap();
        assert!(!e.eval_bool(&s, &mut vars(&Doc::from(json!({})))).unwrap());
        let s = e.compile("type_of(record)").unwrap();
        let kind = e
            .eval(&s, &mut vars(&Doc::from(json!({}))))
            .unwrap()
            .into_json();
        assert_eq!(kind, Ok(Some(json!("map"))));
    }

    #[test]
    fn scripts_cannot_assign_to_record_or_event() {
        let e = ScriptEngine::new();
        let s = e.compile("record = 1; true").unwrap();
        assert!(e.eval_bool(&s, &mut vars(&Doc::from(json!({})))).is_err());
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let err = ScriptEngine::new().compile("record.a ==").unwrap_err();
        assert_eq!((err.line, err.col), (1, 12));
        assert!(!err.message.is_empty());
    }

    #[test]
    fn undeclared_variables_are_compile_errors() {
        let err = ScriptEngine::new()
            .compile("recrod.email != ()")
            .unwrap_err();
        assert!(err.message.contains("recrod"), "{}", err.message);
    }

    #[test]
    fn eval_is_disabled() {
        assert!(ScriptEngine::new().compile(r#"eval("1")"#).is_err());
    }

    /// What a script must never do (block, read the clock, reach files or
    /// the network, stop the process) is refused at compile time, at the
    /// call's position: `validate` reports it, no record ever runs it.
    #[test]
    fn blocking_clock_file_and_network_functions_are_refused_at_compile_time() {
        let e = ScriptEngine::new();
        for (script, col, says) in [
            (
                "sleep(5); true",
                1,
                "not available: a script must not block",
            ),
            ("record.a == 1 && sleep(5.0) == ()", 18, "must not block"),
            ("timestamp() > 0", 1, "the clock is not available"),
            (
                "let t = timestamp(); t.elapsed > 1.0",
                9,
                "the clock is not available",
            ),
            ("exit()", 1, "cannot stop the process"),
            (
                r#"open_file("/etc/passwd")"#,
                1,
                "unknown function \"open_file\"",
            ),
            (
                r#"http_get("http://x")"#,
                1,
                "no file, network or clock access",
            ),
            (r#"record.a.to_uper()"#, 10, "did you mean \"to_upper\"?"),
        ] {
            let err = e
                .compile(script)
                .err()
                .unwrap_or_else(|| panic!("{script} compiled"));
            assert_eq!((err.line, err.col), (1, col), "{script}: {}", err.message);
            assert!(err.message.contains(says), "{script}: {}", err.message);
        }
        // What scripts are for still compiles, functions they define included.
        for script in [
            "record.a.to_upper() + `${record.b}`",
            "fn twice(x) { x * 2 } twice(record.n ?? 1) > 2",
            "record.tags.contains(\"x\") && record.name.len() < 10",
            "type_of(record.a) == \"string\" && sqrt(4.0) == 2.0",
            "[1, 2, 3].map(|x| x + 1).len() == 3",
        ] {
            assert!(e.compile(script).is_ok(), "{script}");
        }
    }

    #[test]
    fn a_script_that_loops_forever_fails_its_record() {
        let e = ScriptEngine::new();
        let s = e.compile("loop { }").unwrap();
        let empty = Doc::from(json!({}));
        let err = e.eval(&s, &mut vars(&empty)).unwrap_err();
        assert!(err.message.contains("operations"), "{}", err.message);
        // The engine is still usable afterwards.
        let ok = e.compile("1 + 1").unwrap();
        let two = e.eval(&ok, &mut vars(&empty)).unwrap().into_json();
        assert_eq!(two, Ok(Some(json!(2))));
    }

    #[test]
    fn unbounded_strings_are_stopped() {
        let e = ScriptEngine::new();
        let s = e.compile(r#"let s = "x"; loop { s += s; }"#).unwrap();
        assert!(e.eval(&s, &mut vars(&Doc::from(json!({})))).is_err());
    }

    #[test]
    fn non_bool_conditions_are_errors() {
        let e = ScriptEngine::new();
        let s = e.compile(r#""yes""#).unwrap();
        let err = e
            .eval_bool(&s, &mut vars(&Doc::from(json!({}))))
            .unwrap_err();
        assert!(err.message.contains("true or false"), "{}", err.message);
    }
}
