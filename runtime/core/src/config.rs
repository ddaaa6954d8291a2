//! Reading configuration documents (parsed JSON or YAML) so that a user sees
//! every problem at once, each with its path:
//! `connectors[0].configuration.mapping[2].topicFilter: required`.
//!
//! - Unknown keys are errors, with the nearest known key as a suggestion.
//! - Keys of the ThingsBoard gateway's format that tbgw has no use for are
//!   accepted with a notice, so that users' files load unchanged.
//! - A wrong type or value is an error; reading goes on, so that the next
//!   problem is reported too.

use serde_json::{Map, Value};
use std::fmt;
use tbgw_data::edit_distance;

/// One problem (or notice) and where it is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() { f.write_str(&self.message) } else { write!(f, "{}: {}", self.path, self.message) }
    }
}

/// Everything found wrong, and the notices, while reading a document.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Diagnostics {
    pub errors: Vec<Problem>,
    pub notices: Vec<Problem>,
}

impl Diagnostics {
    pub fn error(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.errors.push(Problem { path: path.into(), message: message.into() });
    }

    pub fn notice(&mut self, path: impl Into<String>, message: impl Into<String>) {
        self.notices.push(Problem { path: path.into(), message: message.into() });
    }

    pub fn is_ok(&self) -> bool {
        self.errors.is_empty()
    }

    /// Take in another document's diagnostics, its paths under `prefix`.
    pub fn absorb(&mut self, prefix: &str, other: Diagnostics) {
        let join = |p: Problem| Problem {
            path: match (prefix.is_empty(), p.path.is_empty()) {
                (true, _) => p.path,
                (false, true) => prefix.to_owned(),
                (false, false) => format!("{prefix}.{}", p.path),
            },
            message: p.message,
        };
        self.errors.extend(other.errors.into_iter().map(join));
        self.notices.extend(other.notices.into_iter().map(join));
    }
}

/// The path of `key` under `path` (either may be empty).
/// Keys of a connector's configuration that the gateway reads, not the
/// connector (remote logging: `enableRemoteLogging`, `logLevel`), or that
/// ThingsBoard's remote configuration writes into it (`name`, `id`,
/// `configVersion`, as the Python gateway keeps them): a connector accepts
/// them with [`Obj::allow`].
pub const GATEWAY_KEYS: [&str; 5] = ["enableRemoteLogging", "logLevel", "name", "id", "configVersion"];

pub fn join(path: &str, key: &str) -> String {
    match (path.is_empty(), key.is_empty()) {
        (true, _) => key.to_owned(),
        (false, true) => path.to_owned(),
        (false, false) => format!("{path}.{key}"),
    }
}

/// A JSON value's type, for messages (one wording for the gateway's config
/// and the converters').
pub use tbgw_data::config::kind;

/// An object being read.
pub struct Obj<'a> {
    path: String,
    map: &'a Map<String, Value>,
    known: Vec<&'static str>,
}

