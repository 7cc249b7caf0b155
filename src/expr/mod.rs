//! Rhai scripts: `when`, rule `if` and mapping `expr`.
//!
//! One sandboxed engine compiles every script once at load. Rhai has no file
//! or network access unless a host registers it; on top of that `eval` is
//! disabled, printing is silenced and every resource is bounded, so a
//! runaway script fails its record, never the process.

mod value;

use std::sync::Arc;

use rhai::{Dynamic, Engine, EvalAltResult, Position, Scope};

pub use value::{from_json, to_json};

/// Operations one script may run for one record; a loop that never ends
/// stops here (well under a millisecond of CPU).
pub const MAX_OPERATIONS: u64 = 50_000;

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

/// A compiled script and the text it came from (for error messages).
#[derive(Clone)]
pub struct Script {
    ast: Arc<rhai::AST>,
}

impl std::fmt::Debug for Script {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Script")
    }
}

impl ScriptEngine {
    pub fn new() -> Self {
        let mut engine = Engine::new();
        engine
            .set_max_operations(MAX_OPERATIONS)
            .set_max_call_levels(32)
            .set_max_expr_depths(64, 32)
            .set_max_string_size(64 * 1024)
            .set_max_array_size(10_000)
            .set_max_map_size(10_000)
            .set_max_variables(256)
            .set_max_functions(64)
            .set_max_modules(0)
            // Undeclared variables are compile errors: `recrod.email` is a
            // typo to report at validate time, not a `()` at run time.
            .set_strict_variables(true)
            .disable_symbol("eval");
        engine.on_print(|_| {});
        engine.on_debug(|_, _, _| {});
        ScriptEngine {
            engine: Arc::new(engine),
        }
    }

    pub fn compile(&self, source: &str) -> Result<Script, CompileError> {
        let mut scope = Scope::new();
        scope.push_constant(RECORD, Dynamic::UNIT);
        scope.push_constant(EVENT, Dynamic::UNIT);
        match self.engine.compile_with_scope(&scope, source) {
            Ok(ast) => Ok(Script { ast: Arc::new(ast) }),
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
    pub fn eval(&self, script: &Script, vars: &mut Vars) -> Result<Dynamic, ScriptError> {
        self.engine
            .eval_ast_with_scope::<Dynamic>(&mut vars.scope, &script.ast)
            .map_err(|e| ScriptError {
                message: describe(&e),
            })
    }

    /// Runs a condition; anything but a bool is an error naming its type.
    pub fn eval_bool(&self, script: &Script, vars: &mut Vars) -> Result<bool, ScriptError> {
        let value = self.eval(script, vars)?;
        value.as_bool().map_err(|type_name| ScriptError {
            message: format!("condition must return true or false, got {type_name}"),
        })
    }
}

/// The scope of one record's scripts, built once and shared by `when`, the
/// rules and the mapping expressions.
pub struct Vars {
    scope: Scope<'static>,
}

impl Vars {
    pub fn new(record: Dynamic, event: Dynamic) -> Self {
        let mut scope = Scope::new();
        scope.push_constant(RECORD, record);
        scope.push_constant(EVENT, event);
        Vars { scope }
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

    fn vars(record: serde_json::Value) -> Vars {
        Vars::new(from_json(&record), from_json(&json!({"op": "c"})))
    }

    #[test]
    fn conditions_see_record_and_event() {
        let e = ScriptEngine::new();
        let s = e
            .compile(r#"event.op == "c" && record.company != ()"#)
            .unwrap();
        assert!(
            e.eval_bool(&s, &mut vars(json!({"company": "acme"})))
                .unwrap()
        );
        assert!(!e.eval_bool(&s, &mut vars(json!({}))).unwrap());
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

    #[test]
    fn a_script_that_loops_forever_fails_its_record() {
        let e = ScriptEngine::new();
        let s = e.compile("loop { }").unwrap();
        let err = e.eval(&s, &mut vars(json!({}))).unwrap_err();
        assert!(err.message.contains("operations"), "{}", err.message);
        // The engine is still usable afterwards.
        let ok = e.compile("1 + 1").unwrap();
        assert_eq!(e.eval(&ok, &mut vars(json!({}))).unwrap().as_int(), Ok(2));
    }

    #[test]
    fn unbounded_strings_are_stopped() {
        let e = ScriptEngine::new();
        let s = e.compile(r#"let s = "x"; loop { s += s; }"#).unwrap();
        assert!(e.eval(&s, &mut vars(json!({}))).is_err());
    }

    #[test]
    fn non_bool_conditions_are_errors() {
        let e = ScriptEngine::new();
        let s = e.compile(r#""yes""#).unwrap();
        let err = e.eval_bool(&s, &mut vars(json!({}))).unwrap_err();
        assert!(err.message.contains("true or false"), "{}", err.message);
    }
}
