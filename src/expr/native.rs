//! A native evaluator for the common shape of scripts, beside Rhai.
//!
//! Most `when`, rule and mapping scripts are a comparison, a property read,
//! an `if` choosing between two literals or a `to_upper()`. Rhai runs each
//! of them in a few thousand instructions (a fresh runtime state per call,
//! the record and event copied into a scope first); callgrind on the
//! throughput benchmark put that at a fifth of syncflow's instructions. At
//! load, a script whose compiled Rhai AST uses only the constructs below is
//! also translated into a small tree that reads the JSON record in place.
//!
//! The tree never decides anything Rhai would decide differently: for
//! every case it is unsure about (a type mismatch, an overflow, a value
//! too large, anything that would be a Rhai error) it gives up on the
//! record ([`eval`] returns `None`) and Rhai evaluates the script, with
//! its exact result or error message. The differential tests below run
//! both on the same records and scripts.

use std::borrow::Cow;
use std::fmt::Write;

use rhai::{AST, ASTFlags, Expr, Stmt, Token};
use serde_json::Value;

use super::Event;
use crate::doc::{Doc, member};

/// Rhai's `set_max_string_size`: a longer string is a Rhai error.
const MAX_STRING: usize = 64 * 1024;
/// A script larger than this is left to Rhai (its operation limit then
/// applies as written).
const MAX_NODES: usize = 256;

/// A translated script.
#[derive(Debug)]
pub enum Node {
    Unit,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Record,
    Event,
    Prop(Box<Node>, String),
    Call(Method, Vec<Node>),
    Not(Box<Node>),
    Cmp(Cmp, Box<(Node, Node)>),
    Add(Box<(Node, Node)>),
    And(Vec<Node>),
    Or(Vec<Node>),
    /// `a ?? b`
    Coalesce(Vec<Node>),
    If(Box<(Node, Node, Node)>),
    /// `` `${a} and ${b}` ``
    Interpolated(Vec<Node>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// The string and container methods a script may call natively; the
/// receiver is the first argument.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    ToUpper,
    ToLower,
    Len,
    IsEmpty,
    Contains,
    StartsWith,
    EndsWith,
}

impl Method {
    fn from_name(name: &str, args: usize) -> Option<Method> {
        let m = match name {
            "to_upper" => Method::ToUpper,
            "to_lower" => Method::ToLower,
            "len" => Method::Len,
            "is_empty" => Method::IsEmpty,
            "contains" => Method::Contains,
            "starts_with" => Method::StartsWith,
            "ends_with" => Method::EndsWith,
            _ => return None,
        };
        let want = match m {
            Method::Contains | Method::StartsWith | Method::EndsWith => 2,
            _ => 1,
        };
        (args == want).then_some(m)
    }
}

/// A value during native evaluation, borrowing from the record.
#[derive(Debug, Clone, PartialEq)]
pub enum Val<'a> {
    Unit,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(Cow<'a, str>),
    /// A JSON array or object of the record.
    Json(&'a Doc<'a>),
    Event,
    Headers,
}

impl Val<'_> {
    /// The JSON a mapping field gets; `()` leaves the field out. The error
    /// is the one the Rhai path gives for the same value.
    pub fn into_json(self) -> Result<Option<Value>, String> {
        Ok(Some(match self {
            Val::Unit => return Ok(None),
            Val::Bool(b) => Value::Bool(b),
            Val::Int(i) => Value::from(i),
            Val::Float(f) => serde_json::Number::from_f64(f)
                .map(Value::Number)
                .ok_or_else(|| format!("cannot turn the script's float {f} into JSON"))?,
            Val::Str(s) => Value::String(s.into_owned()),
            // Never returned by `eval`.
            Val::Json(_) | Val::Event | Val::Headers => {
                return Err("unreachable: a container as a native result".into());
            }
        }))
    }
}

/// Translates a compiled script, or `None` when it uses anything the native
/// evaluator does not cover.
pub fn translate(ast: &AST) -> Option<Node> {
    if ast.has_functions() {
        return None;
    }
    let mut budget = MAX_NODES;
    block(ast.statements(), &mut budget)
}

fn block(stmts: &[Stmt], budget: &mut usize) -> Option<Node> {
    match stmts {
        [] => Some(Node::Unit),
        [one] => stmt(one, budget),
        _ => None,
    }
}

