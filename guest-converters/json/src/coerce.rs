//! The `type` of a key: how a message value becomes a ThingsBoard value.
//!
//! Follows the ThingsBoard gateway's `convert_data_type`, minus its accidents:
//! a value that does not convert is dropped with a reason instead of being
//! sent as a string under a numeric key, `"false"` is false, and `json` gives
//! JSON text rather than a Python printout.

use crate::Value;
use crate::json::Json;
use std::fmt;

/// Why a value does not convert.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CoerceError {
    /// The value is JSON `null`.
    Null,
    /// `shown` (the value, quoted and clipped) is not of the wanted type.
    Not { shown: String, wanted: &'static str },
}

impl fmt::Display for CoerceError {
    /// Reads after the name of what was converted: "`${temp}` is null",
    /// "`${temp}` is `\"x\"`, not a double".
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CoerceError::Null => f.write_str("is null"),
            CoerceError::Not { shown, wanted } => write!(f, "is {shown}, not {wanted}"),
        }
    }
}

/// A configured value type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DataType {
    /// `string`, `str`
    String,
    /// `int`, `integer`, `long`: floats are truncated toward zero, as the
    /// Python gateway does (`int(float(x))`).
    Integer,
    /// `double`, `float`
    Double,
    /// `bool`, `boolean`: true/false, 1/0, and the strings y/yes/t/true/on/1
    /// and n/no/f/false/off/0 in any case.
    Boolean,
    /// `json`, `raw`: the value as JSON, whatever its type.
    Json,
}

/// The accepted type names, for error messages.
pub const TYPE_NAMES: &str = "string, int, integer, long, double, float, bool, boolean, json, raw";

impl DataType {
    /// Parse a configured type name (case-insensitive).
    pub fn parse(name: &str) -> Option<DataType> {
        Some(match name.to_ascii_lowercase().as_str() {
            "string" | "str" => DataType::String,
            "int" | "integer" | "long" => DataType::Integer,
            "double" | "float" => DataType::Double,
            "bool" | "boolean" => DataType::Boolean,
            "json" | "raw" => DataType::Json,
            _ => return None,
        })
    }

    fn name(self) -> &'static str {
        match self {
            DataType::String => "a string",
            DataType::Integer => "an integer",
            DataType::Double => "a double",
            DataType::Boolean => "a boolean",
            DataType::Json => "valid JSON",
        }
    }
}

/// Convert a value taken from the message as it is (`"value": "${temp}"`).
pub fn from_json(v: &Json, t: DataType) -> Result<Value, CoerceError> {
    let fail = || Err(CoerceError::Not { shown: shown(v), wanted: t.name() });
    match (t, v) {
        (_, Json::Null) => Err(CoerceError::Null),
        (DataType::Json, v) => Ok(Value::Json(v.to_json())),
        (DataType::String, Json::Str(s)) => Ok(Value::Text(s.to_string())),
        (DataType::String, v) => Ok(Value::Text(v.to_json())),
        (_, Json::Str(s)) => from_text(s, t).or_else(|_| fail()),
        (DataType::Integer, Json::Int(i)) => Ok(Value::Int(*i)),
        (DataType::Integer, Json::Float(f)) => truncate(*f).map(Value::Int).ok_or(()).or_else(|_| fail()),
        (DataType::Integer, Json::Bool(b)) => Ok(Value::Int(i64::from(*b))),
        (DataType::Double, Json::Int(i)) => Ok(Value::Float(*i as f64)),
        (DataType::Double, Json::UInt(u)) => Ok(Value::Float(*u as f64)),
        (DataType::Double, Json::Float(f)) => Ok(Value::Float(*f)),
        (DataType::Double, Json::Bool(b)) => Ok(Value::Float(if *b { 1.0 } else { 0.0 })),
        (DataType::Boolean, Json::Bool(b)) => Ok(Value::Bool(*b)),
        (DataType::Boolean, Json::Int(0)) => Ok(Value::Bool(false)),
        (DataType::Boolean, Json::Int(1)) => Ok(Value::Bool(true)),
        _ => fail(),
    }
}

/// Convert text: a constant, or a template rendered to text.
pub fn from_text(s: &str, t: DataType) -> Result<Value, CoerceError> {
    let fail = || Err(CoerceError::Not { shown: format!("`{}`", clip(s)), wanted: t.name() });
    match t {
        DataType::String => Ok(Value::Text(s.to_owned())),
        DataType::Integer => {
            let s = s.trim();
            if let Ok(i) = s.parse::<i64>() {
                return Ok(Value::Int(i));
            }
            match s.parse::<f64>().ok().and_then(truncate) {
                Some(i) => Ok(Value::Int(i)),
                None => fail(),
            }
        }
        DataType::Double => match s.trim().parse::<f64>() {
            Ok(f) if f.is_finite() => Ok(Value::Float(f)),
            _ => fail(),
        },
        DataType::Boolean => match parse_bool(s) {
            Some(b) => Ok(Value::Bool(b)),
            None => fail(),
        },
        DataType::Json => match Json::parse(s.as_bytes()) {
            Ok(j) => Ok(Value::Json(j.to_json())),
            Err(_) => Err(CoerceError::Not { shown: format!("`{}`", clip(s)), wanted: "valid JSON" }),
        },
    }
}

