//! A JSON tree that borrows from the payload.
//!
//! The converter reads a handful of fields out of every message and then
//! throws the message away, so building `serde_json::Value` (an owned `String`
//! for every key and string, a map per object) would spend most of the time in
//! the allocator. This tree borrows strings from the payload whenever they
//! have no escapes and keeps objects as a `Vec` of pairs in document order.
//! Lookups are linear, which beats hashing at the sizes of device messages.

use serde::de::{self, Deserialize, DeserializeSeed, Deserializer, MapAccess, SeqAccess, Visitor};
use std::borrow::Cow;
use std::fmt;

/// A parsed JSON value whose strings borrow from the source text.
#[derive(Debug, Clone, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Int(i64),
    /// An integer above `i64::MAX`.
    UInt(u64),
    Float(f64),
    Str(Cow<'a, str>),
    Array(Vec<Json<'a>>),
    /// Members in document order; a duplicated key resolves to its last
    /// occurrence, as in every mainstream JSON library.
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Parse `bytes` as one JSON document.
    ///
    /// Invalid UTF-8 is reported with the offset of the first bad byte, which
    /// tells a user more than serde_json's "invalid unicode code point".
    pub fn parse(bytes: &'a [u8]) -> Result<Json<'a>, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| {
            let at = e.valid_up_to();
            format!("payload is not UTF-8 text: invalid byte 0x{:02x} at offset {at}", bytes[at])
        })?;
        serde_json::from_str(text).map_err(|e| format!("payload is not valid JSON: {e}"))
    }

    /// The member `key` of an object (its last occurrence), if any.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        match self {
            // Length and first byte first: most members differ there, and
            // a full comparison is a call to memcmp in WebAssembly.
            Json::Object(members) => members
                .iter()
                .rev()
                .find(|(k, _)| k.len() == key.len() && k.as_bytes().first() == key.as_bytes().first() && k == key)
                .map(|(_, v)| v),
            _ => None,
        }
    }

    /// The members of an object in document order; nothing for other values.
    pub fn members(&self) -> &[(Cow<'a, str>, Json<'a>)] {
        match self {
            Json::Object(m) => m,
            _ => &[],
        }
    }

    /// A short name of the value's JSON type, for error messages.
    pub fn kind(&self) -> &'static str {
        match self {
            Json::Null => "null",
            Json::Bool(_) => "a boolean",
            Json::Int(_) | Json::UInt(_) | Json::Float(_) => "a number",
            Json::Str(_) => "a string",
            Json::Array(_) => "an array",
            Json::Object(_) => "an object",
        }
    }

    /// Append the compact JSON text of this value to `out`.
    pub fn write_json(&self, out: &mut String) {
        match self {
            Json::Null => out.push_str("null"),
            Json::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
            Json::Int(i) => out.push_str(itoa::Buffer::new().format(*i)),
            Json::UInt(u) => out.push_str(itoa::Buffer::new().format(*u)),
            Json::Float(f) => write_f64(*f, out),
            Json::Str(s) => write_json_string(s, out),
            Json::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    item.write_json(out);
                }
                out.push(']');
            }
            Json::Object(members) => {
                out.push('{');
                for (i, (k, v)) in members.iter().enumerate() {
                    if i > 0 {
                        out.push(',');
                    }
                    write_json_string(k, out);
                    out.push(':');
                    v.write_json(out);
                }
                out.push('}');
            }
        }
    }

    /// The compact JSON text of this value.
    pub fn to_json(&self) -> String {
        let mut out = String::new();
        self.write_json(&mut out);
        out
    }

    /// Append the value as text: a string as it is (no quotes), anything
    /// else as its JSON text. This is how a value reads inside a template.
    pub fn write_text(&self, out: &mut String) {
        match self {
            Json::Str(s) => out.push_str(s),
            other => other.write_json(out),
        }
    }
}

/// Append a finite float the way JSON writers do (`21.5`, `1.0`, `1e21`).
/// Non-finite floats cannot come out of a JSON parser; they print as `null`.
pub fn write_f64(f: f64, out: &mut String) {
    if f.is_finite() {
        out.push_str(ryu::Buffer::new().format_finite(f));
    } else {
        out.push_str("null");
    }
}

