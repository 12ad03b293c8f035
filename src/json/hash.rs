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
pub fn hash_value<T: JsonTree + ?Sized>(value: &T) -> EventHash {
    let mut buf = Vec::with_capacity(256);
    value.write_canonical(&mut buf);
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
pub fn canonical_string<T: JsonTree + ?Sized>(value: &T) -> String {
    let mut buf = Vec::new();
    value.write_canonical(&mut buf);
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
pub fn json_kind<T: JsonTree + ?Sized>(v: &T) -> &'static str {
    match v.kind() {
        JsonKind::Null => "null",
        JsonKind::Bool => "a boolean",
        JsonKind::Number => "a number",
        JsonKind::String => "a string",
        JsonKind::Array => "an array",
        JsonKind::Object => "an object",
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonKind {
    Null,
    Bool,
    Number,
    String,
    Array,
    Object,
}

/// A parsed JSON tree keys, versions and hashes are read from: serde_json's
/// `Value`, or the tree of module `json::borrowed`, which borrows from the
/// payload. Key and version code is written once against this trait; the
/// two canonical writers are compared by tests.
pub trait JsonTree {
    fn kind(&self) -> JsonKind;
    /// An object's member; the last one when the text repeats the name, as
    /// serde_json's map keeps it.
    fn member(&self, name: &str) -> Option<&Self>;
    /// An array's element.
    fn element(&self, index: usize) -> Option<&Self>;
    /// A string's (unescaped) text.
    fn as_str(&self) -> Option<&str>;
    /// A number that is an integer within `i64` (`Number::as_i64`).
    fn as_i64(&self) -> Option<i64>;
    /// Appends the canonical form (module docs) to `out`.
    fn write_canonical(&self, out: &mut Vec<u8>);
}

impl JsonTree for Value {
    fn kind(&self) -> JsonKind {
        match self {
            Value::Null => JsonKind::Null,
            Value::Bool(_) => JsonKind::Bool,
            Value::Number(_) => JsonKind::Number,
            Value::String(_) => JsonKind::String,
            Value::Array(_) => JsonKind::Array,
            Value::Object(_) => JsonKind::Object,
        }
    }
    fn member(&self, name: &str) -> Option<&Value> {
        self.as_object()?.get(name)
    }
    fn element(&self, index: usize) -> Option<&Value> {
        self.as_array()?.get(index)
    }
    fn as_str(&self) -> Option<&str> {
        Value::as_str(self)
    }
    fn as_i64(&self) -> Option<i64> {
        Value::as_i64(self)
    }
    fn write_canonical(&self, out: &mut Vec<u8>) {
        write_canonical(self, out)
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
        Value::Array(items) => write_array(items, out),
        Value::Object(map) => {
            // serde_json's map is ordered by UTF-8 bytes; JCS orders by UTF-16
            // code units. They differ only for names mixing astral characters
            // with U+E000..U+FFFF (UTF-8 lead bytes 0xEE and up), so sort only
            // when that can matter.
            let members = map.iter().map(|(k, v)| (k.as_str(), v));
            if map.keys().any(|k| utf16_order_differs(k)) {
                let mut sorted: Vec<(&str, &Value)> = members.collect();
                sorted.sort_by(|a, b| utf16_cmp(a.0, b.0));
                write_members(sorted, out);
            } else {
                write_members(members, out);
            }
        }
    }
}

/// True when a member name's UTF-16 order can differ from its UTF-8 byte
/// order: it holds a character at or above U+E000 (lead byte 0xEE and up).
pub(crate) fn utf16_order_differs(name: &str) -> bool {
    name.bytes().any(|b| b >= 0xEE)
}

/// JCS member order: by UTF-16 code units.
pub(crate) fn utf16_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    a.encode_utf16().cmp(b.encode_utf16())
}

/// `[a,b,…]`, each element in canonical form.
pub(crate) fn write_array<'a, T: JsonTree + 'a>(
    items: impl IntoIterator<Item = &'a T>,
    out: &mut Vec<u8>,
) {
    out.push(b'[');
    for (i, item) in items.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        item.write_canonical(out);
    }
    out.push(b']');
}

/// `{"name":value,…}` from members already in JCS order, each name once.
pub(crate) fn write_members<'a, T: JsonTree + 'a>(
    members: impl IntoIterator<Item = (&'a str, &'a T)>,
    out: &mut Vec<u8>,
) {
    out.push(b'{');
    for (i, (k, v)) in members.into_iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        write_string(k, out);
        out.push(b':');
        v.write_canonical(out);
    }
    out.push(b'}');
}

