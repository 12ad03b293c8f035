//! A JSON event parsed without building a `serde_json::Value`.
//!
//! A document route reads three things from an event: its row key, its
//! version and the hash of its canonical form. A `Value` spends most of its
//! parse building a `BTreeMap` per object and a `String` per string: about a
//! sixth of the sink's CPU on document routes and replays. [`BorrowedJson`]
//! is the same parse (serde_json's parser, with its recursion limit and
//! number rules) into a tree that borrows unescaped strings from the payload
//! and keeps an object's members in a `Vec`, in source order.
//!
//! Everything that decides a key, a version or a hash goes through
//! [`JsonTree`], shared with `Value`; the one part written twice, the
//! canonical writer, is compared against the `Value` path by the tests below
//! (the published hash vectors and generated documents). A text this parse
//! refuses is read again as a `Value` by the caller, so a poison message's
//! reason and error text come from one place.

use std::borrow::Cow;
use std::fmt;

use serde::de::{self, Deserialize, Deserializer, MapAccess, SeqAccess, Visitor};
use serde_json::Number;

use crate::json::hash::{self, JsonKind, JsonTree};

/// serde_json (`arbitrary_precision`) hands a number it keeps as text to a
/// visitor as a one-member map under this name; `Value` reads it the same way.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";
/// With `raw_value`, `Value` parses a string under this name as JSON. Not
/// mirrored: such an event is refused here and parsed as a `Value`.
const RAW_VALUE_TOKEN: &str = "$serde_json::private::RawValue";

#[derive(Debug, Clone, PartialEq)]
pub enum BorrowedJson<'a> {
    Null,
    Bool(bool),
    /// An integer serde_json parsed as one (`Value` keeps it as its digits).
    Int(i64),
    UInt(u64),
    /// Any other number: a fraction, an exponent, or too many digits.
    Number(Number),
    String(Cow<'a, str>),
    Array(Vec<BorrowedJson<'a>>),
    /// Members in source order, repeats kept; lookups and the canonical form
    /// take the last one, as `Value`'s map does.
    Object(Vec<(Cow<'a, str>, BorrowedJson<'a>)>),
}

impl<'a> BorrowedJson<'a> {
    /// Parses a whole JSON text (trailing characters are an error). An error
    /// here is not the error to report: the caller parses the text as a
    /// `Value` for that.
    pub fn parse(text: &'a str) -> Result<BorrowedJson<'a>, serde_json::Error> {
        serde_json::from_str(text)
    }
}

impl JsonTree for BorrowedJson<'_> {
    fn kind(&self) -> JsonKind {
        match self {
            BorrowedJson::Null => JsonKind::Null,
            BorrowedJson::Bool(_) => JsonKind::Bool,
            BorrowedJson::Int(_) | BorrowedJson::UInt(_) | BorrowedJson::Number(_) => {
                JsonKind::Number
            }
            BorrowedJson::String(_) => JsonKind::String,
            BorrowedJson::Array(_) => JsonKind::Array,
            BorrowedJson::Object(_) => JsonKind::Object,
        }
    }

    fn member(&self, name: &str) -> Option<&Self> {
        match self {
            BorrowedJson::Object(members) => members.iter().rev().find(|(k, _)| k == name),
            _ => None,
        }
        .map(|(_, v)| v)
    }

    fn element(&self, index: usize) -> Option<&Self> {
        match self {
            BorrowedJson::Array(items) => items.get(index),
            _ => None,
        }
    }

    fn as_str(&self) -> Option<&str> {
        match self {
            BorrowedJson::String(s) => Some(s),
            _ => None,
        }
    }

    fn as_i64(&self) -> Option<i64> {
        match self {
            BorrowedJson::Int(i) => Some(*i),
            BorrowedJson::UInt(u) => i64::try_from(*u).ok(),
            BorrowedJson::Number(n) => n.as_i64(),
            _ => None,
        }
    }

    fn write_canonical(&self, out: &mut Vec<u8>) {
        match self {
            BorrowedJson::Null => out.extend_from_slice(b"null"),
            BorrowedJson::Bool(true) => out.extend_from_slice(b"true"),
            BorrowedJson::Bool(false) => out.extend_from_slice(b"false"),
            // `Value` holds these as their itoa digits, which the canonical
            // form keeps as they are.
            BorrowedJson::Int(i) => {
                out.extend_from_slice(itoa::Buffer::new().format(*i).as_bytes())
            }
            BorrowedJson::UInt(u) => {
                out.extend_from_slice(itoa::Buffer::new().format(*u).as_bytes())
            }
            BorrowedJson::Number(n) => hash::write_number(n, out),
            BorrowedJson::String(s) => hash::write_string(s, out),
            BorrowedJson::Array(items) => hash::write_array(items, out),
            BorrowedJson::Object(members) => write_object(members, out),
        }
    }
}

/// Members in JCS order, each name once (its last value).
fn write_object(members: &[(Cow<'_, str>, BorrowedJson<'_>)], out: &mut Vec<u8>) {
    let mut order: Vec<&(Cow<'_, str>, BorrowedJson<'_>)> = members.iter().collect();
    // Stable, so repeats of a name stay in source order and the last wins.
    if members.iter().any(|(k, _)| hash::utf16_order_differs(k)) {
        order.sort_by(|a, b| hash::utf16_cmp(&a.0, &b.0));
    } else {
        order.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
    }
    let last_of_its_name = |n: &usize| order.get(n + 1).is_none_or(|next| next.0 != order[*n].0);
    let members = (0..order.len())
        .filter(last_of_its_name)
        .map(|n| (&*order[n].0, &order[n].1));
    hash::write_members(members, out);
}

/// A string that borrows from the input when it has no escapes.
struct CowStr<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for CowStr<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct StrVisitor;
        impl<'de> Visitor<'de> for StrVisitor {
            type Value = CowStr<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
                Ok(CowStr(Cow::Owned(s)))
            }
        }
        d.deserialize_str(StrVisitor)
    }
}