fn stmt(s: &Stmt, budget: &mut usize) -> Option<Node> {
    match s {
        Stmt::Noop(_) => Some(Node::Unit),
        Stmt::Expr(e) => expr(e, budget),
        Stmt::FnCall(f, _) => call(f, budget),
        Stmt::Block(b) => block(b.statements(), budget),
        Stmt::If(flow, _) => {
            let cond = expr(&flow.expr, budget)?;
            let then = block(flow.body.statements(), budget)?;
            let other = block(flow.branch.statements(), budget)?;
            Some(Node::If(Box::new((cond, then, other))))
        }
        _ => None,
    }
}

fn expr(e: &Expr, budget: &mut usize) -> Option<Node> {
    *budget = budget.checked_sub(1)?;
    match e {
        Expr::Unit(_) => Some(Node::Unit),
        Expr::BoolConstant(b, _) => Some(Node::Bool(*b)),
        Expr::IntegerConstant(i, _) => Some(Node::Int(*i)),
        Expr::FloatConstant(f, _) => Some(Node::Float(**f)),
        Expr::StringConstant(s, _) => Some(Node::Str(s.to_string())),
        Expr::DynamicConstant(d, _) => constant(d),
        Expr::Variable(v, _, _) if v.2.is_empty() => match v.1.as_str() {
            super::RECORD => Some(Node::Record),
            super::EVENT => Some(Node::Event),
            _ => None,
        },
        Expr::Stmt(b) => block(b.statements(), budget),
        Expr::FnCall(f, _) => call(f, budget),
        Expr::Dot(chain, flags, _) if *flags == ASTFlags::empty() => {
            let base = expr(&chain.lhs, budget)?;
            accessors(base, &chain.rhs, budget)
        }
        Expr::And(items, _) => list(items, budget).map(Node::And),
        Expr::Or(items, _) => list(items, budget).map(Node::Or),
        Expr::Coalesce(items, _) => list(items, budget).map(Node::Coalesce),
        Expr::InterpolatedString(parts, _) => list(parts, budget).map(Node::Interpolated),
        _ => None,
    }
}

fn list(items: &[Expr], budget: &mut usize) -> Option<Vec<Node>> {
    items.iter().map(|e| expr(e, budget)).collect()
}

fn constant(d: &rhai::Dynamic) -> Option<Node> {
    if d.is_unit() {
        Some(Node::Unit)
    } else if let Ok(b) = d.as_bool() {
        Some(Node::Bool(b))
    } else if let Ok(i) = d.as_int() {
        Some(Node::Int(i))
    } else if let Ok(f) = d.as_float() {
        Some(Node::Float(f))
    } else if let Ok(s) = d.as_immutable_string_ref() {
        Some(Node::Str(s.to_string()))
    } else {
        None
    }
}

/// `base.a.b.m()`: Rhai nests the chain to the right.
fn accessors(base: Node, rhs: &Expr, budget: &mut usize) -> Option<Node> {
    *budget = budget.checked_sub(1)?;
    match rhs {
        Expr::Property(p, _) => Some(Node::Prop(Box::new(base), p.2.to_string())),
        Expr::MethodCall(f, _) => {
            if f.is_qualified() || f.capture_parent_scope {
                return None;
            }
            let method = Method::from_name(&f.name, f.args.len() + 1)?;
            let mut args = vec![base];
            args.extend(list(&f.args, budget)?);
            Some(Node::Call(method, args))
        }
        Expr::Dot(chain, flags, _) if *flags == ASTFlags::empty() => {
            let inner = accessors(base, &chain.lhs, budget)?;
            accessors(inner, &chain.rhs, budget)
        }
        _ => None,
    }
}

fn call(f: &rhai::FnCallExpr, budget: &mut usize) -> Option<Node> {
    if f.is_qualified() || f.capture_parent_scope {
        return None;
    }
    let mut args = list(&f.args, budget)?;
    match (&f.op_token, args.len()) {
        (Some(Token::Bang), 1) => Some(Node::Not(Box::new(args.pop()?))),
        (Some(op), 2) => {
            let rhs = args.pop()?;
            let lhs = args.pop()?;
            let pair = Box::new((lhs, rhs));
            let cmp = match op {
                Token::EqualsTo => Cmp::Eq,
                Token::NotEqualsTo => Cmp::Ne,
                Token::LessThan => Cmp::Lt,
                Token::LessThanEqualsTo => Cmp::Le,
                Token::GreaterThan => Cmp::Gt,
                Token::GreaterThanEqualsTo => Cmp::Ge,
                Token::Plus => return Some(Node::Add(pair)),
                _ => return None,
            };
            Some(Node::Cmp(cmp, pair))
        }
        (Some(_), _) => None,
        (None, n) => Some(Node::Call(Method::from_name(&f.name, n)?, args)),
    }
}

