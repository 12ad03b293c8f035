//! Topic and table names as the Connect sinks form them: the topics after
//! `RegexRouter`s, `topics.regex` as a subscription, the `${…}`
//! placeholders of a table name format.

/// What opens a placeholder in a table name format (`${topic}`, `${source.table}`).
pub(super) const PLACEHOLDER: &str = "${";
/// What opens a placeholder of the change event's source block.
pub(super) const SOURCE_PLACEHOLDER: &str = "${source.";
/// A placeholder's braces, as constants so that no function holds a brace
/// that does not pair with another.
const OPEN: char = '{';
const CLOSE: char = '}';

/// The topic after the sink's `RegexRouter`s (Connect's semantics: the
/// whole topic must match; the replacement's `$n`/`${name}` are groups).
pub(super) fn route_topic(topic: &str, routers: &[(regex::Regex, String)]) -> String {
    let mut t = topic.to_string();
    for (re, replacement) in routers {
        if let Some(caps) = re.captures(&t) {
            t = java_replacement(&caps, replacement);
        }
    }
    t
}

/// Expands a `java.util.regex.Matcher` replacement string.
fn java_replacement(caps: &regex::Captures<'_>, replacement: &str) -> String {
    let mut out = String::new();
    let mut chars = replacement.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    out.push(n);
                }
            }
            '$' if chars.peek() == Some(&OPEN) => {
                chars.next();
                let name: String = chars.by_ref().take_while(|c| *c != CLOSE).collect();
                out.push_str(caps.name(&name).map_or("", |m| m.as_str()));
            }
            '$' if chars.peek().is_some_and(|c| c.is_ascii_digit()) => {
                // Java takes further digits while the group number stays valid.
                let mut n = chars.next().and_then(|c| c.to_digit(10)).unwrap_or(0) as usize;
                while let Some(d) = chars.peek().and_then(|c| c.to_digit(10)) {
                    let next = n * 10 + d as usize;
                    if next >= caps.len() {
                        break;
                    }
                    n = next;
                    chars.next();
                }
                out.push_str(caps.get(n).map_or("", |m| m.as_str()));
            }
            c => out.push(c),
        }
    }
    out
}

/// Connect matches `topics.regex` against the whole topic; the route's
/// `^…` pattern is matched from the start, so it is anchored at both ends
/// (librdkafka subscribes with the same text).
pub(super) fn subscription_regex(re: &str) -> String {
    let core = re.strip_prefix('^').unwrap_or(re);
    let core = match core.strip_suffix('$') {
        Some(c) if !c.ends_with('\\') => c,
        _ => core,
    };
    if core.contains('|') {
        format!("^({core})$")
    } else if core.ends_with(".*") && !core.ends_with("\\.*") {
        format!("^{core}")
    } else {
        format!("^{core}$")
    }
}

/// Lower-cases the literal text of a name, leaving `${…}` placeholders.
pub(super) fn fold_literal_case(s: &str) -> String {
    let mut out = String::new();
    let mut rest = s;
    while let Some(i) = rest.find(PLACEHOLDER) {
        out.push_str(&rest[..i].to_lowercase());
        match rest[i..].find(CLOSE) {
            Some(j) => {
                out.push_str(&rest[i..i + j + 1]);
                rest = &rest[i + j + 1..];
            }
            None => {
                out.push_str(&rest[i..]);
                rest = "";
            }
        }
    }
    out.push_str(&rest.to_lowercase());
    out
}

/// The dot-separated parts of a name, dots inside `${…}` not separating.
pub(super) fn split_outside_placeholders(s: &str) -> Vec<String> {
    let mut parts = vec![String::new()];
    let mut depth = 0;
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '$' if chars.peek() == Some(&OPEN) => {
                depth += 1;
                parts.last_mut().expect("a part").push(c);
            }
            CLOSE if depth > 0 => {
                depth -= 1;
                parts.last_mut().expect("a part").push(c);
            }
            '.' if depth == 0 => parts.push(String::new()),
            c => parts.last_mut().expect("a part").push(c),
        }
    }
    parts
}

/// A field name as a JSON pointer token (RFC 6901).
pub(super) fn pointer_escape(s: &str) -> String {
    s.replace('~', "~0").replace('/', "~1")
}