pub(crate) fn write_number(n: &Number, out: &mut Vec<u8>) {
    // With serde_json's `arbitrary_precision`, this is the source text.
    let text = n.as_str();
    if is_plain_integer(text) {
        if text == "-0" {
            out.push(b'0');
        } else {
            out.extend_from_slice(text.as_bytes());
        }
        return;
    }
    if is_ecmascript_fraction(text) {
        out.extend_from_slice(text.as_bytes());
        return;
    }
    write_non_integer(text, out);
}

/// Whether a number's source text is a plain fraction that ECMAScript prints
/// exactly as written (`12.5`, `-0.05`), so parsing and printing a double can
/// be skipped: no exponent; a last digit other than `0` (so no trailing
/// zeros, and not zero); at most 15 significant digits (a double then
/// round-trips those digits and no shorter form parses to it); and below 1,
/// at most five zeros after the point (from 1e-7 down ECMAScript writes an
/// exponent). Tested against [`write_non_integer`].
fn is_ecmascript_fraction(text: &str) -> bool {
    let unsigned = text.strip_prefix('-').unwrap_or(text);
    let Some((int, frac)) = unsigned.split_once('.') else {
        return false;
    };
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if !digits(int) || !digits(frac) || frac.ends_with('0') {
        return false;
    }
    let zeros_after_point = match int {
        "0" => frac.bytes().take_while(|&b| b == b'0').count(),
        _ if int.starts_with('0') => return false,
        _ => 0,
    };
    zeros_after_point <= 5 && significant_digits(text) <= 15
}

/// A number with a fraction or an exponent, in ECMAScript's form (module
/// docs).
fn write_non_integer(text: &str, out: &mut Vec<u8>) {
    // More significant digits than a double holds: printing through a double
    // would make distinct values (12345678901234567.89 and …567.90 in a
    // numeric column) hash alike. Such numbers keep every digit, in
    // ECMAScript's notation; up to 15 digits a double round-trips exactly, so
    // the JCS form below is the same value.
    if significant_digits(text) > 15 {
        if let Some(exact) = Decimal::parse(text) {
            out.extend_from_slice(exact.to_ecmascript().as_bytes());
            return;
        }
    }
    match text.parse::<f64>() {
        Ok(f) if f.is_finite() => {
            let mut b = ryu_js::Buffer::new();
            out.extend_from_slice(b.format(f).as_bytes());
        }
        _ => out.extend_from_slice(text.to_ascii_lowercase().as_bytes()),
    }
}

/// How many digits of a number's mantissa lie between its first and last
/// non-zero digit (what [`Decimal::parse`] keeps), without allocating: most
/// numbers have few, and only those with more than 15 need the exact path.
fn significant_digits(text: &str) -> usize {
    let mantissa = text.split(['e', 'E']).next().unwrap_or(text);
    let digits = || mantissa.bytes().filter(u8::is_ascii_digit);
    let lead = digits().take_while(|&b| b == b'0').count();
    let total = digits().count();
    let trail = digits().rev().take_while(|&b| b == b'0').count();
    total.saturating_sub(lead + trail)
}

/// A JSON number as `±digits × 10^exponent`, digits without leading or
/// trailing zeros.
struct Decimal {
    negative: bool,
    digits: String,
    exponent: i64,
}

impl Decimal {
    fn parse(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exp) = match rest.find(['e', 'E']) {
            Some(i) => (&rest[..i], rest[i + 1..].parse::<i64>().ok()?),
            None => (rest, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|b| b.is_ascii_digit()) {
            return None;
        }
        let all = format!("{int}{frac}");
        let trimmed = all.trim_start_matches('0');
        let digits = trimmed.trim_end_matches('0');
        let exponent = exp - frac.len() as i64 + (trimmed.len() - digits.len()) as i64;
        Some(Decimal {
            negative: negative && !digits.is_empty(),
            digits: digits.to_string(),
            exponent,
        })
    }

