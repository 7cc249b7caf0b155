//! `${VAR}` and `${VAR:-default}` interpolation.
//!
//! Interpolation happens on parsed YAML scalars, never on the raw text, so a
//! variable's value can't change the document's structure and every error
//! still points at the scalar that used the variable. `$${` is a literal `${`
//! (Rhai's own template strings need it).

/// Where the environment comes from; a trait so tests need not touch the
/// process environment.
pub trait Env {
    fn var(&self, name: &str) -> Option<String>;
}

/// The process environment.
pub struct ProcessEnv;

impl Env for ProcessEnv {
    fn var(&self, name: &str) -> Option<String> {
        std::env::var(name).ok()
    }
}

impl Env for std::collections::HashMap<String, String> {
    fn var(&self, name: &str) -> Option<String> {
        self.get(name).cloned()
    }
}

/// Why a string could not be interpolated; `offset` is the byte offset of the
/// `${` that failed, so the caller can point at it.
#[derive(Debug, PartialEq, Eq)]
pub struct InterpolationError {
    pub offset: usize,
    pub message: String,
}

/// Replaces every `${VAR}` / `${VAR:-default}` in `input`. Returns `None`
/// when the string holds no placeholder, so callers can skip re-typing it.
pub fn interpolate(input: &str, env: &dyn Env) -> Result<Option<String>, InterpolationError> {
    if !input.contains("${") {
        return Ok(None);
    }
    let mut out = String::with_capacity(input.len());
    let mut rest = input;
    let mut offset = 0;
    while let Some(start) = rest.find("${") {
        // `$${` escapes a literal `${`.
        if start > 0 && rest.as_bytes()[start - 1] == b'$' {
            out.push_str(&rest[..start - 1]);
            out.push_str("${");
            offset += start + 2;
            rest = &rest[start + 2..];
            continue;
        }
        out.push_str(&rest[..start]);
        let body_start = start + 2;
        let Some(len) = rest[body_start..].find('}') else {
            return Err(InterpolationError {
                offset: offset + start,
                message: "unterminated \"${\": expected ${VAR} or ${VAR:-default}".into(),
            });
        };
        let body = &rest[body_start..body_start + len];
        let (name, default) = match body.split_once(":-") {
            Some((name, default)) => (name, Some(default)),
            None => (body, None),
        };
        if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(InterpolationError {
                offset: offset + start,
                message: format!(
                    "invalid variable name \"{name}\" in \"${{{body}}}\" (write $${{ for a literal \"${{\", as in a Rhai template string)"
                ),
            });
        }
        match (env.var(name), default) {
            (Some(value), _) => out.push_str(&value),
            (None, Some(default)) => out.push_str(default),
            (None, None) => {
                return Err(InterpolationError {
                    offset: offset + start,
                    message: format!(
                        "environment variable {name} is not set (set it, or give a default: ${{{name}:-value}})"
                    ),
                });
            }
        }
        let consumed = body_start + len + 1;
        offset += consumed;
        rest = &rest[consumed..];
    }
    out.push_str(rest);
    Ok(Some(out))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env() -> HashMap<String, String> {
        HashMap::from([("TOKEN".to_string(), "secret".to_string())])
    }

    #[test]
    fn replaces_set_variables_and_defaults() {
        let e = env();
        assert_eq!(interpolate("plain", &e), Ok(None));
        assert_eq!(
            interpolate("Bearer ${TOKEN}", &e),
            Ok(Some("Bearer secret".into()))
        );
        assert_eq!(
            interpolate("${URL:-http://x:1}/a", &e),
            Ok(Some("http://x:1/a".into()))
        );
        assert_eq!(interpolate("${EMPTY:-}", &e), Ok(Some(String::new())));
        assert_eq!(interpolate("$${TOKEN}", &e), Ok(Some("${TOKEN}".into())));
    }

    #[test]
    fn unset_variable_names_it() {
        let err = interpolate("a ${MISSING_VAR} b", &env()).unwrap_err();
        assert_eq!(err.offset, 2);
        assert!(
            err.message.contains("MISSING_VAR is not set"),
            "{}",
            err.message
        );
    }

    #[test]
    fn malformed_placeholders_are_errors() {
        assert!(interpolate("${TOKEN", &env()).is_err());
        assert!(interpolate("${}", &env()).is_err());
        assert!(interpolate("${A B}", &env()).is_err());
    }
}
