//! Paths into a JSON message: what goes between `${` and `}`.
//!
//! The ThingsBoard gateway evaluates these with JSONPath (jsonpath-rw) after
//! first trying the whole text as a top-level key. The subset its users write
//! is supported, and parsed once, when the converter is created:
//!
//! - `temperature`, `sensor.temperature`, `$.sensor.temperature`
//! - `values[0]`, `values[-1]` (from the end), `readings[0].value`
//! - `['key with.dot']`, `["key"]`
//! - `items[*].value` and `sensor.*`: the first element (or member) for which
//!   the rest of the path resolves, which is what the Python gateway returns
//!   (the first JSONPath match).
//!
//! Recursive descent (`..`) and filters (`?(...)`) are refused with an error
//! that says so.

use crate::json::Json;

#[derive(Debug, Clone, PartialEq)]
enum Segment {
    /// An object member; on an array, a key made of digits reads as an index.
    Key(String),
    /// An array element; negative counts from the end.
    Index(i64),
    /// Every element of an array, or every member of an object.
    Wildcard,
}

/// A parsed path.
#[derive(Debug, Clone, PartialEq)]
pub struct Path {
    text: String,
    segments: Vec<Segment>,
}

impl Path {
    /// Parse a path; the error says what is wrong and where.
    pub fn parse(text: &str) -> Result<Path, String> {
        let trimmed = text.trim();
        if trimmed.is_empty() {
            return Err("empty path".into());
        }
        let mut segments = Vec::new();
        let mut rest = trimmed;
        if let Some(r) = rest.strip_prefix('$') {
            rest = r;
            if let Some(r) = rest.strip_prefix('.') {
                rest = r;
                if rest.is_empty() {
                    return Err(format!("`{trimmed}`: a path ends after `$.`"));
                }
            }
        }
        let mut expect_key = true;
        while !rest.is_empty() {
            if let Some(r) = rest.strip_prefix('[') {
                let (segment, after) = parse_bracket(r).map_err(|e| format!("`{trimmed}`: {e}"))?;
                segments.push(segment);
                rest = after;
                expect_key = false;
                continue;
            }
            if !expect_key {
                rest = match rest.strip_prefix('.') {
                    Some(r) => r,
                    None => return Err(format!("`{trimmed}`: expected `.` or `[` before `{rest}`")),
                };
                if rest.starts_with('.') {
                    return Err(format!("`{trimmed}`: recursive descent (`..`) is not supported"));
                }
                if rest.is_empty() {
                    return Err(format!("`{trimmed}`: a path cannot end with `.`"));
                }
                if rest.starts_with('[') {
                    continue;
                }
            }
            let end = rest.find(['.', '[']).unwrap_or(rest.len());
            let key = &rest[..end];
            if key.is_empty() {
                return Err(format!("`{trimmed}`: empty key"));
            }
            if key.contains(']') {
                return Err(format!("`{trimmed}`: unbalanced `]`"));
            }
            segments.push(if key == "*" { Segment::Wildcard } else { Segment::Key(key.to_owned()) });
            rest = &rest[end..];
            expect_key = false;
        }
        Ok(Path { text: trimmed.to_owned(), segments })
    }