/// Evaluates a translated script on one record, or `None` to leave the
/// record to Rhai.
pub fn eval<'a>(node: &'a Node, record: &'a Doc<'a>, event: &Event<'a>) -> Option<Val<'a>> {
    match value(node, record, event)? {
        // A whole array or object is Rhai's to return: its copy of the
        // record turned integers above i64::MAX into floats, and a
        // mapping must not depend on which evaluator ran.
        Val::Json(_) | Val::Event | Val::Headers => None,
        v => Some(v),
    }
}

fn value<'a>(node: &'a Node, record: &'a Doc<'a>, event: &Event<'a>) -> Option<Val<'a>> {
    let v = |n: &'a Node| value(n, record, event);
    Some(match node {
        Node::Unit => Val::Unit,
        Node::Bool(b) => Val::Bool(*b),
        Node::Int(i) => Val::Int(*i),
        Node::Float(f) => Val::Float(*f),
        Node::Str(s) => Val::Str(Cow::Borrowed(s)),
        Node::Record => json(record),
        Node::Event => Val::Event,
        Node::Prop(base, name) => match v(base)? {
            Val::Json(Doc::Object(fields)) => member(fields, name).map_or(Val::Unit, json),
            Val::Event => event.property(name),
            Val::Headers => event.header(name),
            // A property of anything else is a Rhai error (or a getter).
            _ => return None,
        },
        Node::Call(method, args) => {
            let receiver = v(&args[0])?;
            let arg = match args.get(1) {
                Some(a) => Some(v(a)?),
                None => None,
            };
            call_method(*method, receiver, arg)?
        }
        Node::Not(x) => match v(x)? {
            Val::Bool(b) => Val::Bool(!b),
            _ => return None,
        },
        Node::Cmp(op, pair) => Val::Bool(compare(*op, &v(&pair.0)?, &v(&pair.1)?)?),
        Node::Add(pair) => add(v(&pair.0)?, v(&pair.1)?)?,
        // `&&` stops at the first false, `||` at the first true.
        Node::And(items) => Val::Bool(short_circuit(items, false, v)?),
        Node::Or(items) => Val::Bool(short_circuit(items, true, v)?),
        Node::Coalesce(items) => {
            let mut last = Val::Unit;
            for item in items {
                last = v(item)?;
                if last != Val::Unit {
                    break;
                }
            }
            last
        }
        Node::If(parts) => match v(&parts.0)? {
            Val::Bool(true) => v(&parts.1)?,
            Val::Bool(false) => v(&parts.2)?,
            _ => return None,
        },
        Node::Interpolated(parts) => {
            let mut out = String::new();
            for part in parts {
                match v(part)? {
                    Val::Str(s) => out.push_str(&s),
                    Val::Int(i) => {
                        let _ = write!(out, "{i}");
                    }
                    Val::Bool(b) => out.push_str(if b { "true" } else { "false" }),
                    Val::Unit => {}
                    // Float and container formatting is Rhai's own.
                    _ => return None,
                }
            }
            string(Cow::Owned(out))?
        }
    })
}

/// Evaluates bool operands until one is `decisive` (which is then the
/// answer); a non-bool operand reached is Rhai's error to report.
fn short_circuit<'a>(
    items: &'a [Node],
    decisive: bool,
    mut v: impl FnMut(&'a Node) -> Option<Val<'a>>,
) -> Option<bool> {
    for item in items {
        match v(item)? {
            Val::Bool(b) if b == decisive => return Some(decisive),
            Val::Bool(_) => {}
            _ => return None,
        }
    }
    Some(!decisive)
}

