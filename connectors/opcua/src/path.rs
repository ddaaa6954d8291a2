//! How `opcua.json` names nodes, read into what the connector resolves.
//!
//! - A NodeId in OPC UA's text form: `ns=2;i=1234`, `ns=2;s=Boiler.Temp`,
//!   `i=2258`, `ns=3;g=...`, `ns=1;b=...` (`identifier` sources, and
//!   `${ns=2;i=1234}` anywhere an expression is).
//! - A browse path, its elements separated by `\.` as the Python gateway
//!   writes them (`Root\.Objects\.Boiler\.Temperature`): absolute when it
//!   starts at `Root`, else relative to the device's node (`Temperature`,
//!   `Pump\.Speed`). An element is a browse name, `2:Temperature` with its
//!   namespace index or `Temperature` without; a name may hold spaces and
//!   any character, a `\` escapes the next one (`Tank\\1` is `Tank\1`).
//! - An expression: text with `${...}` parts, each a NodeId or a browse
//!   path (`Boiler ${SerialNumber}`); the parts are read once, when the
//!   device is found.
//!
//! A name without a namespace index is looked for in each of the server's
//! namespaces (the standard ones of OPC UA's own tree, `Objects`, `Types`,
//! `Views`, `Server`, in namespace 0), as the Python gateway finds it by
//! name in any namespace; the path is still resolved in bulk
//! ([`crate::resolve`]).

use opcua::types::NodeId;
use std::fmt;
use std::str::FromStr;

/// One element of a browse path.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Element {
    /// The namespace index, when the config gives it.
    pub ns: Option<u16>,
    pub name: String,
}

impl fmt::Display for Element {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.ns {
            Some(ns) => write!(f, "{ns}:{}", self.name),
            None => f.write_str(&self.name),
        }
    }
}

/// A node as the config names it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum NodeRef {
    Id(NodeId),
    /// A browse path from the root (`absolute`) or from the device's node.
    Path {
        absolute: bool,
        elements: Vec<Element>,
    },
}

impl fmt::Display for NodeRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            NodeRef::Id(id) => write!(f, "{id}"),
            NodeRef::Path { absolute, elements } => {
                if *absolute {
                    f.write_str("Root")?;
                }
                for (i, e) in elements.iter().enumerate() {
                    if *absolute || i > 0 {
                        f.write_str("\\.")?;
                    }
                    write!(f, "{e}")?;
                }
                Ok(())
            }
        }
    }
}

/// The browse names of OPC UA's own tree, in namespace 0, as an absolute
/// path names them without a namespace index.
const STANDARD: &[&str] = &["Objects", "Types", "Views", "Server"];

/// A NodeId in text form.
pub fn node_id(text: &str) -> Result<NodeId, String> {
    let text = text.trim();
    NodeId::from_str(text).map_err(|_| {
        format!("`{text}` is not a NodeId (expected e.g. `ns=2;i=1234`, `ns=2;s=Boiler.Temperature`, `i=2258`)")
    })
}

/// Whether `text` looks like a NodeId rather than a browse path.
pub fn is_node_id(text: &str) -> bool {
    let t = text.trim();
    let body = match t.strip_prefix("ns=") {
        Some(rest) => match rest.split_once(';') {
            Some((ns, body)) if !ns.is_empty() && ns.bytes().all(|b| b.is_ascii_digit()) => body,
            _ => return false,
        },
        None => t,
    };
    matches!(body.as_bytes(), [b'i' | b's' | b'g' | b'b', b'=', ..])
}

/// A browse path (see the module's doc).
pub fn browse_path(text: &str) -> Result<NodeRef, String> {
    let mut elements = Vec::new();
    let mut name = String::new();
    let mut chars = text.trim().chars();
    let push = |name: &mut String, elements: &mut Vec<Element>| -> Result<(), String> {
        let raw = std::mem::take(name);
        if raw.is_empty() {
            return Err(format!("`{text}` has an empty element"));
        }
        elements.push(element(&raw));
        Ok(())
    };
    while let Some(c) = chars.next() {
        match c {
            '\\' => match chars.next() {
                Some('.') => push(&mut name, &mut elements)?,
                Some(other) => name.push(other),
                None => return Err(format!("`{text}` ends with `\\`")),
            },
            c => name.push(c),
        }
    }
    push(&mut name, &mut elements)?;
    let absolute = elements.first().is_some_and(|e| e.ns.is_none() && e.name == "Root");
    if absolute {
        elements.remove(0);
        if let Some(first) = elements.first_mut()
            && first.ns.is_none()
            && STANDARD.contains(&first.name.as_str())
        {
            first.ns = Some(0);
        }
        if let [objects, server, ..] = elements.as_mut_slice()
            && objects.name == "Objects"
            && server.name == "Server"
            && server.ns.is_none()
        {
            server.ns = Some(0);
        }
    }
    Ok(NodeRef::Path { absolute, elements })
}

/// `2:Name` (a namespace index before the first `:`) or `Name`.
fn element(raw: &str) -> Element {
    if let Some((ns, name)) = raw.split_once(':')
        && !ns.is_empty()
        && !name.is_empty()
        && let Ok(ns) = ns.parse::<u16>()
    {
        return Element { ns: Some(ns), name: name.to_owned() };
    }
    Element { ns: None, name: raw.to_owned() }
}

/// A node: a NodeId when it reads as one, else a browse path.
pub fn node_ref(text: &str) -> Result<NodeRef, String> {
    if is_node_id(text) { node_id(text).map(NodeRef::Id) } else { browse_path(text) }
}

