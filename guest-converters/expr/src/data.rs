//! Expressions in a converter's configuration and results: parsed from a
//! field (errors name it) and turned into the values ThingsBoard takes. The
//! one place the CAN and BLE converters meet [`tbgw_data`].

use crate::{Expr, Val};
use tbgw_data::{ConfigError, Value};

/// A parsed expression of the field at `path` (`None` for empty text), its
/// variables checked against `allowed` (all allowed when `None`).
pub fn expression(path: &str, text: &str, allowed: Option<&[&str]>) -> Result<Option<Expr>, ConfigError> {
    if text.trim().is_empty() {
        return Ok(None);
    }
    let expr = Expr::parse(text).map_err(|e| ConfigError::at(path, format!("`{text}`: {e}")))?;
    if let Some(allowed) = allowed
        && let Some(n) = expr.names().iter().find(|n| !allowed.contains(&n.as_str()))
    {
        return Err(ConfigError::at(
            path,
            format!("`{text}` reads `{n}`; an expression here reads {}", allowed.join(" and ")),
        ));
    }
    Ok(Some(expr))
}

/// An expression's result as ThingsBoard takes it; `bytes_name` is the
/// variable that holds the raw bytes, for the hint when a result is bytes.
pub fn to_value(v: Val, bytes_name: &str) -> Result<Value, String> {
    match v {
        Val::Bool(b) => Ok(Value::Bool(b)),
        Val::Int(i) => Ok(Value::Int(i)),
        Val::Float(x) if x.is_finite() => Ok(Value::Float(x)),
        Val::Float(x) => Err(format!("{x} is not a number ThingsBoard stores")),
        Val::Str(s) => Ok(Value::Text(s)),
        Val::Bytes(b) => Err(format!(
            "bytes {} are not a value; decode them (e.g. `{bytes_name}[0] << 8 | {bytes_name}[1]`)",
            tbgw_data::hex(&b)
        )),
        Val::None => Err("None is not a value".to_owned()),
    }
}
