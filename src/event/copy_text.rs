//! Rows in COPY's text format (pure). Typed rows are loaded with `COPY …
//! FROM STDIN` into a staging table with the target's column types, so
//! Postgres converts each field with the type's own input function — the
//! same conversion `jsonb_to_record` applies to a JSON value, without parsing
//! JSON on the server (see docs/performance.md).
//!
//! A JSON value becomes the text `jsonb_to_record` would hand the input
//! function: strings as they are, numbers and booleans as their JSON text,
//! objects as JSON text, `null` as NULL; for array columns a JSON array
//! becomes an array literal (`{"1","2"}`), for json/jsonb columns the value's
//! JSON text.

use serde_json::Value;

pub use crate::config::columns::ColumnKind;

/// COPY's NULL.
pub const NULL: &str = "\\N";

/// Appends `s` escaped for COPY's text format.
pub fn push_escaped(out: &mut String, s: &str) {
    // Whole runs between special bytes are copied at once (payloads are
    // mostly plain): the specials are ASCII, so slicing at them keeps UTF-8
    // boundaries.
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'\\' => "\\\\",
            b'\t' => "\\t",
            b'\n' => "\\n",
            b'\r' => "\\r",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        out.push_str(escaped);
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

/// Appends an integer field without a temporary string.
pub fn push_int(out: &mut String, v: impl Into<i128>) {
    let v: i128 = v.into();
    use std::fmt::Write;
    let _ = write!(out, "{v}");
}

/// Appends the field for JSON value `v` in a column of `kind`. `raw` is the
/// value's JSON source text when it is at hand (`@payload`), which saves
/// serializing it again.
pub fn push_field(out: &mut String, v: &Value, kind: ColumnKind, raw: Option<&str>) {
    match (v, kind) {
        (Value::Null, _) => out.push_str(NULL),
        (Value::String(s), ColumnKind::Scalar | ColumnKind::Array | ColumnKind::Structured) => {
            push_escaped(out, s)
        }
        (Value::Array(items), ColumnKind::Array) => {
            let mut literal = String::with_capacity(16 * items.len() + 2);
            array_literal(items, &mut literal);
            push_escaped(out, &literal);
        }
        (Value::Number(n), ColumnKind::Scalar | ColumnKind::Array) => {
            use std::fmt::Write;
            let _ = write!(out, "{n}");
        }
        (Value::Bool(b), ColumnKind::Scalar | ColumnKind::Array) => {
            out.push_str(if *b { "true" } else { "false" })
        }
        (v, _) => match raw {
            Some(text) => push_escaped(out, text),
            None => push_escaped(out, &v.to_string()),
        },
    }
}

/// A JSON array as an array literal: every element quoted (the input of any
/// element type accepts a quoted form), nested arrays nested, null as NULL.
fn array_literal(items: &[Value], out: &mut String) {
    out.push('{');
    for (n, item) in items.iter().enumerate() {
        if n > 0 {
            out.push(',');
        }
        match item {
            Value::Null => out.push_str("NULL"),
            Value::Array(inner) => array_literal(inner, out),
            Value::String(s) => push_quoted(out, s),
            other => push_quoted(out, &other.to_string()),
        }
    }
    out.push('}');
}

/// Appends `s` as a quoted element of an array or record literal (`"` and
/// `\` escaped): the form every element or field type's input accepts.
pub fn push_quoted(out: &mut String, s: &str) {
    out.push('"');
    for ch in s.chars() {
        if ch == '"' || ch == '\\' {
            out.push('\\');
        }
        out.push(ch);
    }
    out.push('"');
}

/// The fields of one COPY text line, unescaped (`None` for NULL): what each
/// column's input function received (to explain a rejected row).
pub fn split_line(line: &str) -> Vec<Option<String>> {
    line.trim_end_matches('\n')
        .split('\t')
        .map(|f| (f != NULL).then(|| unescape(f)))
        .collect()
}

fn unescape(f: &str) -> String {
    let mut out = String::with_capacity(f.len());
    let mut chars = f.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn field(v: Value, kind: ColumnKind) -> String {
        let mut s = String::new();
        push_field(&mut s, &v, kind, None);
        s
    }

    #[test]
    fn values_become_the_text_jsonb_to_record_would_give() {
        assert_eq!(
            field(json!("a\tb\\c\nd"), ColumnKind::Scalar),
            "a\\tb\\\\c\\nd"
        );
        let number: Value = serde_json::from_str("1.50").unwrap();
        assert_eq!(
            field(number, ColumnKind::Scalar),
            "1.50",
            "the number's text is kept"
        );
        assert_eq!(field(json!(true), ColumnKind::Scalar), "true");
        assert_eq!(field(json!(null), ColumnKind::Json), "\\N");
        assert_eq!(field(json!("x"), ColumnKind::Json), "\"x\"");
        assert_eq!(
            field(json!({"a": [1, "b\\"]}), ColumnKind::Json),
            r#"{"a":[1,"b\\\\"]}"#
        );
        assert_eq!(field(json!({"x": 1}), ColumnKind::Scalar), r#"{"x":1}"#);
    }

    #[test]
    fn escaping_keeps_multibyte_text_and_escapes_only_the_four_specials() {
        let mut s = String::new();
        push_escaped(&mut s, "é\\ü\tß\n✓\r€");
        assert_eq!(s, "é\\\\ü\\tß\\n✓\\r€");
        s.clear();
        push_escaped(&mut s, "plain ünïcode");
        assert_eq!(s, "plain ünïcode");
        s.clear();
        push_escaped(&mut s, "\\");
        assert_eq!(s, "\\\\");
    }

    #[test]
    fn arrays_become_literals() {
        assert_eq!(
            field(json!([1, "x", null]), ColumnKind::Array),
            r#"{"1","x",NULL}"#
        );
        assert_eq!(
            field(json!([[1, 2], [3]]), ColumnKind::Array),
            r#"{{"1","2"},{"3"}}"#
        );
        // A quote and a backslash inside an element: escaped for the array
        // literal, then for COPY.
        assert_eq!(
            field(json!(["a\"b\\c"]), ColumnKind::Array),
            r#"{"a\\"b\\\\c"}"#
        );
        assert_eq!(field(json!("{1,2}"), ColumnKind::Array), "{1,2}");
    }

    #[test]
    fn lines_split_back_into_what_the_input_functions_got() {
        let mut line = String::new();
        push_field(&mut line, &json!("a\tb"), ColumnKind::Scalar, None);
        line.push('\t');
        push_field(&mut line, &json!(null), ColumnKind::Scalar, None);
        line.push('\t');
        push_field(&mut line, &json!([1, "x"]), ColumnKind::Array, None);
        assert_eq!(
            split_line(&line),
            vec![Some("a\tb".into()), None, Some(r#"{"1","x"}"#.into())]
        );
    }
}
