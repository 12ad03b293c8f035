//! Stage 4, encode: a route's folded upserts as the COPY text Postgres
//! loads into its staging table (`store::stage`). Document rows are encoded
//! here, off the commit path, while the batch before commits; a typed row's
//! line was projected in the identity stage (`event::row`) and is only
//! joined here, with the key and position change events are checked by.

use super::copy_text;
use super::fold::RowUpsert;
use crate::config::route::Route;

/// The COPY text of a document route's upserts, encoded while the batch
/// before it commits (`pipeline`), unless the route's last batch was mostly
/// no-ops: the pre-filter would then leave most of it unsent.
pub fn document_upserts(
    route: &Route,
    rows: &[RowUpsert],
    duplicate_heavy: bool,
) -> Option<Vec<u8>> {
    let encode = route.columns.is_none() && !duplicate_heavy && !rows.is_empty();
    encode.then(|| document_rows(&rows.iter().collect::<Vec<_>>()))
}

/// Document rows in COPY text, in the staging table's column order
/// (`store::documents`).
pub fn document_rows(rows: &[&RowUpsert]) -> Vec<u8> {
    let size: usize = rows
        .iter()
        .map(|r| r.payload.len() + r.key.0.len() + 120)
        .sum();
    let mut out = String::with_capacity(size);
    let mut hash = [0u8; 64];
    for r in rows {
        copy_text::push_escaped(&mut out, &r.key.0);
        out.push_str("\t\\\\x");
        hex::encode_to_slice(r.hash.0, &mut hash).expect("64 hex digits");
        out.push_str(std::str::from_utf8(&hash).expect("hex is ASCII"));
        out.push('\t');
        copy_text::push_escaped(&mut out, &r.payload);
        out.push('\t');
        match r.version {
            Some(v) => copy_text::push_int(&mut out, v),
            None => out.push_str(copy_text::NULL),
        }
        out.push('\t');
        copy_text::push_escaped(&mut out, &r.tp.topic);
        out.push('\t');
        copy_text::push_int(&mut out, r.tp.partition);
        out.push('\t');
        copy_text::push_int(&mut out, r.offset.0);
        out.push('\n');
    }
    out.into_bytes()
}

/// The COPY text of `rows`: each row's line, plus key and position for
/// change events.
pub fn typed_rows(route: &Route, rows: &[RowUpsert]) -> Vec<u8> {
    let size: usize = rows
        .iter()
        .map(|r| r.row.as_ref().map_or(0, String::len) + 24)
        .sum();
    let mut out = String::with_capacity(size);
    for r in rows {
        out.push_str(r.row.as_deref().unwrap_or_default());
        if route.is_cdc() {
            out.push('\t');
            copy_text::push_escaped(&mut out, &r.key.0);
            out.push('\t');
            copy_text::push_int(&mut out, r.version.unwrap_or(i64::MIN.into()));
        }
        out.push('\n');
    }
    out.into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::test_routes;
    use crate::types::{EventHash, Offset, RowKey, TopicPartition};

    fn row(key: &str, payload: &str) -> RowUpsert {
        RowUpsert {
            key: RowKey(key.into()),
            hash: EventHash([0xab; 32]),
            payload: payload.into(),
            row: None,
            version: Some(2),
            tp: TopicPartition::new("t", 1),
            offset: Offset(7),
        }
    }

    #[test]
    fn document_upserts_are_encoded_ahead_unless_pre_filtered() {
        let document = &test_routes("topic = \"t\"\ntable = \"d\"\nkey = \"/id\"").unwrap()[0];
        let typed =
            &test_routes("topic = \"t\"\ntable = \"t\"\nkey = \"id\"\ncolumns = { id = \"/id\" }")
                .unwrap()[0];
        let rows = [row("a", r#"{"id":"a","t":"x\ty"}"#), row("b\\", "{}")];
        let encoded = document_upserts(document, &rows, false).expect("encoded");
        let hash = "ab".repeat(32);
        assert_eq!(
            String::from_utf8(encoded).unwrap(),
            format!(
                "a\t\\\\x{hash}\t{{\"id\":\"a\",\"t\":\"x\\\\ty\"}}\t2\tt\t1\t7\n\
                 b\\\\\t\\\\x{hash}\t{{}}\t2\tt\t1\t7\n"
            )
        );
        assert_eq!(
            document_upserts(document, &rows, true),
            None,
            "pre-filtered"
        );
        assert_eq!(document_upserts(document, &[], false), None);
        assert_eq!(
            document_upserts(typed, &rows, false),
            None,
            "typed rows carry their line"
        );
    }
}