/// Append `s` as a quoted JSON string.
pub fn write_json_string(s: &str, out: &mut String) {
    out.push('"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let escape: Option<&str> = match b {
            b'"' => Some("\\\""),
            b'\\' => Some("\\\\"),
            b'\n' => Some("\\n"),
            b'\r' => Some("\\r"),
            b'\t' => Some("\\t"),
            0x08 => Some("\\b"),
            0x0c => Some("\\f"),
            0x00..=0x1f => None,
            _ => continue,
        };
        out.push_str(&s[start..i]);
        match escape {
            Some(e) => out.push_str(e),
            None => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
    out.push('"');
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E>(self, v: bool) -> Result<Self::Value, E> {
        Ok(Json::Bool(v))
    }
    fn visit_i64<E>(self, v: i64) -> Result<Self::Value, E> {
        Ok(Json::Int(v))
    }
    fn visit_u64<E>(self, v: u64) -> Result<Self::Value, E> {
        Ok(match i64::try_from(v) {
            Ok(i) => Json::Int(i),
            Err(_) => Json::UInt(v),
        })
    }
    fn visit_f64<E>(self, v: f64) -> Result<Self::Value, E> {
        Ok(Json::Float(v))
    }
    fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Borrowed(v)))
    }
    fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v.to_owned())))
    }
    fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
        Ok(Json::Str(Cow::Owned(v)))
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(Json::Null)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(Json::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(0));
        while let Some(key) = map.next_key_seed(KeySeed)? {
            let value = map.next_value()?;
            members.push((key, value));
        }
        Ok(Json::Object(members))
    }
}

/// Deserializes an object key, borrowing it when it has no escapes.
struct KeySeed;

impl<'de> DeserializeSeed<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn deserialize<D: Deserializer<'de>>(self, deserializer: D) -> Result<Self::Value, D::Error> {
        deserializer.deserialize_str(self)
    }
}

impl<'de> Visitor<'de> for KeySeed {
    type Value = Cow<'de, str>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("an object key")
    }
    fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
        Ok(Cow::Borrowed(v))
    }
    fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v.to_owned()))
    }
    fn visit_string<E: de::Error>(self, v: String) -> Result<Self::Value, E> {
        Ok(Cow::Owned(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn borrows_plain_strings_and_owns_escaped_ones() {
        let text = br#"{"a":"plain","b":"esc\"aped"}"#;
        let json = Json::parse(text).unwrap();
        assert!(matches!(json.get("a"), Some(Json::Str(Cow::Borrowed("plain")))));
        assert!(matches!(json.get("b"), Some(Json::Str(Cow::Owned(s))) if s == "esc\"aped"));
    }

    #[test]
    fn duplicate_keys_resolve_to_the_last() {
        let json = Json::parse(br#"{"t":1,"t":2}"#).unwrap();
        assert_eq!(json.get("t"), Some(&Json::Int(2)));
    }

    #[test]
    fn round_trips_compact_json() {
        let text = r#"{"a":[1,-2,3.5,true,null],"b":{"c":"x\ny\u0001"},"big":18446744073709551615}"#;
        let json = Json::parse(text.as_bytes()).unwrap();
        assert_eq!(json.to_json(), text);
    }

    #[test]
    fn floats_print_like_json_writers() {
        let mut s = String::new();
        write_f64(21.5, &mut s);
        s.push(' ');
        write_f64(1.0, &mut s);
        s.push(' ');
        write_f64(1e21, &mut s);
        assert_eq!(s, "21.5 1.0 1e21");
    }

    #[test]
    fn reports_the_offset_of_a_non_utf8_byte() {
        let err = Json::parse(b"{\"a\":\"\xff\"}").unwrap_err();
        assert_eq!(err, "payload is not UTF-8 text: invalid byte 0xff at offset 6");
    }

    #[test]
    fn reports_where_json_breaks() {
        let err = Json::parse(b"{\"a\": 1,}").unwrap_err();
        assert!(err.starts_with("payload is not valid JSON: trailing comma at line 1 column 9"), "{err}");
    }
}
