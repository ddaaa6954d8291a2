//! Reading a converter's JSON configuration with errors that name the field.
//!
//! A config error must point the user at the exact spot
//! (`timeseries[2].type`), refuse typos (unknown keys, with a suggestion)
//! and accept, with a notice, the keys of the Python gateway's format that
//! this converter has no use for, so that users' configs load unchanged.
//!
//! The reader of the converters (a converter stops at its config's first
//! problem, as `create` returns one error) and of the plain-data crates
//! they share with connectors (the Modbus tag schema). The gateway's own
//! documents are read by `tbgw_core::config`, which reports every problem
//! at once.

use serde_json::{Map, Value};

pub use crate::ConfigError;
use crate::edit_distance;

/// Parse the config text as a JSON document.
pub fn parse_document(text: &str) -> Result<Value, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::whole(format!("config is not valid JSON: {e}")))
}

/// A JSON object being read, which remembers the keys taken so that the
/// rest can be reported as unknown.
pub struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    taken: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// Read `value`, found at `path` ("" for the root), as an object.
    pub fn new(path: impl Into<String>, value: &'a Value) -> Result<Self, ConfigError> {
        let path = path.into();
        match value {
            Value::Object(map) => Ok(Obj { path, map, taken: Vec::new() }),
            other => Err(error_at(&path, format!("expected an object, found {}", kind(other)))),
        }
    }

    /// The path of member `key`.
    pub fn field(&self, key: &str) -> String {
        if self.path.is_empty() { key.to_owned() } else { format!("{}.{key}", self.path) }
    }

    /// Member `key`, if present.
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.taken.push(key);
        self.map.get(key)
    }

    pub fn opt_str(&mut self, key: &'static str) -> Result<Option<&'a str>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(ConfigError::at(self.field(key), format!("expected a string, found {}", kind(other)))),
        }
    }

    pub fn req_str(&mut self, key: &'static str) -> Result<&'a str, ConfigError> {
        self.opt_str(key)?.ok_or_else(|| self.missing(key))
    }

    /// A required `key` is absent: say so, and point at a likely typo.
    pub fn missing(&self, key: &str) -> ConfigError {
        let typo = self
            .map
            .keys()
            .filter(|k| !self.taken.contains(&k.as_str()))
            .find(|k| edit_distance(&k.to_ascii_lowercase(), &key.to_ascii_lowercase()) <= 2);
        match typo {
            Some(t) => ConfigError::at(self.field(key), format!("required; `{t}` looks like a typo for it")),
            None => ConfigError::at(self.field(key), "required"),
        }
    }

    pub fn opt_bool(&mut self, key: &'static str) -> Result<Option<bool>, ConfigError> {
        match self.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(other) => {
                Err(ConfigError::at(self.field(key), format!("expected true or false, found {}", kind(other))))
            }
        }
    }

    /// An unsigned integer no larger than `max` (a number, or numeric text as
    /// the ThingsBoard UI sometimes writes).
    pub fn opt_uint(&mut self, key: &'static str, max: u64) -> Result<Option<u64>, ConfigError> {
        let v = match self.get(key) {
            None | Some(Value::Null) => return Ok(None),
            Some(Value::Number(n)) => n.as_u64(),
            Some(Value::String(s)) => s.trim().parse::<u64>().ok(),
            Some(_) => None,
        };
        match v {
            Some(v) if v <= max => Ok(Some(v)),
            _ => Err(ConfigError::at(self.field(key), format!("expected a whole number from 0 to {max}"))),
        }
    }

    /// Accept `keys` without using them; a notice for each one present.
    pub fn ignore(&mut self, keys: &[(&'static str, &str)], notices: &mut Vec<String>) {
        for (key, why) in keys {
            if self.get(key).is_some() {
                notices.push(format!("{}: ignored ({why})", self.field(key)));
            }
        }
    }

    /// Accept `keys` silently (they belong to another part of the gateway).
    pub fn allow(&mut self, keys: &[&'static str]) {
        self.taken.extend_from_slice(keys);
    }

    /// Refuse any key that was not taken, suggesting the nearest known one.
    pub fn finish(self) -> Result<(), ConfigError> {
        let mut unknown: Vec<&String> = self.map.keys().filter(|k| !self.taken.contains(&k.as_str())).collect();
        unknown.sort();
        let Some(first) = unknown.first() else {
            return Ok(());
        };
        let mut known = self.taken.clone();
        known.sort_unstable();
        known.dedup();
        let suggestion = known
            .iter()
            .map(|k| (edit_distance(&first.to_ascii_lowercase(), &k.to_ascii_lowercase()), k))
            .filter(|(d, _)| *d <= 2)
            .min()
            .map(|(_, k)| format!("; did you mean `{k}`?"))
            .unwrap_or_default();
        Err(ConfigError::at(
            self.field(first),
            format!("unknown field{suggestion} (known fields: {})", known.join(", ")),
        ))
    }
}

/// Iterate an array member, with the path of each element.
pub fn array<'a>(obj: &mut Obj<'a>, key: &'static str) -> Result<Vec<(String, &'a Value)>, ConfigError> {
    match obj.get(key) {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Array(items)) => {
            let base = obj.field(key);
            Ok(items.iter().enumerate().map(|(i, v)| (format!("{base}[{i}]"), v)).collect())
        }
        Some(other) => Err(ConfigError::at(obj.field(key), format!("expected a list, found {}", kind(other)))),
    }
}

/// A whole number, or its text in decimal or hex (`"0x7E8"`), as configs
/// write ids (a CAN id, a BLE company id).
pub fn uint_or_hex(v: &Value) -> Option<u64> {
    match v {
        Value::Number(n) => n.as_u64(),
        Value::String(s) => {
            let s = s.trim();
            match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
                Some(hex) => u64::from_str_radix(hex, 16).ok(),
                None => s.parse().ok(),
            }
        }
        _ => None,
    }
}

fn error_at(path: &str, message: String) -> ConfigError {
    if path.is_empty() { ConfigError::whole(message) } else { ConfigError::at(path, message) }
}

/// A JSON value's type, for error messages.
pub fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "a list",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_gets_a_suggestion_and_its_path() {
        let v: Value = serde_json::from_str(r#"{"a":{"tpye":"x","key":"k"}}"#).unwrap();
        let mut root = Obj::new("", &v).unwrap();
        let inner = root.get("a").unwrap();
        let mut obj = Obj::new(root.field("a"), inner).unwrap();
        obj.opt_str("type").unwrap();
        obj.opt_str("key").unwrap();
        let err = obj.finish().unwrap_err();
        assert_eq!(err.field.as_deref(), Some("a.tpye"));
        assert!(err.message.contains("did you mean `type`?"), "{}", err.message);
    }

    #[test]
    fn wrong_types_name_the_field() {
        let v: Value = serde_json::from_str(r#"{"n":"x","b":1}"#).unwrap();
        let mut obj = Obj::new("", &v).unwrap();
        assert_eq!(obj.opt_uint("n", 2).unwrap_err().to_string(), "n: expected a whole number from 0 to 2");
        assert_eq!(obj.opt_bool("b").unwrap_err().to_string(), "b: expected true or false, found a number");
        assert_eq!(obj.req_str("missing").unwrap_err().to_string(), "missing: required");
    }
}
