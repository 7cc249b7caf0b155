//! The script engine's sandbox: only the packages scripts need, every
//! resource bounded, and every function a script calls checked at compile
//! time (so `validate` refuses it with its position, rather than the record
//! failing at run time).
//!
//! Left out of Rhai's standard packages: the language core package
//! (`sleep`, which blocks a worker thread and counts as one operation,
//! `exit`, `parse_json`, function metadata), the time package (`timestamp`,
//! `elapsed`: a script sees its message's time as `event.timestamp`), BLOBs
//! and the debugger. Rhai itself has no file or network access; an unknown
//! function (`open_file`, `http_get`) is a compile error here.

use std::collections::HashSet;
use std::sync::LazyLock;

use rhai::packages::{
    ArithmeticPackage, BasicArrayPackage, BasicFnPackage, BasicIteratorPackage, BasicMapPackage,
    BasicMathPackage, BasicStringPackage, BitFieldPackage, LogicPackage, MoreStringPackage,
    Package,
};
use rhai::{ASTNode, Engine, Expr, Stmt};

use super::CompileError;

/// Operations one script may run for one record; a loop that never ends
/// stops here (well under a millisecond of CPU).
pub const MAX_OPERATIONS: u64 = 50_000;

/// Functions scripts might reach for that the sandbox leaves out, with why.
const WITHHELD: [(&str, &str); 6] = [
    ("sleep", "a script must not block the pipeline"),
    (
        "timestamp",
        "the clock is not available to scripts; use event.timestamp",
    ),
    (
        "elapsed",
        "the clock is not available to scripts; use event.timestamp",
    ),
    ("exit", "a script cannot stop the process"),
    ("eval", "scripts cannot run code built at run time"),
    (
        "parse_json",
        "records are JSON already; read their fields directly",
    ),
];

/// Built into the language rather than a package.
const LANGUAGE: [&str; 7] = [
    "type_of",
    "Fn",
    "call",
    "curry",
    "is_def_var",
    "is_def_fn",
    "is_shared",
];

/// The engine scripts run in.
pub fn engine() -> Engine {
    let mut engine = Engine::new_raw();
    for package in packages() {
        engine.register_global_module(package);
    }
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
    engine
}

fn packages() -> Vec<rhai::Shared<rhai::Module>> {
    vec![
        ArithmeticPackage::new().as_shared_module(),
        LogicPackage::new().as_shared_module(),
        BitFieldPackage::new().as_shared_module(),
        BasicStringPackage::new().as_shared_module(),
        MoreStringPackage::new().as_shared_module(),
        BasicIteratorPackage::new().as_shared_module(),
        BasicMathPackage::new().as_shared_module(),
        BasicArrayPackage::new().as_shared_module(),
        BasicMapPackage::new().as_shared_module(),
        BasicFnPackage::new().as_shared_module(),
    ]
}

/// Every function name the sandbox's packages define.
static KNOWN: LazyLock<HashSet<String>> = LazyLock::new(|| {
    engine()
        .gen_fn_signatures(true)
        .iter()
        .filter_map(|signature| signature.split('(').next())
        .map(str::to_string)
        .chain(LANGUAGE.iter().map(|s| s.to_string()))
        .collect()
});

/// The first call in `ast` to a function the sandbox does not have.
pub fn check_calls(ast: &rhai::AST) -> Result<(), CompileError> {
    let defined: HashSet<&str> = ast.iter_functions().map(|f| f.name).collect();
    let mut unknown = None;
    ast.walk(&mut |path: &[ASTNode]| {
        let call = match path.last() {
            Some(ASTNode::Expr(Expr::FnCall(call, pos) | Expr::MethodCall(call, pos))) => {
                Some((call, *pos))
            }
            Some(ASTNode::Stmt(Stmt::FnCall(call, pos))) => Some((call, *pos)),
            _ => None,
        };
        if let Some((call, pos)) = call {
            let name = call.name.as_str();
            let operator = !name.starts_with(|c: char| c.is_alphabetic() || c == '_');
            if !operator && !defined.contains(name) && !KNOWN.contains(name) {
                unknown = Some((name.to_string(), pos));
                return false;
            }
        }
        true
    });
    let Some((name, pos)) = unknown else {
        return Ok(());
    };
    let message = match WITHHELD.iter().find(|(n, _)| *n == name) {
        Some((_, why)) => format!("function \"{name}\" is not available: {why}"),
        None => format!(
            "unknown function \"{name}\"{}: scripts have Rhai's string, math, array and map functions, and no file, network or clock access",
            crate::config::suggest::did_you_mean(&name, KNOWN.iter().map(String::as_str))
        ),
    };
    Err(CompileError {
        line: pos.line().unwrap_or(1),
        col: pos.position().unwrap_or(1),
        message,
    })
}