/// A node as a request from ThingsBoard names it: as the config does, or
/// as the converter contract does, a path of `/`-separated names from the
/// device's node (`Pump/Speed`, `2:Pump/2:Speed`). A text with `\.` in it,
/// or one from `Root`, is the config's form.
pub fn request_ref(text: &str) -> Result<NodeRef, String> {
    let text = text.trim();
    if is_node_id(text) || text.contains("\\.") || text.starts_with("Root") || !text.contains('/') {
        return node_ref(text);
    }
    let mut elements = Vec::new();
    for raw in text.split('/') {
        if raw.is_empty() {
            return Err(format!("`{text}` has an empty element"));
        }
        elements.push(element(raw));
    }
    Ok(NodeRef::Path { absolute: false, elements })
}

/// A piece of an expression.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Part {
    Text(String),
    Node(NodeRef),
}

/// An expression: text with `${...}` nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Expression(pub Vec<Part>);

impl Expression {
    /// Read `text`; with `constant`, `${` is plain text.
    pub fn parse(text: &str, constant: bool) -> Result<Expression, String> {
        if constant {
            return Ok(Expression(vec![Part::Text(text.to_owned())]));
        }
        let mut parts = Vec::new();
        let mut rest = text;
        while let Some(start) = rest.find("${") {
            if start > 0 {
                parts.push(Part::Text(rest[..start].to_owned()));
            }
            let after = &rest[start + 2..];
            let end = after.find('}').ok_or_else(|| format!("`{text}`: a `${{` without its `}}`"))?;
            parts.push(Part::Node(node_ref(&after[..end])?));
            rest = &after[end + 1..];
        }
        if !rest.is_empty() {
            parts.push(Part::Text(rest.to_owned()));
        }
        Ok(Expression(parts))
    }

    /// The one node of an expression that is exactly `${node}`.
    pub fn single_node(&self) -> Option<&NodeRef> {
        match self.0.as_slice() {
            [Part::Node(n)] => Some(n),
            _ => None,
        }
    }

    pub fn nodes(&self) -> impl Iterator<Item = &NodeRef> {
        self.0.iter().filter_map(|p| match p {
            Part::Node(n) => Some(n),
            Part::Text(_) => None,
        })
    }

    /// The text with each node's value (`values` in the order of
    /// [`Expression::nodes`]).
    pub fn render(&self, values: &[String]) -> String {
        let mut out = String::new();
        let mut values = values.iter();
        for p in &self.0 {
            match p {
                Part::Text(t) => out.push_str(t),
                Part::Node(_) => out.push_str(values.next().map_or("", String::as_str)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn el(ns: Option<u16>, name: &str) -> Element {
        Element { ns, name: name.to_owned() }
    }

    #[test]
    fn node_ids_and_paths() {
        assert!(is_node_id("ns=2;i=1234") && is_node_id("i=2258") && is_node_id(" ns=3;s=A.B "));
        assert!(!is_node_id("Temperature") && !is_node_id("Root\\.Objects") && !is_node_id("ns=x;i=1"));
        assert_eq!(node_ref("ns=2;s=Boiler.Temp"), Ok(NodeRef::Id(NodeId::new(2, "Boiler.Temp"))));
        assert!(node_id("ns=2;q=1").unwrap_err().contains("not a NodeId"));
        assert_eq!(
            browse_path("Root\\.Objects\\.2:Boiler 1\\.Temperature"),
            Ok(NodeRef::Path {
                absolute: true,
                elements: vec![el(Some(0), "Objects"), el(Some(2), "Boiler 1"), el(None, "Temperature")]
            })
        );
        assert_eq!(
            browse_path("Pump\\.Drehzahl (U/min)"),
            Ok(NodeRef::Path { absolute: false, elements: vec![el(None, "Pump"), el(None, "Drehzahl (U/min)")] })
        );
        assert_eq!(
            browse_path("Root\\.Objects\\.Server\\.ServerStatus"),
            Ok(NodeRef::Path {
                absolute: true,
                elements: vec![el(Some(0), "Objects"), el(Some(0), "Server"), el(None, "ServerStatus")]
            })
        );
        // A name with a dot (no backslash) is one element; `\\` is a backslash.
        assert_eq!(
            browse_path("Line.3\\.Tank\\\\1"),
            Ok(NodeRef::Path { absolute: false, elements: vec![el(None, "Line.3"), el(None, "Tank\\1")] })
        );
        assert!(browse_path("A\\.\\.B").unwrap_err().contains("empty element"));
        let p = browse_path("Root\\.Objects\\.2:Boiler").unwrap();
        assert_eq!(p.to_string(), "Root\\.0:Objects\\.2:Boiler");
    }

    #[test]
    fn expressions() {
        let e = Expression::parse("Boiler ${SerialNumber} (${ns=2;i=7})", false).unwrap();
        assert_eq!(e.nodes().count(), 2);
        assert_eq!(e.render(&["SN-1".into(), "x".into()]), "Boiler SN-1 (x)");
        assert!(e.single_node().is_none());
        let e = Expression::parse("${Temperature}", false).unwrap();
        assert_eq!(e.single_node(), Some(&NodeRef::Path { absolute: false, elements: vec![el(None, "Temperature")] }));
        assert_eq!(Expression::parse("Demo ${x}", true).unwrap().render(&[]), "Demo ${x}");
        assert!(Expression::parse("Boiler ${Serial", false).unwrap_err().contains("without its"));
    }
}