    /// The path as written (trimmed).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The last key of the path, if it ends with one.
    pub fn last_key(&self) -> Option<&str> {
        match self.segments.last() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// The first key of the path, if it starts with one.
    pub fn first_key(&self) -> Option<&str> {
        match self.segments.first() {
            Some(Segment::Key(k)) => Some(k),
            _ => None,
        }
    }

    /// Evaluate the path on `root`: the whole text as a top-level key first
    /// (so `"temp.c"` finds a key named `temp.c`), then segment by segment.
    pub fn eval<'j, 'a>(&self, root: &'j Json<'a>) -> Option<&'j Json<'a>> {
        if self.segments.len() > 1
            && let Some(v) = root.get(&self.text)
        {
            return Some(v);
        }
        eval_segments(root, &self.segments)
    }

    /// Evaluate the path without its first segment (for paths that start
    /// with a name the caller resolved, e.g. `params.pin`).
    pub fn eval_tail<'j, 'a>(&self, root: &'j Json<'a>) -> Option<&'j Json<'a>> {
        eval_segments(root, self.segments.get(1..).unwrap_or(&[]))
    }

    /// Whether the path is a single key.
    pub fn is_single_key(&self) -> bool {
        matches!(self.segments.as_slice(), [Segment::Key(_)])
    }
}

fn eval_segments<'j, 'a>(mut node: &'j Json<'a>, segments: &[Segment]) -> Option<&'j Json<'a>> {
    for (i, segment) in segments.iter().enumerate() {
        node = match (segment, node) {
            (Segment::Key(k), Json::Object(_)) => node.get(k)?,
            (Segment::Key(k), Json::Array(items)) => items.get(k.parse::<usize>().ok()?)?,
            (Segment::Index(i), Json::Array(items)) => {
                let idx = if *i < 0 { items.len().checked_sub(i.unsigned_abs() as usize)? } else { *i as usize };
                items.get(idx)?
            }
            (Segment::Wildcard, Json::Array(items)) => {
                return items.iter().find_map(|item| eval_segments(item, &segments[i + 1..]));
            }
            (Segment::Wildcard, Json::Object(members)) => {
                return members.iter().find_map(|(_, v)| eval_segments(v, &segments[i + 1..]));
            }
            _ => return None,
        };
    }
    Some(node)
}

/// Parse the inside of `[...]` (after the `[`); returns the segment and the
/// text after the closing `]`.
fn parse_bracket(s: &str) -> Result<(Segment, &str), String> {
    let s = s.trim_start();
    if let Some(quote) = s.chars().next().filter(|c| *c == '\'' || *c == '"') {
        let body = &s[1..];
        let end = body.find(quote).ok_or_else(|| format!("unterminated {quote}-quoted key"))?;
        let key = &body[..end];
        let after = body[end + 1..].trim_start();
        let after = after.strip_prefix(']').ok_or("expected `]` after a quoted key")?;
        return Ok((Segment::Key(key.to_owned()), after));
    }
    let end = s.find(']').ok_or("unterminated `[`")?;
    let inner = s[..end].trim();
    let after = &s[end + 1..];
    if inner == "*" {
        return Ok((Segment::Wildcard, after));
    }
    if inner.starts_with('?') || inner.starts_with('(') {
        return Err(format!("filter expressions (`[{inner}]`) are not supported"));
    }
    let index =
        inner.parse::<i64>().map_err(|_| format!("`[{inner}]` is not an index; quote a key as `['{inner}']`"))?;
    Ok((Segment::Index(index), after))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(path: &str, json: &str) -> Option<String> {
        let json = Json::parse(json.as_bytes()).unwrap();
        Path::parse(path).unwrap().eval(&json).map(|v| v.to_json())
    }

    #[test]
    fn dotted_and_indexed() {
        let doc = r#"{"a":{"b":[10,{"c":"x"}]},"n":[1,2,3]}"#;
        assert_eq!(eval("a.b[0]", doc).as_deref(), Some("10"));
        assert_eq!(eval("a.b[1].c", doc).as_deref(), Some("\"x\""));
        assert_eq!(eval("$.a.b[1].c", doc).as_deref(), Some("\"x\""));
        assert_eq!(eval("n[-1]", doc).as_deref(), Some("3"));
        assert_eq!(eval("n[3]", doc), None);
        assert_eq!(eval("n[-4]", doc), None);
        assert_eq!(eval("a.b.1.c", doc).as_deref(), Some("\"x\""));
        assert_eq!(eval("a.missing", doc), None);
        assert_eq!(eval("$", doc).as_deref().map(|s| s.len()), Some(doc.len()));
    }

    #[test]
    fn quoted_keys_and_literal_dotted_keys() {
        let doc = r#"{"temp.c":21,"my key":{"x y":1}}"#;
        assert_eq!(eval("temp.c", doc).as_deref(), Some("21"));
        assert_eq!(eval("['my key']['x y']", doc).as_deref(), Some("1"));
        assert_eq!(eval("[\"my key\"].['x y']", doc).as_deref(), Some("1"));
    }

    #[test]
    fn wildcard_takes_the_first_match() {
        let doc = r#"{"items":[{"id":1},{"v":7},{"v":8}],"o":{"p":{"q":1},"r":{"s":2}}}"#;
        assert_eq!(eval("items[*].v", doc).as_deref(), Some("7"));
        assert_eq!(eval("o.*.s", doc).as_deref(), Some("2"));
    }

    #[test]
    fn refuses_what_it_does_not_support() {
        assert!(Path::parse("a..b").unwrap_err().contains("recursive descent"));
        assert!(Path::parse("a[?(@.x)]").unwrap_err().contains("filter"));
        assert!(Path::parse("a[x]").unwrap_err().contains("quote a key"));
        assert!(Path::parse("a[0").unwrap_err().contains("unterminated"));
        assert!(Path::parse("a.").unwrap_err().contains("cannot end"));
        assert!(Path::parse("   ").unwrap_err().contains("empty"));
    }
}
