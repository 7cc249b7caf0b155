//! Templates with `{name}` placeholders (endpoint paths, poll paths,
//! subjects): split once at load into text and placeholders.

/// A piece of a template: text as written, or one of the placeholders given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Piece<P> {
    Literal(String),
    Placeholder(P),
}

/// Splits `text` (a `what`, for errors: "path", "subject") at its `{name}`
/// placeholders, each one of `placeholders`. Fails on an unknown or
/// unterminated placeholder.
pub fn split<P: Clone>(
    what: &str,
    text: &str,
    placeholders: &[(&str, P)],
) -> Result<Vec<Piece<P>>, String> {
    let mut pieces = Vec::new();
    let mut rest = text;
    while let Some(open) = rest.find('{') {
        if open > 0 {
            pieces.push(Piece::Literal(rest[..open].to_string()));
        }
        let close = rest[open..]
            .find('}')
            .ok_or_else(|| format!("unterminated placeholder in {what} \"{text}\""))?;
        let name = &rest[open + 1..open + close];
        let Some((_, placeholder)) = placeholders.iter().find(|(n, _)| *n == name) else {
            let names: Vec<&str> = placeholders.iter().map(|(n, _)| *n).collect();
            let listed: Vec<String> = names.iter().map(|n| format!("{{{n}}}")).collect();
            let listed = match listed.split_last() {
                Some((last, [])) => last.clone(),
                Some((last, init)) => format!("{} and {last}", init.join(", ")),
                None => String::new(),
            };
            return Err(format!(
                "unknown placeholder \"{{{name}}}\" in {what} \"{text}\"{}; placeholders are {listed}",
                super::suggest::did_you_mean(name, names.iter().copied())
            ));
        };
        pieces.push(Piece::Placeholder(placeholder.clone()));
        rest = &rest[open + close + 1..];
    }
    if !rest.is_empty() {
        pieces.push(Piece::Literal(rest.to_string()));
    }
    Ok(pieces)
}