/// A JSON value as Rhai sees it after `from_doc`.
pub(super) fn json<'a>(value: &'a Doc<'a>) -> Val<'a> {
    match value {
        Doc::Null => Val::Unit,
        Doc::Bool(b) => Val::Bool(*b),
        Doc::Number(n) => match n.as_i64() {
            Some(i) => Val::Int(i),
            None => Val::Float(n.as_f64().unwrap_or(f64::NAN)),
        },
        Doc::String(s) => Val::Str(Cow::Borrowed(s)),
        Doc::Array(_) | Doc::Object(_) => Val::Json(value),
    }
}

fn string(s: Cow<'_, str>) -> Option<Val<'_>> {
    (s.len() <= MAX_STRING).then_some(Val::Str(s))
}

fn call_method<'a>(method: Method, receiver: Val<'a>, arg: Option<Val<'a>>) -> Option<Val<'a>> {
    match (method, receiver, arg) {
        // Unchanged strings are not copied; only ASCII can be judged so
        // cheaply (`ǅ` is neither upper nor lower case, yet has an upper).
        (Method::ToUpper, Val::Str(s), None) => {
            if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_lowercase()) {
                string(s) // Rhai checks the size of every result
            } else {
                string(Cow::Owned(s.to_uppercase()))
            }
        }
        (Method::ToLower, Val::Str(s), None) => {
            if s.bytes().all(|b| b.is_ascii() && !b.is_ascii_uppercase()) {
                string(s)
            } else {
                string(Cow::Owned(s.to_lowercase()))
            }
        }
        // On arrays and maps these are Rhai's: it first checks the whole
        // container (nested items, strings) against its size limits.
        (Method::Len, Val::Str(s), None) => Some(Val::Int(s.chars().count() as i64)),
        (Method::IsEmpty, Val::Str(s), None) => Some(Val::Bool(s.is_empty())),
        (Method::Contains, Val::Str(s), Some(Val::Str(p))) => Some(Val::Bool(s.contains(&*p))),
        (Method::StartsWith, Val::Str(s), Some(Val::Str(p))) => Some(Val::Bool(s.starts_with(&*p))),
        (Method::EndsWith, Val::Str(s), Some(Val::Str(p))) => Some(Val::Bool(s.ends_with(&*p))),
        _ => None,
    }
}

/// Rhai's built-in comparisons; `None` where Rhai would look further (a
/// registered function, or an error).
fn compare(op: Cmp, a: &Val<'_>, b: &Val<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    let order: Option<Ordering> = match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Float(x), Val::Float(y)) => x.partial_cmp(y),
        (Val::Int(x), Val::Float(y)) => (*x as f64).partial_cmp(y),
        (Val::Float(x), Val::Int(y)) => x.partial_cmp(&(*y as f64)),
        (Val::Str(x), Val::Str(y)) => Some(x.as_ref().cmp(y.as_ref())),
        (Val::Bool(x), Val::Bool(y)) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(x.cmp(y)),
        (Val::Unit, Val::Unit) if matches!(op, Cmp::Eq | Cmp::Ne) => Some(Ordering::Equal),
        (Val::Json(_) | Val::Event | Val::Headers, _)
        | (_, Val::Json(_) | Val::Event | Val::Headers) => return None,
        // Two different types: `==` is false and `!=` true; anything else
        // is an error for Rhai to report.
        _ => {
            return match op {
                Cmp::Eq => Some(false),
                Cmp::Ne => Some(true),
                _ => None,
            };
        }
    };
    let order = order?; // NaN: Rhai's answer, not ours
    Some(match op {
        Cmp::Eq => order.is_eq(),
        Cmp::Ne => order.is_ne(),
        Cmp::Lt => order.is_lt(),
        Cmp::Le => order.is_le(),
        Cmp::Gt => order.is_gt(),
        Cmp::Ge => order.is_ge(),
    })
}

fn add<'a>(a: Val<'a>, b: Val<'a>) -> Option<Val<'a>> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => x.checked_add(y).map(Val::Int),
        (Val::Float(x), Val::Float(y)) => finite(x + y),
        (Val::Int(x), Val::Float(y)) => finite(x as f64 + y),
        (Val::Float(x), Val::Int(y)) => finite(x + y as f64),
        (Val::Str(x), Val::Str(y)) => {
            let mut s = x.into_owned();
            s.push_str(&y);
            string(Cow::Owned(s))
        }
        _ => None,
    }
}

fn finite(f: f64) -> Option<Val<'static>> {
    f.is_finite().then_some(Val::Float(f))
}

#[cfg(test)]
mod tests;
