//! Templates: text with `${...}` expressions, as in every ThingsBoard gateway
//! converter config (`"value": "${temp}"`, `"key": "${sensorType}_value"`,
//! `"topicExpression": "sensor/${deviceName}/set"`).
//!
//! A template is parsed once, when the converter is created, into literal
//! text and parsed [`Path`]s; what an expression's path is evaluated against
//! is up to the caller (the message for uplink, the request for downlink).

use crate::path::Path;

/// One piece of a template.
#[derive(Debug, Clone, PartialEq)]
pub enum Part {
    Text(String),
    Expr(Path),
}

/// A parsed template.
#[derive(Debug, Clone, PartialEq)]
pub struct Template {
    source: String,
    parts: Vec<Part>,
}

impl Template {
    /// Parse `source`; the error names the position of what is wrong.
    pub fn parse(source: &str) -> Result<Template, String> {
        let mut parts = Vec::new();
        let mut text = String::new();
        let mut rest = source;
        while let Some(start) = rest.find("${") {
            text.push_str(&rest[..start]);
            let body = &rest[start + 2..];
            let end = find_close(body).ok_or_else(|| {
                let at = source.len() - rest.len() + start;
                format!("unterminated `${{` at position {at} of `{source}`")
            })?;
            let path = Path::parse(&body[..end]).map_err(|e| format!("in `{source}`: {e}"))?;
            if !text.is_empty() {
                parts.push(Part::Text(std::mem::take(&mut text)));
            }
            parts.push(Part::Expr(path));
            rest = &body[end + 1..];
        }
        text.push_str(rest);
        if !text.is_empty() {
            parts.push(Part::Text(text));
        }
        Ok(Template { source: source.to_owned(), parts })
    }

    /// The template as written.
    pub fn source(&self) -> &str {
        &self.source
    }

    /// The pieces, in order.
    pub fn parts(&self) -> &[Part] {
        &self.parts
    }

    /// The path, when the whole template is one expression (`"${temp}"`):
    /// then the value keeps its JSON type instead of becoming text.
    pub fn single_expr(&self) -> Option<&Path> {
        match self.parts.as_slice() {
            [Part::Expr(p)] => Some(p),
            _ => None,
        }
    }

    /// The text, when the template has no expression at all.
    pub fn constant(&self) -> Option<&str> {
        match self.parts.as_slice() {
            [] => Some(""),
            [Part::Text(t)] => Some(t),
            _ => None,
        }
    }

    /// Every expression's path.
    pub fn exprs(&self) -> impl Iterator<Item = &Path> {
        self.parts.iter().filter_map(|p| match p {
            Part::Expr(p) => Some(p),
            Part::Text(_) => None,
        })
    }

    /// Render the template; `resolve` appends an expression's text to the
    /// output, or fails (the first failure stops the rendering).
    pub fn render<E>(&self, mut resolve: impl FnMut(&Path, &mut String) -> Result<(), E>) -> Result<String, E> {
        let mut out = String::with_capacity(self.source.len() + 16);
        for part in &self.parts {
            match part {
                Part::Text(t) => out.push_str(t),
                Part::Expr(p) => resolve(p, &mut out)?,
            }
        }
        Ok(out)
    }
}

/// The index of the `}` that closes an expression, skipping quoted keys
/// inside brackets (`${['a}b']}`).
fn find_close(body: &str) -> Option<usize> {
    let mut in_bracket = false;
    let mut quote: Option<char> = None;
    for (i, c) in body.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '[') => in_bracket = true,
            (None, ']') => in_bracket = false,
            (None, '\'' | '"') if in_bracket => quote = Some(c),
            (None, '}') if !in_bracket => return Some(i),
            _ => {}
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn splits_text_and_expressions() {
        let t = Template::parse("sensor/${a.b}/x${c}").unwrap();
        assert_eq!(t.parts().len(), 4);
        assert!(t.single_expr().is_none());
        assert!(t.constant().is_none());
        let names: Vec<_> = t.exprs().map(|p| p.text().to_owned()).collect();
        assert_eq!(names, ["a.b", "c"]);
    }

    #[test]
    fn single_expression_and_constant() {
        assert_eq!(Template::parse("${temp}").unwrap().single_expr().map(|p| p.text()), Some("temp"));
        assert_eq!(Template::parse("Demo Device").unwrap().constant(), Some("Demo Device"));
        assert_eq!(Template::parse("cost $5").unwrap().constant(), Some("cost $5"));
    }

    #[test]
    fn quoted_brace_inside_brackets() {
        let t = Template::parse("${['a}b']}!").unwrap();
        assert_eq!(t.parts().len(), 2);
    }

    #[test]
    fn unterminated_expression_names_its_position() {
        let err = Template::parse("x ${temp").unwrap_err();
        assert_eq!(err, "unterminated `${` at position 2 of `x ${temp`");
    }

    #[test]
    fn renders_with_a_resolver() {
        let t = Template::parse("a=${a}, b=${b}").unwrap();
        let out: Result<String, ()> = t.render(|p, out| {
            out.push_str(&p.text().to_uppercase());
            Ok(())
        });
        assert_eq!(out.unwrap(), "a=A, b=B");
    }
}
