//! JSON pointers (RFC 6901), parsed once. `serde_json::Value::pointer`
//! re-splits and unescapes the pointer text (two allocations per token) on
//! every call; a route evaluates its pointers on every message.

use std::fmt;

use crate::json::hash::{JsonKind, JsonTree};

#[derive(Clone, PartialEq, Eq)]
pub struct JsonPointer {
    text: String,
    tokens: Vec<String>,
}

impl JsonPointer {
    /// Parses `/a/b~1c` (a text not starting with `/` addresses the whole
    /// value only when empty; config validation refuses other forms).
    pub fn parse(text: &str) -> JsonPointer {
        let tokens = text
            .split('/')
            .skip(1)
            .map(|t| t.replace("~1", "/").replace("~0", "~"))
            .collect();
        JsonPointer {
            text: text.to_string(),
            tokens,
        }
    }

    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// The value the pointer addresses, as `Value::pointer` finds it.
    pub fn get<'v, T: JsonTree>(&self, value: &'v T) -> Option<&'v T> {
        if !self.text.is_empty() && !self.text.starts_with('/') {
            return None;
        }
        self.tokens
            .iter()
            .try_fold(value, |target, token| match target.kind() {
                JsonKind::Object => target.member(token),
                JsonKind::Array => index(token).and_then(|i| target.element(i)),
                _ => None,
            })
    }
}

/// An array index token: decimal digits, no leading zero (RFC 6901).
fn index(token: &str) -> Option<usize> {
    if token.starts_with('+') || (token.starts_with('0') && token.len() != 1) {
        return None;
    }
    token.parse().ok()
}

impl fmt::Display for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for JsonPointer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn finds_what_value_pointer_finds() {
        let v: Value = serde_json::from_str(r#"{"a":{"b/c":[10,{"d~e":1}]},"":2,"01":3}"#).unwrap();
        for p in [
            "",
            "/a",
            "/a/b~1c",
            "/a/b~1c/0",
            "/a/b~1c/1/d~0e",
            "/",
            "/01",
            "/a/b~1c/01",
            "/x",
            "/a/b~1c/9",
            "nope",
        ] {
            assert_eq!(JsonPointer::parse(p).get(&v), v.pointer(p), "{p}");
        }
    }
}
