//! Event identity: SHA-256 over a canonical form of the JSON payload.
//!
//! The canonical form follows RFC 8785 (JCS) with one deliberate deviation:
//!
//! * objects: members sorted by the UTF-16 code units of their names, no
//!   whitespace; arrays keep their order;
//! * strings: only `"` `\` and control characters are escaped (`\b \f \n \r \t`,
//!   else `\u00xx` lowercase); everything else is written as raw UTF-8, so
//!   `"\u00e9"` and `"é"` are the same event;
//! * numbers: non-integers (a fraction or exponent in the source text) are
//!   written the way ECMAScript prints an IEEE-754 double (`1.0` → `1`,
//!   `1e2` → `100`, `1E21` → `1e+21`, `-0.0` → `0`), as JCS requires;
//! * **deviation**: numbers written as plain integers keep all their digits
//!   (`-0` → `0`). JCS would round integers above 2^53 to a double, which makes
//!   two different 64-bit IDs hash alike and be dropped as "duplicates". Within
//!   ±2^53 both rules agree (`1`, `1.0` and `1e0` are the same event).
//!   Numbers that overflow a double keep their source text, lower-cased.
//!
//! The digest covers a version tag first ([`HASH_VERSION_TAG`]) so the scheme
//! can change without silently colliding with stored hashes. Test vectors:
//! `docs/hash-vectors.json`.

use serde_json::{Number, Value};
use sha2::{Digest, Sha256};

use crate::types::EventHash;

/// Prefix of every digest: names the canonicalisation scheme.
pub const HASH_VERSION_TAG: &[u8] = b"kafka-pg-sink/jcs-v1\n";

/// Hash of a JSON value (already stripped of excluded fields).
pub fn hash_value(value: &Value) -> EventHash {
    let mut buf = Vec::with_capacity(256);
    write_canonical(value, &mut buf);
    hash_canonical(&buf)
}

/// Hash of canonical bytes produced by [`write_canonical`].
pub fn hash_canonical(canonical: &[u8]) -> EventHash {
    let mut h = Sha256::new();
    h.update(HASH_VERSION_TAG);
    h.update(canonical);
    EventHash(h.finalize().into())
}

/// The canonical text of a value, for tests, docs and key rendering.
pub fn canonical_string(value: &Value) -> String {
    let mut buf = Vec::new();
    write_canonical(value, &mut buf);
    String::from_utf8(buf).expect("canonical JSON is UTF-8")
}

/// Removes each pointer's target from `value` (missing targets are ignored:
/// a volatile field is often optional). Array elements are removed by index.
pub fn remove_pointers(value: &mut Value, pointers: &[String]) {
    for p in pointers {
        let Some((parent, last)) = p.rsplit_once('/') else {
            continue;
        };
        let last = unescape_token(last);
        match value.pointer_mut(parent) {
            Some(Value::Object(map)) => {
                map.remove(&last);
            }
            Some(Value::Array(items)) => {
                if let Ok(i) = last.parse::<usize>() {
                    if i < items.len() {
                        items.remove(i);
                    }
                }
            }
            _ => {}
        }
    }
}

/// A JSON value's kind with its article, for error messages ("an object").
pub fn json_kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

fn unescape_token(t: &str) -> String {
    t.replace("~1", "/").replace("~0", "~")
}

/// Writes the canonical form of `value` into `out`.
pub fn write_canonical(value: &Value, out: &mut Vec<u8>) {
    match value {
        Value::Null => out.extend_from_slice(b"null"),
        Value::Bool(true) => out.extend_from_slice(b"true"),
        Value::Bool(false) => out.extend_from_slice(b"false"),
        Value::Number(n) => write_number(n, out),
        Value::String(s) => write_string(s, out),
        Value::Array(items) => {
            out.push(b'[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_canonical(item, out);
            }
            out.push(b']');
        }
        Value::Object(map) => {
            let mut members: Vec<(&String, &Value)> = map.iter().collect();
            // serde_json's map is ordered by UTF-8 bytes; JCS orders by UTF-16
            // code units. They differ only for names mixing astral characters
            // with U+E000..U+FFFF, so sort only when that can matter.
            if members
                .iter()
                .any(|(k, _)| k.chars().any(|c| c as u32 >= 0xE000))
            {
                members.sort_by(|a, b| a.0.encode_utf16().cmp(b.0.encode_utf16()));
            }
            out.push(b'{');
            for (i, (k, v)) in members.into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                write_string(k, out);
                out.push(b':');
                write_canonical(v, out);
            }
            out.push(b'}');
        }
    }
}

fn write_number(n: &Number, out: &mut Vec<u8>) {
    // With serde_json's `arbitrary_precision`, Display yields the source text.
    let text = n.to_string();
    if is_plain_integer(&text) {
        if text == "-0" {
            out.push(b'0');
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        return;
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            let mut b = ryu_js::Buffer::new();
            out.extend_from_slice(b.format(f).as_bytes());
        }
        _ => out.extend_from_slice(text.to_ascii_lowercase().as_bytes()),
    }
}

fn is_plain_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

fn write_string(s: &str, out: &mut Vec<u8>) {
    out.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => b"",
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        if esc.is_empty() {
            out.extend_from_slice(format!("\\u{b:04x}").as_bytes());
        } else {
            out.extend_from_slice(esc);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(serde::Deserialize)]
    struct Vector {
        name: String,
        input: String,
        #[serde(default)]
        exclude: Vec<String>,
        canonical: String,
        sha256: String,
    }

    fn vectors() -> Vec<Vector> {
        serde_json::from_str(include_str!("../docs/hash-vectors.json")).unwrap()
    }

    #[test]
    fn published_vectors_hold() {
        let vs = vectors();
        assert!(vs.len() >= 15);
        for v in vs {
            let mut value: Value = serde_json::from_str(&v.input).unwrap();
            remove_pointers(&mut value, &v.exclude);
            assert_eq!(canonical_string(&value), v.canonical, "vector {}", v.name);
            assert_eq!(
                hash_value(&value).to_string(),
                v.sha256,
                "vector {}",
                v.name
            );
        }
    }

    #[test]
    fn vectors_that_share_a_canonical_form_share_a_hash() {
        let vs = vectors();
        for a in &vs {
            for b in &vs {
                assert_eq!(
                    a.canonical == b.canonical,
                    a.sha256 == b.sha256,
                    "{} vs {}",
                    a.name,
                    b.name
                );
            }
        }
    }

    #[test]
    fn big_integers_do_not_collide() {
        let a: Value = serde_json::from_str("9007199254740993").unwrap();
        let b: Value = serde_json::from_str("9007199254740992").unwrap();
        assert_ne!(hash_value(&a), hash_value(&b));
    }

    #[test]
    fn tag_is_part_of_the_digest() {
        let v: Value = serde_json::from_str("{}").unwrap();
        let plain: [u8; 32] = Sha256::digest(b"{}").into();
        assert_ne!(hash_value(&v).0, plain);
    }
}
