//! Where a route's rows go. A route writes one table, or — with placeholders
//! in `table` — a table per source: `table = "replica.${source.table}"`
//! replicates a whole Debezium capture with one route. Such a route is a
//! template: each table it meets becomes an instance, a concrete route of
//! its own, added to the `RouteSet` (`config::route_set`) while the sink
//! runs.
//!
//! Placeholders: `${topic}` and `${source.<field>}` (a field of a change
//! event's `source` block: `db`, `schema`, `table`, …). A dot outside a
//! placeholder separates schema and table. Rendered names are used exactly
//! as they come — case, dots, spaces and quotes kept — and always quoted in
//! SQL; a name Postgres cannot hold (empty, a NUL byte, longer than 63
//! bytes, which Postgres would silently truncate into another name) is
//! refused, never altered.

use serde_json::Value;

use crate::types::TableName;

/// A table name with placeholders.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TableTemplate {
    text: String,
    schema: Option<Vec<Piece>>,
    table: Vec<Piece>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Piece {
    Text(String),
    Topic,
    Source(String),
}

impl TableTemplate {
    /// The schema every table of the template is in, when it has no
    /// placeholder (`replica.${source.table}` → `replica`).
    pub fn fixed_schema(&self) -> Option<&str> {
        match self.schema.as_deref() {
            Some([Piece::Text(s)]) => Some(s),
            _ => None,
        }
    }

    /// `None` when `text` has no placeholder (a plain table name).
    pub fn parse(text: &str) -> Result<Option<TableTemplate>, String> {
        if !text.contains("${") {
            return Ok(None);
        }
        let mut parts = name_parts(text)?;
        if parts.iter().any(Vec::is_empty) {
            return Err(format!("`{text}` has an empty name part"));
        }
        let (schema, table) = match parts.len() {
            1 => (None, parts.pop().expect("one part")),
            2 => {
                let table = parts.pop().expect("two parts");
                (parts.pop(), table)
            }
            _ => {
                return Err(format!(
                    "`{text}` must name `table` or `schema.table` (a dot outside a placeholder separates them)"
                ))
            }
        };
        Ok(Some(TableTemplate {
            text: text.to_string(),
            schema,
            table,
        }))
    }

    /// Whether rendering reads the change event's `source` block.
    pub fn reads_source(&self) -> bool {
        self.schema
            .iter()
            .chain(std::iter::once(&self.table))
            .flatten()
            .any(|p| matches!(p, Piece::Source(_)))
    }

    /// The table for a message of `topic` whose change event has `source`.
    pub fn render(&self, topic: &str, source: Option<&Value>) -> Result<TableName, String> {
        let render = |pieces: &[Piece]| -> Result<String, String> {
            let mut out = String::new();
            for p in pieces {
                match p {
                    Piece::Text(t) => out.push_str(t),
                    Piece::Topic => out.push_str(topic),
                    Piece::Source(f) => match source.and_then(|s| s.get(f)) {
                        Some(Value::String(s)) => out.push_str(s),
                        Some(v @ Value::Number(_)) => out.push_str(&v.to_string()),
                        _ => {
                            return Err(format!(
                                "table `{}`: the event has no source.{f}",
                                self.text
                            ))
                        }
                    },
                }
            }
            check_identifier(&self.text, &out)?;
            Ok(out)
        };
        Ok(TableName {
            schema: self.schema.as_deref().map(render).transpose()?,
            name: render(&self.table)?,
        })
    }
}

impl std::fmt::Display for TableTemplate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The pieces of each dot-separated part of a template.
fn name_parts(text: &str) -> Result<Vec<Vec<Piece>>, String> {
    let mut parts: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut rest = text;
    while !rest.is_empty() {
        if let Some(after) = rest.strip_prefix("${") {
            let end = after
                .find('}')
                .ok_or_else(|| format!("`{text}`: `${{` without `}}`"))?;
            let piece = placeholder(text, &after[..end])?;
            parts.last_mut().expect("a part").push(piece);
            rest = &after[end + 1..];
        } else if let Some(after) = rest.strip_prefix('.') {
            parts.push(Vec::new());
            rest = after;
        } else {
            let c = rest.chars().next().expect("not empty");
            let part = parts.last_mut().expect("a part");
            match part.last_mut() {
                Some(Piece::Text(s)) => s.push(c),
                _ => part.push(Piece::Text(c.to_string())),
            }
            rest = &rest[c.len_utf8()..];
        }
    }
    Ok(parts)
}

fn placeholder(text: &str, name: &str) -> Result<Piece, String> {
    match name.strip_prefix("source.") {
        _ if name == "topic" => Ok(Piece::Topic),
        Some(field) if !field.is_empty() => Ok(Piece::Source(field.to_string())),
        _ => Err(format!(
            "`{text}`: unknown placeholder `${{{name}}}` (use ${{topic}} or ${{source.<field>}})"
        )),
    }
}

/// A rendered name must be one Postgres holds as it is.
fn check_identifier(template: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("table `{template}` renders an empty name"));
    }
    if name.contains('\0') {
        return Err(format!("table `{template}` renders a name with a NUL byte"));
    }
    if name.len() > 63 {
        return Err(format!(
            "table `{template}` renders `{name}`, longer than Postgres's 63-byte identifiers \
             (Postgres would truncate it, possibly into another table's name)"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn render(t: &str, topic: &str, source: Value) -> Result<TableName, String> {
        TableTemplate::parse(t)
            .unwrap()
            .unwrap()
            .render(topic, Some(&source))
    }

    #[test]
    fn placeholders_render_names_exactly() {
        let src = serde_json::json!({"schema": "Sales", "table": "order lines", "db": "shop"});
        let t = render("replica.${source.table}", "x", src.clone()).unwrap();
        assert_eq!(t.quoted(), r#""replica"."order lines""#);
        let t = render("${source.schema}.${source.table}", "x", src.clone()).unwrap();
        assert_eq!(t.quoted(), r#""Sales"."order lines""#);
        // A topic's dots stay inside the one identifier it fills.
        let t = render("${topic}", "shop.public.orders", src.clone()).unwrap();
        assert_eq!(t.quoted(), r#""shop.public.orders""#);
        let t = render("raw_${source.db}_${source.table}", "x", src).unwrap();
        assert_eq!(t.quoted(), r#""raw_shop_order lines""#);
        assert!(TableTemplate::parse("orders").unwrap().is_none());
    }

    #[test]
    fn names_postgres_cannot_hold_are_refused() {
        let long = "x".repeat(60);
        let e = render(
            "${source.table}_copy",
            "t",
            serde_json::json!({"table": long}),
        )
        .unwrap_err();
        assert!(e.contains("63-byte"), "{e}");
        let e = render("${source.table}", "t", serde_json::json!({})).unwrap_err();
        assert!(e.contains("source.table"), "{e}");
        for bad in ["${nope}", "a.b.${topic}", "${topic", ".${topic}"] {
            assert!(TableTemplate::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn a_dollar_without_a_brace_is_text() {
        let t = render("cost$${topic}", "t1", serde_json::json!({})).unwrap();
        assert_eq!(t.name, "cost$t1");
    }
}