/// The value with its own JSON type, for the `"*"` (all keys) rule; `None`
/// for null, which ThingsBoard cannot store.
pub fn natural(v: &Json) -> Option<Value> {
    Some(match v {
        Json::Null => return None,
        Json::Bool(b) => Value::Bool(*b),
        Json::Int(i) => Value::Int(*i),
        Json::Float(f) => Value::Float(*f),
        Json::Str(s) => Value::Text(s.to_string()),
        Json::UInt(_) | Json::Array(_) | Json::Object(_) => Value::Json(v.to_json()),
    })
}

/// Truncate toward zero when the float fits an `i64`.
fn truncate(f: f64) -> Option<i64> {
    // i64::MIN is exactly representable; i64::MAX is not (it rounds up to 2^63).
    (-9_223_372_036_854_775_808.0..9_223_372_036_854_775_808.0).contains(&f).then_some(f as i64)
}

fn parse_bool(s: &str) -> Option<bool> {
    let s = s.trim();
    const TRUE: [&str; 6] = ["y", "yes", "t", "true", "on", "1"];
    const FALSE: [&str; 6] = ["n", "no", "f", "false", "off", "0"];
    if TRUE.iter().any(|t| t.eq_ignore_ascii_case(s)) {
        Some(true)
    } else if FALSE.iter().any(|f| f.eq_ignore_ascii_case(s)) {
        Some(false)
    } else {
        None
    }
}

/// A value as shown in an error message: its JSON text, clipped.
fn shown(v: &Json) -> String {
    format!("`{}`", clip(&v.to_json()))
}

fn clip(s: &str) -> String {
    const MAX: usize = 40;
    if s.len() <= MAX {
        return s.to_owned();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(text: &str) -> Json<'_> {
        Json::parse(text.as_bytes()).unwrap()
    }

    #[test]
    fn type_names() {
        assert_eq!(DataType::parse("Integer"), Some(DataType::Integer));
        assert_eq!(DataType::parse("raw"), Some(DataType::Json));
        assert_eq!(DataType::parse("strng"), None);
    }

    #[test]
    fn integers_truncate_like_python() {
        assert_eq!(from_json(&j("12.7"), DataType::Integer), Ok(Value::Int(12)));
        assert_eq!(from_json(&j("-12.7"), DataType::Integer), Ok(Value::Int(-12)));
        assert_eq!(from_json(&j("\"12.7\""), DataType::Integer), Ok(Value::Int(12)));
        assert_eq!(from_json(&j("\" 42 \""), DataType::Integer), Ok(Value::Int(42)));
        assert_eq!(from_json(&j("true"), DataType::Integer), Ok(Value::Int(1)));
        assert_eq!(from_json(&j("9223372036854775807"), DataType::Integer), Ok(Value::Int(i64::MAX)));
        assert!(from_json(&j("1e300"), DataType::Integer).is_err());
        assert!(from_json(&j("18446744073709551615"), DataType::Integer).is_err());
        assert_eq!(
            from_json(&j("\"abc\""), DataType::Integer).unwrap_err().to_string(),
            "is `\"abc\"`, not an integer"
        );
    }

    #[test]
    fn doubles_refuse_non_finite_text() {
        assert_eq!(from_json(&j("\"21.5\""), DataType::Double), Ok(Value::Float(21.5)));
        assert_eq!(from_json(&j("3"), DataType::Double), Ok(Value::Float(3.0)));
        assert!(from_text("NaN", DataType::Double).is_err());
        assert!(from_text("inf", DataType::Double).is_err());
    }

    #[test]
    fn booleans_read_words_and_bits() {
        assert_eq!(from_json(&j("\"false\""), DataType::Boolean), Ok(Value::Bool(false)));
        assert_eq!(from_json(&j("\"ON\""), DataType::Boolean), Ok(Value::Bool(true)));
        assert_eq!(from_json(&j("0"), DataType::Boolean), Ok(Value::Bool(false)));
        assert!(from_json(&j("2"), DataType::Boolean).is_err());
        assert!(from_json(&j("\"maybe\""), DataType::Boolean).is_err());
    }

    #[test]
    fn strings_print_json_for_non_strings() {
        assert_eq!(from_json(&j("21.5"), DataType::String), Ok(Value::Text("21.5".into())));
        assert_eq!(from_json(&j("true"), DataType::String), Ok(Value::Text("true".into())));
        assert_eq!(from_json(&j("{\"a\": 1}"), DataType::String), Ok(Value::Text("{\"a\":1}".into())));
    }

    #[test]
    fn json_is_real_json() {
        assert_eq!(from_json(&j(r#"{"a": [1, "x"]}"#), DataType::Json), Ok(Value::Json(r#"{"a":[1,"x"]}"#.into())));
        assert_eq!(from_text("{\"a\": 1}", DataType::Json), Ok(Value::Json("{\"a\":1}".into())));
        assert!(from_text("{'a': 1}", DataType::Json).is_err());
    }

    #[test]
    fn null_is_dropped() {
        assert_eq!(from_json(&j("null"), DataType::String), Err(CoerceError::Null));
        assert_eq!(natural(&j("null")), None);
    }
}