impl<'a> Obj<'a> {
    /// `value` (found at `path`) as an object; an error otherwise.
    pub fn new(d: &mut Diagnostics, path: impl Into<String>, value: &'a Value) -> Option<Obj<'a>> {
        let path = path.into();
        match value {
            Value::Object(map) => Some(Obj { path, map, known: Vec::new() }),
            other => {
                d.error(path, format!("expected an object, found {}", kind(other)));
                None
            }
        }
    }

    pub fn path(&self) -> &str {
        &self.path
    }

    pub fn field(&self, key: &str) -> String {
        join(&self.path, key)
    }

    /// The raw value of `key` (marking it known).
    pub fn get(&mut self, key: &'static str) -> Option<&'a Value> {
        self.known.push(key);
        self.map.get(key).filter(|v| !v.is_null())
    }

    pub fn has(&self, key: &str) -> bool {
        self.map.get(key).is_some_and(|v| !v.is_null())
    }

    pub fn string(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<&'a str> {
        match self.get(key)? {
            Value::String(s) => Some(s),
            other => {
                d.error(self.field(key), format!("expected text, found {}", kind(other)));
                None
            }
        }
    }

    /// A required text value; an error names the field when it is missing.
    pub fn required_string(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<&'a str> {
        let s = self.string(d, key);
        if s.is_none() && !self.has(key) {
            d.error(self.field(key), "required");
        }
        s
    }

    pub fn bool(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<bool> {
        match self.get(key)? {
            Value::Bool(b) => Some(*b),
            Value::String(s) if s.eq_ignore_ascii_case("true") => Some(true),
            Value::String(s) if s.eq_ignore_ascii_case("false") => Some(false),
            other => {
                d.error(self.field(key), format!("expected true or false, found {}", kind(other)));
                None
            }
        }
    }

    /// A whole number in `range` (numeric text, as some generated configs
    /// have it, is accepted).
    pub fn uint(
        &mut self,
        d: &mut Diagnostics,
        key: &'static str,
        range: std::ops::RangeInclusive<u64>,
    ) -> Option<u64> {
        let v = self.get(key)?;
        let n = match v {
            Value::Number(n) => {
                n.as_u64().or_else(|| n.as_f64().filter(|f| f.fract() == 0.0 && *f >= 0.0).map(|f| f as u64))
            }
            Value::String(s) => s.trim().parse::<u64>().ok(),
            _ => None,
        };
        match n {
            Some(n) if range.contains(&n) => Some(n),
            _ => {
                d.error(
                    self.field(key),
                    format!("expected a whole number from {} to {}, found {v}", range.start(), range.end()),
                );
                None
            }
        }
    }

    /// A nested object.
    pub fn object(&mut self, d: &mut Diagnostics, key: &'static str) -> Option<Obj<'a>> {
        let path = self.field(key);
        Obj::new(d, path, self.get(key)?)
    }

    /// A list, with each element's path.
    pub fn list(&mut self, d: &mut Diagnostics, key: &'static str) -> Vec<(String, &'a Value)> {
        match self.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => {
                let base = self.field(key);
                items.iter().enumerate().map(|(i, v)| (format!("{base}[{i}]"), v)).collect()
            }
            Some(other) => {
                d.error(self.field(key), format!("expected a list, found {}", kind(other)));
                Vec::new()
            }
        }
    }

    /// Accept `keys` without using them, with a notice each (the reason).
    pub fn unused(&mut self, d: &mut Diagnostics, keys: &[(&'static str, &str)]) {
        for (key, why) in keys {
            if self.get(key).is_some() {
                d.notice(self.field(key), format!("ignored: {why}"));
            }
        }
    }

    /// Accept `keys` silently.
    pub fn allow(&mut self, keys: &[&'static str]) {
        self.known.extend_from_slice(keys);
    }

    /// Report every key not read or accepted, with a suggestion.
    pub fn finish(self, d: &mut Diagnostics) {
        for key in self.map.keys() {
            if self.known.contains(&key.as_str()) {
                continue;
            }
            let lower = key.to_ascii_lowercase();
            let suggestion = self
                .known
                .iter()
                .map(|k| (edit_distance(&lower, &k.to_ascii_lowercase()), *k))
                .filter(|(dist, _)| *dist <= 2 && *dist < key.len())
                .min()
                .map(|(_, k)| format!("; did you mean `{k}`?"))
                .unwrap_or_default();
            d.error(join(&self.path, key), format!("unknown key{suggestion}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_every_problem_with_its_path() {
        let doc: Value =
            serde_json::from_str(r#"{"host":5,"prot":1883,"tls":{"ca":"x"},"items":[{"a":1},{"b":2}]}"#).unwrap();
        let mut d = Diagnostics::default();
        let mut root = Obj::new(&mut d, "", &doc).unwrap();
        root.string(&mut d, "host");
        root.uint(&mut d, "port", 1..=65535);
        root.required_string(&mut d, "name");
        if let Some(mut tls) = root.object(&mut d, "tls") {
            tls.string(&mut d, "caCert");
            tls.finish(&mut d);
        }
        for (path, item) in root.list(&mut d, "items") {
            if let Some(mut item) = Obj::new(&mut d, path, item) {
                item.uint(&mut d, "a", 0..=10);
                item.finish(&mut d);
            }
        }
        root.finish(&mut d);
        let errors: Vec<String> = d.errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            errors,
            vec![
                "host: expected text, found a number",
                "name: required",
                "tls.ca: unknown key",
                "items[1].b: unknown key",
                "prot: unknown key; did you mean `port`?",
            ]
        );
    }

    #[test]
    fn absorbs_nested_documents() {
        let mut inner = Diagnostics::default();
        inner.error("mapping[0].topicFilter", "required");
        let mut outer = Diagnostics::default();
        outer.absorb("connectors[1].configuration", inner);
        assert_eq!(outer.errors[0].to_string(), "connectors[1].configuration.mapping[0].topicFilter: required");
    }
}
