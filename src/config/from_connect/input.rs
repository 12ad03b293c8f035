//! Reading a connector's configuration: the JSON shapes Connect's REST API
//! shows, or a Java `.properties` text, into its name, kind and options.

use std::collections::BTreeMap;

use serde_json::Value;

use super::{SinkKind, CONFLUENT_JDBC_SINK, DEBEZIUM_JDBC_SINK};

/// What a JSON object starts with. A named constant, so that no function
/// holds a brace that does not pair with another.
const OBJECT_START: char = '{';

/// A connector configuration from a file's text: JSON when the text is an
/// object, otherwise a `.properties` text (see [`parse_properties`]).
pub fn parse_connector(text: &str) -> Result<Value, String> {
    if text.trim_start().starts_with(OBJECT_START) {
        serde_json::from_str(text).map_err(|e| format!("not valid JSON ({e})"))
    } else {
        Ok(parse_properties(text))
    }
}

/// A Java `.properties` text as the flat JSON map [`super::translate`] reads
/// (`key=value` or `key: value` lines, `#`/`!` comments, `\` continuations
/// and escapes).
pub fn parse_properties(text: &str) -> Value {
    let mut map = serde_json::Map::new();
    let mut logical = String::new();
    for raw in text.lines() {
        let line = raw.trim_start();
        if logical.is_empty() && (line.is_empty() || line.starts_with('#') || line.starts_with('!'))
        {
            continue;
        }
        // An odd number of trailing backslashes continues the line.
        let trailing = line.chars().rev().take_while(|c| *c == '\\').count();
        if trailing % 2 == 1 {
            logical.push_str(&line[..line.len() - 1]);
            continue;
        }
        logical.push_str(line);
        let (k, v) = split_property(&logical);
        map.insert(k, Value::String(v));
        logical.clear();
    }
    if !logical.is_empty() {
        let (k, v) = split_property(&logical);
        map.insert(k, Value::String(v));
    }
    Value::Object(map)
}

fn split_property(line: &str) -> (String, String) {
    let mut key = String::new();
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    key.push(unescape(n));
                }
            }
            '=' | ':' => break,
            c if c.is_whitespace() => {
                // `key value`, or whitespace before the separator.
                while chars.peek().is_some_and(|c| c.is_whitespace()) {
                    chars.next();
                }
                if matches!(chars.peek(), Some('=') | Some(':')) {
                    chars.next();
                }
                break;
            }
            c => key.push(c),
        }
    }
    while chars.peek().is_some_and(|c| c.is_whitespace()) {
        chars.next();
    }
    let mut value = String::new();
    while let Some(c) = chars.next() {
        if c == '\\' {
            if let Some(n) = chars.next() {
                value.push(unescape(n));
            }
        } else {
            value.push(c);
        }
    }
    (key, value)
}

fn unescape(c: char) -> char {
    match c {
        't' => '\t',
        'n' => '\n',
        'r' => '\r',
        'f' => '\u{c}',
        c => c,
    }
}

/// The connector's name, kind and options (values as strings).
pub(super) struct Input {
    pub(super) name: Option<String>,
    pub(super) kind: SinkKind,
    pub(super) options: BTreeMap<String, String>,
}

impl Input {
    pub(super) fn read(v: &Value) -> Result<Input, String> {
        let Some(obj) = v.as_object() else {
            return Err("not a connector configuration: expected a JSON object".into());
        };
        // `GET /connectors?expand=info`: `{"<name>": {"info": {…}, …}}`.
        if obj.len() == 1 {
            if let Some(info) = obj.values().next().and_then(|e| e.get("info")) {
                return Input::read(info);
            }
        }
        let (config, outer_name) = match obj.get("config") {
            Some(Value::Object(c)) => (c, obj.get("name").and_then(Value::as_str)),
            Some(_) => return Err("`config` is not an object".into()),
            None => (obj, None),
        };
        let options = string_options(config);
        let name = outer_name
            .map(str::to_string)
            .or_else(|| options.get("name").cloned())
            .filter(|n| !n.trim().is_empty());
        let kind = sink_kind(&options)?;
        check_url(&options)?;
        check_topics(&options)?;
        Ok(Input {
            name,
            kind,
            options,
        })
    }
}

/// The options with their values as strings; a `null` is not set.
fn string_options(config: &serde_json::Map<String, Value>) -> BTreeMap<String, String> {
    let mut options = BTreeMap::new();
    for (k, v) in config {
        let s = match v {
            Value::Null => continue,
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            other => other.to_string(),
        };
        options.insert(k.clone(), s);
    }
    options
}

fn sink_kind(options: &BTreeMap<String, String>) -> Result<SinkKind, String> {
    match options.get("connector.class").map(|s| s.trim()) {
        Some(DEBEZIUM_JDBC_SINK) => Ok(SinkKind::Debezium),
        Some(CONFLUENT_JDBC_SINK) => Ok(SinkKind::Confluent),
        Some(other) => Err(format!(
            "connector.class `{other}` is not a JDBC sink connector: kafka-pg-sink \
             translates {DEBEZIUM_JDBC_SINK} and {CONFLUENT_JDBC_SINK}"
        )),
        None => Err(format!(
            "no connector.class: not a Kafka Connect connector configuration \
             (expected {DEBEZIUM_JDBC_SINK} or {CONFLUENT_JDBC_SINK})"
        )),
    }
}

/// The connector writes PostgreSQL.
fn check_url(options: &BTreeMap<String, String>) -> Result<(), String> {
    match options.get("connection.url").map(|s| s.trim()) {
        None | Some("") => Err("connection.url is missing".into()),
        Some(u) if !u.starts_with("jdbc:postgresql:") => {
            let scheme: String = u.split(':').take(2).collect::<Vec<_>>().join(":");
            Err(format!(
                "connection.url `{scheme}:…` is not PostgreSQL: kafka-pg-sink writes \
                 PostgreSQL only (jdbc:postgresql://…)"
            ))
        }
        Some(_) => Ok(()),
    }
}

/// Exactly one of `topics` and `topics.regex` is set, as Connect requires.
fn check_topics(options: &BTreeMap<String, String>) -> Result<(), String> {
    let has = |k: &str| options.get(k).is_some_and(|v| !v.trim().is_empty());
    match (has("topics"), has("topics.regex")) {
        (false, false) => Err("neither topics nor topics.regex is set".into()),
        (true, true) => Err("both topics and topics.regex are set (Connect refuses that)".into()),
        _ => Ok(()),
    }
}