impl<'de> Deserialize<'de> for BorrowedJson<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(TreeVisitor)
    }
}

/// Mirrors serde_json's `ValueVisitor` case by case.
struct TreeVisitor;

impl<'de> Visitor<'de> for TreeVisitor {
    type Value = BorrowedJson<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any valid JSON value")
    }
    fn visit_bool<E>(self, b: bool) -> Result<Self::Value, E> {
        Ok(BorrowedJson::Bool(b))
    }
    fn visit_i64<E>(self, i: i64) -> Result<Self::Value, E> {
        Ok(BorrowedJson::Int(i))
    }
    fn visit_u64<E>(self, u: u64) -> Result<Self::Value, E> {
        Ok(BorrowedJson::UInt(u))
    }
    fn visit_f64<E>(self, f: f64) -> Result<Self::Value, E> {
        Ok(Number::from_f64(f).map_or(BorrowedJson::Null, BorrowedJson::Number))
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Self::Value, E> {
        Ok(BorrowedJson::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Self::Value, E> {
        Ok(BorrowedJson::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Self::Value, E> {
        Ok(BorrowedJson::String(Cow::Owned(s)))
    }
    fn visit_none<E>(self) -> Result<Self::Value, E> {
        Ok(BorrowedJson::Null)
    }
    fn visit_unit<E>(self) -> Result<Self::Value, E> {
        Ok(BorrowedJson::Null)
    }
    fn visit_some<D: Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        Deserialize::deserialize(d)
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        let mut items = Vec::with_capacity(seq.size_hint().unwrap_or(0));
        while let Some(item) = seq.next_element()? {
            items.push(item);
        }
        Ok(BorrowedJson::Array(items))
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
        let Some(CowStr(first)) = map.next_key::<CowStr>()? else {
            return Ok(BorrowedJson::Object(Vec::new()));
        };
        if first == NUMBER_TOKEN {
            // As serde_json's `NumberFromString`: the text parsed as a number.
            let CowStr(text) = map.next_value()?;
            let n: Number = text.parse().map_err(de::Error::custom)?;
            return Ok(BorrowedJson::Number(n));
        }
        if first == RAW_VALUE_TOKEN {
            return Err(de::Error::custom("a raw-value member: read as a Value"));
        }
        let mut members = Vec::with_capacity(8);
        members.push((first, map.next_value()?));
        while let Some(CowStr(k)) = map.next_key::<CowStr>()? {
            members.push((k, map.next_value()?));
        }
        Ok(BorrowedJson::Object(members))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::json::pointer::JsonPointer;
    use proptest::prelude::*;
    use serde_json::Value;

    /// What a document route reads from an event, through either tree.
    fn reading<T: JsonTree>(tree: &T, pointers: &[&str]) -> (String, Vec<Option<String>>) {
        let found = pointers
            .iter()
            .map(|p| {
                JsonPointer::parse(p).get(tree).map(|v| {
                    format!(
                        "{} {:?} {:?} {}",
                        hash::json_kind(v),
                        v.as_str(),
                        v.as_i64(),
                        hash::canonical_string(v)
                    )
                })
            })
            .collect();
        (hash::canonical_string(tree), found)
    }

    /// Both parses agree: both fail, or both succeed with the same canonical
    /// form and the same answers at every pointer.
    fn assert_same(text: &str, pointers: &[&str]) {
        let value = serde_json::from_str::<Value>(text);
        let borrowed = BorrowedJson::parse(text);
        match (&value, &borrowed) {
            (Ok(v), Ok(b)) => {
                assert_eq!(reading(b, pointers), reading(v, pointers), "{text}");
                assert_eq!(hash::hash_value(b), hash::hash_value(v), "{text}");
            }
            (Err(_), Err(_)) => {}
            // Refusing what `Value` accepts is allowed (the caller falls back
            // to the Value path); the only case is the raw-value member.
            (Ok(_), Err(e)) => assert!(text.contains(RAW_VALUE_TOKEN), "{text}: {e}"),
            (Err(e), Ok(_)) => panic!("{text}: Value refuses ({e}), the borrowed parse accepts"),
        }
    }

    #[test]
    fn published_vectors_canonicalise_alike() {
        #[derive(serde::Deserialize)]
        struct Vector {
            input: String,
            #[serde(default)]
            exclude: Vec<String>,
        }
        let vectors: Vec<Vector> =
            serde_json::from_str(include_str!("../../docs/hash-vectors.json")).unwrap();
        let mut compared = 0;
        for v in vectors.iter().filter(|v| v.exclude.is_empty()) {
            assert_same(&v.input, &["", "/a", "/id", "/0"]);
            compared += 1;
        }
        assert!(compared >= 10, "only {compared} vectors without exclusions");
    }

    #[test]
    fn edge_cases_canonicalise_alike() {
        for text in [
            r#"{"b":1,"a":2,"b":3}"#,
            r#"{"k":"x","k":{"z":1},"k":[1,2]}"#,
            r#"{"a\u0062":1,"ab":2}"#,
            r#"{"\uff21":1,"\ud83d\ude00":2,"a":3,"\ud83d\ude00":4}"#,
            r#"[1.0,1e2,-0,-0.0,1E21,12345678901234567.89,18446744073709551616,-9223372036854775809]"#,
            r#"{"n":18446744073709551615,"m":-9223372036854775808,"f":0.1000}"#,
            r#"{"$serde_json::private::Number":"12.50"}"#,
            r#"{"$serde_json::private::Number":"x"}"#,
            r#"{"$serde_json::private::Number":"1","b":2}"#,
            r#"{"$serde_json::private::RawValue":"{\"a\":1}"}"#,
            r#"{"a":"\u0000 \n \" \\ é \u00e9 \ud83d\ude00"}"#,
            r#""just a string""#,
            "null",
            "[]",
            "{}",
            r#"{"a":1} x"#,
            r#"{"a":01}"#,
            r#"{"a":1,}"#,
            r#"{"a":"\ud800"}"#,
        ] {
            assert_same(text, &["", "/a", "/b", "/k", "/n", "/m", "/f", "/0", "/7"]);
        }
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        assert_same(&deep, &[""]);
    }

    #[test]
    fn repeated_names_resolve_to_the_last() {
        let b = BorrowedJson::parse(r#"{"id":"first","x":1,"id":"last"}"#).unwrap();
        assert_eq!(b.member("id").and_then(JsonTree::as_str), Some("last"));
        assert_eq!(hash::canonical_string(&b), r#"{"id":"last","x":1}"#);
    }

    #[test]
    fn unescaped_strings_borrow_from_the_payload() {
        let b = BorrowedJson::parse(r#"{"plain":"abc","escaped":"a\nb"}"#).unwrap();
        assert!(matches!(
            b.member("plain"),
            Some(BorrowedJson::String(Cow::Borrowed(_)))
        ));
        assert!(matches!(
            b.member("escaped"),
            Some(BorrowedJson::String(Cow::Owned(_)))
        ));
    }

    /// JSON texts with what varies in real events: repeated and escaped
    /// names, names beyond U+E000, numbers of every form, nesting.
    fn json_text() -> impl Strategy<Value = String> {
        let name = prop_oneof![
            Just("id".to_string()),
            Just("a".to_string()),
            Just("b".to_string()),
            Just("\\u0061".to_string()),
            Just("\u{ff21}".to_string()),
            Just("\\ud83d\\ude00".to_string()),
            "[a-z]{0,3}",
        ];
        let number = prop_oneof![
            any::<i64>().prop_map(|i| i.to_string()),
            any::<u64>().prop_map(|u| u.to_string()),
            any::<f64>()
                .prop_filter("finite", |f| f.is_finite())
                .prop_map(|f| format!("{f:e}")),
            (0u32..1000, 0u32..1000).prop_map(|(a, b)| format!("{a}.{b:03}")),
            Just("-0".to_string()),
            Just("-0.0".to_string()),
            Just("1E400".to_string()),
            Just("123456789012345678901234567890".to_string()),
            Just("0.000000000000000000012345678901234567".to_string()),
        ];
        let leaf = prop_oneof![
            Just("null".to_string()),
            Just("true".to_string()),
            Just("false".to_string()),
            number,
            "[a-z é\"\\\\\n]{0,6}".prop_map(|s| serde_json::to_string(&s).unwrap()),
            Just("\"\\u00e9\\n\\t\"".to_string()),
        ];
        leaf.prop_recursive(4, 48, 6, move |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..5)
                    .prop_map(|items| format!("[{}]", items.join(","))),
                prop::collection::vec((name.clone(), inner), 0..6).prop_map(|members| {
                    let body: Vec<String> = members
                        .iter()
                        .map(|(k, v)| format!("\"{k}\": {v}"))
                        .collect();
                    format!("{{{}}}", body.join(", "))
                }),
            ]
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn generated_documents_canonicalise_alike(text in json_text()) {
            assert_same(&text, &["", "/id", "/a", "/b", "/a/0", "/a/b", "/0", "/1/id"]);
        }
    }
}