    /// ECMAScript's Number::toString layout for these exact digits.
    fn to_ecmascript(&self) -> String {
        let s = &self.digits;
        if s.is_empty() {
            return "0".into();
        }
        let k = s.len() as i64;
        let n = k + self.exponent;
        let body = if k <= n && n <= 21 {
            format!("{s}{}", "0".repeat((n - k) as usize))
        } else if 0 < n && n <= 21 {
            format!("{}.{}", &s[..n as usize], &s[n as usize..])
        } else if -6 < n && n <= 0 {
            format!("0.{}{s}", "0".repeat((-n) as usize))
        } else {
            let e = n - 1;
            let sign = if e < 0 { '-' } else { '+' };
            let mantissa = if k == 1 {
                s.clone()
            } else {
                format!("{}.{}", &s[..1], &s[1..])
            };
            format!("{mantissa}e{sign}{}", e.abs())
        };
        if self.negative {
            format!("-{body}")
        } else {
            body
        }
    }
}

fn is_plain_integer(s: &str) -> bool {
    let digits = s.strip_prefix('-').unwrap_or(s);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

pub(crate) fn write_string(s: &str, out: &mut Vec<u8>) {
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
        serde_json::from_str(include_str!("../../docs/hash-vectors.json")).unwrap()
    }

    #[test]
    fn numbers_beyond_double_precision_keep_their_digits() {
        let canon = |t: &str| canonical_string(&serde_json::from_str::<Value>(t).unwrap());
        assert_eq!(canon("12345678901234567.89"), "12345678901234567.89");
        assert_ne!(canon("12345678901234567.89"), canon("12345678901234567.90"));
        assert_eq!(canon("12345678901234567.90"), "12345678901234567.9");
        assert_eq!(canon("0.10000000000000000001"), "0.10000000000000000001");
        assert_eq!(
            canon("-1.2345678901234567890e30"),
            "-1.234567890123456789e+30"
        );
        assert_eq!(canon("1234567890123456.7e-10"), "123456.78901234567");
        assert_eq!(canon("1234567890123456.7e-25"), "1.2345678901234567e-10");
        assert_eq!(
            canon("0.0000012345678901234567"),
            "0.0000012345678901234567"
        );
        // Up to 15 significant digits: the JCS (double) form, as before.
        assert_eq!(canon("1.50"), "1.5");
        assert_eq!(canon("1E2"), "100");
        assert_eq!(canon("0.1000"), "0.1");
    }

    #[test]
    fn the_fraction_shortcut_takes_only_what_ecmascript_prints_unchanged() {
        for t in [
            "12.5",
            "-12.5",
            "0.05",
            "0.000001",
            "100.25",
            "123456789012.345",
        ] {
            assert!(is_ecmascript_fraction(t), "{t}");
        }
        for t in [
            "1.50",
            "1.0",
            "-0.0",
            "0.0000001",
            "1234567890123.4567",
            "1e2",
            "1.5e3",
            "12",
            "-",
            "1.",
        ] {
            assert!(!is_ecmascript_fraction(t), "{t}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(4096))]
        /// Every fraction the shortcut takes prints the same through a double
        /// (generated to be taken mostly: no trailing zero, few digits).
        #[test]
        fn the_fraction_shortcut_agrees_with_the_double_path(
            negative: bool,
            int in "0|[1-9][0-9]{0,15}",
            frac in "0{0,7}[0-9]{0,9}[1-9]",
        ) {
            let text = format!("{}{int}.{frac}", if negative { "-" } else { "" });
            if is_ecmascript_fraction(&text) {
                let mut slow = Vec::new();
                write_non_integer(&text, &mut slow);
                proptest::prop_assert_eq!(String::from_utf8(slow).unwrap(), text);
            }
        }
    }

    #[test]
    fn significant_digits_counts_what_the_exact_path_keeps() {
        for t in [
            "0",
            "-0",
            "0.000",
            "1.50",
            "100",
            "0.00123",
            "1E2",
            "1e-7",
            "-12.3400e5",
            "12345678901234567.89",
            "0.10000000000000000001",
            "1234567890123456.7e-25",
            "000123000",
            "9.999999999999999e22",
        ] {
            let exact = Decimal::parse(t).unwrap().digits.len();
            assert_eq!(significant_digits(t), exact, "{t}");
        }
    }

    #[test]
    fn member_order_is_utf16_when_names_mix_astral_and_high_bmp() {
        // U+1F600 sorts before U+FF21 by UTF-16 code units (0xD83D < 0xFF21)
        // but after it by UTF-8 bytes.
        let v: Value = serde_json::from_str(r#"{"\uff21":1,"\ud83d\ude00":2,"a":3}"#).unwrap();
        assert_eq!(canonical_string(&v), "{\"a\":3,\"😀\":2,\"Ａ\":1}");
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
